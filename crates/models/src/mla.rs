//! Multi-head latent attention (DeepSeek V2/V3, Kimi K2), in the absorbed form.
//!
//! The cache holds, per position, the normalised KV latent `c` (kv_lora_rank floats) and the
//! rotated rope key shared by all heads. Keys and values are never expanded: each head's
//! no-position query is mapped into latent space through its slice of `kv_b` (`q_lat =
//! W_kbᵀ q_nope`), attention runs as one kv head of width kv_lora_rank + rope over the cache,
//! and each head's latent output is mapped to its value through `W_vb`.
use crate::config::{MlaConfig, ModelConfig};
use crate::model::{Seg, sized};
use hearth_core::dsa::{DsaJob, DsaParams, score_width};
use hearth_core::{
    AttnParams, AttnSeg, Backend, Buf, Error, Pages, Result, RopeArgs, RowCopy, Tensor, View,
    ViewMut,
};

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
    /// DSA's lightning indexer, on layers that run their own (see [`crate::config::DsaConfig`]).
    pub idx: Option<Box<Indexer>>,
}

/// DeepSeek Sparse Attention's lightning indexer of one layer.
pub(crate) struct Indexer {
    /// Queries from the low-rank query `[n_head * head_dim, q_lora]`.
    pub q_b: Tensor,
    /// The key projection `[head_dim, n_embd]`, centred: the mean its LayerNorm subtracts is
    /// folded in at load (each row minus the rows' mean), so the norm is an RMSNorm.
    pub k: Tensor,
    /// The key LayerNorm's weight and bias.
    pub k_norm: Buf,
    pub k_bias: Buf,
    /// Per-head weights of each query `[n_head, n_embd]`.
    pub proj: Tensor,
}

/// The positions each query of a step attends to, chosen by the last layer that ran an
/// indexer (GLM-5.2's shared layers reuse it). Empty: every query attends to every position
/// before it (no sequence of the step is longer than top-k).
#[derive(Default)]
pub(crate) struct DsaSel {
    /// Every query's cache rows, one query after another.
    rows: Vec<u32>,
    /// Each query's (start, count) in `rows`.
    spans: Vec<(usize, usize)>,
    /// The backend's choice, on the host.
    host: Vec<f32>,
}
/// Inputs of one MLA call that do not belong to the layer.
pub(crate) struct MlaCall<'a> {
    pub cfg: &'a ModelConfig,
    pub m: &'a MlaConfig,
    pub rope: RopeArgs<'a>,
    /// Each token's cache row.
    pub rows: &'a [usize],
    /// The latent cache's type (`kv.k`; `kv.v` is the same).
    pub kv: hearth_core::KvFormat,
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
    ix: IdxBufs,
}

/// The indexer's working buffers.
#[derive(Default)]
pub(crate) struct IdxBufs {
    k: Buf,
    q: Buf,
    w: Buf,
    scores: Buf,
    sel: Buf,
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
        if let Some(ix) = &self.idx {
            v.extend([&ix.q_b, &ix.k, &ix.proj]);
        }
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
        ik_cache: &mut Buf,
        sel: &mut DsaSel,
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
        be.store_kv(kvrow.view(), cache.view_mut(), c.rows, c.kv.k, c.kv.rot)?;
        let segs: Vec<_> = segs.iter().map(|s| s.attn()).collect();
        if let Some(ix) = &self.idx {
            let qlow = match &self.q {
                MlaQ::LowRank { a, .. } => b.qa.head(n * a.shape[0]),
                MlaQ::Full(_) => {
                    return Err(Error::Unsupported("DSA without a low-rank query".into()));
                }
            };
            index(be, c, ix, h, qlow, n, &segs, ik_cache, sel, &mut b.ix)?;
        }
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
            k_stride: c.kv.k.row_words(row),
            v_stride: c.kv.k.row_words(row),
            kv: c.kv,
            scale: c.cfg.attn_scale(),
            window: None,
            sinks: None,
            pages: None,
        };
        let mut lout = sized(be, &mut b.lout, n * nh * kvl)?;
        let sparse: Vec<AttnSeg> = sel
            .spans
            .iter()
            .enumerate()
            .map(|(r, &(o, k))| AttnSeg {
                row0: r,
                n_tok: 1,
                pos0: k - 1,
                pages: Some(Pages {
                    table: &sel.rows[o..o + k],
                    page_size: 1,
                }),
            })
            .collect();
        let attn_segs = if m.dsa.is_some() && !sparse.is_empty() {
            &sparse
        } else {
            &segs
        };
        be.attention_many(
            cache.view(),
            cache.view(),
            &p,
            qa.view(),
            lout.reborrow(),
            attn_segs,
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

/// The indexer of a layer that runs its own: stores this step's indexer keys and, when
/// some sequence is longer than top-k, chooses each query's positions into `sel`
/// (otherwise empties it: every query attends to all its positions).
#[allow(clippy::too_many_arguments)]
fn index(
    be: &dyn Backend,
    c: &MlaCall,
    ix: &Indexer,
    h: View<'_>,
    qlow: View<'_>,
    n: usize,
    segs: &[AttnSeg],
    ik_cache: &mut Buf,
    sel: &mut DsaSel,
    b: &mut IdxBufs,
) -> Result<()> {
    let d =
        c.m.dsa
            .as_ref()
            .expect("an indexer comes with a DSA config");
    let (nh, di) = (d.n_head, d.head_dim);
    let r = RopeArgs {
        head_dim: di,
        style: d.rope_style,
        ..c.rope
    };
    let mut ik = sized(be, &mut b.k, n * di)?;
    be.matmul(&ix.k, h, n, ik.reborrow())?;
    be.rms_norm(ik.reborrow(), ix.k_norm.view(), 1e-6)?;
    be.add_bias(ik.reborrow(), ix.k_bias.view())?;
    be.rope(ik.reborrow(), 1, &r)?;
    be.store_rows(ik.view(), ik_cache.view_mut(), c.rows)?;
    sel.rows.clear();
    sel.spans.clear();
    if segs.iter().all(|s| s.pos0 + s.n_tok <= d.top_k) {
        return Ok(());
    }
    let mut iq = sized(be, &mut b.q, n * nh * di)?;
    be.matmul(&ix.q_b, qlow, n, iq.reborrow())?;
    be.rope(iq.reborrow(), nh, &r)?;
    let mut iw = sized(be, &mut b.w, n * nh)?;
    be.matmul(&ix.proj, h, n, iw.reborrow())?;
    let width = score_width(segs);
    let scores = sized(be, &mut b.scores, n * width)?;
    let out = sized(be, &mut b.sel, n * d.top_k)?;
    be.dsa_select(DsaJob {
        keys: ik_cache.view(),
        q: iq.view(),
        w: iw.view(),
        p: DsaParams {
            n_head: nh,
            head_dim: di,
            top_k: d.top_k,
            // relu(a·x)·b = relu(a·b·x) for a, b > 0: the head weights' 1/sqrt(n_head)
            // joins the scores' 1/sqrt(head_dim)
            scale: ((nh * di) as f32).sqrt().recip(),
        },
        segs,
        scores,
        out,
    })?;
    sel.host.resize(n * d.top_k, 0.0);
    be.download(b.sel.head(n * d.top_k), &mut sel.host)?;
    for s in segs {
        for t in 0..s.n_tok {
            let row = s.row0 + t;
            let k = (s.pos0 + t + 1).min(d.top_k);
            sel.spans.push((sel.rows.len(), k));
            for &p in &sel.host[row * d.top_k..row * d.top_k + k] {
                let p = p as usize;
                let cache_row = s.pages.map_or(p, |pg| pg.row(p));
                sel.rows
                    .push(u32::try_from(cache_row).map_err(|_| {
                        Error::Unsupported("a cache of more than 2^32 rows".into())
                    })?);
            }
        }
    }
    Ok(())
}
