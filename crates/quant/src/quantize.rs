//! Quantization: f32 rows -> ggml blocks, for every type hearth can write.
//!
//! [`quantize_row`] is the entry point. The block types' search algorithms live in `qsearch`,
//! `qlegacy` (32-element blocks and IQ4_XS), `qkquants` (Q2_K..Q6_K), `qiquants` (IQ2_XXS,
//! IQ2_XS, IQ2_S, IQ3_XXS, IQ3_S) and `qiq1` (IQ1_S, IQ1_M). Every result decodes with the dequantizers of this crate; the tests check that
//! round trip per type.
use crate::{qiq1, qiquants as iq, qkquants as k, qlegacy as l};
use hearth_core::{DType, Error, Result};

/// Whether hearth can write `dtype`.
pub fn can_quantize(dtype: DType) -> bool {
    matches!(
        dtype,
        DType::F32
            | DType::F16
            | DType::BF16
            | DType::Q4_0
            | DType::Q4_1
            | DType::Q5_0
            | DType::Q5_1
            | DType::Q8_0
            | DType::Q2_K
            | DType::Q3_K
            | DType::Q4_K
            | DType::Q5_K
            | DType::Q6_K
            | DType::IQ4_NL
            | DType::IQ4_XS
            | DType::IQ2_XXS
            | DType::IQ2_XS
            | DType::IQ3_XXS
            | DType::IQ3_S
            | DType::IQ2_S
            | DType::IQ1_S
            | DType::IQ1_M
            | DType::MXFP4
    )
}

/// Whether `dtype` cannot be written without an importance matrix (as in ggml, whose IQ2_XXS,
/// IQ2_XS and IQ1_S quantizers have no fallback weights).
pub fn needs_imatrix(dtype: DType) -> bool {
    matches!(dtype, DType::IQ2_XXS | DType::IQ2_XS | DType::IQ1_S)
}

/// Whether an importance matrix changes the result for `dtype` (Q8_0, MXFP4 and the float types
/// ignore it).
pub fn uses_imatrix(dtype: DType) -> bool {
    can_quantize(dtype)
        && !matches!(
            dtype,
            DType::F32 | DType::F16 | DType::BF16 | DType::Q8_0 | DType::MXFP4
        )
}

/// Encode one row `x` as `dtype` into `out` (exactly `dtype.row_bytes(x.len())` bytes).
/// `imatrix`, when given, holds one importance weight per column (`x.len()` of them).
pub fn quantize_row(
    dtype: DType,
    x: &[f32],
    imatrix: Option<&[f32]>,
    out: &mut [u8],
) -> Result<()> {
    if !can_quantize(dtype) {
        return Err(Error::Unsupported(format!(
            "quantizing to {dtype} is not implemented"
        )));
    }
    let need = dtype.row_bytes(x.len())?;
    if out.len() != need {
        return Err(Error::Invalid(format!(
            "{dtype}: a row of {} needs {need} bytes, the buffer has {}",
            x.len(),
            out.len()
        )));
    }
    if let Some(w) = imatrix {
        if w.len() != x.len() {
            return Err(Error::Invalid(format!(
                "importance matrix has {} columns, the row has {}",
                w.len(),
                x.len()
            )));
        }
        if w.iter().any(|v| !v.is_finite() || *v < 0.0) {
            return Err(Error::Invalid(
                "importance matrix has a negative or non-finite value".into(),
            ));
        }
    }
    let qw = if uses_imatrix(dtype) { imatrix } else { None };
    if needs_imatrix(dtype) && qw.is_none() {
        return Err(Error::Invalid(format!(
            "quantizing to {dtype} needs an importance matrix (--imatrix)"
        )));
    }
    match dtype {
        DType::F32 => {
            for (o, v) in out.chunks_exact_mut(4).zip(x) {
                o.copy_from_slice(&v.to_le_bytes());
            }
        }
        DType::F16 => {
            for (o, v) in out.chunks_exact_mut(2).zip(x) {
                o.copy_from_slice(&l::f16_bytes(*v));
            }
        }
        DType::BF16 => {
            for (o, v) in out.chunks_exact_mut(2).zip(x) {
                o.copy_from_slice(&bf16_bits(*v).to_le_bytes());
            }
        }
        DType::Q4_0 => l::q4_0(x, qw, out),
        DType::Q4_1 => l::q4_1(x, qw, out),
        DType::Q5_0 => l::q5_0(x, qw, out),
        DType::Q5_1 => l::q5_1(x, qw, out),
        DType::Q8_0 => l::q8_0(x, out),
        DType::MXFP4 => l::mxfp4(x, out),
        DType::IQ4_NL => l::iq4_nl(x, qw, out),
        DType::IQ4_XS => l::iq4_xs(x, qw, out),
        DType::Q2_K => k::q2_k(x, qw, out),
        DType::Q3_K => k::q3_k(x, qw, out),
        DType::Q4_K => k::q4_k(x, qw, out),
        DType::Q5_K => k::q5_k(x, qw, out),
        DType::Q6_K => k::q6_k(x, qw, out),
        DType::IQ2_XXS => iq::iq2_xxs(x, qw.unwrap_or_default(), out),
        DType::IQ2_XS => iq::iq2_xs(x, qw.unwrap_or_default(), out),
        DType::IQ3_XXS => iq::iq3_xxs(x, qw, out),
        DType::IQ3_S => iq::iq3_s(x, qw, out),
        DType::IQ2_S => iq::iq2_s(x, qw, out),
        DType::IQ1_S => qiq1::iq1_s(x, qw.unwrap_or_default(), out),
        DType::IQ1_M => qiq1::iq1_m(x, qw, out),
        _ => unreachable!("checked by can_quantize"),
    }
    Ok(())
}

/// f32 -> bfloat16 bits as ggml does it: round to nearest even, NaN kept quiet.
pub fn bf16_bits(v: f32) -> u16 {
    let u = v.to_bits();
    if (u & 0x7fff_ffff) > 0x7f80_0000 {
        return ((u >> 16) | 64) as u16;
    }
    ((u as u64 + (0x7fff + ((u >> 16) & 1)) as u64) >> 16) as u16
}
