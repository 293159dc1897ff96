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

/// [`hearth_core::Backend::dsa_select`] over the pool: each query row is a task, with the
/// reference's arithmetic (`hearth_core::dsa::select_row`), so the choice is the same whatever
/// the number of threads.
pub(crate) fn dsa_select(cpu: &Cpu, j: hearth_core::dsa::DsaJob<'_>) -> Result<()> {
    use hearth_core::dsa::{check, score_width, select_row};
    let (keys, q, w) = (j.keys.host()?, j.q.host()?, j.w.host()?);
    let (scores, out) = (j.scores.host()?, j.out.host()?);
    let (p, segs) = (j.p, j.segs);
    let n = check(
        &p,
        segs,
        [keys.len(), q.len(), w.len(), scores.len(), out.len()],
    )?;
    let width = score_width(segs);
    let rows: Vec<(usize, usize)> = segs
        .iter()
        .enumerate()
        .flat_map(|(i, s)| (0..s.n_tok).map(move |t| (i, t)))
        .collect();
    let (sp, op) = (SendPtr(scores.as_mut_ptr()), SendPtr(out.as_mut_ptr()));
    let next = std::sync::atomic::AtomicUsize::new(0);
    cpu.pool.run(&|_| {
        let (sp, op) = (sp, op);
        loop {
            let r = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if r >= n {
                break;
            }
            let (si, t) = rows[r];
            let sg = &segs[si];
            // SAFETY: check() proved n rows of `width` scores and of `top_k` outputs; each task
            // writes only its own row of each.
            let (sc, o) = unsafe {
                (
                    std::slice::from_raw_parts_mut(sp.0.add(r * width), width),
                    std::slice::from_raw_parts_mut(op.0.add(r * p.top_k), p.top_k),
                )
            };
            select_row(keys, q, w, sg, t, &p, sc, o);
        }
    });
    Ok(())
}

#[cfg(test)]
mod dsa_tests {
    use super::*;
    use hearth_core::dsa::{DsaJob, DsaParams, dsa_select_ref};
    use hearth_core::{AttnSeg, Backend, Pages};

    #[test]
    fn dsa_select_on_threads_is_the_reference() {
        let (nh, d, ps) = (4usize, 12usize, 8usize);
        let table = [3u32, 0, 5, 1, 4, 2];
        let segs = [
            AttnSeg {
                row0: 0,
                n_tok: 5,
                pos0: 40,
                pages: Some(Pages {
                    table: &table,
                    page_size: ps,
                }),
            },
            AttnSeg {
                row0: 5,
                n_tok: 7,
                pos0: 0,
                pages: None,
            },
        ];
        let mut x = 1u32;
        let mut rnd = |n: usize| -> Vec<f32> {
            (0..n)
                .map(|_| {
                    x = x.wrapping_mul(1664525).wrapping_add(1013904223);
                    (x >> 8) as f32 / (1u32 << 24) as f32 - 0.5
                })
                .collect()
        };
        let (keys, q, w) = (rnd(6 * ps * d), rnd(12 * nh * d), rnd(12 * nh));
        let p = DsaParams {
            n_head: nh,
            head_dim: d,
            top_k: 6,
            scale: 0.3,
        };
        let (mut s1, mut o1) = (vec![0f32; 12 * 45], vec![0f32; 12 * 6]);
        dsa_select_ref(&keys, &q, &w, &mut s1, &mut o1, &p, &segs).unwrap();
        let cpu = Cpu::new(3).unwrap();
        let (mut s2, mut o2) = (vec![0f32; 12 * 45], vec![0f32; 12 * 6]);
        cpu.dsa_select(DsaJob {
            keys: (&keys[..]).into(),
            q: (&q[..]).into(),
            w: (&w[..]).into(),
            p,
            segs: &segs,
            scores: (&mut s2[..]).into(),
            out: (&mut o2[..]).into(),
        })
        .unwrap();
        assert_eq!(o1, o2);
        // the long sequence's queries chose 6 of their 41..45 positions
        assert!(o1[..6].iter().all(|&v| v >= 0.0) && o1[..6].windows(2).all(|w| w[0] < w[1]));
    }
}
