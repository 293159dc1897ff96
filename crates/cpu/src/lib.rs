//! hearth-cpu: the CPU backend.
//!
//! Matmuls run on quantized weights directly, one block at a time (never decoding a whole
//! tensor). For Q4_0/Q4_1/Q5_0/Q5_1/Q8_0/Q6_K and the other K types the activations are first
//! quantized to 16-bit integers (Q4_K: 8-bit per 256) and each block's dot is an exact integer
//! sum. `matmul_many` runs independent matmuls (q/k/v, gate/up, a MoE layer's experts) as one
//! parallel step over all their rows, in tasks of about equal work. A batch puts 8 tokens in
//! the SIMD lanes (16 with AVX-512) but runs the one-token float steps for every (row,
//! token), so batching never changes a token's result. Attention is in `attn.rs`. Work is
//! split over a persistent thread pool (`pool.rs`); `HEARTH_PROFILE=1` keeps time per
//! operation (`prof.rs`).
#![deny(missing_docs)]

mod attn;
mod attn_q;
mod linear;
mod moe;
mod pool;
mod prof;

use hearth_core::{
    AttnParams, AttnSeg, Backend, DType, Device, Error, Glu, KvDest, MatJob, MoeJob, Pages, Result,
    RopeArgs, RopeStyle, Tensor, View, ViewMut,
};
use hearth_quant::acts::{QuantizedActs, supports_q16};
use hearth_quant::{dequantize, dot_f32, dot_row, pack, rows_q16, rows_q16_packed};

/// One matmul of [`Cpu::matmul_many_h`], on host slices.
struct HostJob<'a> {
    w: &'a Tensor,
    x: &'a [f32],
    n_tok: usize,
    out: &'a mut [f32],
}

/// One sequence's part of [`Cpu::attention_many_h`].
struct AttnJob<'a> {
    q: &'a [f32],
    n_tok: usize,
    pos0: usize,
    pages: Option<Pages<'a>>,
    out: &'a mut [f32],
}

/// The cache rows of [`Cpu::rope_qk_store_h`].
struct HostKv<'a> {
    k: &'a mut [f32],
    v: &'a mut [f32],
    rows: &'a [usize],
}

/// The CPU backend.
pub struct Cpu {
    pool: pool::Pool,
    /// Reused buffer for activations quantized to 16 bits (integer kernels).
    acts: std::sync::Mutex<QuantizedActs>,
    /// `matmul_many`'s quantized activations, one per distinct input, kept between calls.
    acts_many: std::sync::Mutex<Vec<QuantizedActs>>,
    /// Bytes of packed weight copies still allowed ([`Backend::prepare`]).
    pack_budget: std::sync::atomic::AtomicUsize,
    /// The memory available when the backend started (None: unknown; 0: packing is off).
    avail: Option<usize>,
}

/// Zeroed anonymous memory for a packed copy, in transparent huge pages where the system
/// offers them on request: a page fault per 2 MiB rather than per 4 KiB when packing.
fn anon(len: usize) -> Option<memmap2::MmapMut> {
    let m = memmap2::MmapMut::map_anon(len.max(1)).ok()?;
    #[cfg(target_os = "linux")]
    let _ = m.advise(memmap2::Advice::HugePage);
    Some(m)
}

/// The memory available now (`MemAvailable`), unless packing is off (`HEARTH_REPACK=0`: 0);
/// None where it cannot be read.
fn pack_memory() -> Option<usize> {
    if std::env::var("HEARTH_REPACK").is_ok_and(|v| v == "0") {
        return Some(0);
    }
    let m = std::fs::read_to_string("/proc/meminfo").ok()?;
    let l = m.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb = l.split_whitespace().nth(1)?.parse::<usize>().ok()?;
    Some(kb.saturating_mul(1024))
}

/// Bytes the packed weight copies may take: half the memory available beside the model's
/// files (`files`, told by [`Backend::host_weights`]; the rest is left for the KV cache and
/// the activations), so that a model near the size of RAM keeps only its memory-mapped
/// original; no limit where the memory cannot be read.
fn pack_budget(avail: Option<usize>, files: usize) -> usize {
    avail.map_or(usize::MAX, |a| a.saturating_sub(files) / 2)
}

impl Cpu {
    /// A backend with `threads` worker threads (0: one per core).
    pub fn new(threads: usize) -> Result<Cpu> {
        let threads = Cpu::threads_for(threads);
        let avail = pack_memory();
        let pool = pool::Pool::new(threads)
            .map_err(|e| Error::Invalid(format!("cannot start the thread pool: {e}")))?;
        Ok(Cpu {
            pool,
            acts: Default::default(),
            acts_many: Default::default(),
            pack_budget: pack_budget(avail, 0).into(),
            avail,
        })
    }

    /// The worker threads `Cpu::new(threads)` starts (0: one per core).
    pub fn threads_for(threads: usize) -> usize {
        if threads == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            threads
        }
    }

    /// Worker threads.
    pub fn threads(&self) -> usize {
        self.pool.threads()
    }

    /// `f(range)` over `0..n` items of `cost` values each: in one even share per thread when
    /// there are enough values to pay for a parallel step (a batch), else on this thread
    /// (decoding). Element-wise work gives the same result either way.
    fn split(&self, n: usize, cost: usize, f: &(dyn Fn(std::ops::Range<usize>) + Sync)) {
        let threads = self.threads();
        if threads == 1 || n.saturating_mul(cost) < 1 << 15 {
            f(0..n);
            return;
        }
        let per = n.div_ceil(threads);
        self.pool
            .run(&|ci| f((ci * per).min(n)..((ci + 1) * per).min(n)));
    }

    /// `f(t, cs)` for every token `t < n_tok`, with `cs` its (cos, sin) table
    /// ([`rope_table`]): tokens in parallel for a batch (`cost`: values rotated per token).
    fn rope_tokens(
        &self,
        n_tok: usize,
        cost: usize,
        positions: &[usize],
        inv_freq: &[f32],
        mscale: f32,
        f: &(dyn Fn(usize, &[(f32, f32)]) + Sync),
    ) {
        let half = inv_freq.len().min(MAX_ROPE_PAIRS);
        self.split(n_tok, cost, &|toks| {
            let mut cs = [(0f32, 0f32); MAX_ROPE_PAIRS];
            let cs = &mut cs[..half];
            for t in toks {
                rope_table(cs, positions[t], inv_freq, mscale);
                f(t, cs);
            }
        });
    }

    /// Quantize `x` (rows of `n`) for the integer kernels; a batch of at least
    /// [`PAR_QUANTIZE`] values in parts on every thread.
    fn quantize(&self, a: &mut QuantizedActs, x: &[f32], n: usize, q16: bool, k8: bool) {
        let _t = prof::Timer::op(prof::Op::Quantize);
        if x.len() >= PAR_QUANTIZE && self.threads() > 1 {
            a.quantize_forms_with(x, n, q16, k8, self.threads(), &|f| self.pool.run(f));
        } else {
            a.quantize_forms(x, n, q16, k8);
        }
    }

    /// The bytes of `w`'s packed copy, taken from the packing budget; None where it is not
    /// packed (a type without integer kernels, no AVX2, not on the CPU, or over the budget).
    fn reserve_pack(&self, w: &Tensor) -> Option<usize> {
        use std::sync::atomic::Ordering::Relaxed;
        if w.device != Device::Cpu
            || w.shape.len() < 2
            || !pack::packable(w.dtype)
            || !hearth_quant::has_avx2()
        {
            return None;
        }
        let rows = w.shape[w.shape.len() - 2];
        let slices = w.n_rows() / rows.max(1);
        let len = pack::packed_len(w.dtype, w.row_bytes(), rows) * slices;
        self.pack_budget
            .fetch_update(Relaxed, Relaxed, |b| b.checked_sub(len))
            .ok()?;
        Some(len)
    }

    /// `f(rows)` over `0..total` rows in one parallel step: tasks of whole packed groups,
    /// about four per thread (eight for batches of `n_tok` of 16 or more, where a task is long
    /// enough that the threads' wait for the last one shows), taken in turn from a shared
    /// counter, so that a thread slowed down (by another process, a page fault) takes fewer
    /// of them.
    fn row_tasks(&self, total: usize, n_tok: usize, f: &(dyn Fn(std::ops::Range<usize>) + Sync)) {
        use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
        let g = hearth_core::PACK_ROWS;
        let chunk = total
            .div_ceil(self.threads() * if n_tok >= 16 { 8 } else { 4 })
            .next_multiple_of(g)
            .max(g);
        let next = AtomicUsize::new(0);
        self.pool.run(&|_| {
            loop {
                let lo = next.fetch_add(1, Relaxed).saturating_mul(chunk);
                if lo >= total {
                    break;
                }
                f(lo..(lo + chunk).min(total));
            }
        });
    }
}

/// The rows of `jobs` cut into tasks of about equal work (rows x tokens x row length; a MoE
/// layer's experts have very different numbers of tokens): about 8 tasks per thread for
/// batches (4 when decoding), each a list of `(job, first row, end row)` pieces that start on
/// whole groups of rows (16 for batches, whose kernels block 16 rows; `PACK_ROWS` otherwise,
/// as the packed layout needs).
fn work_tasks(jobs: &[RowJob<'_>], threads: usize) -> Vec<Vec<(usize, usize, usize)>> {
    let n_tok = jobs.iter().map(|j| j.n_tok).max().unwrap_or(0);
    let g = if n_tok >= 16 {
        16
    } else {
        hearth_core::PACK_ROWS
    };
    let per_row = |j: &RowJob<'_>| j.n_tok.max(1) * j.w.row_len().max(1);
    let total: usize = jobs.iter().map(|j| per_row(j) * j.w.n_rows()).sum();
    let target = total
        .div_ceil(threads * if n_tok >= 16 { 8 } else { 4 })
        .max(1);
    let mut tasks = Vec::new();
    let (mut cur, mut budget) = (Vec::new(), target);
    for (k, j) in jobs.iter().enumerate() {
        let (n, c) = (j.w.n_rows(), per_row(j));
        let mut r = 0;
        while r < n {
            // whole groups of rows that fit the budget (at least one group)
            let fit = (budget / c).max(1).next_multiple_of(g);
            let r1 = (r + fit).min(n);
            cur.push((k, r, r1));
            budget = budget.saturating_sub((r1 - r) * c);
            r = r1;
            if budget == 0 {
                tasks.push(std::mem::take(&mut cur));
                budget = target;
            }
        }
    }
    if !cur.is_empty() {
        tasks.push(cur);
    }
    tasks
}

/// Fewest activation values quantized in parallel.
const PAR_QUANTIZE: usize = 1 << 15;

/// Most rotated pairs per head the rope kernel handles (head_dim 1024): the interface's.
pub use hearth_core::MAX_ROPE_PAIRS;

#[derive(Clone, Copy)]
struct SendPtr<T = f32>(*mut T);
// SAFETY: used only to write disjoint elements from parallel tasks.
unsafe impl<T> Send for SendPtr<T> {}
unsafe impl<T> Sync for SendPtr<T> {}

fn check_job(w: &Tensor, x: &[f32], n_tok: usize, out: &[f32]) -> Result<()> {
    check_cpu(w)?;
    let (n_in, n_out) = (w.row_len(), w.n_rows());
    if x.len() != n_tok * n_in || out.len() != n_tok * n_out {
        return Err(Error::Invalid(format!(
            "matmul {}: weight [{n_out}, {n_in}], x has {} values for {n_tok} tokens, out {}",
            w.name,
            x.len(),
            out.len()
        )));
    }
    Ok(())
}

/// One matmul's operands, shared by the tasks that compute its rows.
struct RowJob<'a> {
    w: &'a Tensor,
    x: &'a [f32],
    n_tok: usize,
    out: SendPtr,
}
// SAFETY: tasks write disjoint (token, row) elements of `out`.
unsafe impl Sync for RowJob<'_> {}

impl RowJob<'_> {
    /// Rows `rows` of the output for every token. Each (row, token) result is computed exactly
    /// as a one-token call computes it, so a token's result never depends on its batch.
    fn rows(&self, rows: std::ops::Range<usize>, acts: Option<&QuantizedActs>) {
        let (dtype, rb, bytes) = (self.w.dtype, self.w.row_bytes(), self.w.bytes());
        let (n_in, n_out, n_tok) = (self.w.row_len(), self.w.n_rows(), self.n_tok);
        let put = OutRows {
            out: self.out,
            n_out,
            n_tok,
        };
        if let Some(acts) = acts {
            // the packed layout serves decode steps (up to 15 tokens, a few at once); larger
            // batches read the original rows with tokens in lanes. Both give the same bits.
            if let Some(p) = self
                .w
                .packed
                .as_ref()
                .filter(|_| n_tok < hearth_quant::pack::PACKED_BELOW)
            {
                return rows_q16_packed(dtype, p.bytes(), rb, n_out, rows, acts, n_tok, put);
            }
            return rows_q16(dtype, bytes, rb, rows, acts, n_tok, put);
        }
        if dtype == DType::F32 {
            return hearth_quant::rows_f32(bytes, rb, rows, self.x, n_tok, put);
        }
        let mut put = put;
        for r in rows {
            let row = &bytes[r * rb..(r + 1) * rb];
            for t in 0..n_tok {
                hearth_quant::Sink::put(
                    &mut put,
                    t,
                    r,
                    dot_row(dtype, row, &self.x[t * n_in..(t + 1) * n_in]),
                );
            }
        }
    }
}

/// A matmul's output `[n_tok, n_out]` as a [`hearth_quant::Sink`] for one task's rows.
struct OutRows {
    out: SendPtr,
    n_out: usize,
    n_tok: usize,
}

impl hearth_quant::Sink for OutRows {
    #[inline(always)]
    fn put(&mut self, t: usize, r: usize, v: f32) {
        debug_assert!(t < self.n_tok && r < self.n_out);
        // SAFETY: the kernels put only tokens below n_tok and rows of this task's range
        // (below n_out), which no other task writes.
        unsafe { *self.out.0.add(t * self.n_out + r) = v }
    }

    #[inline(always)]
    fn rows_at(&mut self, t: usize, r0: usize, n: usize) -> Option<*mut f32> {
        debug_assert!(t < self.n_tok && r0 + n <= self.n_out);
        // SAFETY: as in `put`: within the output, rows of this task's range.
        Some(unsafe { self.out.0.add(t * self.n_out + r0) })
    }

    #[inline(always)]
    fn put_rows(&mut self, t: usize, r0: usize, v: &[f32; 16], n: usize) {
        debug_assert!(t < self.n_tok && r0 + n <= self.n_out && n <= 16);
        // SAFETY: as in `put`, for the rows r0..r0 + n of the task's range.
        unsafe {
            let p = self.out.0.add(t * self.n_out + r0);
            if n == 16 {
                // a fixed size: one 64-byte copy
                std::ptr::copy_nonoverlapping(v.as_ptr(), p, 16);
            } else {
                std::ptr::copy_nonoverlapping(v.as_ptr(), p, n.min(16));
            }
        }
    }
}

fn check_cpu(w: &Tensor) -> Result<()> {
    if w.device != Device::Cpu {
        return Err(Error::Unsupported(format!(
            "tensor {} is on {:?}, not the CPU",
            w.name, w.device
        )));
    }
    Ok(())
}

impl Backend for Cpu {
    fn name(&self) -> String {
        format!("cpu ({} threads)", self.threads())
    }

    fn supports(&self, _dtype: DType) -> bool {
        true
    }

    fn profile_report(&self) -> Option<String> {
        prof::report()
    }

    /// Packs the types with integer kernels into groups of 8 interleaved rows (`pack.rs` in
    /// hearth-quant) while the budget lasts, with the AVX2 kernels only; each slice of a
    /// stacked tensor (an expert) is packed on its own.
    fn prepare(&self, w: &mut Tensor) {
        if w.packed.is_some() {
            return;
        }
        let Some(len) = self.reserve_pack(w) else {
            return;
        };
        // each slice of a stacked tensor packs on its own; a slice's whole groups are split
        // between the threads, the rows after the last group going with the last part
        let (dtype, rb) = (w.dtype, w.row_bytes());
        let rows = w.shape[w.shape.len() - 2];
        let slices = w.n_rows() / rows.max(1);
        let (plen, gb) = (
            pack::packed_len(dtype, rb, rows),
            pack::group_bytes(dtype, rb),
        );
        debug_assert_eq!(len, plen * slices);
        let Some(mut out) = anon(len) else {
            return;
        };
        let threads = self.threads();
        let groups = rows / hearth_core::PACK_ROWS;
        let per = groups.div_ceil(threads);
        let src = w.bytes();
        let dst = SendPtr(out.as_mut_ptr());
        self.pool.run(&|ci| {
            let base = {
                let d = dst; // the Send + Sync wrapper, not its raw pointer field
                d.0
            };
            let (g0, g1) = ((ci * per).min(groups), ((ci + 1) * per).min(groups));
            let last = ci + 1 == threads;
            if g0 == g1 && !last {
                return;
            }
            let r1 = if last {
                rows
            } else {
                g1 * hearth_core::PACK_ROWS
            };
            let r0 = g0 * hearth_core::PACK_ROWS;
            for s in 0..slices {
                let part = &src[(s * rows + r0) * rb..(s * rows + r1) * rb];
                let (o0, o1) = (
                    s * plen + g0 * gb,
                    s * plen + g0 * gb + pack::packed_len(dtype, rb, r1 - r0),
                );
                // SAFETY: the threads' (slice, group range) parts of `out` are disjoint, and
                // `out` outlives the parallel step.
                let d = unsafe { std::slice::from_raw_parts_mut(base.add(o0), o1 - o0) };
                pack::pack_into(dtype, part, rb, d);
            }
        });
        let Ok(out) = out.make_read_only() else {
            return;
        };
        let len = out.len();
        if let Ok(st) = hearth_core::Storage::new(std::sync::Arc::new(out), 0, len) {
            w.packed = Some(st);
        }
    }

    fn host_weights(&self, bytes: usize) {
        use std::sync::atomic::Ordering::Relaxed;
        let b = pack_budget(self.avail, bytes);
        let _ = self
            .pack_budget
            .fetch_update(Relaxed, Relaxed, |cur| Some(cur.min(b)));
    }

    fn plan_prepare(&self, w: &Tensor) -> usize {
        self.reserve_pack(w).unwrap_or(0)
    }

    /// The file's pages (batches read them) and the packed copy (decoding reads it).
    fn weight_bytes(&self, w: &Tensor) -> usize {
        w.bytes().len() + w.packed.as_ref().map_or(0, |p| p.bytes().len())
    }

    fn matmul(&self, w: &Tensor, x: View<'_>, n_tok: usize, out: ViewMut<'_>) -> Result<()> {
        self.matmul_h(w, x.host()?, n_tok, out.host()?)
    }

    fn matmul_many(&self, jobs: &mut [MatJob<'_>]) -> Result<()> {
        let mut hj = Vec::with_capacity(jobs.len());
        for j in jobs.iter_mut() {
            hj.push(HostJob {
                w: j.w,
                x: j.x.host()?,
                n_tok: j.n_tok,
                out: j.out.reborrow().host()?,
            });
        }
        self.matmul_many_h(&mut hj)
    }

    fn dequantize(&self, t: &Tensor, out: &mut [f32]) -> Result<()> {
        self.dequantize_h(t, out)
    }

    fn get_rows(&self, w: &Tensor, ids: &[u32], out: ViewMut<'_>) -> Result<()> {
        let out = out.host()?;
        let n = w.row_len();
        if out.len() != ids.len() * n {
            return Err(Error::Invalid(format!(
                "get_rows {}: {} rows do not fill {} values",
                w.name,
                ids.len(),
                out.len()
            )));
        }
        for (&id, o) in ids.iter().zip(out.chunks_exact_mut(n.max(1))) {
            self.get_row_h(w, id as usize, o)?;
        }
        Ok(())
    }

    fn rms_norm(&self, x: ViewMut<'_>, w: View<'_>, eps: f32) -> Result<()> {
        let (x, w) = (x.host()?, w.host()?);
        if w.is_empty() || x.len() % w.len() != 0 {
            return Err(Error::Invalid(format!(
                "rms_norm: rows of {} values cannot take a weight of {}",
                x.len(),
                w.len()
            )));
        }
        self.rms_norm_h(x, w, eps)
    }

    fn rope(&self, x: ViewMut<'_>, n_heads: usize, r: &RopeArgs<'_>) -> Result<()> {
        self.rope_h(x.host()?, n_heads, r)
    }

    fn rope_qk(
        &self,
        q: ViewMut<'_>,
        n_head: usize,
        k: ViewMut<'_>,
        n_kv_head: usize,
        r: &RopeArgs<'_>,
    ) -> Result<()> {
        self.rope_qk_h(q.host()?, n_head, k.host()?, n_kv_head, r)
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
        if !dest.fmt.is_f32() {
            let f = dest.fmt;
            let mut kr = k.host()?.to_vec();
            self.rope_qk_h(q.host()?, n_head, &mut kr, n_kv_head, r)?;
            attn_q::store(&kr, dest.k.host()?, dest.rows, f.k, f.rot)?;
            return attn_q::store(v.host()?, dest.v.host()?, dest.rows, f.v, f.rot);
        }
        let dest = HostKv {
            k: dest.k.host()?,
            v: dest.v.host()?,
            rows: dest.rows,
        };
        self.rope_qk_store_h(q.host()?, n_head, k.host()?, n_kv_head, v.host()?, r, dest)
    }

    fn store_kv(
        &self,
        src: View<'_>,
        dst: ViewMut<'_>,
        rows: &[usize],
        ty: hearth_core::KvType,
        rot: usize,
    ) -> Result<()> {
        match ty {
            hearth_core::KvType::F32 => self.store_rows(src, dst, rows),
            _ => attn_q::store(src.host()?, dst.host()?, rows, ty, rot),
        }
    }

    fn supports_kv(&self, _t: hearth_core::KvType) -> bool {
        true
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
        let (k, v, q, out) = (k.host()?, v.host()?, q.host()?, out.host()?);
        let sinks = p.sinks.map(|s| s.host()).transpose()?;
        if sinks.is_some_and(|s| s.len() < p.n_head) {
            return Err(Error::Invalid("attention: fewer sinks than heads".into()));
        }
        let (qw, ow) = (p.n_head * p.head_dim, p.n_head * p.v_dim);
        // rotated keys take rotated queries (see attn_q.rs)
        let qrot;
        let q = match p.kv.k.rotated() {
            true => {
                qrot = attn_q::rotate_queries(q, p.kv.rot);
                &qrot[..]
            }
            false => q,
        };
        let mut jobs = Vec::with_capacity(segs.len());
        let mut rest = &mut out[..];
        let mut next = 0;
        for sg in segs {
            let (qa, qb) = (sg.row0 * qw, (sg.row0 + sg.n_tok) * qw);
            if sg.row0 < next || qb > q.len() || (sg.row0 - next + sg.n_tok) * ow > rest.len() {
                return Err(Error::Invalid(
                    "attention: segments overlap or lie outside the batch".into(),
                ));
            }
            let (_, r) = rest.split_at_mut((sg.row0 - next) * ow);
            let (mine, r) = r.split_at_mut(sg.n_tok * ow);
            rest = r;
            next = sg.row0 + sg.n_tok;
            jobs.push(AttnJob {
                q: &q[qa..qb],
                n_tok: sg.n_tok,
                pos0: sg.pos0,
                pages: sg.pages,
                out: mine,
            });
        }
        // every position's rows inside the caches (a bad page table is an error, not a panic)
        let seqs = jobs
            .iter()
            .map(|j| ((j.pos0 + j.n_tok).saturating_sub(1), j.pages));
        hearth_core::check_attn_rows(p, k.len(), v.len(), seqs)?;
        self.attention_many_h(k, v, p, sinks, &mut jobs)?;
        if p.kv.v.rotated() {
            for j in &mut jobs {
                attn_q::unrotate(j.out, p.kv.rot);
            }
        }
        Ok(())
    }

    fn glu(&self, act: Glu, gate: ViewMut<'_>, up: View<'_>) -> Result<()> {
        let (g, u) = (gate.host()?, up.host()?);
        if g.len() != u.len() {
            return Err(Error::Invalid(format!(
                "glu: lengths differ ({} and {})",
                g.len(),
                u.len()
            )));
        }
        match act {
            Glu::Silu => self.silu_mul_h(g, u),
            _ => {
                hearth_core::glu_ref(act, g, u);
                Ok(())
            }
        }
    }

    fn delta_rule(&self, j: hearth_core::DeltaJob<'_>) -> Result<()> {
        linear::delta_rule(self, j)
    }

    fn dsa_select(&self, j: hearth_core::dsa::DsaJob<'_>) -> Result<()> {
        linear::dsa_select(self, j)
    }

    fn moe_experts(&self, job: MoeJob<'_>) -> Result<()> {
        moe::experts(self, job)
    }
}

impl Cpu {
    fn matmul_h(&self, w: &Tensor, x: &[f32], n_tok: usize, out: &mut [f32]) -> Result<()> {
        let _t = prof::Timer::matmul(w.dtype, false);
        check_job(w, x, n_tok, out)?;
        let n_out = w.n_rows();
        let optr = SendPtr(out.as_mut_ptr());
        let job = RowJob {
            w,
            x,
            n_tok,
            out: optr,
        };
        if supports_q16(w.dtype) {
            // Integer kernels: quantize the activations once, to the form the type reads.
            let mut guard = self.acts.lock().unwrap_or_else(|e| e.into_inner());
            let (q16, k8) = QuantizedActs::forms(w.dtype);
            self.quantize(&mut guard, x, w.row_len(), q16, k8);
            let acts = &*guard;
            self.row_tasks(n_out, n_tok, &|rows| job.rows(rows, Some(acts)));
        } else {
            self.row_tasks(n_out, n_tok, &|rows| job.rows(rows, None));
        }
        Ok(())
    }

    fn matmul_many_h(&self, jobs: &mut [HostJob<'_>]) -> Result<()> {
        let _t = prof::Timer::matmul(jobs.first().map_or(DType::F32, |j| j.w.dtype), true);
        for j in jobs.iter() {
            check_job(j.w, j.x, j.n_tok, j.out)?;
        }
        // Quantize each distinct activation matrix once (gate and up share theirs), to the
        // forms its jobs' types read; the distinct matrices (a MoE layer's experts) in
        // parallel.
        let mut keys: Vec<(*const f32, usize, usize)> = Vec::new();
        let mut forms: Vec<(bool, bool)> = Vec::new();
        let mut which: Vec<Option<usize>> = Vec::with_capacity(jobs.len());
        for j in jobs.iter() {
            if !supports_q16(j.w.dtype) {
                which.push(None);
                continue;
            }
            let key = (j.x.as_ptr(), j.x.len(), j.w.row_len());
            let (q16, k8) = QuantizedActs::forms(j.w.dtype);
            let i = match keys.iter().position(|k| *k == key) {
                Some(i) => i,
                None => {
                    keys.push(key);
                    forms.push((false, false));
                    keys.len() - 1
                }
            };
            forms[i].0 |= q16;
            forms[i].1 |= k8;
            which.push(Some(i));
        }
        // the quantized forms' buffers are kept between calls (a MoE layer quantizes dozens of
        // matrices): no allocation, page faults or zeroing per call
        let mut kept =
            std::mem::take(&mut *self.acts_many.lock().unwrap_or_else(|e| e.into_inner()));
        if kept.len() < keys.len() {
            kept.resize_with(keys.len(), Default::default);
        }
        let mut acts: Vec<std::sync::Mutex<QuantizedActs>> = kept
            .iter_mut()
            .take(keys.len())
            .map(|a| std::sync::Mutex::new(std::mem::take(a)))
            .collect();
        {
            let first: Vec<usize> = (0..keys.len())
                .map(|i| which.iter().position(|w| *w == Some(i)).unwrap_or(0))
                .collect();
            let jobs = &*jobs;
            let acts = &acts;
            // `nested`: called from a pool job, so no parallel step of its own
            let quantize = |i: usize, nested: bool| {
                let j = &jobs[first[i]];
                let mut a = acts[i].lock().unwrap_or_else(|e| e.into_inner());
                let (n, (q16, k8)) = (j.w.row_len(), forms[i]);
                if nested {
                    a.quantize_forms(j.x, n, q16, k8);
                } else {
                    self.quantize(&mut a, j.x, n, q16, k8);
                }
            };
            // a parallel step costs a synchronisation: only for several large matrices
            let values: usize = first.iter().map(|&i| jobs[i].x.len()).sum();
            if first.len() > 1 && values >= 1 << 16 {
                let threads = self.threads();
                self.pool.run(&|ci| {
                    for i in (ci..first.len()).step_by(threads) {
                        quantize(i, true);
                    }
                });
            } else {
                (0..first.len()).for_each(|i| quantize(i, false));
            }
        }
        let mut acts: Vec<QuantizedActs> = acts
            .iter_mut()
            .map(|m| std::mem::take(m.get_mut().unwrap_or_else(|e| e.into_inner())))
            .collect();
        let rj: Vec<RowJob> = jobs
            .iter_mut()
            .map(|j| RowJob {
                w: j.w,
                x: j.x,
                n_tok: j.n_tok,
                out: SendPtr(j.out.as_mut_ptr()),
            })
            .collect();
        // One parallel step over the rows of all the jobs, in tasks of about equal work
        let tasks = work_tasks(&rj, self.threads());
        let next = std::sync::atomic::AtomicUsize::new(0);
        self.pool.run(&|_| {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(task) = tasks.get(i) else {
                    break;
                };
                for &(k, r0, r1) in task {
                    rj[k].rows(r0..r1, which[k].map(|i| &acts[i]));
                }
            }
        });
        for (k, a) in kept.iter_mut().zip(acts.iter_mut()) {
            *k = std::mem::take(a);
        }
        *self.acts_many.lock().unwrap_or_else(|e| e.into_inner()) = kept;
        Ok(())
    }

    fn dequantize_h(&self, t: &Tensor, out: &mut [f32]) -> Result<()> {
        check_cpu(t)?;
        dequantize(t.dtype, t.bytes(), out)
    }

    fn get_row_h(&self, w: &Tensor, row: usize, out: &mut [f32]) -> Result<()> {
        let _t = prof::Timer::op(prof::Op::GetRow);
        check_cpu(w)?;
        if row >= w.n_rows() {
            return Err(Error::Invalid(format!(
                "row {row} out of range for {} ({} rows)",
                w.name,
                w.n_rows()
            )));
        }
        dequantize(w.dtype, w.row(row), out)
    }

    fn rms_norm_h(&self, x: &mut [f32], w: &[f32], eps: f32) -> Result<()> {
        let _t = prof::Timer::op(prof::Op::RmsNorm);
        let n = w.len().max(1);
        let xp = SendPtr(x.as_mut_ptr());
        self.split(x.len() / n, n, &|rows| {
            let p = xp;
            // SAFETY: the row ranges are disjoint and within `x`.
            let x =
                unsafe { std::slice::from_raw_parts_mut(p.0.add(rows.start * n), rows.len() * n) };
            for row in x.chunks_exact_mut(n) {
                let ss: f32 = dot_f32(row, row) / n as f32;
                let r = 1.0 / (ss + eps).sqrt();
                for (v, g) in row.iter_mut().zip(w) {
                    *v = *v * r * g;
                }
            }
        });
        Ok(())
    }

    fn rope_h(&self, x: &mut [f32], n_heads: usize, r: &RopeArgs<'_>) -> Result<()> {
        let (head_dim, positions, inv_freq, style, mscale) =
            (r.head_dim, r.positions, r.inv_freq, r.style, r.mscale);
        let _t = prof::Timer::op(prof::Op::Rope);
        let half = inv_freq.len().min(MAX_ROPE_PAIRS);
        let width = n_heads * head_dim;
        let n_tok = positions.len().min(x.len() / width.max(1));
        let xp = SendPtr(x.as_mut_ptr());
        self.rope_tokens(n_tok, width, positions, inv_freq, mscale, &|t, cs| {
            let p = xp;
            // SAFETY: each token is visited once, and its row lies within `x`.
            let tok = unsafe { std::slice::from_raw_parts_mut(p.0.add(t * width), width) };
            rotate(tok, head_dim, cs, style, half);
        });
        Ok(())
    }

    fn rope_qk_h(
        &self,
        q: &mut [f32],
        n_head: usize,
        k: &mut [f32],
        n_kv_head: usize,
        r: &RopeArgs<'_>,
    ) -> Result<()> {
        let _t = prof::Timer::op(prof::Op::Rope);
        let half = r.inv_freq.len().min(MAX_ROPE_PAIRS);
        let (qw, kw) = (n_head * r.head_dim, n_kv_head * r.head_dim);
        let n_tok = r
            .positions
            .len()
            .min(q.len() / qw.max(1))
            .min(k.len() / kw.max(1));
        let (qp, kp) = (SendPtr(q.as_mut_ptr()), SendPtr(k.as_mut_ptr()));
        // each token's cos and sin once for its queries and keys
        let f = |t: usize, cs: &[(f32, f32)]| {
            let (qp, kp) = (qp, kp);
            // SAFETY: each token is visited once, and its rows lie within `q` and `k`.
            let (qt, kt) = unsafe {
                (
                    std::slice::from_raw_parts_mut(qp.0.add(t * qw), qw),
                    std::slice::from_raw_parts_mut(kp.0.add(t * kw), kw),
                )
            };
            rotate(qt, r.head_dim, cs, r.style, half);
            rotate(kt, r.head_dim, cs, r.style, half);
        };
        self.rope_tokens(n_tok, qw + kw, r.positions, r.inv_freq, r.mscale, &f);
        Ok(())
    }

    /// One parallel pass over the tokens: each token's queries are rotated in place, its keys
    /// copied into its cache row and rotated there (the bits of `rope_qk`), its values copied.
    #[allow(clippy::too_many_arguments)]
    fn rope_qk_store_h(
        &self,
        q: &mut [f32],
        n_head: usize,
        k: &[f32],
        n_kv_head: usize,
        v: &[f32],
        r: &RopeArgs<'_>,
        dest: HostKv<'_>,
    ) -> Result<()> {
        let _t = prof::Timer::op(prof::Op::Rope);
        let half = r.inv_freq.len().min(MAX_ROPE_PAIRS);
        let (qw, kw) = (n_head * r.head_dim, n_kv_head * r.head_dim);
        let n_tok = r
            .positions
            .len()
            .min(dest.rows.len())
            .min(q.len() / qw.max(1))
            .min(k.len() / kw.max(1));
        let vw = v.len() / n_tok.max(1);
        // the parallel writes below need every token's cache row inside the cache and no two
        // tokens sharing one (checked here, once); otherwise the rotation, then a copy
        let rows = &dest.rows[..n_tok];
        let fits = |len: usize, w: usize| rows.iter().all(|&row| (row + 1) * w <= len);
        let distinct = {
            let mut s = rows.to_vec();
            s.sort_unstable();
            s.windows(2).all(|p| p[0] != p[1])
        };
        if !(fits(dest.k.len(), kw) && fits(dest.v.len(), vw) && distinct) || n_tok == 0 {
            let mut kr = k[..n_tok * kw].to_vec();
            let r = RopeArgs {
                positions: &r.positions[..n_tok],
                ..*r
            };
            self.rope_qk_h(&mut q[..n_tok * qw], n_head, &mut kr, n_kv_head, &r)?;
            hearth_core::store_rows(&kr, dest.k, rows);
            hearth_core::store_rows(&v[..n_tok * vw], dest.v, rows);
            return Ok(());
        }
        let (qp, kcp, vcp) = (
            SendPtr(q.as_mut_ptr()),
            SendPtr(dest.k.as_mut_ptr()),
            SendPtr(dest.v.as_mut_ptr()),
        );
        let f = |t: usize, cs: &[(f32, f32)]| {
            let (qp, kcp, vcp) = (qp, kcp, vcp);
            let row = rows[t];
            // SAFETY: each token is visited once, and its cache row is its own (no two tokens
            // share one); all lie within `q` and the cache (checked above).
            let (qt, kt, vt) = unsafe {
                (
                    std::slice::from_raw_parts_mut(qp.0.add(t * qw), qw),
                    std::slice::from_raw_parts_mut(kcp.0.add(row * kw), kw),
                    std::slice::from_raw_parts_mut(vcp.0.add(row * vw), vw),
                )
            };
            kt.copy_from_slice(&k[t * kw..(t + 1) * kw]);
            vt.copy_from_slice(&v[t * vw..(t + 1) * vw]);
            rotate(qt, r.head_dim, cs, r.style, half);
            rotate(kt, r.head_dim, cs, r.style, half);
        };
        let cost = qw + 2 * kw + vw;
        self.rope_tokens(n_tok, cost, r.positions, r.inv_freq, r.mscale, &f);
        Ok(())
    }

    fn attention_many_h(
        &self,
        k: &[f32],
        v: &[f32],
        p: &AttnParams<'_>,
        sinks: Option<&[f32]>,
        jobs: &mut [AttnJob<'_>],
    ) -> Result<()> {
        let _t = prof::Timer::op(prof::Op::Attention);
        let (nh, vd) = (p.n_head, p.v_dim);
        let g = nh / p.n_kv_head.max(1);
        let threads = self.pool.threads();
        // A task is (job, up to `tile_max` tokens, one KV head) with all its query heads, so each
        // chunk of keys and values is read once for the tile's queries; when that leaves too
        // few tasks to keep the threads busy (decoding one sequence), (job, token, head).
        // Either way a query's arithmetic is the same (see attn.rs).
        // the AVX-512 path transposes each chunk's keys once per tile: larger tiles pay for
        // it better (8 tokens: +3% pp512 on SmolLM2 Q8_0 against 4)
        #[cfg(target_arch = "x86_64")]
        let tile_max: usize = if attn::x86::avx512() { 8 } else { 4 };
        #[cfg(not(target_arch = "x86_64"))]
        let tile_max: usize = 4;
        // a typed cache converts each chunk once per tile: larger tiles share that more
        let tile_max = if p.kv.is_f32() { tile_max } else { 16 };
        let grouped: usize = jobs
            .iter()
            .map(|j| j.n_tok.div_ceil(tile_max) * p.n_kv_head)
            .sum();
        let (tile, heads) = if grouped >= 4 * threads {
            (tile_max, g)
        } else {
            // one token at a time, with as many of a group's query heads per task as leave
            // at least two tasks per thread (decoding: 4 heads of a group of 8 share the
            // keys they read); one task per thread where reading the cache dominates (long
            // contexts, and typed caches, whose chunks are converted once per task). "Long"
            // starts at 128 positions: SmolLM2 (3 heads per group, 2 threads, Zen 3) decoding
            // from 0 spent 20% less time in attention over tg256 with one task per thread
            // (48 -> 38 us per call), 30% less over tg512, and the same over tg32.
            let toks: usize = jobs.iter().map(|j| j.n_tok).sum();
            let long = jobs.iter().any(|j| j.pos0 + j.n_tok >= 128);
            let per_thread = if long || !p.kv.is_f32() { 1 } else { 2 };
            let d = (1..=g)
                .rev()
                .find(|&d| g % d == 0 && (nh / d) * toks >= per_thread * threads)
                .unwrap_or(1);
            (1, d)
        };
        let per_job = |n_tok: usize| n_tok.div_ceil(tile) * (nh / heads);
        let mut starts = Vec::with_capacity(jobs.len() + 1);
        starts.push(0);
        for j in jobs.iter() {
            starts.push(starts.last().copied().unwrap_or(0) + per_job(j.n_tok));
        }
        let total = *starts.last().unwrap_or(&0);
        let outs: Vec<SendPtr> = jobs
            .iter_mut()
            .map(|j| SendPtr(j.out.as_mut_ptr()))
            .collect();
        let jobs = &*jobs;
        // tasks taken in turn from a shared counter, the last (longest context) first, so
        // that the threads end together
        let next = std::sync::atomic::AtomicUsize::new(0);
        let (kq, vq) = (attn_q::bytes(k), attn_q::bytes(v));
        self.pool.run(&|_| {
            let mut qs = Vec::with_capacity(tile * heads);
            let mut tiles = attn_q::Tiles::default();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= total {
                    break;
                }
                let task = total - 1 - i;
                let ji = starts.partition_point(|&s| s <= task) - 1;
                let j = &jobs[ji];
                let local = task - starts[ji];
                let hgroups = nh / heads;
                let (tt, hg) = (local / hgroups, local % hgroups);
                let h0 = hg * heads;
                let kh = h0 / g;
                qs.clear();
                for t in tt * tile..((tt + 1) * tile).min(j.n_tok) {
                    let pos = j.pos0 + t;
                    for h in h0..h0 + heads {
                        // SAFETY: each (job, t, h) writes its own disjoint v_dim slice of its
                        // output, and belongs to exactly one task.
                        let o = unsafe {
                            std::slice::from_raw_parts_mut(outs[ji].0.add((t * nh + h) * vd), vd)
                        };
                        o.fill(0.0);
                        let (m, l) = match sinks {
                            Some(s) => (s[h], 1f32),
                            None => (f32::NEG_INFINITY, 0f32),
                        };
                        qs.push(attn::Query {
                            q: &j.q[(t * nh + h) * p.head_dim..(t * nh + h + 1) * p.head_dim],
                            lo: p.window.map_or(0, |w| (pos + 1).saturating_sub(w)),
                            hi: pos,
                            m,
                            l,
                            o,
                        });
                    }
                }
                if p.kv.is_f32() {
                    attn::attend_group(k, v, p, j.pages, kh, &mut qs);
                } else {
                    let mut src = attn_q::QRows {
                        k: kq,
                        v: vq,
                        p,
                        pages: j.pages,
                        kh,
                        tiles: &mut tiles,
                    };
                    attn::attend_group_with(&mut src, p, &mut qs);
                }
            }
        });
        Ok(())
    }

    fn silu_mul_h(&self, gate: &mut [f32], up: &[f32]) -> Result<()> {
        let _t = prof::Timer::op(prof::Op::SiluMul);
        let n = gate.len().min(up.len());
        let gp = SendPtr(gate.as_mut_ptr());
        self.split(n, 1, &|r| {
            let p = gp;
            // SAFETY: the ranges are disjoint and within `gate`.
            let g = unsafe { std::slice::from_raw_parts_mut(p.0.add(r.start), r.len()) };
            #[cfg(target_arch = "x86_64")]
            if hearth_quant::has_avx2() {
                // SAFETY: the CPU has AVX2 and FMA.
                unsafe { silu_mul_avx2(g, &up[r]) };
                return;
            }
            for (g, u) in g.iter_mut().zip(&up[r]) {
                *g = *g / (1.0 + (-*g).exp()) * u;
            }
        });
        Ok(())
    }
}

/// `g = g / (1 + exp(-g)) * u`, eight values at a time with the attention's `exp8` (its
/// argument capped at 88, where the result is 0 to within f32 anyway); the last few values
/// go through the same vector code, so every value's arithmetic is the same wherever a
/// thread's range starts or ends.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn silu_mul_avx2(g: &mut [f32], u: &[f32]) {
    use std::arch::x86_64::*;
    /// Eight values (a function, not a closure, so that it inlines under AVX2).
    #[inline(always)]
    unsafe fn f(x: __m256, u: __m256) -> __m256 {
        unsafe {
            let arg = _mm256_min_ps(_mm256_sub_ps(_mm256_setzero_ps(), x), _mm256_set1_ps(88.0));
            let e = attn::x86::exp8(arg);
            _mm256_mul_ps(_mm256_div_ps(x, _mm256_add_ps(_mm256_set1_ps(1.0), e)), u)
        }
    }
    let n = g.len().min(u.len());
    let n8 = n / 8 * 8;
    // SAFETY: every access is within the first `n` values of `g` and `u`.
    unsafe {
        for i in (0..n8).step_by(8) {
            let p = g.as_mut_ptr().add(i);
            _mm256_storeu_ps(p, f(_mm256_loadu_ps(p), _mm256_loadu_ps(u.as_ptr().add(i))));
        }
        if n8 < n {
            let (mut a, mut b) = ([0f32; 8], [0f32; 8]);
            a[..n - n8].copy_from_slice(&g[n8..n]);
            b[..n - n8].copy_from_slice(&u[n8..n]);
            let r = f(_mm256_loadu_ps(a.as_ptr()), _mm256_loadu_ps(b.as_ptr()));
            _mm256_storeu_ps(a.as_mut_ptr(), r);
            g[n8..n].copy_from_slice(&a[..n - n8]);
        }
    }
}

/// The (cos, sin) pairs of one token at `pos`, one per frequency, times `mscale`.
fn rope_table(cs: &mut [(f32, f32)], pos: usize, inv_freq: &[f32], mscale: f32) {
    for (c, &f) in cs.iter_mut().zip(inv_freq) {
        let a = pos as f32 * f;
        *c = (a.cos() * mscale, a.sin() * mscale);
    }
}

/// Rotate each head of one token by the (cos, sin) pairs `cs`.
fn rotate(tok: &mut [f32], head_dim: usize, cs: &[(f32, f32)], style: RopeStyle, half: usize) {
    for h in tok.chunks_exact_mut(head_dim) {
        for (i, &(c, s)) in cs.iter().enumerate() {
            let (a, b) = match style {
                RopeStyle::Normal => (2 * i, 2 * i + 1),
                RopeStyle::Neox => (i, i + half),
            };
            let (x0, x1) = (h[a], h[b]);
            h[a] = x0 * c - x1 * s;
            h[b] = x0 * s + x1 * c;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hearth_core::{DType, Storage};

    /// A small deterministic random source for test data.
    fn lcg(mut seed: u64) -> impl FnMut() -> u32 {
        move || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) as u32
        }
    }

    #[test]
    fn rope_qk_equals_rope_on_each() {
        let cpu = Cpu::new(2).unwrap();
        let mut rnd = lcg(9);
        let (hd, nh, nkv, n) = (64, 9, 3, 300);
        let pos: Vec<usize> = (0..n).map(|i| 1000 + 3 * i).collect();
        let inv: Vec<f32> = (0..hd / 2)
            .map(|i| 10000f32.powf(-((2 * i) as f32) / hd as f32))
            .collect();
        let mut val = || (rnd() % 2000) as f32 / 1000.0 - 1.0;
        let q: Vec<f32> = (0..n * nh * hd).map(|_| val()).collect();
        let k: Vec<f32> = (0..n * nkv * hd).map(|_| val()).collect();
        for style in [RopeStyle::Normal, RopeStyle::Neox] {
            let r = RopeArgs {
                head_dim: hd,
                positions: &pos,
                inv_freq: &inv,
                style,
                mscale: 1.25,
            };
            let (mut q1, mut k1) = (q.clone(), k.clone());
            cpu.rope_h(&mut q1, nh, &r).unwrap();
            cpu.rope_h(&mut k1, nkv, &r).unwrap();
            let (mut q2, mut k2) = (q.clone(), k.clone());
            cpu.rope_qk_h(&mut q2, nh, &mut k2, nkv, &r).unwrap();
            assert!(q1.iter().zip(&q2).all(|(a, b)| a.to_bits() == b.to_bits()));
            assert!(k1.iter().zip(&k2).all(|(a, b)| a.to_bits() == b.to_bits()));
            assert!(q1 != q, "the rotation changed the queries");
        }
    }

    #[test]
    fn rope_qk_store_equals_rope_qk_then_a_copy() {
        let cpu = Cpu::new(2).unwrap();
        let mut rnd = lcg(13);
        let (hd, nh, nkv, n, cache_rows) = (64, 9, 3, 300, 700);
        let (kw, vw) = (nkv * hd, nkv * 48);
        let pos: Vec<usize> = (0..n).map(|i| 20 + i).collect();
        let inv: Vec<f32> = (0..hd / 2)
            .map(|i| 10000f32.powf(-((2 * i) as f32) / hd as f32))
            .collect();
        let mut val = || (rnd() % 2000) as f32 / 1000.0 - 1.0;
        let q: Vec<f32> = (0..n * nh * hd).map(|_| val()).collect();
        let k: Vec<f32> = (0..n * kw).map(|_| val()).collect();
        let v: Vec<f32> = (0..n * vw).map(|_| val()).collect();
        // scattered rows (pages out of order), and a batch where two tokens share a row
        let scattered: Vec<usize> = (0..n).map(|t| (t * 7 + 3) % cache_rows).collect();
        let mut shared = scattered.clone();
        shared[5] = shared[9];
        for rows in [scattered, shared] {
            for style in [RopeStyle::Normal, RopeStyle::Neox] {
                let r = RopeArgs {
                    head_dim: hd,
                    positions: &pos,
                    inv_freq: &inv,
                    style,
                    mscale: 1.25,
                };
                let (mut q1, mut k1) = (q.clone(), k.clone());
                cpu.rope_qk_h(&mut q1, nh, &mut k1, nkv, &r).unwrap();
                let (mut kc1, mut vc1) = (vec![7f32; cache_rows * kw], vec![7f32; cache_rows * vw]);
                hearth_core::store_rows(&k1, &mut kc1, &rows);
                hearth_core::store_rows(&v, &mut vc1, &rows);
                let mut q2 = q.clone();
                let (mut kc2, mut vc2) = (vec![7f32; cache_rows * kw], vec![7f32; cache_rows * vw]);
                let dest = KvDest {
                    k: ViewMut::Host(&mut kc2),
                    v: ViewMut::Host(&mut vc2),
                    rows: &rows,
                    fmt: Default::default(),
                };
                cpu.rope_qk_store(
                    ViewMut::Host(&mut q2),
                    nh,
                    View::Host(&k),
                    nkv,
                    View::Host(&v),
                    &r,
                    dest,
                )
                .unwrap();
                let same =
                    |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
                assert!(same(&q1, &q2) && same(&kc1, &kc2) && same(&vc1, &vc2));
                assert!(kc1 != vec![7f32; cache_rows * kw], "the keys were stored");
            }
        }
    }

    #[test]
    fn matmul_many_equals_one_matmul_per_job() {
        // jobs of mixed types, sizes and token counts, two sharing their activations
        let cpu = Cpu::new(2).unwrap();
        let mut rnd = lcg(5);
        let mut ws = Vec::new();
        for (dt, n_out) in [
            (DType::Q4_K, 13),
            (DType::Q6_K, 7),
            (DType::F32, 5),
            (DType::Q8_0, 9),
        ] {
            let n_in = 256;
            let nbytes = dt.row_bytes(n_in).unwrap() * n_out;
            let bytes: Vec<u8> = (0..nbytes)
                .map(|i| {
                    if dt != DType::F32 && i % 2 == 1 {
                        (rnd() as u8) & 0x3B
                    } else {
                        rnd() as u8 & 0x3B
                    }
                })
                .collect();
            ws.push(Tensor::new("w".into(), dt, vec![n_out, n_in], Storage::owned(bytes)).unwrap());
        }
        let xs: Vec<Vec<f32>> = [3usize, 1, 5]
            .iter()
            .map(|&n| {
                (0..n * 256)
                    .map(|_| (rnd() % 2000) as f32 / 1000.0 - 1.0)
                    .collect()
            })
            .collect();
        let plan = [(0, 0), (1, 0), (2, 1), (3, 2)]; // (weight, activations)
        let mut outs: Vec<Vec<f32>> = plan
            .iter()
            .map(|&(w, x)| vec![0f32; ws[w].n_rows() * xs[x].len() / 256])
            .collect();
        {
            let mut jobs: Vec<MatJob> = plan
                .iter()
                .zip(outs.iter_mut())
                .map(|(&(w, x), out)| MatJob {
                    w: &ws[w],
                    x: View::Host(&xs[x]),
                    n_tok: xs[x].len() / 256,
                    out: ViewMut::Host(out),
                })
                .collect();
            cpu.matmul_many(&mut jobs).unwrap();
        }
        for (&(w, x), got) in plan.iter().zip(&outs) {
            let mut want = vec![0f32; got.len()];
            cpu.matmul_h(&ws[w], &xs[x], xs[x].len() / 256, &mut want)
                .unwrap();
            assert_eq!(
                got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                want.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                "{}",
                ws[w].dtype
            );
        }
    }

    #[test]
    fn a_tokens_result_does_not_depend_on_its_batch() {
        // Random Q4_1 / Q8_0 / Q4_K weights; 7 tokens at once must equal 7 single-token calls,
        // bit for bit.
        let cpu = Cpu::new(2).unwrap();
        let mut rnd = lcg(1);
        for dt in [
            DType::Q4_0,
            DType::Q4_1,
            DType::Q8_0,
            DType::Q4_K,
            DType::Q6_K,
            DType::F16,
            DType::F32,
        ] {
            // F32 with a row length that leaves a piece of 256 and a tail of 4
            let (n_out, n_in, n_tok) = (37, if dt == DType::F32 { 524 } else { 512 }, 7);
            let nbytes = dt.row_bytes(n_in).unwrap() * n_out;
            // random bytes, with every f16 scale made finite by clearing its exponent's top bit
            let bytes: Vec<u8> = (0..nbytes)
                .map(|i| {
                    if i % 2 == 1 {
                        (rnd() as u8) & 0x3B
                    } else {
                        rnd() as u8
                    }
                })
                .collect();
            let w = Tensor::new("w".into(), dt, vec![n_out, n_in], Storage::owned(bytes)).unwrap();
            let x: Vec<f32> = (0..n_tok * n_in)
                .map(|_| (rnd() % 2000) as f32 / 1000.0 - 1.0)
                .collect();
            let mut batch = vec![0f32; n_tok * n_out];
            cpu.matmul_h(&w, &x, n_tok, &mut batch).unwrap();
            for t in 0..n_tok {
                let mut one = vec![0f32; n_out];
                cpu.matmul_h(&w, &x[t * n_in..(t + 1) * n_in], 1, &mut one)
                    .unwrap();
                for r in 0..n_out {
                    assert_eq!(
                        one[r].to_bits(),
                        batch[t * n_out + r].to_bits(),
                        "{dt} token {t} row {r}"
                    );
                }
            }
        }
    }
}
