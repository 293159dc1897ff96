//! A backend for planning, which uploads nothing: `hearth fit` plans a model from its headers
//! on it, and automatic placement measures what each block would take on a device.
use hearth_core::{
    AttnParams, AttnSeg, Backend, DType, MoeJob, Result as CoreResult, RopeArgs, Tensor, View,
    ViewMut,
};
use std::sync::Arc;

/// A backend for planning: the device's name, memory and bytes per weight, its other
/// operations as they are, but `prepare` copies and uploads nothing (the weights of a skeleton
/// are holes): it asks the device what preparing would add ([`Backend::plan_prepare`], a
/// packed copy) and counts that in the weight's bytes. Nothing runs on it.
pub struct PlanOnly {
    inner: Arc<dyn Backend>,
    /// Bytes preparing would add, by the address of the weight's bytes.
    extra: std::sync::Mutex<std::collections::HashMap<usize, usize>>,
}

impl PlanOnly {
    /// `inner` as a planning backend.
    pub fn wrap(inner: Arc<dyn Backend>) -> Arc<dyn Backend> {
        Arc::new(PlanOnly {
            inner,
            extra: Default::default(),
        })
    }
}

impl Backend for PlanOnly {
    fn name(&self) -> String {
        self.inner.name()
    }
    fn supports(&self, dtype: DType) -> bool {
        self.inner.supports(dtype)
    }
    fn memory(&self) -> Option<u64> {
        self.inner.memory()
    }
    fn supports_kv(&self, t: hearth_core::KvType) -> bool {
        self.inner.supports_kv(t)
    }
    fn host_weights(&self, bytes: usize) {
        self.inner.host_weights(bytes)
    }
    fn prepare(&self, w: &mut Tensor) {
        let n = self.inner.plan_prepare(w);
        if n > 0 {
            let key = w.bytes().as_ptr() as usize;
            *self
                .extra
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(key)
                .or_default() += n;
        }
    }
    fn weight_bytes(&self, w: &Tensor) -> usize {
        let key = w.bytes().as_ptr() as usize;
        let extra = self.extra.lock().unwrap_or_else(|e| e.into_inner());
        self.inner.weight_bytes(w) + extra.get(&key).copied().unwrap_or(0)
    }
    fn weight_bytes_in_place(&self, w: &Tensor) -> usize {
        self.inner.weight_bytes_in_place(w)
    }
    fn matmul(&self, w: &Tensor, x: View<'_>, n_tok: usize, out: ViewMut<'_>) -> CoreResult<()> {
        self.inner.matmul(w, x, n_tok, out)
    }
    fn dequantize(&self, t: &Tensor, out: &mut [f32]) -> CoreResult<()> {
        self.inner.dequantize(t, out)
    }
    fn get_rows(&self, w: &Tensor, ids: &[u32], out: ViewMut<'_>) -> CoreResult<()> {
        self.inner.get_rows(w, ids, out)
    }
    fn rms_norm(&self, x: ViewMut<'_>, w: View<'_>, eps: f32) -> CoreResult<()> {
        self.inner.rms_norm(x, w, eps)
    }
    fn rope(&self, x: ViewMut<'_>, n_heads: usize, r: &RopeArgs<'_>) -> CoreResult<()> {
        self.inner.rope(x, n_heads, r)
    }
    fn attention_many(
        &self,
        k: View<'_>,
        v: View<'_>,
        p: &AttnParams<'_>,
        q: View<'_>,
        out: ViewMut<'_>,
        segs: &[AttnSeg<'_>],
    ) -> CoreResult<()> {
        self.inner.attention_many(k, v, p, q, out, segs)
    }
    fn moe_experts(&self, job: MoeJob<'_>) -> CoreResult<()> {
        self.inner.moe_experts(job)
    }
}
