//! The compute interface. Models call only these methods, so a CUDA or Vulkan backend is a
//! new crate that implements this trait (and passes the same conformance tests).
//!
//! Activations are f32 slices in row-major `[n_tok, width]` layout. Weights are [`Tensor`]s,
//! each of which may live on its own [`crate::Device`]; a backend reports what it can run
//! with [`Backend::supports`].
use crate::kv::{KvFormat, KvType};
use crate::linear::{DeltaShape, RecSeg, SlotLayout};
use crate::moe::{Expert, Glu, Routing};
use crate::{Buf, DType, Error, Result, Tensor, View, ViewMut};

/// Parameters of one attention call.
///
/// Queries are `[n_tok, n_head, head_dim]`. The caches hold one row per position: keys at
/// `k[pos * k_stride + kv_head * head_dim ..][..head_dim]`, values at
/// `v[pos * v_stride + kv_head * v_dim ..][..v_dim]`; the output is `[n_tok, n_head, v_dim]`.
/// Multi-head latent attention runs through the same call as one kv head whose values are the
/// first `v_dim` columns of the key rows.
#[derive(Clone, Copy, Debug)]
pub struct AttnParams<'a> {
    /// Query heads.
    pub n_head: usize,
    /// Key/value heads (GQA: `n_head` is a multiple of it).
    pub n_kv_head: usize,
    /// Width of one query/key head.
    pub head_dim: usize,
    /// Width of one value head.
    pub v_dim: usize,
    /// f32 words between consecutive positions' key rows.
    pub k_stride: usize,
    /// f32 words between consecutive positions' value rows.
    pub v_stride: usize,
    /// The caches' types: in a row, key head `h` starts at byte `h * kv.k.bytes(head_dim)`
    /// and value head `h` at byte `h * kv.v.bytes(v_dim)` (see [`crate::kv`]).
    pub kv: KvFormat,
    /// Score scale (usually `1/sqrt(head_dim)`).
    pub scale: f32,
    /// Sliding window: attend only to the last `window` positions.
    pub window: Option<usize>,
    /// Attention sinks (gpt-oss): one extra logit per head that joins the softmax's
    /// denominator and contributes no value.
    pub sinks: Option<View<'a>>,
    /// Paged cache: position `j` lives in row `pages[j / page_size] * page_size + j % page_size`
    /// of `k`/`v`. `None`: position `j` is row `j`.
    pub pages: Option<Pages<'a>>,
}

/// A sequence's page table in a paged KV cache.
#[derive(Clone, Copy, Debug)]
pub struct Pages<'a> {
    /// Page index for each `page_size` positions.
    pub table: &'a [u32],
    /// Positions per page.
    pub page_size: usize,
}

impl Pages<'_> {
    /// The cache row that holds position `pos`.
    #[inline]
    pub fn row(&self, pos: usize) -> usize {
        self.table[pos / self.page_size] as usize * self.page_size + pos % self.page_size
    }
}

impl AttnParams<'_> {
    /// Plain (grouped-query) attention over caches of `[n_kv_head, head_dim]` rows.
    pub fn gqa(n_head: usize, n_kv_head: usize, head_dim: usize, scale: f32) -> Self {
        AttnParams {
            n_head,
            n_kv_head,
            head_dim,
            v_dim: head_dim,
            k_stride: n_kv_head * head_dim,
            v_stride: n_kv_head * head_dim,
            kv: KvFormat::default(),
            scale,
            window: None,
            sinks: None,
            pages: None,
        }
    }
}

/// One matmul of a batch of independent ones: `out[n_tok, n_out] = x[n_tok, n_in] @ wᵀ`.
pub struct MatJob<'a> {
    /// Weight `[n_out, n_in]`.
    pub w: &'a Tensor,
    /// Activations `[n_tok, n_in]`.
    pub x: View<'a>,
    /// Tokens.
    pub n_tok: usize,
    /// Output `[n_tok, n_out]`.
    pub out: ViewMut<'a>,
}

/// One sequence's rows of [`Backend::attention_many`]: its queries are rows
/// `row0..row0 + n_tok` of the batch, its tokens at positions `pos0..`.
#[derive(Clone, Copy, Debug)]
pub struct AttnSeg<'a> {
    /// First row of the batch.
    pub row0: usize,
    /// Tokens.
    pub n_tok: usize,
    /// Position of the first token.
    pub pos0: usize,
    /// The sequence's pages (None: positions are rows).
    pub pages: Option<Pages<'a>>,
}

/// How RoPE pairs dimensions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeStyle {
    /// Adjacent pairs (2i, 2i+1): GGUF llama-family files (their Q/K rows are permuted).
    Normal,
    /// Halves (i, i + d/2): Hugging Face checkpoints and GGUF qwen2/qwen3.
    Neox,
}

/// The rotation of [`Backend::rope_qk`]: head width, each token's position, one frequency
/// per rotated pair, pair layout, and the factor on cos and sin (YaRN).
#[derive(Clone, Copy, Debug)]
pub struct RopeArgs<'a> {
    /// Width of one head.
    pub head_dim: usize,
    /// Position of each token.
    pub positions: &'a [usize],
    /// One frequency per rotated pair (`rot_dim / 2`).
    pub inv_freq: &'a [f32],
    /// Which elements pair up.
    pub style: RopeStyle,
    /// Factor on cos and sin.
    pub mscale: f32,
}

/// One layer's KV cache as the destination of a batch's keys and values: token `t`'s keys go
/// to row `rows[t]` of `k` (rows of `n_kv_head * head_dim`), its values to the same row of `v`
/// (rows as wide as the token's values).
pub struct KvDest<'a> {
    /// The layer's key rows.
    pub k: ViewMut<'a>,
    /// The layer's value rows.
    pub v: ViewMut<'a>,
    /// The cache row of each token of the batch.
    pub rows: &'a [usize],
    /// The caches' types.
    pub fmt: KvFormat,
}

/// The routed experts of one MoE layer, for [`Backend::moe_experts`].
pub struct MoeJob<'a> {
    /// Every expert of the layer.
    pub experts: &'a [Expert],
    /// The activation between the up and down projections.
    pub act: Glu,
    /// Tokens.
    pub n_tok: usize,
    /// Experts per token.
    pub n_used: usize,
    /// Inputs `[n_tok, n_embd]`.
    pub x: View<'a>,
    /// Each token's experts `[n_tok, n_used]`, as exact integer values (from
    /// [`Backend::moe_route`]).
    pub ids: View<'a>,
    /// Their weights `[n_tok, n_used]`.
    pub weights: View<'a>,
    /// `out[t] = Σ_k weights[t, k] · expert_{ids[t, k]}(x[t])`, `[n_tok, n_embd]`.
    pub out: ViewMut<'a>,
}

/// One gated-delta-rule call over a batch, for [`Backend::delta_rule`] (the semantics are
/// [`crate::linear::delta_rule_ref`]'s).
pub struct DeltaJob<'a> {
    /// The convolved `q | k | v` rows `[n_tok, shape.qkv_width()]`.
    pub qkv: View<'a>,
    /// Raw decay projections `[n_tok, n_v_heads]`.
    pub a: View<'a>,
    /// Raw write-strength projections `[n_tok, n_v_heads]`.
    pub b: View<'a>,
    /// `-exp(A_log)` `[n_v_heads]`.
    pub a_coef: View<'a>,
    /// Decay bias `[n_v_heads]`.
    pub dt_bias: View<'a>,
    /// The layer's state slots.
    pub state: ViewMut<'a>,
    /// Where in a slot the recurrent state is.
    pub lay: SlotLayout,
    /// Output `[n_tok, n_v_heads * v_dim]`.
    pub out: ViewMut<'a>,
    /// Heads and widths.
    pub shape: DeltaShape,
    /// Each sequence's rows and slot.
    pub segs: &'a [RecSeg],
}

/// Lightning attention over a batch (see [`crate::linear::lightning_ref`]).
pub struct LightningJob<'a> {
    /// Raw `q | k | v` projections per head, `[n_tok, shape.qkv_width()]` (SiLU not yet
    /// applied).
    pub qkv: View<'a>,
    /// `exp(-slope)` per head `[n_heads]`.
    pub decay: View<'a>,
    /// The layer's state slots.
    pub state: ViewMut<'a>,
    /// Where in a slot the recurrent state is.
    pub lay: SlotLayout,
    /// Output `[n_tok, n_heads * head_dim]`.
    pub out: ViewMut<'a>,
    /// Heads and widths.
    pub shape: crate::linear::LightningShape,
    /// Each sequence's rows and slot.
    pub segs: &'a [RecSeg],
}

/// Most rotated pairs per head a backend's RoPE must handle (head_dim 1024); models with
/// more are refused at load time.
pub const MAX_ROPE_PAIRS: usize = 512;

/// The compute backend.
///
/// Activations and per-layer state live in [`Buf`]s the backend allocates; ops take views of
/// them and return `Result` (a device backend's submission or device loss reaches the
/// caller). The required methods are the heavy ones; the small element-wise ops have host
/// implementations that a device backend overrides.
pub trait Backend: Send + Sync {
    /// A short name ("cpu", "vulkan:0").
    fn name(&self) -> String;

    /// Whether this backend can multiply by weights of `dtype`.
    fn supports(&self, dtype: DType) -> bool;

    /// Whether [`Backend::matmul`] by weights of `dtype` rounds the decoded weights and the
    /// activations to f16 (sums stay f32), as GPU cooperative-matrix kernels do: tests then
    /// compare it with a reference that rounds the same way. It holds for the expert matmuls
    /// of [`Backend::moe_experts`] too, per matrix kind whose experts all have `dtype`.
    fn matmul_rounds_to_f16(&self, _dtype: DType) -> bool {
        false
    }

    /// Called once per matmul weight at load time: the backend may attach a copy in a layout
    /// of its own ([`Tensor::packed`]) or on its device. Results must not change.
    fn prepare(&self, _w: &mut Tensor) {}

    /// Before a model's weights are prepared: they take `bytes` of the host's memory (its
    /// files' pages, once read), so that the backend sizes its own copies of them
    /// ([`Backend::prepare`]) to what is left.
    fn host_weights(&self, _bytes: usize) {}

    /// Planning without loading: the bytes [`Backend::prepare`] would add for `w` beyond what
    /// [`Backend::weight_bytes`] counts before it (a packed copy), reserved from the same
    /// limits as `prepare` reserves them, so that planning a whole model in load order gives
    /// loading's numbers. Nothing is copied.
    fn plan_prepare(&self, _w: &Tensor) -> usize {
        0
    }

    /// Time spent per operation since the last call, as a Markdown table, when the backend
    /// keeps such accounts (the CPU backend with `HEARTH_PROFILE=1`); the accounts restart.
    fn profile_report(&self) -> Option<String> {
        None
    }

    /// Bytes of memory this backend's buffers and weights can use (None: the host's, which
    /// the engine reads itself).
    fn memory(&self) -> Option<u64> {
        None
    }

    /// Bytes this backend holds for a weight once prepared (its own copies, and the file's
    /// pages where it reads them).
    fn weight_bytes(&self, w: &Tensor) -> usize {
        w.bytes().len()
    }

    /// Of [`Backend::weight_bytes`], the bytes a device with memory of its own
    /// ([`Backend::memory`]) reads in place from the host memory that holds the weight (the
    /// mapped file, on a GPU that shares the host's memory): they take host memory, not the
    /// device's, so placement does not count them against the device.
    fn weight_bytes_in_place(&self, _w: &Tensor) -> usize {
        0
    }

    /// A buffer of `n` zeros.
    fn alloc(&self, n: usize) -> Result<Buf> {
        Ok(Buf::host(n))
    }

    /// A buffer holding `data`.
    fn upload_new(&self, data: &[f32]) -> Result<Buf> {
        let mut b = self.alloc(data.len())?;
        self.upload(data, b.view_mut())?;
        Ok(b)
    }

    /// Host values into a view of this backend's memory.
    fn upload(&self, src: &[f32], dst: ViewMut<'_>) -> Result<()> {
        let d = dst.host()?;
        check_len("upload", src.len(), d.len())?;
        d.copy_from_slice(src);
        Ok(())
    }

    /// A view of this backend's memory into host values (waits for the work that writes it).
    fn download(&self, src: View<'_>, dst: &mut [f32]) -> Result<()> {
        let s = src.host()?;
        check_len("download", s.len(), dst.len())?;
        dst.copy_from_slice(s);
        Ok(())
    }

    /// `W [n_out, n_in] @ x [n_tok, n_in] -> out [n_tok, n_out]`.
    fn matmul(&self, w: &Tensor, x: View<'_>, n_tok: usize, out: ViewMut<'_>) -> Result<()>;

    /// Several independent matmuls (a MoE layer's experts), which a backend may run as one
    /// parallel step. Each job's result is exactly what [`Backend::matmul`] gives for it.
    fn matmul_many(&self, jobs: &mut [MatJob<'_>]) -> Result<()> {
        for j in jobs.iter_mut() {
            self.matmul(j.w, j.x, j.n_tok, j.out.reborrow())?;
        }
        Ok(())
    }

    /// All of `t`, decoded to f32 on the host: `out [t.numel()]` (norm weights, biases, and
    /// weights a loader rearranges, at load time).
    fn dequantize(&self, t: &Tensor, out: &mut [f32]) -> Result<()>;

    /// Rows `ids` of `w`, decoded to f32 (embedding lookup): `out [ids.len(), row_len]`.
    fn get_rows(&self, w: &Tensor, ids: &[u32], out: ViewMut<'_>) -> Result<()>;

    /// RMS-normalize each row of `x [n, w.len()]` in place and scale by `w`.
    fn rms_norm(&self, x: ViewMut<'_>, w: View<'_>, eps: f32) -> Result<()>;

    /// Rotate `x [n_tok, n_heads, head_dim]` in place: token `t` is at `r.positions[t]`.
    fn rope(&self, x: ViewMut<'_>, n_heads: usize, r: &RopeArgs<'_>) -> Result<()>;

    /// [`Backend::rope`] on the queries `q [n_tok, n_head, head_dim]` and the keys
    /// `k [n_tok, n_kv_head, head_dim]` of the same tokens, with exactly its results; a
    /// backend may compute each token's rotation once for both.
    fn rope_qk(
        &self,
        q: ViewMut<'_>,
        n_head: usize,
        k: ViewMut<'_>,
        n_kv_head: usize,
        r: &RopeArgs<'_>,
    ) -> Result<()> {
        self.rope(q, n_head, r)?;
        self.rope(k, n_kv_head, r)
    }

    /// [`Backend::rope_qk`] on `q` and a copy of `k`, storing each token's rotated keys and
    /// its values `v [n_tok, v_w]` in its cache row (`dest`), with exactly the bits of the
    /// rotation then a copy; a backend may rotate the keys straight into the cache, in the
    /// same pass as the queries. `k` itself is left as it was.
    #[allow(clippy::too_many_arguments)]
    fn rope_qk_store(
        &self,
        q: ViewMut<'_>,
        n_head: usize,
        k: View<'_>,
        n_kv_head: usize,
        v: View<'_>,
        r: &RopeArgs<'_>,
        dest: KvDest<'_>,
    ) -> Result<()> {
        let mut kr = k.host()?.to_vec();
        self.rope_qk(q, n_head, ViewMut::Host(&mut kr), n_kv_head, r)?;
        let f = dest.fmt;
        self.store_kv(View::Host(&kr), dest.k, dest.rows, f.k, f.rot)?;
        self.store_kv(v, dest.v, dest.rows, f.v, f.rot)
    }

    /// Causal attention for several sequences of a batch over one layer's cache `k`, `v`:
    /// queries `q [n_rows, n_head, head_dim]`, output `out [n_rows, n_head, v_dim]`, each
    /// sequence's rows with their own positions and pages (`p.pages` is ignored; each
    /// segment brings its own). A backend may run them as one parallel step; each segment's
    /// result is exactly what [`Backend::attention`] gives for it alone.
    fn attention_many(
        &self,
        k: View<'_>,
        v: View<'_>,
        p: &AttnParams<'_>,
        q: View<'_>,
        out: ViewMut<'_>,
        segs: &[AttnSeg<'_>],
    ) -> Result<()>;

    /// Causal attention of `q [n_tok, n_head, head_dim]` (token `t` at position `pos0 + t`)
    /// over cached `k`, `v` `[pos0 + n_tok, n_kv_head, head_dim]`: `out [n_tok, n_head, v_dim]`.
    #[allow(clippy::too_many_arguments)]
    fn attention(
        &self,
        q: View<'_>,
        k: View<'_>,
        v: View<'_>,
        n_tok: usize,
        pos0: usize,
        p: &AttnParams<'_>,
        out: ViewMut<'_>,
    ) -> Result<()> {
        let seg = AttnSeg {
            row0: 0,
            n_tok,
            pos0,
            pages: p.pages,
        };
        self.attention_many(k, v, p, q, out, &[seg])
    }

    /// A gated linear unit in place: `gate[i] = act(gate[i], up[i])`.
    fn glu(&self, act: Glu, gate: ViewMut<'_>, up: View<'_>) -> Result<()> {
        let (g, u) = (gate.host()?, up.host()?);
        check_len("glu", g.len(), u.len())?;
        glu_ref(act, g, u);
        Ok(())
    }

    /// `x += y`.
    fn add(&self, x: ViewMut<'_>, y: View<'_>) -> Result<()> {
        let (x, y) = (x.host()?, y.host()?);
        check_len("add", x.len(), y.len())?;
        for (a, b) in x.iter_mut().zip(y) {
            *a += b;
        }
        Ok(())
    }

    /// `b [w]` added to each row of `x [n, w]`.
    fn add_bias(&self, x: ViewMut<'_>, b: View<'_>) -> Result<()> {
        let (x, b) = (x.host()?, b.host()?);
        if b.is_empty() || x.len() % b.len() != 0 {
            return Err(crate::Error::Invalid(format!(
                "add_bias: rows of {} values cannot take a bias of {}",
                x.len(),
                b.len()
            )));
        }
        for row in x.chunks_exact_mut(b.len()) {
            for (a, c) in row.iter_mut().zip(b) {
                *a += c;
            }
        }
        Ok(())
    }

    /// `x[t] += s[t] · y[t]` for the rows of `x`, `y` `[n, w]` and the scales `s [n]`.
    fn add_scaled_rows(&self, x: ViewMut<'_>, y: View<'_>, s: View<'_>) -> Result<()> {
        let (x, y, s) = (x.host()?, y.host()?, s.host()?);
        check_len("add_scaled_rows", x.len(), y.len())?;
        let w = x.len().checked_div(s.len()).unwrap_or(0);
        if w * s.len() != x.len() {
            return Err(crate::Error::Invalid(format!(
                "add_scaled_rows: {} values are not {} rows",
                x.len(),
                s.len()
            )));
        }
        for ((xr, yr), &st) in x.chunks_exact_mut(w).zip(y.chunks_exact(w)).zip(s) {
            for (o, &v) in xr.iter_mut().zip(yr) {
                *o += st * v;
            }
        }
        Ok(())
    }

    /// `x = 1 / (1 + exp(-x))`.
    fn sigmoid(&self, x: ViewMut<'_>) -> Result<()> {
        for v in x.host()? {
            *v = 1.0 / (1.0 + (-*v).exp());
        }
        Ok(())
    }

    /// `n_rows` rows of `width` values, row `r` from `src[r * src_stride..]` to
    /// `dst[r * dst_stride..]` (columns of an interleaved layout in or out).
    fn copy_rows(
        &self,
        src: View<'_>,
        src_stride: usize,
        dst: ViewMut<'_>,
        dst_stride: usize,
        c: RowCopy,
    ) -> Result<()> {
        let (s, d) = (src.host()?, dst.host()?);
        c.check(s.len(), src_stride, d.len(), dst_stride)?;
        for r in 0..c.n_rows {
            d[r * dst_stride..r * dst_stride + c.width]
                .copy_from_slice(&s[r * src_stride..r * src_stride + c.width]);
        }
        Ok(())
    }

    /// Row `t` of `src` (rows of `src.len() / rows.len()`) into row `rows[t]` of `dst`.
    fn store_rows(&self, src: View<'_>, dst: ViewMut<'_>, rows: &[usize]) -> Result<()> {
        let (s, d) = (src.host()?, dst.host()?);
        check_rows(s.len(), d.len(), rows)?;
        store_rows(s, d, rows);
        Ok(())
    }

    /// Row `t` of `src` (rows of `width = src.len() / rows.len()` values) into cache row
    /// `rows[t]` of `dst`, stored as `ty` (rows of `ty.row_words(width)` words; the rotated
    /// types rotated in chunks of `rot` first: see [`crate::kv`]).
    fn store_kv(
        &self,
        src: View<'_>,
        dst: ViewMut<'_>,
        rows: &[usize],
        ty: KvType,
        rot: usize,
    ) -> Result<()> {
        let _ = rot;
        match ty {
            KvType::F32 => self.store_rows(src, dst, rows),
            _ => Err(Error::Unsupported(format!(
                "the {} backend keeps its KV cache in f32 only (cache type {})",
                self.name(),
                ty.name()
            ))),
        }
    }

    /// Whether this backend's [`Backend::store_kv`] and attention take caches of type `t`.
    fn supports_kv(&self, t: KvType) -> bool {
        t == KvType::F32
    }

    /// Each token's experts and their weights from its router logits `[n_tok, n_expert]`
    /// (plus the choice-only correction `score_b [n_expert]`): `ids`, `weights`
    /// `[n_tok, n_used]`, ids as exact integer values.
    fn moe_route(
        &self,
        logits: View<'_>,
        score_b: Option<View<'_>>,
        cfg: &Routing,
        ids: ViewMut<'_>,
        weights: ViewMut<'_>,
    ) -> Result<()> {
        let (l, ids, w) = (logits.host()?, ids.host()?, weights.host()?);
        let sb = score_b.map(|b| b.host()).transpose()?;
        let (ne, k) = (cfg.n_expert, cfg.n_used);
        let n = l.len() / ne.max(1);
        if n * ne != l.len() || ids.len() != n * k || w.len() != n * k {
            return Err(crate::Error::Invalid(format!(
                "moe_route: {} logits of {ne} experts do not fit {} ids",
                l.len(),
                ids.len()
            )));
        }
        let (mut ti, mut tw) = (Vec::with_capacity(k), Vec::with_capacity(k));
        for t in 0..n {
            crate::moe::route(cfg, &l[t * ne..(t + 1) * ne], sb, &mut ti, &mut tw);
            for (j, (&i, &wi)) in ti.iter().zip(&tw).enumerate() {
                ids[t * k + j] = i as f32;
                w[t * k + j] = wi;
            }
        }
        Ok(())
    }

    /// A MoE layer's routed experts over a batch (see [`MoeJob`]).
    fn moe_experts(&self, job: MoeJob<'_>) -> Result<()>;

    /// The depthwise causal convolution with SiLU in front of linear attention, per sequence,
    /// continuing from its state (see [`crate::linear::ssm_conv_ref`]).
    #[allow(clippy::too_many_arguments)]
    fn ssm_conv(
        &self,
        x: View<'_>,
        w: View<'_>,
        state: ViewMut<'_>,
        lay: SlotLayout,
        out: ViewMut<'_>,
        channels: usize,
        segs: &[RecSeg],
    ) -> Result<()> {
        let (x, w, st, o) = (x.host()?, w.host()?, state.host()?, out.host()?);
        crate::linear::ssm_conv_ref(x, w, st, lay, o, channels, segs)
    }

    /// The gated delta rule per sequence (see [`DeltaJob`]).
    fn delta_rule(&self, j: DeltaJob<'_>) -> Result<()> {
        crate::linear::delta_rule_ref(
            j.qkv.host()?,
            j.a.host()?,
            j.b.host()?,
            j.a_coef.host()?,
            j.dt_bias.host()?,
            j.state.host()?,
            j.lay,
            j.out.host()?,
            j.shape,
            j.segs,
        )
    }

    /// DeepSeek Sparse Attention's choice of positions per query (see [`crate::dsa`]).
    fn dsa_select(&self, j: crate::dsa::DsaJob<'_>) -> Result<()> {
        crate::dsa::dsa_select_ref(
            j.keys.host()?,
            j.q.host()?,
            j.w.host()?,
            j.scores.host()?,
            j.out.host()?,
            &j.p,
            j.segs,
        )
    }

    /// Lightning attention per sequence (see [`LightningJob`]).
    fn lightning(&self, j: LightningJob<'_>) -> Result<()> {
        crate::linear::lightning_ref(
            j.qkv.host()?,
            j.decay.host()?,
            j.state.host()?,
            j.lay,
            j.out.host()?,
            j.shape,
            j.segs,
        )
    }
}

/// The shape of [`Backend::copy_rows`].
#[derive(Clone, Copy, Debug)]
pub struct RowCopy {
    /// Rows.
    pub n_rows: usize,
    /// Values per row.
    pub width: usize,
}

impl RowCopy {
    /// An error unless both sides hold every row.
    pub fn check(&self, src: usize, ss: usize, dst: usize, ds: usize) -> Result<()> {
        if self.n_rows == 0 {
            return Ok(());
        }
        let need = |stride: usize| {
            (self.n_rows - 1)
                .checked_mul(stride)
                .and_then(|v| v.checked_add(self.width))
        };
        match (need(ss), need(ds)) {
            (Some(a), Some(b)) if a <= src && b <= dst && self.width <= ss.max(self.width) => {
                Ok(())
            }
            _ => Err(crate::Error::Invalid(format!(
                "copy_rows: {} rows of {} do not fit {src} values (stride {ss}) into {dst} \
                 (stride {ds})",
                self.n_rows, self.width
            ))),
        }
    }
}

fn check_len(op: &str, a: usize, b: usize) -> Result<()> {
    if a != b {
        return Err(crate::Error::Invalid(format!(
            "{op}: lengths differ ({a} and {b})"
        )));
    }
    Ok(())
}

/// An error unless every row of a [`store_rows`] lies inside both buffers.
pub fn check_rows(src: usize, dst: usize, rows: &[usize]) -> Result<()> {
    let w = src.checked_div(rows.len()).unwrap_or(0);
    if w * rows.len() != src || rows.iter().any(|&r| (r + 1) * w > dst) {
        return Err(crate::Error::Invalid(format!(
            "store_rows: {} rows of {src} values do not fit a destination of {dst}",
            rows.len()
        )));
    }
    Ok(())
}

/// An error unless every position `0..=last` of each `(last, pages)` has its key and value row
/// (every head's part) lies inside caches of `k_words` and `v_words` words (what each
/// backend's attention checks before it reads a cache).
pub fn check_attn_rows<'a>(
    p: &AttnParams<'_>,
    k_words: usize,
    v_words: usize,
    seqs: impl Iterator<Item = (usize, Option<Pages<'a>>)>,
) -> Result<()> {
    let kw = p.kv.k.row_words(p.n_kv_head * p.head_dim);
    let vw = p.kv.v.row_words(p.n_kv_head * p.v_dim);
    if p.k_stride < kw || p.v_stride < vw {
        return Err(Error::Invalid(format!(
            "attention: cache rows of {} and {} words are narrower than {} keys and {} values",
            p.k_stride,
            p.v_stride,
            p.kv.k.name(),
            p.kv.v.name()
        )));
    }
    let n_rows = (k_words / p.k_stride.max(1)).min(v_words / p.v_stride.max(1));
    for (last, pages) in seqs {
        let bad = match pages {
            None => last >= n_rows,
            Some(pg) => (0..=last / pg.page_size.max(1)).any(|i| {
                pg.table
                    .get(i)
                    .is_none_or(|&t| (t as usize + 1) * pg.page_size > n_rows)
            }),
        };
        if bad {
            return Err(Error::Invalid(format!(
                "attention: position {last} lies outside a cache of {n_rows} rows"
            )));
        }
    }
    Ok(())
}

/// The reference of [`Backend::glu`].
pub fn glu_ref(act: Glu, g: &mut [f32], u: &[f32]) {
    match act {
        Glu::Silu => {
            for (g, u) in g.iter_mut().zip(u) {
                *g = *g / (1.0 + (-*g).exp()) * u;
            }
        }
        Glu::Sigmoid => {
            for (g, u) in g.iter_mut().zip(u) {
                *g = u / (1.0 + (-*g).exp());
            }
        }
        Glu::ClampedSwiglu { alpha, limit } => {
            for (gv, &uv) in g.iter_mut().zip(u) {
                let gc = gv.min(limit);
                let uc = uv.clamp(-limit, limit);
                *gv = gc / (1.0 + (-alpha * gc).exp()) * (uc + 1.0);
            }
        }
    }
}

/// Row `t` of `src` (rows of `src.len() / rows.len()`) into row `rows[t]` of `dst`; rows past
/// either end are skipped.
pub fn store_rows(src: &[f32], dst: &mut [f32], rows: &[usize]) {
    let Some(w) = src.len().checked_div(rows.len()).filter(|&w| w > 0) else {
        return;
    };
    for (t, &r) in rows.iter().enumerate() {
        if let (Some(d), Some(s)) = (dst.get_mut(r * w..(r + 1) * w), src.get(t * w..(t + 1) * w)) {
            d.copy_from_slice(s);
        }
    }
}
