//! The batched integer kernels (`rows_q16`: several tokens per weight row, tokens in SIMD
//! lanes from `T8_MIN` tokens on) give every (row, token) exactly the bits of the one-row,
//! one-token kernel, and every type but Q4_K equals the scalar reference bit for bit.
use hearth_core::DType;
use hearth_quant::acts::{QuantizedActs, dot_q16_scalar};

fn lcg(mut seed: u64) -> impl FnMut() -> u32 {
    move || {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (seed >> 33) as u32
    }
}

/// Random blocks of `dtype` whose f16 fields (the first 4 bytes of a 32-block, the scales of
/// a K-block) are small finite numbers.
fn weights(dtype: DType, rows: usize, n: usize, rnd: &mut impl FnMut() -> u32) -> Vec<u8> {
    let rb = dtype.row_bytes(n).unwrap();
    let mut w: Vec<u8> = (0..rb * rows).map(|_| rnd() as u8).collect();
    let bs = dtype.type_size();
    for blk in w.chunks_exact_mut(bs) {
        match dtype {
            DType::Q4_K => {
                blk[1] &= 0x1B;
                blk[3] &= 0x1B;
            }
            DType::Q6_K => blk[bs - 1] &= 0x1B,
            DType::Q2_K => {
                blk[81] &= 0x1B;
                blk[83] &= 0x1B;
            }
            DType::Q3_K => blk[109] &= 0x1B,
            _ => {
                blk[1] &= 0x1B;
                blk[3] &= 0x1B;
            }
        }
    }
    w
}

/// The types with integer kernels.
const TYPES: [DType; 11] = [
    DType::Q4_0,
    DType::Q4_1,
    DType::Q5_0,
    DType::Q5_1,
    DType::Q8_0,
    DType::Q4_K,
    DType::Q6_K,
    DType::Q2_K,
    DType::Q3_K,
    DType::Q5_K,
    DType::IQ4_XS,
];

/// Row lengths with 4- and 8-block tails (SmolLM2's 576 is 18 blocks of 32).
fn lens(dtype: DType) -> &'static [usize] {
    if dtype.block_size() == 32 {
        &[576, 288, 96, 1536]
    } else {
        &[256, 1024, 1536]
    }
}

#[test]
fn batched_rows_equal_single_rows_bit_for_bit() {
    let mut rnd = lcg(3);
    for dtype in TYPES {
        for &n in lens(dtype) {
            let rows = 11;
            let w = weights(dtype, rows, n, &mut rnd);
            let rb = dtype.row_bytes(n).unwrap();
            for n_tok in [1usize, 3, 4, 9, 16, 21, 40, 70] {
                let x: Vec<f32> = (0..n * n_tok)
                    .map(|_| (rnd() % 20001) as f32 / 10000.0 - 1.0)
                    .collect();
                let mut acts = QuantizedActs::default();
                acts.quantize(&x, n);
                let mut got = vec![f32::NAN; rows * n_tok];
                hearth_quant::rows_q16(dtype, &w, rb, 1..rows, &acts, n_tok, |t, r, v| {
                    got[t * rows + r] = v
                });
                for r in 1..rows {
                    let row = &w[r * rb..(r + 1) * rb];
                    for t in 0..n_tok {
                        let one = hearth_quant::dot_row_q16::<1>(dtype, row, [acts.row(t)])[0];
                        assert_eq!(
                            got[t * rows + r].to_bits(),
                            one.to_bits(),
                            "{dtype:?} n={n} n_tok={n_tok} row {r} token {t}: {} vs {one}",
                            got[t * rows + r]
                        );
                        if dtype != DType::Q4_K {
                            let s = dot_q16_scalar(dtype, row, acts.row(t));
                            assert_eq!(
                                s.to_bits(),
                                one.to_bits(),
                                "{dtype:?} n={n} row {r} token {t}: scalar {s} vs simd {one}"
                            );
                        }
                    }
                }
                // row 0 was not asked for
                assert!((0..n_tok).all(|t| got[t * rows].is_nan()));
            }
        }
    }
}

/// The row-interleaved layout (`pack.rs`) unpacks to the original bytes, and its kernel gives
/// every (row, token) the one-row kernel's bits, for row ranges that cut groups and rows past
/// the last whole group.
#[test]
fn packed_rows_equal_single_rows_bit_for_bit() {
    use hearth_quant::pack;
    let mut rnd = lcg(5);
    for dtype in TYPES.into_iter().filter(|&t| pack::packable(t)) {
        for &n in lens(dtype) {
            let rows = 27; // three whole groups of 8 and three rows after them
            let w = weights(dtype, rows, n, &mut rnd);
            let rb = dtype.row_bytes(n).unwrap();
            let p = pack::pack(dtype, &w, rb).unwrap();
            assert_eq!(p.len(), pack::packed_len(dtype, rb, rows));
            for r in 0..rows {
                assert_eq!(
                    &pack::unpack_row(dtype, &p, rb, rows, r)[..],
                    &w[r * rb..(r + 1) * rb],
                    "{dtype:?} n={n} row {r} round trip"
                );
            }
            for n_tok in [1usize, 2, 3, 5, 7, 15] {
                let x: Vec<f32> = (0..n * n_tok)
                    .map(|_| (rnd() % 20001) as f32 / 10000.0 - 1.0)
                    .collect();
                let mut acts = QuantizedActs::default();
                // only the forms the type reads, as the CPU backend quantizes
                let (q16, k8) = QuantizedActs::forms(dtype);
                acts.quantize_forms(&x, n, q16, k8);
                for range in [0..rows, 3..21, 17..26] {
                    let mut got = vec![f32::NAN; rows * n_tok];
                    hearth_quant::rows_q16_packed(
                        dtype,
                        &p,
                        rb,
                        rows,
                        range.clone(),
                        &acts,
                        n_tok,
                        |t, r, v| got[t * rows + r] = v,
                    );
                    for r in 0..rows {
                        let row = &w[r * rb..(r + 1) * rb];
                        for t in 0..n_tok {
                            let g = got[t * rows + r];
                            if !range.contains(&r) {
                                assert!(g.is_nan(), "{dtype:?} row {r} outside {range:?} was put");
                                continue;
                            }
                            let one = hearth_quant::dot_row_q16::<1>(dtype, row, [acts.row(t)])[0];
                            assert_eq!(
                                g.to_bits(),
                                one.to_bits(),
                                "{dtype:?} n={n} n_tok={n_tok} row {r} token {t}: {g} vs {one}"
                            );
                        }
                    }
                }
            }
        }
    }
}
