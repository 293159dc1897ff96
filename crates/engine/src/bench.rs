//! `hearth bench` (printed on standard output): prompt processing and generation speed in the style of llama-bench,
//! plus the effective bandwidth of weight reads during generation against a measured probe.
use crate::Rng;
use hearth_core::Result;
use hearth_models::Model;
use std::time::Instant;

/// Settings for one benchmark run.
pub struct BenchOpts {
    /// Prompt tokens (pp test); 0 skips it.
    pub n_prompt: usize,
    /// Generated tokens (tg test); 0 skips it.
    pub n_gen: usize,
    /// Repetitions.
    pub reps: usize,
    /// Worker threads in use.
    pub threads: usize,
    /// Tokens already in the KV cache when each test starts (llama-bench's `-d`), prefilled
    /// before the timing.
    pub depth: usize,
}

fn mean_sd(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let m = v.iter().sum::<f64>() / n;
    let var = if v.len() > 1 {
        v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    (m, var.sqrt())
}

/// Memory read bandwidth in GB/s: every thread sums its share of a buffer much larger than
/// the caches; the best of a few passes.
pub fn bandwidth_probe(threads: usize) -> f64 {
    let bytes = 512usize << 20;
    let words = bytes / 8;
    let buf: Vec<u64> = (0..words as u64).collect();
    let threads = threads.max(1);
    let mut best = 0f64;
    for _ in 0..4 {
        let t0 = Instant::now();
        let sum: u64 = std::thread::scope(|s| {
            let hs: Vec<_> = buf
                .chunks(words.div_ceil(threads))
                .map(|c| {
                    s.spawn(move || {
                        // eight independent sums so the loop is bound by loads, not additions
                        let mut acc = [0u64; 8];
                        for w in c.chunks_exact(8) {
                            for i in 0..8 {
                                acc[i] = acc[i].wrapping_add(w[i]);
                            }
                        }
                        acc.iter().fold(0u64, |a, b| a.wrapping_add(*b))
                    })
                })
                .collect();
            hs.into_iter()
                .map(|h| h.join().unwrap_or(0))
                .fold(0u64, |a, b| a.wrapping_add(b))
        });
        std::hint::black_box(sum);
        best = best.max(bytes as f64 / t0.elapsed().as_secs_f64() / 1e9);
    }
    best
}

/// The backend's time per operation over the runs of `test` (with `HEARTH_PROFILE=1`), on
/// standard error so that the table on standard output stays one table.
fn profile(model: &Model, test: &str) {
    if let Some(r) = model.backend().profile_report() {
        eprintln!("\ntime per operation, {test} runs (HEARTH_PROFILE):\n{r}");
    }
}

/// Run the benchmark and print a table.
pub fn run(model: &Model, name: &str, o: &BenchOpts) -> Result<()> {
    let nv = model.cfg.n_vocab as u64;
    let mut rng = Rng::new(1234);
    let mut tok = || (rng.next_u64() % nv) as u32;
    let mut logits = Vec::new();
    println!("device: {}\n", model.backend().name());
    println!("| model | threads | test | t/s |");
    println!("|---|---|---|---|");
    // warm-up: page the weights in, and fill the state's KV cache once, so that no timed
    // run pays for first touching its memory (every run then starts from an empty state)
    let n_ctx = o.depth + o.n_prompt.max(o.n_gen).max(16);
    crate::check_fits(
        &format!("a KV cache for {n_ctx} tokens"),
        if o.depth > 0 {
            "-d plus -p / -n"
        } else {
            "-p / -n"
        },
        n_ctx,
        model.kv_pool_bytes_per_token(),
    )?;
    let mut st = model.new_state(n_ctx)?;
    let fill: Vec<u32> = (0..n_ctx).map(|_| tok()).collect();
    model.forward(&fill, &mut st, false, &mut logits)?;
    // the depth: its tokens stay in the cache, and each run starts after them. Truncating
    // back to it keeps a KV cache's rows; a recurrent layer's state cannot be rewound, so
    // such models prefill the depth again before every run.
    let depth_tokens: Vec<u32> = fill[..o.depth].to_vec();
    let rewinds = model.state_bytes_per_seq() == 0;
    let to_depth = |st: &mut hearth_models::State, logits: &mut Vec<f32>| -> Result<()> {
        if rewinds || o.depth == 0 {
            st.truncate(o.depth);
            return Ok(());
        }
        st.truncate(0);
        model.forward(&depth_tokens, st, false, logits)
    };
    let at = if o.depth > 0 {
        format!(" @ d{}", o.depth)
    } else {
        String::new()
    };
    // the profile covers the timed runs only
    let _ = model.backend().profile_report();
    if o.n_prompt > 0 {
        let mut speeds = Vec::new();
        for _ in 0..o.reps {
            let prompt: Vec<u32> = (0..o.n_prompt).map(|_| tok()).collect();
            to_depth(&mut st, &mut logits)?;
            let t0 = Instant::now();
            model.forward(&prompt, &mut st, false, &mut logits)?;
            speeds.push(o.n_prompt as f64 / t0.elapsed().as_secs_f64());
        }
        let (m, sd) = mean_sd(&speeds);
        println!(
            "| {name} | {} | pp{}{at} | {m:.2} ± {sd:.2} |",
            o.threads, o.n_prompt
        );
        profile(model, &format!("pp{}{at}", o.n_prompt));
    }
    if o.n_gen > 0 {
        let mut speeds = Vec::new();
        for _ in 0..o.reps {
            to_depth(&mut st, &mut logits)?;
            let mut t = tok();
            let t0 = Instant::now();
            for _ in 0..o.n_gen {
                model.forward(&[t], &mut st, false, &mut logits)?;
                t = crate::argmax(&logits);
            }
            speeds.push(o.n_gen as f64 / t0.elapsed().as_secs_f64());
        }
        let (m, sd) = mean_sd(&speeds);
        println!(
            "| {name} | {} | tg{}{at} | {m:.2} ± {sd:.2} |",
            o.threads, o.n_gen
        );
        profile(model, &format!("tg{}{at}", o.n_gen));
        let gbs = model.bytes_per_token() as f64 * m / 1e9;
        let bw = bandwidth_probe(o.threads);
        println!();
        println!(
            "generation reads {:.1} MB of weights per token: {gbs:.2} GB/s effective, {:.0}% of the {bw:.2} GB/s measured memory read bandwidth ({} threads)",
            model.bytes_per_token() as f64 / 1e6,
            100.0 * gbs / bw,
            o.threads
        );
    }
    Ok(())
}
