//! Float32 master weights for mixed-precision training (trainer key `"precision":
//! "bf16-mixed"`). The network keeps its bfloat16 parameters for the forward and the backward;
//! the optimizer, the gradient reduction and clipping, the anchors and checkpoints work on a
//! float32 master of each 16-bit parameter, and the parameter receives the rounded master after
//! every update. Without masters, bfloat16's 8-bit mantissa would swallow every update smaller
//! than 0.4% of a weight (most of them, at fine-tuning learning rates).

use tch::{Kind, Tensor};

/// The trainable values of a mixed-precision model, aligned with its parameters.
pub struct Masters {
    /// Per trainable parameter, under its name: its float32 master, or the parameter itself
    /// when it is float32 already (LoRA adapters on a bfloat16 base are their own masters).
    values: Vec<(String, Tensor)>,
    /// Whether `values[i]` is a separate master (else it is parameter i).
    separate: Vec<bool>,
}

/// Whether a parameter of this dtype needs a float32 master.
fn is_half(kind: Kind) -> bool {
    matches!(kind, Kind::BFloat16 | Kind::Half)
}

impl Masters {
    /// Masters of `params`, equal to them. With `grads`, each master gets a gradient tensor
    /// (the trainer's policy): libtorch's C API as tch wraps it has no setter for `.grad`, so
    /// one backward of sum() defines it (ones), and `load_grads` overwrites it in place.
    pub fn new(params: &[(String, Tensor)], grads: bool) -> Masters {
        let (values, separate) = params
            .iter()
            .map(|(name, p)| {
                if !is_half(p.kind()) {
                    return ((name.clone(), p.shallow_clone()), false);
                }
                let master = tch::no_grad(|| p.detach().to_kind(Kind::Float));
                let master = master.set_requires_grad(grads);
                if grads {
                    tch::with_grad(|| master.sum(Kind::Float).backward());
                }
                ((name.clone(), master), true)
            })
            .unzip();
        Masters { values, separate }
    }

    /// The values the optimizer steps, under the parameters' names.
    pub fn values(&self) -> &[(String, Tensor)] {
        &self.values
    }

    /// master.grad <- parameter.grad in float32 (zero where the parameter got none, so the
    /// optimizer then steps it with a zero gradient: weight decay and moment decay only).
    pub fn load_grads(&self, params: &[(String, Tensor)]) {
        tch::no_grad(|| {
            for (((_, master), (_, p)), _) in self.mastered(params) {
                let (mut mg, g) = (master.grad(), p.grad());
                if g.defined() {
                    mg.copy_(&g);
                } else {
                    let _ = mg.zero_();
                }
            }
        });
    }

    /// parameter <- master, rounded to the parameter's dtype.
    pub fn store(&self, params: &[(String, Tensor)]) {
        tch::no_grad(|| {
            for (((_, master), (_, p)), _) in self.mastered(params) {
                p.shallow_clone().copy_(master);
            }
        });
    }

    fn mastered<'a>(
        &'a self,
        params: &'a [(String, Tensor)],
    ) -> impl Iterator<Item = ((&'a (String, Tensor), &'a (String, Tensor)), &'a bool)> {
        self.values
            .iter()
            .zip(params)
            .zip(&self.separate)
            .filter(|(_, &separate)| separate)
    }
}
