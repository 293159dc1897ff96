//! One name map from every file convention to canonical tensor names.
//!
//! Canonical names follow GGUF's short style: `token_embd.weight`, `output_norm.weight`,
//! `output.weight`, and per layer `blk.{i}.{part}.{weight|bias}`. GGUF files already use it;
//! Hugging Face names are rewritten here, so the forward pass sees one vocabulary.

/// (Hugging Face layer-local name, canonical part)
const HF_LAYER: &[(&str, &str)] = &[
    ("input_layernorm", "attn_norm"),
    ("self_attn.q_proj", "attn_q"),
    ("self_attn.k_proj", "attn_k"),
    ("self_attn.v_proj", "attn_v"),
    ("self_attn.o_proj", "attn_output"),
    ("self_attn.q_norm", "attn_q_norm"),
    ("self_attn.k_norm", "attn_k_norm"),
    ("post_attention_layernorm", "ffn_norm"),
    ("mlp.gate_proj", "ffn_gate"),
    ("mlp.up_proj", "ffn_up"),
    ("mlp.down_proj", "ffn_down"),
    // MLA (DeepSeek V2/V3)
    ("self_attn.q_a_proj", "attn_q_a"),
    ("self_attn.q_a_layernorm", "attn_q_a_norm"),
    ("self_attn.q_b_proj", "attn_q_b"),
    ("self_attn.kv_a_proj_with_mqa", "attn_kv_a_mqa"),
    ("self_attn.kv_a_layernorm", "attn_kv_a_norm"),
    ("self_attn.kv_b_proj", "attn_kv_b"),
    // DSA's lightning indexer (DeepSeek-V3.2, GLM-5), named as llama.cpp names it
    ("self_attn.indexer.wq_b", "indexer.attn_q_b"),
    ("self_attn.indexer.wk", "indexer.attn_k"),
    ("self_attn.indexer.k_norm", "indexer.k_norm"),
    ("self_attn.indexer.weights_proj", "indexer.proj"),
    // routers
    ("mlp.gate", "ffn_gate_inp"),
    ("mlp.router", "ffn_gate_inp"),
    ("block_sparse_moe.gate", "ffn_gate_inp"),
    // shared experts
    ("mlp.shared_expert.gate_proj", "ffn_gate_shexp"),
    ("mlp.shared_expert.up_proj", "ffn_up_shexp"),
    ("mlp.shared_expert.down_proj", "ffn_down_shexp"),
    ("mlp.shared_experts.gate_proj", "ffn_gate_shexp"),
    ("mlp.shared_experts.up_proj", "ffn_up_shexp"),
    ("mlp.shared_experts.down_proj", "ffn_down_shexp"),
    ("mlp.shared_expert_gate", "ffn_gate_inp_shexp"),
    // Gated DeltaNet (Qwen3.5/3.6 split projections, Qwen3-Next's interleaved ones)
    ("linear_attn.in_proj_qkv", "attn_qkv"),
    ("linear_attn.in_proj_z", "attn_gate"),
    ("linear_attn.in_proj_b", "ssm_beta"),
    ("linear_attn.in_proj_a", "ssm_alpha"),
    ("linear_attn.in_proj_qkvz", "ssm_in_hf"),
    ("linear_attn.in_proj_ba", "ssm_ba_hf"),
    ("linear_attn.conv1d", "ssm_conv1d"),
    ("linear_attn.norm", "ssm_norm"),
    ("linear_attn.out_proj", "ssm_out"),
    // lightning attention (MiniMax-M1 / Text-01)
    ("self_attn.qkv_proj", "attn_qkv"),
    ("self_attn.output_gate", "attn_gate"),
    ("self_attn.norm", "attn_lightning_norm"),
    ("self_attn.out_proj", "attn_output"),
];

/// Layer-local HF names without a `.weight`/`.bias` suffix (parameters and buffers that are
/// bare names) -> canonical name. gpt-oss keeps its experts merged, transposed relative to
/// GGUF and with gate/up interleaved, so they get names of their own (`*_hf`) that the model
/// loader converts.
const HF_BARE: &[(&str, &str)] = &[
    ("self_attn.sinks", "attn_sinks.weight"),
    ("mlp.gate.e_score_correction_bias", "exp_probs_b.bias"),
    (
        "block_sparse_moe.e_score_correction_bias",
        "exp_probs_b.bias",
    ),
    ("mlp.experts.gate_up_proj", "ffn_gate_up_exps_hf.weight"),
    ("mlp.experts.gate_up_proj_bias", "ffn_gate_up_exps_hf.bias"),
    ("mlp.experts.down_proj", "ffn_down_exps_hf.weight"),
    ("mlp.experts.down_proj_bias", "ffn_down_exps.bias"),
    // GGUF stores -exp(A_log) as ssm_a; the loader converts
    ("linear_attn.A_log", "ssm_a_log"),
    ("linear_attn.dt_bias", "ssm_dt.bias"),
];

/// Per-expert HF projections -> canonical per-expert stem: `blk.{i}.{stem}.{e}.weight`.
const HF_EXPERT: &[(&str, &str)] = &[
    ("gate_proj", "ffn_gate_exps"),
    ("up_proj", "ffn_up_exps"),
    ("down_proj", "ffn_down_exps"),
    ("w1", "ffn_gate_exps"),
    ("w3", "ffn_up_exps"),
    ("w2", "ffn_down_exps"),
];

/// (Hugging Face global name, canonical name)
const HF_GLOBAL: &[(&str, &str)] = &[
    ("model.embed_tokens.weight", "token_embd.weight"),
    ("model.norm.weight", "output_norm.weight"),
    ("lm_head.weight", "output.weight"),
];

/// DeepSeek-V4's released checkpoints keep DeepSeek's own names (`layers.{i}.attn.wq_a`,
/// `layers.{i}.ffn.experts.{e}.w1`, `hc_head_fn`...; transformers' save_pretrained writes them
/// with a `model.` prefix) -> canonical names, as llama.cpp's deepseek4 GGUF names them
/// (gguf-py/gguf/constants.py, MODEL_ARCH.DEEPSEEK4).
const V4_LAYER: &[(&str, &str)] = &[
    ("attn_norm.weight", "attn_norm.weight"),
    ("ffn_norm.weight", "ffn_norm.weight"),
    ("attn.attn_sink", "attn_sinks.weight"),
    ("attn.wq_a.weight", "attn_q_a.weight"),
    ("attn.q_norm.weight", "attn_q_a_norm.weight"),
    ("attn.wq_b.weight", "attn_q_b.weight"),
    ("attn.wkv.weight", "attn_kv.weight"),
    ("attn.norm.weight", "attn_kv_a_norm.weight"),
    ("attn.wo_a.weight", "attn_output_a.weight"),
    ("attn.wo_b.weight", "attn_output_b.weight"),
    ("hc_attn_fn", "hc_attn_fn.weight"),
    ("hc_attn_base", "hc_attn_base.weight"),
    ("hc_attn_scale", "hc_attn_scale.weight"),
    ("hc_ffn_fn", "hc_ffn_fn.weight"),
    ("hc_ffn_base", "hc_ffn_base.weight"),
    ("hc_ffn_scale", "hc_ffn_scale.weight"),
    ("attn.compressor.wkv.weight", "attn_compressor_kv.weight"),
    (
        "attn.compressor.wgate.weight",
        "attn_compressor_gate.weight",
    ),
    ("attn.compressor.ape", "attn_compressor_ape.weight"),
    ("attn.compressor.norm.weight", "attn_compressor_norm.weight"),
    ("attn.indexer.weights_proj.weight", "indexer.proj.weight"),
    ("attn.indexer.wq_b.weight", "indexer.attn_q_b.weight"),
    (
        "attn.indexer.compressor.wkv.weight",
        "indexer_compressor_kv.weight",
    ),
    (
        "attn.indexer.compressor.wgate.weight",
        "indexer_compressor_gate.weight",
    ),
    (
        "attn.indexer.compressor.ape",
        "indexer_compressor_ape.weight",
    ),
    (
        "attn.indexer.compressor.norm.weight",
        "indexer_compressor_norm.weight",
    ),
    ("ffn.gate.weight", "ffn_gate_inp.weight"),
    ("ffn.gate.tid2eid", "ffn_gate_tid2eid.weight"),
    ("ffn.gate.bias", "exp_probs_b.bias"),
    ("ffn.shared_experts.w1.weight", "ffn_gate_shexp.weight"),
    ("ffn.shared_experts.w3.weight", "ffn_up_shexp.weight"),
    ("ffn.shared_experts.w2.weight", "ffn_down_shexp.weight"),
];

/// DeepSeek-V4's global names (see [`V4_LAYER`]).
const V4_GLOBAL: &[(&str, &str)] = &[
    ("embed.weight", "token_embd.weight"),
    ("norm.weight", "output_norm.weight"),
    ("head.weight", "output.weight"),
    ("hc_head_fn", "output_hc_fn.weight"),
    ("hc_head_base", "output_hc_base.weight"),
    ("hc_head_scale", "output_hc_scale.weight"),
    ("hc_head.hc_fn", "output_hc_fn.weight"),
    ("hc_head.hc_base", "output_hc_base.weight"),
    ("hc_head.hc_scale", "output_hc_scale.weight"),
];

/// A DeepSeek-V4 name (with or without transformers' `model.` prefix), or None.
fn canonical_from_v4(name: &str) -> Option<String> {
    let name = name.strip_prefix("model.").unwrap_or(name);
    if let Some((_, c)) = V4_GLOBAL.iter().find(|(h, _)| *h == name) {
        return Some(c.to_string());
    }
    let rest = name.strip_prefix("layers.")?;
    let (idx, rest) = rest.split_once('.')?;
    let layer: usize = idx.parse().ok()?;
    if let Some((_, c)) = V4_LAYER.iter().find(|(h, _)| *h == rest) {
        return Some(format!("blk.{layer}.{c}"));
    }
    let ex = rest.strip_prefix("ffn.experts.")?;
    let (e, proj) = ex.split_once('.')?;
    let e: usize = e.parse().ok()?;
    let (proj, suffix) = proj.rsplit_once('.')?;
    let (_, c) = HF_EXPERT.iter().find(|(h, _)| *h == proj)?;
    Some(format!("blk.{layer}.{c}.{e}.{suffix}"))
}

/// The canonical name of a Hugging Face tensor name, or `None` when it is not one hearth uses
/// (rotary caches and the like).
pub fn canonical_from_hf(name: &str) -> Option<String> {
    canonical_from_hf_std(name).or_else(|| canonical_from_v4(name))
}

fn canonical_from_hf_std(name: &str) -> Option<String> {
    // multimodal checkpoints keep the text model under model.language_model.* (Qwen3.5/3.6)
    // or language_model.model.* and language_model.lm_head (Kimi K2.5, as released); their
    // vision towers and projectors are not read
    let owned;
    let name = match name
        .strip_prefix("model.language_model.")
        .or_else(|| name.strip_prefix("language_model.model."))
    {
        Some(rest) => {
            owned = format!("model.{rest}");
            owned.as_str()
        }
        None => name.strip_prefix("language_model.").unwrap_or(name),
    };
    if let Some((_, c)) = HF_GLOBAL.iter().find(|(h, _)| *h == name) {
        return Some(c.to_string());
    }
    let rest = name.strip_prefix("model.layers.")?;
    let (idx, rest) = rest.split_once('.')?;
    let layer: usize = idx.parse().ok()?;
    if let Some((_, c)) = HF_BARE.iter().find(|(h, _)| *h == rest) {
        return Some(format!("blk.{layer}.{c}"));
    }
    // mlp.experts.{e}.gate_proj.weight, block_sparse_moe.experts.{e}.w1.weight
    if let Some(ex) = rest
        .strip_prefix("mlp.experts.")
        .or_else(|| rest.strip_prefix("block_sparse_moe.experts."))
    {
        let (e, proj) = ex.split_once('.')?;
        let e: usize = e.parse().ok()?;
        let (proj, suffix) = proj.rsplit_once('.')?;
        let (_, c) = HF_EXPERT.iter().find(|(h, _)| *h == proj)?;
        return Some(format!("blk.{layer}.{c}.{e}.{suffix}"));
    }
    let (stem, suffix) = rest.rsplit_once('.')?;
    let (_, part) = HF_LAYER.iter().find(|(h, _)| *h == stem)?;
    Some(format!("blk.{layer}.{part}.{suffix}"))
}

/// The canonical name of a GGUF tensor name (GGUF names are already canonical).
pub fn canonical_from_gguf(name: &str) -> String {
    name.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn deepseek_v4_names_map() {
        // as released, and as transformers' save_pretrained writes them
        for (hf, c) in [
            ("embed.weight", "token_embd.weight"),
            ("model.embed_tokens.weight", "token_embd.weight"),
            ("head.weight", "output.weight"),
            ("hc_head_fn", "output_hc_fn.weight"),
            ("model.hc_head.hc_scale", "output_hc_scale.weight"),
            ("layers.2.attn.wq_a.weight", "blk.2.attn_q_a.weight"),
            (
                "model.layers.1.attn.indexer.compressor.ape",
                "blk.1.indexer_compressor_ape.weight",
            ),
            (
                "model.layers.0.ffn.gate.tid2eid",
                "blk.0.ffn_gate_tid2eid.weight",
            ),
            (
                "layers.3.ffn.experts.5.w3.weight",
                "blk.3.ffn_up_exps.5.weight",
            ),
            ("model.layers.3.hc_ffn_base", "blk.3.hc_ffn_base.weight"),
        ] {
            assert_eq!(canonical_from_hf(hf).as_deref(), Some(c), "{hf}");
        }
        assert_eq!(canonical_from_hf("mtp.0.attn.wq_a.weight"), None);
    }

    #[test]
    fn hf_names_map() {
        assert_eq!(
            canonical_from_hf("model.layers.3.self_attn.q_proj.bias").unwrap(),
            "blk.3.attn_q.bias"
        );
        assert_eq!(
            canonical_from_hf("model.layers.0.mlp.down_proj.weight").unwrap(),
            "blk.0.ffn_down.weight"
        );
        assert_eq!(
            canonical_from_hf("lm_head.weight").unwrap(),
            "output.weight"
        );
        assert_eq!(canonical_from_hf("model.rotary_emb.inv_freq"), None);
        assert_eq!(
            canonical_from_hf("model.layers.2.mlp.experts.7.up_proj.weight").unwrap(),
            "blk.2.ffn_up_exps.7.weight"
        );
        assert_eq!(
            canonical_from_hf("model.layers.0.block_sparse_moe.experts.3.w2.weight").unwrap(),
            "blk.0.ffn_down_exps.3.weight"
        );
        assert_eq!(
            canonical_from_hf("model.layers.1.mlp.gate.e_score_correction_bias").unwrap(),
            "blk.1.exp_probs_b.bias"
        );
        assert_eq!(
            canonical_from_hf("model.layers.1.self_attn.kv_b_proj.weight").unwrap(),
            "blk.1.attn_kv_b.weight"
        );
        assert_eq!(
            canonical_from_hf("model.language_model.layers.4.linear_attn.A_log").unwrap(),
            "blk.4.ssm_a_log"
        );
        assert_eq!(
            canonical_from_hf("model.language_model.embed_tokens.weight").unwrap(),
            "token_embd.weight"
        );
        assert_eq!(
            canonical_from_hf("model.visual.blocks.0.attn.qkv.weight"),
            None
        );
        assert_eq!(canonical_from_hf("mtp.layers.0.mlp.gate.weight"), None);
        // Kimi K2.5 as released
        assert_eq!(
            canonical_from_hf("language_model.model.layers.2.self_attn.q_a_proj.weight").unwrap(),
            "blk.2.attn_q_a.weight"
        );
        assert_eq!(
            canonical_from_hf("language_model.lm_head.weight").unwrap(),
            "output.weight"
        );
        assert_eq!(
            canonical_from_hf("vision_tower.encoder.blocks.0.wqkv.weight"),
            None
        );
        assert_eq!(canonical_from_hf("mm_projector.proj.0.weight"), None);
    }
}
