//! The output head: what turns a model's final hidden states into logits. Log-probs go through it
//! a chunk of positions at a time (logprob/chunked.rs), forward and backward by hand, so this is
//! the one place that knows what it is. A native model's head is a matrix; a TorchScript module
//! (the optional `torchscript` feature) returns logits, which then stand for its hidden states
//! behind an identity head.

use crate::error::Result;
use tch::Tensor;

pub enum Head {
    /// logits = hidden @ W^T with W [V, H], no bias (`lm_head.weight`, or the tied embedding),
    /// sharing storage with the model; `fused`: its log-softmax through the fused CPU ops
    /// (model/native/fused.rs; the load option `fused_ops`).
    Linear { weight: Tensor, fused: bool },
    /// The hidden states are the logits.
    #[cfg(feature = "torchscript")]
    Identity,
}

impl Head {
    /// Logits [.., V] of hidden states [.., H].
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        match self {
            Head::Linear { weight: w, .. } => Ok(hidden.f_linear(w, None::<&Tensor>)?),
            #[cfg(feature = "torchscript")]
            Head::Identity => Ok(hidden.shallow_clone()),
        }
    }

    /// dL/dh [len, H] of one chunk's dL/dlogits [len, V] and hidden states `h` [len, H]; adds
    /// dlogits^T h into the weight's gradient buffer `grad_w` (see [`Head::weight_grad`]).
    pub fn backward_chunk(
        &self,
        dlogits: &Tensor,
        h: &Tensor,
        grad_w: Option<&Tensor>,
    ) -> Result<Tensor> {
        match self {
            Head::Linear { weight: w, .. } => {
                let dlogits = dlogits.f_to_kind(w.kind())?;
                if let Some(g) = grad_w {
                    let _ = g.shallow_clone().f_addmm_(&dlogits.tr(), h)?;
                }
                Ok(dlogits.f_mm(w)?)
            }
            #[cfg(feature = "torchscript")]
            Head::Identity => Ok(dlogits.f_to_kind(h.kind())?),
        }
    }

    /// Whether log-probs of its logits go through the fused CPU log-softmax.
    pub fn fused(&self) -> bool {
        matches!(self, Head::Linear { fused: true, .. })
    }

    /// The weight's gradient buffer (created, zeros, on the first step); None when the head has
    /// no weight or it is frozen.
    pub fn weight_grad(&self) -> Option<Tensor> {
        let w = match self {
            Head::Linear { weight: w, .. } if w.requires_grad() => w,
            _ => return None,
        };
        if !w.grad().defined() {
            // tch cannot assign a .grad: a backward whose gradient is zero everywhere makes it.
            (w.narrow(0, 0, 1).sum(w.kind()) * 0.0).backward();
        }
        Some(w.grad())
    }
}
