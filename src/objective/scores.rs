//! Anchored scores s = (l - l_anchor) / tau (docs/MATH.md §2), with the optional clamps.

use tch::Tensor;

pub struct Scores {
    /// s per row, [N].
    pub s: Tensor,
    /// ds/dl per row, [N]: 1/tau, or 0 where a clamp is active.
    pub ds_dl: Tensor,
}

/// `tau`: per-row temperature [N]. Clamps (docs/MATH.md §2, verl): the log-ratio before dividing by tau,
/// then the score; clamped entries get zero gradient.
pub fn anchored(
    logp: &Tensor,
    anchor_logp: &Tensor,
    tau: &Tensor,
    clip_log_ratio: Option<f64>,
    clip_score: Option<f64>,
) -> Scores {
    let mut ratio = logp - anchor_logp;
    let mut pass = tau.reciprocal();
    if let Some(c) = clip_log_ratio {
        pass *= ratio.abs().le(c).to_kind(ratio.kind());
        ratio = ratio.clamp(-c, c);
    }
    let mut s = ratio / tau;
    if let Some(c) = clip_score {
        pass *= s.abs().le(c).to_kind(s.kind());
        s = s.clamp(-c, c);
    }
    Scores { s, ds_dl: pass }
}
