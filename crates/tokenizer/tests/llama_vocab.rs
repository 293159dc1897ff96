//! llama.cpp's tokenizer test vectors: every `models/ggml-vocab-*.gguf` that has `.inp` and
//! `.out` files next to it is loaded the way `hearth tokenize` loads a GGUF, each case is
//! encoded as llama.cpp's `tests/test-tokenizer-0.cpp` encodes it (no BOS/EOS), and the ids
//! must equal the expected ones. The `.out` ids were written by the models' own Hugging Face
//! tokenizers (llama.cpp's `convert_hf_to_gguf_update.py`).
//!
//! The vocabularies ship with llama.cpp's source: `bash scripts/build_llamacpp.sh --src-only`
//! unpacks it into `.llama.cpp/src` (the directory used here), or point `HEARTH_LLAMA_VOCABS`
//! at a `models/` directory. `HEARTH_SKIP_LLAMA_VOCABS=1` skips these tests when neither is
//! there. Per-vocabulary pass counts: `cargo test -p hearth-tokenizer --test llama_vocab --
//! --nocapture`.
use hearth_tokenizer::Tokenizer;
use std::path::{Path, PathBuf};

/// The separator between cases in an `.inp` file (as test-tokenizer-0.cpp splits them).
const SEP: &str = "\n__ggml_vocab_test__\n";

/// The directory holding the `ggml-vocab-*.gguf` files, or `None` when the tests are skipped.
fn vocab_dir() -> Option<PathBuf> {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let candidates: Vec<PathBuf> = match std::env::var_os("HEARTH_LLAMA_VOCABS") {
        Some(d) => vec![PathBuf::from(d)],
        None => vec![repo.join(".llama.cpp/src/models")],
    };
    if let Some(d) = candidates.iter().find(|d| d.is_dir()) {
        return Some(d.clone());
    }
    if std::env::var("HEARTH_SKIP_LLAMA_VOCABS").as_deref() == Ok("1") {
        eprintln!("HEARTH_SKIP_LLAMA_VOCABS=1: llama.cpp's vocabulary tests skipped");
        return None;
    }
    panic!(
        "llama.cpp's test vocabularies are not at {}: run `bash scripts/build_llamacpp.sh \
         --src-only` in the repository (it unpacks llama.cpp's source, models/ggml-vocab-*.gguf \
         included, into .llama.cpp/src), or set HEARTH_LLAMA_VOCABS to a directory holding \
         them, or set HEARTH_SKIP_LLAMA_VOCABS=1 to skip these tests",
        candidates
            .iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(" or ")
    );
}

fn load(path: &Path) -> Result<Tokenizer, String> {
    let files = hearth_formats::ModelFiles::open(path).map_err(|e| format!("{e}"))?;
    Tokenizer::from_files(&files).map_err(|e| format!("{e}"))
}

/// Whether decoding a case's expected ids must give back its text: `Some(prefix)` for
/// byte-level BPE and SentencePiece vocabularies (`prefix`: SentencePiece's dummy-prefix
/// space comes first), `None` for WordPiece, which lowercases and drops accents and spaces.
fn lossless(path: &Path) -> Option<bool> {
    let files = hearth_formats::ModelFiles::open(path).ok()?;
    let hearth_formats::Source::Gguf(g) = &files.source else {
        return None;
    };
    match g.get("tokenizer.ggml.model")?.as_str()? {
        "bert" => None,
        "llama" => Some(
            g.get("tokenizer.ggml.add_space_prefix")
                .and_then(|v| v.as_bool())
                .unwrap_or(true),
        ),
        _ => Some(false),
    }
}

/// The cases of `<vocab>.inp` with the expected ids from `<vocab>.out`.
fn read_cases(gguf: &Path) -> Vec<(String, Vec<u32>)> {
    let name = gguf.display();
    let inp = std::fs::read_to_string(format!("{name}.inp"))
        .unwrap_or_else(|e| panic!("{name}.inp: {e}"));
    let out = std::fs::read_to_string(format!("{name}.out"))
        .unwrap_or_else(|e| panic!("{name}.out: {e}"));
    let mut texts = Vec::new();
    let mut rest = inp.as_str();
    while !rest.is_empty() {
        match rest.find(SEP) {
            Some(i) => {
                texts.push(rest[..i].to_string());
                rest = &rest[i + SEP.len()..];
            }
            None => {
                texts.push(rest.to_string());
                rest = "";
            }
        }
    }
    let ids: Vec<Vec<u32>> = out
        .lines()
        .map(|l| {
            l.split_whitespace()
                .map(|t| {
                    t.parse()
                        .unwrap_or_else(|e| panic!("{name}.out: {t:?}: {e}"))
                })
                .collect()
        })
        .collect();
    assert_eq!(
        texts.len(),
        ids.len(),
        "{name}: .inp and .out hold different numbers of cases"
    );
    assert!(!texts.is_empty(), "{name}: no cases");
    texts.into_iter().zip(ids).collect()
}

fn vocabularies(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let n = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            n.starts_with("ggml-vocab-")
                && n.ends_with(".gguf")
                && p.with_extension("gguf.inp").is_file()
                && p.with_extension("gguf.out").is_file()
        })
        .collect();
    v.sort();
    v
}

/// The pieces of `ids` as llama.cpp's detokenizer writes them with special tokens rendered:
/// control tokens as their text, the rest as their bytes.
fn render(tok: &Tokenizer, ids: &[u32]) -> Vec<u8> {
    let mut out = Vec::new();
    for &id in ids {
        let b = tok.token_bytes(id);
        if b.is_empty() {
            out.extend_from_slice(tok.token_str(id).as_bytes());
        } else {
            out.extend_from_slice(b);
        }
    }
    out
}

#[test]
fn llama_cpp_vocab_test_vectors() {
    let Some(dir) = vocab_dir() else { return };
    let vocabs = vocabularies(&dir);
    assert!(
        !vocabs.is_empty(),
        "{} holds no ggml-vocab-*.gguf with .inp/.out test vectors",
        dir.display()
    );
    let mut failures = Vec::new();
    let mut summary = Vec::new();
    let (mut total, mut passed) = (0, 0);
    for path in &vocabs {
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let name = name
            .trim_start_matches("ggml-vocab-")
            .trim_end_matches(".gguf")
            .to_string();
        let cases = read_cases(path);
        total += cases.len();
        let tok = match load(path) {
            Ok(t) => t,
            Err(e) => {
                failures.push(format!("{name}: cannot load: {e}"));
                summary.push(format!("{name:>16}: 0/{} passed", cases.len()));
                continue;
            }
        };
        let lossless = lossless(path);
        let mut ok = 0;
        for (text, want) in &cases {
            // hearth's decoder turns the expected ids back into the text
            if let Some(prefix) = lossless {
                let d = if prefix && !text.is_empty() {
                    format!(" {text}")
                } else {
                    text.clone()
                };
                let got = tok.decode(want);
                if got != d {
                    failures.push(format!("{name}: {want:?} decode to {got:?}, not {d:?}"));
                    continue;
                }
            }
            match tok.encode(text, false) {
                Ok(got) if &got == want => ok += 1,
                Ok(got) => {
                    failures.push(format!("{name}: {text:?}\n  want {want:?}\n  got  {got:?}"))
                }
                Err(e) => failures.push(format!("{name}: {text:?}: {e}")),
            }
        }
        summary.push(format!("{name:>16}: {ok}/{} passed", cases.len()));
        passed += ok;
    }
    for s in &summary {
        println!("{s}");
    }
    println!("{:>16}: {passed}/{total} passed", "all");
    assert!(
        failures.is_empty(),
        "{} of {total} cases differ from llama.cpp's test vectors:\n{}\n{}",
        failures.len(),
        summary.join("\n"),
        failures.join("\n")
    );
}

/// llama.cpp's `test-tokenizer-1-spm` (run on llama-spm) and `test-tokenizer-1-bpe` (written
/// for the byte-level vocabularies), here on every vocabulary with test vectors except the
/// lossy WordPiece ones: every token's text, and every Unicode code point, tokenizes to ids
/// that detokenize back to the same text.
#[test]
fn detokenize_round_trips() {
    let Some(dir) = vocab_dir() else { return };
    let vocabs = vocabularies(&dir);
    assert!(
        vocabs
            .iter()
            .any(|p| p.ends_with("ggml-vocab-llama-spm.gguf")),
        "{} has no ggml-vocab-llama-spm.gguf",
        dir.display()
    );
    let mut bad = Vec::new();
    for path in &vocabs {
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let Some(prefix) = lossless(path) else {
            continue;
        };
        let tok = load(path).unwrap_or_else(|e| panic!("{name}: {e}"));
        // llama.cpp's detokenizer drops the dummy-prefix space the tokenizer added
        let detok = |ids: &[u32]| -> Vec<u8> {
            let b = render(&tok, ids);
            match b.strip_prefix(b" ") {
                Some(rest) if prefix => rest.to_vec(),
                _ => b,
            }
        };
        // bytes the vocabulary has no token for (falcon lacks some control characters): text
        // holding them cannot come back, in llama.cpp either
        let spell = hearth_tokenizer::bytes_to_unicode();
        let missing: Vec<bool> = (0..256)
            .map(|b| {
                tok.token_id(&spell[b].to_string()).is_none()
                    && tok.token_id(&format!("<0x{b:02X}>")).is_none()
            })
            .collect();
        let before = bad.len();
        let mut skipped = 0;
        for id in 0..tok.vocab_size() as u32 {
            // tokens that are not whole UTF-8 text (single bytes) are skipped, as llama.cpp
            // skips them
            let Ok(s) = String::from_utf8(detok(&[id])) else {
                continue;
            };
            let ids = tok.encode(&s, false).unwrap();
            let back = detok(&ids);
            if back != s.as_bytes() {
                let back = String::from_utf8_lossy(&back);
                bad.push(format!("{name}: token {id} {s:?} -> {ids:?} -> {back:?}"));
            }
        }
        let mut n = 0;
        for cp in (0..0x110000u32).filter(|c| !(0xD800..=0xDFFF).contains(c)) {
            // llama.cpp skips the unassigned planes 4..=14, and U+2581, which SentencePiece
            // vocabularies decode as a space
            if (0x40000..=0xE0000).contains(&cp) || cp == 0x2581 {
                continue;
            }
            let s = char::from_u32(cp).unwrap().to_string();
            let ids = tok.encode(&s, false).unwrap();
            let back = detok(&ids);
            if back != s.as_bytes() {
                if ids.is_empty() && s.bytes().any(|b| missing[b as usize]) {
                    skipped += 1;
                    continue;
                }
                let back = String::from_utf8_lossy(&back);
                bad.push(format!("{name}: U+{cp:04X} -> {ids:?} -> {back:?}"));
            }
            n += 1;
        }
        println!(
            "{name}: {} tokens and {n} code points, {} do not round-trip ({skipped} code \
             points skipped: the vocabulary has no token for a byte of theirs)",
            tok.vocab_size(),
            bad.len() - before
        );
    }
    assert!(
        bad.is_empty(),
        "{} round trips fail:\n{}",
        bad.len(),
        bad.iter().take(50).cloned().collect::<Vec<_>>().join("\n")
    );
}
