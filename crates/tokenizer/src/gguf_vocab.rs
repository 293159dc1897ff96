//! Build a tokenizer from GGUF `tokenizer.ggml.*` metadata.
use crate::{Rules, Spelling, Tokenizer, bytes_to_unicode};
use hearth_core::{Error, Result};
use hearth_formats::{GgufFile, Value};
use serde_json::{Value as Json, json};
use std::collections::{HashMap, HashSet};

/// GGUF token types (llama.cpp's `llama_token_type`).
const TOKEN_CONTROL: i64 = 3;
const TOKEN_USER_DEFINED: i64 = 4;

// Pre-tokenizer split patterns, by `tokenizer.ggml.pre`. These are the regexes the models'
// own tokenizer.json files use, as listed in llama.cpp's llama-vocab.cpp and transformers'
// integrations/gguf/gguf_tokenizer_mapping.py.
const GPT2_SPLIT: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const GPT4O_SPLIT: &str = concat!(
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
    r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
);
const TEKKEN_SPLIT: &str = concat!(
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+",
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*",
    r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
);

fn split(pattern: &str) -> Json {
    json!({"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": false})
}

fn byte_level(use_regex: bool) -> Json {
    json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex})
}

/// The pre-tokenizer a byte-level vocabulary with this `tokenizer.ggml.pre` uses.
fn pre_tokenizer(pre: &str) -> Json {
    let seq = |v: Vec<Json>| json!({"type": "Sequence", "pretokenizers": v});
    match pre {
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "smaug-bpe" | "dbrx" | "pixtral" => {
            seq(vec![split(LLAMA3_SPLIT), byte_level(false)])
        }
        "qwen2" | "deepseek-r1-qwen" | "megrez" => seq(vec![split(QWEN2_SPLIT), byte_level(false)]),
        "gpt-4o" | "llama4" | "minimax-m2" => seq(vec![split(GPT4O_SPLIT), byte_level(false)]),
        "tekken" => seq(vec![split(TEKKEN_SPLIT), byte_level(false)]),
        // Digits isolated one by one, then GPT-2 splitting.
        "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone" | "minerva" => {
            seq(vec![
                json!({"type": "Digits", "individual_digits": true}),
                byte_level(true),
            ])
        }
        _ => seq(vec![split(GPT2_SPLIT), byte_level(false)]),
    }
}

fn strings(g: &GgufFile, key: &str) -> Result<Option<Vec<String>>> {
    match g.get(key) {
        None => Ok(None),
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| Error::Format(format!("{key} holds a non-string")))
            })
            .collect::<Result<Vec<_>>>()
            .map(Some),
        Some(_) => Err(Error::Format(format!("{key} is not an array"))),
    }
}

fn ints(g: &GgufFile, key: &str) -> Option<Vec<i64>> {
    g.get(key)?
        .as_array()
        .map(|a| a.iter().map(|v| v.as_i64().unwrap_or(1)).collect())
}

fn floats(g: &GgufFile, key: &str) -> Option<Vec<f64>> {
    g.get(key)?
        .as_array()
        .map(|a| a.iter().map(|v| v.as_f64().unwrap_or(0.0)).collect())
}

fn id(g: &GgufFile, key: &str, n: usize) -> Option<u32> {
    g.get(key)?
        .as_u64()
        .filter(|&v| (v as usize) < n)
        .map(|v| v as u32)
}

/// SentencePiece merges recovered from the vocabulary and scores, ordered as transformers'
/// `generate_merges` orders them: by the merged token's score (best first), then by the
/// lengths of the two halves, then by their ids.
fn merges_from_scores(
    tokens: &[String],
    scores: &[f64],
    vocab: &HashMap<&str, usize>,
) -> Vec<(String, String)> {
    let mut m: Vec<(f64, usize, usize, usize, usize, &str, &str)> = Vec::new();
    for (t, s) in tokens.iter().zip(scores) {
        let mut local = Vec::new();
        for (i, _) in t.char_indices().skip(1) {
            let (l, r) = t.split_at(i);
            if let (Some(&li), Some(&ri)) = (vocab.get(l), vocab.get(r)) {
                local.push((*s, l.chars().count(), r.chars().count(), li, ri, l, r));
            }
        }
        local.sort_by_key(|x| (x.3, x.4));
        m.extend(local);
    }
    // Python's sorted(..., reverse=True) is stable: equal keys keep their order.
    m.sort_by(|a, b| {
        (b.0, b.1, b.2)
            .partial_cmp(&(a.0, a.1, a.2))
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    m.into_iter()
        .map(|x| (x.5.to_string(), x.6.to_string()))
        .collect()
}

/// Build the tokenizer a GGUF file describes.
pub fn from_gguf(g: &GgufFile) -> Result<Tokenizer> {
    let model = g
        .get("tokenizer.ggml.model")
        .and_then(Value::as_str)
        .unwrap_or("");
    let tokens = strings(g, "tokenizer.ggml.tokens")?.ok_or_else(|| {
        Error::Format("the file has no vocabulary (tokenizer.ggml.tokens)".into())
    })?;
    let n = tokens.len();
    let types = ints(g, "tokenizer.ggml.token_type").unwrap_or_else(|| vec![1; n]);
    let pre = g
        .get("tokenizer.ggml.pre")
        .and_then(Value::as_str)
        .unwrap_or("default");
    let (spelling, mut doc) = match model {
        "gpt2" => {
            let alphabet: HashSet<char> = bytes_to_unicode().into_iter().collect();
            let spell = bytes_to_unicode();
            let spelled: Vec<String> = tokens
                .iter()
                .map(|t| {
                    if t.chars().all(|c| alphabet.contains(&c)) {
                        t.clone()
                    } else {
                        t.bytes().map(|b| spell[b as usize]).collect()
                    }
                })
                .collect();
            let vocab: serde_json::Map<String, Json> = spelled
                .iter()
                .enumerate()
                .map(|(i, t)| (t.clone(), json!(i)))
                .collect();
            let merges: Vec<Json> = strings(g, "tokenizer.ggml.merges")?
                .unwrap_or_default()
                .iter()
                .filter_map(|m| m.split_once(' ').map(|(a, b)| json!([a, b])))
                .collect();
            let doc = json!({
                "version": "1.0",
                "normalizer": null,
                "pre_tokenizer": pre_tokenizer(pre),
                "post_processor": null,
                "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
                "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                          "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                          "vocab": vocab, "merges": merges},
            });
            (Spelling::ByteLevel, doc)
        }
        "llama" => {
            let scores = floats(g, "tokenizer.ggml.scores").unwrap_or_else(|| vec![0.0; n]);
            let vocab_idx: HashMap<&str, usize> = tokens
                .iter()
                .enumerate()
                .map(|(i, t)| (t.as_str(), i))
                .collect();
            let merges: Vec<Json> = match strings(g, "tokenizer.ggml.merges")? {
                Some(m) => m
                    .iter()
                    .filter_map(|m| m.split_once(' ').map(|(a, b)| json!([a, b])))
                    .collect(),
                None => merges_from_scores(&tokens, &scores, &vocab_idx)
                    .into_iter()
                    .map(|(a, b)| json!([a, b]))
                    .collect(),
            };
            let vocab: serde_json::Map<String, Json> = tokens
                .iter()
                .enumerate()
                .map(|(i, t)| (t.clone(), json!(i)))
                .collect();
            let add_space = g
                .get("tokenizer.ggml.add_space_prefix")
                .and_then(Value::as_bool)
                .unwrap_or(true);
            let unk =
                id(g, "tokenizer.ggml.unknown_token_id", n).map(|i| tokens[i as usize].clone());
            let mut dec = vec![
                json!({"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "}),
                json!({"type": "ByteFallback"}),
                json!({"type": "Fuse"}),
            ];
            if add_space {
                dec.push(json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
            }
            let doc = json!({
                "version": "1.0",
                "normalizer": null,
                // The dummy-prefix space is added in `Tokenizer::encode` (as sentencepiece and
                // llama.cpp do, even before a leading space), not by Metaspace, which skips it
                // when the text already starts with one.
                "pre_tokenizer": {"type": "Metaspace", "replacement": "\u{2581}", "prepend_scheme": "never", "split": false},
                "post_processor": null,
                "decoder": {"type": "Sequence", "decoders": dec},
                "model": {"type": "BPE", "dropout": null, "unk_token": unk, "continuing_subword_prefix": null,
                          "end_of_word_suffix": null, "fuse_unk": true, "byte_fallback": true, "ignore_merges": false,
                          "vocab": vocab, "merges": merges},
            });
            (Spelling::SentencePiece(add_space), doc)
        }
        "" => return Err(Error::Format("the file has no tokenizer.ggml.model".into())),
        m => {
            return Err(Error::Unsupported(format!(
                "tokenizer model '{m}' (hearth reads gpt2 and llama vocabularies)"
            )));
        }
    };
    // Control tokens become special added tokens; user-defined ones plain added tokens.
    let mut special = HashSet::new();
    let mut added = Vec::new();
    for (i, (t, &ty)) in tokens.iter().zip(&types).enumerate() {
        if ty == TOKEN_CONTROL || ty == TOKEN_USER_DEFINED {
            let sp = ty == TOKEN_CONTROL;
            if sp {
                special.insert(i as u32);
            }
            added.push(json!({"id": i, "content": t, "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": sp}));
        }
    }
    doc["added_tokens"] = Json::Array(added);
    doc["truncation"] = Json::Null;
    doc["padding"] = Json::Null;
    let inner: tokenizers::Tokenizer = doc.to_string().parse().map_err(|e| {
        Error::Format(format!(
            "cannot build the tokenizer from GGUF metadata: {e}"
        ))
    })?;
    let bos = id(g, "tokenizer.ggml.bos_token_id", n);
    let eos = id(g, "tokenizer.ggml.eos_token_id", n);
    let add_bos = g
        .get("tokenizer.ggml.add_bos_token")
        .and_then(Value::as_bool)
        .unwrap_or(model == "llama");
    let add_eos = g
        .get("tokenizer.ggml.add_eos_token")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let mut eog: HashSet<u32> = eos.into_iter().collect();
    eog.extend(id(g, "tokenizer.ggml.eot_token_id", n));
    eog.extend(id(g, "tokenizer.ggml.eom_token_id", n));
    let chat_template = g
        .get("tokenizer.chat_template")
        .and_then(Value::as_str)
        .map(str::to_string);
    let rules = Rules {
        bos,
        eos,
        add_bos,
        add_eos,
        eog,
        chat_template,
    };
    Ok(Tokenizer::assemble(
        inner, tokens, &special, spelling, rules,
    ))
}
