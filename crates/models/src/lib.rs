//! hearth-models: the architecture registry, shared transformer blocks and the forward pass.
//!
//! An architecture is a row in [`ARCHS`]: which HF `model_type`s and GGUF architecture names
//! it answers to, and how its files lay out RoPE. The blocks (grouped-query attention with
//! optional bias / q-k norm / sliding window / sinks, multi-head latent attention, SwiGLU MLP,
//! mixture of experts, RMSNorm) are shared; which optional parts a model has is derived from
//! its config and the tensors its file contains.
#![deny(missing_docs)]

pub mod config;
mod delta;
mod dsv4;
mod dsv4_attn;
mod lightning;
mod load;
mod mla;
mod model;
mod moe;

pub use config::{
    ExpertAct, Gating, GroupScore, LightningConfig, LinearConfig, MlaConfig, ModelConfig,
    MoeConfig, Rope, RopeScaling,
};
pub use model::{BatchSeq, BlockCost, DevicePlan, KvPool, LayerCache, Model, Scratch, State, Want};

use hearth_core::RopeStyle;

/// One architecture in the registry.
#[derive(Debug)]
pub struct ArchSpec {
    /// Canonical name (the HF `model_type` of its main checkpoints).
    pub name: &'static str,
    /// HF `model_type` values.
    pub hf_model_types: &'static [&'static str],
    /// GGUF `general.architecture` values. Some architectures share one: llama.cpp writes
    /// Mixtral as `llama` (with expert tensors) and DeepSeek V3 as `deepseek2`.
    pub gguf_archs: &'static [&'static str],
    /// RoPE pairing used by GGUF files of this architecture (llama.cpp's converter permutes
    /// Q/K rows of llama-family models, so they use adjacent pairs).
    pub gguf_rope: RopeStyle,
    /// RoPE pairing of HF checkpoints: rotate-half, except DeepSeek's interleaved pairs.
    pub hf_rope: RopeStyle,
}

const fn arch(
    name: &'static str,
    hf_model_types: &'static [&'static str],
    gguf_archs: &'static [&'static str],
    gguf_rope: RopeStyle,
    hf_rope: RopeStyle,
) -> ArchSpec {
    ArchSpec {
        name,
        hf_model_types,
        gguf_archs,
        gguf_rope,
        hf_rope,
    }
}

use RopeStyle::{Neox, Normal};

/// The architectures hearth runs. Tests iterate over this table.
pub const ARCHS: &[ArchSpec] = &[
    arch("llama", &["llama"], &["llama"], Normal, Neox),
    arch("mistral", &["mistral"], &["mistral"], Normal, Neox),
    arch("qwen2", &["qwen2"], &["qwen2"], Neox, Neox),
    arch("qwen3", &["qwen3"], &["qwen3"], Neox, Neox),
    arch("qwen3_moe", &["qwen3_moe"], &["qwen3moe"], Neox, Neox),
    arch("qwen2_moe", &["qwen2_moe"], &["qwen2moe"], Neox, Neox),
    arch("mixtral", &["mixtral"], &[], Normal, Neox),
    arch(
        "deepseek_v2",
        &["deepseek_v2"],
        &["deepseek2"],
        Normal,
        Normal,
    ),
    arch(
        "deepseek_v3",
        &["deepseek_v3", "kimi_k2"],
        &[],
        Normal,
        Normal,
    ),
    // Kimi K2.5: a multimodal wrapper (text_config) around DeepSeek V3; the vision tower is
    // not read. llama.cpp writes its text model as deepseek2.
    // MiniMax-M1 / MiniMax-Text-01: lightning attention with softmax attention between. HF
    // only: llama.cpp's minimax-01 conversion reads the original remote-code config.
    arch("minimax", &["minimax"], &[], Neox, Neox),
    arch("kimi_k25", &["kimi_k25"], &[], Normal, Normal),
    // DeepSeek-V4 (Flash, Pro): hyper-connections, sliding/CSA/HCA attention, hash routing
    arch(
        "deepseek_v4",
        &["deepseek_v4"],
        &["deepseek4"],
        Normal,
        Normal,
    ),
    // DeepSeek-V3.2 and GLM-5/5.1/5.2: MLA with DeepSeek Sparse Attention
    arch(
        "deepseek_v32",
        &["deepseek_v32"],
        &["deepseek32"],
        Normal,
        Normal,
    ),
    arch(
        "glm_moe_dsa",
        &["glm_moe_dsa"],
        &["glm-dsa"],
        Normal,
        Normal,
    ),
    arch("glm4_moe", &["glm4_moe"], &["glm4moe"], Neox, Neox),
    arch("minimax_m2", &["minimax_m2"], &["minimax-m2"], Neox, Neox),
    arch("gpt_oss", &["gpt_oss"], &["gpt-oss"], Neox, Neox),
    arch("qwen3_next", &["qwen3_next"], &["qwen3next"], Neox, Neox),
    arch(
        "qwen3_5",
        &["qwen3_5", "qwen3_5_text"],
        &["qwen35"],
        Neox,
        Neox,
    ),
    arch(
        "qwen3_5_moe",
        &["qwen3_5_moe", "qwen3_5_moe_text"],
        &["qwen35moe"],
        Neox,
        Neox,
    ),
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
