//! The validation front of every evaluation: inputs are checked here, once, before any work
//! (shapes, devices, dtypes, NaN/Inf, group structure, targets), and leave as one checked
//! type that both kernels read. Results are checked on the way out (finite inputs can still
//! overflow).

use super::column::{check_tensor, AsColumn, Column};
use super::kernel::Sink;
use super::{EvalInputs, Groups, Level, LossPlan, Objective, Signal, TokenInputs};
use crate::error::{Error, Result, Status};
use tch::{Device, Kind, Tensor};

/// Inputs of a sequence-level evaluation that passed the front, in the compute dtype.
pub(crate) struct Checked<'a> {
    pub logp: Column<'a>,
    pub anchor: Column<'a>,
    /// Rewards, or explicit targets when `explicit`.
    pub signal: Column<'a>,
    pub explicit: bool,
    pub entropy: Option<Column<'a>>,
    pub groups: &'a Groups,
    pub kind: Kind,
    pub device: Device,
}

impl<'a, V: ?Sized> Signal<'a, V> {
    /// Exactly one of rewards and targets.
    pub fn exactly_one(rewards: Option<&'a V>, targets: Option<&'a V>) -> Result<Self> {
        match (rewards, targets) {
            (Some(r), None) => Ok(Signal::Rewards(r)),
            (None, Some(t)) => Ok(Signal::Targets(t)),
            (Some(_), Some(_)) => Err(Error::invalid(
                "give exactly one of rewards and targets; both are non-NULL",
            )),
            (None, None) => Err(Error::null(
                "rewards and targets (exactly one must be given)",
            )),
        }
    }
}

impl Objective {
    /// Checks a sequence-level evaluation: the loss and groups, every input, the outputs, and
    /// explicit targets.
    pub(crate) fn check<'a, V: AsColumn + ?Sized>(
        &self,
        inputs: &EvalInputs<'a, V>,
        sink: &impl Sink,
    ) -> Result<Checked<'a>> {
        let groups = inputs.groups;
        check_sequence_loss(&self.plan, groups)?;
        let n = groups.rows();
        let logp = inputs.logp.column();
        let (kind, device) = (compute_kind(logp.kind())?, logp.device());
        let anchor = inputs.anchor_logp.column();
        let (signal_name, signal, explicit) = match inputs.signal {
            Signal::Rewards(r) => ("rewards", r.column(), false),
            Signal::Targets(t) => ("targets", t.column(), true),
        };
        let entropy = inputs.policy_entropy.map(|e| e.column());
        let named = [
            ("logp", &logp),
            ("anchor_logp", &anchor),
            (signal_name, &signal),
        ];
        for (name, values) in named
            .into_iter()
            .chain(entropy.as_ref().map(|e| ("policy_entropy", e)))
        {
            values.check(name, n, device)?;
        }
        sink.check(n)?;
        let checked = Checked {
            logp: logp.to_kind(kind),
            anchor: anchor.to_kind(kind),
            signal: signal.to_kind(kind),
            explicit,
            entropy: entropy.map(|e| e.to_kind(kind)),
            groups,
            kind,
            device,
        };
        if explicit {
            // Sums of 16-bit targets are off by up to ~1e-3.
            let tol = match signal.kind() {
                Kind::BFloat16 | Kind::Half => 1e-2,
                _ => 1e-6,
            };
            check_targets(&checked.signal.on_host()?, groups, tol)?;
        }
        Ok(checked)
    }

    /// Checks a token-level evaluation; returns the compute dtype and the mask in it.
    pub(crate) fn check_tokens(&self, inputs: &TokenInputs) -> Result<(Kind, Tensor)> {
        if self.plan.level != Level::Tokens {
            return Err(Error::invalid(format!(
                "the token entry point evaluates loss \"grpo\"; this objective is configured with {:?}",
                self.cfg.loss
            )));
        }
        let n = inputs.groups.rows() as i64;
        let shape = inputs.logp.size();
        if shape.len() != 2 || shape[0] != n || shape[1] == 0 {
            return Err(Error::shape(format!(
                "logp has shape {shape:?}, expected [n = {n}, T >= 1]"
            )));
        }
        let device = inputs.logp.device();
        let kind = compute_kind(inputs.logp.kind())?;
        check_tensor("logp", inputs.logp, &shape, device)?;
        check_tensor("old_logp", inputs.old_logp, &shape, device)?;
        if let Some(r) = inputs.ref_logp {
            check_tensor("ref_logp", r, &shape, device)?;
        } else if self.cfg.beta_kl > 0.0 {
            return Err(Error::null("ref_logp (needed because beta_kl > 0)"));
        }
        check_tensor("mask", inputs.mask, &shape, device)?;
        let mask = inputs.mask.to_kind(kind);
        let binary = mask.eq(0.0).logical_or(&mask.eq(1.0)).all();
        if binary.int64_value(&[]) == 0 {
            return Err(Error::invalid("mask must hold only 0 and 1"));
        }
        if let Some(l) = self.cfg.max_completion_length {
            // dr_grpo's constant divisor is meant to bound every completion (TRL).
            let longest = mask.sum_dim_intlist(1, false, kind).max().double_value(&[]);
            if longest > f64::from(l) {
                return Err(Error::invalid(format!(
                    "a row has {longest} masked-in tokens, more than max_completion_length = {l}"
                )));
            }
        }
        check_tensor("rewards", inputs.rewards, &[n], device)?;
        Ok((kind, mask))
    }
}

/// f64 inputs compute in f64; f32, bf16 and f16 inputs compute (accumulate) in f32.
fn compute_kind(logp: Kind) -> Result<Kind> {
    match logp {
        Kind::Double => Ok(Kind::Double),
        Kind::Float | Kind::BFloat16 | Kind::Half => Ok(Kind::Float),
        k => Err(Error::unsupported(format!(
            "logp has dtype {k:?}; expected float64, float32, bfloat16 or float16"
        ))),
    }
}

/// The loss is sequence level, and pairwise losses have groups of exactly two.
fn check_sequence_loss(plan: &LossPlan, groups: &Groups) -> Result<()> {
    if plan.level == Level::Tokens {
        return Err(Error::invalid(format!(
            "loss \"{}\" is token-level: evaluate it with per-token log-probs (eval_tokens)",
            plan.name
        )));
    }
    if plan.pairs && (groups.count() * 2 != groups.rows() || groups.sizes().iter().any(|&k| k != 2))
    {
        return Err(Error::shape(format!(
            "loss \"{}\" needs every group to have exactly 2 candidates; got {} rows in {} groups of size >= 2 (sizes {:?}{})",
            plan.name,
            groups.rows(),
            groups.count(),
            &groups.sizes()[..groups.count().min(8)],
            if groups.count() > 8 { ", ..." } else { "" },
        )));
    }
    Ok(())
}

/// Explicit targets: >= 0 everywhere, summing to 1 over every group (singletons included).
pub(crate) fn check_targets(host: &[f64], groups: &Groups, tol: f64) -> Result<()> {
    if host.iter().any(|&x| x < 0.0) {
        return Err(Error::invalid("targets must be >= 0"));
    }
    let mut in_group = vec![false; host.len()];
    let mut worst = 0.0f64;
    for g in 0..groups.count() {
        let rows = groups.group_rows(g);
        rows.iter().for_each(|r| in_group[r] = true);
        worst = worst.max((rows.iter().map(|r| host[r]).sum::<f64>() - 1.0).abs());
    }
    for (x, counted) in host.iter().zip(in_group) {
        if !counted {
            worst = worst.max((x - 1.0).abs());
        }
    }
    if worst > tol {
        return Err(Error::invalid(format!(
            "targets must sum to 1 over each group (within {tol:e}); worst group is off by {worst:.3e}"
        )));
    }
    Ok(())
}

/// Finite inputs can still overflow (e.g. exp of a huge log-ratio in a penalty): never hand
/// back a non-finite loss or gradient.
pub(crate) fn check_result(loss: f64, grad: &Column) -> Result<()> {
    if loss.is_finite() && grad.all_finite() {
        return Ok(());
    }
    Err(Error::new(
        Status::NonFinite,
        format!("the result overflowed (loss {loss}): log-ratios are too large for exp() in this configuration"),
    ))
}
