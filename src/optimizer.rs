//! Optimizers over the policy's own parameters, with PyTorch's update rules (torch.optim.SGD
//! and torch.optim.AdamW), so a step here equals a step there; and global-norm clipping.

use crate::error::{Error, Result};
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

    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::config(m));
        if !(self.lr().is_finite() && self.lr() > 0.0) {
            return bad(format!("optimizer.lr must be > 0, got {}", self.lr()));
        }
        match *self {
            OptimizerConfig::Sgd {
                momentum,
                weight_decay,
                ..
            } => {
                if !(0.0..1.0).contains(&momentum) || weight_decay < 0.0 {
                    return bad(
                        "optimizer: sgd needs momentum in [0, 1) and weight_decay >= 0".into(),
                    );
                }
            }
            OptimizerConfig::Adamw {
                betas,
                eps,
                weight_decay,
                ..
            } => {
                if !betas.iter().all(|b| (0.0..1.0).contains(b)) || eps <= 0.0 || weight_decay < 0.0
                {
                    return bad(
                        "optimizer: adamw needs betas in [0, 1), eps > 0, weight_decay >= 0".into(),
                    );
                }
            }
        }
        Ok(())
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
    pub fn step(&mut self, params: &[(String, Tensor)], lr: f64) {
        self.steps += 1;
        let t = i32::try_from(self.steps).unwrap_or(i32::MAX);
        tch::no_grad(|| {
            for (i, (_, p)) in params.iter().enumerate() {
                let g = p.grad();
                if !g.defined() {
                    continue;
                }
                let mut p = p.shallow_clone();
                match self.cfg {
                    OptimizerConfig::Sgd {
                        momentum,
                        weight_decay,
                        ..
                    } => {
                        let mut d = if weight_decay > 0.0 {
                            &g + &p * weight_decay
                        } else {
                            g.shallow_clone()
                        };
                        if momentum > 0.0 {
                            let buf = &mut self.first[i];
                            if t == 1 {
                                buf.copy_(&d);
                            } else {
                                let _ = buf.g_mul_scalar_(momentum);
                                let _ = buf.g_add_(&d);
                            }
                            d = buf.shallow_clone();
                        }
                        let _ = p.g_sub_(&(d * lr));
                    }
                    OptimizerConfig::Adamw {
                        betas: [b1, b2],
                        eps,
                        weight_decay,
                        ..
                    } => {
                        let _ = p.g_mul_scalar_(1.0 - lr * weight_decay);
                        let (m, v) = (&mut self.first[i], &mut self.second[i]);
                        let _ = m.g_mul_scalar_(b1);
                        let _ = m.g_add_(&(&g * (1.0 - b1)));
                        let _ = v.g_mul_scalar_(b2);
                        let _ = v.g_add_(&(&g * &g * (1.0 - b2)));
                        let bc1 = 1.0 - b1.powi(t);
                        let bc2 = 1.0 - b2.powi(t);
                        let denom = v.sqrt() / bc2.sqrt() + eps;
                        let _ = p.g_sub_(&(&*m / denom * (lr / bc1)));
                    }
                }
            }
        });
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
/// before clipping.
pub fn clip_grad_norm(params: &[(String, Tensor)], max_norm: Option<f64>) -> f64 {
    let grads: Vec<Tensor> = params
        .iter()
        .map(|(_, p)| p.grad())
        .filter(|g| g.defined())
        .collect();
    if grads.is_empty() {
        return 0.0;
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
    norm
}
