//! The decoder-only transformer with grouped-query attention and a SwiGLU MLP: llama,
//! mistral, qwen2 (attention bias), qwen3 (q/k norm). Optional parts are detected from the
//! tensors present.
use crate::config::ModelConfig;
use crate::{arch_for_gguf, arch_for_hf, supported_names};
use hearth_core::{AttnParams, Backend, DType, Error, Result, Tensor};
use hearth_formats::{ModelFiles, Source};
use std::collections::HashMap;
use std::sync::Arc;

/// One transformer block's weights.
struct Layer {
    attn_norm: Vec<f32>, // [n_embd]
    wq: Tensor,          // [n_head*head_dim, n_embd]
    wk: Tensor,          // [n_kv_head*head_dim, n_embd]
    wv: Tensor,          // [n_kv_head*head_dim, n_embd]
    wo: Tensor,          // [n_embd, n_head*head_dim]
    bq: Option<Vec<f32>>,
    bk: Option<Vec<f32>>,
    bv: Option<Vec<f32>>,
    bo: Option<Vec<f32>>,
    q_norm: Option<Vec<f32>>, // [head_dim]
    k_norm: Option<Vec<f32>>, // [head_dim]
    ffn_norm: Vec<f32>,       // [n_embd]
    gate: Tensor,             // [n_ff, n_embd]
    up: Tensor,               // [n_ff, n_embd]
    down: Tensor,             // [n_embd, n_ff]
}

/// A loaded model: configuration, weights (views into the mapped file) and a backend.
pub struct Model {
    /// Shape and hyper-parameters.
    pub cfg: ModelConfig,
    tok_embd: Tensor, // [n_vocab, n_embd]
    output_norm: Vec<f32>,
    output: Tensor, // [n_vocab, n_embd] (the embedding when tied)
    layers: Vec<Layer>,
    inv_freq: Vec<f32>,
    rope_mscale: f32,
    backend: Arc<dyn Backend>,
}

/// Per-sequence state: the KV cache and reusable scratch buffers.
pub struct State {
    k: Vec<Vec<f32>>, // per layer [n_ctx, n_kv_head*head_dim]
    v: Vec<Vec<f32>>,
    n_ctx: usize,
    /// Tokens in the cache.
    pub len: usize,
    scratch: Scratch,
}

#[derive(Default)]
struct Scratch {
    x: Vec<f32>,
    h: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    att: Vec<f32>,
    o: Vec<f32>,
    g: Vec<f32>,
    u: Vec<f32>,
    pos: Vec<usize>,
}

fn resize(v: &mut Vec<f32>, n: usize) -> &mut [f32] {
    if v.len() < n {
        v.resize(n, 0.0);
    }
    &mut v[..n]
}

impl State {
    /// Context length this state can hold.
    pub fn n_ctx(&self) -> usize {
        self.n_ctx
    }
    /// Forget everything after the first `len` tokens (to reuse a common prefix).
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }
}

fn to_f32(t: &Tensor) -> Vec<f32> {
    let mut v = vec![0f32; t.numel()];
    // Sizes were checked when the tensor was built.
    let _ = hearth_quant::dequantize(t.dtype, t.bytes(), &mut v);
    v
}

struct Loader<'a> {
    t: &'a HashMap<String, Tensor>,
}

impl Loader<'_> {
    fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let t = self
            .t
            .get(name)
            .ok_or_else(|| Error::Format(format!("tensor {name} is missing")))?;
        if t.shape != shape {
            return Err(Error::Format(format!(
                "tensor {name} has shape {:?}, expected {shape:?}",
                t.shape
            )));
        }
        Ok(t.clone())
    }
    fn opt(&self, name: &str, shape: &[usize]) -> Result<Option<Tensor>> {
        if self.t.contains_key(name) {
            self.get(name, shape).map(Some)
        } else {
            Ok(None)
        }
    }
    fn vec(&self, name: &str, n: usize) -> Result<Vec<f32>> {
        Ok(to_f32(&self.get(name, &[n])?))
    }
    fn opt_vec(&self, name: &str, n: usize) -> Result<Option<Vec<f32>>> {
        Ok(self.opt(name, &[n])?.map(|t| to_f32(&t)))
    }
}

impl Model {
    /// Build a model from opened files. Fails with a clear message on an unknown
    /// architecture, a missing or mis-shaped tensor, or a type the backend cannot run.
    pub fn load(files: &ModelFiles, backend: Arc<dyn Backend>) -> Result<Model> {
        let tensors = &files.tensors;
        let embd = tensors
            .get("token_embd.weight")
            .ok_or_else(|| Error::Format("tensor token_embd.weight is missing".into()))?;
        if embd.shape.len() != 2 {
            return Err(Error::Format(format!(
                "token_embd.weight has shape {:?}",
                embd.shape
            )));
        }
        let mut cfg = match &files.source {
            Source::Gguf(g) => {
                let arch = g
                    .architecture()
                    .ok_or_else(|| Error::Format("general.architecture is missing".into()))?;
                let spec = arch_for_gguf(arch).ok_or_else(|| {
                    Error::Unsupported(format!(
                        "architecture '{arch}' (supported: {})",
                        supported_names()
                    ))
                })?;
                ModelConfig::from_gguf(g, arch, spec.gguf_rope, embd.shape[0])?
            }
            Source::Hf(h) => {
                let mt = h
                    .config
                    .get("model_type")
                    .and_then(|v| v.as_str())
                    .unwrap_or("");
                let spec = arch_for_hf(mt).ok_or_else(|| {
                    Error::Unsupported(format!(
                        "architecture '{mt}' (supported: {})",
                        supported_names()
                    ))
                })?;
                ModelConfig::from_hf(&h.config, spec.name)?
            }
        };
        if let Some(ff) = tensors.get("rope_freqs.weight") {
            cfg.rope.freq_factors = Some(to_f32(ff));
        }
        let (e, hd) = (cfg.n_embd, cfg.head_dim);
        if cfg.n_kv_head == 0 || cfg.n_head % cfg.n_kv_head != 0 {
            return Err(Error::Format(format!(
                "{} heads cannot be grouped over {} kv heads",
                cfg.n_head, cfg.n_kv_head
            )));
        }
        if cfg.rope.dim > hd
            || cfg.rope.dim % 2 != 0
            || cfg.rope.dim / 2 > hearth_cpu::MAX_ROPE_PAIRS
        {
            return Err(Error::Format(format!(
                "rope dimension {} does not fit head_dim {hd}",
                cfg.rope.dim
            )));
        }
        let l = Loader { t: tensors };
        let tok_embd = l.get("token_embd.weight", &[cfg.n_vocab, e])?;
        if cfg.n_ff == 0 {
            cfg.n_ff = tensors
                .get("blk.0.ffn_gate.weight")
                .map(|t| t.shape[0])
                .unwrap_or(0);
        }
        let (qd, kvd, ff) = (cfg.n_head * hd, cfg.n_kv_head * hd, cfg.n_ff);
        let mut layers = Vec::with_capacity(cfg.n_layer.min(4096));
        for i in 0..cfg.n_layer {
            let n = |p: &str| format!("blk.{i}.{p}");
            layers.push(Layer {
                attn_norm: l.vec(&n("attn_norm.weight"), e)?,
                wq: l.get(&n("attn_q.weight"), &[qd, e])?,
                wk: l.get(&n("attn_k.weight"), &[kvd, e])?,
                wv: l.get(&n("attn_v.weight"), &[kvd, e])?,
                wo: l.get(&n("attn_output.weight"), &[e, qd])?,
                bq: l.opt_vec(&n("attn_q.bias"), qd)?,
                bk: l.opt_vec(&n("attn_k.bias"), kvd)?,
                bv: l.opt_vec(&n("attn_v.bias"), kvd)?,
                bo: l.opt_vec(&n("attn_output.bias"), e)?,
                q_norm: l.opt_vec(&n("attn_q_norm.weight"), hd)?,
                k_norm: l.opt_vec(&n("attn_k_norm.weight"), hd)?,
                ffn_norm: l.vec(&n("ffn_norm.weight"), e)?,
                gate: l.get(&n("ffn_gate.weight"), &[ff, e])?,
                up: l.get(&n("ffn_up.weight"), &[ff, e])?,
                down: l.get(&n("ffn_down.weight"), &[e, ff])?,
            });
        }
        let output = l
            .opt("output.weight", &[cfg.n_vocab, e])?
            .unwrap_or_else(|| tok_embd.clone());
        let output_norm = l.vec("output_norm.weight", e)?;
        for t in std::iter::once(&output).chain(
            layers
                .iter()
                .flat_map(|l| [&l.wq, &l.wk, &l.wv, &l.wo, &l.gate, &l.up, &l.down]),
        ) {
            if !backend.supports(t.dtype) {
                return Err(Error::Unsupported(format!(
                    "backend {} cannot run {} tensors ({})",
                    backend.name(),
                    t.dtype,
                    t.name
                )));
            }
        }
        let (inv_freq, rope_mscale) = cfg.rope.inv_freq();
        Ok(Model {
            cfg,
            tok_embd,
            output_norm,
            output,
            layers,
            inv_freq,
            rope_mscale,
            backend,
        })
    }

    /// A fresh state with room for `n_ctx` tokens (KV cache in f32).
    pub fn new_state(&self, n_ctx: usize) -> State {
        let w = self.cfg.n_kv_head * self.cfg.head_dim;
        State {
            k: (0..self.cfg.n_layer)
                .map(|_| vec![0f32; n_ctx * w])
                .collect(),
            v: (0..self.cfg.n_layer)
                .map(|_| vec![0f32; n_ctx * w])
                .collect(),
            n_ctx,
            len: 0,
            scratch: Scratch::default(),
        }
    }

    /// Parameter count.
    pub fn n_params(&self) -> usize {
        let mut n = self.tok_embd.numel() + self.output_norm.len();
        if !std::ptr::eq(self.output.bytes().as_ptr(), self.tok_embd.bytes().as_ptr()) {
            n += self.output.numel();
        }
        for l in &self.layers {
            n += [&l.wq, &l.wk, &l.wv, &l.wo, &l.gate, &l.up, &l.down]
                .iter()
                .map(|t| t.numel())
                .sum::<usize>();
            n += l.attn_norm.len() + l.ffn_norm.len();
            n += [&l.bq, &l.bk, &l.bv, &l.bo, &l.q_norm, &l.k_norm]
                .iter()
                .map(|b| b.as_ref().map_or(0, |v| v.len()))
                .sum::<usize>();
        }
        n
    }

    /// Bytes of weights read for one decoded token (every matrix once, plus one embedding row).
    pub fn bytes_per_token(&self) -> usize {
        let mut n = self.output.bytes().len() + self.tok_embd.row_bytes();
        for l in &self.layers {
            n += [&l.wq, &l.wk, &l.wv, &l.wo, &l.gate, &l.up, &l.down]
                .iter()
                .map(|t| t.bytes().len())
                .sum::<usize>();
        }
        n
    }

    /// Weight types and their element counts.
    pub fn quant_mix(&self, files: &ModelFiles) -> Vec<(DType, usize, usize)> {
        let mut m: HashMap<DType, (usize, usize)> = HashMap::new();
        for t in files.tensors.values() {
            let e = m.entry(t.dtype).or_default();
            e.0 += 1;
            e.1 += t.numel();
        }
        let mut v: Vec<_> = m.into_iter().map(|(k, (a, b))| (k, a, b)).collect();
        v.sort_by_key(|x| std::cmp::Reverse(x.2));
        v
    }

    /// Run `tokens` through the model, appending them to `state`'s cache.
    ///
    /// With `all_logits`, `logits` receives `[tokens.len(), n_vocab]`; otherwise only the last
    /// token's `[n_vocab]`. Long inputs are processed in chunks of `max_batch`.
    pub fn forward(
        &self,
        tokens: &[u32],
        state: &mut State,
        all_logits: bool,
        logits: &mut Vec<f32>,
    ) -> Result<()> {
        const MAX_BATCH: usize = 256;
        if tokens.is_empty() {
            return Err(Error::Invalid("no tokens to process".into()));
        }
        if state.len + tokens.len() > state.n_ctx {
            return Err(Error::Invalid(format!(
                "context is full: {} tokens in the cache + {} new exceed the context size of {}",
                state.len,
                tokens.len(),
                state.n_ctx
            )));
        }
        if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= self.cfg.n_vocab) {
            return Err(Error::Invalid(format!(
                "token id {bad} is outside the vocabulary of {}",
                self.cfg.n_vocab
            )));
        }
        let nv = self.cfg.n_vocab;
        logits.clear();
        logits.resize(if all_logits { tokens.len() * nv } else { nv }, 0.0);
        let n_chunks = tokens.len().div_ceil(MAX_BATCH);
        for (ci, chunk) in tokens.chunks(MAX_BATCH).enumerate() {
            let last = ci + 1 == n_chunks;
            let out = if all_logits {
                let s = ci * MAX_BATCH * nv;
                Some(&mut logits[s..s + chunk.len() * nv])
            } else if last {
                Some(&mut logits[..])
            } else {
                None
            };
            self.forward_chunk(chunk, state, out, all_logits)?;
        }
        Ok(())
    }

    fn forward_chunk(
        &self,
        tokens: &[u32],
        st: &mut State,
        out: Option<&mut [f32]>,
        all: bool,
    ) -> Result<()> {
        let c = &self.cfg;
        let be = &*self.backend;
        let n = tokens.len();
        let (e, hd) = (c.n_embd, c.head_dim);
        let (qd, kvd) = (c.n_head * hd, c.n_kv_head * hd);
        let pos0 = st.len;
        let s = &mut st.scratch;
        s.pos.clear();
        s.pos.extend(pos0..pos0 + n);
        let x = resize(&mut s.x, n * e);
        for (t, &tok) in tokens.iter().enumerate() {
            be.get_row(&self.tok_embd, tok as usize, &mut x[t * e..(t + 1) * e])?;
        }
        let attn = AttnParams {
            n_head: c.n_head,
            n_kv_head: c.n_kv_head,
            head_dim: hd,
            scale: 1.0 / (hd as f32).sqrt(),
            window: c.sliding_window,
        };
        for (li, l) in self.layers.iter().enumerate() {
            // attention
            let h = resize(&mut s.h, n * e);
            h.copy_from_slice(x);
            be.rms_norm(h, &l.attn_norm, c.rms_eps);
            let q = resize(&mut s.q, n * qd);
            be.matmul(&l.wq, h, n, q)?;
            add_bias(q, l.bq.as_deref());
            let k = resize(&mut s.k, n * kvd);
            be.matmul(&l.wk, h, n, k)?;
            add_bias(k, l.bk.as_deref());
            let v = resize(&mut s.v, n * kvd);
            be.matmul(&l.wv, h, n, v)?;
            add_bias(v, l.bv.as_deref());
            if let Some(w) = &l.q_norm {
                be.rms_norm(q, w, c.rms_eps);
            }
            if let Some(w) = &l.k_norm {
                be.rms_norm(k, w, c.rms_eps);
            }
            be.rope(
                q,
                c.n_head,
                hd,
                &s.pos,
                &self.inv_freq,
                c.rope.style,
                self.rope_mscale,
            );
            be.rope(
                k,
                c.n_kv_head,
                hd,
                &s.pos,
                &self.inv_freq,
                c.rope.style,
                self.rope_mscale,
            );
            st.k[li][pos0 * kvd..(pos0 + n) * kvd].copy_from_slice(k);
            st.v[li][pos0 * kvd..(pos0 + n) * kvd].copy_from_slice(v);
            let att = resize(&mut s.att, n * qd);
            let end = (pos0 + n) * kvd;
            be.attention(q, &st.k[li][..end], &st.v[li][..end], n, pos0, &attn, att);
            let o = resize(&mut s.o, n * e);
            be.matmul(&l.wo, att, n, o)?;
            add_bias(o, l.bo.as_deref());
            add(x, o);
            // MLP
            let h = resize(&mut s.h, n * e);
            h.copy_from_slice(x);
            be.rms_norm(h, &l.ffn_norm, c.rms_eps);
            let g = resize(&mut s.g, n * c.n_ff);
            be.matmul(&l.gate, h, n, g)?;
            let u = resize(&mut s.u, n * c.n_ff);
            be.matmul(&l.up, h, n, u)?;
            be.silu_mul(g, u);
            let o = resize(&mut s.o, n * e);
            be.matmul(&l.down, g, n, o)?;
            add(x, o);
        }
        st.len += n;
        if let Some(out) = out {
            let rows = if all {
                &mut x[..]
            } else {
                &mut x[(n - 1) * e..]
            };
            be.rms_norm(rows, &self.output_norm, c.rms_eps);
            let m = rows.len() / e;
            be.matmul(&self.output, rows, m, out)?;
        }
        Ok(())
    }
}

fn add(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

fn add_bias(x: &mut [f32], b: Option<&[f32]>) {
    if let Some(b) = b {
        for row in x.chunks_exact_mut(b.len()) {
            add(row, b);
        }
    }
}
