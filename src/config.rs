//! Configuration of the objective, parsed from JSON (unknown keys are an error) and validated
//! once. Defaults are those of docs/MATH.md §0.

use crate::echo::{echo, echo_quoted};
use crate::error::{Error, Result};
use serde::Deserialize;
use serde_json::{Map, Value};

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
    /// Token sum / (number of sequences * T).
    DrGrpo,
    /// Token sum / number of unmasked tokens of the batch (TRL's default).
    Dapo,
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

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ObjectiveConfig {
    pub loss: LossKind,
    pub tau: f64,
    pub beta_reward: f64,
    pub reward_transform: RewardTransform,
    pub target: TargetKind,
    /// KDE bandwidth; None = Silverman's rule per group.
    pub kde_bandwidth: Option<f64>,
    pub kde_temperature: f64,
    pub kde_clip: f64,
    /// Smoothing of one-hot targets (top1 target, top1 loss): best gets 1 - eps, the rest share eps.
    pub top1_smoothing: f64,
    pub adaptive_tau: Option<AdaptiveTau>,
    /// Clamp of l - l_anchor before dividing by tau (clamped rows get zero gradient). Off if None.
    pub clip_log_ratio: Option<f64>,
    /// Clamp of the anchored score s (clamped rows get zero gradient). Off if None.
    pub clip_score: Option<f64>,
    /// Weight of the k3 anchor penalty exp(la - l) - (la - l) - 1 (docs/MATH.md §5), mean over rows.
    pub beta_anchor_kl: f64,
    /// Plackett-Luce: keep only the first pl_top_k stages; None = all K-1.
    pub pl_top_k: Option<u32>,
    pub pl_label_smoothing: f64,
    pub pl_poly_eps: f64,
    pub pl_ties: PlTies,
    pub clip_eps: f64,
    pub clip_eps_high: Option<f64>,
    pub beta_kl: f64,
    pub aggregation: Aggregation,
    pub ratio_level: RatioLevel,
    /// Seed of the generator used for random Plackett-Luce tie breaking.
    pub seed: u64,
}

impl Default for ObjectiveConfig {
    fn default() -> Self {
        ObjectiveConfig {
            loss: LossKind::Listwise,
            tau: 0.8,
            beta_reward: 0.5,
            reward_transform: RewardTransform::Zscore,
            target: TargetKind::Softmax,
            kde_bandwidth: None,
            kde_temperature: 1.0,
            kde_clip: 1e-4,
            top1_smoothing: 0.0,
            adaptive_tau: None,
            clip_log_ratio: None,
            clip_score: None,
            beta_anchor_kl: 0.0,
            pl_top_k: None,
            pl_label_smoothing: 0.0,
            pl_poly_eps: 0.0,
            pl_ties: PlTies::Random,
            clip_eps: 0.2,
            clip_eps_high: None,
            beta_kl: 0.0,
            aggregation: Aggregation::Dapo,
            ratio_level: RatioLevel::Token,
            seed: 0,
        }
    }
}

/// Keys whose value is an array of scalars (`optimizer.betas`, sampling's `eos_id`, LoRA's
/// `target_modules`, the trainer's `trainable`), or of arrays of numbers (sampling's `stop_sequences`). Nowhere else: serde would read a struct or a
/// tagged variant from an array of its fields in order (`["pairwise", 2.0]`,
/// `{"anchor": ["ema", 0.5]}`), which is never what a caller meant.
const ARRAY_KEYS: [&str; 4] = ["betas", "eos_id", "target_modules", "trainable"];
const NESTED_ARRAY_KEYS: [&str; 1] = ["stop_sequences"];

fn numbers(items: &[Value]) -> bool {
    items.iter().all(|x| !x.is_array() && !x.is_object())
}

/// Parses a config (empty = `{}`): a JSON object, objects all the way down.
pub(crate) fn parse_object(what: &str, json: &str) -> Result<Map<String, Value>> {
    let json = if json.trim().is_empty() { "{}" } else { json };
    let value: Value = serde_json::from_str(json).map_err(|e| serde_error(what, e))?;
    let Value::Object(map) = value else {
        return Err(Error::config(format!(
            "{what} config must be a JSON object"
        )));
    };
    for (key, v) in &map {
        objects_only(what, key, v)?;
    }
    Ok(map)
}

fn objects_only(what: &str, key: &str, value: &Value) -> Result<()> {
    match value {
        Value::Array(items) if ARRAY_KEYS.contains(&key) => {
            if !numbers(items) {
                return Err(Error::config(format!(
                    "{what} config: `{}` must be an array of numbers or strings",
                    echo(key)
                )));
            }
            Ok(())
        }
        Value::Array(items) if NESTED_ARRAY_KEYS.contains(&key) => {
            let ok = items
                .iter()
                .all(|x| matches!(x, Value::Array(inner) if numbers(inner)));
            if !ok {
                return Err(Error::config(format!(
                    "{what} config: `{}` must be an array of arrays of token ids",
                    echo(key)
                )));
            }
            Ok(())
        }
        Value::Array(_) => Err(Error::config(format!(
            "{what} config: `{}` must be a JSON object or a single value, not an array",
            echo(key)
        ))),
        Value::Object(map) => map.iter().try_for_each(|(k, v)| objects_only(what, k, v)),
        _ => Ok(()),
    }
}

/// Parses a config object into `T`, naming the config in the error.
pub(crate) fn parse_json<T: for<'de> Deserialize<'de>>(what: &str, json: &str) -> Result<T> {
    from_object(what, parse_object(what, json)?)
}

/// `T` from a checked config object.
pub(crate) fn from_object<T: for<'de> Deserialize<'de>>(
    what: &str,
    map: Map<String, Value>,
) -> Result<T> {
    serde_json::from_value(Value::Object(map)).map_err(|e| serde_error(what, e))
}

/// serde_json's message, which quotes the keys and values at fault, with those capped.
fn serde_error(what: &str, e: serde_json::Error) -> Error {
    Error::config(format!("{what} config: {}", echo_quoted(&e.to_string())))
}

fn positive(name: &str, v: f64) -> Result<()> {
    if v.is_finite() && v > 0.0 {
        Ok(())
    } else {
        Err(Error::config(format!(
            "{name} must be a finite number > 0, got {v:?}"
        )))
    }
}

fn non_negative(name: &str, v: f64) -> Result<()> {
    if v.is_finite() && v >= 0.0 {
        Ok(())
    } else {
        Err(Error::config(format!(
            "{name} must be a finite number >= 0, got {v:?}"
        )))
    }
}

fn unit_interval(name: &str, v: f64) -> Result<()> {
    if v.is_finite() && (0.0..1.0).contains(&v) {
        Ok(())
    } else {
        Err(Error::config(format!(
            "{name} must be in [0, 1), got {v:?}"
        )))
    }
}

impl ObjectiveConfig {
    /// Parses and validates a JSON config; an empty string means all defaults.
    pub fn from_json(json: &str) -> Result<Self> {
        let cfg: ObjectiveConfig = parse_json("objective", json)?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<()> {
        positive("tau", self.tau)?;
        positive("beta_reward", self.beta_reward)?;
        if let Some(h) = self.kde_bandwidth {
            positive("kde_bandwidth", h)?;
        }
        positive("kde_temperature", self.kde_temperature)?;
        if !(self.kde_clip > 0.0 && self.kde_clip < 0.5) {
            return Err(Error::config(format!(
                "kde_clip must be in (0, 0.5), got {}",
                self.kde_clip
            )));
        }
        unit_interval("top1_smoothing", self.top1_smoothing)?;
        if let Some(c) = self.clip_log_ratio {
            positive("clip_log_ratio", c)?;
        }
        if let Some(c) = self.clip_score {
            positive("clip_score", c)?;
        }
        non_negative("beta_anchor_kl", self.beta_anchor_kl)?;
        if self.pl_top_k == Some(0) {
            return Err(Error::config(
                "pl_top_k must be >= 1 (or null for all stages)",
            ));
        }
        unit_interval("pl_label_smoothing", self.pl_label_smoothing)?;
        non_negative("pl_poly_eps", self.pl_poly_eps)?;
        if !(self.clip_eps > 0.0 && self.clip_eps < 1.0) {
            return Err(Error::config(format!(
                "clip_eps must be in (0, 1), got {}",
                self.clip_eps
            )));
        }
        if let Some(c) = self.clip_eps_high {
            positive("clip_eps_high", c)?;
        }
        non_negative("beta_kl", self.beta_kl)?;
        match self.adaptive_tau {
            None => {}
            Some(AdaptiveTau::TargetEntropy { alpha, tau_min }) => {
                non_negative("adaptive_tau.alpha", alpha)?;
                positive("adaptive_tau.tau_min", tau_min)?;
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
            }
        }
        Ok(())
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
        ] {
            let e = ObjectiveConfig::from_json(json).unwrap_err();
            assert!(e.message.contains(word), "{json}: {}", e.message);
        }
    }
}
