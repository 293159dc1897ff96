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
//! one `vpmaddwd`.
use crate::kquants::{BlockQ4K, BlockQ6K, scales_mins_k4};
use crate::legacy::{BlockQ4_0, BlockQ4_1, BlockQ5_0, BlockQ5_1, BlockQ8_0};
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
    /// `q` regrouped for the batched kernels (empty below [`T8_MIN`] rows): for each group of
    /// 8 rows (the last padded with zeros), block of 32 and pair `j` of the block, the 8 rows'
    /// values `2j` and `2j + 1` as one 32-bit word each, `[n_rows / 8, n / 32, 16, 8]`.
    pub qt: Vec<i32>,
    /// `d` regrouped the same way, `[n_rows / 8, n / 32, 8]`.
    pub dt: Vec<f32>,
    /// `sum` regrouped the same way, `[n_rows / 8, n / 32, 8]`.
    pub st: Vec<f32>,
    /// `q8` regrouped (when it exists and from [`T8_MIN`] rows on): per group of 8 rows,
    /// block of 256 and group `k` of 4 values, the 8 rows' values `4k..4k + 4` as one 32-bit
    /// word each, `[n_rows / 8, n / 256, 64, 8]`.
    pub q8t: Vec<i32>,
    /// `d8` regrouped, `[n_rows / 8, n / 256, 8]`.
    pub d8t: Vec<f32>,
    /// `bs8` regrouped: per block of 256 and sub-block `j` of 32, the 8 rows' two sums of 16
    /// as one 32-bit word each, `[n_rows / 8, n / 256, 8, 8]`.
    pub b8t: Vec<i32>,
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
        assert!(n % QK == 0 && x.len() % n == 0);
        self.n = n;
        self.rows = x.len() / n;
        if k8 {
            self.quantize_k8(x, n);
        } else {
            self.q8.clear();
            self.d8.clear();
            self.bs8.clear();
        }
        self.regroup_k8();
        if !q16 {
            self.q.clear();
            self.d.clear();
            self.sum.clear();
            self.regroup();
            return;
        }
        self.q.resize(x.len(), 0);
        self.d.resize(x.len() / QK, 0.0);
        self.sum.resize(x.len() / QK, 0.0);
        for (b, (xs, qs)) in x
            .chunks_exact(QK)
            .zip(self.q.chunks_exact_mut(QK))
            .enumerate()
        {
            let (d, id) = block_scale(xs, 32767.0);
            let mut s = 0f32;
            for (q, &v) in qs.iter_mut().zip(xs) {
                *q = round_even(v * id) as i16;
                s += v;
            }
            self.d[b] = d;
            self.sum[b] = s;
        }
        self.regroup();
    }

    /// Build `q8t`, `d8t` and `b8t` from `q8`, `d8` and `bs8`.
    fn regroup_k8(&mut self) {
        let (n, rows) = (self.n, self.rows);
        self.q8t.clear();
        self.d8t.clear();
        self.b8t.clear();
        if rows < T8_MIN || self.q8.is_empty() {
            return;
        }
        let (nb, groups) = (n / QK8, rows.div_ceil(8));
        self.q8t.resize(groups * nb * 512, 0);
        self.d8t.resize(groups * nb * 8, 0.0);
        self.b8t.resize(groups * nb * 64, 0);
        for t in 0..rows {
            let (g, l) = (t / 8, t % 8);
            for b in 0..nb {
                let q = &self.q8[t * n + b * QK8..t * n + (b + 1) * QK8];
                let base = (g * nb + b) * 512 + l;
                for (k, w) in q.chunks_exact(4).enumerate() {
                    self.q8t[base + 8 * k] =
                        i32::from_le_bytes([w[0] as u8, w[1] as u8, w[2] as u8, w[3] as u8]);
                }
                self.d8t[(g * nb + b) * 8 + l] = self.d8[t * nb + b];
                let bs = &self.bs8[(t * nb + b) * 16..(t * nb + b + 1) * 16];
                for j in 0..8 {
                    self.b8t[(g * nb + b) * 64 + j * 8 + l] =
                        (bs[2 * j] as u16 as u32 | (bs[2 * j + 1] as u16 as u32) << 16) as i32;
                }
            }
        }
    }

    /// Build `qt`, `dt` and `st` from `q`, `d` and `sum`.
    fn regroup(&mut self) {
        let (n, rows) = (self.n, self.rows);
        if rows < T8_MIN || self.q.is_empty() {
            self.qt.clear();
            self.dt.clear();
            self.st.clear();
            return;
        }
        let (nb, groups) = (n / QK, rows.div_ceil(8));
        self.qt.clear();
        self.qt.resize(groups * nb * 128, 0);
        self.dt.clear();
        self.dt.resize(groups * nb * 8, 0.0);
        self.st.clear();
        self.st.resize(groups * nb * 8, 0.0);
        for t in 0..rows {
            let (g, l) = (t / 8, t % 8);
            let q = &self.q[t * n..(t + 1) * n];
            for b in 0..nb {
                let base = (g * nb + b) * 128 + l;
                for j in 0..16 {
                    let (lo, hi) = (q[b * QK + 2 * j], q[b * QK + 2 * j + 1]);
                    self.qt[base + 8 * j] = (lo as u16 as u32 | (hi as u16 as u32) << 16) as i32;
                }
                self.dt[(g * nb + b) * 8 + l] = self.d[t * nb + b];
                self.st[(g * nb + b) * 8 + l] = self.sum[t * nb + b];
            }
        }
    }

    /// The 8-bit form: per block of 256, `q = round(x / d)` with `d = max|x| / 127`.
    fn quantize_k8(&mut self, x: &[f32], n: usize) {
        if n % QK8 != 0 {
            self.q8.clear();
            self.d8.clear();
            self.bs8.clear();
            return;
        }
        self.q8.resize(x.len(), 0);
        self.d8.resize(x.len() / QK8, 0.0);
        self.bs8.resize(x.len() / 16, 0);
        for (b, (xs, qs)) in x
            .chunks_exact(QK8)
            .zip(self.q8.chunks_exact_mut(QK8))
            .enumerate()
        {
            let (d, id) = block_scale(xs, 127.0);
            for (q, &v) in qs.iter_mut().zip(xs) {
                *q = round_even(v * id).clamp(-127.0, 127.0) as i8;
            }
            self.d8[b] = d;
            for (g, sum) in qs.chunks_exact(16).zip(&mut self.bs8[b * 16..(b + 1) * 16]) {
                *sum = g.iter().map(|&q| q as i16).sum();
            }
        }
    }

    /// Row `t`.
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
fn round_even(v: f32) -> f32 {
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
    )
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
