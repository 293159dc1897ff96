//! DeepSeek-V4's place in [`Model`]: its pool of per-sequence state and its body
//! ([`crate::dsv4`]) over a batch's rows.
use super::{DevicePlan, KvPool, LayerCache, Model, Scratch, Seg, sized};
use crate::ModelConfig;
use crate::dsv4::{V4, V4Cfg};
use crate::dsv4_attn::V4State;
use hearth_core::{Backend, Error, Result};
use hearth_formats::{ModelFiles, Source};

/// DeepSeek-V4's body when `files` hold one (HF `deepseek_v4`, GGUF `deepseek4`), on `be`.
pub(super) fn load(
    files: &ModelFiles,
    cfg: &mut ModelConfig,
    be: &dyn Backend,
) -> Result<Option<Box<V4>>> {
    if !matches!(cfg.arch.as_str(), "deepseek_v4" | "deepseek4") {
        return Ok(None);
    }
    let t = &files.tensors;
    let c = match &files.source {
        Source::Hf(h) => V4Cfg::from_hf(&h.config, cfg)?,
        Source::Gguf(g) => V4Cfg::from_gguf(g, cfg, &|n| t.contains_key(n))?,
    };
    cfg.n_ff = c.n_ff;
    // the file's RoPE scaling is the compressed layers' (described with them)
    cfg.rope.dim = c.rope_dim;
    cfg.rope.scaling = crate::RopeScaling::None;
    Ok(Some(Box::new(V4::load(be, t, c)?)))
}

impl Model {
    /// A pool for DeepSeek-V4: one slot of state per sequence and layer, each for contexts of
    /// up to the pool's positions.
    pub(super) fn v4_pool(
        &self,
        v4: &V4,
        n_pages: usize,
        page_size: usize,
        n_slots: usize,
    ) -> Result<KvPool> {
        Ok(KvPool {
            layers: v4.caches(self.dev(0), n_pages, page_size, n_slots.max(1))?,
            page_size,
            n_pages,
            n_slots: n_slots.max(1),
        })
    }

    /// DeepSeek-V4's body ([`crate::dsv4`]): the embedding on its device, the rest on
    /// device 0, where it leaves the hidden states.
    pub(super) fn v4_rows(
        &self,
        v4: &V4,
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
        // the slots, then the paged entries, of each layer
        let nl = v4.layers.len();
        if pool.layers.len() != 2 * nl {
            return Err(Error::Invalid("a pool of another model".into()));
        }
        let (slots, ents) = pool.layers.split_at_mut(nl);
        let mut states = slots
            .iter_mut()
            .zip(ents.iter_mut())
            .map(|(a, b)| match (a, b) {
                (LayerCache::Recurrent { s, size }, LayerCache::Latent { c, ik }) => Ok(V4State {
                    slots: s,
                    size: *size,
                    ent: c,
                    ient: ik,
                }),
                _ => Err(Error::Invalid("a pool of another model".into())),
            })
            .collect::<Result<Vec<_>>>()?;
        let y = v4.forward(self.dev(0), tokens, &emb, &vs, &mut states)?;
        let be = self.dev(0);
        be.upload(&y, sized(be, &mut s.dev(0).x, n * e)?)?;
        Ok(0)
    }
}

impl Model {
    /// `hearth inspect`'s description of a DeepSeek-V4 model (None for other models): its
    /// experts, attention kinds, hyper-connections and per-sequence state.
    pub fn v4_summary(&self) -> Option<Vec<String>> {
        use crate::dsv4::Kind;
        let v = self.v4.as_ref()?;
        let c = &v.cfg;
        let n = |k: Kind| c.kinds.iter().filter(|&&x| x == k).count();
        let n_hash = c.hash.iter().filter(|&&h| h).count();
        Some(vec![
            format!(
                "experts:       {} routed, {} used per token, sqrt-softplus scores, renormalised, \
                 scaled by {}; hash-routed (token -> experts table) in {n_hash} of {} MoE layers; \
                 SwiGLU clamped at {}",
                c.n_expert,
                c.n_used,
                c.routed_scale,
                c.kinds.len(),
                c.swiglu_limit
            ),
            format!(
                "attention:     one shared K=V head, sinks, sliding window of {} on every layer; \
                 {} CSA layers (an entry per {} positions, of which the indexer keeps {}: {} heads \
                 of {}), {} HCA layers (an entry per {} positions), {} sliding only; output in {} \
                 groups of rank {}; compressed layers' RoPE theta {}, {:?}",
                c.window,
                n(Kind::Csa),
                c.rate_csa,
                c.idx_topk,
                c.idx_heads,
                c.idx_dim,
                n(Kind::Hca),
                c.rate_hca,
                n(Kind::Sliding),
                c.o_groups,
                c.o_lora,
                c.rope_comp.theta,
                c.rope_comp.scaling
            ),
            format!(
                "hyper-conn:    {} residual streams (mHC, {} Sinkhorn iterations)",
                c.n_hc, c.sinkhorn_iters
            ),
            format!(
                "KV cache:      {} bytes/token in f32 (the compressed entries); per sequence {} \
                 bytes of windows and compressor rows in f32, whatever its length",
                v.kv_bytes_per_token(),
                v.state_bytes_per_seq()
            ),
        ])
    }
}

impl Model {
    /// Bytes of KV cache one page of `page_size` positions takes in a pool
    /// ([`Model::new_pool`]): [`Model::kv_pool_bytes_per_token`] per position, except that
    /// DeepSeek-V4 keeps whole rows of compressed entries per page (one per `rate` positions,
    /// rounded up), so that a page of fewer positions than a window still holds one.
    pub fn kv_pool_bytes_per_page(&self, page_size: usize) -> usize {
        match &self.v4 {
            None => self.kv_pool_bytes_per_token().saturating_mul(page_size),
            Some(v) => v.kv_bytes_per_page(page_size),
        }
    }
}

impl Model {
    /// DeepSeek-V4's share of [`Model::plan`] (all on device 0).
    pub(super) fn v4_plan(&self, p: &mut [DevicePlan]) {
        if let Some(v4) = &self.v4 {
            for t in v4.tensors(true) {
                p[0].weight_bytes += self.devs[0].weight_bytes(t);
                p[0].in_place_bytes += self.devs[0].weight_bytes_in_place(t);
            }
            p[0].kv_bytes_per_token += v4.kv_bytes_per_token();
            p[0].state_bytes_per_seq += v4.state_bytes_per_seq();
        }
    }
}
