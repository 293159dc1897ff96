//! DeepSeek-V4 (`deepseek_v4`: V4-Flash, V4-Pro), after transformers 5.23's
//! `modeling_deepseek_v4.py`:
//! - `hc_mult` residual streams (manifold-constrained hyper-connections): each block reads a
//!   sigmoid-weighted mix of the streams and writes its output back to every stream (`post`)
//!   on top of a Sinkhorn-normalised (doubly stochastic) mix of them (`comb`); a last mix
//!   (`hc_head`) collapses them before the output norm;
//! - attention ([`crate::dsv4_attn`]): one shared K=V head, sliding window, sinks, a grouped
//!   low-rank output projection, and on compressed layers (CSA, HCA) the compressed entries;
//! - MoE with sqrt-softplus scores, hash routing (a token → experts table) in the first
//!   layers, and SwiGLU with clamped pre-activations in the experts and the shared expert.
//!
//! The matrices run on the backend (`matmul`); the per-token logic (streams, compressors,
//! sparse attention over a few rows, routing) runs on the host over downloaded rows.
use crate::config::json_usize;
use crate::dsv4_attn::{Compressor, Layout, V4Attn, V4Indexer, V4State, rows_per_page};
use hearth_core::{Backend, DType, Error, Result, Tensor};
use serde_json::Value as Json;
use std::collections::HashMap;

/// The attention kind of a layer.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Kind {
    Sliding,
    /// Compressed sparse attention (overlapping windows, a lightning indexer).
    Csa,
    /// Heavily compressed attention.
    Hca,
}

/// DeepSeek-V4's shapes beyond [`crate::ModelConfig`].
#[derive(Clone, Debug)]
pub(crate) struct V4Cfg {
    pub n_embd: usize,
    pub n_head: usize,
    pub head_dim: usize,
    pub rope_dim: usize,
    pub q_lora: usize,
    pub o_groups: usize,
    pub o_lora: usize,
    pub n_hc: usize,
    pub sinkhorn_iters: usize,
    pub hc_eps: f32,
    pub eps: f32,
    pub window: usize,
    pub kinds: Vec<Kind>,
    pub hash: Vec<bool>,
    pub rate_csa: usize,
    pub rate_hca: usize,
    pub idx_heads: usize,
    pub idx_dim: usize,
    pub idx_topk: usize,
    pub n_expert: usize,
    pub n_used: usize,
    pub n_ff: usize,
    pub routed_scale: f32,
    pub swiglu_limit: f32,
    pub n_vocab: usize,
    /// Inverse frequencies of sliding layers (`main`) and of compressed ones (`compress`).
    pub inv_main: Vec<f32>,
    pub inv_comp: Vec<f32>,
    /// The compressed layers' RoPE (for descriptions; `inv_comp` is what runs).
    pub rope_comp: crate::Rope,
}

impl V4Cfg {
    pub fn from_hf(c: &Json, base: &crate::ModelConfig) -> Result<V4Cfg> {
        let u = |k: &str| json_usize(c, k);
        let f = |k: &str, d: f32| c.get(k).and_then(Json::as_f64).map_or(d, |v| v as f32);
        let n_layer = base.n_layer;
        let strs = |k: &str| -> Result<Vec<String>> {
            let a = c
                .get(k)
                .and_then(Json::as_array)
                .ok_or_else(|| Error::Format(format!("config.json: {k} is missing")))?;
            let v: Vec<String> = a
                .iter()
                .filter_map(|x| x.as_str().map(String::from))
                .collect();
            if v.len() != n_layer {
                return Err(Error::Format(format!(
                    "config.json: {k} has {} entries for {n_layer} layers",
                    v.len()
                )));
            }
            Ok(v)
        };
        let kinds = strs("layer_types")?
            .iter()
            .map(|t| match t.as_str() {
                "sliding_attention" => Ok(Kind::Sliding),
                "compressed_sparse_attention" => Ok(Kind::Csa),
                "heavily_compressed_attention" => Ok(Kind::Hca),
                o => Err(Error::Unsupported(format!("deepseek_v4 layer type {o}"))),
            })
            .collect::<Result<Vec<_>>>()?;
        let hash = strs("mlp_layer_types")?
            .iter()
            .map(|t| match t.as_str() {
                "hash_moe" => Ok(true),
                "moe" => Ok(false),
                o => Err(Error::Unsupported(format!(
                    "deepseek_v4 mlp layer type {o}"
                ))),
            })
            .collect::<Result<Vec<_>>>()?;
        let rates = c.get("compress_rates");
        let rate = |k: &str, d: u64| {
            rates
                .and_then(|r| r.get(k))
                .and_then(Json::as_u64)
                .unwrap_or(d) as usize
        };
        let score = c.get("scoring_func").and_then(Json::as_str).unwrap_or("");
        if score != "sqrtsoftplus" {
            return Err(Error::Unsupported(format!(
                "deepseek_v4 scoring_func '{score}' (only sqrtsoftplus)"
            )));
        }
        let head_dim = u("head_dim")?;
        let partial = f("partial_rotary_factor", 0.125);
        let rope_dim = (head_dim as f32 * partial) as usize;
        let rp = c.get("rope_parameters");
        let rope_of = |key: &str, theta: f32| -> Result<(Vec<f32>, crate::Rope)> {
            let mut r = base.rope.clone();
            r.dim = rope_dim;
            r.theta = theta;
            r.freq_factors = None;
            r.scaling = crate::RopeScaling::None;
            if let Some(p) = rp.and_then(|p| p.get(key)) {
                let g = |k: &str| p.get(k).and_then(Json::as_f64).map(|v| v as f32);
                r.theta = g("rope_theta").unwrap_or(theta);
                match p
                    .get("rope_type")
                    .and_then(Json::as_str)
                    .unwrap_or("default")
                {
                    "default" => {}
                    "yarn" => {
                        r.scaling = crate::RopeScaling::Yarn {
                            factor: g("factor").unwrap_or(1.0),
                            original_max_position: g("original_max_position_embeddings")
                                .unwrap_or(base.n_ctx_train as f32),
                            beta_fast: g("beta_fast").unwrap_or(32.0),
                            beta_slow: g("beta_slow").unwrap_or(1.0),
                            // V4 does not scale cos/sin by YaRN's mscale
                            attention_factor: Some(g("attention_factor").unwrap_or(1.0)),
                            mscale: None,
                            mscale_all_dim: None,
                            truncate: p.get("truncate").and_then(Json::as_bool).unwrap_or(true),
                        }
                    }
                    o => return Err(Error::Unsupported(format!("deepseek_v4 rope type {o}"))),
                }
            }
            let (inv, ms) = r.inv_freq();
            if ms != 1.0 {
                return Err(Error::Unsupported("deepseek_v4 rope with an mscale".into()));
            }
            Ok((inv, r))
        };
        let (inv_comp, rope_comp) = rope_of("compress", f("compress_rope_theta", 160000.0))?;
        let cfg = V4Cfg {
            n_embd: base.n_embd,
            n_head: base.n_head,
            head_dim,
            rope_dim,
            q_lora: u("q_lora_rank")?,
            o_groups: u("o_groups")?,
            o_lora: u("o_lora_rank")?,
            n_hc: u("hc_mult")?,
            sinkhorn_iters: c
                .get("hc_sinkhorn_iters")
                .and_then(Json::as_u64)
                .unwrap_or(20) as usize,
            hc_eps: f("hc_eps", 1e-6),
            eps: base.rms_eps,
            window: u("sliding_window")?,
            kinds,
            hash,
            rate_csa: rate("compressed_sparse_attention", 4),
            rate_hca: rate("heavily_compressed_attention", 128),
            idx_heads: u("index_n_heads")?,
            idx_dim: u("index_head_dim")?,
            idx_topk: u("index_topk")?,
            n_expert: u("n_routed_experts")?,
            n_used: u("num_experts_per_tok")?,
            n_ff: u("moe_intermediate_size")?,
            routed_scale: f("routed_scaling_factor", 1.0),
            swiglu_limit: f("swiglu_limit", f32::INFINITY),
            n_vocab: base.n_vocab,
            inv_main: rope_of("main", f("rope_theta", 10000.0))?.0,
            inv_comp,
            rope_comp,
        };
        cfg.checked(base)
    }

    /// The configuration of a GGUF file of llama.cpp's `deepseek4` (keys as its converter,
    /// conversion/deepseek.py, writes them); `has` says which tensors the file holds (CSA layers
    /// are those with an indexer).
    pub fn from_gguf(
        g: &hearth_formats::GgufFile,
        base: &crate::ModelConfig,
        has: &dyn Fn(&str) -> bool,
    ) -> Result<V4Cfg> {
        use hearth_formats::gguf::Value;
        let get = |k: &str| g.get(&format!("deepseek4.{k}"));
        let u = |k: &str| -> Result<usize> {
            get(k)
                .and_then(Value::as_u64)
                .map(|v| v as usize)
                .ok_or_else(|| Error::Format(format!("GGUF metadata deepseek4.{k} is missing")))
        };
        let f = |k: &str| get(k).and_then(Value::as_f64).map(|v| v as f32);
        let arr = |k: &str| -> Result<Vec<f64>> {
            get(k)
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(Value::as_f64).collect())
                .ok_or_else(|| Error::Format(format!("GGUF metadata deepseek4.{k} is missing")))
        };
        let n_layer = base.n_layer;
        let ratios = arr("attention.compress_ratios")?;
        if ratios.len() != n_layer {
            return Err(Error::Format(format!(
                "deepseek4.attention.compress_ratios has {} entries for {n_layer} layers",
                ratios.len()
            )));
        }
        let (mut rate_csa, mut rate_hca) = (None, None);
        let mut kinds = Vec::with_capacity(n_layer);
        for (i, &r) in ratios.iter().enumerate() {
            let r = r as usize;
            let (k, slot) = match (r, has(&format!("blk.{i}.indexer.proj.weight"))) {
                (0, _) => (Kind::Sliding, None),
                (_, true) => (Kind::Csa, Some(&mut rate_csa)),
                (_, false) => (Kind::Hca, Some(&mut rate_hca)),
            };
            if let Some(slot) = slot {
                if slot.is_some_and(|x| x != r) {
                    return Err(Error::Unsupported(format!(
                        "deepseek4: layers of one kind with compress ratios {} and {r}",
                        slot.unwrap_or(0)
                    )));
                }
                *slot = Some(r);
            }
            kinds.push(k);
        }
        let n_hash = u("hash_layer_count")?;
        let clamp = arr("swiglu_clamp_exp")?;
        let limit = clamp.first().copied().unwrap_or(f64::INFINITY) as f32;
        if clamp
            .iter()
            .chain(&arr("swiglu_clamp_shexp")?)
            .any(|&x| x as f32 != limit)
        {
            return Err(Error::Unsupported(
                "deepseek4: SwiGLU clamps that differ between layers".into(),
            ));
        }
        if u("expert_gating_func")? != 4 {
            return Err(Error::Unsupported(
                "deepseek4 routing other than sqrt-softplus".into(),
            ));
        }
        let rope_dim = u("rope.dimension_count")?;
        let mut main = base.rope.clone();
        main.dim = rope_dim;
        main.freq_factors = None;
        main.scaling = crate::RopeScaling::None;
        let mut comp = main.clone();
        comp.theta = f("attention.compress_rope_freq_base").unwrap_or(160000.0);
        if let crate::RopeScaling::Yarn { .. } = base.rope.scaling {
            comp.scaling = base.rope.scaling.clone();
            if let crate::RopeScaling::Yarn {
                attention_factor, ..
            } = &mut comp.scaling
            {
                // V4 does not scale cos/sin by YaRN's mscale
                *attention_factor = Some(1.0);
            }
        }
        let moe = base
            .moe
            .as_ref()
            .ok_or_else(|| Error::Format("deepseek4: no experts".into()))?;
        let cfg = V4Cfg {
            n_embd: base.n_embd,
            n_head: base.n_head,
            head_dim: base.head_dim,
            rope_dim,
            q_lora: u("attention.q_lora_rank")?,
            o_groups: u("attention.output_group_count")?,
            o_lora: u("attention.output_lora_rank")?,
            n_hc: u("hyper_connection.count")?,
            sinkhorn_iters: u("hyper_connection.sinkhorn_iterations")?,
            hc_eps: f("hyper_connection.epsilon").unwrap_or(1e-6),
            eps: base.rms_eps,
            window: u("attention.sliding_window")?,
            hash: (0..n_layer).map(|i| i < n_hash).collect(),
            kinds,
            rate_csa: rate_csa.unwrap_or(4),
            rate_hca: rate_hca.unwrap_or(128),
            idx_heads: u("attention.indexer.head_count")?,
            idx_dim: u("attention.indexer.key_length")?,
            idx_topk: u("attention.indexer.top_k")?,
            n_expert: moe.n_expert,
            n_used: moe.n_used,
            n_ff: u("expert_feed_forward_length")?,
            routed_scale: f("expert_weights_scale").unwrap_or(1.0),
            swiglu_limit: limit,
            n_vocab: base.n_vocab,
            inv_main: main.inv_freq().0,
            inv_comp: comp.inv_freq().0,
            rope_comp: comp,
        };
        if u("expert_shared_count").unwrap_or(1) != 1 {
            return Err(Error::Unsupported(
                "deepseek4 with other than one shared expert".into(),
            ));
        }
        cfg.checked(base)
    }

    fn checked(self, base: &crate::ModelConfig) -> Result<V4Cfg> {
        let cfg = self;
        let bad = |what: &str| Err(Error::Format(format!("deepseek_v4: {what}")));
        if cfg.n_hc == 0 || cfg.window == 0 || cfg.rate_csa == 0 || cfg.rate_hca == 0 {
            return bad("hc_mult, sliding_window and the compress rates must be positive");
        }
        if !cfg.rope_dim.is_multiple_of(2)
            || cfg.rope_dim > cfg.head_dim
            || cfg.rope_dim > cfg.idx_dim
        {
            return bad("the rope dimension does not fit the heads");
        }
        if cfg.o_groups == 0 || !(cfg.n_head * cfg.head_dim).is_multiple_of(cfg.o_groups) {
            return bad("o_groups does not divide the heads");
        }
        if cfg.n_used == 0 || cfg.n_used > cfg.n_expert {
            return bad("num_experts_per_tok is not in 1..=n_routed_experts");
        }
        if base.n_kv_head != 1 {
            return bad("one shared key/value head is expected");
        }
        Ok(cfg)
    }

    /// The compress rate of a layer kind (0: sliding only).
    pub fn rate(&self, k: Kind) -> usize {
        match k {
            Kind::Sliding => 0,
            Kind::Csa => self.rate_csa,
            Kind::Hca => self.rate_hca,
        }
    }
}

/// The host helpers' view of a matrix: `w [rows, cols] @ x [n, cols] -> [n, rows]` on `be`.
pub(crate) fn mm(be: &dyn Backend, w: &Tensor, x: &[f32], n: usize) -> Result<Vec<f32>> {
    let rows = w.shape[0];
    let xb = be.upload_new(x)?;
    let mut ob = be.alloc(n * rows)?;
    be.matmul(w, xb.view(), n, ob.view_mut())?;
    let mut out = vec![0f32; n * rows];
    be.download(ob.view(), &mut out)?;
    Ok(out)
}

/// RMSNorm of each `w.len()`-wide row of `x` (unweighted when `w` is empty, width `width`).
pub(crate) fn rms_rows(x: &mut [f32], width: usize, w: &[f32], eps: f32) {
    for r in x.chunks_exact_mut(width) {
        let ss: f32 = r.iter().map(|v| v * v).sum::<f32>() / width as f32;
        let s = 1.0 / (ss + eps).sqrt();
        if w.is_empty() {
            r.iter_mut().for_each(|v| *v *= s);
        } else {
            r.iter_mut().zip(w).for_each(|(v, g)| *v = g * (*v * s));
        }
    }
}

/// Interleaved RoPE on the trailing `2 * inv.len()` channels of a `[.., width]` row at `pos`,
/// by `sign` × the angle (−1 undoes it).
pub(crate) fn rope_tail(x: &mut [f32], inv: &[f32], pos: usize, sign: f32) {
    let r = 2 * inv.len();
    let start = x.len() - r;
    for (i, &f) in inv.iter().enumerate() {
        let a = pos as f32 * f;
        let (s, c) = (a.sin() * sign, a.cos());
        let (x0, x1) = (x[start + 2 * i], x[start + 2 * i + 1]);
        x[start + 2 * i] = x0 * c - x1 * s;
        x[start + 2 * i + 1] = x1 * c + x0 * s;
    }
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// A tensor as host floats (vectors and small tables).
pub(crate) fn host(
    be: &dyn Backend,
    t: &HashMap<String, Tensor>,
    name: &str,
    n: usize,
) -> Result<Vec<f32>> {
    let w = t
        .get(name)
        .ok_or_else(|| Error::Format(format!("tensor {name} is missing")))?;
    if w.numel() != n {
        return Err(Error::Format(format!(
            "{name} has shape {:?}, expected {n} values",
            w.shape
        )));
    }
    let mut v = vec![0f32; n];
    be.dequantize(w, &mut v)?;
    Ok(v)
}

/// One hyper-connection's weights: `fn [(2 + n) * n, n * n_embd]`, `base [(2 + n) * n]`,
/// `scale [3]` (the head's: `fn [n, n * n_embd]`, `base [n]`, `scale [1]`).
pub(crate) struct Hc {
    pub f: Tensor,
    pub base: Vec<f32>,
    pub scale: Vec<f32>,
}

/// A SwiGLU expert `down(silu(min(gate x, l)) * clamp(up x, ±l))`.
pub(crate) struct Expert {
    pub gate: Tensor,
    pub up: Tensor,
    pub down: Tensor,
}

pub(crate) struct V4Ffn {
    pub router: Tensor, // [n_expert, n_embd]
    /// The score-routed layers' correction bias (chooses, does not weight).
    pub bias: Option<Vec<f32>>,
    /// The hash-routed layers' table `[n_vocab, n_used]`.
    pub tid2eid: Option<Vec<u32>>,
    pub experts: Vec<Expert>,
    pub shared: Expert,
}

pub(crate) struct V4Layer {
    pub kind: Kind,
    pub attn_norm: Vec<f32>,
    pub ffn_norm: Vec<f32>,
    pub hc_attn: Hc,
    pub hc_ffn: Hc,
    pub attn: V4Attn,
    pub ffn: V4Ffn,
}

/// DeepSeek-V4's body (the embedding, output norm and head stay the model's).
pub(crate) struct V4 {
    pub cfg: V4Cfg,
    pub layers: Vec<V4Layer>,
    pub head: Hc,
}

/// A matrix on `be`, prepared for its kernels.
fn mat(
    be: &dyn Backend,
    t: &HashMap<String, Tensor>,
    name: &str,
    shape: &[usize],
) -> Result<Tensor> {
    let w = t
        .get(name)
        .ok_or_else(|| Error::Format(format!("tensor {name} is missing")))?;
    if w.shape != shape {
        return Err(Error::Format(format!(
            "{name} has shape {:?}, expected {shape:?}",
            w.shape
        )));
    }
    let mut w = w.clone();
    be.prepare(&mut w);
    Ok(w)
}

fn expert(be: &dyn Backend, t: &HashMap<String, Tensor>, stem: &str, c: &V4Cfg) -> Result<Expert> {
    let n = |p: &str| stem.replace("{}", p);
    Ok(Expert {
        gate: mat(be, t, &n("ffn_gate"), &[c.n_ff, c.n_embd])?,
        up: mat(be, t, &n("ffn_up"), &[c.n_ff, c.n_embd])?,
        down: mat(be, t, &n("ffn_down"), &[c.n_embd, c.n_ff])?,
    })
}

impl V4 {
    pub fn load(be: &dyn Backend, t: &HashMap<String, Tensor>, cfg: V4Cfg) -> Result<V4> {
        let c = &cfg;
        let (e, nh) = (c.n_embd, c.n_hc);
        let hc = |p: &str, rows: usize, nscale: usize| -> Result<Hc> {
            Ok(Hc {
                f: mat(be, t, &format!("{p}_fn.weight"), &[rows, nh * e])?,
                base: host(be, t, &format!("{p}_base.weight"), rows)?,
                scale: host(be, t, &format!("{p}_scale.weight"), nscale)?,
            })
        };
        let mut layers = Vec::with_capacity(c.kinds.len());
        for (i, &kind) in c.kinds.iter().enumerate() {
            let n = |p: &str| format!("blk.{i}.{p}");
            let qd = c.n_head * c.head_dim;
            let comp = |pre: &str, dim: usize, rate: usize, overlap: bool| -> Result<Compressor> {
                let w = if overlap { 2 * dim } else { dim };
                Ok(Compressor {
                    kv: mat(be, t, &n(&format!("{pre}_kv.weight")), &[w, e])?,
                    gate: mat(be, t, &n(&format!("{pre}_gate.weight")), &[w, e])?,
                    ape: host(be, t, &n(&format!("{pre}_ape.weight")), rate * w)?,
                    norm: host(be, t, &n(&format!("{pre}_norm.weight")), dim)?,
                    dim,
                    rate,
                    overlap,
                })
            };
            let rate = c.rate(kind);
            let attn = V4Attn {
                q_a: mat(be, t, &n("attn_q_a.weight"), &[c.q_lora, e])?,
                q_norm: host(be, t, &n("attn_q_a_norm.weight"), c.q_lora)?,
                q_b: mat(be, t, &n("attn_q_b.weight"), &[qd, c.q_lora])?,
                kv: mat(be, t, &n("attn_kv.weight"), &[c.head_dim, e])?,
                kv_norm: host(be, t, &n("attn_kv_a_norm.weight"), c.head_dim)?,
                o_a: mat(
                    be,
                    t,
                    &n("attn_output_a.weight"),
                    &[c.o_groups * c.o_lora, qd / c.o_groups],
                )?,
                o_b: mat(
                    be,
                    t,
                    &n("attn_output_b.weight"),
                    &[e, c.o_groups * c.o_lora],
                )?,
                sinks: host(be, t, &n("attn_sinks.weight"), c.n_head)?,
                comp: match kind {
                    Kind::Sliding => None,
                    Kind::Csa => Some(comp("attn_compressor", c.head_dim, rate, true)?),
                    Kind::Hca => Some(comp("attn_compressor", c.head_dim, rate, false)?),
                },
                idx: match kind {
                    Kind::Csa => Some(V4Indexer {
                        comp: comp("indexer_compressor", c.idx_dim, rate, true)?,
                        q_b: mat(
                            be,
                            t,
                            &n("indexer.attn_q_b.weight"),
                            &[c.idx_heads * c.idx_dim, c.q_lora],
                        )?,
                        proj: mat(be, t, &n("indexer.proj.weight"), &[c.idx_heads, e])?,
                    }),
                    _ => None,
                },
            };
            let tid2eid = match c.hash[i] {
                false => None,
                true => Some(table(t, &n("ffn_gate_tid2eid.weight"), c)?),
            };
            let bias = match c.hash[i] {
                true => None,
                false => Some(host(be, t, &n("exp_probs_b.bias"), c.n_expert)?),
            };
            let experts = match t.contains_key(&n("ffn_gate_exps.weight")) {
                // a GGUF file's merged [n_expert, rows, cols] tensors
                true => {
                    let m = |p: &str, r: usize, k: usize| -> Result<Vec<Tensor>> {
                        let w = mat(be, t, &n(&format!("{p}_exps.weight")), &[c.n_expert, r, k])?;
                        (0..c.n_expert).map(|x| w.slice_outer(x)).collect()
                    };
                    let (g, u, d) = (
                        m("ffn_gate", c.n_ff, e)?,
                        m("ffn_up", c.n_ff, e)?,
                        m("ffn_down", e, c.n_ff)?,
                    );
                    g.into_iter()
                        .zip(u)
                        .zip(d)
                        .map(|((gate, up), down)| Expert { gate, up, down })
                        .collect()
                }
                false => (0..c.n_expert)
                    .map(|x| expert(be, t, &format!("blk.{i}.{{}}_exps.{x}.weight"), c))
                    .collect::<Result<Vec<_>>>()?,
            };
            let ffn = V4Ffn {
                router: mat(be, t, &n("ffn_gate_inp.weight"), &[c.n_expert, e])?,
                bias,
                tid2eid,
                experts,
                shared: expert(be, t, &format!("blk.{i}.{{}}_shexp.weight"), c)?,
            };
            let rows = (2 + nh) * nh;
            layers.push(V4Layer {
                kind,
                attn_norm: host(be, t, &n("attn_norm.weight"), e)?,
                ffn_norm: host(be, t, &n("ffn_norm.weight"), e)?,
                hc_attn: hc(&n("hc_attn"), rows, 3)?,
                hc_ffn: hc(&n("hc_ffn"), rows, 3)?,
                attn,
                ffn,
            });
        }
        let head = hc("output_hc", nh, 1)?;
        Ok(V4 { cfg, layers, head })
    }

    /// The per-sequence state: each layer's `n_slots` slots (windows and compressor rows),
    /// then each layer's paged compressed entries (compressor, indexer) for `n_pages` pages of
    /// `page_size` positions.
    pub fn caches(
        &self,
        be: &dyn Backend,
        n_pages: usize,
        page_size: usize,
        n_slots: usize,
    ) -> Result<Vec<crate::LayerCache>> {
        let c = &self.cfg;
        let over = || Error::Invalid(format!("{n_pages} pages or {n_slots} slots overflow"));
        let mut v = Vec::with_capacity(2 * c.kinds.len());
        for &k in &c.kinds {
            let size = Layout::new(c, k).size;
            v.push(crate::LayerCache::Recurrent {
                s: be.alloc(size.checked_mul(n_slots).ok_or_else(over)?)?,
                size,
            });
        }
        for &k in &c.kinds {
            let rows = rows_per_page(page_size, c.rate(k))
                .checked_mul(n_pages)
                .ok_or_else(over)?;
            let iw = if k == Kind::Csa { c.idx_dim } else { 0 };
            v.push(crate::LayerCache::Latent {
                c: be.alloc(rows.checked_mul(c.head_dim).ok_or_else(over)?)?,
                ik: be.alloc(rows * iw)?,
            });
        }
        Ok(v)
    }

    /// Bytes per position of context: the compressed entries (f32), rounded up.
    pub fn kv_bytes_per_token(&self) -> usize {
        let per: f64 = self
            .cfg
            .kinds
            .iter()
            .map(|&k| Layout::per_token_and_fixed(&self.cfg, k).0)
            .sum();
        (4.0 * per).ceil() as usize
    }

    /// Bytes of compressed entries a pool allocates per page of `page_size` positions.
    pub fn kv_bytes_per_page(&self, page_size: usize) -> usize {
        let c = &self.cfg;
        c.kinds
            .iter()
            .map(|&k| {
                let iw = if k == Kind::Csa { c.idx_dim } else { 0 };
                4 * rows_per_page(page_size, c.rate(k)) * (c.head_dim + iw)
            })
            .sum()
    }

    /// Bytes per sequence whatever its length: the windows of K=V rows and the compressors'
    /// source rows.
    pub fn state_bytes_per_seq(&self) -> usize {
        4 * self
            .cfg
            .kinds
            .iter()
            .map(|&k| Layout::per_token_and_fixed(&self.cfg, k).1)
            .sum::<usize>()
    }

    /// Matrices (for parameter counts and bytes per token): all, or with only `n_used`
    /// routed experts per layer.
    pub fn tensors(&self, all_experts: bool) -> Vec<&Tensor> {
        let mut v = vec![&self.head.f];
        for l in &self.layers {
            v.extend([&l.hc_attn.f, &l.hc_ffn.f, &l.ffn.router]);
            v.extend(l.attn.tensors());
            let k = if all_experts {
                l.ffn.experts.len()
            } else {
                self.cfg.n_used
            };
            for x in l.ffn.experts.iter().take(k).chain([&l.ffn.shared]) {
                v.extend([&x.gate, &x.up, &x.down]);
            }
        }
        v
    }

    /// Floats kept on the host (norms, biases, sinks, hash tables).
    pub fn vector_params(&self) -> usize {
        let mut n = self.head.base.len() + self.head.scale.len();
        for l in &self.layers {
            n += l.attn_norm.len() + l.ffn_norm.len();
            for h in [&l.hc_attn, &l.hc_ffn] {
                n += h.base.len() + h.scale.len();
            }
            n += l.attn.vector_params();
            n += l.ffn.bias.as_ref().map_or(0, Vec::len);
            n += l.ffn.tid2eid.as_ref().map_or(0, Vec::len);
        }
        n
    }

    /// The streams' pre-mix, post and comb weights of one hyper-connection for each token of
    /// `x [n, n_hc * n_embd]`, and the mixed input `[n, n_embd]`.
    fn hc_pre(
        &self,
        be: &dyn Backend,
        h: &Hc,
        x: &[f32],
        n: usize,
    ) -> Result<(Vec<f32>, Vec<f32>, Vec<f32>)> {
        let (nh, e) = (self.cfg.n_hc, self.cfg.n_embd);
        let eps = self.cfg.hc_eps;
        let mut flat = x.to_vec();
        rms_rows(&mut flat, nh * e, &[], self.cfg.eps);
        let mix = mm(be, &h.f, &flat, n)?;
        let rows = (2 + nh) * nh;
        let (mut post, mut comb, mut col) = (
            vec![0f32; n * nh],
            vec![0f32; n * nh * nh],
            vec![0f32; n * e],
        );
        for t in 0..n {
            let m = &mix[t * rows..(t + 1) * rows];
            let xs = &x[t * nh * e..(t + 1) * nh * e];
            for s in 0..nh {
                let pre = sigmoid(m[s] * h.scale[0] + h.base[s]) + eps;
                post[t * nh + s] = 2.0 * sigmoid(m[nh + s] * h.scale[1] + h.base[nh + s]);
                for (o, v) in col[t * e..(t + 1) * e]
                    .iter_mut()
                    .zip(&xs[s * e..(s + 1) * e])
                {
                    *o += pre * v;
                }
            }
            let cm = &mut comb[t * nh * nh..(t + 1) * nh * nh];
            for i in 0..nh {
                let row: Vec<f32> = (0..nh)
                    .map(|j| m[2 * nh + i * nh + j] * h.scale[2] + h.base[2 * nh + i * nh + j])
                    .collect();
                let mx = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
                let z: f32 = row.iter().map(|v| (v - mx).exp()).sum();
                for j in 0..nh {
                    cm[i * nh + j] = (row[j] - mx).exp() / z + eps;
                }
            }
            let norm_cols = |cm: &mut [f32]| {
                for j in 0..nh {
                    let s: f32 = (0..nh).map(|i| cm[i * nh + j]).sum::<f32>() + eps;
                    (0..nh).for_each(|i| cm[i * nh + j] /= s);
                }
            };
            norm_cols(cm);
            for _ in 1..self.cfg.sinkhorn_iters {
                for i in 0..nh {
                    let s: f32 = cm[i * nh..(i + 1) * nh].iter().sum::<f32>() + eps;
                    cm[i * nh..(i + 1) * nh].iter_mut().for_each(|v| *v /= s);
                }
                norm_cols(cm);
            }
        }
        Ok((post, comb, col))
    }

    /// `x[k] ← post[k] · out + Σ_j comb[j, k] · x[j]` per token.
    fn hc_post(&self, x: &mut [f32], out: &[f32], post: &[f32], comb: &[f32], n: usize) {
        let (nh, e) = (self.cfg.n_hc, self.cfg.n_embd);
        let mut nx = vec![0f32; nh * e];
        for t in 0..n {
            let xs = &mut x[t * nh * e..(t + 1) * nh * e];
            let o = &out[t * e..(t + 1) * e];
            for k in 0..nh {
                let dst = &mut nx[k * e..(k + 1) * e];
                let p = post[t * nh + k];
                dst.iter_mut().zip(o).for_each(|(d, v)| *d = p * v);
                for j in 0..nh {
                    let c = comb[t * nh * nh + j * nh + k];
                    dst.iter_mut()
                        .zip(&xs[j * e..(j + 1) * e])
                        .for_each(|(d, v)| *d += c * v);
                }
            }
            xs.copy_from_slice(&nx);
        }
    }

    /// The body over a batch's rows: `emb [n, n_embd]` in, the collapsed streams `[n, n_embd]`
    /// (before the output norm) out. `state[l]` is layer l's per-sequence state buffer.
    pub fn forward(
        &self,
        be: &dyn Backend,
        tokens: &[u32],
        emb: &[f32],
        segs: &[crate::dsv4_attn::V4Seg],
        states: &mut [V4State],
    ) -> Result<Vec<f32>> {
        let c = &self.cfg;
        let (n, e, nh) = (tokens.len(), c.n_embd, c.n_hc);
        if states.len() != self.layers.len() {
            return Err(Error::Invalid("a pool of another model".into()));
        }
        let mut x = vec![0f32; n * nh * e];
        for t in 0..n {
            for s in 0..nh {
                x[(t * nh + s) * e..(t * nh + s + 1) * e].copy_from_slice(&emb[t * e..(t + 1) * e]);
            }
        }
        for (l, st) in self.layers.iter().zip(states.iter_mut()) {
            let (post, comb, mut h) = self.hc_pre(be, &l.hc_attn, &x, n)?;
            rms_rows(&mut h, e, &l.attn_norm, c.eps);
            let o = l.attn.forward(be, c, l.kind, &h, segs, st)?;
            self.hc_post(&mut x, &o, &post, &comb, n);
            let (post, comb, mut h) = self.hc_pre(be, &l.hc_ffn, &x, n)?;
            rms_rows(&mut h, e, &l.ffn_norm, c.eps);
            let o = self.moe(be, &l.ffn, tokens, &h)?;
            self.hc_post(&mut x, &o, &post, &comb, n);
        }
        // hc_head: a sigmoid mix of the streams
        let mut flat = x.clone();
        rms_rows(&mut flat, nh * e, &[], c.eps);
        let mix = mm(be, &self.head.f, &flat, n)?;
        let mut y = vec![0f32; n * e];
        for t in 0..n {
            for s in 0..nh {
                let p =
                    sigmoid(mix[t * nh + s] * self.head.scale[0] + self.head.base[s]) + c.hc_eps;
                let src = &x[(t * nh + s) * e..(t * nh + s + 1) * e];
                y[t * e..(t + 1) * e]
                    .iter_mut()
                    .zip(src)
                    .for_each(|(d, v)| *d += p * v);
            }
        }
        Ok(y)
    }

    /// `x [n, n_embd]` through a clamped SwiGLU expert.
    fn expert(&self, be: &dyn Backend, x: &Expert, h: &[f32], n: usize) -> Result<Vec<f32>> {
        let l = self.cfg.swiglu_limit;
        let mut g = mm(be, &x.gate, h, n)?;
        let u = mm(be, &x.up, h, n)?;
        for (g, u) in g.iter_mut().zip(&u) {
            let gg = g.min(l);
            *g = gg / (1.0 + (-gg).exp()) * u.clamp(-l, l);
        }
        mm(be, &x.down, &g, n)
    }

    fn moe(&self, be: &dyn Backend, f: &V4Ffn, tokens: &[u32], h: &[f32]) -> Result<Vec<f32>> {
        let c = &self.cfg;
        let (n, e, k) = (tokens.len(), c.n_embd, c.n_used);
        let logits = mm(be, &f.router, h, n)?;
        // per expert: (token, weight)
        let mut by_expert: Vec<Vec<(usize, f32)>> = vec![Vec::new(); c.n_expert];
        for t in 0..n {
            let sc: Vec<f32> = logits[t * c.n_expert..(t + 1) * c.n_expert]
                .iter()
                .map(|&v| {
                    let sp = if v > 20.0 { v } else { v.exp().ln_1p() };
                    sp.sqrt()
                })
                .collect();
            let chosen: Vec<usize> = match (&f.tid2eid, &f.bias) {
                (Some(tab), _) => {
                    let id = tokens[t] as usize;
                    tab[id * k..(id + 1) * k]
                        .iter()
                        .map(|&x| x as usize)
                        .collect()
                }
                (None, b) => {
                    let mut idx: Vec<usize> = (0..c.n_expert).collect();
                    let key = |i: usize| sc[i] + b.as_ref().map_or(0.0, |b| b[i]);
                    idx.sort_by(|&a, &b| key(b).total_cmp(&key(a)));
                    idx.truncate(k);
                    idx
                }
            };
            let sum: f32 = chosen.iter().map(|&i| sc[i]).sum::<f32>() + 1e-20;
            for &i in &chosen {
                by_expert[i].push((t, sc[i] / sum * c.routed_scale));
            }
        }
        let mut out = self.expert(be, &f.shared, h, n)?;
        for (xi, list) in by_expert.iter().enumerate() {
            if list.is_empty() {
                continue;
            }
            let mut hx = Vec::with_capacity(list.len() * e);
            for &(t, _) in list {
                hx.extend_from_slice(&h[t * e..(t + 1) * e]);
            }
            let y = self.expert(be, &f.experts[xi], &hx, list.len())?;
            for (r, &(t, w)) in list.iter().enumerate() {
                out[t * e..(t + 1) * e]
                    .iter_mut()
                    .zip(&y[r * e..(r + 1) * e])
                    .for_each(|(o, v)| *o += w * v);
            }
        }
        Ok(out)
    }
}

/// The hash-routing table `[n_vocab, n_used]` (integers; checked against the experts).
fn table(t: &HashMap<String, Tensor>, name: &str, c: &V4Cfg) -> Result<Vec<u32>> {
    let w = t
        .get(name)
        .ok_or_else(|| Error::Format(format!("tensor {name} is missing")))?;
    if w.shape != [c.n_vocab, c.n_used] {
        return Err(Error::Format(format!(
            "{name} has shape {:?}, expected [{}, {}]",
            w.shape, c.n_vocab, c.n_used
        )));
    }
    let b = w.bytes();
    let v: Vec<i64> = match w.dtype {
        DType::I64 => b
            .chunks_exact(8)
            .map(|x| i64::from_le_bytes(x.try_into().unwrap()))
            .collect(),
        DType::I32 => b
            .chunks_exact(4)
            .map(|x| i32::from_le_bytes(x.try_into().unwrap()) as i64)
            .collect(),
        DType::F32 => b
            .chunks_exact(4)
            .map(|x| f32::from_le_bytes(x.try_into().unwrap()) as i64)
            .collect(),
        d => return Err(Error::Unsupported(format!("{name} of type {d:?}"))),
    };
    v.into_iter()
        .map(|x| {
            u32::try_from(x)
                .ok()
                .filter(|&x| (x as usize) < c.n_expert)
                .ok_or_else(|| Error::Format(format!("{name}: expert {x} is out of range")))
        })
        .collect()
}
