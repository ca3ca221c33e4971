//! Listwise anchored cross-entropy (docs/MATH.md §3.1) and its closed-form gradient (docs/MATH.md §3.2).
//! Pairwise soft-DPO, DPO and top-1-vs-rest are this loss on groups of two or one-hot targets.

use tch::Tensor;

/// Per-group loss and gradient with respect to the scores.
pub struct GroupLoss {
    /// [G]
    pub loss: Tensor,
    /// dL_g/ds, [G, K], 0 on padding.
    pub grad: Tensor,
}

/// `s_inf`: scores [G, K] with -inf on padding; `s0`: the same with 0 on padding;
/// `q`: targets [G, K] with 0 on padding. Returns the loss and p~ = softmax(s).
pub fn listwise(s_inf: &Tensor, s0: &Tensor, q: &Tensor) -> (GroupLoss, Tensor) {
    let kind = s0.kind();
    let lse = s_inf.logsumexp(1, true);
    let p = (s_inf - &lse).exp();
    let loss = lse.squeeze_dim(1) - (q * s0).sum_dim_intlist(1, false, kind);
    let grad = &p - q;
    (GroupLoss { loss, grad }, p)
}
