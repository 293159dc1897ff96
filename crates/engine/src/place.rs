//! Which device holds each block of a model: the placement flags (`--cpu-moe`,
//! `--n-cpu-moe`, `--gpu-layers`, `--override-tensor`), and the automatic fit that fills in
//! what the flags leave open so that a model fits a GPU's free memory.
//!
//! Devices are indices into the model's device list: 0 is the GPU (the `--device`), 1 the
//! CPU that holds what goes to RAM. Blocks are named as [`Model::load_placed`] asks:
//! `token_embd`, `output`, `blk.N.attn`, `blk.N.ffn`, `blk.N.ffn_exps` (routed experts).
use hearth_core::{Error, Result};
use hearth_models::{BlockCost, Model};

/// The GPU's index in a placement.
pub const GPU: usize = 0;
/// The CPU's index in a placement.
pub const CPU: usize = 1;

/// Where blocks go. The fields the flags set; [`Placement::fit`] fills `n_cpu_moe` and
/// `gpu_layers` when the flags leave them open.
#[derive(Clone, Debug, Default)]
pub struct Placement {
    /// Every MoE layer's routed experts in RAM.
    pub cpu_moe: bool,
    /// The routed experts of the first N layers in RAM.
    pub n_cpu_moe: usize,
    /// Only the last N layers on the GPU (the output too when N exceeds the layer count).
    pub gpu_layers: Option<usize>,
    /// Blocks whose name matches go to the device given, before any other rule.
    pub overrides: Vec<(regex::Regex, usize)>,
}

/// The GPU's memory a placement takes, and whether it fits ([`Placement::fit`]).
#[derive(Clone, Debug)]
pub struct Fitted {
    /// The placement, with what the automatic fit chose.
    pub placement: Placement,
    /// Bytes it puts on the GPU: weights, KV rows of the context, state, and the reserve.
    pub gpu_bytes: u64,
    /// Whether that is within the budget.
    pub fits: bool,
}

impl Placement {
    /// Add `--override-tensor REGEX=DEVICE`: DEVICE is `cpu`, or one of `gpu_names` (the
    /// `--device` and its aliases).
    pub fn add_override(&mut self, o: &str, gpu_names: &[&str]) -> Result<()> {
        let bad = |why: String| Error::Invalid(format!("--override-tensor {o}: {why}"));
        let (re, dev) = o
            .rsplit_once('=')
            .ok_or_else(|| bad("expected REGEX=DEVICE".into()))?;
        let re = regex::Regex::new(re).map_err(|e| bad(e.to_string()))?;
        let d = match dev.to_ascii_lowercase().as_str() {
            "cpu" => CPU,
            d if gpu_names.contains(&d) => GPU,
            d => {
                return Err(bad(format!(
                    "device {d} is not cpu or the --device ({})",
                    gpu_names.join(", ")
                )));
            }
        };
        self.overrides.push((re, d));
        Ok(())
    }

    /// Whether any flag sends something to RAM.
    pub fn wants_cpu(&self) -> bool {
        self.cpu_moe
            || self.n_cpu_moe > 0
            || self.gpu_layers.is_some()
            || !self.overrides.is_empty()
    }

    /// The device of block `b` of a model of `n_layer` layers.
    pub fn place(&self, b: &str, n_layer: usize) -> usize {
        if let Some((_, d)) = self.overrides.iter().find(|(re, _)| re.is_match(b)) {
            return *d;
        }
        let layer = b
            .strip_prefix("blk.")
            .and_then(|r| r.split('.').next())
            .and_then(|i| i.parse::<usize>().ok());
        if let Some(g) = self.gpu_layers {
            let first_gpu = n_layer.saturating_sub(g);
            let on_cpu = match layer {
                Some(i) => i < first_gpu,
                None => b == "token_embd" || (b == "output" && g <= n_layer),
            };
            if on_cpu {
                return CPU;
            }
        }
        if b.ends_with(".ffn_exps") && (self.cpu_moe || layer.is_some_and(|i| i < self.n_cpu_moe)) {
            return CPU;
        }
        GPU
    }

    /// Bytes this placement puts on the GPU: the weights of its blocks (but those the GPU
    /// reads in place from host memory), their KV rows for `ctx` tokens and fixed-size state,
    /// and `reserve` (activations).
    pub fn gpu_bytes(&self, costs: &[BlockCost], n_layer: usize, ctx: usize, reserve: u64) -> u64 {
        costs
            .iter()
            .filter(|c| self.place(&c.name, n_layer) == GPU)
            .map(|c| {
                (c.weight_bytes.saturating_sub(c.in_place_bytes) as u64)
                    .saturating_add((c.kv_bytes_per_token as u64).saturating_mul(ctx as u64))
                    .saturating_add(c.state_bytes_per_seq as u64)
            })
            .fold(reserve, u64::saturating_add)
    }

    /// The placement that fits `budget` bytes of GPU memory with a context of `ctx` tokens,
    /// filling in what the flags leave open: all on the GPU if that fits; else the routed
    /// experts of the first layers to RAM, layer by layer (as `--n-cpu-moe`; not when
    /// `--cpu-moe` or `--n-cpu-moe` was given); then whole layers from the first (as
    /// `--gpu-layers`; not when it was given). Overrides stay as they are. `fits` is false
    /// when nothing left open makes it fit.
    pub fn fit(
        &self,
        costs: &[BlockCost],
        n_layer: usize,
        ctx: usize,
        reserve: u64,
        budget: u64,
    ) -> Fitted {
        let done = |p: Placement| {
            let gpu_bytes = p.gpu_bytes(costs, n_layer, ctx, reserve);
            Fitted {
                placement: p,
                gpu_bytes,
                fits: gpu_bytes <= budget,
            }
        };
        let mut p = self.clone();
        let need = |p: &Placement| p.gpu_bytes(costs, n_layer, ctx, reserve);
        if need(&p) <= budget {
            return done(p);
        }
        if !self.cpu_moe && self.n_cpu_moe == 0 {
            for n in 1..=n_layer {
                p.n_cpu_moe = n;
                if need(&p) <= budget {
                    return done(p);
                }
            }
        }
        if self.gpu_layers.is_none() {
            // from every layer and the output down to none
            for g in (0..=n_layer + 1).rev() {
                p.gpu_layers = Some(g);
                if need(&p) <= budget {
                    return done(p);
                }
            }
        }
        done(p)
    }
}

/// The blocks of the model in `files` as `gpu` would hold them (KV rows in types `kv`), its
/// layer count, and the activations of a prompt chunk (the engine's batch of 512 tokens, or
/// `ctx` where shorter) to reserve: the model is built with every block on `gpu` wrapped in
/// [`crate::PlanOnly`], so no weight is uploaded.
pub fn block_costs(
    files: &hearth_formats::ModelFiles,
    gpu: std::sync::Arc<dyn hearth_core::Backend>,
    kv: (hearth_core::KvType, hearth_core::KvType),
    ctx: usize,
) -> Result<(Vec<BlockCost>, usize, usize)> {
    let mut m = Model::load(files, crate::PlanOnly::wrap(gpu))?;
    m.set_kv_types(kv.0, kv.1)?;
    let reserve = m.batch_bytes(512.min(ctx.max(1)));
    Ok((m.block_costs(), m.cfg.n_layer, reserve))
}
