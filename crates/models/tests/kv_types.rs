//! KV-cache types (`--cache-type-k/-v`) on the tiny fixtures: logits through a cache of each
//! type against transformers' (float32 cache), decode through the cache against the batch,
//! the bytes each type takes, and clear errors where a model's heads are not whole blocks.
//! (That attention over a typed cache is exactly attention over the values it holds is
//! `hearth-cpu`'s attn_q test and the conformance suite's; these check the model's use of
//! it.) `HEARTH_TEST_BACKEND=vulkan` runs them on the Vulkan backend.
use hearth_core::KvType;
use hearth_core::kv::KV_TYPES;
use hearth_formats::ModelFiles;
use hearth_models::Model;
use std::path::PathBuf;
use std::sync::Arc;

/// The backend under test: the CPU, or with `HEARTH_TEST_BACKEND=vulkan` the first Vulkan
/// device (whose shaders store and read every type).
fn backend() -> Arc<dyn hearth_core::Backend> {
    match std::env::var("HEARTH_TEST_BACKEND").as_deref() {
        Ok("vulkan") => Arc::new(hearth_vulkan::Vulkan::new(0).expect("a Vulkan device")),
        Ok("cpu") | Err(_) => Arc::new(hearth_cpu::Cpu::new(2).unwrap()),
        Ok(other) => panic!("HEARTH_TEST_BACKEND={other}: cpu or vulkan"),
    }
}

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/tiny")
        .join(name)
}

fn load(name: &str) -> (ModelFiles, Model, Vec<u32>, Vec<f32>) {
    let dir = fixture(name);
    let files = ModelFiles::open(&dir).unwrap_or_else(|e| panic!("{name}: {e}"));
    let model = Model::load(&files, backend()).unwrap_or_else(|e| panic!("{name}: {e}"));
    let exp: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
    let tokens = exp["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect();
    let logits = std::fs::read(dir.join("logits.f32"))
        .unwrap()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    (files, model, tokens, logits)
}

fn forward(model: &Model, tokens: &[u32]) -> Vec<f32> {
    let mut st = model.new_state(tokens.len()).unwrap();
    let mut got = Vec::new();
    model.forward(tokens, &mut st, true, &mut got).unwrap();
    got
}

/// Mean over positions of KL(softmax(want) || softmax(got)), rows of `n`.
fn kld(got: &[f32], want: &[f32], n: usize) -> f64 {
    let lsm = |r: &[f32]| {
        let m = r.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
        let z = r.iter().map(|&x| (x as f64 - m).exp()).sum::<f64>().ln() + m;
        r.iter().map(move |&x| x as f64 - z).collect::<Vec<f64>>()
    };
    let rows = want.len() / n;
    let mut s = 0.0;
    for (g, w) in got.chunks_exact(n).zip(want.chunks_exact(n)) {
        let (lg, lw) = (lsm(g), lsm(w));
        s += lw
            .iter()
            .zip(&lg)
            .map(|(a, b)| a.exp() * (a - b))
            .sum::<f64>();
    }
    s / rows as f64
}

/// Largest |difference| over the largest |logit| of `want`.
fn rel_diff(got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs())).max(1.0);
    got.iter()
        .zip(want)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()))
        / scale
}

/// The mean KL divergence from transformers' distributions each type may cause on these
/// fixtures. Random-weight tiny models are far more sensitive than trained ones (on them a
/// cache type's noise can flip MoE routing), so these are regression caps: about twice the
/// largest value measured on the fixtures when the types were added (f16 1.2e-6, bf16 1e-3,
/// q8_0 3.9e-3, q5_0 6.7e-2, q4_0 0.33, iq4_nl 0.17, tq3 0.61, the largest from the latent
/// fixture). Under them, the KLD must also rise as the types' bits fall (see the test). f32
/// is held to float32 noise.
fn cap(t: KvType) -> f64 {
    match t {
        KvType::F32 => 1e-10,
        KvType::F16 => 3e-6,
        KvType::Bf16 => 3e-3,
        KvType::Q8_0 => 1e-2,
        KvType::Q5_0 => 0.15,
        KvType::Q4_0 => 0.7,
        KvType::Iq4Nl => 0.4,
        KvType::Tq3 => 1.2,
    }
}

/// Fixtures with key heads of 32 (every type), 16 (the float types) and latent attention
/// (rows of 32 + 8: the float types; rows of 64 + 32, scripts/gen_tiny_kv.py: every type).
const FIXTURES: &[&str] = &[
    "qwen3",
    "glm4_moe",
    "qwen3_moe",
    "llama",
    "qwen3_5",
    "deepseek_v3",
    "../kv/deepseek_v3",
];

#[test]
fn every_type_tracks_transformers_within_its_precision() {
    for &name in FIXTURES {
        let (_f, mut model, tokens, want) = load(name);
        let mut kls = Vec::new();
        for t in KV_TYPES {
            if let Err(e) = model.set_kv_types(t, t) {
                // only a type whose blocks the heads cannot hold is refused, with the reason
                assert!(t.block() > 1, "{name} {}: {e}", t.name());
                assert!(e.to_string().contains("wide"), "{name} {}: {e}", t.name());
                continue;
            }
            assert_eq!(model.kv_types(), (t, t));
            let got = forward(&model, &tokens);
            let d = rel_diff(&got, &want);
            let kl = kld(&got, &want, model.cfg.n_vocab);
            println!(
                "{name:<12} {:<7} KLD {kl:.2e}, max relative logit error {d:.2e}",
                t.name()
            );
            assert!(
                kl <= cap(t),
                "{name} {}: KLD {kl:.2e} > {:.0e}",
                t.name(),
                cap(t)
            );
            if t == KvType::F32 {
                assert!(d <= 2e-5, "{name} f32: {d:.2e}");
            } else {
                // the cache really is in the type: its logits are not the f32 cache's
                assert!(d > 1e-7, "{name} {}: logits identical to f32's", t.name());
            }
            kls.push((t, kl));
        }
        // fewer bits, more divergence: f16 < q8_0 < q5_0 < q4_0 < tq3
        let of = |t: KvType| kls.iter().find(|x| x.0 == t).map(|x| x.1);
        let order = [
            KvType::F16,
            KvType::Q8_0,
            KvType::Q5_0,
            KvType::Q4_0,
            KvType::Tq3,
        ];
        let seen: Vec<f64> = order.iter().filter_map(|&t| of(t)).collect();
        assert!(seen.windows(2).all(|w| w[0] < w[1]), "{name}: {kls:?}");
    }
}

#[test]
fn decode_through_a_typed_cache_equals_the_batch() {
    for (name, k, v) in [
        ("qwen3", KvType::Q8_0, KvType::Tq3),
        ("glm4_moe", KvType::Tq3, KvType::Q4_0),
        ("qwen3_5", KvType::F16, KvType::Bf16),
        ("deepseek_v3", KvType::Bf16, KvType::Bf16),
        ("../kv/deepseek_v3", KvType::Q8_0, KvType::Q8_0),
    ] {
        let (_f, mut model, tokens, _) = load(name);
        model.set_kv_types(k, v).unwrap();
        let want = forward(&model, &tokens);
        let nv = model.cfg.n_vocab;
        let mut st = model.new_state(tokens.len()).unwrap();
        let mut got = Vec::new();
        model
            .forward(&tokens[..5], &mut st, false, &mut got)
            .unwrap();
        for (i, &t) in tokens.iter().enumerate().skip(5) {
            model.forward(&[t], &mut st, false, &mut got).unwrap();
            let d = rel_diff(&got, &want[i * nv..(i + 1) * nv]);
            assert!(
                d <= 2e-5,
                "{name} {}/{} pos {i}: {d:.2e}",
                k.name(),
                v.name()
            );
        }
    }
}

#[test]
fn bytes_per_token_follow_the_types() {
    let (_f, mut model, _, _) = load("qwen3");
    let f32_bytes = model.kv_pool_bytes_per_token();
    let c = &model.cfg;
    let (n, w) = (c.n_layer, c.n_kv_head * c.head_dim);
    assert_eq!(f32_bytes, n * 2 * w * 4);
    model.set_kv_types(KvType::Q8_0, KvType::Tq3).unwrap();
    assert_eq!(
        model.kv_pool_bytes_per_token(),
        n * (w / 32 * 34 + w / 32 * 14)
    );
    let plan: usize = model.plan().iter().map(|d| d.kv_bytes_per_token).sum();
    assert_eq!(plan, model.kv_pool_bytes_per_token());
    // latent attention keeps one row, in the keys' type (the values' is not used); its rows
    // of 32 + 8 are not whole blocks of 32
    let (_f, mut ds, _, _) = load("deepseek_v3");
    let f = ds.kv_pool_bytes_per_token();
    ds.set_kv_types(KvType::F16, KvType::Q8_0).unwrap();
    assert_eq!(ds.kv_pool_bytes_per_token() * 2, f);
    assert!(ds.set_kv_types(KvType::Q8_0, KvType::Q8_0).is_err());
    assert_eq!(ds.kv_types(), (KvType::F16, KvType::Q8_0));
}
