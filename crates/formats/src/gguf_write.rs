//! GGUF v3 writer, streaming: the header (metadata, tensor infos with their offsets) is
//! written first from the tensors' shapes and types alone, then each tensor's data in order,
//! in as many pieces as the caller likes, each tensor padded to the alignment. Nothing but the
//! header is held in memory.
use crate::gguf::Value;
use hearth_core::{DType, Error, Result};
use std::io::Write;

/// The default `general.alignment`.
pub const DEFAULT_ALIGNMENT: u64 = 32;

/// A tensor to be written: name, shape (outermost first, as [`crate::gguf::TensorInfo`]), type.
#[derive(Clone, Debug)]
pub struct TensorSpec {
    /// Name in the file.
    pub name: String,
    /// Shape, outermost first.
    pub shape: Vec<usize>,
    /// Element type.
    pub dtype: DType,
}

impl TensorSpec {
    /// Bytes of this tensor's data.
    pub fn bytes(&self) -> Result<u64> {
        let n = self
            .shape
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d as u64))
            .ok_or_else(|| Error::Invalid(format!("tensor {}: size overflows", self.name)))?;
        let row = *self.shape.last().unwrap_or(&1);
        if !row.is_multiple_of(self.dtype.block_size()) {
            return Err(Error::Invalid(format!(
                "tensor {}: rows of {row} are not whole {} blocks of {}",
                self.name,
                self.dtype,
                self.dtype.block_size()
            )));
        }
        self.dtype.bytes_for(n)
    }
}

/// What goes into a GGUF header: metadata in insertion order and the tensors in file order.
#[derive(Clone, Debug, Default)]
pub struct GgufHeader {
    /// Metadata entries, in the order they are written.
    pub metadata: Vec<(String, Value)>,
    /// Tensors, in the order their data follows.
    pub tensors: Vec<TensorSpec>,
}

impl GgufHeader {
    /// Set a metadata value, replacing an existing one in place.
    pub fn set(&mut self, key: &str, v: Value) {
        match self.metadata.iter_mut().find(|(k, _)| k == key) {
            Some(e) => e.1 = v,
            None => self.metadata.push((key.to_string(), v)),
        }
    }

    /// Remove a metadata key.
    pub fn remove(&mut self, key: &str) {
        self.metadata.retain(|(k, _)| k != key);
    }

    /// A metadata value.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// The alignment this header asks for (`general.alignment`, else 32).
    pub fn alignment(&self) -> Result<u64> {
        let a = match self.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(v) => v
                .as_u64()
                .ok_or_else(|| Error::Invalid("general.alignment is not an integer".into()))?,
        };
        if a == 0 || !a.is_power_of_two() || a > 1 << 20 {
            return Err(Error::Invalid(format!(
                "general.alignment {a} is not a sane power of two"
            )));
        }
        Ok(a)
    }

    /// Write the header to `w` and return the writer for the tensor data.
    pub fn begin<W: Write>(&self, mut w: W) -> Result<GgufDataWriter<W>> {
        let align = self.alignment()?;
        let mut names = std::collections::HashSet::new();
        for t in &self.tensors {
            if !names.insert(t.name.as_str()) {
                return Err(Error::Invalid(format!("tensor {} is listed twice", t.name)));
            }
        }
        let mut h = Vec::new();
        h.extend_from_slice(b"GGUF");
        h.extend_from_slice(&3u32.to_le_bytes());
        h.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        h.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
        for (k, v) in &self.metadata {
            put_str(&mut h, k);
            h.extend_from_slice(&type_id(v).to_le_bytes());
            put_value(&mut h, v).map_err(|e| Error::Invalid(format!("metadata {k}: {e}")))?;
        }
        let mut sizes = Vec::with_capacity(self.tensors.len());
        let mut offset = 0u64;
        for t in &self.tensors {
            put_str(&mut h, &t.name);
            h.extend_from_slice(&(t.shape.len() as u32).to_le_bytes());
            for &d in t.shape.iter().rev() {
                h.extend_from_slice(&(d as u64).to_le_bytes());
            }
            h.extend_from_slice(&t.dtype.ggml_id().to_le_bytes());
            h.extend_from_slice(&offset.to_le_bytes());
            let size = t.bytes()?;
            sizes.push(size);
            offset += size.div_ceil(align) * align;
        }
        let pad = (h.len() as u64).div_ceil(align) * align - h.len() as u64;
        h.resize(h.len() + pad as usize, 0);
        w.write_all(&h)
            .map_err(|e| Error::Io("cannot write the GGUF header".into(), e))?;
        Ok(GgufDataWriter {
            w,
            names: self.tensors.iter().map(|t| t.name.clone()).collect(),
            sizes,
            cur: 0,
            done: 0,
            align,
            total: h.len() as u64,
        })
    }
}

/// Writes the tensors' data after [`GgufHeader::begin`], in file order.
pub struct GgufDataWriter<W: Write> {
    w: W,
    names: Vec<String>,
    sizes: Vec<u64>,
    cur: usize,
    done: u64,
    align: u64,
    total: u64,
}

impl<W: Write> GgufDataWriter<W> {
    fn io(&self, e: std::io::Error) -> Error {
        Error::Io("cannot write GGUF tensor data".into(), e)
    }

    /// The tensor whose data comes next, if any.
    pub fn current(&self) -> Option<&str> {
        self.names.get(self.cur).map(String::as_str)
    }

    /// Append bytes of the current tensor's data. When the tensor is complete it is padded and
    /// the next one begins; a piece may not run past the end of the current tensor.
    pub fn write(&mut self, bytes: &[u8]) -> Result<()> {
        let Some(&size) = self.sizes.get(self.cur) else {
            return Err(Error::Invalid(
                "more tensor data than the header lists".into(),
            ));
        };
        if self.done + bytes.len() as u64 > size {
            return Err(Error::Invalid(format!(
                "tensor {}: {} bytes given where {} remain",
                self.names[self.cur],
                bytes.len(),
                size - self.done
            )));
        }
        self.w.write_all(bytes).map_err(|e| self.io(e))?;
        self.done += bytes.len() as u64;
        self.total += bytes.len() as u64;
        while self.cur < self.sizes.len() && self.done == self.sizes[self.cur] {
            let pad = self.done.div_ceil(self.align) * self.align - self.done;
            self.w
                .write_all(&vec![0u8; pad as usize])
                .map_err(|e| self.io(e))?;
            self.total += pad;
            self.cur += 1;
            self.done = 0;
        }
        Ok(())
    }

    /// Check that every tensor was written in full, flush, and return the sink and file size.
    pub fn finish(mut self) -> Result<(W, u64)> {
        if self.cur < self.sizes.len() {
            return Err(Error::Invalid(format!(
                "tensor {} was not written in full ({} of {} bytes)",
                self.names[self.cur], self.done, self.sizes[self.cur]
            )));
        }
        self.w.flush().map_err(|e| self.io(e))?;
        Ok((self.w, self.total))
    }
}

fn put_str(h: &mut Vec<u8>, s: &str) {
    h.extend_from_slice(&(s.len() as u64).to_le_bytes());
    h.extend_from_slice(s.as_bytes());
}

/// The GGUF value type id. An empty array is written as an array of u8 (its element type
/// is not known once read).
fn type_id(v: &Value) -> u32 {
    match v {
        Value::U8(_) => 0,
        Value::I8(_) => 1,
        Value::U16(_) => 2,
        Value::I16(_) => 3,
        Value::U32(_) => 4,
        Value::I32(_) => 5,
        Value::F32(_) => 6,
        Value::Bool(_) => 7,
        Value::Str(_) => 8,
        Value::Array(_) => 9,
        Value::U64(_) => 10,
        Value::I64(_) => 11,
        Value::F64(_) => 12,
    }
}

fn put_value(h: &mut Vec<u8>, v: &Value) -> std::result::Result<(), String> {
    match v {
        Value::U8(x) => h.push(*x),
        Value::I8(x) => h.push(*x as u8),
        Value::U16(x) => h.extend_from_slice(&x.to_le_bytes()),
        Value::I16(x) => h.extend_from_slice(&x.to_le_bytes()),
        Value::U32(x) => h.extend_from_slice(&x.to_le_bytes()),
        Value::I32(x) => h.extend_from_slice(&x.to_le_bytes()),
        Value::F32(x) => h.extend_from_slice(&x.to_le_bytes()),
        Value::Bool(x) => h.push(*x as u8),
        Value::Str(s) => put_str(h, s),
        Value::U64(x) => h.extend_from_slice(&x.to_le_bytes()),
        Value::I64(x) => h.extend_from_slice(&x.to_le_bytes()),
        Value::F64(x) => h.extend_from_slice(&x.to_le_bytes()),
        Value::Array(a) => {
            let et = a.first().map_or(0, type_id);
            if a.iter().any(|e| type_id(e) != et) {
                return Err("an array's elements must all have one type".into());
            }
            h.extend_from_slice(&et.to_le_bytes());
            h.extend_from_slice(&(a.len() as u64).to_le_bytes());
            for e in a {
                put_value(h, e)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::GgufFile;
    use std::sync::Arc;

    fn header() -> GgufHeader {
        let mut h = GgufHeader::default();
        let vals = [
            ("a.u8", Value::U8(7)),
            ("a.i8", Value::I8(-7)),
            ("a.u16", Value::U16(700)),
            ("a.i16", Value::I16(-700)),
            ("a.u32", Value::U32(70_000)),
            ("a.i32", Value::I32(-70_000)),
            ("a.f32", Value::F32(1.5)),
            ("a.bool", Value::Bool(true)),
            ("a.str", Value::Str("héllo".into())),
            ("a.u64", Value::U64(1 << 40)),
            ("a.i64", Value::I64(-(1 << 40))),
            ("a.f64", Value::F64(-2.25)),
            (
                "a.arr_s",
                Value::Array(vec![Value::Str("x".into()), Value::Str("".into())]),
            ),
            ("a.arr_i", Value::Array(vec![Value::I32(1), Value::I32(-2)])),
            (
                "a.nested",
                Value::Array(vec![Value::Array(vec![Value::F32(0.5)])]),
            ),
        ];
        for (k, v) in vals {
            h.set(k, v);
        }
        h.tensors = vec![
            TensorSpec {
                name: "t0".into(),
                shape: vec![3, 32],
                dtype: DType::Q8_0,
            },
            TensorSpec {
                name: "t1".into(),
                shape: vec![5],
                dtype: DType::F32,
            },
            TensorSpec {
                name: "t2".into(),
                shape: vec![2, 256],
                dtype: DType::Q4_K,
            },
        ];
        h
    }

    #[test]
    fn round_trip_through_the_reader() {
        for align in [None, Some(64u32)] {
            let mut h = header();
            if let Some(a) = align {
                h.set("general.alignment", Value::U32(a));
            }
            let mut out = h.begin(Vec::new()).unwrap();
            let datas: Vec<Vec<u8>> = h
                .tensors
                .iter()
                .enumerate()
                .map(|(i, t)| {
                    (0..t.bytes().unwrap())
                        .map(|b| (b as usize * 7 + i) as u8)
                        .collect()
                })
                .collect();
            for d in &datas {
                // in two pieces, to exercise streaming
                out.write(&d[..d.len() / 2]).unwrap();
                out.write(&d[d.len() / 2..]).unwrap();
            }
            let (buf, total) = out.finish().unwrap();
            assert_eq!(total as usize, buf.len());
            let g = GgufFile::parse(Arc::new(buf)).unwrap();
            assert_eq!(g.version, 3);
            for (k, v) in &h.metadata {
                assert_eq!(g.get(k), Some(v), "{k}");
            }
            let a = align.unwrap_or(32) as u64;
            assert_eq!(g.data_offset % a, 0);
            let ts = g.tensors().unwrap();
            for ((t, spec), d) in ts.iter().zip(&h.tensors).zip(&datas) {
                assert_eq!(t.name, spec.name);
                assert_eq!(t.shape, spec.shape);
                assert_eq!(t.dtype, spec.dtype);
                assert_eq!(t.bytes(), &d[..]);
            }
            for ti in &g.tensor_infos {
                assert_eq!(ti.offset % a, 0);
            }
        }
    }

    #[test]
    fn misuse_is_an_error() {
        let h = header();
        let mut out = h.begin(Vec::new()).unwrap();
        assert!(out.write(&[0u8; 200]).is_err(), "more than t0 holds");
        out.write(&[0u8; 102]).unwrap();
        assert!(out.finish().is_err(), "t1, t2 missing");
        let mut h = header();
        h.tensors[1].name = "t0".into();
        assert!(h.begin(Vec::new()).is_err(), "duplicate name");
        let mut h = header();
        h.tensors[2].shape = vec![2, 100];
        assert!(h.begin(Vec::new()).is_err(), "row not whole blocks");
        let mut h = header();
        h.set("a.mixed", Value::Array(vec![Value::I32(1), Value::U8(2)]));
        assert!(h.begin(Vec::new()).is_err(), "mixed array");
        h.remove("a.mixed");
        h.set("general.alignment", Value::U32(48));
        assert!(h.begin(Vec::new()).is_err(), "alignment");
    }
}
