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
    /// Sliding-window attention span, if any.
    pub sliding_window: Option<usize>,
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
                truncate: true,
            },
            Some(o) => return Err(Error::Unsupported(format!("rope scaling type {o}"))),
        };
        Ok(ModelConfig {
            arch: arch.to_string(),
            n_embd,
            n_layer: gusize(g, arch, "block_count")?,
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
            sliding_window: gusize(g, arch, "attention.sliding_window")
                .ok()
                .filter(|&w| w > 0),
        })
    }

    /// From an HF config.json. HF checkpoints always use NeoX-style (rotate-half) RoPE.
    pub fn from_hf(c: &Json, arch: &str) -> Result<ModelConfig> {
        let u = |k: &str| -> Result<usize> {
            c.get(k)
                .and_then(Json::as_u64)
                .map(|v| v as usize)
                .ok_or_else(|| {
                    Error::Format(format!("config.json: {k} is missing or not an integer"))
                })
        };
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
        Ok(ModelConfig {
            arch: arch.to_string(),
            n_embd,
            n_layer: u("num_hidden_layers")?,
            n_head,
            n_kv_head: u("num_key_value_heads").unwrap_or(n_head),
            head_dim,
            n_ff: u("intermediate_size").unwrap_or(0),
            n_vocab: u("vocab_size")?,
            n_ctx_train,
            rms_eps: f(c, "rms_norm_eps").unwrap_or(1e-6),
            rope: Rope {
                theta,
                dim: (head_dim as f32 * partial) as usize,
                style: RopeStyle::Neox,
                scaling,
                freq_factors: None,
            },
            sliding_window,
        })
    }

    /// KV-cache bytes per token of context at `bytes_per_value` (4 for f32, 2 for f16).
    pub fn kv_bytes_per_token(&self, bytes_per_value: usize) -> usize {
        2 * self.n_layer * self.n_kv_head * self.head_dim * bytes_per_value
    }
}
