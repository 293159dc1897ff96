//! `hearth perplexity` and `hearth imatrix` on the tiny fixtures, against HF transformers in
//! float64 and against llama.cpp's own files (scripts/gen_ppl_fixtures.py writes both into
//! tests/fixtures/ppl).
use hearth_engine::Engine;
use hearth_engine::imatrix::{Collector, ImatrixOpts};
use hearth_engine::ppl::{PplOpts, perplexity};
use hearth_formats::imatrix::{Imatrix, read_imatrix};
use std::path::{Path, PathBuf};
use std::sync::Arc;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn text() -> String {
    std::fs::read_to_string(root().join("smollm2/text.txt")).unwrap()
}

fn expected(fx: &str) -> serde_json::Value {
    let s = std::fs::read_to_string(root().join(format!("ppl/{fx}.json"))).unwrap();
    serde_json::from_str(&s).unwrap()
}

fn load(model: &Path) -> Engine {
    Engine::load(model, Arc::new(hearth_cpu::Cpu::new(1).unwrap())).unwrap()
}

fn gguf(fx: &str) -> PathBuf {
    root().join(format!("tiny/{fx}/model.gguf"))
}

fn tmp(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("hearth_ppl_{}_{name}", std::process::id()))
}

fn opts() -> PplOpts {
    PplOpts {
        n_ctx: 64,
        ..Default::default()
    }
}

fn rel(a: f64, b: f64) -> f64 {
    (a - b).abs() / b.abs()
}

#[test]
fn perplexity_matches_transformers() {
    for fx in ["llama", "qwen3_moe"] {
        let exp = expected(fx);
        let eng = load(&gguf(fx));
        let toks = eng.tokenizer.encode(&text(), true).unwrap();
        assert_eq!(toks.len() as u64, exp["tokens"].as_u64().unwrap());
        let mut seen = 0;
        let r = perplexity(&eng, &toks, &opts(), |c| {
            seen += 1;
            assert_eq!(c.chunk, seen);
        })
        .unwrap();
        assert_eq!(seen, toks.len() / 64);
        assert_eq!(r.count as u64, exp["count"].as_u64().unwrap());
        let want = exp["ppl"].as_f64().unwrap();
        assert!(
            rel(r.ppl.value, want) < 1e-4,
            "{fx}: {} vs {want}",
            r.ppl.value
        );
        assert!(r.ppl.err > 0.0 && r.kld.is_none());
        // a smaller batch gives the same result
        let small = PplOpts {
            n_batch: 7,
            n_chunks: Some(2),
            ..opts()
        };
        let a = perplexity(&eng, &toks, &small, |_| {}).unwrap();
        let b = perplexity(
            &eng,
            &toks,
            &PplOpts {
                n_chunks: Some(2),
                ..opts()
            },
            |_| {},
        )
        .unwrap();
        assert!(rel(a.ppl.value, b.ppl.value) < 1e-5);
        assert_eq!(a.count, 2 * 31);
    }
}

#[test]
fn bos_replaces_the_first_token_of_each_window() {
    let exp = expected("llama");
    let mut eng = load(&gguf("llama"));
    eng.tokenizer.add_bos = true;
    eng.tokenizer.bos = Some(0);
    let toks = eng.tokenizer.encode(&text(), true).unwrap();
    assert_eq!(toks[0], 0, "the tokenizer puts BOS first");
    let r = perplexity(&eng, &toks, &opts(), |_| {}).unwrap();
    let want = exp["ppl_bos"].as_f64().unwrap();
    assert!(rel(r.ppl.value, want) < 1e-4, "{} vs {want}", r.ppl.value);
}

#[test]
fn llama_cpp_base_file_reads_and_agrees() {
    let want = {
        let s = std::fs::read_to_string(root().join("ppl/llama.kld.json")).unwrap();
        let v: serde_json::Value = serde_json::from_str(&s).unwrap();
        v["llama_cpp_ppl"].as_f64().unwrap()
    };
    let eng = load(&gguf("llama"));
    let o = PplOpts {
        kl_base: Some(root().join("ppl/llama.kld")),
        ..opts()
    };
    // the tokens come from the file
    let r = perplexity(&eng, &[], &o, |_| {}).unwrap();
    let k = r.kld.unwrap();
    assert_eq!((r.n_ctx, r.n_chunk), (64, 4));
    // the base's perplexity, from its quantized log-probabilities, is llama.cpp's own
    assert!(
        rel(k.ppl_base.value, want) < 2e-4,
        "{} vs {want}",
        k.ppl_base.value
    );
    assert!(k.mean.value < 1e-4, "{}", k.mean.value);
    assert!(k.same_top.value > 0.98, "{}", k.same_top.value);
    assert!(rel(r.ppl.value, k.ppl_base.value) < 1e-3);
    // hearth's own file over the same text has llama.cpp's header and tokens, byte for byte
    let p = tmp("own.kld");
    let toks = eng.tokenizer.encode(&text(), true).unwrap();
    let o = PplOpts {
        save_logits: Some(p.clone()),
        n_chunks: Some(4),
        ..opts()
    };
    perplexity(&eng, &toks, &o, |_| {}).unwrap();
    let (mine, theirs) = (
        std::fs::read(&p).unwrap(),
        std::fs::read(root().join("ppl/llama.kld")).unwrap(),
    );
    std::fs::remove_file(&p).ok();
    assert_eq!(mine.len(), theirs.len());
    let head = 20 + 4 * 64 * 4;
    assert_eq!(mine[..head], theirs[..head]);
}

/// A copy of the fixture's GGUF with `output_norm.weight` scaled by 1.25.
fn perturbed() -> PathBuf {
    let src = gguf("llama");
    let g = hearth_formats::GgufFile::open(&src).unwrap();
    let t = g
        .tensor_infos
        .iter()
        .find(|t| t.name == "output_norm.weight")
        .unwrap();
    let mut b = std::fs::read(&src).unwrap();
    let off = (g.data_offset + t.offset) as usize;
    for i in 0..t.shape.iter().product::<usize>() {
        let p = off + 4 * i;
        let v = f32::from_le_bytes(b[p..p + 4].try_into().unwrap()) * 1.25;
        b[p..p + 4].copy_from_slice(&v.to_le_bytes());
    }
    let p = tmp("perturbed.gguf");
    std::fs::write(&p, b).unwrap();
    p
}

#[test]
fn kl_divergence_is_zero_against_itself_and_positive_against_a_perturbed_model() {
    let eng = load(&gguf("llama"));
    let toks = eng.tokenizer.encode(&text(), true).unwrap();
    let base = tmp("self.kld");
    let o = PplOpts {
        save_logits: Some(base.clone()),
        n_chunks: Some(5),
        ..opts()
    };
    let saved = perplexity(&eng, &toks, &o, |_| {}).unwrap();
    let cmp = PplOpts {
        kl_base: Some(base.clone()),
        ..opts()
    };
    let r = perplexity(&eng, &[], &cmp, |_| {}).unwrap();
    let k = r.kld.unwrap();
    assert_eq!(r.n_chunk, 5);
    assert!(k.mean.value.abs() < 1e-5, "{}", k.mean.value);
    assert!(k.max < 1e-4, "{}", k.max);
    assert_eq!(k.same_top.value, 1.0);
    // the comparison's NLL is summed from f32 terms, as llama.cpp's is
    assert!(rel(r.ppl.value, saved.ppl.value) < 1e-6);
    assert!(rel(k.ppl_base.value, saved.ppl.value) < 1e-4);
    assert!(k.ppl_diff.value.abs() / saved.ppl.value < 1e-4);

    let pm = perturbed();
    let other = load(&pm);
    let r = perplexity(&other, &[], &cmp, |_| {}).unwrap();
    std::fs::remove_file(&pm).ok();
    std::fs::remove_file(&base).ok();
    let k = r.kld.unwrap();
    assert!(k.mean.value > 1e-3, "{}", k.mean.value);
    assert!(k.max >= k.p99 && k.p99 >= k.median && k.median > 0.0);
    assert!((k.ppl_diff.value - (r.ppl.value - k.ppl_base.value)).abs() < 1e-9);
}

#[test]
fn bad_inputs_are_clear_errors() {
    let eng = load(&gguf("llama"));
    let toks = eng.tokenizer.encode(&text(), true).unwrap();
    let err = |o: &PplOpts, t: &[u32]| perplexity(&eng, t, o, |_| {}).unwrap_err().to_string();
    assert!(err(&opts(), &toks[..100]).contains("at least 128 tokens"));
    assert!(err(&PplOpts { n_ctx: 2, ..opts() }, &toks).contains("too small"));
    assert!(
        err(
            &PplOpts {
                n_batch: 0,
                ..opts()
            },
            &toks
        )
        .contains("batch")
    );
    let both = PplOpts {
        save_logits: Some(tmp("x")),
        kl_base: Some(tmp("y")),
        ..opts()
    };
    assert!(err(&both, &toks).contains("together"));
    let p = tmp("bad.kld");
    let good = std::fs::read(root().join("ppl/llama.kld")).unwrap();
    let kl = PplOpts {
        kl_base: Some(p.clone()),
        ..opts()
    };
    // not a base file; truncated; another vocabulary; a token outside it
    let mut vocab = good.clone();
    vocab[12..16].copy_from_slice(&1000i32.to_le_bytes());
    let mut token = good.clone();
    token[20..24].copy_from_slice(&384i32.to_le_bytes());
    for (bytes, msg) in [
        (
            b"hello world, not logits".to_vec(),
            "not a log-probability file",
        ),
        (good[..good.len() - 2].to_vec(), "truncated"),
        (vocab, "truncated"),
        (token, "outside its vocabulary"),
    ] {
        std::fs::write(&p, bytes).unwrap();
        let e = err(&kl, &[]);
        assert!(e.contains(msg), "{e}");
    }
    std::fs::remove_file(&p).ok();
    // a well-formed file from a model with another vocabulary
    let q = tmp("vocab.kld");
    let mut h = b"_logits_".to_vec();
    for v in [8i32, 1000, 1] {
        h.extend(v.to_le_bytes());
    }
    h.extend(std::iter::repeat_n(0u8, 4 * 8));
    h.extend(std::iter::repeat_n(0u8, 3 * (2 * 500 + 4) * 2));
    std::fs::write(&q, h).unwrap();
    let e = err(
        &PplOpts {
            kl_base: Some(q.clone()),
            ..opts()
        },
        &[],
    );
    std::fs::remove_file(&q).ok();
    assert!(e.contains("vocabulary has 1000 tokens"), "{e}");
}

fn collect(fx: &str) -> Imatrix {
    let col = Arc::new(Collector::new(
        Arc::new(hearth_cpu::Cpu::new(1).unwrap()),
        false,
    ));
    let eng = Engine::load(&gguf(fx), col.clone()).unwrap();
    let toks = eng.tokenizer.encode(&text(), true).unwrap();
    let o = ImatrixOpts {
        n_ctx: 64,
        ..Default::default()
    };
    let n = hearth_engine::imatrix::run(&eng, &toks, &o, |_, _| {}).unwrap();
    col.imatrix(vec!["text.txt".into()], n as u32, 64)
}

/// max |a - b| / max |b| of the means, per matrix.
fn mean_diff(a: &hearth_formats::ImatrixEntry, b: &hearth_formats::ImatrixEntry) -> f64 {
    let (ma, mb) = (a.means(), b.means());
    assert_eq!(ma.len(), mb.len());
    let d = ma
        .iter()
        .zip(&mb)
        .map(|(x, y)| (x - y).abs() as f64)
        .fold(0.0, f64::max);
    d / mb.iter().map(|v| v.abs() as f64).fold(1e-30, f64::max)
}

#[test]
fn imatrix_matches_transformers_hooks() {
    for fx in ["llama", "qwen3_moe"] {
        let m = collect(fx);
        let exp = expected(fx);
        let want = exp["imatrix"].as_object().unwrap();
        for (name, e) in want {
            let got = m
                .entries
                .get(name)
                .unwrap_or_else(|| panic!("{fx}: no {name}"));
            let f = |k: &str| -> Vec<f64> {
                e[k].as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_f64().unwrap())
                    .collect()
            };
            let (sums, counts) = (f("sums"), f("counts"));
            assert_eq!(got.counts, counts, "{fx} {name}");
            let w = hearth_formats::ImatrixEntry {
                sums: sums.iter().map(|&v| v as f32).collect(),
                counts,
            };
            let d = mean_diff(got, &w);
            assert!(d < 1e-4, "{fx} {name}: {d}");
        }
        // the routers are matmuls too (llama.cpp collects them; transformers' are no Linear)
        let extra: Vec<_> = m
            .entries
            .keys()
            .filter(|k| !want.contains_key(*k))
            .collect();
        assert!(
            extra.iter().all(|k| k.ends_with("ffn_gate_inp.weight")),
            "{extra:?}"
        );
    }
}

#[test]
fn imatrix_reads_llama_cpp_files_and_agrees() {
    for fx in ["llama", "qwen3_moe"] {
        let m = collect(fx);
        let theirs = read_imatrix(&root().join(format!("ppl/{fx}.imatrix.gguf"))).unwrap();
        assert_eq!(
            m.entries.keys().collect::<Vec<_>>(),
            theirs.entries.keys().collect::<Vec<_>>(),
            "{fx}: the same matrices"
        );
        assert_eq!((theirs.chunk_count, theirs.chunk_size), (15, 64));
        assert_eq!((m.chunk_count, m.chunk_size), (15, 64));
        for (name, e) in &theirs.entries {
            let mine = &m.entries[name];
            assert_eq!(mine.n_mat(), e.n_mat(), "{name}");
            if fx == "llama" {
                // dense: the same tokens; the values as close as the two computations
                assert_eq!(mine.counts, e.counts, "{name}");
                let d = mean_diff(mine, e);
                assert!(d < 2e-3, "{name}: {d}");
            }
        }
        // our file reads back as written
        let p = tmp(&format!("{fx}.imatrix.gguf"));
        hearth_formats::imatrix::write_imatrix_gguf(&p, &m).unwrap();
        let back = read_imatrix(&p).unwrap();
        std::fs::remove_file(&p).ok();
        assert_eq!(back, m);
    }
    // the legacy format carries the same means
    let dat = read_imatrix(&root().join("ppl/llama.imatrix.dat")).unwrap();
    let gg = read_imatrix(&root().join("ppl/llama.imatrix.gguf")).unwrap();
    assert_eq!(dat.entries.len(), gg.entries.len());
    for (name, e) in &gg.entries {
        let d = mean_diff(&dat.entries[name], e);
        assert!(d < 1e-6, "{name}: {d}");
    }
}
