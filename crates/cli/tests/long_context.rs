//! SmolLM2 at its full trained context (8,192 tokens) through an f32 and a q8_0 KV cache:
//! the memory a state takes is what `kv_pool_bytes_per_token` predicts, and the predictions
//! of the last 512 positions agree with transformers' over the same 8,192 tokens
//! (scripts/gen_long_context_reference.py: the reference text's tokens, repeated).
use hearth_core::KvType;
use hearth_engine::Engine;
use std::sync::Arc;

fn smollm2() -> std::path::PathBuf {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_hearth"))
        .args(["pull", "smollm2"])
        .output()
        .unwrap();
    assert!(out.status.success(), "hearth pull smollm2 failed");
    std::path::PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

/// Resident memory of this process, in bytes.
fn rss() -> usize {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: usize = s
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    kb * 1024
}

fn json(p: std::path::PathBuf) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap()
}

#[test]
fn full_context_memory_and_agreement() {
    let fx =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/smollm2");
    let reference = json(fx.join("long_context.json"));
    let base: Vec<u32> = json(fx.join("reference.json"))["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect();
    let mut eng = Engine::load(&smollm2(), Arc::new(hearth_cpu::Cpu::new(0).unwrap())).unwrap();
    let n_ctx = eng.model.cfg.n_ctx_train;
    assert_eq!(n_ctx, reference["n_ctx"].as_u64().unwrap() as usize);
    let tokens: Vec<u32> = (0..n_ctx).map(|i| base[i % base.len()]).collect();
    let last = reference["first"].as_u64().unwrap() as usize;
    let want: Vec<u32> = reference["argmax"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect();
    let want_lse: Vec<f64> = reference["logsumexp"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    let chunk = 512;
    for t in [KvType::F32, KvType::Q8_0] {
        eng.set_kv_types(t, t).unwrap();
        let per_token = eng.model.kv_pool_bytes_per_token();
        let before = rss();
        let mut st = eng.model.new_state(n_ctx).unwrap();
        let mut logits = Vec::new();
        for c in tokens[..last].chunks(chunk) {
            eng.model.forward(c, &mut st, false, &mut logits).unwrap();
        }
        // the pages of the first `last` positions are touched by now, the rest not yet; the
        // remainder is one chunk's activations (and the allocator's reuse of freed memory)
        let grown = rss().saturating_sub(before);
        let predicted = per_token * last;
        let slack = 64 << 20;
        println!(
            "{}: state after {last} tokens: {:.1} MiB resident, {:.1} MiB predicted",
            t.name(),
            grown as f64 / 1048576.0,
            predicted as f64 / 1048576.0
        );
        assert!(
            grown <= predicted + slack && grown + slack >= predicted,
            "{}: {grown} bytes resident against {predicted} predicted",
            t.name()
        );
        eng.model
            .forward(&tokens[last..], &mut st, true, &mut logits)
            .unwrap();
        let nv = eng.model.cfg.n_vocab;
        let (mut agree, mut max_lse) = (0, 0f64);
        for (i, row) in logits.chunks_exact(nv).enumerate() {
            agree += (hearth_engine::argmax(row) == want[i]) as usize;
            let m = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
            let lse = m + row.iter().map(|&l| (l as f64 - m).exp()).sum::<f64>().ln();
            max_lse = max_lse.max((lse - want_lse[i]).abs());
        }
        let rate = agree as f64 / want.len() as f64;
        println!(
            "{}: top-1 agreement with transformers at depth {last}..{n_ctx}: {rate:.3}, max |logsumexp diff| {max_lse:.2e}",
            t.name()
        );
        // smollm2.rs's bar for the short text
        assert!(rate >= 0.98, "{}: top-1 agreement {rate}", t.name());
    }
}
