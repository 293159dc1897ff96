//! hearth-engine: a loaded model with its tokenizer, sessions and the generate loop.
#![deny(missing_docs)]

pub mod bench;
pub mod embed;
pub mod grammar;
pub mod imatrix;
mod pages;
pub mod place;
mod plan_only;
pub mod ppl;
pub mod sampling;
pub mod sched;

pub use embed::{Pooler, Pooling};
pub use place::{Fitted, Placement};
pub use plan_only::PlanOnly;
pub use sampling::{Rng, Sampler, SamplingParams, argmax, logsumexp, top_k};

use hearth_core::{Backend, Error, Result};
use hearth_formats::ModelFiles;
pub use hearth_models::{BlockCost, DevicePlan, Model, State};
use hearth_tokenizer::{StreamDecoder, Tokenizer};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A model ready to run: files, weights and tokenizer.
pub struct Engine {
    /// The opened files (kept alive: tensors point into their maps).
    pub files: ModelFiles,
    /// The model.
    pub model: Model,
    /// The tokenizer.
    pub tokenizer: Tokenizer,
}

/// Timing of one generation.
#[derive(Clone, Debug, Default)]
pub struct GenStats {
    /// Prompt tokens processed.
    pub prompt_tokens: usize,
    /// Time spent on the prompt.
    pub prompt_time: Duration,
    /// Tokens generated.
    pub gen_tokens: usize,
    /// Time spent generating.
    pub gen_time: Duration,
    /// Why generation stopped.
    pub stop: StopReason,
}

/// Why generation stopped.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum StopReason {
    /// An end-of-generation token.
    #[default]
    Eog,
    /// The token limit.
    Length,
    /// The context is full.
    Context,
    /// The caller asked to stop.
    Cancelled,
}

/// An error unless every logit of `row` (the prediction after `pos` tokens) is finite. NaN or
/// infinite logits mean broken weights or a broken computation; sampling from them would
/// print nothing (or garbage) and look like success.
pub fn check_logits(row: &[f32], pos: usize) -> Result<()> {
    match row.iter().position(|x| !x.is_finite()) {
        None => Ok(()),
        Some(t) => Err(Error::Invalid(format!(
            "the model produced a non-finite logit ({} for token {t}) after {pos} tokens: its weights or the computation are broken",
            row[t]
        ))),
    }
}

/// Memory the system can still hand out (`MemAvailable` of /proc/meminfo), when known.
pub fn available_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib.saturating_mul(1024))
}

/// Check that `count` items of `per_item` bytes (named `what`, set with `flag`) fit in the
/// memory available, keeping a tenth of it free. The error names the largest count that fits.
pub fn check_fits(what: &str, flag: &str, count: usize, per_item: usize) -> Result<()> {
    let Some(avail) = available_memory() else {
        return Ok(());
    };
    let usable = avail / 10 * 9;
    let need = (count as u64).saturating_mul(per_item as u64);
    if need <= usable {
        return Ok(());
    }
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    Err(Error::Invalid(format!(
        "{what} needs {:.1} GiB, but only {:.1} GiB of memory is available: the largest {flag} that fits is {}",
        gib(need),
        gib(avail),
        usable / (per_item.max(1) as u64)
    )))
}

/// A conversation over one sequence of KV cache. Each turn's tokens are compared with what
/// the cache holds, and only what differs after their longest common prefix is computed
/// again: a chat reprocesses only its newest messages.
pub struct Session {
    state: State,
    /// The tokens in the cache, in order.
    cached: Vec<u32>,
}

impl Session {
    /// Forget the conversation (the cache is kept, and overwritten).
    pub fn reset(&mut self) {
        self.state.truncate(0);
        self.cached.clear();
    }

    /// Tokens the cache holds.
    pub fn len(&self) -> usize {
        self.state.len
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.state.len == 0
    }
}

impl Engine {
    /// The vocabulary size (rows of logits).
    pub fn n_vocab(&self) -> usize {
        self.model.cfg.n_vocab
    }

    /// Parameters of the model.
    pub fn n_params(&self) -> usize {
        self.model.n_params()
    }

    /// A session with room for `n_ctx` tokens, after checking that its KV cache fits in
    /// memory (`flag` names the setting in the error).
    pub fn new_session(&self, n_ctx: usize, flag: &str) -> Result<Session> {
        self.check_context(n_ctx, flag)?;
        Ok(Session {
            state: self.model.new_state(n_ctx)?,
            cached: Vec::new(),
        })
    }

    /// Generate after `tokens` (the whole conversation so far) in `session`, computing only
    /// the tokens after the longest prefix it shares with the cache. Arguments and results as
    /// [`Engine::generate`]; afterwards the cache holds `tokens` and the answer.
    pub fn generate_in(
        &self,
        session: &mut Session,
        tokens: &[u32],
        sampler: &mut Sampler,
        max_tokens: usize,
        on_text: impl FnMut(&str) -> bool,
    ) -> Result<(Vec<u32>, GenStats)> {
        let st = &mut session.state;
        let lcp = session
            .cached
            .iter()
            .zip(tokens)
            .take_while(|(a, b)| a == b)
            .count();
        // at least one token is computed, to have logits to sample from
        let common = lcp.min(st.len).min(tokens.len().saturating_sub(1));
        st.truncate(common);
        session.cached.truncate(common);
        let r = self.generate(st, &tokens[common..], sampler, max_tokens, on_text);
        match &r {
            Ok((generated, _)) => {
                session.cached = tokens.to_vec();
                session.cached.extend(generated);
                session.cached.truncate(st.len);
            }
            Err(_) => session.reset(),
        }
        r
    }

    /// Check a context of `n_ctx` tokens per sequence against the memory available (its KV
    /// cache) before anything is allocated.
    pub fn check_context(&self, n_ctx: usize, flag: &str) -> Result<()> {
        if n_ctx == 0 {
            return Err(Error::Invalid(format!("{flag} must be at least 1")));
        }
        check_fits(
            &format!("a KV cache for a context of {n_ctx} tokens"),
            flag,
            n_ctx,
            self.model.kv_pool_bytes_per_token(),
        )
    }

    /// Every position's logits `[tokens.len(), n_vocab]` for `tokens` from an empty context.
    pub fn logits(&self, tokens: &[u32]) -> Result<Vec<f32>> {
        self.check_context(tokens.len(), "the number of tokens")?;
        let mut state = self.model.new_state(tokens.len())?;
        let mut logits = Vec::new();
        self.model.forward(tokens, &mut state, true, &mut logits)?;
        Ok(logits)
    }

    /// Keep the KV caches of the states and pools made from now on in types `k` and `v`
    /// (see [`Model::set_kv_types`]).
    pub fn set_kv_types(&mut self, k: hearth_core::KvType, v: hearth_core::KvType) -> Result<()> {
        self.model.set_kv_types(k, v)
    }

    /// Load a model from a file or directory onto `backend`.
    pub fn load(path: &std::path::Path, backend: Arc<dyn Backend>) -> Result<Engine> {
        Engine::load_placed(path, vec![backend], &|_, _| 0)
    }

    /// Load a model over several devices (see [`Model::load_placed`] for `place`).
    pub fn load_placed(
        path: &std::path::Path,
        devs: Vec<Arc<dyn Backend>>,
        place: &dyn Fn(&str, usize) -> usize,
    ) -> Result<Engine> {
        let files = ModelFiles::open(path)?;
        let tokenizer = Tokenizer::from_files(&files)?;
        release_free_heap();
        let model = Model::load_placed(&files, devs, place)?;
        Ok(Engine {
            files,
            model,
            tokenizer,
        })
    }

    /// Generate up to `max_tokens` after `prompt` in `state` (which may already hold a
    /// prefix). `on_text` receives each complete piece of text and returns false to stop.
    pub fn generate(
        &self,
        state: &mut State,
        prompt: &[u32],
        sampler: &mut Sampler,
        max_tokens: usize,
        mut on_text: impl FnMut(&str) -> bool,
    ) -> Result<(Vec<u32>, GenStats)> {
        let mut stats = GenStats {
            prompt_tokens: prompt.len(),
            ..Default::default()
        };
        if prompt.len() + state.len > state.n_ctx() {
            return Err(Error::Invalid(format!(
                "the prompt has {} tokens but the context holds {} (with {} already used)",
                prompt.len(),
                state.n_ctx(),
                state.len
            )));
        }
        let mut history: Vec<u32> = prompt.to_vec();
        let mut logits = Vec::new();
        let t0 = Instant::now();
        self.model.forward(prompt, state, false, &mut logits)?;
        stats.prompt_time = t0.elapsed();
        let t1 = Instant::now();
        let mut out = Vec::new();
        let mut dec = StreamDecoder::default();
        stats.stop = StopReason::Length;
        for _ in 0..max_tokens {
            check_logits(&logits, history.len())?;
            let tok = sampler.sample(&mut logits, &history);
            if self.tokenizer.is_eog(tok) {
                stats.stop = StopReason::Eog;
                break;
            }
            out.push(tok);
            history.push(tok);
            let text = dec.push(self.tokenizer.token_bytes(tok));
            if !text.is_empty() && !on_text(&text) {
                stats.stop = StopReason::Cancelled;
                break;
            }
            if state.len >= state.n_ctx() {
                stats.stop = StopReason::Context;
                break;
            }
            if out.len() == max_tokens {
                break;
            }
            self.model.forward(&[tok], state, false, &mut logits)?;
        }
        let rest = dec.flush();
        if !rest.is_empty() {
            on_text(&rest);
        }
        stats.gen_tokens = out.len();
        stats.gen_time = t1.elapsed();
        Ok((out, stats))
    }
}

/// Hand the heap's free memory back to the system. Building a tokenizer from a GGUF's
/// vocabulary allocates and frees tens of MiB in small pieces (about 75 MiB at its peak for a
/// 49k vocabulary), which glibc's allocator otherwise keeps: the process would hold them for
/// its whole life, beside the weights.
pub fn release_free_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free pages of the allocator's own arenas to the system.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Load only the weights of opened files onto `backend` (for inspection and benchmarks,
/// which need no tokenizer).
pub fn load_model(files: &ModelFiles, backend: Arc<dyn Backend>) -> Result<Model> {
    Model::load(files, backend)
}

/// [`load_model`] over several devices.
pub fn load_model_placed(
    files: &ModelFiles,
    devs: Vec<Arc<dyn Backend>>,
    place: &dyn Fn(&str, usize) -> usize,
) -> Result<Model> {
    Model::load_placed(files, devs, place)
}
