//! hearth-core: data types, quant block sizes, errors, tensors and the `Backend` trait.
//!
//! This crate has no heavy dependencies. Everything above it (formats, kernels, models)
//! speaks the vocabulary defined here.
#![deny(missing_docs)]

mod backend;
mod dtype;
mod error;
mod tensor;

pub use backend::{AttnJob, AttnParams, Backend, MatJob, Pages, RopeStyle};
pub use dtype::DType;
pub use error::{Error, Result};
pub use tensor::{Device, Storage, Tensor};

/// Ensure a condition holds, or return a `Error::Format` with the formatted message.
#[macro_export]
macro_rules! ensure {
    ($cond:expr, $($arg:tt)+) => {
        if !$cond {
            return Err($crate::Error::Format(format!($($arg)+)));
        }
    };
}
