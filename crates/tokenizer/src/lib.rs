//! hearth-tokenizer: tokenizers from GGUF metadata or tokenizer.json, streaming UTF-8
//! decoding, and chat templates.
//!
//! Every tokenizer runs on the `tokenizers` crate (the same code HF's Python tokenizers use).
//! GGUF vocabularies are turned into an equivalent `tokenizer.json` document:
//! - `gpt2` (byte-level BPE): vocabulary + merges, split by the regexes that
//!   `tokenizer.ggml.pre` names (src/pretok.rs), then byte-level mapping;
//! - `llama` (SentencePiece BPE): vocabulary with merges recovered from the scores, byte
//!   fallback, `▁` for spaces;
//! - `gemma4` (SentencePiece-style BPE on raw UTF-8): spaces become `▁`, merges over whole
//!   lines, byte fallback;
//! - `bert` (WordPiece): BERT's normalizer (lowercase, accents stripped) and word/punctuation
//!   split, greedy longest-match pieces with `##` continuations.
//!
//! llama.cpp's tokenizer test vectors (tests/llama_vocab.rs) check all of them.
#![deny(missing_docs)]

mod chat;
mod gguf_vocab;
mod pretok;

pub use chat::{CHATML, ChatMessage, ChatTemplate};

use hearth_core::{Error, Result};
use hearth_formats::{ModelFiles, Source};
use std::collections::HashSet;

/// How a vocabulary spells bytes in its token strings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Spelling {
    /// GPT-2 byte-to-unicode alphabet.
    ByteLevel,
    /// SentencePiece: `▁` is a space, `<0xXX>` a raw byte; with a dummy-prefix space added
    /// to the text before encoding when the flag is set.
    SentencePiece(bool),
}

/// A vocabulary's special-token rules, as its file states them.
pub(crate) struct Rules {
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub add_bos: bool,
    pub add_eos: bool,
    pub eog: HashSet<u32>,
    pub chat_template: Option<String>,
}

/// A tokenizer with the model's special-token rules.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// Add sentencepiece's dummy-prefix space before encoding.
    space_prefix: bool,
    /// Special-token strings (a text starting with one gets no dummy prefix).
    specials: Vec<String>,
    /// Raw bytes of each token when decoded (empty for control tokens).
    token_bytes: Vec<Vec<u8>>,
    /// Beginning-of-sequence token.
    pub bos: Option<u32>,
    /// End-of-sequence token.
    pub eos: Option<u32>,
    /// Whether encoding with special tokens adds BOS.
    pub add_bos: bool,
    /// Whether encoding with special tokens adds EOS.
    pub add_eos: bool,
    /// Tokens that end generation (EOS, EOT, `<|im_end|>` and the like).
    pub eog: HashSet<u32>,
    /// The model's chat template, if it has one.
    pub chat_template: Option<String>,
}

/// The GPT-2 byte-to-unicode table: byte `b` is spelled as `char` `table[b]`.
pub fn bytes_to_unicode() -> [char; 256] {
    let mut t = ['\0'; 256];
    let mut n = 0u32;
    for b in 0..256u32 {
        let printable =
            (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
        t[b as usize] = if printable {
            char::from_u32(b).unwrap()
        } else {
            n += 1;
            char::from_u32(255 + n).unwrap()
        };
    }
    t
}

fn spelled_bytes(
    s: &str,
    spelling: Spelling,
    inv: &std::collections::HashMap<char, u8>,
) -> Vec<u8> {
    match spelling {
        Spelling::ByteLevel => {
            let mut out = Vec::with_capacity(s.len());
            for ch in s.chars() {
                match inv.get(&ch) {
                    Some(&b) => out.push(b),
                    None => {
                        let mut buf = [0u8; 4];
                        out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
                    }
                }
            }
            out
        }
        Spelling::SentencePiece(_) => {
            if s.len() == 6
                && s.starts_with("<0x")
                && s.ends_with('>')
                && let Ok(b) = u8::from_str_radix(&s[3..5], 16)
            {
                return vec![b];
            }
            s.replace('\u{2581}', " ").into_bytes()
        }
    }
}

impl Tokenizer {
    /// Build from a model's files: GGUF metadata, or tokenizer.json (+ tokenizer_config.json).
    pub fn from_files(files: &ModelFiles) -> Result<Tokenizer> {
        match &files.source {
            Source::Gguf(g) => gguf_vocab::from_gguf(g),
            Source::Hf(h) => {
                let path = h.tokenizer_json.as_ref().ok_or_else(|| {
                    Error::Invalid(format!("{} has no tokenizer.json", h.dir.display()))
                })?;
                let inner = tokenizers::Tokenizer::from_file(path)
                    .map_err(|e| Error::Format(format!("{}: {e}", path.display())))?;
                let mut t = Tokenizer::from_hf(inner, h.tokenizer_config.as_ref(), &h.config)?;
                t.chat_template = h.chat_template.clone();
                Ok(t)
            }
        }
    }

    /// Wrap an HF tokenizer, taking the special-token rules from tokenizer_config.json.
    pub fn from_hf(
        inner: tokenizers::Tokenizer,
        tc: Option<&serde_json::Value>,
        config: &serde_json::Value,
    ) -> Result<Tokenizer> {
        let tok_str = |k: &str| -> Option<String> {
            let v = tc?.get(k)?;
            v.as_str().map(str::to_string).or_else(|| {
                v.get("content")
                    .and_then(|c| c.as_str())
                    .map(str::to_string)
            })
        };
        let id_of = |s: Option<String>| s.and_then(|s| inner.token_to_id(&s));
        let cfg_id = |k: &str| config.get(k).and_then(|v| v.as_u64()).map(|v| v as u32);
        let bos = id_of(tok_str("bos_token")).or_else(|| cfg_id("bos_token_id"));
        let eos = id_of(tok_str("eos_token")).or_else(|| cfg_id("eos_token_id"));
        let flag = |k: &str| tc.and_then(|t| t.get(k)).and_then(|v| v.as_bool());
        // The post-processor in tokenizer.json (if any) adds BOS itself; only the flag-driven
        // case is handled here.
        let has_post = inner.get_post_processor().is_some();
        let add_bos = !has_post && flag("add_bos_token").unwrap_or(false);
        let add_eos = !has_post && flag("add_eos_token").unwrap_or(false);
        let chat_template = tc
            .and_then(|t| t.get("chat_template"))
            .and_then(|v| v.as_str())
            .map(str::to_string);
        let decoder_json = serde_json::to_value(inner.get_decoder())
            .unwrap_or_default()
            .to_string();
        let spelling = if decoder_json.contains("ByteLevel") {
            Spelling::ByteLevel
        } else {
            Spelling::SentencePiece(false)
        };
        let n = inner.get_vocab_size(true);
        let mut pieces = vec![String::new(); n];
        let mut special = HashSet::new();
        for (s, id) in inner.get_vocab(true) {
            if (id as usize) < n {
                pieces[id as usize] = s;
            }
        }
        for (id, at) in inner.get_added_tokens_decoder() {
            if at.special {
                special.insert(id);
            }
        }
        let mut eog: HashSet<u32> = eos.into_iter().collect();
        if let Some(ids) = config.get("eos_token_id").and_then(|v| v.as_array()) {
            eog.extend(ids.iter().filter_map(|v| v.as_u64()).map(|v| v as u32));
        }
        let rules = Rules {
            bos,
            eos,
            add_bos,
            add_eos,
            eog,
            chat_template,
        };
        Ok(Tokenizer::assemble(
            inner, pieces, &special, spelling, rules,
        ))
    }

    fn assemble(
        inner: tokenizers::Tokenizer,
        pieces: Vec<String>,
        special: &HashSet<u32>,
        spelling: Spelling,
        rules: Rules,
    ) -> Tokenizer {
        let Rules {
            bos,
            eos,
            add_bos,
            add_eos,
            mut eog,
            chat_template,
        } = rules;
        let table = bytes_to_unicode();
        let inv: std::collections::HashMap<char, u8> = table
            .iter()
            .enumerate()
            .map(|(b, &c)| (c, b as u8))
            .collect();
        let token_bytes: Vec<Vec<u8>> = pieces
            .iter()
            .enumerate()
            .map(|(i, s)| {
                if special.contains(&(i as u32)) {
                    Vec::new()
                } else {
                    spelled_bytes(s, spelling, &inv)
                }
            })
            .collect();
        // Chat-turn terminators are end-of-generation tokens too.
        for name in [
            "<|im_end|>",
            "<|eot_id|>",
            "<|end|>",
            "<|endoftext|>",
            "<end_of_turn>",
            "<|end_of_text|>",
            "</s>",
        ] {
            if let Some(id) = inner.token_to_id(name)
                && (special.contains(&id) || Some(id) == eos)
            {
                eog.insert(id);
            }
        }
        let space_prefix = matches!(spelling, Spelling::SentencePiece(true));
        let specials = special
            .iter()
            .filter_map(|&i| pieces.get(i as usize).cloned())
            .filter(|s| !s.is_empty())
            .collect();
        Tokenizer {
            inner,
            space_prefix,
            specials,
            token_bytes,
            bos,
            eos,
            add_bos,
            add_eos,
            eog,
            chat_template,
        }
    }

    /// Vocabulary size (including added tokens).
    pub fn vocab_size(&self) -> usize {
        self.token_bytes.len()
    }

    /// Encode text. Special-token strings in the text (`<|im_start|>`) become their tokens.
    /// With `add_special`, BOS/EOS are added as the model's rules say.
    pub fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>> {
        let prefixed;
        let starts_special = self.specials.iter().any(|s| text.starts_with(s.as_str()));
        let text = if self.space_prefix && !text.is_empty() && !starts_special {
            prefixed = format!(" {text}");
            prefixed.as_str()
        } else {
            text
        };
        let enc = self
            .inner
            .encode(text, add_special)
            .map_err(|e| Error::Invalid(format!("cannot tokenize: {e}")))?;
        let mut ids = enc.get_ids().to_vec();
        if add_special {
            if self.add_bos
                && let Some(b) = self.bos
                && ids.first() != Some(&b)
            {
                ids.insert(0, b);
            }
            if self.add_eos
                && let Some(e) = self.eos
            {
                ids.push(e);
            }
        }
        Ok(ids)
    }

    /// The raw bytes token `id` contributes to the output (empty for control tokens).
    pub fn token_bytes(&self, id: u32) -> &[u8] {
        self.token_bytes
            .get(id as usize)
            .map_or(&[], |v| v.as_slice())
    }

    /// The token's string as the vocabulary spells it.
    pub fn token_str(&self, id: u32) -> String {
        self.inner.id_to_token(id).unwrap_or_default()
    }

    /// The id of a token string.
    pub fn token_id(&self, s: &str) -> Option<u32> {
        self.inner.token_to_id(s)
    }

    /// Decode ids to text (control tokens skipped).
    pub fn decode(&self, ids: &[u32]) -> String {
        let mut d = StreamDecoder::default();
        let mut s = String::new();
        for &id in ids {
            s.push_str(&d.push(self.token_bytes(id)));
        }
        s.push_str(&d.flush());
        s
    }

    /// Whether `id` ends generation.
    pub fn is_eog(&self, id: u32) -> bool {
        self.eog.contains(&id)
    }

    /// The model's chat template (ChatML when it has none), compiled.
    pub fn template(&self) -> Result<ChatTemplate> {
        self.template_with(self.chat_template.as_deref().unwrap_or(CHATML))
    }

    /// `source` compiled as a chat template with this vocabulary's BOS/EOS strings.
    pub fn template_with(&self, source: &str) -> Result<ChatTemplate> {
        let s = |id: Option<u32>| id.map(|i| self.token_str(i)).unwrap_or_default();
        ChatTemplate::new(source, &s(self.bos), &s(self.eos))
    }
}

/// Turns a stream of token bytes into text without ever splitting a UTF-8 character:
/// incomplete sequences are held until the bytes that finish them arrive.
#[derive(Default)]
pub struct StreamDecoder {
    pending: Vec<u8>,
}

impl StreamDecoder {
    /// Add a token's bytes; returns the text that is now complete.
    pub fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let mut out = String::new();
        loop {
            match std::str::from_utf8(&self.pending) {
                Ok(s) => {
                    out.push_str(s);
                    self.pending.clear();
                    return out;
                }
                Err(e) => {
                    let good = e.valid_up_to();
                    out.push_str(std::str::from_utf8(&self.pending[..good]).unwrap());
                    match e.error_len() {
                        // invalid bytes: emit a replacement character and go on
                        Some(bad) => {
                            out.push('\u{FFFD}');
                            self.pending.drain(..good + bad);
                        }
                        // incomplete sequence at the end: wait for more
                        None => {
                            self.pending.drain(..good);
                            return out;
                        }
                    }
                }
            }
        }
    }

    /// Whatever is left at the end (incomplete bytes become U+FFFD).
    pub fn flush(&mut self) -> String {
        let s = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn stream_decoder_never_splits_utf8() {
        let s = "héllo 🙂 世界";
        let mut d = StreamDecoder::default();
        let mut out = String::new();
        for b in s.as_bytes() {
            let piece = d.push(&[*b]);
            out.push_str(&piece);
        }
        out.push_str(&d.flush());
        assert_eq!(out, s);
    }
    #[test]
    fn byte_table_is_a_bijection() {
        let t = bytes_to_unicode();
        let set: HashSet<char> = t.iter().copied().collect();
        assert_eq!(set.len(), 256);
        assert_eq!(t[b'A' as usize], 'A');
        assert_eq!(t[b' ' as usize], '\u{120}');
    }
}
