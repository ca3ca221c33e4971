//! Log-probs of the batch's tokens under a causal LM. The token at t is scored from the logits
//! at t - 1: log_softmax over the vocabulary (every position: no sliced copy), then gather. (gather - logsumexp was the first
//! design, but libtorch composes logsumexp from several full-size ops and its backward needs an
//! extra [B, T, V] buffer: benches/step_torch.py measured a one-pass peak of 4.1x the logits
//! against 3.1x for log_softmax, whose backward is fused.) Memory is bounded by the trainer's
//! micro_batch_rows, not here.

pub mod chunked;

use crate::error::Result;
use crate::model::Model;
use serde::Deserialize;
use tch::{Kind, Tensor};

/// How token log-probs become one sequence score (docs/MATH.md §0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SeqReduce {
    /// Mean over the loss-masked tokens (max(1, count) in the denominator).
    Mean,
    /// Sum over the loss-masked tokens.
    Sum,
}

/// Per-token log-probs [B, T] (float32 or float64 as the model; bf16/f16 models give float32):
/// position 0 and masked positions are 0. The hidden states go through the head `chunk_rows`
/// scored positions at a time (None: sized for the vocabulary; see chunked.rs).
pub fn token_logp_chunked(
    model: &Model,
    ids: &Tensor,
    attention_mask: &Tensor,
    loss_mask: &Tensor,
    chunk_rows: Option<usize>,
) -> Result<Tensor> {
    let hidden = model.forward(ids, attention_mask)?;
    let rows = chunked::chunk_rows(chunk_rows, model.vocab());
    chunked::token_logp(model, &hidden, ids, loss_mask, rows)
}

/// [`token_logp_chunked`] with the chunk sized for the vocabulary.
pub fn token_logp(
    model: &Model,
    ids: &Tensor,
    attention_mask: &Tensor,
    loss_mask: &Tensor,
) -> Result<Tensor> {
    token_logp_chunked(model, ids, attention_mask, loss_mask, None)
}

/// Token log-probs from full logits [B, T, V] (the reference the chunked path is tested
/// against).
pub fn from_logits(logits: &Tensor, ids: &Tensor, loss_mask: &Tensor) -> Tensor {
    let kind = crate::dtype::compute_kind(logits.kind());
    let logits = logits.to_kind(kind);
    let (b, t) = (ids.size()[0], ids.size()[1]);
    // log_softmax over every position, the last included (its row is ignored): slicing off the
    // last position first would copy all B x T x V logits (log_softmax needs them contiguous),
    // and its backward would allocate and fill another B x T x V buffer.
    let pad = Tensor::zeros([b, 1], (Kind::Int64, ids.device()));
    let next = Tensor::cat(&[ids.narrow(1, 1, t - 1), pad], 1).unsqueeze(2);
    let scored = logits
        .log_softmax(2, kind)
        .gather(2, &next, false)
        .squeeze_dim(2);
    // Position t scores token t + 1: shift right by one, position 0 gets 0.
    let first = Tensor::zeros([b, 1], (kind, ids.device()));
    Tensor::cat(&[first, scored.narrow(1, 0, t - 1)], 1) * loss_mask.to_kind(kind)
}

/// d(sequence score)/d(token log-prob) [B, T] times the upstream gradient per sequence `dl`
/// [B]: the loss mask (sum) or the mask over its count (mean).
pub fn sequence_weights(dl: &Tensor, loss_mask: &Tensor, how: SeqReduce) -> Tensor {
    let kind = dl.kind();
    let mask = loss_mask.to_kind(kind);
    let per_row = match how {
        SeqReduce::Sum => dl.shallow_clone(),
        SeqReduce::Mean => dl / mask.sum_dim_intlist(1, false, kind).clamp_min(1.0),
    };
    mask * per_row.unsqueeze(1)
}

/// Sequence scores [B] from token log-probs [B, T] and the loss mask.
pub fn reduce(token_logp: &Tensor, loss_mask: &Tensor, how: SeqReduce) -> Tensor {
    let kind = token_logp.kind();
    let sum = token_logp.sum_dim_intlist(1, false, kind);
    match how {
        SeqReduce::Sum => sum,
        SeqReduce::Mean => {
            sum / loss_mask
                .to_kind(kind)
                .sum_dim_intlist(1, false, kind)
                .clamp_min(1.0)
        }
    }
}

/// Mean token entropy of the model's next-token distributions over the loss-masked positions,
/// divided by log V, per row [B] (the H of the smooth-hybrid temperature rule), through the
/// head `chunk_rows` scored positions at a time, as token log-probs are.
pub fn normalised_entropy(
    model: &Model,
    ids: &Tensor,
    attention_mask: &Tensor,
    loss_mask: &Tensor,
    chunk_rows: Option<usize>,
) -> Result<Tensor> {
    let hidden = model.forward(ids, attention_mask)?;
    let rows = chunked::chunk_rows(chunk_rows, model.vocab());
    normalised_entropy_of(model, &hidden, ids, loss_mask, rows)
}

/// [`normalised_entropy`] from the model's hidden states of the rows, `rows` scored positions
/// per chunk of the head.
pub fn normalised_entropy_of(
    model: &Model,
    hidden: &Tensor,
    ids: &Tensor,
    loss_mask: &Tensor,
    rows: i64,
) -> Result<Tensor> {
    let t = ids.size()[1];
    // Entropy [B, T - 1] of the distribution that predicts each token 1..T.
    let h = chunked::token_entropy(model, hidden, ids, loss_mask, rows)?
        .to_kind(Kind::Float)
        .narrow(1, 1, t - 1);
    let mask = loss_mask.narrow(1, 1, t - 1).to_kind(Kind::Float);
    let mean = (h * &mask).sum_dim_intlist(1, false, Kind::Float)
        / mask.sum_dim_intlist(1, false, Kind::Float).clamp_min(1.0);
    Ok(mean / (model.vocab() as f64).ln())
}
