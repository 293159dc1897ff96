//! Weights of quantized (and 16-bit float) types: matmuls over batches of 1 to 40 tokens and
//! odd shapes, embedding rows, and routed experts, against the CPU backend.
//!
//! Two references per matmul: the CPU backend's own kernel for the type (which quantizes the
//! activations of most types to integers, hence the looser bound), and the CPU's f32 matmul of
//! the weight decoded by `hearth_quant` (exact up to the order of the sums: a backend that
//! decodes the blocks itself must decode them to the same values).
use super::{Rng, Suite, get, put};
use hearth_core::moe::Expert;
use hearth_core::{Backend, Buf, DType, Glu, Result, Storage, Tensor};

/// Every type the suite gives weights in.
const TYPES: [DType; 21] = [
    DType::F16,
    DType::BF16,
    DType::Q4_0,
    DType::Q4_1,
    DType::Q5_0,
    DType::Q5_1,
    DType::Q8_0,
    DType::Q2_K,
    DType::Q3_K,
    DType::Q4_K,
    DType::Q5_K,
    DType::Q6_K,
    DType::IQ4_NL,
    DType::IQ4_XS,
    DType::MXFP4,
    DType::IQ2_XXS,
    DType::IQ2_XS,
    DType::IQ2_S,
    DType::IQ3_XXS,
    DType::IQ3_S,
    DType::Q8_K,
];

/// Random bytes for a quantized tensor, with every 16-bit scale finite (the odd bytes'
/// exponent bits kept low) and MXFP4's shared exponents near 1.
fn quant_tensor(rng: &mut Rng, dtype: DType, n_out: usize, n_in: usize) -> Tensor {
    let n = dtype.row_bytes(n_in).expect("a whole number of blocks") * n_out;
    let bytes: Vec<u8> = (0..n)
        .map(|i| {
            let b = ((rng.f() + 1.0) * 127.9) as u8;
            if dtype == DType::MXFP4 && i % 17 == 0 {
                120 + b % 16
            } else if i % 2 == 1 {
                b & 0x3B
            } else {
                b
            }
        })
        .collect();
    Tensor::new("wq".into(), dtype, vec![n_out, n_in], Storage::owned(bytes))
        .expect("a well-formed test tensor")
}

/// `t` decoded to f32 by the reference dequantizers.
pub(crate) fn decoded(t: &Tensor) -> Result<Tensor> {
    let mut v = vec![0f32; t.numel()];
    hearth_quant::dequantize(t.dtype, t.bytes(), &mut v)?;
    let bytes = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    Tensor::new(
        "wd".into(),
        DType::F32,
        t.shape.clone(),
        Storage::owned(bytes),
    )
}

/// Matmuls, embedding rows and experts of every type in [`TYPES`].
pub(crate) fn cases(s: &mut Suite) {
    // (n_out, n_in, n_tok): one token and small batches, a single row, rows that are not a
    // multiple of a workgroup or of a tile of tokens, one and several super-blocks per row,
    // and a prompt of several tiles
    let shapes = [
        (19usize, 512usize, 1usize),
        (19, 512, 2),
        (1, 256, 5),
        (67, 768, 17),
        (33, 512, 40),
    ];
    for dtype in TYPES {
        for (n_out, n_in, n_tok) in shapes {
            s.case(
                format!("matmul {dtype} [{n_out}, {n_in}] x {n_tok} against its f32 decoding"),
                1e-5,
                |s| {
                    let t = quant_tensor(&mut s.rng, dtype, n_out, n_in);
                    let x = s.rng.vec(n_tok * n_in);
                    if !s.f32_acts {
                        return s.matmul(&t, &x, n_tok);
                    }
                    let (got, want) = s.matmul(&t, &x, n_tok)?;
                    if s.be.matmul_rounds_to_f16(dtype) {
                        // the CPU's side is already the f32 decoding (rounded to f16)
                        return Ok((got, want));
                    }
                    let (_, want) = s.matmul(&decoded(&t)?, &x, n_tok)?;
                    Ok((got, want))
                },
            );
        }
        // the CPU's own kernel, where enough outputs share the normalisation for the error of
        // its quantized activations to stay under the bound
        let (n_out, n_in, n_tok) = (19, 512, 3);
        s.case(
            format!("matmul {dtype} [{n_out}, {n_in}] x {n_tok}"),
            5e-3,
            |s| {
                let t = quant_tensor(&mut s.rng, dtype, n_out, n_in);
                let x = s.rng.vec(n_tok * n_in);
                s.matmul(&t, &x, n_tok)
            },
        );
        s.case(format!("get_rows {dtype} 3 of [19, 512]"), 0.0, |s| {
            let t = quant_tensor(&mut s.rng, dtype, 19, 512);
            let ids = [18u32, 0, 7];
            let mut out = s.be.alloc(3 * 512)?;
            s.be.get_rows(&t, &ids, out.view_mut())?;
            let mut want = vec![0f32; 3 * 512];
            s.cpu.get_rows(&t, &ids, (&mut want[..]).into())?;
            Ok((get(s.be, &out)?, want))
        });
    }
    // a row's result alone and in a batch of 16 (temperature 0 must not see the batch)
    for dtype in [DType::Q4_K, DType::Q8_0, DType::F16] {
        s.case(
            format!("matmul {dtype}: a row alone = in a batch"),
            0.0,
            |s| {
                let t = quant_tensor(&mut s.rng, dtype, 40, 512);
                let x = s.rng.vec(16 * 512);
                let (batch, _) = s.matmul(&t, &x, 16)?;
                let mut alone = Vec::new();
                for r in 0..16 {
                    alone.extend(s.matmul(&t, &x[r * 512..(r + 1) * 512], 1)?.0);
                }
                Ok((batch, alone))
            },
        );
    }
    // routed experts: a Q4_K_M-like layer (Q4_K gate and up, Q6_K down), one type for all,
    // and a layer whose experts differ in type
    let mixes: [(&str, [DType; 3], Option<DType>); 5] = [
        (
            "Q4_K, Q4_K, Q6_K",
            [DType::Q4_K, DType::Q4_K, DType::Q6_K],
            None,
        ),
        ("Q8_0", [DType::Q8_0; 3], None),
        ("MXFP4", [DType::MXFP4; 3], None),
        (
            "IQ2_XXS, IQ3_S, IQ2_S",
            [DType::IQ2_XXS, DType::IQ3_S, DType::IQ2_S],
            None,
        ),
        (
            "Q4_0 with one Q8_0 gate",
            [DType::Q4_0; 3],
            Some(DType::Q8_0),
        ),
    ];
    for (label, types, odd) in mixes {
        s.case(
            format!("moe_experts {label}: 6 experts, 3 tokens, 2 each"),
            1e-5,
            |s| {
                let m = MoeMats::new(s, types, odd);
                let ids = [5.0, 0.0, 2.0, 5.0, 1.0, 3.0];
                m.run(s, &ids, 3)
            },
        );
    }
    // 40 tokens whose slots give expert 5 more than one block of 16 (kernels that group the
    // slots by expert), and experts with one slot, several or none
    let ids: Vec<f32> = (0..40)
        .flat_map(|t| {
            [
                5.0,
                [0.0, 1.0, 2.0, 3.0][t % 4] + if t % 9 == 0 { 1.0 } else { 0.0 },
            ]
        })
        .collect();
    for (label, types) in [
        ("Q4_K, Q4_K, Q6_K", [DType::Q4_K, DType::Q4_K, DType::Q6_K]),
        ("MXFP4", [DType::MXFP4; 3]),
    ] {
        s.case(
            format!("moe_experts {label}: 6 experts, 40 tokens, 2 each"),
            1e-5,
            |s| MoeMats::new(s, types, None).run(s, &ids, 40),
        );
    }
    // a token's result alone and in a batch (temperature 0 must not see the batch)
    s.case(
        "moe_experts Q4_K, Q4_K, Q6_K: a token alone = in a batch of 40".into(),
        0.0,
        |s| {
            let m = MoeMats::new(s, [DType::Q4_K, DType::Q4_K, DType::Q6_K], None);
            let x: Vec<f32> = s.rng.vec(40 * MOE_E);
            let w: Vec<f32> = s.rng.vec(40 * 2);
            let ex = m.experts(s.be, false)?;
            let batch = moe_on(s.be, &ex, &x, &ids, &w, 40)?;
            let mut alone = Vec::new();
            for t in 0..40 {
                let r = t * MOE_E..(t + 1) * MOE_E;
                let o = moe_on(
                    s.be,
                    &ex,
                    &x[r],
                    &ids[2 * t..2 * t + 2],
                    &w[2 * t..2 * t + 2],
                    1,
                )?;
                alone.extend(o);
            }
            Ok((batch, alone))
        },
    );
}

/// The expert layer's width, hidden size of the cases' experts and experts per token.
const MOE_E: usize = 256;
const MOE_FF: usize = 512;
const MOE_K: usize = 2;

/// Six experts' matrices, of `types` (gate, up, down; expert 0's gate `odd` where given).
struct MoeMats {
    mats: Vec<[Tensor; 3]>,
    types: [DType; 3],
    odd: bool,
}

impl MoeMats {
    fn new(s: &mut Suite, types: [DType; 3], odd: Option<DType>) -> MoeMats {
        let mats = (0..6)
            .map(|i| {
                let gt = odd.filter(|_| i == 0).unwrap_or(types[0]);
                [
                    quant_tensor(&mut s.rng, gt, MOE_FF, MOE_E),
                    quant_tensor(&mut s.rng, types[1], MOE_FF, MOE_E),
                    quant_tensor(&mut s.rng, types[2], MOE_E, MOE_FF),
                ]
            })
            .collect();
        MoeMats {
            mats,
            types,
            odd: odd.is_some(),
        }
    }

    /// The experts for `be` (prepared there), as they are or decoded to f32.
    fn experts(&self, be: &dyn Backend, f32: bool) -> Result<Vec<Expert>> {
        let conv = |t: &Tensor| if f32 { decoded(t) } else { Ok(t.clone()) };
        self.mats
            .iter()
            .map(|[g, u, d]| {
                let mut ex = Expert {
                    gate: conv(g)?,
                    up: conv(u)?,
                    down: conv(d)?,
                    gate_b: None,
                    up_b: None,
                    down_b: None,
                };
                for (w, name) in [
                    (&mut ex.gate, "ffn_gate_exps"),
                    (&mut ex.up, "ffn_up_exps"),
                    (&mut ex.down, "ffn_down_exps"),
                ] {
                    w.name = name.into();
                    be.prepare(w);
                }
                Ok(ex)
            })
            .collect()
    }

    /// `n` random tokens with slots `ids` through the experts on the backend, and a
    /// reference: the CPU's, with the experts decoded to f32 (or as they are, for a backend
    /// that quantizes activations: see `Suite::f32_acts`); or, where the backend rounds a
    /// matrix kind's weights and inputs to f16 (`Backend::matmul_rounds_to_f16`), the same
    /// layer composed of the backend's own single-token matmuls and GLU. The rounding of the
    /// GLU's output to f16 turns the last bits of its exp into whole f16 steps, so no CPU
    /// reference can match the backend's there within the bound of a different order of
    /// sums; the matmuls and GLU the composition uses are each held to the CPU by the
    /// suite's other cases, and this case holds the experts' grouping of slots to them.
    fn run(&self, s: &mut Suite, ids: &[f32], n: usize) -> Result<(Vec<f32>, Vec<f32>)> {
        let x: Vec<f32> = s.rng.vec(n * MOE_E);
        let w: Vec<f32> = s.rng.vec(n * MOE_K);
        let got = moe_on(s.be, &self.experts(s.be, false)?, &x, ids, &w, n)?;
        let rounds = (0..3).any(|i| {
            !(i == 0 && self.odd) && s.f32_acts && s.be.matmul_rounds_to_f16(self.types[i])
        });
        let want = if rounds {
            self.composed(s.be, &x, ids, &w, n)?
        } else {
            moe_on(&s.cpu, &self.experts(&s.cpu, s.f32_acts)?, &x, ids, &w, n)?
        };
        Ok((got, want))
    }

    /// The layer on `be` by single-token matmuls: SiLU-gated, each token's experts' outputs
    /// summed with their weights. A matrix kind whose experts differ in type is decoded to
    /// f32 first, as a backend packs such a kind.
    fn composed(
        &self,
        be: &dyn Backend,
        x: &[f32],
        ids: &[f32],
        w: &[f32],
        n: usize,
    ) -> Result<Vec<f32>> {
        let mut mats = Vec::new();
        for m in &self.mats {
            let mut ts = Vec::new();
            for (i, t) in m.iter().enumerate() {
                let mut t = if i == 0 && self.odd {
                    decoded(t)?
                } else {
                    t.clone()
                };
                be.prepare(&mut t);
                ts.push(t);
            }
            mats.push(ts);
        }
        let mm = |t: &Tensor, v: &Buf, n_out: usize| -> Result<Buf> {
            let mut o = be.alloc(n_out)?;
            be.matmul(t, v.view(), 1, o.view_mut())?;
            Ok(o)
        };
        let mut out = vec![0f32; n * MOE_E];
        for (t, o) in out.chunks_exact_mut(MOE_E).enumerate() {
            let xt = put(be, &x[t * MOE_E..(t + 1) * MOE_E])?;
            for j in 0..MOE_K {
                let m = &mats[ids[t * MOE_K + j] as usize];
                let mut h = mm(&m[0], &xt, MOE_FF)?;
                let u = mm(&m[1], &xt, MOE_FF)?;
                be.glu(Glu::Silu, h.view_mut(), u.view())?;
                let y = get(be, &mm(&m[2], &h, MOE_E)?)?;
                for (o, y) in o.iter_mut().zip(y) {
                    *o += w[t * MOE_K + j] * y;
                }
            }
        }
        Ok(out)
    }
}

/// The routed experts `ex` over `n` tokens `x` with slots `ids` and weights `w` on `be`.
fn moe_on(
    be: &dyn Backend,
    ex: &[Expert],
    x: &[f32],
    ids: &[f32],
    w: &[f32],
    n: usize,
) -> Result<Vec<f32>> {
    let mut out = be.alloc(n * MOE_E)?;
    let (bx, bi, bw) = (put(be, x)?, put(be, ids)?, put(be, w)?);
    be.moe_experts(hearth_core::MoeJob {
        experts: ex,
        act: Glu::Silu,
        n_tok: n,
        n_used: MOE_K,
        x: bx.view(),
        ids: bi.view(),
        weights: bw.view(),
        out: out.view_mut(),
    })?;
    get(be, &out)
}
