//! `hearth quantize` end to end on the tiny llama fixture (tests/fixtures/tiny/llama: a random
//! model built with transformers, and the GGUF llama.cpp's converter made of it).
mod common;

use common::opts;
use hearth_convert::{Event, Ftype, Imatrix, Options, quantize};

use hearth_core::DType;
use hearth_formats::{GgufFile, ModelFiles, Value};
use hearth_models::Model;
use std::path::{Path, PathBuf};
use std::sync::Arc;

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny/llama")
}

fn tmp(name: &str) -> PathBuf {
    common::tmp("q", name)
}

fn run(input: &Path, out: &Path, o: &Options) -> hearth_core::Result<Vec<hearth_convert::Planned>> {
    quantize(input, out, o, &|_: Event| {}).map(|r| r.0)
}

/// The HF directory converted by hearth (as F32) is what llama.cpp's converter wrote: the same
/// metadata (but the free-form name) and the same tensors, q/k rows permuted as GGUF wants.
#[test]
fn hf_conversion_matches_llama_cpp_converter() {
    let out = tmp("hf_f32.gguf");
    run(&fixture(), &out, &opts("F32")).unwrap();
    let ours = GgufFile::open(&out).unwrap();
    let theirs = GgufFile::open(&fixture().join("model.gguf")).unwrap();
    for (k, v) in &theirs.metadata {
        if k == "general.name" || k == "general.size_label" {
            continue;
        }
        assert_eq!(ours.get(k), Some(v), "metadata {k}");
    }
    let mine: std::collections::HashMap<String, hearth_core::Tensor> = ours
        .tensors()
        .unwrap()
        .into_iter()
        .map(|t| (t.name.clone(), t))
        .collect();
    let ts = theirs.tensors().unwrap();
    assert_eq!(mine.len(), ts.len());
    for t in &ts {
        let m = &mine[&t.name];
        assert_eq!((m.dtype, &m.shape), (t.dtype, &t.shape), "{}", t.name);
        if t.name == "rope_freqs.weight" {
            for (a, b) in m.bytes().chunks(4).zip(t.bytes().chunks(4)) {
                let (a, b) = (
                    f32::from_le_bytes(a.try_into().unwrap()),
                    f32::from_le_bytes(b.try_into().unwrap()),
                );
                assert!((a - b).abs() <= 1e-6 * b.abs(), "rope_freqs {a} vs {b}");
            }
        } else {
            assert!(m.bytes() == t.bytes(), "tensor {} differs", t.name);
        }
    }
    let _ = std::fs::remove_file(out);
}

fn logits(path: &Path, tokens: &[u32]) -> Vec<f32> {
    let files = ModelFiles::open(path).unwrap();
    let model = Model::load(&files, Arc::new(hearth_cpu::Cpu::new(2).unwrap())).unwrap();
    let mut st = model.new_state(tokens.len()).unwrap();
    let mut out = Vec::new();
    model.forward(tokens, &mut st, true, &mut out).unwrap();
    out
}

/// Relative RMS error of all of a file's tensors against the f32 source's, dequantized.
fn weight_error(src: &Path, out: &Path) -> f64 {
    let a = GgufFile::open(src).unwrap().tensors().unwrap();
    let b = GgufFile::open(out).unwrap().tensors().unwrap();
    let (mut e, mut s) = (0f64, 0f64);
    for t in &a {
        let q = b.iter().find(|u| u.name == t.name).unwrap();
        let n: usize = t.shape.iter().product();
        let (mut x, mut y) = (vec![0f32; n], vec![0f32; n]);
        hearth_quant::dequantize(t.dtype, t.bytes(), &mut x).unwrap();
        hearth_quant::dequantize(q.dtype, q.bytes(), &mut y).unwrap();
        for (p, r) in x.iter().zip(&y) {
            e += ((p - r) as f64).powi(2);
            s += (*p as f64).powi(2);
        }
    }
    (e / s).sqrt()
}

/// Quantized files load in hearth and give logits close to the f32 model's: the logits' error
/// relative to the weights' error (both relative RMS) may be at most twice that of an F16 file,
/// whose rounding noise is the reference for how this model propagates small weight errors.
/// A file whose tensors were mislaid, mislabeled or mis-permuted fails that by far. (The
/// fixture's rows are 64 and 96 wide, so the k-quants fall back to 32-blocks, exactly as
/// llama-quantize does; the k-quant files are checked bit-exact against llama.cpp's on SmolLM2
/// by scripts/quant_vs_llamacpp.sh and the kernels by hearth-quant's unit tests.)
#[test]
fn quantized_logits_stay_close() {
    let exp: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture().join("expected.json")).unwrap())
            .unwrap();
    let tokens: Vec<u32> = exp["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    let src = fixture().join("model.gguf");
    let want = logits(&src, &tokens);
    let rms = |v: &mut dyn Iterator<Item = f32>| {
        let (s, n) = v.fold((0f64, 0usize), |(s, n), x| (s + (x as f64).powi(2), n + 1));
        (s / n as f64).sqrt()
    };
    let scale = rms(&mut want.iter().copied());
    let mut gain_f16 = 0.0;
    for (t, want_type) in [
        ("F16", DType::F16),
        ("Q8_0", DType::Q8_0),
        ("Q4_K_M", DType::Q5_0),
        ("Q4_0", DType::Q4_0),
    ] {
        let out = tmp(&format!("{t}.gguf"));
        let planned = run(&src, &out, &opts(t)).unwrap();
        assert!(
            planned.iter().any(|p| p.to == want_type),
            "{t}: no {want_type} tensor"
        );
        let g = GgufFile::open(&out).unwrap();
        assert_eq!(
            g.get("general.file_type"),
            Some(&Value::U32(Ftype::parse(t).unwrap().id()))
        );
        assert_eq!(g.get("general.quantization_version"), Some(&Value::U32(2)));
        let got = logits(&out, &tokens);
        let err = rms(&mut got.iter().zip(&want).map(|(a, b)| a - b)) / scale;
        let w = weight_error(&src, &out);
        let gain = err / w;
        eprintln!("{t}: weights' relative RMS error {w:.5}, logits' {err:.4}: gain {gain:.2}");
        if t == "F16" {
            gain_f16 = gain;
        } else {
            assert!(
                gain <= 2.0 * gain_f16,
                "{t}: error gain {gain} vs F16's {gain_f16}"
            );
        }
        assert!(w < 0.1, "{t}: weights' error {w}");
        let _ = std::fs::remove_file(out);
    }
}

/// Wrong input gives clear errors and leaves no output behind.
#[test]
fn bad_input_is_an_error() {
    let src = fixture().join("model.gguf");
    let out = tmp("bad.gguf");
    assert!(Ftype::parse("Q7_K").is_err());
    // an imatrix for another model
    let mut m = Imatrix::default();
    m.entries.insert("blk.0.attn_q.weight".into(), vec![1.0; 7]);
    let mut o = opts("Q4_0");
    o.imatrix = Some(m);
    let e = run(&src, &out, &o).unwrap_err().to_string();
    assert!(e.contains("another model"), "{e}");
    // requantizing needs the flag
    let q = tmp("q8.gguf");
    run(&src, &q, &opts("Q8_0")).unwrap();
    let e = run(&q, &out, &opts("Q4_0")).unwrap_err().to_string();
    assert!(e.contains("allow-requantize"), "{e}");
    let mut o = opts("Q4_0");
    o.allow_requantize = true;
    run(&q, &out, &o).unwrap();
    // a truncated file
    let bytes = std::fs::read(&q).unwrap();
    let cut = tmp("cut.gguf");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    assert!(run(&cut, &tmp("cut_out.gguf"), &opts("Q8_0")).is_err());
    assert!(!tmp("cut_out.gguf").exists() && !tmp("cut_out.partial").exists());
    // an architecture the HF conversion cannot map
    let e = run(&fixture().join("../gpt_oss"), &out, &opts("Q8_0"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("not supported"), "{e}");
    // a directory that is not a model
    assert!(run(&std::env::temp_dir(), &tmp("x.gguf"), &opts("Q8_0")).is_err());
    for p in [out, q, cut] {
        let _ = std::fs::remove_file(p);
    }
}
