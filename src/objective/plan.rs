//! What each loss needs, decided once when an objective is created: its level (sequence
//! scores, or per-token log-probs for GRPO), whether its groups must be pairs, the target
//! rule, and whether the fused host kernel computes it. Adding a loss touches its own file
//! and this table.

use super::host;
use super::targets::TargetRule;
use crate::config::{LossKind, ObjectiveConfig};

/// What the loss consumes per candidate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// One sequence log-prob per candidate (every ADPO loss and DPO).
    Sequence,
    /// Per-token log-probs [N, T] (the GRPO baseline).
    Tokens,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LossPlan {
    pub level: Level,
    /// Every group has exactly two candidates (pairwise, dpo).
    pub pairs: bool,
    /// How rewards become the target q (top1 and dpo force one-hot targets).
    pub rule: TargetRule,
    /// The fused float64 CPU kernel (host.rs) computes this configuration.
    pub host_kernel: bool,
    /// The name in the config, for messages.
    pub name: &'static str,
}

impl LossPlan {
    pub fn of(cfg: &ObjectiveConfig) -> LossPlan {
        let configured = TargetRule::from_config(cfg);
        let (name, level, pairs, rule) = match cfg.loss {
            LossKind::Listwise => ("listwise", Level::Sequence, false, configured),
            LossKind::Pairwise => ("pairwise", Level::Sequence, true, configured),
            LossKind::PlackettLuce => ("plackett_luce", Level::Sequence, false, configured),
            LossKind::Top1 => (
                "top1",
                Level::Sequence,
                false,
                TargetRule::Top1 {
                    smoothing: cfg.top1_smoothing,
                },
            ),
            LossKind::Dpo => (
                "dpo",
                Level::Sequence,
                true,
                TargetRule::Top1 { smoothing: 0.0 },
            ),
            LossKind::Cltr => ("cltr", Level::Sequence, false, configured),
            LossKind::Grpo => ("grpo", Level::Tokens, false, configured),
        };
        LossPlan {
            level,
            pairs,
            rule,
            host_kernel: level == Level::Sequence && host::supports(cfg, rule),
            name,
        }
    }
}
