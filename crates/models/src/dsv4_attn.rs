//! DeepSeek-V4's attention (transformers 5.23 `DeepseekV4Attention` and its compressors):
//! low-rank queries (per-head unweighted RMSNorm), one shared K=V head, partial interleaved
//! RoPE on the trailing channels, a sliding window, one learned sink logit per head, and the
//! output's rope channels rotated back to the query's position before a grouped low-rank
//! output projection. Compressed layers add entries that each pool a window of source tokens
//! (a per-channel softmax over gates plus a learned position bias, then RMSNorm and RoPE at
//! the window's first position): HCA over non-overlapping windows of `rate_hca`, attended
//! whole; CSA over windows of `rate_csa` that overlap the previous one, of which a lightning
//! indexer (its own compressor at `index_head_dim`) keeps the `index_topk` best per query.
//!
//! The per-sequence state of a layer: one slot of floats (see [`Layout`]) with the last
//! `sliding_window` K=V rows and the compressors' last source rows, and the compressed entries
//! in the sequence's pages (see [`entry_row`]).
use crate::dsv4::{Kind, V4Cfg, mm, rms_rows, rope_tail};
use hearth_core::{Backend, Buf, Error, Pages, Result, Tensor};

/// One sequence's rows of a batch.
pub(crate) struct V4Seg<'a> {
    pub row0: usize,
    pub n: usize,
    pub pos0: usize,
    pub slot: usize,
    pub pages: Pages<'a>,
}

/// One layer's state in a pool: the slots (`size` floats each) and the paged compressed
/// entries of the compressor (`head_dim` wide) and of the indexer (`index_head_dim` wide).
pub(crate) struct V4State<'a> {
    pub slots: &'a mut Buf,
    pub size: usize,
    pub ent: &'a mut Buf,
    pub ient: &'a mut Buf,
}

/// Rows of compressed entries a page of `page_size` positions holds at `rate`.
pub(crate) fn rows_per_page(page_size: usize, rate: usize) -> usize {
    if rate == 0 {
        0
    } else {
        page_size.div_ceil(rate)
    }
}

/// The row of entry `w` (windows of `rate`): in the page of the window's last position, so
/// that it is written while that page is the sequence's own and shared only with its
/// tokens; distinct last positions of a page are `rate` apart, so their rows differ.
pub(crate) fn entry_row(pages: &Pages<'_>, rate: usize, w: usize) -> usize {
    let (e, ps) = (w * rate + rate - 1, pages.page_size);
    pages.table[e / ps] as usize * rows_per_page(ps, rate) + (e % ps) / rate
}

/// A compressor's weights: `kv`, `gate [w, n_embd]` with `w = 2 * dim` for overlapping
/// windows (the previous window's share, then the current one's) or `dim`.
pub(crate) struct Compressor {
    pub kv: Tensor,
    pub gate: Tensor,
    pub ape: Vec<f32>, // [rate, w]
    pub norm: Vec<f32>,
    pub dim: usize,
    pub rate: usize,
    pub overlap: bool,
}

impl Compressor {
    fn width(&self) -> usize {
        if self.overlap { 2 * self.dim } else { self.dim }
    }
    /// Source rows it keeps: the current window, and the previous one when they overlap.
    fn src_rows(&self) -> usize {
        if self.overlap {
            2 * self.rate
        } else {
            self.rate
        }
    }
}

pub(crate) struct V4Indexer {
    pub comp: Compressor,
    pub q_b: Tensor,  // [idx_heads * idx_dim, q_lora]
    pub proj: Tensor, // [idx_heads, n_embd]
}

pub(crate) struct V4Attn {
    pub q_a: Tensor, // [q_lora, n_embd]
    pub q_norm: Vec<f32>,
    pub q_b: Tensor, // [n_head * head_dim, q_lora]
    pub kv: Tensor,  // [head_dim, n_embd]
    pub kv_norm: Vec<f32>,
    pub o_a: Tensor, // [o_groups * o_lora, n_head * head_dim / o_groups]
    pub o_b: Tensor, // [n_embd, o_groups * o_lora]
    pub sinks: Vec<f32>,
    pub comp: Option<Compressor>,
    pub idx: Option<V4Indexer>,
}

/// Where a layer's state lies in its slot (offsets in floats): the window of K=V rows, then
/// the compressor's source rows, then the indexer's.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Layout {
    pub comp_src: usize,
    pub idx_src: usize,
    pub size: usize,
}

impl Layout {
    pub fn new(c: &V4Cfg, kind: Kind) -> Layout {
        let rate = c.rate(kind);
        let ov = kind == Kind::Csa;
        let src = |dim: usize| {
            let w = if ov { 2 * dim } else { dim };
            (if ov { 2 } else { 1 }) * rate * 2 * w
        };
        let comp_src = c.window * c.head_dim;
        let idx_src = comp_src + src(c.head_dim);
        let size = idx_src + if ov { src(c.idx_dim) } else { 0 };
        Layout {
            comp_src,
            idx_src,
            size,
        }
    }

    /// Floats per position of context (the compressed entries) and fixed floats per
    /// sequence (the window and the compressors' source rows).
    pub fn per_token_and_fixed(c: &V4Cfg, kind: Kind) -> (f64, usize) {
        let per = match kind {
            Kind::Sliding => 0.0,
            Kind::Hca => c.head_dim as f64 / c.rate_hca as f64,
            Kind::Csa => (c.head_dim + c.idx_dim) as f64 / c.rate_csa as f64,
        };
        (per, Layout::new(c, kind).size)
    }
}

/// Feed source position `p`'s projections (`kv`, `gate`, each `width` wide) to a compressor
/// whose source rows start at `st[src..]`; when `p` closes a window, the window's entry is
/// made (pooled, normalised, rotated to the window's first position) and appended to `ents`.
#[allow(clippy::too_many_arguments)]
fn compress_push(
    cp: &Compressor,
    c: &V4Cfg,
    st: &mut [f32],
    src: usize,
    ents: &mut Vec<f32>,
    p: usize,
    kv: &[f32],
    gate: &[f32],
) -> Result<()> {
    let (w, d, r) = (cp.width(), cp.dim, cp.rate);
    let row = |q: usize| src + (q % cp.src_rows()) * 2 * w;
    let o = row(p);
    st[o..o + w].copy_from_slice(kv);
    st[o + w..o + 2 * w].copy_from_slice(gate);
    if !(p + 1).is_multiple_of(r) {
        return Ok(());
    }
    let win = p / r;
    if ents.len() != win * d {
        return Err(Error::Invalid(format!(
            "deepseek_v4: position {p} closes window {win} after {} entries",
            ents.len() / d
        )));
    }
    let mut out = vec![0f32; d];
    // (window, offset of the half) pairs that pool into this entry
    let mut parts = vec![(win, if cp.overlap { d } else { 0 })];
    if cp.overlap && win > 0 {
        parts.push((win - 1, 0));
    }
    let mut g = Vec::with_capacity(2 * r);
    for (ch, o) in out.iter_mut().enumerate() {
        g.clear();
        for &(wi, half) in &parts {
            for j in 0..r {
                let b = row(wi * r + j);
                g.push((
                    st[b + w + half + ch] + cp.ape[j * w + half + ch],
                    st[b + half + ch],
                ));
            }
        }
        let mx = g.iter().fold(f32::NEG_INFINITY, |a, x| a.max(x.0));
        let z: f32 = g.iter().map(|x| (x.0 - mx).exp()).sum();
        *o = g.iter().map(|x| (x.0 - mx).exp() / z * x.1).sum();
    }
    rms_rows(&mut out, d, &cp.norm, c.eps);
    rope_tail(&mut out, &c.inv_comp, win * r, 1.0);
    ents.extend_from_slice(&out);
    Ok(())
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

impl V4Attn {
    pub fn tensors(&self) -> Vec<&Tensor> {
        let mut v = vec![&self.q_a, &self.q_b, &self.kv, &self.o_a, &self.o_b];
        if let Some(cp) = &self.comp {
            v.extend([&cp.kv, &cp.gate]);
        }
        if let Some(ix) = &self.idx {
            v.extend([&ix.comp.kv, &ix.comp.gate, &ix.q_b, &ix.proj]);
        }
        v
    }

    pub fn vector_params(&self) -> usize {
        let mut n = self.q_norm.len() + self.kv_norm.len() + self.sinks.len();
        for cp in self.comp.iter().chain(self.idx.as_ref().map(|i| &i.comp)) {
            n += cp.ape.len() + cp.norm.len();
        }
        n
    }

    /// `h [n, n_embd]` (normalised) → the attention output `[n, n_embd]`; `state` is the
    /// layer's buffer of slots of `size` floats.
    pub fn forward(
        &self,
        be: &dyn Backend,
        c: &V4Cfg,
        kind: Kind,
        h: &[f32],
        segs: &[V4Seg],
        state: &mut V4State,
    ) -> Result<Vec<f32>> {
        let n = h.len() / c.n_embd;
        let (hd, nh) = (c.head_dim, c.n_head);
        let inv = if kind == Kind::Sliding {
            &c.inv_main
        } else {
            &c.inv_comp
        };
        let mut qa = mm(be, &self.q_a, h, n)?;
        rms_rows(&mut qa, c.q_lora, &self.q_norm, c.eps);
        let mut q = mm(be, &self.q_b, &qa, n)?;
        rms_rows(&mut q, hd, &[], c.eps);
        let mut kv = mm(be, &self.kv, h, n)?;
        rms_rows(&mut kv, hd, &self.kv_norm, c.eps);
        let pos_of = |row: usize| {
            segs.iter()
                .find(|s| row >= s.row0 && row < s.row0 + s.n)
                .map_or(0, |s| s.pos0 + row - s.row0)
        };
        for t in 0..n {
            let p = pos_of(t);
            for hh in 0..nh {
                rope_tail(
                    &mut q[(t * nh + hh) * hd..(t * nh + hh + 1) * hd],
                    inv,
                    p,
                    1.0,
                );
            }
            rope_tail(&mut kv[t * hd..(t + 1) * hd], inv, p, 1.0);
        }
        let proj = |cp: &Compressor| -> Result<(Vec<f32>, Vec<f32>)> {
            Ok((mm(be, &cp.kv, h, n)?, mm(be, &cp.gate, h, n)?))
        };
        let ckv = self.comp.as_ref().map(proj).transpose()?;
        let (ikv, iq, iw) = match &self.idx {
            None => (None, Vec::new(), Vec::new()),
            Some(ix) => {
                let mut iq = mm(be, &ix.q_b, &qa, n)?;
                for t in 0..n {
                    let p = pos_of(t);
                    for hh in 0..c.idx_heads {
                        let r = &mut iq[(t * c.idx_heads + hh) * c.idx_dim..][..c.idx_dim];
                        rope_tail(r, &c.inv_comp, p, 1.0);
                    }
                }
                (Some(proj(&ix.comp)?), iq, mm(be, &ix.proj, h, n)?)
            }
        };
        let lay = Layout::new(c, kind);
        let size = state.size;
        if lay.size != size {
            return Err(Error::Invalid(
                "deepseek_v4: a state slot of the wrong size".into(),
            ));
        }
        let (rate, id) = (c.rate(kind), c.idx_dim);
        let mut att = vec![0f32; n * nh * hd];
        let mut st = vec![0f32; size];
        let scale = 1.0 / (hd as f32).sqrt();
        let (mut ents, mut iets) = (Vec::new(), Vec::new());
        for sg in segs {
            let off = sg.slot * size;
            be.download(state.slots.view().slice(off..off + size), &mut st)?;
            // the entries of the windows closed before this step, from the pages
            let done0 = sg.pos0.checked_div(rate).unwrap_or(0);
            ents.resize(done0 * hd, 0.0);
            iets.resize(if self.idx.is_some() { done0 * id } else { 0 }, 0.0);
            for w in 0..done0 {
                let r = entry_row(&sg.pages, rate, w);
                be.download(
                    state.ent.view().slice(r * hd..(r + 1) * hd),
                    &mut ents[w * hd..][..hd],
                )?;
                if self.idx.is_some() {
                    be.download(
                        state.ient.view().slice(r * id..(r + 1) * id),
                        &mut iets[w * id..][..id],
                    )?;
                }
            }
            for i in 0..sg.n {
                let (t, p) = (sg.row0 + i, sg.pos0 + i);
                let ro = (p % c.window) * hd;
                st[ro..ro + hd].copy_from_slice(&kv[t * hd..(t + 1) * hd]);
                if let (Some(cp), Some((ck, cg))) = (&self.comp, &ckv) {
                    let w = cp.width();
                    let r = t * w..(t + 1) * w;
                    compress_push(
                        cp,
                        c,
                        &mut st,
                        lay.comp_src,
                        &mut ents,
                        p,
                        &ck[r.clone()],
                        &cg[r],
                    )?;
                }
                if let (Some(ix), Some((ck, cg))) = (&self.idx, &ikv) {
                    let w = ix.comp.width();
                    let r = t * w..(t + 1) * w;
                    compress_push(
                        &ix.comp,
                        c,
                        &mut st,
                        lay.idx_src,
                        &mut iets,
                        p,
                        &ck[r.clone()],
                        &cg[r],
                    )?;
                }
                // the compressed entries this query attends to
                let ready = match kind {
                    Kind::Sliding => 0,
                    _ => (p + 1) / c.rate(kind),
                };
                let chosen: Vec<usize> = match kind {
                    Kind::Csa if ready > c.idx_topk => {
                        let (id, ih) = (c.idx_dim, c.idx_heads);
                        let (ss, ws) = (1.0 / (id as f32).sqrt(), 1.0 / (ih as f32).sqrt());
                        let sc: Vec<f32> = (0..ready)
                            .map(|w| {
                                let k = &iets[w * id..][..id];
                                (0..ih)
                                    .map(|hh| {
                                        let qh = &iq[(t * ih + hh) * id..][..id];
                                        dot(qh, k).max(0.0) * ss * (iw[t * ih + hh] * ws)
                                    })
                                    .sum()
                            })
                            .collect();
                        let mut idx: Vec<usize> = (0..ready).collect();
                        idx.sort_by(|&a, &b| sc[b].total_cmp(&sc[a]));
                        idx.truncate(c.idx_topk);
                        idx
                    }
                    _ => (0..ready).collect(),
                };
                let lo = (p + 1).saturating_sub(c.window);
                let keys: Vec<&[f32]> = (lo..=p)
                    .map(|j| &st[(j % c.window) * hd..][..hd])
                    .chain(chosen.iter().map(|&w| &ents[w * hd..][..hd]))
                    .collect();
                for hh in 0..nh {
                    let qh = &q[(t * nh + hh) * hd..][..hd];
                    let lg: Vec<f32> = keys.iter().map(|k| dot(qh, k) * scale).collect();
                    let sink = self.sinks[hh];
                    let mx = lg.iter().fold(sink, |a, &b| a.max(b));
                    let z: f32 = lg.iter().map(|v| (v - mx).exp()).sum::<f32>() + (sink - mx).exp();
                    let o = &mut att[(t * nh + hh) * hd..][..hd];
                    for (k, l) in keys.iter().zip(&lg) {
                        let w = (l - mx).exp() / z;
                        o.iter_mut().zip(k.iter()).for_each(|(o, v)| *o += w * v);
                    }
                    rope_tail(o, inv, p, -1.0);
                }
            }
            be.upload(&st, state.slots.view_mut().slice(off..off + size))?;
            // the windows this step closed, into the pages
            for w in done0..ents.len() / hd {
                let r = entry_row(&sg.pages, rate, w);
                be.upload(
                    &ents[w * hd..][..hd],
                    state.ent.view_mut().slice(r * hd..(r + 1) * hd),
                )?;
                if self.idx.is_some() {
                    be.upload(
                        &iets[w * id..][..id],
                        state.ient.view_mut().slice(r * id..(r + 1) * id),
                    )?;
                }
            }
        }
        // grouped low-rank output: each group of heads through its own block of o_a
        let (g, ol) = (c.o_groups, c.o_lora);
        let ig = nh * hd / g;
        let y = mm(be, &self.o_a, &att, n * g)?;
        debug_assert_eq!(att.len(), n * g * ig);
        let mut z = vec![0f32; n * g * ol];
        for t in 0..n {
            for gi in 0..g {
                let src = &y[(t * g + gi) * g * ol + gi * ol..][..ol];
                z[(t * g + gi) * ol..][..ol].copy_from_slice(src);
            }
        }
        mm(be, &self.o_b, &z, n)
    }
}
