//! Quantizers for the k-quants (Q2_K .. Q6_K): 256-element super-blocks whose 16- or
//! 32-element sub-blocks each get a scale (and a min) found by a weighted least-squares search,
//! then the sub-block scales are themselves quantized to 4, 6 or 8 bits against one f16
//! super-block scale, and the values are re-rounded with the scales as stored.
//!
//! Without importance weights these follow ggml's `quantize_row_qN_K_ref` (the path
//! `llama-quantize` takes without `--imatrix`); with them, `quantize_row_qN_K_impl`.
use crate::qlegacy::{f16_bytes, via_f16};
use crate::qsearch::{AsymSearch, GROUP_MAX_EPS, make_q3, make_qkx, make_qp, make_qx, nearest_int};

const QK: usize = 256;

/// Pack 256 2-bit values: byte `j/4 + l` of each 128-half holds l, l+32, l+64, l+96.
fn pack_2bit(l: &[u8; QK], qs: &mut [u8]) {
    for j in (0..QK).step_by(128) {
        for i in 0..32 {
            qs[j / 4 + i] = (l[j + i] & 3)
                | ((l[j + i + 32] & 3) << 2)
                | ((l[j + i + 64] & 3) << 4)
                | ((l[j + i + 96] & 3) << 6);
        }
    }
}

/// Pack the eight 6-bit (scale, min) pairs of Q4_K / Q5_K.
fn pack_scales_k4(ls: &[u8; 8], lm: &[u8; 8], out: &mut [u8]) {
    out[..12].fill(0);
    for j in 0..8 {
        let (s, m) = (ls[j].min(63), lm[j].min(63));
        if j < 4 {
            out[j] = s;
            out[j + 4] = m;
        } else {
            out[j + 4] = (s & 0xF) | ((m & 0xF) << 4);
            out[j - 4] |= (s >> 4) << 6;
            out[j] |= (m >> 4) << 6;
        }
    }
}

fn sum_sq(x: &[f32]) -> f32 {
    x.iter().map(|v| v * v).sum()
}

/// Q2_K: 84 bytes per 256.
pub fn q2_k(x: &[f32], qw: Option<&[f32]>, out: &mut [u8]) {
    let mut l = [0u8; QK];
    let (mut scales, mut mins) = ([0f32; 16], [0f32; 16]);
    let mut w = [0f32; 16];
    for (ibl, (xs, y)) in x.chunks_exact(QK).zip(out.chunks_exact_mut(84)).enumerate() {
        let mut packed = [0u8; 16];
        let (d, dmin);
        if let Some(qw) = qw {
            let qw = &qw[QK * ibl..QK * ibl + QK];
            let sigma2 = sum_sq(xs) / QK as f32;
            let mut sw = [0f32; 16];
            let o = AsymSearch {
                rmin: -0.9,
                rdelta: 0.05,
                nstep: 36,
                use_mad: false,
            };
            for j in 0..16 {
                for i in 0..16 {
                    let v = xs[16 * j + i];
                    w[i] = qw[16 * j + i] * (sigma2 + v * v).sqrt();
                }
                sw[j] = w.iter().sum();
                (scales[j], mins[j]) = make_qkx(
                    &xs[16 * j..16 * j + 16],
                    3,
                    Some(&w),
                    &mut l[16 * j..16 * j + 16],
                    o,
                );
            }
            let (mut ls, mut lm) = ([0u8; 16], [0u8; 16]);
            d = make_qp(&scales, 15, &mut ls, &sw);
            dmin = make_qp(&mins, 15, &mut lm, &sw);
            for j in 0..16 {
                packed[j] = (ls[j] & 0xF) | (lm[j] << 4);
            }
        } else {
            let o = AsymSearch {
                rmin: -0.5,
                rdelta: 0.1,
                nstep: 15,
                use_mad: true,
            };
            let (mut max_scale, mut max_min) = (0f32, 0f32);
            for j in 0..16 {
                let xb = &xs[16 * j..16 * j + 16];
                for i in 0..16 {
                    w[i] = xb[i].abs();
                }
                (scales[j], mins[j]) = make_qkx(xb, 3, Some(&w), &mut l[16 * j..16 * j + 16], o);
                max_scale = max_scale.max(scales[j]);
                max_min = max_min.max(mins[j]);
            }
            if max_scale > 0.0 {
                let is = 15.0 / max_scale;
                for j in 0..16 {
                    packed[j] = nearest_int(is * scales[j]) as u8;
                }
                d = max_scale / 15.0;
            } else {
                d = 0.0;
            }
            if max_min > 0.0 {
                let is = 15.0 / max_min;
                for j in 0..16 {
                    packed[j] |= (nearest_int(is * mins[j]) as u8) << 4;
                }
                dmin = max_min / 15.0;
            } else {
                dmin = 0.0;
            }
        }
        let (dq, mq) = (via_f16(d), via_f16(dmin));
        for j in 0..16 {
            let dd = dq * (packed[j] & 0xF) as f32;
            if dd == 0.0 {
                continue;
            }
            let dm = mq * (packed[j] >> 4) as f32;
            for i in 0..16 {
                l[16 * j + i] = nearest_int((xs[16 * j + i] + dm) / dd).clamp(0, 3) as u8;
            }
        }
        y[..16].copy_from_slice(&packed);
        pack_2bit(&l, &mut y[16..80]);
        y[80..82].copy_from_slice(&f16_bytes(d));
        y[82..84].copy_from_slice(&f16_bytes(dmin));
    }
}

/// Q3_K: 110 bytes per 256.
pub fn q3_k(x: &[f32], qw: Option<&[f32]>, out: &mut [u8]) {
    let mut li = [0i8; QK];
    let mut scales = [0f32; 16];
    for (ibl, (xs, y)) in x
        .chunks_exact(QK)
        .zip(out.chunks_exact_mut(110))
        .enumerate()
    {
        let mut ls = [0u8; 16]; // 6-bit scales, offset by 32
        let d;
        if let Some(qw) = qw {
            let qw = &qw[QK * ibl..QK * ibl + QK];
            let sigma2 = 2.0 * sum_sq(xs) / QK as f32;
            let mut sw = [0f32; 16];
            let mut w = [0f32; 16];
            for j in 0..16 {
                for i in 0..16 {
                    let v = xs[16 * j + i];
                    w[i] = qw[16 * j + i] * (sigma2 + v * v).sqrt();
                }
                sw[j] = w.iter().sum();
                scales[j] = make_qx(
                    &xs[16 * j..16 * j + 16],
                    4,
                    &mut li[16 * j..16 * j + 16],
                    Some(&w),
                );
            }
            let mut lsi = [0i8; 16];
            d = make_qx(&scales, 32, &mut lsi, Some(&sw));
            for j in 0..16 {
                ls[j] = lsi[j] as u8;
            }
        } else {
            let (mut max_scale, mut amax) = (0f32, 0f32);
            for j in 0..16 {
                scales[j] = make_q3(&xs[16 * j..16 * j + 16], 4, &mut li[16 * j..16 * j + 16]);
                if scales[j].abs() > amax {
                    amax = scales[j].abs();
                    max_scale = scales[j];
                }
            }
            if max_scale != 0.0 {
                let is = -32.0 / max_scale;
                for j in 0..16 {
                    ls[j] = (nearest_int(is * scales[j]).clamp(-32, 31) + 32) as u8;
                }
                d = 1.0 / is;
            } else {
                ls = [0; 16];
                d = 0.0;
            }
        }
        let mut sc = [0u8; 12];
        for j in 0..16 {
            let v = ls[j] & 63;
            if j < 8 {
                sc[j] = v & 0xF;
            } else {
                sc[j - 8] |= (v & 0xF) << 4;
            }
            sc[8 + j % 4] |= (v >> 4) << (2 * (j / 4));
        }
        let dq = via_f16(d);
        let mut l = [0u8; QK];
        for j in 0..16 {
            let s = (ls[j] & 63) as i32 - 32;
            let dd = dq * s as f32;
            for i in 0..16 {
                l[16 * j + i] = if dd == 0.0 {
                    li[16 * j + i] as u8
                } else {
                    (nearest_int(xs[16 * j + i] / dd).clamp(-4, 3) + 4) as u8
                };
            }
        }
        let hmask = &mut y[..32];
        hmask.fill(0);
        for j in 0..QK {
            if l[j] > 3 {
                hmask[j % 32] |= 1 << (j / 32);
                l[j] -= 4;
            }
        }
        pack_2bit(&l, &mut y[32..96]);
        y[96..108].copy_from_slice(&sc);
        y[108..110].copy_from_slice(&f16_bytes(d));
    }
}

/// Q4_K and Q5_K share the search; `nmax` 15 or 31. Returns (d, dmin, packed scales, quants).
fn q45_k_block(xs: &[f32], qw: Option<&[f32]>, nmax: i32) -> (f32, f32, [u8; 12], [u8; QK]) {
    let mut l = [0u8; QK];
    let (mut scales, mut mins) = ([0f32; 8], [0f32; 8]);
    let mut w = [0f32; 32];
    let (mut ls, mut lm) = ([0u8; 8], [0u8; 8]);
    let (d, dmin);
    if let Some(qw) = qw {
        let sigma2 = 2.0 * sum_sq(xs) / QK as f32;
        let mut sw = [0f32; 8];
        let o = AsymSearch {
            rmin: -0.9,
            rdelta: 0.05,
            nstep: 36,
            use_mad: false,
        };
        for j in 0..8 {
            for i in 0..32 {
                let v = xs[32 * j + i];
                w[i] = qw[32 * j + i] * (sigma2 + v * v).sqrt();
            }
            sw[j] = w.iter().sum();
            (scales[j], mins[j]) = make_qkx(
                &xs[32 * j..32 * j + 32],
                nmax,
                Some(&w),
                &mut l[32 * j..32 * j + 32],
                o,
            );
        }
        d = make_qp(&scales, 63, &mut ls, &sw);
        dmin = make_qp(&mins, 63, &mut lm, &sw);
    } else {
        let o = if nmax == 15 {
            AsymSearch {
                rmin: -1.0,
                rdelta: 0.1,
                nstep: 20,
                use_mad: false,
            }
        } else {
            AsymSearch {
                rmin: -0.5,
                rdelta: 0.1,
                nstep: 15,
                use_mad: false,
            }
        };
        let (mut max_scale, mut max_min) = (0f32, 0f32);
        for j in 0..8 {
            let xb = &xs[32 * j..32 * j + 32];
            let av = (sum_sq(xb) / 32.0).sqrt();
            for i in 0..32 {
                w[i] = av + xb[i].abs();
            }
            (scales[j], mins[j]) = make_qkx(xb, nmax, Some(&w), &mut l[32 * j..32 * j + 32], o);
            max_scale = max_scale.max(scales[j]);
            max_min = max_min.max(mins[j]);
        }
        let is = if max_scale > 0.0 {
            63.0 / max_scale
        } else {
            0.0
        };
        let im = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
        for j in 0..8 {
            ls[j] = nearest_int(is * scales[j]).clamp(0, 63) as u8;
            lm[j] = nearest_int(im * mins[j]).clamp(0, 63) as u8;
        }
        d = max_scale / 63.0;
        dmin = max_min / 63.0;
    }
    let mut packed = [0u8; 12];
    pack_scales_k4(&ls, &lm, &mut packed);
    let (dq, mq) = (via_f16(d), via_f16(dmin));
    for j in 0..8 {
        let (s, m) = crate::kquants::scale_min_k4(&packed, j);
        let dd = dq * s as f32;
        if dd == 0.0 {
            continue;
        }
        let dm = mq * m as f32;
        for i in 0..32 {
            l[32 * j + i] = nearest_int((xs[32 * j + i] + dm) / dd).clamp(0, nmax) as u8;
        }
    }
    (d, dmin, packed, l)
}

/// Q4_K: 144 bytes per 256.
pub fn q4_k(x: &[f32], qw: Option<&[f32]>, out: &mut [u8]) {
    for (ibl, (xs, y)) in x
        .chunks_exact(QK)
        .zip(out.chunks_exact_mut(144))
        .enumerate()
    {
        let (d, dmin, sc, l) = q45_k_block(xs, qw.map(|q| &q[QK * ibl..QK * ibl + QK]), 15);
        y[..2].copy_from_slice(&f16_bytes(d));
        y[2..4].copy_from_slice(&f16_bytes(dmin));
        y[4..16].copy_from_slice(&sc);
        let qs = &mut y[16..144];
        for (k, j) in (0..QK).step_by(64).enumerate() {
            for i in 0..32 {
                qs[32 * k + i] = l[j + i] | (l[j + i + 32] << 4);
            }
        }
    }
}

/// Q5_K: 176 bytes per 256.
pub fn q5_k(x: &[f32], qw: Option<&[f32]>, out: &mut [u8]) {
    for (ibl, (xs, y)) in x
        .chunks_exact(QK)
        .zip(out.chunks_exact_mut(176))
        .enumerate()
    {
        let (d, dmin, sc, l) = q45_k_block(xs, qw.map(|q| &q[QK * ibl..QK * ibl + QK]), 31);
        y[..2].copy_from_slice(&f16_bytes(d));
        y[2..4].copy_from_slice(&f16_bytes(dmin));
        y[4..16].copy_from_slice(&sc);
        let (qh, qs) = y[16..176].split_at_mut(32);
        qh.fill(0);
        for (k, n) in (0..QK).step_by(64).enumerate() {
            let (m1, m2) = (1u8 << (2 * k), 2u8 << (2 * k));
            for j in 0..32 {
                let (mut l1, mut l2) = (l[n + j], l[n + j + 32]);
                if l1 > 15 {
                    l1 -= 16;
                    qh[j] |= m1;
                }
                if l2 > 15 {
                    l2 -= 16;
                    qh[j] |= m2;
                }
                qs[32 * k + j] = l1 | (l2 << 4);
            }
        }
    }
}

/// Q6_K: 210 bytes per 256.
pub fn q6_k(x: &[f32], qw: Option<&[f32]>, out: &mut [u8]) {
    let mut li = [0i8; QK];
    let mut scales = [0f32; 16];
    for (ibl, (xs, y)) in x
        .chunks_exact(QK)
        .zip(out.chunks_exact_mut(210))
        .enumerate()
    {
        let (mut max_scale, mut amax) = (0f32, 0f32);
        for ib in 0..16 {
            let q = qw.map(|q| &q[QK * ibl + 16 * ib..QK * ibl + 16 * ib + 16]);
            scales[ib] = make_qx(
                &xs[16 * ib..16 * ib + 16],
                32,
                &mut li[16 * ib..16 * ib + 16],
                q,
            );
            if scales[ib].abs() > amax {
                amax = scales[ib].abs();
                max_scale = scales[ib];
            }
        }
        if amax < GROUP_MAX_EPS {
            y.fill(0);
            continue;
        }
        let is = -128.0 / max_scale;
        let d = 1.0 / is;
        let mut sc = [0i8; 16];
        for ib in 0..16 {
            sc[ib] = nearest_int(is * scales[ib]).min(127) as i8;
        }
        let dq = via_f16(d);
        let mut l = [0u8; QK];
        for j in 0..16 {
            let dd = dq * sc[j] as f32;
            for i in 0..16 {
                l[16 * j + i] = if dd == 0.0 {
                    li[16 * j + i] as u8
                } else {
                    (nearest_int(xs[16 * j + i] / dd).clamp(-32, 31) + 32) as u8
                };
            }
        }
        let (ql, rest) = y.split_at_mut(128);
        let (qh, rest) = rest.split_at_mut(64);
        for (k, j) in (0..QK).step_by(128).enumerate() {
            for i in 0..32 {
                let (a, b, c, e) = (l[j + i], l[j + i + 32], l[j + i + 64], l[j + i + 96]);
                ql[64 * k + i] = (a & 0xF) | ((c & 0xF) << 4);
                ql[64 * k + i + 32] = (b & 0xF) | ((e & 0xF) << 4);
                qh[32 * k + i] = (a >> 4) | ((b >> 4) << 2) | ((c >> 4) << 4) | ((e >> 4) << 6);
            }
        }
        for ib in 0..16 {
            rest[ib] = sc[ib] as u8;
        }
        rest[16..18].copy_from_slice(&f16_bytes(d));
    }
}
