//! Feed-forward blocks: the SwiGLU MLP of dense layers and shared experts, and the
//! mixture-of-experts layer (router, routing op, routed experts, shared expert with an
//! optional sigmoid gate). The routed experts run on the device that holds them: when that is
//! not the layer's device, the normalised hidden states and the routing go there and the
//! experts' output comes back, each move counted.
use crate::model::{DevScratch, Model, Scratch, sized};
use hearth_core::{Backend, Buf, Expert, MatJob, MoeJob, Result, Routing, Tensor, View, ViewMut};

/// A SwiGLU MLP (dense layers, shared experts).
pub(crate) struct Mlp {
    pub gate: Tensor, // [n_ff, n_embd]
    pub up: Tensor,   // [n_ff, n_embd]
    pub down: Tensor, // [n_embd, n_ff]
}

impl Mlp {
    pub fn tensors(&self) -> [&Tensor; 3] {
        [&self.gate, &self.up, &self.down]
    }

    /// `out = down(silu(gate(x)) * up(x))` for `n` rows; with `gate_w`, also
    /// `gate_out [n] = gate_w · x` in the same step (Qwen2-MoE's shared-expert gate).
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &self,
        be: &dyn Backend,
        x: View<'_>,
        n: usize,
        out: ViewMut<'_>,
        g: &mut Buf,
        u: &mut Buf,
        gate_w: Option<(&Tensor, ViewMut<'_>)>,
    ) -> Result<()> {
        let ff = self.gate.shape[0];
        let mut g = sized(be, g, n * ff)?;
        let mut u = sized(be, u, n * ff)?;
        let mut jobs = vec![
            MatJob {
                w: &self.gate,
                x,
                n_tok: n,
                out: g.reborrow(),
            },
            MatJob {
                w: &self.up,
                x,
                n_tok: n,
                out: u.reborrow(),
            },
        ];
        if let Some((w, out)) = gate_w {
            jobs.push(MatJob {
                w,
                x,
                n_tok: n,
                out,
            });
        }
        be.matmul_many(&mut jobs)?;
        drop(jobs);
        be.glu(hearth_core::Glu::Silu, g.reborrow(), u.view())?;
        be.matmul(&self.down, g.view(), n, out)
    }
}

/// An MoE layer's weights.
pub(crate) struct Moe {
    pub router: Tensor, // [n_expert, n_embd]
    pub router_b: Option<Buf>,
    /// Score-correction bias: added to the scores for choosing only (DeepSeek V3 `noaux_tc`).
    pub score_b: Option<Buf>,
    pub experts: Vec<Expert>,
    /// The device of the routed experts.
    pub dev_exps: usize,
    pub shared: Option<Mlp>,
    /// Qwen2-MoE: the shared expert's output is scaled by sigmoid(gate · x).
    pub shared_gate: Option<Tensor>, // [1, n_embd]
}

impl Moe {
    /// `s.o [n, n_embd] = Σ_chosen w · expert(h) (+ shared expert)` for the `n` rows of the
    /// normalised hidden states `s.h` on device `dev`.
    pub fn forward(
        &self,
        m: &Model,
        s: &mut Scratch,
        cfg: &Routing,
        dev: usize,
        n: usize,
    ) -> Result<()> {
        let (e, k, ne) = (m.cfg.n_embd, cfg.n_used, cfg.n_expert);
        let be = m.dev(dev);
        let dx = self.dev_exps;
        {
            let d = s.dev(dev);
            let mut lg = sized(be, &mut d.logits, n * ne)?;
            be.matmul(&self.router, d.h.head(n * e), n, lg.reborrow())?;
            if let Some(b) = &self.router_b {
                be.add_bias(lg.reborrow(), b.view())?;
            }
            be.moe_route(
                lg.view(),
                self.score_b.as_ref().map(|b| b.view()),
                cfg,
                sized(be, &mut d.ids, n * k)?,
                sized(be, &mut d.wts, n * k)?,
            )?;
        }
        let job = |d: &mut DevScratch, moved: bool, bex: &dyn Backend| {
            let out = sized(bex, &mut d.o, n * e)?;
            bex.moe_experts(MoeJob {
                experts: &self.experts,
                act: cfg.act,
                n_tok: n,
                n_used: k,
                x: if moved {
                    d.xin.head(n * e)
                } else {
                    d.h.head(n * e)
                },
                ids: d.ids.head(n * k),
                weights: d.wts.head(n * k),
                out,
            })
        };
        if dx == dev {
            job(s.dev(dev), false, be)?;
        } else {
            // the experts' device: the inputs and the routing go there, the output comes back
            m.transfer(
                s,
                "moe input",
                (dev, |d| &mut d.h),
                (dx, |d| &mut d.xin),
                n * e,
            )?;
            m.transfer(
                s,
                "moe routing",
                (dev, |d| &mut d.ids),
                (dx, |d| &mut d.ids),
                n * k,
            )?;
            m.transfer(
                s,
                "moe routing",
                (dev, |d| &mut d.wts),
                (dx, |d| &mut d.wts),
                n * k,
            )?;
            job(s.dev(dx), true, m.dev(dx))?;
            m.transfer(
                s,
                "moe output",
                (dx, |d| &mut d.o),
                (dev, |d| &mut d.o),
                n * e,
            )?;
        }
        let d = s.dev(dev);
        let o = d.o.head_mut(n * e);
        if let Some(sh) = &self.shared {
            let mut sy = sized(be, &mut d.sy, n * e)?;
            let mut sg = sized(be, &mut d.sg, n)?;
            let gate = self.shared_gate.as_ref().map(|w| (w, sg.reborrow()));
            sh.forward(
                be,
                d.h.head(n * e),
                n,
                sy.reborrow(),
                &mut d.g,
                &mut d.u,
                gate,
            )?;
            if self.shared_gate.is_some() {
                be.sigmoid(sg.reborrow())?;
                be.add_scaled_rows(o, sy.view(), sg.view())?;
            } else {
                be.add(o, sy.view())?;
            }
        }
        Ok(())
    }

    /// Every matrix, for type checks.
    pub fn tensors(&self) -> Vec<&Tensor> {
        let mut v = vec![&self.router];
        for ex in &self.experts {
            v.extend([&ex.gate, &ex.up, &ex.down]);
        }
        if let Some(s) = &self.shared {
            v.extend(s.tensors());
        }
        v.extend(self.shared_gate.iter());
        v
    }
}
