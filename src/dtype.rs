//! The float dtype adpo computes in, one rule for every module.

use tch::Kind;

/// The dtype computations on values of dtype `kind` run in: float64 stays float64 (what the
/// exactness tests use), everything else runs in float32 (16-bit sums, softmaxes and
/// optimizer arithmetic lose too much).
pub fn compute_kind(kind: Kind) -> Kind {
    match kind {
        Kind::Double => Kind::Double,
        _ => Kind::Float,
    }
}
