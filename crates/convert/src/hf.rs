//! Hugging Face directories as input: the metadata, tokenizer and tensor names llama.cpp's
//! converter (`convert_hf_to_gguf.py` and its `conversion/*.py`) writes, for the llama family
//! (Llama, Mistral, SmolLM, Mixtral), Qwen2, Qwen3, Qwen2-MoE, Qwen3-MoE, DeepSeek-V2/V3
//! (`deepseek2`) and GLM-4.5 (`glm4moe`); block-quantized float8 checkpoints are dequantized
//! as they are read. Other architectures are refused with a clear error. The per-architecture
//! facts are in `hf_arch`.
//!
//! The facts mirrored here (key names, the q/k row permutation of `LlamaModel.permute`, the
//! llama3 `rope_freqs` factors, token types) are the converter's.
use crate::hf_arch::{self, Arch, Md};
use crate::pre_hashes::{CHECK_TEXT, PRE_HASHES};
use crate::{Input, SrcTensor};
use hearth_core::{DType, Error, Result, Tensor};
use hearth_formats::{HfDir, Value};
use serde_json::Value as J;
use std::path::Path;

/// An opened Hugging Face directory.
pub struct HfInput {
    dir: HfDir,
    /// Its tensors; float8 ones typed I8 and flagged.
    tensors: Vec<(Tensor, bool)>,
}

pub(crate) fn bad(m: String) -> Error {
    Error::Unsupported(m)
}

impl HfInput {
    /// Open and memory-map the directory.
    pub fn open(p: &Path) -> Result<HfInput> {
        let dir = HfDir::open(p)?;
        let tensors = dir.tensors_with_fp8()?;
        Ok(HfInput { dir, tensors })
    }

    /// The model as GGUF metadata and tensors.
    pub fn input(&self) -> Result<Input> {
        let c = &self.dir.config;
        let archs: Vec<&str> = c
            .get("architectures")
            .and_then(J::as_array)
            .map(|a| a.iter().filter_map(J::as_str).collect())
            .unwrap_or_default();
        let hf_arch = archs.first().copied().unwrap_or("(none)");
        let arch = Arch::from_hf(hf_arch).ok_or_else(|| {
            bad(format!(
                "{}: converting architecture {hf_arch} from Hugging Face is not supported yet (hearth maps {}; convert with llama.cpp's convert_hf_to_gguf.py and quantize the GGUF)",
                self.dir.dir.display(),
                Arch::SUPPORTED
            ))
        })?;
        let u = |k: &str| c.get(k).and_then(J::as_u64);
        let need = |k: &str| u(k).ok_or_else(|| Error::Format(format!("config.json has no {k}")));
        let n_embd = need("hidden_size")?;
        let n_head = need("num_attention_heads")?;
        let n_kv = u("num_key_value_heads").unwrap_or(n_head);
        let n_layer = need("num_hidden_layers")?;
        let head_dim = u("head_dim").unwrap_or(n_embd / n_head.max(1));
        let rope = rope_params(c);
        let rope_theta = c
            .get("rope_theta")
            .and_then(J::as_f64)
            .or_else(|| rope.and_then(|r| r.get("rope_theta")).and_then(J::as_f64))
            .unwrap_or(10000.0);
        let g = arch.gguf();
        let mut md = Md {
            arch: g,
            kv: Vec::new(),
        };
        md.set("general.architecture", Value::Str(g.into()));
        md.set("general.type", Value::Str("model".into()));
        let name = self
            .dir
            .dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        md.set("general.name", Value::Str(name));
        // TextModel.set_gguf_parameters
        md.a("block_count", Value::U32(n_layer as u32));
        if let Some(v) = u("max_position_embeddings") {
            md.a("context_length", Value::U32(v as u32));
        }
        md.a("embedding_length", Value::U32(n_embd as u32));
        md.a(
            "feed_forward_length",
            Value::U32(need("intermediate_size")? as u32),
        );
        md.a("attention.head_count", Value::U32(n_head as u32));
        if u("num_key_value_heads").is_some() {
            md.a("attention.head_count_kv", Value::U32(n_kv as u32));
        }
        let mut extra = Vec::new();
        let rope_type = rope
            .and_then(|r| r.get("rope_type").or_else(|| r.get("type")))
            .and_then(J::as_str);
        let rf = |k: &str| rope.and_then(|r| r.get(k)).and_then(J::as_f64);
        match rope_type {
            None | Some("default") => {}
            Some("linear") => {
                if let Some(f) = rf("factor") {
                    md.a("rope.scaling.type", Value::Str("linear".into()));
                    md.a("rope.scaling.factor", Value::F32(f as f32));
                }
            }
            Some("yarn") => {
                if let Some(f) = rf("factor") {
                    md.a("rope.scaling.type", Value::Str("yarn".into()));
                    md.a("rope.scaling.factor", Value::F32(f as f32));
                    let orig = rf("original_max_position_embeddings").ok_or_else(|| {
                        Error::Format(
                            "yarn rope scaling without original_max_position_embeddings".into(),
                        )
                    })?;
                    md.a(
                        "rope.scaling.original_context_length",
                        Value::U32(orig as u32),
                    );
                    if let Some(v) = rf("extrapolation_factor") {
                        md.a("rope.scaling.yarn_ext_factor", Value::F32(v as f32));
                    }
                    if let Some(v) = rf("attention_factor").or_else(|| rf("attn_factor")) {
                        md.a("rope.scaling.yarn_attn_factor", Value::F32(v as f32));
                    }
                    if let Some(v) = rf("beta_fast") {
                        md.a("rope.scaling.yarn_beta_fast", Value::F32(v as f32));
                    }
                    if let Some(v) = rf("beta_slow") {
                        md.a("rope.scaling.yarn_beta_slow", Value::F32(v as f32));
                    }
                }
            }
            Some("llama3") if g == "llama" => {
                let r = rope.expect("rope_type came from it");
                extra.push(llama3_rope_freqs(r, rope_theta, head_dim as usize)?);
            }
            Some(t) => {
                return Err(bad(format!(
                    "rope scaling type {t} is not supported for conversion yet"
                )));
            }
        }
        md.a("rope.freq_base", Value::F32(rope_theta as f32));
        let eps = c.get("rms_norm_eps").and_then(J::as_f64).unwrap_or(1e-6);
        md.a("attention.layer_norm_rms_epsilon", Value::F32(eps as f32));
        if let Some(n) = ["num_local_experts", "num_experts", "n_routed_experts"]
            .iter()
            .find_map(|k| u(k))
        {
            md.a("expert_count", Value::U32(n as u32));
        }
        if let Some(n) = u("num_experts_per_tok") {
            md.a("expert_used_count", Value::U32(n as u32));
        }
        if let Some(n) = u("n_group") {
            md.a("expert_group_count", Value::U32(n as u32));
        }
        if let Some(n) = u("topk_group") {
            md.a("expert_group_used_count", Value::U32(n as u32));
        }
        if let Some(f) = c.get("scoring_func").and_then(J::as_str) {
            // gguf-py's ExpertGatingFuncType
            let id = match f {
                "softmax" => 1,
                "sigmoid" => 2,
                "sqrtsoftplus" => 4,
                other => {
                    return Err(bad(format!("expert scoring function {other}")));
                }
            };
            md.a("expert_gating_func", Value::U32(id));
        }
        if u("head_dim").is_some() {
            md.a("attention.key_length", Value::U32(head_dim as u32));
            md.a("attention.value_length", Value::U32(head_dim as u32));
        }
        let tok = self.tokenizer_metadata(arch)?;
        let vocab_len = match tok.iter().find(|(k, _)| k == "tokenizer.ggml.tokens") {
            Some((_, Value::Array(t))) => t.len(),
            _ => 0,
        };
        hf_arch::metadata(arch, c, rope, &mut md, vocab_len, head_dim)?;
        let mut md = md.kv;
        md.extend(tok);
        let mut tensors: Vec<SrcTensor> = extra;
        tensors.extend(hf_arch::tensors(arch, c, &self.tensors)?);
        Ok(Input {
            metadata: md,
            tensors,
        })
    }

    fn tokenizer_metadata(&self, arch: Arch) -> Result<Vec<(String, Value)>> {
        // the llama family tries SentencePiece first, as the converter's LlamaModel does
        let spm = self.dir.dir.join("tokenizer.model");
        if matches!(arch, Arch::Llama | Arch::Mixtral) && spm.is_file() {
            return self.sentencepiece_metadata(&spm);
        }
        let p = self.dir.tokenizer_json.as_ref().ok_or_else(|| {
            bad(format!(
                "{} has no tokenizer.json (only BPE tokenizer.json vocabularies convert)",
                self.dir.dir.display()
            ))
        })?;
        let s = std::fs::read_to_string(p)
            .map_err(|e| Error::Io(format!("cannot read {}", p.display()), e))?;
        let tj: J =
            serde_json::from_str(&s).map_err(|e| Error::Format(format!("{}: {e}", p.display())))?;
        let by_hash = pre_by_hash(&s, self.dir.tokenizer_config.as_ref());
        tokenizer_kvs(
            &tj,
            by_hash,
            self.dir.tokenizer_config.as_ref(),
            &self.dir.config,
            self.dir.chat_template.as_deref(),
        )
    }

    /// The `tokenizer.*` metadata of a SentencePiece model (`tokenizer.model`), with the
    /// special tokens the config and tokenizer.json name.
    fn sentencepiece_metadata(&self, model: &Path) -> Result<Vec<(String, Value)>> {
        let bytes = std::fs::read(model)
            .map_err(|e| Error::Io(format!("cannot read {}", model.display()), e))?;
        let read_json = |name: &str| -> Result<Option<J>> {
            let p = self.dir.dir.join(name);
            if !p.is_file() {
                return Ok(None);
            }
            let s = std::fs::read_to_string(&p)
                .map_err(|e| Error::Io(format!("cannot read {}", p.display()), e))?;
            serde_json::from_str(&s)
                .map(Some)
                .map_err(|e| Error::Format(format!("{}: {e}", p.display())))
        };
        let added = read_json("added_tokens.json")?;
        let tj = read_json("tokenizer.json")?.unwrap_or(J::Null);
        let tc = self.dir.tokenizer_config.as_ref();
        let c = &self.dir.config;
        let mut kv = crate::spm::vocab_kvs(
            &bytes,
            c.get("vocab_size").and_then(J::as_u64),
            added.as_ref(),
            tc,
            &looks_special,
        )?;
        let tokens: Vec<&str> = match kv.iter().find(|(k, _)| k == "tokenizer.ggml.tokens") {
            Some((_, Value::Array(t))) => t
                .iter()
                .map(|v| match v {
                    Value::Str(s) => s.as_str(),
                    _ => "",
                })
                .collect(),
            _ => Vec::new(),
        };
        let find = |content: &str| -> Option<u64> {
            token_in_json(&tj, content)
                .or_else(|| tokens.iter().position(|t| *t == content).map(|i| i as u64))
        };
        let specials = special_kvs(
            tc,
            c,
            self.dir.chat_template.as_deref(),
            tokens.len() as u64,
            &find,
            &crate::spm::post_processor_adds(&tj, tc),
        );
        kv.extend(specials);
        Ok(kv)
    }
}

/// A token's id in a tokenizer.json: its added tokens first, then the model's vocabulary.
fn token_in_json(tj: &J, content: &str) -> Option<u64> {
    tj.get("added_tokens")
        .and_then(J::as_array)
        .into_iter()
        .flatten()
        .find(|t| t.get("content").and_then(J::as_str) == Some(content))
        .and_then(|t| t.get("id").and_then(J::as_u64))
        .or_else(|| {
            tj.get("model")?
                .get("vocab")?
                .as_object()?
                .get(content)?
                .as_u64()
        })
}

/// The special tokens' ids (`bos`, `eos`, `unk`, `sep`, `pad`: the token the tokenizer
/// config names, else the model config's id), whether each is added (the post-processor's
/// `adds` first, then the tokenizer config's `add_*_token`), and the chat template, under
/// gguf-py's key names.
fn special_kvs(
    tc: Option<&J>,
    config: &J,
    template: Option<&str>,
    n: u64,
    find: &dyn Fn(&str) -> Option<u64>,
    adds: &[(&str, bool)],
) -> Vec<(String, Value)> {
    let mut kv = Vec::new();
    for (typ, key) in [
        ("bos", "bos"),
        ("eos", "eos"),
        ("unk", "unknown"),
        ("sep", "seperator"),
        ("pad", "padding"),
    ] {
        let from_tc = tc
            .and_then(|t| t.get(format!("{typ}_token")))
            .and_then(|v| match v {
                J::String(s) => Some(s.as_str()),
                J::Object(o) => o.get("content").and_then(J::as_str),
                _ => None,
            });
        let id = from_tc
            .and_then(find)
            .or_else(|| config.get(format!("{typ}_token_id")).and_then(J::as_u64));
        if let Some(id) = id.filter(|&i| i < n) {
            kv.push((
                format!("tokenizer.ggml.{key}_token_id"),
                Value::U32(id as u32),
            ));
        }
    }
    let mut added: Vec<(&str, bool)> = adds.to_vec();
    for typ in ["bos", "eos", "sep"] {
        if added.iter().any(|(t, _)| *t == typ) {
            continue;
        }
        if let Some(b) = tc
            .and_then(|t| t.get(format!("add_{typ}_token")))
            .and_then(J::as_bool)
        {
            added.push((typ, b));
        }
    }
    for (typ, b) in added {
        kv.push((format!("tokenizer.ggml.add_{typ}_token"), Value::Bool(b)));
    }
    if let Some(t) = template {
        kv.push((
            "tokenizer.chat_template".to_string(),
            Value::Str(t.to_string()),
        ));
    }
    kv
}

/// llama3's per-frequency rope factors as the converter computes them (`rope_freqs.weight`).
fn llama3_rope_freqs(r: &J, base: f64, dim: usize) -> Result<SrcTensor> {
    let g = |k: &str, d: f64| r.get(k).and_then(J::as_f64).unwrap_or(d);
    let (factor, lo, hi) = (
        g("factor", 8.0),
        g("low_freq_factor", 1.0),
        g("high_freq_factor", 4.0),
    );
    let old = g("original_max_position_embeddings", 8192.0);
    let (lo_wl, hi_wl) = (old / lo, old / hi);
    let mut v = Vec::with_capacity(dim / 2);
    for i in (0..dim).step_by(2) {
        let freq = 1.0f32 / (base as f32).powf(i as f32 / dim as f32);
        let wl = 2.0 * std::f64::consts::PI / freq as f64;
        let f = if wl < hi_wl {
            1.0
        } else if wl > lo_wl {
            factor
        } else {
            let smooth = (old / wl - lo) / (hi - lo);
            1.0 / ((1.0 - smooth) / factor + smooth)
        };
        v.push(f as f32);
    }
    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    let n = v.len();
    let storage = hearth_core::Storage::new(std::sync::Arc::new(bytes), 0, n * 4)?;
    let tensor = Tensor::new("rope_freqs.weight".into(), DType::F32, vec![n], storage)?;
    Ok(SrcTensor::plain("rope_freqs.weight".into(), tensor))
}

/// The rope parameters: `rope_scaling` (transformers 4) or `rope_parameters` (5).
fn rope_params(c: &J) -> Option<&J> {
    c.get("rope_scaling")
        .filter(|v| !v.is_null())
        .or_else(|| c.get("rope_parameters"))
}

/// llama.cpp's name for the pre-tokenizer of `tokenizer_json`, found as its converter finds
/// it: the sha256 of the ids [`CHECK_TEXT`] tokenizes to, in the converter's table
/// ([`PRE_HASHES`]). The converter encodes with `transformers`, which adds the special tokens
/// the tokenizer's config asks for; hearth tries the ids with the post-processor's special
/// tokens, without them, and with the configured BOS in front, since no two of those can hash
/// alike by chance.
fn pre_by_hash(tokenizer_json: &str, tc: Option<&J>) -> Option<&'static str> {
    check_hashes(tokenizer_json, tc).iter().find_map(|hex| {
        PRE_HASHES
            .iter()
            .rev()
            .find(|(k, _)| k == hex)
            .map(|(_, n)| *n)
    })
}

/// The hashes [`pre_by_hash`] looks up (sha256 of the ids' Python list repr, in hex).
fn check_hashes(tokenizer_json: &str, tc: Option<&J>) -> Vec<String> {
    use sha2::Digest;
    use std::str::FromStr;
    let Ok(tok) = tokenizers::Tokenizer::from_str(tokenizer_json) else {
        return Vec::new();
    };
    let ids = |special: bool| -> Option<Vec<u32>> {
        Some(tok.encode(CHECK_TEXT, special).ok()?.get_ids().to_vec())
    };
    let (Some(with), Some(without)) = (ids(true), ids(false)) else {
        return Vec::new();
    };
    let mut tries = vec![with, without];
    let bos = tc
        .filter(|c| c.get("add_bos_token").and_then(J::as_bool) == Some(true))
        .and_then(|c| match c.get("bos_token")? {
            J::String(s) => Some(s.as_str()),
            o => o.get("content")?.as_str(),
        })
        .and_then(|b| tok.token_to_id(b));
    if let Some(b) = bos {
        let mut v = vec![b];
        v.extend(tries[1].iter().copied());
        tries.push(v);
    }
    tries
        .iter()
        .map(|v| {
            // Python's str() of a list of ints
            let repr = format!(
                "[{}]",
                v.iter().map(u32::to_string).collect::<Vec<_>>().join(", ")
            );
            let h = sha2::Sha256::digest(repr.as_bytes());
            h.iter().map(|b| format!("{b:02x}")).collect()
        })
        .collect()
}

/// llama.cpp's name for a tokenizer.json pre-tokenizer (`tokenizer.ggml.pre`), for the
/// byte-level BPE shapes hearth recognizes (when its hash is not in the converter's table).
fn pre_name(pre: &J) -> Option<&'static str> {
    fn ty(v: &J) -> &str {
        v.get("type").and_then(J::as_str).unwrap_or("")
    }
    let byte_level_regex =
        |v: &J| ty(v) == "ByteLevel" && v.get("use_regex").and_then(J::as_bool).unwrap_or(true);
    if byte_level_regex(pre) {
        return Some("gpt-2");
    }
    let seq = pre.get("pretokenizers").and_then(J::as_array)?;
    match seq.as_slice() {
        [d, b]
            if ty(d) == "Digits"
                && d.get("individual_digits").and_then(J::as_bool) == Some(true)
                && byte_level_regex(b) =>
        {
            Some("smollm")
        }
        [s, b] if ty(s) == "Split" && ty(b) == "ByteLevel" => {
            let re = s
                .get("pattern")
                .and_then(|p| p.get("Regex"))
                .and_then(J::as_str)?;
            if re.contains(r"\p{N}{1,3}") {
                Some("llama-bpe")
            } else if re.contains(r"\p{N}|") || re.ends_with(r"\p{N}") {
                Some("qwen2")
            } else {
                None
            }
        }
        _ => None,
    }
}

fn looks_special(t: &str) -> bool {
    (t.starts_with("<|") && t.ends_with("|>"))
        || (t.starts_with("<｜") && t.ends_with("｜>"))
        || [
            "<pad>", "<mask>", "<2mass>", "[@BOS@]", "<s>", "</s>", "<unk>", "<bos>", "<eos>",
        ]
        .contains(&t)
}

/// The `tokenizer.*` metadata of a byte-level BPE tokenizer.json, as the converter writes it.
fn tokenizer_kvs(
    tj: &J,
    by_hash: Option<&'static str>,
    tc: Option<&J>,
    config: &J,
    template: Option<&str>,
) -> Result<Vec<(String, Value)>> {
    let model = tj
        .get("model")
        .ok_or_else(|| Error::Format("tokenizer.json has no model".into()))?;
    if model.get("type").and_then(J::as_str) != Some("BPE") {
        return Err(bad(
            "only BPE tokenizer.json vocabularies convert (this one is not BPE)".into(),
        ));
    }
    let pre_j = tj.get("pre_tokenizer").unwrap_or(&J::Null);
    let pre = by_hash.or_else(|| pre_name(pre_j)).ok_or_else(|| {
        bad(format!(
            "tokenizer.json's pre-tokenizer is not one hearth can name for llama.cpp: {}",
            serde_json::to_string(pre_j)
                .unwrap_or_default()
                .chars()
                .take(200)
                .collect::<String>()
        ))
    })?;
    let vocab = model
        .get("vocab")
        .and_then(J::as_object)
        .ok_or_else(|| Error::Format("tokenizer.json has no vocab".into()))?;
    let mut by_id: std::collections::BTreeMap<u64, (String, i32)> =
        std::collections::BTreeMap::new();
    for (tok, id) in vocab {
        let id = id
            .as_u64()
            .ok_or_else(|| Error::Format(format!("token {tok:?} has a bad id")))?;
        by_id.insert(id, (tok.clone(), 1));
    }
    for at in tj
        .get("added_tokens")
        .and_then(J::as_array)
        .into_iter()
        .flatten()
    {
        let (Some(id), Some(content)) = (
            at.get("id").and_then(J::as_u64),
            at.get("content").and_then(J::as_str),
        ) else {
            continue;
        };
        let special = at.get("special").and_then(J::as_bool).unwrap_or(false);
        let ty = if special || looks_special(content) {
            3
        } else {
            4
        };
        by_id.insert(id, (content.to_string(), ty));
    }
    let n = by_id.keys().next_back().map_or(0, |m| m + 1);
    let n = n.max(config.get("vocab_size").and_then(J::as_u64).unwrap_or(0));
    if n > 10_000_000 {
        return Err(Error::Format(format!("vocabulary of {n} tokens")));
    }
    let (mut tokens, mut types) = (
        Vec::with_capacity(n as usize),
        Vec::with_capacity(n as usize),
    );
    for i in 0..n {
        match by_id.get(&i) {
            Some((t, ty)) => {
                tokens.push(Value::Str(t.clone()));
                types.push(Value::I32(*ty));
            }
            None => {
                tokens.push(Value::Str(format!("[PAD{i}]")));
                types.push(Value::I32(4));
            }
        }
    }
    let merges: Vec<Value> = model
        .get("merges")
        .and_then(J::as_array)
        .into_iter()
        .flatten()
        .filter_map(|m| match m {
            J::String(s) => Some(Value::Str(s.clone())),
            J::Array(p) if p.len() == 2 => {
                Some(Value::Str(format!("{} {}", p[0].as_str()?, p[1].as_str()?)))
            }
            _ => None,
        })
        .collect();
    let find = |content: &str| token_in_json(tj, content);
    let mut kv = vec![
        (
            "tokenizer.ggml.model".to_string(),
            Value::Str("gpt2".into()),
        ),
        ("tokenizer.ggml.pre".to_string(), Value::Str(pre.into())),
        ("tokenizer.ggml.tokens".to_string(), Value::Array(tokens)),
        ("tokenizer.ggml.token_type".to_string(), Value::Array(types)),
        ("tokenizer.ggml.merges".to_string(), Value::Array(merges)),
    ];
    let adds = crate::spm::post_processor_adds(tj, tc);
    kv.extend(special_kvs(tc, config, template, n, &find, &adds));
    Ok(kv)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// hearth hashes a tokenizer's ids of the check text as llama.cpp's converter does
    /// (`transformers`' ids, `scripts/gen_pre_hashes.py`), and looks the hash up in its table.
    #[test]
    fn pre_tokenizer_hash_is_the_converters() {
        let fx = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tests/fixtures/tiny/llama"
        );
        let json = std::fs::read_to_string(format!("{fx}/tokenizer.json")).unwrap();
        let want = std::fs::read_to_string(format!("{fx}/chkhsh.txt")).unwrap();
        let got = check_hashes(&json, None);
        assert!(got.contains(&want.trim().to_string()), "{got:?} vs {want}");
        // the fixture's vocabulary is none of the converter's, so the name comes from the
        // pre-tokenizer's shape
        assert_eq!(pre_by_hash(&json, None), None);
        assert!(
            PRE_HASHES
                .iter()
                .all(|(k, n)| k.len() == 64 && !n.is_empty())
        );
    }
}
