//! A context four times a model's original one: a tiny qwen2 with YaRN (factor 4 over 4,096)
//! over 16,384 tokens against transformers run in float64 (scripts/gen_tiny_long.py), with the
//! f32 cache to within float32 noise, and with a q8_0 cache (rotated, converted a chunk at a
//! time) within its precision.
use hearth_core::KvType;
use hearth_formats::ModelFiles;
use hearth_models::Model;
use std::sync::Arc;

#[test]
fn yarn_at_four_times_the_original_context_matches_transformers() {
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/long/qwen2_yarn");
    let files = ModelFiles::open(&dir).unwrap();
    let mut model = Model::load(&files, Arc::new(hearth_cpu::Cpu::new(2).unwrap())).unwrap();
    let exp: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
    let ids = |k: &str| -> Vec<usize> {
        exp[k]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as usize)
            .collect()
    };
    let tokens: Vec<u32> = ids("tokens").into_iter().map(|t| t as u32).collect();
    let positions = ids("positions");
    let want: Vec<f32> = std::fs::read(dir.join("logits.f32"))
        .unwrap()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    let nv = model.cfg.n_vocab;
    assert_eq!(tokens.len(), 16384);
    assert!(model.cfg.n_ctx_train >= tokens.len());
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs())).max(1.0);
    for (t, tol) in [(KvType::F32, 2e-5), (KvType::Q8_0, 2e-2)] {
        model.set_kv_types(t, t).unwrap();
        let mut st = model.new_state(tokens.len()).unwrap();
        let (mut logits, mut max_diff) = (Vec::new(), 0f32);
        for (c, chunk) in tokens.chunks(1024).enumerate() {
            model.forward(chunk, &mut st, true, &mut logits).unwrap();
            for (i, &p) in positions.iter().enumerate() {
                if p / 1024 == c {
                    let got = &logits[(p % 1024) * nv..(p % 1024 + 1) * nv];
                    let w = &want[i * nv..(i + 1) * nv];
                    for (a, b) in got.iter().zip(w) {
                        max_diff = max_diff.max((a - b).abs());
                    }
                }
            }
        }
        println!(
            "{}: max |logit diff| {max_diff:.2e} (logit scale {scale:.2})",
            t.name()
        );
        assert!(
            max_diff <= tol * scale,
            "{}: max |logit diff| {max_diff} (logit scale {scale})",
            t.name()
        );
    }
}
