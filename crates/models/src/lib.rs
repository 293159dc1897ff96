//! hearth-models: the architecture registry, shared transformer blocks and the forward pass.
//!
//! An architecture is a row in [`ARCHS`]: which HF `model_type`s and GGUF architecture names
//! it answers to, and how GGUF files of it lay out RoPE. The blocks (attention with optional
//! bias / q-k norm / sliding window, SwiGLU MLP, RMSNorm) are shared; which optional parts a
//! model has is derived from the tensors its file contains.
#![deny(missing_docs)]

pub mod config;
mod dense;

pub use config::{ModelConfig, Rope, RopeScaling};
pub use dense::{Model, State};

use hearth_core::RopeStyle;

/// One architecture in the registry.
#[derive(Debug)]
pub struct ArchSpec {
    /// Canonical name.
    pub name: &'static str,
    /// HF `model_type` values.
    pub hf_model_types: &'static [&'static str],
    /// GGUF `general.architecture` values.
    pub gguf_archs: &'static [&'static str],
    /// RoPE pairing used by GGUF files of this architecture (llama.cpp's converter permutes
    /// Q/K rows of llama-family models, so they use adjacent pairs).
    pub gguf_rope: RopeStyle,
}

/// The architectures hearth runs. Tests iterate over this table.
pub const ARCHS: &[ArchSpec] = &[
    ArchSpec {
        name: "llama",
        hf_model_types: &["llama"],
        gguf_archs: &["llama"],
        gguf_rope: RopeStyle::Normal,
    },
    ArchSpec {
        name: "mistral",
        hf_model_types: &["mistral"],
        gguf_archs: &["mistral"],
        gguf_rope: RopeStyle::Normal,
    },
    ArchSpec {
        name: "qwen2",
        hf_model_types: &["qwen2"],
        gguf_archs: &["qwen2"],
        gguf_rope: RopeStyle::Neox,
    },
    ArchSpec {
        name: "qwen3",
        hf_model_types: &["qwen3"],
        gguf_archs: &["qwen3"],
        gguf_rope: RopeStyle::Neox,
    },
];

/// Look an architecture up by HF `model_type`.
pub fn arch_for_hf(model_type: &str) -> Option<&'static ArchSpec> {
    ARCHS
        .iter()
        .find(|a| a.hf_model_types.contains(&model_type))
}

/// Look an architecture up by GGUF `general.architecture`.
pub fn arch_for_gguf(name: &str) -> Option<&'static ArchSpec> {
    ARCHS.iter().find(|a| a.gguf_archs.contains(&name))
}

/// Names of every supported architecture, for error messages.
pub fn supported_names() -> String {
    ARCHS.iter().map(|a| a.name).collect::<Vec<_>>().join(", ")
}
