//! The k-quants: 256-element super-blocks with 6- or 8-bit sub-block scales.
use crate::{Block, assert_block_size, f16le};

/// Elements in a k-quant super-block.
pub const QK_K: usize = 256;

/// Q2_K: 16 sub-blocks of 16; x = d*sc*q - dmin*m, q 2 bits.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct BlockQ2K {
    /// low nibble: scale, high nibble: min, per sub-block
    pub scales: [u8; 16],
    /// 2-bit quants
    pub qs: [u8; 64],
    /// super-block scale (f16)
    pub d: [u8; 2],
    /// super-block min scale (f16)
    pub dmin: [u8; 2],
}
assert_block_size!(BlockQ2K, 84);

impl Block for BlockQ2K {
    const N: usize = QK_K;
    #[inline(always)]
    fn dequant(&self, out: &mut [f32]) {
        let (d, dmin) = (f16le(self.d), f16le(self.dmin));
        for h in 0..2 {
            for s in 0..4 {
                for l in 0..32 {
                    let e = h * 128 + s * 32 + l;
                    let sc = self.scales[e / 16];
                    let q = (self.qs[h * 32 + l] >> (2 * s)) & 3;
                    out[e] = d * (sc & 0xF) as f32 * q as f32 - dmin * (sc >> 4) as f32;
                }
            }
        }
    }
}

/// Q3_K: 16 sub-blocks of 16 with signed 6-bit scales; q 3 bits (2 low + 1 in hmask).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct BlockQ3K {
    /// high bits
    pub hmask: [u8; 32],
    /// low 2 bits
    pub qs: [u8; 64],
    /// 16 packed 6-bit scales
    pub scales: [u8; 12],
    /// super-block scale (f16)
    pub d: [u8; 2],
}
assert_block_size!(BlockQ3K, 110);

impl BlockQ3K {
    /// The 16 signed sub-block scales.
    pub fn scales(&self) -> [i8; 16] {
        let mut out = [0i8; 16];
        for (j, o) in out.iter_mut().enumerate() {
            let lo = (self.scales[j % 8] >> (4 * (j / 8))) & 0xF;
            let hi = (self.scales[8 + j % 4] >> (2 * (j / 4))) & 3;
            *o = ((lo | (hi << 4)) as i32 - 32) as i8;
        }
        out
    }
}

impl Block for BlockQ3K {
    const N: usize = QK_K;
    #[inline(always)]
    fn dequant(&self, out: &mut [f32]) {
        let d = f16le(self.d);
        let sc = self.scales();
        for h in 0..2 {
            for s in 0..4 {
                let k = h * 4 + s;
                for l in 0..32 {
                    let e = h * 128 + s * 32 + l;
                    let lo = ((self.qs[h * 32 + l] >> (2 * s)) & 3) as i32;
                    let hb = ((self.hmask[l] >> k) & 1) as i32;
                    let q = lo - 4 * (1 - hb);
                    out[e] = d * sc[e / 16] as f32 * q as f32;
                }
            }
        }
    }
}

/// Unpack the eight 6-bit (scale, min) pairs of Q4_K / Q5_K.
#[inline]
pub fn scale_min_k4(scales: &[u8; 12], j: usize) -> (u8, u8) {
    if j < 4 {
        (scales[j] & 63, scales[j + 4] & 63)
    } else {
        (
            (scales[j + 4] & 0xF) | ((scales[j - 4] >> 6) << 4),
            (scales[j + 4] >> 4) | ((scales[j] >> 6) << 4),
        )
    }
}

/// All eight (scale, min) pairs of [`scale_min_k4`] at once, with word-wide bit operations:
/// bytes 0..4 hold the low six bits of scales 0..3 (their top bits are the high bits of scales
/// 4..7), bytes 4..8 the same for mins, and bytes 8..12 the low nibbles of scales / mins 4..7.
#[inline(always)]
pub fn scales_mins_k4(scales: &[u8; 12]) -> ([u8; 8], [u8; 8]) {
    let w = |i: usize| u32::from_le_bytes([scales[i], scales[i + 1], scales[i + 2], scales[i + 3]]);
    let (w0, w1, w2) = (w(0), w(4), w(8));
    const M6: u32 = 0x3F3F_3F3F;
    const M4: u32 = 0x0F0F_0F0F;
    const M2: u32 = 0x0303_0303;
    let sc_hi = (w2 & M4) | (((w0 >> 6) & M2) << 4);
    let m_hi = ((w2 >> 4) & M4) | (((w1 >> 6) & M2) << 4);
    let cat = |a: u32, b: u32| (a as u64 | ((b as u64) << 32)).to_le_bytes();
    (cat(w0 & M6, sc_hi), cat(w1 & M6, m_hi))
}

/// Q4_K: 8 sub-blocks of 32; x = d*sc*q - dmin*m, q 4 bits.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct BlockQ4K {
    /// super-block scale (f16)
    pub d: [u8; 2],
    /// super-block min scale (f16)
    pub dmin: [u8; 2],
    /// packed 6-bit scales and mins
    pub scales: [u8; 12],
    /// nibbles: byte c*32+l holds element c*64+l (low) and c*64+32+l (high)
    pub qs: [u8; 128],
}
assert_block_size!(BlockQ4K, 144);

impl Block for BlockQ4K {
    const N: usize = QK_K;
    #[inline(always)]
    fn dequant(&self, out: &mut [f32]) {
        let (d, dmin) = (f16le(self.d), f16le(self.dmin));
        for c in 0..4 {
            for s in 0..2 {
                let (sc, m) = scale_min_k4(&self.scales, 2 * c + s);
                let (dl, ml) = (d * sc as f32, dmin * m as f32);
                for l in 0..32 {
                    let q = (self.qs[c * 32 + l] >> (4 * s)) & 0xF;
                    out[c * 64 + s * 32 + l] = dl * q as f32 - ml;
                }
            }
        }
    }
}

/// Q5_K: Q4_K plus a fifth bit per element in `qh`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct BlockQ5K {
    /// super-block scale (f16)
    pub d: [u8; 2],
    /// super-block min scale (f16)
    pub dmin: [u8; 2],
    /// packed 6-bit scales and mins
    pub scales: [u8; 12],
    /// fifth bits: bit k of byte l is element 32k+l
    pub qh: [u8; 32],
    /// low nibbles, as in Q4_K
    pub qs: [u8; 128],
}
assert_block_size!(BlockQ5K, 176);

impl Block for BlockQ5K {
    const N: usize = QK_K;
    #[inline(always)]
    fn dequant(&self, out: &mut [f32]) {
        let (d, dmin) = (f16le(self.d), f16le(self.dmin));
        for c in 0..4 {
            for s in 0..2 {
                let k = 2 * c + s;
                let (sc, m) = scale_min_k4(&self.scales, k);
                let (dl, ml) = (d * sc as f32, dmin * m as f32);
                for l in 0..32 {
                    let q =
                        ((self.qs[c * 32 + l] >> (4 * s)) & 0xF) | (((self.qh[l] >> k) & 1) << 4);
                    out[c * 64 + s * 32 + l] = dl * q as f32 - ml;
                }
            }
        }
    }
}

/// Q6_K: 16 sub-blocks of 16 with int8 scales; q 6 bits, offset 32.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct BlockQ6K {
    /// low 4 bits
    pub ql: [u8; 128],
    /// high 2 bits
    pub qh: [u8; 64],
    /// int8 sub-block scales
    pub scales: [u8; 16],
    /// super-block scale (f16)
    pub d: [u8; 2],
}
assert_block_size!(BlockQ6K, 210);

impl Block for BlockQ6K {
    const N: usize = QK_K;
    #[inline(always)]
    fn dequant(&self, out: &mut [f32]) {
        let d = f16le(self.d);
        for h in 0..2 {
            for l in 0..32 {
                for s in 0..4 {
                    // element h*128 + s*32 + l
                    let lo = (self.ql[h * 64 + (s & 1) * 32 + l] >> (4 * (s >> 1))) & 0xF;
                    let hi = (self.qh[h * 32 + l] >> (2 * s)) & 3;
                    let q = (lo | (hi << 4)) as i32 - 32;
                    let e = h * 128 + s * 32 + l;
                    out[e] = d * self.scales[e / 16] as i8 as f32 * q as f32;
                }
            }
        }
    }
}

/// Q8_K: f32 scale, int8 quants, and per-16 sums (used by dot kernels).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct BlockQ8K {
    /// scale (f32)
    pub d: [u8; 4],
    /// int8 quants
    pub qs: [u8; 256],
    /// sums of each 16 quants (i16)
    pub bsums: [u8; 32],
}
assert_block_size!(BlockQ8K, 292);

impl Block for BlockQ8K {
    const N: usize = QK_K;
    #[inline(always)]
    fn dequant(&self, out: &mut [f32]) {
        let d = f32::from_le_bytes(self.d);
        for j in 0..256 {
            out[j] = d * self.qs[j] as i8 as f32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn word_wide_scale_unpack_equals_the_bytewise_one() {
        let mut seed = 3u64;
        for _ in 0..1000 {
            let mut s = [0u8; 12];
            for b in s.iter_mut() {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                *b = (seed >> 56) as u8;
            }
            let (sc, m) = scales_mins_k4(&s);
            for j in 0..8 {
                assert_eq!((sc[j], m[j]), scale_min_k4(&s, j), "{s:?} {j}");
            }
        }
    }
}
