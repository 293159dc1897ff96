//! `hearth quantize` from Hugging Face directories of every architecture the conversion maps
//! (tests/fixtures/tiny/*: random models built with transformers by scripts/gen_tiny_models.py
//! and scripts/gen_tiny_moe.py, with transformers' logits and the GGUF llama.cpp's converter
//! made of each): the F32 file hearth writes has llama.cpp's converter's metadata, tensor
//! names, shapes, types and bytes, the F16 file the converter's types, and both give
//! transformers' logits.
mod common;

use common::opts;
use hearth_convert::{Event, quantize};
use hearth_core::{DType, Tensor};
use hearth_formats::{GgufFile, ModelFiles};
use hearth_models::Model;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Fixtures whose HF directory converts, dense ones included; the `-fp8` ones are
/// block-quantized float8 copies (scripts/gen_fp8_fixtures.py), whose expected logits are
/// transformers' on the dequantized weights and whose model.gguf the converter made of them.
const ARCHS: &[&str] = &[
    "llama",
    "llama-spm",
    "qwen2",
    "qwen3",
    "qwen3_moe",
    "qwen2_moe",
    "mixtral",
    "deepseek_v2",
    "deepseek_v3",
    "glm4_moe",
    "glm4_moe-mtp",
    "qwen3-fp8",
    "deepseek_v3-fp8",
];

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/tiny")
        .join(name)
}

fn tmp(name: &str) -> PathBuf {
    common::tmp("hfa", name)
}

fn convert(dir: &Path, t: &str) -> PathBuf {
    let out = tmp(&format!(
        "{}_{t}.gguf",
        dir.file_name().unwrap().to_string_lossy()
    ));
    quantize(dir, &out, &opts(t), &|_: Event| {})
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    out
}

fn by_name(g: &GgufFile) -> HashMap<String, Tensor> {
    g.tensors()
        .unwrap()
        .into_iter()
        .map(|t| (t.name.clone(), t))
        .collect()
}

/// The same metadata both ways (but the free-form name and size label, and the file type
/// where `ftype_differs`), the same tensor names, shapes and types; with `bytes`, the same
/// bytes (rope_freqs to 1e-6: it is computed).
fn same_as_converter(arch: &str, ours: &GgufFile, theirs: &GgufFile, bytes: bool) {
    let skip = |k: &str| k == "general.name" || k == "general.size_label";
    for (k, v) in &theirs.metadata {
        if !skip(k) {
            assert_eq!(ours.get(k), Some(v), "{arch}: metadata {k}");
        }
    }
    for k in ours.metadata.keys() {
        assert!(
            skip(k) || theirs.get(k).is_some(),
            "{arch}: hearth writes {k}, llama.cpp's converter does not"
        );
    }
    let mine = by_name(ours);
    let ts = theirs.tensors().unwrap();
    assert_eq!(mine.len(), ts.len(), "{arch}: tensor count");
    for t in &ts {
        let m = mine
            .get(&t.name)
            .unwrap_or_else(|| panic!("{arch}: no tensor {}", t.name));
        assert_eq!(
            (m.dtype, &m.shape),
            (t.dtype, &t.shape),
            "{arch}: {}",
            t.name
        );
        if !bytes {
            continue;
        }
        if t.name == "rope_freqs.weight" {
            for (a, b) in m.bytes().chunks(4).zip(t.bytes().chunks(4)) {
                let (a, b) = (
                    f32::from_le_bytes(a.try_into().unwrap()),
                    f32::from_le_bytes(b.try_into().unwrap()),
                );
                assert!((a - b).abs() <= 1e-6 * b.abs(), "rope_freqs {a} vs {b}");
            }
        } else {
            assert!(m.bytes() == t.bytes(), "{arch}: tensor {} differs", t.name);
        }
    }
}

fn expected(arch: &str) -> (Vec<u32>, Vec<f32>) {
    let dir = fixture(arch);
    let exp: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
    let tokens = exp["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    let logits = std::fs::read(dir.join("logits.f32"))
        .unwrap()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    (tokens, logits)
}

fn logits(path: &Path, tokens: &[u32]) -> Vec<f32> {
    let files = ModelFiles::open(path).unwrap();
    let model = Model::load(&files, Arc::new(hearth_cpu::Cpu::new(2).unwrap()))
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut st = model.new_state(tokens.len()).unwrap();
    let mut out = Vec::new();
    model.forward(tokens, &mut st, true, &mut out).unwrap();
    out
}

/// The largest |difference| and the largest |logit|.
fn max_diff(got: &[f32], want: &[f32]) -> (f32, f32) {
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = got
        .iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    (d, scale)
}

/// F32: the converter's file exactly, and transformers' logits to within float32 rounding
/// noise (the tolerance of hearth-models' tiny_hf test: 2e-5 of the largest logit).
#[test]
fn f32_files_are_the_converters() {
    for arch in ARCHS {
        let out = convert(&fixture(arch), "F32");
        let ours = GgufFile::open(&out).unwrap();
        let theirs = GgufFile::open(&fixture(arch).join("model.gguf")).unwrap();
        same_as_converter(arch, &ours, &theirs, true);
        let (tokens, want) = expected(arch);
        let (d, scale) = max_diff(&logits(&out, &tokens), &want);
        eprintln!("{arch:<12} F32: max |logit diff| {d:.2e} (largest logit {scale:.2})");
        assert!(d <= 2e-5 * scale.max(1.0), "{arch}: max |diff| {d}");
        let _ = std::fs::remove_file(out);
    }
}

/// F16: the converter's types (F32 for 1-D tensors, norms, biases and routers, F16 for the
/// rest) and its bytes: each F16 value the round-to-nearest-even f16 of the converter's f32
/// (numpy's astype(float16), which the converter's F16 output is; checked against
/// `convert_hf_to_gguf.py --outtype f16` files with scripts/gguf_diff.py, all bytes equal).
#[test]
fn f16_files_are_the_converters() {
    for arch in ARCHS {
        let out = convert(&fixture(arch), "F16");
        let ours = GgufFile::open(&out).unwrap();
        let theirs = GgufFile::open(&fixture(arch).join("model.gguf")).unwrap();
        let mine = by_name(&ours);
        let ts = theirs.tensors().unwrap();
        assert_eq!(mine.len(), ts.len(), "{arch}: tensor count");
        for t in ts {
            let m = &mine[&t.name];
            let one_d = t.shape.iter().filter(|&&d| d > 1).count() <= 1;
            let f32_kept = one_d
                || t.name.ends_with("_norm.weight")
                || t.name.contains("ffn_gate_inp")
                || !t.name.ends_with(".weight");
            let want = if f32_kept { DType::F32 } else { DType::F16 };
            assert_eq!((m.dtype, &m.shape), (want, &t.shape), "{arch}: {}", t.name);
            let want_bytes: Vec<u8> = if f32_kept {
                t.bytes().to_vec()
            } else {
                t.bytes()
                    .chunks_exact(4)
                    .flat_map(|c| {
                        half::f16::from_f32(f32::from_le_bytes(c.try_into().unwrap())).to_le_bytes()
                    })
                    .collect()
            };
            assert!(
                m.bytes() == want_bytes,
                "{arch}: F16 tensor {} differs",
                t.name
            );
        }
        let _ = std::fs::remove_file(out);
    }
}

/// A copy of fixture `name` in a temporary directory, its safetensors without the tensors
/// `drop` names and its config.json changed by `config`.
fn broken_copy(
    name: &str,
    tag: &str,
    drop: &[&str],
    config: &dyn Fn(&mut serde_json::Value),
) -> PathBuf {
    copy_fixture(name, tag, drop, config, 1)
}

/// As `broken_copy`, the tensors dealt round-robin (in name order) into `shards` files named
/// by a model.safetensors.index.json when more than one.
fn copy_fixture(
    name: &str,
    tag: &str,
    drop: &[&str],
    config: &dyn Fn(&mut serde_json::Value),
    shards: usize,
) -> PathBuf {
    let src = fixture(name);
    let d = tmp(&format!("{name}_{tag}"));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    for f in [
        "tokenizer.json",
        "tokenizer_config.json",
        "chat_template.jinja",
    ] {
        if src.join(f).exists() {
            std::fs::copy(src.join(f), d.join(f)).unwrap();
        }
    }
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    config(&mut cfg);
    std::fs::write(d.join("config.json"), cfg.to_string()).unwrap();
    // safetensors: u64 header length, JSON header {name: {dtype, shape, data_offsets}}, data
    let st = std::fs::read(src.join("model.safetensors")).unwrap();
    let n = u64::from_le_bytes(st[..8].try_into().unwrap()) as usize;
    let header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&st[8..8 + n]).unwrap();
    let data = &st[8 + n..];
    let mut names: Vec<&String> = header
        .keys()
        .filter(|k| *k != "__metadata__" && !drop.contains(&k.as_str()))
        .collect();
    names.sort();
    let file = |i: usize| {
        if shards == 1 {
            "model.safetensors".to_string()
        } else {
            format!("model-{:05}-of-{shards:05}.safetensors", i + 1)
        }
    };
    let mut weight_map = serde_json::Map::new();
    for i in 0..shards {
        let (mut h, mut body) = (serde_json::Map::new(), Vec::new());
        for k in names.iter().skip(i).step_by(shards) {
            let v = &header[k.as_str()];
            let o = v["data_offsets"].as_array().unwrap();
            let (a, b) = (
                o[0].as_u64().unwrap() as usize,
                o[1].as_u64().unwrap() as usize,
            );
            let mut v = v.clone();
            v["data_offsets"] = serde_json::json!([body.len(), body.len() + b - a]);
            body.extend_from_slice(&data[a..b]);
            h.insert(k.to_string(), v);
            weight_map.insert(k.to_string(), file(i).into());
        }
        let hj = serde_json::Value::Object(h).to_string().into_bytes();
        let mut out = (hj.len() as u64).to_le_bytes().to_vec();
        out.extend(hj);
        out.extend(body);
        std::fs::write(d.join(file(i)), out).unwrap();
    }
    if shards > 1 {
        let idx = serde_json::json!({ "weight_map": weight_map });
        std::fs::write(d.join("model.safetensors.index.json"), idx.to_string()).unwrap();
    }
    d
}

/// Each layer's experts spread over three shards (and float8 weights apart from their scales)
/// stack into the same tensors as from one file.
#[test]
fn sharded_checkpoints_convert_the_same() {
    for name in ["qwen3_moe", "deepseek_v3-fp8"] {
        let dir = copy_fixture(name, "sharded", &[], &|_| {}, 3);
        assert!(dir.join("model-00003-of-00003.safetensors").exists());
        // the converted directory's name is the file's general.name, which is not compared
        let out = convert(&dir, "F32");
        let ours = GgufFile::open(&out).unwrap();
        let theirs = GgufFile::open(&fixture(name).join("model.gguf")).unwrap();
        same_as_converter(name, &ours, &theirs, true);
        let _ = std::fs::remove_file(out);
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// Broken or unsupported checkpoints are clear errors that leave no output behind, and
/// hearth's direct loader refuses float8 checkpoints pointing at the conversion.
#[test]
fn bad_checkpoints_are_clear_errors() {
    let keep = |_: &mut serde_json::Value| {};
    let cases: Vec<(PathBuf, &str)> = vec![
        (
            broken_copy(
                "deepseek_v3-fp8",
                "noscale",
                &["model.layers.1.mlp.experts.5.up_proj.weight_scale_inv"],
                &keep,
            ),
            "has no model.layers.1.mlp.experts.5.up_proj.weight_scale_inv",
        ),
        (
            broken_copy(
                "deepseek_v3",
                "noexpert",
                &["model.layers.2.mlp.experts.3.gate_proj.weight"],
                &keep,
            ),
            "7 experts in the checkpoint, config.json says 8",
        ),
        (
            broken_copy("qwen3-fp8", "noqc", &[], &|c| {
                c.as_object_mut().unwrap().remove("quantization_config");
            }),
            "quant_method fp8",
        ),
        (
            broken_copy("qwen3-fp8", "gptq", &[], &|c| {
                c["quantization_config"]["quant_method"] = "gptq".into();
            }),
            "quantized with gptq",
        ),
        (
            broken_copy("qwen3-fp8", "block", &[], &|c| {
                c["quantization_config"]["weight_block_size"] = serde_json::json!([64, 64]);
            }),
            "in 64x64 blocks",
        ),
    ];
    for (dir, want) in cases {
        let out = dir.join("out.gguf");
        let e = quantize(&dir, &out, &opts("F32"), &|_: Event| {})
            .err()
            .unwrap_or_else(|| panic!("{}: converted", dir.display()))
            .to_string();
        assert!(e.contains(want), "{}: {e}", dir.display());
        assert!(!out.exists() && !dir.join("out.partial").exists());
        let _ = std::fs::remove_dir_all(dir);
    }
    let e = ModelFiles::open(&fixture("qwen3-fp8"))
        .and_then(|f| Model::load(&f, Arc::new(hearth_cpu::Cpu::new(1).unwrap())).map(|_| ()))
        .unwrap_err()
        .to_string();
    assert!(e.contains("float8") && e.contains("hearth quantize"), "{e}");
}
