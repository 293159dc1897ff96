//! The real model, SmolLM2-135M-Instruct Q4_1, against HF transformers' own reading of the
//! same GGUF (scripts/gen_smollm2_reference.py), and tokenizer / chat-template goldens.
//! The model is fetched by `hearth pull smollm2` (scripts/test.sh does that first).
use hearth_engine::Engine;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;

fn hearth() -> Command {
    Command::new(env!("CARGO_BIN_EXE_hearth"))
}

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn smollm2() -> PathBuf {
    let out = hearth().args(["pull", "smollm2"]).output().unwrap();
    assert!(
        out.status.success(),
        "hearth pull smollm2 failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

fn json(p: PathBuf) -> serde_json::Value {
    serde_json::from_str(
        &std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display())),
    )
    .unwrap()
}

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

#[test]
fn smollm2_top1_agrees_with_transformers_on_real_text() {
    let reference = json(fixtures().join("smollm2/reference.json"));
    let tokens = ids(&reference["tokens"]);
    assert!(
        tokens.len() >= 200,
        "the reference must cover at least 200 positions"
    );
    // HEARTH_TEST_BACKEND=vulkan: on the first Vulkan device (CI: lavapipe)
    let be: Arc<dyn hearth_core::Backend> = match std::env::var("HEARTH_TEST_BACKEND").as_deref() {
        Ok("vulkan") => Arc::new(hearth_vulkan::Vulkan::new(0).unwrap()),
        _ => Arc::new(hearth_cpu::Cpu::new(0).unwrap()),
    };
    let eng = Engine::load(&smollm2(), be).unwrap();
    // hearth's tokenizer gives the same ids transformers used.
    let text = std::fs::read_to_string(fixtures().join("smollm2/text.txt")).unwrap();
    assert_eq!(eng.tokenizer.encode(&text, false).unwrap(), tokens);
    let mut st = eng.model.new_state(tokens.len()).unwrap();
    let mut logits = Vec::new();
    eng.model
        .forward(&tokens, &mut st, true, &mut logits)
        .unwrap();
    let nv = eng.model.cfg.n_vocab;
    let positions = reference["positions"].as_array().unwrap();
    let mut agree = 0;
    let mut max_lse = 0f64;
    for (p, row) in positions.iter().zip(logits.chunks_exact(nv)) {
        let want = p["argmax"].as_u64().unwrap() as u32;
        if hearth_engine::argmax(row) == want {
            agree += 1;
        }
        let m = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
        let lse = m + row.iter().map(|&l| (l as f64 - m).exp()).sum::<f64>().ln();
        max_lse = max_lse.max((lse - p["logsumexp"].as_f64().unwrap()).abs());
    }
    let rate = agree as f64 / positions.len() as f64;
    eprintln!(
        "top-1 agreement {agree}/{} = {:.2}%, max |logsumexp diff| {max_lse:.2e}",
        positions.len(),
        rate * 100.0
    );
    assert!(rate >= 0.98, "top-1 agreement {rate}");
}

#[test]
fn smollm2_tokenizer_matches_hf_goldens() {
    let g = json(fixtures().join("smollm2/tokenizer_goldens.json"));
    let files = hearth_formats::ModelFiles::open(&smollm2()).unwrap();
    let tok = hearth_tokenizer::Tokenizer::from_files(&files).unwrap();
    for e in g.as_array().unwrap() {
        let text = e["text"].as_str().unwrap();
        assert_eq!(tok.encode(text, false).unwrap(), ids(&e["ids"]), "{text:?}");
        assert_eq!(
            tok.encode(text, true).unwrap(),
            ids(&e["ids_special"]),
            "{text:?} with special tokens"
        );
        // decoding gives the text back (the vocabulary is byte-level, so nothing is lost)
        assert_eq!(
            tok.decode(&ids(&e["ids"])),
            text.replace("<|im_start|>", "").replace("<|im_end|>", ""),
            "{text:?}"
        );
    }
}

#[test]
fn tiny_models_tokenizer_json_and_chat_template_match_hf() {
    for arch in hearth_models::ARCHS {
        let dir = fixtures().join("tiny").join(arch.name);
        let exp = json(dir.join("expected.json"));
        // The HF tokenizer.json, and the vocabulary llama.cpp's converter wrote into the GGUF,
        // must tokenize the same way (special-token handling is checked on the HF one).
        let gguf = dir.join("model.gguf");
        let mut sources = Vec::new();
        if gguf.exists() {
            sources.push((gguf, "GGUF"));
        }
        sources.push((dir.clone(), "HF"));
        let mut tok = None;
        for (path, label) in sources {
            let files = hearth_formats::ModelFiles::open(&path).unwrap();
            let t = hearth_tokenizer::Tokenizer::from_files(&files).unwrap();
            for e in exp["tokenizer_goldens"].as_array().unwrap() {
                let text = e["text"].as_str().unwrap();
                let what = format!("{} ({label}): {text:?}", arch.name);
                assert_eq!(t.encode(text, false).unwrap(), ids(&e["ids"]), "{what}");
                if label == "HF" {
                    let got = t.encode(text, true).unwrap();
                    assert_eq!(got, ids(&e["ids_special"]), "{what} (special)");
                }
            }
            tok = Some(t);
        }
        let tok = tok.unwrap();
        let t = hearth_tokenizer::ChatTemplate::new(tok.chat_template.as_deref().unwrap(), "", "")
            .unwrap();
        let msgs = [
            hearth_tokenizer::ChatMessage::new("system", "Be brief."),
            hearth_tokenizer::ChatMessage::new("user", "Hi!"),
        ];
        assert_eq!(
            t.render(&msgs, true).unwrap(),
            exp["chat_rendered"].as_str().unwrap(),
            "{}",
            arch.name
        );
    }
}

#[test]
fn smollm2_chat_template_renders_like_hf() {
    // The template from the GGUF, rendered as transformers renders it (chat_goldens.json).
    let files = hearth_formats::ModelFiles::open(&smollm2()).unwrap();
    let tok = hearth_tokenizer::Tokenizer::from_files(&files).unwrap();
    let t =
        hearth_tokenizer::ChatTemplate::new(tok.chat_template.as_deref().unwrap(), "", "").unwrap();
    let goldens = json(fixtures().join("smollm2/chat_goldens.json"));
    for g in goldens.as_array().unwrap() {
        let msgs: Vec<_> = g["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                hearth_tokenizer::ChatMessage::new(
                    m["role"].as_str().unwrap(),
                    m["content"].as_str().unwrap(),
                )
            })
            .collect();
        assert_eq!(t.render(&msgs, true).unwrap(), g["text"].as_str().unwrap());
    }
}

#[test]
fn smollm2_answers_in_english() {
    let out = hearth()
        .args([
            "run",
            "smollm2",
            "What is the capital of France? Answer in one sentence.",
            "--temp",
            "0",
            "-n",
            "40",
            "--verbose",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    eprintln!("answer: {text}");
    assert!(text.contains("Paris"), "answer: {text}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("t/s"),
        "--verbose prints speeds"
    );
}

#[test]
fn logits_cli_prints_one_json_line_per_position() {
    let out = hearth()
        .args(["logits", "smollm2", "--tokens", "1,2,3", "--top", "3"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    for (i, l) in lines.iter().enumerate() {
        assert_eq!(l["pos"], i);
        assert_eq!(l["token"], i + 1);
        assert_eq!(l["top"].as_array().unwrap().len(), 3);
        assert!(l["logsumexp"].as_f64().unwrap() >= l["top"][0][1].as_f64().unwrap());
    }
}

/// The packed weight layout (built at load time for the decoding kernels) changes no bit of
/// the logits: the same three tokens (below the batched kernels' four, so the packed
/// kernels run) with packing on and off
/// (`HEARTH_REPACK=0`), on one thread and on two.
#[test]
fn packed_weights_give_identical_logits() {
    let run = |repack: &str, threads: &str| {
        let out = hearth()
            .args(["logits", "smollm2", "--tokens", "1,504,28", "--top", "8"])
            .args(["-t", threads])
            .env("HEARTH_REPACK", repack)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let base = run("0", "1");
    assert_eq!(base.lines().count(), 3);
    for (r, t) in [("1", "1"), ("1", "2"), ("0", "2")] {
        assert_eq!(run(r, t), base, "HEARTH_REPACK={r}, {t} threads");
    }
}
