//! The importance matrix `hearth quantize --imatrix` weighs rounding errors with: llama.cpp's
//! files in either format, read by `hearth_formats::imatrix` (the reader `hearth imatrix`'s
//! files are tested with), normalized as llama-quantize does (GGUF sums divided by their count
//! per expert, 1 where the count is 0; legacy values by ncall): `ImatrixEntry::means`.
use hearth_core::{Error, Result};
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
        let f = hearth_formats::read_imatrix(path).map_err(|e| match e {
            Error::Format(m) => Error::Invalid(format!("imatrix: {m}")),
            e => e,
        })?;
        let m = Self::from_file(&f, path.display().to_string())?;
        if m.entries.is_empty() {
            return Err(Error::Invalid(format!(
                "imatrix {} has no entries",
                path.display()
            )));
        }
        Ok(m)
    }

    /// The quantizer's weights from a read file; `file` names it in errors and metadata.
    pub fn from_file(f: &hearth_formats::Imatrix, file: String) -> Result<Imatrix> {
        let mut m = Imatrix {
            datasets: f.datasets.clone(),
            chunk_count: f.chunk_count as u64,
            file,
            ..Default::default()
        };
        for (k, e) in &f.entries {
            let v = e.means();
            if v.iter().any(|x| !x.is_finite() || *x < 0.0) {
                return Err(Error::Invalid(format!(
                    "imatrix {}: entry {k} has a negative or non-finite value",
                    m.file
                )));
            }
            m.entries.insert(k.clone(), v);
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
    use hearth_core::DType;

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

    fn tmp(name: &str, b: &[u8]) -> std::path::PathBuf {
        let p = std::env::temp_dir().join(format!("hearth_cv_im_{}_{name}", std::process::id()));
        std::fs::write(&p, b).unwrap();
        p
    }

    #[test]
    fn legacy_format() {
        let b = legacy(
            &[("blk.0.attn_q.weight", 4, &[4.0, 8.0]), ("x", 0, &[1.5])],
            true,
        );
        let p = tmp("legacy.dat", &b);
        let m = Imatrix::load(&p).unwrap();
        assert_eq!(m.entries["blk.0.attn_q.weight"], vec![1.0, 2.0]);
        // no calls: the values are kept, as llama-quantize keeps them
        assert_eq!(m.entries["x"], vec![1.5]);
        assert_eq!(m.chunk_count, 10);
        assert_eq!(m.datasets, vec!["wiki".to_string()]);
        assert!(m.for_tensor("x", 2, 1).is_err());
        assert_eq!(m.for_tensor("y", 2, 1).unwrap(), None);
        // truncations anywhere are errors, never panics
        for cut in 0..b.len() - 12 {
            let _ = hearth_formats::imatrix::parse_legacy(&b[..cut]);
        }
        let short = tmp("short.dat", &b[..20]);
        assert!(Imatrix::load(&short).is_err());
        let mut huge = b.clone();
        huge[..4].copy_from_slice(&i32::MAX.to_le_bytes());
        let huge = tmp("huge.dat", &huge);
        assert!(Imatrix::load(&huge).is_err());
        let neg = tmp("neg.dat", &legacy(&[("a", 1, &[-1.0])], false));
        let e = Imatrix::load(&neg).unwrap_err().to_string();
        assert!(e.contains("negative"), "{e}");
        for p in [p, short, huge, neg] {
            std::fs::remove_file(p).ok();
        }
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
        let p = tmp("im.gguf", &buf);
        let m = Imatrix::load(&p).unwrap();
        std::fs::remove_file(&p).ok();
        // the second expert saw no tokens: ones
        assert_eq!(m.entries["a.weight"], vec![1.0, 2.0, 1.0, 1.0]);
        assert_eq!(m.chunk_count, 3);
        assert_eq!(m.datasets, vec!["t.txt".to_string()]);
        assert_eq!(m.for_tensor("a.weight", 2, 2).unwrap().unwrap().len(), 4);
    }
}
