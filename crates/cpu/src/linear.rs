//! Linear attention on the CPU: the gated delta rule's (sequence, value head) pairs are
//! independent (each owns its state), so they run on the thread pool, each with the
//! reference's arithmetic (`hearth_core::linear::delta_head`): the results are the same bits
//! whatever the number of threads.
use crate::{Cpu, SendPtr};
use hearth_core::linear::{DeltaGates, check_delta, delta_head};
use hearth_core::{DeltaJob, Result};

/// [`hearth_core::Backend::delta_rule`] over the pool.
pub(crate) fn delta_rule(cpu: &Cpu, j: DeltaJob<'_>) -> Result<()> {
    let (qkv, a, b) = (j.qkv.host()?, j.a.host()?, j.b.host()?);
    let (a_coef, dt_bias) = (j.a_coef.host()?, j.dt_bias.host()?);
    let (state, out) = (j.state.host()?, j.out.host()?);
    let (sh, lay, segs) = (j.shape, j.lay, j.segs);
    check_delta(
        qkv.len(),
        a.len(),
        b.len(),
        a_coef.len(),
        dt_bias.len(),
        state.len(),
        lay,
        out.len(),
        sh,
        segs,
    )?;
    let g = DeltaGates {
        qkv,
        a,
        b,
        a_coef,
        dt_bias,
    };
    let (nv, hs, dv) = (sh.n_v_heads, sh.k_dim * sh.v_dim, sh.v_dim);
    let tasks = segs.len() * nv;
    let (sp, op) = (SendPtr(state.as_mut_ptr()), SendPtr(out.as_mut_ptr()));
    let next = std::sync::atomic::AtomicUsize::new(0);
    cpu.pool.run(&|_| {
        let (sp, op) = (sp, op);
        loop {
            let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if i >= tasks {
                break;
            }
            let (sg, h) = (&segs[i / nv], i % nv);
            // SAFETY: check_delta proved every slot's part in bounds and the slots distinct,
            // so (sequence, head) pairs own disjoint state; each writes only its own head's
            // output rows of its own sequence's tokens.
            let s = unsafe {
                std::slice::from_raw_parts_mut(
                    sp.0.add(sg.slot * lay.stride + lay.offset + h * hs),
                    hs,
                )
            };
            delta_head(&g, sh, sg, h, s, |t, o| unsafe {
                std::ptr::copy_nonoverlapping(o.as_ptr(), op.0.add((t * nv + h) * dv), dv);
            });
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use hearth_core::Backend;
    use hearth_core::linear::{DeltaShape, RecSeg, SlotLayout, delta_rule_ref};

    /// The pool's delta rule gives the reference's bits, whatever the threads.
    #[test]
    fn threaded_delta_rule_equals_the_reference() {
        let sh = DeltaShape {
            n_k_heads: 2,
            n_v_heads: 6,
            k_dim: 8,
            v_dim: 12,
            tiled: true,
        };
        let segs = [
            RecSeg {
                row0: 0,
                n: 7,
                slot: 2,
                fresh: false,
            },
            RecSeg {
                row0: 7,
                n: 1,
                slot: 0,
                fresh: true,
            },
            RecSeg {
                row0: 8,
                n: 4,
                slot: 1,
                fresh: false,
            },
        ];
        let n = 12;
        let lay = SlotLayout {
            stride: sh.state_len() + 3,
            offset: 3,
        };
        let mut x = 0.37f32;
        let mut r = |m: usize| -> Vec<f32> {
            (0..m)
                .map(|_| {
                    x = (x * 3.7 + 0.13).fract();
                    x - 0.5
                })
                .collect()
        };
        let (qkv, a, b) = (r(n * sh.qkv_width()), r(n * 6), r(n * 6));
        let coef: Vec<f32> = r(6).iter().map(|v| -v.abs() - 0.1).collect();
        let dt = r(6);
        let st0 = r(3 * lay.stride);
        let (mut s1, mut o1) = (st0.clone(), vec![0f32; n * 6 * 12]);
        delta_rule_ref(&qkv, &a, &b, &coef, &dt, &mut s1, lay, &mut o1, sh, &segs).unwrap();
        for threads in [1, 3] {
            let cpu = crate::Cpu::new(threads).unwrap();
            let (mut s2, mut o2) = (st0.clone(), vec![0f32; n * 6 * 12]);
            cpu.delta_rule(hearth_core::DeltaJob {
                qkv: (&qkv[..]).into(),
                a: (&a[..]).into(),
                b: (&b[..]).into(),
                a_coef: (&coef[..]).into(),
                dt_bias: (&dt[..]).into(),
                state: (&mut s2[..]).into(),
                lay,
                out: (&mut o2[..]).into(),
                shape: sh,
                segs: &segs,
            })
            .unwrap();
            assert!(o1 == o2 && s1 == s2, "{threads} threads");
        }
    }
}
