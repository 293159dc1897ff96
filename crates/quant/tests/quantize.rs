//! Quantizers: bit-exact against gguf-py for the types it implements, and per-type round-trip
//! error budgets through hearth's own dequantizers for all of them.
use hearth_core::DType;
use hearth_quant::{dequantize, quantize::quantize_row};

fn data(name: &str) -> Vec<u8> {
    let p = format!("{}/tests/data/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&p).unwrap_or_else(|e| panic!("{p}: {e}"))
}

/// gguf-py's quantize (scripts/gen_quant_golden.py) and ours give the same bytes.
#[test]
fn bit_exact_with_gguf_py() {
    let x: Vec<f32> = data("quant_in.f32")
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    for name in ["F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"] {
        let t = DType::from_name(name).unwrap();
        let want = data(&format!("quant_{name}.bin"));
        let rb = t.row_bytes(256).unwrap();
        let mut got = vec![0u8; rb * 8];
        for (r, o) in x.chunks_exact(256).zip(got.chunks_exact_mut(rb)) {
            quantize_row(t, r, None, o).unwrap();
        }
        let bad = got.iter().zip(&want).filter(|(a, b)| a != b).count();
        assert_eq!(got.len(), want.len(), "{name}");
        assert_eq!(bad, 0, "{name}: {bad} bytes differ from gguf-py");
    }
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        ((self.0 >> 11) as f64 / (1u64 << 53) as f64) as f32
    }
    fn normal(&mut self) -> f32 {
        let (u, v) = (self.next().max(1e-12), self.next());
        (-2.0 * u.ln()).sqrt() * (std::f32::consts::TAU * v).cos()
    }
}

fn roundtrip(t: DType, x: &[f32], w: Option<&[f32]>, n: usize) -> Vec<f32> {
    let rb = t.row_bytes(n).unwrap();
    let mut q = vec![0u8; rb];
    let mut y = vec![0f32; x.len()];
    for (r, o) in x.chunks_exact(n).zip(y.chunks_exact_mut(n)) {
        quantize_row(t, r, w, &mut q).unwrap();
        dequantize(t, &q, o).unwrap();
    }
    y
}

/// Weighted relative RMS error.
fn rel_err(x: &[f32], y: &[f32], w: Option<&[f32]>, n: usize) -> f32 {
    let (mut e, mut s) = (0f64, 0f64);
    for (i, (a, b)) in x.iter().zip(y).enumerate() {
        let wi = w.map_or(1.0, |w| w[i % n]) as f64;
        e += wi * ((a - b) as f64).powi(2);
        s += wi * (*a as f64).powi(2);
    }
    (e / s).sqrt() as f32
}

/// Gaussian rows: dequant(quant(x)) stays within each type's budget. The budgets are a little
/// above what a uniform quantizer with the type's bits per weight gives on N(0,1) data
/// (each bit halves the error), so a broken scale, packing or sign fails them.
#[test]
fn roundtrip_error_budgets() {
    let n = 512;
    let mut r = Rng(0x9E37_79B9_7F4A_7C15);
    let x: Vec<f32> = (0..n * 16).map(|_| r.normal() * 0.05).collect();
    let budgets = [
        ("F32", 0.0),
        ("F16", 5e-4),
        ("BF16", 4e-3),
        ("Q8_0", 0.006),
        ("Q6_K", 0.025),
        ("Q5_0", 0.045),
        ("Q5_1", 0.045),
        ("Q5_K", 0.04),
        ("Q4_0", 0.09),
        ("Q4_1", 0.09),
        ("IQ4_NL", 0.085),
        ("IQ4_XS", 0.085),
        ("Q4_K", 0.08),
        ("Q3_K", 0.17),
        ("Q2_K", 0.33),
    ];
    for (name, budget) in budgets {
        let t = DType::from_name(name).unwrap();
        let y = roundtrip(t, &x, None, n);
        let e = rel_err(&x, &y, None, n);
        eprintln!("{name}: relative RMS error {e:.5} (budget {budget})");
        assert!(e <= budget, "{name}: error {e} over budget {budget}");
    }
}

/// The k-quants' searched scales beat plain max-based rounding on the same block layout:
/// compare Q4_K to Q4_1 (the same 4 bits with an f16 scale and min per 32) on heavy-tailed data.
#[test]
fn kquant_search_beats_round_to_nearest() {
    let n = 256;
    let mut r = Rng(7);
    let x: Vec<f32> = (0..n * 32).map(|_| r.normal().powi(3)).collect();
    let ek = rel_err(&x, &roundtrip(DType::Q4_K, &x, None, n), None, n);
    let e1 = rel_err(&x, &roundtrip(DType::Q4_1, &x, None, n), None, n);
    assert!(ek < e1, "Q4_K {ek} vs Q4_1 {e1}");
}

/// With an importance matrix, the error weighted by it is lower than without.
#[test]
fn imatrix_lowers_weighted_error() {
    let n = 512;
    let mut r = Rng(11);
    let x: Vec<f32> = (0..n * 16).map(|_| r.normal()).collect();
    let w: Vec<f32> = (0..n)
        .map(|i| if i % 7 == 0 { 50.0 } else { 0.5 + r.next() })
        .collect();
    for name in [
        "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "IQ4_NL", "IQ4_XS",
    ] {
        let t = DType::from_name(name).unwrap();
        let plain = rel_err(&x, &roundtrip(t, &x, None, n), Some(&w), n);
        let with = rel_err(&x, &roundtrip(t, &x, Some(&w), n), Some(&w), n);
        eprintln!("{name}: weighted error {plain:.4} -> {with:.4} with the imatrix");
        assert!(with < plain, "{name}: {with} !< {plain}");
    }
}

/// Zero rows, constant rows and rows with one huge value quantize without NaN.
#[test]
fn degenerate_rows() {
    for name in [
        "Q8_0", "Q6_K", "Q5_K", "Q4_K", "Q3_K", "Q2_K", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "IQ4_NL",
        "IQ4_XS",
    ] {
        let t = DType::from_name(name).unwrap();
        for x in [vec![0f32; 256], vec![1.5f32; 256], {
            let mut v = vec![1e-3f32; 256];
            v[17] = 1e4;
            v
        }] {
            let y = roundtrip(t, &x, None, 256);
            assert!(y.iter().all(|v| v.is_finite()), "{name}");
            let e = rel_err(&x, &y, None, 256);
            assert!(e.is_nan() || e < 0.35, "{name}: {e}");
        }
    }
}

/// Bad arguments are errors, not panics.
#[test]
fn bad_arguments() {
    let x = vec![0.5f32; 256];
    let mut out = vec![0u8; 10];
    assert!(quantize_row(DType::Q4_K, &x, None, &mut out).is_err());
    assert!(quantize_row(DType::Q4_K, &x[..100], None, &mut [0u8; 144]).is_err());
    let mut out = vec![0u8; 144];
    assert!(quantize_row(DType::Q4_K, &x, Some(&[1.0; 3]), &mut out).is_err());
    assert!(quantize_row(DType::Q4_K, &x, Some(&[f32::NAN; 256]), &mut out).is_err());
    assert!(quantize_row(DType::TQ1_0, &x, None, &mut [0u8; 54]).is_err());
}

fn gaussian_and_imatrix(n: usize, rows: usize, seed: u64) -> (Vec<f32>, Vec<f32>) {
    let mut r = Rng(seed);
    let x: Vec<f32> = (0..n * rows).map(|_| r.normal() * 0.05).collect();
    let w: Vec<f32> = (0..n).map(|_| 0.1 + 2.0 * r.next()).collect();
    (x, w)
}

/// The 1- to 3-bit i-quants with an importance matrix: the imatrix-weighted round-trip
/// error stays within a budget a little above what their bits per weight allow (IQ3_XXS's
/// 3.06 bpw near Q3_K's; IQ2_XS's 2.31 bpw near Q2_K's; the budgets about 1.25 times the
/// error measured when each type was added), and falls with every step up in bits.
#[test]
fn iquant_roundtrip_budgets_with_imatrix() {
    let n = 512;
    let (x, w) = gaussian_and_imatrix(n, 16, 0x51);
    for (name, budget) in [
        ("IQ3_S", 0.16),
        ("IQ3_XXS", 0.21),
        ("IQ2_S", 0.30),
        ("IQ2_XS", 0.36),
        ("IQ2_XXS", 0.42),
        ("IQ1_M", 0.53),
        ("IQ1_S", 0.58),
    ] {
        let t = DType::from_name(name).unwrap();
        let e = rel_err(&x, &roundtrip(t, &x, Some(&w), n), Some(&w), n);
        eprintln!("{name}: weighted relative RMS error {e:.5} (budget {budget})");
        assert!(e <= budget, "{name}: error {e} over budget {budget}");
    }
    // more bits per weight, less error: IQ3_S 3.44, IQ3_XXS 3.06, IQ2_S 2.5, IQ2_XS 2.31,
    // IQ2_XXS 2.06, IQ1_M 1.75, IQ1_S 1.56
    let order = [
        "IQ3_S", "IQ3_XXS", "IQ2_S", "IQ2_XS", "IQ2_XXS", "IQ1_M", "IQ1_S",
    ];
    let errs: Vec<f32> = order
        .iter()
        .map(|name| {
            let t = DType::from_name(name).unwrap();
            rel_err(&x, &roundtrip(t, &x, Some(&w), n), Some(&w), n)
        })
        .collect();
    assert!(errs.windows(2).all(|e| e[0] < e[1]), "{order:?}: {errs:?}");
}

/// IQ2_XXS, IQ2_XS and IQ1_S cannot be written without an importance matrix (as in ggml);
/// IQ3_XXS, IQ3_S, IQ2_S and IQ1_M fall back to ggml's weights without one. Degenerate rows
/// stay finite.
#[test]
fn iquant_imatrix_required_and_degenerate_rows() {
    let x = vec![0.5f32; 256];
    let mut out = vec![0u8; DType::IQ2_XS.row_bytes(256).unwrap()];
    let e = quantize_row(DType::IQ2_XS, &x, None, &mut out).unwrap_err();
    assert!(e.to_string().contains("importance matrix"), "{e}");
    let mut out1 = vec![0u8; DType::IQ2_XXS.row_bytes(256).unwrap()];
    let e = quantize_row(DType::IQ2_XXS, &x, None, &mut out1).unwrap_err();
    assert!(e.to_string().contains("importance matrix"), "{e}");
    let mut out1s = vec![0u8; DType::IQ1_S.row_bytes(256).unwrap()];
    let e = quantize_row(DType::IQ1_S, &x, None, &mut out1s).unwrap_err();
    assert!(e.to_string().contains("importance matrix"), "{e}");
    for name in ["IQ3_XXS", "IQ3_S", "IQ2_S", "IQ1_M"] {
        let t = DType::from_name(name).unwrap();
        let y = roundtrip(t, &x, None, 256);
        let e = rel_err(&x, &y, None, 256);
        assert!(e < 0.35, "{name} without an imatrix: {e}");
    }
    let w = vec![1.0f32; 256];
    for name in [
        "IQ2_XXS", "IQ2_XS", "IQ3_XXS", "IQ3_S", "IQ2_S", "IQ1_S", "IQ1_M",
    ] {
        let t = DType::from_name(name).unwrap();
        for x in [vec![0f32; 256], vec![1.5f32; 256], vec![0.3f32; 256]] {
            let y = roundtrip(t, &x, Some(&w), 256);
            assert!(y.iter().all(|v| v.is_finite()), "{name}");
            let e = rel_err(&x, &y, None, 256);
            assert!(e.is_nan() || e < 0.35, "{name}: {e}");
        }
        // one huge value: it is kept within 10% (the stored grid magnitudes 8:25:43 are only
        // close to the 1:3:5 the search fits, and the group scale has 4 bits). (The grids have no zero level, so the small
        // values sharing its scale come out at a fraction of it, up to 1/5 on the 2-bit grids:
        // the row's relative error is no measure here.)
        let mut x = vec![1e-3f32; 256];
        x[17] = 1e4;
        let y = roundtrip(t, &x, Some(&w), 256);
        assert!(y.iter().all(|v| v.is_finite()), "{name}");
        assert!((y[17] - 1e4).abs() < 1e3, "{name}: {}", y[17]);
        // an all-zero imatrix and non-finite input are not panics
        let y = roundtrip(t, &vec![0.7f32; 256], Some(&[0.0; 256]), 256);
        assert_eq!(y.len(), 256);
        let mut bad = vec![0.1f32; 256];
        bad[3] = f32::NAN;
        bad[9] = f32::INFINITY;
        let mut o = vec![0u8; t.row_bytes(256).unwrap()];
        quantize_row(t, &bad, Some(&w), &mut o).unwrap();
    }
}

/// With an importance matrix, the error weighted by it is lower than with a flat one.
#[test]
fn iquant_imatrix_lowers_weighted_error() {
    let n = 512;
    let mut r = Rng(13);
    let x: Vec<f32> = (0..n * 16).map(|_| r.normal()).collect();
    let w: Vec<f32> = (0..n)
        .map(|i| if i % 7 == 0 { 50.0 } else { 0.5 + r.next() })
        .collect();
    let flat = vec![1.0f32; n];
    for name in [
        "IQ2_XXS", "IQ2_XS", "IQ3_XXS", "IQ3_S", "IQ2_S", "IQ1_S", "IQ1_M",
    ] {
        let t = DType::from_name(name).unwrap();
        let plain = rel_err(&x, &roundtrip(t, &x, Some(&flat), n), Some(&w), n);
        let with = rel_err(&x, &roundtrip(t, &x, Some(&w), n), Some(&w), n);
        eprintln!("{name}: weighted error {plain:.4} -> {with:.4} with the imatrix");
        assert!(with < plain, "{name}: {with} !< {plain}");
    }
}
