//! Attention over a (paged) KV cache with an online softmax, for a tile of queries that share
//! one key/value head (the query heads of a GQA group, for one or more tokens).
//!
//! Positions are taken in chunks of [`C`] that start at multiples of `C` (absolute positions):
//! a query forms its scores for the part of a chunk it sees, raises its running maximum once
//! per chunk, exponentiates the chunk's scores together and adds their values. The chunks a
//! query visits depend only on its own position range, so its result is the same whatever
//! other queries share its tile; tiling only keeps a chunk's keys and values in L1 while every
//! query of the tile uses them.
#![allow(unsafe_op_in_unsafe_fn)]

use hearth_core::{AttnParams, Pages};

/// Positions per softmax chunk.
pub(crate) const C: usize = 32;

/// One query's state: its vector, the positions it attends to (`lo..=hi`), and its running
/// maximum, denominator and (unnormalized) output.
pub(crate) struct Query<'a> {
    pub q: &'a [f32],
    pub lo: usize,
    pub hi: usize,
    pub m: f32,
    pub l: f32,
    pub o: &'a mut [f32],
}

/// The vector primitives the chunk loop needs.
pub(crate) trait Ops {
    /// `out[i] = q · keys[koff(i)..][..q.len()]` for each `i`
    unsafe fn scores<F: Fn(usize) -> usize>(q: &[f32], keys: &[f32], koff: F, out: &mut [f32]);
    /// `s[i] = exp(s[i] - m)` for all `C` entries
    unsafe fn exp_shift(s: &mut [f32; C], m: f32);
    /// `o *= c`
    unsafe fn scale(o: &mut [f32], c: f32);
    /// `exp(x)` as `exp_shift` computes it
    unsafe fn exp1(x: f32) -> f32;
    /// `o += e[i] * vals[voff(i)..]` for each `i` in order
    unsafe fn axpy<F: Fn(usize) -> usize>(o: &mut [f32], e: &[f32], voff: F, vals: &[f32]);
    /// `s[..n] *= scale` and `s[n..] = -inf`; returns the maximum of `s[..n]` (-inf for none)
    #[inline(always)]
    unsafe fn scale_max(s: &mut [f32; C], n: usize, scale: f32) -> f32 {
        let mut cmax = f32::NEG_INFINITY;
        for si in &mut s[..n] {
            *si *= scale;
            cmax = cmax.max(*si);
        }
        s[n..].fill(f32::NEG_INFINITY);
        cmax
    }
    /// [`Ops::exp_shift`], then the sum of the weights at the chunk's positions
    /// `off..off + n` by [`chunk_sum`]'s tree (`s[n..]` are 0 after the shift)
    #[inline(always)]
    unsafe fn weights(s: &mut [f32; C], m: f32, off: usize, n: usize) -> f32 {
        shifted_weights::<Self>(s, m, off, n)
    }
    /// [`Ops::scores`] for two queries over the same keys, each score with exactly the
    /// arithmetic of `scores` (the keys are read once for both)
    unsafe fn scores2<F: Fn(usize) -> usize>(
        q: [&[f32]; 2],
        keys: &[f32],
        koff: F,
        out: [&mut [f32]; 2],
    ) {
        let [o0, o1] = out;
        Self::scores(q[0], keys, &koff, o0);
        Self::scores(q[1], keys, &koff, o1);
    }
    /// [`Ops::axpy`] for two outputs over the same values, each with exactly the arithmetic
    /// of `axpy`
    unsafe fn axpy2<F: Fn(usize) -> usize>(
        o: [&mut [f32]; 2],
        e: [&[f32]; 2],
        voff: F,
        vals: &[f32],
    ) {
        let [o0, o1] = o;
        Self::axpy(o0, e[0], &voff, vals);
        Self::axpy(o1, e[1], &voff, vals);
    }
}

/// Attend every query of `qs` to key/value head `kh`, then normalize their outputs.
pub(crate) fn attend_group(
    k: &[f32],
    v: &[f32],
    p: &AttnParams<'_>,
    pages: Option<Pages<'_>>,
    kh: usize,
    qs: &mut [Query<'_>],
) {
    #[cfg(target_arch = "x86_64")]
    if hearth_quant::has_avx2() {
        if qs.len() >= 2 && x86::wide_fits(p) && x86::avx512() {
            // SAFETY: the CPU has AVX-512 F (and AVX2, FMA); the rows read are checked
            // against the slices.
            unsafe { x86::attend_avx512(k, v, p, pages, kh, qs) };
            return;
        }
        // SAFETY: the CPU has AVX2 and FMA; every slice is indexed with bounds checks.
        unsafe { attend_avx2(&mut F32Rows { k, v, p, pages, kh }, p, qs) };
        return;
    }
    // SAFETY: the scalar ops use only safe indexing.
    unsafe { body::<Scalar, _>(&mut F32Rows { k, v, p, pages, kh }, p, qs) }
}

/// [`attend_group`] over caches of another type than f32 (see `attn_q.rs`): the same chunk
/// loop, over each chunk's rows as `src` converts them.
pub(crate) fn attend_group_with<S: Chunks>(src: &mut S, p: &AttnParams<'_>, qs: &mut [Query<'_>]) {
    #[cfg(target_arch = "x86_64")]
    if hearth_quant::has_avx2() {
        // SAFETY: the CPU has AVX2 and FMA; every slice is indexed with bounds checks.
        unsafe { attend_avx2(src, p, qs) };
        return;
    }
    // SAFETY: the scalar ops use only safe indexing.
    unsafe { body::<Scalar, _>(src, p, qs) }
}

/// Where the chunk loop reads a chunk's keys and values.
pub(crate) trait Chunks {
    /// Make positions `lo..=hi` of the chunk that starts at `c0` readable: set `rows[j - c0]`
    /// for each and return the keys, the values, their row strides and this head's offset
    /// in a row: position `j`'s key is `keys[rows[j - c0] * k_stride + k_off..]`.
    fn load(&mut self, c0: usize, lo: usize, hi: usize, rows: &mut [usize; C]) -> Rows<'_>;
}

/// What [`Chunks::load`] returns.
pub(crate) struct Rows<'a> {
    pub k: &'a [f32],
    pub v: &'a [f32],
    pub k_stride: usize,
    pub v_stride: usize,
    pub k_off: usize,
    pub v_off: usize,
}

/// An f32 cache, read in place.
struct F32Rows<'a> {
    k: &'a [f32],
    v: &'a [f32],
    p: &'a AttnParams<'a>,
    pages: Option<Pages<'a>>,
    kh: usize,
}

impl Chunks for F32Rows<'_> {
    #[inline(always)]
    fn load(&mut self, c0: usize, lo: usize, hi: usize, rows: &mut [usize; C]) -> Rows<'_> {
        for j in lo..=hi {
            rows[j - c0] = self.pages.map_or(j, |pg| pg.row(j));
        }
        Rows {
            k: self.k,
            v: self.v,
            k_stride: self.p.k_stride,
            v_stride: self.p.v_stride,
            k_off: self.kh * self.p.head_dim,
            v_off: self.kh * self.p.v_dim,
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn attend_avx2<S: Chunks>(src: &mut S, p: &AttnParams<'_>, qs: &mut [Query<'_>]) {
    body::<x86::Avx2, S>(src, p, qs)
}

#[inline(always)]
unsafe fn body<O: Ops, S: Chunks>(src: &mut S, p: &AttnParams<'_>, qs: &mut [Query<'_>]) {
    let (Some(lo_all), Some(hi_all)) =
        (qs.iter().map(|q| q.lo).min(), qs.iter().map(|q| q.hi).max())
    else {
        return;
    };
    let mut rows = [0usize; C];
    let mut s = [0f32; C];
    let mut s1 = [0f32; C];
    for c in lo_all / C..=hi_all / C {
        let c0 = c * C;
        let Rows {
            k,
            v,
            k_stride,
            v_stride,
            k_off,
            v_off,
        } = src.load(c0, lo_all.max(c0), hi_all.min(c0 + C - 1), &mut rows);
        let range = |q: &Query<'_>| (q.lo.max(c0), q.hi.min(c0 + C - 1));
        let mut qi = 0;
        while qi < qs.len() {
            let (a, b) = range(&qs[qi]);
            if a > b {
                qi += 1;
                continue;
            }
            let n = b - a + 1;
            let rs = &rows[a - c0..=b - c0];
            let koff = |i: usize| rs[i] * k_stride + k_off;
            let voff = |i: usize| rs[i] * v_stride + v_off;
            // two queries that see the same positions of this chunk share its reads (each
            // query's arithmetic is the same either way)
            if qi + 1 < qs.len() && range(&qs[qi + 1]) == (a, b) {
                let (x, y) = qs.split_at_mut(qi + 1);
                let (q0, q1) = (&mut x[qi], &mut y[0]);
                O::scores2([q0.q, q1.q], k, koff, [&mut s[..n], &mut s1[..n]]);
                update::<O>(q0, &mut s, n, a - c0, p.scale);
                update::<O>(q1, &mut s1, n, a - c0, p.scale);
                O::axpy2([&mut *q0.o, &mut *q1.o], [&s[..n], &s1[..n]], voff, v);
                qi += 2;
                continue;
            }
            let q = &mut qs[qi];
            O::scores(q.q, k, koff, &mut s[..n]);
            update::<O>(q, &mut s, n, a - c0, p.scale);
            O::axpy(q.o, &s[..n], voff, v);
            qi += 1;
        }
    }
    for q in qs.iter_mut() {
        let inv = 1.0 / q.l;
        O::scale(q.o, inv);
    }
}

/// The sum of a chunk's 32 weights (`t[i]`: position `c0 + i` of the chunk, 0 where the
/// query does not look) by a fixed tree: `t[i] + t[16 + i]`, then halves again down to one
/// (16, 8, 4, 2, 1 values), which every path computes the same way (the AVX-512 path as
/// register halves). A tree, not a running sum: 5 dependent adds instead of 32.
#[inline(always)]
pub(crate) fn chunk_sum(t: &[f32; C]) -> f32 {
    let mut w = [0f32; 16];
    for i in 0..16 {
        w[i] = t[i] + t[16 + i];
    }
    let mut w8 = [0f32; 8];
    for i in 0..8 {
        w8[i] = w[i] + w[8 + i];
    }
    let w4 = [w8[0] + w8[4], w8[1] + w8[5], w8[2] + w8[6], w8[3] + w8[7]];
    let w2 = [w4[0] + w4[2], w4[1] + w4[3]];
    w2[0] + w2[1]
}

/// [`Ops::weights`] through memory: the weights copied to their positions in the chunk, then
/// summed by [`chunk_sum`].
#[inline(always)]
unsafe fn shifted_weights<O: Ops + ?Sized>(s: &mut [f32; C], m: f32, off: usize, n: usize) -> f32 {
    O::exp_shift(s, m);
    let mut t = [0f32; C];
    t[off..off + n].copy_from_slice(&s[..n]);
    chunk_sum(&t)
}

/// A query's running maximum and denominator after a chunk's `n` raw scores `s` (of the
/// chunk's positions `off..off + n`), which become the chunk's weights. A function, not a
/// closure: inlined into the caller's target-feature context.
#[inline(always)]
unsafe fn update<O: Ops>(q: &mut Query<'_>, s: &mut [f32; C], n: usize, off: usize, scale: f32) {
    let cmax = O::scale_max(s, n, scale);
    if cmax > q.m {
        let corr = O::exp1(q.m - cmax);
        q.l *= corr;
        O::scale(q.o, corr);
        q.m = cmax;
    }
    q.l += O::weights(s, q.m, off, n);
}

/// Portable arithmetic (and the reference for the AVX2 one).
struct Scalar;

impl Ops for Scalar {
    unsafe fn scores<F: Fn(usize) -> usize>(q: &[f32], keys: &[f32], koff: F, out: &mut [f32]) {
        for (i, o) in out.iter_mut().enumerate() {
            let ko = koff(i);
            *o = q
                .iter()
                .zip(&keys[ko..ko + q.len()])
                .map(|(a, b)| a * b)
                .sum();
        }
    }
    unsafe fn exp_shift(s: &mut [f32; C], m: f32) {
        for x in s.iter_mut() {
            *x = (*x - m).exp();
        }
    }
    unsafe fn scale(o: &mut [f32], c: f32) {
        for x in o.iter_mut() {
            *x *= c;
        }
    }
    unsafe fn exp1(x: f32) -> f32 {
        x.exp()
    }
    unsafe fn axpy<F: Fn(usize) -> usize>(o: &mut [f32], e: &[f32], voff: F, vals: &[f32]) {
        let vd = o.len();
        for (i, &ei) in e.iter().enumerate() {
            let vo = voff(i);
            for (x, &vv) in o.iter_mut().zip(&vals[vo..vo + vd]) {
                *x += ei * vv;
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod x86 {
    use super::{C, Ops, Scalar};
    use std::arch::x86_64::*;

    pub(super) struct Avx2;

    // The constants of `exp8` and `exp16` (one source, so that the two give the same bits):
    // inputs below EXP_LO give 0; ln 2 split so that n * LN2_HI is exact; the Taylor
    // coefficients of exp from 1/7! down, in Horner order.
    const EXP_LO: f32 = -87.3;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    const EXP_P7: f32 = 1.0 / 5040.0;
    const EXP_POLY: [f32; 7] = [
        1.0 / 720.0,
        1.0 / 120.0,
        1.0 / 24.0,
        1.0 / 6.0,
        0.5,
        1.0,
        1.0,
    ];

    /// `exp(x)` for 8 lanes: `x = n ln2 + r` with |r| <= ln2/2, `e^r` by its Taylor series to
    /// degree 7 (relative error below 1e-8 before rounding), times `2^n` through the exponent
    /// bits. Lanes below -87.3 (including -inf) give 0; inputs must stay below 88.7 (attention
    /// passes at most 0, SwiGLU caps its argument at 88).
    #[inline(always)]
    pub(crate) unsafe fn exp8(x: __m256) -> __m256 {
        let lo = _mm256_set1_ps(EXP_LO);
        let tiny = _mm256_cmp_ps(x, lo, _CMP_LT_OQ);
        let x = _mm256_max_ps(x, lo);
        let n = _mm256_round_ps(
            _mm256_mul_ps(x, _mm256_set1_ps(std::f32::consts::LOG2_E)),
            _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC,
        );
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_HI), x);
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_LO), r);
        let mut p = _mm256_set1_ps(EXP_P7);
        for c in EXP_POLY {
            p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
        }
        let e = _mm256_slli_epi32(
            _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)),
            23,
        );
        let y = _mm256_mul_ps(p, _mm256_castsi256_ps(e));
        _mm256_andnot_ps(tiny, y)
    }

    /// Whether the AVX-512 build of attention runs: the CPU has AVX-512 F and the integer
    /// kernels' AVX-512 build is in use (`hearth_quant::x86::vnni`, which `HEARTH_NO_AVX512`
    /// turns off).
    pub(crate) fn avx512() -> bool {
        hearth_quant::x86::vnni()
    }

    /// Whether [`attend_avx512`] takes these heads: key and value widths in whole 512-bit
    /// registers, at most 256 wide.
    pub(crate) fn wide_fits(p: &hearth_core::AttnParams<'_>) -> bool {
        p.head_dim % 16 == 0 && p.v_dim % 16 == 0 && p.head_dim <= 256 && p.v_dim <= 256
    }

    /// [`exp8`] on 16 lanes: the same operations, so each lane gets the same bits.
    #[inline(always)]
    unsafe fn exp16(x: __m512) -> __m512 {
        let lo = _mm512_set1_ps(EXP_LO);
        let tiny = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(x, lo);
        let x = _mm512_max_ps(x, lo);
        let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E)),
        );
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_HI), x);
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_LO), r);
        let mut p = _mm512_set1_ps(EXP_P7);
        for c in EXP_POLY {
            p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
        }
        let e = _mm512_slli_epi32::<23>(_mm512_add_epi32(
            _mm512_cvtps_epi32(n),
            _mm512_set1_epi32(127),
        ));
        let y = _mm512_mul_ps(p, _mm512_castsi512_ps(e));
        _mm512_maskz_mov_ps(!tiny, y)
    }

    // the 16 x 16 float transpose of the AVX-512 matmul kernels
    use hearth_quant::x86::avx512::transpose16;

    /// `body::<Avx2>` for a tile of two or more queries, with 512-bit registers and the same
    /// arithmetic for every query, so each result has the bits `body` gives it:
    ///
    /// - Each chunk's keys are transposed once for the tile (`kt[d][i]`: dimension `d` of the
    ///   chunk's position `i`), so that 16 positions' scores form in the lanes of a register:
    ///   the eight accumulators `S_k` (`k` < 8) are `Avx2::scores`' eight lanes (an FMA chain
    ///   over dimensions `8c + k`), added as `((S0 + S1) + (S2 + S3)) + ((S4 + S5) + (S6 +
    ///   S7))`, as its horizontal sums add them.
    /// - The softmax update is `update`'s: scaled scores, the chunk maximum (exact in any
    ///   order), `exp16` (`exp8`'s operations), the weights summed in position order.
    /// - Values are added as `slab` adds them: per output element one FMA per position, in
    ///   position order, 16 elements per register.
    #[target_feature(enable = "avx2,fma,avx512f")]
    pub(super) unsafe fn attend_avx512(
        k: &[f32],
        v: &[f32],
        p: &hearth_core::AttnParams<'_>,
        pages: Option<hearth_core::Pages<'_>>,
        kh: usize,
        qs: &mut [super::Query<'_>],
    ) {
        let (hd, vd) = (p.head_dim, p.v_dim);
        let (Some(lo_all), Some(hi_all)) =
            (qs.iter().map(|q| q.lo).min(), qs.iter().map(|q| q.hi).max())
        else {
            return;
        };
        // every row this tile reads lies within the caches
        let row_of = |j: usize| pages.map_or(j, |pg| pg.row(j));
        for j in lo_all..=hi_all {
            let r = row_of(j);
            assert!(
                r * p.k_stride + (kh + 1) * hd <= k.len()
                    && r * p.v_stride + (kh + 1) * vd <= v.len()
            );
        }
        // keys transposed: kt[d * C + i]
        let mut kt = vec![0f32; hd * C];
        // the chunk's weights per query
        let mut ew = vec![[0f32; C]; qs.len()];
        let mut seen: Vec<Option<(usize, usize)>> = vec![None; qs.len()];
        let mut rows = [0usize; C];
        let (kp, vp) = (k.as_ptr(), v.as_ptr());
        // each query's output, written through these until the final normalization
        let optr: Vec<*mut f32> = qs.iter_mut().map(|q| q.o.as_mut_ptr()).collect();
        for c in lo_all / C..=hi_all / C {
            let c0 = c * C;
            let (j0, j1) = (lo_all.max(c0), hi_all.min(c0 + C - 1));
            for j in j0..=j1 {
                rows[j - c0] = row_of(j);
            }
            // transpose the chunk's keys, 16 positions x 16 dimensions at a time (positions
            // outside j0..=j1 as zeros: their scores are never used)
            for h in 0..2 {
                if c0 + 16 * h > j1 || c0 + 16 * h + 15 < j0 {
                    continue;
                }
                for d0 in (0..hd).step_by(16) {
                    let mut r = [_mm512_setzero_ps(); 16];
                    for (i, r) in r.iter_mut().enumerate() {
                        let j = c0 + 16 * h + i;
                        if (j0..=j1).contains(&j) {
                            *r = _mm512_loadu_ps(kp.add(rows[j - c0] * p.k_stride + kh * hd + d0));
                        }
                    }
                    let t = transpose16(&r);
                    for (dd, t) in t.iter().enumerate() {
                        _mm512_storeu_ps(kt.as_mut_ptr().add((d0 + dd) * C + 16 * h), *t);
                    }
                }
            }
            // the range of the chunk each query sees
            for (qi, q) in qs.iter().enumerate() {
                let (a, b) = (q.lo.max(c0), q.hi.min(c0 + C - 1));
                // (an `if`, not `bool::then` with a closure: that was a call per query)
                seen[qi] = if a <= b { Some((a - c0, b - c0)) } else { None };
            }
            // scores and the softmax update, up to three queries at a time where they see the
            // same positions (the keys' loads then serve them all)
            let mut qi = 0;
            while qi < qs.len() {
                let Some((sa, sb)) = seen[qi] else {
                    qi += 1;
                    continue;
                };
                // up to three queries that see the same positions
                let mut nq = 1;
                while nq < 3 && qi + nq < qs.len() && seen[qi + nq] == Some((sa, sb)) {
                    nq += 1;
                }
                let mut sv = [[_mm512_set1_ps(f32::NEG_INFINITY); 2]; 3];
                let qp: [*const f32; 3] =
                    std::array::from_fn(|k| qs[qi + k.min(nq - 1)].q.as_ptr());
                for h in 0..2 {
                    if sa >= 16 * (h + 1) || sb < 16 * h {
                        continue;
                    }
                    let kh = kt.as_ptr().add(16 * h);
                    let s: [__m512; 3] = match nq {
                        3 => scores_wide::<3>(qp, kh, hd),
                        2 => {
                            let [a, b] = scores_wide::<2>([qp[0], qp[1]], kh, hd);
                            [a, b, b]
                        }
                        _ => {
                            let [a] = scores_wide::<1>([qp[0]], kh, hd);
                            [a, a, a]
                        }
                    };
                    // lanes sa..=sb of this half
                    let lo = sa.saturating_sub(16 * h).min(16);
                    let hi = (sb + 1 - 16 * h).min(16);
                    let m: u16 = (((1u32 << hi) - 1) & !((1u32 << lo) - 1)) as u16;
                    for (x, s) in sv.iter_mut().zip(s) {
                        x[h] =
                            _mm512_mask_mov_ps(x[h], m, _mm512_mul_ps(s, _mm512_set1_ps(p.scale)));
                    }
                }
                for (k, sv) in sv.iter().enumerate().take(nq) {
                    let q = &mut qs[qi + k];
                    let cmax = _mm512_reduce_max_ps(_mm512_max_ps(sv[0], sv[1]));
                    if cmax > q.m {
                        let corr = _mm512_cvtss_f32(exp16(_mm512_set1_ps(q.m - cmax)));
                        q.l *= corr;
                        let cv = _mm512_set1_ps(corr);
                        for d in (0..vd).step_by(16) {
                            let op = optr[qi + k].add(d);
                            _mm512_storeu_ps(op, _mm512_mul_ps(_mm512_loadu_ps(op), cv));
                        }
                        q.m = cmax;
                    }
                    let mv = _mm512_set1_ps(q.m);
                    let e0 = exp16(_mm512_sub_ps(sv[0], mv));
                    let e1 = exp16(_mm512_sub_ps(sv[1], mv));
                    let e = &mut ew[qi + k];
                    _mm512_storeu_ps(e.as_mut_ptr(), e0);
                    _mm512_storeu_ps(e.as_mut_ptr().add(16), e1);
                    // `chunk_sum` on registers: lanes outside sa..=sb are exp(-inf) = 0
                    let w = _mm512_add_ps(e0, e1);
                    let w8 = _mm256_add_ps(
                        _mm512_castps512_ps256(w),
                        _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(w))),
                    );
                    let w4 = _mm_add_ps(_mm256_castps256_ps128(w8), _mm256_extractf128_ps::<1>(w8));
                    let w2 = _mm_add_ps(w4, _mm_movehl_ps(w4, w4));
                    q.l += _mm_cvtss_f32(_mm_add_ss(w2, _mm_shuffle_ps::<1>(w2, w2)));
                }
                qi += nq;
            }
            // values: up to four queries at a time where they see the same positions
            let mut qi = 0;
            while qi < qs.len() {
                let Some((sa, sb)) = seen[qi] else {
                    qi += 1;
                    continue;
                };
                let mut n = 1;
                while n < 4 && qi + n < qs.len() && seen[qi + n] == Some((sa, sb)) {
                    n += 1;
                }
                let voff = |i: usize| rows[i] * p.v_stride + kh * vd;
                let row = |i: usize| vp.add(voff(sa + i));
                let e = |k: usize| &ew[qi + k][sa..=sb];
                let o = |k: usize| optr[qi + k];
                match n {
                    4 => values_wide::<4>(
                        [o(0), o(1), o(2), o(3)],
                        [e(0), e(1), e(2), e(3)],
                        row,
                        vd,
                    ),
                    3 => values_wide::<3>([o(0), o(1), o(2)], [e(0), e(1), e(2)], row, vd),
                    2 => values_wide::<2>([o(0), o(1)], [e(0), e(1)], row, vd),
                    _ => values_wide::<1>([o(0)], [e(0)], row, vd),
                }
                qi += n;
            }
        }
        for q in qs.iter_mut() {
            let inv = 1.0 / q.l;
            Avx2::scale(q.o, inv);
        }
    }

    /// Scores of `Q` queries (`hd` floats at `q[k]`) against 16 positions of the transposed
    /// keys at `kt` (`kt[d * C + i]`): `Avx2::scores`' eight FMA chains (dimensions `8c + k`)
    /// per position, added as `((S0 + S1) + (S2 + S3)) + ((S4 + S5) + (S6 + S7))`; each key
    /// load serves the `Q` queries.
    #[inline(always)]
    unsafe fn scores_wide<const Q: usize>(
        q: [*const f32; Q],
        kt: *const f32,
        hd: usize,
    ) -> [__m512; Q] {
        let mut acc = [[_mm512_setzero_ps(); 8]; Q];
        for cc in 0..hd / 8 {
            for kk in 0..8 {
                let d = 8 * cc + kk;
                let kv = _mm512_loadu_ps(kt.add(d * C));
                for j in 0..Q {
                    acc[j][kk] = _mm512_fmadd_ps(_mm512_set1_ps(*q[j].add(d)), kv, acc[j][kk]);
                }
            }
        }
        let mut out = [_mm512_setzero_ps(); Q];
        for j in 0..Q {
            let a = &acc[j];
            out[j] = _mm512_add_ps(
                _mm512_add_ps(_mm512_add_ps(a[0], a[1]), _mm512_add_ps(a[2], a[3])),
                _mm512_add_ps(_mm512_add_ps(a[4], a[5]), _mm512_add_ps(a[6], a[7])),
            );
        }
        out
    }

    /// `Q` outputs (`vd` floats each at `o[q]`) plus `e[q][i]` times the value row at
    /// `row(i)`, position by position, in slabs of up to 8 registers (one FMA per element and
    /// position, as `slab`).
    #[inline(always)]
    unsafe fn values_wide<const Q: usize>(
        o: [*mut f32; Q],
        e: [&[f32]; Q],
        row: impl Fn(usize) -> *const f32,
        vd: usize,
    ) {
        let n = e[0].len();
        // at most 16 accumulators
        let wmax = if Q > 2 { 4 } else { 8 };
        let mut d0 = 0;
        while d0 < vd {
            let w = ((vd - d0) / 16).min(wmax);
            macro_rules! slab {
                ($w:literal) => {{
                    let mut acc = [[_mm512_setzero_ps(); $w]; Q];
                    for q in 0..Q {
                        for k in 0..$w {
                            acc[q][k] = _mm512_loadu_ps(o[q].add(d0 + 16 * k));
                        }
                    }
                    for i in 0..n {
                        let vr = row(i).add(d0);
                        let mut ev = [_mm512_setzero_ps(); Q];
                        for q in 0..Q {
                            ev[q] = _mm512_set1_ps(e[q][i]);
                        }
                        for k in 0..$w {
                            let x = _mm512_loadu_ps(vr.add(16 * k));
                            for q in 0..Q {
                                acc[q][k] = _mm512_fmadd_ps(ev[q], x, acc[q][k]);
                            }
                        }
                    }
                    for q in 0..Q {
                        for k in 0..$w {
                            _mm512_storeu_ps(o[q].add(d0 + 16 * k), acc[q][k]);
                        }
                    }
                }};
            }
            match w {
                8 => slab!(8),
                4..=7 => {
                    slab!(4);
                    d0 += 64;
                    continue;
                }
                2 | 3 => {
                    slab!(2);
                    d0 += 32;
                    continue;
                }
                _ => {
                    slab!(1);
                    d0 += 16;
                    continue;
                }
            }
            d0 += 128;
        }
    }

    impl Ops for Avx2 {
        /// Every score is one FMA chain over the head (8 lanes), then the lanes added as
        /// ((l0 + l1) + (l2 + l3)) + ((l4 + l5) + (l6 + l7)), whether it is formed alone or
        /// four at a time.
        #[inline(always)]
        unsafe fn scores<F: Fn(usize) -> usize>(q: &[f32], keys: &[f32], koff: F, out: &mut [f32]) {
            let hd = q.len();
            if hd % 8 != 0 {
                return Scalar::scores(q, keys, koff, out);
            }
            let qp = q.as_ptr();
            let n = out.len();
            let mut i = 0;
            while i + 4 <= n {
                let ko: [usize; 4] = std::array::from_fn(|k| koff(i + k));
                assert!(ko.iter().all(|&o| o + hd <= keys.len()));
                let kp = ko.map(|o| keys.as_ptr().add(o));
                let mut a = [_mm256_setzero_ps(); 4];
                for c in (0..hd).step_by(8) {
                    let qv = _mm256_loadu_ps(qp.add(c));
                    for k in 0..4 {
                        a[k] = _mm256_fmadd_ps(qv, _mm256_loadu_ps(kp[k].add(c)), a[k]);
                    }
                }
                let h = _mm256_hadd_ps(_mm256_hadd_ps(a[0], a[1]), _mm256_hadd_ps(a[2], a[3]));
                let r = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
                _mm_storeu_ps(out.as_mut_ptr().add(i), r);
                i += 4;
            }
            for i in i..n {
                let ko = koff(i);
                let kr = &keys[ko..ko + hd];
                let mut a = _mm256_setzero_ps();
                for c in (0..hd).step_by(8) {
                    a = _mm256_fmadd_ps(
                        _mm256_loadu_ps(qp.add(c)),
                        _mm256_loadu_ps(kr.as_ptr().add(c)),
                        a,
                    );
                }
                let h = _mm256_hadd_ps(a, a);
                let h = _mm256_hadd_ps(h, h);
                let r = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
                out[i] = _mm_cvtss_f32(r);
            }
        }

        #[inline(always)]
        unsafe fn exp_shift(s: &mut [f32; C], m: f32) {
            let mv = _mm256_set1_ps(m);
            for i in (0..C).step_by(8) {
                let p = s.as_mut_ptr().add(i);
                _mm256_storeu_ps(p, exp8(_mm256_sub_ps(_mm256_loadu_ps(p), mv)));
            }
        }

        /// In 128-bit pieces, the width in which the scores were stored, so that every load
        /// takes its value straight from the store before it (a wider load over two narrower
        /// stores waits for them to reach the cache), and the maximum over four lanes in
        /// parallel instead of a chain of scalar maxima. The maximum of the same values in
        /// another order is the same value: only zeros' signs or NaNs could differ, and
        /// neither changes a weight.
        #[inline(always)]
        unsafe fn scale_max(s: &mut [f32; C], n: usize, scale: f32) -> f32 {
            let sv = _mm_set1_ps(scale);
            let ninf = _mm_set1_ps(f32::NEG_INFINITY);
            let nv = _mm_set1_epi32(n as i32);
            let mut m = [ninf; 2];
            for i in 0..C / 4 {
                let p = s.as_mut_ptr().add(4 * i);
                let idx = _mm_add_epi32(_mm_set1_epi32(4 * i as i32), _mm_setr_epi32(0, 1, 2, 3));
                let keep = _mm_castsi128_ps(_mm_cmpgt_epi32(nv, idx));
                let v = _mm_blendv_ps(ninf, _mm_mul_ps(_mm_loadu_ps(p), sv), keep);
                _mm_storeu_ps(p, v);
                m[i % 2] = _mm_max_ps(m[i % 2], v);
            }
            let m = _mm_max_ps(m[0], m[1]);
            let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
            let m = _mm_max_ss(m, _mm_shuffle_ps::<1>(m, m));
            _mm_cvtss_f32(m)
        }

        /// The weights stay in registers: each 256-bit value is read as the two 128-bit
        /// halves [`Avx2::scale_max`] stored, and where the chunk's positions start at its
        /// first (`off` 0: every query of causal attention without a window) the sum is
        /// [`super::chunk_sum`]'s tree on the registers, pair for pair.
        #[inline(always)]
        unsafe fn weights(s: &mut [f32; C], m: f32, off: usize, n: usize) -> f32 {
            if off != 0 {
                return super::shifted_weights::<Self>(s, m, off, n);
            }
            let mv = _mm256_set1_ps(m);
            // a loop, not `array::from_fn`: a closure would not be inlined into the AVX2
            // context
            let mut e = [_mm256_setzero_ps(); 4];
            for (k, ek) in e.iter_mut().enumerate() {
                let p = s.as_mut_ptr().add(8 * k);
                let v = _mm256_castps128_ps256(_mm_loadu_ps(p));
                *ek = exp8(_mm256_sub_ps(
                    _mm256_insertf128_ps::<1>(v, _mm_loadu_ps(p.add(4))),
                    mv,
                ));
                _mm256_storeu_ps(p, *ek);
            }
            // t[i] + t[16 + i], then the halves: (i, 8 + i), (i, 4 + i), (i, 2 + i), (0, 1)
            let w8 = _mm256_add_ps(_mm256_add_ps(e[0], e[2]), _mm256_add_ps(e[1], e[3]));
            let w4 = _mm_add_ps(_mm256_castps256_ps128(w8), _mm256_extractf128_ps::<1>(w8));
            let w2 = _mm_add_ps(w4, _mm_movehl_ps(w4, w4));
            _mm_cvtss_f32(_mm_add_ss(w2, _mm_shuffle_ps::<1>(w2, w2)))
        }

        #[inline(always)]
        unsafe fn scale(o: &mut [f32], c: f32) {
            let n8 = o.len() / 8 * 8;
            let cv = _mm256_set1_ps(c);
            for i in (0..n8).step_by(8) {
                let p = o.as_mut_ptr().add(i);
                _mm256_storeu_ps(p, _mm256_mul_ps(_mm256_loadu_ps(p), cv));
            }
            for x in &mut o[n8..] {
                *x *= c;
            }
        }

        #[inline(always)]
        unsafe fn exp1(x: f32) -> f32 {
            _mm256_cvtss_f32(exp8(_mm256_set1_ps(x)))
        }

        /// Two queries, four keys at a time: each score's FMA chain and lane sums are those
        /// of [`Ops::scores`].
        #[inline(always)]
        unsafe fn scores2<F: Fn(usize) -> usize>(
            q: [&[f32]; 2],
            keys: &[f32],
            koff: F,
            out: [&mut [f32]; 2],
        ) {
            let hd = q[0].len();
            let n = out[0].len();
            if hd % 8 != 0 || q[1].len() != hd || out[1].len() != n {
                let [o0, o1] = out;
                Self::scores(q[0], keys, &koff, o0);
                Self::scores(q[1], keys, &koff, o1);
                return;
            }
            let [o0, o1] = out;
            let (q0, q1) = (q[0].as_ptr(), q[1].as_ptr());
            let mut i = 0;
            while i + 4 <= n {
                let ko: [usize; 4] = std::array::from_fn(|k| koff(i + k));
                assert!(ko.iter().all(|&o| o + hd <= keys.len()));
                let kp = ko.map(|o| keys.as_ptr().add(o));
                let mut a = [_mm256_setzero_ps(); 4];
                let mut b = [_mm256_setzero_ps(); 4];
                for c in (0..hd).step_by(8) {
                    let (x0, x1) = (_mm256_loadu_ps(q0.add(c)), _mm256_loadu_ps(q1.add(c)));
                    for k in 0..4 {
                        let kv = _mm256_loadu_ps(kp[k].add(c));
                        a[k] = _mm256_fmadd_ps(x0, kv, a[k]);
                        b[k] = _mm256_fmadd_ps(x1, kv, b[k]);
                    }
                }
                for (acc, o) in [(a, &mut *o0), (b, &mut *o1)] {
                    let h = _mm256_hadd_ps(
                        _mm256_hadd_ps(acc[0], acc[1]),
                        _mm256_hadd_ps(acc[2], acc[3]),
                    );
                    let r = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
                    _mm_storeu_ps(o.as_mut_ptr().add(i), r);
                }
                i += 4;
            }
            if i < n {
                let k2 = |j: usize| koff(i + j);
                Self::scores(q[0], keys, k2, &mut o0[i..]);
                Self::scores(q[1], keys, k2, &mut o1[i..]);
            }
        }

        /// Two outputs over slabs of 32 values.
        #[inline(always)]
        unsafe fn axpy2<F: Fn(usize) -> usize>(
            o: [&mut [f32]; 2],
            e: [&[f32]; 2],
            voff: F,
            vals: &[f32],
        ) {
            let vd = o[0].len();
            if vd % 8 != 0 || o[1].len() != vd || e[0].len() != e[1].len() {
                let [o0, o1] = o;
                Self::axpy(o0, e[0], &voff, vals);
                Self::axpy(o1, e[1], &voff, vals);
                return;
            }
            for i in 0..e[0].len() {
                assert!(voff(i) + vd <= vals.len());
            }
            let op = [o[0].as_mut_ptr(), o[1].as_mut_ptr()];
            let mut d0 = 0;
            while d0 < vd {
                let w = (vd - d0).min(32) / 8;
                let ops = op.map(|p| p.add(d0));
                let vp = vals.as_ptr().add(d0);
                match w {
                    4 => slab2::<4, F>(ops, e, &voff, vp),
                    3 => slab2::<3, F>(ops, e, &voff, vp),
                    2 => slab2::<2, F>(ops, e, &voff, vp),
                    _ => slab2::<1, F>(ops, e, &voff, vp),
                }
                d0 += 8 * w;
            }
        }

        /// Slabs of 64 output values stay in registers while every position adds to them.
        #[inline(always)]
        unsafe fn axpy<F: Fn(usize) -> usize>(o: &mut [f32], e: &[f32], voff: F, vals: &[f32]) {
            let vd = o.len();
            if vd % 8 != 0 {
                return Scalar::axpy(o, e, voff, vals);
            }
            for i in 0..e.len() {
                assert!(voff(i) + vd <= vals.len());
            }
            let op = o.as_mut_ptr();
            let mut d0 = 0;
            while d0 < vd {
                let w = (vd - d0).min(64) / 8;
                match w {
                    8 => slab::<8, F>(op.add(d0), e, &voff, vals.as_ptr().add(d0)),
                    7 => slab::<7, F>(op.add(d0), e, &voff, vals.as_ptr().add(d0)),
                    6 => slab::<6, F>(op.add(d0), e, &voff, vals.as_ptr().add(d0)),
                    5 => slab::<5, F>(op.add(d0), e, &voff, vals.as_ptr().add(d0)),
                    4 => slab::<4, F>(op.add(d0), e, &voff, vals.as_ptr().add(d0)),
                    3 => slab::<3, F>(op.add(d0), e, &voff, vals.as_ptr().add(d0)),
                    2 => slab::<2, F>(op.add(d0), e, &voff, vals.as_ptr().add(d0)),
                    _ => slab::<1, F>(op.add(d0), e, &voff, vals.as_ptr().add(d0)),
                }
                d0 += 8 * w;
            }
        }
    }

    /// Two outputs' slabs of `W` registers, each plus its `e[i]` times the values at
    /// `vp + voff(i)` (each value register read once for both).
    #[inline(always)]
    unsafe fn slab2<const W: usize, F: Fn(usize) -> usize>(
        op: [*mut f32; 2],
        e: [&[f32]; 2],
        voff: &F,
        vp: *const f32,
    ) {
        let mut a0: [__m256; W] = std::array::from_fn(|k| _mm256_loadu_ps(op[0].add(8 * k)));
        let mut a1: [__m256; W] = std::array::from_fn(|k| _mm256_loadu_ps(op[1].add(8 * k)));
        for i in 0..e[0].len() {
            let p = vp.add(voff(i));
            let (e0, e1) = (_mm256_set1_ps(e[0][i]), _mm256_set1_ps(e[1][i]));
            for k in 0..W {
                let x = _mm256_loadu_ps(p.add(8 * k));
                a0[k] = _mm256_fmadd_ps(e0, x, a0[k]);
                a1[k] = _mm256_fmadd_ps(e1, x, a1[k]);
            }
        }
        for k in 0..W {
            _mm256_storeu_ps(op[0].add(8 * k), a0[k]);
            _mm256_storeu_ps(op[1].add(8 * k), a1[k]);
        }
    }

    /// `W` registers of output (from `op`) plus `e[i]` times the values at `vp + voff(i)`.
    #[inline(always)]
    unsafe fn slab<const W: usize, F: Fn(usize) -> usize>(
        op: *mut f32,
        e: &[f32],
        voff: &F,
        vp: *const f32,
    ) {
        let mut acc: [__m256; W] = std::array::from_fn(|k| _mm256_loadu_ps(op.add(8 * k)));
        for (i, &ei) in e.iter().enumerate() {
            let p = vp.add(voff(i));
            let ev = _mm256_set1_ps(ei);
            for (k, a) in acc.iter_mut().enumerate() {
                *a = _mm256_fmadd_ps(ev, _mm256_loadu_ps(p.add(8 * k)), *a);
            }
        }
        for (k, a) in acc.iter().enumerate() {
            _mm256_storeu_ps(op.add(8 * k), *a);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Query, attend_group};
    use hearth_core::{AttnParams, Pages};

    fn lcg(mut seed: u64) -> impl FnMut() -> f32 {
        move || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        }
    }

    /// Queries attended together (a tile: the AVX-512 path where the CPU has it) get the bits
    /// each gets alone (the AVX2 path), over a paged cache, with causal ranges, a sliding
    /// window and sinks, for head widths of 64, 128 and an odd 24.
    #[test]
    fn a_query_in_a_tile_gets_the_bits_it_gets_alone() {
        let mut rnd = lcg(11);
        for (hd, vd, window, sinks) in [
            (64usize, 64usize, None, false),
            (128, 128, Some(37usize), false),
            (64, 128, None, true),
            (24, 24, None, false),
        ] {
            let (n_kv, n_head, n_pos) = (2usize, 6usize, 150usize);
            let ps = 16;
            let pages_n = n_pos.div_ceil(ps);
            // pages handed out in reverse
            let table: Vec<u32> = (0..pages_n as u32).rev().collect();
            let rows = pages_n * ps;
            let k: Vec<f32> = (0..rows * n_kv * hd).map(|_| rnd()).collect();
            let v: Vec<f32> = (0..rows * n_kv * vd).map(|_| rnd()).collect();
            let sink: Vec<f32> = (0..n_head).map(|_| rnd()).collect();
            let mut p = AttnParams::gqa(n_head, n_kv, hd, 1.0 / (hd as f32).sqrt());
            p.v_dim = vd;
            p.v_stride = n_kv * vd;
            p.window = window;
            if sinks {
                p.sinks = Some(hearth_core::View::Host(&sink));
            }
            let pages = Some(Pages {
                table: &table,
                page_size: ps,
            });
            // a tile: 8 tokens ending at 3 different positions, 3 heads each
            for &last in &[7usize, 70, 149] {
                let toks: Vec<usize> = (last.saturating_sub(7)..=last).collect();
                let qv: Vec<Vec<f32>> = (0..toks.len() * 3)
                    .map(|_| (0..hd).map(|_| rnd() * 2.0).collect())
                    .collect();
                let run = |idx: &[usize]| -> Vec<Vec<f32>> {
                    let mut outs: Vec<Vec<f32>> = idx.iter().map(|_| vec![0f32; vd]).collect();
                    let mut qs: Vec<Query> = idx
                        .iter()
                        .zip(outs.iter_mut())
                        .map(|(&i, o)| {
                            let pos = toks[i / 3];
                            let (m, l) = match p.sinks {
                                Some(_) => (sink[i % 3], 1f32),
                                None => (f32::NEG_INFINITY, 0f32),
                            };
                            Query {
                                q: &qv[i],
                                lo: p.window.map_or(0, |w| (pos + 1).saturating_sub(w)),
                                hi: pos,
                                m,
                                l,
                                o,
                            }
                        })
                        .collect();
                    attend_group(&k, &v, &p, pages, 1, &mut qs);
                    drop(qs);
                    outs
                };
                let all: Vec<usize> = (0..qv.len()).collect();
                let tile = run(&all);
                for i in 0..qv.len() {
                    let alone = run(&[i]);
                    let a: Vec<u32> = alone[0].iter().map(|x| x.to_bits()).collect();
                    let b: Vec<u32> = tile[i].iter().map(|x| x.to_bits()).collect();
                    assert_eq!(
                        a, b,
                        "hd {hd} vd {vd} window {window:?} last {last} query {i}"
                    );
                }
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn exp8_is_close_to_libm() {
        if !std::arch::is_x86_feature_detected!("avx2")
            || !std::arch::is_x86_feature_detected!("fma")
        {
            return;
        }
        use std::arch::x86_64::*;
        let mut worst = 0f64;
        // attention's range (at most 0) and SwiGLU's (capped at 88)
        let mut x = -90f32;
        while x <= 88.0 {
            let got = unsafe {
                let mut out = [0f32; 8];
                #[target_feature(enable = "avx2,fma")]
                unsafe fn run(x: f32, out: &mut [f32; 8]) {
                    _mm256_storeu_ps(out.as_mut_ptr(), super::x86::exp8(_mm256_set1_ps(x)));
                }
                run(x, &mut out);
                out[0]
            };
            let want = (x as f64).exp();
            if x >= -87.0 {
                worst = worst.max(((got as f64 - want) / want).abs());
            } else if x < -87.3 {
                assert_eq!(got, 0.0);
            }
            x += 0.0123;
        }
        assert!(worst < 3e-7, "relative error {worst}");
        let zero = unsafe {
            let mut out = [1f32; 8];
            #[target_feature(enable = "avx2,fma")]
            unsafe fn run(out: &mut [f32; 8]) {
                _mm256_storeu_ps(
                    out.as_mut_ptr(),
                    super::x86::exp8(_mm256_set1_ps(f32::NEG_INFINITY)),
                );
            }
            run(&mut out);
            out[0]
        };
        assert_eq!(zero, 0.0);
    }
}
