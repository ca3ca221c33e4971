//! Learning-rate schedules: constant, or linear warmup then cosine decay.

use crate::error::{Error, Result};
use serde::Deserialize;

/// `Constant {}` is an empty struct variant so that unknown keys beside its tag are refused
/// (serde ignores them next to a unit variant's tag).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "name", rename_all = "snake_case", deny_unknown_fields)]
pub enum Schedule {
    Constant {},
    /// lr * step / warmup_steps for the first warmup_steps steps, then cosine from lr to min_lr
    /// at total_steps (and min_lr after).
    Cosine {
        #[serde(default)]
        warmup_steps: u64,
        total_steps: u64,
        #[serde(default)]
        min_lr: f64,
    },
}

impl Default for Schedule {
    fn default() -> Self {
        Schedule::Constant {}
    }
}

impl Schedule {
    pub fn validate(&self) -> Result<()> {
        if let Schedule::Cosine {
            warmup_steps,
            total_steps,
            min_lr,
        } = *self
        {
            if total_steps == 0 || warmup_steps > total_steps || !(min_lr >= 0.0) {
                return Err(Error::config(
                    "schedule cosine needs total_steps > 0, warmup_steps <= total_steps, min_lr >= 0",
                ));
            }
        }
        Ok(())
    }

    /// The learning rate of optimizer step `step` (1-based).
    pub fn lr(&self, base: f64, step: u64) -> f64 {
        match *self {
            Schedule::Constant {} => base,
            Schedule::Cosine {
                warmup_steps,
                total_steps,
                min_lr,
            } => {
                if step <= warmup_steps {
                    base * step as f64 / warmup_steps.max(1) as f64
                } else {
                    let span = (total_steps - warmup_steps).max(1) as f64;
                    let progress = ((step - warmup_steps) as f64 / span).min(1.0);
                    min_lr + 0.5 * (base - min_lr) * (1.0 + (std::f64::consts::PI * progress).cos())
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_cosine() {
        let s = Schedule::Cosine {
            warmup_steps: 2,
            total_steps: 6,
            min_lr: 0.0,
        };
        let lrs: Vec<f64> = (1..=7).map(|k| s.lr(1.0, k)).collect();
        assert_eq!(lrs[0], 0.5);
        assert_eq!(lrs[1], 1.0);
        assert!((lrs[3] - 0.5).abs() < 1e-12, "{lrs:?}");
        assert!(lrs[5].abs() < 1e-12 && lrs[6].abs() < 1e-12);
        assert_eq!(Schedule::Constant {}.lr(0.3, 100), 0.3);
    }
}
