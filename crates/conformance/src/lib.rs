//! The conformance suite: every op of a backend, on odd shapes (one row, one value, tails
//! that are not a multiple of a workgroup, widths above one), compared with the CPU backend
//! by normalised error, with a bound per op and type. A new backend runs it with one line:
//! `hearth_conformance::check(&backend)`.
//!
//! An op the backend reports as unsupported is listed as skipped, not failed, so that a
//! backend can grow op by op; [`Report::skipped`] says which.
#![deny(missing_docs)]

mod kv;
mod quant;
use hearth_core::{
    AttnParams, AttnSeg, Backend, Buf, DType, Error, Glu, Pages, Result, RopeArgs, RopeStyle,
    RowCopy, Storage, Tensor,
};

/// What one run found.
#[derive(Debug, Default)]
pub struct Report {
    /// Cases that agreed with the CPU backend.
    pub passed: Vec<String>,
    /// Cases that did not, with the error found.
    pub failed: Vec<String>,
    /// Ops the backend does not have yet.
    pub skipped: Vec<String>,
}

/// Run the suite on `be`, and panic with the failures, if any.
pub fn check(be: &dyn Backend) -> Report {
    let r = run(be);
    eprintln!(
        "conformance on {}: {} passed, {} failed, {} skipped ({})",
        be.name(),
        r.passed.len(),
        r.failed.len(),
        r.skipped.len(),
        r.skipped.join(", ")
    );
    assert!(
        r.failed.is_empty(),
        "{}:\n{}",
        be.name(),
        r.failed.join("\n")
    );
    r
}

/// A small deterministic random source.
struct Rng(u64);

impl Rng {
    fn f(&mut self) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
    fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.f()).collect()
    }
}

/// Largest |a - b| over the largest |b|.
fn norm_err(a: &[f32], b: &[f32]) -> f32 {
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-30);
    let d = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(
            0f32,
            |m, v| if v.is_nan() { f32::INFINITY } else { m.max(v) },
        );
    if a.len() != b.len() {
        f32::INFINITY
    } else {
        d / scale
    }
}

/// Values on `be`, and back.
fn put(be: &dyn Backend, v: &[f32]) -> Result<Buf> {
    be.upload_new(v)
}

fn get(be: &dyn Backend, b: &Buf) -> Result<Vec<f32>> {
    let mut v = vec![0f32; b.len()];
    be.download(b.view(), &mut v)?;
    Ok(v)
}

struct Suite<'a> {
    be: &'a dyn Backend,
    /// Whether the backend multiplies weights by f32 activations (the GPU backends), so that
    /// its matmuls can be held to the weights' exact f32 decoding. The CPU backend quantizes
    /// activations by design (its bound is its own kernels'), so there those cases compare
    /// it with the reference CPU backend's kernels instead.
    f32_acts: bool,
    cpu: hearth_cpu::Cpu,
    r: Report,
    rng: Rng,
}

impl Suite<'_> {
    /// `t @ x` on the backend (after `prepare`) and on the CPU.
    fn matmul(&self, t: &Tensor, x: &[f32], n_tok: usize) -> Result<(Vec<f32>, Vec<f32>)> {
        let n_out = t.n_rows();
        let mut tb = t.clone();
        self.be.prepare(&mut tb);
        let mut out = self.be.alloc(n_tok * n_out)?;
        self.be
            .matmul(&tb, put(self.be, x)?.view(), n_tok, out.view_mut())?;
        let mut want = vec![0f32; n_tok * n_out];
        // a backend that rounds weights and activations to f16 for this type
        // (`Backend::matmul_rounds_to_f16`) is compared with the same rounding on the CPU,
        // so that the bound stays the one for a different order of f32 sums
        if self.be.matmul_rounds_to_f16(t.dtype) {
            let (t, x) = (rounded_to_f16(t)?, round_acts_to_f16(x));
            self.cpu
                .matmul(&t, (&x[..]).into(), n_tok, (&mut want[..]).into())?;
        } else {
            self.cpu
                .matmul(t, x.into(), n_tok, (&mut want[..]).into())?;
        }
        Ok((get(self.be, &out)?, want))
    }

    /// Record a case: `f` gives (backend's result, CPU's result) and the bound.
    fn case(
        &mut self,
        name: String,
        bound: f32,
        f: impl FnOnce(&mut Self) -> Result<(Vec<f32>, Vec<f32>)>,
    ) {
        match f(self) {
            Ok((got, want)) => {
                let e = norm_err(&got, &want);
                if e <= bound {
                    self.r.passed.push(name);
                } else {
                    self.r
                        .failed
                        .push(format!("{name}: normalised error {e:.3e} > {bound:.1e}"));
                }
            }
            Err(Error::Unsupported(m)) => {
                let op = name.split(' ').next().unwrap_or("").to_string();
                if !self.r.skipped.contains(&op) {
                    self.r.skipped.push(op);
                }
                let _ = m;
            }
            Err(e) => self.r.failed.push(format!("{name}: {e}")),
        }
    }
}

/// `t` decoded to f32 by the reference dequantizers ([`quant::decoded`]), each value rounded
/// to f16 (to nearest).
fn rounded_to_f16(t: &Tensor) -> Result<Tensor> {
    let d = quant::decoded(t)?;
    let v: Vec<f32> = d
        .bytes()
        .chunks_exact(4)
        .map(|b| half::f16::from_f32(f32::from_le_bytes(b.try_into().unwrap())).to_f32())
        .collect();
    Ok(tensor(DType::F32, d.n_rows(), d.row_len(), &v))
}

/// Activations as a kernel that rounds them to f16 sees them: clamped to f16's largest finite
/// value, then rounded to nearest.
fn round_acts_to_f16(x: &[f32]) -> Vec<f32> {
    let m = half::f16::MAX.to_f32();
    x.iter()
        .map(|&v| half::f16::from_f32(v.clamp(-m, m)).to_f32())
        .collect()
}

fn tensor(dtype: DType, n_out: usize, n_in: usize, v: &[f32]) -> Tensor {
    let bytes: Vec<u8> = match dtype {
        DType::F16 => v
            .iter()
            .flat_map(|&x| half::f16::from_f32(x).to_le_bytes())
            .collect(),
        _ => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
    };
    Tensor::new("w".into(), dtype, vec![n_out, n_in], Storage::owned(bytes))
        .expect("a well-formed test tensor")
}

/// Run every case.
pub fn run(be: &dyn Backend) -> Report {
    let mut s = Suite {
        be,
        f32_acts: !be.name().starts_with("cpu"),
        cpu: hearth_cpu::Cpu::new(1).expect("a CPU backend"),
        r: Report::default(),
        rng: Rng(7),
    };
    for n in [1usize, 7, 1000, 70_001] {
        s.case(format!("transfer n={n}"), 0.0, |s| {
            let v = s.rng.vec(n);
            Ok((get(s.be, &put(s.be, &v)?)?, v))
        });
        s.case(format!("add n={n}"), 0.0, |s| {
            let (x, y) = (s.rng.vec(n), s.rng.vec(n));
            let mut bx = put(s.be, &x)?;
            s.be.add(bx.view_mut(), put(s.be, &y)?.view())?;
            let mut cx = x.clone();
            s.cpu.add((&mut cx[..]).into(), (&y[..]).into())?;
            Ok((get(s.be, &bx)?, cx))
        });
    }
    for (rows, w) in [(1usize, 1usize), (3, 37), (64, 5)] {
        s.case(format!("add_bias rows={rows} width={w}"), 0.0, |s| {
            let (x, b) = (s.rng.vec(rows * w), s.rng.vec(w));
            let mut bx = put(s.be, &x)?;
            s.be.add_bias(bx.view_mut(), put(s.be, &b)?.view())?;
            let mut cx = x.clone();
            s.cpu.add_bias((&mut cx[..]).into(), (&b[..]).into())?;
            Ok((get(s.be, &bx)?, cx))
        });
    }
    for (rows, w) in [(1usize, 1usize), (5, 64), (2, 577), (3, 2048)] {
        s.case(format!("rms_norm rows={rows} width={w}"), 2e-6, |s| {
            let (x, g) = (s.rng.vec(rows * w), s.rng.vec(w));
            let mut bx = put(s.be, &x)?;
            s.be.rms_norm(bx.view_mut(), put(s.be, &g)?.view(), 1e-6)?;
            let mut cx = x.clone();
            s.cpu
                .rms_norm((&mut cx[..]).into(), (&g[..]).into(), 1e-6)?;
            Ok((get(s.be, &bx)?, cx))
        });
    }
    for n in [1usize, 129, 5000] {
        for act in [
            Glu::Silu,
            Glu::Sigmoid,
            Glu::ClampedSwiglu {
                alpha: 1.702,
                limit: 0.5,
            },
        ] {
            s.case(format!("glu {act:?} n={n}"), 2e-6, |s| {
                let (g, u) = (s.rng.vec(n), s.rng.vec(n));
                let mut bg = put(s.be, &g)?;
                s.be.glu(act, bg.view_mut(), put(s.be, &u)?.view())?;
                let mut cg = g.clone();
                s.cpu.glu(act, (&mut cg[..]).into(), (&u[..]).into())?;
                Ok((get(s.be, &bg)?, cg))
            });
        }
    }
    for dtype in [DType::F32, DType::F16] {
        for (n_out, n_in, n_tok) in [
            (1usize, 2usize, 1usize),
            (7, 64, 1),
            (13, 300, 5),
            (257, 130, 3),
        ] {
            s.case(
                format!("matmul {dtype} [{n_out}, {n_in}] x {n_tok}"),
                1e-5,
                |s| {
                    let w = s.rng.vec(n_out * n_in);
                    let x = s.rng.vec(n_tok * n_in);
                    s.matmul(&tensor(dtype, n_out, n_in, &w), &x, n_tok)
                },
            );
        }
    }
    others(&mut s);
    quant::cases(&mut s);
    moe(&mut s);
    linear(&mut s);
    kv::cases(&mut s);
    s.r
}

/// Linear attention's recurrent ops: two steps over three sequences in scattered slots (one
/// starting fresh, two continuing), so the states carry from one call to the next; the
/// outputs of both steps and the final states are compared.
fn linear(s: &mut Suite) {
    use hearth_core::linear::{DeltaShape, LightningShape, RecSeg, SlotLayout};
    use hearth_core::{DeltaJob, LightningJob};
    // (rows per sequence in each step): a prompt chunk, a long one, single-token decodes
    let steps: [[usize; 3]; 2] = [[5, 70, 1], [1, 3, 1]];
    let slots = [2usize, 0, 3];
    let segs_of = |step: usize| -> Vec<RecSeg> {
        let mut row0 = 0;
        (0..3)
            .map(|q| {
                let n = steps[step][q];
                let sg = RecSeg {
                    row0,
                    n,
                    slot: slots[q],
                    fresh: step == 0 && q == 0,
                };
                row0 += n;
                sg
            })
            .collect()
    };
    for (ch, kernel) in [(24usize, 4usize), (7, 2)] {
        s.case(
            format!("ssm_conv {ch} channels, kernel {kernel}"),
            2e-6,
            |s| {
                let lay = SlotLayout {
                    stride: (kernel - 1) * ch + 5,
                    offset: 3,
                };
                let w = s.rng.vec(ch * kernel);
                let st0 = s.rng.vec(4 * lay.stride);
                let (mut bs, mut cs) = (put(s.be, &st0)?, st0.clone());
                let (mut got, mut want) = (Vec::new(), Vec::new());
                let bw = put(s.be, &w)?;
                for step in 0..2 {
                    let segs = segs_of(step);
                    let n: usize = steps[step].iter().sum();
                    let x = s.rng.vec(n * ch);
                    let mut bo = s.be.alloc(n * ch)?;
                    s.be.ssm_conv(
                        put(s.be, &x)?.view(),
                        bw.view(),
                        bs.view_mut(),
                        lay,
                        bo.view_mut(),
                        ch,
                        &segs,
                    )?;
                    let mut co = vec![0f32; n * ch];
                    s.cpu.ssm_conv(
                        (&x[..]).into(),
                        (&w[..]).into(),
                        (&mut cs[..]).into(),
                        lay,
                        (&mut co[..]).into(),
                        ch,
                        &segs,
                    )?;
                    got.extend(get(s.be, &bo)?);
                    want.extend(co);
                }
                got.extend(get(s.be, &bs)?);
                want.extend(cs);
                Ok((got, want))
            },
        );
    }
    for tiled in [false, true] {
        let sh = DeltaShape {
            n_k_heads: 2,
            n_v_heads: 4,
            k_dim: 16,
            v_dim: 24,
            tiled,
        };
        s.case(
            format!("delta_rule 2 key heads, 4 value heads, tiled {tiled}"),
            2e-5,
            |s| {
                let lay = SlotLayout {
                    stride: sh.state_len() + 11,
                    offset: 11,
                };
                let w = sh.qkv_width();
                let nv = sh.n_v_heads;
                let coef: Vec<f32> = (0..nv).map(|_| -(s.rng.f().abs() * 3.0 + 0.1)).collect();
                let dt = s.rng.vec(nv);
                let st0: Vec<f32> = s.rng.vec(4 * lay.stride).iter().map(|v| 0.1 * v).collect();
                let (mut bs, mut cs) = (put(s.be, &st0)?, st0.clone());
                let (bc, bd) = (put(s.be, &coef)?, put(s.be, &dt)?);
                let (mut got, mut want) = (Vec::new(), Vec::new());
                for step in 0..2 {
                    let segs = segs_of(step);
                    let n: usize = steps[step].iter().sum();
                    let (qkv, a, b) = (s.rng.vec(n * w), s.rng.vec(n * nv), s.rng.vec(n * nv));
                    let (ba, bb) = (put(s.be, &a)?, put(s.be, &b)?);
                    let mut bo = s.be.alloc(n * nv * sh.v_dim)?;
                    s.be.delta_rule(DeltaJob {
                        qkv: put(s.be, &qkv)?.view(),
                        a: ba.view(),
                        b: bb.view(),
                        a_coef: bc.view(),
                        dt_bias: bd.view(),
                        state: bs.view_mut(),
                        lay,
                        out: bo.view_mut(),
                        shape: sh,
                        segs: &segs,
                    })?;
                    let mut co = vec![0f32; n * nv * sh.v_dim];
                    s.cpu.delta_rule(DeltaJob {
                        qkv: (&qkv[..]).into(),
                        a: (&a[..]).into(),
                        b: (&b[..]).into(),
                        a_coef: (&coef[..]).into(),
                        dt_bias: (&dt[..]).into(),
                        state: (&mut cs[..]).into(),
                        lay,
                        out: (&mut co[..]).into(),
                        shape: sh,
                        segs: &segs,
                    })?;
                    got.extend(get(s.be, &bo)?);
                    want.extend(co);
                }
                got.extend(get(s.be, &bs)?);
                want.extend(cs);
                Ok((got, want))
            },
        );
    }
    dsa_cases(s);
    // lightning attention (MiniMax): 3 heads of 16, and 2 of 40 (more columns than fit one
    // pass of a small workgroup do not, but a width that is not a power of two)
    for (nh, d) in [(3usize, 16usize), (2, 40)] {
        let sh = LightningShape {
            n_heads: nh,
            head_dim: d,
        };
        s.case(format!("lightning {nh} heads of {d}"), 2e-5, |s| {
            let lay = SlotLayout {
                stride: sh.state_len() + 7,
                offset: 7,
            };
            let w = sh.qkv_width();
            let dec: Vec<f32> = (0..nh).map(|_| 1.0 - 0.5 * s.rng.f().abs()).collect();
            let st0: Vec<f32> = s.rng.vec(4 * lay.stride).iter().map(|v| 0.1 * v).collect();
            let (mut bs, mut cs) = (put(s.be, &st0)?, st0.clone());
            let bd = put(s.be, &dec)?;
            let (mut got, mut want) = (Vec::new(), Vec::new());
            for (step, rows) in steps.iter().enumerate() {
                let segs = segs_of(step);
                let n: usize = rows.iter().sum();
                let qkv = s.rng.vec(n * w);
                let mut bo = s.be.alloc(n * nh * d)?;
                s.be.lightning(LightningJob {
                    qkv: put(s.be, &qkv)?.view(),
                    decay: bd.view(),
                    state: bs.view_mut(),
                    lay,
                    out: bo.view_mut(),
                    shape: sh,
                    segs: &segs,
                })?;
                let mut co = vec![0f32; n * nh * d];
                s.cpu.lightning(LightningJob {
                    qkv: (&qkv[..]).into(),
                    decay: (&dec[..]).into(),
                    state: (&mut cs[..]).into(),
                    lay,
                    out: (&mut co[..]).into(),
                    shape: sh,
                    segs: &segs,
                })?;
                got.extend(get(s.be, &bo)?);
                want.extend(co);
            }
            got.extend(get(s.be, &bs)?);
            want.extend(cs);
            Ok((got, want))
        });
    }
}

/// The ops that move, gather and rotate values, and attention.
fn others(s: &mut Suite) {
    s.case("sigmoid n=1000".into(), 2e-6, |s| {
        let x = s.rng.vec(1000);
        let mut bx = put(s.be, &x)?;
        s.be.sigmoid(bx.view_mut())?;
        let mut cx = x.clone();
        s.cpu.sigmoid((&mut cx[..]).into())?;
        Ok((get(s.be, &bx)?, cx))
    });
    s.case("add_scaled_rows rows=5 width=33".into(), 1e-6, |s| {
        let (x, y, sc) = (s.rng.vec(165), s.rng.vec(165), s.rng.vec(5));
        let mut bx = put(s.be, &x)?;
        s.be.add_scaled_rows(bx.view_mut(), put(s.be, &y)?.view(), put(s.be, &sc)?.view())?;
        let mut cx = x.clone();
        s.cpu
            .add_scaled_rows((&mut cx[..]).into(), (&y[..]).into(), (&sc[..]).into())?;
        Ok((get(s.be, &bx)?, cx))
    });
    s.case("copy_rows 7 rows of 5, strides 9 and 6".into(), 0.0, |s| {
        let (src, dst) = (s.rng.vec(6 * 9 + 5), s.rng.vec(6 * 6 + 5));
        let c = RowCopy {
            n_rows: 7,
            width: 5,
        };
        let mut bd = put(s.be, &dst)?;
        s.be.copy_rows(put(s.be, &src)?.view(), 9, bd.view_mut(), 6, c)?;
        let mut cd = dst.clone();
        s.cpu
            .copy_rows((&src[..]).into(), 9, (&mut cd[..]).into(), 6, c)?;
        Ok((get(s.be, &bd)?, cd))
    });
    s.case("store_rows 3 rows of 8 into 10".into(), 0.0, |s| {
        let (src, dst) = (s.rng.vec(24), s.rng.vec(80));
        let rows = [9usize, 0, 4];
        let mut bd = put(s.be, &dst)?;
        s.be.store_rows(put(s.be, &src)?.view(), bd.view_mut(), &rows)?;
        let mut cd = dst.clone();
        s.cpu
            .store_rows((&src[..]).into(), (&mut cd[..]).into(), &rows)?;
        Ok((get(s.be, &bd)?, cd))
    });
    for dtype in [DType::F32, DType::F16] {
        s.case(format!("get_rows {dtype} 4 of [9, 70]"), 0.0, |s| {
            let t = tensor(dtype, 9, 70, &s.rng.vec(9 * 70));
            let ids = [8u32, 0, 3, 3];
            let mut out = s.be.alloc(4 * 70)?;
            s.be.get_rows(&t, &ids, out.view_mut())?;
            let mut want = vec![0f32; 4 * 70];
            s.cpu.get_rows(&t, &ids, (&mut want[..]).into())?;
            Ok((get(s.be, &out)?, want))
        });
    }
    for style in [RopeStyle::Normal, RopeStyle::Neox] {
        s.case(
            format!("rope {style:?} 3 tokens x 4 heads of 64"),
            1e-5,
            |s| {
                let x = s.rng.vec(3 * 4 * 64);
                let inv: Vec<f32> = (0..32).map(|i| 10000f32.powf(-(i as f32) / 32.0)).collect();
                let r = RopeArgs {
                    head_dim: 64,
                    positions: &[0, 17, 4000],
                    inv_freq: &inv,
                    style,
                    mscale: 1.0,
                };
                let mut bx = put(s.be, &x)?;
                s.be.rope(bx.view_mut(), 4, &r)?;
                let mut cx = x.clone();
                s.cpu.rope((&mut cx[..]).into(), 4, &r)?;
                Ok((get(s.be, &bx)?, cx))
            },
        );
    }
    for (window, sinks) in [(None, false), (Some(3usize), true)] {
        let label = format!(
            "attention 2 sequences, GQA 6/2 heads of 40, pages of 4, window {window:?}, sinks {sinks}"
        );
        s.case(label, 1e-5, |s| {
            let (nh, nkv, hd, ps) = (6usize, 2usize, 40usize, 4usize);
            let rows = 8 * ps;
            let (k, v) = (s.rng.vec(rows * nkv * hd), s.rng.vec(rows * nkv * hd));
            let q = s.rng.vec(5 * nh * hd);
            let sk = s.rng.vec(nh);
            let segs = two_paged_seqs(ps);
            let mut p = AttnParams::gqa(nh, nkv, hd, 1.0 / (hd as f32).sqrt());
            p.window = window;
            let bs = put(s.be, &sk)?;
            p.sinks = sinks.then(|| bs.view());
            let (bk, bv) = (put(s.be, &k)?, put(s.be, &v)?);
            let mut out = s.be.alloc(5 * nh * hd)?;
            s.be.attention_many(
                bk.view(),
                bv.view(),
                &p,
                put(s.be, &q)?.view(),
                out.view_mut(),
                &segs,
            )?;
            p.sinks = sinks.then_some((&sk[..]).into());
            let mut want = vec![0f32; 5 * nh * hd];
            s.cpu.attention_many(
                (&k[..]).into(),
                (&v[..]).into(),
                &p,
                (&q[..]).into(),
                (&mut want[..]).into(),
                &segs,
            )?;
            Ok((get(s.be, &out)?, want))
        });
    }
}

/// Page tables of the two sequences the attention cases run: 2 tokens at positions 9..=10 in
/// pages 3, 1, 6, and 3 tokens at 1..=3 in pages 7, 0, 2, 5 (of a cache of 8 pages).
const TABLES: [&[u32]; 2] = [&[3, 1, 6], &[7, 0, 2, 5]];

/// The two sequences of [`TABLES`] as one batch of 5 query rows, in pages of `ps`.
fn two_paged_seqs(ps: usize) -> [AttnSeg<'static>; 2] {
    let seg = |row0, n_tok, pos0, table| AttnSeg {
        row0,
        n_tok,
        pos0,
        pages: Some(Pages {
            table,
            page_size: ps,
        }),
    };
    [seg(0, 2, 9, TABLES[0]), seg(2, 3, 1, TABLES[1])]
}

/// Routing and routed experts.
fn moe(s: &mut Suite) {
    use hearth_core::moe::{Expert, Gating, GroupScore, Routing};
    let routing = |gating, n_group, topk_group| Routing {
        n_expert: 16,
        n_used: 4,
        gating,
        norm: true,
        scale: 2.5,
        n_group,
        topk_group,
        group_score: GroupScore::Top2Sum,
        act: Glu::Silu,
    };
    for (label, cfg, bias) in [
        ("softmax", routing(Gating::Softmax, 1, 1), false),
        (
            "sigmoid, 2 of 4 groups, correction bias",
            routing(Gating::Sigmoid, 4, 2),
            true,
        ),
    ] {
        for part in [0usize, 1] {
            let what = if part == 0 { "ids" } else { "weights" };
            s.case(format!("moe_route {label}: {what}"), 1e-6, |s| {
                let n = 5;
                let l = s.rng.vec(n * 16);
                let b: Vec<f32> = s.rng.vec(16).iter().map(|v| v * 0.1).collect();
                let (mut i1, mut w1) = (s.be.alloc(n * 4)?, s.be.alloc(n * 4)?);
                let bb = put(s.be, &b)?;
                let sb = bias.then(|| bb.view());
                s.be.moe_route(
                    put(s.be, &l)?.view(),
                    sb,
                    &cfg,
                    i1.view_mut(),
                    w1.view_mut(),
                )?;
                let (mut i2, mut w2) = (vec![0f32; n * 4], vec![0f32; n * 4]);
                let sb = bias.then_some((&b[..]).into());
                s.cpu.moe_route(
                    (&l[..]).into(),
                    sb,
                    &cfg,
                    (&mut i2[..]).into(),
                    (&mut w2[..]).into(),
                )?;
                Ok(if part == 0 {
                    (get(s.be, &i1)?, i2)
                } else {
                    (get(s.be, &w1)?, w2)
                })
            });
        }
    }
    for (label, act, biased) in [
        ("silu", Glu::Silu, false),
        (
            "clamped swiglu with biases",
            Glu::ClampedSwiglu {
                alpha: 1.702,
                limit: 1.5,
            },
            true,
        ),
    ] {
        s.case(
            format!("moe_experts {label}: 6 experts, 3 tokens, 2 each"),
            1e-5,
            |s| {
                let (ne, e, ff, n, k) = (6usize, 64usize, 40usize, 3usize, 2usize);
                let mut mats = Vec::new();
                for _ in 0..ne {
                    mats.push((
                        s.rng.vec(ff * e),
                        s.rng.vec(ff * e),
                        s.rng.vec(e * ff),
                        [s.rng.vec(ff), s.rng.vec(ff), s.rng.vec(e)],
                    ));
                }
                let make = |be: &dyn Backend| -> Result<Vec<Expert>> {
                    mats.iter()
                        .map(|(g, u, d, b)| {
                            let up = |v: &Vec<f32>| -> Result<Option<Buf>> {
                                biased.then(|| be.upload_new(v)).transpose()
                            };
                            let mut ex = Expert {
                                gate: tensor(DType::F32, ff, e, g),
                                up: tensor(DType::F32, ff, e, u),
                                down: tensor(DType::F32, e, ff, d),
                                gate_b: up(&b[0])?,
                                up_b: up(&b[1])?,
                                down_b: up(&b[2])?,
                            };
                            for w in [&mut ex.gate, &mut ex.up, &mut ex.down] {
                                be.prepare(w);
                            }
                            Ok(ex)
                        })
                        .collect()
                };
                let x = s.rng.vec(n * e);
                let ids: Vec<f32> = vec![5.0, 0.0, 2.0, 5.0, 1.0, 3.0];
                let w: Vec<f32> = s.rng.vec(n * k);
                let ex_b = make(s.be)?;
                let mut out = s.be.alloc(n * e)?;
                let (bx, bi, bw) = (put(s.be, &x)?, put(s.be, &ids)?, put(s.be, &w)?);
                s.be.moe_experts(hearth_core::MoeJob {
                    experts: &ex_b,
                    act,
                    n_tok: n,
                    n_used: k,
                    x: bx.view(),
                    ids: bi.view(),
                    weights: bw.view(),
                    out: out.view_mut(),
                })?;
                let ex_c = make(&s.cpu)?;
                let mut want = vec![0f32; n * e];
                s.cpu.moe_experts(hearth_core::MoeJob {
                    experts: &ex_c,
                    act,
                    n_tok: n,
                    n_used: k,
                    x: (&x[..]).into(),
                    ids: (&ids[..]).into(),
                    weights: (&w[..]).into(),
                    out: (&mut want[..]).into(),
                })?;
                Ok((get(s.be, &out)?, want))
            },
        );
    }
}

/// DSA's choice of positions: three sequences in pages of 64 (one of 302 positions, more than
/// a workgroup scans at once), 3 heads of 5, top-k 4 and 100. The values are small integers,
/// so every score is exact on any backend and the choice, ties included, must be the CPU's
/// exactly.
fn dsa_cases(s: &mut Suite) {
    use hearth_core::dsa::{DsaJob, DsaParams, score_width};
    let (nh, d, ps) = (3usize, 5usize, 64usize);
    let tables: [&[u32]; 3] = [&[3], &[0], &[1, 2, 4, 5, 6]];
    let shape = [(0usize, 9usize), (6, 3), (300, 2)];
    let mut segs = Vec::new();
    let mut row0 = 0;
    for (t, &(pos0, n_tok)) in tables.iter().zip(&shape) {
        segs.push(AttnSeg {
            row0,
            n_tok,
            pos0,
            pages: Some(Pages {
                table: t,
                page_size: ps,
            }),
        });
        row0 += n_tok;
    }
    let n = row0;
    for top_k in [4usize, 100] {
        s.case(format!("dsa_select top-{top_k}"), 0.0, |s| {
            let mut int =
                |len: usize| -> Vec<f32> { (0..len).map(|_| (s.rng.f() * 3.5).round()).collect() };
            let (keys, q, w) = (int(7 * ps * d), int(n * nh * d), int(n * nh));
            let p = DsaParams {
                n_head: nh,
                head_dim: d,
                top_k,
                scale: 0.5,
            };
            let width = score_width(&segs);
            let (kb, qb, wb) = (put(s.be, &keys)?, put(s.be, &q)?, put(s.be, &w)?);
            let (mut sb, mut ob) = (s.be.alloc(n * width)?, s.be.alloc(n * top_k)?);
            s.be.dsa_select(DsaJob {
                keys: kb.view(),
                q: qb.view(),
                w: wb.view(),
                p,
                segs: &segs,
                scores: sb.view_mut(),
                out: ob.view_mut(),
            })?;
            let (mut sc, mut co) = (vec![0f32; n * width], vec![0f32; n * top_k]);
            s.cpu.dsa_select(DsaJob {
                keys: (&keys[..]).into(),
                q: (&q[..]).into(),
                w: (&w[..]).into(),
                p,
                segs: &segs,
                scores: (&mut sc[..]).into(),
                out: (&mut co[..]).into(),
            })?;
            Ok((get(s.be, &ob)?, co))
        });
    }
}
