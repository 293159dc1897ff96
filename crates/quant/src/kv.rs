//! Rows of a KV cache in its type ([`KvType`]): quantization when a token's keys and values
//! are stored, and the conversion back to f32 that attention runs a chunk of rows at a time.
//!
//! The ggml types use ggml's block layouts (ggml-common.h) and its reference rounding
//! (`quantize_row_*_ref` in ggml-quants.c): the scale from the block's largest magnitude, so
//! that the value of largest magnitude is exact. IQ4_NL searches a few scales around that one
//! for the least squared error. [`KvType::Tq3`] is hearth's: see [`TQ3_LEVELS`].
use crate::tables::KVALUES_IQ4NL;
use half::{bf16, f16};
use hearth_core::{Error, KvType, Result};

/// The 8 reconstruction levels of the Lloyd-Max quantizer for a unit-variance Gaussian
/// (J. Max, "Quantizing for minimum distortion", IRE Trans. Inf. Theory, 1960, table I, N = 8).
pub const TQ3_LEVELS: [f32; 8] = [
    -2.1520, -1.3439, -0.7560, -0.2451, 0.2451, 0.7560, 1.3439, 2.1520,
];

/// Store `x` (a whole number of `ty`'s blocks) as `ty` into `out` (`ty.bytes(x.len())` bytes).
pub fn quantize_row(ty: KvType, x: &[f32], out: &mut [u8]) -> Result<()> {
    let b = ty.block();
    if !x.len().is_multiple_of(b) || out.len() < ty.bytes(x.len()) {
        return Err(Error::Invalid(format!(
            "KV row of {} values does not fit {} bytes of {}",
            x.len(),
            out.len(),
            ty.name()
        )));
    }
    let bb = ty.block_bytes();
    match ty {
        KvType::F32 => {
            for (v, o) in x.iter().zip(out.chunks_exact_mut(4)) {
                o.copy_from_slice(&v.to_le_bytes());
            }
        }
        KvType::F16 => {
            for (v, o) in x.iter().zip(out.chunks_exact_mut(2)) {
                o.copy_from_slice(&f16::from_f32(*v).to_le_bytes());
            }
        }
        KvType::Bf16 => {
            for (v, o) in x.iter().zip(out.chunks_exact_mut(2)) {
                o.copy_from_slice(&bf16::from_f32(*v).to_le_bytes());
            }
        }
        _ => {
            for (blk, o) in x.chunks_exact(32).zip(out.chunks_exact_mut(bb)) {
                let blk: &[f32; 32] = blk.try_into().expect("32 values");
                match ty {
                    KvType::Q8_0 => q8_0(blk, o),
                    KvType::Q4_0 => q4_0(blk, o),
                    KvType::Q5_0 => q5_0(blk, o),
                    KvType::Iq4Nl => iq4_nl(blk, o),
                    _ => tq3(blk, o),
                }
            }
        }
    }
    Ok(())
}

/// The values of `src` (`ty.bytes(out.len())` bytes) into `out`. Inlined, so that it runs
/// with the caller's target features (attention converts a chunk of rows at a time).
#[inline(always)]
pub fn dequantize_row(ty: KvType, src: &[u8], out: &mut [f32]) -> Result<()> {
    if !out.len().is_multiple_of(ty.block()) || src.len() != ty.bytes(out.len()) {
        return Err(Error::Invalid(format!(
            "KV row of {} bytes does not hold {} values of {}",
            src.len(),
            out.len(),
            ty.name()
        )));
    }
    let bb = ty.block_bytes();
    let blocks = src.chunks_exact(bb).zip(out.chunks_exact_mut(ty.block()));
    let d = |b: &[u8]| f16::from_le_bytes([b[0], b[1]]).to_f32();
    match ty {
        KvType::F32 => {
            for (b, o) in blocks {
                o[0] = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
        }
        KvType::F16 => {
            for (b, o) in blocks {
                o[0] = f16::from_le_bytes([b[0], b[1]]).to_f32();
            }
        }
        KvType::Bf16 => {
            for (b, o) in blocks {
                o[0] = f32::from_bits((u16::from_le_bytes([b[0], b[1]]) as u32) << 16);
            }
        }
        KvType::Q8_0 => {
            for (b, o) in blocks {
                let d = d(b);
                for (v, &q) in o.iter_mut().zip(&b[2..34]) {
                    *v = d * (q as i8) as f32;
                }
            }
        }
        KvType::Q4_0 => {
            for (b, o) in blocks {
                let d = d(b);
                let (lo, hi) = o.split_at_mut(16);
                for j in 0..16 {
                    lo[j] = d * ((b[2 + j] & 15) as i32 - 8) as f32;
                    hi[j] = d * ((b[2 + j] >> 4) as i32 - 8) as f32;
                }
            }
        }
        KvType::Q5_0 => {
            for (b, o) in blocks {
                let d = d(b);
                let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
                let (lo, hi) = o.split_at_mut(16);
                for j in 0..16 {
                    let a = (b[6 + j] & 15) as u32 | ((qh >> j) & 1) << 4;
                    let c = (b[6 + j] >> 4) as u32 | ((qh >> (j + 16)) & 1) << 4;
                    lo[j] = d * (a as i32 - 16) as f32;
                    hi[j] = d * (c as i32 - 16) as f32;
                }
            }
        }
        KvType::Iq4Nl => {
            for (b, o) in blocks {
                let d = d(b);
                let (lo, hi) = o.split_at_mut(16);
                for j in 0..16 {
                    lo[j] = d * KVALUES_IQ4NL[(b[2 + j] & 15) as usize] as f32;
                    hi[j] = d * KVALUES_IQ4NL[(b[2 + j] >> 4) as usize] as f32;
                }
            }
        }
        KvType::Tq3 => {
            for (b, o) in blocks {
                let d = d(b);
                // 8 codes in each 3 bytes of the little-endian bit stream
                for (g, og) in o.chunks_exact_mut(8).enumerate() {
                    let c = &b[2 + 3 * g..5 + 3 * g];
                    let bits = c[0] as u32 | (c[1] as u32) << 8 | (c[2] as u32) << 16;
                    for (i, v) in og.iter_mut().enumerate() {
                        *v = d * TQ3_LEVELS[((bits >> (3 * i)) & 7) as usize];
                    }
                }
            }
        }
    }
    Ok(())
}

fn put_d(o: &mut [u8], d: f32) {
    o[..2].copy_from_slice(&f16::from_f32(d).to_le_bytes());
}

fn q8_0(x: &[f32; 32], o: &mut [u8]) {
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    put_d(o, d);
    for (q, v) in o[2..34].iter_mut().zip(x) {
        *q = (v * id).round() as i8 as u8;
    }
}

/// The value of largest magnitude, with its sign (the first of equal magnitudes).
fn signed_max(x: &[f32; 32]) -> f32 {
    x.iter()
        .fold(0f32, |m, &v| if v.abs() > m.abs() { v } else { m })
}

fn q4_0(x: &[f32; 32], o: &mut [u8]) {
    let d = signed_max(x) / -8.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    put_d(o, d);
    let q = |v: f32| ((v * id + 8.5) as i32).clamp(0, 15) as u8;
    for j in 0..16 {
        o[2 + j] = q(x[j]) | (q(x[j + 16]) << 4);
    }
}

fn q5_0(x: &[f32; 32], o: &mut [u8]) {
    let d = signed_max(x) / -16.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    put_d(o, d);
    let q = |v: f32| ((v * id + 16.5) as i32).clamp(0, 31) as u32;
    let mut qh = 0u32;
    for j in 0..16 {
        let (a, b) = (q(x[j]), q(x[j + 16]));
        o[6 + j] = ((a & 15) | ((b & 15) << 4)) as u8;
        qh |= ((a >> 4) << j) | ((b >> 4) << (j + 16));
    }
    o[2..6].copy_from_slice(&qh.to_le_bytes());
}

/// The index of the grid value nearest `v` in a sorted grid.
fn nearest(grid: &[f32], v: f32) -> usize {
    let i = grid.partition_point(|&g| g < v);
    if i == 0 {
        0
    } else if i == grid.len() || v - grid[i - 1] <= grid[i] - v {
        i - 1
    } else {
        i
    }
}

/// The block's indices into `grid` at scale `d` and the least-squares scale for them, with
/// its squared error.
fn fit(x: &[f32; 32], grid: &[f32], d: f32, idx: &mut [u8; 32]) -> (f32, f32) {
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let (mut sxg, mut sgg) = (0f32, 0f32);
    for (i, &v) in x.iter().enumerate() {
        let k = nearest(grid, v * id);
        idx[i] = k as u8;
        sxg += v * grid[k];
        sgg += grid[k] * grid[k];
    }
    let best = if sgg > 0.0 { sxg / sgg } else { 0.0 };
    let err: f32 = x
        .iter()
        .zip(idx.iter())
        .map(|(&v, &k)| (v - best * grid[k as usize]).powi(2))
        .sum();
    (best, err)
}

/// The indices and scale of least squared error among scales `d0 * (1 + s/16)` for
/// `s` in -4..=4, each refitted by least squares.
fn search(x: &[f32; 32], grid: &[f32], d0: f32) -> (f32, [u8; 32]) {
    let mut best = (f32::INFINITY, 0f32, [0u8; 32]);
    let mut idx = [0u8; 32];
    for s in -4..=4 {
        let (d, e) = fit(x, grid, d0 * (1.0 + s as f32 / 16.0), &mut idx);
        if e < best.0 {
            best = (e, d, idx);
        }
    }
    (best.1, best.2)
}

fn iq4_nl(x: &[f32; 32], o: &mut [u8]) {
    let grid: [f32; 16] = KVALUES_IQ4NL.map(|v| v as f32);
    // the grid runs from -127 to 113: the largest magnitude on the grid's end of its sign
    let m = signed_max(x);
    let d0 = if m < 0.0 { m / -127.0 } else { m / 113.0 };
    let (d, idx) = search(x, &grid, d0);
    put_d(o, d);
    for j in 0..16 {
        o[2 + j] = idx[j] | (idx[j + 16] << 4);
    }
}

fn tq3(x: &[f32; 32], o: &mut [u8]) {
    let rms = (x.iter().map(|v| v * v).sum::<f32>() / 32.0).sqrt();
    let (d, idx) = search(x, &TQ3_LEVELS, rms);
    put_d(o, d);
    let mut bits = 0u128;
    for (i, &k) in idx.iter().enumerate() {
        bits |= (k as u128) << (3 * i);
    }
    o[2..14].copy_from_slice(&bits.to_le_bytes()[..12]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use hearth_core::kv::KV_TYPES;

    /// Normal-ish values from a fixed generator, with an outlier.
    fn data(n: usize, seed: u32) -> Vec<f32> {
        let mut s = seed;
        let mut x: Vec<f32> = (0..n)
            .map(|_| {
                let mut t = 0f32;
                for _ in 0..4 {
                    s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                    t += (s >> 8) as f32 / (1u32 << 24) as f32 - 0.5;
                }
                t
            })
            .collect();
        x[5] = 3.0;
        x
    }

    /// Relative RMS error of a round trip, per type, on 1024 values: each type's bound is
    /// what its bits allow (a broken block layout or scale gives errors near 1).
    #[test]
    fn round_trip_errors() {
        let x = data(1024, 7);
        let norm = (x.iter().map(|v| v * v).sum::<f32>()).sqrt();
        for (ty, bound) in [
            (KvType::F32, 0.0),
            (KvType::F16, 1e-3),
            (KvType::Bf16, 5e-3),
            (KvType::Q8_0, 0.01),
            (KvType::Q5_0, 0.05),
            (KvType::Q4_0, 0.1),
            (KvType::Iq4Nl, 0.1),
            (KvType::Tq3, 0.25),
        ] {
            let mut q = vec![0u8; ty.bytes(x.len())];
            quantize_row(ty, &x, &mut q).unwrap();
            let mut y = vec![0f32; x.len()];
            dequantize_row(ty, &q, &mut y).unwrap();
            let e = (x.iter().zip(&y).map(|(a, b)| (a - b).powi(2)).sum::<f32>()).sqrt() / norm;
            assert!(e <= bound, "{}: relative error {e} > {bound}", ty.name());
        }
        assert_eq!(KV_TYPES.len(), 8);
    }

    /// The ggml types convert back exactly as the weights' dequantizers read the same blocks.
    #[test]
    fn matches_the_weight_dequantizers() {
        let x = data(256, 11);
        for ty in KV_TYPES {
            let Some(dt) = ty.dtype() else { continue };
            let mut q = vec![0u8; ty.bytes(x.len())];
            quantize_row(ty, &x, &mut q).unwrap();
            let (mut a, mut b) = (vec![0f32; 256], vec![0f32; 256]);
            dequantize_row(ty, &q, &mut a).unwrap();
            crate::dequantize(dt, &q, &mut b).unwrap();
            assert_eq!(a, b, "{}", ty.name());
        }
    }

    /// Q8_0's rounding is ggml's: the largest magnitude maps to ±127 and the rest round to
    /// the nearest step.
    #[test]
    fn q8_0_layout() {
        let mut x = [0f32; 32];
        for (i, v) in x.iter_mut().enumerate() {
            *v = i as f32 - 10.0;
        }
        let mut q = [0u8; 34];
        quantize_row(KvType::Q8_0, &x, &mut q).unwrap();
        assert_eq!(
            f16::from_le_bytes([q[0], q[1]]).to_f32(),
            f16::from_f32(21.0 / 127.0).to_f32()
        );
        assert_eq!(q[2 + 31] as i8, 127);
        assert_eq!(q[2 + 10] as i8, 0);
        assert_eq!(q[2] as i8, (-10.0f32 * 127.0 / 21.0).round() as i8);
    }

    /// A TQ3 block of exact levels comes back exactly.
    #[test]
    fn tq3_exact_levels() {
        let x: [f32; 32] = std::array::from_fn(|i| 0.5 * TQ3_LEVELS[(i * 3) % 8]);
        let mut q = [0u8; 14];
        quantize_row(KvType::Tq3, &x, &mut q).unwrap();
        let mut y = [0f32; 32];
        dequantize_row(KvType::Tq3, &q, &mut y).unwrap();
        for (a, b) in x.iter().zip(&y) {
            assert!((a - b).abs() < 1e-3, "{a} {b}");
        }
        assert!(quantize_row(KvType::Tq3, &x[..31], &mut q).is_err());
    }
}
