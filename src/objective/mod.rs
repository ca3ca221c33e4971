//! The ADPO objective, model-free: anchored scores, targets, every loss variant, adaptive tau,
//! the DPO and GRPO baselines, with closed-form gradients. Pure tensor math on any device.

mod fast_exp;
pub mod groups;
pub mod layout;
pub mod grpo;
pub mod host;
pub mod listwise;
pub mod metrics;
pub mod plackett_luce;
pub mod plan;
pub mod scores;
pub mod targets;
mod tensor_path;
pub mod temperature;

use crate::config::ObjectiveConfig;
use crate::error::{catch_torch, Error, Result};
pub use groups::Groups;
use layout::Blocks;
pub use metrics::Metrics;
use parking_lot::Mutex;
pub use plan::{Level, LossPlan};
use std::sync::Arc;
use targets::TargetRule;
use tch::{Device, Kind, Tensor};

/// What the target distribution is built from.
pub enum Signal<'a> {
    /// Per-candidate rewards [N]; q from the configured target rule.
    Rewards(&'a Tensor),
    /// Explicit per-candidate targets [N]: >= 0, summing to 1 over each group.
    Targets(&'a Tensor),
}

/// Inputs of a sequence-level evaluation. All tensors are 1-D of length N on one device.
pub struct EvalInputs<'a> {
    pub logp: &'a Tensor,
    pub anchor_logp: &'a Tensor,
    pub signal: Signal<'a>,
    pub groups: &'a Groups,
    /// Per-candidate mean token entropy of the policy divided by log V (smooth_hybrid only).
    pub policy_entropy: Option<&'a Tensor>,
}

/// What the targets come from, on the host.
#[derive(Clone, Copy)]
pub enum HostSignal<'a> {
    Rewards(&'a [f64]),
    Targets(&'a [f64]),
}

/// Inputs of a sequence-level evaluation on host float64 buffers of length N.
pub struct HostInputs<'a> {
    pub logp: &'a [f64],
    pub anchor_logp: &'a [f64],
    pub signal: HostSignal<'a>,
    pub groups: &'a Groups,
    pub policy_entropy: Option<&'a [f64]>,
}

/// Inputs of a token-level (GRPO) evaluation: [N, T] tensors, rewards [N].
pub struct TokenInputs<'a> {
    pub logp: &'a Tensor,
    pub old_logp: &'a Tensor,
    pub ref_logp: Option<&'a Tensor>,
    pub mask: &'a Tensor,
    pub rewards: &'a Tensor,
    pub groups: &'a Groups,
}

pub struct EvalOutput {
    pub loss: f64,
    /// d loss / d logp, same shape as logp, in the compute dtype (f64 for f64 inputs, else f32).
    pub grad_logp: Tensor,
    /// Sequence level: the anchored scores s [N]. Token level: the advantages [N].
    pub scores: Tensor,
    pub metrics: Metrics,
}

/// A configured objective. Evaluations on one objective are serialised (it keeps the last
/// metrics and the tie-breaking generator); different objectives run in parallel.
pub struct Objective {
    cfg: ObjectiveConfig,
    plan: LossPlan,
    state: Mutex<State>,
}

struct State {
    /// State of the tie-breaking generator (seeded from the config).
    rng: u64,
    last: Option<Metrics>,
    /// Output buffers of the fused kernel, reused across calls (fresh large allocations cost
    /// page faults on every call).
    scratch_grad: Vec<f64>,
    scratch_scores: Vec<f64>,
    /// The groups of the last ids seen by `groups_of` (callers usually evaluate batch after
    /// batch with one layout: building groups was a tenth of a host evaluation).
    groups: Option<(Vec<i64>, Arc<Groups>)>,
}

/// f64 inputs compute in f64; f32, bf16 and f16 inputs compute (accumulate) in f32.
fn compute_kind(t: &Tensor) -> Result<Kind> {
    match t.kind() {
        Kind::Double => Ok(Kind::Double),
        Kind::Float | Kind::BFloat16 | Kind::Half => Ok(Kind::Float),
        k => Err(Error::unsupported(format!(
            "logp has dtype {k:?}; expected float64, float32, bfloat16 or float16"
        ))),
    }
}

/// NaN/Inf scan: on the host for contiguous CPU float64 data, else as tensor ops.
/// True when no value is NaN or Inf. Integer bit tests with no early exit, so the loop
/// vectorises (a third of a host evaluation's serial time went to `all(is_finite)`): a value
/// is not finite when its exponent bits are all ones, and adding one to such an exponent field
/// carries into the sign bit.
pub(crate) fn all_finite_host(v: &[f64]) -> bool {
    const EXPONENT: u64 = 0x7ff << 52;
    let flag = |x: &f64| (x.to_bits() & EXPONENT) + (1 << 52);
    // Four independent accumulators: the loop vectorises.
    let mut acc = [0u64; 4];
    let chunks = v.chunks_exact(4);
    let tail = chunks.remainder().iter().fold(0, |a, x| a | flag(x));
    for c in chunks {
        for (a, x) in acc.iter_mut().zip(c) {
            *a |= flag(x);
        }
    }
    (acc.iter().fold(tail, |a, b| a | b)) >> 63 == 0
}

fn all_finite(t: &Tensor) -> bool {
    if t.device() == Device::Cpu && t.kind() == Kind::Double && t.is_contiguous() {
        let n = t.numel();
        // SAFETY: contiguous float64 CPU tensor of n elements, alive for this call.
        let v = unsafe { std::slice::from_raw_parts(t.data_ptr() as *const f64, n) };
        all_finite_host(v)
    } else {
        t.isfinite().all().int64_value(&[]) != 0
    }
}

fn check_input(name: &str, t: &Tensor, shape: &[i64], device: Device) -> Result<()> {
    if t.size() != shape {
        return Err(Error::shape(format!(
            "{name} has shape {:?}, expected {:?}",
            t.size(),
            shape
        )));
    }
    if t.device() != device {
        return Err(Error::unsupported(format!(
            "{name} is on {:?} but logp is on {:?}: all inputs must be on one device",
            t.device(),
            device
        )));
    }
    if !t.is_floating_point() {
        return Err(Error::unsupported(format!(
            "{name} has dtype {:?}; expected a floating-point dtype",
            t.kind()
        )));
    }
    if !all_finite(t) {
        return Err(Error::non_finite(name));
    }
    Ok(())
}

impl Objective {
    pub fn new(cfg: ObjectiveConfig) -> Result<Self> {
        cfg.validate()?;
        let rng = cfg.seed ^ 0x5EED_AD90;
        Ok(Objective {
            plan: LossPlan::of(&cfg),
            cfg,
            state: Mutex::new(State {
                rng,
                last: None,
                scratch_grad: Vec::new(),
                scratch_scores: Vec::new(),
                groups: None,
            }),
        })
    }

    pub fn from_json(json: &str) -> Result<Self> {
        Self::new(ObjectiveConfig::from_json(json)?)
    }

    pub fn config(&self) -> &ObjectiveConfig {
        &self.cfg
    }

    /// What the configured loss needs (level, pairs, target rule, host kernel).
    pub fn plan(&self) -> &LossPlan {
        &self.plan
    }

    /// Sequence scores or per-token log-probs.
    pub fn level(&self) -> Level {
        self.plan.level
    }

    /// Metrics of the last successful evaluation.
    pub fn last_metrics(&self) -> Option<Metrics> {
        self.state.lock().last
    }

    /// Sequence-level evaluation: loss, d loss / d logp and the anchored scores.
    pub fn eval(&self, inputs: &EvalInputs) -> Result<EvalOutput> {
        catch_torch(|| self.eval_inner(inputs, true))
    }

    /// `eval` forced onto the tensor path (no fused CPU kernel): for tests that compare the two.
    #[doc(hidden)]
    pub fn eval_tensor_path(&self, inputs: &EvalInputs) -> Result<EvalOutput> {
        catch_torch(|| self.eval_inner(inputs, false))
    }

    /// Token-level evaluation of the GRPO baseline (the configured loss must be "grpo").
    pub fn eval_tokens(&self, inputs: &TokenInputs) -> Result<EvalOutput> {
        catch_torch(|| self.eval_tokens_inner(inputs))
    }

    fn eval_inner(&self, inputs: &EvalInputs, allow_host: bool) -> Result<EvalOutput> {
        let cfg = &self.cfg;
        check_sequence_loss(&self.plan, inputs.groups)?;
        let groups = inputs.groups;
        let n = groups.rows() as i64;
        let device = inputs.logp.device();
        let kind = compute_kind(inputs.logp)?;
        check_input("logp", inputs.logp, &[n], device)?;
        check_input("anchor_logp", inputs.anchor_logp, &[n], device)?;
        let (signal_name, signal) = match inputs.signal {
            Signal::Rewards(r) => ("rewards", r),
            Signal::Targets(t) => ("targets", t),
        };
        check_input(signal_name, signal, &[n], device)?;
        if let Some(e) = inputs.policy_entropy {
            check_input("policy_entropy", e, &[n], device)?;
        }
        let logp = inputs.logp.to_kind(kind);
        let anchor = inputs.anchor_logp.to_kind(kind);
        let signal = signal.to_kind(kind);
        if let Signal::Targets(_) = inputs.signal {
            check_targets(&signal, groups, inputs.signal_dtype_tolerance())?;
        }
        if groups.count() == 0 {
            let tau = Tensor::full([n], cfg.tau, (kind, device));
            let sc = scores::anchored(&logp, &anchor, &tau, cfg.clip_log_ratio, cfg.clip_score);
            let metrics = Metrics::empty();
            self.state.lock().last = Some(metrics);
            return Ok(EvalOutput {
                loss: 0.0,
                grad_logp: logp.zeros_like(),
                scores: sc.s,
                metrics,
            });
        }

        if allow_host && device == Device::Cpu && kind == Kind::Double && self.plan.host_kernel {
            return self.eval_host(
                self.plan.rule,
                &logp,
                &anchor,
                &signal,
                !inputs.signal.is_rewards(),
                groups,
            );
        }

        self.eval_tensors(inputs, &logp, &anchor, &signal, kind)
    }

    fn eval_tokens_inner(&self, inputs: &TokenInputs) -> Result<EvalOutput> {
        let cfg = &self.cfg;
        if self.plan.level != Level::Tokens {
            return Err(Error::invalid(format!(
                "the token entry point evaluates loss \"grpo\"; this objective is configured with {:?}",
                cfg.loss
            )));
        }
        let groups = inputs.groups;
        let n = groups.rows() as i64;
        let shape = inputs.logp.size();
        if shape.len() != 2 || shape[0] != n || shape[1] == 0 {
            return Err(Error::shape(format!(
                "logp has shape {shape:?}, expected [n = {n}, T >= 1]"
            )));
        }
        let device = inputs.logp.device();
        let kind = compute_kind(inputs.logp)?;
        check_input("logp", inputs.logp, &shape, device)?;
        check_input("old_logp", inputs.old_logp, &shape, device)?;
        if let Some(r) = inputs.ref_logp {
            check_input("ref_logp", r, &shape, device)?;
        } else if cfg.beta_kl > 0.0 {
            return Err(Error::null("ref_logp (needed because beta_kl > 0)"));
        }
        check_input("mask", inputs.mask, &shape, device)?;
        let mask = inputs.mask.to_kind(kind);
        let binary: bool = mask
            .eq(0.0)
            .logical_or(&mask.eq(1.0))
            .all()
            .int64_value(&[])
            != 0;
        if !binary {
            return Err(Error::invalid("mask must hold only 0 and 1"));
        }
        check_input("rewards", inputs.rewards, &[n], device)?;
        let blocks = Blocks::of(groups, device);
        if blocks.g == 0 {
            let metrics = Metrics {
                groups: 0,
                ..Metrics::empty()
            };
            self.state.lock().last = Some(metrics);
            let zeros = Tensor::zeros([n], (kind, device));
            return Ok(EvalOutput {
                loss: 0.0,
                grad_logp: inputs.logp.to_kind(kind).zeros_like(),
                scores: zeros,
                metrics,
            });
        }
        let ref_logp = inputs.ref_logp.map(|r| r.to_kind(kind));
        let r = grpo::grpo(
            cfg,
            &inputs.logp.to_kind(kind),
            &inputs.old_logp.to_kind(kind),
            ref_logp.as_ref(),
            &mask,
            &inputs.rewards.to_kind(kind),
            &blocks,
        );
        check_result(r.loss, &r.grad)?;
        self.state.lock().last = Some(r.metrics);
        Ok(EvalOutput {
            loss: r.loss,
            grad_logp: r.grad,
            scores: r.advantages,
            metrics: r.metrics,
        })
    }

    /// The fused CPU kernel (see host.rs) on contiguous float64 CPU tensors.
    fn eval_host(
        &self,
        rule: TargetRule,
        logp: &Tensor,
        anchor: &Tensor,
        signal: &Tensor,
        explicit: bool,
        groups: &Groups,
    ) -> Result<EvalOutput> {
        let (logp, anchor, signal) = (logp.contiguous(), anchor.contiguous(), signal.contiguous());
        let n = groups.rows();
        // SAFETY: contiguous float64 CPU tensors of n elements, alive for this scope.
        let view =
            |t: &Tensor| unsafe { std::slice::from_raw_parts(t.data_ptr() as *const f64, n) };
        let (mut grad, mut scores) = (Vec::new(), Vec::new());
        let (loss, metrics) = host::eval(
            &self.cfg,
            rule,
            view(&logp),
            view(&anchor),
            view(&signal),
            explicit,
            groups,
            &mut grad,
            &mut scores,
        );
        check_result_host(loss, &grad)?;
        self.state.lock().last = Some(metrics);
        Ok(EvalOutput {
            loss,
            grad_logp: Tensor::from_slice(&grad),
            scores: Tensor::from_slice(&scores),
            metrics,
        })
    }

    /// The groups of `ids` (see Groups::from_ids), from a one-entry cache keyed by the ids.
    pub fn groups_of(&self, ids: &[i64]) -> Result<Arc<Groups>> {
        let mut st = self.state.lock();
        if let Some((cached, groups)) = &st.groups {
            if cached[..] == ids[..] {
                return Ok(groups.clone());
            }
        }
        let groups = Arc::new(Groups::from_ids(ids)?);
        st.groups = Some((ids.to_vec(), groups.clone()));
        Ok(groups)
    }

    /// Sequence-level evaluation on host float64 buffers, writing d loss / d logp and the
    /// scores into the caller's buffers (each optional) only on success. The listwise family
    /// runs the fused CPU kernel on reused buffers; other losses go through `eval`.
    pub fn eval_slices(
        &self,
        inputs: &HostInputs,
        grad_out: Option<&mut [f64]>,
        scores_out: Option<&mut [f64]>,
    ) -> Result<(f64, Metrics)> {
        let cfg = &self.cfg;
        let groups = inputs.groups;
        let n = groups.rows();
        check_sequence_loss(&self.plan, groups)?;
        let (signal_name, signal, explicit) = match inputs.signal {
            HostSignal::Rewards(r) => ("rewards", r, false),
            HostSignal::Targets(t) => ("targets", t, true),
        };
        for (name, values) in [
            ("logp", inputs.logp),
            ("anchor_logp", inputs.anchor_logp),
            (signal_name, signal),
        ]
        .into_iter()
        .chain(inputs.policy_entropy.map(|e| ("policy_entropy", e)))
        {
            if values.len() != n {
                return Err(Error::shape(format!(
                    "{name} has {} entries, expected {n}",
                    values.len()
                )));
            }
            if !all_finite_host(values) {
                return Err(Error::non_finite(name));
            }
        }
        for (name, out) in [("grad_logp", &grad_out), ("scores", &scores_out)] {
            if out.as_ref().is_some_and(|o| o.len() != n) {
                return Err(Error::shape(format!(
                    "the {name} output has the wrong length, expected {n}"
                )));
            }
        }
        if explicit {
            check_targets_host(signal, groups, 1e-6)?;
        }
        let rule = self.plan.rule;
        if groups.count() == 0 || !self.plan.host_kernel {
            // The tensor path (it handles every loss, and the no-group case).
            let t = |v: &[f64]| Tensor::from_slice(v);
            let (logp, anchor, sig) = (t(inputs.logp), t(inputs.anchor_logp), t(signal));
            let entropy = inputs.policy_entropy.map(t);
            let signal = if explicit {
                Signal::Targets(&sig)
            } else {
                Signal::Rewards(&sig)
            };
            let out = self.eval(&EvalInputs {
                logp: &logp,
                anchor_logp: &anchor,
                signal,
                groups,
                policy_entropy: entropy.as_ref(),
            })?;
            if let Some(g) = grad_out {
                out.grad_logp.f_copy_data(g, n)?;
            }
            if let Some(sc) = scores_out {
                out.scores.f_copy_data(sc, n)?;
            }
            return Ok((out.loss, out.metrics));
        }
        let mut state = self.state.lock();
        let st = &mut *state;
        let (loss, metrics) = host::eval(
            cfg,
            rule,
            inputs.logp,
            inputs.anchor_logp,
            signal,
            explicit,
            groups,
            &mut st.scratch_grad,
            &mut st.scratch_scores,
        );
        check_result_host(loss, &st.scratch_grad)?;
        if let Some(g) = grad_out {
            g.copy_from_slice(&st.scratch_grad);
        }
        if let Some(sc) = scores_out {
            sc.copy_from_slice(&st.scratch_scores);
        }
        st.last = Some(metrics);
        Ok((loss, metrics))
    }
}

impl Signal<'_> {
    fn is_rewards(&self) -> bool {
        matches!(self, Signal::Rewards(_))
    }
}

impl EvalInputs<'_> {
    /// Tolerance of the sum-to-one check: 1e-6, looser for 16-bit targets.
    fn signal_dtype_tolerance(&self) -> f64 {
        match self.signal {
            Signal::Targets(t) if matches!(t.kind(), Kind::BFloat16 | Kind::Half) => 1e-2,
            _ => 1e-6,
        }
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

fn check_result_host(loss: f64, grad: &[f64]) -> Result<()> {
    if loss.is_finite() && all_finite_host(grad) {
        Ok(())
    } else {
        Err(overflow_error(loss))
    }
}

fn overflow_error(loss: f64) -> Error {
    Error::new(
        crate::error::Status::NonFinite,
        format!("the result overflowed (loss {loss}): log-ratios are too large for exp() in this configuration"),
    )
}

/// Finite inputs can still overflow (e.g. exp of a huge log-ratio in a penalty): never hand
/// back a non-finite loss or gradient.
fn check_result(loss: f64, grad: &Tensor) -> Result<()> {
    if loss.is_finite() && all_finite(grad) {
        Ok(())
    } else {
        Err(overflow_error(loss))
    }
}

/// Explicit targets: >= 0 everywhere, summing to 1 over every group (singletons included).
/// Checked on the host: one transfer of N values.
pub(crate) fn check_targets(t: &Tensor, groups: &Groups, tol: f64) -> Result<()> {
    let host = Vec::<f64>::try_from(t.to_kind(Kind::Double).to_device(Device::Cpu).contiguous())?;
    check_targets_host(&host, groups, tol)
}

fn check_targets_host(host: &[f64], groups: &Groups, tol: f64) -> Result<()> {
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

#[cfg(test)]
mod finite_tests {
    use super::all_finite_host;

    #[test]
    fn all_finite_host_finds_every_non_finite_value() {
        let edge = [
            0.0,
            -0.0,
            f64::MAX,
            f64::MIN,
            f64::MIN_POSITIVE,
            5e-324,
            -1e300,
        ];
        assert!(all_finite_host(&edge));
        assert!(all_finite_host(&[]));
        for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, -f64::NAN] {
            for at in [0, 3, 6] {
                let mut v = edge;
                v[at] = bad;
                assert!(!all_finite_host(&v), "{bad} at {at}");
            }
        }
    }
}
