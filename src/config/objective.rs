//! The objective's options, declared once, and the types of its enumerated values.

use super::declare::{options, Bound, Declared, Range};
use super::parse_json;
use crate::error::{Error, Result};
use serde::Deserialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LossKind {
    /// Listwise anchored cross-entropy (docs/MATH.md §3.1).
    Listwise,
    /// Pairwise anchored soft-DPO (docs/MATH.md §4.2): groups of exactly 2.
    Pairwise,
    /// Plackett-Luce over the reward ranking (docs/MATH.md §4.4): per-group loss = sum of its stages.
    PlackettLuce,
    /// Top-1-vs-rest (docs/MATH.md §4.5): listwise CE with a one-hot target on the best candidate.
    Top1,
    /// DPO baseline (docs/MATH.md §4.3): -log sigma(beta * Delta), beta = 1/tau, hard labels, pairs.
    Dpo,
    /// Centred log-ratio trust-region regression (docs/MATH.md §4.9; verl fork's `cltr`).
    Cltr,
    /// GRPO baseline (docs/MATH.md §8): token-level, through the token entry point only.
    Grpo,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RewardTransform {
    /// (r - mean) / (unbiased std + 1e-4); std of a singleton = 1.
    Zscore,
    /// r - mean.
    Center,
    /// r as given.
    Raw,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TargetKind {
    /// q = softmax(t(r) / beta_reward).
    Softmax,
    /// KDE-CDF-logit target (docs/MATH.md §4.6), robust to heavy-tailed rewards.
    Kde,
    /// One-hot on the best reward; ties share the mass.
    Top1,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PlTies {
    /// Ties broken by a permutation drawn from the objective's seeded generator at each evaluation.
    Random,
    /// Ties broken by index (earlier row ranks first).
    Stable,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Aggregation {
    /// Mean over each sequence's tokens, then mean over sequences (DeepSeekMath).
    Grpo,
    /// Mean over all unmasked tokens.
    Bnpo,
    /// Token sum / (number of sequences * L): L = `max_completion_length`, else the width T.
    DrGrpo,
    /// Token sum / number of unmasked tokens of the batch (TRL's default).
    Dapo,
    /// Token sum of each sequence, then mean over sequences (verl `seq-mean-token-sum`).
    SeqMeanTokenSum,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RatioLevel {
    Token,
    /// GSPO: exp(mean over the sequence's tokens of log rho), for every token of the sequence.
    Sequence,
}

/// Adaptive temperature (docs/MATH.md §6). tau is never back-propagated.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(tag = "rule", rename_all = "snake_case", deny_unknown_fields)]
pub enum AdaptiveTau {
    /// Rule (a): tau = max(tau_min, tau * (1 - alpha * H(q) / log K)) per group.
    TargetEntropy {
        #[serde(default = "one")]
        alpha: f64,
        #[serde(default = "tenth")]
        tau_min: f64,
    },
    /// Rule (c): tau = clamp(tau * (1 + alpha*H + beta*(1 - H)*(1 - R)), tau_min, tau_max), with
    /// H the group's mean normalised policy token entropy and R the min-max normalised group
    /// mean reward.
    SmoothHybrid {
        #[serde(default = "half")]
        alpha: f64,
        #[serde(default = "one")]
        beta: f64,
        #[serde(default = "tenth")]
        tau_min: f64,
        #[serde(default = "five")]
        tau_max: f64,
    },
}

fn one() -> f64 {
    1.0
}
fn half() -> f64 {
    0.5
}
fn tenth() -> f64 {
    0.1
}
fn five() -> f64 {
    5.0
}

options! {
    /// The objective's options (README "Objective configuration"); defaults from docs/MATH.md §0.
    pub struct ObjectiveConfig {
        /// `listwise`, `pairwise` (groups of exactly 2), `plackett_luce`, `top1`, `dpo` (pairs,
        /// hard labels, β = 1/τ), `cltr` (docs/MATH.md §4.9), `grpo` (token level:
        /// `adpo_objective_eval_tokens`)
        loss: LossKind = r#""listwise""#;
        /// anchoring temperature τ
        tau: f64 = "0.8", range Range::POSITIVE;
        /// temperature β_r of the reward → target softmax
        beta_reward: f64 = "0.5", range Range::POSITIVE;
        /// `zscore` ((r − mean)/(unbiased std + 1e−4)), `center`, `raw`
        reward_transform: RewardTransform = r#""zscore""#;
        /// `softmax` (q = softmax(t(r)/β_r)), `kde` (docs/MATH.md §4.6), `top1` (ties share)
        target: TargetKind = r#""softmax""#;
        /// KDE target: the kernel bandwidth; null = Silverman's rule per group
        kde_bandwidth: Option<f64> = "null", range Range::POSITIVE;
        /// KDE target: the temperature of the softmax over the CDF's logits
        kde_temperature: f64 = "1", range Range::POSITIVE;
        /// KDE target: the CDF is clamped to [clip, 1 − clip] before its logit
        kde_clip: f64 = "1e-4", range Range::new(Bound::Open(0.0), Bound::Open(0.5));
        /// one-hot targets (`top1` target, `top1` loss) give ε to the non-best candidates
        top1_smoothing: f64 = "0", range Range::UNIT;
        /// `{"rule": "target_entropy", "alpha": 1.0, "tau_min": 0.1}` or `{"rule":
        /// "smooth_hybrid", "alpha": 0.5, "beta": 1.0, "tau_min": 0.1, "tau_max": 5.0}` (needs
        /// per-candidate policy entropy: `adpo_objective_eval_entropy`)
        adaptive_tau: Option<AdaptiveTau> = "null";
        /// clamp of ℓ − ℓ_anchor before dividing by τ (clamped rows get no gradient); null = off
        clip_log_ratio: Option<f64> = "null", range Range::POSITIVE;
        /// clamp of the anchored score s (clamped rows get no gradient); null = off
        clip_score: Option<f64> = "null", range Range::POSITIVE;
        /// weight of the k3 penalty exp(ℓa − ℓ) − (ℓa − ℓ) − 1, mean over rows
        beta_anchor_kl: f64 = "0", range Range::NON_NEGATIVE;
        /// Plackett-Luce (per-group loss = sum of its stages): only the first k stages; null = all
        pl_top_k: Option<u32> = "null", range Range::AT_LEAST_ONE;
        /// Plackett-Luce: label smoothing
        pl_label_smoothing: f64 = "0", range Range::UNIT;
        /// Plackett-Luce: poly-loss ε
        pl_poly_eps: f64 = "0", range Range::NON_NEGATIVE;
        /// ties of the reward ranking (Plackett-Luce, CLTR's Gaussian rank): `random` (seeded)
        /// or `stable` (by index)
        pl_ties: PlTies = r#""random""#;
        /// CLTR: the target direction is the centred Gaussian rank of the rewards (true) or the
        /// centred `reward_transform` of them (false)
        cltr_gaussian_rank: bool = "true";
        /// CLTR: β of the soft target A/(β + η); null = the group's τ
        cltr_beta: Option<f64> = "null", range Range::POSITIVE;
        /// CLTR: η of A/(β + η), the fork's weight of its proximal anchor (absent here: η only
        /// shrinks the target)
        cltr_eta: f64 = "0.5", range Range::NON_NEGATIVE;
        /// CLTR: the RMS trust-region radius ε_tr of the target
        cltr_epsilon_tr: f64 = "0.15", range Range::POSITIVE;
        /// GRPO clip range [1 − ε, 1 + ε_high]: ε
        clip_eps: f64 = "0.2", range Range::new(Bound::Open(0.0), Bound::Open(1.0));
        /// GRPO: ε_high; null = `clip_eps`
        clip_eps_high: Option<f64> = "null", range Range::POSITIVE;
        /// GRPO dual clip (verl `clip_ratio_c`, > 1): for A < 0 the token loss is at most
        /// −c·A; null = off
        clip_ratio_c: Option<f64> = "null", range Range::new(Bound::Open(1.0), Bound::None);
        /// GRPO k3 KL weight (needs `ref_logp`: in the trainer, the reference model, or the
        /// base of a LoRA policy)
        beta_kl: f64 = "0", range Range::NON_NEGATIVE;
        /// GRPO: `grpo`, `bnpo`, `dr_grpo`, `dapo` (in one call `dapo` = `bnpo`),
        /// `seq_mean_token_sum` (verl's name)
        aggregation: Aggregation = r#""dapo""#;
        /// GRPO `dr_grpo`: the constant L of token sum / (B·L) (TRL `max_completion_length`);
        /// null = the batch's buffer width T
        max_completion_length: Option<u32> = "null", range Range::AT_LEAST_ONE;
        /// GRPO: `token` or `sequence` (GSPO)
        ratio_level: RatioLevel = r#""token""#;
        /// seed of the random tie breaking
        seed: u64 = "0";
    }
}

fn positive(name: &str, v: f64) -> Result<()> {
    Range::POSITIVE.check(name, &v)
}

fn non_negative(name: &str, v: f64) -> Result<()> {
    Range::NON_NEGATIVE.check(name, &v)
}

impl ObjectiveConfig {
    /// Parses and validates a JSON config; an empty string means all defaults.
    pub fn from_json(json: &str) -> Result<Self> {
        let cfg: ObjectiveConfig = parse_json("objective", json)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// The declared ranges, and adaptive_tau's own.
    pub fn validate(&self) -> Result<()> {
        self.check_ranges()?;
        if self.max_completion_length.is_some() && self.aggregation != Aggregation::DrGrpo {
            return Err(Error::config(format!(
                "max_completion_length is the divisor of aggregation \"dr_grpo\"; aggregation is {:?}",
                self.aggregation
            )));
        }
        match self.adaptive_tau {
            None => Ok(()),
            Some(AdaptiveTau::TargetEntropy { alpha, tau_min }) => {
                non_negative("adaptive_tau.alpha", alpha)?;
                positive("adaptive_tau.tau_min", tau_min)
            }
            Some(AdaptiveTau::SmoothHybrid {
                alpha,
                beta,
                tau_min,
                tau_max,
            }) => {
                non_negative("adaptive_tau.alpha", alpha)?;
                non_negative("adaptive_tau.beta", beta)?;
                positive("adaptive_tau.tau_min", tau_min)?;
                positive("adaptive_tau.tau_max", tau_max)?;
                if tau_max < tau_min {
                    return Err(Error::config(format!(
                        "adaptive_tau.tau_max ({tau_max}) must be >= adaptive_tau.tau_min ({tau_min})"
                    )));
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_config_gives_spec_defaults() {
        let c = ObjectiveConfig::from_json("").unwrap();
        assert_eq!(c, ObjectiveConfig::default());
        assert_eq!(c.tau, 0.8);
        assert_eq!(c.beta_reward, 0.5);
        assert_eq!(c.loss, LossKind::Listwise);
    }

    #[test]
    fn unknown_key_is_named() {
        let e = ObjectiveConfig::from_json(r#"{"tua": 1.0}"#).unwrap_err();
        assert!(e.message.contains("unknown field `tua`"), "{}", e.message);
    }

    #[test]
    fn unknown_value_is_named() {
        let e = ObjectiveConfig::from_json(r#"{"loss": "listwize"}"#).unwrap_err();
        assert!(e.message.contains("listwize"), "{}", e.message);
    }

    #[test]
    fn adaptive_tau_rules_and_defaults() {
        let c =
            ObjectiveConfig::from_json(r#"{"adaptive_tau": {"rule": "target_entropy"}}"#).unwrap();
        assert_eq!(
            c.adaptive_tau,
            Some(AdaptiveTau::TargetEntropy {
                alpha: 1.0,
                tau_min: 0.1
            })
        );
        let e = ObjectiveConfig::from_json(
            r#"{"adaptive_tau": {"rule": "target_entropy", "beta": 1}}"#,
        )
        .unwrap_err();
        assert!(e.message.contains("beta"), "{}", e.message);
    }

    #[test]
    fn out_of_range_values_are_rejected() {
        for (json, word) in [
            (r#"{"tau": 0}"#, "tau"),
            (r#"{"tau": -1}"#, "tau"),
            (r#"{"beta_reward": 0}"#, "beta_reward"),
            (r#"{"clip_eps": 1.5}"#, "clip_eps"),
            (r#"{"pl_top_k": 0}"#, "pl_top_k"),
            (r#"{"pl_label_smoothing": 1.0}"#, "pl_label_smoothing"),
            (r#"{"clip_ratio_c": 1.0}"#, "clip_ratio_c"),
            (
                r#"{"aggregation": "dr_grpo", "max_completion_length": 0}"#,
                "max_completion_length",
            ),
            (r#"{"max_completion_length": 64}"#, "max_completion_length"),
        ] {
            let e = ObjectiveConfig::from_json(json).unwrap_err();
            assert!(e.message.contains(word), "{json}: {}", e.message);
        }
    }
}
