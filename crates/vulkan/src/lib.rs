//! hearth-vulkan: the Vulkan backend (AMD through RADV, NVIDIA, Intel, Apple through MoltenVK,
//! and Mesa's lavapipe on the CPU, which is how CI checks every shader).
//!
//! The loader is opened at run time ([`devices`], [`Vulkan::new`] fail with a clear error on a
//! machine without one). Shaders are GLSL in `shaders/`, compiled to the SPIR-V committed in
//! `spv/` by `scripts/build_shaders.sh` (a test fails when a committed module is stale); each
//! pipeline is built once, its workgroup size a specialization constant.
//!
//! This is the first step of the backend: buffers, transfers, and the element-wise ops, RMS
//! norm and F32/F16 matmuls, each checked against the CPU backend by the conformance suite.
//! Ops that have no shader yet return an `Unsupported` error naming the op, and [`Vulkan`]
//! reports only F32 and F16 weights as supported, so no model loads onto it yet.
#![deny(missing_docs)]

mod ctx;

pub use ctx::DeviceInfo;

use ctx::{Ctx, RawBuf};
use hearth_core::{
    AttnParams, AttnSeg, Backend, Buf, DType, DevMem, Error, Glu, MoeJob, Result, RopeArgs, Tensor,
    View, ViewMut,
};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// The Vulkan devices the loader reports.
pub fn devices() -> Result<Vec<DeviceInfo>> {
    Ok(ctx::Instance::new()?
        .devices()?
        .into_iter()
        .map(|(_, i)| i)
        .collect())
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

/// The Vulkan backend on one device.
pub struct Vulkan {
    ctx: Arc<Ctx>,
    /// Weights copied to the device, by the address and length of their bytes.
    weights: Mutex<HashMap<(usize, usize), Arc<RawBuf>>>,
}

fn no_shader(op: &str) -> Error {
    Error::Unsupported(format!("the Vulkan backend has no shader for {op} yet"))
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

impl Vulkan {
    /// The backend on device `index` (see [`devices`]).
    pub fn new(index: usize) -> Result<Vulkan> {
        Ok(Vulkan {
            ctx: Ctx::new(index)?,
            weights: Mutex::new(HashMap::new()),
        })
    }

    /// What the device is.
    pub fn info(&self) -> &DeviceInfo {
        &self.ctx.info
    }

    fn run(
        &self,
        shader: (&'static str, &[u8]),
        bufs: &[&RawBuf],
        pc: &[u32],
        groups: u64,
    ) -> Result<()> {
        let p = self.ctx.pipeline(shader.0, shader.1, bufs.len() as u32)?;
        self.ctx.dispatch(&p, bufs, pc, groups)
    }

    /// Workgroups that cover `n` elements.
    fn groups(&self, n: usize) -> u64 {
        n.div_ceil(self.ctx.wg as usize) as u64
    }

    /// The device copy of a weight, made on first use.
    fn weight(&self, w: &Tensor) -> Result<Arc<RawBuf>> {
        let b = w.bytes();
        let key = (b.as_ptr() as usize, b.len());
        let mut ws = self.weights.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(r) = ws.get(&key) {
            return Ok(r.clone());
        }
        let raw = self.ctx.alloc(b.len())?;
        // SAFETY: the mapping holds `raw.bytes >= b.len()` bytes and no command uses it yet.
        unsafe { std::ptr::copy_nonoverlapping(b.as_ptr(), raw.ptr, b.len()) };
        let raw = Arc::new(raw);
        ws.insert(key, raw.clone());
        Ok(raw)
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
            &[&xm.raw, &ym.raw],
            &[u(n)?, xo, yo, mode, u(bw)?],
            self.groups(n),
        )
    }
}

impl Backend for Vulkan {
    fn name(&self) -> String {
        format!("vulkan:{} ({})", self.ctx.info.index, self.ctx.info.name)
    }

    fn supports(&self, dtype: DType) -> bool {
        matches!(dtype, DType::F32 | DType::F16)
    }

    fn prepare(&self, w: &mut Tensor) {
        if self.supports(w.dtype) {
            // a failure here shows again, as an error, at the weight's first use
            let _ = self.weight(w);
        }
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
        // SAFETY: the range lies in the mapping (views are checked against their buffer) and
        // no command runs (every op waits for its work).
        unsafe {
            let p = (m.raw.ptr as *mut f32).add(off as usize);
            std::ptr::copy_nonoverlapping(src.as_ptr(), p, len);
        }
        Ok(())
    }

    fn download(&self, src: View<'_>, dst: &mut [f32]) -> Result<()> {
        let (m, off, len) = dev(src)?;
        if len != dst.len() {
            return Err(Error::Invalid(format!(
                "download: {len} values into {}",
                dst.len()
            )));
        }
        // SAFETY: as in upload.
        unsafe {
            let p = (m.raw.ptr as *const f32).add(off as usize);
            std::ptr::copy_nonoverlapping(p, dst.as_mut_ptr(), len);
        }
        Ok(())
    }

    fn matmul(&self, w: &Tensor, x: View<'_>, n_tok: usize, out: ViewMut<'_>) -> Result<()> {
        let dtype = match w.dtype {
            DType::F32 => 0,
            DType::F16 => 1,
            other => return Err(no_shader(&format!("{other} matmuls"))),
        };
        let (n_in, n_out) = (w.row_len(), w.n_rows());
        let (xm, xo, xn) = dev(x)?;
        let (om, oo, on) = dev_mut(out)?;
        if xn != n_tok * n_in || on != n_tok * n_out || (dtype == 1 && n_in % 2 != 0) {
            return Err(Error::Invalid(format!(
                "matmul {}: weight [{n_out}, {n_in}], x has {xn} values for {n_tok} tokens, \
                 out {on}",
                w.name
            )));
        }
        let wb = self.weight(w)?;
        let pc = [u(n_in)?, u(n_out)?, u(n_tok)?, 0, xo, oo, dtype];
        self.run(
            spv!("matmul"),
            &[&wb, &xm.raw, &om.raw],
            &pc,
            (n_out * n_tok) as u64,
        )
    }

    fn dequantize(&self, t: &Tensor, out: &mut [f32]) -> Result<()> {
        hearth_quant::dequantize(t.dtype, t.bytes(), out)
    }

    fn get_rows(&self, _w: &Tensor, _ids: &[u32], _out: ViewMut<'_>) -> Result<()> {
        Err(no_shader("get_rows"))
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

    fn rope(&self, _x: ViewMut<'_>, _n_heads: usize, _r: &RopeArgs<'_>) -> Result<()> {
        Err(no_shader("rope"))
    }

    fn rope_qk_store(
        &self,
        _q: ViewMut<'_>,
        _n_head: usize,
        _k: View<'_>,
        _n_kv_head: usize,
        _v: View<'_>,
        _r: &RopeArgs<'_>,
        _dest: hearth_core::KvDest<'_>,
    ) -> Result<()> {
        Err(no_shader("rope_qk_store"))
    }

    fn attention_many(
        &self,
        _k: View<'_>,
        _v: View<'_>,
        _p: &AttnParams<'_>,
        _q: View<'_>,
        _out: ViewMut<'_>,
        _segs: &[AttnSeg<'_>],
    ) -> Result<()> {
        Err(no_shader("attention"))
    }

    fn glu(&self, act: Glu, gate: ViewMut<'_>, up: View<'_>) -> Result<()> {
        let (gm, go, n) = dev_mut(gate)?;
        let (um, uo, un) = dev(up)?;
        if un != n {
            return Err(Error::Invalid(format!(
                "glu: lengths differ ({n} and {un})"
            )));
        }
        let (mode, alpha, limit) = match act {
            Glu::Silu => (0, 0.0f32, 0.0f32),
            Glu::ClampedSwiglu { alpha, limit } => (1, alpha, limit),
        };
        let pc = [u(n)?, go, uo, mode, alpha.to_bits(), limit.to_bits()];
        self.run(spv!("glu"), &[&gm.raw, &um.raw], &pc, self.groups(n))
    }

    fn add(&self, x: ViewMut<'_>, y: View<'_>) -> Result<()> {
        self.elementwise(x, y, 0, 0)
    }

    fn add_bias(&self, x: ViewMut<'_>, b: View<'_>) -> Result<()> {
        let bw = b.len();
        self.elementwise(x, b, 1, bw)
    }

    fn add_scaled_rows(&self, _x: ViewMut<'_>, _y: View<'_>, _s: View<'_>) -> Result<()> {
        Err(no_shader("add_scaled_rows"))
    }

    fn sigmoid(&self, _x: ViewMut<'_>) -> Result<()> {
        Err(no_shader("sigmoid"))
    }

    fn copy_rows(
        &self,
        _src: View<'_>,
        _src_stride: usize,
        _dst: ViewMut<'_>,
        _dst_stride: usize,
        _c: hearth_core::RowCopy,
    ) -> Result<()> {
        Err(no_shader("copy_rows"))
    }

    fn store_rows(&self, _src: View<'_>, _dst: ViewMut<'_>, _rows: &[usize]) -> Result<()> {
        Err(no_shader("store_rows"))
    }

    fn moe_route(
        &self,
        _logits: View<'_>,
        _score_b: Option<View<'_>>,
        _cfg: &hearth_core::Routing,
        _ids: ViewMut<'_>,
        _weights: ViewMut<'_>,
    ) -> Result<()> {
        Err(no_shader("moe_route"))
    }

    fn moe_experts(&self, _job: MoeJob<'_>) -> Result<()> {
        Err(no_shader("moe_experts"))
    }
}
