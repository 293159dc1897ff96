//! Perplexity and KL divergence over a text, computed as llama.cpp's `llama-perplexity` does.
//!
//! The text is tokenized whole (with BOS when the model adds one) and cut into windows of
//! `n_ctx` tokens. Each window is evaluated from an empty cache, its first token replaced by
//! BOS when the model adds BOS, and the negative log-likelihood is counted over the second
//! half only (the predictions of tokens `n_ctx/2 + 1 .. n_ctx`), so that every counted token
//! has at least half a window of context.
//!
//! `--save-logits` writes llama.cpp's `--kl-divergence-base` file, and `--kl-divergence`
//! reads one (written by hearth or by llama.cpp): `"_logits_"`, `i32 n_ctx`, `i32 n_vocab`,
//! `i32 n_chunk`, the `n_chunk * n_ctx` tokens as `i32`, then for each counted position of
//! each window `nv = 2 * ((n_vocab + 1) / 2) + 4` u16s: the f32 `scale` and `min_log_prob`,
//! then each token's log-probability as `min_log_prob + scale * q` (log-probabilities more
//! than 16 below the best are stored as the minimum). Both sides stream: a window's rows are
//! written or read a batch at a time.
use crate::Engine;
use hearth_core::{Error, Result};
use hearth_models::Model;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::PathBuf;

/// Settings of a perplexity run. New settings (the KV cache's types, say) are new fields;
/// callers fill the rest with `..Default::default()`.
#[derive(Clone, Debug)]
pub struct PplOpts {
    /// Tokens per window.
    pub n_ctx: usize,
    /// Most windows to evaluate (None: as many as the text holds).
    pub n_chunks: Option<usize>,
    /// Tokens per forward pass.
    pub n_batch: usize,
    /// Write the log-probabilities here (llama.cpp's `--kl-divergence-base` format).
    pub save_logits: Option<PathBuf>,
    /// Compare with the log-probabilities in this file; its tokens and window size are used.
    pub kl_base: Option<PathBuf>,
}

impl Default for PplOpts {
    fn default() -> Self {
        PplOpts {
            n_ctx: 512,
            n_chunks: None,
            n_batch: 512,
            save_logits: None,
            kl_base: None,
        }
    }
}

/// Running values after each window.
#[derive(Clone, Debug)]
pub struct ChunkReport {
    /// Windows done (1-based).
    pub chunk: usize,
    /// Windows in all.
    pub n_chunk: usize,
    /// Perplexity so far.
    pub ppl: f64,
    /// With a base file: KL divergence so far, mean ln(PPL/PPL(base)), share of same top token.
    pub kld: Option<(f64, f64, f64)>,
}

/// Mean and standard error, as llama.cpp computes them.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Est {
    /// Value.
    pub value: f64,
    /// Its uncertainty.
    pub err: f64,
}

/// KL divergence against a base file's log-probabilities.
#[derive(Clone, Debug, Default)]
pub struct KldReport {
    /// The base's perplexity over the same positions.
    pub ppl_base: Est,
    /// ln(PPL / PPL(base)).
    pub ln_ratio: Est,
    /// PPL - PPL(base).
    pub ppl_diff: Est,
    /// Mean KL divergence (base ‖ this model), in nats.
    pub mean: Est,
    /// Largest KL divergence of a position.
    pub max: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 90th percentile.
    pub p90: f64,
    /// Median.
    pub median: f64,
    /// Root mean square of the change in the probability of the right token.
    pub rms_dp: Est,
    /// Share of positions whose most likely token is the base's.
    pub same_top: Est,
}

/// The result of a run.
#[derive(Clone, Debug, Default)]
pub struct PplReport {
    /// Perplexity.
    pub ppl: Est,
    /// Windows evaluated.
    pub n_chunk: usize,
    /// Tokens per window.
    pub n_ctx: usize,
    /// Predictions counted.
    pub count: usize,
    /// Against a base file.
    pub kld: Option<KldReport>,
}

/// u16s per position in a log-probability file.
pub fn row_u16s(n_vocab: usize) -> usize {
    2 * n_vocab.div_ceil(2) + 4
}

/// llama.cpp's rounding (`nearest_int`: round half to even, for |x| < 2^22).
fn nearest_int(x: f32) -> i32 {
    let v = x + 12582912.0;
    (v.to_bits() & 0x007f_ffff) as i32 - 0x0040_0000
}

/// The negative log-likelihood of `tok` under the logits `row`, and `row`'s log-probabilities
/// quantized into `out` (`row_u16s(row.len())` values) when given.
pub fn nll_row(row: &[f32], tok: usize, out: Option<&mut [u16]>) -> f64 {
    let (mut max, mut min) = (row[0], row[0]);
    for &v in &row[1..] {
        max = max.max(v);
        min = min.min(v);
    }
    let sum: f64 = row.iter().map(|&v| (v - max).exp() as f64).sum();
    let lse = sum.ln() as f32;
    if let Some(out) = out {
        let min = min.max(max - 16.0);
        let min_log_prob = min - max - lse;
        let scale = (max - min) / 65535.0;
        out[..2].copy_from_slice(&u16_pair(scale));
        out[2..4].copy_from_slice(&u16_pair(min_log_prob));
        let q = &mut out[4..];
        q.fill(0);
        if scale != 0.0 {
            let inv = 1.0 / scale;
            for (o, &v) in q.iter_mut().zip(row) {
                *o = if v > min {
                    nearest_int(inv * (v - min)) as u16
                } else {
                    0
                };
            }
        }
    }
    (max as f64 + lse as f64) - row[tok] as f64
}

fn u16_pair(v: f32) -> [u16; 2] {
    let b = v.to_le_bytes();
    [
        u16::from_le_bytes([b[0], b[1]]),
        u16::from_le_bytes([b[2], b[3]]),
    ]
}

fn f32_of(p: &[u16]) -> f32 {
    let (a, b) = (p[0].to_le_bytes(), p[1].to_le_bytes());
    f32::from_le_bytes([a[0], a[1], b[0], b[1]])
}

/// Sums over positions, as llama.cpp's `kl_divergence_result`.
#[derive(Clone, Debug, Default)]
struct KldSums {
    nll: f64,
    nll2: f64,
    nll_base: f64,
    nll_base2: f64,
    nll_nll_base: f64,
    kld: f64,
    kld2: f64,
    p_diff2: f64,
    p_diff4: f64,
    same_top: usize,
    count: usize,
}

/// Compare the logits `row` with a base position `base` (`row_u16s` values) for the true
/// token `tok`: returns this position's KL divergence.
fn kld_row(row: &[f32], base: &[u16], tok: usize, s: &mut KldSums) -> f64 {
    let (mut max, mut imax) = (row[0], 0);
    for (i, &v) in row.iter().enumerate().skip(1) {
        if v > max {
            max = v;
            imax = i;
        }
    }
    let sum: f64 = row.iter().map(|&v| (v - max).exp() as f64).sum();
    let lse = sum.ln() as f32;
    let scale = f32_of(&base[0..2]);
    let min_log_prob = f32_of(&base[2..4]);
    let q = &base[4..];
    let nll = (max + lse - row[tok]) as f64;
    s.nll += nll;
    s.nll2 += nll * nll;
    let nll_base = -(scale * q[tok] as f32 + min_log_prob) as f64;
    s.nll_base += nll_base;
    s.nll_base2 += nll_base * nll_base;
    s.nll_nll_base += nll * nll_base;
    let norm = max + lse;
    let mut kld = 0f64;
    let (mut imax_base, mut best) = (0usize, f32::NEG_INFINITY);
    for (i, (&qi, &v)) in q.iter().zip(row).enumerate() {
        let lp_base = scale * qi as f32 + min_log_prob;
        if i == 0 || lp_base > best {
            best = lp_base;
            imax_base = i;
        }
        if lp_base > -16.0 {
            kld += lp_base.exp() as f64 * (lp_base - v + norm) as f64;
        }
    }
    s.kld += kld;
    s.kld2 += kld * kld;
    s.count += 1;
    if imax == imax_base {
        s.same_top += 1;
    }
    let p_diff = (-nll).exp() - (-nll_base).exp();
    s.p_diff2 += p_diff * p_diff;
    s.p_diff4 += p_diff.powi(4);
    kld
}

fn mean_unc(sum: f64, sum2: f64, count: usize) -> Est {
    if count < 1 {
        return Est::default();
    }
    let n = count as f64;
    let f = sum / n;
    let df = sum2 / n - f * f;
    let err = if df > 0.0 && count > 10 {
        (df / (n - 1.0)).sqrt()
    } else {
        0.0
    };
    Est { value: f, err }
}

fn covariance(a: f64, b: f64, ab: f64, count: usize) -> f64 {
    if count < 10 {
        return 0.0;
    }
    let n = count as f64;
    (ab / n - (a / n) * (b / n)) / (n - 1.0)
}

/// llama.cpp's percentile of sorted values (linear between neighbours).
fn percentile(v: &[f32], fraction: f32) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    if fraction <= 0.0 {
        return v[0] as f64;
    }
    if fraction >= 1.0 {
        return v[v.len() - 1] as f64;
    }
    let p = fraction * (v.len() - 1) as f32;
    let ip = p as usize;
    let f = p - ip as f32;
    ((1.0 - f) * v[ip] + f * v[(ip + 1).min(v.len() - 1)]) as f64
}

fn io(path: &std::path::Path, what: &str) -> impl Fn(std::io::Error) -> Error {
    let m = format!("cannot {what} {}", path.display());
    move |e| Error::Io(m.clone(), e)
}

/// A log-probability file opened for comparison: its header and tokens; the rows stream.
pub struct LogitsBase {
    r: BufReader<std::fs::File>,
    path: PathBuf,
    /// Tokens per window.
    pub n_ctx: usize,
    /// Vocabulary size.
    pub n_vocab: usize,
    /// Windows in the file.
    pub n_chunk: usize,
    /// The evaluated tokens, `n_chunk * n_ctx`.
    pub tokens: Vec<u32>,
}

impl LogitsBase {
    /// Open `path` and check its header and size.
    pub fn open(path: &std::path::Path) -> Result<LogitsBase> {
        let f = std::fs::File::open(path).map_err(io(path, "open"))?;
        let size = f.metadata().map_err(io(path, "read"))?.len();
        let mut r = BufReader::new(f);
        let bad = |m: String| Error::Invalid(format!("{}: {m}", path.display()));
        let mut head = [0u8; 20];
        if size < 20 || r.read_exact(&mut head).is_err() || &head[..8] != b"_logits_" {
            return Err(bad(
                "not a log-probability file (llama-perplexity --kl-divergence-base or hearth perplexity --save-logits)".into(),
            ));
        }
        let i = |o: usize| i32::from_le_bytes([head[o], head[o + 1], head[o + 2], head[o + 3]]);
        let (n_ctx, n_vocab, n_chunk) = (i(8), i(12), i(16));
        if n_ctx < 4 || n_vocab < 1 || n_chunk < 1 {
            return Err(bad(format!(
                "implausible header: n_ctx {n_ctx}, n_vocab {n_vocab}, {n_chunk} chunks"
            )));
        }
        let (n_ctx, n_vocab, n_chunk) = (n_ctx as u64, n_vocab as u64, n_chunk as u64);
        let rows = n_ctx - 1 - n_ctx / 2;
        let expect =
            20 + 4 * n_ctx * n_chunk + n_chunk * rows * row_u16s(n_vocab as usize) as u64 * 2;
        if expect != size {
            return Err(bad(format!(
                "{size} bytes, but {n_chunk} chunks of {n_ctx} tokens over a vocabulary of {n_vocab} take {expect}: the file is truncated or not one run's"
            )));
        }
        let mut tb = vec![0u8; (4 * n_ctx * n_chunk) as usize];
        r.read_exact(&mut tb).map_err(io(path, "read"))?;
        let tokens: Vec<u32> = tb
            .chunks_exact(4)
            .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as u32)
            .collect();
        if let Some(t) = tokens.iter().find(|&&t| t as u64 >= n_vocab) {
            return Err(bad(format!(
                "token {} is outside its vocabulary of {n_vocab}",
                *t as i32
            )));
        }
        Ok(LogitsBase {
            r,
            path: path.to_path_buf(),
            n_ctx: n_ctx as usize,
            n_vocab: n_vocab as usize,
            n_chunk: n_chunk as usize,
            tokens,
        })
    }

    fn read_rows(&mut self, n: usize, buf: &mut Vec<u16>) -> Result<()> {
        let nv = row_u16s(self.n_vocab);
        let mut b = vec![0u8; n * nv * 2];
        self.r.read_exact(&mut b).map_err(io(&self.path, "read"))?;
        buf.clear();
        buf.extend(b.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])));
        Ok(())
    }
}

/// Evaluate one window: `w[0..n_ctx - 1]` goes through the model `n_batch` tokens at a time,
/// and `on_rows(i0, logits)` receives the logits of the positions `first + i0 ..` that
/// predict `w[first + i0 + 1 ..]`.
fn eval_window(
    model: &Model,
    state: &mut hearth_models::State,
    w: &[u32],
    n_batch: usize,
    mut on_rows: impl FnMut(usize, &[f32]) -> Result<()>,
) -> Result<()> {
    let n_ctx = w.len();
    let first = n_ctx / 2;
    state.truncate(0);
    let mut logits = Vec::new();
    for piece in w[..first].chunks(n_batch) {
        model.forward(piece, state, false, &mut logits)?;
    }
    let mut i0 = 0;
    for piece in w[first..n_ctx - 1].chunks(n_batch) {
        model.forward(piece, state, true, &mut logits)?;
        on_rows(i0, &logits)?;
        i0 += piece.len();
    }
    Ok(())
}

/// Compute the perplexity of `tokens` (the text tokenized with BOS as the model adds it;
/// ignored when comparing with a base file, whose tokens are used), reporting after each
/// window.
pub fn perplexity(
    eng: &Engine,
    tokens: &[u32],
    o: &PplOpts,
    mut on_chunk: impl FnMut(&ChunkReport),
) -> Result<PplReport> {
    let model = &eng.model;
    let nv = model.cfg.n_vocab;
    if o.n_batch == 0 {
        return Err(Error::Invalid("the batch size must be at least 1".into()));
    }
    if o.kl_base.is_some() && o.save_logits.is_some() {
        return Err(Error::Invalid(
            "--save-logits and --kl-divergence cannot be used together".into(),
        ));
    }
    let mut base = match &o.kl_base {
        Some(p) => {
            let b = LogitsBase::open(p)?;
            if b.n_vocab != nv {
                return Err(Error::Invalid(format!(
                    "{}: its vocabulary has {} tokens, this model's {nv}: it was computed with another model family",
                    p.display(),
                    b.n_vocab
                )));
            }
            Some(b)
        }
        None => None,
    };
    let base_tokens = base.as_mut().map(|b| std::mem::take(&mut b.tokens));
    let (n_ctx, text): (usize, &[u32]) = match (&base, &base_tokens) {
        (Some(b), Some(t)) => (b.n_ctx, t),
        _ => (o.n_ctx, tokens),
    };
    if n_ctx < 4 {
        return Err(Error::Invalid(format!(
            "a window of {n_ctx} tokens is too small (at least 4)"
        )));
    }
    if base.is_none() && text.len() < 2 * n_ctx {
        return Err(Error::Invalid(format!(
            "you need at least {} tokens to evaluate perplexity with a context of {n_ctx}: the text tokenizes to only {}",
            2 * n_ctx,
            text.len()
        )));
    }
    let n_max = text.len() / n_ctx;
    let n_chunk = o.n_chunks.map_or(n_max, |c| c.min(n_max));
    if n_chunk == 0 {
        return Err(Error::Invalid("--chunks must be at least 1".into()));
    }
    eng.check_context(n_ctx, "--ctx")?;
    let mut state = model.new_state(n_ctx)?;
    let first = n_ctx / 2;
    let rows = n_ctx - 1 - first;
    let bos = match (eng.tokenizer.add_bos, eng.tokenizer.bos) {
        (true, Some(b)) => Some(b),
        (true, None) => {
            return Err(Error::Invalid(
                "the tokenizer adds BOS but names no BOS token".into(),
            ));
        }
        _ => None,
    };
    let mut save = match &o.save_logits {
        Some(p) => {
            let f = std::fs::File::create(p).map_err(io(p, "create"))?;
            let mut w = BufWriter::new(f);
            let mut h = b"_logits_".to_vec();
            for v in [n_ctx, nv, n_chunk] {
                h.extend((v as i32).to_le_bytes());
            }
            for &t in &text[..n_chunk * n_ctx] {
                h.extend((t as i32).to_le_bytes());
            }
            w.write_all(&h).map_err(io(p, "write"))?;
            Some((w, p.clone()))
        }
        None => None,
    };
    let nvq = row_u16s(nv);
    let (mut nll, mut nll2, mut count) = (0f64, 0f64, 0usize);
    let mut ks = KldSums::default();
    let mut klds: Vec<f32> = Vec::new();
    let mut q: Vec<u16> = Vec::new();
    let mut bytes: Vec<u8> = Vec::new();
    for c in 0..n_chunk {
        let mut w = text[c * n_ctx..(c + 1) * n_ctx].to_vec();
        if let Some(b) = bos {
            w[0] = b;
        }
        let targets = &text[c * n_ctx + first + 1..(c + 1) * n_ctx];
        eval_window(model, &mut state, &w, o.n_batch, |i0, lg| {
            let m = lg.len() / nv;
            for (r, row) in lg.chunks_exact(nv).enumerate() {
                crate::check_logits(row, first + i0 + r)?;
            }
            if let Some(b) = base.as_mut() {
                b.read_rows(m, &mut q)?;
                for (r, row) in lg.chunks_exact(nv).enumerate() {
                    let t = targets[i0 + r] as usize;
                    klds.push(kld_row(row, &q[r * nvq..(r + 1) * nvq], t, &mut ks) as f32);
                }
                return Ok(());
            }
            if save.is_some() {
                q.resize(m * nvq, 0);
            }
            for (r, row) in lg.chunks_exact(nv).enumerate() {
                let t = targets[i0 + r] as usize;
                let out = save.as_ref().map(|_| &mut q[r * nvq..(r + 1) * nvq]);
                let v = nll_row(row, t, out);
                nll += v;
                nll2 += v * v;
            }
            if let Some((wr, p)) = save.as_mut() {
                bytes.clear();
                bytes.extend(q.iter().flat_map(|v| v.to_le_bytes()));
                wr.write_all(&bytes).map_err(io(p, "write"))?;
            }
            Ok(())
        })?;
        count += rows;
        let report = match &base {
            Some(_) => {
                let lp = mean_unc(ks.nll, ks.nll2, ks.count);
                let lb = mean_unc(ks.nll_base, ks.nll_base2, ks.count);
                ChunkReport {
                    chunk: c + 1,
                    n_chunk,
                    ppl: lp.value.exp(),
                    kld: Some((
                        ks.kld / ks.count as f64,
                        lp.value - lb.value,
                        ks.same_top as f64 / ks.count as f64,
                    )),
                }
            }
            None => ChunkReport {
                chunk: c + 1,
                n_chunk,
                ppl: (nll / count as f64).exp(),
                kld: None,
            },
        };
        on_chunk(&report);
    }
    if let Some((mut w, p)) = save {
        w.flush().map_err(io(&p, "write"))?;
    }
    let mut rep = PplReport {
        n_chunk,
        n_ctx,
        count,
        ..Default::default()
    };
    if base.is_none() {
        let n = count as f64;
        let m = nll / n;
        let var = nll2 / n - m * m;
        let ppl = m.exp();
        let err = if var > 0.0 && count > 1 {
            (var / (n - 1.0)).sqrt() * ppl
        } else {
            0.0
        };
        rep.ppl = Est { value: ppl, err };
        return Ok(rep);
    }
    let lp = mean_unc(ks.nll, ks.nll2, ks.count);
    let lb = mean_unc(ks.nll_base, ks.nll_base2, ks.count);
    let ppl = lp.value.exp();
    let ppl_base = lb.value.exp();
    rep.ppl = Est {
        value: ppl,
        err: ppl * lp.err,
    };
    let cov = covariance(ks.nll, ks.nll_base, ks.nll_nll_base, ks.count);
    let ratio_err = (lp.err * lp.err + lb.err * lb.err - 2.0 * cov)
        .max(0.0)
        .sqrt();
    let (pu, pbu) = (ppl * lp.err, ppl_base * lb.err);
    let ppl_cov = ppl * ppl_base * cov;
    klds.sort_by(f32::total_cmp);
    let n = klds.len();
    let median = if n.is_multiple_of(2) {
        0.5 * (klds[n / 2] + klds[n / 2 - 1]) as f64
    } else {
        klds[n / 2] as f64
    };
    let mse = mean_unc(ks.p_diff2, ks.p_diff4, ks.count);
    let rms = mse.value.sqrt();
    let st = ks.same_top as f64 / ks.count as f64;
    rep.kld = Some(KldReport {
        ppl_base: Est {
            value: ppl_base,
            err: pbu,
        },
        ln_ratio: Est {
            value: lp.value - lb.value,
            err: ratio_err,
        },
        ppl_diff: Est {
            value: ppl - ppl_base,
            err: (pu * pu + pbu * pbu - 2.0 * ppl_cov).max(0.0).sqrt(),
        },
        mean: mean_unc(ks.kld, ks.kld2, ks.count),
        max: klds.last().copied().unwrap_or(0.0) as f64,
        p999: percentile(&klds, 0.999),
        p99: percentile(&klds, 0.99),
        p90: percentile(&klds, 0.90),
        median,
        rms_dp: Est {
            value: rms,
            err: if rms > 0.0 { 0.5 / rms * mse.err } else { 0.0 },
        },
        same_top: Est {
            value: st,
            err: (st * (1.0 - st) / (ks.count as f64 - 1.0).max(1.0)).sqrt(),
        },
    });
    Ok(rep)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_int_rounds_half_to_even() {
        for (x, r) in [
            (0.5f32, 0),
            (1.5, 2),
            (2.5, 2),
            (65534.6, 65535),
            (-1.5, -2),
        ] {
            assert_eq!(nearest_int(x), r, "{x}");
        }
    }

    #[test]
    fn quantized_log_probs_come_back_within_a_step() {
        let row: Vec<f32> = (0..37)
            .map(|i| ((i * 7919) % 101) as f32 / 9.0 - 4.0)
            .collect();
        let mut q = vec![0u16; row_u16s(row.len())];
        let nll = nll_row(&row, 5, Some(&mut q));
        let max = row.iter().copied().fold(f32::MIN, f32::max) as f64;
        let lse = max
            + row
                .iter()
                .map(|&v| (v as f64 - max).exp())
                .sum::<f64>()
                .ln();
        assert!((nll - (lse - row[5] as f64)).abs() < 1e-5);
        let (scale, min) = (f32_of(&q[0..2]), f32_of(&q[2..4]));
        for (i, &v) in row.iter().enumerate() {
            let got = (scale * q[4 + i] as f32 + min) as f64;
            assert!((got - (v as f64 - lse)).abs() <= scale as f64, "{i}");
        }
        // against itself: no divergence, same top token
        let mut s = KldSums::default();
        let k = kld_row(&row, &q, 5, &mut s);
        assert!(k.abs() < 1e-4, "{k}");
        assert_eq!(s.same_top, 1);
        // a changed distribution diverges
        let mut other = row.clone();
        let best = crate::argmax(&row) as usize;
        other[best] -= 3.0;
        assert!(kld_row(&other, &q, 5, &mut s) > 1e-3);
    }

    #[test]
    fn percentiles_interpolate_like_llama_cpp() {
        let v = [0.0f32, 1.0, 2.0, 3.0, 4.0];
        assert_eq!(percentile(&v, 0.5), 2.0);
        assert!((percentile(&v, 0.99) - 3.96).abs() < 1e-6);
        assert_eq!(percentile(&v, 1.0), 4.0);
    }
}
