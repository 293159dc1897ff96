//! Row-interleaved ("packed") weight layouts, built once at load time.
//!
//! A matrix's rows are taken eight at a time. For each block of 32 along the row, the eight
//! rows' blocks are stored together so that one 256-bit load holds the same weights of all
//! eight rows, one row per 32-bit lane. A kernel then computes eight rows at once with the
//! rows in the SIMD lanes: each block's integer sum for each row forms in its own lane, with
//! no horizontal reduction, and the weights stream from one place in memory. The kernel runs
//! exactly the float steps of the one-row kernel for every (row, token), so the results are
//! bit-identical to it (`tests/batched.rs`).
//!
//! A group-block of 8 rows has the same size as the eight original blocks:
//!
//! | type | layout |
//! |---|---|
//! | Q4_0 | 8 f16 `d`, then 4 x 32 bytes of nibbles |
//! | Q4_1 | 8 f16 `d`, 8 f16 `m`, 4 x 32 bytes of nibbles |
//! | Q5_0 | 8 f16 `d`, 32 bytes of fifth bits, 4 x 32 bytes of nibbles |
//! | Q5_1 | 8 f16 `d`, 8 f16 `m`, 32 bytes of fifth bits, 4 x 32 bytes of nibbles |
//! | Q8_0 | 8 f16 `d`, 16 x 16 bytes of signed bytes |
//!
//! Weight pair `p` (elements `2p` and `2p + 1`, 16 pairs per block) of row `r`:
//! - 4-bit: 32-bit word `r` of nibble chunk `p / 4`, nibble `p % 4` (bits `4s..4s+4`) for
//!   element `2p` and nibble `4 + p % 4` (bits `16 + 4s..`) for element `2p + 1`, so that
//!   `(word >> 4s) & 0x000F000F` is the pair as two 16-bit integers;
//! - fifth bits (Q5): 32-bit word `r`, bit `p` for element `2p` and bit `16 + p` for `2p + 1`;
//! - Q8_0: bytes `2r` and `2r + 1` of the pair's 16-byte chunk, so that one sign-extending
//!   load (`vpmovsxbw`) gives the pair of all eight rows as 16-bit integers. (Bytes of two
//!   pairs in one word, split by shifts, took four vector operations per 32 bytes instead of
//!   two.)
//!
//! The K-quants (super-blocks of 256) are packed per super-block of the eight rows:
//!
//! | type | layout | bytes (original) |
//! |---|---|---|
//! | Q4_K | 8 f16 `d`, 8 f16 `dmin`, 6-bit scales then mins as bytes `[sub-block][row]`, then per sub-block of 32 four chunks of 32 bytes | 1184 (1152) |
//! | Q6_K | 8 f16 `d`, i8 scales `[sub-block of 16][row]`, then per block of 32 the codes (0..64) as bytes: pair `p`'s 16 bytes hold row `r`'s two codes at `2r`, `2r + 1` | 2192 (1680) |
//! | Q2_K | 8 f16 `d`, 8 f16 `dmin`, the raw scale/min bytes `[sub-block of 16][row]`, then per block of 32 two chunks of 2-bit codes | 672 (672) |
//! | Q3_K | 8 f16 `d`, i8 scales `[sub-block of 16][row]`, then per block of 32 two chunks of 2-bit codes and one of high bits | 912 (880) |
//! | Q5_K | 8 f16 `d`, 8 f16 `dmin`, 6-bit scales then mins as bytes `[block of 32][row]`, then per block of 32 the 4-bit layout above and one chunk of high bits | 1440 (1408) |
//! | IQ4_XS | 8 f16 `d`, i8 scales `[block of 32][row]`, then per block of 32 the 4-bit layout of grid indices | 1104 (1088) |
//!
//! Q2_K, Q3_K, Q5_K and IQ4_XS ([`k16_layout`]) store unsigned codes (Q3_K `q + 4`, IQ4_XS
//! the grid index) in bit planes: 2-bit chunk `c` holds, in word `r`, pair `p = 8c + k` at bits
//! `2k` (element `2p`) and `16 + 2k` (element `2p + 1`); a high-bit chunk holds bit `p` and
//! `16 + p`, as Q5's fifth bits.
//!
//! Q4_K's chunk `l` of sub-block `j` holds, in word `r`, byte `b`, element `32j + 8l + b` of
//! row `r` in the low nibble and element `32j + 8l + 4 + b` in the high one, so that the low
//! (or high) nibbles of a word are four consecutive weights for `vpmaddubsw`. Its scales are
//! stored decoded so that the kernel reads them with one widening load. Q6_K's codes are
//! stored whole, a byte each, so that one widening load gives a pair of eight rows as 16-bit
//! integers: its 6-bit codes in nibble and bit planes cost five vector operations per pair,
//! which made the one-token kernel compute-bound (17 GMAC/s per thread, against 64-68 for Q4_K),
//! for 30% more memory than the original.
//!
//! Rows past the last full group of 8 keep their original layout, after the groups.
use crate::iquants::BlockIQ4XS;
use crate::kquants::{BlockQ3K, BlockQ4K, BlockQ6K, scales_mins_k4};
use hearth_core::DType;

/// Batches below this many tokens read the packed layout (their kernels take up to four
/// tokens at once per group: a decode step of several sequences); larger ones read the
/// original rows with 16 tokens in the lanes. One thread in cache, Zen 4, 1536 x 576 Q4_1:
/// packed 54 GMAC/s from 4 tokens on, the original rows 15 at 4 tokens, 30 at 8 and 59 at 16
/// (they pad a batch to 16).
pub const PACKED_BELOW: usize = 16;

/// Rows per packed group.
pub const ROWS: usize = hearth_core::PACK_ROWS;

/// Whether `dtype` has a packed layout and kernels: every type with integer kernels
/// ([`crate::acts::supports_q16`]).
pub fn packable(dtype: DType) -> bool {
    crate::acts::supports_q16(dtype)
}

/// Bytes of a packed group-block (8 rows, one block or super-block).
pub fn group_block_bytes(dtype: DType) -> usize {
    match dtype {
        DType::Q4_K => 1184,
        DType::Q6_K => 2192,
        dt if crate::acts::is_k16(dt) => {
            let l = k16_layout(dt);
            l.codes + 8 * l.block
        }
        _ => ROWS * dtype.type_size(),
    }
}

/// Where things are in a group-super-block of a generic 16-bit K type
/// ([`crate::acts::is_k16`]).
#[derive(Clone, Copy, Debug)]
pub struct K16Layout {
    /// offset of the 8 f16 `dmin` (after the 8 f16 `d` at 0), when the type has mins
    pub dmin: Option<usize>,
    /// offset of the scales
    pub scales: usize,
    /// offset of the codes
    pub codes: usize,
    /// code bits in the low plane (2 or 4)
    pub lo_bits: usize,
    /// whether a plane of one high bit per code follows the low plane
    pub hi: bool,
    /// code bytes per block of 32 of the eight rows
    pub block: usize,
}

/// The packed layout of a generic 16-bit K type.
pub const fn k16_layout(dtype: DType) -> K16Layout {
    // (mins, scale bytes, low bits, high bit)
    let (dmin, sc, lo_bits, hi) = match dtype {
        DType::Q2_K => (true, 128, 2, false),
        DType::Q3_K => (false, 128, 2, true),
        DType::Q5_K => (true, 128, 4, true),
        _ => (false, 64, 4, false),
    };
    let scales = if dmin { 32 } else { 16 };
    K16Layout {
        dmin: if dmin { Some(16) } else { None },
        scales,
        codes: scales + sc,
        lo_bits,
        hi,
        block: 32 * lo_bits + if hi { 32 } else { 0 },
    }
}

/// Bytes of a packed group of 8 rows of `rb` bytes.
pub fn group_bytes(dtype: DType, rb: usize) -> usize {
    rb / dtype.type_size() * group_block_bytes(dtype)
}

/// Bytes of `n_rows` packed rows of `rb` bytes.
pub fn packed_len(dtype: DType, rb: usize, n_rows: usize) -> usize {
    n_rows / ROWS * group_bytes(dtype, rb) + n_rows % ROWS * rb
}

/// Q4_K's 256 weight codes (0..16) in element order.
fn q4_k_codes(b: &BlockQ4K) -> [u8; 256] {
    let mut q = [0u8; 256];
    for c in 0..4 {
        let (lo, hi) = q[c * 64..c * 64 + 64].split_at_mut(32);
        for ((l, h), &v) in lo.iter_mut().zip(hi).zip(&b.qs[c * 32..c * 32 + 32]) {
            (*l, *h) = (v & 0xF, v >> 4);
        }
    }
    q
}

/// Q6_K's 256 weight codes (0..64, value `q - 32`) in element order.
fn q6_k_codes(b: &BlockQ6K) -> [u8; 256] {
    let mut q = [0u8; 256];
    for h in 0..2 {
        for s in 0..4 {
            let ql = &b.ql[h * 64 + (s & 1) * 32..h * 64 + (s & 1) * 32 + 32];
            let qh = &b.qh[h * 32..h * 32 + 32];
            let out = &mut q[h * 128 + s * 32..h * 128 + s * 32 + 32];
            for ((o, &l), &hb) in out.iter_mut().zip(ql).zip(qh) {
                *o = ((l >> (4 * (s >> 1))) & 0xF) | (((hb >> (2 * s)) & 3) << 4);
            }
        }
    }
    q
}

/// The 4-bit chunks of one block of 32 of eight rows (`q[r]` holds each row's 32 codes; the
/// low 4 bits are stored): 128 bytes into `dst`.
fn nibble_chunks(q: &[&[u8]; ROWS], dst: &mut [u8]) {
    for c in 0..4 {
        for (r, q) in q.iter().enumerate() {
            let mut w = 0u32;
            for s in 0..4 {
                let p = 4 * c + s;
                w |= ((q[2 * p] & 0xF) as u32) << (4 * s);
                w |= ((q[2 * p + 1] & 0xF) as u32) << (16 + 4 * s);
            }
            dst[32 * c + 4 * r..32 * c + 4 * r + 4].copy_from_slice(&w.to_le_bytes());
        }
    }
}

/// One group-block of a K-quant: the eight rows' super-block `i`.
fn pack_k(dtype: DType, blk: impl Fn(usize) -> usize, src: &[u8], dst: &mut [u8]) {
    if dtype == DType::Q4_K {
        let bs: [&BlockQ4K; ROWS] =
            std::array::from_fn(|r| &crate::as_blocks::<BlockQ4K>(&src[blk(r)..blk(r) + 144])[0]);
        for (r, b) in bs.iter().enumerate() {
            dst[2 * r..2 * r + 2].copy_from_slice(&b.d);
            dst[16 + 2 * r..16 + 2 * r + 2].copy_from_slice(&b.dmin);
            let (sc, mn) = scales_mins_k4(&b.scales);
            for j in 0..8 {
                dst[32 + 8 * j + r] = sc[j];
                dst[96 + 8 * j + r] = mn[j];
            }
            let q = q4_k_codes(b);
            for j in 0..8 {
                for l in 0..4 {
                    for k in 0..4 {
                        let e = 32 * j + 8 * l + k;
                        dst[160 + 128 * j + 32 * l + 4 * r + k] = q[e] | (q[e + 4] << 4);
                    }
                }
            }
        }
        return;
    }
    let bs: [&BlockQ6K; ROWS] =
        std::array::from_fn(|r| &crate::as_blocks::<BlockQ6K>(&src[blk(r)..blk(r) + 210])[0]);
    let q: [[u8; 256]; ROWS] = std::array::from_fn(|r| q6_k_codes(bs[r]));
    for (r, b) in bs.iter().enumerate() {
        dst[2 * r..2 * r + 2].copy_from_slice(&b.d);
        for k in 0..16 {
            dst[16 + 8 * k + r] = b.scales[k];
        }
    }
    for a in 0..8 {
        for p in 0..16 {
            for (r, q) in q.iter().enumerate() {
                let o = 144 + 256 * a + 16 * p + 2 * r;
                dst[o] = q[32 * a + 2 * p];
                dst[o + 1] = q[32 * a + 2 * p + 1];
            }
        }
    }
}

/// The 32 weight codes of a legacy block, as stored (unsigned nibbles or five-bit values, or
/// Q8_0's signed bytes as bytes).
fn codes(dtype: DType, blk: &[u8]) -> [u8; 32] {
    let mut q = [0u8; 32];
    match dtype {
        DType::Q8_0 => q.copy_from_slice(&blk[2..34]),
        _ => {
            let (qs, qh) = match dtype {
                DType::Q4_0 => (&blk[2..18], None),
                DType::Q4_1 => (&blk[4..20], None),
                DType::Q5_0 => (&blk[6..22], Some(&blk[2..6])),
                _ => (&blk[8..24], Some(&blk[4..8])),
            };
            for j in 0..16 {
                q[j] = qs[j] & 0xF;
                q[j + 16] = qs[j] >> 4;
            }
            if let Some(h) = qh {
                let h = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
                for (j, v) in q.iter_mut().enumerate() {
                    *v |= (((h >> j) & 1) << 4) as u8;
                }
            }
        }
    }
    q
}

/// Pack the rows of `src` (`rb` bytes each; a whole matrix, or one expert of a stacked
/// tensor) into the interleaved layout; `None` when `dtype` has no packed layout or `src` is
/// not whole rows.
pub fn pack(dtype: DType, src: &[u8], rb: usize) -> Option<Vec<u8>> {
    let bs = dtype.type_size();
    if !packable(dtype) || rb == 0 || rb % bs != 0 || src.len() % rb != 0 {
        return None;
    }
    let mut out = vec![0u8; packed_len(dtype, rb, src.len() / rb)];
    pack_into(dtype, src, rb, &mut out);
    Some(out)
}

/// [`pack`] into `dst` (exactly [`packed_len`] bytes). Packing rows `8a..8b` of a matrix
/// gives bytes `a * group_bytes..b * group_bytes` of the whole matrix's packed form, so
/// whole groups may be packed separately (in parallel); the rows after the last whole group
/// go with the last part.
///
/// # Panics
/// If `dtype` is not [`packable`], `src` is not whole rows of `rb` bytes, or `dst` has the
/// wrong length.
pub fn pack_into(dtype: DType, src: &[u8], rb: usize, dst: &mut [u8]) {
    let bs = dtype.type_size();
    assert!(packable(dtype) && rb > 0 && rb % bs == 0 && src.len() % rb == 0);
    let (nb, n_rows) = (rb / bs, src.len() / rb);
    assert_eq!(dst.len(), packed_len(dtype, rb, n_rows));
    let out = dst;
    let groups = n_rows / ROWS;
    if dtype.block_size() == 256 {
        let (gbb, gb) = (group_block_bytes(dtype), group_bytes(dtype, rb));
        for g in 0..groups {
            for i in 0..nb {
                let blk = |r: usize| (g * ROWS + r) * rb + i * bs;
                let dst = &mut out[g * gb + i * gbb..g * gb + (i + 1) * gbb];
                if crate::acts::is_k16(dtype) {
                    pack_k16(dtype, blk, src, dst);
                } else {
                    pack_k(dtype, blk, src, dst);
                }
            }
        }
        out[groups * gb..].copy_from_slice(&src[groups * ROWS * rb..]);
        return;
    }
    out[groups * ROWS * rb..].copy_from_slice(&src[groups * ROWS * rb..]);
    let min = matches!(dtype, DType::Q4_1 | DType::Q5_1);
    let five = matches!(dtype, DType::Q5_0 | DType::Q5_1);
    for g in 0..n_rows / ROWS {
        let base = g * ROWS * rb;
        for i in 0..nb {
            let dst = &mut out[base + i * ROWS * bs..base + (i + 1) * ROWS * bs];
            let blk = |r: usize| &src[base + r * rb + i * bs..base + r * rb + (i + 1) * bs];
            let mut o = 0;
            for r in 0..ROWS {
                dst[2 * r..2 * r + 2].copy_from_slice(&blk(r)[0..2]);
            }
            o += 16;
            if min {
                for r in 0..ROWS {
                    dst[o + 2 * r..o + 2 * r + 2].copy_from_slice(&blk(r)[2..4]);
                }
                o += 16;
            }
            let q: [[u8; 32]; ROWS] = std::array::from_fn(|r| codes(dtype, blk(r)));
            if five {
                for (r, q) in q.iter().enumerate() {
                    let mut h = 0u32;
                    for p in 0..16 {
                        h |= (((q[2 * p] >> 4) & 1) as u32) << p;
                        h |= (((q[2 * p + 1] >> 4) & 1) as u32) << (16 + p);
                    }
                    dst[o + 4 * r..o + 4 * r + 4].copy_from_slice(&h.to_le_bytes());
                }
                o += 32;
            }
            if dtype == DType::Q8_0 {
                for p in 0..16 {
                    for (r, q) in q.iter().enumerate() {
                        let at = o + 16 * p + 2 * r;
                        dst[at..at + 2].copy_from_slice(&q[2 * p..2 * p + 2]);
                    }
                }
            } else {
                let rows: [&[u8]; ROWS] = std::array::from_fn(|r| &q[r][..]);
                nibble_chunks(&rows, &mut dst[o..o + 128]);
            }
        }
    }
}

/// Row `r` of a packed matrix (`n_rows` rows of `rb` bytes) in the original layout: the
/// inverse of [`pack`] for one row.
pub fn unpack_row(dtype: DType, packed: &[u8], rb: usize, n_rows: usize, r: usize) -> Vec<u8> {
    let bs = dtype.type_size();
    let nb = rb / bs;
    let full = n_rows / ROWS * ROWS;
    if r >= full {
        let o = full / ROWS * group_bytes(dtype, rb) + (r - full) * rb;
        return packed[o..o + rb].to_vec();
    }
    let (g, l) = (r / ROWS, r % ROWS);
    if dtype.block_size() == 256 {
        let (gbb, gb) = (group_block_bytes(dtype), group_bytes(dtype, rb));
        let mut out = vec![0u8; rb];
        for i in 0..nb {
            let src = &packed[g * gb + i * gbb..g * gb + (i + 1) * gbb];
            let dst = &mut out[i * bs..(i + 1) * bs];
            if crate::acts::is_k16(dtype) {
                unpack_k16(dtype, src, l, dst);
            } else {
                unpack_k(dtype, src, l, dst);
            }
        }
        return out;
    }
    let min = matches!(dtype, DType::Q4_1 | DType::Q5_1);
    let five = matches!(dtype, DType::Q5_0 | DType::Q5_1);
    let mut out = vec![0u8; rb];
    for i in 0..nb {
        let src = &packed[g * ROWS * rb + i * ROWS * bs..g * ROWS * rb + (i + 1) * ROWS * bs];
        let blk = &mut out[i * bs..(i + 1) * bs];
        blk[0..2].copy_from_slice(&src[2 * l..2 * l + 2]);
        let mut o = 16;
        if min {
            blk[2..4].copy_from_slice(&src[o + 2 * l..o + 2 * l + 2]);
            o += 16;
        }
        let mut q = [0u8; 32];
        let mut h = 0u32;
        if five {
            h = u32::from_le_bytes(src[o + 4 * l..o + 4 * l + 4].try_into().unwrap());
            o += 32;
        }
        if dtype == DType::Q8_0 {
            for p in 0..16 {
                let at = o + 16 * p + 2 * l;
                q[2 * p..2 * p + 2].copy_from_slice(&src[at..at + 2]);
            }
            blk[2..34].copy_from_slice(&q);
            continue;
        }
        for c in 0..4 {
            let w = u32::from_le_bytes(
                src[o + 32 * c + 4 * l..o + 32 * c + 4 * l + 4]
                    .try_into()
                    .unwrap(),
            );
            for s in 0..4 {
                let p = 4 * c + s;
                q[2 * p] = ((w >> (4 * s)) & 0xF) as u8 | ((((h >> p) & 1) as u8) << 4);
                q[2 * p + 1] =
                    ((w >> (16 + 4 * s)) & 0xF) as u8 | ((((h >> (16 + p)) & 1) as u8) << 4);
            }
        }
        let (qs, qh) = match dtype {
            DType::Q4_0 => (2, None),
            DType::Q4_1 => (4, None),
            DType::Q5_0 => (6, Some(2)),
            _ => (8, Some(4)),
        };
        for j in 0..16 {
            blk[qs + j] = (q[j] & 0xF) | ((q[j + 16] & 0xF) << 4);
        }
        if let Some(ho) = qh {
            let mut hh = 0u32;
            for (j, &v) in q.iter().enumerate() {
                hh |= (((v >> 4) & 1) as u32) << j;
            }
            blk[ho..ho + 4].copy_from_slice(&hh.to_le_bytes());
        }
    }
    out
}

/// Row `l`'s super-block from a K-quant group-block: the inverse of `pack_k`.
fn unpack_k(dtype: DType, src: &[u8], l: usize, dst: &mut [u8]) {
    if dtype == DType::Q4_K {
        dst[0..2].copy_from_slice(&src[2 * l..2 * l + 2]);
        dst[2..4].copy_from_slice(&src[16 + 2 * l..16 + 2 * l + 2]);
        let sc: [u8; 8] = std::array::from_fn(|j| src[32 + 8 * j + l]);
        let mn: [u8; 8] = std::array::from_fn(|j| src[96 + 8 * j + l]);
        dst[4..16].copy_from_slice(&encode_scales_mins_k4(&sc, &mn));
        let mut q = [0u8; 256];
        for j in 0..8 {
            for c in 0..4 {
                for k in 0..4 {
                    let v = src[160 + 128 * j + 32 * c + 4 * l + k];
                    let e = 32 * j + 8 * c + k;
                    (q[e], q[e + 4]) = (v & 0xF, v >> 4);
                }
            }
        }
        for e in 0..256 {
            let (c, w) = (e / 64, e % 64);
            if w < 32 {
                dst[16 + c * 32 + w] |= q[e];
            } else {
                dst[16 + c * 32 + w - 32] |= q[e] << 4;
            }
        }
        return;
    }
    // Q6_K: ql [0..128], qh [128..192], scales [192..208], d [208..210]
    dst[208..210].copy_from_slice(&src[2 * l..2 * l + 2]);
    for k in 0..16 {
        dst[192 + k] = src[16 + 8 * k + l];
    }
    let mut q = [0u8; 256];
    for a in 0..8 {
        for p in 0..16 {
            let o = 144 + 256 * a + 16 * p + 2 * l;
            q[32 * a + 2 * p] = src[o];
            q[32 * a + 2 * p + 1] = src[o + 1];
        }
    }
    for (e, &v) in q.iter().enumerate() {
        let (h, w) = (e / 128, e % 128);
        let (s, i) = (w / 32, w % 32);
        dst[h * 64 + (s & 1) * 32 + i] |= (v & 0xF) << (4 * (s >> 1));
        dst[128 + h * 32 + i] |= (v >> 4) << (2 * s);
    }
}

/// The 12 bytes of eight 6-bit (scale, min) pairs of Q4_K / Q5_K: the inverse of
/// [`scales_mins_k4`].
fn encode_scales_mins_k4(sc: &[u8; 8], mn: &[u8; 8]) -> [u8; 12] {
    let mut o = [0u8; 12];
    for j in 0..4 {
        o[j] = sc[j] | ((sc[j + 4] >> 4) << 6);
        o[j + 4] = mn[j] | ((mn[j + 4] >> 4) << 6);
        o[j + 8] = (sc[j + 4] & 0xF) | ((mn[j + 4] & 0xF) << 4);
    }
    o
}

/// Byte offsets of (d, dmin) in a block of a generic 16-bit K type.
fn k16_d_offsets(dtype: DType) -> (usize, Option<usize>) {
    match dtype {
        DType::Q2_K => (80, Some(82)),
        DType::Q3_K => (108, None),
        DType::Q5_K => (0, Some(2)),
        _ => (0, None),
    }
}

/// The 256 unsigned codes of a super-block of a generic 16-bit K type, in element order:
/// Q2_K `q`, Q3_K `q + 4`, Q5_K `q`, IQ4_XS the grid index.
fn k16_codes(dtype: DType, blk: &[u8]) -> [u8; 256] {
    let mut q = [0u8; 256];
    for j in 0..8 {
        let out = &mut q[32 * j..32 * j + 32];
        if dtype == DType::IQ4_XS {
            let b = &crate::as_blocks::<BlockIQ4XS>(blk)[0];
            for l in 0..16 {
                out[l] = b.qs[16 * j + l] & 0xF;
                out[l + 16] = b.qs[16 * j + l] >> 4;
            }
            continue;
        }
        let off = if dtype == DType::Q3_K { 4 } else { 0 };
        for (o, v) in out.iter_mut().zip(crate::acts::k16_q(dtype, blk, j)) {
            *o = (v + off) as u8;
        }
    }
    q
}

/// Write the 256 codes of [`k16_codes`] into a super-block whose code bytes are zero.
fn k16_set_codes(dtype: DType, blk: &mut [u8], q: &[u8; 256]) {
    for (e, &v) in q.iter().enumerate() {
        let (j, l) = (e / 32, e % 32);
        let (h, s) = (j / 4, j % 4);
        match dtype {
            DType::Q2_K => blk[16 + h * 32 + l] |= (v & 3) << (2 * s),
            DType::Q3_K => {
                blk[32 + h * 32 + l] |= (v & 3) << (2 * s);
                blk[l] |= (v >> 2) << j;
            }
            DType::Q5_K => {
                blk[48 + (j / 2) * 32 + l] |= (v & 0xF) << (4 * (j % 2));
                blk[16 + l] |= (v >> 4) << j;
            }
            _ => blk[8 + 16 * j + l % 16] |= (v & 0xF) << (4 * (l / 16)),
        }
    }
}

/// One group-super-block of a generic 16-bit K type (see [`k16_layout`]): the eight rows'
/// super-block at `blk(r)` in `src`.
fn pack_k16(dtype: DType, blk: impl Fn(usize) -> usize, src: &[u8], dst: &mut [u8]) {
    let lay = k16_layout(dtype);
    let bs = dtype.type_size();
    let (od, odm) = k16_d_offsets(dtype);
    let mut q = [[0u8; 256]; ROWS];
    for (r, q) in q.iter_mut().enumerate() {
        let b = &src[blk(r)..blk(r) + bs];
        dst[2 * r..2 * r + 2].copy_from_slice(&b[od..od + 2]);
        if let (Some(o), Some(om)) = (lay.dmin, odm) {
            dst[o + 2 * r..o + 2 * r + 2].copy_from_slice(&b[om..om + 2]);
        }
        let sc = &mut dst[lay.scales..lay.codes];
        match dtype {
            // the raw bytes: scale in the low nibble, min in the high one
            DType::Q2_K => (0..16).for_each(|k| sc[8 * k + r] = b[k]),
            DType::Q3_K => {
                let v = crate::as_blocks::<BlockQ3K>(b)[0].scales();
                (0..16).for_each(|k| sc[8 * k + r] = v[k] as u8);
            }
            DType::Q5_K => {
                let (s, m) = scales_mins_k4(b[4..16].try_into().unwrap());
                for j in 0..8 {
                    sc[8 * j + r] = s[j];
                    sc[64 + 8 * j + r] = m[j];
                }
            }
            _ => {
                let x = &crate::as_blocks::<BlockIQ4XS>(b)[0];
                (0..8).for_each(|j| sc[8 * j + r] = x.scale(j) as i8 as u8);
            }
        }
        *q = k16_codes(dtype, b);
    }
    for a in 0..8 {
        let base = lay.codes + lay.block * a;
        let rows: [&[u8]; ROWS] = std::array::from_fn(|r| &q[r][32 * a..32 * a + 32]);
        if lay.lo_bits == 4 {
            nibble_chunks(&rows, &mut dst[base..base + 128]);
        } else {
            for c in 0..2 {
                for (r, q) in rows.iter().enumerate() {
                    let mut w = 0u32;
                    for k in 0..8 {
                        let p = 8 * c + k;
                        w |= ((q[2 * p] & 3) as u32) << (2 * k);
                        w |= ((q[2 * p + 1] & 3) as u32) << (16 + 2 * k);
                    }
                    dst[base + 32 * c + 4 * r..base + 32 * c + 4 * r + 4]
                        .copy_from_slice(&w.to_le_bytes());
                }
            }
        }
        if lay.hi {
            let o = base + 32 * lay.lo_bits;
            for (r, q) in rows.iter().enumerate() {
                let mut h = 0u32;
                for p in 0..16 {
                    h |= (((q[2 * p] >> lay.lo_bits) & 1) as u32) << p;
                    h |= (((q[2 * p + 1] >> lay.lo_bits) & 1) as u32) << (16 + p);
                }
                dst[o + 4 * r..o + 4 * r + 4].copy_from_slice(&h.to_le_bytes());
            }
        }
    }
}

/// Row `l`'s super-block from a group-super-block of a generic 16-bit K type: the inverse of
/// [`pack_k16`].
fn unpack_k16(dtype: DType, src: &[u8], l: usize, dst: &mut [u8]) {
    let lay = k16_layout(dtype);
    let (od, odm) = k16_d_offsets(dtype);
    dst.fill(0);
    dst[od..od + 2].copy_from_slice(&src[2 * l..2 * l + 2]);
    if let (Some(o), Some(om)) = (lay.dmin, odm) {
        dst[om..om + 2].copy_from_slice(&src[o + 2 * l..o + 2 * l + 2]);
    }
    let sc = &src[lay.scales..lay.codes];
    match dtype {
        DType::Q2_K => (0..16).for_each(|k| dst[k] = sc[8 * k + l]),
        DType::Q3_K => {
            for j in 0..16 {
                let v = (sc[8 * j + l] as i8 as i32 + 32) as u8;
                dst[96 + j % 8] |= (v & 0xF) << (4 * (j / 8));
                dst[96 + 8 + j % 4] |= (v >> 4) << (2 * (j / 4));
            }
        }
        DType::Q5_K => {
            let s: [u8; 8] = std::array::from_fn(|j| sc[8 * j + l]);
            let m: [u8; 8] = std::array::from_fn(|j| sc[64 + 8 * j + l]);
            dst[4..16].copy_from_slice(&encode_scales_mins_k4(&s, &m));
        }
        _ => {
            let mut h = 0u16;
            for j in 0..8 {
                let v = (sc[8 * j + l] as i8 as i32 + 32) as u8;
                dst[4 + j / 2] |= (v & 0xF) << (4 * (j % 2));
                h |= (((v >> 4) & 3) as u16) << (2 * j);
            }
            dst[2..4].copy_from_slice(&h.to_le_bytes());
        }
    }
    let mut q = [0u8; 256];
    let word = |o: usize| u32::from_le_bytes(src[o + 4 * l..o + 4 * l + 4].try_into().unwrap());
    for a in 0..8 {
        let base = lay.codes + lay.block * a;
        let h = if lay.hi {
            word(base + 32 * lay.lo_bits)
        } else {
            0
        };
        for p in 0..16 {
            let (lo, hi) = if lay.lo_bits == 4 {
                let (w, s) = (word(base + 32 * (p / 4)), p % 4);
                ((w >> (4 * s)) & 0xF, (w >> (16 + 4 * s)) & 0xF)
            } else {
                let (w, k) = (word(base + 32 * (p / 8)), p % 8);
                ((w >> (2 * k)) & 3, (w >> (16 + 2 * k)) & 3)
            };
            let hb = |b: usize| (((h >> b) & 1) << lay.lo_bits) as u8;
            q[32 * a + 2 * p] = lo as u8 | hb(p);
            q[32 * a + 2 * p + 1] = hi as u8 | hb(16 + p);
        }
    }
    k16_set_codes(dtype, dst, &q);
}
