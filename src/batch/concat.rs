//! One batch from several (a host refilling a batch with the groups of more sampling calls,
//! as DAPO does): rows in order, right-padded to the longest t, each batch's groups kept apart.

use super::{Batch, SuppliedLogp};
use crate::error::{Error, Result};
use crate::objective::Groups;
use tch::{Kind, Tensor};

impl Batch {
    /// The rows of `parts` in order. Group ids of each part are shifted past those of the parts
    /// before it, so groups of different parts never merge. Rewards, targets, old, anchor and
    /// rollout log-probs and truncation flags come along when every part has them (in one form),
    /// and are refused when only some do; the policy version is the oldest.
    pub fn concat(parts: &[&Batch]) -> Result<Batch> {
        let first = parts
            .first()
            .ok_or_else(|| Error::invalid("concat needs at least one batch"))?;
        let t = parts.iter().map(|b| b.t).max().unwrap_or(first.t);
        let n: usize = parts.iter().map(|b| b.n).sum();
        // Only [n, t] values grow; per-row values ([n]) stay as they are.
        let widen = |x: &Tensor, b: &Batch| match (x.dim(), t - b.t) {
            (2, extra) if extra > 0 => x.constant_pad_nd([0, extra as i64]),
            _ => x.shallow_clone(),
        };
        let cat = |f: &dyn Fn(&Batch) -> Tensor| {
            Tensor::cat(
                &parts.iter().map(|b| widen(&f(b), b)).collect::<Vec<_>>(),
                0,
            )
        };
        let mut group_ids = Vec::with_capacity(n);
        let mut offset = 0i64;
        for b in parts {
            let (lo, hi) = min_max(&b.group_ids);
            let shift = offset.checked_sub(lo).ok_or_else(overflow)?;
            for &g in &b.group_ids {
                group_ids.push(g.checked_add(shift).ok_or_else(overflow)?);
            }
            offset = hi
                .checked_add(shift)
                .and_then(|x| x.checked_add(1))
                .ok_or_else(overflow)?;
        }
        let columns = |name: &str, get: &dyn Fn(&Batch) -> Option<&Tensor>| {
            let all = all_or_none(parts, name, |b| get(b).is_some())?;
            Ok::<_, Error>(
                all.then(|| cat(&|b| get(b).expect("every part has it").shallow_clone())),
            )
        };
        let truncated = all_or_none(parts, "truncated", |b| b.truncated.is_some())?.then(|| {
            parts
                .iter()
                .flat_map(|b| b.truncated.clone().unwrap_or_default())
                .collect()
        });
        Ok(Batch {
            n,
            t,
            ids: cat(&|b| b.ids.shallow_clone()),
            attention_mask: cat(&|b| b.attention_mask.shallow_clone()),
            loss_mask: cat(&|b| b.loss_mask.shallow_clone()),
            groups: Groups::from_ids(&group_ids)?,
            group_ids,
            rewards: columns("rewards", &|b| b.rewards.as_ref())?,
            targets: columns("targets", &|b| b.targets.as_ref())?,
            old_logp: supplied(parts, "old_logp", t, |b| b.old_logp.as_ref())?,
            anchor_logp: supplied(parts, "anchor_logp", t, |b| b.anchor_logp.as_ref())?,
            rollout_logp: columns("rollout_logp", &|b| b.rollout_logp.as_ref())?,
            truncated,
            policy_version: parts.iter().filter_map(|b| b.policy_version).min(),
        })
    }
}

fn overflow() -> Error {
    Error::invalid("concat: shifting the group ids apart overflows int64")
}

fn min_max(v: &[i64]) -> (i64, i64) {
    let lo = v.iter().copied().min().unwrap_or(0);
    let hi = v.iter().copied().max().unwrap_or(0);
    (lo, hi)
}

/// True when every part has the value, false when none does; an error when some do.
fn all_or_none(parts: &[&Batch], name: &str, has: impl Fn(&Batch) -> bool) -> Result<bool> {
    let have = parts.iter().filter(|b| has(b)).count();
    match have {
        0 => Ok(false),
        h if h == parts.len() => Ok(true),
        h => Err(Error::invalid(format!(
            "concat: {h} of the {} batches have {name}: set it on all of them or none",
            parts.len()
        ))),
    }
}

/// Supplied log-probs of every part, in one form (per sequence, or per token widened to t).
fn supplied(
    parts: &[&Batch],
    name: &str,
    t: usize,
    get: impl Fn(&Batch) -> Option<&SuppliedLogp>,
) -> Result<Option<SuppliedLogp>> {
    if !all_or_none(parts, name, |b| get(b).is_some())? {
        return Ok(None);
    }
    let mut seq = Vec::new();
    let mut tok = Vec::new();
    for b in parts {
        match get(b).expect("checked: every part has it") {
            SuppliedLogp::Sequence(v) => seq.push(v.to_kind(Kind::Double)),
            SuppliedLogp::Tokens(v) => tok.push(
                v.to_kind(Kind::Double)
                    .constant_pad_nd([0, (t - b.t) as i64]),
            ),
        }
    }
    match (seq.is_empty(), tok.is_empty()) {
        (false, true) => Ok(Some(SuppliedLogp::Sequence(Tensor::cat(&seq, 0)))),
        (true, false) => Ok(Some(SuppliedLogp::Tokens(Tensor::cat(&tok, 0)))),
        _ => Err(Error::invalid(format!(
            "concat: {name} is per sequence in some batches and per token in others"
        ))),
    }
}
