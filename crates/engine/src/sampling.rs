//! Token sampling: greedy, temperature, top-k, top-p, min-p, repetition / presence /
//! frequency penalties, with a seeded generator so that runs are reproducible.
use std::collections::HashMap;

/// Sampling settings.
#[derive(Clone, Debug)]
pub struct SamplingParams {
    /// 0 means greedy.
    pub temperature: f32,
    /// Keep the k most likely tokens (0: off).
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches p (1: off).
    pub top_p: f32,
    /// Drop tokens less likely than min_p times the most likely one (0: off).
    pub min_p: f32,
    /// llama.cpp-style repetition penalty over the last `repeat_last_n` tokens (1: off).
    pub repeat_penalty: f32,
    /// Window for the penalties.
    pub repeat_last_n: usize,
    /// OpenAI presence penalty.
    pub presence_penalty: f32,
    /// OpenAI frequency penalty.
    pub frequency_penalty: f32,
    /// Random seed.
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            seed: 0,
        }
    }
}

impl SamplingParams {
    /// Greedy decoding.
    pub fn greedy() -> Self {
        SamplingParams {
            temperature: 0.0,
            ..Default::default()
        }
    }
    /// Reject out-of-range settings with a message naming the parameter.
    pub fn validate(&self) -> Result<(), String> {
        let check = |ok: bool, what: &str| if ok { Ok(()) } else { Err(what.to_string()) };
        check(
            self.temperature.is_finite() && self.temperature >= 0.0,
            "temperature must be >= 0",
        )?;
        check(
            self.top_p > 0.0 && self.top_p <= 1.0,
            "top_p must be in (0, 1]",
        )?;
        check((0.0..=1.0).contains(&self.min_p), "min_p must be in [0, 1]")?;
        check(
            self.repeat_penalty.is_finite() && self.repeat_penalty > 0.0,
            "repeat_penalty must be > 0",
        )?;
        check(
            (-2.0..=2.0).contains(&self.presence_penalty),
            "presence_penalty must be in [-2, 2]",
        )?;
        check(
            (-2.0..=2.0).contains(&self.frequency_penalty),
            "frequency_penalty must be in [-2, 2]",
        )?;
        Ok(())
    }
}

/// xoshiro256** seeded through splitmix64: small, fast, reproducible everywhere.
#[derive(Clone, Debug)]
pub struct Rng([u64; 4]);

impl Rng {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Rng {
        let mut z = seed;
        let mut next = || {
            z = z.wrapping_add(0x9E3779B97F4A7C15);
            let mut x = z;
            x = (x ^ (x >> 30)).wrapping_mul(0xBF58476D1CE4E5B9);
            x = (x ^ (x >> 27)).wrapping_mul(0x94D049BB133111EB);
            x ^ (x >> 31)
        };
        Rng([next(), next(), next(), next()])
    }
    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.0;
        let r = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        r
    }
    /// Uniform in [0, 1).
    pub fn next_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }
}

/// A sampler with its own generator and reusable buffers.
pub struct Sampler {
    /// Settings.
    pub params: SamplingParams,
    rng: Rng,
    cand: Vec<(u32, f32)>,
    counts: HashMap<u32, u32>,
}

impl Sampler {
    /// A sampler seeded from `params.seed`.
    pub fn new(params: SamplingParams) -> Sampler {
        let rng = Rng::new(params.seed);
        Sampler {
            params,
            rng,
            cand: Vec::new(),
            counts: HashMap::new(),
        }
    }

    /// Apply the penalties for `history` to `logits` in place.
    pub fn apply_penalties(&mut self, logits: &mut [f32], history: &[u32]) {
        let p = &self.params;
        if p.repeat_penalty == 1.0 && p.presence_penalty == 0.0 && p.frequency_penalty == 0.0 {
            return;
        }
        self.counts.clear();
        let start = history.len().saturating_sub(p.repeat_last_n.max(1));
        for &t in &history[start..] {
            *self.counts.entry(t).or_default() += 1;
        }
        for (&t, &c) in &self.counts {
            if let Some(l) = logits.get_mut(t as usize) {
                if p.repeat_penalty != 1.0 {
                    *l = if *l > 0.0 {
                        *l / p.repeat_penalty
                    } else {
                        *l * p.repeat_penalty
                    };
                }
                *l -= c as f32 * p.frequency_penalty + p.presence_penalty;
            }
        }
    }

    /// Choose the next token from `logits` (modified in place by the penalties).
    pub fn sample(&mut self, logits: &mut [f32], history: &[u32]) -> u32 {
        self.apply_penalties(logits, history);
        self.pick(logits)
    }

    /// Choose the next token from `logits` as they are (no penalties). Tokens whose logit is
    /// not finite (masked to -inf) are never chosen unless nothing else is left.
    pub fn pick(&mut self, logits: &[f32]) -> u32 {
        let p = self.params.clone();
        if p.temperature <= 0.0 {
            return argmax(logits);
        }
        self.cand.clear();
        self.cand.extend(
            logits
                .iter()
                .enumerate()
                .filter(|(_, l)| l.is_finite())
                .map(|(i, &l)| (i as u32, l)),
        );
        if self.cand.is_empty() {
            return argmax(logits);
        }
        let by_logit = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        if p.top_k > 0 && p.top_k < self.cand.len() {
            self.cand.select_nth_unstable_by(p.top_k - 1, by_logit);
            self.cand.truncate(p.top_k);
        }
        self.cand.sort_unstable_by(by_logit);
        let max = self.cand[0].1;
        let mut sum = 0f32;
        for c in self.cand.iter_mut() {
            c.1 = ((c.1 - max) / p.temperature).exp();
            sum += c.1;
        }
        for c in self.cand.iter_mut() {
            c.1 /= sum;
        }
        if p.min_p > 0.0 {
            let floor = self.cand[0].1 * p.min_p;
            let keep = self.cand.iter().take_while(|c| c.1 >= floor).count().max(1);
            self.cand.truncate(keep);
        }
        if p.top_p < 1.0 {
            let mut acc = 0f32;
            let mut keep = self.cand.len();
            for (i, c) in self.cand.iter().enumerate() {
                acc += c.1;
                if acc >= p.top_p {
                    keep = i + 1;
                    break;
                }
            }
            self.cand.truncate(keep);
        }
        let total: f32 = self.cand.iter().map(|c| c.1).sum();
        let mut r = self.rng.next_f32() * total;
        for c in &self.cand {
            r -= c.1;
            if r <= 0.0 {
                return c.0;
            }
        }
        self.cand.last().map(|c| c.0).unwrap_or(0)
    }
}

/// log(sum(exp(row))), computed stably in f64.
pub fn logsumexp(row: &[f32]) -> f64 {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    max as f64
        + row
            .iter()
            .map(|&l| ((l - max) as f64).exp())
            .sum::<f64>()
            .ln()
}

/// Indices of the `k` largest logits, largest first (the lower index first on ties).
pub fn top_k(row: &[f32], k: usize) -> Vec<u32> {
    let mut idx: Vec<u32> = (0..row.len() as u32).collect();
    let by = |a: &u32, b: &u32| row[*b as usize].total_cmp(&row[*a as usize]).then(a.cmp(b));
    let k = k.min(idx.len());
    if k == 0 {
        return Vec::new();
    }
    if k < idx.len() {
        idx.select_nth_unstable_by(k - 1, by);
        idx.truncate(k);
    }
    idx.sort_by(by);
    idx
}

/// Index of the largest logit (the lowest index on ties).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn greedy_picks_argmax_and_seed_reproduces() {
        let logits: Vec<f32> = (0..100).map(|i| ((i * 37) % 101) as f32 / 10.0).collect();
        let mut g = Sampler::new(SamplingParams::greedy());
        assert_eq!(g.sample(&mut logits.clone(), &[]), argmax(&logits));
        let run = |seed| {
            let mut s = Sampler::new(SamplingParams {
                seed,
                top_k: 0,
                min_p: 0.0,
                top_p: 1.0,
                temperature: 1.5,
                ..Default::default()
            });
            (0..50)
                .map(|_| s.sample(&mut logits.clone(), &[]))
                .collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
    }
    #[test]
    fn top_k_one_is_greedy_and_penalties_apply() {
        let logits = vec![1.0, 3.0, 2.0];
        let mut s = Sampler::new(SamplingParams {
            top_k: 1,
            temperature: 1.0,
            ..Default::default()
        });
        assert_eq!(s.sample(&mut logits.clone(), &[]), 1);
        let mut s = Sampler::new(SamplingParams {
            presence_penalty: 2.0,
            temperature: 0.0,
            ..Default::default()
        });
        assert_eq!(s.sample(&mut logits.clone(), &[1]), 2);
        let mut s = Sampler::new(SamplingParams {
            repeat_penalty: 4.0,
            temperature: 0.0,
            ..Default::default()
        });
        assert_eq!(s.sample(&mut logits.clone(), &[1]), 2);
    }
    #[test]
    fn validation_rejects_bad_values() {
        assert!(
            SamplingParams {
                top_p: 0.0,
                ..Default::default()
            }
            .validate()
            .is_err()
        );
        assert!(
            SamplingParams {
                temperature: -1.0,
                ..Default::default()
            }
            .validate()
            .is_err()
        );
        assert!(SamplingParams::default().validate().is_ok());
    }
}
