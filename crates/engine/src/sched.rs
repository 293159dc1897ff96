//! The scheduler: one thread owns the model and the KV pool and runs continuous batching.
//!
//! Between decode steps it takes new requests from its channel, admits waiting ones while the
//! pool has pages for them (a cached prefix costs nothing), and then runs one batched forward
//! pass: one token for every decoding sequence plus chunks of prompts being prefilled, up to
//! a token budget, so a long prompt never stalls the others for long. When the pool runs dry
//! mid-generation the most recently admitted sequence is preempted: its pages go back (the
//! full ones stay in the prefix cache) and it waits at the head of the queue to be resumed by
//! recomputation. A request whose client went away is dropped at the next step.
use crate::grammar::{Grammar, Matcher, TOKEN_FUEL};
use crate::pages::Pages;
use crate::{Engine, Pooler, Pooling, Sampler, SamplingParams, logsumexp, top_k};
use hearth_core::{Error, Result};
use hearth_models::{BatchSeq, KvPool, Scratch, Want};
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Instant;
use tokio::sync::mpsc::UnboundedSender;

/// A generation request.
pub struct Job {
    /// Prompt tokens (at least one).
    pub prompt: Vec<u32>,
    /// Most tokens to generate.
    pub max_tokens: usize,
    /// Sampling settings.
    pub sampling: SamplingParams,
    /// Report each chosen token's log-probability and this many alternatives.
    pub top_logprobs: Option<usize>,
    /// Report the prompt tokens' log-probabilities too (turns off prefix reuse).
    pub prompt_logprobs: bool,
    /// Constrain the output to this grammar.
    pub grammar: Option<Arc<Grammar>>,
    /// Added to the logits of these tokens before sampling.
    pub logit_bias: Vec<(u32, f32)>,
    /// Embed the prompt with this pooling instead of generating: the answer is one
    /// [`Event::Embedding`] (and `max_tokens` is not used).
    pub embed: Option<Pooling>,
    /// Where results go; dropping the receiver cancels the request.
    pub events: UnboundedSender<Event>,
    /// When the server received it.
    pub received: Instant,
}

/// A token's log-probability and the most likely alternatives.
#[derive(Clone, Debug)]
pub struct TokenLogprob {
    /// The token.
    pub token: u32,
    /// Its log-probability.
    pub logprob: f32,
    /// The most likely tokens, best first.
    pub top: Vec<(u32, f32)>,
}

/// Why a generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Finish {
    /// End of generation token, or the grammar's document is complete.
    Stop,
    /// `max_tokens` or the context size.
    Length,
}

/// What the scheduler reports about a request.
#[derive(Debug)]
pub enum Event {
    /// Log-probabilities of prompt tokens 1.. (in order, possibly over several events).
    Prompt(Vec<TokenLogprob>),
    /// A generated token.
    Token(u32, Option<TokenLogprob>),
    /// Generation ended.
    Done {
        /// Why.
        finish: Finish,
        /// Prompt tokens taken from the prefix cache.
        cached_tokens: usize,
    },
    /// An embedding request's answer: the prompt's pooled, L2-normalised hidden states. It
    /// ends the request.
    Embedding(Vec<f32>),
    /// The request failed (a server-side fault: 500).
    Error(String),
    /// The request asks for more than the server will do (a client fault: 400), found only
    /// while generating: constraining its output took past the step budget.
    Refused(String),
}

/// Counters the `/metrics` endpoint reports.
#[derive(Default)]
pub struct Metrics {
    /// Requests finished.
    pub requests: AtomicU64,
    /// Requests accepted and not finished: waiting, running, or on their way to the
    /// scheduler. Admission compares it with slots plus queue places.
    pub in_flight: AtomicU64,
    /// Requests refused with 429.
    pub rejected: AtomicU64,
    /// Prompt tokens of admitted requests.
    pub prompt_tokens: AtomicU64,
    /// Prompt tokens served from the prefix cache.
    pub cached_tokens: AtomicU64,
    /// Tokens generated.
    pub generated_tokens: AtomicU64,
    /// Sum of times to first token (µs) and their count.
    pub ttft_us: AtomicU64,
    /// Requests that produced a first token.
    pub ttft_count: AtomicU64,
    /// Time spent in forward passes (µs).
    pub busy_us: AtomicU64,
    /// Decode tokens per second over the last step, times 1000.
    pub tps_milli: AtomicU64,
    /// Requests handed to the scheduler and never admitted yet (the HTTP side adds them).
    pub waiting: AtomicU64,
    /// Sequences running.
    pub running: AtomicU64,
    /// KV pages in use and in total.
    pub pages_used: AtomicU64,
    /// Pages in the pool.
    pub pages_total: AtomicU64,
    /// Sequences preempted for lack of pages.
    pub preempted: AtomicU64,
}

/// Scheduler settings.
#[derive(Clone, Debug)]
pub struct Config {
    /// Longest sequence (prompt + output).
    pub n_ctx: usize,
    /// Most sequences running at once.
    pub parallel: usize,
    /// Tokens per forward pass (decode tokens + prompt chunks).
    pub batch_tokens: usize,
    /// Pages in the KV pool.
    pub n_pages: usize,
    /// Positions per page.
    pub page_size: usize,
}

/// The sizes a server asks for, before the KV pool is sized.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Longest sequence (prompt + output).
    pub n_ctx: usize,
    /// Most sequences running at once.
    pub parallel: usize,
    /// Tokens per forward pass.
    pub batch_tokens: usize,
    /// KV pool budget in bytes.
    pub kv_bytes: usize,
    /// Positions per page.
    pub page_size: usize,
}

/// Most sequences one scheduler may run at once (each holds at least one KV page and a slot
/// in every batch).
pub const MAX_PARALLEL: usize = 4096;

impl Limits {
    /// How many KV pages these limits give: the budget's worth, but never less than one full
    /// context (plus a page) so that any single admitted request can finish.
    pub fn pool_pages(&self, eng: &Engine) -> usize {
        let per_page = eng.model.kv_pool_bytes_per_page(self.page_size.max(1));
        let budget = self.kv_bytes / per_page.max(1);
        let want = self
            .n_ctx
            .saturating_mul(self.parallel)
            .div_ceil(self.page_size.max(1));
        budget
            .min(want)
            .max(self.n_ctx.div_ceil(self.page_size.max(1)) + 1)
    }

    /// The scheduler's configuration, after checking the sizes against the model and the
    /// memory available before anything is allocated: the KV pool that `--ctx`, `--parallel`
    /// and `--kv-mib` make, the activations of a `--batch`, and `--parallel` against the pool.
    /// Each error gives the largest value that fits.
    pub fn config(&self, eng: &Engine) -> Result<Config> {
        let bad = |m: String| Err(Error::Invalid(m));
        if self.parallel == 0 || self.batch_tokens == 0 || self.page_size == 0 {
            return bad("--parallel, --batch and the page size must be at least 1".into());
        }
        if self.parallel > MAX_PARALLEL {
            return bad(format!(
                "--parallel {} is more than the {MAX_PARALLEL} sequences a server runs at once",
                self.parallel
            ));
        }
        eng.check_context(self.n_ctx, "--ctx")?;
        let pages = self.pool_pages(eng);
        let per_page = eng.model.kv_pool_bytes_per_page(self.page_size);
        let pool_mib = pages.saturating_mul(per_page).div_ceil(1 << 20);
        crate::check_fits(
            &format!(
                "a KV pool for {} tokens (--ctx {} x --parallel {}, at most --kv-mib {})",
                pages * self.page_size,
                self.n_ctx,
                self.parallel,
                self.kv_bytes >> 20
            ),
            "--kv-mib",
            pool_mib,
            1 << 20,
        )?;
        let state = eng.model.state_bytes_per_seq();
        if state > 0 {
            crate::check_fits(
                &format!(
                    "the linear-attention state of --parallel {} sequences ({} KiB each)",
                    self.parallel,
                    state >> 10
                ),
                "--parallel",
                self.parallel,
                state,
            )?;
        }
        if self.parallel > pages {
            return bad(format!(
                "--parallel {} is more than the KV pool's {pages} pages can hold at once (a page each): the largest that fits is {pages}",
                self.parallel
            ));
        }
        let batch_max = self.n_ctx.saturating_mul(self.parallel);
        if self.batch_tokens > batch_max {
            return bad(format!(
                "--batch {} is more than the {batch_max} tokens --ctx {} x --parallel {} can ever feed at once",
                self.batch_tokens, self.n_ctx, self.parallel
            ));
        }
        crate::check_fits(
            &format!("a batch of {} tokens", self.batch_tokens),
            "--batch",
            self.batch_tokens,
            eng.model.activation_bytes_per_token(),
        )?;
        Ok(Config {
            n_ctx: self.n_ctx,
            parallel: self.parallel,
            batch_tokens: self.batch_tokens,
            n_pages: pages,
            page_size: self.page_size,
        })
    }
}

struct Seq {
    job: Job,
    sampler: Sampler,
    matcher: Option<Matcher>,
    tokens: Vec<u32>,
    prompt_len: usize,
    generated: usize,
    cached: usize,
    pages: Vec<u32>,
    registered: usize,
    reported_cache: Option<usize>,
    first_token: bool,
    /// Its slot for fixed-size (recurrent) state, while admitted.
    slot: Option<usize>,
    /// Recurrent models: its state at the last page boundary it reached, (positions, state).
    ckpt: Option<(usize, Vec<f32>)>,
    /// An embedding request's pooling so far.
    pooler: Option<Pooler>,
}

impl Seq {
    fn new(job: Job, n_embd: usize) -> Seq {
        Seq {
            pooler: job.embed.map(|p| Pooler::new(p, n_embd)),
            sampler: Sampler::new(job.sampling.clone()),
            matcher: job.grammar.clone().map(Matcher::new),
            tokens: job.prompt.clone(),
            prompt_len: job.prompt.len(),
            generated: 0,
            cached: 0,
            pages: Vec::new(),
            registered: 0,
            reported_cache: None,
            first_token: false,
            slot: None,
            ckpt: None,
            job,
        }
    }

    fn gone(&self) -> bool {
        self.job.events.is_closed()
    }
}

/// The scheduler's state.
pub struct Scheduler {
    eng: Arc<Engine>,
    cfg: Config,
    pool: KvPool,
    pages: Pages,
    scratch: Scratch,
    waiting: VecDeque<Seq>,
    running: Vec<Seq>,
    metrics: Arc<Metrics>,
    logits: Vec<f32>,
    /// Free state slots (one per sequence that can run).
    free_slots: Vec<usize>,
    /// Recurrent models: saved states at page boundaries of finished sequences, so that a
    /// prompt extending one (the next turn of a chat) resumes from it instead of from the
    /// start: whole-page prefix id -> (positions, state), oldest first.
    ckpts: VecDeque<(u64, usize, Vec<f32>)>,
}

/// Recurrent models: of the `hit` cached pages of `tokens`, how many a saved state in `ckpts`
/// covers (the longest such prefix), and that state.
fn usable_hit<'a>(
    ckpts: &'a VecDeque<(u64, usize, Vec<f32>)>,
    tokens: &[u32],
    hit: usize,
    ps: usize,
) -> (usize, Option<&'a Vec<f32>>) {
    for h in (1..=hit).rev() {
        let id = crate::pages::prefix_id(&tokens[..h * ps], ps);
        if let Some(c) = ckpts.iter().find(|c| c.0 == id && c.1 == h * ps) {
            return (h, Some(&c.2));
        }
    }
    (0, None)
}

/// The text a panic carried, when it carried one.
fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_default()
}

/// log-softmax of `row` at `tok`, and the `k` most likely tokens.
fn logprobs(row: &[f32], tok: u32, k: usize) -> TokenLogprob {
    let lse = logsumexp(row);
    let lp = |t: u32| (row[t as usize] as f64 - lse) as f32;
    TokenLogprob {
        token: tok,
        logprob: lp(tok),
        top: top_k(row, k).into_iter().map(|t| (t, lp(t))).collect(),
    }
}

impl Scheduler {
    /// A scheduler for `eng` with an empty pool.
    pub fn new(eng: Arc<Engine>, cfg: Config, metrics: Arc<Metrics>) -> Result<Scheduler> {
        let pool = eng
            .model
            .new_pool(cfg.n_pages, cfg.page_size, cfg.parallel.max(1))?;
        let free_slots = (0..cfg.parallel.max(1)).rev().collect();
        metrics.pages_total.store(cfg.n_pages as u64, Relaxed);
        Ok(Scheduler {
            pages: Pages::new(cfg.n_pages, cfg.page_size),
            pool,
            eng,
            cfg,
            scratch: Scratch::default(),
            waiting: VecDeque::new(),
            running: Vec::new(),
            metrics,
            logits: Vec::new(),
            free_slots,
            ckpts: VecDeque::new(),
        })
    }

    /// Serve requests from `rx` until every sender is gone.
    pub fn run(mut self, rx: std::sync::mpsc::Receiver<Job>) {
        loop {
            if self.waiting.is_empty() && self.running.is_empty() {
                match rx.recv() {
                    Ok(j) => self
                        .waiting
                        .push_back(Seq::new(j, self.eng.model.cfg.n_embd)),
                    Err(_) => return,
                }
            }
            while let Ok(j) = rx.try_recv() {
                self.waiting
                    .push_back(Seq::new(j, self.eng.model.cfg.n_embd));
            }
            // a bug anywhere in a step (sampling, a grammar, the bookkeeping) fails the
            // requests it held, with an error each, and the scheduler goes on: no accepted
            // request is lost silently and later ones are served
            if let Err(p) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.step())) {
                self.recover(&panic_message(p.as_ref()));
            }
        }
    }

    /// After a panic mid-step: every request held fails with `msg`, and the page bookkeeping
    /// (which the step may have left half-updated) starts afresh, prefix cache included.
    fn recover(&mut self, msg: &str) {
        let err = format!("internal error in the scheduler: {msg}");
        let held: Vec<Seq> = self
            .running
            .drain(..)
            .chain(self.waiting.drain(..))
            .collect();
        for s in held {
            if s.reported_cache.is_none() {
                self.metrics.waiting.fetch_sub(1, Relaxed);
            }
            self.ended();
            let _ = s.job.events.send(Event::Error(err.clone()));
        }
        self.pages = Pages::new(self.cfg.n_pages, self.cfg.page_size);
        self.free_slots = (0..self.cfg.parallel.max(1)).rev().collect();
        self.ckpts.clear();
        self.metrics.running.store(0, Relaxed);
        self.metrics.pages_used.store(0, Relaxed);
    }

    fn release(&mut self, s: &mut Seq) {
        for p in s.pages.drain(..) {
            self.pages.release(p);
        }
        s.cached = 0;
        s.registered = 0;
        if let Some(p) = &mut s.pooler {
            p.reset(); // (recomputed from the start when it is admitted again)
        }
        if let Some(slot) = s.slot.take() {
            self.free_slots.push(slot);
        }
        s.ckpt = None;
    }

    /// Keep a finished sequence's last checkpoint for a later prompt that extends it (at
    /// most `parallel` of them, the oldest dropped first).
    fn keep_ckpt(&mut self, s: &mut Seq) {
        let Some((len, state)) = s.ckpt.take() else {
            return;
        };
        let id = crate::pages::prefix_id(&s.tokens[..len], self.cfg.page_size);
        self.ckpts.retain(|c| c.0 != id);
        self.ckpts.push_back((id, len, state));
        while self.ckpts.len() > self.cfg.parallel.max(1) {
            self.ckpts.pop_front();
        }
    }

    /// A request leaves the scheduler, answered or not.
    fn ended(&self) {
        self.metrics.requests.fetch_add(1, Relaxed);
        self.metrics.in_flight.fetch_sub(1, Relaxed);
    }

    fn finish(&mut self, mut s: Seq, ev: Event) {
        self.keep_ckpt(&mut s);
        self.release(&mut s);
        // counted out before the client can hear of it: a client that sends its next request
        // as soon as this one is answered must find the place free
        self.ended();
        let _ = s.job.events.send(ev);
    }

    /// Drop requests whose clients left.
    fn drop_gone(&mut self) {
        let mut i = 0;
        while i < self.running.len() {
            if self.running[i].gone() {
                let mut s = self.running.remove(i);
                self.release(&mut s);
                self.ended();
            } else {
                i += 1;
            }
        }
        // those never admitted still count as queued
        let m = &self.metrics;
        self.waiting.retain(|s| {
            let gone = s.gone();
            if gone {
                if s.reported_cache.is_none() {
                    m.waiting.fetch_sub(1, Relaxed);
                }
                m.requests.fetch_add(1, Relaxed);
                m.in_flight.fetch_sub(1, Relaxed);
            }
            !gone
        });
    }

    /// Admit waiting requests while there is room.
    fn admit(&mut self) {
        let ps = self.cfg.page_size;
        while self.running.len() < self.cfg.parallel {
            let Some(s) = self.waiting.front_mut() else {
                break;
            };
            // reuse whole cached pages, always leaving at least one token to compute
            let max_hit = if s.job.prompt_logprobs || s.pooler.is_some() {
                0
            } else {
                (s.tokens.len() - 1) / ps
            };
            let mut hit = self.pages.lookup(&s.tokens, max_hit);
            // a recurrent model resumes only where a saved state is: the pages after it are
            // recomputed (their state cannot be rebuilt from their keys and values)
            let mut restore = None;
            if self.pool.has_recurrent() {
                let (h, st) = usable_hit(&self.ckpts, &s.tokens, hit.len(), ps);
                restore = st.cloned();
                for p in hit.drain(h..) {
                    self.pages.release(p);
                }
            }
            let need = (s.tokens.len() + 1).div_ceil(ps).saturating_sub(hit.len());
            if need > self.pages.available() || self.free_slots.is_empty() {
                for p in hit {
                    self.pages.release(p);
                }
                break;
            }
            let mut s = self.waiting.pop_front().expect("front exists");
            let slot = self.free_slots.pop().expect("a free slot");
            s.slot = Some(slot);
            if let Some(st) = &restore
                && let Err(e) = self.pool.restore_slot(&self.eng.model, slot, st)
            {
                // (a saved state that does not fit: start afresh)
                eprintln!("hearth: a saved state could not be restored: {e}");
                for p in hit.drain(..) {
                    self.pages.release(p);
                }
            }
            s.cached = hit.len() * ps;
            s.registered = hit.len();
            s.pages = hit;
            // take the pages now, so that the next admission in this loop sees them gone
            s.pages.extend((0..need).filter_map(|_| self.pages.alloc()));
            if s.reported_cache.is_none() {
                s.reported_cache = Some(s.cached);
                self.metrics.waiting.fetch_sub(1, Relaxed);
                self.metrics
                    .prompt_tokens
                    .fetch_add(s.prompt_len as u64, Relaxed);
                self.metrics
                    .cached_tokens
                    .fetch_add(s.cached as u64, Relaxed);
            }
            self.running.push(s);
        }
    }

    /// Make sure running sequence `i` has pages for `upto` positions, preempting the most
    /// recently admitted others if needed. False if `i` itself had to be preempted.
    fn reserve(&mut self, i: usize, upto: usize) -> bool {
        let ps = self.cfg.page_size;
        while self.running[i].pages.len() * ps < upto {
            if let Some(p) = self.pages.alloc() {
                self.running[i].pages.push(p);
                continue;
            }
            let victim = self.running.len() - 1;
            let mut v = self.running.remove(victim);
            self.release(&mut v);
            self.metrics.preempted.fetch_add(1, Relaxed);
            self.waiting.push_front(v);
            if victim == i {
                return false;
            }
        }
        true
    }

    /// One batched forward pass and its sampling, then the gauges.
    fn step(&mut self) {
        self.step_inner();
        self.metrics
            .running
            .store(self.running.len() as u64, Relaxed);
        self.metrics
            .pages_used
            .store(self.pages.in_use() as u64, Relaxed);
    }

    fn step_inner(&mut self) {
        self.drop_gone();
        self.admit();
        // what each running sequence feeds this step: decoders first, one token each
        let mut plan: Vec<(usize, usize)> = Vec::new(); // (running index, tokens)
        let mut budget = self.cfg.batch_tokens.max(1);
        let mut order: Vec<usize> = (0..self.running.len()).collect();
        order.sort_by_key(|&i| {
            let s = &self.running[i];
            s.tokens.len() - s.cached > 1
        });
        let recurrent = self.pool.has_recurrent();
        let ps = self.cfg.page_size;
        for i in order {
            let s = &self.running[i];
            let left = s.tokens.len() - s.cached;
            let mut n = left.min(budget);
            // recurrent models: a prompt chunk stops at the prompt's last page boundary, so
            // that the state there is saved (a later turn resumes from it)
            let last = (s.tokens.len() - 1) / ps * ps;
            if recurrent && s.cached < last && s.cached + n > last {
                n = last - s.cached;
            }
            if n == 0 {
                continue;
            }
            budget -= n;
            plan.push((i, n));
        }
        // pages for the plan (preemption removes sequences from the end of `running`)
        plan.sort_by_key(|&(i, _)| i);
        let mut kept = Vec::new();
        for &(i, n) in &plan {
            if i >= self.running.len() {
                continue;
            }
            let upto = self.running[i].cached + n;
            if self.reserve(i, upto) {
                kept.push((i, n));
            }
        }
        kept.retain(|&(i, _)| i < self.running.len());
        if kept.is_empty() {
            return;
        }
        let wants: Vec<Want> = kept
            .iter()
            .map(|&(i, n)| {
                let s = &self.running[i];
                if s.pooler.is_some() {
                    Want::Hidden
                } else if s.job.prompt_logprobs && s.cached + n <= s.prompt_len {
                    Want::All
                } else if s.cached + n == s.tokens.len() {
                    Want::Last
                } else if s.job.prompt_logprobs && s.cached < s.prompt_len {
                    Want::All
                } else {
                    Want::None
                }
            })
            .collect();
        let batch: Vec<BatchSeq> = kept
            .iter()
            .zip(&wants)
            .map(|(&(i, n), &want)| {
                let s = &self.running[i];
                BatchSeq {
                    tokens: &s.tokens[s.cached..s.cached + n],
                    pos0: s.cached,
                    pages: &s.pages,
                    slot: s.slot.unwrap_or(0),
                    want,
                }
            })
            .collect();
        let mut logits = std::mem::take(&mut self.logits);
        logits.clear();
        let t0 = Instant::now();
        // a panic in the forward pass (a bug) fails this batch's requests with an error
        // instead of ending the scheduler and every request after it
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.eng
                .model
                .forward_batch(&mut self.pool, &mut self.scratch, &batch, &mut logits)
        }))
        .unwrap_or_else(|p| {
            Err(hearth_core::Error::Invalid(format!(
                "internal error in the forward pass: {}",
                panic_message(p.as_ref())
            )))
        });
        drop(batch);
        let dt = t0.elapsed();
        self.metrics
            .busy_us
            .fetch_add(dt.as_micros() as u64, Relaxed);
        if let Err(e) = r {
            // fail every sequence of the batch; the others carry on
            let mut idx: Vec<usize> = kept.iter().map(|&(i, _)| i).collect();
            idx.sort_unstable_by(|a, b| b.cmp(a));
            for i in idx {
                let s = self.running.remove(i);
                self.finish(s, Event::Error(e.to_string()));
            }
            return;
        }
        let nv = self.eng.model.cfg.n_vocab;
        let ne = self.eng.model.cfg.n_embd;
        let mut off = 0;
        // the hidden states come after every logits row
        let mut hoff: usize = kept
            .iter()
            .zip(&wants)
            .map(|(&(_, n), &w)| match w {
                Want::Last => nv,
                Want::All => n * nv,
                Want::None | Want::Hidden => 0,
            })
            .sum();
        let mut done: Vec<(usize, Event)> = Vec::new();
        let mut n_decoded = 0u64;
        for (&(i, n), &want) in kept.iter().zip(&wants) {
            let ps = self.cfg.page_size;
            let s = &mut self.running[i];
            let pos0 = s.cached;
            s.cached += n;
            if recurrent && s.cached.is_multiple_of(ps) {
                // the state at this page boundary, for a later prompt that extends this one
                if let Some(slot) = s.slot {
                    match self.pool.save_slot(&self.eng.model, slot) {
                        Ok(st) => s.ckpt = Some((s.cached, st)),
                        Err(e) => eprintln!("hearth: a state could not be saved: {e}"),
                    }
                }
            }
            while s.registered < s.cached / ps {
                self.pages
                    .register(s.pages[s.registered], s.registered, &s.tokens);
                s.registered += 1;
            }
            if want == Want::Hidden {
                let rows = &logits[hoff..hoff + n * ne];
                hoff += n * ne;
                if let Some(p) = &mut s.pooler {
                    p.add(pos0, rows, s.tokens.len());
                    if s.cached == s.tokens.len() {
                        done.push((i, Event::Embedding(p.finish())));
                    }
                }
                continue;
            }
            let rows = match want {
                Want::None | Want::Hidden => 0,
                Want::Last => 1,
                Want::All => n,
            };
            let block = &mut logits[off * nv..(off + rows) * nv];
            off += rows;
            if want == Want::All {
                // row r predicts the token at position pos0 + r + 1
                let k = s.job.top_logprobs.unwrap_or(0);
                let lps: Vec<TokenLogprob> = (0..rows)
                    .filter(|r| pos0 + r + 1 < s.prompt_len)
                    .map(|r| logprobs(&block[r * nv..(r + 1) * nv], s.tokens[pos0 + r + 1], k))
                    .collect();
                if !lps.is_empty() {
                    let _ = s.job.events.send(Event::Prompt(lps));
                }
            }
            if s.cached < s.tokens.len() || rows == 0 {
                continue;
            }
            let row = &mut block[(rows - 1) * nv..rows * nv];
            match sample(&self.eng, s, row) {
                Err(ev) => done.push((i, ev)),
                Ok(Some(tok)) => {
                    n_decoded += 1;
                    if !s.first_token {
                        s.first_token = true;
                        let us = s.job.received.elapsed().as_micros() as u64;
                        self.metrics.ttft_us.fetch_add(us, Relaxed);
                        self.metrics.ttft_count.fetch_add(1, Relaxed);
                    }
                    s.tokens.push(tok);
                    s.generated += 1;
                    self.metrics.generated_tokens.fetch_add(1, Relaxed);
                    if s.generated >= s.job.max_tokens || s.tokens.len() >= self.cfg.n_ctx {
                        done.push((
                            i,
                            Event::Done {
                                finish: Finish::Length,
                                cached_tokens: s.reported_cache.unwrap_or(0),
                            },
                        ));
                    } else if s.matcher.as_ref().is_some_and(|m| m.is_finished()) {
                        done.push((
                            i,
                            Event::Done {
                                finish: Finish::Stop,
                                cached_tokens: s.reported_cache.unwrap_or(0),
                            },
                        ));
                    }
                }
                Ok(None) => done.push((
                    i,
                    Event::Done {
                        finish: Finish::Stop,
                        cached_tokens: s.reported_cache.unwrap_or(0),
                    },
                )),
            }
        }
        if n_decoded > 0 && dt.as_micros() > 0 {
            let tps = n_decoded as f64 / dt.as_secs_f64();
            self.metrics.tps_milli.store((tps * 1000.0) as u64, Relaxed);
        }
        self.logits = logits;
        done.sort_unstable_by(|a, b| b.0.cmp(&a.0));
        for (i, ev) in done {
            let s = self.running.remove(i);
            self.finish(s, ev);
        }
    }
}

/// Choose `s`'s next token from its logits `row` and report it; None ends the generation
/// (an end-of-generation token, or nothing the grammar allows). An error ends it too: logits
/// that are not finite (a broken model), or a grammar that took past its step budget.
fn sample(eng: &Engine, s: &mut Seq, row: &mut [f32]) -> std::result::Result<Option<u32>, Event> {
    crate::check_logits(row, s.tokens.len()).map_err(|e| Event::Error(e.to_string()))?;
    let tk = &eng.tokenizer;
    let raw = s.job.top_logprobs.map(|_| row.to_vec());
    let generated = &s.tokens[s.prompt_len..];
    s.sampler.apply_penalties(row, generated);
    for &(t, b) in &s.job.logit_bias {
        row[t as usize] += b;
    }
    let tok = match &mut s.matcher {
        None => s.sampler.pick(row),
        Some(m) => {
            if m.is_finished() {
                return Ok(None);
            }
            m.refuel(TOKEN_FUEL);
            let t = constrained_pick(tk, &mut s.sampler, m, row);
            if m.out_of_fuel() {
                return Err(Event::Refused(format!(
                    "the response format is too complex to follow: choosing one token took over {TOKEN_FUEL} grammar steps"
                )));
            }
            let Some(t) = t else {
                return Ok(None);
            };
            if !tk.is_eog(t) {
                m.refuel(TOKEN_FUEL);
                m.accept(tk.token_bytes(t));
            }
            t
        }
    };
    if tk.is_eog(tok) {
        return Ok(None);
    }
    let lp = raw.map(|r| logprobs(&r, tok, s.job.top_logprobs.unwrap_or(0)));
    let _ = s.job.events.send(Event::Token(tok, lp));
    Ok(Some(tok))
}

/// A token the grammar allows: a few draws by rejection, then the exact mask over the whole
/// vocabulary. None when nothing is allowed (or the matcher ran out of fuel).
fn constrained_pick(
    tk: &hearth_tokenizer::Tokenizer,
    sampler: &mut Sampler,
    m: &Matcher,
    row: &mut [f32],
) -> Option<u32> {
    let ok = |t: u32| {
        if tk.is_eog(t) {
            m.is_complete()
        } else {
            m.allows(tk.token_bytes(t))
        }
    };
    for _ in 0..16 {
        let t = sampler.pick(row);
        if ok(t) {
            return Some(t);
        }
        row[t as usize] = f32::NEG_INFINITY;
    }
    let mut any = false;
    for (t, l) in row.iter_mut().enumerate() {
        if l.is_finite() && ok(t as u32) {
            any = true;
        } else {
            *l = f32::NEG_INFINITY;
        }
        if m.out_of_fuel() {
            return None;
        }
    }
    any.then(|| sampler.pick(row))
}
