//! Mixture-of-experts feed-forward layers: routing (softmax or sigmoid scores, correction
//! biases, group-limited choice, renormalisation, scaling), the routed experts, and shared
//! experts with an optional sigmoid gate.
//!
//! A batch is grouped by expert: every expert that any token chose runs once over the rows of
//! the tokens that chose it, so its weights are read once per batch, and a decoded token
//! reads only the experts it was routed to.
use crate::config::{ExpertAct, Gating, GroupScore, MoeConfig};
use hearth_core::{Backend, MatJob, Result, Tensor};

/// A SwiGLU MLP (dense layers, shared experts).
pub(crate) struct Mlp {
    pub gate: Tensor, // [n_ff, n_embd]
    pub up: Tensor,   // [n_ff, n_embd]
    pub down: Tensor, // [n_embd, n_ff]
}

impl Mlp {
    pub fn tensors(&self) -> [&Tensor; 3] {
        [&self.gate, &self.up, &self.down]
    }

    /// `out = down(silu(gate(x)) * up(x))` for `n` rows; `g` and `u` are reused scratch.
    pub fn forward(
        &self,
        be: &dyn Backend,
        x: &[f32],
        n: usize,
        out: &mut [f32],
        g: &mut Vec<f32>,
        u: &mut Vec<f32>,
    ) -> Result<()> {
        let ff = self.gate.shape[0];
        g.resize(n * ff, 0.0);
        u.resize(n * ff, 0.0);
        let (g, u) = (&mut g[..n * ff], &mut u[..n * ff]);
        be.matmul_many(&mut [
            MatJob {
                w: &self.gate,
                x,
                n_tok: n,
                out: &mut *g,
            },
            MatJob {
                w: &self.up,
                x,
                n_tok: n,
                out: &mut *u,
            },
        ])?;
        be.silu_mul(g, u)?;
        be.matmul(&self.down, g, n, out)
    }
}

/// One routed expert.
pub(crate) struct Expert {
    pub gate: Tensor,
    pub up: Tensor,
    pub down: Tensor,
    pub gate_b: Option<Vec<f32>>,
    pub up_b: Option<Vec<f32>>,
    pub down_b: Option<Vec<f32>>,
}

/// An MoE layer's weights.
pub(crate) struct Moe {
    pub router: Tensor, // [n_expert, n_embd]
    pub router_b: Option<Vec<f32>>,
    /// Score-correction bias: added to the scores for choosing only (DeepSeek V3 `noaux_tc`).
    pub score_b: Option<Vec<f32>>,
    pub experts: Vec<Expert>,
    pub shared: Option<Mlp>,
    /// Qwen2-MoE: the shared expert's output is scaled by sigmoid(gate · x).
    pub shared_gate: Option<Tensor>, // [1, n_embd]
}

/// The experts a token goes to and their weights, in the order chosen.
pub(crate) fn route(
    cfg: &MoeConfig,
    logits: &[f32],
    score_b: Option<&[f32]>,
    ids: &mut Vec<usize>,
    w: &mut Vec<f32>,
) {
    let n = logits.len();
    let scores: Vec<f32> = match cfg.gating {
        Gating::Softmax => {
            let m = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let e: Vec<f32> = logits.iter().map(|&l| (l - m).exp()).collect();
            let s: f32 = e.iter().sum();
            e.iter().map(|&v| v / s).collect()
        }
        Gating::Sigmoid => logits.iter().map(|&l| 1.0 / (1.0 + (-l).exp())).collect(),
    };
    let mut choice: Vec<f32> = match score_b {
        Some(b) => scores.iter().zip(b).map(|(s, b)| s + b).collect(),
        None => scores.clone(),
    };
    if cfg.n_group > 1 && cfg.topk_group < cfg.n_group {
        let per = n / cfg.n_group;
        let gscore: Vec<f32> = choice
            .chunks(per)
            .map(|g| match cfg.group_score {
                GroupScore::Max => g.iter().copied().fold(f32::NEG_INFINITY, f32::max),
                GroupScore::Top2Sum => {
                    let (mut a, mut b) = (f32::NEG_INFINITY, f32::NEG_INFINITY);
                    for &v in g {
                        if v > a {
                            b = a;
                            a = v;
                        } else if v > b {
                            b = v;
                        }
                    }
                    if per == 1 { a } else { a + b }
                }
            })
            .collect();
        let keep = top_k(&gscore, cfg.topk_group);
        for (gi, g) in choice.chunks_mut(per).enumerate() {
            if !keep.contains(&gi) {
                g.fill(f32::NEG_INFINITY);
            }
        }
    }
    ids.clear();
    ids.extend(top_k(&choice, cfg.n_used));
    w.clear();
    w.extend(ids.iter().map(|&i| scores[i]));
    if cfg.norm {
        let s: f32 = w.iter().sum();
        let s = if cfg.gating == Gating::Sigmoid {
            s + 1e-20
        } else {
            s
        };
        w.iter_mut().for_each(|v| *v /= s);
    }
    if cfg.scale != 1.0 {
        w.iter_mut().for_each(|v| *v *= cfg.scale);
    }
}

/// Indices of the `k` largest values, largest first (ties: lower index first).
fn top_k(v: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..v.len()).collect();
    idx.sort_by(|&a, &b| v[b].total_cmp(&v[a]).then(a.cmp(&b)));
    idx.truncate(k);
    idx
}

/// Consecutive pieces of `s` with the given lengths.
fn split_lens_ref<'a>(mut s: &'a [f32], lens: &[usize]) -> Vec<&'a [f32]> {
    let mut v = Vec::with_capacity(lens.len());
    for &l in lens {
        let (a, b) = s.split_at(l);
        v.push(a);
        s = b;
    }
    v
}

/// Consecutive mutable pieces of `s` with the given lengths.
fn split_lens<'a>(mut s: &'a mut [f32], lens: &[usize]) -> Vec<&'a mut [f32]> {
    let mut v = Vec::with_capacity(lens.len());
    for &l in lens {
        let (a, b) = s.split_at_mut(l);
        v.push(a);
        s = b;
    }
    v
}

fn add_bias(x: &mut [f32], b: Option<&[f32]>) {
    if let Some(b) = b {
        for row in x.chunks_exact_mut(b.len()) {
            for (a, c) in row.iter_mut().zip(b) {
                *a += c;
            }
        }
    }
}

/// A MoE layer's working buffers, kept per thread between calls.
#[derive(Default)]
struct MoeBufs {
    logits: Vec<f32>,
    xs: Vec<f32>,
    gbuf: Vec<f32>,
    ubuf: Vec<f32>,
    ybuf: Vec<f32>,
}

thread_local! {
    static MOE_BUFS: std::cell::Cell<MoeBufs> = std::cell::Cell::new(MoeBufs::default());
}

/// `v` as `n` zeros, reusing its allocation.
fn sized(v: &mut Vec<f32>, n: usize) {
    v.clear();
    v.resize(n, 0.0);
}

impl Moe {
    /// `out[n, n_embd] = Σ_chosen w · expert(x) (+ shared expert)` for the `n` rows of `x`.
    pub fn forward(
        &self,
        be: &dyn Backend,
        cfg: &MoeConfig,
        x: &[f32],
        n: usize,
        out: &mut [f32],
    ) -> Result<()> {
        let e = x.len() / n;
        let ne = cfg.n_expert;
        // buffers reused from call to call (a prompt's layers need tens of MB; fresh ones
        // would be faulted in and zeroed by the kernel every layer)
        let mut bufs = MOE_BUFS.with(|b| b.take());
        let MoeBufs {
            logits,
            xs,
            gbuf,
            ubuf,
            ybuf,
        } = &mut bufs;
        sized(logits, n * ne);
        be.matmul(&self.router, x, n, logits)?;
        add_bias(logits, self.router_b.as_deref());
        // which (token, weight) pairs each expert serves
        let mut per_expert: Vec<Vec<(usize, f32)>> = vec![Vec::new(); ne];
        let (mut ids, mut w) = (Vec::new(), Vec::new());
        for t in 0..n {
            route(
                cfg,
                &logits[t * ne..(t + 1) * ne],
                self.score_b.as_deref(),
                &mut ids,
                &mut w,
            );
            for (&i, &wi) in ids.iter().zip(&w) {
                per_expert[i].push((t, wi));
            }
        }
        // Each chosen expert runs once over the rows of its tokens; all experts' gate and up
        // projections (and the shared expert's) go to the backend as one batch, then all
        // down projections as another, so a layer costs two parallel steps.
        let hit: Vec<usize> = (0..ne).filter(|&i| !per_expert[i].is_empty()).collect();
        let ms: Vec<usize> = hit.iter().map(|&i| per_expert[i].len()).collect();
        let ff = self.experts.first().map_or(0, |x| x.gate.shape[0]);
        xs.clear();
        xs.reserve(ms.iter().sum::<usize>() * e);
        for &i in &hit {
            for &(t, _) in &per_expert[i] {
                xs.extend_from_slice(&x[t * e..(t + 1) * e]);
            }
        }
        let sff = self.shared.as_ref().map_or(0, |s| s.gate.shape[0]);
        let mut lens: Vec<usize> = ms.iter().map(|m| m * ff).collect();
        if self.shared.is_some() {
            lens.push(n * sff);
        }
        let total: usize = lens.iter().sum();
        sized(gbuf, total);
        sized(ubuf, total);
        let mut sgate = vec![0f32; n];
        {
            let gs = split_lens(gbuf, &lens);
            let us = split_lens(ubuf, &lens);
            let mut jobs = Vec::with_capacity(2 * hit.len());
            let xins = split_lens_ref(xs, &ms.iter().map(|m| m * e).collect::<Vec<_>>());
            for ((((&k, g), u), &m), xin) in hit.iter().zip(gs).zip(us).zip(&ms).zip(xins) {
                let ex = &self.experts[k];
                jobs.push(MatJob {
                    w: &ex.gate,
                    x: xin,
                    n_tok: m,
                    out: g,
                });
                jobs.push(MatJob {
                    w: &ex.up,
                    x: xin,
                    n_tok: m,
                    out: u,
                });
            }
            be.matmul_many(&mut jobs)?;
        }
        if let Some(sh) = &self.shared {
            let (g, u) = (&mut gbuf[total - n * sff..], &mut ubuf[total - n * sff..]);
            let mut jobs = vec![
                MatJob {
                    w: &sh.gate,
                    x,
                    n_tok: n,
                    out: g,
                },
                MatJob {
                    w: &sh.up,
                    x,
                    n_tok: n,
                    out: u,
                },
            ];
            if let Some(sg) = &self.shared_gate {
                jobs.push(MatJob {
                    w: sg,
                    x,
                    n_tok: n,
                    out: &mut sgate,
                });
            }
            be.matmul_many(&mut jobs)?;
        }
        let mut off = 0;
        for (&k, &m) in hit.iter().zip(&ms) {
            let ex = &self.experts[k];
            let (g, u) = (&mut gbuf[off..off + m * ff], &mut ubuf[off..off + m * ff]);
            off += m * ff;
            add_bias(g, ex.gate_b.as_deref());
            add_bias(u, ex.up_b.as_deref());
            match cfg.act {
                ExpertAct::Silu => be.silu_mul(g, u)?,
                ExpertAct::ClampedSwiglu { alpha, limit } => {
                    for (gv, &uv) in g.iter_mut().zip(u.iter()) {
                        let gc = gv.min(limit);
                        let uc = uv.clamp(-limit, limit);
                        *gv = gc / (1.0 + (-alpha * gc).exp()) * (uc + 1.0);
                    }
                }
            }
        }
        if self.shared.is_some() {
            be.silu_mul(&mut gbuf[off..], &ubuf[off..])?;
        }
        let mut olens: Vec<usize> = ms.iter().map(|m| m * e).collect();
        if self.shared.is_some() {
            olens.push(n * e);
        }
        sized(ybuf, olens.iter().sum());
        {
            let ys = split_lens(ybuf, &olens);
            let mut jobs = Vec::with_capacity(olens.len());
            let mut off = 0;
            let downs = hit
                .iter()
                .map(|&k| &self.experts[k].down)
                .chain(self.shared.as_ref().map(|s| &s.down));
            for ((w, y), &l) in downs.zip(ys).zip(&lens) {
                let m = y.len() / e;
                jobs.push(MatJob {
                    w,
                    x: &gbuf[off..off + l],
                    n_tok: m,
                    out: y,
                });
                off += l;
            }
            be.matmul_many(&mut jobs)?;
        }
        out.fill(0.0);
        let mut off = 0;
        for &k in &hit {
            let ex = &self.experts[k];
            for &(t, wt) in &per_expert[k] {
                let y = &mut ybuf[off..off + e];
                add_bias(y, ex.down_b.as_deref());
                for (o, &v) in out[t * e..(t + 1) * e].iter_mut().zip(y.iter()) {
                    *o += wt * v;
                }
                off += e;
            }
        }
        if self.shared.is_some() {
            if self.shared_gate.is_some() {
                sgate
                    .iter_mut()
                    .for_each(|g| *g = 1.0 / (1.0 + (-*g).exp()));
            } else {
                sgate.fill(1.0);
            }
            for t in 0..n {
                let y = &ybuf[off + t * e..off + (t + 1) * e];
                for (o, &v) in out[t * e..(t + 1) * e].iter_mut().zip(y) {
                    *o += sgate[t] * v;
                }
            }
        }
        MOE_BUFS.with(|b| b.set(bufs));
        Ok(())
    }

    /// Every matrix, for type checks.
    pub fn tensors(&self) -> Vec<&Tensor> {
        let mut v = vec![&self.router];
        for ex in &self.experts {
            v.extend([&ex.gate, &ex.up, &ex.down]);
        }
        if let Some(s) = &self.shared {
            v.extend(s.tensors());
        }
        v.extend(self.shared_gate.iter());
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(gating: Gating) -> MoeConfig {
        MoeConfig {
            n_expert: 8,
            n_used: 2,
            gating,
            norm: true,
            scale: 1.0,
            n_group: 4,
            topk_group: 1,
            group_score: GroupScore::Top2Sum,
            act: ExpertAct::Silu,
        }
    }

    #[test]
    fn group_limited_routing_stays_inside_the_best_group() {
        // group 2 (experts 4, 5) has the best pair sum although expert 0 is the single best
        let logits = [3.0, -5.0, 1.0, 1.0, 2.5, 2.5, 0.0, 0.0];
        let (mut ids, mut w) = (vec![], vec![]);
        route(&cfg(Gating::Sigmoid), &logits, None, &mut ids, &mut w);
        assert_eq!(ids, vec![4, 5]);
        assert!((w.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        // with max scoring, expert 0's group wins, and only expert 0 and 1 are eligible
        let mut c = cfg(Gating::Softmax);
        c.group_score = GroupScore::Max;
        route(&c, &logits, None, &mut ids, &mut w);
        assert_eq!(ids, vec![0, 1]);
    }

    #[test]
    fn correction_bias_changes_the_choice_not_the_weight() {
        let logits = [0.0, 1.0, 0.5, 0.2, 0.0, 0.0, 0.0, 0.0];
        let mut c = cfg(Gating::Sigmoid);
        c.n_group = 1;
        c.norm = false;
        let bias = [2.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0];
        let (mut ids, mut w) = (vec![], vec![]);
        route(&c, &logits, Some(&bias), &mut ids, &mut w);
        assert_eq!(ids, vec![0, 1]);
        assert!(
            (w[0] - 0.5).abs() < 1e-6,
            "weight is sigmoid(0) without the bias"
        );
    }
}
