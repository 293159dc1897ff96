//! Automatic placement (issue 16) as a pure function of a model's block costs and a GPU's
//! free memory: everything on the GPU when it fits; else routed experts to RAM layer by
//! layer, then whole layers; the flags given stay as they are and the rest is still fitted.
use hearth_core::KvType;
use hearth_engine::place::{CPU, GPU, block_costs};
use hearth_engine::{BlockCost, Placement};
use hearth_formats::ModelFiles;
use std::path::PathBuf;
use std::sync::Arc;

fn cost(name: &str, w: usize, kv: usize) -> BlockCost {
    BlockCost {
        name: name.into(),
        weight_bytes: w,
        in_place_bytes: 0,
        kv_bytes_per_token: kv,
        state_bytes_per_seq: 0,
    }
}

/// 4 MoE layers: attention 10 bytes (+1 per token of KV), router 5, experts 100; embedding
/// 20, output 30.
fn toy() -> Vec<BlockCost> {
    let mut v = vec![cost("token_embd", 20, 0), cost("output", 30, 0)];
    for i in 0..4 {
        v.push(cost(&format!("blk.{i}.attn"), 10, 1));
        v.push(cost(&format!("blk.{i}.ffn"), 5, 0));
        v.push(cost(&format!("blk.{i}.ffn_exps"), 100, 0));
    }
    v
}

#[test]
fn weights_read_in_place_do_not_take_gpu_memory() {
    // a unified-memory GPU that reads the experts in place from the mapped file: they take
    // host memory, so everything fits a budget that the copied experts would not
    let mut c = toy();
    for b in c.iter_mut().filter(|b| b.name.ends_with(".ffn_exps")) {
        b.in_place_bytes = b.weight_bytes;
    }
    let none = Placement::default();
    // 50 + 4 * 15 + 4 * 8 (KV of 8 tokens) + 7 reserve
    let f = none.fit(&c, 4, 8, 7, 149);
    assert!(f.fits && f.gpu_bytes == 149);
    assert_eq!((f.placement.n_cpu_moe, f.placement.gpu_layers), (0, None));
    // copied, the same budget sends every expert to RAM
    let f = none.fit(&toy(), 4, 8, 7, 149);
    assert_eq!(f.placement.n_cpu_moe, 4);
}

#[test]
fn a_toy_model_fits_by_moving_experts_then_layers() {
    let c = toy();
    let none = Placement::default();
    // all on the GPU: 50 + 4 * 115 + 4 * 8 (KV of 8 tokens) + 7 reserve = 549
    let f = none.fit(&c, 4, 8, 7, 549);
    assert!(f.fits && f.gpu_bytes == 549);
    assert_eq!((f.placement.n_cpu_moe, f.placement.gpu_layers), (0, None));
    // one byte less: the first layer's experts go to RAM
    let f = none.fit(&c, 4, 8, 7, 548);
    assert_eq!((f.placement.n_cpu_moe, f.placement.gpu_layers), (1, None));
    assert_eq!(f.gpu_bytes, 449);
    assert_eq!(f.placement.place("blk.0.ffn_exps", 4), CPU);
    assert_eq!(f.placement.place("blk.1.ffn_exps", 4), GPU);
    assert_eq!(f.placement.place("blk.0.attn", 4), GPU);
    // three layers' experts
    let f = none.fit(&c, 4, 8, 7, 249);
    assert_eq!((f.placement.n_cpu_moe, f.placement.gpu_layers), (3, None));
    // every expert in RAM takes 149: less, and layers go as --gpu-layers sends them, the
    // embedding first (--gpu-layers keeps it in RAM), then the output
    let f = none.fit(&c, 4, 8, 7, 148);
    assert_eq!(
        (f.placement.n_cpu_moe, f.placement.gpu_layers),
        (4, Some(5))
    );
    assert_eq!(f.gpu_bytes, 129);
    assert_eq!(f.placement.place("output", 4), GPU);
    assert_eq!(f.placement.place("token_embd", 4), CPU);
    let f = none.fit(&c, 4, 8, 7, 128);
    assert_eq!(
        (f.placement.n_cpu_moe, f.placement.gpu_layers),
        (4, Some(4))
    );
    assert_eq!(f.gpu_bytes, 4 * 23 + 7);
    assert_eq!(f.placement.place("output", 4), CPU);
    let f = none.fit(&c, 4, 8, 7, 60);
    assert_eq!(f.placement.gpu_layers, Some(2));
    assert_eq!(f.placement.place("blk.1.attn", 4), CPU);
    assert_eq!(f.placement.place("blk.2.attn", 4), GPU);
    assert!(f.fits);
    // below the reserve nothing fits
    let f = none.fit(&c, 4, 8, 7, 6);
    assert!(!f.fits);
    assert_eq!(f.placement.gpu_layers, Some(0));
}

#[test]
fn the_context_asked_for_keeps_room_for_its_kv_cache() {
    let c = toy();
    let none = Placement::default();
    // 517 fits everything with 0 tokens of context; 1000 tokens of KV (4000 bytes) do not
    assert_eq!(none.fit(&c, 4, 0, 7, 517).placement.n_cpu_moe, 0);
    let f = none.fit(&c, 4, 1000, 7, 517);
    assert!(f.fits && f.gpu_bytes <= 517);
    assert_eq!(f.placement.n_cpu_moe, 4);
    assert_eq!(f.placement.gpu_layers, Some(0));
    // all experts in RAM fit 517 exactly; one byte less and the embedding goes; 496: the output
    let f = none.fit(&c, 4, 100, 7, 517);
    assert_eq!((f.placement.n_cpu_moe, f.placement.gpu_layers), (4, None));
    let f = none.fit(&c, 4, 100, 7, 496);
    assert_eq!(
        (f.placement.n_cpu_moe, f.placement.gpu_layers),
        (4, Some(4))
    );
    assert_eq!(f.gpu_bytes, 4 * 115 + 7);
}

#[test]
fn flags_given_stay_and_the_rest_is_fitted() {
    let c = toy();
    // --cpu-moe: experts in RAM, layers still fitted (llama.cpp's --fit gives up here)
    let p = Placement {
        cpu_moe: true,
        ..Default::default()
    };
    let f = p.fit(&c, 4, 8, 7, 100);
    assert!(f.placement.cpu_moe && f.placement.n_cpu_moe == 0);
    assert_eq!(f.placement.gpu_layers, Some(4));
    assert!(f.fits && f.gpu_bytes == 4 * 23 + 7);
    // --gpu-layers given: only experts are moved
    let p = Placement {
        gpu_layers: Some(2),
        ..Default::default()
    };
    let f = p.fit(&c, 4, 8, 7, 160);
    assert_eq!(
        (f.placement.n_cpu_moe, f.placement.gpu_layers),
        (3, Some(2))
    );
    assert_eq!(f.gpu_bytes, 123 + 23 + 7);
    // an override: layer 3's attention in RAM whatever else is decided
    let mut p = Placement::default();
    p.add_override("blk\\.3\\.attn=cpu", &["vulkan"]).unwrap();
    let f = p.fit(&c, 4, 8, 7, 548);
    assert_eq!(f.placement.place("blk.3.attn", 4), CPU);
    assert_eq!((f.placement.n_cpu_moe, f.placement.gpu_layers), (0, None));
    assert!(p.clone().add_override("x=tpu", &["vulkan"]).is_err());
}

fn model_costs(path: &std::path::Path) -> (Vec<BlockCost>, usize, usize) {
    let f = ModelFiles::open(path).unwrap();
    let cpu = Arc::new(hearth_cpu::Cpu::new(1).unwrap());
    block_costs(&f, cpu, (KvType::F32, KvType::F32), 512).unwrap()
}

/// The same decisions on a real model's accounting: the tiny qwen3_moe fixture and, where
/// it is on this machine, the MoE bench model (read from its headers only).
#[test]
fn real_moe_models_fit_experts_first_then_layers() {
    let mut paths = vec![
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/tiny/qwen3_moe/model.gguf"),
    ];
    let bench = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default()
        .join(".cache/hearth/models/qwen3moe-1.8b-random.Q4_K_M.gguf");
    if bench.exists() {
        paths.push(bench);
    } else {
        eprintln!("{} is missing: only the tiny model", bench.display());
    }
    for p in paths {
        let (c, n_layer, reserve) = model_costs(&p);
        let reserve = reserve as u64;
        let name = p.display().to_string();
        assert_eq!(c.len(), 2 + 3 * n_layer, "{name}: blocks {c:?}");
        let exps: u64 = c
            .iter()
            .filter(|b| b.name.ends_with("ffn_exps"))
            .map(|b| b.weight_bytes as u64)
            .sum();
        let none = Placement::default();
        let all = none.gpu_bytes(&c, n_layer, 512, reserve);
        assert!(
            exps > 0 && exps < all,
            "{name}: experts {exps} of {all} bytes"
        );
        let f = none.fit(&c, n_layer, 512, reserve, all);
        assert_eq!(
            (f.placement.n_cpu_moe, f.placement.gpu_layers),
            (0, None),
            "{name}"
        );
        // half the experts' bytes short: about half the layers' experts in RAM, no layer
        let f = none.fit(&c, n_layer, 512, reserve, all - exps / 2);
        let n = f.placement.n_cpu_moe;
        assert!(f.fits && f.placement.gpu_layers.is_none(), "{name}");
        assert!(
            n >= n_layer / 2 && n <= n_layer / 2 + 1,
            "{name}: {n} of {n_layer}"
        );
        // one layer fewer in RAM would not fit
        let fewer = Placement {
            n_cpu_moe: n - 1,
            ..Default::default()
        };
        assert!(
            fewer.gpu_bytes(&c, n_layer, 512, reserve) > all - exps / 2,
            "{name}"
        );
        // room for half of what stays on the GPU with every expert in RAM: layers go too
        let budget = reserve + (all - exps - reserve) / 2;
        let f = none.fit(&c, n_layer, 512, reserve, budget);
        assert!(f.fits && f.gpu_bytes <= budget, "{name}");
        assert_eq!(f.placement.n_cpu_moe, n_layer, "{name}");
        let g = f.placement.gpu_layers.unwrap();
        assert!(g > 0 && g < n_layer, "{name}: {g} layers");
        // --cpu-moe plus the fit of the rest decides the same layers
        let cm = Placement {
            cpu_moe: true,
            ..Default::default()
        };
        let f2 = cm.fit(&c, n_layer, 512, reserve, budget);
        assert_eq!(f2.placement.gpu_layers, Some(g), "{name}");
        assert!(f2.placement.cpu_moe && f2.placement.n_cpu_moe == 0);
    }
}
