//! Lightning attention, the linear attention of MiniMax-M1 / MiniMax-Text-01: one projection
//! to each head's `q | k | v` (SiLU applied), linear attention with a fixed decay per head and
//! layer over a `[head_dim, head_dim]` state per head and sequence, an RMSNorm over all heads,
//! a sigmoid output gate from the block's input, and the output projection. The state belongs
//! to the sequence (its slot of the layer's [`crate::LayerCache::Recurrent`] buffer), so a batch
//! of sequences runs as one call.
use crate::model::{Seg, sized};
use hearth_core::linear::{LightningShape, RecSeg, SlotLayout};
use hearth_core::{Backend, Buf, Glu, LightningJob, MatJob, Result, Tensor, View, ViewMut};

/// transformers' MiniMaxLightningAttention builds its norm with RMSNorm's default epsilon,
/// not the config's `rms_norm_eps`.
const NORM_EPS: f32 = 1e-6;

/// One lightning-attention layer's weights.
pub(crate) struct Lightning {
    pub qkv: Tensor,  // [3 * n_heads * head_dim, n_embd], per head q | k | v
    pub gate: Tensor, // [n_heads * head_dim, n_embd]
    pub norm: Buf,    // [n_heads * head_dim]
    pub out: Tensor,  // [n_embd, n_heads * head_dim]
    pub decay: Buf,   // exp(-slope) [n_heads]
}

/// Working buffers of the lightning-attention layers.
#[derive(Default)]
pub(crate) struct LightningBufs {
    qkv: Buf,
    gate: Buf,
    y: Buf,
}

impl Lightning {
    pub fn tensors(&self) -> Vec<&Tensor> {
        vec![&self.qkv, &self.gate, &self.out]
    }

    /// Floats of f32 vectors it holds.
    pub fn vector_params(&self) -> usize {
        self.norm.len()
    }

    /// `out [n, n_embd]` for the normalised inputs `h [n, n_embd]`; each sequence continues
    /// from its slot of `state` (slots of `sh.state_len()` floats) and leaves it updated.
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &self,
        be: &dyn Backend,
        sh: LightningShape,
        h: View<'_>,
        n: usize,
        segs: &[Seg],
        state: &mut Buf,
        bufs: &mut LightningBufs,
        out: ViewMut<'_>,
    ) -> Result<()> {
        let w = sh.n_heads * sh.head_dim;
        let mut qkv = sized(be, &mut bufs.qkv, n * sh.qkv_width())?;
        let mut gate = sized(be, &mut bufs.gate, n * w)?;
        be.matmul_many(&mut [
            MatJob {
                w: &self.qkv,
                x: h,
                n_tok: n,
                out: qkv.reborrow(),
            },
            MatJob {
                w: &self.gate,
                x: h,
                n_tok: n,
                out: gate.reborrow(),
            },
        ])?;
        let rs: Vec<RecSeg> = segs.iter().map(Seg::rec).collect();
        let mut y = sized(be, &mut bufs.y, n * w)?;
        be.lightning(LightningJob {
            qkv: qkv.view(),
            decay: self.decay.view(),
            state: state.view_mut(),
            lay: SlotLayout {
                stride: sh.state_len(),
                offset: 0,
            },
            out: y.reborrow(),
            shape: sh,
            segs: &rs,
        })?;
        // RMSNorm over all heads at once, then the gate: y · sigmoid(gate)
        be.rms_norm(y.reborrow(), self.norm.view(), NORM_EPS)?;
        be.glu(Glu::Sigmoid, gate.reborrow(), y.view())?;
        be.matmul(&self.out, gate.view(), n, out)
    }
}
