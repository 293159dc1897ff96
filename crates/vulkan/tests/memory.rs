//! Issue 16's memory paths on whatever Vulkan device there is (lavapipe in CI): buffers in
//! device-local memory reached through staging copies, and weights larger than the largest
//! allocation split by rows, and weights read in place from the mapped file where the device
//! shares memory with the host. A whole model's logits must not change by a bit when its
//! weights are split (every piece computes the same dot products), and must match the CPU
//! backend's within the placement test's tolerance.
use hearth_core::Backend;
use hearth_formats::ModelFiles;
use hearth_models::Model;
use hearth_vulkan::{Options, Vulkan};
use std::path::PathBuf;
use std::sync::Arc;

fn vulkan(opts: &Options) -> Option<Vulkan> {
    match Vulkan::with_options(0, opts) {
        Ok(v) => Some(v),
        Err(e) if std::env::var("HEARTH_REQUIRE_VULKAN").is_ok_and(|v| v == "1") => {
            panic!("HEARTH_REQUIRE_VULKAN=1 but: {e}")
        }
        Err(e) => {
            eprintln!("skipped: no Vulkan device ({e})");
            None
        }
    }
}

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/tiny")
        .join(name)
}

/// The logits of a 6-token prompt's last position and of one decoded token after it.
fn logits(f: &ModelFiles, be: Arc<dyn Backend>) -> Vec<f32> {
    let m = Model::load(f, be).unwrap();
    let nv = m.cfg.n_vocab as u32;
    let prompt: Vec<u32> = (0..6u32).map(|i| (i * 41 + 3) % nv).collect();
    let mut st = m.new_state(8).unwrap();
    let (mut a, mut b) = (Vec::new(), Vec::new());
    m.forward(&prompt, &mut st, false, &mut a).unwrap();
    m.forward(&[7 % nv], &mut st, false, &mut b).unwrap();
    a.extend(b);
    a
}

/// Largest allocation for the split runs: below the tiny models' embedding and output
/// matrices (384 x 64 values), above their activations and the i-quant grids (17.5 KiB).
const SPLIT: u64 = 32768;

#[test]
fn staged_and_split_weights_give_the_logits_of_mapped_whole_ones() {
    // the reference: weights copied into mapped memory, whole
    let mapped = Options {
        staging: Some(false),
        max_alloc: None,
        import: Some(false),
        ..Default::default()
    };
    let Some(whole) = vulkan(&mapped) else { return };
    assert!(!whole.staging());
    let whole: Arc<dyn Backend> = Arc::new(whole);
    // F32 from a GGUF, F16 from sharded safetensors, a MoE (its experts split too)
    for name in [
        "llama/model.gguf",
        "qwen2-f16-sharded",
        "qwen3_moe/model.gguf",
    ] {
        let f = ModelFiles::open(&fixture(name)).unwrap();
        let want = logits(&f, whole.clone());
        let cpu = logits(&f, Arc::new(hearth_cpu::Cpu::new(2).unwrap()));
        let scale = cpu.iter().fold(0f32, |m, v| m.max(v.abs()));
        let diff = cpu
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(diff <= 2e-5 * scale.max(1.0), "{name}: max |diff| {diff}");
        for (staging, max_alloc, import) in [
            (true, None, None),
            (false, Some(SPLIT), Some(false)),
            (true, Some(SPLIT), None),
            (false, None, Some(true)),
            (false, Some(SPLIT), Some(true)),
        ] {
            let opts = Options {
                staging: Some(staging),
                max_alloc,
                import,
                ..Default::default()
            };
            let v = Arc::new(vulkan(&opts).unwrap());
            assert_eq!(v.staging(), staging);
            if max_alloc.is_some() {
                assert_eq!(v.max_alloc(), SPLIT);
                let embd = &f.tensors["token_embd.weight"];
                assert!(
                    embd.numel() * 4 > 2 * SPLIT as usize,
                    "{name}: nothing to split"
                );
            }
            let got = logits(&f, v.clone());
            assert!(
                got == want,
                "{name}: staging {staging}, largest allocation {max_alloc:?}, import \
                 {import:?}: logits differ"
            );
            // a GGUF's tensors start on 32-byte boundaries, which lavapipe's storage buffers
            // accept (16): each matrix (a layer's experts as one) is read in place, the
            // embeddings and the output too; a staging device copies them all
            let held: usize = f
                .tensors
                .values()
                .filter(|t| t.shape.len() > 1)
                .map(|t| t.bytes().len())
                .sum();
            let imported = v.imported_bytes();
            if staging || import == Some(false) {
                assert_eq!(imported, 0, "{name}");
            } else if name.ends_with(".gguf") && v.imports() {
                // (norm weights the loader keeps as tensors count too)
                assert!(
                    imported >= held,
                    "{name}: {imported} bytes in place, of {held} in matrices"
                );
            }
        }
    }
}

#[test]
fn a_buffer_larger_than_the_largest_allocation_is_a_clear_error() {
    let opts = Options {
        staging: Some(true),
        max_alloc: Some(SPLIT),
        ..Default::default()
    };
    let Some(v) = vulkan(&opts) else { return };
    assert!(v.alloc(SPLIT as usize / 4).is_ok());
    let e = v.alloc(SPLIT as usize / 4 + 1).err().unwrap().to_string();
    assert!(
        e.contains(&format!("{} bytes", SPLIT + 4))
            && e.contains(&format!("largest allocation of {SPLIT} bytes")),
        "{e}"
    );
}

#[test]
fn free_memory_is_the_budget_given_or_at_most_the_heap() {
    let Some(v) = vulkan(&Options::default()) else {
        return;
    };
    let i = v.info().clone();
    assert!(i.free > 0 && i.free <= i.memory, "{i:?}");
    assert_eq!(v.memory(), Some(i.free));
    let opts = Options {
        budget: Some(123 << 20),
        ..Default::default()
    };
    let v = vulkan(&opts).unwrap();
    assert_eq!(v.memory(), Some(123 << 20));
}

#[test]
fn the_plan_counts_the_weights_read_in_place_as_loading_reads_them() {
    // placement leaves weights read in place out of the device's memory: the plan must
    // predict, before anything is loaded, the bytes that loading then reads in place
    for import in [Some(true), Some(false)] {
        let opts = Options {
            staging: Some(false),
            import,
            ..Default::default()
        };
        let Some(v) = vulkan(&opts) else { return };
        let v = Arc::new(v);
        for name in [
            "llama/model.gguf",
            "qwen3_moe/model.gguf",
            "qwen3_moe",
            "qwen2-f16-sharded",
        ] {
            let before = v.imported_bytes();
            let f = ModelFiles::open(&fixture(name)).unwrap();
            let m = Model::load(&f, v.clone()).unwrap();
            let planned: usize = m.plan().iter().map(|d| d.in_place_bytes).sum();
            let mut st = m.new_state(4).unwrap();
            m.forward(&[1, 2, 3], &mut st, false, &mut Vec::new())
                .unwrap();
            let read = v.imported_bytes() - before;
            eprintln!("{name}: import {import:?}: planned {planned}, read in place {read}");
            // the plan counts matrices; loading may also read norm weights in place, which
            // the plan keeps out of its weights (a few KiB)
            let vectors: usize = f
                .tensors
                .values()
                .filter(|t| t.shape.len() == 1)
                .map(|t| t.bytes().len())
                .sum();
            assert!(
                planned <= read && read - planned <= vectors,
                "{name}: import {import:?}: planned {planned} bytes in place, read {read} \
                 ({vectors} in vectors)"
            );
            if import == Some(true) && v.imports() && name.ends_with(".gguf") {
                assert!(planned > 0, "{name}: nothing read in place");
            }
        }
    }
}
