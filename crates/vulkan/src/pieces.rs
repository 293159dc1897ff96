//! Matmuls and row lookups over weights held in several buffers: a weight larger than the
//! device's largest allocation is split by rows ([`crate::ctx::Ctx::alloc_rows`]), and each
//! piece is dispatched on its own.
use crate::ctx::RawBuf;
use crate::weights::DevWeight;
use crate::{MatmulKernel, Vulkan, spv, u};
use hearth_core::{Result, RowCopy};

impl Vulkan {
    /// `out [n_tok, n_out] = x [n_tok, n_in] @ W^T` for `shape` (n_in, n_out, n_tok), with
    /// `x` and `out` at their buffers' offsets in floats (the caller checked the sizes).
    pub(crate) fn matmul_pieces(
        &self,
        w: &DevWeight,
        coop: bool,
        shape: (usize, usize, usize),
        x: (&RawBuf, u32),
        out: (&RawBuf, u32),
    ) -> Result<()> {
        let (n_in, n_out, n_tok) = shape;
        let whole = w.pieces.len() == 1;
        for (wb, r0, rows) in &w.pieces {
            let (r0, rows) = (*r0, *rows);
            if whole || n_tok == 1 {
                // the piece's outputs are contiguous
                self.matmul_one(w, wb, coop, (n_in, rows, n_tok), x, (out.0, out.1 + u(r0)?))?;
                continue;
            }
            // the piece's [n_tok, rows] in scratch, then into its columns of out
            let t = self.tmp(4, n_tok * rows * 4)?;
            self.matmul_one(w, wb, coop, (n_in, rows, n_tok), x, (&t, 0))?;
            let c = RowCopy {
                n_rows: n_tok,
                width: rows,
            };
            self.copy_raw(&t, 0, rows, out.0, out.1 + u(r0)?, n_out, c)?;
        }
        Ok(())
    }

    /// One dispatch of a matmul over the rows of `w` in one buffer, on the cooperative-matrix
    /// kernel where `coop` (see [`Vulkan::coop_for`]), else on the device's other kernel.
    fn matmul_one(
        &self,
        w: &DevWeight,
        wb: &RawBuf,
        coop: bool,
        (n_in, n_out, n_tok): (usize, usize, usize),
        x: (&RawBuf, u32),
        out: (&RawBuf, u32),
    ) -> Result<()> {
        let pc = [u(n_in)?, u(n_out)?, u(n_tok)?, u(w.row_bytes)?, x.1, out.1];
        let bufs = [wb, x.0, out.0, &self.grids];
        // a workgroup (or, on lavapipe, a thread) per row and tile of 8 tokens (matmul.glsl)
        let items = n_out * n_tok.div_ceil(8);
        let mm = match (coop, self.mm) {
            (true, _) => MatmulKernel::Coop,
            (false, MatmulKernel::Coop) => MatmulKernel::f32_default(&self.ctx.info),
            (false, k) => k,
        };
        let (shader, groups) = match mm {
            MatmulKernel::Rows => (spv!("matmul_rows"), self.groups(items)),
            MatmulKernel::Workgroup => (spv!("matmul"), items as u64),
            MatmulKernel::Subgroup => (spv!("matmul_sg"), items as u64),
            // a workgroup per 16 rows and 16 tokens
            MatmulKernel::Coop => (
                match self.ctx.info.coop {
                    16 => spv!("matmul_coop"),
                    _ => spv!("matmul_coop8"),
                },
                (n_out.div_ceil(16) * n_tok.div_ceil(16)) as u64,
            ),
        };
        self.run_q(shader, w.code, &bufs, &pc, groups)
    }

    /// Row `ids[t]` of the weight (rows of `width`) into row `t` of `out` (checked by the
    /// caller): one dispatch per run of tokens whose rows lie in one piece.
    pub(crate) fn get_rows_pieces(
        &self,
        w: &DevWeight,
        width: usize,
        ids: &[u32],
        out: (&RawBuf, u32),
    ) -> Result<()> {
        let piece = |id: u32| {
            w.pieces
                .iter()
                .position(|(_, r0, n)| (*r0..r0 + n).contains(&(id as usize)))
                .unwrap_or(0)
        };
        let mut t0 = 0;
        while t0 < ids.len() {
            let p = piece(ids[t0]);
            let mut t1 = t0 + 1;
            while t1 < ids.len() && piece(ids[t1]) == p {
                t1 += 1;
            }
            let (wb, r0, _) = &w.pieces[p];
            let local: Vec<u32> = ids[t0..t1].iter().map(|&i| i - *r0 as u32).collect();
            let (tb, to) = self.ctx.stage(&local)?;
            let pc = [
                u(t1 - t0)?,
                u(width)?,
                out.1 + u(t0 * width)?,
                to,
                u(w.row_bytes)?,
            ];
            // a thread per (row, chunk of 32 values)
            let g = self.groups((t1 - t0) * width.div_ceil(32));
            self.run_q(
                spv!("get_rows"),
                w.code,
                &[wb, out.0, &tb, &self.grids],
                &pc,
                g,
            )?;
            t0 = t1;
        }
        Ok(())
    }
}
