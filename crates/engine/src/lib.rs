//! hearth-engine: a loaded model with its tokenizer, sessions and the generate loop.
#![deny(missing_docs)]

pub mod sampling;

pub use sampling::{Rng, Sampler, SamplingParams, argmax, logsumexp, top_k};

use hearth_core::{Backend, Error, Result};
use hearth_formats::ModelFiles;
use hearth_models::{Model, State};
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

impl Engine {
    /// Load a model from a file or directory onto `backend`.
    pub fn load(path: &std::path::Path, backend: Arc<dyn Backend>) -> Result<Engine> {
        let files = ModelFiles::open(path)?;
        let tokenizer = Tokenizer::from_files(&files)?;
        let model = Model::load(&files, backend)?;
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
