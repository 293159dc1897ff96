//! Ternary (TQ1_0, TQ2_0) and microscaling FP4 (MXFP4) formats.
use crate::tables::KVALUES_MXFP4;
use crate::{Block, assert_block_size, f16le};

/// TQ1_0: 1.69 bpw ternary, five trits per byte in base 3.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct BlockTQ1_0 {
    /// 5 trits per byte (240 values)
    pub qs: [u8; 48],
    /// 4 trits per byte (16 values)
    pub qh: [u8; 4],
    /// scale (f16)
    pub d: [u8; 2],
}
assert_block_size!(BlockTQ1_0, 54);

#[inline(always)]
fn trit(byte: u8, pow3: u8) -> f32 {
    let q = byte.wrapping_mul(pow3) as u16;
    (((q * 3) >> 8) as i32 - 1) as f32
}

impl Block for BlockTQ1_0 {
    const N: usize = 256;
    #[inline(always)]
    fn dequant(&self, out: &mut [f32]) {
        const POW3: [u8; 5] = [1, 3, 9, 27, 81];
        let d = f16le(self.d);
        let mut e = 0;
        for m in 0..5 {
            for l in 0..32 {
                out[e + m * 32 + l] = d * trit(self.qs[l], POW3[m]);
            }
        }
        e += 160;
        for m in 0..5 {
            for l in 0..16 {
                out[e + m * 16 + l] = d * trit(self.qs[32 + l], POW3[m]);
            }
        }
        e += 80;
        for m in 0..4 {
            for l in 0..4 {
                out[e + m * 4 + l] = d * trit(self.qh[l], POW3[m]);
            }
        }
    }
}

/// TQ2_0: 2.06 bpw ternary, 2 bits per value.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct BlockTQ2_0 {
    /// 2-bit values
    pub qs: [u8; 64],
    /// scale (f16)
    pub d: [u8; 2],
}
assert_block_size!(BlockTQ2_0, 66);

impl Block for BlockTQ2_0 {
    const N: usize = 256;
    #[inline(always)]
    fn dequant(&self, out: &mut [f32]) {
        let d = f16le(self.d);
        for h in 0..2 {
            for s in 0..4 {
                for l in 0..32 {
                    let q = (self.qs[h * 32 + l] >> (2 * s)) & 3;
                    out[h * 128 + s * 32 + l] = d * (q as i32 - 1) as f32;
                }
            }
        }
    }
}

/// MXFP4 (OCP microscaling): an E8M0 shared exponent and 32 E2M1 values.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct BlockMXFP4 {
    /// shared exponent (E8M0)
    pub e: u8,
    /// 32 nibbles: low nibbles are elements 0..16, high nibbles 16..32
    pub qs: [u8; 16],
}
assert_block_size!(BlockMXFP4, 17);

/// E8M0 exponent to f32, halved (the values table is doubled), as ggml does.
#[inline]
pub fn e8m0_to_f32_half(e: u8) -> f32 {
    let bits = if e < 2 {
        0x0020_0000u32 << e
    } else {
        ((e - 1) as u32) << 23
    };
    f32::from_bits(bits)
}

impl Block for BlockMXFP4 {
    const N: usize = 32;
    #[inline(always)]
    fn dequant(&self, out: &mut [f32]) {
        let d = e8m0_to_f32_half(self.e);
        for j in 0..16 {
            out[j] = d * KVALUES_MXFP4[(self.qs[j] & 0xF) as usize] as f32;
            out[j + 16] = d * KVALUES_MXFP4[(self.qs[j] >> 4) as usize] as f32;
        }
    }
}
