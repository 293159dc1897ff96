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
];

/// (Hugging Face global name, canonical name)
const HF_GLOBAL: &[(&str, &str)] = &[
    ("model.embed_tokens.weight", "token_embd.weight"),
    ("model.norm.weight", "output_norm.weight"),
    ("lm_head.weight", "output.weight"),
];

/// The canonical name of a Hugging Face tensor name, or `None` when it is not one hearth uses
/// (rotary caches and the like).
pub fn canonical_from_hf(name: &str) -> Option<String> {
    if let Some((_, c)) = HF_GLOBAL.iter().find(|(h, _)| *h == name) {
        return Some(c.to_string());
    }
    let rest = name.strip_prefix("model.layers.")?;
    let (idx, rest) = rest.split_once('.')?;
    let layer: usize = idx.parse().ok()?;
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
    }
}
