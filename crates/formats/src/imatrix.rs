//! Importance matrices in llama.cpp's two file formats.
//!
//! An importance matrix holds, for each weight matrix (by its GGUF name, such as
//! `blk.0.attn_q.weight` or `blk.3.ffn_down_exps.weight`), the sum over the tokens of a
//! calibration text of the squared activations entering it, one value per input column, and
//! how many tokens were summed. MoE expert tensors keep one row of sums and one count per
//! expert. The quantizer weights each column's rounding error by `sums / count`.
//!
//! - The GGUF format (llama.cpp's `llama-imatrix` since mid-2025): `general.type = imatrix`,
//!   `imatrix.datasets`, `imatrix.chunk_count`, `imatrix.chunk_size`, and per matrix two F32
//!   tensors: `<name>.in_sum2` `[n_mat, n_cols]` and `<name>.counts` `[n_mat, 1]`.
//! - The legacy `.dat` format: `i32 n_entries`, then per entry `i32 len, name, i32 ncall,
//!   i32 nval, f32 values[nval]` holding `sums / count * ncall`; then optionally
//!   `i32 chunk_count, i32 len, dataset`. It reads back as sums `values` with one count
//!   `ncall` (as llama.cpp's own loader does), which gives the same `sums / count` (an entry
//!   of 0 calls counts 1, so that its values are kept, as llama-quantize keeps them).
//!
//! [`ImatrixEntry::means`] are the weights `llama-quantize --imatrix` quantizes with, from
//! either format; `hearth quantize` reads its `--imatrix` through this module.
use crate::gguf::GgufFile;
use hearth_core::{DType, Error, Result};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

/// One weight matrix's statistics.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ImatrixEntry {
    /// Sums of squared inputs, `[n_mat, n_cols]` row-major (`n_mat` = experts, else 1).
    pub sums: Vec<f32>,
    /// Tokens summed per matrix, `[n_mat]`.
    pub counts: Vec<f64>,
}

impl ImatrixEntry {
    /// Matrices (experts) in the entry.
    pub fn n_mat(&self) -> usize {
        self.counts.len()
    }

    /// Input columns per matrix.
    pub fn n_cols(&self) -> usize {
        self.sums.len().checked_div(self.counts.len()).unwrap_or(0)
    }

    /// The mean squared input per column, `[n_mat, n_cols]`: what a quantizer weighs errors
    /// by. A matrix that saw no tokens (an expert nothing was routed to) gets ones.
    pub fn means(&self) -> Vec<f32> {
        let nc = self.n_cols();
        let mut out = Vec::with_capacity(self.sums.len());
        for (m, &c) in self.counts.iter().enumerate() {
            let row = &self.sums[m * nc..(m + 1) * nc];
            if c > 0.0 {
                out.extend(row.iter().map(|&s| (s as f64 / c) as f32));
            } else {
                out.extend(std::iter::repeat_n(1.0f32, nc));
            }
        }
        out
    }
}

/// An importance matrix: entries by GGUF tensor name, and where it came from.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Imatrix {
    /// Statistics per weight matrix, by GGUF tensor name (`blk.0.attn_q.weight`).
    pub entries: BTreeMap<String, ImatrixEntry>,
    /// The calibration files.
    pub datasets: Vec<String>,
    /// Chunks (windows of `chunk_size` tokens) evaluated.
    pub chunk_count: u32,
    /// Tokens per chunk (0 when unknown: the legacy format does not say).
    pub chunk_size: u32,
}

impl Imatrix {
    /// Add `o`'s statistics to these (llama-imatrix's `--in-file`, given several times): sums
    /// and counts add per matrix, chunks add, datasets are listed once each. An error when a
    /// matrix has another shape in `o`; nothing changes then.
    pub fn merge(&mut self, o: &Imatrix) -> Result<()> {
        for (name, e) in &o.entries {
            if let Some(mine) = self.entries.get(name)
                && (mine.sums.len() != e.sums.len() || mine.counts.len() != e.counts.len())
            {
                return Err(Error::Invalid(format!(
                    "imatrix: {name} has {} values over {} matrices in one file and {} over {} in another",
                    mine.sums.len(),
                    mine.counts.len(),
                    e.sums.len(),
                    e.counts.len()
                )));
            }
        }
        for (name, e) in &o.entries {
            match self.entries.get_mut(name) {
                Some(mine) => {
                    for (a, b) in mine.sums.iter_mut().zip(&e.sums) {
                        *a += b;
                    }
                    for (a, b) in mine.counts.iter_mut().zip(&e.counts) {
                        *a += b;
                    }
                }
                None => {
                    self.entries.insert(name.clone(), e.clone());
                }
            }
        }
        for d in &o.datasets {
            if !self.datasets.contains(d) {
                self.datasets.push(d.clone());
            }
        }
        self.chunk_count += o.chunk_count;
        if self.chunk_size == 0 {
            self.chunk_size = o.chunk_size;
        }
        Ok(())
    }
}

/// Read an importance matrix in either format (GGUF, else legacy `.dat`).
pub fn read_imatrix(path: &Path) -> Result<Imatrix> {
    let mut magic = [0u8; 4];
    {
        use std::io::Read;
        let mut f = std::fs::File::open(path)
            .map_err(|e| Error::Io(format!("cannot open {}", path.display()), e))?;
        let n = f
            .read(&mut magic)
            .map_err(|e| Error::Io(format!("cannot read {}", path.display()), e))?;
        if n < 4 {
            return Err(Error::Format(format!(
                "{}: too short to be an importance matrix",
                path.display()
            )));
        }
    }
    let r = if &magic == b"GGUF" {
        read_gguf(path)
    } else {
        let bytes = std::fs::read(path)
            .map_err(|e| Error::Io(format!("cannot read {}", path.display()), e))?;
        parse_legacy(&bytes)
    };
    r.map_err(|e| match e {
        Error::Format(m) if !m.starts_with(&*path.to_string_lossy()) => {
            Error::Format(format!("{}: {m}", path.display()))
        }
        e => e,
    })
}

fn f32s(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn read_gguf(path: &Path) -> Result<Imatrix> {
    let g = GgufFile::open(path)?;
    let mut m = Imatrix::default();
    if let Some(ds) = g.get("imatrix.datasets").and_then(|v| v.as_array()) {
        m.datasets = ds
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect();
    }
    let u32_of = |k: &str| g.get(k).and_then(|v| v.as_u64()).unwrap_or(0) as u32;
    m.chunk_count = u32_of("imatrix.chunk_count");
    m.chunk_size = u32_of("imatrix.chunk_size");
    let mut sums: BTreeMap<String, Vec<f32>> = BTreeMap::new();
    let mut counts: BTreeMap<String, Vec<f32>> = BTreeMap::new();
    for t in g.tensors()? {
        let (name, into) = if let Some(n) = t.name.strip_suffix(".in_sum2") {
            (n, &mut sums)
        } else if let Some(n) = t.name.strip_suffix(".counts") {
            (n, &mut counts)
        } else {
            continue;
        };
        if t.dtype != DType::F32 {
            return Err(Error::Format(format!(
                "tensor {} is {}, an importance matrix holds F32",
                t.name, t.dtype
            )));
        }
        into.insert(name.to_string(), f32s(t.bytes()));
    }
    if sums.is_empty() {
        return Err(Error::Format(
            "no <name>.in_sum2 tensors: not an importance matrix".into(),
        ));
    }
    for (name, s) in sums {
        let c = counts
            .remove(&name)
            .ok_or_else(|| Error::Format(format!("{name} has in_sum2 but no counts")))?;
        if c.is_empty() || s.len() % c.len() != 0 {
            return Err(Error::Format(format!(
                "{name}: {} sums do not split into {} matrices",
                s.len(),
                c.len()
            )));
        }
        let counts = c.iter().map(|&x| x.round() as f64).collect();
        m.entries.insert(name, ImatrixEntry { sums: s, counts });
    }
    if let Some(name) = counts.keys().next() {
        return Err(Error::Format(format!("{name} has counts but no in_sum2")));
    }
    Ok(m)
}

/// The legacy `.dat` format from bytes.
pub fn parse_legacy(b: &[u8]) -> Result<Imatrix> {
    let mut pos = 0usize;
    let mut take = |n: usize, what: &str| -> Result<&[u8]> {
        let end = pos
            .checked_add(n)
            .filter(|&e| e <= b.len())
            .ok_or_else(|| Error::Format(format!("truncated legacy imatrix at {what}")))?;
        let s = &b[pos..end];
        pos = end;
        Ok(s)
    };
    let i32_at = |s: &[u8]| i32::from_le_bytes([s[0], s[1], s[2], s[3]]);
    let n_entries = i32_at(take(4, "the entry count")?);
    if n_entries < 1 {
        return Err(Error::Format(format!(
            "not an importance matrix ({n_entries} entries)"
        )));
    }
    let mut m = Imatrix::default();
    for i in 0..n_entries {
        let len = i32_at(take(4, "a name length")?);
        if !(1..=4096).contains(&len) {
            return Err(Error::Format(format!(
                "entry {i}: name length {len} is not plausible: not an importance matrix"
            )));
        }
        let name = String::from_utf8_lossy(take(len as usize, "a name")?).into_owned();
        let ncall = i32_at(take(4, "a call count")?);
        let nval = i32_at(take(4, "a value count")?);
        if nval < 1 || ncall < 0 {
            return Err(Error::Format(format!(
                "entry {name}: {nval} values, {ncall} calls"
            )));
        }
        let vals = f32s(take(nval as usize * 4, "values")?);
        // llama-quantize divides the values by ncall only when it is positive: an entry of
        // no calls keeps its values, as one count does
        m.entries.insert(
            name,
            ImatrixEntry {
                sums: vals,
                counts: vec![ncall.max(1) as f64],
            },
        );
    }
    // optional trailer: chunk count and the dataset's name
    if let Ok(c) = take(4, "the chunk count") {
        m.chunk_count = i32_at(c).max(0) as u32;
        if let Ok(l) = take(4, "the dataset name length") {
            let l = i32_at(l);
            if l > 0
                && let Ok(s) = take(l as usize, "the dataset name")
            {
                m.datasets.push(String::from_utf8_lossy(s).into_owned());
            }
        }
    }
    Ok(m)
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> Error + '_ {
    move |e| Error::Io(format!("cannot write {}", path.display()), e)
}

fn check_entries(m: &Imatrix) -> Result<()> {
    for (name, e) in &m.entries {
        if e.counts.is_empty() || e.sums.is_empty() || e.sums.len() % e.counts.len() != 0 {
            return Err(Error::Invalid(format!(
                "imatrix entry {name}: {} sums do not split into {} matrices",
                e.sums.len(),
                e.counts.len()
            )));
        }
    }
    Ok(())
}

/// Write `m` in llama.cpp's GGUF imatrix format (as `llama-imatrix` writes it: entries in
/// name order, `in_sum2` then `counts`).
pub fn write_imatrix_gguf(path: &Path, m: &Imatrix) -> Result<()> {
    check_entries(m)?;
    const ALIGN: usize = 32;
    let mut h: Vec<u8> = Vec::new();
    let s = |h: &mut Vec<u8>, v: &str| {
        h.extend((v.len() as u64).to_le_bytes());
        h.extend(v.as_bytes());
    };
    h.extend(b"GGUF");
    h.extend(3u32.to_le_bytes());
    h.extend((2 * m.entries.len() as u64).to_le_bytes());
    h.extend(4u64.to_le_bytes());
    s(&mut h, "general.type");
    h.extend(8u32.to_le_bytes());
    s(&mut h, "imatrix");
    s(&mut h, "imatrix.datasets");
    h.extend(9u32.to_le_bytes());
    h.extend(8u32.to_le_bytes());
    h.extend((m.datasets.len() as u64).to_le_bytes());
    for d in &m.datasets {
        s(&mut h, d);
    }
    for (k, v) in [
        ("imatrix.chunk_count", m.chunk_count),
        ("imatrix.chunk_size", m.chunk_size),
    ] {
        s(&mut h, k);
        h.extend(4u32.to_le_bytes());
        h.extend(v.to_le_bytes());
    }
    let mut offset = 0usize;
    let mut data: Vec<(Vec<f32>, usize)> = Vec::new();
    for (name, e) in &m.entries {
        let nm = e.counts.len();
        let tensors = [
            (format!("{name}.in_sum2"), e.n_cols(), e.sums.clone()),
            (
                format!("{name}.counts"),
                1,
                e.counts.iter().map(|&c| c as f32).collect(),
            ),
        ];
        for (tn, ne0, vals) in tensors {
            s(&mut h, &tn);
            h.extend(2u32.to_le_bytes());
            h.extend((ne0 as u64).to_le_bytes());
            h.extend((nm as u64).to_le_bytes());
            h.extend(0u32.to_le_bytes()); // F32
            h.extend((offset as u64).to_le_bytes());
            let bytes = vals.len() * 4;
            data.push((vals, offset));
            offset += bytes.div_ceil(ALIGN) * ALIGN;
        }
    }
    h.resize(h.len().div_ceil(ALIGN) * ALIGN, 0);
    let base = h.len();
    let mut out = vec![0u8; base + offset];
    out[..base].copy_from_slice(&h);
    for (vals, off) in data {
        for (i, v) in vals.iter().enumerate() {
            let p = base + off + i * 4;
            out[p..p + 4].copy_from_slice(&v.to_le_bytes());
        }
    }
    std::fs::write(path, out).map_err(io_err(path))
}

/// Write `m` in llama.cpp's legacy `.dat` format (`values = sums / count * ncall`, with
/// `ncall` the entry's largest count over the chunk size, rounded up; a matrix without
/// tokens stores ones).
pub fn write_imatrix_legacy(path: &Path, m: &Imatrix) -> Result<()> {
    check_entries(m)?;
    let cs = m.chunk_size.max(1) as f64;
    let mut out: Vec<u8> = Vec::new();
    out.extend((m.entries.len() as i32).to_le_bytes());
    for (name, e) in &m.entries {
        out.extend((name.len() as i32).to_le_bytes());
        out.extend(name.as_bytes());
        let maxc = e.counts.iter().copied().fold(0.0f64, f64::max);
        let ncall = (maxc / cs).ceil() as i32;
        out.extend(ncall.to_le_bytes());
        out.extend((e.sums.len() as i32).to_le_bytes());
        let nc = e.n_cols();
        for (i, &v) in e.sums.iter().enumerate() {
            let c = e.counts[i / nc];
            let x = if c == 0.0 {
                ncall as f32
            } else {
                (v / c as f32) * ncall as f32
            };
            out.extend(x.to_le_bytes());
        }
    }
    out.extend((m.chunk_count as i32).to_le_bytes());
    let ds = m.datasets.last().map(String::as_str).unwrap_or("");
    out.extend((ds.len() as i32).to_le_bytes());
    out.extend(ds.as_bytes());
    let mut f = std::fs::File::create(path).map_err(io_err(path))?;
    f.write_all(&out).map_err(io_err(path))
}

/// The GGUF name an imatrix entry has for a weight (canonical names are GGUF's), and the
/// expert it belongs to: `blk.2.ffn_up_exps.weight[5]` (a slice of a merged GGUF expert
/// tensor) and `blk.2.ffn_up_exps.5.weight` (a Hugging Face per-expert tensor) are both
/// expert 5 of `blk.2.ffn_up_exps.weight`. `None` for a name that is not one matrix of the
/// file (a view of some of its rows, a tensor the loader derived).
pub fn imatrix_name(canonical: &str) -> Option<(String, Option<usize>)> {
    if let Some((base, rest)) = canonical.split_once('[') {
        let idx: usize = rest.strip_suffix(']')?.parse().ok()?;
        if base.contains("_exps") && !base.contains('[') {
            return Some((base.to_string(), Some(idx)));
        }
        return None;
    }
    let parts: Vec<&str> = canonical.split('.').collect();
    // blk.N.ffn_X_exps.E.weight
    if parts.len() == 5
        && parts[2].ends_with("_exps")
        && let Ok(e) = parts[3].parse::<usize>()
    {
        return Some((
            format!("{}.{}.{}.{}", parts[0], parts[1], parts[2], parts[4]),
            Some(e),
        ));
    }
    Some((canonical.to_string(), None))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Imatrix {
        let mut m = Imatrix {
            datasets: vec!["calib.txt".into()],
            chunk_count: 3,
            chunk_size: 8,
            ..Default::default()
        };
        m.entries.insert(
            "blk.0.attn_q.weight".into(),
            ImatrixEntry {
                sums: vec![1.0, 2.5, 3.0, 24.0],
                counts: vec![24.0],
            },
        );
        m.entries.insert(
            "blk.0.ffn_down_exps.weight".into(),
            ImatrixEntry {
                sums: vec![1.0, 2.0, 0.0, 0.0, 5.0, 7.0],
                counts: vec![4.0, 0.0, 10.0],
            },
        );
        m
    }

    #[test]
    fn merging_adds_sums_counts_and_chunks() {
        let mut a = sample();
        let mut b = sample();
        b.datasets = vec!["other.txt".into()];
        b.entries.insert(
            "blk.1.attn_k.weight".into(),
            ImatrixEntry {
                sums: vec![2.0],
                counts: vec![1.0],
            },
        );
        a.merge(&b).unwrap();
        let q = &a.entries["blk.0.attn_q.weight"];
        assert_eq!(q.sums, vec![2.0, 5.0, 6.0, 48.0]);
        assert_eq!(q.counts, vec![48.0]);
        // the means of a matrix seen twice as often with twice the sums are unchanged
        assert_eq!(q.means(), sample().entries["blk.0.attn_q.weight"].means());
        assert_eq!(
            a.entries["blk.0.ffn_down_exps.weight"].counts,
            vec![8.0, 0.0, 20.0]
        );
        assert_eq!(a.entries["blk.1.attn_k.weight"].sums, vec![2.0]);
        assert_eq!((a.chunk_count, a.chunk_size), (6, 8));
        assert_eq!(a.datasets, vec!["calib.txt", "other.txt"]);
        // another shape is an error that changes nothing
        let mut c = sample();
        c.entries.get_mut("blk.0.attn_q.weight").unwrap().sums.pop();
        let before = a.clone();
        let err = a.merge(&c).unwrap_err().to_string();
        assert!(err.contains("blk.0.attn_q.weight"), "{err}");
        assert_eq!(a, before);
    }

    fn tmp(name: &str) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("hearth_imatrix_{}_{name}", std::process::id()))
    }

    #[test]
    fn gguf_round_trip() {
        let m = sample();
        let p = tmp("rt.gguf");
        write_imatrix_gguf(&p, &m).unwrap();
        let r = read_imatrix(&p).unwrap();
        std::fs::remove_file(&p).ok();
        assert_eq!(r, m);
        let e = &r.entries["blk.0.ffn_down_exps.weight"];
        assert_eq!((e.n_mat(), e.n_cols()), (3, 2));
        assert_eq!(e.means(), vec![0.25, 0.5, 1.0, 1.0, 0.5, 0.7]);
    }

    #[test]
    fn legacy_round_trip_keeps_the_means() {
        let m = sample();
        let p = tmp("rt.dat");
        write_imatrix_legacy(&p, &m).unwrap();
        let r = read_imatrix(&p).unwrap();
        std::fs::remove_file(&p).ok();
        assert_eq!(r.datasets, m.datasets);
        assert_eq!(r.chunk_count, 3);
        for (name, e) in &m.entries {
            let got = r.entries[name].means();
            // an expert without tokens reads back as ones either way
            for (a, b) in got.iter().zip(e.means()) {
                assert!(
                    (a - b).abs() <= 1e-6 * b.abs().max(1.0),
                    "{name}: {a} vs {b}"
                );
            }
        }
    }

    #[test]
    fn bad_files_are_errors() {
        let p = tmp("bad.dat");
        for bytes in [
            &b""[..],
            &b"\x01\x00"[..],
            &[0u8, 0, 0, 0][..],
            &[1u8, 0, 0, 0, 0xff, 0xff, 0xff, 0x7f][..],
            &[
                1u8, 0, 0, 0, 1, 0, 0, 0, b'a', 1, 0, 0, 0, 100, 0, 0, 0, 0, 0,
            ][..],
        ] {
            std::fs::write(&p, bytes).unwrap();
            assert!(read_imatrix(&p).is_err(), "{bytes:?}");
        }
        std::fs::remove_file(&p).ok();
        assert!(read_imatrix(&tmp("missing")).is_err());
    }

    #[test]
    fn names_map_to_gguf_entries() {
        let n = |s: &str| imatrix_name(s);
        assert_eq!(
            n("blk.0.attn_q.weight"),
            Some(("blk.0.attn_q.weight".into(), None))
        );
        assert_eq!(
            n("blk.2.ffn_up_exps.weight[5]"),
            Some(("blk.2.ffn_up_exps.weight".into(), Some(5)))
        );
        assert_eq!(
            n("blk.2.ffn_up_exps.5.weight"),
            Some(("blk.2.ffn_up_exps.weight".into(), Some(5)))
        );
        assert_eq!(n("blk.1.attn_kv_b.weight[0..16]"), None);
    }
}
