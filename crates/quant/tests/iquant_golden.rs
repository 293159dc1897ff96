//! The lattice i-quants and MXFP4 are byte-identical to llama.cpp's: the goldens are `llama-quantize
//! --pure` of 16 rows x 512 (scripts/gen_iquant_golden.py: varied distributions, tied values,
//! signed zeros, an outlier, near-zero groups, f16-rounded values), with an importance matrix
//! and, where ggml allows it, without one.
use hearth_core::DType;
use hearth_quant::quantize::quantize_row;

fn data(name: &str) -> Vec<u8> {
    let p = format!("{}/tests/data/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&p).unwrap_or_else(|e| panic!("{p}: {e}"))
}

fn floats(name: &str) -> Vec<f32> {
    data(name)
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

const N: usize = 512;

/// Quantize every row of the golden input as `name` and compare with `file`, row by row.
fn check(name: &str, imatrix: Option<&[f32]>, file: &str) {
    let x = floats("iq_in.f32");
    let want = data(file);
    let t = DType::from_name(name).unwrap();
    let rb = t.row_bytes(N).unwrap();
    assert_eq!(want.len(), rb * x.len() / N, "{file}: size");
    let mut got = vec![0u8; rb];
    let mut bad_rows = vec![];
    for (r, (row, w)) in x.chunks_exact(N).zip(want.chunks_exact(rb)).enumerate() {
        quantize_row(t, row, imatrix, &mut got).unwrap();
        if got != w {
            let first = got.iter().zip(w).position(|(a, b)| a != b).unwrap();
            bad_rows.push(format!("row {r} from byte {first}"));
        }
    }
    assert!(
        bad_rows.is_empty(),
        "{file}: differs from llama.cpp in {}",
        bad_rows.join(", ")
    );
}

#[test]
fn iquants_match_llama_quantize_with_imatrix() {
    let im = floats("iq_imatrix.f32");
    assert_eq!(im.len(), N);
    for name in [
        "IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S",
    ] {
        check(name, Some(&im), &format!("iq_{name}.bin"));
    }
}

#[test]
fn iquants_match_llama_quantize_without_imatrix() {
    for name in ["IQ1_M", "IQ3_XXS", "IQ3_S"] {
        check(name, None, &format!("iq_{name}_noim.bin"));
    }
}

/// MXFP4 (`llama-quantize --pure` to MXFP4_MOE; ggml ignores the imatrix for it, and so does
/// hearth: the same bytes with and without one).
#[test]
fn mxfp4_matches_llama_quantize() {
    let im = floats("iq_imatrix.f32");
    check("MXFP4", Some(&im), "iq_MXFP4.bin");
    check("MXFP4", None, "iq_MXFP4.bin");
}
