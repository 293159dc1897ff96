//! Tokenizers built from the committed fixtures: encoding arbitrary text, decoding arbitrary
//! token ids, and the streaming UTF-8 decoder fed arbitrary byte slices.
//!
//! Input: one control byte (which tokenizer, whether to add special tokens), then the
//! payload, used three ways: as little-endian u32 token ids, as byte slices for
//! `StreamDecoder`, and (lossily) as text to encode.
#![no_main]

#[path = "common.rs"]
#[macro_use]
mod common;

use hearth_formats::{GgufFile, ModelFiles, Source};
use hearth_tokenizer::{StreamDecoder, Tokenizer};
use libfuzzer_sys::fuzz_target;
use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

/// SentencePiece (llama) vocabulary with byte fallback, as GGUF metadata.
static SPM_GGUF: &[u8] = include_bytes!("../../tests/fixtures/spm/vocab.gguf");
/// Byte-level BPE (gpt2) vocabulary with merges, as GGUF metadata.
static BPE_GGUF: &[u8] = include_bytes!("../../tests/fixtures/tiny/qwen2/model.gguf");
/// The same kind of vocabulary as a Hugging Face tokenizer.json.
static BPE_JSON: &[u8] = include_bytes!("../../tests/fixtures/tiny/llama/tokenizer.json");
static BPE_TC: &[u8] = include_bytes!("../../tests/fixtures/tiny/llama/tokenizer_config.json");
static BPE_CONFIG: &[u8] = include_bytes!("../../tests/fixtures/tiny/llama/config.json");

fn from_gguf(bytes: &'static [u8]) -> Tokenizer {
    let g = GgufFile::parse(Arc::new(bytes)).expect("fixture GGUF parses");
    let files = ModelFiles {
        source: Source::Gguf(g),
        tensors: HashMap::new(),
        size: bytes.len() as u64,
    };
    Tokenizer::from_files(&files).expect("fixture GGUF vocabulary builds")
}

fn from_json() -> Tokenizer {
    let inner = tokenizers::Tokenizer::from_bytes(BPE_JSON).expect("fixture tokenizer.json");
    let tc: serde_json::Value = serde_json::from_slice(BPE_TC).expect("tokenizer_config.json");
    let cfg: serde_json::Value = serde_json::from_slice(BPE_CONFIG).expect("config.json");
    Tokenizer::from_hf(inner, Some(&tc), &cfg).expect("fixture tokenizer.json builds")
}

fn tokenizers() -> &'static [Tokenizer; 3] {
    static T: OnceLock<[Tokenizer; 3]> = OnceLock::new();
    T.get_or_init(|| [from_gguf(SPM_GGUF), from_gguf(BPE_GGUF), from_json()])
}

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, payload)) = data.split_first() else {
        return;
    };
    let tok = &tokenizers()[(ctl & 3) as usize % 3];
    let add_special = ctl & 4 != 0;
    let n = tok.vocab_size();

    // Token ids: mostly in the vocabulary, some just past it, some anywhere (`decode` and the
    // per-token accessors take any id; unknown ones contribute nothing).
    let ids: Vec<u32> = payload
        .chunks_exact(4)
        .map(|c| {
            let raw = u32::from_le_bytes(c.try_into().unwrap());
            if raw & 0x8000_0000 != 0 {
                raw
            } else {
                raw % (n as u32 + 8)
            }
        })
        .collect();
    let text = tok.decode(&ids);
    let mut expect = Vec::new();
    for &id in &ids {
        expect.extend_from_slice(tok.token_bytes(id));
        let _ = tok.token_str(id);
        let _ = tok.is_eog(id);
    }
    assert_eq!(text, String::from_utf8_lossy(&expect), "decode({ids:?})");

    // The stream decoder, fed slices of varying length, yields what a lossy decode of all
    // the bytes at once gives.
    let mut d = StreamDecoder::default();
    let mut out = String::new();
    let mut rest = payload;
    let mut k = ctl as usize;
    while !rest.is_empty() {
        k = k.wrapping_mul(31).wrapping_add(7);
        let m = (k % 7).min(rest.len()); // empty pushes included
        let (a, b) = rest.split_at(m);
        out.push_str(&d.push(a));
        rest = b;
        if m == 0 {
            out.push_str(&d.push(&rest[..1]));
            rest = &rest[1..];
        }
    }
    out.push_str(&d.flush());
    assert_eq!(out, String::from_utf8_lossy(payload), "StreamDecoder on {payload:?}");

    // Encoding arbitrary text gives ids in the vocabulary.
    let s = String::from_utf8_lossy(payload);
    if let Ok(ids) = tok.encode(&s, add_special) {
        assert!(ids.iter().all(|&i| (i as usize) < n), "encode gave ids past {n}");
        let _ = tok.decode(&ids);
        let _ = tok.token_id(&s);
    }
});
