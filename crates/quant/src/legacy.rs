//! The original 32-element block formats: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q8_1.
//!
//! In the 4/5-bit types, byte `j` of `qs` holds element `j` in its low nibble and element
//! `j + 16` in its high nibble; Q5's fifth bits sit in `qh` (bit `i` for element `i`).
use crate::{Block, assert_block_size, f16le};

/// Q4_0: x = d * (q - 8).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct BlockQ4_0 {
    /// scale (f16)
    pub d: [u8; 2],
    /// 32 nibbles
    pub qs: [u8; 16],
}
assert_block_size!(BlockQ4_0, 18);

impl Block for BlockQ4_0 {
    const N: usize = 32;
    #[inline(always)]
    fn dequant(&self, out: &mut [f32]) {
        let d = f16le(self.d);
        for j in 0..16 {
            out[j] = d * ((self.qs[j] & 0x0F) as i32 - 8) as f32;
            out[j + 16] = d * ((self.qs[j] >> 4) as i32 - 8) as f32;
        }
    }
}

/// Q4_1: x = d * q + m.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct BlockQ4_1 {
    /// scale (f16)
    pub d: [u8; 2],
    /// minimum (f16)
    pub m: [u8; 2],
    /// 32 nibbles
    pub qs: [u8; 16],
}
assert_block_size!(BlockQ4_1, 20);

impl Block for BlockQ4_1 {
    const N: usize = 32;
    #[inline(always)]
    fn dequant(&self, out: &mut [f32]) {
        let (d, m) = (f16le(self.d), f16le(self.m));
        for j in 0..16 {
            out[j] = d * (self.qs[j] & 0x0F) as f32 + m;
            out[j + 16] = d * (self.qs[j] >> 4) as f32 + m;
        }
    }
}

/// Q5_0: x = d * (q - 16), q 5 bits.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct BlockQ5_0 {
    /// scale (f16)
    pub d: [u8; 2],
    /// fifth bits (u32 LE)
    pub qh: [u8; 4],
    /// low nibbles
    pub qs: [u8; 16],
}
assert_block_size!(BlockQ5_0, 22);

impl Block for BlockQ5_0 {
    const N: usize = 32;
    #[inline(always)]
    fn dequant(&self, out: &mut [f32]) {
        let d = f16le(self.d);
        let qh = u32::from_le_bytes(self.qh);
        for j in 0..16 {
            let lo = (self.qs[j] & 0x0F) as u32 | (((qh >> j) & 1) << 4);
            let hi = (self.qs[j] >> 4) as u32 | (((qh >> (j + 16)) & 1) << 4);
            out[j] = d * (lo as i32 - 16) as f32;
            out[j + 16] = d * (hi as i32 - 16) as f32;
        }
    }
}

/// Q5_1: x = d * q + m, q 5 bits.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct BlockQ5_1 {
    /// scale (f16)
    pub d: [u8; 2],
    /// minimum (f16)
    pub m: [u8; 2],
    /// fifth bits (u32 LE)
    pub qh: [u8; 4],
    /// low nibbles
    pub qs: [u8; 16],
}
assert_block_size!(BlockQ5_1, 24);

impl Block for BlockQ5_1 {
    const N: usize = 32;
    #[inline(always)]
    fn dequant(&self, out: &mut [f32]) {
        let (d, m) = (f16le(self.d), f16le(self.m));
        let qh = u32::from_le_bytes(self.qh);
        for j in 0..16 {
            let lo = (self.qs[j] & 0x0F) as u32 | (((qh >> j) & 1) << 4);
            let hi = (self.qs[j] >> 4) as u32 | (((qh >> (j + 16)) & 1) << 4);
            out[j] = d * lo as f32 + m;
            out[j + 16] = d * hi as f32 + m;
        }
    }
}

/// Q8_0: x = d * q, q int8.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct BlockQ8_0 {
    /// scale (f16)
    pub d: [u8; 2],
    /// 32 int8 values
    pub qs: [u8; 32],
}
assert_block_size!(BlockQ8_0, 34);

impl Block for BlockQ8_0 {
    const N: usize = 32;
    #[inline(always)]
    fn dequant(&self, out: &mut [f32]) {
        let d = f16le(self.d);
        for j in 0..32 {
            out[j] = d * self.qs[j] as i8 as f32;
        }
    }
}

/// Q8_1: x = d * q, with `s = d * sum(q)` stored beside (used by dot kernels).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct BlockQ8_1 {
    /// scale (f16)
    pub d: [u8; 2],
    /// d * sum(qs) (f16)
    pub s: [u8; 2],
    /// 32 int8 values
    pub qs: [u8; 32],
}
assert_block_size!(BlockQ8_1, 36);

impl Block for BlockQ8_1 {
    const N: usize = 32;
    #[inline(always)]
    fn dequant(&self, out: &mut [f32]) {
        let d = f16le(self.d);
        for j in 0..32 {
            out[j] = d * self.qs[j] as i8 as f32;
        }
    }
}
