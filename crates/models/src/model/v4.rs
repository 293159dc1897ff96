//! DeepSeek-V4's place in [`Model`]: its pool of per-sequence state and its body
//! ([`crate::dsv4`]) over a batch's rows.
use super::{KvPool, LayerCache, Model, Scratch, Seg, sized};
use hearth_core::{Error, Result};

impl Model {
    /// A pool for DeepSeek-V4: one slot of state per sequence and layer, each for contexts of
    /// up to the pool's positions.
    pub(super) fn v4_pool(
        &self,
        v4: &crate::dsv4::V4,
        n_pages: usize,
        page_size: usize,
        n_slots: usize,
    ) -> Result<KvPool> {
        let ctx = n_pages
            .checked_mul(page_size)
            .ok_or_else(|| Error::Invalid(format!("{n_pages} pages of {page_size} overflow")))?;
        Ok(KvPool {
            layers: v4.caches(self.dev(0), ctx, n_slots.max(1))?,
            page_size,
            n_pages,
            n_slots: n_slots.max(1),
        })
    }

    /// DeepSeek-V4's body ([`crate::dsv4`]): the embedding on its device, the rest on
    /// device 0, where it leaves the hidden states.
    pub(super) fn v4_rows(
        &self,
        v4: &crate::dsv4::V4,
        tokens: &[u32],
        pool: &mut KvPool,
        s: &mut Scratch,
        segs: &[Seg],
    ) -> Result<usize> {
        let (n, e, d) = (tokens.len(), self.cfg.n_embd, self.dev_embd);
        let mut emb = vec![0f32; n * e];
        let be = self.dev(d);
        be.get_rows(&self.tok_embd, tokens, sized(be, &mut s.dev(d).x, n * e)?)?;
        be.download(s.dev(d).x.head(n * e), &mut emb)?;
        let vs: Vec<_> = segs.iter().map(|g| g.v4()).collect();
        let mut states = pool
            .layers
            .iter_mut()
            .map(|l| match l {
                LayerCache::Recurrent { s, size } => Ok((s, *size)),
                _ => Err(Error::Invalid("a pool of another model".into())),
            })
            .collect::<Result<Vec<_>>>()?;
        let y = v4.forward(self.dev(0), tokens, &emb, &vs, &mut states)?;
        let be = self.dev(0);
        be.upload(&y, sized(be, &mut s.dev(0).x, n * e)?)?;
        Ok(0)
    }
}
