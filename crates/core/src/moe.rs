//! Mixture-of-experts vocabulary shared by the models and the backends: how router logits
//! become each token's experts and weights ([`Routing`], [`route`]), the experts' activation
//! ([`Glu`]), and one routed expert's weights ([`Expert`]).
use crate::{Buf, Error, Result, Tensor};

/// How router logits become expert scores.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gating {
    /// Softmax over all experts.
    Softmax,
    /// Independent sigmoids (DeepSeek V3, GLM-4.5, MiniMax-M2).
    Sigmoid,
}

/// How a group of experts is scored for group-limited routing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GroupScore {
    /// The group's best expert (DeepSeek V2's `group_limited_greedy`).
    Max,
    /// The sum of the group's two best experts (DeepSeek V3's `noaux_tc`).
    Top2Sum,
}

/// A gated linear unit's activation: `gate = act(gate, up)`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Glu {
    /// silu(gate) * up.
    Silu,
    /// sigmoid(gate) * up (an output gate, as Qwen3.5's gated attention).
    Sigmoid,
    /// gpt-oss: gate clamped above at `limit`, up clamped to ±`limit`,
    /// `gate * sigmoid(alpha * gate) * (up + 1)`.
    ClampedSwiglu {
        /// sigmoid slope
        alpha: f32,
        /// clamp bound
        limit: f32,
    },
}

/// Mixture-of-experts routing.
#[derive(Clone, Debug)]
pub struct Routing {
    /// Routed experts per MoE layer.
    pub n_expert: usize,
    /// Experts each token uses.
    pub n_used: usize,
    /// Router scoring.
    pub gating: Gating,
    /// Renormalise the chosen experts' weights to sum to one.
    pub norm: bool,
    /// Multiply the chosen weights by this (`routed_scaling_factor`).
    pub scale: f32,
    /// Expert groups (1: no group-limited routing).
    pub n_group: usize,
    /// Groups a token may draw experts from.
    pub topk_group: usize,
    /// How a group is scored.
    pub group_score: GroupScore,
    /// Activation.
    pub act: Glu,
}

impl Routing {
    /// An error unless the numbers describe a routing that can choose `n_used` experts.
    pub fn validate(&self) -> Result<()> {
        if self.n_used == 0
            || self.n_used > self.n_expert
            || self.n_group == 0
            || self.n_group > self.n_expert
            || !self.n_expert.is_multiple_of(self.n_group)
            || self.topk_group == 0
            || self.topk_group > self.n_group
            || self.n_used > self.topk_group * (self.n_expert / self.n_group)
        {
            return Err(Error::Format(format!(
                "{} of {} experts, from {} of {} groups, is not a valid routing",
                self.n_used, self.n_expert, self.topk_group, self.n_group
            )));
        }
        Ok(())
    }
}

/// One routed expert: a gated MLP with optional biases (gpt-oss).
pub struct Expert {
    /// `[n_ff, n_embd]`
    pub gate: Tensor,
    /// `[n_ff, n_embd]`
    pub up: Tensor,
    /// `[n_embd, n_ff]`
    pub down: Tensor,
    /// `[n_ff]`
    pub gate_b: Option<Buf>,
    /// `[n_ff]`
    pub up_b: Option<Buf>,
    /// `[n_embd]`
    pub down_b: Option<Buf>,
}

/// The experts one token goes to and their weights, in the order chosen (the reference every
/// backend's routing op must match).
pub fn route(
    cfg: &Routing,
    logits: &[f32],
    score_b: Option<&[f32]>,
    ids: &mut Vec<usize>,
    w: &mut Vec<f32>,
) {
    let n = logits.len();
    let scores: Vec<f32> = match cfg.gating {
        Gating::Softmax => {
            let m = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let e: Vec<f32> = logits.iter().map(|&l| (l - m).exp()).collect();
            let s: f32 = e.iter().sum();
            e.iter().map(|&v| v / s).collect()
        }
        Gating::Sigmoid => logits.iter().map(|&l| 1.0 / (1.0 + (-l).exp())).collect(),
    };
    let mut choice: Vec<f32> = match score_b {
        Some(b) => scores.iter().zip(b).map(|(s, b)| s + b).collect(),
        None => scores.clone(),
    };
    if cfg.n_group > 1 && cfg.topk_group < cfg.n_group {
        let per = n / cfg.n_group;
        let gscore: Vec<f32> = choice
            .chunks(per)
            .map(|g| match cfg.group_score {
                GroupScore::Max => g.iter().copied().fold(f32::NEG_INFINITY, f32::max),
                GroupScore::Top2Sum => {
                    let (mut a, mut b) = (f32::NEG_INFINITY, f32::NEG_INFINITY);
                    for &v in g {
                        if v > a {
                            b = a;
                            a = v;
                        } else if v > b {
                            b = v;
                        }
                    }
                    if per == 1 { a } else { a + b }
                }
            })
            .collect();
        let keep = top_k(&gscore, cfg.topk_group);
        for (gi, g) in choice.chunks_mut(per).enumerate() {
            if !keep.contains(&gi) {
                g.fill(f32::NEG_INFINITY);
            }
        }
    }
    ids.clear();
    ids.extend(top_k(&choice, cfg.n_used));
    w.clear();
    w.extend(ids.iter().map(|&i| scores[i]));
    if cfg.norm {
        let s: f32 = w.iter().sum();
        let s = if cfg.gating == Gating::Sigmoid {
            s + 1e-20
        } else {
            s
        };
        w.iter_mut().for_each(|v| *v /= s);
    }
    if cfg.scale != 1.0 {
        w.iter_mut().for_each(|v| *v *= cfg.scale);
    }
}

/// Indices of the `k` largest values, largest first (ties: lower index first).
fn top_k(v: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..v.len()).collect();
    idx.sort_by(|&a, &b| v[b].total_cmp(&v[a]).then(a.cmp(&b)));
    idx.truncate(k);
    idx
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(gating: Gating) -> Routing {
        Routing {
            n_expert: 8,
            n_used: 2,
            gating,
            norm: true,
            scale: 1.0,
            n_group: 4,
            topk_group: 1,
            group_score: GroupScore::Top2Sum,
            act: Glu::Silu,
        }
    }

    #[test]
    fn group_limited_routing_stays_inside_the_best_group() {
        // group 2 (experts 4, 5) has the best pair sum although expert 0 is the single best
        let logits = [3.0, -5.0, 1.0, 1.0, 2.5, 2.5, 0.0, 0.0];
        let (mut ids, mut w) = (vec![], vec![]);
        route(&cfg(Gating::Sigmoid), &logits, None, &mut ids, &mut w);
        assert_eq!(ids, vec![4, 5]);
        assert!((w.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        // with max scoring, expert 0's group wins, and only expert 0 and 1 are eligible
        let mut c = cfg(Gating::Softmax);
        c.group_score = GroupScore::Max;
        route(&c, &logits, None, &mut ids, &mut w);
        assert_eq!(ids, vec![0, 1]);
    }

    #[test]
    fn correction_bias_changes_the_choice_not_the_weight() {
        let logits = [0.0, 1.0, 0.5, 0.2, 0.0, 0.0, 0.0, 0.0];
        let mut c = cfg(Gating::Sigmoid);
        c.n_group = 1;
        c.norm = false;
        let bias = [2.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0];
        let (mut ids, mut w) = (vec![], vec![]);
        route(&c, &logits, Some(&bias), &mut ids, &mut w);
        assert_eq!(ids, vec![0, 1]);
        assert!(
            (w[0] - 0.5).abs() < 1e-6,
            "weight is sigmoid(0) without the bias"
        );
    }
}
