//! Single-thread time of activation quantization (`QuantizedActs::quantize_forms`):
//! `cargo run --release -p hearth-quant --example quantize -- [N] [TOKENS]`.
use hearth_quant::acts::QuantizedActs;
use std::time::Instant;

fn main() {
    let a: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|s| s.parse().ok())
        .collect();
    let (n, n_tok) = (
        a.first().copied().unwrap_or(576),
        a.get(1).copied().unwrap_or(512),
    );
    let mut seed = 1u64;
    let x: Vec<f32> = (0..n * n_tok)
        .map(|_| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect();
    let mut acts = QuantizedActs::default();
    for (q16, k8, name) in [(true, false, "16-bit"), (false, true, "8-bit")] {
        let mut best = f64::MAX;
        for _ in 0..20 {
            let t = Instant::now();
            acts.quantize_forms(&x, n, q16, k8);
            best = best.min(t.elapsed().as_secs_f64());
        }
        println!(
            "{name}: {n} x {n_tok} tokens: {:.3} ms, {:.2} ns per value",
            best * 1e3,
            best * 1e9 / (n * n_tok) as f64
        );
    }
}
