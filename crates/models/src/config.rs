//! The canonical model configuration, built from GGUF metadata or an HF config.json.
use hearth_core::{Error, Result, RopeStyle};
use hearth_formats::{GgufFile, Value};
use serde_json::Value as Json;

/// RoPE frequency scaling.
#[derive(Clone, Debug, PartialEq)]
pub enum RopeScaling {
    /// Plain RoPE.
    None,
    /// Position interpolation: frequencies divided by `factor`.
    Linear {
        /// scale factor
        factor: f32,
    },
    /// Llama 3's piecewise frequency scaling.
    Llama3 {
        /// scale factor
        factor: f32,
        /// low-frequency factor
        low_freq_factor: f32,
        /// high-frequency factor
        high_freq_factor: f32,
        /// context length of pre-training
        original_max_position: f32,
    },
    /// YaRN.
    Yarn {
        /// scale factor
        factor: f32,
        /// context length of pre-training
        original_max_position: f32,
        /// fast boundary in rotations
        beta_fast: f32,
        /// slow boundary in rotations
        beta_slow: f32,
        /// cos/sin scale; None: derived from `factor` (and `mscale`s)
        attention_factor: Option<f32>,
        /// DeepSeek's mscale
        mscale: Option<f32>,
        /// DeepSeek's mscale_all_dim
        mscale_all_dim: Option<f32>,
        /// floor/ceil the correction range
        truncate: bool,
    },
}

/// Rotary position embedding settings.
#[derive(Clone, Debug)]
pub struct Rope {
    /// Base (theta).
    pub theta: f32,
    /// Rotated dimensions per head (partial rotary: less than head_dim).
    pub dim: usize,
    /// Pairing of dimensions.
    pub style: RopeStyle,
    /// Frequency scaling.
    pub scaling: RopeScaling,
    /// Per-frequency divisors (GGUF `rope_freqs.weight`, llama3-style files).
    pub freq_factors: Option<Vec<f32>>,
}

impl Rope {
    /// Inverse frequencies (one per rotated pair) and the cos/sin scale, computed as HF
    /// transformers' `modeling_rope_utils` does, in f32.
    pub fn inv_freq(&self) -> (Vec<f32>, f32) {
        let dim = self.dim;
        let base = self.theta;
        let pos_freq = |i: usize| base.powf((2 * i) as f32 / dim as f32);
        let mut inv: Vec<f32> = (0..dim / 2).map(|i| 1.0 / pos_freq(i)).collect();
        let mut mscale = 1.0f32;
        match self.scaling {
            RopeScaling::None => {}
            RopeScaling::Linear { factor } => inv.iter_mut().for_each(|f| *f /= factor),
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position,
            } => {
                let low_wl = original_max_position / low_freq_factor;
                let high_wl = original_max_position / high_freq_factor;
                for f in inv.iter_mut() {
                    let wl = 2.0 * std::f32::consts::PI / *f;
                    let scaled = if wl > low_wl { *f / factor } else { *f };
                    let medium = !(wl < high_wl) && !(wl > low_wl);
                    *f = if medium {
                        let smooth = (original_max_position / wl - low_freq_factor)
                            / (high_freq_factor - low_freq_factor);
                        (1.0 - smooth) * scaled / factor + smooth * scaled
                    } else {
                        scaled
                    };
                }
            }
            RopeScaling::Yarn {
                factor,
                original_max_position,
                beta_fast,
                beta_slow,
                attention_factor,
                mscale: ms,
                mscale_all_dim,
                truncate,
            } => {
                let get_mscale = |scale: f64, m: f64| {
                    if scale <= 1.0 {
                        1.0
                    } else {
                        0.1 * m * scale.ln() + 1.0
                    }
                };
                mscale = match attention_factor {
                    Some(a) => a,
                    None => match (ms, mscale_all_dim) {
                        (Some(m), Some(ma)) if m != 0.0 && ma != 0.0 => {
                            (get_mscale(factor as f64, m as f64)
                                / get_mscale(factor as f64, ma as f64))
                                as f32
                        }
                        _ => get_mscale(factor as f64, 1.0) as f32,
                    },
                };
                let corr_dim = |rot: f64| {
                    (dim as f64
                        * (original_max_position as f64 / (rot * 2.0 * std::f64::consts::PI)).ln())
                        / (2.0 * (base as f64).ln())
                };
                let (mut low, mut high) = (corr_dim(beta_fast as f64), corr_dim(beta_slow as f64));
                if truncate {
                    low = low.floor();
                    high = high.ceil();
                }
                let low = low.max(0.0) as f32;
                let mut high = high.min(dim as f64 - 1.0) as f32;
                if low == high {
                    high += 0.001;
                }
                for (i, f) in inv.iter_mut().enumerate() {
                    let ramp = ((i as f32 - low) / (high - low)).clamp(0.0, 1.0);
                    let extra = 1.0 - ramp;
                    let pf = pos_freq(i);
                    let interp = 1.0 / (factor * pf);
                    let extrap = 1.0 / pf;
                    *f = interp * (1.0 - extra) + extrap * extra;
                }
            }
        }
        if let Some(ff) = &self.freq_factors {
            for (f, d) in inv.iter_mut().zip(ff) {
                *f /= d;
            }
        }
        (inv, mscale)
    }
}

pub use hearth_core::moe::{Gating, Glu as ExpertAct, GroupScore, Routing as MoeConfig};

/// Multi-head latent attention (DeepSeek V2/V3) shapes.
#[derive(Clone, Debug)]
pub struct MlaConfig {
    /// Rank of the query compression (None: full q projection).
    pub q_lora_rank: Option<usize>,
    /// Rank of the compressed KV latent (what the cache holds, with the rope key).
    pub kv_lora_rank: usize,
    /// Per-head query/key dimensions without position.
    pub nope: usize,
    /// Per-head rotary dimensions (the rope key is shared by all heads).
    pub rope: usize,
    /// Per-head value dimensions.
    pub v_dim: usize,
    /// DeepSeek Sparse Attention's indexer (DeepSeek-V3.2, GLM-5), for models that have it.
    pub dsa: Option<DsaConfig>,
}

/// DeepSeek Sparse Attention: a lightning indexer picks the `top_k` cached positions each
/// query attends to (see `hearth_core::dsa`).
#[derive(Clone, Debug)]
pub struct DsaConfig {
    /// Indexer heads.
    pub n_head: usize,
    /// Width of an indexer head and of the indexer key each position keeps.
    pub head_dim: usize,
    /// Positions each query attends to.
    pub top_k: usize,
    /// How the indexer's RoPE pairs dimensions (DeepSeek-V3.2: halves; GLM-5: adjacent).
    pub rope_style: RopeStyle,
    /// Per layer: whether it runs its own indexer (`false`: it reuses the choice of the last
    /// layer that did; GLM-5.2's shared layers).
    pub own: Vec<bool>,
}

/// Gated DeltaNet linear attention (Qwen3-Next, Qwen3.5/3.6): shapes, and which layers use it.
#[derive(Clone, Debug)]
pub struct LinearConfig {
    /// Width of the causal convolution over q, k and v.
    pub conv_kernel: usize,
    /// Query/key heads.
    pub n_k_heads: usize,
    /// Value heads.
    pub n_v_heads: usize,
    /// Width of a query/key head.
    pub k_dim: usize,
    /// Width of a value head.
    pub v_dim: usize,
    /// Per layer: linear attention (true) or full attention.
    pub layers: Vec<bool>,
    /// Value heads in llama.cpp's tiled order (its qwen35 GGUF files) rather than grouped by
    /// key head (HF, and qwen3next GGUF files).
    pub tiled: bool,
}

impl LinearConfig {
    /// The delta rule's shape.
    pub fn shape(&self) -> hearth_core::linear::DeltaShape {
        hearth_core::linear::DeltaShape {
            n_k_heads: self.n_k_heads,
            n_v_heads: self.n_v_heads,
            k_dim: self.k_dim,
            v_dim: self.v_dim,
            tiled: self.tiled,
        }
    }
    /// Channels of the convolution (`q | k | v`).
    pub fn conv_channels(&self) -> usize {
        self.shape().qkv_width()
    }
    /// Floats of one sequence's state in a layer: the convolution's last inputs, then the
    /// recurrent state.
    pub fn slot_len(&self) -> usize {
        (self.conv_kernel - 1) * self.conv_channels() + self.shape().state_len()
    }
    /// An error unless the shapes are usable.
    pub fn check(&self, n_layer: usize) -> Result<()> {
        self.shape().check()?;
        if self.conv_kernel == 0 || self.conv_kernel > 64 || self.layers.len() != n_layer {
            return Err(Error::Format(format!(
                "linear attention: kernel {} over {} layer kinds for {n_layer} layers",
                self.conv_kernel,
                self.layers.len()
            )));
        }
        Ok(())
    }
}

/// Which layers of a hybrid model are linear attention: `layer_types`, else every layer but
/// each `interval`-th.
fn linear_layers(types: Option<Vec<bool>>, interval: usize, n_layer: usize) -> Vec<bool> {
    types.unwrap_or_else(|| {
        (0..n_layer)
            .map(|i| (i + 1) % interval.max(1) != 0)
            .collect()
    })
}

/// Everything the forward pass needs to know about a model's shape.
#[derive(Clone, Debug)]
pub struct ModelConfig {
    /// Architecture name (registry key).
    pub arch: String,
    /// Hidden size.
    pub n_embd: usize,
    /// Transformer blocks.
    pub n_layer: usize,
    /// Query heads.
    pub n_head: usize,
    /// Key/value heads.
    pub n_kv_head: usize,
    /// Width of one attention head.
    pub head_dim: usize,
    /// Feed-forward width.
    pub n_ff: usize,
    /// Vocabulary size (rows of the embedding).
    pub n_vocab: usize,
    /// Training context length.
    pub n_ctx_train: usize,
    /// RMSNorm epsilon.
    pub rms_eps: f32,
    /// RoPE.
    pub rope: Rope,
    /// Sliding-window attention span, if any (every layer unless `swa_layers` says).
    pub sliding_window: Option<usize>,
    /// Which layers use the sliding window (None: all of them).
    pub swa_layers: Option<Vec<bool>>,
    /// Routing, for models with MoE layers (which layers are MoE follows from the tensors).
    pub moe: Option<MoeConfig>,
    /// Latent attention shapes, for MLA models.
    pub mla: Option<MlaConfig>,
    /// Linear attention, for hybrid models.
    pub linear: Option<LinearConfig>,
    /// The query projection holds each head's query and then its output gate
    /// (`attn · sigmoid(gate)`; Qwen3-Next, Qwen3.5).
    pub attn_gate: bool,
    /// RMSNorm weights are stored as offsets from 1 (HF Qwen3-Next and Qwen3.5 checkpoints;
    /// llama.cpp's converter adds the 1). The gated norm of linear attention is not.
    pub norm_plus_one: bool,
    /// Lightning attention (MiniMax-M1 / Text-01), for models that have it.
    pub lightning: Option<LightningConfig>,
}

/// Lightning attention (MiniMax-M1 / MiniMax-Text-01): which layers use it (the others are
/// softmax attention), and how MiniMax scales its residuals.
#[derive(Clone, Debug)]
pub struct LightningConfig {
    /// Per layer: lightning attention (true) or softmax attention.
    pub layers: Vec<bool>,
    /// `(alpha, beta)` of the residual around softmax attention, lightning attention and the
    /// FFN: MiniMax's blocks add to their normalised input, `x ← alpha · norm(x) + beta ·
    /// f(norm(x))`.
    pub full_residual: (f32, f32),
    /// See `full_residual`.
    pub linear_residual: (f32, f32),
    /// See `full_residual`.
    pub mlp_residual: (f32, f32),
}

impl LightningConfig {
    /// Each head's decay `exp(-slope)` in layer `i` of `n_layer`, as transformers computes
    /// the slopes: `2^(-8/n_heads)^(h+1) · (1 - i/(n_layer - 1 + 1e-5) + 1e-5)`.
    pub fn decays(n_heads: usize, i: usize, n_layer: usize) -> Vec<f32> {
        let base = 1.0 / 2f64.powf(8.0 / n_heads as f64);
        let factor = 1.0 - i as f64 / (n_layer as f64 - 1.0 + 1e-5) + 1e-5;
        (0..n_heads)
            .map(|h| (-(base.powi(h as i32 + 1) * factor)).exp() as f32)
            .collect()
    }
}

/// MiniMax's lightning layers and residual scales from an HF config.json: transformers'
/// `layer_types` and `*_alpha_factor`/`*_beta_factor`, or the original checkpoints'
/// `attn_type_list` (1: softmax attention) and `layernorm_*_alpha`/`_beta`.
/// The integer `k` of a config.json, or a clear error when it is missing or not one.
pub(crate) fn json_usize(c: &Json, k: &str) -> Result<usize> {
    c.get(k)
        .and_then(Json::as_u64)
        .map(|v| v as usize)
        .ok_or_else(|| Error::Format(format!("config.json: {k} is missing or not an integer")))
}

fn hf_lightning(c: &Json, n_layer: usize) -> Result<LightningConfig> {
    let layers: Vec<bool> = if let Some(a) = c.get("layer_types").and_then(Json::as_array) {
        a.iter()
            .map(|t| t.as_str() == Some("linear_attention"))
            .collect()
    } else if let Some(a) = c.get("attn_type_list").and_then(Json::as_array) {
        a.iter().map(|t| t.as_u64() == Some(0)).collect()
    } else {
        // transformers' default: softmax attention at even layers
        (0..n_layer).map(|i| i % 2 == 1).collect()
    };
    if layers.len() != n_layer {
        return Err(Error::Format(format!(
            "config.json: {} layer types for {n_layer} layers",
            layers.len()
        )));
    }
    let scale = |new: &str, old: &str| -> (f32, f32) {
        let g = |k: String| c.get(&k).and_then(Json::as_f64).map(|v| v as f32);
        (
            g(format!("{new}_alpha_factor"))
                .or_else(|| g(format!("layernorm_{old}_alpha")))
                .unwrap_or(1.0),
            g(format!("{new}_beta_factor"))
                .or_else(|| g(format!("layernorm_{old}_beta")))
                .unwrap_or(1.0),
        )
    };
    Ok(LightningConfig {
        layers,
        full_residual: scale("full_attn", "full_attention"),
        linear_residual: scale("linear_attn", "linear_attention"),
        mlp_residual: scale("mlp", "mlp"),
    })
}

/// Routing settings from an HF config.json; None for dense models. transformers hard-codes
/// each architecture's routing in its modeling code, so the table follows that code.
fn hf_moe(c: &Json, arch: &str) -> Result<Option<MoeConfig>> {
    let n_expert = ["num_experts", "num_local_experts", "n_routed_experts"]
        .iter()
        .find_map(|k| c.get(*k).and_then(Json::as_u64))
        .unwrap_or(0) as usize;
    if n_expert == 0 {
        return Ok(None);
    }
    let n_used = c
        .get("num_experts_per_tok")
        .and_then(Json::as_u64)
        .ok_or_else(|| Error::Format("config.json: num_experts_per_tok is missing".into()))?
        as usize;
    let fl = |k: &str| c.get(k).and_then(Json::as_f64).map(|v| v as f32);
    let us = |k: &str| c.get(k).and_then(Json::as_u64).map(|v| v as usize);
    let norm_topk = c.get("norm_topk_prob").and_then(Json::as_bool);
    let mut m = MoeConfig {
        n_expert,
        n_used,
        gating: Gating::Softmax,
        norm: false,
        scale: 1.0,
        n_group: 1,
        topk_group: 1,
        group_score: GroupScore::Max,
        act: ExpertAct::Silu,
    };
    match arch {
        "qwen3_moe" | "qwen2_moe" => m.norm = norm_topk.unwrap_or(false),
        "qwen3_next" => m.norm = norm_topk.unwrap_or(true),
        // transformers renormalises Qwen3.5's top-k always
        "qwen3_5_moe" => m.norm = true,
        "mixtral" | "minimax" => m.norm = true,
        "deepseek_v2" => {
            m.scale = fl("routed_scaling_factor").unwrap_or(1.0);
            if c.get("topk_method").and_then(Json::as_str) == Some("group_limited_greedy") {
                m.n_group = us("n_group").unwrap_or(1).max(1);
                m.topk_group = us("topk_group").unwrap_or(m.n_group);
            }
        }
        "deepseek_v3" | "deepseek_v32" | "glm4_moe" | "glm_moe_dsa" => {
            m.gating = Gating::Sigmoid;
            m.norm = norm_topk.unwrap_or(true);
            m.scale = fl("routed_scaling_factor").unwrap_or(1.0);
            m.n_group = us("n_group").unwrap_or(1).max(1);
            m.topk_group = us("topk_group").unwrap_or(m.n_group);
            m.group_score = GroupScore::Top2Sum;
        }
        "minimax_m2" => {
            m.gating = Gating::Sigmoid;
            m.norm = true;
        }
        // sqrt-softplus scores and hash routing: crate::dsv4 routes its own experts
        "deepseek_v4" => {
            m.norm = true;
            m.scale = fl("routed_scaling_factor").unwrap_or(1.0);
        }
        "gpt_oss" => {
            // softmax over the top-k logits == renormalised softmax over all of them
            m.norm = true;
            m.act = ExpertAct::ClampedSwiglu {
                alpha: fl("swiglu_alpha").unwrap_or(1.702),
                limit: fl("swiglu_limit").unwrap_or(7.0),
            };
        }
        o => return Err(Error::Unsupported(format!("routing of {o} experts"))),
    }
    m.validate()?;
    Ok(Some(m))
}

/// DSA's indexer from an HF config: DeepSeek-V3.2 (`index_*`; every layer has an indexer)
/// and GLM-5 (`indexer_types`, or the pattern transformers derives it from:
/// `index_topk_pattern`, or `index_topk_freq` with `index_skip_topk_offset`).
fn hf_dsa(c: &Json, arch: &str, n_layer: usize) -> Result<Option<DsaConfig>> {
    if !matches!(arch, "deepseek_v32" | "glm_moe_dsa") {
        return Ok(None);
    }
    let us = |k: &str| c.get(k).and_then(Json::as_u64).map(|v| v as usize);
    let glm = arch == "glm_moe_dsa";
    let own = if let Some(t) = c.get("indexer_types").and_then(Json::as_array) {
        t.iter()
            .map(|v| match v.as_str() {
                Some("full") => Ok(true),
                Some("shared") => Ok(false),
                _ => Err(Error::Format(format!(
                    "indexer_types: {v} is not full or shared"
                ))),
            })
            .collect::<Result<Vec<_>>>()?
    } else if let Some(p) = c.get("index_topk_pattern").and_then(Json::as_str) {
        p.chars()
            .map(|ch| match ch {
                'F' => Ok(true),
                'S' => Ok(false),
                _ => Err(Error::Format(format!(
                    "index_topk_pattern: {ch:?} is not F or S"
                ))),
            })
            .collect::<Result<Vec<_>>>()?
    } else if glm {
        let freq = us("index_topk_freq").unwrap_or(1).max(1);
        let off = us("index_skip_topk_offset").unwrap_or(2);
        (0..n_layer)
            .map(|i| (i + 1).saturating_sub(off) % freq == 0)
            .collect()
    } else {
        vec![true; n_layer]
    };
    if own.len() != n_layer || own.first() == Some(&false) {
        return Err(Error::Format(format!(
            "DSA: {} indexer types for {n_layer} layers, or a first layer with no indexer to share",
            own.len()
        )));
    }
    let d = DsaConfig {
        n_head: us("index_n_heads").unwrap_or(if glm { 32 } else { 64 }),
        head_dim: us("index_head_dim").unwrap_or(128),
        top_k: us("index_topk").unwrap_or(2048),
        rope_style: if glm {
            RopeStyle::Normal
        } else {
            RopeStyle::Neox
        },
        own,
    };
    if d.n_head == 0 || d.head_dim == 0 || d.top_k == 0 {
        return Err(Error::Format("DSA: an empty indexer".into()));
    }
    Ok(Some(d))
}

/// DSA's indexer from llama.cpp's GGUF keys (`deepseek32`, `glm-dsa`). Without
/// `attention.indexer.types`, every layer has its own indexer, except in GLM-5.2 (78 layers,
/// a 1M context), whose pattern llama.cpp assumes as its config.json gives it: two layers with
/// an indexer, then one in every four.
fn gguf_dsa(g: &GgufFile, arch: &str, n_layer: usize, n_ctx: usize) -> Result<Option<DsaConfig>> {
    if !matches!(arch, "deepseek32" | "glm-dsa") {
        return Ok(None);
    }
    let glm = arch == "glm-dsa";
    let own: Vec<bool> = match gget(g, arch, "attention.indexer.types") {
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| match v {
                Value::Bool(b) => *b,
                v => v.as_u64().is_some_and(|x| x != 0),
            })
            .collect(),
        Some(_) => {
            return Err(Error::Format(format!(
                "{arch}.attention.indexer.types is not an array"
            )));
        }
        None if glm && n_layer == 78 && n_ctx >= 1 << 20 => {
            (0..n_layer).map(|i| i < 2 || (i - 2) % 4 == 0).collect()
        }
        None => vec![true; n_layer],
    };
    if own.len() < n_layer || own.first() == Some(&false) {
        return Err(Error::Format(format!(
            "DSA: {} indexer types for {n_layer} layers, or a first layer with no indexer to share",
            own.len()
        )));
    }
    let d = DsaConfig {
        n_head: gusize(g, arch, "attention.indexer.head_count")?,
        head_dim: gusize(g, arch, "attention.indexer.key_length")?,
        top_k: gusize(g, arch, "attention.indexer.top_k")?,
        rope_style: if glm {
            RopeStyle::Normal
        } else {
            RopeStyle::Neox
        },
        own: own[..n_layer].to_vec(),
    };
    if d.n_head == 0 || d.head_dim == 0 || d.top_k == 0 {
        return Err(Error::Format("DSA: an empty indexer".into()));
    }
    Ok(Some(d))
}

fn gget<'a>(g: &'a GgufFile, arch: &str, key: &str) -> Option<&'a Value> {
    g.get(&format!("{arch}.{key}"))
}

fn gusize(g: &GgufFile, arch: &str, key: &str) -> Result<usize> {
    let v = gget(g, arch, key)
        .ok_or_else(|| Error::Format(format!("GGUF metadata {arch}.{key} is missing")))?;
    // head counts may be per-layer arrays; take the first entry
    let v = match v {
        Value::Array(a) => a
            .first()
            .ok_or_else(|| Error::Format(format!("{arch}.{key} is empty")))?,
        v => v,
    };
    let n = v
        .as_u64()
        .ok_or_else(|| Error::Format(format!("GGUF metadata {arch}.{key} is not an integer")))?;
    usize::try_from(n)
        .ok()
        .filter(|&n| n < (1 << 40))
        .ok_or_else(|| Error::Format(format!("{arch}.{key} = {n} is absurd")))
}

impl ModelConfig {
    /// From GGUF metadata; `rope_style` comes from the architecture registry.
    pub fn from_gguf(
        g: &GgufFile,
        arch: &str,
        rope_style: RopeStyle,
        n_vocab: usize,
    ) -> Result<ModelConfig> {
        let n_embd = gusize(g, arch, "embedding_length")?;
        let n_head = gusize(g, arch, "attention.head_count")?;
        if n_head == 0 {
            return Err(Error::Format("attention.head_count is 0".into()));
        }
        let n_kv_head = gusize(g, arch, "attention.head_count_kv").unwrap_or(n_head);
        let head_dim = gusize(g, arch, "attention.key_length").unwrap_or(n_embd / n_head);
        let rope_dim = gusize(g, arch, "rope.dimension_count").unwrap_or(head_dim);
        let f = |k: &str| gget(g, arch, k).and_then(Value::as_f64).map(|v| v as f32);
        let n_ctx_train = gusize(g, arch, "context_length").unwrap_or(4096);
        let scaling = match gget(g, arch, "rope.scaling.type").and_then(Value::as_str) {
            None | Some("none") => RopeScaling::None,
            Some("linear") => RopeScaling::Linear {
                factor: f("rope.scaling.factor").unwrap_or(1.0),
            },
            Some("yarn") => RopeScaling::Yarn {
                factor: f("rope.scaling.factor").unwrap_or(1.0),
                original_max_position: f("rope.scaling.original_context_length")
                    .unwrap_or(n_ctx_train as f32),
                beta_fast: f("rope.scaling.yarn_beta_fast").unwrap_or(32.0),
                beta_slow: f("rope.scaling.yarn_beta_slow").unwrap_or(1.0),
                attention_factor: f("rope.scaling.yarn_attn_factor"),
                mscale: None,
                mscale_all_dim: None,
                // gpt-oss's reference YaRN does not round the correction range (its HF config
                // says truncate: false); GGUF has no key for it
                truncate: arch != "gpt-oss",
            },
            Some(o) => return Err(Error::Unsupported(format!("rope scaling type {o}"))),
        };
        // GLM-4.5 files append their multi-token-prediction layers to the block count; they
        // are not part of the forward pass (as in transformers, which never builds them)
        let n_layer = gusize(g, arch, "block_count")?
            .checked_sub(gusize(g, arch, "nextn_predict_layers").unwrap_or(0))
            .ok_or_else(|| Error::Format("more prediction layers than blocks".into()))?;
        let moe = match gusize(g, arch, "expert_count") {
            Ok(n_expert) if n_expert > 0 => {
                let gating = match gusize(g, arch, "expert_gating_func") {
                    Ok(2) => Gating::Sigmoid,
                    Ok(1) => Gating::Softmax,
                    // sqrt-softplus (DeepSeek-V4): crate::dsv4 routes its own experts
                    Ok(4) if arch == "deepseek4" => Gating::Softmax,
                    Ok(o) => return Err(Error::Unsupported(format!("expert gating function {o}"))),
                    // llama.cpp assumes sigmoid for GLM-5 and MiniMax-M2 files without the key
                    // (DeepSeek-V3.2 routes by sigmoid too)
                    Err(_) if matches!(arch, "minimax-m2" | "glm-dsa" | "deepseek32") => {
                        Gating::Sigmoid
                    }
                    Err(_) => Gating::Softmax,
                };
                // llama.cpp fixes renormalisation per architecture where the file has no key
                let norm_default = matches!(
                    arch,
                    "qwen3moe" | "llama" | "minimax-m2" | "gpt-oss" | "qwen3next" | "qwen35moe"
                );
                let norm = gget(g, arch, "expert_weights_norm")
                    .and_then(|v| match v {
                        Value::Bool(b) => Some(*b),
                        _ => None,
                    })
                    .unwrap_or(norm_default);
                let n_group = gusize(g, arch, "expert_group_count").unwrap_or(1).max(1);
                Some(MoeConfig {
                    n_expert,
                    n_used: gusize(g, arch, "expert_used_count")?,
                    gating,
                    norm,
                    scale: f("expert_weights_scale")
                        .filter(|&s| s != 0.0)
                        .unwrap_or(1.0),
                    n_group,
                    topk_group: gusize(g, arch, "expert_group_used_count").unwrap_or(n_group),
                    group_score: if gating == Gating::Sigmoid {
                        GroupScore::Top2Sum
                    } else {
                        GroupScore::Max
                    },
                    act: if arch == "gpt-oss" {
                        ExpertAct::ClampedSwiglu {
                            alpha: 1.702,
                            limit: 7.0,
                        }
                    } else {
                        ExpertAct::Silu
                    },
                })
            }
            _ => None,
        };
        if let Some(m) = &moe {
            m.validate()?;
        }
        let mla = match gusize(g, arch, "attention.kv_lora_rank") {
            Ok(kv_lora_rank) => {
                let k = gusize(g, arch, "attention.key_length_mla")
                    .or_else(|_| gusize(g, arch, "attention.key_length"))?;
                let v_dim = gusize(g, arch, "attention.value_length_mla")
                    .or_else(|_| gusize(g, arch, "attention.value_length"))?;
                if k <= rope_dim {
                    return Err(Error::Format(format!(
                        "MLA key length {k} is not above the rope dimension {rope_dim}"
                    )));
                }
                Some(MlaConfig {
                    q_lora_rank: gusize(g, arch, "attention.q_lora_rank").ok(),
                    kv_lora_rank,
                    nope: k - rope_dim,
                    rope: rope_dim,
                    v_dim,
                    dsa: gguf_dsa(g, arch, n_layer, n_ctx_train)?,
                })
            }
            Err(_) => None,
        };
        let mut scaling = scaling;
        if let (
            RopeScaling::Yarn {
                mscale,
                mscale_all_dim,
                ..
            },
            Some(m),
        ) = (
            &mut scaling,
            f("rope.scaling.yarn_log_multiplier").filter(|_| mla.is_some()),
        ) {
            // DeepSeek files store 0.1 * mscale_all_dim (llama.cpp's converter), and their
            // mscale equals it.
            *mscale = Some(10.0 * m);
            *mscale_all_dim = Some(10.0 * m);
        }
        let sliding_window = gusize(g, arch, "attention.sliding_window")
            .ok()
            .filter(|&w| w > 0);
        // gpt-oss alternates: even layers slide, odd layers see everything (llama.cpp's pattern)
        let swa_layers = (arch == "gpt-oss" && sliding_window.is_some())
            .then(|| (0..n_layer).map(|i| i % 2 == 0).collect());
        let hybrid = matches!(arch, "qwen3next" | "qwen35" | "qwen35moe");
        let linear = if hybrid {
            let n_v_heads = gusize(g, arch, "ssm.time_step_rank")?;
            let types = match gget(g, arch, "attention.recurrent_layers") {
                Some(Value::Array(a)) => Some(
                    a.iter()
                        .take(n_layer)
                        .map(|v| matches!(v, Value::Bool(true)))
                        .collect(),
                ),
                _ => None,
            };
            let l = LinearConfig {
                conv_kernel: gusize(g, arch, "ssm.conv_kernel")?,
                n_k_heads: gusize(g, arch, "ssm.group_count")?,
                n_v_heads,
                k_dim: gusize(g, arch, "ssm.state_size")?,
                v_dim: gusize(g, arch, "ssm.inner_size")? / n_v_heads.max(1),
                layers: linear_layers(
                    types,
                    gusize(g, arch, "full_attention_interval").unwrap_or(4),
                    n_layer,
                ),
                tiled: arch != "qwen3next",
            };
            l.check(n_layer)?;
            Some(l)
        } else {
            None
        };
        Ok(ModelConfig {
            arch: arch.to_string(),
            n_embd,
            n_layer,
            n_head,
            n_kv_head,
            head_dim,
            n_ff: gusize(g, arch, "feed_forward_length").unwrap_or(0),
            n_vocab,
            n_ctx_train,
            rms_eps: f("attention.layer_norm_rms_epsilon").unwrap_or(1e-5),
            rope: Rope {
                theta: f("rope.freq_base").unwrap_or(10000.0),
                dim: rope_dim,
                style: rope_style,
                scaling,
                freq_factors: None,
            },
            sliding_window,
            swa_layers,
            moe,
            mla,
            linear,
            attn_gate: hybrid,
            norm_plus_one: false,
            lightning: None,
        })
    }

    /// From an HF config.json; `rope_style` comes from the architecture registry (rotate-half
    /// except for DeepSeek's interleaved pairs).
    pub fn from_hf(c: &Json, arch: &str, rope_style: RopeStyle) -> Result<ModelConfig> {
        // Kimi K2.5's text model is DeepSeek V3 (its text_config says deepseek_v3 or kimi_k2)
        let arch = match arch {
            "kimi_k25" => "deepseek_v3",
            a => a,
        };
        // multimodal checkpoints (Qwen3.5/3.6) describe the text model in text_config; keys
        // set only at the top (tie_word_embeddings) still count
        let merged;
        let c = match c.get("text_config").and_then(Json::as_object) {
            Some(tc) => {
                let mut m = c.as_object().cloned().unwrap_or_default();
                m.remove("text_config");
                m.remove("vision_config");
                m.extend(tc.iter().map(|(k, v)| (k.clone(), v.clone())));
                merged = Json::Object(m);
                &merged
            }
            None => c,
        };
        let u = |k: &str| json_usize(c, k);
        let f = |j: &Json, k: &str| j.get(k).and_then(Json::as_f64).map(|v| v as f32);
        let n_embd = u("hidden_size")?;
        let n_head = u("num_attention_heads")?;
        if n_head == 0 {
            return Err(Error::Format(
                "config.json: num_attention_heads is 0".into(),
            ));
        }
        let head_dim = c
            .get("head_dim")
            .and_then(Json::as_u64)
            .map(|v| v as usize)
            .unwrap_or(n_embd / n_head);
        let n_ctx_train = u("max_position_embeddings").unwrap_or(4096);
        // transformers 5 keeps rope settings in `rope_parameters`; older files in
        // `rope_theta` + `rope_scaling`.
        let empty = Json::Null;
        let rp = c
            .get("rope_parameters")
            .filter(|v| v.is_object())
            .or_else(|| c.get("rope_scaling"))
            .unwrap_or(&empty);
        let theta = f(rp, "rope_theta")
            .or_else(|| f(c, "rope_theta"))
            .unwrap_or(10000.0);
        let partial = f(rp, "partial_rotary_factor")
            .or_else(|| f(c, "partial_rotary_factor"))
            .unwrap_or(1.0);
        let rtype = rp
            .get("rope_type")
            .or_else(|| rp.get("type"))
            .and_then(Json::as_str)
            .unwrap_or("default");
        let orig = f(rp, "original_max_position_embeddings")
            .or_else(|| f(c, "original_max_position_embeddings"))
            .unwrap_or(n_ctx_train as f32);
        let scaling = match rtype {
            "default" => RopeScaling::None,
            "linear" => RopeScaling::Linear {
                factor: f(rp, "factor").unwrap_or(1.0),
            },
            "llama3" => RopeScaling::Llama3 {
                factor: f(rp, "factor").unwrap_or(8.0),
                low_freq_factor: f(rp, "low_freq_factor").unwrap_or(1.0),
                high_freq_factor: f(rp, "high_freq_factor").unwrap_or(4.0),
                original_max_position: orig,
            },
            "yarn" => RopeScaling::Yarn {
                factor: f(rp, "factor").unwrap_or(n_ctx_train as f32 / orig),
                original_max_position: orig,
                beta_fast: f(rp, "beta_fast").filter(|&v| v != 0.0).unwrap_or(32.0),
                beta_slow: f(rp, "beta_slow").filter(|&v| v != 0.0).unwrap_or(1.0),
                attention_factor: f(rp, "attention_factor"),
                mscale: f(rp, "mscale"),
                mscale_all_dim: f(rp, "mscale_all_dim"),
                truncate: rp.get("truncate").and_then(Json::as_bool).unwrap_or(true),
            },
            o => return Err(Error::Unsupported(format!("rope type {o}"))),
        };
        let use_sw = c
            .get("use_sliding_window")
            .and_then(Json::as_bool)
            .unwrap_or(true);
        let sliding_window = if use_sw {
            c.get("sliding_window")
                .and_then(Json::as_u64)
                .map(|v| v as usize)
        } else {
            None
        };
        let n_layer = u("num_hidden_layers")?;
        let swa_layers = c.get("layer_types").and_then(Json::as_array).map(|a| {
            a.iter()
                .map(|t| t.as_str() == Some("sliding_attention"))
                .collect::<Vec<_>>()
        });
        let sliding_window = match &swa_layers {
            Some(l) if l.iter().any(|&b| b) => c
                .get("sliding_window")
                .and_then(Json::as_u64)
                .map(|v| v as usize),
            Some(_) => None,
            None => sliding_window,
        };
        let moe = hf_moe(c, arch)?;
        let mla =
            if (arch.starts_with("deepseek") && arch != "deepseek_v4") || arch == "glm_moe_dsa" {
                Some(MlaConfig {
                    q_lora_rank: c
                        .get("q_lora_rank")
                        .and_then(Json::as_u64)
                        .map(|v| v as usize),
                    kv_lora_rank: u("kv_lora_rank")?,
                    nope: u("qk_nope_head_dim")?,
                    rope: u("qk_rope_head_dim")?,
                    v_dim: u("v_head_dim")?,
                    dsa: hf_dsa(c, arch, n_layer)?,
                })
            } else {
                None
            };
        let rope_style = match c.get("rope_interleave").and_then(Json::as_bool) {
            Some(false) => RopeStyle::Neox,
            _ => rope_style,
        };
        let rope_dim = match &mla {
            Some(m) => m.rope,
            None => (head_dim as f32 * partial) as usize,
        };
        let hybrid = matches!(arch, "qwen3_next" | "qwen3_5" | "qwen3_5_moe");
        let linear = if hybrid {
            let types = c.get("layer_types").and_then(Json::as_array).map(|a| {
                a.iter()
                    .map(|t| t.as_str() == Some("linear_attention"))
                    .collect::<Vec<_>>()
            });
            let l = LinearConfig {
                conv_kernel: u("linear_conv_kernel_dim")?,
                n_k_heads: u("linear_num_key_heads")?,
                n_v_heads: u("linear_num_value_heads")?,
                k_dim: u("linear_key_head_dim")?,
                v_dim: u("linear_value_head_dim")?,
                layers: linear_layers(types, u("full_attention_interval").unwrap_or(4), n_layer),
                tiled: false,
            };
            l.check(n_layer)?;
            Some(l)
        } else {
            None
        };
        let lightning = if arch == "minimax" {
            Some(hf_lightning(c, n_layer)?)
        } else {
            None
        };
        Ok(ModelConfig {
            arch: arch.to_string(),
            n_embd,
            n_layer,
            n_head,
            n_kv_head: u("num_key_value_heads").unwrap_or(n_head),
            head_dim,
            n_ff: u("intermediate_size").unwrap_or(0),
            n_vocab: u("vocab_size")?,
            n_ctx_train,
            rms_eps: f(c, "rms_norm_eps").unwrap_or(1e-6),
            rope: Rope {
                theta,
                dim: rope_dim,
                style: rope_style,
                scaling,
                freq_factors: None,
            },
            sliding_window,
            swa_layers,
            moe,
            mla,
            linear,
            attn_gate: hybrid,
            norm_plus_one: hybrid,
            lightning,
        })
    }

    /// Whether layer `i` uses lightning attention (MiniMax).
    pub fn is_lightning(&self, i: usize) -> bool {
        self.lightning
            .as_ref()
            .is_some_and(|l| l.layers.get(i).copied().unwrap_or(false))
    }

    /// Whether layer `i` keeps a fixed-size state rather than KV rows.
    pub fn is_recurrent(&self, i: usize) -> bool {
        self.is_linear(i) || self.is_lightning(i)
    }

    /// Whether layer `i` uses linear attention.
    pub fn is_linear(&self, i: usize) -> bool {
        self.linear
            .as_ref()
            .is_some_and(|l| l.layers.get(i).copied().unwrap_or(false))
    }

    /// Whether layer `i` uses the sliding window.
    pub fn window(&self, i: usize) -> Option<usize> {
        match &self.swa_layers {
            Some(l) if !l.get(i).copied().unwrap_or(false) => None,
            _ => self.sliding_window,
        }
    }

    /// The attention score scale: `1/sqrt(qk width)`, times DeepSeek's YaRN `mscale_all_dim`
    /// correction squared for MLA models.
    pub fn attn_scale(&self) -> f32 {
        match &self.mla {
            None => 1.0 / (self.head_dim as f32).sqrt(),
            Some(m) => {
                let mut s = 1.0 / ((m.nope + m.rope) as f32).sqrt();
                if let RopeScaling::Yarn {
                    factor,
                    mscale_all_dim: Some(ma),
                    ..
                } = self.rope.scaling
                {
                    if ma != 0.0 && factor > 1.0 {
                        let ms = 0.1 * ma * factor.ln() + 1.0;
                        s *= ms * ms;
                    }
                }
                s
            }
        }
    }

    /// KV-cache bytes per token of context at `bytes_per_value` (4 for f32, 2 for f16). MLA
    /// caches hold the compressed latent and the shared rope key, not per-head K and V.
    /// Linear- and lightning-attention layers keep a fixed-size state instead and are not
    /// counted.
    pub fn kv_bytes_per_token(&self, bytes_per_value: usize) -> usize {
        let n = (0..self.n_layer).filter(|&i| !self.is_recurrent(i)).count();
        match &self.mla {
            Some(m) => {
                // DSA layers with an indexer of their own keep its key per position too
                let ik = m
                    .dsa
                    .as_ref()
                    .map_or(0, |d| d.own.iter().filter(|&&o| o).count() * d.head_dim);
                (n * (m.kv_lora_rank + m.rope) + ik) * bytes_per_value
            }
            None => 2 * n * self.n_kv_head * self.head_dim * bytes_per_value,
        }
    }
}

#[cfg(test)]
mod mla_tests {
    use super::*;

    /// The shapes of DeepSeek-V3's published config.json (the routing keys as well).
    pub(super) fn deepseek_v3() -> Json {
        serde_json::from_str(
            r#"{"model_type": "deepseek_v3", "hidden_size": 7168, "num_hidden_layers": 61,
            "num_attention_heads": 128, "num_key_value_heads": 128, "intermediate_size": 18432,
            "moe_intermediate_size": 2048, "vocab_size": 129280, "kv_lora_rank": 512,
            "q_lora_rank": 1536, "qk_nope_head_dim": 128, "qk_rope_head_dim": 64,
            "v_head_dim": 128, "n_routed_experts": 256, "n_shared_experts": 1,
            "num_experts_per_tok": 8, "n_group": 8, "topk_group": 4, "norm_topk_prob": true,
            "routed_scaling_factor": 2.5, "first_k_dense_replace": 3,
            "max_position_embeddings": 163840, "rms_norm_eps": 1e-6,
            "rope_scaling": {"type": "yarn", "factor": 40, "beta_fast": 32, "beta_slow": 1,
              "mscale": 1.0, "mscale_all_dim": 1.0, "original_max_position_embeddings": 4096},
            "rope_theta": 10000}"#,
        )
        .unwrap()
    }

    #[test]
    fn deepseek_v3_kv_cache_is_about_70_kb_per_token_in_16_bit() {
        let cfg = ModelConfig::from_hf(&deepseek_v3(), "deepseek_v3", RopeStyle::Normal).unwrap();
        // 61 layers x (512 latent + 64 rope key) x 2 bytes
        assert_eq!(cfg.kv_bytes_per_token(2), 70_272);
        let moe = cfg.moe.clone().unwrap();
        assert_eq!(
            (moe.n_expert, moe.n_used, moe.n_group, moe.topk_group),
            (256, 8, 8, 4)
        );
        assert_eq!(moe.gating, Gating::Sigmoid);
        // softmax scale: 1/sqrt(192) * (0.1 * ln 40 + 1)^2
        let ms = 0.1 * 40f32.ln() + 1.0;
        assert!((cfg.attn_scale() - ms * ms / 192f32.sqrt()).abs() < 1e-6);
    }
}

#[cfg(test)]
mod dsa_tests {
    use super::*;

    /// DeepSeek-V3's shapes with DeepSeek-V3.2's indexer keys (index_n_heads 64,
    /// index_head_dim 128, index_topk 2048, as its config.json has them).
    fn v32() -> Json {
        let mut c = super::mla_tests::deepseek_v3();
        c["model_type"] = "deepseek_v32".into();
        c["index_n_heads"] = 64.into();
        c["index_head_dim"] = 128.into();
        c["index_topk"] = 2048.into();
        c
    }

    #[test]
    fn deepseek_v32_keeps_an_indexer_key_per_position_and_layer() {
        let cfg = ModelConfig::from_hf(&v32(), "deepseek_v32", RopeStyle::Normal).unwrap();
        let d = cfg.mla.as_ref().unwrap().dsa.as_ref().unwrap();
        assert_eq!((d.n_head, d.head_dim, d.top_k), (64, 128, 2048));
        assert_eq!(d.rope_style, RopeStyle::Neox);
        assert!(d.own.iter().all(|&o| o));
        // 61 layers x (512 latent + 64 rope key + 128 indexer key) x 2 bytes
        assert_eq!(cfg.kv_bytes_per_token(2), 85_888);
    }

    #[test]
    fn glm5_indexer_sharing_follows_transformers_pattern_keys() {
        let mut c = v32();
        c["model_type"] = "glm_moe_dsa".into();
        c["num_hidden_layers"] = 10.into();
        // transformers: layer i has its own indexer when max(i - offset + 1, 0) % freq == 0
        c["index_topk_freq"] = 4.into();
        c["index_skip_topk_offset"] = 3.into();
        let cfg = ModelConfig::from_hf(&c, "glm_moe_dsa", RopeStyle::Normal).unwrap();
        let d = cfg.mla.as_ref().unwrap().dsa.as_ref().unwrap();
        let own: Vec<usize> = (0..10).filter(|&i| d.own[i]).collect();
        assert_eq!(own, [0, 1, 2, 6]);
        assert_eq!(d.rope_style, RopeStyle::Normal);
        // an explicit list wins; a first layer that shares is an error
        c["indexer_types"] = serde_json::json!([
            "full", "shared", "shared", "full", "shared", "shared", "shared", "shared", "shared",
            "shared"
        ]);
        let cfg = ModelConfig::from_hf(&c, "glm_moe_dsa", RopeStyle::Normal).unwrap();
        let own = &cfg.mla.as_ref().unwrap().dsa.as_ref().unwrap().own;
        assert_eq!(own.iter().filter(|&&o| o).count(), 2);
        c["indexer_types"][0] = "shared".into();
        assert!(ModelConfig::from_hf(&c, "glm_moe_dsa", RopeStyle::Normal).is_err());
    }
}

#[cfg(test)]
mod lightning_tests {
    use super::*;

    /// A MiniMax-Text-01-shaped config.json in the original checkpoints' keys: a softmax
    /// layer after every seven lightning layers, residual alpha (2 · 80)^0.25.
    fn text01(n_layer: usize, types: &str) -> Json {
        serde_json::from_str(&format!(
            r#"{{"model_type": "minimax", "hidden_size": 6144, "num_hidden_layers": {n_layer},
            "num_attention_heads": 64, "num_key_value_heads": 8, "head_dim": 128,
            "intermediate_size": 9216, "vocab_size": 200064, "num_local_experts": 32,
            "num_experts_per_tok": 2, "rope_theta": 10000000, "attn_type_list": {types},
            "layernorm_full_attention_alpha": 3.5565, "layernorm_full_attention_beta": 1.0,
            "layernorm_linear_attention_alpha": 3.5565, "layernorm_linear_attention_beta": 1.0,
            "layernorm_mlp_alpha": 3.5565, "layernorm_mlp_beta": 1.0}}"#
        ))
        .unwrap()
    }

    #[test]
    fn minimax_text01_layers_residuals_and_kv_cache() {
        let types: Vec<u8> = (0..80).map(|i| u8::from((i + 1) % 8 == 0)).collect();
        let c = text01(80, &format!("{types:?}"));
        let cfg = ModelConfig::from_hf(&c, "minimax", RopeStyle::Neox).unwrap();
        let lc = cfg.lightning.clone().unwrap();
        assert_eq!(lc.layers.iter().filter(|&&l| l).count(), 70);
        assert!(cfg.is_lightning(0) && !cfg.is_lightning(7) && cfg.is_recurrent(8));
        assert_eq!(lc.full_residual, (3.5565, 1.0));
        assert_eq!(lc.mlp_residual, (3.5565, 1.0));
        // only the 10 softmax layers keep KV rows: 10 x 2 x 8 x 128 x 2 bytes
        assert_eq!(cfg.kv_bytes_per_token(2), 40_960);
        let moe = cfg.moe.unwrap();
        assert!(moe.norm && moe.gating == Gating::Softmax);
    }

    #[test]
    fn minimax_layer_kinds_must_cover_the_layers() {
        let c = text01(80, "[0, 0, 1]");
        assert!(ModelConfig::from_hf(&c, "minimax", RopeStyle::Neox).is_err());
    }

    #[test]
    fn lightning_decays_follow_transformers_slopes() {
        // 4 heads: base 1/4; layer 0 of 5: factor 1 + 1e-5; the last layer barely decays
        let d = LightningConfig::decays(4, 0, 5);
        assert!((d[0] - (-0.25f32 * 1.00001).exp()).abs() < 1e-7);
        assert!((d[3] - (-(0.25f32.powi(4)) * 1.00001).exp()).abs() < 1e-7);
        let last = LightningConfig::decays(4, 4, 5);
        assert!(last.iter().all(|&x| x > 0.99999 && x <= 1.0));
        assert_eq!(LightningConfig::decays(1, 0, 1).len(), 1);
    }
}
