//! Build a tokenizer from GGUF `tokenizer.ggml.*` metadata.
use crate::pretok::{self, PreSplit};
use crate::{Rules, Spelling, Tokenizer, bytes_to_unicode};
use hearth_core::{Error, Result};
use hearth_formats::{GgufFile, Value};
use serde_json::{Value as Json, json};
use std::collections::{HashMap, HashSet};

/// GGUF token types (llama.cpp's `llama_token_type`).
const TOKEN_CONTROL: i64 = 3;
const TOKEN_USER_DEFINED: i64 = 4;

fn split(pattern: &str) -> Json {
    json!({"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": false})
}

fn byte_level(use_regex: bool) -> Json {
    json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex})
}

/// The pre-tokenizer of a byte-level vocabulary with this `tokenizer.ggml.pre` (a missing
/// one is llama.cpp's `default`; one this table does not know splits as GPT-2 does), and
/// whether the model adds BOS and ignores merges for whole-token words.
fn byte_level_pre(pre: &str) -> (Json, PreSplit) {
    let p = pretok::pre_split(pre)
        .or_else(|| pretok::pre_split("gpt-2"))
        .expect("gpt-2 is in the table");
    let mut v: Vec<Json> = p.regexes.iter().map(|r| split(r)).collect();
    v.push(byte_level(false));
    (json!({"type": "Sequence", "pretokenizers": v}), p)
}

/// Pre-types whose vocabulary is SentencePiece-style BPE over raw UTF-8 (spaces as `▁`,
/// `<0xXX>` byte tokens), split only at newline runs.
const SPM_BPE_PRES: &[&str] = &["gemma4", "granite-embed-multi-311m", "sarvam-moe"];

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

/// A merge rule `"a b"` split at its first space after the first character (a token may
/// itself start with a space, as llama.cpp reads them).
fn merge_pair(m: &str) -> Option<Json> {
    let first = m.chars().next()?.len_utf8();
    let i = first + m[first..].find(' ')?;
    Some(json!([&m[..i], &m[i + 1..]]))
}

fn merges(g: &GgufFile) -> Result<Vec<Json>> {
    Ok(strings(g, "tokenizer.ggml.merges")?
        .unwrap_or_default()
        .iter()
        .filter_map(|m| merge_pair(m))
        .collect())
}

fn vocab_map<'a>(keys: impl Iterator<Item = &'a str>) -> serde_json::Map<String, Json> {
    keys.enumerate()
        .map(|(i, t)| (t.to_string(), json!(i)))
        .collect()
}

fn bpe_model(vocab: serde_json::Map<String, Json>, merges: Vec<Json>, o: BpeOptions) -> Json {
    json!({"type": "BPE", "dropout": null, "unk_token": o.unk, "continuing_subword_prefix": null,
           "end_of_word_suffix": null, "fuse_unk": o.byte_fallback, "byte_fallback": o.byte_fallback,
           "ignore_merges": o.ignore_merges, "vocab": vocab, "merges": merges})
}

struct BpeOptions {
    unk: Option<String>,
    byte_fallback: bool,
    ignore_merges: bool,
}

/// The decoder of vocabularies that spell spaces `▁` and bytes `<0xXX>`.
fn spm_decoder(strip_prefix: bool) -> Json {
    let mut dec = vec![
        json!({"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "}),
        json!({"type": "ByteFallback"}),
        json!({"type": "Fuse"}),
    ];
    if strip_prefix {
        dec.push(json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
    }
    json!({"type": "Sequence", "decoders": dec})
}

/// What the vocabulary's file says, and what the builders make of it.
struct Built {
    doc: Json,
    spelling: Spelling,
    /// The token strings as the vocabulary spells them (for `token_bytes`).
    pieces: Vec<String>,
    /// The model adds BOS unless the file says otherwise.
    add_bos: bool,
    /// Gemma 4 style: always adds BOS.
    force_bos: bool,
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
    let mut types = ints(g, "tokenizer.ggml.token_type").unwrap_or_default();
    types.resize(n, 1);
    let pre = g
        .get("tokenizer.ggml.pre")
        .and_then(Value::as_str)
        .unwrap_or("default");
    let unk = id(g, "tokenizer.ggml.unknown_token_id", n).map(|i| tokens[i as usize].clone());
    let is_added = |i: usize| types[i] == TOKEN_CONTROL || types[i] == TOKEN_USER_DEFINED;
    let built = match model {
        "gpt2" if !SPM_BPE_PRES.contains(&pre) => {
            let alphabet: HashSet<char> = bytes_to_unicode().into_iter().collect();
            let spell = bytes_to_unicode();
            // Added tokens keep their text (it is matched in the raw text); the others are
            // spelled in the byte-level alphabet.
            let keys: Vec<String> = tokens
                .iter()
                .enumerate()
                .map(|(i, t)| {
                    if is_added(i) || t.chars().all(|c| alphabet.contains(&c)) {
                        t.clone()
                    } else {
                        t.bytes().map(|b| spell[b as usize]).collect()
                    }
                })
                .collect();
            let (pre_tokenizer, p) = byte_level_pre(pre);
            let opts = BpeOptions {
                unk: None,
                byte_fallback: false,
                ignore_merges: p.ignore_merges,
            };
            let doc = json!({
                "normalizer": null,
                "pre_tokenizer": pre_tokenizer,
                "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
                "model": bpe_model(vocab_map(keys.iter().map(String::as_str)), merges(g)?, opts),
            });
            Built {
                doc,
                spelling: Spelling::ByteLevel,
                pieces: keys,
                add_bos: p.add_bos,
                force_bos: false,
            }
        }
        // SentencePiece-style BPE on raw UTF-8 (Gemma 4): spaces become `▁`, the text is split
        // only into lines and newline runs, and the merges run over each whole line.
        "gpt2" | "gemma4" => {
            let opts = BpeOptions {
                unk,
                byte_fallback: true,
                ignore_merges: false,
            };
            let doc = json!({
                "normalizer": {"type": "Replace", "pattern": {"String": " "}, "content": "\u{2581}"},
                "pre_tokenizer": split("[^\n]+|[\n]+"),
                "decoder": spm_decoder(false),
                "model": bpe_model(vocab_map(tokens.iter().map(String::as_str)), merges(g)?, opts),
            });
            Built {
                doc,
                spelling: Spelling::SentencePiece(false),
                pieces: tokens.clone(),
                add_bos: true,
                force_bos: model == "gemma4"
                    || pre == "gemma4"
                    || pre == "granite-embed-multi-311m",
            }
        }
        "llama" => {
            let scores = floats(g, "tokenizer.ggml.scores").unwrap_or_else(|| vec![0.0; n]);
            let vocab_idx: HashMap<&str, usize> = tokens
                .iter()
                .enumerate()
                .map(|(i, t)| (t.as_str(), i))
                .collect();
            let merges: Vec<Json> = match strings(g, "tokenizer.ggml.merges")? {
                Some(m) => m.iter().filter_map(|m| merge_pair(m)).collect(),
                None => merges_from_scores(&tokens, &scores, &vocab_idx)
                    .into_iter()
                    .map(|(a, b)| json!([a, b]))
                    .collect(),
            };
            let add_space = g
                .get("tokenizer.ggml.add_space_prefix")
                .and_then(Value::as_bool)
                .unwrap_or(true);
            let opts = BpeOptions {
                unk,
                byte_fallback: true,
                ignore_merges: false,
            };
            let doc = json!({
                "normalizer": null,
                // The dummy-prefix space is added in `Tokenizer::encode` (as sentencepiece and
                // llama.cpp do, even before a leading space), not by Metaspace, which skips it
                // when the text already starts with one.
                "pre_tokenizer": {"type": "Metaspace", "replacement": "\u{2581}", "prepend_scheme": "never", "split": false},
                "decoder": spm_decoder(add_space),
                "model": bpe_model(vocab_map(tokens.iter().map(String::as_str)), merges, opts),
            });
            Built {
                doc,
                spelling: Spelling::SentencePiece(add_space),
                pieces: tokens.clone(),
                add_bos: true,
                force_bos: false,
            }
        }
        "bert" => wordpiece(g, &tokens, &types, unk),
        "" => return Err(Error::Format("the file has no tokenizer.ggml.model".into())),
        m => {
            return Err(Error::Unsupported(format!(
                "tokenizer model '{m}' (hearth reads gpt2, llama, gemma4 and bert vocabularies)"
            )));
        }
    };
    let Built {
        mut doc,
        spelling,
        pieces,
        add_bos: default_add_bos,
        force_bos,
    } = built;
    // Control tokens become special added tokens; user-defined ones plain added tokens.
    let mut special = HashSet::new();
    let mut added = Vec::new();
    for (i, t) in tokens.iter().enumerate() {
        if is_added(i) && !t.is_empty() {
            let sp = types[i] == TOKEN_CONTROL;
            if sp {
                special.insert(i as u32);
            }
            added.push(json!({"id": i, "content": t, "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": sp}));
        }
    }
    doc["version"] = json!("1.0");
    doc["post_processor"] = Json::Null;
    doc["added_tokens"] = Json::Array(added);
    doc["truncation"] = Json::Null;
    doc["padding"] = Json::Null;
    let inner: tokenizers::Tokenizer = doc.to_string().parse().map_err(|e| {
        Error::Format(format!(
            "cannot build the tokenizer from GGUF metadata: {e}"
        ))
    })?;
    let bert = model == "bert";
    let bos = id(g, "tokenizer.ggml.bos_token_id", n).or_else(|| {
        bert.then(|| id(g, "tokenizer.ggml.cls_token_id", n))
            .flatten()
    });
    // A BERT encoder ends its input with [SEP].
    let eos = if bert {
        id(g, "tokenizer.ggml.seperator_token_id", n)
    } else {
        id(g, "tokenizer.ggml.eos_token_id", n)
    };
    let flag = |k: &str| g.get(k).and_then(Value::as_bool);
    // Gemma 4 always starts with BOS (llama.cpp overrides a false flag too).
    let add_bos = force_bos || flag("tokenizer.ggml.add_bos_token").unwrap_or(default_add_bos);
    let add_eos = if bert {
        flag("tokenizer.ggml.add_sep_token").unwrap_or(true)
    } else {
        flag("tokenizer.ggml.add_eos_token").unwrap_or(false)
    };
    let mut eog: HashSet<u32> = if bert {
        HashSet::new()
    } else {
        eos.into_iter().collect()
    };
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
    let raw: HashSet<u32> = (0..n)
        .filter(|&i| types[i] == TOKEN_USER_DEFINED)
        .map(|i| i as u32)
        .collect();
    let mut t = Tokenizer::assemble(inner, pieces, &special, spelling, rules);
    // User-defined tokens stand for their own text, whatever the spelling.
    for i in raw {
        t.token_bytes[i as usize] = tokens[i as usize].clone().into_bytes();
    }
    Ok(t)
}

/// A WordPiece (BERT) vocabulary. llama.cpp's converter writes word-initial pieces as `▁word`
/// and continuations bare; Hugging Face spells them `word` and `##word`.
fn wordpiece(g: &GgufFile, tokens: &[String], types: &[i64], unk: Option<String>) -> Built {
    let keys: Vec<String> = tokens
        .iter()
        .zip(types)
        .map(|(t, &ty)| {
            if ty == TOKEN_CONTROL {
                t.clone()
            } else if let Some(w) = t.strip_prefix('\u{2581}') {
                w.to_string()
            } else {
                format!("##{t}")
            }
        })
        .collect();
    let lowercase = g
        .get("tokenizer.ggml.normalizer.lowercase")
        .and_then(Value::as_bool)
        .unwrap_or(true);
    let strip_accents = g
        .get("tokenizer.ggml.normalizer.strip_accents")
        .and_then(Value::as_bool)
        .unwrap_or(lowercase);
    let unk = unk.unwrap_or_else(|| "[UNK]".into());
    let doc = json!({
        "normalizer": {"type": "BertNormalizer", "clean_text": true, "handle_chinese_chars": true,
                       "strip_accents": strip_accents, "lowercase": lowercase},
        "pre_tokenizer": {"type": "BertPreTokenizer"},
        "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": true},
        "model": {"type": "WordPiece", "unk_token": unk, "continuing_subword_prefix": "##",
                  "max_input_chars_per_word": 100, "vocab": vocab_map(keys.iter().map(String::as_str))},
    });
    Built {
        doc,
        spelling: Spelling::SentencePiece(false),
        pieces: tokens.to_vec(),
        add_bos: true,
        force_bos: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_rules_split_after_the_first_character() {
        assert_eq!(merge_pair("Ġ t"), Some(json!(["Ġ", "t"])));
        // a first token that is itself a space (raw-UTF-8 vocabularies)
        assert_eq!(merge_pair("  x"), Some(json!([" ", "x"])));
        assert_eq!(merge_pair("▁▁ ▁"), Some(json!(["▁▁", "▁"])));
        assert_eq!(merge_pair("ab"), None);
        assert_eq!(merge_pair(""), None);
    }
}
