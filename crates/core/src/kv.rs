//! KV-cache types: how a layer's cached key and value rows are stored.
//!
//! A cache is a [`crate::Buf`] of f32 words whatever its type: a row of `width` values takes
//! [`KvType::row_words`] words, its bytes laid out as the type's blocks (ggml's block layouts
//! for the ggml types, so each head's part of a row is a whole number of blocks). The
//! quantized types are stored rotated: each head's vector, in chunks of [`KvFormat::rot`]
//! values, goes through a fixed randomized Hadamard transform first, which spreads a
//! channel's outliers over the chunk and so shrinks the quantization error. Attention rotates
//! the queries the same way (dot products are unchanged by an orthonormal rotation) and
//! rotates the weighted sum of values back.
use crate::{DType, Error, Result};

/// The element type of a KV cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Hash)]
pub enum KvType {
    /// 32-bit floats (the default: exactly the values the model computed).
    #[default]
    F32,
    /// IEEE half precision.
    F16,
    /// bfloat16.
    Bf16,
    /// ggml's Q8_0: blocks of 32 int8 with an f16 scale (8.5 bits per value).
    Q8_0,
    /// ggml's Q4_0 (4.5 bits per value).
    Q4_0,
    /// ggml's Q5_0 (5.5 bits per value).
    Q5_0,
    /// ggml's IQ4_NL: Q4_0's layout with a non-linear grid (4.5 bits per value).
    Iq4Nl,
    /// hearth's rotated 3-bit type (in the spirit of TurboQuant): blocks of 32 values, an
    /// f16 scale and 3-bit indices into the 8-level Lloyd-Max quantizer of a unit Gaussian,
    /// which the rotation makes the values' distribution (3.5 bits per value).
    Tq3,
}

/// Every KV type, in the order `--help` lists them.
pub const KV_TYPES: [KvType; 8] = [
    KvType::F32,
    KvType::F16,
    KvType::Bf16,
    KvType::Q8_0,
    KvType::Q4_0,
    KvType::Q5_0,
    KvType::Iq4Nl,
    KvType::Tq3,
];

impl KvType {
    /// Parse a name as `--cache-type-k` takes it (`f16`, `q8_0`, `tq3`, ...; any case).
    pub fn parse(s: &str) -> Result<KvType> {
        let l = s.to_ascii_lowercase();
        KV_TYPES
            .iter()
            .copied()
            .find(|t| t.name() == l)
            .ok_or_else(|| {
                let names: Vec<&str> = KV_TYPES.iter().map(|t| t.name()).collect();
                Error::Invalid(format!(
                    "unknown KV cache type {s:?}: expected one of {}",
                    names.join(", ")
                ))
            })
    }
    /// Its name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            KvType::F32 => "f32",
            KvType::F16 => "f16",
            KvType::Bf16 => "bf16",
            KvType::Q8_0 => "q8_0",
            KvType::Q4_0 => "q4_0",
            KvType::Q5_0 => "q5_0",
            KvType::Iq4Nl => "iq4_nl",
            KvType::Tq3 => "tq3",
        }
    }
    /// Its index in [`KV_TYPES`] (how a device kernel is told the type).
    pub fn code(self) -> u32 {
        KV_TYPES.iter().position(|&t| t == self).unwrap_or(0) as u32
    }
    /// The ggml type with the same block layout (none for [`KvType::Tq3`]).
    pub fn dtype(self) -> Option<DType> {
        Some(match self {
            KvType::F32 => DType::F32,
            KvType::F16 => DType::F16,
            KvType::Bf16 => DType::BF16,
            KvType::Q8_0 => DType::Q8_0,
            KvType::Q4_0 => DType::Q4_0,
            KvType::Q5_0 => DType::Q5_0,
            KvType::Iq4Nl => DType::IQ4_NL,
            KvType::Tq3 => return None,
        })
    }
    /// Values per block.
    pub fn block(self) -> usize {
        match self {
            KvType::F32 | KvType::F16 | KvType::Bf16 => 1,
            _ => 32,
        }
    }
    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        match self {
            KvType::F32 => 4,
            KvType::F16 | KvType::Bf16 => 2,
            KvType::Q8_0 => 34,
            KvType::Q4_0 | KvType::Iq4Nl => 18,
            KvType::Q5_0 => 22,
            KvType::Tq3 => 14,
        }
    }
    /// Whether it is stored rotated (the quantized types).
    pub fn rotated(self) -> bool {
        self.block() > 1
    }
    /// Bytes of `width` values (a whole number of blocks: see [`KvType::check_width`]).
    pub fn bytes(self, width: usize) -> usize {
        width / self.block() * self.block_bytes()
    }
    /// f32 words a cache row of `width` values takes (its bytes, rounded up to a word).
    pub fn row_words(self, width: usize) -> usize {
        self.bytes(width).div_ceil(4)
    }
    /// Whether rows made of heads of `head` values can be stored in this type.
    pub fn check_width(self, head: usize, what: &str) -> Result<()> {
        if !head.is_multiple_of(self.block()) {
            return Err(Error::Invalid(format!(
                "KV cache type {} stores blocks of {} values, but this model's {what} are {head} wide",
                self.name(),
                self.block()
            )));
        }
        Ok(())
    }
}

/// The storage of one layer's key and value caches, for [`crate::AttnParams`] and
/// [`crate::KvDest`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvFormat {
    /// Keys' type.
    pub k: KvType,
    /// Values' type.
    pub v: KvType,
    /// Width of the rotation's chunks (a power of two that divides the key and value heads'
    /// widths); the rotated types' vectors are rotated in consecutive chunks of it.
    pub rot: usize,
}

impl Default for KvFormat {
    fn default() -> Self {
        KvFormat {
            k: KvType::F32,
            v: KvType::F32,
            rot: 32,
        }
    }
}

impl KvFormat {
    /// Both caches in f32 (nothing to convert).
    pub fn is_f32(&self) -> bool {
        self.k == KvType::F32 && self.v == KvType::F32
    }
    /// The format for heads of `head_dim` key and `v_dim` value values: the rotation's
    /// chunk is the largest power of two up to 128 that divides both.
    pub fn new(k: KvType, v: KvType, head_dim: usize, v_dim: usize) -> Result<KvFormat> {
        k.check_width(head_dim, "key heads")?;
        v.check_width(v_dim, "value heads")?;
        let g = gcd(head_dim, v_dim).max(1);
        let rot = (1usize << g.trailing_zeros()).min(128);
        Ok(KvFormat { k, v, rot })
    }
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// The fixed signs of the randomized Hadamard rotation: bit `i % 64` set makes element `i`
/// of a chunk negative (a 64-bit constant from splitmix64; any fixed pattern of mixed signs
/// serves). Backends that rotate on a device take it from here.
pub const SIGN_BITS: u64 = 0x9E37_79B9_7F4A_7C15 ^ 0xBF58_476D_1CE4_E5B9;

/// The factor that makes a chunk's Walsh-Hadamard transform orthonormal (`1/sqrt(rot)`,
/// computed as [`rotate`] computes it).
pub fn rot_scale(rot: usize) -> f32 {
    (rot as f32).sqrt().recip()
}

#[inline]
fn sign(i: usize) -> f32 {
    if (SIGN_BITS >> (i % 64)) & 1 == 1 {
        -1.0
    } else {
        1.0
    }
}

/// Walsh-Hadamard transform of `x` (a power-of-two length) in place, scaled to be orthonormal.
fn fwht(x: &mut [f32]) {
    let n = x.len();
    let mut h = 1;
    while h < n {
        for i in (0..n).step_by(2 * h) {
            for j in i..i + h {
                let (a, b) = (x[j], x[j + h]);
                x[j] = a + b;
                x[j + h] = a - b;
            }
        }
        h *= 2;
    }
    let s = rot_scale(n);
    for v in x {
        *v *= s;
    }
}

/// Rotate `x` in consecutive chunks of `rot` values: `H · diag(signs) · chunk`.
pub fn rotate(x: &mut [f32], rot: usize) {
    for c in x.chunks_exact_mut(rot) {
        for (i, v) in c.iter_mut().enumerate() {
            *v *= sign(i);
        }
        fwht(c);
    }
}

/// Undo [`rotate`]: `diag(signs) · H · chunk` (H is its own inverse).
pub fn unrotate(x: &mut [f32], rot: usize) {
    for c in x.chunks_exact_mut(rot) {
        fwht(c);
        for (i, v) in c.iter_mut().enumerate() {
            *v *= sign(i);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_is_orthonormal_and_inverts() {
        let x: Vec<f32> = (0..192)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
            .collect();
        let y: Vec<f32> = (0..192)
            .map(|i| ((i * 53 % 89) as f32 - 44.0) / 5.0)
            .collect();
        for rot in [32, 64] {
            let (mut a, mut b) = (x.clone(), y.clone());
            rotate(&mut a, rot);
            rotate(&mut b, rot);
            let d0: f32 = x.iter().zip(&y).map(|(p, q)| p * q).sum();
            let d1: f32 = a.iter().zip(&b).map(|(p, q)| p * q).sum();
            assert!((d0 - d1).abs() < 1e-3 * d0.abs().max(1.0), "{d0} {d1}");
            assert!(a != x, "the rotation changed nothing");
            unrotate(&mut a, rot);
            for (p, q) in a.iter().zip(&x) {
                assert!((p - q).abs() < 1e-5);
            }
        }
    }

    #[test]
    fn names_widths_and_errors() {
        for t in KV_TYPES {
            assert_eq!(KvType::parse(t.name()).unwrap(), t);
            assert_eq!(KvType::parse(&t.name().to_uppercase()).unwrap(), t);
        }
        assert!(KvType::parse("q3_k").is_err());
        assert_eq!(KvType::Q8_0.row_words(64), 17);
        assert_eq!(KvType::Tq3.row_words(32), 4);
        assert_eq!(KvType::F16.row_words(3), 2);
        assert!(KvFormat::new(KvType::Q8_0, KvType::F32, 48, 48).is_err());
        let f = KvFormat::new(KvType::Q4_0, KvType::Q4_0, 576, 512).unwrap();
        assert_eq!(f.rot, 64);
        assert_eq!(
            KvFormat::new(KvType::Q4_0, KvType::F16, 256, 256)
                .unwrap()
                .rot,
            128
        );
    }
}
