// The batched kernels of the AVX-512 build: 16 tokens in the lanes of a 512-bit register
// (`QuantizedActs::gw == 16`, see `acts::group_width`). Included into `x86::avx512` after
// `x86_kernels.rs`, whose weight decoders they share. They are the 8-token kernels of that
// file (`legacy_t8`, `q6_k_t8`, `k16_t8`, `q4_k_t8`) on registers twice as wide: each weight
// pair (or word of 4 nibbles) is broadcast once for 16 tokens per group, and every
// (row, token) gets exactly the one-row kernel's arithmetic: exact i32 block sums, then the
// same float steps lane by lane.
//
// Why: on a CPU with full-width 512-bit units (AMD Zen 5; measured on this project's 2-core
// EPYC) `vpdpwssd` on a zmm register does twice the multiply-adds of the ymm form at the
// same instruction rate (287 against 143 GMAC/s per core in a loop of independent sums).

/// `acc + madd(a, b)` on 512-bit registers: i16 pairs multiplied and added into i32 lanes
/// (`vpdpwssd`, as inline assembly for the reason given at [`vpdpwssd`]).
#[inline]
#[target_feature(enable = "avx512f,avx512vnni")]
unsafe fn dpwd16(mut acc: __m512i, a: __m512i, b: __m512i) -> __m512i {
    std::arch::asm!(
        "vpdpwssd {acc}, {a}, {b}",
        acc = inout(zmm_reg) acc,
        a = in(zmm_reg) a,
        b = in(zmm_reg) b,
        options(pure, nomem, nostack, preserves_flags)
    );
    acc
}

/// `vpdpbusd` on 512-bit registers: `acc` plus, per i32 lane, the four products of `a`'s
/// unsigned bytes with `b`'s signed bytes, exactly.
#[inline]
#[target_feature(enable = "avx512f,avx512vnni")]
unsafe fn dpbusd16(mut acc: __m512i, a: __m512i, b: __m512i) -> __m512i {
    std::arch::asm!(
        "vpdpbusd {acc}, {a}, {b}",
        acc = inout(zmm_reg) acc,
        a = in(zmm_reg) a,
        b = in(zmm_reg) b,
        options(pure, nomem, nostack, preserves_flags)
    );
    acc
}

/// 16 regrouped i32 words at `p`.
#[inline(always)]
unsafe fn ld16i(p: *const i32) -> __m512i {
    _mm512_loadu_si512(p as *const _)
}

// Types of the 16-bit pair kernels (`T` below): the 32-element block types, Q6_K, and the
// generic 16-bit K types.
const W40: u8 = 0;
const W41: u8 = 1;
const W80: u8 = 2;
const W50: u8 = 3;
const W51: u8 = 4;
const W6K: u8 = 5;
const W2K: u8 = 6;
const W3K: u8 = 7;
const W5K: u8 = 8;
const WXS: u8 = 9;

/// The `legacy_w` kind of a 32-element block type.
const fn wide_legacy(t: u8) -> u8 {
    match t {
        W40 => Q40,
        W41 => Q41,
        W80 => Q80,
        W50 => Q50,
        _ => Q51,
    }
}

/// The `k16_*` code of a generic 16-bit K type.
const fn wide_k16(t: u8) -> u8 {
    match t {
        W2K => K2,
        W3K => K3,
        W5K => K5,
        _ => XS,
    }
}

/// Whether a type's activation block sums as two halves of 16 (each weighed by its own
/// sub-block scale, then converted to float and added), as Q6_K and the K types do.
const fn wide_halves(t: u8) -> bool {
    t >= W6K
}

/// Decode row `src` of type `T` for the 16-token kernels, once for all the token groups: per
/// activation block `a` of 32 weights, its 16 i16 pairs as i32 words at `w[16 a..]` (the
/// values `legacy_w`, `q6_k_w` and `k16_w` give, scales folded in where those fold them) and
/// four float parameters at `p[4 a..]`: the block's scale `d`, then the 32-element types'
/// min, or a K type's min terms (Q5_K: `-(dmin * m)`; Q2_K: `-dmin` and the two mins of 16
/// as i32 bits).
#[inline(always)]
unsafe fn decode_wide<const T: u8>(src: &[u8], na: usize, w: *mut i32, p: *mut f32) {
    // block a goes to slot `block_slot(a, na, 16)` (the activations' order), its parameters
    // likewise
    let slot = |a: usize| crate::acts::block_slot(a, na, 16);
    let store = |a: usize, v: (__m256i, __m256i)| {
        let a = slot(a);
        _mm256_storeu_si256(w.add(16 * a) as *mut __m256i, v.0);
        _mm256_storeu_si256(w.add(16 * a + 8) as *mut __m256i, v.1);
    };
    if T <= W51 {
        let kind = wide_legacy(T);
        let bs = legacy_bs(kind);
        for a in 0..src.len() / bs {
            let b = src.as_ptr().add(a * bs);
            store(a, match kind {
                Q40 => legacy_w::<Q40>(b),
                Q41 => legacy_w::<Q41>(b),
                Q80 => legacy_w::<Q80>(b),
                Q50 => legacy_w::<Q50>(b),
                _ => legacy_w::<Q51>(b),
            });
            *p.add(4 * slot(a)) = f16_at(b);
            *p.add(4 * slot(a) + 1) = if has_min(kind) { f16_at(b.add(2)) } else { 0.0 };
        }
    } else if T == W6K {
        for (i, blk) in as_blocks::<BlockQ6K>(src).iter().enumerate() {
            let d = f16le(blk.d);
            for j in 0..8 {
                store(8 * i + j, q6_k_w(blk, j));
                *p.add(4 * slot(8 * i + j)) = d;
            }
        }
    } else {
        use crate::acts::K16Min;
        const fn dt_of(t: u8) -> hearth_core::DType {
            k16_dtype(wide_k16(t))
        }
        let dt = dt_of(T);
        let ts = dt.type_size();
        for (i, blk) in src.chunks_exact(ts).enumerate() {
            let k = crate::acts::k16_scales(dt, blk);
            for j in 0..8 {
                let a = 8 * i + j;
                store(a, match wide_k16(T) {
                    K2 => k16_w::<K2>(blk.as_ptr(), j, &k),
                    K3 => k16_w::<K3>(blk.as_ptr(), j, &k),
                    K5 => k16_w::<K5>(blk.as_ptr(), j, &k),
                    _ => k16_w::<XS>(blk.as_ptr(), j, &k),
                });
                let pa = p.add(4 * slot(a));
                *pa = k.d;
                match crate::acts::k16_min(dt) {
                    K16Min::None => {}
                    K16Min::PerBlock => *pa.add(1) = -(k.dmin * k.mn[2 * j] as f32),
                    K16Min::PerHalf => {
                        *pa.add(1) = -k.dmin;
                        *pa.add(2) = f32::from_bits(k.mn[2 * j] as i32 as u32);
                        *pa.add(3) = f32::from_bits(k.mn[2 * j + 1] as i32 as u32);
                    }
                }
            }
        }
    }
}

/// Activation block `ab` of `R` decoded rows (`w[r]`, `p[r]`: the rows' words and parameters
/// from [`decode_wide`]) against `NG` groups of 16 tokens from group `g0`: the block's exact
/// sums, then the one-row kernels' float step into `acc[r][g]` (the partial sum `ab % 4` of
/// row r and group g).
#[inline(always)]
unsafe fn step_wide<const T: u8, const R: usize, const NG: usize>(
    w: [*const i32; R],
    p: [*const f32; R],
    a: &crate::acts::QuantizedActs,
    g0: usize,
    sl: usize,
    acc: &mut [[__m512; NG]; R],
) {
    let na = crate::acts::block_slots(a.n / QK, 16);
    let (qt, dt, st, s16t) = (a.qt.as_ptr(), a.dt.as_ptr(), a.st.as_ptr(), a.s16t.as_ptr());
    // two chains per (row, group) where there are few groups, for enough independent sums
    // in flight: the halves of 16 where the type keeps them apart, else even and odd pairs
    // (added exactly below); one chain over the 16 pairs with 3 or 4 groups
    let two = wide_halves(T) || NG <= 2;
    let mut is = [[[_mm512_setzero_si512(); 2]; NG]; R];
    let ap0: [*const i32; NG] = lanes_of(|g| qt.add(((g0 + g) * na + sl) * 256));
    let wp0: [*const i32; R] = lanes_of(|r| w[r].add(16 * sl));
    if !two {
        for j in 0..16 {
            let av: [__m512i; NG] = lanes_of(|g| ld16i(ap0[g].add(j * 16)));
            for r in 0..R {
                let wv = _mm512_set1_epi32(*wp0[r].add(j));
                for g in 0..NG {
                    is[r][g][0] = dpwd16(is[r][g][0], wv, av[g]);
                }
            }
        }
    }
    macro_rules! pair {
        ($jj:expr) => {{
            let jj: usize = $jj;
            let js = if wide_halves(T) { [jj, jj + 8] } else { [2 * jj, 2 * jj + 1] };
            for h in 0..2 {
                let j = js[h];
                let av: [__m512i; NG] = lanes_of(|g| ld16i(ap0[g].add(j * 16)));
                for r in 0..R {
                    let wv = _mm512_set1_epi32(*wp0[r].add(j));
                    for g in 0..NG {
                        is[r][g][h] = dpwd16(is[r][g][h], wv, av[g]);
                    }
                }
            }
        }};
    }
    if two {
        pair!(0);
        pair!(1);
        pair!(2);
        pair!(3);
        pair!(4);
        pair!(5);
        pair!(6);
        pair!(7);
    }
    if two && !wide_halves(T) {
        for r in 0..R {
            for g in 0..NG {
                is[r][g][0] = _mm512_add_epi32(is[r][g][0], is[r][g][1]);
            }
        }
    }
    for r in 0..R {
        let pr = p[r].add(4 * sl);
        let d = _mm512_set1_ps(*pr);
        for g in 0..NG {
            let o = ((g0 + g) * na + sl) * 16;
            let dx = _mm512_loadu_ps(dt.add(o));
            let s = _mm512_mul_ps(d, dx);
            let mut v = acc[r][g];
            if T <= W51 {
                let isf = _mm512_cvtepi32_ps(is[r][g][0]);
                if has_min(wide_legacy(T)) {
                    let t = _mm512_fmadd_ps(
                        _mm512_set1_ps(*pr.add(1)),
                        _mm512_loadu_ps(st.add(o)),
                        _mm512_mul_ps(isf, s),
                    );
                    v = _mm512_add_ps(v, t);
                } else {
                    v = _mm512_fmadd_ps(isf, s, v);
                }
            } else {
                let f = _mm512_add_ps(
                    _mm512_cvtepi32_ps(is[r][g][0]),
                    _mm512_cvtepi32_ps(is[r][g][1]),
                );
                v = _mm512_fmadd_ps(f, s, v);
                if T > W6K {
                    use crate::acts::K16Min;
                    match crate::acts::k16_min(k16_dtype(wide_k16(T))) {
                        K16Min::None => {}
                        K16Min::PerBlock => {
                            let m = _mm512_set1_ps(*pr.add(1));
                            v = _mm512_fmadd_ps(m, _mm512_loadu_ps(st.add(o)), v);
                        }
                        K16Min::PerHalf => {
                            let sp = s16t.add(((g0 + g) * na + sl) * 32);
                            let g = |e: usize| {
                                let m = _mm512_set1_epi32((*pr.add(2 + e)).to_bits() as i32);
                                _mm512_cvtepi32_ps(_mm512_mullo_epi32(m, ld16i(sp.add(16 * e))))
                            };
                            let fm = _mm512_add_ps(g(0), g(1));
                            let nd = _mm512_mul_ps(_mm512_set1_ps(*pr.add(1)), dx);
                            v = _mm512_fmadd_ps(fm, nd, v);
                        }
                    }
                }
            }
            acc[r][g] = v;
        }
    }
}

/// Most groups of 16 tokens in a tile (64 tokens): the partial sums are `[16][GMAX][4]`.
const GMAX: usize = 4;

/// Groups of 16 tokens per tile for type `T`: 4 with one sum chain per (row, group), 2 where
/// the type keeps two halves of a block apart (twice the registers).
const fn wide_groups(t: u8) -> usize {
    if wide_halves(t) { 2 } else { GMAX }
}

/// One tile: `nr` (up to 16) decoded rows against `NG` groups of 16 tokens from `g0`, 4 rows
/// per pass; the four partial sums of each (row, group) go to `acc` (`[16][GMAX][4]`).
///
/// A function of its own for each (type, groups), not inlined: in one function with all the
/// others, LLVM's register allocation of one type's loop changed with the code of the others
/// (adding 3- and 4-group tiles for the 32-element types made Q5_0 tiles 20% slower).
#[inline(never)]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn tile_wide<const T: u8, const NG: usize>(
    w: *const i32,
    p: *const f32,
    nr: usize,
    n_blk: usize,
    a: &crate::acts::QuantizedActs,
    g0: usize,
    acc: *mut __m512,
) {
    let na = a.n / QK;
    let (nbs, q4) = (crate::acts::block_slots(na, 16), na.div_ceil(4));
    let wr = |r: usize| w.add(r * nbs * 16);
    let pr = |r: usize| p.add(r * nbs * 4);
    // 4 rows at a time (then one), each partial sum (blocks ab % 4 == pi) in registers over
    // its blocks and stored once: no store in the block loop (stores there, 4K-aliasing the
    // activation loads that follow, made the speed depend on where the heap put buffers)
    macro_rules! rows {
        ($r:expr, $R:literal) => {{
            let r: usize = $r;
            let ws: [*const i32; $R] = lanes_of(|k| wr(r + k));
            let ps: [*const f32; $R] = lanes_of(|k| pr(r + k));
            for pi in 0..4 {
                let mut part = [[_mm512_setzero_ps(); NG]; $R];
                // blocks pi, pi + 4, ... sit in slots pi * q4, pi * q4 + 1, ...
                let (mut ab, mut sl) = (pi, pi * q4);
                while ab < n_blk {
                    step_wide::<T, $R, NG>(ws, ps, a, g0, sl, &mut part);
                    ab += 4;
                    sl += 1;
                }
                for k in 0..$R {
                    for g in 0..NG {
                        *acc.add(((r + k) * GMAX + g) * 4 + pi) = part[k][g];
                    }
                }
            }
        }};
    }
    let mut r = 0;
    while r + 4 <= nr {
        rows!(r, 4);
        r += 4;
    }
    while r < nr {
        rows!(r, 1);
        r += 1;
    }
}

/// Rows `rows` of a 16-bit pair type `T` against `n_tok` tokens in groups of 16: blocks of 16
/// rows decoded once ([`decode_wide`]), then tiles of 16 rows x 32 tokens ([`tile_wide`]);
/// `put(token, row, value)`.
#[inline(always)]
unsafe fn rows_wide16<const T: u8>(
    bytes: &[u8],
    rb: usize,
    rows: std::ops::Range<usize>,
    a: &crate::acts::QuantizedActs,
    n_tok: usize,
    put: &mut impl crate::Sink,
) {
    let na = a.n / QK;
    // activation blocks in a row (`a.n` may be longer)
    let n_blk = if T <= W51 {
        rb / legacy_bs(wide_legacy(T))
    } else if T == W6K {
        rb / std::mem::size_of::<BlockQ6K>() * 8
    } else {
        rb / k16_dtype(wide_k16(T)).type_size() * 8
    };
    let nbs = crate::acts::block_slots(na, 16);
    let mut w = vec![0i32; 16 * nbs * 16];
    let mut p = vec![0f32; 16 * nbs * 4];
    let mut acc = vec![_mm512_setzero_ps(); 16 * GMAX * 4];
    let groups = n_tok.div_ceil(16);
    let mut r0 = rows.start;
    while r0 < rows.end {
        let nr = (rows.end - r0).min(16);
        for k in 0..nr {
            let src = &bytes[(r0 + k) * rb..(r0 + k + 1) * rb];
            decode_wide::<T>(src, na, w.as_mut_ptr().add(k * nbs * 16), p.as_mut_ptr().add(k * nbs * 4));
        }
        prefetch_rows(bytes, rb, r0 + nr..(r0 + nr + 16).min(rows.end));
        let mut g0 = 0;
        while g0 < groups {
            let ng = (groups - g0).min(wide_groups(T));
            let ap = acc.as_mut_ptr();
            let (wp, pp) = (w.as_ptr(), p.as_ptr());
            match ng {
                4 if wide_groups(T) >= 4 => tile_wide::<T, 4>(wp, pp, nr, n_blk, a, g0, ap),
                3 if wide_groups(T) >= 3 => tile_wide::<T, 3>(wp, pp, nr, n_blk, a, g0, ap),
                2 => tile_wide::<T, 2>(wp, pp, nr, n_blk, a, g0, ap),
                _ => tile_wide::<T, 1>(wp, pp, nr, n_blk, a, g0, ap),
            }
            for g in 0..ng {
                let mut v = [_mm512_setzero_ps(); 16];
                for (r, v) in v.iter_mut().enumerate().take(nr) {
                    let q = ap.add((r * GMAX + g) * 4);
                    *v = _mm512_add_ps(_mm512_add_ps(*q, *q.add(2)), _mm512_add_ps(*q.add(1), *q.add(3)));
                }
                emit_tile(&v, r0, nr, 16 * (g0 + g), n_tok, put);
            }
            g0 += ng;
        }
        r0 += nr;
    }
}

/// A 16 x 16 tile of results: `v[r]` holds row `r0 + r` (for `r < nr`) of tokens
/// `t0..t0 + 16` in its lanes. Transposed in registers, so that each token's run of rows goes
/// to [`crate::Sink::put_rows`] at once (tokens from `n_tok` on are padding).
#[inline(always)]
unsafe fn emit_tile(
    v: &[__m512; 16],
    r0: usize,
    nr: usize,
    t0: usize,
    n_tok: usize,
    put: &mut impl crate::Sink,
) {
    let out = transpose16(v);
    let mask: u16 = if nr >= 16 { !0 } else { (1u16 << nr) - 1 };
    let mut o = [0f32; 16];
    for (l, x) in out.iter().enumerate() {
        let t = t0 + l;
        if t >= n_tok {
            break;
        }
        if let Some(p) = put.rows_at(t, r0, nr) {
            // the first nr lanes, straight to the output
            _mm512_mask_storeu_ps(p, mask, *x);
        } else {
            _mm512_storeu_ps(o.as_mut_ptr(), *x);
            put.put_rows(t, r0, &o, nr);
        }
    }
}

/// The transpose of a 16 x 16 matrix of floats held as 16 rows: lane `c` of result `r` is
/// lane `r` of `v[c]`. Pairs of rows interleaved by 32 bits, then by 64 bits, then 128-bit
/// lanes gathered twice. Also used by the CPU backend's attention (its key chunks).
///
/// # Safety
/// The CPU has AVX-512 F (the caller is compiled with it, so that this inlines).
#[inline(always)]
pub unsafe fn transpose16(v: &[__m512; 16]) -> [__m512; 16] {
    let mut t = [_mm512_setzero_ps(); 16];
    for i in 0..8 {
        t[2 * i] = _mm512_unpacklo_ps(v[2 * i], v[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(v[2 * i], v[2 * i + 1]);
    }
    // u[4 q + k]: rows 4q..4q + 4 of the tokens k, 4 + k, 8 + k, 12 + k (one per 128-bit lane)
    let mut u = [_mm512_setzero_ps(); 16];
    for q in 0..4 {
        let (a, b, c, d) = (t[4 * q], t[4 * q + 1], t[4 * q + 2], t[4 * q + 3]);
        let pd = _mm512_castps_pd;
        u[4 * q] = _mm512_castpd_ps(_mm512_unpacklo_pd(pd(a), pd(c)));
        u[4 * q + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(pd(a), pd(c)));
        u[4 * q + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(pd(b), pd(d)));
        u[4 * q + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(pd(b), pd(d)));
    }
    let mut out = [_mm512_setzero_ps(); 16];
    for k in 0..4 {
        // [k r0-3, 8+k r0-3, k r4-7, 8+k r4-7] and [4+k r0-3, 12+k r0-3, 4+k r4-7, 12+k r4-7]
        let x0 = _mm512_shuffle_f32x4::<0b10_00_10_00>(u[k], u[4 + k]);
        let x1 = _mm512_shuffle_f32x4::<0b11_01_11_01>(u[k], u[4 + k]);
        let y0 = _mm512_shuffle_f32x4::<0b10_00_10_00>(u[8 + k], u[12 + k]);
        let y1 = _mm512_shuffle_f32x4::<0b11_01_11_01>(u[8 + k], u[12 + k]);
        out[k] = _mm512_shuffle_f32x4::<0b10_00_10_00>(x0, y0);
        out[8 + k] = _mm512_shuffle_f32x4::<0b11_01_11_01>(x0, y0);
        out[4 + k] = _mm512_shuffle_f32x4::<0b10_00_10_00>(x1, y1);
        out[12 + k] = _mm512_shuffle_f32x4::<0b11_01_11_01>(x1, y1);
    }
    out
}

/// Ask for weight rows `rows` (the next block's, decoded after the current block's tiles) to
/// be brought into L2 while the tiles compute: the decoding loop alone waits on memory.
#[inline(always)]
unsafe fn prefetch_rows(bytes: &[u8], rb: usize, rows: std::ops::Range<usize>) {
    if !super::sw_prefetch() {
        return;
    }
    if rows.is_empty() {
        return;
    }
    let (a, b) = (rows.start * rb, rows.end * rb);
    let p = bytes.as_ptr();
    let mut o = a & !63;
    while o < b {
        _mm_prefetch::<_MM_HINT_T1>(p.add(o) as *const i8);
        o += 64;
    }
}

/// Q4_K rows decoded once for the 16-token kernel: per super-block, the 256 nibbles as bytes
/// in element order (64 words of 4 weights), the 8 scales and 8 mins, `d` and `dmin`.
#[derive(Clone, Copy)]
#[repr(C)]
struct Q4kDec {
    q: [u32; 64],
    sc: [i32; 8],
    mn: [i32; 8],
    d: f32,
    dmin: f32,
}

/// Decode a Q4_K row into `out` (one [`Q4kDec`] per super-block).
#[inline(always)]
unsafe fn decode_q4k(src: &[u8], out: *mut Q4kDec) {
    let m4 = _mm256_set1_epi8(0x0F);
    for (i, b) in as_blocks::<BlockQ4K>(src).iter().enumerate() {
        let o = &mut *out.add(i);
        for c in 0..4 {
            let v = _mm256_loadu_si256(b.qs.as_ptr().add(c * 32) as *const __m256i);
            _mm256_storeu_si256(o.q.as_mut_ptr().add(16 * c) as *mut __m256i, _mm256_and_si256(v, m4));
            _mm256_storeu_si256(
                o.q.as_mut_ptr().add(16 * c + 8) as *mut __m256i,
                _mm256_and_si256(_mm256_srli_epi16(v, 4), m4),
            );
        }
        let (sc, mn) = scales_mins_k4(&b.scales);
        for j in 0..8 {
            o.sc[j] = sc[j] as i32;
            o.mn[j] = mn[j] as i32;
        }
        (o.d, o.dmin) = (f16le(b.d), f16le(b.dmin));
    }
}

/// Q4_K, super-block `i` of `R` decoded rows against `NG` groups of 16 tokens (`q4_k_t8`'s
/// VNNI path on 512-bit registers): each word of 4 nibbles is broadcast and `vpdpbusd`
/// multiplies it by 16 tokens' 4 activations into exact i32 sums per sub-block, which
/// `vpmulld` weighs by the sub-block's scale; the mins against the activation sums per 16;
/// then the one-row kernel's float step into `acc[r * 2 + g]`.
#[inline(always)]
unsafe fn step_q4k<const R: usize, const NG: usize>(
    w: [*const Q4kDec; R],
    a: &crate::acts::QuantizedActs,
    g0: usize,
    i: usize,
    acc: *mut __m512,
) {
    let na = a.n / 256;
    let (q8t, d8t, b8t) = (a.q8t.as_ptr(), a.d8t.as_ptr(), a.b8t.as_ptr());
    let blk: [&Q4kDec; R] = lanes_of(|r| &*w[r].add(i));
    let mut sumi = [[_mm512_setzero_si512(); NG]; R];
    // two sub-blocks at a time: twice the independent sums in flight
    for jp in 0..4 {
        let mut s32 = [[[_mm512_setzero_si512(); 2]; NG]; R];
        for k in 0..8 {
            for h in 0..2 {
                let j = 2 * jp + h;
                let av: [__m512i; NG] = lanes_of(|g| {
                    ld16i(q8t.add(((g0 + g) * na + i) * 1024 + (j * 8 + k) * 16))
                });
                for r in 0..R {
                    let wv = _mm512_set1_epi32(blk[r].q[j * 8 + k] as i32);
                    for g in 0..NG {
                        s32[r][g][h] = dpbusd16(s32[r][g][h], wv, av[g]);
                    }
                }
            }
        }
        for h in 0..2 {
            for r in 0..R {
                let scv = _mm512_set1_epi32(blk[r].sc[2 * jp + h]);
                for g in 0..NG {
                    sumi[r][g] =
                        _mm512_add_epi32(sumi[r][g], _mm512_mullo_epi32(s32[r][g][h], scv));
                }
            }
        }
    }
    // the mins against the activations' sums per 16: all rows' chains side by side
    let mut summ = [[_mm512_setzero_si512(); NG]; R];
    for j in 0..8 {
        let bv: [__m512i; NG] = lanes_of(|g| ld16i(b8t.add(((g0 + g) * na + i) * 128 + j * 16)));
        for r in 0..R {
            // the min as the 16-bit pair (m, m)
            let mv = _mm512_set1_epi32(blk[r].mn[j] * 0x1_0001);
            for g in 0..NG {
                summ[r][g] = dpwd16(summ[r][g], bv[g], mv);
            }
        }
    }
    for r in 0..R {
        let (d, dmin) = (_mm512_set1_ps(blk[r].d), _mm512_set1_ps(blk[r].dmin));
        for g in 0..NG {
            let dx = _mm512_loadu_ps(d8t.add(((g0 + g) * na + i) * 16));
            let t1 = _mm512_mul_ps(_mm512_mul_ps(d, dx), _mm512_cvtepi32_ps(sumi[r][g]));
            let t2 = _mm512_mul_ps(_mm512_mul_ps(dmin, dx), _mm512_cvtepi32_ps(summ[r][g]));
            let ap = acc.add(r * 2 + g);
            *ap = _mm512_add_ps(*ap, _mm512_sub_ps(t1, t2));
        }
    }
}

/// Rows `rows` of Q4_K against `n_tok` tokens in groups of 16 (`rows_wide16` for Q4_K).
#[inline(always)]
unsafe fn rows_wide_q4k(
    bytes: &[u8],
    rb: usize,
    rows: std::ops::Range<usize>,
    a: &crate::acts::QuantizedActs,
    n_tok: usize,
    put: &mut impl crate::Sink,
) {
    let nsb = rb / std::mem::size_of::<BlockQ4K>();
    let zero = Q4kDec { q: [0; 64], sc: [0; 8], mn: [0; 8], d: 0.0, dmin: 0.0 };
    let mut w = vec![zero; 16 * nsb];
    let mut acc = vec![_mm512_setzero_ps(); 16 * 2];
    let groups = n_tok.div_ceil(16);
    let mut r0 = rows.start;
    while r0 < rows.end {
        let nr = (rows.end - r0).min(16);
        for k in 0..nr {
            decode_q4k(&bytes[(r0 + k) * rb..(r0 + k + 1) * rb], w.as_mut_ptr().add(k * nsb));
        }
        prefetch_rows(bytes, rb, r0 + nr..(r0 + nr + 16).min(rows.end));
        let wr = |r: usize| w.as_ptr().add(r * nsb);
        let mut g0 = 0;
        while g0 < groups {
            let ng = (groups - g0).min(2);
            let ap = acc.as_mut_ptr();
            for k in 0..32 {
                *ap.add(k) = _mm512_setzero_ps();
            }
            for i in 0..nsb {
                let mut r = 0;
                while r + 4 <= nr {
                    let q = [wr(r), wr(r + 1), wr(r + 2), wr(r + 3)];
                    if ng == 2 {
                        step_q4k::<4, 2>(q, a, g0, i, ap.add(r * 2));
                    } else {
                        step_q4k::<4, 1>(q, a, g0, i, ap.add(r * 2));
                    }
                    r += 4;
                }
                while r < nr {
                    if ng == 2 {
                        step_q4k::<1, 2>([wr(r)], a, g0, i, ap.add(r * 2));
                    } else {
                        step_q4k::<1, 1>([wr(r)], a, g0, i, ap.add(r * 2));
                    }
                    r += 1;
                }
            }
            for g in 0..ng {
                let mut v = [_mm512_setzero_ps(); 16];
                for (r, v) in v.iter_mut().enumerate().take(nr) {
                    *v = *ap.add(r * 2 + g);
                }
                emit_tile(&v, r0, nr, 16 * (g0 + g), n_tok, put);
            }
            g0 += ng;
        }
        r0 += nr;
    }
}

/// The batched path of `rows_q16_impl` with 16 tokens in lanes: `false` (nothing done)
/// unless the activations are regrouped 16 rows at a time in the form `dtype` reads.
#[inline(always)]
unsafe fn rows_wide(
    dtype: hearth_core::DType,
    bytes: &[u8],
    rb: usize,
    rows: std::ops::Range<usize>,
    acts: &crate::acts::QuantizedActs,
    n_tok: usize,
    put: &mut impl crate::Sink,
) -> bool {
    use hearth_core::DType as D;
    if acts.gw != 16 {
        return false;
    }
    let q16 = !acts.qt.is_empty();
    macro_rules! go {
        ($t:expr) => {
            rows_wide16::<{ $t }>(bytes, rb, rows, acts, n_tok, put)
        };
    }
    match dtype {
        D::Q4_0 if q16 => go!(W40),
        D::Q4_1 if q16 => go!(W41),
        D::Q8_0 if q16 => go!(W80),
        D::Q5_0 if q16 => go!(W50),
        D::Q5_1 if q16 => go!(W51),
        D::Q6_K if q16 => go!(W6K),
        D::Q2_K if q16 => go!(W2K),
        D::Q3_K if q16 => go!(W3K),
        D::Q5_K if q16 => go!(W5K),
        D::IQ4_XS if q16 => go!(WXS),
        D::Q4_K if !acts.q8t.is_empty() => rows_wide_q4k(bytes, rb, rows, acts, n_tok, put),
        _ => return false,
    }
    true
}

fast! {
    /// `dst[k * 16 + l] = src[l][k]` for `k, l < 16`: 16 rows of 16 words transposed, for the
    /// regrouped activations (`acts.rs`); a null row reads as zeros.
    ///
    /// # Safety
    /// The CPU has AVX-512 F; each non-null `src[l]` is readable for 16 words, `dst` writable
    /// for 256.
    pub unsafe fn transpose_words16(src: [*const i32; 16], dst: *mut i32) {
        let mut v = [_mm512_setzero_ps(); 16];
        for (l, v) in v.iter_mut().enumerate() {
            if !src[l].is_null() {
                *v = _mm512_castsi512_ps(_mm512_loadu_si512(src[l] as *const _));
            }
        }
        let t = transpose16(&v);
        for (k, t) in t.iter().enumerate() {
            _mm512_storeu_ps(dst.add(16 * k) as *mut f32, *t);
        }
    }
}
