//! Where an output tensor's rows come from: one memory-mapped tensor, several stacked along a
//! new outermost axis (a Hugging Face checkpoint's per-expert matrices become one 3-D GGUF
//! tensor), block-scaled float8 matrices dequantized as they are read, or the k_b/v_b halves of
//! an MLA `kv_b` projection made when the tensor is written. Nothing is read until the tensor
//! is written, so a model larger than memory converts tensor by tensor.
use hearth_core::{DType, Error, Result, Tensor};

/// One input tensor, under its GGUF name.
pub struct SrcTensor {
    /// GGUF name.
    pub name: String,
    /// Shape, outermost first.
    pub shape: Vec<usize>,
    /// The type rows are read in (F32 for dequantized float8 parts and made tensors).
    pub dtype: DType,
    /// The data.
    pub source: Source,
    /// Reorder the rows of each head for GGUF's rotary layout (llama's q/k from Hugging Face):
    /// the number of heads, when set.
    pub permute_heads: Option<usize>,
    /// Write as this type when the tensor is not quantized (1D tensors from Hugging Face
    /// become F32, as llama.cpp's converter does).
    pub keep_as: Option<DType>,
}

/// A tensor's data.
pub enum Source {
    /// Parts holding consecutive rows, all of the same size: one part, or one per expert.
    Rows(Vec<Part>),
    /// One half of an MLA `kv_b` projection (`[n_head * (nope + v), rank]`), as llama.cpp's
    /// converter splits it: k_b is `[n_head, rank, nope]` (each head's nope rows transposed),
    /// v_b is `[n_head, v, rank]`. Made in memory when written (one tensor at a time).
    KvB {
        /// kv_b (shared by its two halves).
        kv_b: std::sync::Arc<Part>,
        /// k_b (else v_b).
        k: bool,
        /// heads
        n_head: usize,
        /// qk_nope_head_dim
        nope: usize,
        /// v_head_dim
        v: usize,
    },
}

/// A stored matrix (or any tensor) whose rows are part of a source.
pub struct Part {
    /// The tensor; float8 ones are typed I8 (their raw bytes).
    pub tensor: Tensor,
    /// For float8 E4M3 weights: the inverse scales, one per block.
    pub fp8: Option<BlockScale>,
}

/// The inverse scales of a block-quantized float8 matrix: `weight_scale_inv`, shape
/// `[ceil(rows / block.0), ceil(cols / block.1)]`; value = fp8 * scale of its block.
pub struct BlockScale {
    /// The scales (F32, BF16 or F16).
    pub scale_inv: Tensor,
    /// Block rows and columns.
    pub block: (usize, usize),
}

impl Part {
    /// A plain (not float8) tensor.
    pub fn plain(tensor: Tensor) -> Part {
        Part { tensor, fp8: None }
    }

    fn rows(&self) -> usize {
        let n: usize = self.tensor.shape.iter().product();
        n / (*self.tensor.shape.last().unwrap_or(&1)).max(1)
    }

    /// The type its rows are read in.
    pub fn read_type(&self) -> DType {
        if self.fp8.is_some() {
            DType::F32
        } else {
            self.tensor.dtype
        }
    }

    /// Check the scale's shape against the matrix.
    pub fn check(&self) -> Result<()> {
        let Some(s) = &self.fp8 else { return Ok(()) };
        let t = &self.tensor;
        let (r, c) = match t.shape.as_slice() {
            [r, c] => (*r, *c),
            _ => {
                return Err(Error::Format(format!(
                    "float8 tensor {} has shape {:?}: only matrices are block-scaled",
                    t.name, t.shape
                )));
            }
        };
        let (br, bc) = s.block;
        let want = [r.div_ceil(br.max(1)), c.div_ceil(bc.max(1))];
        // one scale for the whole matrix may be stored as [] or [1]
        let n: usize = s.scale_inv.shape.iter().product();
        let fits = s.scale_inv.shape == want || (want == [1, 1] && n == 1);
        if br == 0 || bc == 0 || !fits {
            return Err(Error::Format(format!(
                "{}: scales of shape {:?} for a {r}x{c} float8 matrix in {br}x{bc} blocks (want {want:?})",
                s.scale_inv.name, s.scale_inv.shape
            )));
        }
        if !matches!(s.scale_inv.dtype, DType::F32 | DType::BF16 | DType::F16) {
            return Err(Error::Unsupported(format!(
                "{}: scales of type {}",
                s.scale_inv.name, s.scale_inv.dtype
            )));
        }
        Ok(())
    }

    /// Row `r` as f32.
    fn read_row(&self, r: usize, out: &mut [f32]) -> Result<()> {
        let t = &self.tensor;
        match &self.fp8 {
            None => {
                let rb = t.dtype.row_bytes(out.len())?;
                hearth_quant::dequantize(t.dtype, &t.bytes()[r * rb..(r + 1) * rb], out)
            }
            Some(s) => {
                let n = out.len();
                let (br, bc) = s.block;
                let sc = &s.scale_inv;
                let scols = if sc.shape.len() == 2 { sc.shape[1] } else { 1 };
                let srb = sc.dtype.row_bytes(scols)?;
                let sr = r / br;
                let mut scale = vec![0f32; scols];
                hearth_quant::dequantize(
                    sc.dtype,
                    &sc.bytes()[sr * srb..(sr + 1) * srb],
                    &mut scale,
                )?;
                let bytes = &t.bytes()[r * n..(r + 1) * n];
                for (c, (o, &b)) in out.iter_mut().zip(bytes).enumerate() {
                    *o = fp8_e4m3(b) * scale[c / bc];
                }
                Ok(())
            }
        }
    }
}

/// A float8 E4M3 (`float8_e4m3fn`: bias 7, no infinities, 0x7f/0xff NaN) as f32.
pub fn fp8_e4m3(b: u8) -> f32 {
    let sign = if b & 0x80 != 0 { -1.0f32 } else { 1.0 };
    let e = ((b >> 3) & 0xf) as i32;
    let m = (b & 7) as f32;
    if e == 15 && b & 7 == 7 {
        return f32::NAN;
    }
    let v = if e == 0 {
        m / 8.0 * 2f32.powi(-6)
    } else {
        (1.0 + m / 8.0) * 2f32.powi(e - 7)
    };
    sign * v
}

fn parts_rows(parts: &[Part]) -> usize {
    parts.first().map_or(0, Part::rows)
}

/// Row `r` of parts holding consecutive rows of equal count.
fn read_parts_row(parts: &[Part], r: usize, out: &mut [f32]) -> Result<()> {
    let per = parts_rows(parts).max(1);
    let p = parts
        .get(r / per)
        .ok_or_else(|| Error::Invalid(format!("row {r} past the end")))?;
    p.read_row(r % per, out)
}

impl SrcTensor {
    /// One stored tensor as it is.
    pub fn plain(name: String, tensor: Tensor) -> SrcTensor {
        SrcTensor {
            name,
            shape: tensor.shape.clone(),
            dtype: tensor.dtype,
            source: Source::Rows(vec![Part::plain(tensor)]),
            permute_heads: None,
            keep_as: None,
        }
    }

    /// Whether the stored bytes can be copied as they are to a file of type `to`.
    pub fn copies_to(&self, to: DType) -> bool {
        match &self.source {
            Source::Rows(parts) => {
                self.permute_heads.is_none()
                    && parts
                        .iter()
                        .all(|p| p.fp8.is_none() && p.tensor.dtype == to)
            }
            Source::KvB { .. } => false,
        }
    }

    /// The stored bytes, part by part (for `copies_to`).
    pub fn stored_bytes(&self) -> impl Iterator<Item = &[u8]> {
        let parts: &[Part] = match &self.source {
            Source::Rows(p) => p,
            Source::KvB { .. } => &[],
        };
        parts.iter().map(|p| p.tensor.bytes())
    }

    /// Make tensors that exist only when written (k_b, v_b): `None` when rows can be read
    /// from the source as it is.
    pub fn materialize(&self) -> Result<Option<SrcTensor>> {
        let Source::KvB {
            kv_b,
            k,
            n_head,
            nope,
            v,
        } = &self.source
        else {
            return Ok(None);
        };
        let (n_head, nope, v) = (*n_head, *nope, *v);
        let rank = kv_b.tensor.shape.last().copied().unwrap_or(0);
        let mut row = vec![0f32; rank];
        let mut out = vec![0f32; n_head * (if *k { nope } else { v }) * rank];
        for h in 0..n_head {
            for j in 0..nope + v {
                kv_b.read_row(h * (nope + v) + j, &mut row)?;
                if *k && j < nope {
                    // k_b[h][i][j] = kv_b[h][j][i]
                    for (i, &x) in row.iter().enumerate() {
                        out[(h * rank + i) * nope + j] = x;
                    }
                } else if !*k && j >= nope {
                    let o = (h * v + j - nope) * rank;
                    out[o..o + rank].copy_from_slice(&row);
                }
            }
        }
        let bytes: Vec<u8> = out.iter().flat_map(|x| x.to_le_bytes()).collect();
        let n = bytes.len();
        let storage = hearth_core::Storage::new(std::sync::Arc::new(bytes), 0, n)?;
        let t = Tensor::new(self.name.clone(), DType::F32, self.shape.clone(), storage)?;
        Ok(Some(SrcTensor {
            name: self.name.clone(),
            shape: self.shape.clone(),
            dtype: DType::F32,
            source: Source::Rows(vec![Part::plain(t)]),
            permute_heads: None,
            keep_as: self.keep_as,
        }))
    }

    /// Row `r` (over all matrices) as f32; `Rows` sources only (see `materialize`).
    pub fn read_row(&self, r: usize, out: &mut [f32]) -> Result<()> {
        match &self.source {
            Source::Rows(parts) => read_parts_row(parts, r, out),
            Source::KvB { .. } => Err(Error::Invalid(format!(
                "tensor {} must be made before it is read",
                self.name
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every float8_e4m3fn code against its definition (values from the OCP 8-bit float
    /// specification: largest normal 448, smallest subnormal 2^-9).
    #[test]
    fn fp8_codes() {
        assert_eq!(fp8_e4m3(0x00), 0.0);
        assert_eq!(fp8_e4m3(0x38), 1.0);
        assert_eq!(fp8_e4m3(0x7e), 448.0);
        assert_eq!(fp8_e4m3(0xfe), -448.0);
        assert_eq!(fp8_e4m3(0x01), 2f32.powi(-9));
        assert_eq!(fp8_e4m3(0x08), 2f32.powi(-6));
        assert_eq!(fp8_e4m3(0x40), 2.0);
        assert_eq!(fp8_e4m3(0x3c), 1.5);
        assert!(fp8_e4m3(0x7f).is_nan() && fp8_e4m3(0xff).is_nan());
        assert!(fp8_e4m3(0x78).is_finite());
    }
}
