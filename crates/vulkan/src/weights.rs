//! Weights on the device: the types the shaders decode (`shaders/quant.glsl`) are uploaded as
//! their file stores them (padded to whole words) and decoded in registers by the matmul,
//! moe_mm and get_rows shaders, one pipeline per (shader, type) through specialization
//! constant 1; every other type is decoded to f32 once at load.
use super::{Vulkan, too_big, u};
use crate::ctx::{Ctx, RawBuf};
use hearth_core::{Buf, DType, Error, Result, Tensor};
use std::sync::Arc;

/// quant.glsl's code for a type the shaders decode, or None (decoded to f32 at load).
pub(crate) fn code(d: DType) -> Option<u32> {
    Some(match d {
        DType::F32 => 0,
        DType::F16 => 1,
        DType::BF16 => 2,
        DType::Q4_0 => 3,
        DType::Q4_1 => 4,
        DType::Q5_0 => 5,
        DType::Q5_1 => 6,
        DType::Q8_0 => 7,
        DType::Q2_K => 8,
        DType::Q3_K => 9,
        DType::Q4_K => 10,
        DType::Q5_K => 11,
        DType::Q6_K => 12,
        DType::IQ4_NL => 13,
        DType::IQ4_XS => 14,
        DType::MXFP4 => 15,
        DType::IQ2_XXS => 16,
        DType::IQ2_XS => 17,
        DType::IQ2_S => 18,
        DType::IQ3_XXS => 19,
        DType::IQ3_S => 20,
        _ => return None,
    })
}

/// The i-quants' grids as quant.glsl reads them (its `G_*` offsets): the rows of
/// ggml-common.h's iq2xxs_grid, iq2xs_grid and iq2s_grid (two words each), iq3xxs_grid and
/// iq3s_grid (a word each), then ksigns_iq2xs (four a word), from `hearth_quant::tables`.
pub(crate) fn grids() -> Vec<u32> {
    use hearth_quant::tables::*;
    let word = |b: &[u8]| u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    let mut g = Vec::with_capacity(4384);
    for rows in [&IQ2XXS_GRID[..], &IQ2XS_GRID[..], &IQ2S_GRID[..]] {
        for r in rows {
            g.extend([word(&r[..4]), word(&r[4..])]);
        }
    }
    for rows in [&IQ3XXS_GRID[..], &IQ3S_GRID[..]] {
        g.extend(rows.iter().map(|r| word(r)));
    }
    g.extend(KSIGNS_IQ2XS.chunks_exact(4).map(word));
    debug_assert_eq!(g.len(), 4384);
    g
}

/// Bytes the device holds for a weight: its file's bytes for a type the shaders decode,
/// 4 per value for the rest.
pub(crate) fn held_bytes(w: &Tensor) -> usize {
    match code(w.dtype) {
        Some(_) => w.bytes().len(),
        None => w.numel() * 4,
    }
}

/// A weight on the device: its buffer, quant.glsl's type code and the bytes of a row.
#[derive(Clone)]
pub(crate) struct DevWeight {
    pub buf: Arc<RawBuf>,
    pub code: u32,
    pub row_bytes: usize,
}

/// A MoE layer's experts on the device: all gate, up and down matrices `[E, rows, cols]`,
/// each kind in one type, and their biases (f32, or none).
pub(crate) struct Pack {
    pub gate: DevWeight,
    pub up: DevWeight,
    pub down: DevWeight,
    pub bias: [Option<RawBuf>; 3],
    pub n_ff: usize,
    pub _pin: hearth_core::Storage,
}

/// Byte offsets in the shaders are 32-bit: a weight must leave room for the padding word.
fn check_size(bytes: usize) -> Result<()> {
    match bytes < (u32::MAX as usize) - 8 {
        true => Ok(()),
        false => Err(Error::Unsupported(format!(
            "vulkan: a weight of {bytes} bytes (at most 4 GiB)"
        ))),
    }
}

/// A buffer holding `parts` one after another, padded to whole words plus one (the shaders
/// read a word past an unaligned value's first).
pub(crate) fn upload_bytes(ctx: &Arc<Ctx>, parts: &[&[u8]]) -> Result<RawBuf> {
    let n: usize = parts.iter().map(|p| p.len()).sum();
    check_size(n)?;
    let raw = ctx.alloc(n.next_multiple_of(4) + 4)?;
    let mut at = 0;
    for p in parts {
        // SAFETY: the new mapping holds at least `n` bytes.
        unsafe { std::ptr::copy_nonoverlapping(p.as_ptr(), raw.ptr.add(at), p.len()) };
        at += p.len();
    }
    Ok(raw)
}

/// The i-quants' grids ([`grids`]) on the device.
pub(crate) fn upload_grids(ctx: &Arc<Ctx>) -> Result<RawBuf> {
    let g: Vec<u8> = grids().iter().flat_map(|w| w.to_le_bytes()).collect();
    upload_bytes(ctx, &[&g])
}

impl Vulkan {
    /// `parts` decoded to f32 one after another (`per` values each).
    fn upload_f32(&self, parts: &[&Tensor], per: usize) -> Result<RawBuf> {
        let n = parts.len() * per;
        let bytes = n.checked_mul(4).ok_or_else(too_big)?;
        check_size(bytes)?;
        let raw = self.ctx.alloc(bytes)?;
        // SAFETY: the new mapping holds `n` floats, aligned (allocations are).
        let all = unsafe { std::slice::from_raw_parts_mut(raw.ptr as *mut f32, n) };
        for (t, o) in parts.iter().zip(all.chunks_exact_mut(per)) {
            hearth_quant::dequantize(t.dtype, t.bytes(), o)?;
        }
        Ok(raw)
    }

    /// The device copy of a weight, made on first use: as the file stores it where the
    /// shaders decode its type, else decoded to f32 exactly.
    pub(crate) fn weight(&self, w: &Tensor) -> Result<DevWeight> {
        let b = w.bytes();
        let key = (b.as_ptr() as usize, b.len(), w.dtype);
        let mut ws = self.weights.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(r) = ws.get(&key) {
            return Ok(r.0.clone());
        }
        let dw = match code(w.dtype) {
            Some(code) => DevWeight {
                buf: Arc::new(upload_bytes(&self.ctx, &[b])?),
                code,
                row_bytes: w.row_bytes(),
            },
            None => DevWeight {
                buf: Arc::new(self.upload_f32(&[w], w.numel())?),
                code: 0,
                row_bytes: w.row_len() * 4,
            },
        };
        ws.insert(key, (dw.clone(), w.storage.clone()));
        Ok(dw)
    }

    /// A layer's experts packed on the device (made on first use): each matrix kind as its
    /// file stores it where every expert has one type the shaders decode, else in f32.
    pub(crate) fn pack(&self, ex: &[hearth_core::Expert]) -> Result<Arc<Pack>> {
        let first = ex
            .first()
            .ok_or_else(|| Error::Invalid("a MoE layer without experts".into()))?;
        let key = (first.gate.bytes().as_ptr() as usize, ex.len());
        let mut ps = self.packs.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = ps.get(&key) {
            return Ok(p.clone());
        }
        let n_ff = first.gate.shape[0];
        let whole = |f: &dyn Fn(&hearth_core::Expert) -> &Tensor| -> Result<DevWeight> {
            let ts: Vec<&Tensor> = ex.iter().map(f).collect();
            let t0 = ts[0];
            if ts.iter().any(|t| t.shape != t0.shape) {
                return Err(Error::Invalid("moe: experts of different shapes".into()));
            }
            let same = ts.iter().all(|t| t.dtype == t0.dtype);
            Ok(match code(t0.dtype).filter(|_| same) {
                Some(code) => {
                    let parts: Vec<&[u8]> = ts.iter().map(|t| t.bytes()).collect();
                    DevWeight {
                        buf: Arc::new(upload_bytes(&self.ctx, &parts)?),
                        code,
                        row_bytes: t0.row_bytes(),
                    }
                }
                None => DevWeight {
                    buf: Arc::new(self.upload_f32(&ts, t0.numel())?),
                    code: 0,
                    row_bytes: t0.row_len() * 4,
                },
            })
        };
        let bias = |f: &dyn Fn(&hearth_core::Expert) -> &Option<Buf>,
                    len: usize|
         -> Result<Option<RawBuf>> {
            if ex.iter().all(|x| f(x).is_none()) {
                return Ok(None);
            }
            let raw = self.ctx.alloc(ex.len() * len * 4)?;
            for (i, x) in ex.iter().enumerate() {
                if let Some(b) = f(x) {
                    let mut h = vec![0f32; len];
                    hearth_core::Backend::download(self, b.view(), &mut h)?;
                    // SAFETY: the new mapping holds `ex.len() * len` floats.
                    unsafe {
                        std::ptr::copy_nonoverlapping(
                            h.as_ptr(),
                            (raw.ptr as *mut f32).add(i * len),
                            len,
                        )
                    };
                }
            }
            Ok(Some(raw))
        };
        let gate = whole(&|x| &x.gate)?;
        let p = Arc::new(Pack {
            gate,
            up: whole(&|x| &x.up)?,
            down: whole(&|x| &x.down)?,
            bias: [
                bias(&|x| &x.gate_b, n_ff)?,
                bias(&|x| &x.up_b, n_ff)?,
                bias(&|x| &x.down_b, first.gate.shape[1])?,
            ],
            n_ff,
            _pin: first.gate.storage.clone(),
        });
        ps.insert(key, p.clone());
        Ok(p)
    }

    /// One of the pack's matmuls over every (token, slot).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn moe_mm(
        &self,
        w: &DevWeight,
        b: Option<&RawBuf>,
        x: (&RawBuf, u32),
        ids: (&RawBuf, u32),
        out: &RawBuf,
        shape: (usize, usize, usize, usize),
        per_slot: bool,
    ) -> Result<()> {
        let (n_in, n_out, n_slots, k) = shape;
        let pc = [
            u(n_in)?,
            u(n_out)?,
            u(n_slots)?,
            u(k)?,
            u32::from(per_slot),
            u32::from(b.is_some()),
            x.1,
            ids.1,
            0,
            u(w.row_bytes)?,
        ];
        let wb = &*w.buf;
        self.run_q(
            spv!("moe_mm"),
            w.code,
            &[wb, x.0, ids.0, out, b.unwrap_or(wb), &self.grids],
            &pc,
            (n_slots * n_out) as u64,
        )
    }
}
