//! Quantizers for the ternary-grid i-quants: IQ1_S (1.56 bpw) and IQ1_M (1.75 bpw).
//!
//! These follow llama.cpp's `quantize_row_iq1_s_impl` / `quantize_row_iq1_m_impl`
//! (ggml/src/ggml-quants.c). A value is `d * s * (q + delta)` with q in {-1, 0, 1} and delta
//! = +-1/8 (`IQ1S_DELTA`). With three levels the best split of a group is found exactly: the
//! values are sorted, and every pair of boundaries (i1, i2) that cuts the sorted values into
//! the -1 / 0 / +1 groups is scored from prefix sums of `w x` and `w`, for either delta (IQ1_M:
//! a delta per half group). The resulting level vectors that are not grid points move to the
//! nearest of their grid neighbours. The arithmetic is f32 in ggml's order, and the sort keeps
//! equal values in their original order (as glibc's merge sort behind ggml's `qsort` does), so
//! that the bytes match `llama-quantize`; the code is written anew.
// The loops index several arrays in step, as the formulas read.
#![allow(clippy::needless_range_loop)]
use crate::qiquants::{Lattice, iq1s_lattice};
use crate::qlegacy::f16_bytes;
use crate::qsearch::nearest_int;
use std::cmp::Ordering;

/// ggml's `IQ1S_DELTA` (and `IQ1M_DELTA`, the same).
const DELTA: f32 = 0.125;
/// The three values with a positive delta, and with a negative one.
const X_P: [f32; 3] = [-1.0 + DELTA, DELTA, 1.0 + DELTA];
const X_M: [f32; 3] = [-1.0 - DELTA, -DELTA, 1.0 - DELTA];
/// Groups whose largest magnitude is below these count as zero (ggml's `GROUP_MAX_EPS_IQ1_S`,
/// `GROUP_MAX_EPS_IQ1_M`).
const EPS_IQ1_S: f32 = 1e-12;
const EPS_IQ1_M: f32 = 1e-7;

/// The positions of `xb` in ascending order of value; equal values keep their order. (-0.0 and
/// 0.0 compare equal, as C's `<` has them; a NaN, which ggml's comparison leaves unordered,
/// sorts last here instead of breaking the sort.)
fn sorted_order<const N: usize>(xb: &[f32]) -> [usize; N] {
    let mut order: [usize; N] = std::array::from_fn(|i| i);
    let key = |i: usize| xb[i] + 0.0;
    order.sort_by(|&a, &b| {
        let (x, y) = (key(a), key(b));
        if x.is_nan() || y.is_nan() {
            return x.is_nan().cmp(&y.is_nan());
        }
        x.partial_cmp(&y).unwrap_or(Ordering::Equal)
    });
    order
}

/// Max of |x|, as ggml's `MAX` loop picks it.
/// Each value's level from a split of its group in sorted order (`order[j]` is the j-th
/// smallest): the first `i1` take 0, those before `i2` take 1, the rest 2.
fn split_labels<const N: usize>(order: &[usize; N], i1: usize, i2: usize) -> [i8; N] {
    let mut l = [0i8; N];
    for (j, &i) in order.iter().enumerate() {
        l[i] = if j < i1 {
            0
        } else if j < i2 {
            1
        } else {
            2
        };
    }
    l
}

fn amax(x: &[f32]) -> f32 {
    x[1..]
        .iter()
        .fold(x[0].abs(), |m, v| if m > v.abs() { m } else { v.abs() })
}

/// The IQ1 importance weights: `qw * sqrt(sigma2 + x^2)`, or x^2 without `qw`.
fn weights(xb: &[f32], qw: Option<&[f32]>, sigma2: f32, w: &mut [f32]) {
    for i in 0..xb.len() {
        w[i] = match qw {
            Some(q) => q[i] * (sigma2 + xb[i] * xb[i]).sqrt(),
            None => xb[i] * xb[i],
        };
    }
}

/// Levels 0..3 (for -1, 0, 1) to a grid index: the point itself when it is on the grid, else
/// the neighbour whose values `xx` at `scale` are nearest to `xb` by the error weighted with
/// `w` (ggml's `iq1_find_best_neighbour2`). Returns the index and whether it was on the grid.
fn to_grid(
    lat: &Lattice,
    l: &[i8],
    xb: &[f32],
    w: &[f32],
    scale: f32,
    xx: &[f32; 3],
) -> (usize, bool) {
    let u = l
        .iter()
        .enumerate()
        .fold(0usize, |u, (k, &v)| u | ((v as usize) << (2 * k)));
    let m = lat.map[u];
    if m >= 0 {
        return (m as usize, true);
    }
    let nb = lat.neighbours_of(u);
    let mut best = f32::MAX;
    // ggml aborts when no neighbour has a finite error (non-finite input); take the first
    let mut gi = nb.first().map_or(0, |&j| j as usize);
    for &j in nb {
        let p = lat.point(j as usize);
        let mut d2 = 0f32;
        for i in 0..8 {
            let q = xx[((p[i] - 1) / 2) as usize];
            let diff = scale * q - xb[i];
            d2 += w[i] * diff * diff;
        }
        if d2 < best {
            best = d2;
            gi = j as usize;
        }
    }
    (gi, false)
}

/// The value of grid point `gi`'s coordinate `i` among `xx`.
fn grid_value(lat: &Lattice, gi: usize, i: usize, xx: &[f32; 3]) -> f32 {
    xx[((lat.point(gi)[i] - 1) / 2) as usize]
}

/// IQ1_S: 50 bytes per 256 (f16 d, 32 low index bytes, per 32 values a u16 of 4 x 3 high index
/// bits, a 3-bit scale and the delta's sign). `qw` is required, as in ggml.
pub fn iq1_s(x: &[f32], qw: &[f32], out: &mut [u8]) {
    let lat = iq1s_lattice();
    let mut w = [0f32; 32];
    let mut scales = [0f32; 8];
    let mut shifts = [0i8; 8];
    let mut qh = [0u16; 8];
    for (ibl, (xs, y)) in x
        .chunks_exact(256)
        .zip(out.chunks_exact_mut(50))
        .enumerate()
    {
        y.fill(0);
        qh.fill(0);
        let sigma2 = 2.0 * xs.iter().fold(0f32, |s, v| s + v * v) / 256.0;
        let mut max_scale = 0f32;
        for ib in 0..8 {
            let xb = &xs[32 * ib..32 * ib + 32];
            weights(xb, Some(&qw[256 * ibl + 32 * ib..]), sigma2, &mut w);
            if amax(xb) < EPS_IQ1_S {
                scales[ib] = 0.0;
                shifts[ib] = 1;
                continue;
            }
            let order = sorted_order::<32>(xb);
            let (mut sumx, mut sumw) = ([0f32; 33], [0f32; 33]);
            for j in 0..32 {
                let i = order[j];
                sumx[j + 1] = sumx[j] + w[i] * xb[i];
                sumw[j + 1] = sumw[j] + w[i];
            }
            let mut best = f32::MIN;
            let mut scale = amax(xb);
            let mut split = None;
            for i1 in 0..=32 {
                for i2 in i1..=32 {
                    for (xv, shift) in [(&X_P, 1i8), (&X_M, -1)] {
                        let sumqx = (sumx[i1] - sumx[0]) * xv[0]
                            + (sumx[i2] - sumx[i1]) * xv[1]
                            + (sumx[32] - sumx[i2]) * xv[2];
                        let sumq2 = (sumw[i1] - sumw[0]) * xv[0] * xv[0]
                            + (sumw[i2] - sumw[i1]) * xv[1] * xv[1]
                            + (sumw[32] - sumw[i2]) * xv[2] * xv[2];
                        if sumq2 > 0.0 && sumqx * sumqx > best * sumq2 {
                            scale = sumqx / sumq2;
                            best = scale * sumqx;
                            split = Some((i1, i2, shift));
                        }
                    }
                }
            }
            let Some((i1, i2, mut shift)) = split else {
                scales[ib] = 0.0;
                shifts[ib] = 1;
                continue;
            };
            let mut l = split_labels(&order, i1, i2);
            if scale < 0.0 {
                l.iter_mut().for_each(|v| *v = 2 - *v);
                scale = -scale;
                shift = -shift;
            }
            let xx = if shift == 1 { &X_P } else { &X_M };
            let mut index = [0usize; 4];
            let mut all_on = true;
            for k in 0..4 {
                let r = 8 * k..8 * k + 8;
                let (gi, on) = to_grid(lat, &l[r.clone()], &xb[r.clone()], &w[r], scale, xx);
                index[k] = gi;
                all_on &= on;
            }
            if !all_on {
                let (mut sumqx, mut sumq2) = (0f32, 0f32);
                for k in 0..4 {
                    for j in 0..8 {
                        let wi = w[8 * k + j];
                        let q = grid_value(lat, index[k], j, xx);
                        sumqx += wi * q * xb[8 * k + j];
                        sumq2 += wi * q * q;
                    }
                }
                if sumqx > 0.0 && sumq2 > 0.0 {
                    scale = sumqx / sumq2;
                }
            }
            for k in 0..4 {
                y[2 + 4 * ib + k] = index[k] as u8;
                qh[ib] |= ((index[k] >> 8) << (3 * k)) as u16;
            }
            scales[ib] = scale;
            shifts[ib] = shift;
            max_scale = max_scale.max(scale);
        }
        if max_scale != 0.0 {
            let d = max_scale / 15.0;
            y[..2].copy_from_slice(&f16_bytes(d * 1.125));
            let id = 1.0 / d;
            for ib in 0..8 {
                let mut l = nearest_int(0.5 * (id * scales[ib] - 1.0)).clamp(0, 7) as u16;
                if shifts[ib] == -1 {
                    l |= 8;
                }
                qh[ib] |= l << 12;
            }
        }
        for (o, v) in y[34..50].chunks_exact_mut(2).zip(&qh) {
            o.copy_from_slice(&v.to_le_bytes());
        }
    }
}

/// The values of IQ1_M's half groups of 8 for shift pattern `k` (0: +,+; 1: +,-; 2: -,+;
/// 3: -,-), `h` the half.
fn half_values(k: usize, h: usize) -> &'static [f32; 3] {
    let plus = if h == 0 { k < 2 } else { k.is_multiple_of(2) };
    if plus { &X_P } else { &X_M }
}

/// IQ1_M: 56 bytes per 256 (32 low index bytes; per 8 values a nibble of 3 high index bits and
/// the delta's sign; 4 u16 of 3-bit scales per 16 values, whose top nibbles hold the f16 super
/// scale). Without `qw` the weights are x^2, as in ggml.
pub fn iq1_m(x: &[f32], qw: Option<&[f32]>, out: &mut [u8]) {
    let lat = iq1s_lattice();
    let mut w = [0f32; 16];
    let mut scales = [0f32; 16];
    let mut shifts = [0usize; 16];
    // v0^2 - v1^2 and v1^2 - v2^2, the coefficients of the collapsed sums of squares
    let cp1 = X_P[0] * X_P[0] - X_P[1] * X_P[1];
    let cp2 = X_P[1] * X_P[1] - X_P[2] * X_P[2];
    let cm1 = X_M[0] * X_M[0] - X_M[1] * X_M[1];
    let cm2 = X_M[1] * X_M[1] - X_M[2] * X_M[2];
    let (p2, m2) = (X_P[2], X_M[2]);
    for (ibl, (xs, y)) in x
        .chunks_exact(256)
        .zip(out.chunks_exact_mut(56))
        .enumerate()
    {
        y.fill(0);
        let sigma2 = 2.0 * xs.iter().fold(0f32, |s, v| s + v * v) / 256.0;
        let qwb = |ib: usize| qw.map(|q| &q[256 * ibl + 16 * ib..256 * ibl + 16 * ib + 16]);
        let mut max_scale = 0f32;
        for ib in 0..16 {
            let xb = &xs[16 * ib..16 * ib + 16];
            weights(xb, qwb(ib), sigma2, &mut w);
            if amax(xb) < EPS_IQ1_M {
                scales[ib] = 0.0;
                shifts[ib] = 0;
                continue;
            }
            let order = sorted_order::<16>(xb);
            // prefix sums of w x and w per half of the group, in sorted order
            let (mut px, mut pw) = ([[0f32; 17]; 2], [[0f32; 17]; 2]);
            for j in 0..16 {
                let i = order[j];
                let h = usize::from(i >= 8);
                px[h][j + 1] = px[h][j] + w[i] * xb[i];
                px[1 - h][j + 1] = px[1 - h][j];
                pw[h][j + 1] = pw[h][j] + w[i];
                pw[1 - h][j + 1] = pw[1 - h][j];
            }
            let txs = [px[0][16], px[1][16]];
            let tws = [pw[0][16], pw[1][16]];
            let mut best = f32::MIN;
            let mut scale = amax(xb);
            let mut split = None;
            for i1 in 0..=16 {
                for i2 in i1..=16 {
                    let (mut qx_p, mut qx_m, mut q2_p, mut q2_m) =
                        ([0f32; 2], [0f32; 2], [0f32; 2], [0f32; 2]);
                    for h in 0..2 {
                        let sx = px[h][i1] + px[h][i2];
                        qx_p[h] = txs[h] * p2 - sx;
                        qx_m[h] = txs[h] * m2 - sx;
                        q2_p[h] = tws[h] * p2 * p2 + pw[h][i1] * cp1 + pw[h][i2] * cp2;
                        q2_m[h] = tws[h] * m2 * m2 + pw[h][i1] * cm1 + pw[h][i2] * cm2;
                    }
                    let sumqx = [
                        qx_p[0] + qx_p[1],
                        qx_p[0] + qx_m[1],
                        qx_m[0] + qx_p[1],
                        qx_m[0] + qx_m[1],
                    ];
                    let sumq2 = [
                        q2_p[0] + q2_p[1],
                        q2_p[0] + q2_m[1],
                        q2_m[0] + q2_p[1],
                        q2_m[0] + q2_m[1],
                    ];
                    for k in 0..4 {
                        if sumq2[k] > 0.0 && sumqx[k] * sumqx[k] > best * sumq2[k] {
                            scale = sumqx[k] / sumq2[k];
                            best = scale * sumqx[k];
                            split = Some((i1, i2, k));
                        }
                    }
                }
            }
            let Some((i1, i2, mut kbest)) = split else {
                scales[ib] = 0.0;
                shifts[ib] = 0;
                continue;
            };
            let mut l = split_labels(&order, i1, i2);
            if scale < 0.0 {
                l.iter_mut().for_each(|v| *v = 2 - *v);
                scale = -scale;
                kbest = 3 - kbest;
            }
            let mut index = [0usize; 2];
            let mut all_on = true;
            for k in 0..2 {
                let r = 8 * k..8 * k + 8;
                let xx = half_values(kbest, k);
                let (gi, on) = to_grid(lat, &l[r.clone()], &xb[r.clone()], &w[r], scale, xx);
                index[k] = gi;
                all_on &= on;
            }
            if !all_on {
                let (mut sumqx, mut sumq2) = (0f32, 0f32);
                for k in 0..2 {
                    let xx = half_values(kbest, k);
                    for j in 0..8 {
                        let wi = w[8 * k + j];
                        let q = grid_value(lat, index[k], j, xx);
                        sumqx += wi * q * xb[8 * k + j];
                        sumq2 += wi * q * q;
                    }
                }
                if sumqx > 0.0 && sumq2 > 0.0 {
                    scale = sumqx / sumq2;
                }
            }
            y[2 * ib] = index[0] as u8;
            y[2 * ib + 1] = index[1] as u8;
            y[32 + ib] = ((index[0] >> 8) | ((index[1] >> 8) << 4)) as u8;
            scales[ib] = scale;
            shifts[ib] = kbest;
            max_scale = max_scale.max(scale);
        }
        if max_scale == 0.0 {
            continue;
        }
        // refit the super scale to the chosen grid points and 3-bit scales
        const MASKS: [u8; 4] = [0x00, 0x80, 0x08, 0x88];
        let mut sc = [0u16; 4];
        let mut d = max_scale / 15.0;
        let id = 1.0 / d;
        let (mut sumqx, mut sumq2) = (0f32, 0f32);
        for ib in 0..16 {
            let l = nearest_int(0.5 * (id * scales[ib] - 1.0)).clamp(0, 7);
            sc[ib / 4] |= (l as u16) << (3 * (ib % 4));
            y[32 + ib] |= MASKS[shifts[ib]];
            let xb = &xs[16 * ib..16 * ib + 16];
            weights(xb, qwb(ib), sigma2, &mut w);
            for k in 0..2 {
                let xx = half_values(shifts[ib], k);
                let hi = (y[32 + ib] >> (4 * k)) & 7;
                let gi = y[2 * ib + k] as usize | ((hi as usize) << 8);
                for j in 0..8 {
                    let wi = w[8 * k + j];
                    let q = grid_value(lat, gi, j, xx) * (2 * l + 1) as f32;
                    sumqx += wi * q * xb[8 * k + j];
                    sumq2 += wi * q * q;
                }
            }
        }
        if sumq2 > 0.0 {
            d = sumqx / sumq2;
        }
        let s = u16::from_le_bytes(f16_bytes(d * 1.1125));
        sc[0] |= (s & 0x000f) << 12;
        sc[1] |= (s & 0x00f0) << 8;
        sc[2] |= (s & 0x0f00) << 4;
        sc[3] |= s & 0xf000;
        for (o, v) in y[48..56].chunks_exact_mut(2).zip(&sc) {
            o.copy_from_slice(&v.to_le_bytes());
        }
    }
}
