//! Optimizers over the policy's own parameters, with PyTorch's update rules (torch.optim.SGD
//! and torch.optim.AdamW), so a step here equals a step there; and global-norm clipping.

use crate::error::{Error, Result, Status};
use serde::Deserialize;
use tch::{Kind, Tensor};

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "name", rename_all = "snake_case", deny_unknown_fields)]
pub enum OptimizerConfig {
    Sgd {
        lr: f64,
        #[serde(default)]
        momentum: f64,
        #[serde(default)]
        weight_decay: f64,
    },
    Adamw {
        #[serde(default = "default_lr")]
        lr: f64,
        #[serde(default = "default_betas")]
        betas: [f64; 2],
        #[serde(default = "default_eps")]
        eps: f64,
        #[serde(default = "default_weight_decay")]
        weight_decay: f64,
    },
}

fn default_lr() -> f64 {
    1e-5
}
fn default_betas() -> [f64; 2] {
    [0.9, 0.999]
}
fn default_eps() -> f64 {
    1e-8
}
fn default_weight_decay() -> f64 {
    0.01
}

impl Default for OptimizerConfig {
    fn default() -> Self {
        OptimizerConfig::Adamw {
            lr: default_lr(),
            betas: default_betas(),
            eps: default_eps(),
            weight_decay: default_weight_decay(),
        }
    }
}

impl OptimizerConfig {
    pub fn lr(&self) -> f64 {
        match self {
            OptimizerConfig::Sgd { lr, .. } | OptimizerConfig::Adamw { lr, .. } => *lr,
        }
    }

    /// Bounds (README "Trainer configuration"): lr in (0, MAX_LR]; momentum and betas in
    /// [0, 1); eps in (0, 1]; weight_decay >= 0 with lr * weight_decay <= 1 (a decay step
    /// never overshoots zero); every value finite.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::config(m));
        let lr = self.lr();
        if !(lr.is_finite() && lr > 0.0 && lr <= MAX_LR) {
            // {lr:?}: 1e300 as "1e300", not 301 digits.
            return bad(format!(
                "optimizer.lr must be in (0, {MAX_LR:e}], got {lr:?}"
            ));
        }
        let unit = |x: f64| (0.0..1.0).contains(&x);
        let weight_decay = match *self {
            OptimizerConfig::Sgd {
                momentum,
                weight_decay,
                ..
            } => {
                if !unit(momentum) {
                    return bad(format!(
                        "optimizer.momentum must be in [0, 1), got {momentum}"
                    ));
                }
                weight_decay
            }
            OptimizerConfig::Adamw {
                betas,
                eps,
                weight_decay,
                ..
            } => {
                if !betas.iter().all(|&b| unit(b)) {
                    return bad(format!("optimizer.betas must be in [0, 1), got {betas:?}"));
                }
                if !(eps > 0.0 && eps <= 1.0) {
                    return bad(format!("optimizer.eps must be in (0, 1], got {eps}"));
                }
                weight_decay
            }
        };
        if !(weight_decay >= 0.0 && lr * weight_decay <= 1.0) {
            return bad(format!(
                "optimizer.weight_decay must be >= 0 with lr * weight_decay <= 1, got \
                 weight_decay {weight_decay} at lr {lr}"
            ));
        }
        Ok(())
    }
}

/// Largest learning rate accepted: anything above is a typo (1e300 made the first step write
/// Inf weights).
pub const MAX_LR: f64 = 1e3;

/// A parameter's new value and moments, before they are written.
struct Updated {
    param: Tensor,
    first: Tensor,
    second: Option<Tensor>,
}

impl Updated {
    fn all(&self) -> impl Iterator<Item = &Tensor> {
        [&self.param, &self.first].into_iter().chain(&self.second)
    }
}

/// Most optimizer steps a trainer takes: AdamW's bias correction raises the betas to the step
/// count as an i32. A checkpoint with more is refused as corrupt.
pub const MAX_STEPS: u64 = i32::MAX as u64;

/// Optimizer state for a list of parameters (in the policy's parameter order).
pub struct Optimizer {
    cfg: OptimizerConfig,
    /// sgd: momentum buffers; adamw: first moments.
    first: Vec<Tensor>,
    /// adamw: second moments.
    second: Vec<Tensor>,
    steps: u64,
}

impl Optimizer {
    pub fn new(cfg: OptimizerConfig, params: &[(String, Tensor)]) -> Self {
        let zeros = || {
            params
                .iter()
                .map(|(_, p)| p.zeros_like().set_requires_grad(false))
                .collect()
        };
        Optimizer {
            cfg,
            first: zeros(),
            second: zeros(),
            steps: 0,
        }
    }

    /// One update with learning rate `lr`, using each parameter's .grad (missing = zero).
    /// An update that would leave a weight or a moment NaN or Inf is refused with
    /// `Status::NonFinite` and changes nothing: the new values are computed out of place and
    /// checked with one reduction first, then computed again and written (the optimizer's
    /// element-wise work twice, its memory for one parameter at a time).
    pub fn step(&mut self, params: &[(String, Tensor)], lr: f64) -> Result<()> {
        let t = i32::try_from(self.steps + 1).unwrap_or(i32::MAX);
        tch::no_grad(|| {
            let mut flags = Vec::new();
            for (i, (_, p)) in params.iter().enumerate() {
                if let Some(new) = self.update(i, p, lr, t) {
                    flags.extend(new.all().map(|x| x.isfinite().all()));
                }
            }
            let finite = flags.is_empty() || Tensor::stack(&flags, 0).all().int64_value(&[]) != 0;
            if !finite {
                return Err(Error::new(
                    Status::NonFinite,
                    format!(
                        "optimizer step {}: the update would make weights or optimizer moments \
                         NaN or Inf (learning rate {lr}); it was not applied, nothing changed",
                        self.steps + 1
                    ),
                ));
            }
            for (i, (_, p)) in params.iter().enumerate() {
                if let Some(new) = self.update(i, p, lr, t) {
                    p.shallow_clone().copy_(&new.param);
                    self.first[i].copy_(&new.first);
                    if let Some(v) = &new.second {
                        self.second[i].copy_(v);
                    }
                }
            }
            self.steps += 1;
            Ok(())
        })
    }

    /// Parameter `i`'s values after update number `t`, out of place (PyTorch's rules, the same
    /// operations in the same order); None when it has no gradient.
    fn update(&self, i: usize, p: &Tensor, lr: f64, t: i32) -> Option<Updated> {
        let g = p.grad();
        if !g.defined() {
            return None;
        }
        let (m, v) = (&self.first[i], &self.second[i]);
        Some(match self.cfg {
            OptimizerConfig::Sgd {
                momentum,
                weight_decay,
                ..
            } => {
                let d = if weight_decay > 0.0 {
                    &g + p * weight_decay
                } else {
                    g.shallow_clone()
                };
                let first = match (momentum > 0.0, t) {
                    (false, _) => m.shallow_clone(),
                    (true, 1) => d.shallow_clone(),
                    (true, _) => m * momentum + &d,
                };
                let d = if momentum > 0.0 { &first } else { &d };
                Updated {
                    param: p - d * lr,
                    first,
                    second: None,
                }
            }
            OptimizerConfig::Adamw {
                betas: [b1, b2],
                eps,
                weight_decay,
                ..
            } => {
                let decayed = p * (1.0 - lr * weight_decay);
                let first = m * b1 + &g * (1.0 - b1);
                let second = v * b2 + &g * &g * (1.0 - b2);
                let bc1 = 1.0 - b1.powi(t);
                let bc2 = 1.0 - b2.powi(t);
                let denom = second.sqrt() / bc2.sqrt() + eps;
                Updated {
                    param: decayed - &first / denom * (lr / bc1),
                    first,
                    second: Some(second),
                }
            }
        })
    }

    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// The step count (bias correction and schedules depend on it): rank 0's, in data-parallel
    /// training.
    pub fn set_steps(&mut self, steps: u64) {
        self.steps = steps;
    }

    /// Named state tensors for a checkpoint.
    pub fn state(&self, params: &[(String, Tensor)]) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        for (i, (name, _)) in params.iter().enumerate() {
            out.push((
                format!("optimizer.first.{name}"),
                self.first[i].shallow_clone(),
            ));
            out.push((
                format!("optimizer.second.{name}"),
                self.second[i].shallow_clone(),
            ));
        }
        out.push((
            "optimizer.steps".into(),
            Tensor::from_slice(&[self.steps as i64]),
        ));
        out
    }
}

/// Scales all gradients so their global L2 norm is at most `max_norm`; returns the norm
/// before clipping. A NaN or Inf gradient is `Status::NonFinite`, with nothing scaled.
pub fn clip_grad_norm(params: &[(String, Tensor)], max_norm: Option<f64>) -> Result<f64> {
    let grads: Vec<Tensor> = params
        .iter()
        .map(|(_, p)| p.grad())
        .filter(|g| g.defined())
        .collect();
    if grads.is_empty() {
        return Ok(0.0);
    }
    let norm = Tensor::stack(
        &grads
            .iter()
            .map(|g| g.to_kind(Kind::Double).square().sum(Kind::Double))
            .collect::<Vec<_>>(),
        0,
    )
    .sum(Kind::Double)
    .sqrt()
    .double_value(&[]);
    if !norm.is_finite() {
        return Err(Error::new(
            Status::NonFinite,
            format!("the gradient is NaN or Inf (global norm {norm}): no update was applied"),
        ));
    }
    if let Some(max) = max_norm {
        let scale = max / (norm + 1e-6);
        if scale < 1.0 {
            tch::no_grad(|| {
                for mut g in grads {
                    let _ = g.g_mul_scalar_(scale);
                }
            });
        }
    }
    Ok(norm)
}
