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
//! Rows past the last full group of 8 keep their original layout.
use hearth_core::DType;

/// Rows per packed group.
pub const ROWS: usize = hearth_core::PACK_ROWS;

/// Whether `dtype` has a packed layout and kernels.
pub fn packable(dtype: DType) -> bool {
    matches!(
        dtype,
        DType::Q4_0 | DType::Q4_1 | DType::Q5_0 | DType::Q5_1 | DType::Q8_0
    )
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
    let (nb, n_rows) = (rb / bs, src.len() / rb);
    let mut out = src.to_vec();
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
            let q: Vec<[u8; 32]> = (0..ROWS).map(|r| codes(dtype, blk(r))).collect();
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
                for c in 0..4 {
                    for (r, q) in q.iter().enumerate() {
                        let mut w = 0u32;
                        for s in 0..4 {
                            let p = 4 * c + s;
                            w |= ((q[2 * p] & 0xF) as u32) << (4 * s);
                            w |= ((q[2 * p + 1] & 0xF) as u32) << (16 + 4 * s);
                        }
                        dst[o + 32 * c + 4 * r..o + 32 * c + 4 * r + 4]
                            .copy_from_slice(&w.to_le_bytes());
                    }
                }
            }
        }
    }
    Some(out)
}

/// Row `r` of a packed matrix (`n_rows` rows of `rb` bytes) in the original layout: the
/// inverse of [`pack`] for one row.
pub fn unpack_row(dtype: DType, packed: &[u8], rb: usize, n_rows: usize, r: usize) -> Vec<u8> {
    let bs = dtype.type_size();
    let nb = rb / bs;
    if r >= n_rows / ROWS * ROWS {
        return packed[r * rb..(r + 1) * rb].to_vec();
    }
    let (g, l) = (r / ROWS, r % ROWS);
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
