//! Multi-head latent attention (DeepSeek V2/V3, Kimi K2), in the absorbed form.
//!
//! The cache holds, per position, the normalised KV latent `c` (kv_lora_rank floats) and the
//! rotated rope key shared by all heads. Keys and values are never expanded: each head's
//! no-position query is mapped into latent space through its slice of `kv_b` (`q_lat =
//! W_kbᵀ q_nope`), attention runs as one kv head of width kv_lora_rank + rope over the cache,
//! and each head's latent output is mapped to its value through `W_vb`.
use crate::config::{MlaConfig, ModelConfig};
use crate::model::{Seg, sized};
use hearth_core::{AttnParams, Backend, Buf, Result, RopeArgs, RowCopy, Tensor, View, ViewMut};

pub(crate) enum MlaQ {
    Full(Tensor), // [n_head*(nope+rope), n_embd]
    LowRank {
        a: Tensor, // [q_lora, n_embd]
        norm: Buf,
        b: Tensor, // [n_head*(nope+rope), q_lora]
    },
}

pub(crate) struct Mla {
    pub q: MlaQ,
    pub kv_a: Tensor, // [kv_lora + rope, n_embd]
    pub kv_norm: Buf,
    pub k_b: Vec<Tensor>, // per head [kv_lora, nope]
    pub v_b: Vec<Tensor>, // per head [v_dim, kv_lora]
    pub wo: Tensor,       // [n_embd, n_head*v_dim]
}

/// Inputs of one MLA call that do not belong to the layer.
pub(crate) struct MlaCall<'a> {
    pub cfg: &'a ModelConfig,
    pub m: &'a MlaConfig,
    pub rope: RopeArgs<'a>,
    /// Each token's cache row.
    pub rows: &'a [usize],
}

/// MLA's working buffers on one device.
#[derive(Default)]
pub(crate) struct MlaBufs {
    q: Buf,
    qa: Buf,
    kva: Buf,
    lat: Buf,
    kpe: Buf,
    kvrow: Buf,
    qpe: Buf,
    qabs: Buf,
    qn: Buf,
    ql: Buf,
    lout: Buf,
    att: Buf,
    vh: Buf,
}

/// `n_rows` rows of `width` from `src[s0 + r*ss..]` to `dst[d0 + r*ds..]`.
#[allow(clippy::too_many_arguments)]
fn cols(
    be: &dyn Backend,
    src: View<'_>,
    s0: usize,
    ss: usize,
    dst: &mut ViewMut<'_>,
    d0: usize,
    ds: usize,
    n_rows: usize,
    width: usize,
) -> Result<()> {
    let (sl, dl) = (src.len(), dst.len());
    be.copy_rows(
        src.slice(s0.min(sl)..sl),
        ss,
        dst.reborrow().slice(d0.min(dl)..dl),
        ds,
        RowCopy { n_rows, width },
    )
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

    /// Attention for the `n` rows of `h` at positions `c.rope.positions`, writing this chunk's
    /// latents into `cache` (`[rows, kv_lora + rope]`) and the projected output into `out`
    /// `[n, n_embd]`.
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &self,
        be: &dyn Backend,
        c: &MlaCall,
        h: View<'_>,
        n: usize,
        segs: &[Seg],
        cache: &mut Buf,
        b: &mut MlaBufs,
        out: ViewMut<'_>,
    ) -> Result<()> {
        let (m, nh, eps) = (c.m, c.cfg.n_head, c.cfg.rms_eps);
        let (kvl, rope, nope, vd) = (m.kv_lora_rank, m.rope, m.nope, m.v_dim);
        let qk = nope + rope;
        let row = kvl + rope;
        // queries
        let mut q = sized(be, &mut b.q, n * nh * qk)?;
        match &self.q {
            MlaQ::Full(w) => be.matmul(w, h, n, q.reborrow())?,
            MlaQ::LowRank { a, norm, b: wb } => {
                let mut qa = sized(be, &mut b.qa, n * a.shape[0])?;
                be.matmul(a, h, n, qa.reborrow())?;
                be.rms_norm(qa.reborrow(), norm.view(), eps)?;
                be.matmul(wb, qa.view(), n, q.reborrow())?;
            }
        }
        // the normalised latent and the rotated rope key, into the cache
        let mut kva = sized(be, &mut b.kva, n * row)?;
        be.matmul(&self.kv_a, h, n, kva.reborrow())?;
        let mut lat = sized(be, &mut b.lat, n * kvl)?;
        cols(be, kva.view(), 0, row, &mut lat, 0, kvl, n, kvl)?;
        be.rms_norm(lat.reborrow(), self.kv_norm.view(), eps)?;
        let mut kpe = sized(be, &mut b.kpe, n * rope)?;
        cols(be, kva.view(), kvl, row, &mut kpe, 0, rope, n, rope)?;
        let r1 = RopeArgs {
            head_dim: rope,
            ..c.rope
        };
        be.rope(kpe.reborrow(), 1, &r1)?;
        let mut kvrow = sized(be, &mut b.kvrow, n * row)?;
        cols(be, lat.view(), 0, kvl, &mut kvrow, 0, row, n, kvl)?;
        cols(be, kpe.view(), 0, rope, &mut kvrow, kvl, row, n, rope)?;
        be.store_rows(kvrow.view(), cache.view_mut(), c.rows)?;
        // absorbed queries: [n, nh, kvl + rope]
        let mut qpe = sized(be, &mut b.qpe, n * nh * rope)?;
        cols(be, q.view(), nope, qk, &mut qpe, 0, rope, n * nh, rope)?;
        be.rope(qpe.reborrow(), nh, &r1)?;
        let mut qa = sized(be, &mut b.qabs, n * nh * row)?;
        let mut qn = sized(be, &mut b.qn, n * nope)?;
        let mut ql = sized(be, &mut b.ql, n * kvl)?;
        for hh in 0..nh {
            cols(be, q.view(), hh * qk, nh * qk, &mut qn, 0, nope, n, nope)?;
            be.matmul(&self.k_b[hh], qn.view(), n, ql.reborrow())?;
            cols(be, ql.view(), 0, kvl, &mut qa, hh * row, nh * row, n, kvl)?;
            let qpe = qpe.view();
            cols(
                be,
                qpe,
                hh * rope,
                nh * rope,
                &mut qa,
                hh * row + kvl,
                nh * row,
                n,
                rope,
            )?;
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
        let mut lout = sized(be, &mut b.lout, n * nh * kvl)?;
        let segs: Vec<_> = segs.iter().map(|s| s.attn()).collect();
        be.attention_many(
            cache.view(),
            cache.view(),
            &p,
            qa.view(),
            lout.reborrow(),
            &segs,
        )?;
        // per-head values, then the output projection
        let mut att = sized(be, &mut b.att, n * nh * vd)?;
        let mut vh = sized(be, &mut b.vh, n * vd)?;
        for hh in 0..nh {
            cols(be, lout.view(), hh * kvl, nh * kvl, &mut ql, 0, kvl, n, kvl)?;
            be.matmul(&self.v_b[hh], ql.view(), n, vh.reborrow())?;
            cols(be, vh.view(), 0, vd, &mut att, hh * vd, nh * vd, n, vd)?;
        }
        be.matmul(&self.wo, att.view(), n, out)
    }
}
