// The generic 16-bit K kernels of the body in x86_kernels.rs, compiled with it twice (see
// `x86` in lib.rs): a separate file only to keep each under 1,500 lines.

// ---- the generic 16-bit K kernels: Q2_K, Q3_K, Q5_K, IQ4_XS (see `acts::K16Scales`) ----

const K2: u8 = 2;
const K3: u8 = 3;
const K5: u8 = 5;
const XS: u8 = 4;

const fn k16_dtype(t: u8) -> hearth_core::DType {
    match t {
        K2 => hearth_core::DType::Q2_K,
        K3 => hearth_core::DType::Q3_K,
        K5 => hearth_core::DType::Q5_K,
        _ => hearth_core::DType::IQ4_XS,
    }
}

/// Bytes `v` shifted right by `n` bits (in 16-bit lanes; callers mask what crossed over).
#[inline(always)]
unsafe fn srl16(v: __m256i, n: usize) -> __m256i {
    _mm256_srl_epi16(v, _mm_cvtsi32_si128(n as i32))
}

/// `acts::k16_q` for 32 weights at once: activation block `j` of super-block `b`, as i8.
#[inline(always)]
unsafe fn k16_q<const T: u8>(b: *const u8, j: usize) -> __m256i {
    let ld = |o: usize| _mm256_loadu_si256(b.add(o) as *const __m256i);
    let (h, s) = (j / 4, j % 4);
    match T {
        K2 => _mm256_and_si256(srl16(ld(16 + 32 * h), 2 * s), _mm256_set1_epi8(3)),
        K3 => {
            let lo = _mm256_and_si256(srl16(ld(32 + 32 * h), 2 * s), _mm256_set1_epi8(3));
            let hb = _mm256_and_si256(srl16(ld(0), j), _mm256_set1_epi8(1));
            _mm256_sub_epi8(
                _mm256_or_si256(lo, _mm256_slli_epi16(hb, 2)),
                _mm256_set1_epi8(4),
            )
        }
        K5 => {
            let lo = _mm256_and_si256(
                srl16(ld(48 + 32 * (j / 2)), 4 * (j % 2)),
                _mm256_set1_epi8(0xF),
            );
            let hb = _mm256_and_si256(srl16(ld(16), j), _mm256_set1_epi8(1));
            _mm256_or_si256(lo, _mm256_slli_epi16(hb, 4))
        }
        _ => {
            let v = _mm_loadu_si128(b.add(8 + 16 * j) as *const __m128i);
            let m = _mm_set1_epi8(0xF);
            let tbl = _mm_loadu_si128(crate::tables::KVALUES_IQ4NL.as_ptr() as *const __m128i);
            let lo = _mm_shuffle_epi8(tbl, _mm_and_si128(v, m));
            let hi = _mm_shuffle_epi8(tbl, _mm_and_si128(_mm_srli_epi16(v, 4), m));
            _mm256_set_m128i(hi, lo)
        }
    }
}

/// The 32 weights `sc * q` of activation block `j` as i16, elements 0..16 and 16..32.
#[inline(always)]
unsafe fn k16_w<const T: u8>(
    b: *const u8,
    j: usize,
    k: &crate::acts::K16Scales,
) -> (__m256i, __m256i) {
    let q = k16_q::<T>(b, j);
    (
        _mm256_mullo_epi16(
            _mm256_cvtepi8_epi16(_mm256_castsi256_si128(q)),
            _mm256_set1_epi16(k.sc[2 * j]),
        ),
        _mm256_mullo_epi16(
            _mm256_cvtepi8_epi16(_mm256_extracti128_si256(q, 1)),
            _mm256_set1_epi16(k.sc[2 * j + 1]),
        ),
    )
}

/// Lanes `[v0 + v1, v2 + v3, v4 + v5, v6 + v7]` of `v` converted to float (each lane
/// converted, then added).
#[inline(always)]
unsafe fn pair_sums(v: __m256i) -> __m128 {
    let f = _mm256_cvtepi32_ps(v);
    let p = _mm256_hadd_ps(f, f);
    // [f0, f1, f0, f1 | f2, f3, f2, f3] -> [f0, f1, f2, f3]
    _mm_castpd_ps(_mm_unpacklo_pd(
        _mm_castps_pd(_mm256_castps256_ps128(p)),
        _mm_castps_pd(_mm256_extractf128_ps(p, 1)),
    ))
}

/// A generic 16-bit K row against one activation row, four activation blocks at a time in
/// the lanes of one partial sum (lane = block % 4, as the scalar reference).
#[inline(always)]
unsafe fn k16_row<const T: u8>(src: &[u8], x: ActsRow) -> f32 {
    use crate::acts::K16Min;
    let dt = k16_dtype(T);
    let min = crate::acts::k16_min(dt);
    let mut acc = _mm_setzero_ps();
    for (i, blk) in src.chunks_exact(dt.type_size()).enumerate() {
        let k = crate::acts::k16_scales(dt, blk);
        let b = blk.as_ptr();
        let d = _mm_set1_ps(k.d);
        for h in 0..2 {
            let mut iv = [_mm256_setzero_si256(); 8];
            for s in 0..4 {
                let j = 4 * h + s;
                let (w0, w1) = k16_w::<T>(b, j, &k);
                let xp = x.q.as_ptr().add((8 * i + j) * QK);
                let x0 = _mm256_loadu_si256(xp as *const __m256i);
                let x1 = _mm256_loadu_si256(xp.add(16) as *const __m256i);
                iv[2 * s] = _mm256_madd_epi16(w0, x0);
                iv[2 * s + 1] = _mm256_madd_epi16(w1, x1);
            }
            let dx = _mm_loadu_ps(x.d.as_ptr().add(8 * i + 4 * h));
            acc = _mm_fmadd_ps(pair_sums(reduce8(&iv)), _mm_mul_ps(d, dx), acc);
            match min {
                K16Min::None => {}
                K16Min::PerBlock => {
                    let m = |s: usize| -(k.dmin * k.mn[8 * h + 2 * s] as f32);
                    let m4 = _mm_setr_ps(m(0), m(1), m(2), m(3));
                    let sum = _mm_loadu_ps(x.sum.as_ptr().add(8 * i + 4 * h));
                    acc = _mm_fmadd_ps(m4, sum, acc);
                }
                K16Min::PerHalf => {
                    let g = |s: usize, e: usize| {
                        let j = 4 * h + s;
                        (k.mn[2 * j + e] as i32 * x.s16[2 * (8 * i + j) + e]) as f32
                    };
                    let g = |s: usize| g(s, 0) + g(s, 1);
                    let nd = _mm_mul_ps(_mm_set1_ps(-k.dmin), dx);
                    acc = _mm_fmadd_ps(_mm_setr_ps(g(0), g(1), g(2), g(3)), nd, acc);
                }
            }
        }
    }
    let s = _mm_add_ps(acc, _mm_movehl_ps(acc, acc));
    _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps(s, s, 1)))
}

/// [`k16_row`] for `N` activation rows, one after the other (a loop: see [`lanes_of`]).
#[inline(always)]
unsafe fn k16_row_n<const T: u8, const N: usize>(src: &[u8], x: [ActsRow; N]) -> [f32; N] {
    let mut out = [0f32; N];
    for k in 0..N {
        out[k] = k16_row::<T>(src, x[k]);
    }
    out
}

/// A generic 16-bit K row against `NG` groups of 8 tokens in lanes (`QuantizedActs::qt`):
/// each weight pair is broadcast once for all the groups; per activation block the float
/// steps of [`k16_row`], lane by lane.
#[inline(always)]
unsafe fn k16_t8<const T: u8, const R: usize, const NG: usize>(
    src: [&[u8]; R],
    a: &crate::acts::QuantizedActs,
    g0: usize,
) -> [[__m256; NG]; R] {
    use crate::acts::K16Min;
    let dt = k16_dtype(T);
    let min = crate::acts::k16_min(dt);
    let na = a.n / QK;
    let ts = dt.type_size();
    let mut acc = [[[_mm256_setzero_ps(); 4]; NG]; R];
    let mut wbuf = [[0i32; 16]; R];
    let (qt, dtp, st, s16t) = (a.qt.as_ptr(), a.dt.as_ptr(), a.st.as_ptr(), a.s16t.as_ptr());
    for i in 0..src[0].len() / ts {
        let blk: [&[u8]; R] = lanes_of(|r| &src[r][i * ts..(i + 1) * ts]);
        // a loop, not `lanes_of` with a closure: the closure (around a large function) was
        // called out of line, once per super-block
        let mut ks = [crate::acts::k16_scales(dt, blk[0]); R];
        for r in 1..R {
            ks[r] = crate::acts::k16_scales(dt, blk[r]);
        }
        for j in 0..8 {
            for (r, wb) in wbuf.iter_mut().enumerate() {
                let w = k16_w::<T>(blk[r].as_ptr(), j, &ks[r]);
                _mm256_storeu_si256(wb.as_mut_ptr() as *mut __m256i, w.0);
                _mm256_storeu_si256(wb.as_mut_ptr().add(8) as *mut __m256i, w.1);
            }
            // broadcast from memory through an opaque pointer (see legacy_t8)
            let wp = std::hint::black_box(wbuf.as_ptr()) as *const i32;
            let ab = 8 * i + j;
            let mut is = [[[_mm256_setzero_si256(); 2]; NG]; R];
            for h in 0..2 {
                for p in 8 * h..8 * h + 8 {
                    let av: [__m256i; NG] = lanes_of(|g| {
                        let ap = qt.add(((g0 + g) * na + ab) * 128 + p * 8);
                        _mm256_loadu_si256(ap as *const __m256i)
                    });
                    for r in 0..R {
                        let wv = _mm256_set1_epi32(*wp.add(16 * r + p));
                        for g in 0..NG {
                            is[r][g][h] = dpwd(is[r][g][h], wv, av[g]);
                        }
                    }
                }
            }
            for r in 0..R {
                let k = &ks[r];
                let d = _mm256_set1_ps(k.d);
                for g in 0..NG {
                    let o = ((g0 + g) * na + ab) * 8;
                    let dx = _mm256_loadu_ps(dtp.add(o));
                    let f = _mm256_add_ps(
                        _mm256_cvtepi32_ps(is[r][g][0]),
                        _mm256_cvtepi32_ps(is[r][g][1]),
                    );
                    let p = &mut acc[r][g][j % 4];
                    *p = _mm256_fmadd_ps(f, _mm256_mul_ps(d, dx), *p);
                    match min {
                        K16Min::None => {}
                        K16Min::PerBlock => {
                            let m = _mm256_set1_ps(-(k.dmin * k.mn[2 * j] as f32));
                            *p = _mm256_fmadd_ps(m, _mm256_loadu_ps(st.add(o)), *p);
                        }
                        K16Min::PerHalf => {
                            let sp = s16t.add(((g0 + g) * na + ab) * 16);
                            let g = |e: usize| {
                                let s = _mm256_loadu_si256(sp.add(8 * e) as *const __m256i);
                                let m = _mm256_set1_epi32(k.mn[2 * j + e] as i32);
                                _mm256_cvtepi32_ps(_mm256_mullo_epi32(m, s))
                            };
                            let fm = _mm256_add_ps(g(0), g(1));
                            let nd = _mm256_mul_ps(_mm256_set1_ps(-k.dmin), dx);
                            *p = _mm256_fmadd_ps(fm, nd, *p);
                        }
                    }
                }
            }
        }
    }
    fold4(&acc)
}

/// Rows `rows` of a generic 16-bit K type against all `n_tok` activation rows: 8 tokens in
/// lanes when the regrouped activations exist, else one row and token at a time.
#[inline(always)]
unsafe fn k16_rows<const T: u8>(
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
            |rs, g0| k16_t8::<T, 4, 2>(rs, acts, g0),
            |rs, g0| k16_t8::<T, 4, 1>(rs, acts, g0),
            |row, g0| k16_t8::<T, 1, 2>([row], acts, g0)[0],
            |row, g0| k16_t8::<T, 1, 1>([row], acts, g0)[0][0]
        );
        return;
    }
    for r in rows {
        let row = &bytes[r * rb..(r + 1) * rb];
        for (t, &x) in xs.iter().enumerate().take(n_tok) {
            put.put(t, r, k16_row::<T>(row, x));
        }
    }
}
