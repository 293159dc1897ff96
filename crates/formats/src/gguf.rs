//! GGUF v2/v3 reader. The file is memory-mapped; tensors are views into the map.
//!
//! Every count and length read from the file is checked against the bytes that remain
//! before anything is allocated, so a truncated or hostile file gives an error, not an
//! out-of-memory abort or a panic.
use hearth_core::{DType, Error, Result, Storage, Tensor};
use std::collections::BTreeMap;
use std::sync::Arc;

/// A GGUF metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// uint8
    U8(u8),
    /// int8
    I8(i8),
    /// uint16
    U16(u16),
    /// int16
    I16(i16),
    /// uint32
    U32(u32),
    /// int32
    I32(i32),
    /// uint64
    U64(u64),
    /// int64
    I64(i64),
    /// float32
    F32(f32),
    /// float64
    F64(f64),
    /// bool
    Bool(bool),
    /// UTF-8 string (invalid UTF-8 is replaced lossily)
    Str(String),
    /// array of values of one type
    Array(Vec<Value>),
}

impl Value {
    /// The value as an unsigned integer, if it is a non-negative integer.
    pub fn as_u64(&self) -> Option<u64> {
        Some(match *self {
            Value::U8(v) => v as u64,
            Value::U16(v) => v as u64,
            Value::U32(v) => v as u64,
            Value::U64(v) => v,
            Value::I8(v) if v >= 0 => v as u64,
            Value::I16(v) if v >= 0 => v as u64,
            Value::I32(v) if v >= 0 => v as u64,
            Value::I64(v) if v >= 0 => v as u64,
            Value::Bool(b) => b as u64,
            _ => return None,
        })
    }
    /// The value as a signed integer.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Value::I8(v) => Some(v as i64),
            Value::I16(v) => Some(v as i64),
            Value::I32(v) => Some(v as i64),
            Value::I64(v) => Some(v),
            _ => self.as_u64().and_then(|v| i64::try_from(v).ok()),
        }
    }
    /// The value as a float.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v as f64),
            Value::F64(v) => Some(v),
            _ => self.as_i64().map(|v| v as f64),
        }
    }
    /// The value as a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }
    /// The value as a bool.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => self.as_u64().map(|v| v != 0),
        }
    }
    /// The value as an array.
    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// One tensor's entry in the GGUF header.
#[derive(Clone, Debug)]
pub struct TensorInfo {
    /// Name as stored in the file.
    pub name: String,
    /// Shape, outermost first (the reverse of GGUF's `ne` order).
    pub shape: Vec<usize>,
    /// Element type.
    pub dtype: DType,
    /// Offset from the start of the data section.
    pub offset: u64,
}

/// A parsed, memory-mapped GGUF file.
pub struct GgufFile {
    /// Format version (2 or 3).
    pub version: u32,
    /// Metadata, by key.
    pub metadata: BTreeMap<String, Value>,
    /// Tensor headers, in file order.
    pub tensor_infos: Vec<TensorInfo>,
    /// Absolute offset of the data section.
    pub data_offset: u64,
    /// File size in bytes.
    pub file_size: u64,
    map: Arc<dyn AsRef<[u8]> + Send + Sync>,
}

struct Cursor<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.b.len())
            .ok_or_else(|| {
                Error::Format(format!(
                    "GGUF file is truncated: {what} needs {n} bytes at offset {}, file has {}",
                    self.pos,
                    self.b.len()
                ))
            })?;
        let s = &self.b[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn remaining(&self) -> usize {
        self.b.len() - self.pos
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1, "a value")?[0])
    }
    fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_le_bytes(
            self.take(2, "a value")?.try_into().unwrap(),
        ))
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(
            self.take(4, "a value")?.try_into().unwrap(),
        ))
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(
            self.take(8, "a value")?.try_into().unwrap(),
        ))
    }
    fn string(&mut self) -> Result<String> {
        let n = self.u64()?;
        if n > self.remaining() as u64 {
            return Err(Error::Format(format!(
                "GGUF string length {n} at offset {} exceeds the {} bytes left in the file",
                self.pos - 8,
                self.remaining()
            )));
        }
        let s = self.take(n as usize, "a string")?;
        Ok(String::from_utf8_lossy(s).into_owned())
    }
    fn value(&mut self, ty: u32, depth: u32) -> Result<Value> {
        Ok(match ty {
            0 => Value::U8(self.u8()?),
            1 => Value::I8(self.u8()? as i8),
            2 => Value::U16(self.u16()?),
            3 => Value::I16(self.u16()? as i16),
            4 => Value::U32(self.u32()?),
            5 => Value::I32(self.u32()? as i32),
            6 => Value::F32(f32::from_bits(self.u32()?)),
            7 => Value::Bool(self.u8()? != 0),
            8 => Value::Str(self.string()?),
            9 => {
                if depth > 4 {
                    return Err(Error::Format("GGUF arrays nested too deeply".into()));
                }
                let ety = self.u32()?;
                let n = self.u64()?;
                // Every element takes at least one byte (strings at least 8), so a count larger
                // than the remaining bytes is a lie; check before allocating anything.
                let min = match ety {
                    0 | 1 | 7 => 1,
                    2 | 3 => 2,
                    4 | 5 | 6 => 4,
                    8 | 10 | 11 | 12 => 8,
                    9 => 12,
                    t => {
                        return Err(Error::Format(format!(
                            "unknown GGUF array element type {t}"
                        )));
                    }
                };
                if n.checked_mul(min)
                    .is_none_or(|b| b > self.remaining() as u64)
                {
                    return Err(Error::Format(format!(
                        "GGUF array of {n} elements at offset {} cannot fit in the {} bytes left",
                        self.pos,
                        self.remaining()
                    )));
                }
                let mut v = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    v.push(self.value(ety, depth + 1)?);
                }
                Value::Array(v)
            }
            10 => Value::U64(self.u64()?),
            11 => Value::I64(self.u64()? as i64),
            12 => Value::F64(f64::from_bits(self.u64()?)),
            t => {
                return Err(Error::Format(format!(
                    "unknown GGUF metadata value type {t}"
                )));
            }
        })
    }
}

impl GgufFile {
    /// Open and memory-map a GGUF file.
    pub fn open(path: &std::path::Path) -> Result<GgufFile> {
        let f = std::fs::File::open(path)
            .map_err(|e| Error::Io(format!("cannot open {}", path.display()), e))?;
        // SAFETY: the map is read-only; like every mmap-based loader we assume the file is not
        // truncated by another process while it is in use.
        let map = unsafe { memmap2::Mmap::map(&f) }
            .map_err(|e| Error::Io(format!("cannot map {}", path.display()), e))?;
        GgufFile::parse(Arc::new(map)).map_err(|e| match e {
            Error::Format(m) => Error::Format(format!("{}: {m}", path.display())),
            e => e,
        })
    }

    /// Parse GGUF from bytes (a map, or an owned buffer).
    pub fn parse(map: Arc<dyn AsRef<[u8]> + Send + Sync>) -> Result<GgufFile> {
        let bytes: &[u8] = (*map).as_ref();
        let mut c = Cursor { b: bytes, pos: 0 };
        let magic = c
            .take(4, "the magic number")
            .map_err(|_| Error::Format("file is too short to be GGUF".into()))?;
        if magic != b"GGUF" {
            return Err(Error::Format(format!(
                "not a GGUF file (magic {magic:02x?})"
            )));
        }
        let version = c.u32()?;
        if !(2..=3).contains(&version) {
            return Err(Error::Unsupported(format!(
                "GGUF version {version} (hearth reads versions 2 and 3)"
            )));
        }
        let n_tensors = c.u64()?;
        let n_kv = c.u64()?;
        // A tensor header needs >= 24 bytes, a key/value >= 13: check against the file.
        if n_tensors.saturating_mul(24) > c.remaining() as u64
            || n_kv.saturating_mul(13) > c.remaining() as u64
        {
            return Err(Error::Format(format!(
                "header claims {n_tensors} tensors and {n_kv} metadata entries, more than the file can hold: it is truncated or corrupt"
            )));
        }
        let mut metadata = BTreeMap::new();
        for _ in 0..n_kv {
            let key = c.string()?;
            let ty = c.u32()?;
            let v = c.value(ty, 0).map_err(|e| match e {
                Error::Format(m) => Error::Format(format!("metadata {key}: {m}")),
                e => e,
            })?;
            metadata.insert(key, v);
        }
        let mut tensor_infos = Vec::with_capacity(n_tensors as usize);
        for _ in 0..n_tensors {
            let name = c.string()?;
            let n_dims = c.u32()?;
            if n_dims > 8 {
                return Err(Error::Format(format!(
                    "tensor {name} has {n_dims} dimensions"
                )));
            }
            let mut shape = Vec::with_capacity(n_dims as usize);
            for _ in 0..n_dims {
                let d = c.u64()?;
                if d > bytes.len() as u64 * 8 {
                    return Err(Error::Format(format!(
                        "tensor {name}: dimension {d} is larger than the file"
                    )));
                }
                shape.push(d as usize);
            }
            shape.reverse();
            let ty = c.u32()?;
            let dtype = DType::from_ggml(ty).map_err(|_| {
                Error::Unsupported(format!("tensor {name} has unknown ggml type id {ty}"))
            })?;
            let offset = c.u64()?;
            tensor_infos.push(TensorInfo {
                name,
                shape,
                dtype,
                offset,
            });
        }
        let align = metadata
            .get("general.alignment")
            .and_then(Value::as_u64)
            .unwrap_or(32);
        if align == 0 || !align.is_power_of_two() || align > 1 << 20 {
            return Err(Error::Format(format!(
                "general.alignment {align} is not a sane power of two"
            )));
        }
        let data_offset = (c.pos as u64).div_ceil(align) * align;
        let file_size = bytes.len() as u64;
        let g = GgufFile {
            version,
            metadata,
            tensor_infos,
            data_offset,
            file_size,
            map: map.clone(),
        };
        // Validate every tensor's extent now, so later access cannot go out of bounds.
        for t in &g.tensor_infos {
            let n: u64 = t
                .shape
                .iter()
                .try_fold(1u64, |a, &d| a.checked_mul(d as u64))
                .unwrap_or(u64::MAX);
            let need = t
                .dtype
                .bytes_for(n)
                .map_err(|e| Error::Format(format!("tensor {}: {e}", t.name)))?;
            let end = data_offset
                .checked_add(t.offset)
                .and_then(|s| s.checked_add(need));
            if end.is_none_or(|e| e > file_size) {
                return Err(Error::Format(format!(
                    "tensor {} ({} bytes at data offset {}) runs past the end of the file ({file_size} bytes): the file is truncated",
                    t.name, need, t.offset
                )));
            }
        }
        Ok(g)
    }

    /// The architecture (`general.architecture`).
    pub fn architecture(&self) -> Option<&str> {
        self.metadata
            .get("general.architecture")
            .and_then(Value::as_str)
    }

    /// A metadata value.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    /// Build the tensor views (no data is copied).
    pub fn tensors(&self) -> Result<Vec<Tensor>> {
        self.tensor_infos
            .iter()
            .map(|t| {
                let n: usize = t.shape.iter().product();
                let len = t.dtype.bytes_for(n as u64)? as usize;
                let storage = Storage::new(
                    self.map.clone(),
                    (self.data_offset + t.offset) as usize,
                    len,
                )?;
                Tensor::new(t.name.clone(), t.dtype, t.shape.clone(), storage)
            })
            .collect()
    }
}

/// The other parts of a split GGUF (llama.cpp's `gguf-split`: `split.count` parts named
/// `NAME-0000K-of-0000N.gguf`, each with `split.no`), when `path` is the first of several.
pub fn split_siblings(path: &std::path::Path, first: &GgufFile) -> Result<Vec<std::path::PathBuf>> {
    let count = first
        .get("split.count")
        .and_then(Value::as_u64)
        .unwrap_or(1);
    if count <= 1 {
        return Ok(Vec::new());
    }
    let no = first.get("split.no").and_then(Value::as_u64).unwrap_or(0);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let suffix = format!("-00001-of-{count:05}.gguf");
    let stem = match name.strip_suffix(&suffix) {
        Some(s) if no == 0 && count <= 99_999 => s.to_string(),
        _ => {
            return Err(Error::Invalid(format!(
                "{} is part {} of a GGUF split into {count}: open the first part, NAME{suffix}",
                path.display(),
                no + 1
            )));
        }
    };
    Ok((2..=count)
        .map(|k| path.with_file_name(format!("{stem}-{k:05}-of-{count:05}.gguf")))
        .collect())
}

/// Check that `part` is the part its name says of the split `first` begins.
pub fn check_split_part(p: &std::path::Path, part: &GgufFile, first: &GgufFile) -> Result<()> {
    let count = first.get("split.count").and_then(Value::as_u64);
    let name = p
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let want = name
        .rsplit_once("-of-")
        .and_then(|(a, _)| a.rsplit_once('-'))
        .and_then(|(_, n)| n.parse::<u64>().ok())
        .and_then(|n| n.checked_sub(1));
    let no = part.get("split.no").and_then(Value::as_u64);
    if part.get("split.count").and_then(Value::as_u64) != count || no.is_none() || no != want {
        return Err(Error::Format(format!(
            "{} is not part {} of the same split GGUF (split.no {:?}, split.count {:?})",
            p.display(),
            want.map_or(0, |w| w + 1),
            no,
            part.get("split.count").and_then(Value::as_u64)
        )));
    }
    Ok(())
}
