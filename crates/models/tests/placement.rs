//! Weights on several devices: every block runs on the device that holds its weights, data
//! moves only where two devices meet, and each move is counted. Two CPU backends stand in for
//! two devices here: the results must be the bits of one device, and the moves exactly the
//! ones the placement implies.
use hearth_core::Backend;
use hearth_formats::ModelFiles;
use hearth_models::Model;
use std::path::PathBuf;
use std::sync::Arc;

fn files(name: &str, gguf: bool) -> ModelFiles {
    let mut p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/tiny")
        .join(name);
    if gguf {
        p = p.join("model.gguf");
    }
    ModelFiles::open(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn cpu() -> Arc<dyn Backend> {
    Arc::new(hearth_cpu::Cpu::new(2).unwrap())
}

/// Logits of a 7-token prompt (every position), then of one decoded token.
type Moves = Vec<(&'static str, usize, usize)>;

fn run(m: &Model) -> (Vec<f32>, Vec<f32>, Moves) {
    let nv = m.cfg.n_vocab as u32;
    let prompt: Vec<u32> = (0..7u32).map(|i| (i * 37 + 5) % nv).collect();
    let mut st = m.new_state(16).unwrap();
    let (mut a, mut b) = (Vec::new(), Vec::new());
    m.forward(&prompt, &mut st, true, &mut a).unwrap();
    m.reset_transfers();
    m.forward(&[11 % nv], &mut st, false, &mut b).unwrap();
    (a, b, m.transfers())
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn a_decode_step_with_experts_in_ram_moves_only_their_inputs_routing_and_output() {
    for (name, gguf) in [
        ("qwen3_moe", true),
        ("qwen2_moe", false),
        ("deepseek_v3", false),
        ("gpt_oss", true),
        ("mixtral", false),
    ] {
        let f = files(name, gguf);
        let one = Model::load(&f, cpu()).unwrap();
        let placed = Model::load_placed(&f, vec![cpu(), cpu()], &|b, _| {
            usize::from(b.ends_with(".ffn_exps"))
        })
        .unwrap();
        let (a1, b1, t1) = run(&one);
        let (a2, b2, t2) = run(&placed);
        assert_eq!(bits(&a1), bits(&a2), "{name}: prompt logits");
        assert_eq!(bits(&b1), bits(&b2), "{name}: decoded logits");
        assert!(
            t1.is_empty(),
            "{name}: one device moves nothing, moved {t1:?}"
        );
        let l = placed.n_moe_layers();
        let e = placed.cfg.n_embd;
        let k = placed.cfg.moe.as_ref().unwrap().n_used;
        assert!(l > 0, "{name} has MoE layers");
        // per MoE layer: the normalised hidden state down, the chosen ids and weights down,
        // the experts' output back; nothing else
        assert_eq!(
            t2,
            vec![
                ("moe input", l, l * e * 4),
                ("moe output", l, l * e * 4),
                ("moe routing", 2 * l, l * 2 * k * 4),
            ],
            "{name}"
        );
    }
}

#[test]
fn layers_on_two_devices_move_the_hidden_state_where_they_meet() {
    let f = files("llama", true);
    let one = Model::load(&f, cpu()).unwrap();
    let n_layer = one.cfg.n_layer;
    assert!(n_layer >= 2);
    // layer 0 and the output on device 0, the other layers on device 1
    let placed = Model::load_placed(&f, vec![cpu(), cpu()], &|b, _| {
        usize::from(b.starts_with("blk.") && !b.starts_with("blk.0."))
    })
    .unwrap();
    let (a1, b1, _) = run(&one);
    let (a2, b2, t2) = run(&placed);
    assert_eq!(bits(&a1), bits(&a2));
    assert_eq!(bits(&b1), bits(&b2));
    let e = placed.cfg.n_embd;
    // one token: into layer 1 (device 1), then back for the output (device 0)
    assert_eq!(t2, vec![("hidden state", 2, 2 * e * 4)]);
}

#[test]
fn a_placement_on_a_device_that_does_not_exist_is_an_error() {
    let f = files("llama", true);
    let err = Model::load_placed(&f, vec![cpu()], &|b, _| usize::from(b == "output"))
        .err()
        .expect("device 1 does not exist");
    assert!(err.to_string().contains("device 1"), "{err}");
}
