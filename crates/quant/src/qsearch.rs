//! The scale searches the quantizers share: weighted least-squares fits of one block's scale
//! (and min) to its values, trying a few candidate scales around the max-based one.
//!
//! These follow the algorithms of ggml-quants.c in llama.cpp (`make_qx_quants`,
//! `make_q3_quants`, `make_qkx2_quants`/`make_qkx3_quants`, `make_qp_quants`), which define
//! what "as good as llama.cpp" means for the k-quants. The arithmetic is f32 in the same order
//! so that the chosen quants match, but the code is written anew.
// The loops index several arrays in step, as the formulas read.
#![allow(clippy::needless_range_loop)]

/// Values smaller than this in magnitude count as an all-zero group.
pub const GROUP_MAX_EPS: f32 = 1e-15;

/// Round to the nearest integer, ties to even, as ggml's `nearest_int` does it: add 1.5 * 2^23
/// so that the integer lands in the low mantissa bits (exact for |v| < 2^22, which every caller
/// keeps to; larger values give ggml's same meaningless result, never a panic). A plain
/// `round_ties_even` is a library call on baseline x86-64.
#[inline(always)]
pub fn nearest_int(v: f32) -> i32 {
    ((v + 12582912.0).to_bits() & 0x007f_ffff) as i32 - 0x0040_0000
}

/// The value with the largest magnitude (the first one on ties), and that magnitude.
#[inline]
fn signed_max(x: &[f32]) -> (f32, f32) {
    let (mut max, mut amax) = (0f32, 0f32);
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    (max, amax)
}

/// Symmetric quantization of `x` to `L[i] in 0..2*nmax` (value `L - nmax`), choosing the scale
/// that maximizes the weighted fit `(sum w x l)^2 / sum w l^2` over 19 candidate inverse scales
/// `-(nmax + 0.1 k) / max`, k in -9..=9. Weights are `qw` when given, else x^2. Returns the scale.
pub fn make_qx(x: &[f32], nmax: i32, l_out: &mut [i8], qw: Option<&[f32]>) -> f32 {
    let n = x.len();
    let (max, amax) = signed_max(x);
    if amax < GROUP_MAX_EPS {
        l_out[..n].fill(0);
        return 0.0;
    }
    let mut wbuf = [0f32; 256];
    for i in 0..n {
        wbuf[i] = qw.map_or(x[i] * x[i], |q| q[i]);
    }
    let w = |i: usize| wbuf[i];
    let quant = |iscale: f32, i: usize| nearest_int(iscale * x[i]).clamp(-nmax, nmax - 1);
    let mut iscale = -(nmax as f32) / max;
    let (mut sumlx, mut suml2) = (0f32, 0f32);
    for i in 0..n {
        let l = quant(iscale, i);
        l_out[i] = (l + nmax) as i8;
        let wi = w(i);
        sumlx += wi * x[i] * l as f32;
        suml2 += wi * l as f32 * l as f32;
    }
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    for is in -9..=9 {
        if is == 0 {
            continue;
        }
        iscale = -(nmax as f32 + 0.1 * is as f32) / max;
        let (mut slx, mut sl2) = (0f32, 0f32);
        for i in 0..n {
            let l = quant(iscale, i);
            let wi = w(i);
            slx += wi * x[i] * l as f32;
            sl2 += wi * l as f32 * l as f32;
        }
        if sl2 > 0.0 && slx * slx > best * sl2 {
            for i in 0..n {
                l_out[i] = (quant(iscale, i) + nmax) as i8;
            }
            scale = slx / sl2;
            best = scale * slx;
        }
    }
    scale
}

/// Q3_K's symmetric search without importance weights: start from the max-based scale, then
/// move single quants while that improves the x^2-weighted fit (up to 5 passes). `L` in 0..2*nmax.
pub fn make_q3(x: &[f32], nmax: i32, l_out: &mut [i8]) -> f32 {
    let n = x.len();
    let (max, amax) = signed_max(x);
    if amax < GROUP_MAX_EPS {
        l_out[..n].fill(0);
        return 0.0;
    }
    let iscale = -(nmax as f32) / max;
    let (mut sumlx, mut suml2) = (0f32, 0f32);
    let mut l = [0i32; 256];
    for i in 0..n {
        l[i] = nearest_int(iscale * x[i]).clamp(-nmax, nmax - 1);
        let w = x[i] * x[i];
        sumlx += w * x[i] * l[i] as f32;
        suml2 += w * l[i] as f32 * l[i] as f32;
    }
    for _ in 0..5 {
        let mut changed = 0;
        for i in 0..n {
            let w = x[i] * x[i];
            let mut slx = sumlx - w * x[i] * l[i] as f32;
            if slx > 0.0 {
                let mut sl2 = suml2 - w * l[i] as f32 * l[i] as f32;
                let nl = nearest_int(x[i] * sl2 / slx).clamp(-nmax, nmax - 1);
                if nl != l[i] {
                    slx += w * x[i] * nl as f32;
                    sl2 += w * nl as f32 * nl as f32;
                    if sl2 > 0.0 && slx * slx * suml2 > sumlx * sumlx * sl2 {
                        l[i] = nl;
                        sumlx = slx;
                        suml2 = sl2;
                        changed += 1;
                    }
                }
            }
        }
        if changed == 0 {
            break;
        }
    }
    for i in 0..n {
        l_out[i] = (l[i] + nmax) as i8;
    }
    if suml2 > 0.0 { sumlx / suml2 } else { 0.0 }
}

/// Options of the asymmetric (scale + min) search.
#[derive(Clone, Copy)]
pub struct AsymSearch {
    /// first candidate offset added to nmax
    pub rmin: f32,
    /// step between candidates
    pub rdelta: f32,
    /// candidates after the first (nstep + 1 in all)
    pub nstep: i32,
    /// minimize the weighted absolute error instead of the squared error
    pub use_mad: bool,
}

/// Asymmetric quantization `x ~ scale * L - min_out`, `L in 0..=nmax`: for each candidate inverse
/// scale `(rmin + rdelta k + nmax) / (max - min)`, round, then solve the weighted least-squares
/// problem for scale and min (min clamped to <= 0), keeping the best. Weights `w` (x^2 when
/// `None`). Returns (scale, min) with min >= 0 meaning `x ~ scale*L - min`.
pub fn make_qkx(
    x: &[f32],
    nmax: i32,
    w: Option<&[f32]>,
    l_out: &mut [u8],
    o: AsymSearch,
) -> (f32, f32) {
    let n = x.len();
    let mut wbuf = [0f32; 256];
    for i in 0..n {
        wbuf[i] = w.map_or(x[i] * x[i], |w| w[i]);
    }
    let wt = |i: usize| wbuf[i];
    let (mut min, mut max) = (x[0], x[0]);
    let (mut sum_w, mut sum_x) = (wt(0), wt(0) * x[0]);
    for i in 1..n {
        min = min.min(x[i]);
        max = max.max(x[i]);
        sum_w += wt(i);
        sum_x += wt(i) * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max <= min {
        l_out[..n].fill(0);
        return (0.0, -min);
    }
    let err = |d: f32, use_mad: bool| if use_mad { d.abs() } else { d * d };
    let mut iscale = nmax as f32 / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best = 0f32;
    for i in 0..n {
        let l = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
        l_out[i] = l as u8;
        best += wt(i) * err(scale * l as f32 + min - x[i], o.use_mad);
    }
    if o.nstep < 1 {
        return (scale, -min);
    }
    let mut aux = [0u8; 256];
    for is in 0..=o.nstep {
        iscale = (o.rmin + o.rdelta * is as f32 + nmax as f32) / (max - min);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0f32, 0f32, 0f32);
        for i in 0..n {
            let l = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
            aux[i] = l as u8;
            let (wi, lf) = (wt(i), l as f32);
            sum_l += wi * lf;
            sum_l2 += wi * lf * lf;
            sum_xl += wi * lf * x[i];
        }
        let det = sum_w * sum_l2 - sum_l * sum_l;
        if det > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / det;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut cur = 0f32;
            for i in 0..n {
                cur += wt(i) * err(this_scale * aux[i] as f32 + this_min - x[i], o.use_mad);
            }
            if cur < best {
                l_out[..n].copy_from_slice(&aux[..n]);
                best = cur;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

/// Quantize non-negative values (sub-block scales or mins) to `0..=nmax` with importance
/// weights `qw`: try 9 inverse scales around `nmax/max`, then move single quants while the
/// weighted fit improves. Returns the scale. At most 32 values.
///
/// The quants are kept in bytes as ggml's `make_qp_quants` keeps them: a negative value (which
/// only IQ2_XXS passes, where one value per 8 may carry a flipped sign) rounds to a negative
/// quant that wraps around in its byte, and the search goes on with the wrapped value.
pub fn make_qp(x: &[f32], nmax: i32, l_out: &mut [u8], qw: &[f32]) -> f32 {
    let n = x.len();
    let max = x.iter().fold(0f32, |m, &v| m.max(v));
    if max < GROUP_MAX_EPS {
        l_out[..n].fill(0);
        return 0.0;
    }
    let mut iscale = nmax as f32 / max;
    let scale0 = 1.0 / iscale;
    let mut best = 0f32;
    for i in 0..n {
        let l = nearest_int(iscale * x[i]) as u8;
        let d = x[i] - scale0 * l as f32;
        best += qw[i] * d * d;
    }
    for is in -4..=4 {
        if is == 0 {
            continue;
        }
        let isc = (0.1 * is as f32 + nmax as f32) / max;
        let sc = 1.0 / isc;
        let mut mse = 0f32;
        for i in 0..n {
            let l = nearest_int(isc * x[i]).min(nmax);
            let d = x[i] - sc * l as f32;
            mse += qw[i] * d * d;
        }
        if mse < best {
            best = mse;
            iscale = isc;
        }
    }
    let (mut sumlx, mut suml2) = (0f32, 0f32);
    let mut l = [0u8; 32];
    for i in 0..n {
        let li = nearest_int(iscale * x[i]).min(nmax);
        l[i] = li as u8;
        sumlx += qw[i] * x[i] * li as f32;
        suml2 += qw[i] * li as f32 * li as f32;
    }
    for _ in 0..5 {
        let mut changed = 0;
        for i in 0..n {
            let (w, li) = (qw[i], l[i] as f32);
            let mut slx = sumlx - w * x[i] * li;
            let mut sl2 = suml2 - w * li * li;
            if slx > 0.0 && sl2 > 0.0 {
                let nl = nearest_int(x[i] * sl2 / slx).min(nmax);
                if nl != l[i] as i32 {
                    slx += w * x[i] * nl as f32;
                    sl2 += w * nl as f32 * nl as f32;
                    if slx * slx * suml2 > sumlx * sumlx * sl2 {
                        l[i] = nl as u8;
                        sumlx = slx;
                        suml2 = sl2;
                        changed += 1;
                    }
                }
            }
        }
        if changed == 0 {
            break;
        }
    }
    l_out[..n].copy_from_slice(&l[..n]);
    if suml2 > 0.0 { sumlx / suml2 } else { 0.0 }
}

/// Index of the entry of the sorted table `val` nearest to `x` (ties to the lower entry only
/// when strictly nearer, as ggml's `best_index_int8`).
#[inline]
pub fn best_index(val: &[i8; 16], x: f32) -> usize {
    if x <= val[0] as f32 {
        return 0;
    }
    if x >= val[15] as f32 {
        return 15;
    }
    let (mut lo, mut hi) = (0usize, 15usize);
    while hi - lo > 1 {
        let mid = (lo + hi) / 2;
        if x < val[mid] as f32 {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    if x - (val[hi - 1] as f32) < (val[hi] as f32) - x {
        hi - 1
    } else {
        hi
    }
}
