//! hearth-quant: the ggml block formats.
//!
//! For each type: a `#[repr(C)]` block struct with a compile-time size check, a scalar
//! `dequant` (block -> f32) and, through [`dot_row`], a scalar dot-product reference.
//! All blocks have alignment 1 (f16 fields are stored as `[u8; 2]`), so a byte slice from a
//! memory-mapped file can be viewed as blocks without copying or alignment concerns.
//!
//! Block layouts follow ggml-common.h in llama.cpp; the dequantization formulas follow the
//! numpy reference in the PyPI `gguf` package, which the tests compare against.
#![deny(missing_docs)]

pub mod acts;
pub mod float;
pub mod iquants;
pub mod kquants;
pub mod kv;
pub mod legacy;
pub mod pack;
pub mod qiq1;
pub mod qiquants;
pub mod qkquants;
pub mod qlegacy;
pub mod qsearch;
pub mod quantize;
pub mod tables;
pub mod ternary;
#[cfg(target_arch = "x86_64")]
pub mod x86 {
    //! AVX2+FMA kernels: dot products of quantized weight rows with f32 activations (the generic
    //! scalar path in `lib.rs` is their reference), and the integer kernels against quantized
    //! activations (`acts.rs`, whose scalar `dot_q16_scalar` is their reference): one row at a
    //! time for a few tokens, and for batches one weight row against eight tokens in the SIMD
    //! lanes (`legacy_t8`), in cache blocks of weight rows x tokens.
    //!
    //! The kernels are compiled twice from `x86_kernels.rs`: `avx2` for AVX2+FMA+F16C, and
    //! `avx512` with AVX-512 VNNI as well, which fuses each multiply-add of i16 pairs with its
    //! accumulation (`vpdpwssd`). Integer sums are exact either way, so both give the same bits;
    //! [`vnni`] picks one at run time. The `avx512` build also has the batched kernels of
    //! `x86_wide.rs`, with 16 tokens in the lanes of a 512-bit register (the activations are
    //! then regrouped 16 rows at a time, `acts::group_width`): each block of 16 weight rows
    //! is decoded once, then tiles of 16 rows x up to 64 tokens keep their partial sums in
    //! registers and store their results as runs of 16 rows per token.
    #![allow(unsafe_op_in_unsafe_fn)]

    /// The AVX2+FMA+F16C build.
    pub mod avx2 {
        #![allow(unsafe_op_in_unsafe_fn)]
        macro_rules! fast {
            ($(#[$m:meta])* $v:vis unsafe fn $($rest:tt)*) => {
                $(#[$m])* #[target_feature(enable = "avx2,fma,f16c")] $v unsafe fn $($rest)*
            };
        }
        const VNNI: bool = false;
        include!("x86_kernels.rs");
        include!("x86_k16.rs");
        include!("x86_packed.rs");

        /// The 16-token kernels exist in the AVX-512 build only (`x86_wide.rs`).
        #[inline(always)]
        unsafe fn rows_wide(
            _: hearth_core::DType,
            _: &[u8],
            _: usize,
            _: std::ops::Range<usize>,
            _: &crate::acts::QuantizedActs,
            _: usize,
            _: &mut impl crate::Sink,
        ) -> bool {
            false
        }
    }

    /// The same kernels with AVX-512 VNNI (on 256-bit registers, `avx512vl`), and the batched
    /// kernels with 16 tokens in 512-bit registers (`x86_wide.rs`).
    #[allow(dead_code)]
    pub mod avx512 {
        #![allow(unsafe_op_in_unsafe_fn)]
        macro_rules! fast {
            ($(#[$m:meta])* $v:vis unsafe fn $($rest:tt)*) => {
                $(#[$m])*
                #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
                $v unsafe fn $($rest)*
            };
        }
        const VNNI: bool = true;
        include!("x86_kernels.rs");
        include!("x86_k16.rs");
        include!("x86_packed.rs");
        include!("x86_wide.rs");
    }

    pub use avx2::*;

    /// Whether the kernels request weight lines ahead of use with software prefetches. On the
    /// Zen 4 EPYC of issue 23 they made one-token decoding 30% slower (MoE Q4_K_M tg128 94 ->
    /// 124 t/s, SmolLM2 Q4_1 170 -> 224 t/s, 2 threads, without them): a burst of prefetches
    /// holds the load queue while the lines arrive, so loading and summing no longer overlap,
    /// and the hardware prefetcher alone streams faster. They were added on a Zen 5 machine
    /// (AMD family 0x1A), where they stay on; everywhere else they are off.
    /// `HEARTH_PREFETCH=0|1` overrides. Decided once.
    #[inline(always)]
    pub fn sw_prefetch() -> bool {
        static USE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *USE.get_or_init(|| match std::env::var("HEARTH_PREFETCH").as_deref() {
            Ok("0") => false,
            Ok("1") => true,
            _ => amd_family() == Some(0x1A),
        })
    }

    /// The CPU's family number where it is an AMD CPU.
    fn amd_family() -> Option<u32> {
        // leaves 0 and 1 exist on every x86-64 CPU
        let (v, l1) = (std::arch::x86_64::__cpuid(0), std::arch::x86_64::__cpuid(1));
        let amd = [v.ebx, v.edx, v.ecx] == [0x6874_7541, 0x6974_6e65, 0x444d_4163];
        let base = (l1.eax >> 8) & 0xF;
        let family = if base == 0xF {
            base + ((l1.eax >> 20) & 0xFF)
        } else {
            base
        };
        amd.then_some(family)
    }

    /// How many bytes ahead of the group-block they sum the packed one-token kernels request
    /// weight lines (0: none), a few at each group-block rather than a burst per group, so
    /// that loading and summing overlap. `HEARTH_PREFETCH_AHEAD=N` overrides. Decided once.
    ///
    /// On by default only where measured to help: AMD family 0x19 without AVX-512, i.e.
    /// Zen 3. There the loads waited on memory (one thread, a packed 8192 x 4096 matrix out
    /// of cache: Q8_0 11.9 -> 16-22 GMAC/s, Q4_1 14.8 -> 27-30 at 2048-4096 bytes ahead).
    /// Zen 5 has the per-group prefetches ([`sw_prefetch`]) instead; Zen 4 and Intel are
    /// unmeasured and keep the hardware prefetcher alone.
    #[inline(always)]
    pub fn stream_ahead() -> usize {
        static AHEAD: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
        *AHEAD.get_or_init(|| {
            if let Some(n) = std::env::var("HEARTH_PREFETCH_AHEAD")
                .ok()
                .and_then(|v| v.parse::<usize>().ok())
            {
                return n.min(1 << 20);
            }
            if amd_family() == Some(0x19) && !std::arch::is_x86_feature_detected!("avx512f") {
                2048
            } else {
                0
            }
        })
    }

    /// Whether to use the AVX-512 VNNI build: the AVX2 build is in use (`has_avx2`), the CPU
    /// has AVX-512 F/BW/VL/VNNI, and `HEARTH_NO_AVX512` is not set (the tests set it to check
    /// the AVX2 build on such CPUs too). Decided once.
    #[inline(always)]
    pub fn vnni() -> bool {
        static USE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *USE.get_or_init(|| {
            super::has_avx2()
                && std::env::var_os("HEARTH_NO_AVX512").is_none()
                && std::is_x86_feature_detected!("avx512f")
                && std::is_x86_feature_detected!("avx512bw")
                && std::is_x86_feature_detected!("avx512vl")
                && std::is_x86_feature_detected!("avx512vnni")
        })
    }
}

use hearth_core::{DType, Error, Result};

/// Largest block size of any type (QK_K).
pub const MAX_BLOCK: usize = 256;

/// Read a little-endian IEEE half.
#[inline(always)]
pub fn f16le(b: [u8; 2]) -> f32 {
    half::f16::from_bits(u16::from_le_bytes(b)).to_f32()
}

/// A block type: a fixed-size, alignment-1 struct of `SIZE` bytes that decodes to `N` floats.
pub trait Block: Sized + Copy {
    /// Elements per block.
    const N: usize;
    /// Decode one block into `out[..N]`.
    fn dequant(&self, out: &mut [f32]);
}

/// View a byte slice as a slice of blocks. `bytes.len()` must be a multiple of the block size.
#[inline]
pub fn as_blocks<B: Block>(bytes: &[u8]) -> &[B] {
    const { assert!(std::mem::align_of::<B>() == 1) };
    let n = bytes.len() / std::mem::size_of::<B>();
    debug_assert_eq!(n * std::mem::size_of::<B>(), bytes.len());
    // SAFETY: B is a plain-old-data struct of u8 arrays with alignment 1 (checked above), every
    // bit pattern is a valid B, and the length is within `bytes`.
    unsafe { std::slice::from_raw_parts(bytes.as_ptr() as *const B, n) }
}

/// Whether to use the AVX2+FMA(+F16C) builds: the CPU has them, and `HEARTH_CPU_BASELINE` is not set
/// (the tests set it to check the portable path too). Decided once.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub fn has_avx2() -> bool {
    static USE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *USE.get_or_init(|| {
        std::env::var_os("HEARTH_CPU_BASELINE").is_none()
            && std::is_x86_feature_detected!("avx2")
            && std::is_x86_feature_detected!("fma")
            && std::is_x86_feature_detected!("f16c")
    })
}

/// Run the same generic scalar code compiled for AVX2+FMA when the CPU has them: the block
/// decoders and the f32 dot are all `inline(always)`, so they are vectorized with 256-bit
/// registers inside the wrapper. Portable builds (and other architectures) use the baseline.
macro_rules! multiversion {
    ($name:ident, $avx2:ident, $inner:ident, <$B:ident>($($arg:ident: $ty:ty),*) -> $ret:ty) => {
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn $avx2<$B: Block>($($arg: $ty),*) -> $ret {
            $inner::<$B>($($arg),*)
        }
        fn $name<$B: Block>($($arg: $ty),*) -> $ret {
            #[cfg(target_arch = "x86_64")]
            if has_avx2() {
                // SAFETY: the CPU supports the features the wrapper was compiled for.
                return unsafe { $avx2::<$B>($($arg),*) };
            }
            $inner::<$B>($($arg),*)
        }
    };
}

multiversion!(dequant_blocks, dequant_blocks_avx2, dequant_blocks_impl, <B>(src: &[u8], dst: &mut [f32]) -> ());
multiversion!(dot_blocks, dot_blocks_avx2, dot_blocks_impl, <B>(src: &[u8], x: &[f32]) -> f32);

#[inline(always)]
fn dequant_blocks_impl<B: Block>(src: &[u8], dst: &mut [f32]) {
    for (b, out) in as_blocks::<B>(src).iter().zip(dst.chunks_exact_mut(B::N)) {
        b.dequant(out);
    }
}

#[inline(always)]
fn dot_blocks_impl<B: Block>(src: &[u8], x: &[f32]) -> f32 {
    // Decode up to MAX_BLOCK elements at a time (several small blocks, or one super-block)
    // into a stack buffer, then take a vectorizable f32 dot with that piece of `x`.
    let per = (MAX_BLOCK / B::N).max(1);
    let mut buf = [0f32; MAX_BLOCK];
    let mut acc = 0f32;
    for (bs, xs) in as_blocks::<B>(src).chunks(per).zip(x.chunks(per * B::N)) {
        for (b, o) in bs.iter().zip(buf.chunks_exact_mut(B::N)) {
            b.dequant(o);
        }
        acc += dot_f32_impl(&buf[..xs.len()], xs);
    }
    acc
}

/// Plain f32 dot product (AVX2+FMA when the CPU has them).
#[inline]
pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU has AVX2 and FMA.
        return unsafe { dot_f32_avx2(a, b) };
    }
    dot_f32_impl(a, b)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_f32_avx2(a: &[f32], b: &[f32]) -> f32 {
    dot_f32_impl(a, b)
}

/// The f32 dot, written so that the compiler vectorizes it (8 independent lanes).
#[inline(always)]
fn dot_f32_impl(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0f32; 8];
    let ca = a.chunks_exact(8);
    let cb = b.chunks_exact(8);
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut s = (acc[0] + acc[4]) + (acc[1] + acc[5]) + (acc[2] + acc[6]) + (acc[3] + acc[7]);
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

macro_rules! dispatch {
    ($dtype:expr, $f:ident, $($args:expr),*) => {
        match $dtype {
            DType::Q4_0 => $f::<legacy::BlockQ4_0>($($args),*),
            DType::Q4_1 => $f::<legacy::BlockQ4_1>($($args),*),
            DType::Q5_0 => $f::<legacy::BlockQ5_0>($($args),*),
            DType::Q5_1 => $f::<legacy::BlockQ5_1>($($args),*),
            DType::Q8_0 => $f::<legacy::BlockQ8_0>($($args),*),
            DType::Q8_1 => $f::<legacy::BlockQ8_1>($($args),*),
            DType::Q2_K => $f::<kquants::BlockQ2K>($($args),*),
            DType::Q3_K => $f::<kquants::BlockQ3K>($($args),*),
            DType::Q4_K => $f::<kquants::BlockQ4K>($($args),*),
            DType::Q5_K => $f::<kquants::BlockQ5K>($($args),*),
            DType::Q6_K => $f::<kquants::BlockQ6K>($($args),*),
            DType::Q8_K => $f::<kquants::BlockQ8K>($($args),*),
            DType::IQ2_XXS => $f::<iquants::BlockIQ2XXS>($($args),*),
            DType::IQ2_XS => $f::<iquants::BlockIQ2XS>($($args),*),
            DType::IQ2_S => $f::<iquants::BlockIQ2S>($($args),*),
            DType::IQ3_XXS => $f::<iquants::BlockIQ3XXS>($($args),*),
            DType::IQ3_S => $f::<iquants::BlockIQ3S>($($args),*),
            DType::IQ1_S => $f::<iquants::BlockIQ1S>($($args),*),
            DType::IQ1_M => $f::<iquants::BlockIQ1M>($($args),*),
            DType::IQ4_NL => $f::<iquants::BlockIQ4NL>($($args),*),
            DType::IQ4_XS => $f::<iquants::BlockIQ4XS>($($args),*),
            DType::TQ1_0 => $f::<ternary::BlockTQ1_0>($($args),*),
            DType::TQ2_0 => $f::<ternary::BlockTQ2_0>($($args),*),
            DType::MXFP4 => $f::<ternary::BlockMXFP4>($($args),*),
            DType::F32 => $f::<float::F32>($($args),*),
            DType::F16 => $f::<float::F16>($($args),*),
            DType::BF16 => $f::<float::BF16>($($args),*),
            DType::F64 => $f::<float::F64>($($args),*),
            DType::I8 => $f::<float::I8>($($args),*),
            DType::I16 => $f::<float::I16>($($args),*),
            DType::I32 => $f::<float::I32>($($args),*),
            DType::I64 => $f::<float::I64>($($args),*),
        }
    };
}

fn check(dtype: DType, src: &[u8], n: usize) -> Result<()> {
    let need = dtype.row_bytes(n)?;
    if src.len() != need {
        return Err(Error::Invalid(format!(
            "{dtype}: {n} elements need {need} bytes, got {}",
            src.len()
        )));
    }
    Ok(())
}

/// Decode `dst.len()` elements of type `dtype` from `src` into `dst`.
pub fn dequantize(dtype: DType, src: &[u8], dst: &mut [f32]) -> Result<()> {
    check(dtype, src, dst.len())?;
    dispatch!(dtype, dequant_blocks, src, dst);
    Ok(())
}

/// Integer dot products of one weight row (a type [`acts::supports_q16`] accepts) with `N`
/// rows of 16-bit quantized activations. Lane k is bit-identical to the `N = 1` call on row k.
#[inline]
pub fn dot_row_q16<const N: usize>(dtype: DType, src: &[u8], x: [acts::ActsRow; N]) -> [f32; N] {
    let n = src.len() / dtype.type_size() * dtype.block_size();
    assert!(x.iter().all(|r| if dtype == DType::Q4_K {
        r.q8.len() >= n && r.d8.len() * acts::QK8 >= n && r.bs8.len() * 16 >= n
    } else {
        r.q.len() >= n
            && r.d.len() * acts::QK >= n
            && r.sum.len() * acts::QK >= n
            && r.s16.len() * 16 >= n
    }));
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU has AVX2, FMA and F16C; the rows hold the row's length (checked).
        return unsafe {
            if x86::vnni() {
                x86::avx512::dot_q16::<N>(dtype, src, x)
            } else {
                x86::avx2::dot_q16::<N>(dtype, src, x)
            }
        };
    }
    x.map(|r| acts::dot_q16_scalar(dtype, src, r))
}

/// Where the integer matmul kernels put their results: [`Sink::put`] for one (token, row)
/// value, or [`Sink::put_rows`] for a run of up to 16 consecutive rows of one token, which an
/// output laid out `[token, row]` stores at once. Every closure `FnMut(token, row, value)` is
/// a sink.
pub trait Sink {
    /// The value of row `row` for token `token`.
    fn put(&mut self, token: usize, row: usize, v: f32);
    /// Rows `row0..row0 + n` of token `token`: `v[..n]` (`n <= 16`).
    #[inline(always)]
    fn put_rows(&mut self, token: usize, row0: usize, v: &[f32; 16], n: usize) {
        for (k, &x) in v.iter().enumerate().take(n) {
            self.put(token, row0 + k, x);
        }
    }
    /// Where rows `row0..row0 + n` of `token` lie one after the other in memory, for a
    /// kernel to store them itself (`None`: use [`Sink::put_rows`]). The pointer must be
    /// valid for writing those `n` floats, which no one else writes meanwhile.
    #[inline(always)]
    fn rows_at(&mut self, _token: usize, _row0: usize, _n: usize) -> Option<*mut f32> {
        None
    }
}

impl<F: FnMut(usize, usize, f32)> Sink for F {
    #[inline(always)]
    fn put(&mut self, token: usize, row: usize, v: f32) {
        self(token, row, v)
    }
}

/// Whether `acts` holds `n_tok` rows of at least `n` values in the form `dtype` reads.
fn acts_hold(dtype: DType, acts: &acts::QuantizedActs, n: usize, n_tok: usize) -> bool {
    let all = n_tok * acts.n;
    acts.n >= n
        && acts.rows >= n_tok
        && if dtype == DType::Q4_K {
            acts.q8.len() >= all && acts.d8.len() * acts::QK8 >= all && acts.bs8.len() * 16 >= all
        } else {
            acts.q.len() >= all
                && acts.d.len() * acts::QK >= all
                && acts.sum.len() * acts::QK >= all
                && acts.s16.len() * 16 >= all
        }
}

/// Rows `rows` of a `dtype` matrix (`rb` bytes per row in `bytes`) dotted with each of the
/// `n_tok` rows of `acts`; `put(token, row, value)` receives every result. Each value is
/// bit-identical to [`dot_row_q16`]'s for that row and token, whatever `n_tok` is.
pub fn rows_q16(
    dtype: DType,
    bytes: &[u8],
    rb: usize,
    rows: std::ops::Range<usize>,
    acts: &acts::QuantizedActs,
    n_tok: usize,
    mut put: impl Sink,
) {
    let n = rb / dtype.type_size() * dtype.block_size();
    assert!(
        acts::supports_q16(dtype)
            && rows.end * rb <= bytes.len()
            && acts_hold(dtype, acts, n, n_tok)
    );
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU has AVX2, FMA and F16C; every row and activation row is in bounds
        // (checked above).
        unsafe {
            if x86::vnni() {
                x86::avx512::rows_q16(dtype, bytes, rb, rows, acts, n_tok, &mut put)
            } else {
                x86::avx2::rows_q16(dtype, bytes, rb, rows, acts, n_tok, &mut put)
            }
        };
        return;
    }
    for r in rows {
        let row = &bytes[r * rb..(r + 1) * rb];
        for t in 0..n_tok {
            put.put(t, r, dot_row_q16::<1>(dtype, row, [acts.row(t)])[0]);
        }
    }
}

/// [`rows_q16`] on a matrix in the packed layout ([`pack::pack`] of `n_rows` rows of `rb`
/// bytes). Every value is bit-identical to [`rows_q16`]'s on the original layout. Without
/// AVX2 (where callers keep the original layout, see [`has_avx2`]) each row is unpacked and
/// run through the scalar reference.
#[allow(clippy::too_many_arguments)]
pub fn rows_q16_packed(
    dtype: DType,
    bytes: &[u8],
    rb: usize,
    n_rows: usize,
    rows: std::ops::Range<usize>,
    acts: &acts::QuantizedActs,
    n_tok: usize,
    mut put: impl Sink,
) {
    let n = rb / dtype.type_size() * dtype.block_size();
    assert!(
        pack::packable(dtype)
            && rows.end <= n_rows
            && pack::packed_len(dtype, rb, n_rows) <= bytes.len()
            && acts_hold(dtype, acts, n, n_tok)
    );
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU has AVX2, FMA and F16C; every group, row and activation row is in
        // bounds (checked above).
        unsafe {
            if x86::vnni() {
                x86::avx512::rows_q16_packed(dtype, bytes, rb, n_rows, rows, acts, n_tok, &mut put)
            } else {
                x86::avx2::rows_q16_packed(dtype, bytes, rb, n_rows, rows, acts, n_tok, &mut put)
            }
        };
        return;
    }
    for r in rows {
        let row = pack::unpack_row(dtype, bytes, rb, n_rows, r);
        for t in 0..n_tok {
            put.put(t, r, acts::dot_q16_scalar(dtype, &row, acts.row(t)));
        }
    }
}

/// Rows `rows` of an F32 matrix (`rb` bytes per row in `bytes`) dotted with each of the
/// `n_tok` rows of `x` (`[n_tok, n]`), `put` receiving every value: bit for bit what
/// [`dot_row`] gives each (row, token), computed 3 rows x 4 tokens at a time.
pub fn rows_f32(
    bytes: &[u8],
    rb: usize,
    rows: std::ops::Range<usize>,
    x: &[f32],
    n_tok: usize,
    mut put: impl Sink,
) {
    let n = rb / 4;
    assert!(rows.end * rb <= bytes.len() && x.len() >= n_tok * n);
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU has AVX2; rows and activation rows are in bounds (checked above).
        unsafe { x86::avx2::rows_f32(bytes, rb, rows, x, n_tok, &mut put) };
        return;
    }
    for r in rows {
        let row = &bytes[r * rb..(r + 1) * rb];
        for t in 0..n_tok {
            put.put(t, r, dot_row(DType::F32, row, &x[t * n..(t + 1) * n]));
        }
    }
}

/// Scalar reference dot product of a row of `dtype` (bytes `src`) with `x` (f32): decodes one
/// block at a time into a stack buffer (never a whole row or tensor), then an f32 dot.
pub fn dot_row_scalar(dtype: DType, src: &[u8], x: &[f32]) -> f32 {
    dispatch!(dtype, dot_blocks_impl, src, x)
}

/// Dot product of a row of `dtype` (bytes `src`) with `x` (f32), with the fastest kernel the
/// CPU runs: a fused SIMD kernel where one exists, else the generic path compiled for the CPU.
#[inline]
pub fn dot_row(dtype: DType, src: &[u8], x: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY (each arm): the CPU has AVX2 and FMA.
        match dtype {
            DType::Q4_0 => return unsafe { x86::dot_q4_0(src, x) },
            DType::Q4_1 => return unsafe { x86::dot_q4_1(src, x) },
            DType::Q8_0 => return unsafe { x86::dot_q8_0(src, x) },
            DType::Q4_K => return unsafe { x86::dot_q4_k(src, x) },
            DType::Q6_K => return unsafe { x86::dot_q6_k(src, x) },
            _ => {}
        }
    }
    dispatch!(dtype, dot_blocks, src, x)
}

/// Checked form of [`dot_row`].
pub fn dot(dtype: DType, src: &[u8], x: &[f32]) -> Result<f32> {
    check(dtype, src, x.len())?;
    Ok(dot_row(dtype, src, x))
}

/// Compile-time check that a block struct has the byte size its format defines.
#[macro_export]
macro_rules! assert_block_size {
    ($t:ty, $n:expr) => {
        const _: () = assert!(std::mem::size_of::<$t>() == $n);
        const _: () = assert!(std::mem::align_of::<$t>() == 1);
    };
}
