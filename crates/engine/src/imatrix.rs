//! `hearth imatrix`: the importance matrix of llama.cpp's `llama-imatrix`.
//!
//! [`Collector`] is a [`Backend`] that wraps the real one and delegates every op to it; on
//! the way, it adds up the squares of the activations that enter each weight matrix, per
//! input column, with the number of tokens summed: `matmul` and `matmul_many` for the dense
//! matrices, `moe_experts` per expert with only the tokens routed to it (the inputs of an
//! expert's down projection are recomputed from its gate and up projections). Models need no
//! change. The rules are llama.cpp's: only `blk.*` matrices (`output.weight` on request),
//! dense matmuls of fewer than 16 tokens are skipped, expert matmuls never are.
use crate::Engine;
use hearth_core::linear::{RecSeg, SlotLayout};
use hearth_core::{AttnParams, AttnSeg, KvDest, KvType, RopeArgs, RowCopy};
use hearth_core::{
    Backend, Buf, DType, DeltaJob, Error, Glu, LightningJob, MatJob, MoeJob, Result, Routing,
    Tensor, View, ViewMut,
};
use hearth_formats::imatrix::{Imatrix, ImatrixEntry, imatrix_name};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Sums for one matrix (or one merged expert tensor).
#[derive(Default)]
struct Acc {
    sums: Vec<f64>,
    counts: Vec<u64>,
}

/// A backend that records the importance matrix while delegating to `inner`.
pub struct Collector {
    inner: Arc<dyn Backend>,
    stats: Mutex<HashMap<String, Acc>>,
    /// Also collect `output.weight` (llama-imatrix's `--process-output`).
    pub process_output: bool,
}

impl Collector {
    /// Wrap `inner`.
    pub fn new(inner: Arc<dyn Backend>, process_output: bool) -> Collector {
        Collector {
            inner,
            stats: Mutex::new(HashMap::new()),
            process_output,
        }
    }

    fn wanted(&self, name: &str) -> bool {
        name.starts_with("blk.") || (self.process_output && name == "output.weight")
    }

    fn host(&self, x: View<'_>) -> Result<Vec<f32>> {
        let mut v = vec![0f32; x.len()];
        self.inner.download(x, &mut v)?;
        Ok(v)
    }

    /// Add the rows of `x [n_tok, n_in]` entering the dense matrix `w`.
    fn dense(&self, w: &Tensor, x: View<'_>, n_tok: usize) -> Result<()> {
        if n_tok < 16 {
            return Ok(());
        }
        if let Some((name, h)) = mla_head(&w.name) {
            return self.head(&name, h, w.row_len(), x, n_tok);
        }
        let Some((name, None)) = imatrix_name(&w.name) else {
            return Ok(());
        };
        if !self.wanted(&name) {
            return Ok(());
        }
        let n_in = w.row_len();
        let x = self.host(x)?;
        if x.len() != n_tok * n_in {
            return Err(Error::Invalid(format!(
                "imatrix: {} inputs for {n_tok} tokens of {n_in} into {}",
                x.len(),
                w.name
            )));
        }
        let mut st = self.stats.lock().map_err(|_| poisoned())?;
        let e = st.entry(name.clone()).or_default();
        if e.sums.is_empty() {
            e.sums = vec![0.0; n_in];
            e.counts = vec![0];
        } else if e.sums.len() != n_in || e.counts.len() != 1 {
            return Err(Error::Invalid(format!(
                "imatrix: {name} seen with {n_in} and with {} inputs",
                e.sums.len()
            )));
        }
        for row in x.chunks_exact(n_in) {
            for (s, &v) in e.sums.iter_mut().zip(row) {
                *s += (v as f64) * (v as f64);
            }
        }
        e.counts[0] += n_tok as u64;
        check_finite(&name, &e.sums)
    }

    /// Add the rows entering head `h` of MLA's per-head matrix `name` (`attn_k_b`, `attn_v_b`,
    /// 3-D in llama.cpp's files): one entry of `n_head * n_in` sums and a single count of
    /// tokens, as llama-imatrix keeps a dense 3-D matrix (each head sees every token).
    fn head(&self, name: &str, h: usize, n_in: usize, x: View<'_>, n_tok: usize) -> Result<()> {
        if !self.wanted(name) || h >= 1 << 16 {
            return Ok(());
        }
        let x = self.host(x)?;
        if x.len() != n_tok * n_in {
            return Err(Error::Invalid(format!(
                "imatrix: {} inputs for {n_tok} tokens of {n_in} into head {h} of {name}",
                x.len()
            )));
        }
        let mut st = self.stats.lock().map_err(|_| poisoned())?;
        let e = st.entry(name.to_string()).or_default();
        if e.counts.is_empty() {
            e.counts = vec![0];
        }
        if e.sums.len() % n_in.max(1) != 0 || e.counts.len() != 1 {
            return Err(Error::Invalid(format!(
                "imatrix: {name} seen with two shapes"
            )));
        }
        if e.sums.len() < (h + 1) * n_in {
            e.sums.resize((h + 1) * n_in, 0.0);
        }
        let acc = &mut e.sums[h * n_in..(h + 1) * n_in];
        for row in x.chunks_exact(n_in) {
            for (s, &v) in acc.iter_mut().zip(row) {
                *s += (v as f64) * (v as f64);
            }
        }
        // every head sees the same tokens: count them once
        if h == 0 {
            e.counts[0] += n_tok as u64;
        }
        check_finite(name, acc)
    }

    /// Add `rows` (each `n_in` wide) as expert `ex` of `n_as` of the merged tensor `name`.
    fn expert(&self, name: &str, ex: usize, n_as: usize, rows: &[f32], n_in: usize) -> Result<()> {
        let mut st = self.stats.lock().map_err(|_| poisoned())?;
        let e = st.entry(name.to_string()).or_default();
        if e.sums.is_empty() {
            e.sums = vec![0.0; n_as * n_in];
            e.counts = vec![0; n_as];
        } else if e.sums.len() != n_as * n_in || e.counts.len() != n_as {
            return Err(Error::Invalid(format!(
                "imatrix: {name} seen with two shapes"
            )));
        }
        let acc = &mut e.sums[ex * n_in..(ex + 1) * n_in];
        for row in rows.chunks_exact(n_in) {
            for (s, &v) in acc.iter_mut().zip(row) {
                *s += (v as f64) * (v as f64);
            }
            e.counts[ex] += 1;
        }
        check_finite(name, acc)
    }

    /// The routed experts' inputs: each expert's gate/up inputs are the rows of the tokens
    /// routed to it, its down inputs `act(gate · x, up · x)` for them.
    fn moe(&self, j: &MoeJob<'_>) -> Result<()> {
        let n_as = j.experts.len();
        let Some(first) = j.experts.first() else {
            return Ok(());
        };
        let names = |t: &Tensor| match imatrix_name(&t.name) {
            Some((n, Some(_))) if self.wanted(&n) => Some(n),
            _ => None,
        };
        let (Some(gn), Some(un), Some(dn)) =
            (names(&first.gate), names(&first.up), names(&first.down))
        else {
            return Ok(());
        };
        let x = self.host(j.x)?;
        let ids = self.host(j.ids)?;
        let n_in = x.len() / j.n_tok.max(1);
        let mut routed: Vec<Vec<usize>> = vec![Vec::new(); n_as];
        for (t, row) in ids.chunks_exact(j.n_used.max(1)).enumerate() {
            for &id in row {
                let e = id as usize;
                if id < 0.0 || e >= n_as || e as f32 != id {
                    return Err(Error::Invalid(format!("imatrix: expert id {id} of {n_as}")));
                }
                routed[e].push(t);
            }
        }
        for (e, toks) in routed.iter().enumerate() {
            if toks.is_empty() {
                continue;
            }
            let ex = &j.experts[e];
            let m = toks.len();
            let mut xs = Vec::with_capacity(m * n_in);
            for &t in toks {
                xs.extend_from_slice(&x[t * n_in..(t + 1) * n_in]);
            }
            self.expert(&gn, e, n_as, &xs, n_in)?;
            self.expert(&un, e, n_as, &xs, n_in)?;
            let ff = ex.gate.shape[0];
            let (mut g, mut u) = (vec![0f32; m * ff], vec![0f32; m * ff]);
            self.inner
                .matmul(&ex.gate, View::Host(&xs), m, ViewMut::Host(&mut g))?;
            self.inner
                .matmul(&ex.up, View::Host(&xs), m, ViewMut::Host(&mut u))?;
            for (v, b) in [(&mut g, &ex.gate_b), (&mut u, &ex.up_b)] {
                if let Some(b) = b {
                    let b = self.host(b.view())?;
                    for row in v.chunks_exact_mut(ff) {
                        for (a, c) in row.iter_mut().zip(&b) {
                            *a += c;
                        }
                    }
                }
            }
            hearth_core::glu_ref(j.act, &mut g, &u);
            self.expert(&dn, e, n_as, &g, ff)?;
        }
        Ok(())
    }

    /// The statistics so far, with the file's metadata.
    pub fn imatrix(&self, datasets: Vec<String>, chunk_count: u32, chunk_size: u32) -> Imatrix {
        let st = self.stats.lock().unwrap_or_else(|p| p.into_inner());
        Imatrix {
            entries: st
                .iter()
                .map(|(k, a)| {
                    (
                        k.clone(),
                        ImatrixEntry {
                            sums: a.sums.iter().map(|&v| v as f32).collect(),
                            counts: a.counts.iter().map(|&c| c as f64).collect(),
                        },
                    )
                })
                .collect(),
            datasets,
            chunk_count,
            chunk_size,
        }
    }
}

fn poisoned() -> Error {
    Error::Backend("imatrix: a thread panicked while collecting".into())
}

/// MLA's per-head matrices as the loader names them, and the entry and head they belong to:
/// `X.attn_k_b.weight[h]` and `X.attn_v_b.weight[h]` (slices of llama.cpp's split tensors),
/// `X.attn_kv_b.weight.k_b[h]` and `X.attn_kv_b.weight.v_b[h]` (made from `kv_b`, which
/// llama.cpp's converter splits into those two).
fn mla_head(name: &str) -> Option<(String, usize)> {
    let (base, rest) = name.split_once('[')?;
    let h: usize = rest.strip_suffix(']')?.parse().ok()?;
    let blk = base
        .strip_suffix(".attn_k_b.weight")
        .or_else(|| base.strip_suffix(".attn_kv_b.weight.k_b"))
        .map(|b| (b, "attn_k_b"))
        .or_else(|| {
            base.strip_suffix(".attn_v_b.weight")
                .or_else(|| base.strip_suffix(".attn_kv_b.weight.v_b"))
                .map(|b| (b, "attn_v_b"))
        })?;
    Some((format!("{}.{}.weight", blk.0, blk.1), h))
}

fn check_finite(name: &str, v: &[f64]) -> Result<()> {
    if v.iter().all(|x| x.is_finite()) {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "imatrix: non-finite activations entering {name}"
        )))
    }
}

/// Settings of an imatrix run.
#[derive(Clone, Debug)]
pub struct ImatrixOpts {
    /// Tokens per window (chunk).
    pub n_ctx: usize,
    /// Most windows (None: as many as the text holds).
    pub n_chunks: Option<usize>,
    /// Tokens per forward pass.
    pub n_batch: usize,
}

impl Default for ImatrixOpts {
    fn default() -> Self {
        ImatrixOpts {
            n_ctx: 512,
            n_chunks: None,
            n_batch: 512,
        }
    }
}

/// Run `tokens` (the text tokenized with BOS as the model adds it) through `eng`, loaded on
/// `col`, in windows as llama-imatrix does (each from an empty cache, its first token BOS
/// when the model adds BOS); `on_chunk(done, total)` after each. Returns the windows run.
pub fn run(
    eng: &Engine,
    tokens: &[u32],
    o: &ImatrixOpts,
    mut on_chunk: impl FnMut(usize, usize),
) -> Result<usize> {
    let n_ctx = o.n_ctx;
    if n_ctx == 0 || o.n_batch == 0 {
        return Err(Error::Invalid("--ctx and -b must be at least 1".into()));
    }
    if tokens.len() < 2 * n_ctx {
        return Err(Error::Invalid(format!(
            "you need at least {} tokens for a context of {n_ctx}: the text tokenizes to only {}",
            2 * n_ctx,
            tokens.len()
        )));
    }
    let n_chunk = o
        .n_chunks
        .map_or(tokens.len() / n_ctx, |c| c.min(tokens.len() / n_ctx));
    if n_chunk == 0 {
        return Err(Error::Invalid("--chunks must be at least 1".into()));
    }
    eng.check_context(n_ctx, "--ctx")?;
    let mut state = eng.model.new_state(n_ctx)?;
    let bos = eng.tokenizer.bos.filter(|_| eng.tokenizer.add_bos);
    let mut logits = Vec::new();
    for c in 0..n_chunk {
        let mut w = tokens[c * n_ctx..(c + 1) * n_ctx].to_vec();
        if let Some(b) = bos {
            w[0] = b;
        }
        state.truncate(0);
        for piece in w.chunks(o.n_batch) {
            eng.model.forward(piece, &mut state, false, &mut logits)?;
        }
        on_chunk(c + 1, n_chunk);
    }
    Ok(n_chunk)
}

impl Backend for Collector {
    fn name(&self) -> String {
        self.inner.name()
    }
    fn supports(&self, dtype: DType) -> bool {
        self.inner.supports(dtype)
    }
    fn host_weights(&self, bytes: usize) {
        self.inner.host_weights(bytes)
    }
    fn prepare(&self, w: &mut Tensor) {
        self.inner.prepare(w)
    }
    fn plan_prepare(&self, w: &Tensor) -> usize {
        self.inner.plan_prepare(w)
    }
    fn profile_report(&self) -> Option<String> {
        self.inner.profile_report()
    }
    fn memory(&self) -> Option<u64> {
        self.inner.memory()
    }
    fn weight_bytes(&self, w: &Tensor) -> usize {
        self.inner.weight_bytes(w)
    }
    fn weight_bytes_in_place(&self, w: &Tensor) -> usize {
        self.inner.weight_bytes_in_place(w)
    }
    fn alloc(&self, n: usize) -> Result<Buf> {
        self.inner.alloc(n)
    }
    fn upload_new(&self, data: &[f32]) -> Result<Buf> {
        self.inner.upload_new(data)
    }
    fn upload(&self, src: &[f32], dst: ViewMut<'_>) -> Result<()> {
        self.inner.upload(src, dst)
    }
    fn download(&self, src: View<'_>, dst: &mut [f32]) -> Result<()> {
        self.inner.download(src, dst)
    }
    fn matmul(&self, w: &Tensor, x: View<'_>, n_tok: usize, out: ViewMut<'_>) -> Result<()> {
        self.dense(w, x, n_tok)?;
        self.inner.matmul(w, x, n_tok, out)
    }
    fn matmul_many(&self, jobs: &mut [MatJob<'_>]) -> Result<()> {
        for j in jobs.iter() {
            self.dense(j.w, j.x, j.n_tok)?;
        }
        self.inner.matmul_many(jobs)
    }
    fn dequantize(&self, t: &Tensor, out: &mut [f32]) -> Result<()> {
        self.inner.dequantize(t, out)
    }
    fn get_rows(&self, w: &Tensor, ids: &[u32], out: ViewMut<'_>) -> Result<()> {
        self.inner.get_rows(w, ids, out)
    }
    fn rms_norm(&self, x: ViewMut<'_>, w: View<'_>, eps: f32) -> Result<()> {
        self.inner.rms_norm(x, w, eps)
    }
    fn rope(&self, x: ViewMut<'_>, n_heads: usize, r: &RopeArgs<'_>) -> Result<()> {
        self.inner.rope(x, n_heads, r)
    }
    fn rope_qk(
        &self,
        q: ViewMut<'_>,
        n_head: usize,
        k: ViewMut<'_>,
        n_kv_head: usize,
        r: &RopeArgs<'_>,
    ) -> Result<()> {
        self.inner.rope_qk(q, n_head, k, n_kv_head, r)
    }
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
        self.inner
            .rope_qk_store(q, n_head, k, n_kv_head, v, r, dest)
    }
    fn attention_many(
        &self,
        k: View<'_>,
        v: View<'_>,
        p: &AttnParams<'_>,
        q: View<'_>,
        out: ViewMut<'_>,
        segs: &[AttnSeg<'_>],
    ) -> Result<()> {
        self.inner.attention_many(k, v, p, q, out, segs)
    }
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
        self.inner.attention(q, k, v, n_tok, pos0, p, out)
    }
    fn glu(&self, act: Glu, gate: ViewMut<'_>, up: View<'_>) -> Result<()> {
        self.inner.glu(act, gate, up)
    }
    fn add(&self, x: ViewMut<'_>, y: View<'_>) -> Result<()> {
        self.inner.add(x, y)
    }
    fn add_bias(&self, x: ViewMut<'_>, b: View<'_>) -> Result<()> {
        self.inner.add_bias(x, b)
    }
    fn add_scaled_rows(&self, x: ViewMut<'_>, y: View<'_>, s: View<'_>) -> Result<()> {
        self.inner.add_scaled_rows(x, y, s)
    }
    fn sigmoid(&self, x: ViewMut<'_>) -> Result<()> {
        self.inner.sigmoid(x)
    }
    fn copy_rows(
        &self,
        src: View<'_>,
        src_stride: usize,
        dst: ViewMut<'_>,
        dst_stride: usize,
        c: RowCopy,
    ) -> Result<()> {
        self.inner.copy_rows(src, src_stride, dst, dst_stride, c)
    }
    fn store_rows(&self, src: View<'_>, dst: ViewMut<'_>, rows: &[usize]) -> Result<()> {
        self.inner.store_rows(src, dst, rows)
    }
    fn store_kv(
        &self,
        src: View<'_>,
        dst: ViewMut<'_>,
        rows: &[usize],
        ty: KvType,
        rot: usize,
    ) -> Result<()> {
        self.inner.store_kv(src, dst, rows, ty, rot)
    }
    fn supports_kv(&self, t: KvType) -> bool {
        self.inner.supports_kv(t)
    }
    fn moe_route(
        &self,
        logits: View<'_>,
        score_b: Option<View<'_>>,
        cfg: &Routing,
        ids: ViewMut<'_>,
        weights: ViewMut<'_>,
    ) -> Result<()> {
        self.inner.moe_route(logits, score_b, cfg, ids, weights)
    }
    fn moe_experts(&self, job: MoeJob<'_>) -> Result<()> {
        self.moe(&job)?;
        self.inner.moe_experts(job)
    }
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
        self.inner.ssm_conv(x, w, state, lay, out, channels, segs)
    }
    fn delta_rule(&self, j: DeltaJob<'_>) -> Result<()> {
        self.inner.delta_rule(j)
    }
    fn dsa_select(&self, j: hearth_core::dsa::DsaJob<'_>) -> Result<()> {
        self.inner.dsa_select(j)
    }
    fn lightning(&self, j: LightningJob<'_>) -> Result<()> {
        self.inner.lightning(j)
    }
}

#[cfg(test)]
mod mla_tests {
    use super::mla_head;

    #[test]
    fn mla_heads_map_to_llama_cpps_split_tensors() {
        let k = Some(("blk.3.attn_k_b.weight".to_string(), 5));
        let v = Some(("blk.3.attn_v_b.weight".to_string(), 0));
        assert_eq!(mla_head("blk.3.attn_k_b.weight[5]"), k);
        assert_eq!(mla_head("blk.3.attn_kv_b.weight.k_b[5]"), k);
        assert_eq!(mla_head("blk.3.attn_v_b.weight[0]"), v);
        assert_eq!(mla_head("blk.3.attn_kv_b.weight.v_b[0]"), v);
        assert_eq!(mla_head("blk.3.ffn_up_exps.weight[5]"), None);
        assert_eq!(mla_head("blk.3.attn_k_b.weight"), None);
        assert_eq!(mla_head("blk.3.attn_k_b.weight[x]"), None);
    }
}
