//! Activations quantized for integer dot products with 4- to 8-bit weights: 16-bit integers
//! per block of 32 for most types, and 8-bit integers per block of 256 for Q4_K.
//!
//! Why 16 bits: the products and their sums are exact in i32, so the integer part of a dot
//! never depends on summation order, and the rounding of x to 1/32767 of its block maximum is
//! far below what changes a model's output. Why 8 bits for Q4_K: `maddubs` then multiplies 32
//! weight/activation pairs per instruction and a whole super-block's scaled sub-block sums and
//! mins stay exact in i32, one float step per 256 weights; on SmolLM2 Q4_K_M this kept the
//! argmax of 482 of 486 positions of real text (99.2%) against the 16-bit path, and sped up
//! the Qwen3-MoE model's prompt processing by about 11%. Q6_K on 8 bits as well cost another
//! 8 positions (97.5%) for 7% more, so Q6_K stays on 16 bits. The legacy types (Q4_0, Q4_1,
//! Q8_0, ...) stay on 16 bits too: with `Q8_0`-style 8-bit activations per block of 32 (what
//! llama.cpp uses) the real model (SmolLM2 Q4_1, tied Q8_0 output) kept the argmax of only
//! 455 of 486 positions against transformers (93.6%, measured by setting the quantizer's
//! maximum to 127), against 486 of 486 on 16 bits. Every row uses the same precision
//! whatever its batch, so batching never changes a result.
//!
//! From [`T8_MIN`] rows on, the 16-bit values are also regrouped eight rows at a time
//! (`qt`), so that a batched kernel multiplies one weight pair by eight tokens' pairs with
//! one `vpmaddwd`; sixteen rows at a time where the AVX-512 kernels run ([`group_width`]),
//! one `vpdpwssd` on a 512-bit register.
use crate::iquants::BlockIQ4XS;
use crate::kquants::{BlockQ2K, BlockQ3K, BlockQ4K, BlockQ5K, BlockQ6K, scales_mins_k4};
use crate::legacy::{BlockQ4_0, BlockQ4_1, BlockQ5_0, BlockQ5_1, BlockQ8_0};
use crate::tables::KVALUES_IQ4NL;
use crate::{as_blocks, f16le};
use hearth_core::DType;

/// Elements per activation block.
pub const QK: usize = 32;
/// Elements per block of the 8-bit form (K-quant super-blocks).
pub const QK8: usize = 256;

/// `n_rows` activation rows of `n` values each, quantized per block of 32.
#[derive(Default, Debug, Clone)]
pub struct QuantizedActs {
    /// Values, `[n_rows, n]`.
    pub q: Vec<i16>,
    /// Scale per block, `[n_rows, n / 32]`.
    pub d: Vec<f32>,
    /// Sum of the original f32 values per block, `[n_rows, n / 32]`.
    pub sum: Vec<f32>,
    /// Sum of `q` per 16 values (exact), `[n_rows, n / 16]`.
    pub s16: Vec<i32>,
    /// Values per row.
    pub n: usize,
    /// The same rows in 8 bits per block of 256 (for K-quant weights; empty unless `n` is a
    /// multiple of 256), `[n_rows, n]`.
    pub q8: Vec<i8>,
    /// Scale per block of 256, `[n_rows, n / 256]`.
    pub d8: Vec<f32>,
    /// Sum of `q8` per 16 values, `[n_rows, n / 16]`.
    pub bs8: Vec<i16>,
    /// Rows quantized.
    pub rows: usize,
    /// Rows per group of the regrouped forms below (`G`): 8, or 16 where the AVX-512 kernels
    /// run ([`group_width`]).
    pub gw: usize,
    /// `q` regrouped for the batched kernels (empty below [`T8_MIN`] rows): for each group of
    /// `G` rows (the last padded with zeros), block of 32 (in the order of [`block_slot`]) and
    /// pair `j` of the block, the `G` rows' values `2j` and `2j + 1` as one 32-bit word each,
    /// `[n_rows / G, block_slots(n / 32, G), 16, G]`.
    pub qt: Vec<i32>,
    /// `d` regrouped the same way, `[n_rows / G, n / 32, G]`.
    pub dt: Vec<f32>,
    /// `sum` regrouped the same way, `[n_rows / G, n / 32, G]`.
    pub st: Vec<f32>,
    /// `s16` regrouped the same way, `[n_rows / G, n / 32, 2, G]`.
    pub s16t: Vec<i32>,
    /// `q8` regrouped (when it exists and from [`T8_MIN`] rows on): per group of `G` rows,
    /// block of 256 and group `k` of 4 values, the `G` rows' values `4k..4k + 4` as one
    /// 32-bit word each, `[n_rows / G, n / 256, 64, G]`.
    pub q8t: Vec<i32>,
    /// `d8` regrouped, `[n_rows / G, n / 256, G]`.
    pub d8t: Vec<f32>,
    /// `bs8` regrouped: per block of 256 and sub-block `j` of 32, the `G` rows' two sums of
    /// 16 as one 32-bit word each, `[n_rows / G, n / 256, 8, G]`.
    pub b8t: Vec<i32>,
}

/// Block slots per group of rows in the regrouped 16-bit form (`qt`, `dt`, `st`, `s16t`) for
/// `nb` blocks of 32 per row: `nb`, or with groups of 16 ([`group_width`]) `4 * ceil(nb / 4)`,
/// the blocks in the order of the partial sums the kernels keep (`b % 4`, see
/// [`block_slot`]) so that a kernel summing one partial at a time reads forward.
pub fn block_slots(nb: usize, gw: usize) -> usize {
    if gw == 16 { 4 * nb.div_ceil(4) } else { nb }
}

/// The slot of block `b` of `nb` (see [`block_slots`]): `b`, or with groups of 16
/// `(b % 4) * ceil(nb / 4) + b / 4`.
#[inline(always)]
pub fn block_slot(b: usize, nb: usize, gw: usize) -> usize {
    if gw == 16 {
        (b % 4) * nb.div_ceil(4) + b / 4
    } else {
        b
    }
}

/// Rows per group of the regrouped activations: 16 where the AVX-512 VNNI kernels run (one
/// 512-bit register holds 16 tokens' i32 sums), else 8 (a 256-bit register).
pub fn group_width() -> usize {
    #[cfg(target_arch = "x86_64")]
    if crate::has_avx2() && crate::x86::vnni() {
        return 16;
    }
    8
}

/// Fewest activation rows for which [`QuantizedActs::quantize`] builds the regrouped form.
pub const T8_MIN: usize = 4;

/// One quantized activation row.
#[derive(Clone, Copy)]
pub struct ActsRow<'a> {
    /// values
    pub q: &'a [i16],
    /// per-block scales
    pub d: &'a [f32],
    /// per-block sums of the f32 values
    pub sum: &'a [f32],
    /// per-16 sums of the values
    pub s16: &'a [i32],
    /// 8-bit values per block of 256 (empty when the row length is not a multiple of 256)
    pub q8: &'a [i8],
    /// per-256-block scales
    pub d8: &'a [f32],
    /// sums of `q8` per 16 values
    pub bs8: &'a [i16],
}

impl QuantizedActs {
    /// Quantize `x` (`[rows, n]`, `n` a multiple of 32) to every form, reusing the buffers.
    pub fn quantize(&mut self, x: &[f32], n: usize) {
        self.quantize_forms(x, n, true, true);
    }

    /// The forms the integer kernels of `dtype` read: (16-bit per 32, 8-bit per 256).
    pub fn forms(dtype: DType) -> (bool, bool) {
        if dtype == DType::Q4_K {
            (false, true)
        } else {
            (true, false)
        }
    }

    /// Quantize `x` to the 16-bit form (`q16`) and/or the 8-bit form (`k8`, when `n` is a
    /// multiple of 256); a form not asked for is left empty.
    pub fn quantize_forms(&mut self, x: &[f32], n: usize, q16: bool, k8: bool) {
        self.quantize_forms_with(x, n, q16, k8, 1, &|f| f(0));
    }

    /// [`QuantizedActs::quantize_forms`] in `parts` parts of whole groups of 8 rows: `run(f)`
    /// must call `f(i)` once for every `i` in `0..parts` (in parallel, say). The values do
    /// not depend on `parts`: every row is quantized on its own.
    pub fn quantize_forms_with(
        &mut self,
        x: &[f32],
        n: usize,
        q16: bool,
        k8: bool,
        parts: usize,
        run: &dyn Fn(&(dyn Fn(usize) + Sync)),
    ) {
        assert!(n % QK == 0 && x.len() % n == 0 && parts > 0);
        let rows = x.len() / n;
        (self.n, self.rows) = (n, rows);
        let k8 = k8 && n % QK8 == 0;
        let grouped = rows >= T8_MIN;
        let gw = group_width();
        self.gw = gw;
        let groups = if grouped { rows.div_ceil(gw) } else { 0 };
        // size every buffer (a form not asked for is emptied)
        fn size<T: Copy + Default>(v: &mut Vec<T>, on: bool, len: usize) {
            v.clear();
            if on {
                v.resize(len, T::default());
            }
        }
        let (nb, nb8) = (n / QK, n / QK8);
        size(&mut self.q, q16, x.len());
        size(&mut self.d, q16, rows * nb);
        size(&mut self.sum, q16, rows * nb);
        size(&mut self.s16, q16, rows * 2 * nb);
        let nbs = block_slots(nb, gw);
        size(&mut self.qt, q16 && grouped, groups * nbs * 16 * gw);
        size(&mut self.dt, q16 && grouped, groups * nbs * gw);
        size(&mut self.st, q16 && grouped, groups * nbs * gw);
        size(&mut self.s16t, q16 && grouped, groups * nbs * 2 * gw);
        size(&mut self.q8, k8, x.len());
        size(&mut self.d8, k8, rows * nb8);
        size(&mut self.bs8, k8, rows * 16 * nb8);
        size(&mut self.q8t, k8 && grouped, groups * nb8 * 64 * gw);
        size(&mut self.d8t, k8 && grouped, groups * nb8 * gw);
        size(&mut self.b8t, k8 && grouped, groups * nb8 * 8 * gw);
        // whole groups of rows per part
        let per = rows.div_ceil(parts).next_multiple_of(gw);
        let mut slices: Vec<std::sync::Mutex<Part<'_>>> = Vec::with_capacity(parts);
        let mut rest = Part {
            r0: 0,
            rows: 0,
            gw,
            q: &mut self.q,
            d: &mut self.d,
            sum: &mut self.sum,
            s16: &mut self.s16,
            qt: &mut self.qt,
            dt: &mut self.dt,
            st: &mut self.st,
            s16t: &mut self.s16t,
            q8: &mut self.q8,
            d8: &mut self.d8,
            bs8: &mut self.bs8,
            q8t: &mut self.q8t,
            d8t: &mut self.d8t,
            b8t: &mut self.b8t,
        };
        let mut r0 = 0;
        while r0 < rows {
            let r = per.min(rows - r0);
            let (head, tail) = rest.split(r, n, r0 + r == rows);
            slices.push(std::sync::Mutex::new(head));
            rest = tail;
            r0 += r;
        }
        let slices = &slices;
        run(&|i| {
            if let Some(p) = slices.get(i) {
                let mut p = p.lock().unwrap_or_else(|e| e.into_inner());
                let (a, b) = (p.r0 * n, (p.r0 + p.rows) * n);
                p.fill(&x[a..b], n);
            }
        });
    }

    /// Row `t`.
    #[inline]
    pub fn row(&self, t: usize) -> ActsRow<'_> {
        let nb = self.n / QK;
        fn part(v: &[f32], a: usize, b: usize) -> &[f32] {
            if v.is_empty() { &[] } else { &v[a..b] }
        }
        ActsRow {
            q: if self.q.is_empty() {
                &[]
            } else {
                &self.q[t * self.n..(t + 1) * self.n]
            },
            d: part(&self.d, t * nb, (t + 1) * nb),
            sum: part(&self.sum, t * nb, (t + 1) * nb),
            s16: if self.s16.is_empty() {
                &[]
            } else {
                &self.s16[2 * t * nb..2 * (t + 1) * nb]
            },
            q8: if self.q8.is_empty() {
                &[]
            } else {
                &self.q8[t * self.n..(t + 1) * self.n]
            },
            d8: if self.d8.is_empty() {
                &[]
            } else {
                &self.d8[t * self.n / QK8..(t + 1) * self.n / QK8]
            },
            bs8: if self.bs8.is_empty() {
                &[]
            } else {
                &self.bs8[t * self.n / 16..(t + 1) * self.n / 16]
            },
        }
    }
}

/// The scale `d = max|x| / qmax` of a block, and its inverse (0 for an all-zero block).
#[inline(always)]
fn block_scale(xs: &[f32], qmax: f32) -> (f32, f32) {
    let amax = xs.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = amax / qmax;
    (d, if d > 0.0 { 1.0 / d } else { 0.0 })
}

/// `v` rounded to the nearest integer, ties to even, for |v| < 2^22 (activations are scaled
/// to at most 32767): adding and removing 1.5 * 2^23 leaves no fraction bits. No libm call, so
/// the quantizing loops vectorize.
#[inline(always)]
pub(crate) fn round_even(v: f32) -> f32 {
    const M: f32 = 12_582_912.0;
    (v + M) - M
}

/// Whether `dtype` has integer kernels against [`QuantizedActs`].
pub fn supports_q16(dtype: DType) -> bool {
    matches!(
        dtype,
        DType::Q4_0
            | DType::Q4_1
            | DType::Q5_0
            | DType::Q5_1
            | DType::Q8_0
            | DType::Q4_K
            | DType::Q6_K
    ) || is_k16(dtype)
}

/// The super-block types read by the generic 16-bit K kernels ([`K16Scales`]): Q2_K, Q3_K,
/// Q5_K and IQ4_XS.
pub fn is_k16(dtype: DType) -> bool {
    matches!(
        dtype,
        DType::Q2_K | DType::Q3_K | DType::Q5_K | DType::IQ4_XS
    )
}

/// How the generic 16-bit K kernels take a type's mins: none (Q3_K, IQ4_XS), one per block of
/// 32 against the activations' float sums (Q5_K), or one per 16 against the quantized
/// activations, exactly in i32 (Q2_K, whose mins change every 16 values).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum K16Min {
    /// no min term
    None,
    /// `-(dmin * m) * sum(x)` per block of 32
    PerBlock,
    /// `-(dmin * dx) * (m0 * s0 + m1 * s1)` per block of 32, with `m` and the sums `s` of
    /// the quantized activations per 16
    PerHalf,
}

/// A super-block of a generic 16-bit K type: each weight is `d * sc * q - dmin * mn`, with
/// `q` a small signed integer (element `32 j + l` from [`k16_q`]) and `sc`, `mn` per 16
/// elements. `sc * q` fits i16 (at most 63 * 31, Q5_K), and a 16-element sum of
/// `sc * q * x` with 16-bit activations fits i32 (IQ4_XS: 16 * 32 * 127 * 32767 < 2^31).
#[derive(Clone, Copy, Debug)]
pub struct K16Scales {
    /// super-block scale
    pub d: f32,
    /// super-block min scale (0 without mins)
    pub dmin: f32,
    /// scale per 16 elements
    pub sc: [i16; 16],
    /// min per 16 elements
    pub mn: [i16; 16],
}

/// The mins kind of a generic 16-bit K type.
#[inline(always)]
pub fn k16_min(dtype: DType) -> K16Min {
    match dtype {
        DType::Q5_K => K16Min::PerBlock,
        DType::Q2_K => K16Min::PerHalf,
        _ => K16Min::None,
    }
}

/// The scales of a super-block (`blk`, one block of `dtype`, an [`is_k16`] type).
#[inline(always)]
pub fn k16_scales(dtype: DType, blk: &[u8]) -> K16Scales {
    let mut k = K16Scales {
        d: 0.0,
        dmin: 0.0,
        sc: [0; 16],
        mn: [0; 16],
    };
    match dtype {
        DType::Q2_K => {
            let b = &as_blocks::<BlockQ2K>(blk)[0];
            (k.d, k.dmin) = (f16le(b.d), f16le(b.dmin));
            for (i, &v) in b.scales.iter().enumerate() {
                k.sc[i] = (v & 0xF) as i16;
                k.mn[i] = (v >> 4) as i16;
            }
        }
        DType::Q3_K => {
            let b = &as_blocks::<BlockQ3K>(blk)[0];
            k.d = f16le(b.d);
            for (o, v) in k.sc.iter_mut().zip(b.scales()) {
                *o = v as i16;
            }
        }
        DType::Q5_K => {
            let b = &as_blocks::<BlockQ5K>(blk)[0];
            (k.d, k.dmin) = (f16le(b.d), f16le(b.dmin));
            let (sc, mn) = scales_mins_k4(&b.scales);
            for j in 0..16 {
                k.sc[j] = sc[j / 2] as i16;
                k.mn[j] = mn[j / 2] as i16;
            }
        }
        DType::IQ4_XS => {
            let b = &as_blocks::<BlockIQ4XS>(blk)[0];
            k.d = f16le(b.d);
            for j in 0..16 {
                k.sc[j] = b.scale(j / 2) as i16;
            }
        }
        _ => {}
    }
    k
}

/// The integer weights `q` of activation block `j` (0..8, elements `32 j..32 j + 32`) of a
/// super-block of an [`is_k16`] type (the SIMD kernels decode the same values 32 at a time).
pub fn k16_q(dtype: DType, blk: &[u8], j: usize) -> [i8; 32] {
    let mut q = [0i8; 32];
    let (h, s) = (j / 4, j % 4);
    match dtype {
        DType::Q2_K => {
            let b = &as_blocks::<BlockQ2K>(blk)[0];
            for (l, o) in q.iter_mut().enumerate() {
                *o = ((b.qs[h * 32 + l] >> (2 * s)) & 3) as i8;
            }
        }
        DType::Q3_K => {
            let b = &as_blocks::<BlockQ3K>(blk)[0];
            for (l, o) in q.iter_mut().enumerate() {
                let lo = ((b.qs[h * 32 + l] >> (2 * s)) & 3) as i8;
                let hb = ((b.hmask[l] >> j) & 1) as i8;
                *o = lo - 4 * (1 - hb);
            }
        }
        DType::Q5_K => {
            let b = &as_blocks::<BlockQ5K>(blk)[0];
            for (l, o) in q.iter_mut().enumerate() {
                let lo = (b.qs[(j / 2) * 32 + l] >> (4 * (j % 2))) & 0xF;
                *o = (lo | (((b.qh[l] >> j) & 1) << 4)) as i8;
            }
        }
        DType::IQ4_XS => {
            let b = &as_blocks::<BlockIQ4XS>(blk)[0];
            for l in 0..16 {
                let v = b.qs[16 * j + l];
                q[l] = KVALUES_IQ4NL[(v & 0xF) as usize];
                q[l + 16] = KVALUES_IQ4NL[(v >> 4) as usize];
            }
        }
        _ => {}
    }
    q
}

#[inline(always)]
fn q4_isum(qs: &[u8; 16], xq: &[i16], off: i32) -> i32 {
    let mut isum = 0i32;
    for j in 0..16 {
        isum += ((qs[j] & 0xF) as i32 - off) * xq[j] as i32;
        isum += ((qs[j] >> 4) as i32 - off) * xq[j + 16] as i32;
    }
    isum
}

/// Scalar reference (and portable path): a weight row of `dtype` (one of [`supports_q16`])
/// dotted with a quantized activation row.
pub fn dot_q16_scalar(dtype: DType, src: &[u8], x: ActsRow) -> f32 {
    let mut acc = 0f32;
    // blocks of 32: partial sum per block % 4, added as the SIMD kernels add their lanes
    let mut part = [0f32; 4];
    let lanes = |p: [f32; 4]| (p[0] + p[2]) + (p[1] + p[3]);
    let xq = |i: usize| &x.q[i * QK..(i + 1) * QK];
    match dtype {
        DType::Q4_0 => {
            for (i, b) in as_blocks::<BlockQ4_0>(src).iter().enumerate() {
                let a = &mut part[i % 4];
                *a = (q4_isum(&b.qs, xq(i), 8) as f32).mul_add(f16le(b.d) * x.d[i], *a);
            }
            acc = lanes(part);
        }
        DType::Q4_1 => {
            for (i, b) in as_blocks::<BlockQ4_1>(src).iter().enumerate() {
                let t = q4_isum(&b.qs, xq(i), 0) as f32 * (f16le(b.d) * x.d[i]);
                part[i % 4] += f16le(b.m).mul_add(x.sum[i], t);
            }
            acc = lanes(part);
        }
        DType::Q5_0 | DType::Q5_1 => {
            // five-bit weights: nibble j (low) / j+16 (high) plus bit j / j+16 of qh
            let bs = dtype.type_size();
            for (i, blk) in src.chunks_exact(bs).enumerate() {
                let (d, m, qh, qs): (f32, f32, u32, &[u8]) = if dtype == DType::Q5_0 {
                    let b = &as_blocks::<BlockQ5_0>(blk)[0];
                    (f16le(b.d), 0.0, u32::from_le_bytes(b.qh), &b.qs[..])
                } else {
                    let b = &as_blocks::<BlockQ5_1>(blk)[0];
                    (f16le(b.d), f16le(b.m), u32::from_le_bytes(b.qh), &b.qs[..])
                };
                let off = if dtype == DType::Q5_0 { 16 } else { 0 };
                let mut isum = 0i32;
                for j in 0..16 {
                    let lo = (qs[j] & 0xF) as i32 | (((qh >> j) & 1) << 4) as i32;
                    let hi = (qs[j] >> 4) as i32 | (((qh >> (j + 16)) & 1) << 4) as i32;
                    isum += (lo - off) * xq(i)[j] as i32 + (hi - off) * xq(i)[j + 16] as i32;
                }
                let a = &mut part[i % 4];
                if dtype == DType::Q5_1 {
                    *a += m.mul_add(x.sum[i], isum as f32 * (d * x.d[i]));
                } else {
                    *a = (isum as f32).mul_add(d * x.d[i], *a);
                }
            }
            acc = lanes(part);
        }
        DType::Q8_0 => {
            for (i, b) in as_blocks::<BlockQ8_0>(src).iter().enumerate() {
                let isum: i32 =
                    b.qs.iter()
                        .zip(xq(i))
                        .map(|(&w, &v)| w as i8 as i32 * v as i32)
                        .sum();
                let a = &mut part[i % 4];
                *a = (isum as f32).mul_add(f16le(b.d) * x.d[i], *a);
            }
            acc = lanes(part);
        }
        DType::Q4_K => {
            // 8-bit activations per super-block: the 8 sub-block dots, weighted by their 6-bit
            // scales, and the mins against the sums of x per 16, accumulate exactly in i32
            for (i, b) in as_blocks::<BlockQ4K>(src).iter().enumerate() {
                let (sc, mn) = scales_mins_k4(&b.scales);
                let xq = &x.q8[i * QK8..(i + 1) * QK8];
                let mut sumi = 0i32;
                for j in 0..8 {
                    let (c, shift) = (j / 2, 4 * (j % 2));
                    let dot: i32 = (0..32)
                        .map(|l| ((b.qs[c * 32 + l] >> shift) & 0xF) as i32 * xq[j * 32 + l] as i32)
                        .sum();
                    sumi += sc[j] as i32 * dot;
                }
                let bs = &x.bs8[i * 16..(i + 1) * 16];
                let summ: i32 = (0..8)
                    .map(|j| mn[j] as i32 * (bs[2 * j] as i32 + bs[2 * j + 1] as i32))
                    .sum();
                let dx = x.d8[i];
                acc += f16le(b.d) * dx * sumi as f32 - f16le(b.dmin) * dx * summ as f32;
            }
        }
        dt if is_k16(dt) => {
            // per activation block a of 32: the two 16-element sums of sc * q * x, exact in
            // i32, add as floats and take d * dx; then the block's min term; partial sum a % 4
            let min = k16_min(dt);
            for (i, blk) in src.chunks_exact(dt.type_size()).enumerate() {
                let k = k16_scales(dt, blk);
                for j in 0..8 {
                    let a = 8 * i + j;
                    let q = k16_q(dt, blk, j);
                    let mut h = [0i32; 2];
                    for l in 0..32 {
                        let x = xq(a)[l] as i32;
                        h[l / 16] += (q[l] as i32 * k.sc[2 * j + l / 16] as i32) * x;
                    }
                    // |m * s| <= 15 * 16 * 32767 < 2^24: exact as floats
                    let g = |e: usize| (k.mn[2 * j + e] as i32 * x.s16[2 * a + e]) as f32;
                    let p = &mut part[a % 4];
                    *p = (h[0] as f32 + h[1] as f32).mul_add(k.d * x.d[a], *p);
                    match min {
                        K16Min::None => {}
                        K16Min::PerBlock => {
                            *p = (-(k.dmin * k.mn[2 * j] as f32)).mul_add(x.sum[a], *p);
                        }
                        K16Min::PerHalf => {
                            *p = (g(0) + g(1)).mul_add(-(k.dmin * x.d[a]), *p);
                        }
                    }
                }
            }
            acc = lanes(part);
        }
        DType::Q6_K => {
            // activation block (h, s) of a super-block holds two 16-element sub-blocks; each
            // sub-block's scaled sum is exact in i32, the two add as floats, and the block's
            // value goes into partial sum (its index) % 4 (see x86.rs)
            for (i, b) in as_blocks::<BlockQ6K>(src).iter().enumerate() {
                let d = f16le(b.d);
                for h in 0..2 {
                    for s in 0..4 {
                        let a = 8 * i + 4 * h + s;
                        let mut isum = [0i32; 2];
                        for l in 0..32 {
                            let lo = (b.ql[h * 64 + (s & 1) * 32 + l] >> (4 * (s >> 1))) & 0xF;
                            let hi = (b.qh[h * 32 + l] >> (2 * s)) & 3;
                            let q = (lo | (hi << 4)) as i32 - 32;
                            isum[l / 16] += q * xq(a)[l] as i32;
                        }
                        let sc = (h * 128 + s * 32) / 16;
                        let sa = b.scales[sc] as i8 as i32;
                        let sb = b.scales[sc + 1] as i8 as i32;
                        let f = (sa * isum[0]) as f32 + (sb * isum[1]) as f32;
                        part[a % 4] = f.mul_add(d * x.d[a], part[a % 4]);
                    }
                }
            }
            acc = lanes(part);
        }
        _ => {}
    }
    acc
}

/// The 8-bit form of `x`: per block of 256, `q = round(x / d)` with `d = max|x| / 127`, and
/// the sums of `q` per 16 (with AVX2 where the CPU has it; the same values either way).
fn q8_blocks(x: &[f32], q: &mut [i8], d: &mut [f32], bs: &mut [i16]) {
    let nb = x.len() / QK8;
    assert!(q.len() >= nb * QK8 && d.len() >= nb && bs.len() >= 16 * nb);
    #[cfg(target_arch = "x86_64")]
    if crate::has_avx2() {
        // SAFETY: the CPU has AVX2; the buffers hold `nb` blocks (checked above).
        return unsafe { crate::x86::q8_blocks(x, q, d, bs) };
    }
    q8_blocks_impl(x, q, d, bs)
}

/// [`q8_blocks`], portable.
fn q8_blocks_impl(x: &[f32], q: &mut [i8], d: &mut [f32], bs: &mut [i16]) {
    for (b, (xs, qs)) in x.chunks_exact(QK8).zip(q.chunks_exact_mut(QK8)).enumerate() {
        let (db, id) = block_scale(xs, 127.0);
        for (q, &v) in qs.iter_mut().zip(xs) {
            *q = round_even(v * id).clamp(-127.0, 127.0) as i8;
        }
        d[b] = db;
        for (g, sum) in qs.chunks_exact(16).zip(&mut bs[b * 16..(b + 1) * 16]) {
            *sum = g.iter().map(|&q| q as i16).sum();
        }
    }
}

/// The 16-bit form of `x`: per block of 32, `q = round(x / d)` with `d = max|x| / 32767`,
/// the block's sum of `x`, and the sums of `q` per 16 (with AVX2 where the CPU has it; the
/// same values either way).
fn q16_blocks(x: &[f32], q: &mut [i16], d: &mut [f32], sum: &mut [f32], s16: &mut [i32]) {
    let nb = x.len() / QK;
    assert!(q.len() >= nb * QK && d.len() >= nb && sum.len() >= nb && s16.len() >= 2 * nb);
    #[cfg(target_arch = "x86_64")]
    if crate::has_avx2() {
        // SAFETY: the CPU has AVX2; the buffers hold `nb` blocks (checked above).
        return unsafe { crate::x86::q16_blocks(x, q, d, sum, s16) };
    }
    q16_blocks_impl(x, q, d, sum, s16)
}

/// [`q16_blocks`] in eight lanes, as the AVX2 version computes it: the maximum is exact in
/// any order, and the sum is taken as lanes `k` (`x[k] + x[8 + k] + x[16 + k] + x[24 + k]`,
/// in that order) added as `((l0 + l1) + (l2 + l3)) + ((l4 + l5) + (l6 + l7))`.
fn q16_blocks_impl(x: &[f32], q: &mut [i16], d: &mut [f32], sum: &mut [f32], s16: &mut [i32]) {
    for (b, (xs, qs)) in x.chunks_exact(QK).zip(q.chunks_exact_mut(QK)).enumerate() {
        let (mut m, mut l) = ([0f32; 8], [0f32; 8]);
        for c in xs.chunks_exact(8) {
            for k in 0..8 {
                m[k] = m[k].max(c[k].abs());
                l[k] += c[k];
            }
        }
        let amax = m.iter().fold(0f32, |a, &v| a.max(v));
        let db = amax / 32767.0;
        let id = if db > 0.0 { 1.0 / db } else { 0.0 };
        for (q, &v) in qs.iter_mut().zip(xs) {
            *q = round_even(v * id) as i16;
        }
        d[b] = db;
        sum[b] = ((l[0] + l[1]) + (l[2] + l[3])) + ((l[4] + l[5]) + (l[6] + l[7]));
        for (h, q) in qs.chunks_exact(16).enumerate() {
            s16[2 * b + h] = q.iter().map(|&v| v as i32).sum();
        }
    }
}

/// The buffers of a run of rows (starting at `r0`, a multiple of `gw`) of [`QuantizedActs`]:
/// each form's slice, empty when the form is not built.
struct Part<'a> {
    r0: usize,
    rows: usize,
    gw: usize,
    q: &'a mut [i16],
    d: &'a mut [f32],
    sum: &'a mut [f32],
    s16: &'a mut [i32],
    qt: &'a mut [i32],
    dt: &'a mut [f32],
    st: &'a mut [f32],
    s16t: &'a mut [i32],
    q8: &'a mut [i8],
    d8: &'a mut [f32],
    bs8: &'a mut [i16],
    q8t: &'a mut [i32],
    d8t: &'a mut [f32],
    b8t: &'a mut [i32],
}

impl<'a> Part<'a> {
    /// The first `rows` rows (a multiple of `gw` unless `last`), and what follows them.
    fn split(self, rows: usize, n: usize, last: bool) -> (Part<'a>, Part<'a>) {
        let (nb, nb8, gw) = (n / QK, n / QK8, self.gw);
        let groups = rows.div_ceil(gw);
        debug_assert!(last || rows % gw == 0);
        fn cut<T>(v: &mut [T], at: usize) -> (&mut [T], &mut [T]) {
            v.split_at_mut(at.min(v.len()))
        }
        let (q, q_) = cut(self.q, rows * n);
        let (d, d_) = cut(self.d, rows * nb);
        let (sum, sum_) = cut(self.sum, rows * nb);
        let (s16, s16_) = cut(self.s16, rows * 2 * nb);
        let nbs = block_slots(nb, gw);
        let (qt, qt_) = cut(self.qt, groups * nbs * 16 * gw);
        let (dt, dt_) = cut(self.dt, groups * nbs * gw);
        let (st, st_) = cut(self.st, groups * nbs * gw);
        let (s16t, s16t_) = cut(self.s16t, groups * nbs * 2 * gw);
        let (q8, q8_) = cut(self.q8, rows * n);
        let (d8, d8_) = cut(self.d8, rows * nb8);
        let (bs8, bs8_) = cut(self.bs8, rows * 16 * nb8);
        let (q8t, q8t_) = cut(self.q8t, groups * nb8 * 64 * gw);
        let (d8t, d8t_) = cut(self.d8t, groups * nb8 * gw);
        let (b8t, b8t_) = cut(self.b8t, groups * nb8 * 8 * gw);
        let r0 = self.r0;
        (
            Part {
                r0,
                rows,
                gw,
                q,
                d,
                sum,
                s16,
                qt,
                dt,
                st,
                s16t,
                q8,
                d8,
                bs8,
                q8t,
                d8t,
                b8t,
            },
            Part {
                r0: r0 + rows,
                rows: 0,
                gw,
                q: q_,
                d: d_,
                sum: sum_,
                s16: s16_,
                qt: qt_,
                dt: dt_,
                st: st_,
                s16t: s16t_,
                q8: q8_,
                d8: d8_,
                bs8: bs8_,
                q8t: q8t_,
                d8t: d8t_,
                b8t: b8t_,
            },
        )
    }

    /// Quantize this part's rows `x` (`rows` rows of `n`) to every form that has buffers,
    /// and regroup them where the regrouped buffers exist.
    fn fill(&mut self, x: &[f32], n: usize) {
        let (nb, nb8, gw) = (n / QK, n / QK8, self.gw);
        if !self.q.is_empty() {
            q16_blocks(x, self.q, self.d, self.sum, self.s16);
            if !self.qt.is_empty() {
                // pair j of a block is the 32-bit word j of its 16-bit values (little-endian)
                let q = &*self.q;
                let nbs = block_slots(nb, gw);
                let slot = |b: usize| block_slot(b, nb, gw);
                regroup_words(self.rows, gw, nb, nbs, slot, 16, self.qt, |t, b| {
                    q[t * n + b * QK..t * n + (b + 1) * QK].as_ptr() as *const i32
                });
                for t in 0..self.rows {
                    let (g, l) = (t / gw, t % gw);
                    for b in 0..nb {
                        let sb = g * nbs + slot(b);
                        self.dt[sb * gw + l] = self.d[t * nb + b];
                        self.st[sb * gw + l] = self.sum[t * nb + b];
                        for h in 0..2 {
                            self.s16t[sb * 2 * gw + gw * h + l] = self.s16[t * 2 * nb + 2 * b + h];
                        }
                    }
                }
            }
        }
        if !self.q8.is_empty() {
            q8_blocks(x, self.q8, self.d8, self.bs8);
            if !self.q8t.is_empty() {
                // word k of a block is its values 4k..4k + 4 (little-endian)
                let q8 = &*self.q8;
                regroup_words(
                    self.rows,
                    gw,
                    nb8,
                    nb8,
                    |b| b,
                    64,
                    self.q8t,
                    |t, b| q8[t * n + b * QK8..t * n + (b + 1) * QK8].as_ptr() as *const i32,
                );
                for t in 0..self.rows {
                    let (g, l) = (t / gw, t % gw);
                    for b in 0..nb8 {
                        self.d8t[(g * nb8 + b) * gw + l] = self.d8[t * nb8 + b];
                        let bs = &self.bs8[(t * nb8 + b) * 16..(t * nb8 + b + 1) * 16];
                        for j in 0..8 {
                            self.b8t[(g * nb8 + b) * 8 * gw + j * gw + l] =
                                (bs[2 * j] as u16 as u32 | (bs[2 * j + 1] as u16 as u32) << 16)
                                    as i32;
                        }
                    }
                }
            }
        }
    }
}

/// Regroup `rows` rows of `nb` blocks of `nw` 32-bit words each (`word(t, b)`: row `t`'s
/// block `b`, readable for `nw` words) into `dst`, laid out `[rows / gw, nbs, nw, gw]`: word
/// `k` of block `b` of row `g * gw + l` at `((g * nbs + slot(b)) * nw + k) * gw + l`, the rows
/// past `rows` in the last group zero. `gw` is 8 or 16, `nw` a multiple of 16.
#[allow(clippy::too_many_arguments)]
fn regroup_words(
    rows: usize,
    gw: usize,
    nb: usize,
    nbs: usize,
    slot: impl Fn(usize) -> usize,
    nw: usize,
    dst: &mut [i32],
    word: impl Fn(usize, usize) -> *const i32,
) {
    let groups = rows.div_ceil(gw);
    assert!(dst.len() >= groups * nbs * nw * gw && nw % 16 == 0 && (gw == 8 || gw == 16));
    for g in 0..groups {
        for b in 0..nb {
            let sb = g * nbs + slot(b);
            assert!(slot(b) < nbs);
            let out = &mut dst[sb * nw * gw..(sb + 1) * nw * gw];
            let src = |l: usize| {
                let t = g * gw + l;
                if t < rows {
                    word(t, b)
                } else {
                    std::ptr::null()
                }
            };
            #[cfg(target_arch = "x86_64")]
            if gw == 16 && crate::has_avx2() && crate::x86::vnni() {
                for c in (0..nw).step_by(16) {
                    let s: [*const i32; 16] = std::array::from_fn(|l| {
                        let p = src(l);
                        if p.is_null() { p } else { p.wrapping_add(c) }
                    });
                    // SAFETY: AVX-512 is there (vnni); each non-null row holds nw words from
                    // `c`, and `out` holds the 16 x 16 words written at `16 c`.
                    unsafe { crate::x86::avx512::transpose_words16(s, out[16 * c..].as_mut_ptr()) };
                }
                continue;
            }
            #[cfg(target_arch = "x86_64")]
            if gw == 8 && crate::has_avx2() {
                for c in (0..nw).step_by(8) {
                    let s: [*const i32; 8] = std::array::from_fn(|l| {
                        let p = src(l);
                        if p.is_null() { p } else { p.wrapping_add(c) }
                    });
                    // SAFETY: the CPU has AVX2; as above for 8 x 8 words at `8 c`.
                    unsafe { crate::x86::transpose_words8(s, out[8 * c..].as_mut_ptr()) };
                }
                continue;
            }
            for l in 0..gw {
                let p = src(l);
                for k in 0..nw {
                    // SAFETY: a non-null row holds nw words (of 16- or 8-bit values, so
                    // read unaligned).
                    out[k * gw + l] = if p.is_null() {
                        0
                    } else {
                        unsafe { p.add(k).read_unaligned() }
                    };
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    /// The dispatched quantizer (AVX2 where the CPU has it) gives the portable one's bits.
    #[test]
    fn q16_blocks_simd_equals_portable() {
        let mut seed = 7u64;
        let mut rnd = || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        };
        // blocks of several magnitudes, one all zero, one with an outlier; 43 blocks: five
        // groups of eight and a tail of three for the AVX2 version
        let mut x: Vec<f32> = (0..32 * 43)
            .map(|i| rnd() * 10f32.powi((i / 32) as i32 % 7 - 3))
            .collect();
        x[64..96].fill(0.0);
        x[100] = 3000.0;
        let nb = x.len() / 32;
        let run = |f: &dyn Fn(&[f32], &mut [i16], &mut [f32], &mut [f32], &mut [i32])| {
            let (mut q, mut d, mut s, mut h) = (
                vec![0i16; x.len()],
                vec![0f32; nb],
                vec![0f32; nb],
                vec![0i32; 2 * nb],
            );
            f(&x, &mut q, &mut d, &mut s, &mut h);
            (
                q,
                d.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                s.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                h,
            )
        };
        assert_eq!(run(&super::q16_blocks), run(&super::q16_blocks_impl));
        // the 8-bit form, per block of 256
        let x8 = &x[..256 * 5];
        let run8 = |f: &dyn Fn(&[f32], &mut [i8], &mut [f32], &mut [i16])| {
            let (mut q, mut d, mut h) = (vec![0i8; x8.len()], vec![0f32; 5], vec![0i16; 80]);
            f(x8, &mut q, &mut d, &mut h);
            (q, d.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), h)
        };
        assert_eq!(run8(&super::q8_blocks), run8(&super::q8_blocks_impl));
    }
}
