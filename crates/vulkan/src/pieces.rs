//! Matmuls and row lookups over weights held in several buffers: a weight larger than the
//! device's largest allocation is split by rows ([`crate::ctx::Ctx::alloc_rows`]), and each
//! piece is dispatched on its own.
use crate::ctx::RawBuf;
use crate::{DevWeight, Vulkan, spv, u};
use hearth_core::{Result, RowCopy};

impl Vulkan {
    /// `out [n_tok, n_out] = x [n_tok, n_in] @ W^T` for `shape` (n_in, n_out, n_tok), with
    /// `x` and `out` at their buffers' offsets in floats (the caller checked the sizes).
    pub(crate) fn matmul_pieces(
        &self,
        w: &DevWeight,
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
                self.matmul_one(wb, w.tag, (n_in, rows, n_tok), x, (out.0, out.1 + u(r0)?))?;
                continue;
            }
            // the piece's [n_tok, rows] in scratch, then into its columns of out
            let t = self.tmp(4, n_tok * rows * 4)?;
            self.matmul_one(wb, w.tag, (n_in, rows, n_tok), x, (&t, 0))?;
            let c = RowCopy {
                n_rows: n_tok,
                width: rows,
            };
            self.copy_raw(&t, 0, rows, out.0, out.1 + u(r0)?, n_out, c)?;
        }
        Ok(())
    }

    /// One dispatch of a matmul over a weight in one buffer.
    fn matmul_one(
        &self,
        wb: &RawBuf,
        tag: u32,
        (n_in, n_out, n_tok): (usize, usize, usize),
        x: (&RawBuf, u32),
        out: (&RawBuf, u32),
    ) -> Result<()> {
        let pc = [u(n_in)?, u(n_out)?, u(n_tok)?, 0, x.1, out.1, tag];
        let n = n_out * n_tok;
        if self.ctx.info.kind == "CPU" {
            // lavapipe: a thread per output value
            return self.run(spv!("matmul_rows"), &[wb, x.0, out.0], &pc, self.groups(n));
        }
        self.run(spv!("matmul"), &[wb, x.0, out.0], &pc, n as u64)
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
            let n = (t1 - t0) * width;
            let pc = [u(n)?, u(width)?, out.1 + u(t0 * width)?, to, w.tag];
            self.run(spv!("get_rows"), &[wb, out.0, &tb], &pc, self.groups(n))?;
            t0 = t1;
        }
        Ok(())
    }
}
