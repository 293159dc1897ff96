// The kernels' body, compiled twice (see `x86` in lib.rs): once for AVX2 and once with
// AVX-512 VNNI, where `VNNI` selects the fused multiply-add instructions. The generic 16-bit K
// kernels (x86_k16.rs) and the packed-layout kernels (x86_packed.rs) are included beside it
// into the same modules.

use crate::acts::{ActsRow, QK};
use crate::as_blocks;
use crate::kquants::{BlockQ4K, BlockQ6K, scale_min_k4, scales_mins_k4};
use crate::legacy::{BlockQ4_0, BlockQ4_1, BlockQ8_0};
use std::arch::x86_64::*;

/// IEEE half to f32 with the F16C instruction.
#[inline(always)]
unsafe fn f16le(b: [u8; 2]) -> f32 {
    _mm_cvtss_f32(_mm_cvtph_ps(
        _mm_cvtsi32_si128(u16::from_le_bytes(b) as i32),
    ))
}

#[inline(always)]
unsafe fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    _mm_cvtss_f32(s)
}

/// 8 unsigned bytes (the low 8 of `v`) as 8 floats.
#[inline(always)]
unsafe fn u8x8(v: __m128i) -> __m256 {
    _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(v))
}

/// Unpack 16 bytes of nibbles into 32 floats: low nibbles are elements 0..16, high 16..32.
#[inline(always)]
unsafe fn nibbles(p: *const u8) -> [__m256; 4] {
    let v = _mm_loadu_si128(p as *const __m128i);
    let m4 = _mm_set1_epi8(0x0F);
    let lo = _mm_and_si128(v, m4);
    let hi = _mm_and_si128(_mm_srli_epi16(v, 4), m4);
    [
        u8x8(lo),
        u8x8(_mm_srli_si128(lo, 8)),
        u8x8(hi),
        u8x8(_mm_srli_si128(hi, 8)),
    ]
}

#[inline(always)]
unsafe fn dot32(q: &[__m256; 4], x: *const f32) -> (__m256, __m256) {
    let xs = [
        _mm256_loadu_ps(x),
        _mm256_loadu_ps(x.add(8)),
        _mm256_loadu_ps(x.add(16)),
        _mm256_loadu_ps(x.add(24)),
    ];
    let mut s = _mm256_mul_ps(q[0], xs[0]);
    s = _mm256_fmadd_ps(q[1], xs[1], s);
    s = _mm256_fmadd_ps(q[2], xs[2], s);
    s = _mm256_fmadd_ps(q[3], xs[3], s);
    let sx = _mm256_add_ps(_mm256_add_ps(xs[0], xs[1]), _mm256_add_ps(xs[2], xs[3]));
    (s, sx)
}

// Written for N activation rows (one weight-block decode for all, lane k doing exactly what
// N = 1 does); the f32 path only needs N = 1, since these types take the integer kernels in
// batched matmuls.

#[inline(always)]
unsafe fn q4_0_n<const N: usize>(src: &[u8], x: [&[f32]; N]) -> [f32; N] {
    let mut acc = [_mm256_setzero_ps(); N];
    let eight = _mm256_set1_ps(8.0);
    for (i, b) in as_blocks::<BlockQ4_0>(src).iter().enumerate() {
        let q = nibbles(b.qs.as_ptr());
        let d = _mm256_set1_ps(f16le(b.d));
        for k in 0..N {
            let (s, sx) = dot32(&q, x[k][i * 32..i * 32 + 32].as_ptr());
            acc[k] = _mm256_fmadd_ps(d, _mm256_fnmadd_ps(eight, sx, s), acc[k]);
        }
    }
    amap(acc, |a| hsum(a))
}

#[inline(always)]
unsafe fn q4_1_n<const N: usize>(src: &[u8], x: [&[f32]; N]) -> [f32; N] {
    let mut acc = [_mm256_setzero_ps(); N];
    for (i, b) in as_blocks::<BlockQ4_1>(src).iter().enumerate() {
        let q = nibbles(b.qs.as_ptr());
        let (d, m) = (_mm256_set1_ps(f16le(b.d)), _mm256_set1_ps(f16le(b.m)));
        for k in 0..N {
            let (s, sx) = dot32(&q, x[k][i * 32..i * 32 + 32].as_ptr());
            acc[k] = _mm256_fmadd_ps(d, s, acc[k]);
            acc[k] = _mm256_fmadd_ps(m, sx, acc[k]);
        }
    }
    amap(acc, |a| hsum(a))
}

#[inline(always)]
unsafe fn q8_0_n<const N: usize>(src: &[u8], x: [&[f32]; N]) -> [f32; N] {
    let mut acc = [_mm256_setzero_ps(); N];
    for (i, b) in as_blocks::<BlockQ8_0>(src).iter().enumerate() {
        let p = b.qs.as_ptr();
        let q: [__m256; 4] = lanes_of(|k| {
            _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(
                p.add(8 * k) as *const __m128i
            )))
        });
        let d = _mm256_set1_ps(f16le(b.d));
        for k in 0..N {
            let (s, _) = dot32(&q, x[k][i * 32..i * 32 + 32].as_ptr());
            acc[k] = _mm256_fmadd_ps(d, s, acc[k]);
        }
    }
    amap(acc, |a| hsum(a))
}

macro_rules! kernels {
    ($($n1:ident, $inner:ident, $doc:expr;)*) => {$(
        #[doc = $doc]
        #[target_feature(enable = "avx2,fma,f16c")]
        pub unsafe fn $n1(src: &[u8], x: &[f32]) -> f32 {
            $inner::<1>(src, [x])[0]
        }
    )*};
}

kernels! {
    dot_q4_0, q4_0_n, "Q4_0 row · x: per block d * (sum q*x - 8 * sum x).";
    dot_q4_1, q4_1_n, "Q4_1 row · x: per block d * sum q*x + m * sum x.";
    dot_q8_0, q8_0_n, "Q8_0 row · x.";
}

/// Q4_K row · x: per sub-block of 32, d*sc * sum q*x - dmin*m * sum x.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_q4_k(src: &[u8], x: &[f32]) -> f32 {
    let mut acc = _mm256_setzero_ps();
    for (b, xs) in as_blocks::<BlockQ4K>(src).iter().zip(x.chunks_exact(256)) {
        let (d, dmin) = (f16le(b.d), f16le(b.dmin));
        for c in 0..4 {
            // 32 bytes hold sub-blocks 2c (low nibbles) and 2c+1 (high nibbles)
            let v = _mm256_loadu_si256(b.qs.as_ptr().add(32 * c) as *const __m256i);
            let m4 = _mm256_set1_epi8(0x0F);
            let lo = _mm256_and_si256(v, m4);
            let hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), m4);
            for (s, q) in [lo, hi].into_iter().enumerate() {
                let (sc, m) = scale_min_k4(&b.scales, 2 * c + s);
                let q128 = [_mm256_castsi256_si128(q), _mm256_extracti128_si256(q, 1)];
                let qf = [
                    u8x8(q128[0]),
                    u8x8(_mm_srli_si128(q128[0], 8)),
                    u8x8(q128[1]),
                    u8x8(_mm_srli_si128(q128[1], 8)),
                ];
                let (dot, sx) = dot32(&qf, xs.as_ptr().add(c * 64 + s * 32));
                acc = _mm256_fmadd_ps(_mm256_set1_ps(d * sc as f32), dot, acc);
                acc = _mm256_fnmadd_ps(_mm256_set1_ps(dmin * m as f32), sx, acc);
            }
        }
    }
    hsum(acc)
}

/// Q6_K row · x: per sub-block of 16, d*scale * sum (q-32)*x.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_q6_k(src: &[u8], x: &[f32]) -> f32 {
    let mut acc = _mm256_setzero_ps();
    let mut q = [0i8; 256];
    for (b, xs) in as_blocks::<BlockQ6K>(src).iter().zip(x.chunks_exact(256)) {
        // Rebuild the 6-bit values (minus 32) as bytes, then dot 8 at a time.
        for h in 0..2 {
            for l in 0..32 {
                let ql0 = b.ql[h * 64 + l];
                let ql1 = b.ql[h * 64 + 32 + l];
                let qh = b.qh[h * 32 + l];
                let base = h * 128 + l;
                q[base] = (((ql0 & 0xF) | ((qh & 3) << 4)) as i8).wrapping_sub(32);
                q[base + 32] = (((ql1 & 0xF) | (((qh >> 2) & 3) << 4)) as i8).wrapping_sub(32);
                q[base + 64] = (((ql0 >> 4) | (((qh >> 4) & 3) << 4)) as i8).wrapping_sub(32);
                q[base + 96] = (((ql1 >> 4) | (((qh >> 6) & 3) << 4)) as i8).wrapping_sub(32);
            }
        }
        let d = f16le(b.d);
        for sb in 0..16 {
            let p = q.as_ptr().add(sb * 16);
            let f0 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(p as *const __m128i)));
            let f1 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(
                p.add(8) as *const __m128i
            )));
            let xp = xs.as_ptr().add(sb * 16);
            let s = _mm256_fmadd_ps(
                f1,
                _mm256_loadu_ps(xp.add(8)),
                _mm256_mul_ps(f0, _mm256_loadu_ps(xp)),
            );
            acc = _mm256_fmadd_ps(_mm256_set1_ps(d * b.scales[sb] as i8 as f32), s, acc);
        }
    }
    hsum(acc)
}

// ---- integer kernels against 16-bit quantized activations (see acts.rs) ----

/// 16 unsigned nibbles' worth of bytes (low or high) as 16 i16.
#[inline(always)]
unsafe fn q4_halves(p: *const u8, off: i16) -> (__m256i, __m256i) {
    let v = _mm_loadu_si128(p as *const __m128i);
    let m4 = _mm_set1_epi8(0x0F);
    let lo = _mm256_cvtepu8_epi16(_mm_and_si128(v, m4));
    let hi = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(v, 4), m4));
    let o = _mm256_set1_epi16(off);
    (_mm256_sub_epi16(lo, o), _mm256_sub_epi16(hi, o))
}

// The blocks of 32 with an f16 scale (and Q4_1's and Q5_1's f16 min): every kernel below
// forms each block's dot with the activations as an exact i32, and accumulates, for each
// (row, token), block i into partial sum i % 4: `acc = fma(isum, d * dx, acc)`, or with a
// min `acc += fma(m, sum_x, isum * (d * dx))` (one add in the dependency chain), and finally adds the four partial sums as
// (a0 + a2) + (a1 + a3). That is what every kernel computes (one
// row with blocks in lanes, 8 tokens in lanes) and what the scalar reference computes, so a
// result never depends on which kernel, or which batch, produced it.

/// Kinds of 32-element blocks.
const Q40: u8 = 0;
const Q41: u8 = 1;
const Q80: u8 = 2;
const Q50: u8 = 3;
const Q51: u8 = 4;

/// Bytes per block.
const fn legacy_bs(kind: u8) -> usize {
    match kind {
        Q40 => 18,
        Q41 => 20,
        Q80 => 34,
        Q50 => 22,
        _ => 24,
    }
}

/// Whether the block has a min (at byte 2).
const fn has_min(kind: u8) -> bool {
    kind == Q41 || kind == Q51
}

/// A block's 32 weights as i16: elements 0..16 and 16..32 (offsets applied).
#[inline(always)]
unsafe fn legacy_w<const KIND: u8>(b: *const u8) -> (__m256i, __m256i) {
    match KIND {
        Q40 => q4_halves(b.add(2), 8),
        Q41 => q4_halves(b.add(4), 0),
        Q80 => (
            _mm256_cvtepi8_epi16(_mm_loadu_si128(b.add(2) as *const __m128i)),
            _mm256_cvtepi8_epi16(_mm_loadu_si128(b.add(18) as *const __m128i)),
        ),
        _ => {
            // five bits: nibbles plus bit k of the 32-bit qh for element k
            let hoff = if KIND == Q51 { 4 } else { 2 };
            let qh = (b.add(hoff) as *const u32).read_unaligned();
            let v = _mm_loadu_si128(b.add(hoff + 4) as *const __m128i);
            let m4 = _mm_set1_epi8(0x0F);
            let lo = _mm_and_si128(v, m4);
            let hi = _mm_and_si128(_mm_srli_epi16(v, 4), m4);
            let nib = _mm256_inserti128_si256(_mm256_castsi128_si256(lo), hi, 1);
            // byte k of the expansion holds byte k/8 of qh; bit k%8 selects the element's bit
            let shuf = _mm256_setr_epi8(
                0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3,
                3, 3, 3, 3,
            );
            let bits = _mm256_set1_epi64x(0x8040201008040201u64 as i64);
            let e = _mm256_shuffle_epi8(_mm256_set1_epi32(qh as i32), shuf);
            let fifth = _mm256_and_si256(
                _mm256_cmpeq_epi8(_mm256_and_si256(e, bits), bits),
                _mm256_set1_epi8(0x10),
            );
            let off = _mm256_set1_epi8(if KIND == Q51 { 0 } else { 16 });
            let q = _mm256_sub_epi8(_mm256_or_si256(nib, fifth), off);
            (
                _mm256_cvtepi8_epi16(_mm256_castsi256_si128(q)),
                _mm256_cvtepi8_epi16(_mm256_extracti128_si256(q, 1)),
            )
        }
    }
}

#[inline(always)]
unsafe fn f16_at(b: *const u8) -> f32 {
    f16le([*b, *b.add(1)])
}

/// One row against `N` activation rows.
#[inline(always)]
unsafe fn legacy_row<const N: usize, const KIND: u8>(src: &[u8], x: [ActsRow; N]) -> [f32; N] {
    legacy_rn::<1, N, KIND>([src], x)[0]
}

/// `R` rows (of one length) against `N` activation rows: the exact sums of four blocks at a
/// time in the lanes of a 128-bit register, which are the four partial sums. Rows side by side
/// overlap their accumulation chains.
#[inline(always)]
unsafe fn legacy_rn<const R: usize, const N: usize, const KIND: u8>(
    srcs: [&[u8]; R],
    x: [ActsRow; N],
) -> [[f32; N]; R] {
    let bs = legacy_bs(KIND);
    let nb = srcs[0].len() / bs;
    let mut acc = [[_mm_setzero_ps(); N]; R];
    let mut i0 = 0;
    while i0 < nb {
        let n = (nb - i0).min(4);
        for r in 0..R {
            let b0 = srcs[r].as_ptr().add(i0 * bs);
            let mut iv = [[_mm256_setzero_si256(); 4]; N];
            for j in 0..4 {
                if j < n {
                    let w = legacy_w::<KIND>(b0.add(j * bs));
                    for k in 0..N {
                        let xp = x[k].q.as_ptr().add((i0 + j) * QK);
                        iv[k][j] = dpwd(
                            _mm256_madd_epi16(w.0, _mm256_loadu_si256(xp as *const __m256i)),
                            w.1,
                            _mm256_loadu_si256(xp.add(16) as *const __m256i),
                        );
                    }
                }
            }
            // scales (and mins) of the n blocks, zero in the lanes past the row's end: the
            // first 4 bytes of each block (d, and the min where there is one) inserted as
            // 32-bit lanes, converted together, then split into scales and mins
            let (dv, mv) = {
                let r = |j: usize| {
                    if j < n {
                        (b0.add(j * bs) as *const i32).read_unaligned()
                    } else {
                        0
                    }
                };
                let v = _mm_insert_epi32(_mm_cvtsi32_si128(r(0)), r(1), 1);
                let v = _mm_insert_epi32(_mm_insert_epi32(v, r(2), 2), r(3), 3);
                let f = _mm256_permutevar8x32_ps(
                    _mm256_cvtph_ps(v),
                    _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7),
                );
                (
                    _mm256_castps256_ps128(f),
                    if has_min(KIND) {
                        _mm256_extractf128_ps(f, 1)
                    } else {
                        _mm_setzero_ps()
                    },
                )
            };
            for k in 0..N {
                let (xd, xs) = if n == 4 {
                    (
                        _mm_loadu_ps(x[k].d.as_ptr().add(i0)),
                        if has_min(KIND) {
                            _mm_loadu_ps(x[k].sum.as_ptr().add(i0))
                        } else {
                            _mm_setzero_ps()
                        },
                    )
                } else {
                    let mut d = [0f32; 4];
                    let mut s = [0f32; 4];
                    d[..n].copy_from_slice(&x[k].d[i0..i0 + n]);
                    if has_min(KIND) {
                        s[..n].copy_from_slice(&x[k].sum[i0..i0 + n]);
                    }
                    (_mm_loadu_ps(d.as_ptr()), _mm_loadu_ps(s.as_ptr()))
                };
                // lane j: block i0 + j's exact sum
                let h = _mm256_hadd_epi32(
                    _mm256_hadd_epi32(iv[k][0], iv[k][1]),
                    _mm256_hadd_epi32(iv[k][2], iv[k][3]),
                );
                let isum = _mm_cvtepi32_ps(_mm_add_epi32(
                    _mm256_castsi256_si128(h),
                    _mm256_extracti128_si256(h, 1),
                ));
                if has_min(KIND) {
                    let t = _mm_fmadd_ps(mv, xs, _mm_mul_ps(isum, _mm_mul_ps(dv, xd)));
                    acc[r][k] = _mm_add_ps(acc[r][k], t);
                } else {
                    acc[r][k] = _mm_fmadd_ps(isum, _mm_mul_ps(dv, xd), acc[r][k]);
                }
            }
        }
        i0 += n;
    }
    amap(acc, |ar| {
        amap(ar, |a| {
            let s = _mm_add_ps(a, _mm_movehl_ps(a, a));
            _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps(s, s, 1)))
        })
    })
}

/// Lane k: the sum of the eight lanes of `v[k]` (exact).
#[inline(always)]
unsafe fn reduce8(v: &[__m256i; 8]) -> __m256i {
    let a = _mm256_hadd_epi32(v[0], v[1]);
    let b = _mm256_hadd_epi32(v[2], v[3]);
    let c = _mm256_hadd_epi32(v[4], v[5]);
    let d = _mm256_hadd_epi32(v[6], v[7]);
    let ab = _mm256_hadd_epi32(a, b);
    let cd = _mm256_hadd_epi32(c, d);
    _mm256_add_epi32(
        _mm256_permute2x128_si256(ab, cd, 0x20),
        _mm256_permute2x128_si256(ab, cd, 0x31),
    )
}

/// `R` rows against `NG` groups of 8 activation rows from group `g0` of the regrouped form
/// (`QuantizedActs::qt`); lane l of result `[r][g]` is row r against token `8 (g0 + g) + l`.
/// Each weight pair is broadcast once for all the groups, and each load of activations serves
/// all the rows. Every (row, token) gets the one-row arithmetic: exact block sums, then the
/// same float steps.
#[inline(always)]
unsafe fn legacy_t8<const KIND: u8, const R: usize, const NG: usize>(
    src: [&[u8]; R],
    a: &crate::acts::QuantizedActs,
    g0: usize,
) -> [[__m256; NG]; R] {
    let bs = legacy_bs(KIND);
    // blocks in this row; the regrouped activations are laid out by theirs
    let (nb, na) = (src[0].len() / bs, a.n / QK);
    // partial sums per (row, group, block % 4)
    let mut acc = [[[_mm256_setzero_ps(); 4]; NG]; R];
    let mut wbuf = [[0i32; 16]; R];
    let (qt, dt, st) = (a.qt.as_ptr(), a.dt.as_ptr(), a.st.as_ptr());
    for i0 in (0..nb).step_by(4) {
        for p in 0..4 {
            let i = i0 + p;
            if i >= nb {
                break;
            }
            for (r, wb) in wbuf.iter_mut().enumerate() {
                let w = legacy_w::<KIND>(src[r].as_ptr().add(i * bs));
                _mm256_storeu_si256(wb.as_mut_ptr() as *mut __m256i, w.0);
                _mm256_storeu_si256(wb.as_mut_ptr().add(8) as *mut __m256i, w.1);
            }
            // through an opaque pointer, so that each pair is broadcast straight from memory
            // (a load) rather than shuffled out of a register (ALU work)
            let wp = std::hint::black_box(wbuf.as_ptr()) as *const i32;
            let mut is = [[_mm256_setzero_si256(); NG]; R];
            for j in 0..16 {
                let av: [__m256i; NG] = lanes_of(|g| {
                    _mm256_loadu_si256(qt.add(((g0 + g) * na + i) * 128 + j * 8) as *const __m256i)
                });
                for r in 0..R {
                    let wv = _mm256_set1_epi32(*wp.add(16 * r + j));
                    for g in 0..NG {
                        is[r][g] = dpwd(is[r][g], wv, av[g]);
                    }
                }
            }
            for r in 0..R {
                let b = src[r].as_ptr().add(i * bs);
                let d = _mm256_set1_ps(f16_at(b));
                for g in 0..NG {
                    let o = ((g0 + g) * na + i) * 8;
                    let s = _mm256_mul_ps(d, _mm256_loadu_ps(dt.add(o)));
                    let isf = _mm256_cvtepi32_ps(is[r][g]);
                    if has_min(KIND) {
                        let t = _mm256_fmadd_ps(
                            _mm256_set1_ps(f16_at(b.add(2))),
                            _mm256_loadu_ps(st.add(o)),
                            _mm256_mul_ps(isf, s),
                        );
                        acc[r][g][p] = _mm256_add_ps(acc[r][g][p], t);
                    } else {
                        acc[r][g][p] = _mm256_fmadd_ps(isf, s, acc[r][g][p]);
                    }
                }
            }
        }
    }
    fold4(&acc)
}

/// Per (row, group): the four partial sums added as `(p0 + p2) + (p1 + p3)`. A loop, not
/// `map` with a closure: the closure would not be inlined into the AVX2 context.
#[inline(always)]
unsafe fn fold4<const R: usize, const NG: usize>(acc: &[[[__m256; 4]; NG]; R]) -> [[__m256; NG]; R] {
    let mut out = [[_mm256_setzero_ps(); NG]; R];
    for r in 0..R {
        for g in 0..NG {
            let p = &acc[r][g];
            out[r][g] = _mm256_add_ps(_mm256_add_ps(p[0], p[2]), _mm256_add_ps(p[1], p[3]));
        }
    }
    out
}

/// Rows `rows` against `n_tok` tokens with a kernel taking 8 tokens in lanes, `RB` (4) rows
/// at a time: `$k22(rows, g0)` does `RB` rows against token groups g0 and g0 + 1, `$k21`
/// `RB` rows against group g0, `$k12(row, g0)` and `$k11` one row (the rows left over). Cache blocks of 16 weight rows x 16
/// tokens: the block's activations stay in L1 while its rows pass over them.
macro_rules! t8_rows {
    ($bytes:expr, $rb:expr, $rows:expr, $n_tok:expr, $put:expr,
     $k22:expr, $k21:expr, $k12:expr, $k11:expr) => {{
        const ROWS: usize = 16;
        const RB: usize = 4;
        let (bytes, rb, n_tok) = ($bytes, $rb, $n_tok);
        let put = $put;
        let groups = n_tok.div_ceil(8);
        // a macro, not a closure: a closure would not inherit the caller's AVX2 context
        macro_rules! emit {
            ($r:expr, $g:expr, $v:expr) => {{
                let (r, g) = ($r, $g);
                let mut o = [0f32; 8];
                _mm256_storeu_ps(o.as_mut_ptr(), $v);
                for (l, &v) in o.iter().enumerate() {
                    let t = 8 * g + l;
                    if t < n_tok {
                        put.put(t, r, v);
                    }
                }
            }};
        }
        let rows: std::ops::Range<usize> = $rows;
        let row = |r: usize| &bytes[r * rb..(r + 1) * rb];
        let mut r0 = rows.start;
        while r0 < rows.end {
            let r1 = (r0 + ROWS).min(rows.end);
            let mut g0 = 0;
            while g0 < groups {
                let ng = (groups - g0).min(2);
                let mut r = r0;
                while r + RB <= r1 {
                    let quad: [&[u8]; RB] = lanes_of(|k| row(r + k));
                    if ng == 2 {
                        let v: [[__m256; 2]; RB] = $k22(quad, g0);
                        for (k, [a0, a1]) in v.into_iter().enumerate() {
                            emit!(r + k, g0, a0);
                            emit!(r + k, g0 + 1, a1);
                        }
                    } else {
                        let v: [[__m256; 1]; RB] = $k21(quad, g0);
                        for (k, [a0]) in v.into_iter().enumerate() {
                            emit!(r + k, g0, a0);
                        }
                    }
                    r += RB;
                }
                while r < r1 {
                    if ng == 2 {
                        let [a0, a1] = $k12(row(r), g0);
                        emit!(r, g0, a0);
                        emit!(r, g0 + 1, a1);
                    } else {
                        emit!(r, g0, $k11(row(r), g0));
                    }
                    r += 1;
                }
                g0 += ng;
            }
            r0 = r1;
        }
    }};
}

/// Rows `rows` against the tokens of `xs` one token at a time, two rows side by side:
/// `$k2([row_a, row_b], x)` gives both rows' values, `$k1(row, x)` the last odd row's.
macro_rules! pair_rows {
    ($bytes:expr, $rb:expr, $rows:expr, $xs:expr, $n_tok:expr, $put:expr, $k2:expr, $k1:expr) => {{
        let (bytes, rb, rows, xs, n_tok): (
            &[u8],
            usize,
            std::ops::Range<usize>,
            &[ActsRow],
            usize,
        ) = ($bytes, $rb, $rows, $xs, $n_tok);
        let put = $put;
        let mut r = rows.start;
        while r + 2 <= rows.end {
            let pair = [
                &bytes[r * rb..(r + 1) * rb],
                &bytes[(r + 1) * rb..(r + 2) * rb],
            ];
            for (t, &x) in xs.iter().enumerate().take(n_tok) {
                let [va, vb] = $k2(pair, x);
                put.put(t, r, va);
                put.put(t, r + 1, vb);
            }
            r += 2;
        }
        if r < rows.end {
            let row = &bytes[r * rb..(r + 1) * rb];
            for (t, &x) in xs.iter().enumerate().take(n_tok) {
                put.put(t, r, $k1(row, x));
            }
        }
    }};
}

/// Rows `rows` against all `n_tok` activation rows for a 32-element block type: 8 tokens in
/// lanes when the regrouped activations exist, else one row and token at a time.
#[inline(always)]
unsafe fn legacy_rows<const KIND: u8>(
    bytes: &[u8],
    rb: usize,
    rows: std::ops::Range<usize>,
    acts: &crate::acts::QuantizedActs,
    xs: &[ActsRow],
    n_tok: usize,
    put: &mut impl crate::Sink,
) {
    if !acts.qt.is_empty() && acts.gw == 8 {
        t8_rows!(
            bytes,
            rb,
            rows,
            n_tok,
            put,
            |rs, g0| legacy_t8::<KIND, 4, 2>(rs, acts, g0),
            |rs, g0| legacy_t8::<KIND, 4, 1>(rs, acts, g0),
            |row, g0| legacy_t8::<KIND, 1, 2>([row], acts, g0)[0],
            |row, g0| legacy_t8::<KIND, 1, 1>([row], acts, g0)[0][0]
        );
        return;
    }
    pair_rows!(
        bytes,
        rb,
        rows,
        xs,
        n_tok,
        put,
        |pair: [&[u8]; 2], x: ActsRow| {
            let [[va], [vb]] = legacy_rn::<2, 1, KIND>(pair, [x]);
            [va, vb]
        },
        |row, x| legacy_row::<1, KIND>(row, [x])[0]
    );
}

/// Q4_K, `R` rows against `NG` groups of 8 tokens in lanes (`QuantizedActs::q8t`): each
/// 32-bit word of 4 nibbles is broadcast and `maddubs`-multiplied by 8 tokens' 4 activations;
/// a sub-block's 8 such products add up in i16 (at most 8 * 2 * 15 * 127 = 30480), are
/// weighed by its scale with `madd`, and the super-block's sums and mins stay exact in i32.
/// With VNNI, `vpdpbusd` forms the sub-block's sum in i32 and `vpmulld` weighs it: the same
/// integers.
/// The float step per super-block is the one-row kernel's, lane by lane.
#[inline(always)]
unsafe fn q4_k_t8<const R: usize, const NG: usize>(
    src: [&[u8]; R],
    a: &crate::acts::QuantizedActs,
    g0: usize,
) -> [[__m256; NG]; R] {
    let na = a.n / 256;
    let mut acc = [[_mm256_setzero_ps(); NG]; R];
    let mut wbuf = [[_mm256_setzero_si256(); 8]; R];
    let m4 = _mm256_set1_epi8(0x0F);
    let (q8t, d8t, b8t) = (a.q8t.as_ptr(), a.d8t.as_ptr(), a.b8t.as_ptr());
    let nb = src[0].len() / std::mem::size_of::<BlockQ4K>();
    for i in 0..nb {
        let blk: [&BlockQ4K; R] = lanes_of(|r| &as_blocks::<BlockQ4K>(src[r])[i]);
        let scm: [([u8; 8], [u8; 8]); R] = lanes_of(|r| scales_mins_k4(&blk[r].scales));
        // the 256 nibbles as bytes in element order: sub-block 2c low, 2c+1 high nibbles
        for (r, wb) in wbuf.iter_mut().enumerate() {
            for c in 0..4 {
                let v = _mm256_loadu_si256(blk[r].qs.as_ptr().add(c * 32) as *const __m256i);
                wb[2 * c] = _mm256_and_si256(v, m4);
                wb[2 * c + 1] = _mm256_and_si256(_mm256_srli_epi16(v, 4), m4);
            }
        }
        // broadcast from memory through an opaque pointer (see legacy_t8)
        let wp = std::hint::black_box(wbuf.as_ptr()) as *const i32;
        let mut sumi = [[_mm256_setzero_si256(); NG]; R];
        for j in 0..8 {
            if VNNI {
                // exact 4-sums into i32 (vpdpbusd), then the sub-block's scale in i32
                let mut s32 = [[_mm256_setzero_si256(); NG]; R];
                for k in 0..8 {
                    let av: [__m256i; NG] = lanes_of(|g| {
                        let ap = q8t.add(((g0 + g) * na + i) * 512 + (j * 8 + k) * 8);
                        _mm256_loadu_si256(ap as *const __m256i)
                    });
                    for r in 0..R {
                        let wv = _mm256_set1_epi32(*wp.add(r * 64 + j * 8 + k));
                        for g in 0..NG {
                            s32[r][g] = vpdpbusd(s32[r][g], wv, av[g]);
                        }
                    }
                }
                for r in 0..R {
                    let scv = _mm256_set1_epi32(scm[r].0[j] as i32);
                    for g in 0..NG {
                        sumi[r][g] = _mm256_add_epi32(sumi[r][g], _mm256_mullo_epi32(s32[r][g], scv));
                    }
                }
            } else {
                // 8 products of a sub-block add up in i16 (at most 30480), then its scale
                let mut s16 = [[_mm256_setzero_si256(); NG]; R];
                for k in 0..8 {
                    let av: [__m256i; NG] = lanes_of(|g| {
                        let ap = q8t.add(((g0 + g) * na + i) * 512 + (j * 8 + k) * 8);
                        _mm256_loadu_si256(ap as *const __m256i)
                    });
                    for r in 0..R {
                        let wv = _mm256_set1_epi32(*wp.add(r * 64 + j * 8 + k));
                        for g in 0..NG {
                            s16[r][g] =
                                _mm256_add_epi16(s16[r][g], _mm256_maddubs_epi16(wv, av[g]));
                        }
                    }
                }
                for r in 0..R {
                    let scv = _mm256_set1_epi16(scm[r].0[j] as i16);
                    for g in 0..NG {
                        sumi[r][g] = dpwd(sumi[r][g], s16[r][g], scv);
                    }
                }
            }
        }
        for r in 0..R {
            let mut summ = [_mm256_setzero_si256(); NG];
            for (j, &m) in scm[r].1.iter().enumerate() {
                let mv = _mm256_set1_epi16(m as i16);
                for (g, v) in summ.iter_mut().enumerate() {
                    let bp = b8t.add(((g0 + g) * na + i) * 64 + j * 8);
                    *v = dpwd(*v, _mm256_loadu_si256(bp as *const __m256i), mv);
                }
            }
            let b = blk[r];
            let (d, dmin) = (_mm256_set1_ps(f16le(b.d)), _mm256_set1_ps(f16le(b.dmin)));
            for g in 0..NG {
                let dx = _mm256_loadu_ps(d8t.add(((g0 + g) * na + i) * 8));
                let t1 = _mm256_mul_ps(_mm256_mul_ps(d, dx), _mm256_cvtepi32_ps(sumi[r][g]));
                let t2 = _mm256_mul_ps(_mm256_mul_ps(dmin, dx), _mm256_cvtepi32_ps(summ[g]));
                acc[r][g] = _mm256_add_ps(acc[r][g], _mm256_sub_ps(t1, t2));
            }
        }
    }
    acc
}

/// [`q4_k_t8`] one row at a time.
#[inline(always)]
unsafe fn q4_k_t8_each<const R: usize, const NG: usize>(
    src: [&[u8]; R],
    a: &crate::acts::QuantizedActs,
    g0: usize,
) -> [[__m256; NG]; R] {
    let mut out = [[_mm256_setzero_ps(); NG]; R];
    for r in 0..R {
        out[r] = q4_k_t8::<1, NG>([src[r]], a, g0)[0];
    }
    out
}

/// Q4_K against 8-bit activations per super-block: `maddubs` multiplies the unsigned nibbles
/// by the signed activations, `madd` weighs each sub-block's pairs by its 6-bit scale, and the
/// super-block's sum stays an exact i32, as do the mins against the activation sums per 16.
#[inline(always)]
unsafe fn q4_k_q8k_n<const N: usize>(src: &[u8], x: [ActsRow; N]) -> [f32; N] {
    let mut acc = [0f32; N];
    let m4 = _mm256_set1_epi8(0x0F);
    for (i, b) in as_blocks::<BlockQ4K>(src).iter().enumerate() {
        let (sc, mn) = scales_mins_k4(&b.scales);
        let mut sumi = [_mm256_setzero_si256(); N];
        for c in 0..4 {
            let v = _mm256_loadu_si256(b.qs.as_ptr().add(c * 32) as *const __m256i);
            let lo = _mm256_and_si256(v, m4);
            let hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), m4);
            let s_lo = _mm256_set1_epi16(sc[2 * c] as i16);
            let s_hi = _mm256_set1_epi16(sc[2 * c + 1] as i16);
            for k in 0..N {
                let xp = x[k].q8.as_ptr().add(i * 256 + c * 64);
                let p_lo = _mm256_maddubs_epi16(lo, _mm256_loadu_si256(xp as *const __m256i));
                let p_hi =
                    _mm256_maddubs_epi16(hi, _mm256_loadu_si256(xp.add(32) as *const __m256i));
                sumi[k] = dpwd(dpwd(sumi[k], p_lo, s_lo), p_hi, s_hi);
            }
        }
        // each min twice, against the two sums of 16 of its sub-block
        let mn16: [i16; 16] = lanes_of(|l| mn[l / 2] as i16);
        let mnv = _mm256_loadu_si256(mn16.as_ptr() as *const __m256i);
        let (d, dmin) = (f16le(b.d), f16le(b.dmin));
        for k in 0..N {
            let bs = _mm256_loadu_si256(x[k].bs8.as_ptr().add(i * 16) as *const __m256i);
            let summ = hsum_i32(_mm256_madd_epi16(bs, mnv));
            let dx = x[k].d8[i];
            acc[k] += d * dx * hsum_i32(sumi[k]) as f32 - dmin * dx * summ as f32;
        }
    }
    acc
}

/// Sum of the eight i32 lanes (exact).
#[inline(always)]
unsafe fn hsum_i32(v: __m256i) -> i32 {
    let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b01_00_11_10));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b10_11_00_01));
    _mm_cvtsi128_si32(s)
}

/// Q6_K's 32 weights of activation block `j` (0..8) of a super-block, `q - 32` times their
/// sub-block's scale (|q - 32| <= 32, |scale| <= 128: fits i16), as elements 0..16 and 16..32.
/// A 16-element sub-block's dot with 16-bit activations, so scaled, fits i32:
/// 16 * 32 * 128 * 32767 < 2^31.
#[inline(always)]
unsafe fn q6_k_w(b: &BlockQ6K, j: usize) -> (__m256i, __m256i) {
    let (h, s) = (j / 4, j % 4);
    let ql = _mm256_loadu_si256(b.ql.as_ptr().add(h * 64 + (s & 1) * 32) as *const __m256i);
    let qh = _mm256_loadu_si256(b.qh.as_ptr().add(h * 32) as *const __m256i);
    let lo = _mm256_and_si256(
        _mm256_srl_epi16(ql, _mm_cvtsi32_si128((4 * (s >> 1)) as i32)),
        _mm256_set1_epi8(0x0F),
    );
    let hi = _mm256_and_si256(
        _mm256_srl_epi16(qh, _mm_cvtsi32_si128((2 * s) as i32)),
        _mm256_set1_epi8(3),
    );
    let q = _mm256_sub_epi8(
        _mm256_or_si256(lo, _mm256_slli_epi16(hi, 4)),
        _mm256_set1_epi8(32),
    );
    let sc0 = _mm256_set1_epi16(b.scales[2 * j] as i8 as i16);
    let sc1 = _mm256_set1_epi16(b.scales[2 * j + 1] as i8 as i16);
    (
        _mm256_mullo_epi16(_mm256_cvtepi8_epi16(_mm256_castsi256_si128(q)), sc0),
        _mm256_mullo_epi16(_mm256_cvtepi8_epi16(_mm256_extracti128_si256(q, 1)), sc1),
    )
}

// Q6_K, per (row, token): activation block a (32 elements, two scaled sub-blocks of 16) gives
// f = float(sub-block 0's exact sum) + float(sub-block 1's), and partial sum a % 4 takes
// `fma(f, d * dx, acc)`; the four partials are added as (a0 + a2) + (a1 + a3). The one-row
// kernel, the batched kernel and the scalar reference all compute exactly that.

/// Q6_K, `R` rows against one activation row, four activation blocks at a time.
#[inline(always)]
unsafe fn q6_k_rn<const R: usize>(srcs: [&[u8]; R], x: ActsRow) -> [f32; R] {
    let mut acc = [_mm_setzero_ps(); R];
    for r in 0..R {
        for (i, b) in as_blocks::<BlockQ6K>(srcs[r]).iter().enumerate() {
            let d = _mm_set1_ps(f16le(b.d));
            for h in 0..2 {
                let mut iv = [_mm256_setzero_si256(); 8];
                for s in 0..4 {
                    let j = 4 * h + s;
                    let w = q6_k_w(b, j);
                    let xp = x.q.as_ptr().add((8 * i + j) * QK);
                    iv[2 * s] = _mm256_madd_epi16(w.0, _mm256_loadu_si256(xp as *const __m256i));
                    iv[2 * s + 1] =
                        _mm256_madd_epi16(w.1, _mm256_loadu_si256(xp.add(16) as *const __m256i));
                }
                // lanes 2s, 2s+1: activation block 4h+s's two sub-block sums
                let f = _mm256_cvtepi32_ps(reduce8(&iv));
                let p = _mm256_hadd_ps(f, f);
                // [f0, f1, f0, f1 | f2, f3, f2, f3] -> [f0, f1, f2, f3]
                let f4 = _mm_castpd_ps(_mm_unpacklo_pd(
                    _mm_castps_pd(_mm256_castps256_ps128(p)),
                    _mm_castps_pd(_mm256_extractf128_ps(p, 1)),
                ));
                let dx = _mm_loadu_ps(x.d.as_ptr().add(8 * i + 4 * h));
                acc[r] = _mm_fmadd_ps(f4, _mm_mul_ps(d, dx), acc[r]);
            }
        }
    }
    amap(acc, |a| {
        let s = _mm_add_ps(a, _mm_movehl_ps(a, a));
        _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps(s, s, 1)))
    })
}

#[inline(always)]
unsafe fn q6_k_q16_n<const N: usize>(src: &[u8], x: [ActsRow; N]) -> [f32; N] {
    // a loop, not a closure (see `lanes_of`)
    let mut out = [0f32; N];
    for k in 0..N {
        out[k] = q6_k_rn::<1>([src], x[k])[0];
    }
    out
}

/// Q6_K, one row against `NG` groups of 8 tokens in lanes (`QuantizedActs::qt`).
#[inline(always)]
unsafe fn q6_k_t8<const R: usize, const NG: usize>(
    src: [&[u8]; R],
    a: &crate::acts::QuantizedActs,
    g0: usize,
) -> [[__m256; NG]; R] {
    let na = a.n / QK;
    let mut acc = [[[_mm256_setzero_ps(); 4]; NG]; R];
    let mut wbuf = [[0i32; 16]; R];
    let (qt, dt) = (a.qt.as_ptr(), a.dt.as_ptr());
    let nb = src[0].len() / std::mem::size_of::<BlockQ6K>();
    for i in 0..nb {
        let blk: [&BlockQ6K; R] = lanes_of(|r| &as_blocks::<BlockQ6K>(src[r])[i]);
        for j in 0..8 {
            for (r, wb) in wbuf.iter_mut().enumerate() {
                let w = q6_k_w(blk[r], j);
                _mm256_storeu_si256(wb.as_mut_ptr() as *mut __m256i, w.0);
                _mm256_storeu_si256(wb.as_mut_ptr().add(8) as *mut __m256i, w.1);
            }
            // broadcast from memory through an opaque pointer (see legacy_t8)
            let wp = std::hint::black_box(wbuf.as_ptr()) as *const i32;
            let ab = 8 * i + j;
            let mut is = [[[_mm256_setzero_si256(); 2]; NG]; R];
            for h in 0..2 {
                for k in 8 * h..8 * h + 8 {
                    let av: [__m256i; NG] = lanes_of(|g| {
                        let ap = qt.add(((g0 + g) * na + ab) * 128 + k * 8);
                        _mm256_loadu_si256(ap as *const __m256i)
                    });
                    for r in 0..R {
                        let wv = _mm256_set1_epi32(*wp.add(16 * r + k));
                        for g in 0..NG {
                            is[r][g][h] = dpwd(is[r][g][h], wv, av[g]);
                        }
                    }
                }
            }
            for r in 0..R {
                let d = _mm256_set1_ps(f16le(blk[r].d));
                for g in 0..NG {
                    let f = _mm256_add_ps(
                        _mm256_cvtepi32_ps(is[r][g][0]),
                        _mm256_cvtepi32_ps(is[r][g][1]),
                    );
                    let s = _mm256_mul_ps(d, _mm256_loadu_ps(dt.add(((g0 + g) * na + ab) * 8)));
                    acc[r][g][j % 4] = _mm256_fmadd_ps(f, s, acc[r][g][j % 4]);
                }
            }
        }
    }
    fold4(&acc)
}

/// Integer-kernel dot of a Q4_0 / Q4_1 / Q8_0 / Q4_K / Q6_K row with `N` quantized activation rows (lane k
/// computes exactly what N = 1 computes for that row). The rows must hold the row's length.
#[inline(always)]
unsafe fn dot_q16_impl<const N: usize>(
    dtype: hearth_core::DType,
    src: &[u8],
    x: [ActsRow; N],
) -> [f32; N] {
    match dtype {
        hearth_core::DType::Q4_0 => legacy_row::<N, Q40>(src, x),
        hearth_core::DType::Q4_1 => legacy_row::<N, Q41>(src, x),
        hearth_core::DType::Q8_0 => legacy_row::<N, Q80>(src, x),
        hearth_core::DType::Q5_0 => legacy_row::<N, Q50>(src, x),
        hearth_core::DType::Q5_1 => legacy_row::<N, Q51>(src, x),
        hearth_core::DType::Q4_K => q4_k_q8k_n::<N>(src, x),
        hearth_core::DType::Q6_K => q6_k_q16_n::<N>(src, x),
        hearth_core::DType::Q2_K => k16_row_n::<K2, N>(src, x),
        hearth_core::DType::Q3_K => k16_row_n::<K3, N>(src, x),
        hearth_core::DType::Q5_K => k16_row_n::<K5, N>(src, x),
        hearth_core::DType::IQ4_XS => k16_row_n::<XS, N>(src, x),
        _ => [0.0; N],
    }
}

/// Rows `rows` of a matrix (`rb` bytes per row in `bytes`) dotted with every activation row of
/// `acts` (`n_tok` of them): 8 tokens in lanes from `T8_MIN` tokens on, else one row (or a
/// pair) at a time; `put(token, row, value)` receives each result, which is bit-identical to
/// the one-row, one-token kernel's.
#[inline(always)]
unsafe fn rows_q16_impl(
    dtype: hearth_core::DType,
    bytes: &[u8],
    rb: usize,
    rows: std::ops::Range<usize>,
    acts: &crate::acts::QuantizedActs,
    n_tok: usize,
    put: &mut impl crate::Sink,
) {
    use hearth_core::DType as D;
    // 16 tokens in lanes (the AVX-512 build, activations regrouped by 16)
    if rows_wide(dtype, bytes, rb, rows.clone(), acts, n_tok, put) {
        return;
    }
    // the kernels are inlined here, inside this function's AVX2 context
    // the activation rows, sliced once rather than once per weight row
    let xs: Vec<ActsRow> = (0..n_tok).map(|t| acts.row(t)).collect();
    // Cache blocking: a block of ROWS weight rows against a block of TOKS activation rows,
    // so that the activations stay in L2 while every row of the block passes over them (and
    // the rows stay in L1 across token blocks) instead of streaming every activation row in
    // from memory once per weight row.
    const ROWS: usize = 16;
    const TOKS: usize = 32;
    macro_rules! run {
        ($k4:expr, $k1:expr) => {{
            let mut r0 = rows.start;
            while r0 < rows.end {
                let r1 = (r0 + ROWS).min(rows.end);
                let mut t0 = 0;
                while t0 < n_tok {
                    let t1 = (t0 + TOKS).min(n_tok);
                    for r in r0..r1 {
                        let row = &bytes[r * rb..(r + 1) * rb];
                        let mut t = t0;
                        while t + 4 <= t1 {
                            let v = $k4(row, [xs[t], xs[t + 1], xs[t + 2], xs[t + 3]]);
                            for (k, v) in v.into_iter().enumerate() {
                                put.put(t + k, r, v);
                            }
                            t += 4;
                        }
                        for t in t..t1 {
                            put.put(t, r, $k1(row, [xs[t]])[0]);
                        }
                    }
                    t0 = t1;
                }
                r0 = r1;
            }
        }};
    }
    match dtype {
        D::Q4_0 => legacy_rows::<Q40>(bytes, rb, rows, acts, &xs, n_tok, put),
        D::Q4_1 => legacy_rows::<Q41>(bytes, rb, rows, acts, &xs, n_tok, put),
        D::Q8_0 => legacy_rows::<Q80>(bytes, rb, rows, acts, &xs, n_tok, put),
        D::Q5_0 => legacy_rows::<Q50>(bytes, rb, rows, acts, &xs, n_tok, put),
        D::Q5_1 => legacy_rows::<Q51>(bytes, rb, rows, acts, &xs, n_tok, put),
        D::Q2_K => k16_rows::<K2>(bytes, rb, rows, acts, &xs, n_tok, put),
        D::Q3_K => k16_rows::<K3>(bytes, rb, rows, acts, &xs, n_tok, put),
        D::Q5_K => k16_rows::<K5>(bytes, rb, rows, acts, &xs, n_tok, put),
        D::IQ4_XS => k16_rows::<XS>(bytes, rb, rows, acts, &xs, n_tok, put),
        D::Q4_K if !acts.q8t.is_empty() && acts.gw == 8 => t8_rows!(
            bytes,
            rb,
            rows,
            n_tok,
            put,
            // four rows per pass with VNNI; AVX2 has too few registers for that
            |rs: [&[u8]; 4], g0| if VNNI {
                q4_k_t8::<4, 2>(rs, acts, g0)
            } else {
                q4_k_t8_each::<4, 2>(rs, acts, g0)
            },
            |rs: [&[u8]; 4], g0| if VNNI {
                q4_k_t8::<4, 1>(rs, acts, g0)
            } else {
                q4_k_t8_each::<4, 1>(rs, acts, g0)
            },
            |row, g0| q4_k_t8::<1, 2>([row], acts, g0)[0],
            |row, g0| q4_k_t8::<1, 1>([row], acts, g0)[0][0]
        ),
        D::Q4_K => run!(q4_k_q8k_n::<4>, q4_k_q8k_n::<1>),
        D::Q6_K if !acts.qt.is_empty() && acts.gw == 8 => t8_rows!(
            bytes,
            rb,
            rows,
            n_tok,
            put,
            |rs, g0| q6_k_t8::<4, 2>(rs, acts, g0),
            |rs, g0| q6_k_t8::<4, 1>(rs, acts, g0),
            |row, g0| q6_k_t8::<1, 2>([row], acts, g0)[0],
            |row, g0| q6_k_t8::<1, 1>([row], acts, g0)[0][0]
        ),
        D::Q6_K => pair_rows!(
            bytes,
            rb,
            rows,
            &xs,
            n_tok,
            put,
            |rs, x| q6_k_rn::<2>(rs, x),
            |row, x| q6_k_rn::<1>([row], x)[0]
        ),
        _ => {}
    }
}

/// `acts::q16_blocks` (see `q16_blocks_impl` there for the order of the sum): per block of
/// 32, rounding to nearest-even by `vroundps` (what `round_even` computes for these values).
/// Eight blocks at a time: their maxima and lane sums are transposed so that the eight
/// blocks' reductions (the maximum, and the sum in its tree order) and their scales (two
/// divisions) take one vector operation each. The buffers must hold `x.len() / 32` blocks.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn q16_blocks(
    x: &[f32],
    q: &mut [i16],
    d: &mut [f32],
    sum: &mut [f32],
    s16: &mut [i32],
) {
    let sign = _mm256_set1_ps(-0.0);
    let nb = x.len() / QK;
    // |x| maxima and lane sums (`((0 + c0) + c1) + c2) + c3` per lane) of block b
    let lanes = |b: usize| {
        let xp = x.as_ptr().add(b * QK);
        let v: [__m256; 4] = lanes_of(|c| _mm256_loadu_ps(xp.add(8 * c)));
        let mut m = [_mm256_setzero_ps(); 4];
        for c in 0..4 {
            m[c] = _mm256_andnot_ps(sign, v[c]);
        }
        let m = _mm256_max_ps(_mm256_max_ps(m[0], m[1]), _mm256_max_ps(m[2], m[3]));
        let l = _mm256_add_ps(
            _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(_mm256_setzero_ps(), v[0]), v[1]), v[2]),
            v[3],
        );
        (m, l)
    };
    // block b quantized with the inverse scale `id`
    let quant = |b: usize, id: f32, q: &mut [i16], s16: &mut [i32]| {
        let xp = x.as_ptr().add(b * QK);
        let id = _mm256_set1_ps(id);
        let mut r = [_mm256_setzero_si256(); 4];
        for c in 0..4 {
            r[c] = _mm256_cvtps_epi32(_mm256_round_ps(
                _mm256_mul_ps(_mm256_loadu_ps(xp.add(8 * c)), id),
                _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC,
            ));
        }
        for hh in 0..2 {
            let (a, c) = (r[2 * hh], r[2 * hh + 1]);
            // packs works per 128-bit half: [a0-3, c0-3, a4-7, c4-7] -> element order
            let p = _mm256_permute4x64_epi64(_mm256_packs_epi32(a, c), 0b11_01_10_00);
            _mm256_storeu_si256(q.as_mut_ptr().add(b * QK + 16 * hh) as *mut __m256i, p);
            s16[2 * b + hh] = hsum_i32(_mm256_add_epi32(a, c));
        }
    };
    let mut b0 = 0;
    while b0 + 8 <= nb {
        let mut mv = [_mm256_setzero_ps(); 8];
        let mut lv = [_mm256_setzero_ps(); 8];
        for k in 0..8 {
            (mv[k], lv[k]) = lanes(b0 + k);
        }
        // lane k of mt[j] / lt[j]: lane j of block b0 + k
        let (mt, lt) = (transpose8(&mv), transpose8(&lv));
        let amax = _mm256_max_ps(
            _mm256_max_ps(_mm256_max_ps(mt[0], mt[1]), _mm256_max_ps(mt[2], mt[3])),
            _mm256_max_ps(_mm256_max_ps(mt[4], mt[5]), _mm256_max_ps(mt[6], mt[7])),
        );
        let sv = _mm256_add_ps(
            _mm256_add_ps(_mm256_add_ps(lt[0], lt[1]), _mm256_add_ps(lt[2], lt[3])),
            _mm256_add_ps(_mm256_add_ps(lt[4], lt[5]), _mm256_add_ps(lt[6], lt[7])),
        );
        let dv = _mm256_div_ps(amax, _mm256_set1_ps(32767.0));
        let pos = _mm256_cmp_ps(dv, _mm256_setzero_ps(), _CMP_GT_OQ);
        let idv = _mm256_and_ps(pos, _mm256_div_ps(_mm256_set1_ps(1.0), dv));
        _mm256_storeu_ps(d.as_mut_ptr().add(b0), dv);
        _mm256_storeu_ps(sum.as_mut_ptr().add(b0), sv);
        let mut ids = [0f32; 8];
        _mm256_storeu_ps(ids.as_mut_ptr(), idv);
        for (k, &id) in ids.iter().enumerate() {
            quant(b0 + k, id, q, s16);
        }
        b0 += 8;
    }
    for b in b0..nb {
        let (m, l) = lanes(b);
        let m = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
        let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
        let amax = _mm_cvtss_f32(_mm_max_ss(m, _mm_shuffle_ps(m, m, 1)));
        let h = _mm256_hadd_ps(l, l);
        let h = _mm256_hadd_ps(h, h);
        sum[b] = _mm_cvtss_f32(_mm_add_ss(
            _mm256_castps256_ps128(h),
            _mm256_extractf128_ps(h, 1),
        ));
        let db = amax / 32767.0;
        d[b] = db;
        quant(b, if db > 0.0 { 1.0 / db } else { 0.0 }, q, s16);
    }
}

/// The transpose of 8 rows of 8 floats: lane `c` of result `r` is lane `r` of `v[c]`.
#[inline(always)]
unsafe fn transpose8(v: &[__m256; 8]) -> [__m256; 8] {
    let mut t = [_mm256_setzero_ps(); 8];
    for i in 0..4 {
        t[2 * i] = _mm256_unpacklo_ps(v[2 * i], v[2 * i + 1]);
        t[2 * i + 1] = _mm256_unpackhi_ps(v[2 * i], v[2 * i + 1]);
    }
    let pd = |x: __m256| _mm256_castps_pd(x);
    let mut u = [_mm256_setzero_ps(); 8];
    for q in 0..2 {
        let (a, b, c, dd) = (t[4 * q], t[4 * q + 1], t[4 * q + 2], t[4 * q + 3]);
        u[4 * q] = _mm256_castpd_ps(_mm256_unpacklo_pd(pd(a), pd(c)));
        u[4 * q + 1] = _mm256_castpd_ps(_mm256_unpackhi_pd(pd(a), pd(c)));
        u[4 * q + 2] = _mm256_castpd_ps(_mm256_unpacklo_pd(pd(b), pd(dd)));
        u[4 * q + 3] = _mm256_castpd_ps(_mm256_unpackhi_pd(pd(b), pd(dd)));
    }
    // u[k] (k < 4): rows 0-3 of lanes k and 4 + k; u[4 + k]: rows 4-7 of the same
    let mut out = [_mm256_setzero_ps(); 8];
    for k in 0..4 {
        out[k] = _mm256_permute2f128_ps(u[k], u[4 + k], 0x20);
        out[4 + k] = _mm256_permute2f128_ps(u[k], u[4 + k], 0x31);
    }
    out
}

/// `acts::q8_blocks`: per block of 256, the maximum of |x| (exact in any order), `d = max / 127`,
/// `q = round(x / d)` to nearest-even by `vroundps` (what `round_even` computes for these
/// values) clamped to ±127, and the sums of `q` per 16.
///
/// # Safety
/// The CPU has AVX2 and FMA; `q`, `d` and `bs` hold `x.len() / 256` blocks.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn q8_blocks(x: &[f32], q: &mut [i8], d: &mut [f32], bs: &mut [i16]) {
    let sign = _mm256_set1_ps(-0.0);
    let (lo, hi) = (_mm256_set1_epi32(-127), _mm256_set1_epi32(127));
    for b in 0..x.len() / 256 {
        let xp = x.as_ptr().add(b * 256);
        let mut m = _mm256_setzero_ps();
        for c in 0..32 {
            m = _mm256_max_ps(m, _mm256_andnot_ps(sign, _mm256_loadu_ps(xp.add(8 * c))));
        }
        let m = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
        let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
        let amax = _mm_cvtss_f32(_mm_max_ss(m, _mm_shuffle_ps(m, m, 1)));
        let db = amax / 127.0;
        let id = _mm256_set1_ps(if db > 0.0 { 1.0 / db } else { 0.0 });
        d[b] = db;
        for g in 0..16 {
            let r = lanes_of::<__m256i, 2>(|h| {
                let v = _mm256_loadu_ps(xp.add(16 * g + 8 * h));
                let r = _mm256_cvtps_epi32(_mm256_round_ps(
                    _mm256_mul_ps(v, id),
                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC,
                ));
                _mm256_min_epi32(_mm256_max_epi32(r, lo), hi)
            });
            // packs works per 128-bit half: [a0-3, c0-3, a4-7, c4-7] -> element order
            let p16 = _mm256_permute4x64_epi64(_mm256_packs_epi32(r[0], r[1]), 0b11_01_10_00);
            let p8 = _mm_packs_epi16(_mm256_castsi256_si128(p16), _mm256_extracti128_si256(p16, 1));
            _mm_storeu_si128(q.as_mut_ptr().add(b * 256 + 16 * g) as *mut __m128i, p8);
            bs[b * 16 + g] = hsum_i32(_mm256_add_epi32(r[0], r[1])) as i16;
        }
    }
}

/// `dst[k * G + l] = src[l][k]` for `k, l < G` (`G` = 8): 8 rows of 8 words transposed, for
/// the regrouped activations (`acts.rs`); a null row reads as zeros.
///
/// # Safety
/// The CPU has AVX2; each non-null `src[l]` is readable for 8 words, `dst` writable for 64.
#[target_feature(enable = "avx2")]
pub unsafe fn transpose_words8(src: [*const i32; 8], dst: *mut i32) {
    let ld = |p: *const i32| {
        if p.is_null() {
            _mm256_setzero_si256()
        } else {
            _mm256_loadu_si256(p as *const __m256i)
        }
    };
    let v: [__m256; 8] = lanes_of(|l| _mm256_castsi256_ps(ld(src[l])));
    // 32-bit then 64-bit interleaves, then the 128-bit halves
    let t: [__m256; 8] = lanes_of(|i| {
        let (a, b) = (v[2 * (i / 2)], v[2 * (i / 2) + 1]);
        if i % 2 == 0 { _mm256_unpacklo_ps(a, b) } else { _mm256_unpackhi_ps(a, b) }
    });
    let pd = |x: __m256| _mm256_castps_pd(x);
    let u: [__m256; 8] = lanes_of(|i| {
        let q = i / 4;
        let (a, b, c, dd) = (t[4 * q], t[4 * q + 1], t[4 * q + 2], t[4 * q + 3]);
        _mm256_castpd_ps(match i % 4 {
            0 => _mm256_unpacklo_pd(pd(a), pd(c)),
            1 => _mm256_unpackhi_pd(pd(a), pd(c)),
            2 => _mm256_unpacklo_pd(pd(b), pd(dd)),
            _ => _mm256_unpackhi_pd(pd(b), pd(dd)),
        })
    });
    // u[k] (k < 4): rows 0-3 of words k and 4 + k; u[4 + k]: rows 4-7 of the same
    for k in 0..4 {
        let w0 = _mm256_permute2f128_ps(u[k], u[4 + k], 0x20);
        let w1 = _mm256_permute2f128_ps(u[k], u[4 + k], 0x31);
        _mm256_storeu_ps(dst.add(8 * k) as *mut f32, w0);
        _mm256_storeu_ps(dst.add(8 * (4 + k)) as *mut f32, w1);
    }
}

fast! {
    /// Integer-kernel dot of a row with `N` quantized activation rows (`dot_q16_impl`).
    pub unsafe fn dot_q16<const N: usize>(
        dtype: hearth_core::DType,
        src: &[u8],
        x: [ActsRow; N],
    ) -> [f32; N] {
        dot_q16_impl::<N>(dtype, src, x)
    }
}

fast! {
    /// Rows of a matrix against every activation row (`rows_q16_impl`).
    pub unsafe fn rows_q16(
        dtype: hearth_core::DType,
        bytes: &[u8],
        rb: usize,
        rows: std::ops::Range<usize>,
        acts: &crate::acts::QuantizedActs,
        n_tok: usize,
        put: &mut impl crate::Sink,
    ) {
        rows_q16_impl(dtype, bytes, rb, rows, acts, n_tok, put)
    }
}

fast! {
    /// Rows of a packed matrix against every activation row (`rows_q16_packed_impl`).
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn rows_q16_packed(
        dtype: hearth_core::DType,
        bytes: &[u8],
        rb: usize,
        n_rows: usize,
        rows: std::ops::Range<usize>,
        acts: &crate::acts::QuantizedActs,
        n_tok: usize,
        put: &mut impl crate::Sink,
    ) {
        rows_q16_packed_impl(dtype, bytes, rb, n_rows, rows, acts, n_tok, put)
    }
}

fast! {
    /// F32 rows against f32 activation rows (`crate::rows_f32`): per (row, token) the
    /// arithmetic of the generic path (`dot_blocks_impl` over `F32` blocks): pieces of 256,
    /// each an 8-lane sum of products (multiply, then add) reduced as
    /// `(((l0 + l4) + (l1 + l5)) + (l2 + l6)) + (l3 + l7)` with the tail added after, and the
    /// pieces added in order.
    ///
    /// # Safety
    /// The CPU has AVX2; rows `rows` lie within `bytes` and `x` holds `n_tok` rows of
    /// `rb / 4` values.
    pub unsafe fn rows_f32(
        bytes: &[u8],
        rb: usize,
        rows: std::ops::Range<usize>,
        x: &[f32],
        n_tok: usize,
        put: &mut impl crate::Sink,
    ) {
        const R: usize = 3;
        const T: usize = 4;
        let n = rb / 4;
        let wrow = |r: usize| bytes.as_ptr().add(r * rb) as *const f32;
        let xrow = |t: usize| x.as_ptr().add(t * n);
        let prefetch = super::sw_prefetch();
        let mut r0 = rows.start;
        while r0 < rows.end {
            let nr = (rows.end - r0).min(R);
            // the next rows' lines, requested while these are summed (a router's few rows
            // come from memory each token, too few for the hardware prefetcher to ramp up)
            let next = (r0 + nr)..(r0 + 2 * nr).min(rows.end);
            if prefetch && !next.is_empty() {
                let (a, b) = (bytes.as_ptr().add(next.start * rb), next.len() * rb);
                let mut o = 0;
                while o < b {
                    _mm_prefetch::<_MM_HINT_T0>(a.add(o) as *const i8);
                    o += 64;
                }
            }
            let mut t0 = 0;
            while t0 < n_tok {
                let nt = (n_tok - t0).min(T);
                let mut tot = [[0f32; T]; R];
                let mut p0 = 0;
                while p0 < n {
                    let len = (n - p0).min(crate::MAX_BLOCK);
                    let n8 = len / 8 * 8;
                    let mut v = [[_mm256_setzero_ps(); T]; R];
                    let mut c = 0;
                    while c < n8 {
                        let mut xv = [_mm256_setzero_ps(); T];
                        for (t, xv) in xv.iter_mut().enumerate().take(nt) {
                            *xv = _mm256_loadu_ps(xrow(t0 + t).add(p0 + c));
                        }
                        for (r, vr) in v.iter_mut().enumerate().take(nr) {
                            let wv = _mm256_loadu_ps(wrow(r0 + r).add(p0 + c));
                            for t in 0..nt {
                                vr[t] = _mm256_add_ps(vr[t], _mm256_mul_ps(wv, xv[t]));
                            }
                        }
                        c += 8;
                    }
                    for r in 0..nr {
                        for t in 0..nt {
                            let q = _mm_add_ps(
                                _mm256_castps256_ps128(v[r][t]),
                                _mm256_extractf128_ps(v[r][t], 1),
                            );
                            let mut l = [0f32; 4];
                            _mm_storeu_ps(l.as_mut_ptr(), q);
                            let mut s = ((l[0] + l[1]) + l[2]) + l[3];
                            for e in n8..len {
                                s += *wrow(r0 + r).add(p0 + e) * *xrow(t0 + t).add(p0 + e);
                            }
                            tot[r][t] += s;
                        }
                    }
                    p0 += len;
                }
                for r in 0..nr {
                    for t in 0..nt {
                        put.put(t0 + t, r0 + r, tot[r][t]);
                    }
                }
                t0 += nt;
            }
            r0 += nr;
        }
    }
}

/// `acc + madd(a, b)`: i16 pairs multiplied and added into i32 lanes, in one instruction
/// (`vpdpwssd`) with VNNI. Exact either way (no pair sum here reaches the i32 range).
#[inline(always)]
unsafe fn dpwd(acc: __m256i, a: __m256i, b: __m256i) -> __m256i {
    if VNNI {
        vpdpwssd(acc, a, b)
    } else {
        _mm256_add_epi32(acc, _mm256_madd_epi16(a, b))
    }
}

/// `vpdpwssd` as inline assembly: LLVM splits the intrinsic back into `vpmaddwd` + `vpaddd`
/// under generic x86-64 tuning (in a loop of eight independent sums on Zen 4, 104 GMAC/s
/// fused against 92 split). Inlined into the kernels' AVX-512 entry points.
#[inline]
#[target_feature(enable = "avx2,avx512f,avx512vl,avx512vnni")]
unsafe fn vpdpwssd(mut acc: __m256i, a: __m256i, b: __m256i) -> __m256i {
    std::arch::asm!(
        "vpdpwssd {acc}, {a}, {b}",
        acc = inout(ymm_reg) acc,
        a = in(ymm_reg) a,
        b = in(ymm_reg) b,
        options(pure, nomem, nostack, preserves_flags)
    );
    acc
}

/// `[f(0), .., f(N - 1)]` by a plain loop. `std::array::from_fn` and `<[T; N]>::map` call
/// their closure from library code that is not always inlined, and there the closure runs
/// outside the kernels' AVX2 context, with every intrinsic an out-of-line call.
#[inline(always)]
fn lanes_of<U: Copy, const N: usize>(mut f: impl FnMut(usize) -> U) -> [U; N] {
    let first = f(0);
    let mut out = [first; N];
    for (i, o) in out.iter_mut().enumerate().skip(1) {
        *o = f(i);
    }
    out
}

/// `a.map(f)` by a plain loop (see [`lanes_of`]).
#[inline(always)]
fn amap<T: Copy, U: Copy, const N: usize>(a: [T; N], mut f: impl FnMut(T) -> U) -> [U; N] {
    lanes_of(|i| f(a[i]))
}

/// `vpdpbusd` as inline assembly (see [`vpdpwssd`]): `acc` plus, per i32 lane, the four
/// products of `a`'s unsigned bytes with `b`'s signed bytes, exactly.
#[inline]
#[target_feature(enable = "avx2,avx512f,avx512vl,avx512vnni")]
unsafe fn vpdpbusd(mut acc: __m256i, a: __m256i, b: __m256i) -> __m256i {
    std::arch::asm!(
        "vpdpbusd {acc}, {a}, {b}",
        acc = inout(ymm_reg) acc,
        a = in(ymm_reg) a,
        b = in(ymm_reg) b,
        options(pure, nomem, nostack, preserves_flags)
    );
    acc
}
