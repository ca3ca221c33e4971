//! Activation checkpointing: the decoder's backward recomputed a layer at a time. The forward
//! runs without grad and keeps only each layer's input [B, T, H]; the caller turns the final
//! hidden states into their gradient (the chunked head, which needs no graph); then the final
//! norm and each layer, last first, run again with grad from their saved input and
//! back-propagate the gradient of their output into their weights and their input. One
//! layer's activations exist at a time, for one more forward of the layers. The gradients are
//! those of the whole graph: these models have no dropout, so the recomputation is the same
//! function.

use super::{rms_norm, Decoder};
use crate::error::Result;
use crate::model::native::{mask, rope};
use tch::{Kind, Tensor};

impl Decoder {
    /// Back-propagates into the parameters the loss whose gradient with respect to the final
    /// hidden states [B, T, H] is `head(hidden)`, for ids [B, T] and their `mask`.
    pub fn backward_checkpointed(
        &self,
        ids: &Tensor,
        mask: &Tensor,
        adapters: bool,
        head: &mut dyn FnMut(&Tensor) -> Result<Tensor>,
    ) -> Result<()> {
        let positions = mask::positions(mask, 0)?;
        let attention_mask = mask::attention(mask, 0)?;
        let rope = rope::cos_sin(&self.inv_freq, &positions, self.embed.kind())?;
        let layer = |i: usize, x: &Tensor| {
            self.layers[i].forward(x, &rope, &attention_mask, None, self.eps, adapters)
        };
        // inputs[i]: layer i's input; the last one: the final norm's.
        let mut inputs = tch::no_grad(|| -> Result<Vec<Tensor>> {
            let mut xs = vec![self.embed_ids(ids)?];
            for i in 0..self.layers.len() {
                let x = layer(i, xs.last().expect("the embedding"))?;
                xs.push(x);
            }
            Ok(xs)
        })?;
        let last = inputs.pop().expect("the embedding");
        let hidden = tch::no_grad(|| rms_norm(&last, &self.norm, self.eps))?;
        let grad = head(&hidden)?;
        drop(hidden);
        let mut grad = through(&last, &grad, |x| rms_norm(x, &self.norm, self.eps))?;
        drop(last);
        for i in (0..self.layers.len()).rev() {
            let x = inputs.pop().expect("one input per layer");
            grad = through(&x, &grad, |x| layer(i, x))?;
        }
        if self.embed.requires_grad() {
            (self.embed_ids(ids)? * grad).sum(Kind::Double).backward();
        }
        Ok(())
    }
}

/// Runs `f` with grad on a leaf copy of `input`, back-propagates `grad_out` (dL/d f(input))
/// and returns dL/d input.
fn through(
    input: &Tensor,
    grad_out: &Tensor,
    f: impl Fn(&Tensor) -> Result<Tensor>,
) -> Result<Tensor> {
    let leaf = input.detach().set_requires_grad(true);
    (f(&leaf)? * grad_out).sum(Kind::Double).backward();
    Ok(leaf.grad())
}
