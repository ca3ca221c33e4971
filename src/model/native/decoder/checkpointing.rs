//! Activation checkpointing: the decoder's backward recomputed a layer at a time. The forward
//! runs without grad and keeps only each layer's input [B, T, H]; the caller turns the final
//! hidden states into their gradient (the chunked head, which needs no graph); then the final
//! norm and each layer, last first, run again with grad from their saved input and
//! back-propagate the gradient of their output into their weights and their input. One
//! layer's activations exist at a time, for one more forward of the layers. The gradients are
//! those of the whole graph: these models have no dropout, so the recomputation is the same
//! function.
//!
//! A layer's input is the residual stream x and the previous layer's MLP output, which its
//! input norm adds (decoder.rs: add_rms_norm); what is kept is their sum, the stream where it
//! entered the layer, which the forward computes anyway: one tensor per layer, as before the
//! adds moved into the norms. The recomputation runs the layer from that sum with nothing
//! pending, and its norm node hands back the sum's gradient (its own and the norm's, added in
//! the node), which is the gradient of both outputs of the layer before (x and its MLP's
//! output): the same values, in the same operations, as in the whole graph.
//!
//! The rows run whole, or as shared prefixes and the suffixes that attend to them
//! (model/shared_prefix.rs): then each layer's input is two tensors, and each layer runs the
//! prefixes first and the suffixes on their keys and values.

use super::{add_rms_norm, Decoder, LayerCache, LayerOut};
use crate::error::Result;
use crate::model::native::{mask, rope};
use crate::model::SharedPrefix;
use tch::{Kind, Tensor};

/// The attention inputs of one part of the rows: its ids, rope (cos, sin), attention mask, and
/// how many cached positions come before it (the prefix's, for the suffixes).
struct Part {
    ids: Tensor,
    rope: (Tensor, Tensor),
    mask: Tensor,
    past: i64,
}

/// What the layers run on: [whole rows], or [prefixes, suffixes] with the plan that joins them.
struct Rows<'a> {
    parts: Vec<Part>,
    plan: Option<&'a SharedPrefix>,
}

impl Decoder {
    fn part(&self, ids: &Tensor, mask: &Tensor, past: i64) -> Result<Part> {
        let positions = mask::positions(mask, past)?;
        Ok(Part {
            ids: ids.shallow_clone(),
            rope: rope::cos_sin(&self.inv_freq, &positions, self.embed.kind())?,
            mask: mask::attention(mask, past)?,
            past,
        })
    }

    fn rows<'a>(
        &self,
        ids: &Tensor,
        mask: &Tensor,
        plan: Option<&'a SharedPrefix>,
    ) -> Result<Rows<'a>> {
        let parts = match plan {
            None => vec![self.part(ids, mask, 0)?],
            Some(p) => vec![
                self.part(&p.prefix_ids, &p.prefix_mask, 0)?,
                self.part(&p.suffix_ids, &p.mask, p.prefix_ids.size()[1])?,
            ],
        };
        Ok(Rows { parts, plan })
    }

    /// Layer i on every part, from its stream x and pending delta (decoder.rs: Layer::forward):
    /// the prefixes fill a key/value buffer with room for the suffixes, whose rows then attend
    /// to their prefix's copy.
    fn layer_on(
        &self,
        i: usize,
        rows: &Rows,
        xs: &[(Tensor, Option<Tensor>)],
        adapters: bool,
    ) -> Result<Vec<LayerOut>> {
        let layer = &self.layers[i];
        let stream = |p: usize| (&xs[p].0, xs[p].1.as_ref());
        let Some(plan) = rows.plan else {
            let p = &rows.parts[0];
            return Ok(vec![layer.forward(
                stream(0),
                &p.rope,
                &p.mask,
                None,
                self.eps,
                (adapters, self.fused_ops),
            )?]);
        };
        let (prefix, suffix) = (&rows.parts[0], &rows.parts[1]);
        let a = &layer.attention;
        let capacity = suffix.past + suffix.ids.size()[1];
        let shape = [prefix.ids.size()[0], a.kv_heads, capacity, a.head_dim];
        let options = (xs[0].0.kind(), xs[0].0.device());
        let (mut keys, mut values) = (Tensor::zeros(shape, options), Tensor::zeros(shape, options));
        let cached = LayerCache {
            keys: &mut keys,
            values: &mut values,
            len: 0,
        };
        let yp = layer.forward(
            stream(0),
            &prefix.rope,
            &prefix.mask,
            Some(cached),
            self.eps,
            (adapters, self.fused_ops),
        )?;
        let mut keys = keys.f_index_select(0, &plan.prefix_of_row)?;
        let mut values = values.f_index_select(0, &plan.prefix_of_row)?;
        let cached = LayerCache {
            keys: &mut keys,
            values: &mut values,
            len: suffix.past,
        };
        let ys = layer.forward(
            stream(1),
            &suffix.rope,
            &suffix.mask,
            Some(cached),
            self.eps,
            (adapters, self.fused_ops),
        )?;
        Ok(vec![yp, ys])
    }

    /// The final hidden states [B, T, H] of the normed parts.
    fn join(rows: &Rows, parts: &[Tensor]) -> Result<Tensor> {
        let Some(plan) = rows.plan else {
            return Ok(parts[0].shallow_clone());
        };
        let h = parts[0].size()[2];
        let flat: Vec<Tensor> = parts.iter().map(|p| p.reshape([-1, h])).collect();
        let n = plan.suffix_ids.size()[0];
        Ok(Tensor::f_cat(&flat, 0)?
            .f_index_select(0, &plan.gather)?
            .f_view([n, -1, h])?)
    }

    /// The gradient of [`Decoder::join`]'s output split back onto its parts (a prefix's
    /// gradient is the sum over the rows that share it).
    fn split(rows: &Rows, parts: &[Tensor], grad: &Tensor) -> Result<Vec<Tensor>> {
        let Some(plan) = rows.plan else {
            return Ok(vec![grad.shallow_clone()]);
        };
        let h = grad.size()[2];
        let sizes: Vec<i64> = parts.iter().map(|p| p.size()[0] * p.size()[1]).collect();
        let flat =
            grad.f_new_zeros([sizes.iter().sum::<i64>(), h], (grad.kind(), grad.device()))?;
        let flat = flat.f_index_add(0, &plan.gather, &grad.reshape([-1, h]))?;
        let mut out = Vec::new();
        let mut start = 0;
        for (p, len) in parts.iter().zip(sizes) {
            out.push(flat.f_narrow(0, start, len)?.f_view_as(p)?);
            start += len;
        }
        Ok(out)
    }

    /// Back-propagates into the parameters the loss whose gradient with respect to the final
    /// hidden states [B, T, H] is `head(hidden)`, for ids [B, T] and their `mask`, each prefix
    /// that `plan` names run once.
    pub fn backward_checkpointed(
        &self,
        (ids, mask): (&Tensor, &Tensor),
        plan: Option<&SharedPrefix>,
        adapters: bool,
        head: &mut dyn FnMut(&Tensor) -> Result<Tensor>,
    ) -> Result<()> {
        let rows = self.rows(ids, mask, plan)?;
        let embed = |rows: &Rows| -> Result<Vec<Tensor>> {
            rows.parts.iter().map(|p| self.embed_ids(&p.ids)).collect()
        };
        let norm = |x: &Tensor, delta: Option<&Tensor>| {
            add_rms_norm(x, delta, &self.norm, self.eps, self.fused_ops)
        };
        // inputs[i]: where the stream entered layer i (its input: x + the pending delta), per
        // part; the last ones: the final norm's input. And the final hidden states.
        let (mut inputs, hidden) = tch::no_grad(|| -> Result<(Vec<Vec<Tensor>>, Tensor)> {
            let mut inputs = Vec::new();
            let mut xs: Vec<(Tensor, Option<Tensor>)> =
                embed(&rows)?.into_iter().map(|x| (x, None)).collect();
            for i in 0..self.layers.len() {
                let outs = self.layer_on(i, &rows, &xs, adapters)?;
                inputs.push(outs.iter().map(|o| o.entered.shallow_clone()).collect());
                xs = outs.into_iter().map(|o| (o.x, Some(o.delta))).collect();
            }
            let (last, normed): (Vec<Tensor>, Vec<Tensor>) = xs
                .iter()
                .map(|(x, delta)| norm(x, delta.as_ref()))
                .collect::<Result<Vec<_>>>()?
                .into_iter()
                .unzip();
            inputs.push(last);
            Ok((inputs, Self::join(&rows, &normed)?))
        })?;
        let last = inputs.pop().expect("the final norm's input");
        let grad = head(&hidden)?;
        drop(hidden);
        let grad = Self::split(&rows, &last, &grad)?;
        let mut grad = through(&last, &grad, |xs| {
            xs.iter().map(|x| Ok(norm(x, None)?.1)).collect()
        })?;
        drop(last);
        for i in (0..self.layers.len()).rev() {
            let entered = inputs.pop().expect("one input per layer");
            // Both outputs of the layer, x and delta, take the gradient of their sum.
            let grad_out: Vec<Tensor> = grad
                .iter()
                .flat_map(|g| [g.shallow_clone(), g.shallow_clone()])
                .collect();
            grad = through(&entered, &grad_out, |xs| {
                let xs: Vec<_> = xs.iter().map(|x| (x.shallow_clone(), None)).collect();
                let outs = self.layer_on(i, &rows, &xs, adapters)?;
                Ok(outs.into_iter().flat_map(|o| [o.x, o.delta]).collect())
            })?;
        }
        if self.embed.requires_grad() {
            let embedded = embed(&rows)?;
            sum_of(embedded.iter().zip(&grad).map(|(e, g)| e * g)).backward();
        }
        Ok(())
    }
}

/// Runs `f` with grad on leaf copies of `inputs`, back-propagates `grad_out` (dL/d f(inputs))
/// and returns dL/d inputs.
fn through(
    inputs: &[Tensor],
    grad_out: &[Tensor],
    f: impl Fn(&[Tensor]) -> Result<Vec<Tensor>>,
) -> Result<Vec<Tensor>> {
    let leaves: Vec<Tensor> = inputs
        .iter()
        .map(|x| x.detach().set_requires_grad(true))
        .collect();
    let outs = f(&leaves)?;
    sum_of(outs.iter().zip(grad_out).map(|(y, g)| y * g)).backward();
    Ok(leaves.iter().map(|l| l.grad()).collect())
}

/// The sum of every element of every tensor, in float64.
fn sum_of(tensors: impl Iterator<Item = Tensor>) -> Tensor {
    let total = tensors.map(|t| t.sum(Kind::Double)).reduce(|a, b| a + b);
    total.expect("at least one part")
}
