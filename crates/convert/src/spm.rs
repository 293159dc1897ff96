//! SentencePiece tokenizers (`tokenizer.model`, as Llama 2, Mistral 7B and Mixtral ship
//! theirs) as llama.cpp's converter writes them (`_create_vocab_sentencepiece` in its
//! conversion/base.py): the pieces, scores and types of the model, then the added tokens of
//! `added_tokens.json` and of `tokenizer_config.json`'s `added_tokens_decoder`, in a vocabulary
//! of the config's `vocab_size` whose missing ids are `[PADi]`.
//!
//! The model file is a `sentencepiece.ModelProto` (protobuf): field 1 is each piece, a message
//! of `piece` (1, string), `score` (2, float) and `type` (3, enum: 1 normal, 2 unknown,
//! 3 control, 4 user-defined, 5 unused, 6 byte; normal when absent), as
//! sentencepiece_model.proto defines them. The other fields are skipped.
use hearth_core::{Error, Result};
use hearth_formats::Value;
use serde_json::Value as J;

/// One piece of the model.
#[derive(Debug, PartialEq)]
pub(crate) struct Piece {
    pub text: String,
    pub score: f32,
    pub kind: u64,
}

fn bad(m: &str) -> Error {
    Error::Format(format!("tokenizer.model: {m}"))
}

fn varint(b: &[u8], i: &mut usize) -> Result<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *b.get(*i).ok_or_else(|| bad("truncated varint"))?;
        *i += 1;
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err(bad("varint longer than 64 bits"))
}

/// One protobuf field: its number, wire type, value (a varint or fixed field; a length) and
/// bytes (a fixed or length-delimited field's).
type Field<'a> = (u64, u8, u64, &'a [u8]);

/// The fields of one protobuf message.
fn fields(b: &[u8]) -> Result<Vec<Field<'_>>> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let key = varint(b, &mut i)?;
        let (field, wire) = (key >> 3, (key & 7) as u8);
        match wire {
            0 => out.push((field, wire, varint(b, &mut i)?, &b[0..0])),
            1 | 5 => {
                let n = if wire == 1 { 8 } else { 4 };
                let s = b
                    .get(i..i + n)
                    .ok_or_else(|| bad("truncated fixed field"))?;
                let mut v = [0u8; 8];
                v[..n].copy_from_slice(s);
                out.push((field, wire, u64::from_le_bytes(v), s));
                i += n;
            }
            2 => {
                let n = usize::try_from(varint(b, &mut i)?).map_err(|_| bad("huge length"))?;
                let end = i.checked_add(n).ok_or_else(|| bad("huge length"))?;
                let s = b.get(i..end).ok_or_else(|| bad("truncated field"))?;
                out.push((field, wire, n as u64, s));
                i = end;
            }
            w => return Err(bad(&format!("protobuf wire type {w}"))),
        }
    }
    Ok(out)
}

/// The pieces of a SentencePiece model file.
pub(crate) fn pieces(model: &[u8]) -> Result<Vec<Piece>> {
    let mut out = Vec::new();
    for (field, wire, _, body) in fields(model)? {
        if field != 1 || wire != 2 {
            continue;
        }
        let mut p = Piece {
            text: String::new(),
            score: 0.0,
            kind: 1,
        };
        for (f, w, v, s) in fields(body)? {
            match (f, w) {
                (1, 2) => {
                    p.text = std::str::from_utf8(s)
                        .map_err(|_| bad("a piece is not UTF-8"))?
                        .to_string()
                }
                (2, 5) => p.score = f32::from_bits(v as u32),
                (3, 0) => p.kind = v,
                _ => {}
            }
        }
        out.push(p);
        if out.len() > 10_000_000 {
            return Err(bad("more than 10 million pieces"));
        }
    }
    if out.is_empty() {
        return Err(bad("no pieces: not a SentencePiece model"));
    }
    Ok(out)
}

/// The converter's token type of a piece: unknown, control, unused and byte keep theirs,
/// everything else (user-defined pieces too) is normal.
fn token_type(kind: u64) -> i32 {
    match kind {
        2 | 3 | 5 | 6 => kind as i32,
        _ => 1,
    }
}

/// `tokenizer.ggml.{model,pre,tokens,scores,token_type}` of a SentencePiece model, with the
/// added tokens of `added_tokens.json` (`added`) and of the tokenizer config (`tc`), in a
/// vocabulary of `vocab_size` ids (the config's; the model's size when it has none).
pub(crate) fn vocab_kvs(
    model: &[u8],
    vocab_size: Option<u64>,
    added: Option<&J>,
    tc: Option<&J>,
    looks_special: &dyn Fn(&str) -> bool,
) -> Result<Vec<(String, Value)>> {
    let ps = pieces(model)?;
    let n = vocab_size.unwrap_or(ps.len() as u64);
    if n > 10_000_000 {
        return Err(Error::Format(format!("vocabulary of {n} tokens")));
    }
    let n = n as usize;
    let mut tokens: Vec<String> = (0..n).map(|i| format!("[PAD{i}]")).collect();
    let mut scores = vec![-10000.0f32; n];
    let mut types = vec![5i32; n];
    for (i, p) in ps.iter().enumerate().take(n) {
        tokens[i] = p.text.clone();
        scores[i] = p.score;
        types[i] = token_type(p.kind);
    }
    for (k, v) in added.and_then(J::as_object).into_iter().flatten() {
        if let Some(id) = v.as_u64().map(|i| i as usize).filter(|&i| i < n) {
            tokens[id] = k.clone();
            scores[id] = -1000.0;
            types[id] = 4;
        }
    }
    let decoder = tc
        .and_then(|t| t.get("added_tokens_decoder"))
        .and_then(J::as_object);
    for (id, data) in decoder.into_iter().flatten() {
        let (Ok(id), Some(content)) =
            (id.parse::<usize>(), data.get("content").and_then(J::as_str))
        else {
            continue;
        };
        if id >= n {
            continue;
        }
        let special = data.get("special").and_then(J::as_bool).unwrap_or(false);
        if special || looks_special(content) {
            types[id] = 3;
            tokens[id] = content.to_string();
        } else {
            // user-defined spaces are pre-normalized, as the converter does
            types[id] = 4;
            tokens[id] = content.replace('\u{2581}', " ");
        }
        scores[id] = -1000.0;
    }
    Ok(vec![
        ("tokenizer.ggml.model".into(), Value::Str("llama".into())),
        ("tokenizer.ggml.pre".into(), Value::Str("default".into())),
        (
            "tokenizer.ggml.tokens".into(),
            Value::Array(tokens.into_iter().map(Value::Str).collect()),
        ),
        (
            "tokenizer.ggml.scores".into(),
            Value::Array(scores.into_iter().map(Value::F32).collect()),
        ),
        (
            "tokenizer.ggml.token_type".into(),
            Value::Array(types.into_iter().map(Value::I32).collect()),
        ),
    ])
}

/// Which special tokens the tokenizer.json's post-processor adds, as the converter's
/// `SpecialVocab` reads it: none for `ByteLevel`, BOS, EOS and SEP for `RobertaProcessing`,
/// and for a `TemplateProcessing` (its crude parse of the simple templates):
/// `bos` when the single template starts with a special token (it becomes the BOS or CLS
/// where the config names none; only a config naming both, neither of them it, makes it
/// false), `eos` when it ends with one (the converter then makes that token the EOS; hearth
/// keeps the config's EOS id, which differs only for templates that end in another token),
/// and `sep` from the pair template's middle.
pub(crate) fn post_processor_adds(tj: &J, tc: Option<&J>) -> Vec<(&'static str, bool)> {
    let content = |k: &str| -> Option<String> {
        match tc?.get(k)? {
            J::String(s) => Some(s.clone()),
            o => o.get("content")?.as_str().map(str::to_string),
        }
    };
    let (bos, cls, eos, sep) = (
        content("bos_token"),
        content("cls_token"),
        content("eos_token"),
        content("sep_token"),
    );
    let special = |e: &J| -> Option<String> {
        e.get("SpecialToken")?
            .get("id")?
            .as_str()
            .map(str::to_string)
    };
    let mut out = Vec::new();
    let Some(pp) = tj.get("post_processor").filter(|p| !p.is_null()) else {
        return out;
    };
    let procs: Vec<&J> = match pp.get("processors").and_then(J::as_array) {
        Some(v) => v.iter().collect(),
        None => vec![pp],
    };
    for p in procs {
        match p.get("type").and_then(J::as_str) {
            Some("ByteLevel") => {
                for typ in ["bos", "eos"] {
                    if !out.iter().any(|(t, _)| *t == typ) {
                        out.push((typ, false));
                    }
                }
                continue;
            }
            Some("RobertaProcessing") => {
                out.retain(|(t, _)| !matches!(*t, "bos" | "eos" | "sep"));
                out.extend([("bos", true), ("eos", true), ("sep", true)]);
                continue;
            }
            Some("TemplateProcessing") => {}
            _ => continue,
        }
        let empty = Vec::new();
        let single = p.get("single").and_then(J::as_array).unwrap_or(&empty);
        let pair = p.get("pair").and_then(J::as_array).unwrap_or(&empty);
        let (mut first, mut last) = (None, None);
        if single.len() > 1 {
            first = special(&single[0]);
            if let Some(f) = &first {
                let named = Some(f) == bos.as_ref() || Some(f) == cls.as_ref();
                out.push((
                    "bos",
                    named || tc.is_none() || bos.is_none() || cls.is_none(),
                ));
            }
            last = special(&single[single.len() - 1]);
            if last.is_some() {
                out.push(("eos", true));
            }
        }
        if pair.is_empty() {
            continue;
        }
        let start = usize::from(first.is_some() && special(&pair[0]) == first);
        let stop = if last.is_some() && special(&pair[pair.len() - 1]) == last {
            pair.len() - 1
        } else {
            pair.len()
        };
        let mid = pair.get(start..stop).unwrap_or(&[]);
        let seq = |e: &J| e.get("Sequence")?.get("id")?.as_str().map(str::to_string);
        if mid.len() > 2
            && seq(&mid[0]).as_deref() == Some("A")
            && seq(&mid[mid.len() - 1]).as_deref() == Some("B")
        {
            let inner = &mid[1..mid.len() - 1];
            let is_sep = |t: &Option<String>| t.is_some() && (*t == sep || *t == eos);
            let mut add_sep = false;
            if let Some(e) = inner.first().map(special)
                && is_sep(&e)
                && last.is_none()
            {
                add_sep = true;
            }
            if inner.len() == 2 && is_sep(&special(&inner[1])) {
                add_sep = true;
            }
            out.push(("sep", add_sep));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn piece(text: &str, score: f32, kind: Option<u64>) -> Vec<u8> {
        let mut m = vec![0x0a, text.len() as u8];
        m.extend_from_slice(text.as_bytes());
        m.push(0x15);
        m.extend_from_slice(&score.to_le_bytes());
        if let Some(k) = kind {
            m.extend_from_slice(&[0x18, k as u8]);
        }
        let mut out = vec![0x0a, m.len() as u8];
        out.extend(m);
        out
    }

    #[test]
    fn pieces_are_read_and_bad_files_refused() {
        let mut model = piece("<unk>", 0.0, Some(2));
        model.extend(piece("\u{2581}the", -1.5, None));
        // a trainer_spec field (2) to skip
        model.extend([0x12, 0x02, 0x08, 0x01]);
        let ps = pieces(&model).unwrap();
        assert_eq!(ps.len(), 2);
        assert_eq!(
            (ps[1].text.as_str(), ps[1].score, ps[1].kind),
            ("\u{2581}the", -1.5, 1)
        );
        assert_eq!(ps[0].kind, 2);
        assert!(pieces(&model[..model.len() - 3]).is_err());
        assert!(pieces(b"").is_err());
        assert!(
            pieces(&[
                0x0a, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff
            ])
            .is_err()
        );
    }
}
