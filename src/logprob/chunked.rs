//! Token log-probs through the output head a chunk of positions at a time, for models whose
//! forward gives final hidden states (native checkpoints): only the scored positions (loss
//! mask 1) go through the head, `rows` of them at a time, so no [N, T, V] logits tensor exists,
//! in the forward or in the backward; the largest is one chunk's [rows, V].
//!
//! The backward needs no custom autograd function because the gradient with respect to each
//! token log-prob is known (the two-pass step): the hidden states are detached into a leaf;
//! each chunk's logits are recomputed with grad, its log-probs weighted by their known
//! upstream gradients and back-propagated into the head and the leaf, then freed; finally the
//! hidden states back-propagate once into the model with the leaf's gradient.

use crate::error::Result;
use crate::model::Model;
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

/// Log-probs of the scored tokens [M] in float32 (float64 for float64 models), from the hidden
/// states `flat_hidden` [B * T, H] (with or without grad, as the caller's mode is).
fn chunk_logp(
    model: &Model,
    flat_hidden: &Tensor,
    flat_ids: &Tensor,
    s: &Scored,
    start: i64,
    len: i64,
) -> Result<Tensor> {
    let h = flat_hidden.index_select(0, &s.hidden_at.narrow(0, start, len));
    let logits = model.head(&h)?;
    let kind = match logits.kind() {
        Kind::Double => Kind::Double,
        _ => Kind::Float,
    };
    let next = flat_ids.index_select(0, &s.token_at.narrow(0, start, len));
    Ok(logits
        .to_kind(kind)
        .log_softmax(1, kind)
        .gather(1, &next.unsqueeze(1), false)
        .squeeze_dim(1))
}

/// Token log-probs [B, T] (position 0 and unscored positions 0) from hidden states [B, T, H].
pub fn token_logp(
    model: &Model,
    hidden: &Tensor,
    ids: &Tensor,
    loss_mask: &Tensor,
    rows: i64,
) -> Result<Tensor> {
    let (b, t) = (ids.size()[0], ids.size()[1]);
    let s = scored(loss_mask);
    let flat_hidden = hidden.reshape([b * t, -1]);
    let flat_ids = ids.reshape([-1]);
    let m = s.token_at.size()[0];
    let kind = if model.kind() == Kind::Double {
        Kind::Double
    } else {
        Kind::Float
    };
    let mut parts = Vec::new();
    for start in (0..m).step_by(rows as usize) {
        let len = rows.min(m - start);
        parts.push(chunk_logp(model, &flat_hidden, &flat_ids, &s, start, len)?);
    }
    let values = if parts.is_empty() {
        Tensor::zeros([0], (kind, ids.device()))
    } else {
        Tensor::cat(&parts, 0)
    };
    let out = Tensor::zeros([b * t], (values.kind(), ids.device()));
    Ok(out.index_add(0, &s.token_at, &values).view([b, t]))
}

/// Back-propagates sum(weights * token log-probs) through the head, a chunk at a time, and then
/// through the model from `hidden` [B, T, H] (which carries the graph of the forward).
/// `weights` [B, T]: dL/d(token log-prob), 0 where a token is not scored.
pub fn backward(
    model: &Model,
    hidden: &Tensor,
    ids: &Tensor,
    loss_mask: &Tensor,
    weights: &Tensor,
    rows: i64,
) -> Result<()> {
    let (b, t) = (ids.size()[0], ids.size()[1]);
    let s = scored(loss_mask);
    let leaf = hidden.detach().reshape([b * t, -1]).set_requires_grad(true);
    let flat_ids = ids.reshape([-1]);
    let flat_w = weights.reshape([-1]);
    let m = s.token_at.size()[0];
    for start in (0..m).step_by(rows as usize) {
        let len = rows.min(m - start);
        let lp = chunk_logp(model, &leaf, &flat_ids, &s, start, len)?;
        let w = flat_w
            .index_select(0, &s.token_at.narrow(0, start, len))
            .to_kind(lp.kind());
        (lp * w).sum(Kind::Double).backward();
    }
    let grad = leaf.grad();
    if grad.defined() {
        (hidden.reshape([b * t, -1]) * grad.to_kind(hidden.kind()))
            .sum(Kind::Double)
            .backward();
    }
    Ok(())
}
