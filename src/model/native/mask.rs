//! Positions and the attention mask from a padding mask, for a whole sequence or for the last t
//! columns after `past` cached ones. Positions follow the padding mask (cumsum - 1, clamped at
//! 0), so a row gets the same positions, hence the same log-probs, left-padded, right-padded or
//! alone. Query i (column past + i) sees key j when j <= past + i and column j is not padding,
//! and always sees itself: a padding query then has one key instead of none, which keeps its
//! (unused) output finite, and a real query's keys are unchanged.

use crate::error::Result;
use tch::{Kind, Tensor};

/// Position ids [B, K - past] of the last columns of the padding mask [B, K].
pub fn positions(mask: &Tensor, past: i64) -> Result<Tensor> {
    let k = mask.size()[1];
    let pos = mask
        .f_ne(0)?
        .f_cumsum(1, Kind::Int64)?
        .f_sub_scalar(1)?
        .f_clamp_min(0)?;
    Ok(pos.f_narrow(1, past, k - past)?)
}

/// Boolean [B, 1, K - past, K]: which keys each of the last K - past queries attends to.
pub fn attention(mask: &Tensor, past: i64) -> Result<Tensor> {
    let (b, k) = (mask.size()[0], mask.size()[1]);
    let device = mask.device();
    let queries = Tensor::f_arange_start(past, k, (Kind::Int64, device))?.unsqueeze(1);
    let keys = Tensor::f_arange(k, (Kind::Int64, device))?.unsqueeze(0);
    let causal = keys.f_le_tensor(&queries)?;
    let valid = mask.f_ne(0)?.f_view([b, 1, 1, k])?;
    let own = keys.f_eq_tensor(&queries)?;
    Ok(causal.f_logical_and(&valid)?.f_logical_or(&own)?)
}
