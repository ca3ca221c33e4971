//! Token log-probs through the output head a chunk of positions at a time: from the model's
//! final hidden states, only the scored positions (loss
//! mask 1) go through the head, `rows` of them at a time, so no [N, T, V] logits tensor exists,
//! in the forward or in the backward; the largest is one chunk's [rows, V].
//!
//! The backward needs no autograd through the head: the gradient with respect to each token
//! log-prob is known (the two-pass step), so each chunk's logits are recomputed and turned in
//! place into dL/dlogits = w * (onehot - softmax), which gives the head's gradient
//! (dlogits^T h, added into its .grad) and the hidden states' (dlogits W); one [rows, V]
//! buffer per chunk, where autograd would hold three or four. `Model::backward_through` then
//! back-propagates the hidden states' gradient once into the model. An entropy bonus adds its
//! closed-form gradient e dH/dz = -e p (log p + H) to the same buffer (one more, p, per chunk).

use crate::error::Result;
use crate::model::native::fused;
use crate::model::{Head, Model};
use tch::{Kind, Tensor};

/// Logits elements per chunk when the trainer leaves the size to adpo: 2^26 (256 MB in
/// float32), e.g. 441 positions at V = 151,936.
const AUTO_CHUNK_ELEMENTS: i64 = 1 << 26;

/// Positions per chunk: `rows`, or sized to AUTO_CHUNK_ELEMENTS for this vocabulary.
pub fn chunk_rows(rows: Option<usize>, vocab: i64) -> i64 {
    match rows {
        Some(r) => r.max(1) as i64,
        None => (AUTO_CHUNK_ELEMENTS / vocab.max(1)).max(1),
    }
}

/// The scored positions: (flat index into [B * T] of the scored token, flat index of the
/// hidden state that predicts it, one position earlier).
struct Scored {
    token_at: Tensor,
    hidden_at: Tensor,
}

fn scored(loss_mask: &Tensor) -> Scored {
    let mask = loss_mask.ne(0.0);
    // Position 0 is never scored (nothing predicts it).
    let _ = mask.narrow(1, 0, 1).fill_(0);
    let token_at = mask.reshape([-1]).nonzero().squeeze_dim(1);
    Scored {
        hidden_at: &token_at - 1,
        token_at,
    }
}

/// The float kind log-probs are computed in: float64 for float64 models, else float32.
fn logp_kind(model: &Model) -> Kind {
    crate::dtype::compute_kind(model.kind())
}

/// One chunk: the hidden states that predict its scored tokens [len, H], the tokens [len, 1],
/// and their logits [len, V] in the head's dtype (a fresh buffer the caller may overwrite).
fn chunk_logits(
    head: &Head,
    flat_hidden: &Tensor,
    flat_ids: &Tensor,
    s: &Scored,
    (start, len): (i64, i64),
) -> Result<(Tensor, Tensor, Tensor)> {
    let h = flat_hidden.index_select(0, &s.hidden_at.narrow(0, start, len));
    let next = flat_ids
        .index_select(0, &s.token_at.narrow(0, start, len))
        .unsqueeze(1);
    let logits = head.logits(&h)?;
    Ok((h, next, logits))
}

/// log softmax(logits)[next] per row, in `kind`: fused on the CPU where the head allows, else
/// composed over a `kind` copy of the logits.
fn picked_logp(head: &Head, kind: Kind, next: &Tensor, logits: Tensor) -> Result<Tensor> {
    fused::or_composed(
        head.fused(),
        || fused::token_logp(&logits, next),
        || {
            let mut logits = logits.f_to_kind(kind)?;
            let picked = logits.gather(1, next, false).squeeze_dim(1);
            Ok(picked - softmax_in_place(&mut logits))
        },
    )
}

/// dL/dlogits = w * (onehot(next) - softmax(logits)) of L = w * log softmax(logits)[next]:
/// fused on the CPU where the head allows (in the logits' dtype), else composed in `kind`.
fn logp_grad(head: &Head, kind: Kind, next: &Tensor, w: &Tensor, logits: Tensor) -> Result<Tensor> {
    fused::or_composed(
        head.fused(),
        || fused::logp_grad(&logits, next, w),
        || {
            let mut dlogits = logits.f_to_kind(kind)?;
            let _ = softmax_in_place(&mut dlogits);
            dlogits *= -w;
            let _ = dlogits.scatter_add_(1, next, w);
            Ok(dlogits)
        },
    )
}

/// Turns logits [len, V] into softmax probabilities in place; returns log sum exp per row [len].
fn softmax_in_place(logits: &mut Tensor) -> Tensor {
    let max = logits.amax([1i64].as_slice(), true);
    *logits -= &max;
    let _ = logits.exp_();
    let sum = logits.sum_dim_intlist([1i64].as_slice(), true, logits.kind());
    *logits /= &sum;
    (sum.log() + max).squeeze_dim(1)
}

/// Chunk ranges (start, len) over `m` scored positions.
fn ranges(m: i64, rows: i64) -> impl Iterator<Item = (i64, i64)> {
    (0..m)
        .step_by(rows as usize)
        .map(move |s| (s, rows.min(m - s)))
}

/// One value per scored token, [B, T] at the token's position (0 elsewhere), without grad:
/// `value(next [len, 1], logits [len, V])` per chunk, free to overwrite the logits.
fn per_scored_token(
    model: &Model,
    hidden: &Tensor,
    ids: &Tensor,
    loss_mask: &Tensor,
    rows: i64,
    value: impl Fn(&Head, Kind, &Tensor, Tensor) -> Result<Tensor>,
) -> Result<Tensor> {
    let (b, t) = (ids.size()[0], ids.size()[1]);
    let (s, kind, head) = (scored(loss_mask), logp_kind(model), model.head());
    let flat_hidden = hidden.detach().reshape([b * t, -1]);
    let flat_ids = ids.reshape([-1]);
    let mut out = Tensor::zeros([b * t], (kind, ids.device()));
    tch::no_grad(|| -> Result<()> {
        for range in ranges(s.token_at.size()[0], rows) {
            let (_, next, logits) = chunk_logits(&head, &flat_hidden, &flat_ids, &s, range)?;
            let v = value(&head, kind, &next, logits)?;
            let _ = out.f_index_copy_(0, &s.token_at.narrow(0, range.0, range.1), &v)?;
        }
        Ok(())
    })?;
    Ok(out.view([b, t]))
}

/// Token log-probs [B, T] (position 0 and unscored positions 0) from hidden states [B, T, H],
/// without grad.
pub fn token_logp(
    model: &Model,
    hidden: &Tensor,
    ids: &Tensor,
    loss_mask: &Tensor,
    rows: i64,
) -> Result<Tensor> {
    per_scored_token(model, hidden, ids, loss_mask, rows, picked_logp)
}

/// Entropies [B, T] of the next-token distributions that predict the scored tokens, at the
/// scored token's position (0 elsewhere), without grad: H = log S - sum(e * x) / S with
/// x = z - max z, e = exp(x), S = sum(e); two [rows, V] buffers per chunk.
pub fn token_entropy(
    model: &Model,
    hidden: &Tensor,
    ids: &Tensor,
    loss_mask: &Tensor,
    rows: i64,
) -> Result<Tensor> {
    per_scored_token(model, hidden, ids, loss_mask, rows, |_, kind, _, logits| {
        let mut x = logits.f_to_kind(kind)?;
        x -= x.amax([1i64].as_slice(), true);
        let mut e = x.exp();
        let sum = e.sum_dim_intlist([1i64].as_slice(), false, kind);
        e *= &x;
        let ex = e.sum_dim_intlist([1i64].as_slice(), false, kind);
        Ok(sum.log() - ex / &sum)
    })
}

/// Back-propagates sum(weights * token log-probs) + sum(entropy_weights * token entropies)
/// into the head's weight, a chunk at a time, and returns the gradient with respect to
/// `hidden` [B, T, H] and, with entropy weights, the sum of the scored positions' entropies
/// (a 0-d tensor, read once by the caller).
pub fn head_backward(
    model: &Model,
    hidden: &Tensor,
    ids: &Tensor,
    loss_mask: &Tensor,
    weights: &Tensor,
    entropy_weights: Option<&Tensor>,
    rows: i64,
) -> Result<(Tensor, Option<Tensor>)> {
    let (b, t) = (ids.size()[0], ids.size()[1]);
    let (s, kind, head) = (scored(loss_mask), logp_kind(model), model.head());
    let flat_hidden = hidden.detach().reshape([b * t, -1]);
    let (flat_ids, flat_w) = (ids.reshape([-1]), weights.reshape([-1]));
    let flat_e = entropy_weights.map(|e| e.reshape([-1]));
    let grad_w = head.weight_grad();
    let mut grad_h = flat_hidden.zeros_like();
    let mut entropy_sum = flat_e
        .as_ref()
        .map(|_| Tensor::zeros([], (kind, ids.device())));
    tch::no_grad(|| -> Result<()> {
        for range in ranges(s.token_at.size()[0], rows) {
            let (h, next, logits) = chunk_logits(&head, &flat_hidden, &flat_ids, &s, range)?;
            let at_token = s.token_at.narrow(0, range.0, range.1);
            let pick = |x: &Tensor| x.index_select(0, &at_token).to_kind(kind).unsqueeze(1);
            let w = pick(&flat_w);
            let dlogits = match &flat_e {
                None => logp_grad(&head, kind, &next, &w, logits)?,
                Some(e) => {
                    let mut dlogits = logits.f_to_kind(kind)?;
                    let ent = entropy_gradient_in_place(&mut dlogits, &pick(e), &w);
                    if let Some(sum) = entropy_sum.as_mut() {
                        *sum += ent.sum(kind);
                    }
                    let _ = dlogits.scatter_add_(1, &next, &w);
                    dlogits
                }
            };
            let at = s.hidden_at.narrow(0, range.0, range.1);
            let dh = head.backward_chunk(&dlogits, &h, grad_w.as_ref())?;
            let _ = grad_h.f_index_add_(0, &at, &dh)?;
        }
        Ok(())
    })?;
    Ok((grad_h.view([b, t, -1]), entropy_sum))
}

/// Turns logits z [len, V] in place into d(e H(z) + w log p_next) / dz less its onehot term
/// w e_next (the caller adds it): with dH/dz = -p (log p + H), that is -p (e (log p + H) + w).
/// Returns H [len]. Two [len, V] buffers: log p in place of z, and p.
fn entropy_gradient_in_place(z: &mut Tensor, e: &Tensor, w: &Tensor) -> Tensor {
    let dim = [1i64];
    *z -= z.amax(dim.as_slice(), true);
    let mut p = z.exp();
    let sum = p.sum_dim_intlist(dim.as_slice(), true, z.kind());
    p /= &sum;
    *z -= sum.log();
    // H = -sum p log p, one dot product per row (no third [len, V] buffer).
    let h = -p.unsqueeze(1).bmm(&z.unsqueeze(2)).view([-1]);
    *z += h.unsqueeze(1);
    *z *= e;
    *z += w;
    *z *= &p;
    let _ = z.neg_();
    h
}
