// The row-interleaved ("packed") kernels of the body in x86_kernels.rs, compiled with it
// twice (see `x86` in lib.rs): a separate file only to keep each under 1,500 lines.

// ---- the row-interleaved layout of the 32-element block types (see pack.rs) ----

/// Offsets in a packed group-block: (mins, fifth bits, weights).
const fn packed_offs(kind: u8) -> (usize, usize, usize) {
    match kind {
        Q40 | Q80 => (0, 0, 16),
        Q41 => (16, 0, 32),
        Q50 => (0, 16, 48),
        _ => (16, 32, 64),
    }
}

/// Requests the lines `dist` bytes past the `len` bytes at `b` (none where `dist` is 0): the
/// packed kernels call it at each group-block, so that the lines they will read next arrive
/// while this one is summed ([`super::stream_ahead`]). A prefetch never faults, so the
/// lines may lie past the matrix.
#[inline(always)]
unsafe fn ahead(b: *const u8, len: usize, dist: usize) {
    if dist > 0 {
        let mut o = 0;
        while o < len {
            _mm_prefetch::<_MM_HINT_T0>(b.wrapping_add(dist + o) as *const i8);
            o += 64;
        }
    }
}

/// The eight rows of a packed group (`grp`, `nb` group-blocks) against `N` activation rows:
/// lane r of result k is row r against token k. Each block's exact sum for the eight rows
/// forms in the lanes, then the float steps of `legacy_rn` run lane by lane, so every value
/// is bit-identical to the one-row kernel's.
#[inline(always)]
unsafe fn legacy_p8<const KIND: u8, const N: usize>(
    grp: *const u8,
    nb: usize,
    x: [ActsRow; N],
) -> [__m256; N] {
    let gbs = 8 * legacy_bs(KIND);
    let (mo, ho, qo) = packed_offs(KIND);
    let five = KIND == Q50 || KIND == Q51;
    let m4 = _mm256_set1_epi32(0x000F_000F);
    let b5 = _mm256_set1_epi32(0x0010_0010);
    // the codes' offset (Q4_0 8, Q5_0 16; the types with mins have none)
    let off: i32 = match KIND {
        Q40 => 8,
        Q50 => 16,
        _ => 0,
    };
    let dist = super::stream_ahead();
    let mut acc = [[_mm256_setzero_ps(); 4]; N];
    for i0 in (0..nb).step_by(4) {
        for j in 0..4 {
            let i = i0 + j;
            if i >= nb {
                break;
            }
            let b = grp.add(i * gbs);
            ahead(b, gbs, dist);
            let mut is = [_mm256_setzero_si256(); N];
            // pair p of the eight rows times pair p of each token's block
            macro_rules! madd_pair {
                ($w:expr, $p:expr) => {{
                    let (w, p) = ($w, $p);
                    for k in 0..N {
                        let xp = x[k].q.as_ptr().add(i * QK + 2 * p) as *const i32;
                        let xv = _mm256_set1_epi32(xp.read_unaligned());
                        is[k] = dpwd(is[k], w, xv);
                    }
                }};
            }
            if KIND == Q80 {
                for p in 0..16 {
                    let v = _mm_loadu_si128(b.add(qo + 16 * p) as *const __m128i);
                    madd_pair!(_mm256_cvtepi8_epi16(v), p);
                }
            } else {
                let h = if five {
                    _mm256_loadu_si256(b.add(ho) as *const __m256i)
                } else {
                    _mm256_setzero_si256()
                };
                for c in 0..4 {
                    let v = _mm256_loadu_si256(b.add(qo + 32 * c) as *const __m256i);
                    for s in 0..4 {
                        let p = 4 * c + s;
                        let mut w = _mm256_and_si256(
                            _mm256_srl_epi32(v, _mm_cvtsi32_si128(4 * s as i32)),
                            m4,
                        );
                        if five {
                            // bits p and 16 + p to bits 4 and 20
                            let hb = if p <= 4 {
                                _mm256_sll_epi32(h, _mm_cvtsi32_si128((4 - p) as i32))
                            } else {
                                _mm256_srl_epi32(h, _mm_cvtsi32_si128((p - 4) as i32))
                            };
                            w = if VNNI {
                                // w | (hb & b5) in one instruction
                                _mm256_ternarylogic_epi32::<0xF8>(w, hb, b5)
                            } else {
                                _mm256_or_si256(w, _mm256_and_si256(hb, b5))
                            };
                        }
                        madd_pair!(w, p);
                    }
                }
                if KIND == Q40 || KIND == Q50 {
                    // sum((w - off) x) = sum(w x) - off sum(x), both exact in i32: the
                    // offset comes off once per block instead of once per pair
                    for k in 0..N {
                        let s16 = x[k].s16.as_ptr().add(2 * i);
                        let sx = *s16 + *s16.add(1);
                        is[k] = _mm256_sub_epi32(is[k], _mm256_set1_epi32(off * sx));
                    }
                }
            }
            let d = _mm256_cvtph_ps(_mm_loadu_si128(b as *const __m128i));
            for k in 0..N {
                let s = _mm256_mul_ps(d, _mm256_set1_ps(*x[k].d.get_unchecked(i)));
                let f = _mm256_cvtepi32_ps(is[k]);
                if has_min(KIND) {
                    let m = _mm256_cvtph_ps(_mm_loadu_si128(b.add(mo) as *const __m128i));
                    let xs = _mm256_set1_ps(*x[k].sum.get_unchecked(i));
                    let t = _mm256_fmadd_ps(m, xs, _mm256_mul_ps(f, s));
                    acc[k][j] = _mm256_add_ps(acc[k][j], t);
                } else {
                    acc[k][j] = _mm256_fmadd_ps(f, s, acc[k][j]);
                }
            }
        }
    }
    amap(acc, |p| _mm256_add_ps(_mm256_add_ps(p[0], p[2]), _mm256_add_ps(p[1], p[3])))
}

/// Q4_K, the eight rows of a packed group against `N` activation rows (8-bit per 256):
/// each word of a chunk holds four consecutive weights of its row in its low nibbles and the
/// next four in its high ones, multiplied by the token's four activations (broadcast) with
/// `maddubs`; a sub-block's products add up in i16 (at most 30480), are weighed by each row's
/// scale with `madd`, and the mins by the activation sums per 16. Every sum is the exact i32
/// of the one-row kernel, and the float step is its, lane by lane.
#[inline(always)]
unsafe fn q4_k_p8<const N: usize>(grp: *const u8, nb: usize, x: [ActsRow; N]) -> [__m256; N] {
    let m4 = _mm256_set1_epi8(0x0F);
    let mut acc = [_mm256_setzero_ps(); N];
    // a row's 6-bit value per lane as the 16-bit pair (v, v)
    macro_rules! pair {
        ($p:expr) => {{
            let v = _mm256_cvtepu8_epi32(_mm_loadl_epi64($p as *const __m128i));
            _mm256_or_si256(v, _mm256_slli_epi32::<16>(v))
        }};
    }
    let dist = super::stream_ahead();
    for i in 0..nb {
        let b = grp.add(i * 1184);
        ahead(b, 1184, dist);
        let mut sumi = [_mm256_setzero_si256(); N];
        let mut summ = [_mm256_setzero_si256(); N];
        for j in 0..8 {
            let mut s16 = [_mm256_setzero_si256(); N];
            for l in 0..4 {
                let v = _mm256_loadu_si256(b.add(160 + 128 * j + 32 * l) as *const __m256i);
                let lo = _mm256_and_si256(v, m4);
                let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(v), m4);
                for k in 0..N {
                    let xp = x[k].q8.as_ptr().add(i * 256 + 32 * j + 8 * l) as *const i32;
                    let x0 = _mm256_set1_epi32(xp.read_unaligned());
                    let x1 = _mm256_set1_epi32(xp.add(1).read_unaligned());
                    s16[k] = _mm256_add_epi16(s16[k], _mm256_maddubs_epi16(lo, x0));
                    s16[k] = _mm256_add_epi16(s16[k], _mm256_maddubs_epi16(hi, x1));
                }
            }
            let sc = pair!(b.add(32 + 8 * j));
            let mn = pair!(b.add(96 + 8 * j));
            for k in 0..N {
                sumi[k] = dpwd(sumi[k], s16[k], sc);
                let bp = x[k].bs8.as_ptr().add(i * 16 + 2 * j) as *const i32;
                let bv = _mm256_set1_epi32(bp.read_unaligned());
                summ[k] = dpwd(summ[k], mn, bv);
            }
        }
        let d = _mm256_cvtph_ps(_mm_loadu_si128(b as *const __m128i));
        let dmin = _mm256_cvtph_ps(_mm_loadu_si128(b.add(16) as *const __m128i));
        for k in 0..N {
            let dx = _mm256_set1_ps(*x[k].d8.get_unchecked(i));
            let t1 = _mm256_mul_ps(_mm256_mul_ps(d, dx), _mm256_cvtepi32_ps(sumi[k]));
            let t2 = _mm256_mul_ps(_mm256_mul_ps(dmin, dx), _mm256_cvtepi32_ps(summ[k]));
            acc[k] = _mm256_add_ps(acc[k], _mm256_sub_ps(t1, t2));
        }
    }
    acc
}

/// Q6_K, the eight rows of a packed group against `N` activation rows (16-bit): each block
/// of 32's two sub-block sums form exactly per row, are weighed by the rows' scales in i32,
/// and the float step of `q6_k_rn` runs lane by lane.
#[inline(always)]
unsafe fn q6_k_p8<const N: usize>(grp: *const u8, nb: usize, x: [ActsRow; N]) -> [__m256; N] {
    let mut acc = [[_mm256_setzero_ps(); 4]; N];
    let dist = super::stream_ahead();
    for i in 0..nb {
        let b = grp.add(i * 2192);
        ahead(b, 2192, dist);
        let d = _mm256_cvtph_ps(_mm_loadu_si128(b as *const __m128i));
        for a in 0..8 {
            let base = b.add(144 + 256 * a);
            let mut is = [[_mm256_setzero_si256(); 2]; N];
            for p in 0..16 {
                // pair p of the eight rows: the codes q (0..64) as 16-bit integers; the
                // offset 32 comes off per sub-block below
                let w = _mm256_cvtepu8_epi16(_mm_loadu_si128(base.add(16 * p) as *const __m128i));
                for k in 0..N {
                    let xp = x[k].q.as_ptr().add((8 * i + a) * QK + 2 * p) as *const i32;
                    let xv = _mm256_set1_epi32(xp.read_unaligned());
                    is[k][p / 8] = dpwd(is[k][p / 8], w, xv);
                }
            }
            let sa = _mm256_cvtepi8_epi32(_mm_loadl_epi64(b.add(16 + 16 * a) as *const __m128i));
            let sb = _mm256_cvtepi8_epi32(_mm_loadl_epi64(b.add(24 + 16 * a) as *const __m128i));
            for k in 0..N {
                // sum((q - 32) x) = sum(q x) - 32 sum(x), exactly, per sub-block of 16
                let s16 = x[k].s16.as_ptr().add(2 * (8 * i + a));
                for (e, v) in is[k].iter_mut().enumerate() {
                    *v = _mm256_sub_epi32(*v, _mm256_set1_epi32(32 * *s16.add(e)));
                }
                let f = _mm256_add_ps(
                    _mm256_cvtepi32_ps(_mm256_mullo_epi32(is[k][0], sa)),
                    _mm256_cvtepi32_ps(_mm256_mullo_epi32(is[k][1], sb)),
                );
                let dx = _mm256_set1_ps(*x[k].d.get_unchecked(8 * i + a));
                acc[k][a % 4] = _mm256_fmadd_ps(f, _mm256_mul_ps(d, dx), acc[k][a % 4]);
            }
        }
    }
    amap(acc, |p| _mm256_add_ps(_mm256_add_ps(p[0], p[2]), _mm256_add_ps(p[1], p[3])))
}

/// A generic 16-bit K type's packed group (`pack::k16_layout`), 8 rows in lanes, against `N`
/// activation rows: each weight pair's codes come out of the low (and high) planes as two
/// i16 per lane; the integer sums run over the unsigned codes, and the offset (Q3_K 4,
/// IQ4_XS's grid shifted by 128) comes off per 16 with the activations' sums, exactly. Then
/// the float steps of `k16_row`, lane by lane.
#[inline(always)]
unsafe fn k16_p8<const T: u8, const N: usize>(
    grp: *const u8,
    nb: usize,
    x: [ActsRow; N],
) -> [__m256; N] {
    use crate::acts::K16Min;
    let dt = k16_dtype(T);
    let lay = crate::pack::k16_layout(dt);
    let gbb = crate::pack::group_block_bytes(dt);
    let min = crate::acts::k16_min(dt);
    let off: i32 = match T {
        K3 => 4,
        XS => 128,
        _ => 0,
    };
    let lo_mask = _mm256_set1_epi32(if lay.lo_bits == 4 {
        0x000F_000F
    } else {
        0x0003_0003
    });
    let hi_mask = _mm256_set1_epi32(0x0001_0001 << lay.lo_bits);
    // IQ4_XS: the grid plus 128 as bytes; index bytes with bit 7 set (the high byte of each
    // 16-bit lane) give 0
    let mut grid = [0u8; 16];
    for (g, &v) in grid.iter_mut().zip(&crate::tables::KVALUES_IQ4NL) {
        *g = (v as i32 + 128) as u8;
    }
    let tbl = _mm256_broadcastsi128_si256(_mm_loadu_si128(grid.as_ptr() as *const __m128i));
    let hb80 = _mm256_set1_epi32(0x8000_8000u32 as i32);
    let dist = super::stream_ahead();
    let mut acc = [[_mm256_setzero_ps(); 4]; N];
    for i in 0..nb {
        let b = grp.add(i * gbb);
        ahead(b, gbb, dist);
        let d = _mm256_cvtph_ps(_mm_loadu_si128(b as *const __m128i));
        let dmin = match lay.dmin {
            Some(o) => _mm256_cvtph_ps(_mm_loadu_si128(b.add(o) as *const __m128i)),
            None => _mm256_setzero_ps(),
        };
        let sc = b.add(lay.scales);
        for a in 0..8 {
            let base = b.add(lay.codes + lay.block * a);
            let h = if lay.hi {
                _mm256_loadu_si256(base.add(32 * lay.lo_bits) as *const __m256i)
            } else {
                _mm256_setzero_si256()
            };
            let mut is = [[_mm256_setzero_si256(); 2]; N];
            let per = 16 / lay.lo_bits; // pairs per 32-bit word
            for c in 0..lay.lo_bits {
                let v = _mm256_loadu_si256(base.add(32 * c) as *const __m256i);
                for s in 0..per {
                    let p = per * c + s;
                    let mut w = _mm256_and_si256(srl32(v, lay.lo_bits * s), lo_mask);
                    if lay.hi {
                        // bit p (and 16 + p) to bit lo_bits (and 16 + lo_bits)
                        let hb = if p <= lay.lo_bits {
                            _mm256_sll_epi32(h, _mm_cvtsi32_si128((lay.lo_bits - p) as i32))
                        } else {
                            srl32(h, p - lay.lo_bits)
                        };
                        w = _mm256_or_si256(w, _mm256_and_si256(hb, hi_mask));
                    }
                    if T == XS {
                        w = _mm256_shuffle_epi8(tbl, _mm256_or_si256(w, hb80));
                    }
                    for k in 0..N {
                        let xp = x[k].q.as_ptr().add((8 * i + a) * QK + 2 * p) as *const i32;
                        let xv = _mm256_set1_epi32(xp.read_unaligned());
                        is[k][p / 8] = dpwd(is[k][p / 8], w, xv);
                    }
                }
            }
            // per 16: scales (and mins) of the eight rows
            let lanes8 = |o: usize| _mm_loadl_epi64(sc.add(o) as *const __m128i);
            let (scs, mns) = match T {
                K2 => {
                    let r = [
                        _mm256_cvtepu8_epi32(lanes8(8 * (2 * a))),
                        _mm256_cvtepu8_epi32(lanes8(8 * (2 * a + 1))),
                    ];
                    let m4 = _mm256_set1_epi32(0xF);
                    (
                        amap(r, |v| _mm256_and_si256(v, m4)),
                        amap(r, |v| _mm256_srli_epi32(v, 4)),
                    )
                }
                K3 => (
                    [
                        _mm256_cvtepi8_epi32(lanes8(8 * (2 * a))),
                        _mm256_cvtepi8_epi32(lanes8(8 * (2 * a + 1))),
                    ],
                    [_mm256_setzero_si256(); 2],
                ),
                K5 => {
                    let s = _mm256_cvtepu8_epi32(lanes8(8 * a));
                    let m = _mm256_cvtepu8_epi32(lanes8(64 + 8 * a));
                    ([s, s], [m, m])
                }
                _ => {
                    let s = _mm256_cvtepi8_epi32(lanes8(8 * a));
                    ([s, s], [_mm256_setzero_si256(); 2])
                }
            };
            for k in 0..N {
                let ab = 8 * i + a;
                let s16 = x[k].s16.as_ptr().add(2 * ab);
                let mut f = [_mm256_setzero_ps(); 2];
                for e in 0..2 {
                    let mut v = is[k][e];
                    if off != 0 {
                        v = _mm256_sub_epi32(v, _mm256_set1_epi32(off * *s16.add(e)));
                    }
                    f[e] = _mm256_cvtepi32_ps(_mm256_mullo_epi32(v, scs[e]));
                }
                let dx = _mm256_set1_ps(*x[k].d.get_unchecked(ab));
                let p = &mut acc[k][a % 4];
                *p = _mm256_fmadd_ps(_mm256_add_ps(f[0], f[1]), _mm256_mul_ps(d, dx), *p);
                match min {
                    K16Min::None => {}
                    K16Min::PerBlock => {
                        // negated by the sign bit, as the scalar `-` (zeros included)
                        let m = _mm256_xor_ps(
                            _mm256_mul_ps(dmin, _mm256_cvtepi32_ps(mns[0])),
                            _mm256_set1_ps(-0.0),
                        );
                        *p = _mm256_fmadd_ps(m, _mm256_set1_ps(*x[k].sum.get_unchecked(ab)), *p);
                    }
                    K16Min::PerHalf => {
                        let g = |e: usize| {
                            let sv = _mm256_set1_epi32(*s16.add(e));
                            _mm256_cvtepi32_ps(_mm256_mullo_epi32(mns[e], sv))
                        };
                        let nd = _mm256_mul_ps(_mm256_xor_ps(dmin, _mm256_set1_ps(-0.0)), dx);
                        *p = _mm256_fmadd_ps(_mm256_add_ps(g(0), g(1)), nd, *p);
                    }
                }
            }
        }
    }
    amap(acc, |p| _mm256_add_ps(_mm256_add_ps(p[0], p[2]), _mm256_add_ps(p[1], p[3])))
}

/// 32-bit lanes of `v` shifted right by `n` bits.
#[inline(always)]
unsafe fn srl32(v: __m256i, n: usize) -> __m256i {
    _mm256_srl_epi32(v, _mm_cvtsi32_si128(n as i32))
}

/// Groups ahead whose lines the packed kernels request while a group is summed.
const PF_AHEAD: usize = 2;

/// [`rows_q16`] on a packed matrix (`pack.rs`; `n_rows` rows of `rb` bytes): whole groups
/// of 8 rows with the group kernels, the rows past the last whole group (stored after the
/// groups, unpacked) with the one-row kernels. Groups that `rows` cuts are computed whole and
/// only their rows in `rows` are put.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn rows_q16_packed_impl(
    dtype: hearth_core::DType,
    bytes: &[u8],
    rb: usize,
    n_rows: usize,
    rows: std::ops::Range<usize>,
    acts: &crate::acts::QuantizedActs,
    n_tok: usize,
    put: &mut impl crate::Sink,
) {
    use hearth_core::DType as D;
    if n_tok == 0 {
        return;
    }
    let full = n_rows / 8 * 8;
    let gb = crate::pack::group_bytes(dtype, rb);
    let nb = rb / dtype.type_size();
    let tail = full / 8 * gb;
    let prefetch = super::sw_prefetch();
    // the tokens' activation rows, taken once for every group (a decode step's matrices are
    // small: per group, `QuantizedActs::row`'s slicing was 4% of a MoE model's decode); as
    // many as the batches that read this layout have
    const KEPT: usize = crate::pack::PACKED_BELOW;
    let mut kept = [acts.row(0); KEPT];
    for (t, k) in kept.iter_mut().enumerate().take(n_tok).skip(1) {
        *k = acts.row(t);
    }
    let xrow = |t: usize| if t < KEPT { kept[t] } else { acts.row(t) };
    // a group's rows against tokens t..t + N at once: the weights are decoded once for the N
    // tokens (a decode step of several sequences), each token in its own accumulators, so
    // every value is the one-token kernel's
    macro_rules! put_n {
        ($g:expr, $t:expr, $res:expr) => {{
            for (k, v) in $res.iter().enumerate() {
                let mut o = [0f32; 8];
                _mm256_storeu_ps(o.as_mut_ptr(), *v);
                for (l, &v) in o.iter().enumerate() {
                    if rows.contains(&($g + l)) {
                        put.put($t + k, $g + l, v);
                    }
                }
            }
        }};
    }
    macro_rules! run {
        ($p8:ident [$($c:ident),*], $max:literal, $one:expr) => {{
            let mut g = rows.start / 8 * 8;
            while g < rows.end.min(full) {
                let grp = bytes.as_ptr().add(g / 8 * gb);
                if prefetch && g + PF_AHEAD * 8 < rows.end.min(full) {
                    let a = grp.add(PF_AHEAD * gb);
                    let mut o = 0;
                    while o < gb {
                        _mm_prefetch::<_MM_HINT_T0>(a.add(o) as *const i8);
                        o += 64;
                    }
                }
                let mut t = 0;
                while t < n_tok {
                    match (n_tok - t).min($max) {
                        1 => {
                            put_n!(g, t, $p8::<$($c,)* 1>(grp, nb, [xrow(t)]));
                            t += 1;
                        }
                        2 => {
                            let x = lanes_of(|k| xrow(t + k));
                            put_n!(g, t, $p8::<$($c,)* 2>(grp, nb, x));
                            t += 2;
                        }
                        3 => {
                            let x = lanes_of(|k| xrow(t + k));
                            put_n!(g, t, $p8::<$($c,)* 3>(grp, nb, x));
                            t += 3;
                        }
                        _ => {
                            let x = lanes_of(|k| xrow(t + k));
                            put_n!(g, t, $p8::<$($c,)* 4>(grp, nb, x));
                            t += 4;
                        }
                    }
                }
                g += 8;
            }
            for r in rows.start.max(full)..rows.end {
                let o = tail + (r - full) * rb;
                let row = &bytes[o..o + rb];
                for t in 0..n_tok {
                    put.put(t, r, $one(row, [xrow(t)])[0]);
                }
            }
        }};
    }
    match dtype {
        // tokens at once per type: as many as gain (one-thread GMAC/s in cache, Zen 4, 1536 x
        // 1024, by tokens at once 1 / 2 / 4: Q4_0 27 / 45 / 59, Q4_K 65 / 92 / 109, Q5_K 25 / 40
        // / 39, IQ4_XS 29 / 43 / 40, Q6_K 37 / 19 / 25)
        D::Q4_0 => run!(legacy_p8[Q40], 4, legacy_row::<1, Q40>),
        D::Q4_1 => run!(legacy_p8[Q41], 4, legacy_row::<1, Q41>),
        D::Q8_0 => run!(legacy_p8[Q80], 4, legacy_row::<1, Q80>),
        D::Q5_0 => run!(legacy_p8[Q50], 4, legacy_row::<1, Q50>),
        D::Q5_1 => run!(legacy_p8[Q51], 4, legacy_row::<1, Q51>),
        D::Q4_K => run!(q4_k_p8[], 4, q4_k_q8k_n::<1>),
        D::Q6_K => run!(q6_k_p8[], 1, q6_k_q16_n::<1>),
        D::Q2_K => run!(k16_p8[K2], 4, |r, [x]: [ActsRow; 1]| [k16_row::<K2>(r, x)]),
        D::Q3_K => run!(k16_p8[K3], 4, |r, [x]: [ActsRow; 1]| [k16_row::<K3>(r, x)]),
        D::Q5_K => run!(k16_p8[K5], 2, |r, [x]: [ActsRow; 1]| [k16_row::<K5>(r, x)]),
        D::IQ4_XS => run!(k16_p8[XS], 2, |r, [x]: [ActsRow; 1]| [k16_row::<XS>(r, x)]),
        _ => {}
    }
}
