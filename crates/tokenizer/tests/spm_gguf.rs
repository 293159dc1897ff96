//! A SentencePiece-style (llama) GGUF vocabulary tokenizes exactly as sentencepiece does
//! (fixtures from scripts/gen_spm_vocab.py).
use std::path::PathBuf;

#[test]
fn spm_gguf_vocabulary_matches_sentencepiece() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/spm");
    let files = hearth_formats::ModelFiles::open(&dir.join("vocab.gguf")).unwrap();
    let tok = hearth_tokenizer::Tokenizer::from_files(&files).unwrap();
    let goldens: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("goldens.json")).unwrap()).unwrap();
    let ids = |v: &serde_json::Value| {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect::<Vec<_>>()
    };
    for g in goldens.as_array().unwrap() {
        let text = g["text"].as_str().unwrap();
        assert_eq!(tok.encode(text, false).unwrap(), ids(&g["ids"]), "{text:?}");
        assert_eq!(
            tok.encode(text, true).unwrap(),
            ids(&g["ids_special"]),
            "{text:?} with BOS"
        );
        // Streaming bytes: sentencepiece's decode drops the leading dummy-prefix space.
        let s = tok.decode(&ids(&g["ids"]));
        assert_eq!(
            s.strip_prefix(' ').unwrap_or(&s),
            g["decoded"].as_str().unwrap(),
            "{text:?} decoded"
        );
    }
}
