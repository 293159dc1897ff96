//! Gated DeltaNet, the linear attention of Qwen3-Next and Qwen3.5/3.6: projections to
//! `q | k | v`, the output gate `z` and the decay and write strengths; a short causal
//! convolution; the gated delta rule over a fixed-size state per sequence; a gated RMSNorm;
//! the output projection. The state belongs to the sequence (its slot of the layer's
//! [`crate::LayerCache::Recurrent`] buffer), so a batch of sequences runs as one call.
use crate::config::LinearConfig;
use crate::model::{Seg, sized};
use hearth_core::linear::{RecSeg, SlotLayout};
use hearth_core::{Backend, Buf, DeltaJob, Glu, MatJob, Result, Tensor, View, ViewMut};

/// One linear-attention layer's weights.
pub(crate) struct Delta {
    pub qkv: Tensor,  // [2 * n_k_heads * k_dim + n_v_heads * v_dim, n_embd]
    pub z: Tensor,    // [n_v_heads * v_dim, n_embd]
    pub b: Tensor,    // [n_v_heads, n_embd]
    pub a: Tensor,    // [n_v_heads, n_embd]
    pub conv: Buf,    // [channels, kernel]
    pub a_coef: Buf,  // -exp(A_log) [n_v_heads]
    pub dt_bias: Buf, // [n_v_heads]
    pub norm: Buf,    // [v_dim]
    pub out: Tensor,  // [n_embd, n_v_heads * v_dim]
}

/// Working buffers of the linear-attention layers.
#[derive(Default)]
pub(crate) struct DeltaBufs {
    qkv: Buf,
    conv: Buf,
    z: Buf,
    a: Buf,
    b: Buf,
    y: Buf,
}

impl Delta {
    pub fn tensors(&self) -> Vec<&Tensor> {
        vec![&self.qkv, &self.z, &self.b, &self.a, &self.out]
    }

    /// Bytes of f32 vectors it holds.
    pub fn vector_params(&self) -> usize {
        self.conv.len() + self.a_coef.len() + self.dt_bias.len() + self.norm.len()
    }

    /// `out [n, n_embd]` for the normalised inputs `h [n, n_embd]`; each sequence continues
    /// from its slot of `state` (slots of `lc.slot_len()` floats) and leaves it updated.
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &self,
        be: &dyn Backend,
        lc: &LinearConfig,
        eps: f32,
        h: View<'_>,
        n: usize,
        segs: &[Seg],
        state: &mut Buf,
        bufs: &mut DeltaBufs,
        out: ViewMut<'_>,
    ) -> Result<()> {
        let sh = lc.shape();
        let ch = sh.qkv_width();
        let vw = sh.n_v_heads * sh.v_dim;
        let nv = sh.n_v_heads;
        let mut qkv = sized(be, &mut bufs.qkv, n * ch)?;
        let mut z = sized(be, &mut bufs.z, n * vw)?;
        let mut a = sized(be, &mut bufs.a, n * nv)?;
        let mut b = sized(be, &mut bufs.b, n * nv)?;
        be.matmul_many(&mut [
            MatJob {
                w: &self.qkv,
                x: h,
                n_tok: n,
                out: qkv.reborrow(),
            },
            MatJob {
                w: &self.z,
                x: h,
                n_tok: n,
                out: z.reborrow(),
            },
            MatJob {
                w: &self.a,
                x: h,
                n_tok: n,
                out: a.reborrow(),
            },
            MatJob {
                w: &self.b,
                x: h,
                n_tok: n,
                out: b.reborrow(),
            },
        ])?;
        let rs: Vec<RecSeg> = segs.iter().map(Seg::rec).collect();
        let stride = lc.slot_len();
        let conv_len = (lc.conv_kernel - 1) * ch;
        let mut cv = sized(be, &mut bufs.conv, n * ch)?;
        be.ssm_conv(
            qkv.view(),
            self.conv.view(),
            state.view_mut(),
            SlotLayout { stride, offset: 0 },
            cv.reborrow(),
            ch,
            &rs,
        )?;
        let mut y = sized(be, &mut bufs.y, n * vw)?;
        be.delta_rule(DeltaJob {
            qkv: cv.view(),
            a: a.view(),
            b: b.view(),
            a_coef: self.a_coef.view(),
            dt_bias: self.dt_bias.view(),
            state: state.view_mut(),
            lay: SlotLayout {
                stride,
                offset: conv_len,
            },
            out: y.reborrow(),
            shape: sh,
            segs: &rs,
        })?;
        // the gated norm: rmsnorm over each value head, times silu(z)
        be.rms_norm(y.reborrow(), self.norm.view(), eps)?;
        be.glu(Glu::Silu, z.reborrow(), y.view())?;
        be.matmul(&self.out, z.view(), n, out)
    }
}
