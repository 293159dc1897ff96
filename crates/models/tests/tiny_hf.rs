//! Every architecture in the registry: a tiny random-weight model built with transformers
//! (scripts/gen_tiny_models.py, scripts/gen_tiny_moe.py), loaded both as the HF directory and
//! as the GGUF file llama.cpp's converter made of it, must give transformers' logits to within
//! float32 rounding noise, and the same 16-token greedy continuation.
use hearth_formats::ModelFiles;
use hearth_models::{ARCHS, Model};
use std::path::PathBuf;
use std::sync::Arc;

/// The backend under test: the CPU, or with `HEARTH_TEST_BACKEND=vulkan` the first Vulkan
/// device (CI runs these tests on lavapipe too).
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

/// Architectures whose GGUF conversion cannot say what the HF model computes: llama.cpp's
/// converter writes Mistral as plain `llama` and drops its sliding window. MiniMax
/// (lightning attention) it cannot convert from transformers' files at all: its minimax-01
/// conversion knows only the remote-code classes and their config keys (layernorm_*_alpha,
/// rotary_dim), and requires every residual beta to be 1. Its DeepSeek-V3.2 conversion needs a
/// tokenizer that says add_bos_token, which the fixtures' does not (scripts/gen_tiny_issue17.py).
const HF_ONLY: &[&str] = &["mistral", "minimax", "deepseek_v32"];

/// The fixture's HF directory and its GGUF conversion, with labels.
fn sources(name: &str) -> Vec<(String, PathBuf)> {
    let dir = fixture(name);
    if HF_ONLY.contains(&name) {
        return vec![(format!("{name} (HF)"), dir)];
    }
    let gguf = dir.join("model.gguf");
    assert!(gguf.exists(), "{name}: {} is missing", gguf.display());
    vec![
        (format!("{name} (HF)"), dir),
        (format!("{name} (GGUF)"), gguf),
    ]
}

fn load(name: &str) -> (ModelFiles, Model, serde_json::Value, Vec<f32>) {
    load_from(name, &fixture(name))
}

fn load_from(
    name: &str,
    path: &std::path::Path,
) -> (ModelFiles, Model, serde_json::Value, Vec<f32>) {
    let dir = fixture(name);
    let files = ModelFiles::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let model = Model::load(&files, backend()).unwrap_or_else(|e| panic!("{name}: {e}"));
    let exp: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
    let logits: Vec<f32> = std::fs::read(dir.join("logits.f32"))
        .unwrap()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    (files, model, exp, logits)
}

/// Logits agree to within float32 rounding noise: a few ulps of the largest logit, accumulated
/// over the layers.
fn assert_close(what: &str, got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len(), "{what}");
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    let max_diff = got
        .iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(
        max_diff <= 2e-5 * scale.max(1.0),
        "{what}: max |diff| {max_diff} (logit scale {scale})"
    );
    max_diff
}

fn forward_all(model: &Model, tokens: &[u32]) -> Vec<f32> {
    let mut st = model.new_state(tokens.len()).unwrap();
    let mut got = Vec::new();
    model.forward(tokens, &mut st, true, &mut got).unwrap();
    got
}

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

#[test]
fn every_architecture_matches_transformers_logits() {
    // `cargo test -p hearth-models --test tiny_hf -- --nocapture` prints the table
    for arch in ARCHS {
        for (label, path) in sources(arch.name) {
            let (_f, model, exp, want) = load_from(arch.name, &path);
            let d = assert_close(&label, &forward_all(&model, &ids(&exp["tokens"])), &want);
            let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
            println!("{label:<22} max |logit diff| {d:.2e} (largest logit {scale:.2})");
        }
    }
}

#[test]
fn every_architecture_prefill_in_pieces_equals_one_batch() {
    // Token-by-token decode through the KV cache must give the batch's logits.
    for (label, path) in ARCHS.iter().flat_map(|a| sources(a.name)) {
        let name = label.split(' ').next().unwrap();
        let (_f, model, exp, want) = load_from(name, &path);
        let tokens = ids(&exp["tokens"]);
        let nv = model.cfg.n_vocab;
        let mut st = model.new_state(tokens.len()).unwrap();
        let mut got = Vec::new();
        model
            .forward(&tokens[..5], &mut st, false, &mut got)
            .unwrap();
        let mut worst = 0f32;
        for (i, &t) in tokens.iter().enumerate().skip(5) {
            model.forward(&[t], &mut st, false, &mut got).unwrap();
            worst = worst.max(assert_close(
                &format!("{label} decode pos {i}"),
                &got,
                &want[i * nv..(i + 1) * nv],
            ));
        }
        println!("{label:<22} decode: max |logit diff| {worst:.2e}");
    }
}

#[test]
fn every_architecture_greedy_continuation_matches() {
    for (label, path) in ARCHS.iter().flat_map(|a| sources(a.name)) {
        let name = label.split(' ').next().unwrap();
        let (_f, model, exp, _) = load_from(name, &path);
        let want = ids(&exp["greedy"]);
        let got = greedy(&model, &ids(&exp["greedy_prompt"]), want.len());
        assert_eq!(
            got, want,
            "{label}: greedy continuation differs from transformers"
        );
    }
}

/// `n` tokens of greedy decoding after `prompt`, through the KV cache.
fn greedy(model: &Model, prompt: &[u32], n: usize) -> Vec<u32> {
    let mut st = model.new_state(prompt.len() + n).unwrap();
    let mut logits = Vec::new();
    model.forward(prompt, &mut st, false, &mut logits).unwrap();
    let mut got = Vec::new();
    for _ in 0..n {
        let t = hearth_engine_argmax(&logits);
        got.push(t);
        model.forward(&[t], &mut st, false, &mut logits).unwrap();
    }
    got
}

fn hearth_engine_argmax(l: &[f32]) -> u32 {
    let mut b = 0;
    for (i, &v) in l.iter().enumerate() {
        if v > l[b] {
            b = i;
        }
    }
    b as u32
}

#[test]
fn half_precision_sharded_checkpoints_match_transformers() {
    for name in ["llama-bf16-sharded", "qwen2-f16-sharded"] {
        let (files, model, exp, want) = load(name);
        if let hearth_formats::Source::Hf(h) = &files.source {
            assert!(h.shards.len() >= 2, "{name} should be sharded");
        }
        let dt = files.tensors["blk.0.attn_q.weight"].dtype;
        assert!(
            matches!(dt, hearth_core::DType::BF16 | hearth_core::DType::F16),
            "{name}: {dt}"
        );
        assert_close(name, &forward_all(&model, &ids(&exp["tokens"])), &want);
    }
}

#[test]
fn qwen3_moe_dense_layers_follow_mlp_only_layers_and_sparse_step() {
    // mlp_only_layers=[0], decoder_sparse_step=2: layers 0 and 2 are dense, 1 and 3 MoE.
    // (HF only: llama.cpp's converter cannot map such layers.)
    let name = "qwen3_moe-dense-layers";
    let (files, model, exp, want) = load(name);
    for (i, moe) in [(0, false), (1, true), (2, false), (3, true)] {
        assert_eq!(
            files
                .tensors
                .contains_key(&format!("blk.{i}.ffn_gate_inp.weight")),
            moe,
            "layer {i}"
        );
    }
    assert_close(name, &forward_all(&model, &ids(&exp["tokens"])), &want);
    assert!(model.n_active_params() < model.n_params());
}

#[test]
fn gpt_oss_mxfp4_experts_match_transformers() {
    // gpt-oss's experts in MXFP4, as its released GGUF files have them
    let name = "gpt_oss-mxfp4";
    let (files, model, exp, want) = load_from(name, &fixture(name).join("model.gguf"));
    assert_eq!(
        files.tensors["blk.0.ffn_gate_exps.weight"].dtype,
        hearth_core::DType::MXFP4
    );
    assert_close(name, &forward_all(&model, &ids(&exp["tokens"])), &want);
    let want = ids(&exp["greedy"]);
    let got = greedy(&model, &ids(&exp["greedy_prompt"]), want.len());
    assert_eq!(got, want, "{name}: greedy continuation");
}

/// Overwrite the UINT32 value of metadata `key` in a GGUF image.
fn patch_u32(bytes: &mut [u8], key: &str, v: u32) {
    let k = key.as_bytes();
    let at = bytes
        .windows(k.len())
        .position(|w| w == k)
        .unwrap_or_else(|| panic!("{key} not in file"))
        + k.len();
    assert_eq!(
        &bytes[at..at + 4],
        &4u32.to_le_bytes(),
        "{key} is not UINT32"
    );
    bytes[at + 4..at + 8].copy_from_slice(&v.to_le_bytes());
}

#[test]
fn glm4_moe_gguf_prediction_layers_are_not_run() {
    // GLM-4.5 GGUF files count their multi-token-prediction block in block_count and say so in
    // nextn_predict_layers: a file claiming 4 blocks of which 1 predicts must run the 3 others
    // (and not look for the 4th's tensors).
    let mut bytes = std::fs::read(fixture("glm4_moe").join("model.gguf")).unwrap();
    patch_u32(&mut bytes, "glm4moe.block_count", 4);
    patch_u32(&mut bytes, "glm4moe.nextn_predict_layers", 1);
    let p = std::env::temp_dir().join(format!("hearth-glm-nextn-{}.gguf", std::process::id()));
    std::fs::write(&p, &bytes).unwrap();
    let (_f, model, exp, want) = load_from("glm4_moe", &p);
    assert_eq!(model.cfg.n_layer, 3);
    assert_close(
        "glm4_moe (nextn)",
        &forward_all(&model, &ids(&exp["tokens"])),
        &want,
    );
    let _ = std::fs::remove_file(&p);
}

/// A batch of sequences in a paged pool (pages out of order, prefill chunks beside decode
/// steps) gives each sequence bit-for-bit the logits it gets alone in its own contiguous state:
/// the server relies on this to answer the same whether a request runs alone or batched.
#[test]
fn batched_paged_sequences_equal_each_alone() {
    for name in [
        "qwen3",
        "qwen3_moe",
        "deepseek_v2",
        "gpt_oss",
        "qwen3_5",
        "qwen3_next",
        "minimax",
    ] {
        batched_equals_alone(name, [11, 3, 7], 4, [vec![5, 0, 7], vec![3], vec![6, 1]]);
    }
    // DSA: sequences longer than top-k (48 and 40), so queries attend to chosen positions,
    // whose cache rows come from the pages
    // DeepSeek-V4: past its window (32), several CSA and HCA windows, and an indexer top-k
    // (12 of the 70 / 4 entries) that chooses
    for name in ["deepseek_v32", "glm_moe_dsa", "deepseek_v4"] {
        batched_equals_alone(
            name,
            [70, 30, 55],
            16,
            [vec![9, 0, 4, 7, 2], vec![5, 10], vec![3, 8, 1, 6]],
        );
    }
    // DeepSeek-V4 with pages of 8 positions, fewer than its HCA windows of 16: an HCA entry's
    // page holds one row, a CSA one's two
    batched_equals_alone(
        "deepseek_v4",
        [70, 30, 55],
        8,
        [
            vec![17, 3, 9, 0, 12, 19, 5, 14, 1],
            vec![8, 16, 2, 11],
            vec![6, 18, 10, 4, 15, 7, 13],
        ],
    );
}

/// Three sequences of `lens` tokens, run batched in chunks over pages of `ps` positions from
/// `tables`, give each the logits it gets alone.
fn batched_equals_alone(name: &str, lens: [usize; 3], ps: usize, tables: [Vec<u32>; 3]) {
    use hearth_models::{BatchSeq, Scratch, Want};
    {
        let (_f, model, _, _) = load(name);
        let nv = model.cfg.n_vocab as u32;
        let seqs: Vec<Vec<u32>> = lens
            .iter()
            .enumerate()
            .map(|(s, &n)| {
                (0..n as u32)
                    .map(|i| (i * 31 + s as u32 * 7 + 1) % nv)
                    .collect()
            })
            .collect();
        // alone: all logits of each sequence
        let alone: Vec<Vec<f32>> = seqs
            .iter()
            .map(|t| {
                let mut st = model.new_state(t.len()).unwrap();
                let mut l = Vec::new();
                model.forward(t, &mut st, true, &mut l).unwrap();
                l
            })
            .collect();
        // batched: pages handed out in a scrambled order; each step feeds sequence s a chunk
        // of (s + 1) * 2 tokens, so chunks of all sizes meet
        let n_pages = tables.iter().flatten().max().map_or(0, |&p| p as usize + 1);
        let mut pool = model.new_pool(n_pages, ps, 3).unwrap();
        let mut done = [0usize; 3];
        let mut got: Vec<Vec<f32>> = vec![Vec::new(); 3];
        let mut scratch = Scratch::default();
        let mut logits = Vec::new();
        while done.iter().zip(&seqs).any(|(d, s)| *d < s.len()) {
            let mut batch = Vec::new();
            let mut ids = Vec::new();
            for s in 0..3 {
                let end = (done[s] + (s + 1) * 2).min(seqs[s].len());
                if end > done[s] {
                    batch.push(BatchSeq {
                        tokens: &seqs[s][done[s]..end],
                        pos0: done[s],
                        pages: &tables[s],
                        slot: s,
                        want: Want::All,
                    });
                    ids.push((s, end - done[s]));
                }
            }
            logits.clear();
            model
                .forward_batch(&mut pool, &mut scratch, &batch, &mut logits)
                .unwrap();
            let mut off = 0;
            for (s, n) in ids {
                got[s].extend_from_slice(&logits[off..off + n * nv as usize]);
                off += n * nv as usize;
                done[s] += n;
            }
        }
        for s in 0..3 {
            assert!(
                got[s] == alone[s],
                "{name}: sequence {s} differs when batched"
            );
        }
    }
}

/// A change to a config.json.
type Edit = fn(&mut serde_json::Value);

/// The minimax fixture's files with its config.json edited by `edit`, in a scratch folder.
fn minimax_with_config(tag: &str, edit: Edit) -> PathBuf {
    fixture_with_config("minimax", tag, edit)
}

/// Fixture `name`'s files with its config.json edited by `edit`, in a scratch folder.
fn fixture_with_config(name: &str, tag: &str, edit: Edit) -> PathBuf {
    let src = fixture(name);
    let dir = std::env::temp_dir().join(format!("hearth-{name}-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for f in [
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ] {
        std::fs::copy(src.join(f), dir.join(f)).unwrap();
    }
    let mut c: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    edit(&mut c);
    std::fs::write(dir.join("config.json"), c.to_string()).unwrap();
    dir
}

#[test]
fn minimax_files_that_do_not_fit_are_errors() {
    // a softmax layer where the file has a lightning one (its q/k/v are missing), heads that
    // do not fit the projections, and fewer layer kinds than layers: errors, not panics
    let edits: [(&str, Edit); 3] = [
        ("kinds", |c| c["layer_types"][0] = "full_attention".into()),
        ("heads", |c| c["num_attention_heads"] = 8.into()),
        ("short", |c| {
            c["layer_types"].as_array_mut().unwrap().pop();
        }),
    ];
    for (tag, edit) in edits {
        let dir = minimax_with_config(tag, edit);
        let files = ModelFiles::open(&dir).unwrap();
        let r = Model::load(&files, backend());
        assert!(r.is_err(), "{tag}: loaded");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[test]
fn deepseek_v4_files_that_do_not_fit_are_errors() {
    // layer kinds or hash layers the tensors do not have, schedules shorter than the layers,
    // output groups that do not divide the heads, other routing, an empty window, more experts
    // per token than experts: errors, not panics
    let edits: [(&str, Edit); 8] = [
        ("csa", |c| {
            c["layer_types"][0] = "compressed_sparse_attention".into()
        }),
        ("hca", |c| {
            c["layer_types"][1] = "heavily_compressed_attention".into()
        }),
        ("short", |c| {
            c["layer_types"].as_array_mut().unwrap().pop();
        }),
        ("hash", |c| c["mlp_layer_types"][2] = "hash_moe".into()),
        ("groups", |c| c["o_groups"] = 3.into()),
        ("score", |c| c["scoring_func"] = "softmax".into()),
        ("window", |c| c["sliding_window"] = 0.into()),
        ("topk", |c| c["num_experts_per_tok"] = 9.into()),
    ];
    // its caches are f32 only: another type is an error, not ignored
    let (_f, mut model, _, _) = load("deepseek_v4");
    assert!(
        model
            .set_kv_types(hearth_core::KvType::Q8_0, hearth_core::KvType::Q8_0)
            .is_err()
    );
    for (tag, edit) in edits {
        let dir = fixture_with_config("deepseek_v4", tag, edit);
        let files = ModelFiles::open(&dir).unwrap();
        let r = Model::load(&files, backend());
        assert!(r.is_err(), "{tag}: loaded");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
