//! AdamW's update in place, when it surely writes only finite values.
//!
//! The exact refusal of a non-finite update (`Optimizer::step`) computes every new value out
//! of place, checks it, then computes it again and writes it: about 40 passes over the weights,
//! 3.8 s per step for SmolLM2-135M on one core of this machine. Almost always the update cannot
//! overflow at all: from the largest magnitudes of the weights, gradients and moments (one
//! read each) a bound on every value it writes follows, and when that bound is finite with
//! room to spare the update runs in place, in PyTorch's own order of operations
//! (`torch.optim.AdamW`'s single-tensor path). On contiguous CPU float32/float64 tensors the
//! bound's maxima and the update are each one pass of a fused kernel (`fused`); elsewhere
//! libtorch's ops compose them (four aminmax passes, about 10 passes for the update). When the
//! bound fails (a huge gradient, a tiny eps, a moment loaded Inf, float16 weights) the exact
//! path runs.

use super::fused::{self, AdamwScalars};
use super::Piece;
use crate::error::Result;
use tch::{Kind, Tensor};

/// AdamW's settings for one update number `t` (>= 1).
pub(super) struct AdamwStep {
    pub lr: f64,
    pub betas: [f64; 2],
    pub eps: f64,
    pub weight_decay: f64,
    pub t: i32,
}

/// Largest magnitude the bound lets a written value reach, by the weights' dtype: a margin of
/// many orders below the dtype's own largest finite value. None: no bound is tried.
fn limit(kind: Kind) -> Option<f64> {
    match kind {
        Kind::Double => Some(1e300),
        Kind::Float | Kind::BFloat16 => Some(1e30),
        _ => None,
    }
}

/// Largest |x| over every element of the tensors (NaN when any is NaN), read on the host once.
pub(super) fn max_abs<'a>(tensors: impl Iterator<Item = &'a Tensor>) -> f64 {
    let maxima: Vec<Tensor> = tensors
        .filter(|t| t.numel() > 0)
        .map(|t| {
            let (lo, hi) = t.aminmax(None, false);
            hi.to_kind(Kind::Double)
                .maximum(&lo.to_kind(Kind::Double).neg())
        })
        .collect();
    if maxima.is_empty() {
        return 0.0;
    }
    Tensor::stack(&maxima, 0).max().double_value(&[])
}

/// The larger of two magnitudes, NaN when either is.
fn nan_max(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else {
        a.max(b)
    }
}

/// Largest |weight|, |gradient|, |first moment| and |second moment| over the pieces (NaN
/// where any is NaN): one fused pass per piece the kernel takes, aminmax for the others. A
/// kernel error gives NaN (no bound: the exact path runs).
fn maxima(pieces: &[Piece]) -> [f64; 4] {
    let (fast, composed): (Vec<&Piece>, Vec<&Piece>) =
        pieces.iter().partition(|x| fused::takes(&x.all()));
    let mut out = [
        max_abs(composed.iter().map(|x| &x.param)),
        max_abs(composed.iter().map(|x| &x.grad)),
        max_abs(composed.iter().map(|x| &x.first)),
        max_abs(composed.iter().map(|x| &x.second)),
    ];
    for x in fast {
        let piece = fused::max_abs(&x.param, &x.grad, &x.first, &x.second).unwrap_or([f64::NAN; 4]);
        out = std::array::from_fn(|k| nan_max(out[k], piece[k]));
    }
    out
}

impl AdamwStep {
    /// Whether every value the update writes is surely finite. With P, G, M and V the largest
    /// |weight|, |gradient| and moments: the first moment stays within max(M, G); the second
    /// within max(V, G^2); the denominator is at least eps, and bias correction 1 at least
    /// 1 - beta1; so a new weight is at most P + lr / (1 - beta1) * max(M, G) / eps.
    pub fn surely_finite(&self, pieces: &[Piece]) -> bool {
        let Some(limit) = pieces.first().and_then(|p| limit(p.param.kind())) else {
            return pieces.is_empty();
        };
        if pieces.iter().any(|p| limit_kind_differs(p, limit)) {
            return false;
        }
        let [p, g, m, v] = maxima(pieces);
        let step = self.lr / (1.0 - self.betas[0]) / self.eps;
        let weight = p + step * m.max(g);
        // NaN anywhere makes every comparison false
        g <= limit.sqrt() / 4.0 && v <= limit / 4.0 && m <= limit / 4.0 && weight <= limit / 4.0
    }

    /// The scalars of this update, for the fused and the composed kernel alike.
    pub(super) fn scalars(&self) -> AdamwScalars {
        let [b1, b2] = self.betas;
        let step_size = self.lr / (1.0 - b1.powi(self.t));
        AdamwScalars {
            decay: 1.0 - self.lr * self.weight_decay,
            lerp_weight: 1.0 - b1,
            beta2: b2,
            one_minus_beta2: 1.0 - b2,
            bias2_sqrt: (1.0 - b2.powi(self.t)).sqrt(),
            eps: self.eps,
            neg_inv_step: -1.0 / step_size,
        }
    }

    /// The update, in place, piece by piece (PyTorch's single-tensor AdamW): fused where the
    /// kernel takes the piece, composed of libtorch's ops elsewhere, with the same roundings.
    /// An Err only from a kernel that refused what `fused::takes` let through (a bug), maybe
    /// after earlier pieces were written.
    pub fn apply(&self, pieces: &mut [Piece]) -> Result<()> {
        let s = self.scalars();
        for piece in pieces {
            if fused::takes(&piece.all()) {
                fused::adamw(&piece.param, &piece.grad, &piece.first, &piece.second, &s)?;
            } else {
                composed(piece, &s);
            }
        }
        Ok(())
    }
}

/// The update of one piece composed of libtorch's ops, in torch.optim.AdamW's order.
pub(super) fn composed(piece: &mut Piece, s: &AdamwScalars) {
    let _ = piece.param.g_mul_scalar_(s.decay);
    let _ = piece.first.lerp_(&piece.grad, s.lerp_weight);
    let _ = piece.second.g_mul_scalar_(s.beta2);
    let _ = piece
        .second
        .addcmul_(&piece.grad, &(&piece.grad * s.one_minus_beta2));
    let mut denom = piece.second.sqrt();
    let _ = denom.g_div_scalar_(s.bias2_sqrt);
    let _ = denom.g_add_scalar_(s.eps);
    // p - step_size * m / denom, as addcdiv_ without a value argument in tch
    let _ = denom.g_mul_scalar_(s.neg_inv_step);
    let _ = piece.param.addcdiv_(&piece.first, &denom);
}

/// A piece whose tensors are not all of the weights' dtype family gets no bound.
fn limit_kind_differs(piece: &Piece, limit_of_param: f64) -> bool {
    [&piece.grad, &piece.first, &piece.second]
        .iter()
        .any(|t| limit(t.kind()) != Some(limit_of_param))
}
