//! llama.cpp's importance-matrix files: the GGUF format `llama-imatrix` writes now (tensors
//! `NAME.in_sum2` and `NAME.counts`, metadata `imatrix.datasets` / `imatrix.chunk_count` /
//! `imatrix.chunk_size`) and the legacy `.dat` format (entries of name, ncall, values).
//!
//! Values are normalized as llama-quantize does: GGUF sums are divided by their count per
//! expert (1 where the count is 0), legacy values by ncall.
use hearth_core::{DType, Error, Result};
use hearth_formats::GgufFile;
use std::collections::HashMap;
use std::path::Path;

/// A loaded importance matrix: per weight tensor, the mean squared activation of each input
/// column (for expert tensors, `n_expert` runs of columns).
#[derive(Clone, Debug, Default)]
pub struct Imatrix {
    /// Column weights by GGUF tensor name.
    pub entries: HashMap<String, Vec<f32>>,
    /// The texts it was computed on, when the file says.
    pub datasets: Vec<String>,
    /// Chunks it was computed on, when the file says.
    pub chunk_count: u64,
    /// The file it was read from.
    pub file: String,
}

impl Imatrix {
    /// Read either format (GGUF when the file starts with the GGUF magic).
    pub fn load(path: &Path) -> Result<Imatrix> {
        let bytes = std::fs::read(path)
            .map_err(|e| Error::Io(format!("cannot read {}", path.display()), e))?;
        let r = if bytes.starts_with(b"GGUF") {
            let g = GgufFile::open(path)?;
            Self::from_gguf(&g)
        } else {
            Self::from_legacy(&bytes)
        };
        let mut m = r.map_err(|e| Error::Invalid(format!("imatrix {}: {e}", path.display())))?;
        m.file = path.display().to_string();
        if m.entries.is_empty() {
            return Err(Error::Invalid(format!(
                "imatrix {} has no entries",
                path.display()
            )));
        }
        for (k, v) in &m.entries {
            if v.iter().any(|x| !x.is_finite() || *x < 0.0) {
                return Err(Error::Invalid(format!(
                    "imatrix {}: entry {k} has a negative or non-finite value",
                    path.display()
                )));
            }
        }
        Ok(m)
    }

    /// The GGUF format.
    pub fn from_gguf(g: &GgufFile) -> Result<Imatrix> {
        let mut m = Imatrix::default();
        if let Some(a) = g.get("imatrix.datasets").and_then(|v| v.as_array()) {
            m.datasets = a
                .iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect();
        }
        m.chunk_count = g
            .get("imatrix.chunk_count")
            .and_then(|v| v.as_u64())
            .unwrap_or(0);
        let ts = g.tensors()?;
        let by_name: HashMap<&str, &hearth_core::Tensor> =
            ts.iter().map(|t| (t.name.as_str(), t)).collect();
        let f32s = |t: &hearth_core::Tensor| -> Result<Vec<f32>> {
            if t.dtype != DType::F32 {
                return Err(Error::Format(format!("{} is {}, not F32", t.name, t.dtype)));
            }
            Ok(t.bytes()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                .collect())
        };
        for t in &ts {
            let Some(name) = t.name.strip_suffix(".in_sum2") else {
                continue;
            };
            let counts = by_name
                .get(format!("{name}.counts").as_str())
                .ok_or_else(|| Error::Format(format!("{name} has sums but no counts")))?;
            let sums = f32s(t)?;
            let counts = f32s(counts)?;
            if counts.is_empty() || sums.len() % counts.len() != 0 {
                return Err(Error::Format(format!(
                    "{name}: {} sums do not split into {} counts",
                    sums.len(),
                    counts.len()
                )));
            }
            let ne0 = sums.len() / counts.len();
            let mut v = vec![1f32; sums.len()];
            for (j, &c) in counts.iter().enumerate() {
                let c = c.round();
                if c > 0.0 {
                    for i in 0..ne0 {
                        v[j * ne0 + i] = sums[j * ne0 + i] / c;
                    }
                }
            }
            m.entries.insert(name.to_string(), v);
        }
        for t in &ts {
            if let Some(name) = t.name.strip_suffix(".counts")
                && !m.entries.contains_key(name)
            {
                return Err(Error::Format(format!("{name} has counts but no sums")));
            }
        }
        Ok(m)
    }

    /// The legacy `.dat` format.
    pub fn from_legacy(b: &[u8]) -> Result<Imatrix> {
        let mut pos = 0usize;
        let mut m = Imatrix::default();
        let rd = |pos: &mut usize, len: usize, what: &str| -> Result<std::ops::Range<usize>> {
            let end = pos.checked_add(len).filter(|&e| e <= b.len());
            let end = end.ok_or_else(|| Error::Format(format!("truncated in {what}")))?;
            let r = *pos..end;
            *pos = end;
            Ok(r)
        };
        let int = |pos: &mut usize, what: &str| -> Result<i32> {
            let r = rd(pos, 4, what)?;
            Ok(i32::from_le_bytes(b[r].try_into().unwrap()))
        };
        let n = int(&mut pos, "the entry count")?;
        if n < 1 || n as usize > b.len() / 12 {
            return Err(Error::Format(format!(
                "not an imatrix file (it claims {n} entries)"
            )));
        }
        for i in 0..n {
            let len = int(&mut pos, "a name length")?;
            if len < 0 {
                return Err(Error::Format(format!("entry {i}: name length {len}")));
            }
            let r = rd(&mut pos, len as usize, "a name")?;
            let name = String::from_utf8_lossy(&b[r]).into_owned();
            let ncall = int(&mut pos, "ncall")?;
            let nval = int(&mut pos, "nval")?;
            if nval < 1 {
                return Err(Error::Format(format!("entry {name}: {nval} values")));
            }
            let r = rd(&mut pos, nval as usize * 4, "values")?;
            let mut v: Vec<f32> = b[r]
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect();
            if ncall > 0 {
                for x in &mut v {
                    *x /= ncall as f32;
                }
            }
            m.entries.insert(name, v);
        }
        if pos + 4 <= b.len() {
            m.chunk_count = int(&mut pos, "the chunk count")?.max(0) as u64;
            if let Ok(len) = int(&mut pos, "the dataset name")
                && len > 0
                && let Ok(r) = rd(&mut pos, len as usize, "the dataset name")
            {
                m.datasets.push(String::from_utf8_lossy(&b[r]).into_owned());
            }
        }
        Ok(m)
    }

    /// The weights for tensor `name` with `n_cols` columns and `n_expert` experts (1 for a
    /// plain matrix), checked against the tensor's shape.
    pub fn for_tensor(&self, name: &str, n_cols: usize, n_expert: usize) -> Result<Option<&[f32]>> {
        match self.entries.get(name) {
            None => Ok(None),
            Some(v) if v.len() == n_cols * n_expert => Ok(Some(v)),
            Some(v) => Err(Error::Invalid(format!(
                "imatrix entry {name} has {} values, the tensor needs {} ({} columns x {} experts): the imatrix is for another model",
                v.len(),
                n_cols * n_expert,
                n_cols,
                n_expert
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn legacy(entries: &[(&str, i32, &[f32])], tail: bool) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&(entries.len() as i32).to_le_bytes());
        for (n, ncall, v) in entries {
            b.extend_from_slice(&(n.len() as i32).to_le_bytes());
            b.extend_from_slice(n.as_bytes());
            b.extend_from_slice(&ncall.to_le_bytes());
            b.extend_from_slice(&(v.len() as i32).to_le_bytes());
            for x in *v {
                b.extend_from_slice(&x.to_le_bytes());
            }
        }
        if tail {
            b.extend_from_slice(&10i32.to_le_bytes());
            b.extend_from_slice(&4i32.to_le_bytes());
            b.extend_from_slice(b"wiki");
        }
        b
    }

    #[test]
    fn legacy_format() {
        let b = legacy(
            &[("blk.0.attn_q.weight", 4, &[4.0, 8.0]), ("x", 0, &[1.5])],
            true,
        );
        let m = Imatrix::from_legacy(&b).unwrap();
        assert_eq!(m.entries["blk.0.attn_q.weight"], vec![1.0, 2.0]);
        assert_eq!(m.entries["x"], vec![1.5]);
        assert_eq!(m.chunk_count, 10);
        assert_eq!(m.datasets, vec!["wiki".to_string()]);
        assert!(m.for_tensor("x", 2, 1).is_err());
        assert_eq!(m.for_tensor("y", 2, 1).unwrap(), None);
        // truncations anywhere are errors, never panics
        for cut in 0..b.len() - 12 {
            let _ = Imatrix::from_legacy(&b[..cut]);
        }
        assert!(Imatrix::from_legacy(&b[..20]).is_err());
        let mut huge = b.clone();
        huge[..4].copy_from_slice(&i32::MAX.to_le_bytes());
        assert!(Imatrix::from_legacy(&huge).is_err());
    }

    #[test]
    fn gguf_format() {
        use hearth_formats::Value;
        use hearth_formats::gguf_write::{GgufHeader, TensorSpec};
        let mut h = GgufHeader::default();
        h.set(
            "imatrix.datasets",
            Value::Array(vec![Value::Str("t.txt".into())]),
        );
        h.set("imatrix.chunk_count", Value::U32(3));
        h.set("imatrix.chunk_size", Value::U32(512));
        h.tensors = vec![
            TensorSpec {
                name: "a.weight.in_sum2".into(),
                shape: vec![2, 2],
                dtype: DType::F32,
            },
            TensorSpec {
                name: "a.weight.counts".into(),
                shape: vec![2, 1],
                dtype: DType::F32,
            },
        ];
        let mut w = h.begin(Vec::new()).unwrap();
        for v in [2f32, 4.0, 6.0, 8.0, 2.0, 0.0] {
            w.write(&v.to_le_bytes()).unwrap();
        }
        let (buf, _) = w.finish().unwrap();
        let g = GgufFile::parse(std::sync::Arc::new(buf)).unwrap();
        let m = Imatrix::from_gguf(&g).unwrap();
        assert_eq!(m.entries["a.weight"], vec![1.0, 2.0, 1.0, 1.0]);
        assert_eq!(m.chunk_count, 3);
        assert_eq!(m.for_tensor("a.weight", 2, 2).unwrap().unwrap().len(), 4);
    }
}
