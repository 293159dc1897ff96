//! Quantizers for the 32-element block types (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, IQ4_NL) and IQ4_XS.
//!
//! Without importance weights the legacy types use ggml's reference rounding (bit-exact with
//! gguf-py's `gguf.quants.quantize`, which the tests check); with weights they use the weighted
//! scale searches of `qsearch`, as llama.cpp's `quantize_q4_0` etc. do.
use crate::qsearch::{AsymSearch, best_index, make_qkx, make_qx, nearest_int};
use crate::tables::{KVALUES_IQ4NL, KVALUES_MXFP4};

/// Encode an f32 as little-endian IEEE half (round to nearest even, as ggml's F16C path).
#[inline(always)]
pub fn f16_bytes(v: f32) -> [u8; 2] {
    half::f16::from_f32(v).to_bits().to_le_bytes()
}

/// Round-trip through f16.
#[inline(always)]
pub fn via_f16(v: f32) -> f32 {
    half::f16::from_f32(v).to_f32()
}

/// The importance weights ggml uses with an imatrix: `qw * sqrt(sigma2 + x^2)`.
fn imatrix_weights(xb: &[f32], qw: &[f32], sigma2: f32, out: &mut [f32]) {
    for j in 0..xb.len() {
        out[j] = qw[j] * (sigma2 + xb[j] * xb[j]).sqrt();
    }
}

fn mean_square(x: &[f32]) -> f32 {
    x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32
}

fn signed_max(x: &[f32]) -> f32 {
    let (mut max, mut amax) = (0f32, 0f32);
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    max
}

/// Pack 32 4-bit quants: byte j holds quants j (low) and j+16 (high).
fn pack_nibbles(l: &[u8], qs: &mut [u8]) {
    for j in 0..16 {
        qs[j] = (l[j] & 0xF) | ((l[j + 16] & 0xF) << 4);
    }
}

/// Pack 32 5-bit quants: nibbles as [`pack_nibbles`], fifth bits into the 32-bit `qh`.
fn pack_q5(l: &[u8], qh: &mut [u8], qs: &mut [u8]) {
    pack_nibbles(l, qs);
    let mut h = 0u32;
    for (j, &v) in l.iter().enumerate().take(32) {
        h |= (((v >> 4) & 1) as u32) << j;
    }
    qh.copy_from_slice(&h.to_le_bytes());
}

/// Q8_0: d = amax/127, q = round(x/d) (half away from zero). 34 bytes per 32.
pub fn q8_0(x: &[f32], out: &mut [u8]) {
    for (xb, y) in x.chunks_exact(32).zip(out.chunks_exact_mut(34)) {
        let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        y[..2].copy_from_slice(&f16_bytes(d));
        for (q, &v) in y[2..].iter_mut().zip(xb) {
            *q = (v * id).round() as i8 as u8;
        }
    }
}

/// Q4_0: symmetric 4-bit, 18 bytes per 32.
pub fn q4_0(x: &[f32], qw: Option<&[f32]>, out: &mut [u8]) {
    let sigma2 = qw.map(|_| mean_square(x));
    let mut l = [0u8; 32];
    let mut w = [0f32; 32];
    for (ib, (xb, y)) in x.chunks_exact(32).zip(out.chunks_exact_mut(18)).enumerate() {
        let d = if let (Some(qw), Some(s2)) = (qw, sigma2) {
            imatrix_weights(xb, &qw[32 * ib..32 * ib + 32], s2, &mut w);
            let mut li = [0i8; 32];
            let d = make_qx(xb, 8, &mut li, Some(&w));
            for j in 0..32 {
                l[j] = li[j] as u8;
            }
            d
        } else {
            let d = signed_max(xb) / -8.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            for j in 0..32 {
                l[j] = ((xb[j] * id + 8.5) as i8).min(15) as u8;
            }
            d
        };
        y[..2].copy_from_slice(&f16_bytes(d));
        pack_nibbles(&l, &mut y[2..]);
    }
}

/// Q5_0: symmetric 5-bit, 22 bytes per 32.
pub fn q5_0(x: &[f32], qw: Option<&[f32]>, out: &mut [u8]) {
    let sigma2 = qw.map(|_| mean_square(x));
    let mut l = [0u8; 32];
    let mut w = [0f32; 32];
    for (ib, (xb, y)) in x.chunks_exact(32).zip(out.chunks_exact_mut(22)).enumerate() {
        let d = if let (Some(qw), Some(s2)) = (qw, sigma2) {
            imatrix_weights(xb, &qw[32 * ib..32 * ib + 32], s2, &mut w);
            let mut li = [0i8; 32];
            let d = make_qx(xb, 16, &mut li, Some(&w));
            for j in 0..32 {
                l[j] = li[j] as u8;
            }
            d
        } else {
            let d = signed_max(xb) / -16.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            for j in 0..32 {
                l[j] = ((xb[j] * id + 16.5) as i8).min(31) as u8;
            }
            d
        };
        y[..2].copy_from_slice(&f16_bytes(d));
        let (qh, qs) = y[2..].split_at_mut(4);
        pack_q5(&l, qh, qs);
    }
}

/// The asymmetric 32-blocks (Q4_1, Q5_1): returns (d, m) with x ~ d*q + m.
fn asym_block(xb: &[f32], nmax: i32, w: Option<&[f32]>, l: &mut [u8; 32]) -> (f32, f32) {
    if let Some(w) = w {
        let o = AsymSearch {
            rmin: -0.9,
            rdelta: 0.05,
            nstep: 36,
            use_mad: false,
        };
        let (d, min) = make_qkx(xb, nmax, Some(w), l, o);
        return (d, -min);
    }
    let min = xb.iter().fold(f32::MAX, |m, &v| if v < m { v } else { m });
    let max = xb.iter().fold(-f32::MAX, |m, &v| if v > m { v } else { m });
    let d = (max - min) / nmax as f32;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    for j in 0..32 {
        // ggml casts to uint8 (Q5_1) or int8 (Q4_1) and caps at nmax; in range both agree.
        l[j] = (((xb[j] - min) * id + 0.5) as u8).min(nmax as u8);
    }
    (d, min)
}

/// Q4_1: 4-bit with min, 20 bytes per 32.
pub fn q4_1(x: &[f32], qw: Option<&[f32]>, out: &mut [u8]) {
    let sigma2 = qw.map(|_| mean_square(x));
    let mut l = [0u8; 32];
    let mut w = [0f32; 32];
    for (ib, (xb, y)) in x.chunks_exact(32).zip(out.chunks_exact_mut(20)).enumerate() {
        let wb = if let (Some(qw), Some(s2)) = (qw, sigma2) {
            imatrix_weights(xb, &qw[32 * ib..32 * ib + 32], s2, &mut w);
            Some(&w[..])
        } else {
            None
        };
        let (d, m) = asym_block(xb, 15, wb, &mut l);
        y[..2].copy_from_slice(&f16_bytes(d));
        y[2..4].copy_from_slice(&f16_bytes(m));
        pack_nibbles(&l, &mut y[4..]);
    }
}

/// Q5_1: 5-bit with min, 24 bytes per 32.
pub fn q5_1(x: &[f32], qw: Option<&[f32]>, out: &mut [u8]) {
    let sigma2 = qw.map(|_| mean_square(x));
    let mut l = [0u8; 32];
    let mut w = [0f32; 32];
    for (ib, (xb, y)) in x.chunks_exact(32).zip(out.chunks_exact_mut(24)).enumerate() {
        let wb = if let (Some(qw), Some(s2)) = (qw, sigma2) {
            imatrix_weights(xb, &qw[32 * ib..32 * ib + 32], s2, &mut w);
            Some(&w[..])
        } else {
            None
        };
        let (d, m) = asym_block(xb, 31, wb, &mut l);
        y[..2].copy_from_slice(&f16_bytes(d));
        y[2..4].copy_from_slice(&f16_bytes(m));
        let (qh, qs) = y[4..].split_at_mut(4);
        pack_q5(&l, qh, qs);
    }
}

/// Fit one 32-block to the IQ4_NL grid: the best scale of 2*ntry+2 candidates by the weighted
/// fit. Returns the scale (0 for an all-zero block) and fills `l`.
fn iq4_block(xb: &[f32], w: &[f32], ntry: i32, l: &mut [u8]) -> f32 {
    let v = &KVALUES_IQ4NL;
    let max = signed_max(xb);
    if max.abs() < crate::qsearch::GROUP_MAX_EPS {
        l[..xb.len()].fill(0);
        return 0.0;
    }
    let fit = |id: f32, l: Option<&mut [u8]>| {
        let (mut sqx, mut sq2) = (0f32, 0f32);
        let mut l = l;
        for j in 0..xb.len() {
            let k = best_index(v, id * xb[j]);
            if let Some(l) = l.as_deref_mut() {
                l[j] = k as u8;
            }
            let q = v[k] as f32;
            sqx += w[j] * q * xb[j];
            sq2 += w[j] * q * q;
        }
        (sqx, sq2)
    };
    let d0 = if ntry > 0 {
        -max / v[0] as f32
    } else {
        max / v[0] as f32
    };
    let (sqx, sq2) = fit(1.0 / d0, Some(l));
    let mut d = if sq2 > 0.0 { sqx / sq2 } else { 0.0 };
    let mut best = d * sqx;
    for itry in -ntry..=ntry {
        let id = (itry as f32 + v[0] as f32) / max;
        let (sqx, sq2) = fit(id, None);
        if sq2 > 0.0 && sqx * sqx > best * sq2 {
            d = sqx / sq2;
            best = d * sqx;
        }
    }
    d
}

fn iq4_weights(xb: &[f32], qw: Option<&[f32]>, sigma2: f32, w: &mut [f32]) {
    match qw {
        Some(qw) => imatrix_weights(xb, qw, sigma2, w),
        None => {
            for j in 0..xb.len() {
                w[j] = xb[j] * xb[j];
            }
        }
    }
}

/// IQ4_NL: 32-blocks on the non-linear 4-bit grid, 18 bytes per 32.
pub fn iq4_nl(x: &[f32], qw: Option<&[f32]>, out: &mut [u8]) {
    let mut l = [0u8; 32];
    let mut w = [0f32; 32];
    for (ib, (xb, y)) in x.chunks_exact(32).zip(out.chunks_exact_mut(18)).enumerate() {
        let sigma2 = 2.0 * mean_square(xb);
        iq4_weights(xb, qw.map(|q| &q[32 * ib..32 * ib + 32]), sigma2, &mut w);
        let d = iq4_block(xb, &w, 7, &mut l);
        y[..2].copy_from_slice(&f16_bytes(d));
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        for j in 0..32 {
            l[j] = best_index(&KVALUES_IQ4NL, id * xb[j]) as u8;
        }
        pack_nibbles(&l, &mut y[2..]);
    }
}

/// IQ4_XS: 256-blocks of eight 32-blocks with 6-bit scales on the IQ4_NL grid, 136 bytes.
pub fn iq4_xs(x: &[f32], qw: Option<&[f32]>, out: &mut [u8]) {
    let mut l = [0u8; 256];
    let mut w = [0f32; 32];
    let mut scales = [0f32; 8];
    for (ibl, (xs, y)) in x
        .chunks_exact(256)
        .zip(out.chunks_exact_mut(136))
        .enumerate()
    {
        let sigma2 = 2.0 * mean_square(xs);
        let (mut max_scale, mut amax_scale) = (0f32, 0f32);
        for ib in 0..8 {
            let xb = &xs[32 * ib..32 * ib + 32];
            let q = qw.map(|q| &q[256 * ibl + 32 * ib..256 * ibl + 32 * ib + 32]);
            iq4_weights(xb, q, sigma2, &mut w);
            scales[ib] = iq4_block(xb, &w, 7, &mut l[32 * ib..32 * ib + 32]);
            if scales[ib].abs() > amax_scale {
                amax_scale = scales[ib].abs();
                max_scale = scales[ib];
            }
        }
        let d = -max_scale / 32.0;
        y[..2].copy_from_slice(&f16_bytes(d));
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let (mut sh, mut sl) = (0u16, [0u8; 4]);
        for ib in 0..8 {
            let ls = nearest_int(id * scales[ib]).clamp(-32, 31);
            let dl = d * ls as f32;
            let idl = if dl != 0.0 { 1.0 / dl } else { 0.0 };
            for j in 0..32 {
                l[32 * ib + j] = best_index(&KVALUES_IQ4NL, idl * xs[32 * ib + j]) as u8;
            }
            let u = (ls + 32) as u8;
            sl[ib / 2] |= (u & 0xF) << (4 * (ib % 2));
            sh |= ((u >> 4) as u16) << (2 * ib);
        }
        y[2..4].copy_from_slice(&sh.to_le_bytes());
        y[4..8].copy_from_slice(&sl);
        for i in 0..8 {
            pack_nibbles(&l[32 * i..32 * i + 32], &mut y[8 + 16 * i..8 + 16 * i + 16]);
        }
    }
}
/// MXFP4: 17 bytes per 32 (an E8M0 shared exponent, 32 E2M1 nibbles: values 0..16 low, 16..32
/// high). ggml's `quantize_row_mxfp4_ref`: the exponent is `floor(log2(max |x|)) - 2` (biased by
/// 127), and each value takes the nearest of the 16 doubled E2M1 values at half that scale (the
/// first on ties). No importance weights, as in ggml.
pub fn mxfp4(x: &[f32], out: &mut [u8]) {
    for (xb, y) in x.chunks_exact(32).zip(out.chunks_exact_mut(17)) {
        let amax = xb
            .iter()
            .fold(0f32, |m, v| if m < v.abs() { v.abs() } else { m });
        // ggml casts the float to uint8_t; x86 converts through a 32-bit integer (out of range:
        // 0x80000000), whose low byte is stored. The same here, without undefined behaviour.
        let e = if amax > 0.0 {
            let v = (amax.log2().floor() - 2.0 + 127.0) as f64;
            if v.is_finite() && v.abs() < 2147483648.0 {
                v as i32 as u8
            } else {
                0
            }
        } else {
            0
        };
        let d = crate::ternary::e8m0_to_f32_half(e);
        y[0] = e;
        let best = |v: f32| -> u8 {
            let mut bi = 0;
            let mut be = (KVALUES_MXFP4[0] as f32 * d - v).abs();
            for (i, &k) in KVALUES_MXFP4.iter().enumerate().skip(1) {
                let err = (k as f32 * d - v).abs();
                if err < be {
                    bi = i;
                    be = err;
                }
            }
            bi as u8
        };
        for j in 0..16 {
            y[1 + j] = best(xb[j]) | (best(xb[16 + j]) << 4);
        }
    }
}
