//! The i-quants: lattice ("grid") codebooks with sign bits, and the non-linear IQ4 types.
use crate::tables::*;
use crate::{Block, assert_block_size, f16le};

#[inline(always)]
fn sign(bits: u8, j: usize) -> f32 {
    if (bits >> j) & 1 == 1 { -1.0 } else { 1.0 }
}

#[inline(always)]
fn u32at(b: &[u8], i: usize) -> u32 {
    u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
}

/// IQ2_XXS: 2.06 bpw. Per 32 values: 4 grid indices (u8) + 4x7 sign bits + 4-bit scale.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct BlockIQ2XXS {
    /// scale (f16)
    pub d: [u8; 2],
    /// 8 pairs of u32
    pub qs: [u8; 64],
}
assert_block_size!(BlockIQ2XXS, 66);

impl Block for BlockIQ2XXS {
    const N: usize = 256;
    #[inline(always)]
    fn dequant(&self, out: &mut [f32]) {
        let d = f16le(self.d);
        for ib in 0..8 {
            let aux0 = &self.qs[8 * ib..8 * ib + 4];
            let aux1 = u32at(&self.qs, 8 * ib + 4);
            let db = d * (0.5 + (aux1 >> 28) as f32) * 0.25;
            for l in 0..4 {
                let g = &IQ2XXS_GRID[aux0[l] as usize];
                let s = KSIGNS_IQ2XS[((aux1 >> (7 * l)) & 127) as usize];
                for j in 0..8 {
                    out[ib * 32 + l * 8 + j] = db * g[j] as f32 * sign(s, j);
                }
            }
        }
    }
}

#[inline(always)]
fn nibble_scale(scales: &[u8], g: usize) -> f32 {
    // 4-bit scale covering 16 values: group of 8 `g` uses scale g/2
    let i = g / 2;
    ((scales[i / 2] >> (4 * (i % 2))) & 0xF) as f32
}

/// IQ2_XS: 2.31 bpw. Per 8 values a u16: 9-bit grid index + 7-bit sign index.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct BlockIQ2XS {
    /// scale (f16)
    pub d: [u8; 2],
    /// 32 u16
    pub qs: [u8; 64],
    /// 4-bit scales per 16 values
    pub scales: [u8; 8],
}
assert_block_size!(BlockIQ2XS, 74);

impl Block for BlockIQ2XS {
    const N: usize = 256;
    #[inline(always)]
    fn dequant(&self, out: &mut [f32]) {
        let d = f16le(self.d);
        for g in 0..32 {
            let q = u16::from_le_bytes([self.qs[2 * g], self.qs[2 * g + 1]]);
            let db = d * (0.5 + nibble_scale(&self.scales, g)) * 0.25;
            let grid = &IQ2XS_GRID[(q & 511) as usize];
            let s = KSIGNS_IQ2XS[(q >> 9) as usize];
            for j in 0..8 {
                out[g * 8 + j] = db * grid[j] as f32 * sign(s, j);
            }
        }
    }
}

/// IQ2_S: 2.56 bpw. 10-bit grid indices, explicit sign bytes.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct BlockIQ2S {
    /// scale (f16)
    pub d: [u8; 2],
    /// low 8 bits of the grid indices
    pub qs: [u8; 32],
    /// sign bits, one byte per 8 values
    pub signs: [u8; 32],
    /// high 2 bits of the grid indices
    pub qh: [u8; 8],
    /// 4-bit scales per 16 values
    pub scales: [u8; 8],
}
assert_block_size!(BlockIQ2S, 82);

impl Block for BlockIQ2S {
    const N: usize = 256;
    #[inline(always)]
    fn dequant(&self, out: &mut [f32]) {
        let d = f16le(self.d);
        for g in 0..32 {
            let idx =
                self.qs[g] as usize | ((((self.qh[g / 4] >> (2 * (g % 4))) & 3) as usize) << 8);
            let db = d * (0.5 + nibble_scale(&self.scales, g)) * 0.25;
            let grid = &IQ2S_GRID[idx];
            for j in 0..8 {
                out[g * 8 + j] = db * grid[j] as f32 * sign(self.signs[g], j);
            }
        }
    }
}

/// IQ3_XXS: 3.06 bpw. Grid of 4-value points, signs by 7-bit index, 4-bit scale per 32.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct BlockIQ3XXS {
    /// scale (f16)
    pub d: [u8; 2],
    /// 64 grid indices, then 8 u32 of (scale << 28 | 4 x 7-bit sign indices)
    pub qs: [u8; 96],
}
assert_block_size!(BlockIQ3XXS, 98);

impl Block for BlockIQ3XXS {
    const N: usize = 256;
    #[inline(always)]
    fn dequant(&self, out: &mut [f32]) {
        let d = f16le(self.d);
        for ib in 0..8 {
            let aux = u32at(&self.qs, 64 + 4 * ib);
            let db = d * (0.5 + (aux >> 28) as f32) * 0.5;
            for l in 0..4 {
                let s = KSIGNS_IQ2XS[((aux >> (7 * l)) & 127) as usize];
                let g1 = &IQ3XXS_GRID[self.qs[8 * ib + 2 * l] as usize];
                let g2 = &IQ3XXS_GRID[self.qs[8 * ib + 2 * l + 1] as usize];
                let o = ib * 32 + l * 8;
                for j in 0..4 {
                    out[o + j] = db * g1[j] as f32 * sign(s, j);
                    out[o + 4 + j] = db * g2[j] as f32 * sign(s, j + 4);
                }
            }
        }
    }
}

/// IQ3_S: 3.44 bpw. 9-bit grid indices of 4-value points, explicit signs, odd scales.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct BlockIQ3S {
    /// scale (f16)
    pub d: [u8; 2],
    /// low 8 bits of the grid indices
    pub qs: [u8; 64],
    /// ninth bits of the grid indices
    pub qh: [u8; 8],
    /// sign bits, one byte per 8 values
    pub signs: [u8; 32],
    /// 4-bit scales per 32 values
    pub scales: [u8; 4],
}
assert_block_size!(BlockIQ3S, 110);

impl Block for BlockIQ3S {
    const N: usize = 256;
    #[inline(always)]
    fn dequant(&self, out: &mut [f32]) {
        let d = f16le(self.d);
        for i in 0..64 {
            let idx = self.qs[i] as usize | ((((self.qh[i / 8] >> (i % 8)) & 1) as usize) << 8);
            let sc = (self.scales[i / 16] >> (4 * ((i / 8) % 2))) & 0xF;
            let db = d * (1 + 2 * sc as i32) as f32;
            let grid = &IQ3S_GRID[idx];
            for j in 0..4 {
                let e = i * 4 + j;
                out[e] = db * grid[j] as f32 * sign(self.signs[e / 8], e % 8);
            }
        }
    }
}

const IQ1S_DELTA: f32 = 0.125;

/// IQ1_S: 1.56 bpw. 11-bit indices into a ternary grid, shifted by +-1/8.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct BlockIQ1S {
    /// scale (f16)
    pub d: [u8; 2],
    /// low 8 bits of the grid indices
    pub qs: [u8; 32],
    /// per 32 values a u16: 4 x 3 high index bits, 3-bit scale, delta sign
    pub qh: [u8; 16],
}
assert_block_size!(BlockIQ1S, 50);

impl Block for BlockIQ1S {
    const N: usize = 256;
    #[inline(always)]
    fn dequant(&self, out: &mut [f32]) {
        let d = f16le(self.d);
        for ib in 0..8 {
            let qh = u16::from_le_bytes([self.qh[2 * ib], self.qh[2 * ib + 1]]);
            let dl = d * (2 * ((qh >> 12) & 7) + 1) as f32;
            let delta = if qh & 0x8000 != 0 {
                -IQ1S_DELTA
            } else {
                IQ1S_DELTA
            };
            for l in 0..4 {
                let idx = self.qs[4 * ib + l] as usize | ((((qh >> (3 * l)) & 7) as usize) << 8);
                let g = &IQ1S_GRID[idx];
                for j in 0..8 {
                    out[ib * 32 + l * 8 + j] = dl * (g[j] as f32 + delta);
                }
            }
        }
    }
}

/// IQ1_M: 1.75 bpw. Like IQ1_S with 3-bit scales per 16 values and a delta sign per 8;
/// the f16 super-scale is spread over the top nibbles of `scales`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct BlockIQ1M {
    /// low 8 bits of the grid indices
    pub qs: [u8; 32],
    /// per 8 values a nibble: 3 high index bits + delta sign
    pub qh: [u8; 16],
    /// 4 u16: 4 x 3-bit scales each, plus 4 bits of the f16 scale
    pub scales: [u8; 8],
}
assert_block_size!(BlockIQ1M, 56);

impl Block for BlockIQ1M {
    const N: usize = 256;
    #[inline(always)]
    fn dequant(&self, out: &mut [f32]) {
        let sc: [u16; 4] = std::array::from_fn(|i| {
            u16::from_le_bytes([self.scales[2 * i], self.scales[2 * i + 1]])
        });
        let dbits =
            (sc[0] >> 12) | ((sc[1] >> 8) & 0xF0) | ((sc[2] >> 4) & 0xF00) | (sc[3] & 0xF000);
        let d = half::f16::from_bits(dbits).to_f32();
        for g in 0..32 {
            let s = g / 2; // scale index, 16 values each
            let ls = (sc[s / 4] >> (3 * (s % 4))) & 7;
            let dl = d * (2 * ls + 1) as f32;
            let qhn = self.qh[g / 2] >> (4 * (g % 2));
            let idx = self.qs[g] as usize | (((qhn & 7) as usize) << 8);
            let delta = if qhn & 8 != 0 {
                -IQ1S_DELTA
            } else {
                IQ1S_DELTA
            };
            let grid = &IQ1S_GRID[idx];
            for j in 0..8 {
                out[g * 8 + j] = dl * (grid[j] as f32 + delta);
            }
        }
    }
}

/// IQ4_NL: Q4_0's layout with a non-linear 16-value grid.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct BlockIQ4NL {
    /// scale (f16)
    pub d: [u8; 2],
    /// 32 nibbles
    pub qs: [u8; 16],
}
assert_block_size!(BlockIQ4NL, 18);

impl Block for BlockIQ4NL {
    const N: usize = 32;
    #[inline(always)]
    fn dequant(&self, out: &mut [f32]) {
        let d = f16le(self.d);
        for j in 0..16 {
            out[j] = d * KVALUES_IQ4NL[(self.qs[j] & 0xF) as usize] as f32;
            out[j + 16] = d * KVALUES_IQ4NL[(self.qs[j] >> 4) as usize] as f32;
        }
    }
}

/// IQ4_XS: the IQ4_NL grid in 256-element super-blocks with 6-bit sub-block scales.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct BlockIQ4XS {
    /// scale (f16)
    pub d: [u8; 2],
    /// high 2 bits of the 8 scales (u16)
    pub scales_h: [u8; 2],
    /// low 4 bits of the 8 scales
    pub scales_l: [u8; 4],
    /// nibbles, 16 bytes per 32 values
    pub qs: [u8; 128],
}
assert_block_size!(BlockIQ4XS, 136);

impl BlockIQ4XS {
    /// Signed 6-bit scale of sub-block `ib`.
    #[inline]
    pub fn scale(&self, ib: usize) -> i32 {
        let sh = u16::from_le_bytes(self.scales_h);
        let lo = (self.scales_l[ib / 2] >> (4 * (ib % 2))) & 0xF;
        let hi = ((sh >> (2 * ib)) & 3) as u8;
        (lo | (hi << 4)) as i32 - 32
    }
}

impl Block for BlockIQ4XS {
    const N: usize = 256;
    #[inline(always)]
    fn dequant(&self, out: &mut [f32]) {
        let d = f16le(self.d);
        for ib in 0..8 {
            let dl = d * self.scale(ib) as f32;
            let qs = &self.qs[16 * ib..16 * ib + 16];
            for j in 0..16 {
                out[ib * 32 + j] = dl * KVALUES_IQ4NL[(qs[j] & 0xF) as usize] as f32;
                out[ib * 32 + 16 + j] = dl * KVALUES_IQ4NL[(qs[j] >> 4) as usize] as f32;
            }
        }
    }
}
