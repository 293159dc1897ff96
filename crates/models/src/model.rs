//! The decoder-only transformer every registered architecture shares: grouped-query or
//! latent attention, then a dense SwiGLU MLP or a mixture of experts. Optional parts (biases,
//! q/k norms, sinks, shared experts, which layers are MoE) are detected from the tensors present.
use crate::config::ModelConfig;
use crate::mla::{Mla, MlaCall, MlaQ};
use crate::moe::{Expert, Mlp, Moe};
use crate::{arch_for_gguf, arch_for_hf, supported_names};
use hearth_core::{AttnJob, AttnParams, Backend, DType, Error, MatJob, Pages, Result, Tensor};
use hearth_formats::{ModelFiles, Source};
use std::collections::HashMap;
use std::sync::Arc;

/// Grouped-query attention (llama-family, Qwen, GLM, MiniMax, gpt-oss).
struct Gqa {
    wq: Tensor, // [n_head*head_dim, n_embd]
    wk: Tensor, // [n_kv_head*head_dim, n_embd]
    wv: Tensor, // [n_kv_head*head_dim, n_embd]
    wo: Tensor, // [n_embd, n_head*head_dim]
    bq: Option<Vec<f32>>,
    bk: Option<Vec<f32>>,
    bv: Option<Vec<f32>>,
    bo: Option<Vec<f32>>,
    /// [head_dim] (per head) or [n_head*head_dim] (MiniMax: over all heads at once)
    q_norm: Option<Vec<f32>>,
    k_norm: Option<Vec<f32>>,
    sinks: Option<Vec<f32>>, // [n_head]
}

enum Attn {
    Gqa(Gqa),
    Mla(Mla),
}

enum Ffn {
    Dense(Mlp),
    Moe(Moe),
}

/// One transformer block's weights.
struct Layer {
    attn_norm: Vec<f32>, // [n_embd]
    attn: Attn,
    ffn_norm: Vec<f32>, // [n_embd]
    ffn: Ffn,
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

/// A paged KV cache: per layer, `n_pages` pages of `page_size` positions each. Sequences own
/// pages through their page tables; a single [`State`] is one page as long as its context.
pub struct KvPool {
    k: Vec<Vec<f32>>, // per layer [n_pages*page_size, kw]
    v: Vec<Vec<f32>>, // per layer [n_pages*page_size, vw] (MLA: empty)
    page_size: usize,
    n_pages: usize,
}

impl KvPool {
    /// Positions per page.
    pub fn page_size(&self) -> usize {
        self.page_size
    }
    /// Pages in the pool.
    pub fn n_pages(&self) -> usize {
        self.n_pages
    }
}

/// Scratch buffers reused across forward passes.
#[derive(Default)]
pub struct Scratch {
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
    /// Each token's KV-cache row in the layer being run.
    rows: Vec<usize>,
}

/// Which logits a sequence of a batch wants back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Want {
    /// None (a prompt chunk before the last).
    None,
    /// The last token's.
    Last,
    /// Every token's.
    All,
}

/// One sequence's part of a batched forward pass.
#[derive(Clone, Copy, Debug)]
pub struct BatchSeq<'a> {
    /// New tokens, appended at positions `pos0..`.
    pub tokens: &'a [u32],
    /// Position of the first new token (the sequence's cached length).
    pub pos0: usize,
    /// The sequence's page table; it must cover `pos0 + tokens.len()` positions.
    pub pages: &'a [u32],
    /// Logits to return.
    pub want: Want,
}

/// Per-sequence state: a contiguous KV cache and reusable scratch buffers.
pub struct State {
    pool: KvPool,
    table: [u32; 1],
    /// Tokens in the cache.
    pub len: usize,
    scratch: Scratch,
}

/// One sequence's rows of a batch, for the attention steps.
pub(crate) struct Seg<'a> {
    pub row0: usize,
    pub n: usize,
    pub pos0: usize,
    pub pages: Pages<'a>,
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
        self.pool.page_size
    }
    /// Forget everything after the first `len` tokens (to reuse a common prefix).
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }
}

struct Loader<'a> {
    t: &'a HashMap<String, Tensor>,
    /// Prepares each weight for its kernels (`Backend::prepare`).
    be: &'a dyn Backend,
}

impl Loader<'_> {
    /// A tensor's values in f32, decoded by the backend.
    fn f32(&self, t: &Tensor) -> Result<Vec<f32>> {
        let mut v = vec![0f32; t.numel()];
        self.be.dequantize(t, &mut v)?;
        Ok(v)
    }
    /// A weight, checked for shape and prepared by the backend.
    fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let mut t = self.raw(name, shape)?;
        self.be.prepare(&mut t);
        Ok(t)
    }
    /// A tensor as stored, checked for shape.
    fn raw(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
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
        self.f32(&self.get(name, &[n])?)
    }
    fn opt_vec(&self, name: &str, n: usize) -> Result<Option<Vec<f32>>> {
        self.opt(name, &[n])?.map(|t| self.f32(&t)).transpose()
    }
    fn has(&self, name: &str) -> bool {
        self.t.contains_key(name)
    }
    fn shape(&self, name: &str) -> Option<&[usize]> {
        self.t.get(name).map(|t| &t.shape[..])
    }
    /// One of several names a tensor goes by.
    fn vec_any(&self, names: &[String], n: usize) -> Result<Vec<f32>> {
        match names.iter().find(|x| self.has(x)) {
            Some(x) => self.vec(x, n),
            None => Err(Error::Format(format!("tensor {} is missing", names[0]))),
        }
    }
    /// Per-expert matrices `[rows, cols]`: slices of a merged 3-D GGUF tensor
    /// `blk.{i}.{stem}.weight`, or HF's separate `blk.{i}.{stem}.{e}.weight`.
    fn experts(
        &self,
        i: usize,
        stem: &str,
        ne: usize,
        rows: usize,
        cols: usize,
    ) -> Result<Vec<Tensor>> {
        let merged = format!("blk.{i}.{stem}.weight");
        if self.has(&merged) {
            let t = self.get(&merged, &[ne, rows, cols])?;
            (0..ne).map(|e| t.slice_outer(e)).collect()
        } else {
            (0..ne)
                .map(|e| self.get(&format!("blk.{i}.{stem}.{e}.weight"), &[rows, cols]))
                .collect()
        }
    }
    /// Per-expert bias vectors from a `[n_expert, len]` tensor.
    fn expert_bias(&self, name: &str, ne: usize, len: usize) -> Result<Option<Vec<Vec<f32>>>> {
        let Some(t) = self.opt(name, &[ne, len])? else {
            return Ok(None);
        };
        Ok(Some(
            self.f32(&t)?.chunks(len).map(|c| c.to_vec()).collect(),
        ))
    }
}

/// A row-major `[rows, cols]` f32 matrix transposed into a tensor of shape `[cols, rows]`.
fn transposed(name: &str, data: &[f32], rows: usize, cols: usize) -> Result<Tensor> {
    let mut t = vec![0f32; rows * cols];
    for r in 0..rows {
        for c in 0..cols {
            t[c * rows + r] = data[r * cols + c];
        }
    }
    Tensor::from_f32(name, vec![cols, rows], &t)
}

impl Model {
    /// The backend the model runs on.
    pub fn backend(&self) -> &dyn Backend {
        &*self.backend
    }

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
                ModelConfig::from_hf(&h.config, spec.name, spec.hf_rope)?
            }
        };
        if let Some(ff) = tensors.get("rope_freqs.weight") {
            let mut v = vec![0f32; ff.numel()];
            backend.dequantize(ff, &mut v)?;
            cfg.rope.freq_factors = Some(v);
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
            || cfg.rope.dim / 2 > hearth_core::MAX_ROPE_PAIRS
        {
            return Err(Error::Format(format!(
                "rope dimension {} does not fit head_dim {hd}",
                cfg.rope.dim
            )));
        }
        let l = Loader {
            t: tensors,
            be: &*backend,
        };
        // the embedding is only read row by row, unless the output head shares it
        let tok_embd = l.raw("token_embd.weight", &[cfg.n_vocab, e])?;
        if cfg.n_ff == 0 {
            cfg.n_ff = l.shape("blk.0.ffn_gate.weight").map_or(0, |s| s[0]);
        }
        let mut layers = Vec::with_capacity(cfg.n_layer.min(4096));
        for i in 0..cfg.n_layer {
            layers.push(load_layer(&l, &cfg, i)?);
        }
        let output = match l.opt("output.weight", &[cfg.n_vocab, e])? {
            Some(o) => o,
            None => {
                let mut o = tok_embd.clone();
                backend.prepare(&mut o);
                o
            }
        };
        let output_norm = l.vec("output_norm.weight", e)?;
        for t in std::iter::once(&output).chain(layers.iter().flat_map(|l| l.tensors())) {
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
        State {
            pool: self.new_pool(1, n_ctx.max(1)),
            table: [0],
            len: 0,
            scratch: Scratch::default(),
        }
    }

    /// Floats per position per layer in the key and value caches.
    fn kv_widths(&self) -> (usize, usize) {
        match &self.cfg.mla {
            Some(m) => (m.kv_lora_rank + m.rope, 0),
            None => {
                let w = self.cfg.n_kv_head * self.cfg.head_dim;
                (w, w)
            }
        }
    }

    /// A paged KV pool of `n_pages` pages of `page_size` positions (f32; the memory is
    /// zero-filled on demand by the OS, so an unused pool costs little).
    pub fn new_pool(&self, n_pages: usize, page_size: usize) -> KvPool {
        let (kw, vw) = self.kv_widths();
        let rows = n_pages * page_size;
        KvPool {
            k: (0..self.cfg.n_layer)
                .map(|_| vec![0f32; rows * kw])
                .collect(),
            v: (0..self.cfg.n_layer)
                .map(|_| vec![0f32; rows * vw])
                .collect(),
            page_size,
            n_pages,
        }
    }

    /// Bytes of KV cache per position (all layers, f32).
    pub fn kv_pool_bytes_per_token(&self) -> usize {
        let (kw, vw) = self.kv_widths();
        self.cfg.n_layer * (kw + vw) * 4
    }

    /// How many layers are mixtures of experts.
    pub fn n_moe_layers(&self) -> usize {
        self.layers
            .iter()
            .filter(|l| matches!(l.ffn, Ffn::Moe(_)))
            .count()
    }

    /// Parameter count.
    pub fn n_params(&self) -> usize {
        self.embd_and_output(|t| t.numel()) + self.count(|t| t.numel(), true) + self.vector_params()
    }

    /// Parameters a decoded token uses: every expert-free weight plus its routed experts.
    pub fn n_active_params(&self) -> usize {
        self.embd_and_output(|t| t.numel())
            + self.count(|t| t.numel(), false)
            + self.vector_params()
    }

    /// An upper bound on the activation memory one token of a batch takes (its hidden states,
    /// attention and FFN intermediates, and a row of logits), to check a batch size against
    /// the memory before running it.
    pub fn activation_bytes_per_token(&self) -> usize {
        let c = &self.cfg;
        let heads = c.n_head.max(c.n_kv_head);
        let head = match &c.mla {
            Some(m) => (m.nope + m.rope + m.v_dim).max(m.kv_lora_rank + m.rope),
            None => c.head_dim,
        };
        let ffn = match &c.moe {
            Some(e) => c.n_ff.saturating_mul(e.n_used.max(1) + 1),
            None => c.n_ff,
        };
        let floats = 6 * c.n_embd + 4 * heads * head + 3 * ffn + c.n_vocab;
        floats * 4
    }

    /// Bytes of weights read for one decoded token: every matrix once (of MoE layers, only
    /// the `n_used` routed experts), plus one embedding row.
    pub fn bytes_per_token(&self) -> usize {
        self.output.bytes().len()
            + self.tok_embd.row_bytes()
            + self.count(|t| t.bytes().len(), false)
    }

    /// The embedding, and the output matrix unless it is the embedding (tied).
    fn embd_and_output(&self, f: impl Fn(&Tensor) -> usize) -> usize {
        let mut n = f(&self.tok_embd);
        if !std::ptr::eq(self.output.bytes().as_ptr(), self.tok_embd.bytes().as_ptr()) {
            n += f(&self.output);
        }
        n
    }

    /// Sum `f` over the layers' matrices: all experts, or only `n_used` of each MoE layer's.
    fn count(&self, f: impl Fn(&Tensor) -> usize, all_experts: bool) -> usize {
        let mut n = 0;
        for l in &self.layers {
            let mut ts = match &l.attn {
                Attn::Gqa(a) => vec![&a.wq, &a.wk, &a.wv, &a.wo],
                Attn::Mla(m) => m.tensors(),
            };
            match &l.ffn {
                Ffn::Dense(m) => ts.extend(m.tensors()),
                Ffn::Moe(m) => {
                    let used = self.cfg.moe.as_ref().map_or(0, |c| c.n_used);
                    ts.push(&m.router);
                    if let Some(s) = &m.shared {
                        ts.extend(s.tensors());
                    }
                    ts.extend(m.shared_gate.iter());
                    let k = if all_experts { m.experts.len() } else { used };
                    for ex in m.experts.iter().take(k) {
                        ts.extend([&ex.gate, &ex.up, &ex.down]);
                    }
                }
            }
            n += ts.into_iter().map(&f).sum::<usize>();
        }
        n
    }

    /// Norm weights and biases (kept in f32).
    fn vector_params(&self) -> usize {
        let len = |v: &Option<Vec<f32>>| v.as_ref().map_or(0, |v| v.len());
        let mut n = self.output_norm.len();
        for l in &self.layers {
            n += l.attn_norm.len() + l.ffn_norm.len();
            match &l.attn {
                Attn::Gqa(a) => {
                    n += [&a.bq, &a.bk, &a.bv, &a.bo, &a.q_norm, &a.k_norm, &a.sinks]
                        .iter()
                        .map(|v| len(v))
                        .sum::<usize>()
                }
                Attn::Mla(m) => {
                    n += m.kv_norm.len();
                    if let MlaQ::LowRank { norm, .. } = &m.q {
                        n += norm.len();
                    }
                }
            }
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
        const MAX_BATCH: usize = 512;
        if tokens.is_empty() {
            return Err(Error::Invalid("no tokens to process".into()));
        }
        let n_ctx = state.n_ctx();
        if state.len + tokens.len() > n_ctx {
            return Err(Error::Invalid(format!(
                "context is full: {} tokens in the cache + {} new exceed the context size of {}",
                state.len,
                tokens.len(),
                n_ctx
            )));
        }
        let nv = self.cfg.n_vocab;
        logits.clear();
        let n_chunks = tokens.len().div_ceil(MAX_BATCH);
        for (ci, chunk) in tokens.chunks(MAX_BATCH).enumerate() {
            let want = if all_logits {
                Want::All
            } else if ci + 1 == n_chunks {
                Want::Last
            } else {
                Want::None
            };
            let seq = BatchSeq {
                tokens: chunk,
                pos0: state.len,
                pages: &state.table,
                want,
            };
            self.forward_batch(&mut state.pool, &mut state.scratch, &[seq], logits)?;
            state.len += chunk.len();
        }
        debug_assert_eq!(logits.len() % nv, 0);
        Ok(())
    }

    /// Run several sequences' new tokens as one batch: the weights are read once for all of
    /// them, attention runs per sequence over its own pages of `pool`. Each row's result is
    /// the same whichever other rows share the batch. The wanted rows' `[n_vocab]` logits (a
    /// sequence's last token, or all its tokens) are appended to `logits` in order.
    pub fn forward_batch(
        &self,
        pool: &mut KvPool,
        scratch: &mut Scratch,
        seqs: &[BatchSeq],
        logits: &mut Vec<f32>,
    ) -> Result<()> {
        let ps = pool.page_size;
        let mut segs = Vec::with_capacity(seqs.len());
        let mut row0 = 0;
        for sq in seqs {
            let n = sq.tokens.len();
            if n == 0 {
                return Err(Error::Invalid("no tokens to process".into()));
            }
            if let Some(&bad) = sq.tokens.iter().find(|&&t| t as usize >= self.cfg.n_vocab) {
                return Err(Error::Invalid(format!(
                    "token id {bad} is outside the vocabulary of {}",
                    self.cfg.n_vocab
                )));
            }
            let end = sq.pos0 + n;
            if end.div_ceil(ps) > sq.pages.len() {
                return Err(Error::Invalid(format!(
                    "{} pages of {ps} positions cannot hold {end} positions",
                    sq.pages.len()
                )));
            }
            if let Some(&bad) = sq.pages.iter().find(|&&p| p as usize >= pool.n_pages) {
                return Err(Error::Invalid(format!(
                    "page {bad} is outside the pool of {} pages",
                    pool.n_pages
                )));
            }
            segs.push(Seg {
                row0,
                n,
                pos0: sq.pos0,
                pages: Pages {
                    table: sq.pages,
                    page_size: ps,
                },
            });
            row0 += n;
        }
        if row0 == 0 {
            return Err(Error::Invalid("no tokens to process".into()));
        }
        let tokens: Vec<u32> = seqs.iter().flat_map(|s| s.tokens.iter().copied()).collect();
        self.forward_rows(&tokens, pool, scratch, &segs)?;
        // the wanted rows, normalised and projected to the vocabulary
        let e = self.cfg.n_embd;
        let s = scratch;
        let mut m = 0;
        for (sq, sg) in seqs.iter().zip(&segs) {
            let rows = match sq.want {
                Want::None => continue,
                Want::Last => sg.row0 + sg.n - 1..sg.row0 + sg.n,
                Want::All => sg.row0..sg.row0 + sg.n,
            };
            let h = resize(&mut s.h, (m + rows.len()) * e);
            h[m * e..].copy_from_slice(&s.x[rows.start * e..rows.end * e]);
            m += rows.len();
        }
        if m > 0 {
            let be = &*self.backend;
            let h = &mut s.h[..m * e];
            be.rms_norm(h, &self.output_norm, self.cfg.rms_eps)?;
            let start = logits.len();
            logits.resize(start + m * self.cfg.n_vocab, 0.0);
            be.matmul(&self.output, h, m, &mut logits[start..])?;
        }
        Ok(())
    }

    /// The transformer body over a batch's rows; leaves the last hidden states in `s.x`.
    fn forward_rows(
        &self,
        tokens: &[u32],
        pool: &mut KvPool,
        s: &mut Scratch,
        segs: &[Seg],
    ) -> Result<()> {
        let c = &self.cfg;
        let be = &*self.backend;
        let n = tokens.len();
        let e = c.n_embd;
        s.pos.clear();
        for sg in segs {
            s.pos.extend(sg.pos0..sg.pos0 + sg.n);
        }
        // each token's KV-cache row (the same in every layer)
        s.rows.clear();
        s.rows.resize(n, 0);
        for sg in segs {
            for t in 0..sg.n {
                s.rows[sg.row0 + t] = sg.pages.row(sg.pos0 + t);
            }
        }
        let x = resize(&mut s.x, n * e);
        for (t, &tok) in tokens.iter().enumerate() {
            be.get_row(&self.tok_embd, tok as usize, &mut x[t * e..(t + 1) * e])?;
        }
        for (li, l) in self.layers.iter().enumerate() {
            let h = resize(&mut s.h, n * e);
            h.copy_from_slice(x);
            be.rms_norm(h, &l.attn_norm, c.rms_eps)?;
            let o = resize(&mut s.o, n * e);
            match &l.attn {
                Attn::Gqa(a) => {
                    let (hd, qd, kvd) =
                        (c.head_dim, c.n_head * c.head_dim, c.n_kv_head * c.head_dim);
                    let q = resize(&mut s.q, n * qd);
                    let k = resize(&mut s.k, n * kvd);
                    let v = resize(&mut s.v, n * kvd);
                    be.matmul_many(&mut [
                        MatJob {
                            w: &a.wq,
                            x: h,
                            n_tok: n,
                            out: &mut *q,
                        },
                        MatJob {
                            w: &a.wk,
                            x: h,
                            n_tok: n,
                            out: &mut *k,
                        },
                        MatJob {
                            w: &a.wv,
                            x: h,
                            n_tok: n,
                            out: &mut *v,
                        },
                    ])?;
                    add_bias(q, a.bq.as_deref());
                    add_bias(k, a.bk.as_deref());
                    add_bias(v, a.bv.as_deref());
                    // per-head norms normalise each head; MiniMax's span all heads at once
                    if let Some(w) = &a.q_norm {
                        be.rms_norm(q, w, c.rms_eps)?;
                    }
                    if let Some(w) = &a.k_norm {
                        be.rms_norm(k, w, c.rms_eps)?;
                    }
                    let rope = hearth_core::RopeArgs {
                        head_dim: hd,
                        positions: &s.pos,
                        inv_freq: &self.inv_freq,
                        style: c.rope.style,
                        mscale: self.rope_mscale,
                    };
                    // the rotation with the cache writes fused
                    let (kc, vc) = (&mut pool.k[li], &mut pool.v[li]);
                    let dest = hearth_core::KvDest {
                        k: kc,
                        v: vc,
                        rows: &s.rows,
                    };
                    be.rope_qk_store(q, c.n_head, k, c.n_kv_head, v, &rope, dest)?;
                    let (kc, vc) = (&pool.k[li], &pool.v[li]);
                    let att = resize(&mut s.att, n * qd);
                    let mut p = AttnParams::gqa(c.n_head, c.n_kv_head, hd, c.attn_scale());
                    p.window = c.window(li);
                    p.sinks = a.sinks.as_deref();
                    let mut jobs = Vec::with_capacity(segs.len());
                    let mut rest = &mut att[..];
                    for sg in segs {
                        let (mine, tail) = rest.split_at_mut(sg.n * qd);
                        rest = tail;
                        jobs.push(AttnJob {
                            q: &q[sg.row0 * qd..(sg.row0 + sg.n) * qd],
                            n_tok: sg.n,
                            pos0: sg.pos0,
                            pages: Some(sg.pages),
                            out: mine,
                        });
                    }
                    be.attention_many(kc, vc, &p, &mut jobs)?;
                    be.matmul(&a.wo, att, n, o)?;
                    add_bias(o, a.bo.as_deref());
                }
                Attn::Mla(m) => {
                    let call = MlaCall {
                        cfg: c,
                        m: c.mla.as_ref().expect("MLA layers have an MLA config"),
                        pos: &s.pos,
                        inv_freq: &self.inv_freq,
                        rope_mscale: self.rope_mscale,
                    };
                    m.forward(be, &call, h, n, segs, &mut pool.k[li], o)?;
                }
            }
            add(x, o);
            let h = resize(&mut s.h, n * e);
            h.copy_from_slice(x);
            be.rms_norm(h, &l.ffn_norm, c.rms_eps)?;
            let o = resize(&mut s.o, n * e);
            match &l.ffn {
                Ffn::Dense(m) => m.forward(be, h, n, o, &mut s.g, &mut s.u)?,
                Ffn::Moe(m) => {
                    let mc = c.moe.as_ref().expect("MoE layers have a MoE config");
                    m.forward(be, mc, h, n, o)?
                }
            }
            add(x, o);
        }
        Ok(())
    }
}

impl Layer {
    fn tensors(&self) -> Vec<&Tensor> {
        let mut v = match &self.attn {
            Attn::Gqa(a) => vec![&a.wq, &a.wk, &a.wv, &a.wo],
            Attn::Mla(m) => m.tensors(),
        };
        match &self.ffn {
            Ffn::Dense(m) => v.extend(m.tensors()),
            Ffn::Moe(m) => v.extend(m.tensors()),
        }
        v
    }
}

fn load_layer(l: &Loader, cfg: &ModelConfig, i: usize) -> Result<Layer> {
    let e = cfg.n_embd;
    let n = |p: &str| format!("blk.{i}.{p}");
    let attn = match &cfg.mla {
        None => {
            let hd = cfg.head_dim;
            let (qd, kvd) = (cfg.n_head * hd, cfg.n_kv_head * hd);
            let norm = |name: &str| -> Result<Option<Vec<f32>>> {
                match l.shape(name) {
                    Some(s) if s.len() == 1 && (s[0] == hd || s[0] == qd || s[0] == kvd) => {
                        l.opt_vec(name, s[0])
                    }
                    Some(s) => Err(Error::Format(format!("tensor {name} has shape {s:?}"))),
                    None => Ok(None),
                }
            };
            let q_norm = norm(&n("attn_q_norm.weight"))?;
            let k_norm = norm(&n("attn_k_norm.weight"))?;
            if q_norm
                .as_ref()
                .is_some_and(|w| w.len() != hd && w.len() != qd)
                || k_norm
                    .as_ref()
                    .is_some_and(|w| w.len() != hd && w.len() != kvd)
            {
                return Err(Error::Format(format!(
                    "layer {i}: q/k norm widths do not fit the heads"
                )));
            }
            Attn::Gqa(Gqa {
                wq: l.get(&n("attn_q.weight"), &[qd, e])?,
                wk: l.get(&n("attn_k.weight"), &[kvd, e])?,
                wv: l.get(&n("attn_v.weight"), &[kvd, e])?,
                wo: l.get(&n("attn_output.weight"), &[e, qd])?,
                bq: l.opt_vec(&n("attn_q.bias"), qd)?,
                bk: l.opt_vec(&n("attn_k.bias"), kvd)?,
                bv: l.opt_vec(&n("attn_v.bias"), kvd)?,
                bo: l.opt_vec(&n("attn_output.bias"), e)?,
                q_norm,
                k_norm,
                sinks: l.opt_vec(&n("attn_sinks.weight"), cfg.n_head)?,
            })
        }
        Some(m) => Attn::Mla(load_mla(l, cfg, m, i)?),
    };
    let ffn = if l.has(&n("ffn_gate_inp.weight")) {
        Ffn::Moe(load_moe(l, cfg, i)?)
    } else {
        let ff = cfg.n_ff;
        Ffn::Dense(Mlp {
            gate: l.get(&n("ffn_gate.weight"), &[ff, e])?,
            up: l.get(&n("ffn_up.weight"), &[ff, e])?,
            down: l.get(&n("ffn_down.weight"), &[e, ff])?,
        })
    };
    Ok(Layer {
        attn_norm: l.vec(&n("attn_norm.weight"), e)?,
        attn,
        // glm4moe and gpt-oss GGUF files call the pre-FFN norm post_attention_norm
        ffn_norm: l.vec_any(&[n("ffn_norm.weight"), n("post_attention_norm.weight")], e)?,
        ffn,
    })
}

fn load_mla(l: &Loader, cfg: &ModelConfig, m: &crate::config::MlaConfig, i: usize) -> Result<Mla> {
    let e = cfg.n_embd;
    let nh = cfg.n_head;
    let n = |p: &str| format!("blk.{i}.{p}");
    let (kvl, nope, rope, vd) = (m.kv_lora_rank, m.nope, m.rope, m.v_dim);
    let qk = nope + rope;
    let q = match m.q_lora_rank {
        Some(r) => MlaQ::LowRank {
            a: l.get(&n("attn_q_a.weight"), &[r, e])?,
            norm: l.vec(&n("attn_q_a_norm.weight"), r)?,
            b: l.get(&n("attn_q_b.weight"), &[nh * qk, r])?,
        },
        None => MlaQ::Full(l.get(&n("attn_q.weight"), &[nh * qk, e])?),
    };
    let (k_b, v_b) = if l.has(&n("attn_k_b.weight")) {
        // newer GGUF files: kv_b already split per head, k_b stored transposed
        let kb = l.get(&n("attn_k_b.weight"), &[nh, kvl, nope])?;
        let vb = l.get(&n("attn_v_b.weight"), &[nh, vd, kvl])?;
        (
            (0..nh)
                .map(|h| kb.slice_outer(h))
                .collect::<Result<Vec<_>>>()?,
            (0..nh)
                .map(|h| vb.slice_outer(h))
                .collect::<Result<Vec<_>>>()?,
        )
    } else {
        // HF and older GGUF files: kv_b [n_head * (nope + v), kv_lora]; each head's value rows
        // are a view, its key rows are transposed once here for the absorbed query
        let kvb = l.get(&n("attn_kv_b.weight"), &[nh * (nope + vd), kvl])?;
        let mut kb = Vec::with_capacity(nh);
        let mut vb = Vec::with_capacity(nh);
        for h in 0..nh {
            let rows = kvb.rows(h * (nope + vd), nope)?;
            kb.push(transposed(
                &format!("{}.k_b[{h}]", kvb.name),
                &l.f32(&rows)?,
                nope,
                kvl,
            )?);
            vb.push(kvb.rows(h * (nope + vd) + nope, vd)?);
        }
        (kb, vb)
    };
    Ok(Mla {
        q,
        kv_a: l.get(&n("attn_kv_a_mqa.weight"), &[kvl + rope, e])?,
        kv_norm: l.vec(&n("attn_kv_a_norm.weight"), kvl)?,
        k_b,
        v_b,
        wo: l.get(&n("attn_output.weight"), &[e, nh * vd])?,
    })
}

fn load_moe(l: &Loader, cfg: &ModelConfig, i: usize) -> Result<Moe> {
    let e = cfg.n_embd;
    let n = |p: &str| format!("blk.{i}.{p}");
    let mc = cfg.moe.as_ref().ok_or_else(|| {
        Error::Format(format!(
            "layer {i} has a router but the metadata names no experts"
        ))
    })?;
    let ne = mc.n_expert;
    let router = l.get(&n("ffn_gate_inp.weight"), &[ne, e])?;
    let gu_hf = n("ffn_gate_up_exps_hf.weight");
    let experts: Vec<Expert> = if l.has(&gu_hf) {
        // gpt-oss HF layout: gate_up [E, n_embd, 2*ff] with gate/up interleaved by column,
        // down [E, ff, n_embd]; both are transposed into [out, in] matrices here.
        let s = l.shape(&gu_hf).unwrap_or(&[]).to_vec();
        if s.len() != 3 || s[0] != ne || s[1] != e || s[2] % 2 != 0 {
            return Err(Error::Format(format!("tensor {gu_hf} has shape {s:?}")));
        }
        let ff = s[2] / 2;
        let gu = l.f32(&l.get(&gu_hf, &[ne, e, 2 * ff])?)?;
        let down = l.f32(&l.get(&n("ffn_down_exps_hf.weight"), &[ne, ff, e])?)?;
        let gub = l.expert_bias(&n("ffn_gate_up_exps_hf.bias"), ne, 2 * ff)?;
        let db = l.expert_bias(&n("ffn_down_exps.bias"), ne, e)?;
        (0..ne)
            .map(|x| {
                let m = &gu[x * e * 2 * ff..(x + 1) * e * 2 * ff];
                let (mut g, mut u) = (vec![0f32; ff * e], vec![0f32; ff * e]);
                for r in 0..e {
                    for f in 0..ff {
                        g[f * e + r] = m[r * 2 * ff + 2 * f];
                        u[f * e + r] = m[r * 2 * ff + 2 * f + 1];
                    }
                }
                let d = &down[x * ff * e..(x + 1) * ff * e];
                let b = gub.as_ref().map(|b| &b[x]);
                Ok(Expert {
                    gate: Tensor::from_f32(&format!("{gu_hf}[{x}].gate"), vec![ff, e], &g)?,
                    up: Tensor::from_f32(&format!("{gu_hf}[{x}].up"), vec![ff, e], &u)?,
                    down: transposed(&format!("blk.{i}.ffn_down_exps_hf[{x}]"), d, ff, e)?,
                    gate_b: b.map(|b| b.iter().step_by(2).copied().collect()),
                    up_b: b.map(|b| b.iter().skip(1).step_by(2).copied().collect()),
                    down_b: db.as_ref().map(|d| d[x].clone()),
                })
            })
            .collect::<Result<_>>()?
    } else {
        let ff = l
            .shape(&n("ffn_gate_exps.weight"))
            .filter(|s| s.len() == 3)
            .map(|s| s[1])
            .or_else(|| l.shape(&n("ffn_gate_exps.0.weight")).map(|s| s[0]))
            .ok_or_else(|| {
                Error::Format(format!("tensor {} is missing", n("ffn_gate_exps.weight")))
            })?;
        let gates = l.experts(i, "ffn_gate_exps", ne, ff, e)?;
        let ups = l.experts(i, "ffn_up_exps", ne, ff, e)?;
        let downs = l.experts(i, "ffn_down_exps", ne, e, ff)?;
        let gb = l.expert_bias(&n("ffn_gate_exps.bias"), ne, ff)?;
        let ub = l.expert_bias(&n("ffn_up_exps.bias"), ne, ff)?;
        let db = l.expert_bias(&n("ffn_down_exps.bias"), ne, e)?;
        gates
            .into_iter()
            .zip(ups)
            .zip(downs)
            .enumerate()
            .map(|(x, ((gate, up), down))| Expert {
                gate,
                up,
                down,
                gate_b: gb.as_ref().map(|b| b[x].clone()),
                up_b: ub.as_ref().map(|b| b[x].clone()),
                down_b: db.as_ref().map(|b| b[x].clone()),
            })
            .collect()
    };
    let shared = match l.shape(&n("ffn_gate_shexp.weight")) {
        Some(s) if s.len() == 2 => {
            let sff = s[0];
            Some(Mlp {
                gate: l.get(&n("ffn_gate_shexp.weight"), &[sff, e])?,
                up: l.get(&n("ffn_up_shexp.weight"), &[sff, e])?,
                down: l.get(&n("ffn_down_shexp.weight"), &[e, sff])?,
            })
        }
        Some(s) => return Err(Error::Format(format!("ffn_gate_shexp has shape {s:?}"))),
        None => None,
    };
    Ok(Moe {
        router,
        router_b: l.opt_vec(&n("ffn_gate_inp.bias"), ne)?,
        score_b: l.opt_vec(&n("exp_probs_b.bias"), ne)?,
        experts,
        shared,
        shared_gate: l.opt(&n("ffn_gate_inp_shexp.weight"), &[1, e])?,
    })
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
