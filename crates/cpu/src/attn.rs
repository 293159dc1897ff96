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
trait Ops {
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
        // SAFETY: the CPU has AVX2 and FMA; every slice is indexed with bounds checks.
        unsafe { attend_avx2(k, v, p, pages, kh, qs) };
        return;
    }
    // SAFETY: the scalar ops use only safe indexing.
    unsafe { body::<Scalar>(k, v, p, pages, kh, qs) }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn attend_avx2(
    k: &[f32],
    v: &[f32],
    p: &AttnParams<'_>,
    pages: Option<Pages<'_>>,
    kh: usize,
    qs: &mut [Query<'_>],
) {
    body::<x86::Avx2>(k, v, p, pages, kh, qs)
}

#[inline(always)]
unsafe fn body<O: Ops>(
    k: &[f32],
    v: &[f32],
    p: &AttnParams<'_>,
    pages: Option<Pages<'_>>,
    kh: usize,
    qs: &mut [Query<'_>],
) {
    let (hd, vd) = (p.head_dim, p.v_dim);
    let (Some(lo_all), Some(hi_all)) =
        (qs.iter().map(|q| q.lo).min(), qs.iter().map(|q| q.hi).max())
    else {
        return;
    };
    let mut rows = [0usize; C];
    let mut s = [0f32; C];
    for c in lo_all / C..=hi_all / C {
        let c0 = c * C;
        for j in lo_all.max(c0)..=hi_all.min(c0 + C - 1) {
            rows[j - c0] = pages.map_or(j, |pg| pg.row(j));
        }
        for q in qs.iter_mut() {
            let (a, b) = (q.lo.max(c0), q.hi.min(c0 + C - 1));
            if a > b {
                continue;
            }
            let n = b - a + 1;
            let rs = &rows[a - c0..=b - c0];
            O::scores(q.q, k, |i| rs[i] * p.k_stride + kh * hd, &mut s[..n]);
            let mut cmax = f32::NEG_INFINITY;
            for si in &mut s[..n] {
                *si *= p.scale;
                cmax = cmax.max(*si);
            }
            if cmax > q.m {
                let corr = O::exp1(q.m - cmax);
                q.l *= corr;
                O::scale(q.o, corr);
                q.m = cmax;
            }
            s[n..].fill(f32::NEG_INFINITY);
            O::exp_shift(&mut s, q.m);
            q.l += s[..n].iter().sum::<f32>();
            let voff = |i: usize| rs[i] * p.v_stride + kh * vd;
            O::axpy(q.o, &s[..n], voff, v);
        }
    }
    for q in qs.iter_mut() {
        let inv = 1.0 / q.l;
        O::scale(q.o, inv);
    }
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
mod x86 {
    use super::{C, Ops, Scalar};
    use std::arch::x86_64::*;

    pub(super) struct Avx2;

    /// `exp(x)` for 8 lanes: `x = n ln2 + r` with |r| <= ln2/2, `e^r` by its Taylor series to
    /// degree 7 (relative error below 1e-8 before rounding), times `2^n` through the exponent
    /// bits. Lanes below -87.3 (including -inf) give 0; the input never exceeds 0 here.
    #[inline(always)]
    pub(super) unsafe fn exp8(x: __m256) -> __m256 {
        let lo = _mm256_set1_ps(-87.3);
        let tiny = _mm256_cmp_ps(x, lo, _CMP_LT_OQ);
        let x = _mm256_max_ps(x, lo);
        let n = _mm256_round_ps(
            _mm256_mul_ps(x, _mm256_set1_ps(std::f32::consts::LOG2_E)),
            _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC,
        );
        // ln 2 split so that n * LN2_HI is exact
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693_145_75), x);
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(1.428_606_8e-6), r);
        let mut p = _mm256_set1_ps(1.0 / 5040.0);
        for c in [
            1.0 / 720.0,
            1.0 / 120.0,
            1.0 / 24.0,
            1.0 / 6.0,
            0.5,
            1.0,
            1.0,
        ] {
            p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
        }
        let e = _mm256_slli_epi32(
            _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)),
            23,
        );
        let y = _mm256_mul_ps(p, _mm256_castsi256_ps(e));
        _mm256_andnot_ps(tiny, y)
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
        let mut x = -90f32;
        while x <= 0.0 {
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
