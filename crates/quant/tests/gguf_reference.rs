//! Every ggml type decodes exactly as the PyPI `gguf` package's numpy reference does
//! (fixtures from scripts/gen_quant_fixtures.py), and the scalar dot reference agrees.
use hearth_core::DType;
use std::path::PathBuf;

fn fixture(name: &str, ext: &str) -> Vec<u8> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/quant")
        .join(format!("{name}.{ext}"));
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

const TYPES: &[&str] = &[
    "F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K",
    "Q6_K", "Q8_K", "IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S", "IQ4_NL",
    "IQ4_XS", "TQ1_0", "TQ2_0", "MXFP4",
];

#[test]
fn dequantize_matches_gguf_numpy() {
    for name in TYPES {
        let dt = DType::from_name(name).unwrap();
        let q = fixture(name, "bin");
        let want: Vec<f32> = fixture(name, "f32")
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        let mut got = vec![0f32; want.len()];
        hearth_quant::dequantize(dt, &q, &mut got).unwrap();
        let scale = want.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-30);
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!(
                (g - w).abs() <= scale * 1e-6,
                "{name}[{i}]: got {g}, gguf says {w}"
            );
        }
    }
}

#[test]
fn scalar_dot_matches_dequantized_dot() {
    let mut seed = 42u64;
    for name in TYPES {
        let dt = DType::from_name(name).unwrap();
        let q = fixture(name, "bin");
        let want: Vec<f32> = fixture(name, "f32")
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        let x: Vec<f32> = (0..want.len())
            .map(|_| {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((seed >> 40) as f32 / (1u64 << 24) as f32) - 0.5
            })
            .collect();
        let reference: f64 = want
            .iter()
            .zip(&x)
            .map(|(a, b)| *a as f64 * *b as f64)
            .sum();
        let norm: f64 = want
            .iter()
            .zip(&x)
            .map(|(a, b)| (*a as f64 * *b as f64).abs())
            .sum();
        let got = hearth_quant::dot(dt, &q, &x).unwrap() as f64;
        assert!(
            (got - reference).abs() <= norm * 1e-5 + 1e-6,
            "{name}: dot {got} vs {reference}"
        );
    }
}

#[test]
fn wrong_length_is_an_error_not_a_panic() {
    let mut out = vec![0f32; 32];
    assert!(hearth_quant::dequantize(DType::Q4_0, &[0u8; 17], &mut out).is_err());
    assert!(hearth_quant::dequantize(DType::Q4_K, &[0u8; 144], &mut out).is_err());
}

#[test]
fn simd_dot_agrees_with_scalar_reference() {
    let mut seed = 7u64;
    for name in TYPES {
        let dt = DType::from_name(name).unwrap();
        let q = fixture(name, "bin");
        let n = fixture(name, "f32").len() / 4;
        let x: Vec<f32> = (0..n)
            .map(|_| {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect();
        let mut w = vec![0f32; n];
        hearth_quant::dequantize(dt, &q, &mut w).unwrap();
        let norm: f32 = w.iter().zip(&x).map(|(a, b)| (a * b).abs()).sum();
        let fast = hearth_quant::dot_row(dt, &q, &x);
        let reference = hearth_quant::dot_row_scalar(dt, &q, &x);
        assert!(
            (fast - reference).abs() <= norm * 1e-5 + 1e-6,
            "{name}: simd {fast} vs scalar {reference}"
        );
    }
}

#[test]
fn integer_q16_kernels_agree_with_f32_and_scalar_reference() {
    use hearth_quant::acts::{QuantizedActs, dot_q16_scalar, supports_q16};
    let mut seed = 11u64;
    for name in TYPES {
        let dt = DType::from_name(name).unwrap();
        if !supports_q16(dt) {
            continue;
        }
        let q_all = fixture(name, "bin");
        let n_all = fixture(name, "f32").len() / 4;
        // the whole fixture row, and for 32-element blocks also 9 and 15 blocks: kernels that
        // take blocks eight at a time must get a row's tail right (SmolLM2 rows have 18)
        let mut lens = vec![n_all];
        if dt.block_size() == 32 {
            lens.extend([288, 480].into_iter().filter(|&l| l < n_all));
        }
        for n in lens {
            let q = q_all[..dt.row_bytes(n).unwrap()].to_vec();
            let rows: Vec<Vec<f32>> = (0..5)
                .map(|_| {
                    (0..n)
                        .map(|_| {
                            seed = seed
                                .wrapping_mul(6364136223846793005)
                                .wrapping_add(1442695040888963407);
                            ((seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
                        })
                        .collect()
                })
                .collect();
            let flat: Vec<f32> = rows.concat();
            let mut acts = QuantizedActs::default();
            acts.quantize(&flat, n);
            let mut w = vec![0f32; n];
            hearth_quant::dequantize(dt, &q, &mut w).unwrap();
            let x4 = hearth_quant::dot_row_q16::<4>(
                dt,
                &q,
                [acts.row(0), acts.row(1), acts.row(2), acts.row(3)],
            );
            for (t, x) in rows.iter().enumerate() {
                let exact: f64 = w.iter().zip(x).map(|(a, b)| *a as f64 * *b as f64).sum();
                let norm: f64 = w
                    .iter()
                    .zip(x)
                    .map(|(a, b)| (*a as f64 * *b as f64).abs())
                    .sum();
                let fast = hearth_quant::dot_row_q16::<1>(dt, &q, [acts.row(t)])[0];
                let reference = dot_q16_scalar(dt, &q, acts.row(t));
                // 16-bit activations: within 1e-4 of the exact dot, relative to the sum of
                // |terms|; Q4_K's 8-bit activations: within the rounding of each x to half a
                // step of its super-block's scale (amax / 127), summed over |w|
                let bound = if dt == DType::Q4_K {
                    w.chunks(256)
                        .zip(x.chunks(256))
                        .map(|(wb, xb)| {
                            let step = xb.iter().fold(0f32, |m, v| m.max(v.abs())) as f64 / 127.0;
                            wb.iter().map(|a| a.abs() as f64).sum::<f64>() * step * 0.5
                        })
                        .sum::<f64>()
                        + norm * 1e-5
                } else {
                    norm * 1e-4
                };
                assert!(
                    (fast as f64 - exact).abs() <= bound,
                    "{name} row {t}: {fast} vs exact {exact} (bound {bound})"
                );
                assert!(
                    (fast - reference).abs() as f64 <= norm * 1e-5,
                    "{name} row {t}: simd {fast} vs scalar {reference}"
                );
                if t < 4 {
                    assert_eq!(
                        x4[t].to_bits(),
                        fast.to_bits(),
                        "{name}: four-row kernel differs from one-row kernel"
                    );
                }
            }
        }
    }
}
