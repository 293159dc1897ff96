//! The decoder-only transformer every registered architecture shares: grouped-query or
//! latent attention, then a dense SwiGLU MLP or a mixture of experts. Optional parts (biases,
//! q/k norms, sinks, shared experts, which layers are MoE) are detected from the tensors present.
//!
//! The forward pass is written once over backend ops and buffers. Every block's weights have a
//! device (a backend of [`Model::load_placed`]); a block's ops run there, and the hidden state
//! moves only where consecutive blocks sit on different devices, each move counted
//! ([`Model::transfers`]).
mod account;

use crate::config::ModelConfig;
use crate::delta::{Delta, DeltaBufs};
use crate::lightning::{Lightning, LightningBufs};
use crate::load::{Placer, load_layer, vector, weight};
use crate::mla::{Mla, MlaBufs, MlaCall};
use crate::moe::{Mlp, Moe};
use crate::{arch_for_gguf, arch_for_hf, supported_names};

mod v4;
use hearth_core::linear::LightningShape;
use hearth_core::{
    AttnParams, AttnSeg, Backend, Buf, Error, KvFormat, KvType, MatJob, Pages, Result, Tensor,
    ViewMut,
};
use hearth_formats::{ModelFiles, Source};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// Grouped-query attention (llama-family, Qwen, GLM, MiniMax, gpt-oss).
pub(crate) struct Gqa {
    pub wq: Tensor, // [n_head*head_dim, n_embd]
    pub wk: Tensor, // [n_kv_head*head_dim, n_embd]
    pub wv: Tensor, // [n_kv_head*head_dim, n_embd]
    pub wo: Tensor, // [n_embd, n_head*head_dim]
    pub bq: Option<Buf>,
    pub bk: Option<Buf>,
    pub bv: Option<Buf>,
    pub bo: Option<Buf>,
    /// [head_dim] (per head) or [n_head*head_dim] (MiniMax: over all heads at once)
    pub q_norm: Option<Buf>,
    pub k_norm: Option<Buf>,
    pub sinks: Option<Buf>, // [n_head]
}

pub(crate) enum Attn {
    Gqa(Gqa),
    Mla(Mla),
    /// Linear attention (Gated DeltaNet) with a fixed-size state per sequence.
    Delta(Delta),
    /// Lightning attention (MiniMax) with a fixed-size state per sequence.
    Lightning(Lightning),
}

// one per layer: the size difference costs nothing
#[allow(clippy::large_enum_variant)]
pub(crate) enum Ffn {
    Dense(Mlp),
    Moe(Moe),
}

/// One transformer block's weights.
pub(crate) struct Layer {
    pub attn_norm: Buf, // [n_embd]
    pub attn: Attn,
    pub ffn_norm: Buf, // [n_embd]
    pub ffn: Ffn,
    /// Devices of the attention (with its norm and cache) and of the FFN (with its norm and,
    /// unless placed elsewhere, its experts).
    pub dev_attn: usize,
    pub dev_ffn: usize,
}

/// A loaded model: configuration, weights (views into the mapped file) and its devices.
pub struct Model {
    /// Shape and hyper-parameters.
    pub cfg: ModelConfig,
    tok_embd: Tensor, // [n_vocab, n_embd]
    output_norm: Buf,
    output: Tensor, // [n_vocab, n_embd] (the embedding when tied)
    layers: Vec<Layer>,
    inv_freq: Vec<f32>,
    rope_mscale: f32,
    devs: Vec<Arc<dyn Backend>>,
    dev_embd: usize,
    dev_out: usize,
    /// Moves between devices: (count, bytes) by what moved.
    moves: Mutex<BTreeMap<&'static str, (usize, usize)>>,
    /// The KV caches' types (keys, values) of the pools it makes.
    kv: (KvType, KvType),
    /// DeepSeek-V4's body, which replaces `layers` (all on device 0).
    v4: Option<Box<crate::dsv4::V4>>,
}

/// One device's share of a model ([`Model::plan`]).
#[derive(Clone, Debug)]
pub struct DevicePlan {
    /// The backend's name.
    pub name: String,
    /// Its memory in bytes (None: the host's).
    pub memory: Option<u64>,
    /// Bytes of weights it holds.
    pub weight_bytes: usize,
    /// Of `weight_bytes`, those it reads in place from host memory (the mapped file), which
    /// do not take its own memory ([`hearth_core::Backend::weight_bytes_in_place`]).
    pub in_place_bytes: usize,
    /// Bytes of per-sequence state per token of context it holds.
    pub kv_bytes_per_token: usize,
    /// Bytes of fixed-size state per sequence it holds (linear-attention layers).
    pub state_bytes_per_seq: usize,
}

/// What one placeable block of a model ([`Model::load_placed`]'s names: `token_embd`,
/// `output`, `blk.N.attn`, `blk.N.ffn`, `blk.N.ffn_exps`) takes on device 0
/// ([`Model::block_costs`]).
#[derive(Clone, Debug, PartialEq)]
pub struct BlockCost {
    /// The block's name.
    pub name: String,
    /// Bytes of its weights as device 0 holds them.
    pub weight_bytes: usize,
    /// Of `weight_bytes`, those device 0 reads in place from host memory, which do not take
    /// its own memory ([`hearth_core::Backend::weight_bytes_in_place`]).
    pub in_place_bytes: usize,
    /// Bytes of per-sequence state per token of context (an attention block's KV rows).
    pub kv_bytes_per_token: usize,
    /// Bytes of fixed-size state per sequence (linear-attention layers).
    pub state_bytes_per_seq: usize,
}

/// One layer's part of the state a sequence keeps: the kind depends on the layer.
pub enum LayerCache {
    /// Paged key and value rows, `[n_pages * page_size, width]` each.
    Kv {
        /// Keys.
        k: Buf,
        /// Values.
        v: Buf,
    },
    /// Multi-head latent attention's rows: the normalised KV latent and the rotated rope key,
    /// `[n_pages * page_size, kv_lora + rope]`.
    Latent {
        /// The rows.
        c: Buf,
        /// DSA's indexer keys, one row of the indexer's head width per cache row (empty for
        /// layers without an indexer of their own).
        ik: Buf,
    },
    /// A fixed-size state per sequence slot (linear attention), `[n_slots, size]`: it does
    /// not grow with the context, and a sequence finds its own at [`BatchSeq::slot`].
    Recurrent {
        /// The states.
        s: Buf,
        /// Floats per slot.
        size: usize,
    },
}

impl LayerCache {
    /// Bytes it holds.
    pub fn bytes(&self) -> usize {
        4 * match self {
            LayerCache::Kv { k, v } => k.len() + v.len(),
            LayerCache::Latent { c, ik } => c.len() + ik.len(),
            LayerCache::Recurrent { s, .. } => s.len(),
        }
    }
}

/// The per-sequence state of every layer: pages of `page_size` positions for the layers
/// whose state grows with the context, one slot per sequence for the others. Sequences own
/// pages through their page tables; a single [`State`] is one page as long as its context.
pub struct KvPool {
    layers: Vec<LayerCache>,
    page_size: usize,
    n_pages: usize,
    n_slots: usize,
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
    /// Slots for fixed-size state (sequences that can run at once, for recurrent layers).
    pub fn n_slots(&self) -> usize {
        self.n_slots
    }
    /// Each layer's state.
    pub fn layers(&self) -> &[LayerCache] {
        &self.layers
    }
    /// Whether any layer keeps fixed-size (recurrent) state: such state cannot be cut back
    /// to an earlier position, only saved and restored ([`KvPool::save_slot`]).
    pub fn has_recurrent(&self) -> bool {
        self.layers
            .iter()
            .any(|l| matches!(l, LayerCache::Recurrent { .. }))
    }
    /// A copy of slot `slot`'s fixed-size state in every recurrent layer (empty without
    /// such layers), downloaded from the devices.
    pub fn save_slot(&self, devs: &Model, slot: usize) -> Result<Vec<f32>> {
        let mut out = Vec::new();
        for (i, lc) in self.layers.iter().enumerate() {
            if let LayerCache::Recurrent { s, size } = lc {
                let start = out.len();
                out.resize(start + size, 0.0);
                devs.dev(devs.attn_dev(i)).download(
                    s.view().slice(slot * size..(slot + 1) * size),
                    &mut out[start..],
                )?;
            }
        }
        Ok(out)
    }
    /// Put a copy made by [`KvPool::save_slot`] into slot `slot`.
    pub fn restore_slot(&mut self, devs: &Model, slot: usize, saved: &[f32]) -> Result<()> {
        let mut off = 0;
        for (i, lc) in self.layers.iter_mut().enumerate() {
            if let LayerCache::Recurrent { s, size } = lc {
                let src = saved.get(off..off + *size).ok_or_else(|| {
                    Error::Invalid("a saved state does not fit this model".into())
                })?;
                devs.dev(devs.attn_dev(i))
                    .upload(src, s.view_mut().slice(slot * *size..(slot + 1) * *size))?;
                off += *size;
            }
        }
        if off != saved.len() {
            return Err(Error::Invalid(
                "a saved state does not fit this model".into(),
            ));
        }
        Ok(())
    }
}

/// One device's working buffers, reused across forward passes.
#[derive(Default)]
pub(crate) struct DevScratch {
    pub x: Buf,
    pub h: Buf,
    pub q: Buf,
    pub k: Buf,
    pub v: Buf,
    pub att: Buf,
    pub o: Buf,
    pub g: Buf,
    pub u: Buf,
    pub logits: Buf,
    pub ids: Buf,
    pub wts: Buf,
    pub xin: Buf,
    pub sy: Buf,
    pub sg: Buf,
    pub mla: MlaBufs,
    pub delta: DeltaBufs,
    pub lightning: LightningBufs,
    /// Per-row scales of MiniMax's residuals.
    pub scale: Buf,
}

/// Scratch buffers reused across forward passes, per device.
#[derive(Default)]
pub struct Scratch {
    devs: Vec<DevScratch>,
    /// Host staging for moves between devices.
    stage: Vec<f32>,
    pos: Vec<usize>,
    /// Each token's KV-cache row in the layer being run.
    rows: Vec<usize>,
    /// DSA's choice of positions, from the last layer that ran an indexer.
    dsa: crate::mla::DsaSel,
}

impl Scratch {
    /// Device `d`'s buffers.
    pub(crate) fn dev(&mut self, d: usize) -> &mut DevScratch {
        if self.devs.len() <= d {
            self.devs.resize_with(d + 1, Default::default);
        }
        &mut self.devs[d]
    }
}

/// The first `n` values of `b`, grown by `be` when it is shorter (its contents are scratch).
pub(crate) fn sized<'a>(be: &dyn Backend, b: &'a mut Buf, n: usize) -> Result<ViewMut<'a>> {
    if b.len() < n {
        *b = be.alloc(n)?;
    }
    Ok(b.head_mut(n))
}

/// Which results a sequence of a batch wants back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Want {
    /// None (a prompt chunk before the last).
    None,
    /// The last token's logits.
    Last,
    /// Every token's logits.
    All,
    /// Every token's final hidden state `[n_embd]`: after the output norm, before the LM
    /// head (for embeddings).
    Hidden,
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
    /// The sequence's slot for fixed-size per-layer state (recurrent layers).
    pub slot: usize,
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
    /// The sequence's slot for fixed-size state.
    pub slot: usize,
}

impl<'a> Seg<'a> {
    /// The segment as the recurrent ops take it: a sequence starting at position 0 starts
    /// from a zero state.
    pub fn v4(&self) -> crate::dsv4_attn::V4Seg<'a> {
        crate::dsv4_attn::V4Seg {
            row0: self.row0,
            n: self.n,
            pos0: self.pos0,
            slot: self.slot,
            pages: Pages {
                table: self.pages.table,
                page_size: self.pages.page_size,
            },
        }
    }

    pub fn rec(&self) -> hearth_core::linear::RecSeg {
        hearth_core::linear::RecSeg {
            row0: self.row0,
            n: self.n,
            slot: self.slot,
            fresh: self.pos0 == 0,
        }
    }
    /// The segment as the attention op takes it.
    pub fn attn(&self) -> AttnSeg<'a> {
        AttnSeg {
            row0: self.row0,
            n_tok: self.n,
            pos0: self.pos0,
            pages: Some(self.pages),
        }
    }
}

impl State {
    /// Context length this state can hold.
    pub fn n_ctx(&self) -> usize {
        self.pool.page_size
    }
    /// Forget everything after the first `len` tokens (to reuse a common prefix). A model
    /// with recurrent layers cannot go back to an earlier position: cutting its state
    /// anywhere but at its end forgets everything.
    pub fn truncate(&mut self, len: usize) {
        if len < self.len && self.pool.has_recurrent() {
            self.len = 0;
        }
        self.len = self.len.min(len);
    }
}

impl Model {
    /// The main backend (the first device).
    pub fn backend(&self) -> &dyn Backend {
        &*self.devs[0]
    }

    /// Device `d`'s backend.
    pub(crate) fn dev(&self, d: usize) -> &dyn Backend {
        &*self.devs[d]
    }

    /// The device of layer `i`'s attention (and its state).
    fn attn_dev(&self, i: usize) -> usize {
        self.layers.get(i).map_or(0, |l| l.dev_attn)
    }

    /// Build a model on one backend. Fails with a clear message on an unknown architecture,
    /// a missing or mis-shaped tensor, or a type the backend cannot run.
    pub fn load(files: &ModelFiles, backend: Arc<dyn Backend>) -> Result<Model> {
        Model::load_placed(files, vec![backend], &|_, _| 0)
    }

    /// Build a model over several devices: `place` names the device (an index into `devs`)
    /// of each block, called with `token_embd`, `output`, and for each layer `i`
    /// `blk.{i}.attn`, `blk.{i}.ffn` and, for MoE layers, `blk.{i}.ffn_exps` (the routed
    /// experts); its second argument is the number of layers.
    pub fn load_placed(
        files: &ModelFiles,
        devs: Vec<Arc<dyn Backend>>,
        place: &dyn Fn(&str, usize) -> usize,
    ) -> Result<Model> {
        if devs.is_empty() {
            return Err(Error::Invalid("a model needs at least one device".into()));
        }
        let tensors = &files.tensors;
        let file_bytes: usize = tensors.values().map(|t| t.bytes().len()).sum();
        for d in &devs {
            d.host_weights(file_bytes);
        }
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
            devs[0].dequantize(ff, &mut v)?;
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
        let pl = Placer {
            devs: &devs,
            place,
            n_layer: cfg.n_layer,
            plus_one: cfg.norm_plus_one,
        };
        let (dev_embd, dev_out) = (pl.dev("token_embd")?, pl.dev("output")?);
        // the embedding is only read row by row, unless the output head shares it
        let tok_embd = weight(
            tensors,
            &pl,
            dev_embd,
            "token_embd.weight",
            &[cfg.n_vocab, e],
            false,
        )?;
        if cfg.n_ff == 0 {
            cfg.n_ff = tensors
                .get("blk.0.ffn_gate.weight")
                .map_or(0, |t| t.shape[0]);
        }
        let v4 = v4::load(files, &mut cfg, &*devs[0])?;
        let mut layers = Vec::with_capacity(cfg.n_layer.min(4096));
        for i in (0..cfg.n_layer).filter(|_| v4.is_none()) {
            let l = load_layer(tensors, &pl, &cfg, i)?;
            for (d, t) in l.tensors() {
                check_type(&*devs[d], t)?;
            }
            layers.push(l);
        }
        let output = match tensors.contains_key("output.weight") {
            true => weight(
                tensors,
                &pl,
                dev_out,
                "output.weight",
                &[cfg.n_vocab, e],
                true,
            )?,
            false => {
                let mut o = tok_embd.clone();
                devs[dev_out].prepare(&mut o);
                o
            }
        };
        check_type(&*devs[dev_out], &output)?;
        let output_norm = vector(tensors, &pl, dev_out, "output_norm.weight", e)?;
        let (inv_freq, rope_mscale) = cfg.rope.inv_freq();
        Ok(Model {
            cfg,
            tok_embd,
            output_norm,
            output,
            layers,
            inv_freq,
            rope_mscale,
            devs,
            dev_embd,
            dev_out,
            moves: Mutex::new(BTreeMap::new()),
            kv: (KvType::F32, KvType::F32),
            v4,
        })
    }

    /// The moves between devices since the last [`Model::reset_transfers`]: what moved
    /// ("hidden state", "moe input", "moe routing", "moe output"), how many times, and bytes.
    pub fn transfers(&self) -> Vec<(&'static str, usize, usize)> {
        let m = self.moves.lock().unwrap_or_else(|e| e.into_inner());
        m.iter().map(|(&k, &(c, b))| (k, c, b)).collect()
    }

    /// Start counting moves afresh.
    pub fn reset_transfers(&self) {
        self.moves.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// Move the first `n` values of one device's scratch buffer into another's, through the
    /// host, and count it.
    #[allow(clippy::type_complexity)]
    pub(crate) fn transfer(
        &self,
        s: &mut Scratch,
        what: &'static str,
        from: (usize, fn(&mut DevScratch) -> &mut Buf),
        to: (usize, fn(&mut DevScratch) -> &mut Buf),
        n: usize,
    ) -> Result<()> {
        let mut stage = std::mem::take(&mut s.stage);
        stage.resize(n, 0.0);
        let src = from.1(s.dev(from.0));
        let r = self.devs[from.0]
            .download(src.head(n), &mut stage)
            .and_then(|_| {
                let be = &*self.devs[to.0];
                let dst = sized(be, to.1(s.dev(to.0)), n)?;
                be.upload(&stage, dst)
            });
        s.stage = stage;
        r?;
        let mut m = self.moves.lock().unwrap_or_else(|e| e.into_inner());
        let e = m.entry(what).or_default();
        e.0 += 1;
        e.1 += 4 * n;
        Ok(())
    }

    /// A fresh state with room for `n_ctx` tokens.
    pub fn new_state(&self, n_ctx: usize) -> Result<State> {
        Ok(State {
            pool: self.new_pool(1, n_ctx.max(1), 1)?,
            table: [0],
            len: 0,
            scratch: Scratch::default(),
        })
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

    /// The KV caches' types (keys, values).
    pub fn kv_types(&self) -> (KvType, KvType) {
        self.kv
    }

    /// Keep the KV caches of the pools and states made from now on in types `k` and `v`
    /// (multi-head latent attention keeps one latent row per position, in `k`'s type). An
    /// error when this model's heads are not whole blocks of a type, or a device that runs
    /// attention cannot take it.
    pub fn set_kv_types(&mut self, k: KvType, v: KvType) -> Result<()> {
        let old = self.kv;
        self.kv = (k, v);
        let r = self.kv_format().and_then(|_| {
            if self.v4.is_some() && (k, v) != (KvType::F32, KvType::F32) {
                return Err(Error::Unsupported(
                    "DeepSeek-V4 keeps its caches in f32 only".into(),
                ));
            }
            for l in &self.layers {
                if self.slot_len(l).is_some() {
                    continue;
                }
                let be = self.dev(l.dev_attn);
                for t in [k, v] {
                    if !be.supports_kv(t) {
                        return Err(Error::Unsupported(format!(
                            "the {} backend cannot keep a KV cache of type {}; \
                             run attention on the CPU or use the default cache type",
                            be.name(),
                            t.name()
                        )));
                    }
                }
            }
            Ok(())
        });
        if r.is_err() {
            self.kv = old;
        }
        r
    }

    /// How this model's attention layers store their caches ([`Model::set_kv_types`]).
    pub(crate) fn kv_format(&self) -> Result<KvFormat> {
        let (k, v) = self.kv;
        match &self.cfg.mla {
            Some(m) => KvFormat::new(k, k, m.kv_lora_rank + m.rope, m.kv_lora_rank),
            None => KvFormat::new(k, v, self.cfg.head_dim, self.cfg.head_dim),
        }
    }

    /// f32 words per position per layer in the key and value caches, in their types.
    fn kv_row_words(&self) -> (usize, usize) {
        let (kw, vw) = self.kv_widths();
        let (k, v) = match self.cfg.mla {
            Some(_) => (self.kv.0, self.kv.0),
            None => self.kv,
        };
        (k.row_words(kw), v.row_words(vw))
    }

    /// A paged pool of `n_pages` pages of `page_size` positions and `n_slots` slots of
    /// fixed-size state (one per sequence that can run at once), each layer's on the device
    /// of its attention (in the types of [`Model::set_kv_types`]; host memory is zero-filled
    /// on demand by the OS, so an unused pool costs little).
    pub fn new_pool(&self, n_pages: usize, page_size: usize, n_slots: usize) -> Result<KvPool> {
        if let Some(v4) = &self.v4 {
            return self.v4_pool(v4, n_pages, page_size, n_slots);
        }
        let (kw, vw) = self.kv_row_words();
        let rows = n_pages
            .checked_mul(page_size)
            .filter(|r| r.checked_mul(kw.max(vw)).is_some())
            .ok_or_else(|| Error::Invalid(format!("{n_pages} pages of {page_size} overflow")))?;
        let layers = self
            .layers
            .iter()
            .map(|l| {
                let be = self.dev(l.dev_attn);
                Ok(match &l.attn {
                    Attn::Delta(_) | Attn::Lightning(_) => {
                        let size = self.slot_len(l).unwrap_or(0);
                        let total = size.checked_mul(n_slots.max(1)).ok_or_else(|| {
                            Error::Invalid(format!("{n_slots} state slots overflow"))
                        })?;
                        LayerCache::Recurrent {
                            s: be.alloc(total)?,
                            size,
                        }
                    }
                    Attn::Mla(_) => LayerCache::Latent {
                        c: be.alloc(rows * kw)?,
                        ik: be.alloc(rows * self.ik_width(l))?,
                    },
                    Attn::Gqa(_) => LayerCache::Kv {
                        k: be.alloc(rows * kw)?,
                        v: be.alloc(rows * vw)?,
                    },
                })
            })
            .collect::<Result<_>>()?;
        Ok(KvPool {
            layers,
            page_size,
            n_pages,
            n_slots: n_slots.max(1),
        })
    }

    /// Bytes of KV cache per position (all layers that keep one, in their types).
    pub fn kv_pool_bytes_per_token(&self) -> usize {
        if let Some(v4) = &self.v4 {
            return v4.kv_bytes_per_token();
        }
        let (kw, vw) = self.kv_row_words();
        let ik: usize = self.layers.iter().map(|l| self.ik_width(l)).sum();
        (self.n_kv_layers() * (kw + vw) + ik) * 4
    }

    /// Floats per position of a layer's DSA indexer keys (0 without an indexer of its own).
    fn ik_width(&self, l: &Layer) -> usize {
        match (&l.attn, self.cfg.mla.as_ref().and_then(|m| m.dsa.as_ref())) {
            (Attn::Mla(m), Some(d)) if m.idx.is_some() => d.head_dim,
            _ => 0,
        }
    }

    /// Layers whose state grows with the context (all but linear attention).
    fn n_kv_layers(&self) -> usize {
        self.layers
            .iter()
            .filter(|l| self.slot_len(l).is_none())
            .count()
    }

    /// Floats of a layer's fixed-size state per sequence; None for layers that keep KV rows.
    fn slot_len(&self, l: &Layer) -> Option<usize> {
        match &l.attn {
            Attn::Delta(_) => Some(self.cfg.linear.as_ref().map_or(0, |c| c.slot_len())),
            Attn::Lightning(_) => Some(self.lightning_shape().state_len()),
            _ => None,
        }
    }

    /// The shape of the lightning-attention layers (MiniMax).
    fn lightning_shape(&self) -> LightningShape {
        LightningShape {
            n_heads: self.cfg.n_head,
            head_dim: self.cfg.head_dim,
        }
    }

    /// Bytes of fixed-size state one sequence keeps (linear-attention layers, f32), whatever
    /// its length.
    pub fn state_bytes_per_seq(&self) -> usize {
        self.v4.as_ref().map_or(0, |v| v.state_bytes_per_seq())
            + 4 * self
                .layers
                .iter()
                .filter_map(|l| self.slot_len(l))
                .sum::<usize>()
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
        let want = if all_logits { Want::All } else { Want::Last };
        self.forward_chunks(tokens, state, want, logits)?;
        debug_assert_eq!(logits.len() % self.cfg.n_vocab, 0);
        Ok(())
    }

    /// Run `tokens` through the model like [`Model::forward`], but `hidden` receives every
    /// token's final hidden state `[tokens.len(), n_embd]` (after the output norm, before the
    /// LM head) instead of logits.
    pub fn forward_hidden(
        &self,
        tokens: &[u32],
        state: &mut State,
        hidden: &mut Vec<f32>,
    ) -> Result<()> {
        self.forward_chunks(tokens, state, Want::Hidden, hidden)
    }

    /// [`Model::forward`] in chunks of at most 512 tokens, each wanting `want` (`Last`: only
    /// the last chunk).
    fn forward_chunks(
        &self,
        tokens: &[u32],
        state: &mut State,
        want: Want,
        out: &mut Vec<f32>,
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
        out.clear();
        let n_chunks = tokens.len().div_ceil(MAX_BATCH);
        for (ci, chunk) in tokens.chunks(MAX_BATCH).enumerate() {
            let want = match want {
                Want::Last if ci + 1 < n_chunks => Want::None,
                w => w,
            };
            let seq = BatchSeq {
                tokens: chunk,
                pos0: state.len,
                pages: &state.table,
                slot: 0,
                want,
            };
            self.forward_batch(&mut state.pool, &mut state.scratch, &[seq], out)?;
            state.len += chunk.len();
        }
        Ok(())
    }

    /// Run several sequences' new tokens as one batch: the weights are read once for all of
    /// them, attention runs per sequence over its own pages of `pool`. Each row's result is
    /// the same whichever other rows share the batch. The wanted rows' `[n_vocab]` logits (a
    /// sequence's last token, or all its tokens) are appended to `logits` in order, and after
    /// them the `[n_embd]` hidden states of the sequences that want [`Want::Hidden`], in order.
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
            if sq.slot >= pool.n_slots {
                return Err(Error::Invalid(format!(
                    "slot {} is outside the pool's {} slots",
                    sq.slot, pool.n_slots
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
                slot: sq.slot,
            });
            row0 += n;
        }
        if row0 == 0 {
            return Err(Error::Invalid("no tokens to process".into()));
        }
        let tokens: Vec<u32> = seqs.iter().flat_map(|s| s.tokens.iter().copied()).collect();
        let cur = self.forward_rows(&tokens, pool, scratch, &segs)?;
        // the wanted rows, normalised and projected to the vocabulary
        let e = self.cfg.n_embd;
        let s = scratch;
        let d = self.dev_out;
        if cur != d {
            self.transfer(
                s,
                "hidden state",
                (cur, |d| &mut d.x),
                (d, |d| &mut d.x),
                row0 * e,
            )?;
        }
        let be = self.dev(d);
        let ds = s.dev(d);
        // the rows each sequence wants: logits rows first, then hidden-state rows
        let rows_of = |sq: &BatchSeq, sg: &Seg| match sq.want {
            Want::None => 0..0,
            Want::Last => sg.row0 + sg.n - 1..sg.row0 + sg.n,
            Want::All | Want::Hidden => sg.row0..sg.row0 + sg.n,
        };
        let wanted = |hidden: bool| {
            seqs.iter()
                .zip(&segs)
                .filter(move |(sq, _)| (sq.want == Want::Hidden) == hidden)
                .map(|(sq, sg)| rows_of(sq, sg))
                .filter(|r| !r.is_empty())
        };
        let n_logits: usize = wanted(false).map(|r| r.len()).sum();
        let n_hidden: usize = wanted(true).map(|r| r.len()).sum();
        if n_logits + n_hidden == 0 {
            return Ok(());
        }
        let mut h = sized(be, &mut ds.h, (n_logits + n_hidden) * e)?;
        let mut m = 0;
        for rows in wanted(false).chain(wanted(true)) {
            let width = rows.len() * e;
            be.copy_rows(
                ds.x.view().slice(rows.start * e..rows.end * e),
                width,
                h.reborrow().slice(m * e..m * e + width),
                width,
                hearth_core::RowCopy { n_rows: 1, width },
            )?;
            m += rows.len();
        }
        be.rms_norm(h.reborrow(), self.output_norm.view(), self.cfg.rms_eps)?;
        let nv = self.cfg.n_vocab;
        if n_logits > 0 {
            let mut lg = sized(be, &mut ds.logits, n_logits * nv)?;
            be.matmul(
                &self.output,
                h.view().slice(0..n_logits * e),
                n_logits,
                lg.reborrow(),
            )?;
            let start = logits.len();
            logits.resize(start + n_logits * nv, 0.0);
            be.download(lg.view(), &mut logits[start..])?;
        }
        if n_hidden > 0 {
            let start = logits.len();
            logits.resize(start + n_hidden * e, 0.0);
            be.download(h.view().slice(n_logits * e..m * e), &mut logits[start..])?;
        }
        Ok(())
    }

    /// The transformer body over a batch's rows; leaves the last hidden states in the `x` of
    /// the device it returns.
    fn forward_rows(
        &self,
        tokens: &[u32],
        pool: &mut KvPool,
        s: &mut Scratch,
        segs: &[Seg],
    ) -> Result<usize> {
        let n = tokens.len();
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
        if let Some(v4) = &self.v4 {
            return self.v4_rows(v4, tokens, pool, s, segs);
        }
        let (pos, rows) = (std::mem::take(&mut s.pos), std::mem::take(&mut s.rows));
        let r = self.layers_rows(tokens, pool, s, segs, &pos, &rows);
        (s.pos, s.rows) = (pos, rows);
        r
    }

    fn layers_rows(
        &self,
        tokens: &[u32],
        pool: &mut KvPool,
        s: &mut Scratch,
        segs: &[Seg],
        pos: &[usize],
        rows: &[usize],
    ) -> Result<usize> {
        let c = &self.cfg;
        let n = tokens.len();
        let e = c.n_embd;
        let mut cur = self.dev_embd;
        {
            let be = self.dev(cur);
            let x = sized(be, &mut s.dev(cur).x, n * e)?;
            be.get_rows(&self.tok_embd, tokens, x)?;
        }
        let rope = hearth_core::RopeArgs {
            head_dim: c.head_dim,
            positions: pos,
            inv_freq: &self.inv_freq,
            style: c.rope.style,
            mscale: self.rope_mscale,
        };
        // (taken out of `s` for the layers' loop, which lends `s` to each device's buffers;
        // an error leaves it empty, which only costs its allocation)
        let mut dsa = std::mem::take(&mut s.dsa);
        let kvf = self.kv_format()?;
        for (li, l) in self.layers.iter().enumerate() {
            // attention, on its device
            let d = l.dev_attn;
            self.enter_block(s, &mut cur, d, n, &l.attn_norm)?;
            let be = self.dev(d);
            let ds = s.dev(d);
            let h = ds.h.head(n * e);
            let mut o = sized(be, &mut ds.o, n * e)?;
            match (&l.attn, &mut pool.layers[li]) {
                (Attn::Gqa(a), LayerCache::Kv { k: kc, v: vc }) => {
                    let (hd, qd, kvd) =
                        (c.head_dim, c.n_head * c.head_dim, c.n_kv_head * c.head_dim);
                    let mut q = sized(be, &mut ds.q, n * qd)?;
                    let mut k = sized(be, &mut ds.k, n * kvd)?;
                    let mut v = sized(be, &mut ds.v, n * kvd)?;
                    // gated attention: the projection holds each head's query, then its gate
                    let mut qg = match c.attn_gate {
                        true => Some(sized(be, &mut ds.g, 2 * n * qd)?),
                        false => None,
                    };
                    be.matmul_many(&mut [
                        MatJob {
                            w: &a.wq,
                            x: h,
                            n_tok: n,
                            out: match &mut qg {
                                Some(g) => g.reborrow(),
                                None => q.reborrow(),
                            },
                        },
                        MatJob {
                            w: &a.wk,
                            x: h,
                            n_tok: n,
                            out: k.reborrow(),
                        },
                        MatJob {
                            w: &a.wv,
                            x: h,
                            n_tok: n,
                            out: v.reborrow(),
                        },
                    ])?;
                    let mut gate = None;
                    if let Some(qg) = &qg {
                        let rc = hearth_core::RowCopy {
                            n_rows: n * c.n_head,
                            width: hd,
                        };
                        be.copy_rows(qg.view(), 2 * hd, q.reborrow(), hd, rc)?;
                        let mut gt = sized(be, &mut ds.u, n * qd)?;
                        be.copy_rows(
                            qg.view().slice(hd..2 * n * qd),
                            2 * hd,
                            gt.reborrow(),
                            hd,
                            rc,
                        )?;
                        gate = Some(gt);
                    }
                    for (x, b) in [(&mut q, &a.bq), (&mut k, &a.bk), (&mut v, &a.bv)] {
                        if let Some(b) = b {
                            be.add_bias(x.reborrow(), b.view())?;
                        }
                    }
                    // per-head norms normalise each head; MiniMax's span all heads at once
                    if let Some(w) = &a.q_norm {
                        be.rms_norm(q.reborrow(), w.view(), c.rms_eps)?;
                    }
                    if let Some(w) = &a.k_norm {
                        be.rms_norm(k.reborrow(), w.view(), c.rms_eps)?;
                    }
                    // the rotation with the cache writes fused
                    let dest = hearth_core::KvDest {
                        k: kc.view_mut(),
                        v: vc.view_mut(),
                        rows,
                        fmt: kvf,
                    };
                    be.rope_qk_store(
                        q.reborrow(),
                        c.n_head,
                        k.view(),
                        c.n_kv_head,
                        v.view(),
                        &rope,
                        dest,
                    )?;
                    let mut att = sized(be, &mut ds.att, n * qd)?;
                    let mut p = AttnParams::gqa(c.n_head, c.n_kv_head, hd, c.attn_scale());
                    p.kv = kvf;
                    p.k_stride = kvf.k.row_words(kvd);
                    p.v_stride = kvf.v.row_words(kvd);
                    p.window = c.window(li);
                    p.sinks = a.sinks.as_ref().map(|b| b.view());
                    let jobs: Vec<AttnSeg> = segs.iter().map(|sg| sg.attn()).collect();
                    be.attention_many(kc.view(), vc.view(), &p, q.view(), att.reborrow(), &jobs)?;
                    match &mut gate {
                        Some(g) => {
                            be.glu(hearth_core::Glu::Sigmoid, g.reborrow(), att.view())?;
                            be.matmul(&a.wo, g.view(), n, o.reborrow())?;
                        }
                        None => be.matmul(&a.wo, att.view(), n, o.reborrow())?,
                    }
                    if let Some(b) = &a.bo {
                        be.add_bias(o.reborrow(), b.view())?;
                    }
                }
                (Attn::Mla(m), LayerCache::Latent { c: cache, ik }) => {
                    let call = MlaCall {
                        kv: kvf,
                        cfg: c,
                        m: c.mla.as_ref().expect("MLA layers have an MLA config"),
                        rope,
                        rows,
                    };
                    m.forward(
                        be,
                        &call,
                        h,
                        n,
                        segs,
                        cache,
                        ik,
                        &mut dsa,
                        &mut ds.mla,
                        o.reborrow(),
                    )?;
                }
                (Attn::Delta(dl), LayerCache::Recurrent { s: st, .. }) => {
                    let lc = c
                        .linear
                        .as_ref()
                        .expect("linear layers have a linear config");
                    dl.forward(
                        be,
                        lc,
                        c.rms_eps,
                        h,
                        n,
                        segs,
                        st,
                        &mut ds.delta,
                        o.reborrow(),
                    )?;
                }
                (Attn::Lightning(g), LayerCache::Recurrent { s: st, size }) => {
                    let sh = self.lightning_shape();
                    if *size != sh.state_len() {
                        return Err(Error::Invalid(format!(
                            "layer {li}: the pool's slots do not fit lightning attention"
                        )));
                    }
                    g.forward(be, sh, h, n, segs, st, &mut ds.lightning, o.reborrow())?;
                }
                _ => {
                    return Err(Error::Invalid(format!(
                        "layer {li}: the pool holds another kind of state"
                    )));
                }
            }
            match self.residual(li, false) {
                None => be.add(ds.x.head_mut(n * e), o.view())?,
                Some(ab) => scaled_residual(be, ds, n * e, n, ab)?,
            }
            // the feed-forward block, on its device
            let d = l.dev_ffn;
            self.enter_block(s, &mut cur, d, n, &l.ffn_norm)?;
            let be = self.dev(d);
            sized(be, &mut s.dev(d).o, n * e)?;
            match &l.ffn {
                Ffn::Dense(m) => {
                    let ds = s.dev(d);
                    let o = ds.o.head_mut(n * e);
                    m.forward(be, ds.h.head(n * e), n, o, &mut ds.g, &mut ds.u, None)?;
                }
                Ffn::Moe(m) => {
                    let mc = c.moe.as_ref().expect("MoE layers have a MoE config");
                    m.forward(self, s, mc, d, n)?;
                }
            }
            let ds = s.dev(d);
            match self.residual(li, true) {
                None => be.add(ds.x.head_mut(n * e), ds.o.head(n * e))?,
                Some(ab) => scaled_residual(be, ds, n * e, n, ab)?,
            }
        }
        s.dsa = dsa;
        Ok(cur)
    }
}

impl Model {
    /// Move the hidden state to device `d` if it is elsewhere (counted), and write it,
    /// normalised by `norm`, into that device's `h`.
    fn enter_block(
        &self,
        s: &mut Scratch,
        cur: &mut usize,
        d: usize,
        n: usize,
        norm: &Buf,
    ) -> Result<()> {
        let e = self.cfg.n_embd;
        if *cur != d {
            self.transfer(
                s,
                "hidden state",
                (*cur, |d| &mut d.x),
                (d, |d| &mut d.x),
                n * e,
            )?;
            *cur = d;
        }
        let be = self.dev(d);
        let ds = s.dev(d);
        let mut h = sized(be, &mut ds.h, n * e)?;
        be.copy_rows(ds.x.head(n * e), 0, h.reborrow(), 0, row1(n * e))?;
        be.rms_norm(h, norm.view(), self.cfg.rms_eps)
    }
}

impl Model {
    /// MiniMax's residual `(alpha, beta)` around layer `li`'s attention (or, with `ffn`, its
    /// FFN block); None where the block adds its output to the residual stream as usual.
    fn residual(&self, li: usize, ffn: bool) -> Option<(f32, f32)> {
        let lc = self.cfg.lightning.as_ref()?;
        Some(match (ffn, self.cfg.is_lightning(li)) {
            (true, _) => lc.mlp_residual,
            (false, true) => lc.linear_residual,
            (false, false) => lc.full_residual,
        })
    }
}

/// MiniMax's residual: `x = alpha · h + beta · o`, from the block's normalised input `h` and
/// its output `o` (`len` values in `n` rows).
fn scaled_residual(
    be: &dyn Backend,
    ds: &mut DevScratch,
    len: usize,
    n: usize,
    (alpha, beta): (f32, f32),
) -> Result<()> {
    be.copy_rows(ds.h.head(len), 0, ds.x.head_mut(len), 0, row1(len))?;
    if alpha != 1.0 {
        let sc = sized(be, &mut ds.scale, n)?;
        be.upload(&vec![alpha - 1.0; n], sc)?;
        be.add_scaled_rows(ds.x.head_mut(len), ds.h.head(len), ds.scale.head(n))?;
    }
    if beta != 1.0 {
        let sc = sized(be, &mut ds.scale, n)?;
        be.upload(&vec![beta; n], sc)?;
        be.add_scaled_rows(ds.x.head_mut(len), ds.o.head(len), ds.scale.head(n))?;
    } else {
        be.add(ds.x.head_mut(len), ds.o.head(len))?;
    }
    Ok(())
}

/// One row of `width` values (a plain copy).
fn row1(width: usize) -> hearth_core::RowCopy {
    hearth_core::RowCopy { n_rows: 1, width }
}

/// An error unless device `be` can multiply by `t`.
fn check_type(be: &dyn Backend, t: &Tensor) -> Result<()> {
    if !be.supports(t.dtype) {
        return Err(Error::Unsupported(format!(
            "backend {} cannot run {} tensors ({})",
            be.name(),
            t.dtype,
            t.name
        )));
    }
    Ok(())
}

impl Layer {
    /// Every matrix with its device, for type checks.
    fn tensors(&self) -> Vec<(usize, &Tensor)> {
        let mut v: Vec<(usize, &Tensor)> = match &self.attn {
            Attn::Gqa(a) => vec![&a.wq, &a.wk, &a.wv, &a.wo],
            Attn::Mla(m) => m.tensors(),
            Attn::Delta(d) => d.tensors(),
            Attn::Lightning(g) => g.tensors(),
        }
        .into_iter()
        .map(|t| (self.dev_attn, t))
        .collect();
        match &self.ffn {
            Ffn::Dense(m) => v.extend(m.tensors().map(|t| (self.dev_ffn, t))),
            Ffn::Moe(m) => {
                let ex: Vec<&Tensor> = m
                    .experts
                    .iter()
                    .flat_map(|x| [&x.gate, &x.up, &x.down])
                    .collect();
                v.extend(m.tensors().into_iter().map(|t| {
                    let d = if ex.iter().any(|x| std::ptr::eq(*x, t)) {
                        m.dev_exps
                    } else {
                        self.dev_ffn
                    };
                    (d, t)
                }));
            }
        }
        v
    }
}
