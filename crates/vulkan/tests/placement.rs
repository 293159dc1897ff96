//! A MoE model on the GPU with its experts in RAM: a decode step moves the normalised hidden
//! state and the routing down to the CPU and the experts' output back, and nothing else; the
//! logits match the CPU backend's within the CPU tests' tolerance.
use hearth_core::Backend;
use hearth_formats::ModelFiles;
use hearth_models::Model;
use std::path::PathBuf;
use std::sync::Arc;

fn vulkan() -> Option<Arc<dyn Backend>> {
    match hearth_vulkan::Vulkan::new(0) {
        Ok(v) => Some(Arc::new(v)),
        Err(e) if std::env::var("HEARTH_REQUIRE_VULKAN").is_ok_and(|v| v == "1") => {
            panic!("HEARTH_REQUIRE_VULKAN=1 but: {e}")
        }
        Err(e) => {
            eprintln!("skipped: no Vulkan device ({e})");
            None
        }
    }
}

#[test]
fn a_decode_step_with_experts_in_ram_moves_only_their_inputs_routing_and_output() {
    let Some(vk) = vulkan() else { return };
    for name in ["qwen3_moe", "deepseek_v3", "gpt_oss"] {
        let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/tiny")
            .join(name)
            .join("model.gguf");
        let f = ModelFiles::open(&p).unwrap();
        let cpu: Arc<dyn Backend> = Arc::new(hearth_cpu::Cpu::new(2).unwrap());
        let one = Model::load(&f, cpu.clone()).unwrap();
        let placed = Model::load_placed(&f, vec![vk.clone(), cpu], &|b, _| {
            usize::from(b.ends_with(".ffn_exps"))
        })
        .unwrap();
        let nv = one.cfg.n_vocab as u32;
        let prompt: Vec<u32> = (0..6u32).map(|i| (i * 41 + 3) % nv).collect();
        let mut got = [Vec::new(), Vec::new()];
        for (m, out) in [&one, &placed].into_iter().zip(got.iter_mut()) {
            let mut st = m.new_state(8).unwrap();
            let mut l = Vec::new();
            m.forward(&prompt, &mut st, false, &mut l).unwrap();
            m.reset_transfers();
            m.forward(&[7 % nv], &mut st, false, out).unwrap();
        }
        let scale = got[0].iter().fold(0f32, |m, v| m.max(v.abs()));
        let diff = got[0]
            .iter()
            .zip(&got[1])
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(diff <= 2e-5 * scale.max(1.0), "{name}: max |diff| {diff}");
        let (l, e) = (placed.n_moe_layers(), placed.cfg.n_embd);
        let k = placed.cfg.moe.as_ref().unwrap().n_used;
        assert_eq!(
            placed.transfers(),
            vec![
                ("moe input", l, l * e * 4),
                ("moe output", l, l * e * 4),
                ("moe routing", 2 * l, l * 2 * k * 4),
            ],
            "{name}"
        );
    }
}
