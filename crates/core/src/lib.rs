//! hearth-core: data types, quant block sizes, errors, tensors and the `Backend` trait.
//!
//! This crate has no heavy dependencies. Everything above it (formats, kernels, models)
//! speaks the vocabulary defined here.
#![deny(missing_docs)]

mod backend;
mod buf;
pub mod dsa;
mod dtype;
mod error;
pub mod kv;
pub mod linear;
pub mod moe;
mod tensor;

pub use backend::{
    AttnParams, AttnSeg, Backend, DeltaJob, KvDest, LightningJob, MAX_ROPE_PAIRS, MatJob, MoeJob,
    Pages, RopeArgs, RopeStyle, RowCopy, check_attn_rows, check_rows, glu_ref, store_rows,
};
pub use buf::{Buf, DevMem, View, ViewMut};
pub use dtype::DType;
pub use error::{Error, Result};
pub use kv::{KvFormat, KvType};
pub use moe::{Expert, Glu, Routing};
pub use tensor::{Device, Storage, Tensor};

/// Rows per group of a packed weight layout ([`Tensor::packed`]): views of a packed tensor
/// keep it only when they cut no group.
pub const PACK_ROWS: usize = 8;

/// Ensure a condition holds, or return a `Error::Format` with the formatted message.
#[macro_export]
macro_rules! ensure {
    ($cond:expr, $($arg:tt)+) => {
        if !$cond {
            return Err($crate::Error::Format(format!($($arg)+)));
        }
    };
}
