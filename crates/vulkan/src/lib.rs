//! hearth-vulkan: the Vulkan backend (AMD through RADV, NVIDIA, Intel, Apple through MoltenVK,
//! and Mesa's lavapipe on the CPU, which is how CI checks every shader).
//!
//! The loader is opened at run time ([`devices`], [`Vulkan::new`] fail with a clear error on a
//! machine without one). Shaders are GLSL in `shaders/`, compiled to the SPIR-V committed in
//! `spv/` by `scripts/build_shaders.sh` (a test fails when a committed module is stale); each
//! pipeline is built once per (shader, weight type), its workgroup size specialization
//! constant 0 and the weight's type constant 1.
//!
//! Weights of F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K..Q6_K, IQ4_NL, IQ4_XS,
//! MXFP4, IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS and IQ3_S stay on the device as the file stores them and are decoded in registers by the
//! matmul, expert and embedding shaders (`weights`, `shaders/quant.glsl`); other types are
//! decoded to f32 once at load. Every op is checked against the CPU backend by the
//! conformance suite; ops without a shader return an `Unsupported` error naming the op.
#![deny(missing_docs)]

mod ctx;
mod import;
mod pieces;

pub use ctx::{DeviceInfo, Options};

use ctx::{Ctx, RawBuf};
use hearth_core::dsa::DsaJob;
use hearth_core::linear::{RecSeg, SlotLayout};
use hearth_core::{
    AttnParams, AttnSeg, Backend, Buf, DType, DeltaJob, DevMem, Error, Glu, KvType, LightningJob,
    MoeJob, Result, RopeArgs, Tensor, View, ViewMut,
};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use weights::{DevWeight, Pack};

/// The Vulkan devices the loader reports (free memory as `HEARTH_VK_BUDGET` says, where set).
pub fn devices() -> Result<Vec<DeviceInfo>> {
    let budget = Options::from_env()?.budget;
    Ok(ctx::Instance::new()?
        .devices()?
        .into_iter()
        .map(|(_, mut i)| {
            if let Some(b) = budget {
                i.free = b;
                i.budget = true;
            }
            i
        })
        .collect())
}

/// Whether this machine may have a GPU that Vulkan drives, without opening the loader (which
/// loads every installed driver, lavapipe's LLVM among them: tens of MB of memory and a
/// noticeable start). On Linux a GPU driver needs a device node: `/dev/dri/renderD*` (Mesa's
/// drivers), `/dev/nvidia*` (NVIDIA's) or `/dev/dxg` (WSL's GPUs). Without one, no device
/// [`devices`] lists can be a GPU. Elsewhere, true.
pub fn gpu_possible() -> bool {
    if !cfg!(target_os = "linux") {
        return true;
    }
    let has = |dir: &str, prefix: &str| {
        std::fs::read_dir(dir).is_ok_and(|rd| {
            rd.flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with(prefix))
        })
    };
    has("/dev/dri", "renderD") || has("/dev", "nvidia") || has("/dev", "dxg")
}

/// Device `index`'s memory bandwidth in GB/s, measured by copying 256 MiB (less where its
/// largest allocation is smaller) between two of the buffers the backend uses, 8 times.
pub fn bandwidth(index: usize) -> Result<f64> {
    Ctx::new(index, &Options::from_env()?)?.copy_bandwidth(256 << 20, 8)
}

/// A buffer of f32 values in a Vulkan device's memory.
struct VkMem {
    raw: RawBuf,
    len: usize,
}

impl DevMem for VkMem {
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
    fn len(&self) -> usize {
        self.len
    }
}

/// Which shader runs matmuls (`shaders/matmul.glsl`); each gives a row's result in an order
/// that does not depend on the batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MatmulKernel {
    /// A thread per (row, tile of tokens), no reductions: the default on a CPU (lavapipe).
    Rows,
    /// A workgroup per (row, tile), its threads' sums added in shared memory.
    Workgroup,
    /// [`MatmulKernel::Workgroup`] adding with subgroup operations: the default on a GPU that
    /// has them and no cooperative matrices.
    Subgroup,
    /// Cooperative matrices (`shaders/matmul_coop.glsl`) for the types [`Vulkan::coop_for`]
    /// names, the others on the subgroup (or workgroup) kernel: weights and tokens rounded to f16,
    /// products summed in f32, a token's result independent of the others. The default on a
    /// GPU that has them ([`DeviceInfo::coop`]).
    Coop,
}

impl MatmulKernel {
    /// The workgroup kernel for a GPU: adding with subgroup operations where it has them
    /// (also the kernel for the types [`MatmulKernel::Coop`] leaves).
    fn f32_default(info: &DeviceInfo) -> MatmulKernel {
        match info.subgroup_arith {
            true => MatmulKernel::Subgroup,
            false => MatmulKernel::Workgroup,
        }
    }

    /// The kernel `rows`, `workgroup`, `subgroup` or `coop` names.
    pub fn parse(name: &str) -> Option<MatmulKernel> {
        Some(match name {
            "rows" => MatmulKernel::Rows,
            "workgroup" => MatmulKernel::Workgroup,
            "subgroup" => MatmulKernel::Subgroup,
            "coop" => MatmulKernel::Coop,
            _ => return None,
        })
    }
}

/// The Vulkan backend on one device.
pub struct Vulkan {
    ctx: Arc<Ctx>,
    mm: MatmulKernel,
    /// The i-quants' grids, bound to every shader that decodes weights.
    grids: RawBuf,
    /// Weights copied to the device, by the address and length of their bytes (see
    /// [`weights`]: as the file stores them where the shaders decode the type, else f32).
    /// Each entry keeps the weight's storage alive, so that its address cannot be reused by
    /// another tensor while the entry exists.
    weights: Mutex<WeightMap>,
    /// Scratch buffers (rotated keys, MoE intermediates, split matmuls' outputs, the MoE
    /// slots grouped by expert), by use.
    tmp: Mutex<[Option<Arc<RawBuf>>; 6]>,
    /// Each MoE layer's experts in one buffer per matrix kind, by the address of its first
    /// expert's gate bytes and the number of experts (the pack keeps that storage alive).
    packs: Mutex<HashMap<(usize, usize), Arc<Pack>>>,
    /// Bytes of weights read in place from host memory ([`Vulkan::imported_bytes`]).
    imported: std::sync::atomic::AtomicUsize,
    /// Whether the driver reads a buffer that weights lie in (a mapped model file) in place,
    /// by the buffer's address: tried once per buffer, so that placement counts such weights
    /// against host memory, not the device's.
    reads_in_place: Mutex<HashMap<usize, bool>>,
}

/// Device copies of weights by (address, length, type) of their bytes, with the storage they
/// came from (kept alive).
type WeightMap = HashMap<(usize, usize, DType), (Arc<DevWeight>, hearth_core::Storage)>;

impl Drop for Vulkan {
    fn drop(&mut self) {
        self.weights
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        *self.tmp.get_mut().unwrap_or_else(|e| e.into_inner()) = Default::default();
        self.packs
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        self.ctx.release();
    }
}

/// The device memory behind a view, with its range in floats.
fn dev<'a>(v: View<'a>) -> Result<(&'a VkMem, u32, usize)> {
    match v {
        View::Dev { mem, off, len } => {
            let m = mem.as_any().downcast_ref::<VkMem>().ok_or_else(foreign)?;
            Ok((m, u32::try_from(off).map_err(|_| too_big())?, len))
        }
        View::Host(_) => Err(Error::Invalid(
            "an op on the Vulkan backend got host memory: move it to the device first".into(),
        )),
    }
}

fn dev_mut<'a>(v: ViewMut<'a>) -> Result<(&'a VkMem, u32, usize)> {
    match v {
        ViewMut::Dev { mem, off, len } => dev(View::Dev { mem, off, len }),
        ViewMut::Host(_) => dev(View::Host(&[])),
    }
}

/// glu.comp's mode, alpha and limit (as bits) for an activation.
fn glu_args(act: Glu) -> [u32; 3] {
    match act {
        Glu::Silu => [0, 0, 0],
        Glu::Sigmoid => [2, 0, 0],
        Glu::ClampedSwiglu { alpha, limit } => [1, alpha.to_bits(), limit.to_bits()],
    }
}

/// The recurrent ops' segment table: (row0, n, slot, fresh) each.
fn seg_table(segs: &[RecSeg]) -> Result<Vec<u32>> {
    let mut t = Vec::with_capacity(4 * segs.len());
    for s in segs {
        t.extend([u(s.row0)?, u(s.n)?, u(s.slot)?, u32::from(s.fresh)]);
    }
    Ok(t)
}

/// The table attention-like shaders read: per token (position, its page table's offset),
/// then the page tables; and the page size (one for every segment).
fn attn_table(op: &str, segs: &[AttnSeg]) -> Result<(Vec<u32>, usize)> {
    let n_tok: usize = segs.iter().map(|s| s.n_tok).sum();
    let paged = segs.iter().filter(|s| s.pages.is_some()).count();
    if paged != 0 && paged != segs.len() {
        return Err(Error::Invalid(format!(
            "{op}: paged and unpaged segments mixed"
        )));
    }
    let ps = segs
        .iter()
        .find_map(|s| s.pages.map(|p| p.page_size))
        .unwrap_or(1 << 30);
    if segs
        .iter()
        .any(|s| s.pages.is_some_and(|p| p.page_size != ps))
    {
        return Err(Error::Invalid(format!("{op}: page sizes differ")));
    }
    let mut tab = vec![0u32; 2 * n_tok];
    let mut t = 0;
    for s in segs {
        if s.row0 != t {
            return Err(Error::Invalid(format!("{op}: segments out of order")));
        }
        let toff = u(tab.len())?;
        match s.pages {
            Some(pg) => tab.extend_from_slice(pg.table),
            None => tab.push(0),
        }
        for j in 0..s.n_tok {
            tab[2 * (t + j)] = u(s.pos0 + j)?;
            tab[2 * (t + j) + 1] = toff;
        }
        t += s.n_tok;
    }
    Ok((tab, ps))
}

/// Bytes (a buffer's, 4-aligned) as f32 values.
fn floats(b: &mut [u8]) -> &mut [f32] {
    // SAFETY: callers pass buffer contents, which start aligned; every bit pattern is a
    // valid f32, and the length is rounded down to whole values.
    unsafe { std::slice::from_raw_parts_mut(b.as_mut_ptr() as *mut f32, b.len() / 4) }
}

fn as_bytes(v: &[f32]) -> &[u8] {
    // SAFETY: f32 values viewed as their bytes.
    unsafe { std::slice::from_raw_parts(v.as_ptr() as *const u8, std::mem::size_of_val(v)) }
}

fn foreign() -> Error {
    Error::Invalid("an op on the Vulkan backend got another device's memory".into())
}

fn too_big() -> Error {
    Error::Unsupported("a buffer of more than 2^32 values".into())
}

fn u(n: usize) -> Result<u32> {
    u32::try_from(n).map_err(|_| too_big())
}

macro_rules! spv {
    ($name:literal) => {
        (
            $name,
            include_bytes!(concat!("../spv/", $name, ".spv")).as_slice(),
        )
    };
}
pub(crate) use spv;

mod weights;

impl Vulkan {
    /// The backend on device `index` (see [`devices`]), with the [`Options`] of the
    /// environment.
    pub fn new(index: usize) -> Result<Vulkan> {
        Vulkan::with_options(index, &Options::from_env()?)
    }

    /// The backend on device `index` with `opts`.
    pub fn with_options(index: usize, opts: &Options) -> Result<Vulkan> {
        let ctx = Ctx::new(index, opts)?;
        let info = &ctx.info;
        let mm = match (info.kind == "CPU", info.coop > 0) {
            (true, _) => MatmulKernel::Rows,
            (false, true) => MatmulKernel::Coop,
            (false, false) => MatmulKernel::f32_default(info),
        };
        let grids = weights::upload_grids(&ctx)?;
        let vk = Vulkan {
            ctx,
            mm,
            grids,
            weights: Mutex::new(HashMap::new()),
            tmp: Mutex::new(Default::default()),
            packs: Mutex::new(HashMap::new()),
            imported: Default::default(),
            reads_in_place: Mutex::new(HashMap::new()),
        };
        match opts.matmul {
            Some(k) => vk.with_matmul_kernel(k),
            None => Ok(vk),
        }
    }

    /// What the device is.
    pub fn info(&self) -> &DeviceInfo {
        &self.ctx.info
    }

    /// The kernel that runs matmuls.
    pub fn matmul_kernel(&self) -> MatmulKernel {
        self.mm
    }

    /// The backend with matmuls on kernel `k` instead of the device's default (tests run
    /// each); an error where the device lacks what `k` needs.
    pub fn with_matmul_kernel(mut self, k: MatmulKernel) -> Result<Vulkan> {
        let info = &self.ctx.info;
        let lacks = match k {
            MatmulKernel::Subgroup if !info.subgroup_arith => "subgroup arithmetic",
            MatmulKernel::Coop if info.coop == 0 => {
                "16x16 or 8x8 f16 cooperative matrices (VK_KHR_cooperative_matrix)"
            }
            _ => "",
        };
        if !lacks.is_empty() {
            return Err(Error::Unsupported(format!("{} has no {lacks}", info.name)));
        }
        self.mm = k;
        Ok(self)
    }

    /// Whether matmuls by weights of `dtype` run on the cooperative-matrix kernel, which rounds
    /// weights and activations to f16: on [`MatmulKernel::Coop`], the types whose CPU kernels
    /// round activations to 16-bit integers too ([`hearth_quant::acts::supports_q16`]: Q4_0-Q8_0,
    /// the K-quants, IQ4_XS). The others (float weights, the i-quants but IQ4_XS, MXFP4) keep
    /// a kernel that multiplies f32 activations, as the CPU does for them, so that their
    /// results stay within f32 rounding of the reference (the tests' bar for those types).
    pub fn coop_for(&self, dtype: DType) -> bool {
        self.mm == MatmulKernel::Coop && hearth_quant::acts::supports_q16(dtype)
    }

    /// Bytes of the weights loaded so far that the device reads in place from the host memory
    /// holding them (the mapped model file), without a copy: on a device that shares memory
    /// with the host and has `VK_EXT_external_memory_host`, unless `HEARTH_VK_IMPORT=0`.
    pub fn imported_bytes(&self) -> usize {
        self.imported.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether weights are read in place from host memory where their bytes allow it
    /// ([`Vulkan::imported_bytes`]).
    pub fn imports(&self) -> bool {
        self.ctx.import.is_some()
    }

    /// Whether buffers live in device-local memory reached through staging copies.
    pub fn staging(&self) -> bool {
        self.ctx.staging
    }

    /// The largest buffer, in bytes (weights larger than it are split by rows).
    pub fn max_alloc(&self) -> u64 {
        self.ctx.max_alloc
    }

    fn run(
        &self,
        shader: (&'static str, &[u8]),
        bufs: &[&RawBuf],
        pc: &[u32],
        groups: u64,
    ) -> Result<()> {
        self.run_q(shader, 0, bufs, pc, groups)
    }

    /// [`Vulkan::run`] with specialization constant 1 (a weight's type) set to `spec`.
    fn run_q(
        &self,
        shader: (&'static str, &[u8]),
        spec: u32,
        bufs: &[&RawBuf],
        pc: &[u32],
        groups: u64,
    ) -> Result<()> {
        let p = self
            .ctx
            .pipeline(shader.0, shader.1, bufs.len() as u32, spec)?;
        self.ctx.dispatch(&p, bufs, pc, groups)
    }

    /// Workgroups that cover `n` elements.
    fn groups(&self, n: usize) -> u64 {
        n.div_ceil(self.ctx.wg as usize) as u64
    }

    fn elementwise(&self, x: ViewMut<'_>, y: View<'_>, mode: u32, bw: usize) -> Result<()> {
        let (xm, xo, n) = dev_mut(x)?;
        let (ym, yo, yn) = dev(y)?;
        if (mode == 0 && yn != n) || (mode == 1 && (bw == 0 || n % bw != 0 || yn != bw)) {
            return Err(Error::Invalid(format!(
                "add: {n} values and {yn} do not fit together"
            )));
        }
        self.run(
            spv!("add"),
            &[&xm.raw, &ym.raw, &ym.raw],
            &[u(n)?, xo, yo, mode, u(bw)?, 0],
            self.groups(n),
        )
    }

    /// `n_rows` rows of `width`: `dst[d0 + r*ds..]` from `src[s0 + r*ss..]`.
    #[allow(clippy::too_many_arguments)]
    fn copy_raw(
        &self,
        src: &RawBuf,
        s0: u32,
        ss: usize,
        dst: &RawBuf,
        d0: u32,
        ds: usize,
        c: hearth_core::RowCopy,
    ) -> Result<()> {
        let n = c.n_rows * c.width;
        let pc = [u(n)?, u(c.width)?, s0, u(ss)?, d0, u(ds)?];
        self.run(spv!("copy"), &[src, dst], &pc, self.groups(n))
    }

    /// Row `t` of `src` (`rows.len()` rows of `width`) into row `rows[t]` of `dst`.
    fn scatter_raw(
        &self,
        src: &RawBuf,
        s0: u32,
        dst: &RawBuf,
        d0: u32,
        width: usize,
        rows: &[usize],
    ) -> Result<()> {
        let tab: Vec<u32> = rows.iter().map(|&r| u(r)).collect::<Result<_>>()?;
        let (tb, to) = self.ctx.stage(&tab)?;
        let n = rows.len() * width;
        let pc = [u(n)?, u(width)?, s0, d0, to];
        self.run(spv!("scatter"), &[src, dst, &tb], &pc, self.groups(n))
    }

    /// Rotate `n_tok` tokens of `n_heads` heads at `x[x0..]`.
    fn rope_raw(
        &self,
        x: &RawBuf,
        x0: u32,
        n_tok: usize,
        n_heads: usize,
        r: &RopeArgs<'_>,
    ) -> Result<()> {
        let half = r.inv_freq.len();
        if half == 0 || n_tok == 0 {
            return Ok(());
        }
        if r.positions.len() < n_tok || 2 * half > r.head_dim {
            return Err(Error::Invalid("rope: positions or pairs do not fit".into()));
        }
        // each token's (cos, sin) per pair, computed as the CPU backend computes them
        let mut tab = Vec::with_capacity(2 * n_tok * half);
        for &pos in &r.positions[..n_tok] {
            for &f in r.inv_freq {
                let a = pos as f32 * f;
                tab.push((a.cos() * r.mscale).to_bits());
                tab.push((a.sin() * r.mscale).to_bits());
            }
        }
        let (tb, to) = self.ctx.stage(&tab)?;
        let n = n_tok * n_heads * half;
        let style = u32::from(r.style == hearth_core::RopeStyle::Neox);
        let pc = [u(n)?, u(n_heads)?, u(r.head_dim)?, u(half)?, style, x0, to];
        self.run(spv!("rope"), &[x, &tb], &pc, self.groups(n))
    }

    /// The KV rotation (`mode` 0, [`hearth_core::kv::rotate`]) or its inverse (`mode` 1) in
    /// place on the `n` values at `x[x0..]`, in chunks of `rot`.
    fn rotate_raw(&self, x: &RawBuf, x0: u32, n: usize, rot: usize, mode: u32) -> Result<()> {
        if !rot.is_power_of_two() || rot > 128 || !n.is_multiple_of(rot) {
            return Err(Error::Invalid(format!(
                "KV rotation: {n} values in chunks of {rot}"
            )));
        }
        let bits = hearth_core::kv::SIGN_BITS;
        let scale = hearth_core::kv::rot_scale(rot);
        let chunks = n / rot;
        let pc = [
            u(chunks)?,
            u(rot)?,
            x0,
            mode,
            bits as u32,
            (bits >> 32) as u32,
            scale.to_bits(),
        ];
        self.run(spv!("hadamard"), &[x], &pc, self.groups(chunks))
    }

    /// Row `t` of `src` (rows of `width` at `src[s0..]`) into cache row `rows[t]` of `dst`
    /// (at `dst[d0..]`) as `ty`, rotated first in a scratch copy where the type is (the
    /// caller checked the sizes).
    #[allow(clippy::too_many_arguments)]
    fn store_kv_raw(
        &self,
        src: &RawBuf,
        s0: u32,
        width: usize,
        dst: &RawBuf,
        d0: u32,
        rows: &[usize],
        ty: KvType,
        rot: usize,
    ) -> Result<()> {
        if ty == KvType::F32 {
            return self.scatter_raw(src, s0, dst, d0, width, rows);
        }
        if !width.is_multiple_of(ty.block()) {
            return Err(Error::Invalid(format!(
                "KV store: rows of {width} values are not whole blocks of {}",
                ty.name()
            )));
        }
        let n = rows.len() * width;
        let rotated;
        let (src, s0) = match ty.rotated() {
            true => {
                rotated = self.scratch_copy(2, src, s0, n)?;
                self.rotate_raw(&rotated, 0, n, rot, 0)?;
                (&*rotated, 0)
            }
            false => (src, s0),
        };
        // a unit: one word of a 16-bit type, two blocks of a block type
        let units = match ty.block() {
            1 => ty.row_words(width),
            _ => (width / 32).div_ceil(2),
        };
        let tab: Vec<u32> = rows.iter().map(|&r| u(r)).collect::<Result<_>>()?;
        let (tb, to) = self.ctx.stage(&tab)?;
        let total = rows.len() * units;
        let pc = [
            u(total)?,
            u(units)?,
            u(width)?,
            s0,
            d0,
            u(ty.row_words(width))?,
            ty.code(),
            to,
        ];
        self.run(spv!("kv_store"), &[src, dst, &tb], &pc, self.groups(total))
    }

    /// The `n` values at `src[s0..]` copied to the start of scratch buffer `slot`.
    fn scratch_copy(&self, slot: usize, src: &RawBuf, s0: u32, n: usize) -> Result<Arc<RawBuf>> {
        let t = self.tmp(slot, n * 4)?;
        let c = hearth_core::RowCopy {
            n_rows: 1,
            width: n,
        };
        self.copy_raw(src, s0, n, &t, 0, n, c)?;
        Ok(t)
    }

    /// A scratch buffer of at least `bytes` (the old one, if replaced, is kept until the
    /// commands that use it ran).
    fn tmp(&self, slot: usize, bytes: usize) -> Result<Arc<RawBuf>> {
        let mut t = self.tmp.lock().unwrap_or_else(|e| e.into_inner());
        let t = &mut t[slot];
        match &*t {
            Some(b) if b.bytes >= bytes => Ok(b.clone()),
            _ => {
                let b = Arc::new(self.ctx.alloc(bytes.next_power_of_two())?);
                if let Some(old) = t.replace(b.clone()) {
                    self.ctx.keep(old);
                }
                Ok(b)
            }
        }
    }
}

impl Backend for Vulkan {
    fn name(&self) -> String {
        format!("vulkan:{} ({})", self.ctx.info.index, self.ctx.info.name)
    }

    fn matmul_rounds_to_f16(&self, dtype: DType) -> bool {
        self.coop_for(dtype)
    }

    fn supports(&self, _dtype: DType) -> bool {
        true
    }

    fn prepare(&self, w: &mut Tensor) {
        // routed experts ("_exps" in every naming the loader uses) reach this backend only
        // through moe_experts, which packs each layer's experts itself
        if !w.name.contains("_exps") {
            // a failure here shows again, as an error, at the weight's first use
            let _ = self.weight(w);
        }
    }

    fn memory(&self) -> Option<u64> {
        // what was free when the device was opened (the weights it holds since then are
        // counted by the plan)
        Some(self.ctx.info.free)
    }

    fn weight_bytes(&self, w: &Tensor) -> usize {
        // routed experts too, in their layer's pack
        weights::held_bytes(w)
    }

    fn weight_bytes_in_place(&self, w: &Tensor) -> usize {
        // as `weight` and `pack` will read it: a matrix's rows, or a routed expert as one
        // unit of its layer's range
        let b = w.bytes();
        let (unit, n) = match (w.name.contains("_exps"), w.name.contains('[')) {
            // a slice of a stacked expert tensor (`blk.N.ffn_up_exps.weight[E]`): the layer's
            // experts lie one after another
            (true, true) => (b.len(), 1),
            // a per-expert tensor of a Hugging Face checkpoint: its layer's experts are read in
            // place only where the file happens to hold them one after another, which one
            // tensor cannot tell, so it counts as copied (the safe side for the device)
            (true, false) => return 0,
            (false, _) => (w.row_bytes(), w.n_rows()),
        };
        let backing = w.storage.backing();
        let read = weights::code(w.dtype).is_some()
            && weights::import_pieces(&self.ctx, b, backing, unit, n).is_some()
            && *self
                .reads_in_place
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(backing.as_ptr() as usize)
                .or_insert_with(|| self.ctx.imports_backing(backing));
        if read { b.len() } else { 0 }
    }

    fn alloc(&self, n: usize) -> Result<Buf> {
        let bytes = n.checked_mul(4).ok_or_else(too_big)?;
        Ok(Buf::Dev(Box::new(VkMem {
            raw: self.ctx.alloc(bytes)?,
            len: n,
        })))
    }

    fn upload(&self, src: &[f32], dst: ViewMut<'_>) -> Result<()> {
        let (m, off, len) = dev_mut(dst)?;
        if len != src.len() {
            return Err(Error::Invalid(format!(
                "upload: {} values into {len}",
                src.len()
            )));
        }
        self.ctx.write(&m.raw, off as usize * 4, as_bytes(src))
    }

    fn download(&self, src: View<'_>, dst: &mut [f32]) -> Result<()> {
        let (m, off, len) = dev(src)?;
        if len != dst.len() {
            return Err(Error::Invalid(format!(
                "download: {len} values into {}",
                dst.len()
            )));
        }
        // SAFETY: f32 values viewed as their bytes (every bit pattern is a valid f32).
        let out = unsafe {
            std::slice::from_raw_parts_mut(dst.as_mut_ptr() as *mut u8, std::mem::size_of_val(dst))
        };
        self.ctx.read(&m.raw, off as usize * 4, out)
    }

    fn matmul(&self, w: &Tensor, x: View<'_>, n_tok: usize, out: ViewMut<'_>) -> Result<()> {
        // W [n_out, n_in] @ x [n_tok, n_in] -> out [n_tok, n_out]
        let (n_in, n_out) = (w.row_len(), w.n_rows());
        let (xm, xo, xn) = dev(x)?;
        let (om, oo, on) = dev_mut(out)?;
        if xn != n_tok * n_in || on != n_tok * n_out {
            return Err(Error::Invalid(format!(
                "matmul {}: weight [{n_out}, {n_in}], x has {xn} values for {n_tok} tokens, \
                 out {on}",
                w.name
            )));
        }
        let dw = self.weight(w)?;
        let coop = self.coop_for(w.dtype);
        self.matmul_pieces(
            &dw,
            coop,
            (n_in, n_out, n_tok),
            (&xm.raw, xo),
            (&om.raw, oo),
        )
    }

    fn dequantize(&self, t: &Tensor, out: &mut [f32]) -> Result<()> {
        hearth_quant::dequantize(t.dtype, t.bytes(), out)
    }

    fn get_rows(&self, w: &Tensor, ids: &[u32], out: ViewMut<'_>) -> Result<()> {
        let (om, oo, on) = dev_mut(out)?;
        let width = w.row_len();
        if on != ids.len() * width || ids.iter().any(|&i| i as usize >= w.n_rows()) {
            return Err(Error::Invalid(format!(
                "get_rows {}: {} rows of {} rows do not fill {on} values",
                w.name,
                ids.len(),
                w.n_rows()
            )));
        }
        let dw = self.weight(w)?;
        self.get_rows_pieces(&dw, width, ids, (&om.raw, oo))
    }

    fn rms_norm(&self, x: ViewMut<'_>, w: View<'_>, eps: f32) -> Result<()> {
        let (xm, xo, n) = dev_mut(x)?;
        let (wm, wo, width) = dev(w)?;
        if width == 0 || n % width != 0 {
            return Err(Error::Invalid(format!(
                "rms_norm: rows of {n} values cannot take a weight of {width}"
            )));
        }
        let rows = n / width;
        let pc = [u(width)?, u(rows)?, xo, wo, eps.to_bits()];
        self.run(spv!("rms_norm"), &[&xm.raw, &wm.raw], &pc, rows as u64)
    }

    fn rope(&self, x: ViewMut<'_>, n_heads: usize, r: &RopeArgs<'_>) -> Result<()> {
        let (xm, xo, n) = dev_mut(x)?;
        let n_tok = r.positions.len().min(n / (n_heads * r.head_dim).max(1));
        self.rope_raw(&xm.raw, xo, n_tok, n_heads, r)
    }

    fn rope_qk_store(
        &self,
        q: ViewMut<'_>,
        n_head: usize,
        k: View<'_>,
        n_kv_head: usize,
        v: View<'_>,
        r: &RopeArgs<'_>,
        dest: hearth_core::KvDest<'_>,
    ) -> Result<()> {
        let (km, ko, kn) = dev(k)?;
        let (vm, vo, vn) = dev(v)?;
        let (kcm, kco, kcn) = dev_mut(dest.k)?;
        let (vcm, vco, vcn) = dev_mut(dest.v)?;
        let n = dest.rows.len();
        let kw = n_kv_head * r.head_dim;
        let vw = vn.checked_div(n).unwrap_or(0);
        let f = dest.fmt;
        let (kr, vr) = (f.k.row_words(kw), f.v.row_words(vw));
        if kn != n * kw
            || vw * n != vn
            || dest
                .rows
                .iter()
                .any(|&row| (row + 1) * kr > kcn || (row + 1) * vr > vcn)
        {
            return Err(Error::Invalid(
                "rope_qk_store: rows do not fit the cache".into(),
            ));
        }
        self.rope(q, n_head, r)?;
        // the keys rotated in a scratch copy, then both into their cache rows
        let tmp = self.scratch_copy(0, &km.raw, ko, kn)?;
        self.rope_raw(&tmp, 0, n, n_kv_head, r)?;
        self.store_kv_raw(&tmp, 0, kw, &kcm.raw, kco, dest.rows, f.k, f.rot)?;
        self.store_kv_raw(&vm.raw, vo, vw, &vcm.raw, vco, dest.rows, f.v, f.rot)
    }

    fn store_kv(
        &self,
        src: View<'_>,
        dst: ViewMut<'_>,
        rows: &[usize],
        ty: KvType,
        rot: usize,
    ) -> Result<()> {
        let (sm, so, sn) = dev(src)?;
        let (dm, d0, dn) = dev_mut(dst)?;
        let width = sn.checked_div(rows.len()).unwrap_or(0);
        let rw = ty.row_words(width);
        if width * rows.len() != sn || rows.iter().any(|&r| (r + 1) * rw > dn) {
            return Err(Error::Invalid(format!(
                "KV store: {sn} values in {} rows do not fit a cache of {dn} words as {}",
                rows.len(),
                ty.name()
            )));
        }
        self.store_kv_raw(&sm.raw, so, width, &dm.raw, d0, rows, ty, rot)
    }

    fn supports_kv(&self, _t: KvType) -> bool {
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
        let (km, ko, kn) = dev(k)?;
        let (vm, vo, vn) = dev(v)?;
        let (qm, qo, qn) = dev(q)?;
        let (om, oo, on) = dev_mut(out)?;
        let n_tok: usize = segs.iter().map(|s| s.n_tok).sum();
        let wg = self.ctx.wg as usize;
        if p.head_dim > 1024
            || p.v_dim > 16 * wg
            || p.n_kv_head == 0
            || !p.n_head.is_multiple_of(p.n_kv_head)
            || qn < n_tok * p.n_head * p.head_dim
            || on < n_tok * p.n_head * p.v_dim
        {
            return Err(Error::Unsupported(format!(
                "vulkan attention: {} heads of {} (values {}) over {} kv heads",
                p.n_head, p.head_dim, p.v_dim, p.n_kv_head
            )));
        }
        let (tab, ps) = attn_table("attention", segs)?;
        let seqs = segs
            .iter()
            .map(|s| ((s.pos0 + s.n_tok).saturating_sub(1), s.pages));
        hearth_core::check_attn_rows(p, kn, vn, seqs)?;
        // rotated keys take rotated queries (hearth_core::kv), in a scratch copy
        let qrot;
        let (qb, qo) = match p.kv.k.rotated() {
            true => {
                let nq = n_tok * p.n_head * p.head_dim;
                qrot = self.scratch_copy(3, &qm.raw, qo, nq)?;
                self.rotate_raw(&qrot, 0, nq, p.kv.rot, 0)?;
                (&*qrot, 0)
            }
            false => (&qm.raw, qo),
        };
        // sinks stay on the device: their buffer and offset + 1 (0: none)
        let sinks = p.sinks.map(dev).transpose()?;
        if sinks.is_some_and(|s| s.2 < p.n_head) {
            return Err(Error::Invalid("attention: fewer sinks than heads".into()));
        }
        let (tb, to) = self.ctx.stage(&tab)?;
        let pc = [
            u(n_tok)?,
            u(p.n_head)?,
            u(p.n_kv_head)?,
            u(p.head_dim)?,
            u(p.v_dim)?,
            u(p.k_stride)?,
            u(p.v_stride)?,
            p.scale.to_bits(),
            u(p.window.unwrap_or(0))?,
            ko,
            vo,
            qo,
            oo,
            to,
            u(ps)?,
            sinks.map_or(0, |s| s.1 + 1),
            p.kv.k.code(),
            p.kv.v.code(),
        ];
        self.run(
            spv!("attn"),
            &[
                &km.raw,
                &vm.raw,
                qb,
                &om.raw,
                &tb,
                sinks.map_or(&km.raw, |s| &s.0.raw),
            ],
            &pc,
            (n_tok * p.n_head) as u64,
        )?;
        // rotated values give rotated outputs: rotated back in place
        match p.kv.v.rotated() {
            true => self.rotate_raw(&om.raw, oo, n_tok * p.n_head * p.v_dim, p.kv.rot, 1),
            false => Ok(()),
        }
    }

    fn glu(&self, act: Glu, gate: ViewMut<'_>, up: View<'_>) -> Result<()> {
        let (gm, go, n) = dev_mut(gate)?;
        let (um, uo, un) = dev(up)?;
        if un != n {
            return Err(Error::Invalid(format!(
                "glu: lengths differ ({n} and {un})"
            )));
        }
        let [mode, alpha, limit] = glu_args(act);
        let pc = [u(n)?, go, uo, mode, alpha, limit];
        self.run(spv!("glu"), &[&gm.raw, &um.raw], &pc, self.groups(n))
    }

    fn add(&self, x: ViewMut<'_>, y: View<'_>) -> Result<()> {
        self.elementwise(x, y, 0, 0)
    }

    fn add_bias(&self, x: ViewMut<'_>, b: View<'_>) -> Result<()> {
        let bw = b.len();
        self.elementwise(x, b, 1, bw)
    }

    fn add_scaled_rows(&self, x: ViewMut<'_>, y: View<'_>, s: View<'_>) -> Result<()> {
        let (xm, xo, n) = dev_mut(x)?;
        let (ym, yo, yn) = dev(y)?;
        let (sm, so, sn) = dev(s)?;
        let bw = n.checked_div(sn).unwrap_or(0);
        if yn != n || bw * sn != n {
            return Err(Error::Invalid(format!(
                "add_scaled_rows: {n} values, {yn} and {sn} scales"
            )));
        }
        self.run(
            spv!("add"),
            &[&xm.raw, &ym.raw, &sm.raw],
            &[u(n)?, xo, yo, 2, u(bw)?, so],
            self.groups(n),
        )
    }

    fn sigmoid(&self, x: ViewMut<'_>) -> Result<()> {
        let (xm, xo, n) = dev_mut(x)?;
        self.run(spv!("unary"), &[&xm.raw], &[u(n)?, xo, 0], self.groups(n))
    }

    fn copy_rows(
        &self,
        src: View<'_>,
        src_stride: usize,
        dst: ViewMut<'_>,
        dst_stride: usize,
        c: hearth_core::RowCopy,
    ) -> Result<()> {
        let (sm, so, sn) = dev(src)?;
        let (dm, d0, dn) = dev_mut(dst)?;
        c.check(sn, src_stride, dn, dst_stride)?;
        self.copy_raw(&sm.raw, so, src_stride, &dm.raw, d0, dst_stride, c)
    }

    fn store_rows(&self, src: View<'_>, dst: ViewMut<'_>, rows: &[usize]) -> Result<()> {
        let (sm, so, sn) = dev(src)?;
        let (dm, d0, dn) = dev_mut(dst)?;
        hearth_core::check_rows(sn, dn, rows)?;
        let width = sn.checked_div(rows.len()).unwrap_or(0);
        self.scatter_raw(&sm.raw, so, &dm.raw, d0, width, rows)
    }

    fn moe_route(
        &self,
        logits: View<'_>,
        score_b: Option<View<'_>>,
        cfg: &hearth_core::Routing,
        ids: ViewMut<'_>,
        weights: ViewMut<'_>,
    ) -> Result<()> {
        let (lm, lo, ln) = dev(logits)?;
        let (im, io, inn) = dev_mut(ids)?;
        let (wm, wo, wn) = dev_mut(weights)?;
        let (ne, k) = (cfg.n_expert, cfg.n_used);
        let n = ln / ne.max(1);
        if ne > 512 || cfg.n_group > 64 {
            return Err(Error::Unsupported(format!(
                "vulkan routing of {ne} experts in {} groups (at most 512 in 64)",
                cfg.n_group
            )));
        }
        if n * ne != ln || inn != n * k || wn != n * k {
            return Err(Error::Invalid(format!(
                "moe_route: {ln} logits of {ne} experts do not fit {inn} ids"
            )));
        }
        let sb = score_b.map(dev).transpose()?;
        let pc = [
            u(n)?,
            u(ne)?,
            u(k)?,
            u32::from(cfg.gating == hearth_core::moe::Gating::Sigmoid),
            u32::from(cfg.norm),
            cfg.scale.to_bits(),
            u(cfg.n_group)?,
            u(cfg.topk_group)?,
            u32::from(cfg.group_score == hearth_core::moe::GroupScore::Top2Sum),
            u32::from(sb.is_some()),
            lo,
            sb.map_or(0, |b| b.1),
            io,
            wo,
        ];
        let sbuf = sb.map_or(&lm.raw, |b| &b.0.raw);
        self.run(
            spv!("route"),
            &[&lm.raw, sbuf, &im.raw, &wm.raw],
            &pc,
            self.groups(n),
        )
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
        let (xm, xo, xn) = dev(x)?;
        let (wm, wo, wn) = dev(w)?;
        let (sm, so, sn) = dev_mut(state)?;
        let (om, oo, on) = dev_mut(out)?;
        let kernel = wn.checked_div(channels).unwrap_or(0);
        if kernel == 0 || kernel > 16 || kernel * channels != wn || xn != on {
            return Err(Error::Invalid(format!(
                "ssm_conv: {wn} weights are not {channels} channels of a kernel of at most 16"
            )));
        }
        hearth_core::linear::check_segs(
            "ssm_conv",
            segs,
            xn / channels,
            sn,
            lay,
            (kernel - 1) * channels,
        )?;
        let (tb, to) = self.ctx.stage(&seg_table(segs)?)?;
        let n = segs.len() * channels;
        let pc = [
            u(n)?,
            u(channels)?,
            u(kernel)?,
            xo,
            wo,
            so,
            oo,
            u(lay.stride)?,
            u(lay.offset)?,
            to,
        ];
        self.run(
            spv!("ssm_conv"),
            &[&xm.raw, &wm.raw, &sm.raw, &om.raw, &tb],
            &pc,
            self.groups(n),
        )
    }

    fn delta_rule(&self, j: DeltaJob<'_>) -> Result<()> {
        let sh = j.shape;
        sh.check()?;
        if sh.k_dim > 512 {
            return Err(Error::Unsupported(format!(
                "vulkan delta rule with key heads of {} (at most 512)",
                sh.k_dim
            )));
        }
        let (qm, qo, qn) = dev(j.qkv)?;
        let (am, ao, an) = dev(j.a)?;
        let (bm, bo, bn) = dev(j.b)?;
        let (acm, aco, acn) = dev(j.a_coef)?;
        let (dm, dto, dn) = dev(j.dt_bias)?;
        let (sm, so, sn) = dev_mut(j.state)?;
        let (om, oo, on) = dev_mut(j.out)?;
        let w = sh.qkv_width();
        let rows = qn / w;
        let nv = sh.n_v_heads;
        if rows * w != qn
            || an != rows * nv
            || bn != rows * nv
            || on != rows * nv * sh.v_dim
            || acn != nv
            || dn != nv
        {
            return Err(Error::Invalid(format!(
                "delta_rule: {qn} values are not rows of {w} that fit the gates and output"
            )));
        }
        hearth_core::linear::check_segs("delta_rule", j.segs, rows, sn, j.lay, sh.state_len())?;
        let (tb, to) = self.ctx.stage(&seg_table(j.segs)?)?;
        let pc = [
            u(sh.n_k_heads)?,
            u(nv)?,
            u(sh.k_dim)?,
            u(sh.v_dim)?,
            u32::from(sh.tiled),
            u(w)?,
            qo,
            ao,
            bo,
            aco,
            dto,
            so,
            u(j.lay.stride)?,
            u(j.lay.offset)?,
            oo,
            to,
        ];
        self.run(
            spv!("delta"),
            &[
                &qm.raw, &am.raw, &bm.raw, &acm.raw, &dm.raw, &sm.raw, &om.raw, &tb,
            ],
            &pc,
            (j.segs.len() * nv) as u64,
        )
    }

    fn dsa_select(&self, j: DsaJob<'_>) -> Result<()> {
        let (km, ko, kn) = dev(j.keys)?;
        let (qm, qo, qn) = dev(j.q)?;
        let (wm, wo, wn) = dev(j.w)?;
        let (sm, so, sn) = dev_mut(j.scores)?;
        let (om, oo, on) = dev_mut(j.out)?;
        let n = hearth_core::dsa::check(&j.p, j.segs, [kn, qn, wn, sn, on])?;
        let (tab, ps) = attn_table("dsa_select", j.segs)?;
        let (tb, to) = self.ctx.stage(&tab)?;
        let pc = [
            u(n)?,
            u(j.p.n_head)?,
            u(j.p.head_dim)?,
            u(j.p.top_k)?,
            j.p.scale.to_bits(),
            u(hearth_core::dsa::score_width(j.segs))?,
            u(ps)?,
            ko,
            qo,
            wo,
            so,
            oo,
            to,
        ];
        self.run(
            spv!("dsa"),
            &[&km.raw, &qm.raw, &wm.raw, &sm.raw, &om.raw, &tb],
            &pc,
            n as u64,
        )
    }

    fn lightning(&self, j: LightningJob<'_>) -> Result<()> {
        let sh = j.shape;
        sh.check()?;
        if sh.head_dim > 512 {
            return Err(Error::Unsupported(format!(
                "vulkan lightning attention with heads of {} (at most 512)",
                sh.head_dim
            )));
        }
        let (qm, qo, qn) = dev(j.qkv)?;
        let (dm, dco, dn) = dev(j.decay)?;
        let (sm, so, sn) = dev_mut(j.state)?;
        let (om, oo, on) = dev_mut(j.out)?;
        let w = sh.qkv_width();
        let rows = qn / w;
        let nh = sh.n_heads;
        if rows * w != qn || on != rows * nh * sh.head_dim || dn != nh {
            return Err(Error::Invalid(format!(
                "lightning: {qn} values are not rows of {w} that fit the decays and output"
            )));
        }
        hearth_core::linear::check_segs("lightning", j.segs, rows, sn, j.lay, sh.state_len())?;
        let (tb, to) = self.ctx.stage(&seg_table(j.segs)?)?;
        let pc = [
            u(nh)?,
            u(sh.head_dim)?,
            qo,
            dco,
            so,
            u(j.lay.stride)?,
            u(j.lay.offset)?,
            oo,
            to,
        ];
        self.run(
            spv!("lightning"),
            &[&qm.raw, &dm.raw, &sm.raw, &om.raw, &tb],
            &pc,
            (j.segs.len() * nh) as u64,
        )
    }

    fn moe_experts(&self, job: MoeJob<'_>) -> Result<()> {
        let (n, k) = (job.n_tok, job.n_used);
        let (xm, xo, xn) = dev(job.x)?;
        let (im, io, inn) = dev(job.ids)?;
        let (wm, wo, wn) = dev(job.weights)?;
        let (om, oo, on) = dev_mut(job.out)?;
        let e = xn.checked_div(n).unwrap_or(0);
        if n == 0 || e * n != xn || on != xn || inn != n * k || wn != n * k {
            return Err(Error::Invalid(format!(
                "moe_experts: {n} tokens of {e} values, {inn} ids, {on} outputs"
            )));
        }
        let p = self.pack(job.experts)?;
        let ff = p.n_ff;
        let slots = n * k;
        // the slots grouped by expert, where a matrix kind runs on cooperative matrices
        let n_exp = job.experts.len();
        let coop = |w: &DevWeight| self.moe_coop(w, n_exp);
        let table = if coop(&p.gate) || coop(&p.up) || coop(&p.down) {
            Some(self.moe_group((&im.raw, io), slots, n_exp)?)
        } else {
            None
        };
        let groups = |w: &DevWeight| table.as_ref().filter(|_| coop(w)).map(|(t, m)| (&**t, *m));
        let g = self.tmp(1, slots * ff * 4)?;
        let up = self.tmp(2, slots * ff * 4)?;
        let y = self.tmp(3, slots * e * 4)?;
        let shape = (e, ff, slots, k);
        self.moe_mm(
            &p.gate,
            p.bias[0].as_ref(),
            (&xm.raw, xo),
            (&im.raw, io),
            groups(&p.gate),
            &g,
            shape,
            false,
        )?;
        self.moe_mm(
            &p.up,
            p.bias[1].as_ref(),
            (&xm.raw, xo),
            (&im.raw, io),
            groups(&p.up),
            &up,
            shape,
            false,
        )?;
        let [mode, alpha, limit] = glu_args(job.act);
        let m = slots * ff;
        let pc = [u(m)?, 0, 0, mode, alpha, limit];
        self.run(spv!("glu"), &[&g, &up], &pc, self.groups(m))?;
        let shape = (ff, e, slots, k);
        self.moe_mm(
            &p.down,
            p.bias[2].as_ref(),
            (&g, 0),
            (&im.raw, io),
            groups(&p.down),
            &y,
            shape,
            true,
        )?;
        let pc = [u(n * e)?, u(e)?, u(k)?, wo, oo];
        self.run(
            spv!("moe_sum"),
            &[&y, &wm.raw, &om.raw],
            &pc,
            self.groups(n * e),
        )
    }
}
