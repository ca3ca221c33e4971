//! A batch of some of another's rows (the trainer's group filter and overlong masking make
//! them; the caller's batch is never changed), and one with some rows' loss masks cleared.

use super::{Batch, SuppliedLogp};
use crate::error::{Error, Result};
use crate::objective::Groups;
use tch::Tensor;

impl Batch {
    /// Rows `rows` (ascending, distinct) of this batch, every per-row value with them.
    pub fn select(&self, rows: &[usize]) -> Result<Batch> {
        if rows.is_empty() {
            return Err(Error::invalid("a batch needs at least one row"));
        }
        let index = Tensor::from_slice(&rows.iter().map(|&r| r as i64).collect::<Vec<_>>());
        let pick = |t: &Tensor| t.index_select(0, &index);
        let supplied = |s: &SuppliedLogp| match s {
            SuppliedLogp::Sequence(t) => SuppliedLogp::Sequence(pick(t)),
            SuppliedLogp::Tokens(t) => SuppliedLogp::Tokens(pick(t)),
        };
        let group_ids: Vec<i64> = rows.iter().map(|&r| self.group_ids[r]).collect();
        Ok(Batch {
            n: rows.len(),
            t: self.t,
            ids: pick(&self.ids),
            attention_mask: pick(&self.attention_mask),
            loss_mask: pick(&self.loss_mask),
            groups: Groups::from_ids(&group_ids)?,
            group_ids,
            rewards: self.rewards.as_ref().map(pick),
            targets: self.targets.as_ref().map(pick),
            old_logp: self.old_logp.as_ref().map(supplied),
            anchor_logp: self.anchor_logp.as_ref().map(supplied),
            rollout_logp: self.rollout_logp.as_ref().map(pick),
            truncated: self
                .truncated
                .as_ref()
                .map(|f| rows.iter().map(|&r| f[r]).collect()),
            policy_version: self.policy_version,
        })
    }

    /// A copy of the whole batch.
    pub fn copy(&self) -> Result<Batch> {
        self.select(&(0..self.n).collect::<Vec<_>>())
    }

    /// A copy whose rows `rows` score no token (loss mask 0): they stay in their groups.
    pub fn with_rows_unscored(&self, rows: &[usize]) -> Result<Batch> {
        let mut out = self.copy()?;
        for &r in rows {
            let _ = out.loss_mask.get(r as i64).fill_(0.0);
        }
        if let Some(t) = &mut out.rollout_logp {
            *t = &*t * out.loss_mask.to_kind(t.kind());
        }
        Ok(out)
    }
}
