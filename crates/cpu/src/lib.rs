//! hearth-cpu: the CPU backend.
//!
//! Matmuls run on quantized weights directly, one block at a time (never decoding a whole
//! tensor). For Q4_0/Q4_1/Q8_0 the activations are first quantized to 16-bit integers and the
//! dots are exact integer sums. A batch runs the one-token arithmetic for every (row, token),
//! four tokens per weight-block decode, so batching never changes a token's result.
//! Work is split over a persistent thread pool (`pool.rs`).
#![deny(missing_docs)]

mod pool;

use hearth_core::{AttnParams, Backend, DType, Device, Error, Result, RopeStyle, Tensor};
use hearth_quant::acts::{QuantizedActs, supports_q16};
use hearth_quant::{dequantize, dot_f32, dot_row, dot_row_q16};

/// The CPU backend.
pub struct Cpu {
    pool: pool::Pool,
    /// Reused buffer for activations quantized to 16 bits (integer kernels).
    acts: std::sync::Mutex<QuantizedActs>,
}

impl Cpu {
    /// A backend with `threads` worker threads (0: one per core).
    pub fn new(threads: usize) -> Result<Cpu> {
        let threads = if threads == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            threads
        };
        let pool = pool::Pool::new(threads)
            .map_err(|e| Error::Invalid(format!("cannot start the thread pool: {e}")))?;
        Ok(Cpu {
            pool,
            acts: Default::default(),
        })
    }

    /// Worker threads.
    pub fn threads(&self) -> usize {
        self.pool.threads()
    }
}

/// Most rotated pairs per head the rope kernel handles (head_dim 1024).
pub const MAX_ROPE_PAIRS: usize = 512;

#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: used only to write disjoint elements from parallel tasks.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

fn check_cpu(w: &Tensor) -> Result<()> {
    if w.device != Device::Cpu {
        return Err(Error::Unsupported(format!(
            "tensor {} is on {:?}, not the CPU",
            w.name, w.device
        )));
    }
    Ok(())
}

impl Backend for Cpu {
    fn name(&self) -> String {
        format!("cpu ({} threads)", self.threads())
    }

    fn supports(&self, _dtype: DType) -> bool {
        true
    }

    fn matmul(&self, w: &Tensor, x: &[f32], n_tok: usize, out: &mut [f32]) -> Result<()> {
        check_cpu(w)?;
        let n_in = w.row_len();
        let n_out = w.n_rows();
        if x.len() != n_tok * n_in || out.len() != n_tok * n_out {
            return Err(Error::Invalid(format!(
                "matmul {}: weight [{n_out}, {n_in}], x has {} values for {n_tok} tokens, out {}",
                w.name,
                x.len(),
                out.len()
            )));
        }
        let dtype = w.dtype;
        let rb = w.row_bytes();
        let bytes = w.bytes();
        // Rows per task: every row costs the same, so one even share per thread keeps
        // scheduling overhead to one task each.
        let chunk = n_out.div_ceil(self.threads()).max(1);
        // Each (row, token) result is computed exactly as a one-token call computes it, so a
        // token's logits never depend on which other tokens share its batch.
        let optr = SendPtr(out.as_mut_ptr());
        // SAFETY (callers of `put`): (t, r) pairs are disjoint across tasks and in bounds.
        let put = move |t: usize, r: usize, v: f32| {
            let p = optr; // capture the Send + Sync wrapper, not its raw pointer field
            unsafe { *p.0.add(t * n_out + r) = v }
        };
        if supports_q16(dtype) {
            // Integer kernels: quantize the activations once, to 16 bits.
            let mut guard = self.acts.lock().unwrap_or_else(|e| e.into_inner());
            guard.quantize(x, n_in);
            let acts = &*guard;
            self.pool.run(&|ci| {
                for r in (ci * chunk).min(n_out)..((ci + 1) * chunk).min(n_out) {
                    let row = &bytes[r * rb..(r + 1) * rb];
                    let mut t = 0;
                    while t + 4 <= n_tok {
                        let v = dot_row_q16::<4>(
                            dtype,
                            row,
                            [
                                acts.row(t),
                                acts.row(t + 1),
                                acts.row(t + 2),
                                acts.row(t + 3),
                            ],
                        );
                        for (k, v) in v.into_iter().enumerate() {
                            put(t + k, r, v);
                        }
                        t += 4;
                    }
                    for t in t..n_tok {
                        put(t, r, dot_row_q16::<1>(dtype, row, [acts.row(t)])[0]);
                    }
                }
            });
            return Ok(());
        }
        let xrow = |t: usize| &x[t * n_in..(t + 1) * n_in];
        self.pool.run(&|ci| {
            for r in (ci * chunk).min(n_out)..((ci + 1) * chunk).min(n_out) {
                let row = &bytes[r * rb..(r + 1) * rb];
                for t in 0..n_tok {
                    put(t, r, dot_row(dtype, row, xrow(t)));
                }
            }
        });
        Ok(())
    }

    fn get_row(&self, w: &Tensor, row: usize, out: &mut [f32]) -> Result<()> {
        check_cpu(w)?;
        if row >= w.n_rows() {
            return Err(Error::Invalid(format!(
                "row {row} out of range for {} ({} rows)",
                w.name,
                w.n_rows()
            )));
        }
        dequantize(w.dtype, w.row(row), out)
    }

    fn rms_norm(&self, x: &mut [f32], w: &[f32], eps: f32) {
        for row in x.chunks_exact_mut(w.len()) {
            let ss: f32 = dot_f32(row, row) / w.len() as f32;
            let r = 1.0 / (ss + eps).sqrt();
            for (v, g) in row.iter_mut().zip(w) {
                *v = *v * r * g;
            }
        }
    }

    fn rope(
        &self,
        x: &mut [f32],
        n_heads: usize,
        head_dim: usize,
        positions: &[usize],
        inv_freq: &[f32],
        style: RopeStyle,
        mscale: f32,
    ) {
        let half = inv_freq.len().min(MAX_ROPE_PAIRS);
        let mut cs = [(0f32, 0f32); MAX_ROPE_PAIRS];
        let cs = &mut cs[..half];
        for (t, &pos) in positions.iter().enumerate() {
            for (c, &f) in cs.iter_mut().zip(inv_freq) {
                let a = pos as f32 * f;
                *c = (a.cos() * mscale, a.sin() * mscale);
            }
            let tok = &mut x[t * n_heads * head_dim..(t + 1) * n_heads * head_dim];
            for h in tok.chunks_exact_mut(head_dim) {
                for (i, &(c, s)) in cs.iter().enumerate() {
                    let (a, b) = match style {
                        RopeStyle::Normal => (2 * i, 2 * i + 1),
                        RopeStyle::Neox => (i, i + half),
                    };
                    let (x0, x1) = (h[a], h[b]);
                    h[a] = x0 * c - x1 * s;
                    h[b] = x0 * s + x1 * c;
                }
            }
        }
    }

    fn attention(
        &self,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        n_tok: usize,
        pos0: usize,
        p: &AttnParams<'_>,
        out: &mut [f32],
    ) {
        let (hd, vd, nh, nkv) = (p.head_dim, p.v_dim, p.n_head, p.n_kv_head);
        let group = nh / nkv;
        let optr = SendPtr(out.as_mut_ptr());
        let n_jobs = n_tok * nh;
        let per = n_jobs.div_ceil(self.pool.threads());
        self.pool.run(&|i| {
            for job in (i * per).min(n_jobs)..((i + 1) * per).min(n_jobs) {
                let optr = optr;
                let (t, h) = (job / nh, job % nh);
                let kh = h / group;
                let pos = pos0 + t;
                let start = p.window.map_or(0, |w| (pos + 1).saturating_sub(w));
                let qv = &q[(t * nh + h) * hd..(t * nh + h + 1) * hd];
                // SAFETY: each (t, h) writes its own disjoint v_dim slice of `out`.
                let o =
                    unsafe { std::slice::from_raw_parts_mut(optr.0.add((t * nh + h) * vd), vd) };
                o.fill(0.0);
                // Online softmax over the cached positions; a sink starts the running
                // maximum and denominator off with its own logit and no value.
                let (mut m, mut l) = match p.sinks {
                    Some(s) => (s[h], 1f32),
                    None => (f32::NEG_INFINITY, 0f32),
                };
                for j in start..=pos {
                    let kr = j * p.k_stride + kh * hd;
                    let s = dot_f32(qv, &k[kr..kr + hd]) * p.scale;
                    let vr = j * p.v_stride + kh * vd;
                    let vv = &v[vr..vr + vd];
                    if s > m {
                        let corr = (m - s).exp();
                        l = l * corr + 1.0;
                        for (oi, &vi) in o.iter_mut().zip(vv) {
                            *oi = *oi * corr + vi;
                        }
                        m = s;
                    } else {
                        let e = (s - m).exp();
                        l += e;
                        for (oi, &vi) in o.iter_mut().zip(vv) {
                            *oi += e * vi;
                        }
                    }
                }
                let inv = 1.0 / l;
                for oi in o.iter_mut() {
                    *oi *= inv;
                }
            }
        });
    }

    fn silu_mul(&self, gate: &mut [f32], up: &[f32]) {
        for (g, u) in gate.iter_mut().zip(up) {
            *g = *g / (1.0 + (-*g).exp()) * u;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hearth_core::{DType, Storage};

    #[test]
    fn a_tokens_result_does_not_depend_on_its_batch() {
        // Random Q4_1 / Q8_0 / Q4_K weights; 7 tokens at once must equal 7 single-token calls,
        // bit for bit.
        let cpu = Cpu::new(2).unwrap();
        let mut seed = 1u64;
        let mut rnd = || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) as u32
        };
        for dt in [
            DType::Q4_0,
            DType::Q4_1,
            DType::Q8_0,
            DType::Q4_K,
            DType::Q6_K,
            DType::F16,
        ] {
            let (n_out, n_in, n_tok) = (37, 512, 7);
            let nbytes = dt.row_bytes(n_in).unwrap() * n_out;
            // random bytes, with every f16 scale made finite by clearing its exponent's top bit
            let bytes: Vec<u8> = (0..nbytes)
                .map(|i| {
                    if i % 2 == 1 {
                        (rnd() as u8) & 0x3B
                    } else {
                        rnd() as u8
                    }
                })
                .collect();
            let w = Tensor::new("w".into(), dt, vec![n_out, n_in], Storage::owned(bytes)).unwrap();
            let x: Vec<f32> = (0..n_tok * n_in)
                .map(|_| (rnd() % 2000) as f32 / 1000.0 - 1.0)
                .collect();
            let mut batch = vec![0f32; n_tok * n_out];
            cpu.matmul(&w, &x, n_tok, &mut batch).unwrap();
            for t in 0..n_tok {
                let mut one = vec![0f32; n_out];
                cpu.matmul(&w, &x[t * n_in..(t + 1) * n_in], 1, &mut one)
                    .unwrap();
                for r in 0..n_out {
                    assert_eq!(
                        one[r].to_bits(),
                        batch[t * n_out + r].to_bits(),
                        "{dt} token {t} row {r}"
                    );
                }
            }
        }
    }
}
