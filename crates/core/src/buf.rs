//! Activation and state buffers: memory that belongs to one backend.
//!
//! A [`Buf`] is either host memory (what the CPU backend computes in) or a handle to memory a
//! device backend made ([`DevMem`]: a Vulkan buffer, say). Ops take [`View`]s and
//! [`ViewMut`]s, ranges of one buffer, so a forward pass never needs to know where its
//! activations live. A backend that is handed a view of another backend's memory returns an
//! error: data moves between devices only through [`crate::Backend::upload`] and
//! [`crate::Backend::download`], which the model counts.
use crate::{Error, Result};
use std::any::Any;
use std::ops::Range;

/// Device memory behind a [`Buf`]; the backend that made it downcasts it with `as_any`.
pub trait DevMem: Send + Sync {
    /// The backend's own type.
    fn as_any(&self) -> &dyn Any;
    /// Floats it holds.
    fn len(&self) -> usize;
    /// Whether it holds none.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A buffer of f32 values owned by one backend (ids, where an op writes some, are stored as
/// exact integer values: every id below 2^24 is one).
pub enum Buf {
    /// Host memory.
    Host(Vec<f32>),
    /// A device's memory.
    Dev(Box<dyn DevMem>),
}

impl std::fmt::Debug for Buf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Buf::Host(v) => write!(f, "Buf::Host({})", v.len()),
            Buf::Dev(d) => write!(f, "Buf::Dev({})", d.len()),
        }
    }
}

impl Default for Buf {
    fn default() -> Self {
        Buf::Host(Vec::new())
    }
}

fn out_of_range(r: &Range<usize>, len: usize) -> Error {
    Error::Invalid(format!(
        "buffer range {}..{} is outside a buffer of {len} values",
        r.start, r.end
    ))
}

fn not_host() -> Error {
    Error::Invalid(
        "an op got a view of device memory on a backend that computes on the host".into(),
    )
}

impl Buf {
    /// `n` zeros in host memory (the OS fills large allocations on demand).
    pub fn host(n: usize) -> Buf {
        Buf::Host(vec![0.0; n])
    }
    /// Floats it holds.
    pub fn len(&self) -> usize {
        match self {
            Buf::Host(v) => v.len(),
            Buf::Dev(d) => d.len(),
        }
    }
    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// All of it, to read.
    pub fn view(&self) -> View<'_> {
        match self {
            Buf::Host(v) => View::Host(v),
            Buf::Dev(d) => View::Dev {
                mem: &**d,
                off: 0,
                len: d.len(),
            },
        }
    }
    /// All of it, to write.
    pub fn view_mut(&mut self) -> ViewMut<'_> {
        match self {
            Buf::Host(v) => ViewMut::Host(v),
            Buf::Dev(d) => ViewMut::Dev {
                mem: &**d,
                off: 0,
                len: d.len(),
            },
        }
    }
    /// The first `n` values, to read.
    pub fn head(&self, n: usize) -> View<'_> {
        self.view().slice(0..n)
    }
    /// The first `n` values, to write.
    pub fn head_mut(&mut self, n: usize) -> ViewMut<'_> {
        self.view_mut().slice(0..n)
    }
}

/// A range of a [`Buf`], to read.
#[derive(Clone, Copy)]
pub enum View<'a> {
    /// Host values.
    Host(&'a [f32]),
    /// A range of device memory.
    Dev {
        /// The memory.
        mem: &'a dyn DevMem,
        /// First value.
        off: usize,
        /// Values.
        len: usize,
    },
}

/// A range of a [`Buf`], to write.
pub enum ViewMut<'a> {
    /// Host values.
    Host(&'a mut [f32]),
    /// A range of device memory (written through the device's commands; the borrow still
    /// makes it the only writer).
    Dev {
        /// The memory.
        mem: &'a dyn DevMem,
        /// First value.
        off: usize,
        /// Values.
        len: usize,
    },
}

impl<'a> View<'a> {
    /// Values in the view.
    pub fn len(&self) -> usize {
        match self {
            View::Host(s) => s.len(),
            View::Dev { len, .. } => *len,
        }
    }
    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// A sub-range. Panics when out of range, like slicing (use [`View::get`] to check).
    pub fn slice(self, r: Range<usize>) -> View<'a> {
        let len = self.len();
        self.get(r.clone())
            .unwrap_or_else(|| panic!("{}", out_of_range(&r, len)))
    }
    /// A sub-range, or None when out of range.
    pub fn get(self, r: Range<usize>) -> Option<View<'a>> {
        if r.start > r.end || r.end > self.len() {
            return None;
        }
        Some(match self {
            View::Host(s) => View::Host(&s[r]),
            View::Dev { mem, off, .. } => View::Dev {
                mem,
                off: off + r.start,
                len: r.len(),
            },
        })
    }
    /// The values, for a backend that computes on the host.
    pub fn host(self) -> Result<&'a [f32]> {
        match self {
            View::Host(s) => Ok(s),
            View::Dev { .. } => Err(not_host()),
        }
    }
}

impl<'a> ViewMut<'a> {
    /// Values in the view.
    pub fn len(&self) -> usize {
        match self {
            ViewMut::Host(s) => s.len(),
            ViewMut::Dev { len, .. } => *len,
        }
    }
    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// A shorter-lived view of the same range.
    pub fn reborrow(&mut self) -> ViewMut<'_> {
        match self {
            ViewMut::Host(s) => ViewMut::Host(s),
            ViewMut::Dev { mem, off, len } => ViewMut::Dev {
                mem: *mem,
                off: *off,
                len: *len,
            },
        }
    }
    /// The same range, to read.
    pub fn view(&self) -> View<'_> {
        match self {
            ViewMut::Host(s) => View::Host(s),
            ViewMut::Dev { mem, off, len } => View::Dev {
                mem: *mem,
                off: *off,
                len: *len,
            },
        }
    }
    /// A sub-range. Panics when out of range, like slicing.
    pub fn slice(self, r: Range<usize>) -> ViewMut<'a> {
        let len = self.len();
        if r.start > r.end || r.end > len {
            panic!("{}", out_of_range(&r, len));
        }
        match self {
            ViewMut::Host(s) => ViewMut::Host(&mut s[r]),
            ViewMut::Dev { mem, off, .. } => ViewMut::Dev {
                mem,
                off: off + r.start,
                len: r.len(),
            },
        }
    }
    /// Two views, before and after `mid`.
    pub fn split_at(self, mid: usize) -> (ViewMut<'a>, ViewMut<'a>) {
        match self {
            ViewMut::Host(s) => {
                let (a, b) = s.split_at_mut(mid);
                (ViewMut::Host(a), ViewMut::Host(b))
            }
            ViewMut::Dev { mem, off, len } => {
                assert!(mid <= len, "{}", out_of_range(&(0..mid), len));
                (
                    ViewMut::Dev { mem, off, len: mid },
                    ViewMut::Dev {
                        mem,
                        off: off + mid,
                        len: len - mid,
                    },
                )
            }
        }
    }
    /// Consecutive views of the given lengths.
    pub fn split_lens(self, lens: &[usize]) -> Vec<ViewMut<'a>> {
        let mut v = Vec::with_capacity(lens.len());
        let mut rest = self;
        for &l in lens {
            let (a, b) = rest.split_at(l);
            v.push(a);
            rest = b;
        }
        v
    }
    /// The values, for a backend that computes on the host.
    pub fn host(self) -> Result<&'a mut [f32]> {
        match self {
            ViewMut::Host(s) => Ok(s),
            ViewMut::Dev { .. } => Err(not_host()),
        }
    }
}

impl<'a> From<&'a [f32]> for View<'a> {
    fn from(s: &'a [f32]) -> Self {
        View::Host(s)
    }
}

impl<'a> From<&'a mut [f32]> for ViewMut<'a> {
    fn from(s: &'a mut [f32]) -> Self {
        ViewMut::Host(s)
    }
}

impl std::fmt::Debug for View<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            View::Host(s) => write!(f, "View::Host({})", s.len()),
            View::Dev { off, len, .. } => write!(f, "View::Dev({off}..{})", off + len),
        }
    }
}

impl std::fmt::Debug for ViewMut<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.view().fmt(f)
    }
}
