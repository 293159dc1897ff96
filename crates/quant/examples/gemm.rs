//! Single-thread throughput of the integer matmul kernels (`rows_q16`) on random weights:
//! `cargo run --release -p hearth-quant --example gemm -- [TYPE] [N_OUT] [N_IN] [TOKENS]`;
//! with `HEARTH_PACKED=1`, the row-interleaved layout (`rows_q16_packed`). `HEARTH_COPIES=N`
//! sums N copies of the matrix one after the other per pass: with N large enough that they
//! exceed the last-level cache, the weights come from memory as a model's do (one matrix of
//! 8192 x 4096 Q5_0 is 23 MB and stays in a 32 MB L3 between passes).
use hearth_core::DType;
use hearth_quant::acts::QuantizedActs;
use std::time::Instant;

fn main() {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let dtype = match a.first().map(|s| s.as_str()).unwrap_or("q4_1") {
        "q4_0" => DType::Q4_0,
        "q8_0" => DType::Q8_0,
        "q4_k" => DType::Q4_K,
        "q6_k" => DType::Q6_K,
        "q5_0" => DType::Q5_0,
        "q5_1" => DType::Q5_1,
        "q2_k" => DType::Q2_K,
        "q3_k" => DType::Q3_K,
        "q5_k" => DType::Q5_K,
        "iq4_xs" => DType::IQ4_XS,
        _ => DType::Q4_1,
    };
    let arg = |i: usize, d: usize| a.get(i).and_then(|s| s.parse().ok()).unwrap_or(d);
    let (n_out, n_in, n_tok) = (arg(1, 1536), arg(2, 576), arg(3, 512));
    let rb = dtype.row_bytes(n_in).unwrap();
    let mut seed = 1u64;
    let mut rnd = move || {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (seed >> 33) as u32
    };
    // random bytes with small f16 scales (exponent bits kept low)
    let bs = dtype.type_size();
    let mut w: Vec<u8> = (0..rb * n_out).map(|_| rnd() as u8).collect();
    for blk in w.chunks_exact_mut(bs) {
        for b in blk.iter_mut().take(4) {
            *b &= 0x1F;
        }
    }
    let x: Vec<f32> = (0..n_in * n_tok)
        .map(|_| (rnd() % 2000) as f32 / 1000.0 - 1.0)
        .collect();
    let mut acts = QuantizedActs::default();
    acts.quantize(&x, n_in);
    let mut out = vec![0f32; n_out * n_tok];
    let packed = std::env::var("HEARTH_PACKED").is_ok_and(|v| v == "1");
    let pw = hearth_quant::pack::pack(dtype, &w, rb).filter(|_| packed);
    // the matrix (packed or not) `copies` times
    let copies: usize = std::env::var("HEARTH_COPIES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let pws: Vec<Vec<u8>> = (0..copies)
        .map(|_| pw.clone().unwrap_or_else(|| w.clone()))
        .collect();
    /// The output `[token, n_out]`, with runs of rows stored at once (as the CPU backend does).
    struct Out<'a> {
        o: &'a mut [f32],
        n_out: usize,
    }
    impl hearth_quant::Sink for Out<'_> {
        fn put(&mut self, t: usize, r: usize, v: f32) {
            self.o[t * self.n_out + r] = v;
        }
        fn rows_at(&mut self, t: usize, r0: usize, n: usize) -> Option<*mut f32> {
            let at = t * self.n_out + r0;
            Some(self.o[at..at + n].as_mut_ptr())
        }
        fn put_rows(&mut self, t: usize, r0: usize, v: &[f32; 16], n: usize) {
            let at = t * self.n_out + r0;
            self.o[at..at + n].copy_from_slice(&v[..n]);
        }
    }
    let mut best = f64::MAX;
    for _ in 0..(5 + 2000 / n_tok) {
        let t = Instant::now();
        for c in &pws {
            let put = Out { o: &mut out, n_out };
            match &pw {
                Some(_) => {
                    hearth_quant::rows_q16_packed(dtype, c, rb, n_out, 0..n_out, &acts, n_tok, put)
                }
                None => hearth_quant::rows_q16(dtype, c, rb, 0..n_out, &acts, n_tok, put),
            }
        }
        best = best.min(t.elapsed().as_secs_f64());
    }
    let macs = (n_out * n_in * n_tok * copies) as f64;
    println!(
        "{dtype:?}{} {n_out}x{n_in} x {n_tok} tokens: {:.2} ms, {:.2} GMAC/s (checksum {:.3})",
        if pw.is_some() { " packed" } else { "" },
        best * 1e3,
        macs / best / 1e9,
        out.iter().map(|v| *v as f64).sum::<f64>()
    );
}
