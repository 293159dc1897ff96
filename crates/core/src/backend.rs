//! The compute interface. Models call only these methods, so a CUDA or Vulkan backend is a
//! new crate that implements this trait (and passes the same conformance tests).
//!
//! Activations are f32 slices in row-major `[n_tok, width]` layout. Weights are [`Tensor`]s,
//! each of which may live on its own [`crate::Device`]; a backend reports what it can run
//! with [`Backend::supports`].
use crate::{DType, Result, Tensor};

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
    /// Floats between consecutive positions' key rows.
    pub k_stride: usize,
    /// Floats between consecutive positions' value rows.
    pub v_stride: usize,
    /// Score scale (usually `1/sqrt(head_dim)`).
    pub scale: f32,
    /// Sliding window: attend only to the last `window` positions.
    pub window: Option<usize>,
    /// Attention sinks (gpt-oss): one extra logit per head that joins the softmax's
    /// denominator and contributes no value.
    pub sinks: Option<&'a [f32]>,
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
    pub x: &'a [f32],
    /// Tokens.
    pub n_tok: usize,
    /// Output `[n_tok, n_out]`.
    pub out: &'a mut [f32],
}

/// One sequence's part of [`Backend::attention_many`].
pub struct AttnJob<'a> {
    /// Queries `[n_tok, n_head, head_dim]`.
    pub q: &'a [f32],
    /// Tokens.
    pub n_tok: usize,
    /// Position of the first token.
    pub pos0: usize,
    /// The sequence's pages (None: positions are rows).
    pub pages: Option<Pages<'a>>,
    /// Output `[n_tok, n_head, v_dim]`.
    pub out: &'a mut [f32],
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
#[derive(Debug)]
pub struct KvDest<'a> {
    /// The layer's key rows.
    pub k: &'a mut [f32],
    /// The layer's value rows.
    pub v: &'a mut [f32],
    /// The cache row of each token of the batch.
    pub rows: &'a [usize],
}

/// Most rotated pairs per head a backend's RoPE must handle (head_dim 1024); models with
/// more are refused at load time.
pub const MAX_ROPE_PAIRS: usize = 512;

/// The compute backend.
pub trait Backend: Send + Sync {
    /// A short name ("cpu", "cuda:0").
    fn name(&self) -> String;

    /// Whether this backend can multiply by weights of `dtype`.
    fn supports(&self, dtype: DType) -> bool;

    /// Called once per matmul weight at load time: the backend may attach a copy in a layout
    /// of its own ([`Tensor::packed`]). Results must not change.
    fn prepare(&self, _w: &mut Tensor) {}

    /// Time spent per operation since the last call, as a Markdown table, when the backend
    /// keeps such accounts (the CPU backend with `HEARTH_PROFILE=1`); the accounts restart.
    fn profile_report(&self) -> Option<String> {
        None
    }

    /// `W [n_out, n_in] @ x [n_tok, n_in] -> out [n_tok, n_out]`.
    fn matmul(&self, w: &Tensor, x: &[f32], n_tok: usize, out: &mut [f32]) -> Result<()>;

    /// Several independent matmuls (a MoE layer's experts), which a backend may run as one
    /// parallel step. Each job's result is exactly what [`Backend::matmul`] gives for it.
    fn matmul_many(&self, jobs: &mut [MatJob<'_>]) -> Result<()> {
        for j in jobs.iter_mut() {
            self.matmul(j.w, j.x, j.n_tok, j.out)?;
        }
        Ok(())
    }

    /// All of `t`, decoded to f32: `out [t.numel()]` (norm weights, biases, and weights a
    /// loader rearranges).
    fn dequantize(&self, t: &Tensor, out: &mut [f32]) -> Result<()>;

    /// Row `row` of `w`, decoded to f32 (embedding lookup): `out [row_len]`.
    fn get_row(&self, w: &Tensor, row: usize, out: &mut [f32]) -> Result<()>;

    /// RMS-normalize each row of `x [n, w.len()]` in place and scale by `w`.
    fn rms_norm(&self, x: &mut [f32], w: &[f32], eps: f32) -> Result<()>;

    /// Rotate `x [n_tok, n_heads, head_dim]` in place. Token `t` is at `positions[t]`;
    /// `inv_freq` has one frequency per rotated pair (`rot_dim / 2`); `mscale` multiplies
    /// cos and sin (YaRN).
    #[allow(clippy::too_many_arguments)]
    fn rope(
        &self,
        x: &mut [f32],
        n_heads: usize,
        head_dim: usize,
        positions: &[usize],
        inv_freq: &[f32],
        style: RopeStyle,
        mscale: f32,
    ) -> Result<()>;

    /// [`Backend::rope`] on the queries `q [n_tok, n_head, head_dim]` and the keys
    /// `k [n_tok, n_kv_head, head_dim]` of the same tokens, with exactly its results; a
    /// backend may compute each token's rotation once for both.
    fn rope_qk(
        &self,
        q: &mut [f32],
        n_head: usize,
        k: &mut [f32],
        n_kv_head: usize,
        r: &RopeArgs<'_>,
    ) -> Result<()> {
        self.rope(
            q,
            n_head,
            r.head_dim,
            r.positions,
            r.inv_freq,
            r.style,
            r.mscale,
        )?;
        self.rope(
            k,
            n_kv_head,
            r.head_dim,
            r.positions,
            r.inv_freq,
            r.style,
            r.mscale,
        )
    }

    /// [`Backend::rope_qk`] on `q` and a copy of `k`, storing each token's rotated keys and
    /// its values `v [n_tok, v_w]` in its cache row (`dest`), with exactly the bits of the
    /// rotation then a copy; a backend may rotate the keys straight into the cache, in the
    /// same pass as the queries. `k` itself is left as it was.
    #[allow(clippy::too_many_arguments)]
    fn rope_qk_store(
        &self,
        q: &mut [f32],
        n_head: usize,
        k: &[f32],
        n_kv_head: usize,
        v: &[f32],
        r: &RopeArgs<'_>,
        dest: KvDest<'_>,
    ) -> Result<()> {
        let mut kr = k.to_vec();
        self.rope_qk(q, n_head, &mut kr, n_kv_head, r)?;
        store_rows(&kr, dest.k, dest.rows);
        store_rows(v, dest.v, dest.rows);
        Ok(())
    }

    /// Attention for several sequences of a batch over one layer's cache, each with its own
    /// queries, positions and pages (`p.pages` is ignored; each job brings its own). A backend
    /// may run them as one parallel step; each job's result is exactly what
    /// [`Backend::attention`] gives for it.
    fn attention_many(
        &self,
        k: &[f32],
        v: &[f32],
        p: &AttnParams<'_>,
        jobs: &mut [AttnJob<'_>],
    ) -> Result<()> {
        for j in jobs.iter_mut() {
            let mut pj = *p;
            pj.pages = j.pages;
            self.attention(j.q, k, v, j.n_tok, j.pos0, &pj, j.out)?;
        }
        Ok(())
    }

    /// Causal attention of `q [n_tok, n_head, head_dim]` (token `t` at position `pos0 + t`)
    /// over cached `k`, `v` `[pos0 + n_tok, n_kv_head, head_dim]`: `out [n_tok, n_head, head_dim]`.
    fn attention(
        &self,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        n_tok: usize,
        pos0: usize,
        p: &AttnParams<'_>,
        out: &mut [f32],
    ) -> Result<()>;

    /// `gate[i] = silu(gate[i]) * up[i]`.
    fn silu_mul(&self, gate: &mut [f32], up: &[f32]) -> Result<()>;
}

/// Row `t` of `src` (rows of `src.len() / rows.len()`) into row `rows[t]` of `dst`; rows past
/// either end are skipped.
pub fn store_rows(src: &[f32], dst: &mut [f32], rows: &[usize]) {
    let Some(w) = src.len().checked_div(rows.len()).filter(|&w| w > 0) else {
        return;
    };
    for (t, &r) in rows.iter().enumerate() {
        debug_assert!((r + 1) * w <= dst.len() && (t + 1) * w <= src.len());
        if let (Some(d), Some(s)) = (dst.get_mut(r * w..(r + 1) * w), src.get(t * w..(t + 1) * w)) {
            d.copy_from_slice(s);
        }
    }
}
