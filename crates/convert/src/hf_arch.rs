//! What differs per architecture when a Hugging Face checkpoint becomes a GGUF, as llama.cpp's
//! converter does it (`conversion/llama.py`, `qwen.py`, `deepseek.py`, `glm.py`; key names from
//! gguf-py's `constants.py`): the metadata beyond `TextModel.set_gguf_parameters`, the
//! per-expert matrices stacked into `blk.L.ffn_{gate,up,down}_exps` (expert-major, so the
//! GGUF shape is `{cols, rows, n_expert}`), MLA's `kv_b` split into `k_b` (transposed per head)
//! and `v_b`, GLM's `post_attention_norm`, and float8 weights paired with their
//! `weight_scale_inv`.
use crate::hf::bad;
use crate::source::{BlockScale, Part, Source, SrcTensor};
use hearth_core::{DType, Error, Result, Tensor};
use hearth_formats::{Value, names::canonical_from_hf};
use serde_json::Value as J;
use std::collections::{BTreeMap, HashMap};

/// Metadata being written: keys under the architecture's prefix, a later value replacing an
/// earlier one (as the converter's subclasses override the base's keys).
pub(crate) struct Md {
    /// GGUF architecture name.
    pub arch: &'static str,
    /// Keys and values in order.
    pub kv: Vec<(String, Value)>,
}

impl Md {
    pub(crate) fn set(&mut self, k: &str, v: Value) {
        match self.kv.iter_mut().find(|(key, _)| key == k) {
            Some(e) => e.1 = v,
            None => self.kv.push((k.to_string(), v)),
        }
    }

    /// `{arch}.{k}`
    pub(crate) fn a(&mut self, k: &str, v: Value) {
        let k = format!("{}.{k}", self.arch);
        self.set(&k, v);
    }
}

/// The Hugging Face architectures hearth converts.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Arch {
    Llama,
    Mixtral,
    Qwen2,
    Qwen3,
    Qwen2Moe,
    Qwen3Moe,
    Deepseek2,
    Glm4Moe,
}

impl Arch {
    pub(crate) const SUPPORTED: &'static str =
        "Llama, Mistral, Mixtral, Qwen2, Qwen3, Qwen2-MoE, Qwen3-MoE, DeepSeek-V2/V3 and GLM-4.5";

    pub(crate) fn from_hf(name: &str) -> Option<Arch> {
        Some(match name {
            "LlamaForCausalLM" | "LLaMAForCausalLM" | "MistralForCausalLM" => Arch::Llama,
            "MixtralForCausalLM" => Arch::Mixtral,
            "Qwen2ForCausalLM" => Arch::Qwen2,
            "Qwen3ForCausalLM" => Arch::Qwen3,
            "Qwen2MoeForCausalLM" => Arch::Qwen2Moe,
            "Qwen3MoeForCausalLM" => Arch::Qwen3Moe,
            "DeepseekV2ForCausalLM" | "DeepseekV3ForCausalLM" => Arch::Deepseek2,
            "Glm4MoeForCausalLM" => Arch::Glm4Moe,
            _ => return None,
        })
    }

    /// `general.architecture`
    pub(crate) fn gguf(self) -> &'static str {
        match self {
            Arch::Llama | Arch::Mixtral => "llama",
            Arch::Qwen2 => "qwen2",
            Arch::Qwen3 => "qwen3",
            Arch::Qwen2Moe => "qwen2moe",
            Arch::Qwen3Moe => "qwen3moe",
            Arch::Deepseek2 => "deepseek2",
            Arch::Glm4Moe => "glm4moe",
        }
    }

    /// Layers past `num_hidden_layers` (multi-token prediction) are dropped, as the converter
    /// drops DeepSeek's (GLM's it keeps, as `blk.L.nextn.*` after the decoder layers).
    fn drops_mtp(self) -> bool {
        matches!(self, Arch::Deepseek2)
    }
}

fn u(c: &J, k: &str) -> Option<u64> {
    c.get(k).and_then(J::as_u64)
}

fn expert_count(c: &J) -> Option<u64> {
    ["num_local_experts", "num_experts", "n_routed_experts"]
        .iter()
        .find_map(|k| u(c, k))
}

/// The architecture's own metadata, after the base keys.
pub(crate) fn metadata(
    arch: Arch,
    c: &J,
    rope: Option<&J>,
    md: &mut Md,
    vocab_len: usize,
    head_dim: u64,
) -> Result<()> {
    let need = |k: &str| u(c, k).ok_or_else(|| Error::Format(format!("config.json has no {k}")));
    match arch {
        Arch::Llama | Arch::Mixtral => {
            md.a("vocab_size", Value::U32(vocab_len as u32));
            md.a("rope.dimension_count", Value::U32(head_dim as u32));
        }
        Arch::Qwen2 | Arch::Qwen3 => {}
        Arch::Qwen2Moe | Arch::Qwen3Moe => {
            if let Some(v) = u(c, "moe_intermediate_size") {
                md.a("expert_feed_forward_length", Value::U32(v as u32));
            }
            if let Some(v) = u(c, "shared_expert_intermediate_size") {
                md.a("expert_shared_feed_forward_length", Value::U32(v as u32));
            }
        }
        Arch::Deepseek2 => {
            // MLA is written as MQA with one kv head of kv_lora_rank + rope dims
            md.a("attention.head_count_kv", Value::U32(1));
            let has_moe = u(c, "n_routed_experts").is_some();
            let n_layer = need("num_hidden_layers")?;
            let dense = u(c, "first_k_dense_replace").unwrap_or(if has_moe { 0 } else { n_layer });
            md.a("leading_dense_block_count", Value::U32(dense as u32));
            md.a("vocab_size", Value::U32(need("vocab_size")? as u32));
            if let Some(q) = u(c, "q_lora_rank") {
                md.a("attention.q_lora_rank", Value::U32(q as u32));
            }
            let rank = u(c, "kv_lora_rank").unwrap_or(512);
            let rope_dim = need("qk_rope_head_dim")?;
            md.a("attention.kv_lora_rank", Value::U32(rank as u32));
            md.a("attention.key_length", Value::U32((rank + rope_dim) as u32));
            md.a("attention.value_length", Value::U32(rank as u32));
            md.a(
                "attention.key_length_mla",
                Value::U32((need("qk_nope_head_dim")? + rope_dim) as u32),
            );
            md.a(
                "attention.value_length_mla",
                Value::U32(need("v_head_dim")? as u32),
            );
            let ff = u(c, "moe_intermediate_size")
                .or_else(|| u(c, "intermediate_size"))
                .ok_or_else(|| Error::Format("config.json has no moe_intermediate_size".into()))?;
            md.a("expert_feed_forward_length", Value::U32(ff as u32));
            if let Some(n) = u(c, "n_routed_experts") {
                md.a("expert_count", Value::U32(n as u32));
            }
            md.a(
                "expert_shared_count",
                Value::U32(u(c, "n_shared_experts").unwrap_or(0) as u32),
            );
            if let Some(s) = c.get("routed_scaling_factor").and_then(J::as_f64) {
                md.a("expert_weights_scale", Value::F32(s as f32));
            }
            if c.get("norm_topk_prob").and_then(J::as_bool) == Some(true) {
                md.a("expert_weights_norm", Value::Bool(true));
            }
            md.a("rope.dimension_count", Value::U32(rope_dim as u32));
            if let Some(m) = rope
                .and_then(|r| r.get("mscale_all_dim"))
                .and_then(J::as_f64)
            {
                // the converter writes 0.1 * mscale_all_dim here (its TAG_DEEPSEEK2_YARN_LOG_MUL_FIX)
                md.a(
                    "rope.scaling.yarn_log_multiplier",
                    Value::F32((0.1 * m) as f32),
                );
            }
        }
        Arch::Glm4Moe => {
            let prf = rope
                .and_then(|r| r.get("partial_rotary_factor"))
                .or_else(|| c.get("partial_rotary_factor"))
                .and_then(J::as_f64)
                .unwrap_or(0.5);
            md.a(
                "rope.dimension_count",
                Value::U32((head_dim as f64 * prf) as u32),
            );
            if let Some(n) = u(c, "n_routed_experts") {
                md.a("expert_count", Value::U32(n as u32));
            }
            if let Some(v) = u(c, "moe_intermediate_size") {
                md.a("expert_feed_forward_length", Value::U32(v as u32));
            }
            if let Some(v) = u(c, "n_shared_experts") {
                md.a("expert_shared_count", Value::U32(v as u32));
            }
            if let Some(v) = u(c, "first_k_dense_replace") {
                md.a("leading_dense_block_count", Value::U32(v as u32));
            }
            md.a("expert_gating_func", Value::U32(2));
            if let Some(s) = c.get("routed_scaling_factor").and_then(J::as_f64) {
                md.a("expert_weights_scale", Value::F32(s as f32));
            }
            if let Some(b) = c.get("norm_topk_prob").and_then(J::as_bool) {
                md.a("expert_weights_norm", Value::Bool(b));
            }
            // the multi-token-prediction layers follow the decoder's in the block count
            if let Some(n) = u(c, "num_nextn_predict_layers") {
                md.a(
                    "block_count",
                    Value::U32((need("num_hidden_layers")? + n) as u32),
                );
                md.a("nextn_predict_layers", Value::U32(n as u32));
            }
        }
    }
    Ok(())
}

/// Whether the checkpoint is float8 (`quantization_config.quant_method: fp8`), and then its
/// `weight_block_size` (none: one scale per matrix).
fn fp8_config(c: &J, any_fp8: bool) -> Result<Option<Option<(usize, usize)>>> {
    let qc = c.get("quantization_config").filter(|v| !v.is_null());
    let method = qc.and_then(|q| q.get("quant_method")).and_then(J::as_str);
    match (method, any_fp8) {
        (None, false) => Ok(None),
        (Some("fp8"), _) => {
            let b = qc
                .and_then(|q| q.get("weight_block_size"))
                .filter(|v| !v.is_null())
                .map(|v| {
                    v.as_array()
                        .map(|a| a.iter().filter_map(J::as_u64).collect::<Vec<_>>())
                        .unwrap_or_default()
                });
            match b.as_deref() {
                None => Ok(Some(None)),
                Some([r, cc]) if *r > 0 && *cc > 0 => Ok(Some(Some((*r as usize, *cc as usize)))),
                Some(other) => Err(Error::Format(format!(
                    "quantization_config.weight_block_size {other:?}: want two positive sizes"
                ))),
            }
        }
        (None, true) => Err(bad(
            "the checkpoint has float8 tensors but config.json says no quant_method fp8 (only block-scaled fp8 with weight_scale_inv converts)".into(),
        )),
        (Some(m), _) => Err(bad(format!(
            "checkpoints quantized with {m} do not convert (hearth converts f32, f16, bf16 and block-scaled fp8)"
        ))),
    }
}

fn layer_of(name: &str) -> Option<u64> {
    name.strip_prefix("blk.")?.split('.').next()?.parse().ok()
}

/// The type a tensor that is not quantized keeps, as the converter writes it: F32 for 1-D
/// tensors, norms, biases and routers, else F16 for 16-bit sources.
fn keep_as(name: &str, shape: &[usize], read: DType) -> Option<DType> {
    let one_d = shape.len() <= 1 || shape.iter().filter(|&&d| d > 1).count() <= 1;
    if one_d
        || name.ends_with("_norm.weight")
        || !name.ends_with(".weight")
        || name.ends_with("ffn_gate_inp.weight")
        || name.ends_with("ffn_gate_inp_shexp.weight")
    {
        return Some(DType::F32);
    }
    (read != DType::F32).then_some(DType::F16)
}

/// The GGUF tensors of a checkpoint (`raw`: its tensors, float8 ones flagged).
pub(crate) fn tensors(arch: Arch, c: &J, raw: &[(Tensor, bool)]) -> Result<Vec<SrcTensor>> {
    let n_head = u(c, "num_attention_heads").unwrap_or(0) as usize;
    let n_kv = u(c, "num_key_value_heads").map_or(n_head, |v| v as usize);
    let n_layer = u(c, "num_hidden_layers").unwrap_or(0);
    let tied = c
        .get("tie_word_embeddings")
        .and_then(J::as_bool)
        .unwrap_or(false);
    let fp8 = fp8_config(c, raw.iter().any(|(_, f)| *f))?;
    let scales: HashMap<&str, &Tensor> = raw
        .iter()
        .filter_map(|(t, _)| {
            t.name
                .strip_suffix("_scale_inv")
                .map(|w| (w, t))
                .filter(|_| t.name.ends_with(".weight_scale_inv"))
        })
        .collect();
    let mut out = Vec::new();
    // (layer stem, e.g. "blk.3.ffn_up_exps") -> expert -> part
    let mut experts: BTreeMap<String, BTreeMap<usize, Part>> = BTreeMap::new();
    for (t, is_fp8) in raw {
        if t.name.ends_with(".weight_scale_inv") {
            continue;
        }
        if t.name.ends_with(".weight_scale") || t.name.ends_with(".input_scale") {
            return Err(bad(format!(
                "tensor {}: only block-scaled fp8 checkpoints (weight_scale_inv) convert",
                t.name
            )));
        }
        let nextn = (arch == Arch::Glm4Moe)
            .then(|| nextn_name(&t.name))
            .flatten();
        let Some(mut name) = nextn.or_else(|| canonical_from_hf(&t.name)) else {
            if t.name.contains("rotary_emb.inv_freq") {
                continue;
            }
            return Err(bad(format!(
                "tensor {} has no GGUF name hearth knows",
                t.name
            )));
        };
        if arch.drops_mtp() && layer_of(&name).is_some_and(|l| l >= n_layer) {
            continue;
        }
        if tied && name == "output.weight" {
            continue;
        }
        if name.contains("_hf.") {
            return Err(bad(format!(
                "tensor {}: fused expert tensors do not convert yet (only per-expert ones)",
                t.name
            )));
        }
        let part = if *is_fp8 {
            let scale_inv = scales.get(t.name.as_str()).ok_or_else(|| {
                Error::Format(format!(
                    "float8 tensor {} has no {}_scale_inv",
                    t.name, t.name
                ))
            })?;
            let whole = (
                t.shape.first().copied().unwrap_or(1),
                t.shape.get(1).copied().unwrap_or(1),
            );
            let block = fp8
                .expect("fp8_config errs when float8 tensors come without fp8")
                .unwrap_or(whole);
            Part {
                tensor: t.clone(),
                fp8: Some(BlockScale {
                    scale_inv: (*scale_inv).clone(),
                    block,
                }),
            }
        } else {
            if !matches!(t.dtype, DType::F32 | DType::F16 | DType::BF16) {
                return Err(bad(format!(
                    "tensor {} is {}: only f32, f16, bf16 and block-scaled fp8 checkpoints convert",
                    t.name, t.dtype
                )));
            }
            Part::plain(t.clone())
        };
        part.check()?;
        if arch == Arch::Glm4Moe
            && let Some(stem) = name.strip_suffix("ffn_norm.weight")
        {
            name = format!("{stem}post_attention_norm.weight");
        }
        // blk.L.ffn_X_exps.E.weight
        if let Some((stem, e)) = expert_of(&name) {
            if experts
                .entry(stem.clone())
                .or_default()
                .insert(e, part)
                .is_some()
            {
                return Err(Error::Format(format!("expert {e} of {stem} twice")));
            }
            continue;
        }
        if arch == Arch::Deepseek2 && name.ends_with("attn_kv_b.weight") {
            out.extend(kv_b_split(c, &name, part, n_kv)?);
            continue;
        }
        let permute_heads = match arch {
            Arch::Llama | Arch::Mixtral if name.ends_with("attn_q.weight") => Some(n_head),
            Arch::Llama | Arch::Mixtral if name.ends_with("attn_k.weight") => Some(n_kv),
            _ => None,
        };
        let read = part.read_type();
        out.push(SrcTensor {
            keep_as: keep_as(&name, &t.shape, read),
            name,
            shape: t.shape.clone(),
            dtype: read,
            source: Source::Rows(vec![part]),
            permute_heads,
        });
    }
    let n_expert = expert_count(c).unwrap_or(0) as usize;
    for (stem, parts) in experts {
        out.push(stack_experts(&stem, parts, n_expert)?);
    }
    Ok(out)
}

/// A multi-token-prediction layer's own tensors (gguf-py's `NEXTN_*`): `model.layers.L.eh_proj.weight`
/// -> `blk.L.nextn.eh_proj.weight`, and so on.
fn nextn_name(name: &str) -> Option<String> {
    const NEXTN: &[(&str, &str)] = &[
        ("eh_proj", "eh_proj"),
        ("embed_tokens", "embed_tokens"),
        ("enorm", "enorm"),
        ("hnorm", "hnorm"),
        ("shared_head.head", "shared_head_head"),
        ("shared_head.norm", "shared_head_norm"),
    ];
    let rest = name.strip_prefix("model.layers.")?;
    let (l, rest) = rest.split_once('.')?;
    let l: usize = l.parse().ok()?;
    let (stem, suffix) = rest.rsplit_once('.')?;
    let (_, g) = NEXTN.iter().find(|(h, _)| *h == stem)?;
    Some(format!("blk.{l}.nextn.{g}.{suffix}"))
}

/// `blk.L.ffn_X_exps.E.weight` -> (`blk.L.ffn_X_exps`, E)
fn expert_of(name: &str) -> Option<(String, usize)> {
    let rest = name.strip_suffix(".weight")?;
    let (stem, e) = rest.rsplit_once('.')?;
    if !stem.ends_with("_exps") {
        return None;
    }
    Some((stem.to_string(), e.parse().ok()?))
}

/// One layer's experts as one tensor `[n_expert, rows, cols]`, read expert by expert.
fn stack_experts(stem: &str, parts: BTreeMap<usize, Part>, n_expert: usize) -> Result<SrcTensor> {
    if parts.len() != n_expert || parts.keys().next_back() != Some(&(n_expert.max(1) - 1)) {
        return Err(Error::Format(format!(
            "{stem}: {} experts in the checkpoint, config.json says {n_expert}",
            parts.len()
        )));
    }
    let parts: Vec<Part> = parts.into_values().collect();
    let first = &parts[0];
    let (shape, read) = (first.tensor.shape.clone(), first.read_type());
    if shape.len() != 2 {
        return Err(Error::Format(format!(
            "{stem}: expert matrices of shape {shape:?}"
        )));
    }
    if let Some(p) = parts
        .iter()
        .find(|p| p.tensor.shape != shape || p.read_type() != read)
    {
        return Err(Error::Format(format!(
            "{stem}: experts differ in shape or type ({} is {:?} {}, expert 0 {shape:?} {read})",
            p.tensor.name,
            p.tensor.shape,
            p.read_type()
        )));
    }
    let name = format!("{stem}.weight");
    let shape = vec![n_expert, shape[0], shape[1]];
    Ok(SrcTensor {
        keep_as: keep_as(&name, &shape, read),
        name,
        shape,
        dtype: read,
        source: Source::Rows(parts),
        permute_heads: None,
    })
}

/// MLA's kv_b `[n_head * (nope + v), rank]` as the converter splits it: `attn_k_b`
/// `[n_head, rank, nope]` and `attn_v_b` `[n_head, v, rank]`.
fn kv_b_split(c: &J, name: &str, part: Part, n_head: usize) -> Result<Vec<SrcTensor>> {
    let need = |k: &str| {
        u(c, k)
            .map(|v| v as usize)
            .ok_or_else(|| Error::Format(format!("config.json has no {k}")))
    };
    let (nope, v) = (need("qk_nope_head_dim")?, need("v_head_dim")?);
    let shape = &part.tensor.shape;
    if shape.len() != 2 || shape[0] != n_head * (nope + v) {
        return Err(Error::Format(format!(
            "{}: shape {shape:?}, want [{} * ({nope} + {v}), rank]",
            part.tensor.name, n_head
        )));
    }
    let rank = shape[1];
    let read = part.read_type();
    let kv_b = std::sync::Arc::new(part);
    let stem = name.strip_suffix("attn_kv_b.weight").unwrap_or(name);
    let mut out = Vec::new();
    for (k, nm, shape) in [
        (true, "attn_k_b.weight", vec![n_head, rank, nope]),
        (false, "attn_v_b.weight", vec![n_head, v, rank]),
    ] {
        let name = format!("{stem}{nm}");
        out.push(SrcTensor {
            keep_as: keep_as(&name, &shape, read),
            name,
            shape,
            dtype: DType::F32,
            source: Source::KvB {
                kv_b: kv_b.clone(),
                k,
                n_head,
                nope,
                v,
            },
            permute_heads: None,
        });
    }
    Ok(out)
}
