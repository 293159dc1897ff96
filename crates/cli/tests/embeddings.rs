//! Embeddings (`Engine::embed`, which `/v1/embeddings` computes through the scheduler) against
//! HF transformers' own hidden states, pooled and normalised the same way
//! (scripts/gen_embedding_reference.py writes tests/fixtures/embeddings/reference.json), and
//! the pooling read from the model's files: a GGUF's `{arch}.pooling_type`, a
//! sentence-transformers directory's Pooling module.
use hearth_engine::{Engine, Pooling};
use hearth_formats::gguf::Value as GgufValue;
use std::path::{Path, PathBuf};
use std::sync::Arc;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn reference() -> serde_json::Value {
    let p = fixtures().join("embeddings/reference.json");
    serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap()
}

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn floats(v: &serde_json::Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

fn cpu() -> Arc<dyn hearth_core::Backend> {
    Arc::new(hearth_cpu::Cpu::new(0).unwrap())
}

fn scratch(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("hearth-embed-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A copy of the HF fixture `src` as a sentence-transformers model pooling by `mode`
/// (`pooling_mode_<mode>` in 1_Pooling/config.json).
fn sentence_transformers_copy(src: &Path, mode: &str, dst: &Path) {
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ] {
        std::fs::copy(src.join(f), dst.join(f)).unwrap();
    }
    std::fs::write(
        dst.join("modules.json"),
        r#"[{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
            {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}]"#,
    )
    .unwrap();
    std::fs::create_dir_all(dst.join("1_Pooling")).unwrap();
    std::fs::write(
        dst.join("1_Pooling/config.json"),
        format!(r#"{{"word_embedding_dimension": 64, "pooling_mode_{mode}": true}}"#),
    )
    .unwrap();
}

/// Float32 tiny models: every pooling, as a sentence-transformers directory asks for it,
/// agrees with transformers to float32 rounding.
#[test]
fn tiny_models_embed_like_transformers_with_each_pooling() {
    let r = reference();
    let mut worst = 1.0f64;
    for (mode, pooling, key) in [
        ("mean_tokens", Pooling::Mean, "mean"),
        ("cls_token", Pooling::Cls, "cls"),
        ("lasttoken", Pooling::Last, "last"),
    ] {
        for name in ["llama", "qwen2", "qwen3", "qwen3_next"] {
            let dir = scratch(&format!("{name}-{key}"));
            sentence_transformers_copy(&fixtures().join("tiny").join(name), mode, &dir);
            let eng = Engine::load(&dir, cpu()).unwrap();
            assert_eq!(eng.pooling().unwrap(), pooling, "{name}");
            for case in r["tiny"].as_array().unwrap() {
                if case["model"] != name {
                    continue;
                }
                let toks = ids(&case["ids"]);
                let got = eng.embed(&toks).unwrap();
                let c = cosine(&got, &floats(&case[key]));
                worst = worst.min(c);
                assert!(
                    c >= 0.99999,
                    "{name} {key} over {} tokens: cosine {c}",
                    toks.len()
                );
            }
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
    eprintln!("tiny models: worst 1 - cosine = {:.2e}", 1.0 - worst);
}

/// A copy of the GGUF `src` with `key` set to `v`.
fn gguf_with(src: &Path, key: &str, v: GgufValue, dst: &Path) {
    use hearth_formats::gguf_write::{GgufHeader, TensorSpec};
    let g = hearth_formats::GgufFile::open(src).unwrap();
    let tensors = g.tensors().unwrap();
    let mut h = GgufHeader {
        metadata: g.metadata.clone().into_iter().collect(),
        tensors: tensors
            .iter()
            .map(|t| TensorSpec {
                name: t.name.clone(),
                shape: t.shape.clone(),
                dtype: t.dtype,
            })
            .collect(),
    };
    h.set(key, v);
    let mut w = h
        .begin(std::io::BufWriter::new(std::fs::File::create(dst).unwrap()))
        .unwrap();
    for t in &tensors {
        w.write(t.bytes()).unwrap();
    }
    w.finish().unwrap();
}

/// A GGUF's `{arch}.pooling_type` decides the pooling; none and rank give a clear error.
#[test]
fn gguf_pooling_type_is_the_models_pooling() {
    let r = reference();
    let case = r["tiny"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["model"] == "llama")
        .unwrap();
    let dir = scratch("gguf");
    let src = fixtures().join("tiny/llama/model.gguf");
    let path = dir.join("model.gguf");
    // without the key: mean, hearth's default for a causal LM
    let eng = Engine::load(&src, cpu()).unwrap();
    assert_eq!(eng.pooling().unwrap(), Pooling::Mean);
    for (t, pooling, key) in [
        (1u32, Pooling::Mean, "mean"),
        (2, Pooling::Cls, "cls"),
        (3, Pooling::Last, "last"),
    ] {
        gguf_with(&src, "llama.pooling_type", GgufValue::U32(t), &path);
        let eng = Engine::load(&path, cpu()).unwrap();
        assert_eq!(eng.pooling().unwrap(), pooling);
        let c = cosine(&eng.embed(&ids(&case["ids"])).unwrap(), &floats(&case[key]));
        assert!(c >= 0.99999, "pooling_type {t}: cosine {c}");
    }
    for (t, says) in [(0u32, "none"), (4, "rerank")] {
        gguf_with(&src, "llama.pooling_type", GgufValue::U32(t), &path);
        let eng = Engine::load(&path, cpu()).unwrap();
        let e = eng.pooling().unwrap_err().to_string();
        assert!(e.contains(says), "{e}");
        assert!(eng.embed(&[1, 2]).is_err());
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The real model, SmolLM2-135M-Instruct Q4_1, mean-pooled, against transformers' float32
/// reading of the same GGUF (the same weights, dequantized): the issue's bar, cosine 0.9999.
#[test]
fn smollm2_embeddings_match_transformers() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_hearth"))
        .args(["pull", "smollm2"])
        .output()
        .unwrap();
    assert!(out.status.success(), "hearth pull smollm2 failed");
    let path = PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
    let be: Arc<dyn hearth_core::Backend> = match std::env::var("HEARTH_TEST_BACKEND").as_deref() {
        Ok("vulkan") => Arc::new(hearth_vulkan::Vulkan::new(0).unwrap()),
        _ => cpu(),
    };
    let eng = Engine::load(&path, be).unwrap();
    assert_eq!(eng.pooling().unwrap(), Pooling::Mean);
    let r = reference();
    let cases = r["smollm2"].as_array().unwrap();
    let mut got = Vec::new();
    for case in cases {
        let text = case["text"].as_str().unwrap();
        let toks = ids(&case["ids"]);
        assert_eq!(eng.tokenizer.encode(text, false).unwrap(), toks, "{text:?}");
        let v = eng.embed(&toks).unwrap();
        let c = cosine(&v, &floats(&case["mean"]));
        eprintln!("{} tokens: 1 - cosine = {:.2e}", toks.len(), 1.0 - c);
        assert!(c >= 0.9999, "{text:?}: cosine {c}");
        got.push(v);
    }
    // what retrieval needs: the same ranking of the documents for the query
    let rank = |vs: &[Vec<f32>]| {
        let mut o: Vec<usize> = (1..vs.len()).collect();
        o.sort_by(|&a, &b| cosine(&vs[0], &vs[b]).total_cmp(&cosine(&vs[0], &vs[a])));
        o
    };
    let want: Vec<Vec<f32>> = cases.iter().map(|c| floats(&c["mean"])).collect();
    assert_eq!(rank(&got), rank(&want));
}
