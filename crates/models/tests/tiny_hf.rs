//! Every architecture in the registry: a tiny random-weight HF model (built by
//! scripts/gen_tiny_models.py with transformers) must give transformers' logits to within
//! float32 rounding noise, and the same 16-token greedy continuation.
use hearth_formats::ModelFiles;
use hearth_models::{ARCHS, Model};
use std::path::PathBuf;
use std::sync::Arc;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/tiny")
        .join(name)
}

fn load(name: &str) -> (ModelFiles, Model, serde_json::Value, Vec<f32>) {
    let dir = fixture(name);
    let files = ModelFiles::open(&dir).unwrap_or_else(|e| panic!("{name}: {e}"));
    let model = Model::load(&files, Arc::new(hearth_cpu::Cpu::new(2).unwrap()))
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    let exp: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
    let logits: Vec<f32> = std::fs::read(dir.join("logits.f32"))
        .unwrap()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    (files, model, exp, logits)
}

/// Logits agree to within float32 rounding noise: a few ulps of the largest logit, accumulated
/// over the layers.
fn assert_close(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}");
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    let max_diff = got
        .iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(
        max_diff <= 2e-5 * scale.max(1.0),
        "{what}: max |diff| {max_diff} (logit scale {scale})"
    );
}

fn forward_all(model: &Model, tokens: &[u32]) -> Vec<f32> {
    let mut st = model.new_state(tokens.len());
    let mut got = Vec::new();
    model.forward(tokens, &mut st, true, &mut got).unwrap();
    got
}

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

#[test]
fn every_architecture_matches_transformers_logits() {
    for arch in ARCHS {
        let (_f, model, exp, want) = load(arch.name);
        assert_close(arch.name, &forward_all(&model, &ids(&exp["tokens"])), &want);
    }
}

#[test]
fn every_architecture_prefill_in_pieces_equals_one_batch() {
    // Token-by-token decode through the KV cache must give the batch's logits.
    for arch in ARCHS {
        let (_f, model, exp, want) = load(arch.name);
        let tokens = ids(&exp["tokens"]);
        let nv = model.cfg.n_vocab;
        let mut st = model.new_state(tokens.len());
        let mut got = Vec::new();
        model
            .forward(&tokens[..5], &mut st, false, &mut got)
            .unwrap();
        for (i, &t) in tokens.iter().enumerate().skip(5) {
            model.forward(&[t], &mut st, false, &mut got).unwrap();
            assert_close(
                &format!("{} decode pos {i}", arch.name),
                &got,
                &want[i * nv..(i + 1) * nv],
            );
        }
    }
}

#[test]
fn every_architecture_greedy_continuation_matches() {
    for arch in ARCHS {
        let (_f, model, exp, _) = load(arch.name);
        let prompt = ids(&exp["greedy_prompt"]);
        let want = ids(&exp["greedy"]);
        let mut st = model.new_state(prompt.len() + want.len());
        let mut logits = Vec::new();
        model.forward(&prompt, &mut st, false, &mut logits).unwrap();
        let mut got = Vec::new();
        for _ in 0..want.len() {
            let t = hearth_engine_argmax(&logits);
            got.push(t);
            model.forward(&[t], &mut st, false, &mut logits).unwrap();
        }
        assert_eq!(
            got, want,
            "{}: greedy continuation differs from transformers",
            arch.name
        );
    }
}

fn hearth_engine_argmax(l: &[f32]) -> u32 {
    let mut b = 0;
    for (i, &v) in l.iter().enumerate() {
        if v > l[b] {
            b = i;
        }
    }
    b as u32
}

#[test]
fn half_precision_sharded_checkpoints_match_transformers() {
    for name in ["llama-bf16-sharded", "qwen2-f16-sharded"] {
        let (files, model, exp, want) = load(name);
        if let hearth_formats::Source::Hf(h) = &files.source {
            assert!(h.shards.len() >= 2, "{name} should be sharded");
        }
        let dt = files.tensors["blk.0.attn_q.weight"].dtype;
        assert!(
            matches!(dt, hearth_core::DType::BF16 | hearth_core::DType::F16),
            "{name}: {dt}"
        );
        assert_close(name, &forward_all(&model, &ids(&exp["tokens"])), &want);
    }
}
