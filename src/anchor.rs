//! Anchor strategies (docs/MATH.md §0, §5): which policy defines the origin of the anchored scores,
//! and how it moves.

use crate::error::Result;
use crate::model::Model;
use serde::Deserialize;
use std::collections::VecDeque;

/// Variants without parameters are empty struct variants, not unit variants: serde ignores
/// every other key next to the tag of a unit variant (`{"mode": "fixed", "alpha": 0.5}`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "mode", rename_all = "snake_case", deny_unknown_fields)]
pub enum AnchorConfig {
    /// The frozen reference model, or anchor log-probs supplied with each batch (then no
    /// reference forward runs).
    Fixed {},
    /// The sampling policy (the default): the batch's old_logp, else the policy's own detached log-probs at
    /// the start of the step.
    OnPolicy {},
    /// theta_anchor <- alpha theta_anchor + (1 - alpha) theta after every optimizer step.
    Ema {
        #[serde(default = "default_alpha")]
        alpha: f64,
    },
    /// Hard copy theta_anchor <- theta when the mean of the last `window` drifts
    /// mean|l - l_anchor| exceeds `threshold`; the window is then cleared.
    KlTriggered {
        #[serde(default = "default_window")]
        window: usize,
        #[serde(default = "default_threshold")]
        threshold: f64,
    },
}

impl Default for AnchorConfig {
    fn default() -> Self {
        AnchorConfig::OnPolicy {}
    }
}

fn default_alpha() -> f64 {
    0.99
}
fn default_window() -> usize {
    10
}
fn default_threshold() -> f64 {
    0.1
}

impl AnchorConfig {
    pub fn validate(&self) -> Result<()> {
        match *self {
            AnchorConfig::Ema { alpha } if !(0.0..1.0).contains(&alpha) => Err(
                crate::Error::config(format!("anchor.alpha must be in [0, 1), got {alpha}")),
            ),
            AnchorConfig::KlTriggered { window, threshold }
                if window == 0 || threshold.is_nan() || threshold < 0.0 =>
            {
                Err(crate::Error::config(
                    "anchor kl_triggered needs window >= 1 and threshold >= 0",
                ))
            }
            _ => Ok(()),
        }
    }
}

/// The anchor's moving parts: a frozen copy of the policy for ema and kl_triggered.
pub struct Anchor {
    pub cfg: AnchorConfig,
    pub copy: Option<Model>,
    window: VecDeque<f64>,
    /// Hard copies made by kl_triggered so far.
    pub hard_copies: u64,
}

impl Anchor {
    pub fn new(cfg: AnchorConfig, policy: &Model) -> Result<Anchor> {
        let copy = match cfg {
            AnchorConfig::Ema { .. } | AnchorConfig::KlTriggered { .. } => {
                Some(policy.frozen_copy()?)
            }
            _ => None,
        };
        Ok(Anchor {
            cfg,
            copy,
            window: VecDeque::new(),
            hard_copies: 0,
        })
    }

    /// After every optimizer step.
    pub fn after_optimizer_step(&mut self, policy: &Model) {
        if let (AnchorConfig::Ema { alpha }, Some(copy)) = (&self.cfg, self.copy.as_mut()) {
            copy.ema_towards(policy, *alpha);
        }
    }

    /// After every trainer step, with that step's drift mean|l - l_anchor|.
    pub fn observe_drift(&mut self, policy: &Model, drift: f64) {
        if let (AnchorConfig::KlTriggered { window, threshold }, Some(copy)) =
            (&self.cfg, self.copy.as_mut())
        {
            self.window.push_back(drift);
            while self.window.len() > *window {
                self.window.pop_front();
            }
            let mean = self.window.iter().sum::<f64>() / self.window.len() as f64;
            if self.window.len() == *window && mean > *threshold {
                copy.copy_weights_from(policy);
                self.window.clear();
                self.hard_copies += 1;
            }
        }
    }

    /// Mixed precision: the copy's parameters <- its float32 masters (after a load or a
    /// broadcast wrote the masters).
    pub fn store_masters(&self) {
        if let Some(copy) = &self.copy {
            copy.store_masters();
        }
    }

    pub fn window(&self) -> Vec<f64> {
        self.window.iter().copied().collect()
    }

    pub fn set_window(&mut self, values: &[f64]) {
        self.window = values.iter().copied().collect();
    }
}
