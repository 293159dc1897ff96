//! Weights on the device: the types the shaders decode (`shaders/quant.glsl`) are uploaded as
//! their file stores them (padded to whole words) and decoded in registers by the matmul,
//! moe_mm and get_rows shaders, one pipeline per (shader, type) through specialization
//! constant 1; every other type is decoded to f32 once at load.
use super::{Vulkan, too_big, u};
use crate::ctx::{Ctx, RawBuf};
use hearth_core::{Buf, DType, Error, Result, Tensor};
use std::sync::Arc;

/// quant.glsl's code for a type the shaders decode, or None (decoded to f32 at load).
pub(crate) fn code(d: DType) -> Option<u32> {
    Some(match d {
        DType::F32 => 0,
        DType::F16 => 1,
        DType::BF16 => 2,
        DType::Q4_0 => 3,
        DType::Q4_1 => 4,
        DType::Q5_0 => 5,
        DType::Q5_1 => 6,
        DType::Q8_0 => 7,
        DType::Q2_K => 8,
        DType::Q3_K => 9,
        DType::Q4_K => 10,
        DType::Q5_K => 11,
        DType::Q6_K => 12,
        DType::IQ4_NL => 13,
        DType::IQ4_XS => 14,
        DType::MXFP4 => 15,
        DType::IQ2_XXS => 16,
        DType::IQ2_XS => 17,
        DType::IQ2_S => 18,
        DType::IQ3_XXS => 19,
        DType::IQ3_S => 20,
        _ => return None,
    })
}

/// The i-quants' grids as quant.glsl reads them (its `G_*` offsets): the rows of
/// ggml-common.h's iq2xxs_grid, iq2xs_grid and iq2s_grid (two words each), iq3xxs_grid and
/// iq3s_grid (a word each), then ksigns_iq2xs (four a word), from `hearth_quant::tables`.
pub(crate) fn grids() -> Vec<u32> {
    use hearth_quant::tables::*;
    let word = |b: &[u8]| u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    let mut g = Vec::with_capacity(4384);
    for rows in [&IQ2XXS_GRID[..], &IQ2XS_GRID[..], &IQ2S_GRID[..]] {
        for r in rows {
            g.extend([word(&r[..4]), word(&r[4..])]);
        }
    }
    for rows in [&IQ3XXS_GRID[..], &IQ3S_GRID[..]] {
        g.extend(rows.iter().map(|r| word(r)));
    }
    g.extend(KSIGNS_IQ2XS.chunks_exact(4).map(word));
    debug_assert_eq!(g.len(), 4384);
    g
}

/// Bytes the device holds for a weight: its file's bytes for a type the shaders decode,
/// 4 per value for the rest.
pub(crate) fn held_bytes(w: &Tensor) -> usize {
    match code(w.dtype) {
        Some(_) => w.bytes().len(),
        None => w.numel() * 4,
    }
}

/// A weight on the device: its rows in pieces of at most the largest allocation, each
/// (buffer, first row, rows), its type on the device (F32 where it was decoded at load) and
/// quant.glsl's code for it, and the bytes of a row. A MoE pack's matrix kind counts a whole
/// expert as a row: its pieces hold whole experts.
pub(crate) struct DevWeight {
    pub pieces: Vec<(RawBuf, usize, usize)>,
    pub dtype: DType,
    pub code: u32,
    pub row_bytes: usize,
}

/// A MoE layer's experts on the device: all gate, up and down matrices `[E, rows, cols]`,
/// each kind in one type, and their biases (f32, or none).
pub(crate) struct Pack {
    pub gate: DevWeight,
    pub up: DevWeight,
    pub down: DevWeight,
    pub bias: [Option<RawBuf>; 3],
    pub n_ff: usize,
    pub _pin: hearth_core::Storage,
}

/// The most experts a layer may have for the cooperative-matrix MoE kernel (moe_group.comp's
/// `MAX_EXPERTS`, shared-memory counters); a larger layer keeps `moe_mm.comp`.
const GROUP_MAX_EXPERTS: usize = 1024;

/// Byte offsets in the shaders are 32-bit: a piece must leave room for the padding word.
const MAX_PIECE: u64 = u32::MAX as u64 - 8;

/// Buffers holding `n_rows` rows of `row_bytes` in order, split by rows so that each is at
/// most the largest allocation, every one padded to whole words plus one (the shaders read a
/// word past an unaligned value's first); `fill(first row, rows, bytes)` writes a piece's rows.
pub(crate) fn upload_rows(
    ctx: &Arc<Ctx>,
    row_bytes: usize,
    n_rows: usize,
    mut fill: impl FnMut(usize, usize, &mut [u8]) -> Result<()>,
) -> Result<Vec<(RawBuf, usize, usize)>> {
    let per = piece_rows(ctx, row_bytes, n_rows, 8)?;
    let mut v = Vec::new();
    let mut r0 = 0;
    while r0 < n_rows || v.is_empty() {
        let n = per.min(n_rows - r0);
        let bytes = n * row_bytes;
        let b = ctx.alloc_with(bytes.next_multiple_of(4) + 4, |o| {
            fill(r0, n, &mut o[..bytes])
        })?;
        v.push((b, r0, n));
        r0 += n;
        if n == 0 {
            break;
        }
    }
    Ok(v)
}

/// Rows of `row_bytes` per piece of a weight of `n_rows`, leaving `slack` bytes of the
/// largest allocation (and of the shaders' 32-bit offsets) free.
fn piece_rows(ctx: &Ctx, row_bytes: usize, n_rows: usize, slack: u64) -> Result<usize> {
    let limit = ctx.max_alloc.min(MAX_PIECE).saturating_sub(slack) as usize;
    let per = limit
        .checked_div(row_bytes)
        .unwrap_or(n_rows)
        .min(n_rows.max(1));
    if per == 0 {
        return Err(Error::Unsupported(format!(
            "vulkan: a row of {row_bytes} bytes does not fit {}'s largest buffer of {} bytes",
            ctx.info.name, ctx.max_alloc
        )));
    }
    Ok(per)
}

/// `n_rows` rows of `row_bytes` read in place from `src` (which holds them one after
/// another) in pieces as [`upload_rows`] makes them, or None where a piece cannot be imported
/// ([`Ctx::import`]). `backing` is the whole buffer `src` lies in: the 4 bytes after the rows
/// the shaders may read must lie in it too.
fn import_rows(
    ctx: &Arc<Ctx>,
    src: &[u8],
    backing: &[u8],
    row_bytes: usize,
    n_rows: usize,
) -> Option<Vec<(RawBuf, usize, usize)>> {
    let mut v = Vec::new();
    for (r0, n) in import_pieces(ctx, src, backing, row_bytes, n_rows)? {
        let bytes = &src[r0 * row_bytes..(r0 + n) * row_bytes];
        // SAFETY: the rows and the 4 bytes after them lie in `backing`, whose storage the
        // caller keeps alive with the weight's device copy, and weights are never written.
        let b = unsafe { ctx.import(bytes.as_ptr(), bytes.len()) }?;
        v.push((b, r0, n));
    }
    Some(v)
}

/// The pieces (first row, rows) in which [`import_rows`] would read `src` in place, where
/// each passes the checks an import makes before asking the driver ([`Ctx::importable`]),
/// else None.
pub(crate) fn import_pieces(
    ctx: &Ctx,
    src: &[u8],
    backing: &[u8],
    row_bytes: usize,
    n_rows: usize,
) -> Option<Vec<(usize, usize)>> {
    let page = ctx.import.as_ref()?.page();
    let end = src.as_ptr() as usize + src.len() + 4;
    if src.len() != row_bytes * n_rows || end > backing.as_ptr() as usize + backing.len() {
        return None;
    }
    let per = piece_rows(ctx, row_bytes, n_rows, 2 * page + 8).ok()?;
    let mut v = Vec::new();
    let mut r0 = 0;
    while r0 < n_rows {
        let n = per.min(n_rows - r0);
        if !ctx.importable(src.as_ptr() as usize + r0 * row_bytes, n * row_bytes) {
            return None;
        }
        v.push((r0, n));
        r0 += n;
    }
    (!v.is_empty()).then_some(v)
}

/// A buffer holding `bytes` (padded as [`upload_rows`] pads), at most the largest allocation.
pub(crate) fn upload_bytes(ctx: &Arc<Ctx>, bytes: &[u8]) -> Result<RawBuf> {
    let mut v = upload_rows(ctx, bytes.len(), 1, |_, _, o| {
        o.copy_from_slice(bytes);
        Ok(())
    })?;
    Ok(v.remove(0).0)
}

/// The i-quants' grids ([`grids`]) on the device.
pub(crate) fn upload_grids(ctx: &Arc<Ctx>) -> Result<RawBuf> {
    let g: Vec<u8> = grids().iter().flat_map(|w| w.to_le_bytes()).collect();
    upload_bytes(ctx, &g)
}

/// The bytes of `parts` where each starts where the one before it ends, in one buffer.
fn contiguous<'a>(parts: &[&'a Tensor]) -> Option<&'a [u8]> {
    let first = parts[0].bytes();
    let backing = parts[0].storage.backing();
    let mut end = first.as_ptr() as usize + first.len();
    for t in &parts[1..] {
        let b = t.bytes();
        if b.as_ptr() as usize != end || t.storage.backing().as_ptr() != backing.as_ptr() {
            return None;
        }
        end += b.len();
    }
    let start = first.as_ptr() as usize - backing.as_ptr() as usize;
    Some(&backing[start..start + (end - first.as_ptr() as usize)])
}

impl Vulkan {
    /// `parts` (each `rows` rows of one shape, one after another) on the device: as the
    /// file stores them where the shaders decode their type and all share it, else decoded
    /// to f32. A part is one matrix (`rows` its rows), or one expert of a MoE pack
    /// (`rows` = 1: the expert is the unit the pieces split at).
    fn upload_parts(&self, parts: &[&Tensor], whole_parts: bool) -> Result<DevWeight> {
        let t0 = parts[0];
        if parts.iter().any(|t| t.shape != t0.shape) {
            return Err(Error::Invalid("moe: experts of different shapes".into()));
        }
        let same = parts.iter().all(|t| t.dtype == t0.dtype);
        // the unit of a piece: a row of the matrix, or a whole part
        let (unit_rows, n_units) = if whole_parts {
            (t0.n_rows(), parts.len())
        } else {
            (1, t0.n_rows())
        };
        // `f(tensor, its first row, rows)` for units u0 .. u0 + n, in order
        let rows_of = |u0: usize, n: usize, f: &mut dyn FnMut(&Tensor, usize, usize)| {
            if whole_parts {
                for t in &parts[u0..u0 + n] {
                    f(t, 0, unit_rows);
                }
            } else {
                f(t0, u0, n);
            }
        };
        match code(t0.dtype).filter(|_| same) {
            Some(code) => {
                let rb = t0.row_bytes();
                // the parts one after another in one buffer (a matrix, or a layer's experts
                // as a GGUF file holds them): read in place where the device can
                if let Some(src) = contiguous(parts) {
                    let backing = t0.storage.backing();
                    if let Some(pieces) =
                        import_rows(&self.ctx, src, backing, rb * unit_rows, n_units)
                    {
                        self.imported
                            .fetch_add(src.len(), std::sync::atomic::Ordering::Relaxed);
                        return Ok(DevWeight {
                            pieces,
                            dtype: t0.dtype,
                            code,
                            row_bytes: rb,
                        });
                    }
                }
                let pieces = upload_rows(&self.ctx, rb * unit_rows, n_units, |u0, n, o| {
                    let mut at = 0;
                    rows_of(u0, n, &mut |t, r0, rows| {
                        let src = &t.bytes()[r0 * rb..(r0 + rows) * rb];
                        o[at..at + src.len()].copy_from_slice(src);
                        at += src.len();
                    });
                    Ok(())
                })?;
                Ok(DevWeight {
                    pieces,
                    dtype: t0.dtype,
                    code,
                    row_bytes: rb,
                })
            }
            None => {
                let len = t0.row_len();
                let row = len.checked_mul(4).ok_or_else(too_big)?;
                let pieces = upload_rows(&self.ctx, row * unit_rows, n_units, |u0, n, o| {
                    let out = super::floats(o);
                    let mut at = 0;
                    let mut r = Ok(());
                    rows_of(u0, n, &mut |t, r0, rows| {
                        // the parts may differ in type here: each its own row bytes
                        let trb = t.row_bytes();
                        let src = &t.bytes()[r0 * trb..(r0 + rows) * trb];
                        if r.is_ok() {
                            r = hearth_quant::dequantize(
                                t.dtype,
                                src,
                                &mut out[at..at + rows * len],
                            );
                        }
                        at += rows * len;
                    });
                    r
                })?;
                Ok(DevWeight {
                    pieces,
                    dtype: DType::F32,
                    code: 0,
                    row_bytes: row,
                })
            }
        }
    }

    /// The device copy of a weight, made on first use: as the file stores it where the
    /// shaders decode its type, else decoded to f32 exactly; split by rows where it is larger
    /// than the largest buffer.
    pub(crate) fn weight(&self, w: &Tensor) -> Result<Arc<DevWeight>> {
        let b = w.bytes();
        let key = (b.as_ptr() as usize, b.len(), w.dtype);
        let mut ws = self.weights.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(r) = ws.get(&key) {
            return Ok(r.0.clone());
        }
        let dw = Arc::new(self.upload_parts(&[w], false)?);
        ws.insert(key, (dw.clone(), w.storage.clone()));
        Ok(dw)
    }

    /// A layer's experts packed on the device (made on first use): each matrix kind as its
    /// file stores it where every expert has one type the shaders decode, else in f32; split
    /// in whole experts where a kind is larger than the largest buffer.
    pub(crate) fn pack(&self, ex: &[hearth_core::Expert]) -> Result<Arc<Pack>> {
        let first = ex
            .first()
            .ok_or_else(|| Error::Invalid("a MoE layer without experts".into()))?;
        let key = (first.gate.bytes().as_ptr() as usize, ex.len());
        let mut ps = self.packs.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = ps.get(&key) {
            return Ok(p.clone());
        }
        let n_ff = first.gate.shape[0];
        let whole = |f: &dyn Fn(&hearth_core::Expert) -> &Tensor| -> Result<DevWeight> {
            let ts: Vec<&Tensor> = ex.iter().map(f).collect();
            self.upload_parts(&ts, true)
        };
        let bias = |f: &dyn Fn(&hearth_core::Expert) -> &Option<Buf>,
                    len: usize|
         -> Result<Option<RawBuf>> {
            if ex.iter().all(|x| f(x).is_none()) {
                return Ok(None);
            }
            let mut h = vec![0f32; ex.len() * len];
            for (x, o) in ex.iter().zip(h.chunks_exact_mut(len)) {
                if let Some(b) = f(x) {
                    hearth_core::Backend::download(self, b.view(), o)?;
                }
            }
            let raw = self.ctx.alloc_with(h.len() * 4, |o| {
                super::floats(o).copy_from_slice(&h);
                Ok(())
            })?;
            Ok(Some(raw))
        };
        let gate = whole(&|x| &x.gate)?;
        let p = Arc::new(Pack {
            gate,
            up: whole(&|x| &x.up)?,
            down: whole(&|x| &x.down)?,
            bias: [
                bias(&|x| &x.gate_b, n_ff)?,
                bias(&|x| &x.up_b, n_ff)?,
                bias(&|x| &x.down_b, first.gate.shape[1])?,
            ],
            n_ff,
            _pin: first.gate.storage.clone(),
        });
        ps.insert(key, p.clone());
        Ok(p)
    }

    /// Whether a MoE pack's matrix kind runs on the cooperative-matrix kernel
    /// (`shaders/moe_coop.glsl`): where a dense matmul by its type would
    /// ([`Vulkan::coop_for`]) and the layer has at most [`GROUP_MAX_EXPERTS`] experts.
    pub(crate) fn moe_coop(&self, w: &DevWeight, n_exp: usize) -> bool {
        n_exp <= GROUP_MAX_EXPERTS && self.coop_for(w.dtype)
    }

    /// A batch's `n_slots` slots (expert ids from float `ids.1`) grouped by expert for
    /// [`Vulkan::moe_mm`]'s cooperative-matrix kernel (`shaders/moe_group.comp`), in scratch:
    /// the table and the most blocks it may list.
    pub(crate) fn moe_group(
        &self,
        ids: (&RawBuf, u32),
        n_slots: usize,
        n_exp: usize,
    ) -> Result<(Arc<RawBuf>, usize)> {
        // blocks of up to 16 slots of one expert: at most one partial block per expert used
        let max_blocks = n_slots.div_ceil(16) + n_exp.min(n_slots);
        let words = 1 + 3 * max_blocks + n_slots;
        let t = self.tmp(5, words * 4)?;
        let pc = [u(n_slots)?, u(n_exp)?, ids.1, u(max_blocks)?];
        self.run(spv!("moe_group"), &[ids.0, &t], &pc, 1)?;
        Ok((t, max_blocks))
    }

    /// One of the pack's matmuls over every (token, slot): a dispatch per piece, each
    /// computing the slots whose expert it holds. With `groups` (the table of
    /// [`Vulkan::moe_group`] and its most blocks), on the cooperative-matrix kernel: a
    /// workgroup per 16 rows and block of up to 16 slots of one expert.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn moe_mm(
        &self,
        w: &DevWeight,
        b: Option<&RawBuf>,
        x: (&RawBuf, u32),
        ids: (&RawBuf, u32),
        groups: Option<(&RawBuf, usize)>,
        out: &RawBuf,
        shape: (usize, usize, usize, usize),
        per_slot: bool,
    ) -> Result<()> {
        let (n_in, n_out, n_slots, k) = shape;
        for (wb, e0, ne) in &w.pieces {
            if let Some((gt, max_blocks)) = groups {
                let pc = [
                    u(n_in)?,
                    u(n_out)?,
                    u(k)?,
                    u32::from(per_slot),
                    u32::from(b.is_some()),
                    x.1,
                    0,
                    u(w.row_bytes)?,
                    u(*e0)?,
                    u(*ne)?,
                    u(max_blocks)?,
                ];
                let shader = match self.ctx.info.coop {
                    16 => spv!("moe_coop"),
                    _ => spv!("moe_coop8"),
                };
                self.run_q(
                    shader,
                    w.code,
                    &[wb, x.0, gt, out, b.unwrap_or(wb), &self.grids],
                    &pc,
                    (n_out.div_ceil(16) * max_blocks) as u64,
                )?;
                continue;
            }
            let pc = [
                u(n_in)?,
                u(n_out)?,
                u(n_slots)?,
                u(k)?,
                u32::from(per_slot),
                u32::from(b.is_some()),
                x.1,
                ids.1,
                0,
                u(w.row_bytes)?,
                u(*e0)?,
                u(*ne)?,
            ];
            self.run_q(
                spv!("moe_mm"),
                w.code,
                &[wb, x.0, ids.0, out, b.unwrap_or(wb), &self.grids],
                &pc,
                (n_slots * n_out) as u64,
            )?;
        }
        Ok(())
    }
}
