use crate::{DType, Error, Result};
use std::sync::Arc;

/// Where a tensor's bytes live. Every weight tensor carries its own device, so a model can
/// keep some tensors (MoE experts, say) somewhere other than the rest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Device {
    /// Host memory, or a memory-mapped file the OS pages in on demand.
    #[default]
    Cpu,
    /// A CUDA device, by ordinal.
    Cuda(u32),
    /// A Vulkan device, by ordinal.
    Vulkan(u32),
}

/// Bytes backing a tensor: a shared buffer (typically a memory-mapped file) plus a range.
/// Cloning is cheap and never copies the data.
#[derive(Clone)]
pub struct Storage {
    buf: Arc<dyn AsRef<[u8]> + Send + Sync>,
    offset: usize,
    len: usize,
}

impl Storage {
    /// A view of `len` bytes at `offset` in `buf`. Fails when the range is out of bounds.
    pub fn new(buf: Arc<dyn AsRef<[u8]> + Send + Sync>, offset: usize, len: usize) -> Result<Self> {
        let total = (*buf).as_ref().len();
        match offset.checked_add(len) {
            Some(end) if end <= total => Ok(Storage { buf, offset, len }),
            _ => Err(Error::Format(format!(
                "tensor data at offset {offset} with {len} bytes runs past the end of the file ({total} bytes)"
            ))),
        }
    }

    /// Storage that owns its bytes.
    pub fn owned(bytes: Vec<u8>) -> Self {
        let len = bytes.len();
        Storage {
            buf: Arc::new(bytes),
            offset: 0,
            len,
        }
    }

    /// The bytes.
    #[inline]
    pub fn bytes(&self) -> &[u8] {
        &(*self.buf).as_ref()[self.offset..self.offset + self.len]
    }

    /// All the bytes of the buffer (the mapped file, or the owned bytes) these are a view of.
    #[inline]
    pub fn backing(&self) -> &[u8] {
        (*self.buf).as_ref()
    }
}

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Storage({} bytes)", self.len)
    }
}

/// A weight tensor: type, shape and bytes. No copy of the data is ever made to build one.
///
/// `shape` is outermost-first, like PyTorch: a linear weight is `[n_out, n_in]` and each of
/// its `n_out` rows holds `n_in` elements, stored contiguously (quantized in blocks along
/// `n_in`).
#[derive(Clone, Debug)]
pub struct Tensor {
    /// Canonical name (see `hearth-formats`' name map).
    pub name: String,
    /// Element type.
    pub dtype: DType,
    /// Shape, outermost first.
    pub shape: Vec<usize>,
    /// Where the bytes are.
    pub device: Device,
    /// The bytes.
    pub storage: Storage,
    /// The same weights in a layout a backend chose at load time for its kernels
    /// ([`crate::Backend::prepare`]; the CPU's row-interleaved groups of 8 rows), sliced
    /// with the tensor (its size may differ from `storage`'s). `storage` keeps the original
    /// layout for everything else.
    pub packed: Option<Storage>,
}

impl Tensor {
    /// Build a tensor, checking that the storage holds exactly the bytes the shape needs.
    pub fn new(name: String, dtype: DType, shape: Vec<usize>, storage: Storage) -> Result<Self> {
        let n = shape.iter().try_fold(1u64, |a, &d| a.checked_mul(d as u64));
        let n =
            n.ok_or_else(|| Error::Format(format!("tensor {name}: shape {shape:?} overflows")))?;
        if let Some(&inner) = shape.last() {
            if inner % dtype.block_size() != 0 {
                return Err(Error::Format(format!(
                    "tensor {name}: row length {inner} is not a multiple of {dtype}'s block size {}",
                    dtype.block_size()
                )));
            }
        }
        let need = dtype.bytes_for(n)?;
        if need != storage.len as u64 {
            return Err(Error::Format(format!(
                "tensor {name}: shape {shape:?} of {dtype} needs {need} bytes, found {}",
                storage.len
            )));
        }
        Ok(Tensor {
            name,
            dtype,
            shape,
            device: Device::Cpu,
            storage,
            packed: None,
        })
    }

    /// An f32 tensor that owns its data (used for small derived tensors and tests).
    pub fn from_f32(name: &str, shape: Vec<usize>, data: &[f32]) -> Result<Self> {
        let bytes: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        Tensor::new(name.to_string(), DType::F32, shape, Storage::owned(bytes))
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Elements in one row (the innermost dimension).
    pub fn row_len(&self) -> usize {
        self.shape.last().copied().unwrap_or(1)
    }

    /// Number of rows (product of all but the innermost dimension).
    pub fn n_rows(&self) -> usize {
        self.numel() / self.row_len().max(1)
    }

    /// Bytes in one row.
    pub fn row_bytes(&self) -> usize {
        self.row_len() / self.dtype.block_size() * self.dtype.type_size()
    }

    /// The bytes.
    #[inline]
    pub fn bytes(&self) -> &[u8] {
        self.storage.bytes()
    }

    /// The bytes of row `i`.
    #[inline]
    pub fn row(&self, i: usize) -> &[u8] {
        let rb = self.row_bytes();
        &self.bytes()[i * rb..(i + 1) * rb]
    }

    /// A view of the `i`-th slice along the outermost dimension (an expert of a merged
    /// 3-D expert tensor, say), without copying.
    pub fn slice_outer(&self, i: usize) -> Result<Tensor> {
        let outer = *self
            .shape
            .first()
            .ok_or_else(|| Error::Invalid("slice of a scalar".into()))?;
        if i >= outer {
            return Err(Error::Invalid(format!(
                "index {i} out of range for {}",
                self.name
            )));
        }
        let part = |s: &Storage| {
            let per = s.len / outer;
            Storage {
                buf: s.buf.clone(),
                offset: s.offset + i * per,
                len: per,
            }
        };
        let storage = part(&self.storage);
        // packed layouts group rows within each outer slice (their size may differ)
        let packed = self.packed.as_ref().map(part);
        Ok(Tensor {
            name: format!("{}[{i}]", self.name),
            dtype: self.dtype,
            shape: self.shape[1..].to_vec(),
            device: self.device,
            storage,
            packed,
        })
    }

    /// A view of rows `start..start + n` of a 2-D tensor, without copying.
    pub fn rows(&self, start: usize, n: usize) -> Result<Tensor> {
        if self.shape.len() != 2 || start + n > self.shape[0] {
            return Err(Error::Invalid(format!(
                "rows {start}..{} out of range for {} {:?}",
                start + n,
                self.name,
                self.shape
            )));
        }
        let rb = self.row_bytes();
        // a packed layout of the original size keeps its groups of 8 rows whole when the view
        // starts on a group and ends on one or at the end (the rows past the last group are
        // unpacked)
        let g = crate::PACK_ROWS;
        let packed = self
            .packed
            .as_ref()
            .filter(|p| {
                p.len == self.storage.len
                    && start % g == 0
                    && (n % g == 0 || start + n == self.shape[0])
            })
            .map(|p| Storage {
                buf: p.buf.clone(),
                offset: p.offset + start * rb,
                len: n * rb,
            });
        Ok(Tensor {
            name: format!("{}[{start}..{}]", self.name, start + n),
            dtype: self.dtype,
            shape: vec![n, self.shape[1]],
            device: self.device,
            storage: Storage {
                buf: self.storage.buf.clone(),
                offset: self.storage.offset + start * rb,
                len: n * rb,
            },
            packed,
        })
    }
}
