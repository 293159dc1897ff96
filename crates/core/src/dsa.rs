//! DeepSeek Sparse Attention's selection (DeepSeek-V3.2, GLM-5): a lightning indexer scores
//! every cached position for each query, and the query attends only to the `top_k` best.
//!
//! The score of position `j` for a query is `Σ_h w[h] · relu(scale · q_h · k_j)` over the
//! indexer's heads, with one indexer key `k_j` per position (kept in the layer's cache beside
//! the latent) and per-query head weights `w`. A query at position `p` sees positions `0..=p`;
//! when there are at most `top_k` of them it attends to all, otherwise to the `top_k` with the
//! highest scores. Ties are broken towards the lower position, and scores are ordered as
//! [`f32::total_cmp`] orders them, so the choice is exact and every backend makes the same one.

use crate::backend::AttnSeg;
use crate::{Error, Result, View, ViewMut};

/// The indexer's shape.
#[derive(Clone, Copy, Debug)]
pub struct DsaParams {
    /// Indexer heads.
    pub n_head: usize,
    /// Width of one indexer head (and key).
    pub head_dim: usize,
    /// Positions each query keeps.
    pub top_k: usize,
    /// Scale inside the ReLU.
    pub scale: f32,
}

/// One selection call over a batch, for [`crate::Backend::dsa_select`].
pub struct DsaJob<'a> {
    /// The layer's indexer keys: position `j` of a segment is row `pages.row(j)` (row `j`
    /// without pages), `head_dim` floats each.
    pub keys: View<'a>,
    /// Indexer queries `[n_tok, n_head, head_dim]`.
    pub q: View<'a>,
    /// Head weights `[n_tok, n_head]`.
    pub w: View<'a>,
    /// Heads, widths, top-k.
    pub p: DsaParams,
    /// Each sequence's rows of the batch, positions and pages.
    pub segs: &'a [AttnSeg<'a>],
    /// Scratch for the scores, `[n_tok, width]` where `width` is the longest segment's
    /// `pos0 + n_tok`.
    pub scores: ViewMut<'a>,
    /// The choice `[n_tok, top_k]`: each query's positions in increasing order,
    /// `min(top_k, pos + 1)` of them, then `-1`s.
    pub out: ViewMut<'a>,
}

/// The scratch width [`DsaJob::scores`] needs per query for `segs`.
pub fn score_width(segs: &[AttnSeg]) -> usize {
    segs.iter().map(|s| s.pos0 + s.n_tok).max().unwrap_or(0)
}

/// Checks a job's sizes against its buffers' (`keys`, `q`, `w`, `scores`, `out` lengths):
/// returns the number of query rows.
pub fn check(j: &DsaParams, segs: &[AttnSeg], lens: [usize; 5]) -> Result<usize> {
    let [kn, qn, wn, sn, on] = lens;
    let bad = |m: String| Err(Error::Invalid(format!("dsa_select: {m}")));
    if j.n_head == 0 || j.head_dim == 0 || j.top_k == 0 {
        return bad("no heads, an empty head or top_k 0".into());
    }
    let n: usize = segs.iter().map(|s| s.n_tok).sum();
    let width = score_width(segs);
    if width >= 1 << 24 {
        return bad(format!("{width} positions (positions are stored as f32)"));
    }
    let need = |a: usize, b: usize| a.checked_mul(b);
    if need(n, j.n_head * j.head_dim) != Some(qn)
        || need(n, j.n_head) != Some(wn)
        || need(n, j.top_k).is_none_or(|x| x > on)
        || need(n, width).is_none_or(|x| x > sn)
    {
        return bad(format!(
            "{n} queries of {} heads of {} do not match the buffers",
            j.n_head, j.head_dim
        ));
    }
    let mut next = 0;
    for s in segs {
        if s.row0 != next {
            return bad("segments out of order".into());
        }
        next += s.n_tok;
        if let Some(p) = s.pages {
            let end = s.pos0 + s.n_tok;
            if p.page_size == 0 || p.table.len() * p.page_size < end {
                return bad("a page table shorter than its sequence".into());
            }
        }
        let last = s.pos0 + s.n_tok;
        let rows = match s.pages {
            Some(p) => (0..last.div_ceil(p.page_size.max(1)))
                .map(|i| (p.table[i] as usize + 1) * p.page_size)
                .max()
                .unwrap_or(0),
            None => last,
        };
        if rows.checked_mul(j.head_dim).is_none_or(|x| x > kn) {
            return bad("a key row outside the cache".into());
        }
    }
    Ok(n)
}

/// `a · b` in eight interleaved partial sums (a fixed order that compilers vectorise).
#[inline]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ac, ar) = a.split_at(a.len() / 8 * 8);
    let (bc, br) = b.split_at(ac.len());
    for (x, y) in ac.chunks_exact(8).zip(bc.chunks_exact(8)) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    for (l, (x, y)) in ar.iter().zip(br).enumerate() {
        acc[l] += x * y;
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]))
}

/// One query's score of the key `k`.
#[inline]
pub fn score(q: &[f32], w: &[f32], k: &[f32], head_dim: usize, scale: f32) -> f32 {
    let mut s = 0.0f32;
    for (h, &wh) in w.iter().enumerate() {
        let qh = &q[h * head_dim..(h + 1) * head_dim];
        let d = dot(qh, &k[..head_dim]) * scale;
        s += wh * if d > 0.0 { d } else { 0.0 };
    }
    s
}

/// The choice of query `t` of segment `sg` (row `sg.row0 + t` of the batch's `q` and `w`) into
/// `out` (`top_k` values), scoring into `sc` (at least its position + 1 values).
#[allow(clippy::too_many_arguments)]
pub fn select_row(
    keys: &[f32],
    q: &[f32],
    w: &[f32],
    sg: &AttnSeg,
    t: usize,
    j: &DsaParams,
    sc: &mut [f32],
    out: &mut [f32],
) {
    let (r, pos) = (sg.row0 + t, sg.pos0 + t);
    let (q, w) = (
        &q[r * j.n_head * j.head_dim..(r + 1) * j.n_head * j.head_dim],
        &w[r * j.n_head..(r + 1) * j.n_head],
    );
    let cnt = pos + 1;
    out.fill(-1.0);
    if cnt <= j.top_k {
        for (i, o) in out.iter_mut().take(cnt).enumerate() {
            *o = i as f32;
        }
        return;
    }
    let d = j.head_dim;
    for (p, s) in sc.iter_mut().take(cnt).enumerate() {
        let row = sg.pages.map_or(p, |pg| pg.row(p));
        *s = score(q, w, &keys[row * d..(row + 1) * d], d, j.scale);
    }
    let mut idx: Vec<u32> = (0..cnt as u32).collect();
    let better = |a: &u32, b: &u32| sc[*b as usize].total_cmp(&sc[*a as usize]).then(a.cmp(b));
    idx.select_nth_unstable_by(j.top_k - 1, better);
    idx.truncate(j.top_k);
    idx.sort_unstable();
    for (o, &p) in out.iter_mut().zip(&idx) {
        *o = p as f32;
    }
}

/// The reference selection (see the module docs).
pub fn dsa_select_ref(
    keys: &[f32],
    q: &[f32],
    w: &[f32],
    scores: &mut [f32],
    out: &mut [f32],
    j: &DsaParams,
    segs: &[AttnSeg],
) -> Result<()> {
    check(
        j,
        segs,
        [keys.len(), q.len(), w.len(), scores.len(), out.len()],
    )?;
    let width = score_width(segs);
    for sg in segs {
        for t in 0..sg.n_tok {
            let r = sg.row0 + t;
            let sc = &mut scores[r * width..(r + 1) * width];
            let o = &mut out[r * j.top_k..(r + 1) * j.top_k];
            select_row(keys, q, w, sg, t, j, sc, o);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Pages;

    fn job(top_k: usize) -> DsaParams {
        DsaParams {
            n_head: 1,
            head_dim: 1,
            top_k,
            scale: 1.0,
        }
    }

    #[test]
    fn picks_the_best_scores_breaking_ties_towards_earlier_positions() {
        // one head of width 1: score(j) = w * relu(q * k_j)
        let keys = [3.0, -1.0, 5.0, 3.0, 0.5, 3.0];
        let segs = [AttnSeg {
            row0: 0,
            n_tok: 2,
            pos0: 4,
            pages: None,
        }];
        let (q, w) = ([1.0, 1.0], [1.0, 1.0]);
        let j = job(3);
        let (mut sc, mut out) = (vec![0.0; 12], vec![0.0; 6]);
        dsa_select_ref(&keys, &q, &w, &mut sc, &mut out, &j, &segs).unwrap();
        // position 4 sees 0..=4: 5, then the 3s at 0 and 3
        assert_eq!(&out[..3], &[0.0, 2.0, 3.0]);
        // position 5 sees a third 3 at 5, which loses the tie
        assert_eq!(&out[3..], &[0.0, 2.0, 3.0]);
    }

    #[test]
    fn short_sequences_keep_every_position_and_pages_map_rows() {
        // positions 0..3 live in rows 4..7 (page 1 of size 4)
        let keys = [0.0, 0.0, 0.0, 0.0, 1.0, 9.0, 2.0, 8.0];
        let table = [1u32];
        let pages = Some(Pages {
            table: &table,
            page_size: 4,
        });
        let segs = [AttnSeg {
            row0: 0,
            n_tok: 2,
            pos0: 2,
            pages,
        }];
        let (q, w) = ([1.0, 1.0], [1.0, 1.0]);
        let j = job(3);
        let (mut sc, mut out) = (vec![0.0; 8], vec![0.0; 6]);
        dsa_select_ref(&keys, &q, &w, &mut sc, &mut out, &j, &segs).unwrap();
        assert_eq!(&out[..3], &[0.0, 1.0, 2.0]);
        assert_eq!(&out[3..], &[1.0, 2.0, 3.0]);
        // a key outside the cache is an error, not a panic
        let short = [0.0; 5];

        assert!(dsa_select_ref(&short, &q, &w, &mut sc, &mut out, &j, &segs).is_err());
    }
}
