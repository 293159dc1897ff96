//! Multi-head latent attention (DeepSeek V2/V3, Kimi K2), in the absorbed form.
//!
//! The cache holds, per position, the normalised KV latent `c` (kv_lora_rank floats) and the
//! rotated rope key shared by all heads. Keys and values are never expanded: each head's
//! no-position query is mapped into latent space through its slice of `kv_b` (`q_lat =
//! W_kbᵀ q_nope`), attention runs as one kv head of width kv_lora_rank + rope over the cache,
//! and each head's latent output is mapped to its value through `W_vb`.
use crate::config::{MlaConfig, ModelConfig};
use crate::model::Seg;
use hearth_core::{AttnJob, AttnParams, Backend, Result, Tensor};

pub(crate) enum MlaQ {
    Full(Tensor), // [n_head*(nope+rope), n_embd]
    LowRank {
        a: Tensor, // [q_lora, n_embd]
        norm: Vec<f32>,
        b: Tensor, // [n_head*(nope+rope), q_lora]
    },
}

pub(crate) struct Mla {
    pub q: MlaQ,
    pub kv_a: Tensor, // [kv_lora + rope, n_embd]
    pub kv_norm: Vec<f32>,
    pub k_b: Vec<Tensor>, // per head [kv_lora, nope]
    pub v_b: Vec<Tensor>, // per head [v_dim, kv_lora]
    pub wo: Tensor,       // [n_embd, n_head*v_dim]
}

/// Inputs of one MLA call that do not belong to the layer.
pub(crate) struct MlaCall<'a> {
    pub cfg: &'a ModelConfig,
    pub m: &'a MlaConfig,
    pub pos: &'a [usize],
    pub inv_freq: &'a [f32],
    pub rope_mscale: f32,
}

impl Mla {
    pub fn tensors(&self) -> Vec<&Tensor> {
        let mut v = match &self.q {
            MlaQ::Full(t) => vec![t],
            MlaQ::LowRank { a, b, .. } => vec![a, b],
        };
        v.push(&self.kv_a);
        v.extend(self.k_b.iter());
        v.extend(self.v_b.iter());
        v.push(&self.wo);
        v
    }

    /// Attention for the `n` rows of `h` at positions `c.pos`, writing this chunk's latents
    /// into `cache` (`[n_ctx, kv_lora + rope]`) and the projected output into `out` `[n, n_embd]`.
    pub fn forward(
        &self,
        be: &dyn Backend,
        c: &MlaCall,
        h: &[f32],
        n: usize,
        segs: &[Seg],
        cache: &mut [f32],
        out: &mut [f32],
    ) -> Result<()> {
        let (m, nh) = (c.m, c.cfg.n_head);
        let (kvl, rope, nope, vd) = (m.kv_lora_rank, m.rope, m.nope, m.v_dim);
        let qk = nope + rope;
        let row = kvl + rope;
        // queries
        let mut q = vec![0f32; n * nh * qk];
        match &self.q {
            MlaQ::Full(w) => be.matmul(w, h, n, &mut q)?,
            MlaQ::LowRank { a, norm, b } => {
                let mut qa = vec![0f32; n * a.shape[0]];
                be.matmul(a, h, n, &mut qa)?;
                be.rms_norm(&mut qa, norm, c.cfg.rms_eps)?;
                be.matmul(b, &qa, n, &mut q)?;
            }
        }
        // the latent and the rope key, into the cache
        let mut kva = vec![0f32; n * row];
        be.matmul(&self.kv_a, h, n, &mut kva)?;
        let mut kpe = vec![0f32; n * rope];
        for t in 0..n {
            let r = &mut kva[t * row..(t + 1) * row];
            be.rms_norm(&mut r[..kvl], &self.kv_norm, c.cfg.rms_eps)?;
            kpe[t * rope..(t + 1) * rope].copy_from_slice(&r[kvl..]);
        }
        be.rope(
            &mut kpe,
            1,
            rope,
            c.pos,
            c.inv_freq,
            c.cfg.rope.style,
            c.rope_mscale,
        )?;
        for sg in segs {
            for i in sg.row0..sg.row0 + sg.n {
                let r = sg.pages.row(sg.pos0 + i - sg.row0);
                let dst = &mut cache[r * row..(r + 1) * row];
                dst[..kvl].copy_from_slice(&kva[i * row..i * row + kvl]);
                dst[kvl..].copy_from_slice(&kpe[i * rope..(i + 1) * rope]);
            }
        }
        // absorbed queries: [n, nh, kvl + rope]
        let mut qpe = vec![0f32; n * nh * rope];
        for t in 0..n {
            for hh in 0..nh {
                let src = &q[(t * nh + hh) * qk + nope..(t * nh + hh + 1) * qk];
                qpe[(t * nh + hh) * rope..(t * nh + hh + 1) * rope].copy_from_slice(src);
            }
        }
        be.rope(
            &mut qpe,
            nh,
            rope,
            c.pos,
            c.inv_freq,
            c.cfg.rope.style,
            c.rope_mscale,
        )?;
        let mut qa = vec![0f32; n * nh * row];
        let mut qn = vec![0f32; n * nope];
        let mut ql = vec![0f32; n * kvl];
        for hh in 0..nh {
            for t in 0..n {
                let s = (t * nh + hh) * qk;
                qn[t * nope..(t + 1) * nope].copy_from_slice(&q[s..s + nope]);
            }
            be.matmul(&self.k_b[hh], &qn, n, &mut ql)?;
            for t in 0..n {
                let d = (t * nh + hh) * row;
                qa[d..d + kvl].copy_from_slice(&ql[t * kvl..(t + 1) * kvl]);
                qa[d + kvl..d + row]
                    .copy_from_slice(&qpe[(t * nh + hh) * rope..(t * nh + hh + 1) * rope]);
            }
        }
        let p = AttnParams {
            n_head: nh,
            n_kv_head: 1,
            head_dim: row,
            v_dim: kvl,
            k_stride: row,
            v_stride: row,
            scale: c.cfg.attn_scale(),
            window: None,
            sinks: None,
            pages: None,
        };
        let mut lat = vec![0f32; n * nh * kvl];
        let mut jobs = Vec::with_capacity(segs.len());
        let mut rest = &mut lat[..];
        for sg in segs {
            let (mine, tail) = rest.split_at_mut(sg.n * nh * kvl);
            rest = tail;
            jobs.push(AttnJob {
                q: &qa[sg.row0 * nh * row..(sg.row0 + sg.n) * nh * row],
                n_tok: sg.n,
                pos0: sg.pos0,
                pages: Some(sg.pages),
                out: mine,
            });
        }
        be.attention_many(cache, cache, &p, &mut jobs)?;
        // per-head values, then the output projection
        let mut att = vec![0f32; n * nh * vd];
        let mut vh = vec![0f32; n * vd];
        for hh in 0..nh {
            for t in 0..n {
                let s = (t * nh + hh) * kvl;
                ql[t * kvl..(t + 1) * kvl].copy_from_slice(&lat[s..s + kvl]);
            }
            be.matmul(&self.v_b[hh], &ql, n, &mut vh)?;
            for t in 0..n {
                att[(t * nh + hh) * vd..(t * nh + hh + 1) * vd]
                    .copy_from_slice(&vh[t * vd..(t + 1) * vd]);
            }
        }
        be.matmul(&self.wo, &att, n, out)
    }
}
