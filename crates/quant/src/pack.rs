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
//! | Q8_0 | 8 f16 `d`, 8 x 32 bytes of signed bytes |
//!
//! Weight pair `p` (elements `2p` and `2p + 1`, 16 pairs per block) of row `r`:
//! - 4-bit: 32-bit word `r` of nibble chunk `p / 4`, nibble `p % 4` (bits `4s..4s+4`) for
//!   element `2p` and nibble `4 + p % 4` (bits `16 + 4s..`) for element `2p + 1`, so that
//!   `(word >> 4s) & 0x000F000F` is the pair as two 16-bit integers;
//! - fifth bits (Q5): 32-bit word `r`, bit `p` for element `2p` and bit `16 + p` for `2p + 1`;
//! - Q8_0: 32-bit word `r` of chunk `p / 2`; pair `2c` in bytes 0 and 2, pair `2c + 1` in
//!   bytes 1 and 3, so that 16-bit arithmetic shifts give either pair.
//!
//! The K-quants (super-blocks of 256) are packed per super-block of the eight rows:
//!
//! | type | layout | bytes (original) |
//! |---|---|---|
//! | Q4_K | 8 f16 `d`, 8 f16 `dmin`, 6-bit scales then mins as bytes `[sub-block][row]`, then per sub-block of 32 four chunks of 32 bytes | 1184 (1152) |
//! | Q6_K | 8 f16 `d`, i8 scales `[sub-block of 16][row]`, then per block of 32 the 4-bit layout above (128 bytes) and two chunks of 32 bytes of high bits | 1680 (1680) |
//!
//! Q4_K's chunk `l` of sub-block `j` holds, in word `r`, byte `b`, element `32j + 8l + b` of
//! row `r` in the low nibble and element `32j + 8l + 4 + b` in the high one, so that the low
//! (or high) nibbles of a word are four consecutive weights for `vpmaddubsw`. Its scales are
//! stored decoded so that the kernel reads them with one widening load. Q6_K's high-bit chunk
//! `h` holds, in word `r`, bits `2q..2q+2` for element `2p` and `16 + 2q..` for `2p + 1`,
//! where `p = 8h + q`.
//!
//! Rows past the last full group of 8 keep their original layout, after the groups.
use crate::kquants::{BlockQ4K, BlockQ6K, scales_mins_k4};
use hearth_core::DType;

/// Rows per packed group.
pub const ROWS: usize = hearth_core::PACK_ROWS;

/// Whether `dtype` has a packed layout and kernels: the types with integer kernels
/// ([`crate::acts::supports_q16`]) but the generic 16-bit K types ([`crate::acts::is_k16`]).
pub fn packable(dtype: DType) -> bool {
    crate::acts::supports_q16(dtype) && !crate::acts::is_k16(dtype)
}

/// Bytes of a packed group-block (8 rows, one block or super-block).
pub fn group_block_bytes(dtype: DType) -> usize {
    match dtype {
        DType::Q4_K => 1184,
        _ => ROWS * dtype.type_size(),
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
        let base = 144 + 192 * a;
        let rows: [&[u8]; ROWS] = std::array::from_fn(|r| &q[r][32 * a..32 * a + 32]);
        nibble_chunks(&rows, &mut dst[base..base + 128]);
        for h in 0..2 {
            for (r, q) in rows.iter().enumerate() {
                let mut w = 0u32;
                for k in 0..8 {
                    let p = 8 * h + k;
                    w |= ((q[2 * p] >> 4) as u32) << (2 * k);
                    w |= ((q[2 * p + 1] >> 4) as u32) << (16 + 2 * k);
                }
                let o = base + 128 + 32 * h + 4 * r;
                dst[o..o + 4].copy_from_slice(&w.to_le_bytes());
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
    if matches!(dtype, DType::Q4_K | DType::Q6_K) {
        let (gbb, gb) = (group_block_bytes(dtype), group_bytes(dtype, rb));
        for g in 0..groups {
            for i in 0..nb {
                let blk = |r: usize| (g * ROWS + r) * rb + i * bs;
                pack_k(
                    dtype,
                    blk,
                    src,
                    &mut out[g * gb + i * gbb..g * gb + (i + 1) * gbb],
                );
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
                for c in 0..8 {
                    for (r, q) in q.iter().enumerate() {
                        let (a, b) = (2 * c, 2 * c + 1);
                        let w = [q[2 * a], q[2 * b], q[2 * a + 1], q[2 * b + 1]];
                        dst[o + 32 * c + 4 * r..o + 32 * c + 4 * r + 4].copy_from_slice(&w);
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
    if matches!(dtype, DType::Q4_K | DType::Q6_K) {
        let (gbb, gb) = (group_block_bytes(dtype), group_bytes(dtype, rb));
        let mut out = vec![0u8; rb];
        for i in 0..nb {
            let src = &packed[g * gb + i * gbb..g * gb + (i + 1) * gbb];
            unpack_k(dtype, src, l, &mut out[i * bs..(i + 1) * bs]);
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
            for c in 0..8 {
                let w = &src[o + 32 * c + 4 * l..o + 32 * c + 4 * l + 4];
                let (a, b) = (2 * c, 2 * c + 1);
                (q[2 * a], q[2 * b], q[2 * a + 1], q[2 * b + 1]) = (w[0], w[1], w[2], w[3]);
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
        for j in 0..4 {
            dst[4 + j] = sc[j] | ((sc[j + 4] >> 4) << 6);
            dst[4 + j + 4] = mn[j] | ((mn[j + 4] >> 4) << 6);
            dst[4 + j + 8] = (sc[j + 4] & 0xF) | ((mn[j + 4] & 0xF) << 4);
        }
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
        let base = 144 + 192 * a;
        let word = |o: usize| u32::from_le_bytes(src[o + 4 * l..o + 4 * l + 4].try_into().unwrap());
        for p in 0..16 {
            let (c, s) = (p / 4, p % 4);
            let w = word(base + 32 * c);
            let h = word(base + 128 + 32 * (p / 8));
            let k = p % 8;
            q[32 * a + 2 * p] = ((w >> (4 * s)) & 0xF) as u8 | ((((h >> (2 * k)) & 3) as u8) << 4);
            q[32 * a + 2 * p + 1] =
                ((w >> (16 + 4 * s)) & 0xF) as u8 | ((((h >> (16 + 2 * k)) & 3) as u8) << 4);
        }
    }
    for (e, &v) in q.iter().enumerate() {
        let (h, w) = (e / 128, e % 128);
        let (s, i) = (w / 32, w % 32);
        dst[h * 64 + (s & 1) * 32 + i] |= (v & 0xF) << (4 * (s >> 1));
        dst[128 + h * 32 + i] |= (v >> 4) << (2 * s);
    }
}
