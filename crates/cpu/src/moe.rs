//! A MoE layer's routed experts on the CPU.
//!
//! The batch is grouped by expert: every expert that any token chose runs once over the rows
//! of the tokens that chose it, so its weights are read once per batch, and a decoded token
//! reads only the experts it was routed to. All chosen experts' gate and up projections go to
//! the pool as one parallel step, then all their down projections as another.
use crate::{Cpu, HostJob};
use hearth_core::{Buf, Error, Expert, Glu, MoeJob, Result};

/// A bias's host values.
fn host(b: &Option<Buf>) -> Result<Option<&[f32]>> {
    b.as_ref().map(|b| b.view().host()).transpose()
}

/// A MoE layer's working buffers, kept per thread between calls (a prompt's layers need tens
/// of MB; fresh ones would be faulted in and zeroed by the kernel every layer).
#[derive(Default)]
struct MoeBufs {
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

/// [`hearth_core::Backend::moe_experts`] on the CPU.
pub(crate) fn experts(cpu: &Cpu, job: MoeJob<'_>) -> Result<()> {
    let (n, k, ne) = (job.n_tok, job.n_used, job.experts.len());
    let x = job.x.host()?;
    let (ids, wts) = (job.ids.host()?, job.weights.host()?);
    let out = job.out.host()?;
    let e = x.len().checked_div(n).unwrap_or(0);
    if n == 0
        || e * n != x.len()
        || out.len() != x.len()
        || ids.len() != n * k
        || wts.len() != n * k
    {
        return Err(Error::Invalid(format!(
            "moe_experts: {n} tokens of {e} values, {} ids, {} outputs",
            ids.len(),
            out.len()
        )));
    }
    let ff = job.experts.first().map_or(0, |x| x.gate.shape[0]);
    if job
        .experts
        .iter()
        .any(|x| x.gate.shape != [ff, e] || x.up.shape != [ff, e] || x.down.shape != [e, ff])
    {
        return Err(Error::Invalid(
            "moe_experts: experts of different shapes".into(),
        ));
    }
    // which (token, weight) pairs each expert serves
    let mut per_expert: Vec<Vec<(usize, f32)>> = vec![Vec::new(); ne];
    for t in 0..n {
        for j in 0..k {
            let i = ids[t * k + j];
            if !(i >= 0.0 && (i as usize) < ne && i.fract() == 0.0) {
                return Err(Error::Invalid(format!(
                    "moe_experts: expert id {i} of {ne}"
                )));
            }
            per_expert[i as usize].push((t, wts[t * k + j]));
        }
    }
    let mut bufs = MOE_BUFS.with(|b| b.take());
    let r = run(
        cpu,
        job.experts,
        job.act,
        x,
        n,
        out,
        &per_expert,
        ff,
        &mut bufs,
    );
    MOE_BUFS.with(|b| b.set(bufs));
    r
}

#[allow(clippy::too_many_arguments)]
fn run(
    cpu: &Cpu,
    experts: &[Expert],
    act: Glu,
    x: &[f32],
    n_tok: usize,
    out: &mut [f32],
    per_expert: &[Vec<(usize, f32)>],
    ff: usize,
    bufs: &mut MoeBufs,
) -> Result<()> {
    let e = out.len() / n_tok;
    let MoeBufs {
        xs,
        gbuf,
        ubuf,
        ybuf,
    } = bufs;
    let hit: Vec<usize> = (0..per_expert.len())
        .filter(|&i| !per_expert[i].is_empty())
        .collect();
    let ms: Vec<usize> = hit.iter().map(|&i| per_expert[i].len()).collect();
    // an expert that every token chose in order (each expert of a decoded token) reads `x`
    // itself: no copy, and the experts' jobs share one quantization of it
    let whole: Vec<bool> = hit
        .iter()
        .map(|&i| {
            per_expert[i].len() == n_tok
                && per_expert[i].iter().enumerate().all(|(t, &(u, _))| t == u)
        })
        .collect();
    xs.clear();
    xs.reserve(ms.iter().sum::<usize>() * e);
    for (&i, &w) in hit.iter().zip(&whole) {
        if !w {
            for &(t, _) in &per_expert[i] {
                xs.extend_from_slice(&x[t * e..(t + 1) * e]);
            }
        }
    }
    let lens: Vec<usize> = ms.iter().map(|m| m * ff).collect();
    let total: usize = lens.iter().sum();
    sized(gbuf, total);
    sized(ubuf, total);
    {
        let gs = split_lens(gbuf, &lens);
        let us = split_lens(ubuf, &lens);
        let mut jobs = Vec::with_capacity(2 * hit.len());
        let mut xo = 0;
        for ((((&k, g), u), &m), &w) in hit.iter().zip(gs).zip(us).zip(&ms).zip(&whole) {
            let ex = &experts[k];
            let xin = if w {
                x
            } else {
                xo += m * e;
                &xs[xo - m * e..xo]
            };
            jobs.push(HostJob {
                w: &ex.gate,
                x: xin,
                n_tok: m,
                out: g,
            });
            jobs.push(HostJob {
                w: &ex.up,
                x: xin,
                n_tok: m,
                out: u,
            });
        }
        cpu.matmul_many_h(&mut jobs)?;
    }
    let mut off = 0;
    for (&k, &m) in hit.iter().zip(&ms) {
        let ex = &experts[k];
        let (g, u) = (&mut gbuf[off..off + m * ff], &mut ubuf[off..off + m * ff]);
        off += m * ff;
        add_bias(g, host(&ex.gate_b)?);
        add_bias(u, host(&ex.up_b)?);
        match act {
            Glu::Silu => cpu.silu_mul_h(g, u)?,
            act => hearth_core::glu_ref(act, g, u),
        }
    }
    let olens: Vec<usize> = ms.iter().map(|m| m * e).collect();
    sized(ybuf, olens.iter().sum());
    {
        let ys = split_lens(ybuf, &olens);
        let mut jobs = Vec::with_capacity(olens.len());
        let mut off = 0;
        for ((&k, y), &l) in hit.iter().zip(ys).zip(&lens) {
            let m = y.len() / e;
            jobs.push(HostJob {
                w: &experts[k].down,
                x: &gbuf[off..off + l],
                n_tok: m,
                out: y,
            });
            off += l;
        }
        cpu.matmul_many_h(&mut jobs)?;
    }
    out.fill(0.0);
    let mut off = 0;
    for &k in &hit {
        let db = host(&experts[k].down_b)?;
        for &(t, wt) in &per_expert[k] {
            let y = &mut ybuf[off..off + e];
            add_bias(y, db);
            for (o, &v) in out[t * e..(t + 1) * e].iter_mut().zip(y.iter()) {
                *o += wt * v;
            }
            off += e;
        }
    }
    Ok(())
}
