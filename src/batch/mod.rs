//! A validated training batch. Rows are candidates: token ids [N, T], attention mask, loss mask
//! (1 at t: the token at t counts, scored from the logits at t - 1; so position 0 must be 0),
//! group ids, rewards or explicit targets, and optionally sampling-time (`old`) and anchor
//! log-probs, per sequence [N] or per token [N, T]; what the rollout engine recorded (its
//! token log-probs, which rows were truncated, the policy version) is in `rollout.rs`, and
//! the subsets the trainer's filters make in `subset.rs`.

mod concat;
mod rollout;
mod subset;

use crate::error::{Error, Result};
use crate::objective::Groups;
use tch::{Device, Kind, Tensor};

/// Log-probs supplied by the caller: one per sequence, or one per token (aligned with ids).
#[derive(Debug)]
pub enum SuppliedLogp {
    Sequence(Tensor),
    Tokens(Tensor),
}

pub struct Batch {
    pub n: usize,
    pub t: usize,
    pub ids: Tensor,
    pub attention_mask: Tensor,
    /// 0/1 as float32.
    pub loss_mask: Tensor,
    pub group_ids: Vec<i64>,
    pub groups: Groups,
    pub rewards: Option<Tensor>,
    pub targets: Option<Tensor>,
    pub old_logp: Option<SuppliedLogp>,
    pub anchor_logp: Option<SuppliedLogp>,
    /// The rollout engine's per-token log-probs [N, T] (0 where the loss mask is 0).
    pub rollout_logp: Option<Tensor>,
    /// Per row: generation stopped at `max_new_tokens`, not at an EOS id or stop sequence.
    pub truncated: Option<Vec<bool>>,
    /// The optimizer step of the policy that generated the batch.
    pub policy_version: Option<u64>,
}

fn check_binary(name: &str, v: &[u8]) -> Result<()> {
    match v.iter().position(|&x| x > 1) {
        Some(i) => Err(Error::invalid(format!(
            "{name}[{i}] = {}: masks hold only 0 and 1",
            v[i]
        ))),
        None => Ok(()),
    }
}

pub(crate) fn check_finite(name: &str, v: &[f64]) -> Result<()> {
    match v.iter().position(|x| !x.is_finite()) {
        Some(i) => Err(Error::new(
            crate::error::Status::NonFinite,
            format!("{name}[{i}] is NaN or Inf"),
        )),
        None => Ok(()),
    }
}

impl Batch {
    /// `attention_mask` None = all ones.
    pub fn new(
        n: usize,
        t: usize,
        ids: &[i64],
        attention_mask: Option<&[u8]>,
        loss_mask: &[u8],
        group_ids: &[i64],
    ) -> Result<Batch> {
        if n == 0 {
            return Err(Error::invalid("n must be > 0"));
        }
        if t < 2 {
            return Err(Error::invalid(format!(
                "t must be >= 2 (a prompt token and a scored token), got {t}"
            )));
        }
        let cells = n
            .checked_mul(t)
            .ok_or_else(|| Error::invalid("n * t overflows"))?;
        for (name, len) in [("ids", ids.len()), ("loss_mask", loss_mask.len())] {
            if len != cells {
                return Err(Error::shape(format!(
                    "{name} has {len} entries, expected n * t = {cells}"
                )));
            }
        }
        if group_ids.len() != n {
            return Err(Error::shape(format!(
                "group_ids has {} entries, expected n = {n}",
                group_ids.len()
            )));
        }
        if let Some(i) = ids.iter().position(|&x| x < 0) {
            return Err(Error::invalid(format!("ids[{i}] = {} is negative", ids[i])));
        }
        check_binary("loss_mask", loss_mask)?;
        if let Some(row) = (0..n).find(|r| loss_mask[r * t] != 0) {
            return Err(Error::invalid(format!(
                "loss_mask[{row}, 0] = 1: position 0 has no logits before it and must be 0"
            )));
        }
        let attn: Vec<u8> = match attention_mask {
            Some(a) => {
                if a.len() != cells {
                    return Err(Error::shape(format!(
                        "attention_mask has {} entries, expected n * t = {cells}",
                        a.len()
                    )));
                }
                check_binary("attention_mask", a)?;
                if let Some(i) = (0..cells).find(|&i| loss_mask[i] == 1 && a[i] == 0) {
                    return Err(Error::invalid(format!(
                        "loss_mask[{}, {}] = 1 where attention_mask is 0",
                        i / t,
                        i % t
                    )));
                }
                a.to_vec()
            }
            None => vec![1; cells],
        };
        let shape = [n as i64, t as i64];
        Ok(Batch {
            n,
            t,
            ids: Tensor::from_slice(ids).view(shape),
            attention_mask: Tensor::from_slice(&attn).to_kind(Kind::Int64).view(shape),
            loss_mask: Tensor::from_slice(loss_mask)
                .to_kind(Kind::Float)
                .view(shape),
            group_ids: group_ids.to_vec(),
            groups: Groups::from_ids(group_ids)?,
            rewards: None,
            targets: None,
            old_logp: None,
            anchor_logp: None,
            rollout_logp: None,
            truncated: None,
            policy_version: None,
        })
    }

    pub fn set_rewards(&mut self, rewards: &[f64]) -> Result<()> {
        if rewards.len() != self.n {
            return Err(Error::shape(format!(
                "rewards has {} entries, expected n = {}",
                rewards.len(),
                self.n
            )));
        }
        check_finite("rewards", rewards)?;
        self.rewards = Some(Tensor::from_slice(rewards));
        self.targets = None;
        Ok(())
    }

    pub fn set_targets(&mut self, targets: &[f64]) -> Result<()> {
        if targets.len() != self.n {
            return Err(Error::shape(format!(
                "targets has {} entries, expected n = {}",
                targets.len(),
                self.n
            )));
        }
        check_finite("targets", targets)?;
        crate::objective::check_targets(targets, &self.groups, 1e-6)?;
        self.targets = Some(Tensor::from_slice(targets));
        self.rewards = None;
        Ok(())
    }

    fn supplied(&self, name: &str, values: &[f64]) -> Result<SuppliedLogp> {
        check_finite(name, values)?;
        let t = Tensor::from_slice(values);
        if values.len() == self.n {
            Ok(SuppliedLogp::Sequence(t))
        } else if values.len() == self.n * self.t {
            Ok(SuppliedLogp::Tokens(t.view([self.n as i64, self.t as i64])))
        } else {
            Err(Error::shape(format!(
                "{name} has {} entries, expected n = {} (per sequence) or n * t = {} (per token)",
                values.len(),
                self.n,
                self.n * self.t
            )))
        }
    }

    pub fn set_old_logp(&mut self, values: &[f64]) -> Result<()> {
        self.old_logp = Some(self.supplied("old_logp", values)?);
        Ok(())
    }

    /// The sampling-time log-probs as the batch holds them, float64: per sequence [n] as set,
    /// or per token [n, t] (sampled, or set so) with 0 where the loss mask is 0.
    pub fn old_logp_values(&self) -> Result<Tensor> {
        match &self.old_logp {
            None => Err(Error::invalid(
                "the batch has no old_logp: neither sampled nor set",
            )),
            Some(SuppliedLogp::Sequence(v)) => Ok(v.to_kind(Kind::Double)),
            Some(SuppliedLogp::Tokens(v)) => {
                Ok(v.to_kind(Kind::Double) * self.loss_mask.to_kind(Kind::Double))
            }
        }
    }

    pub fn set_anchor_logp(&mut self, values: &[f64]) -> Result<()> {
        self.anchor_logp = Some(self.supplied("anchor_logp", values)?);
        Ok(())
    }

    /// Number of tokens that count (sum of the loss mask).
    pub fn tokens(&self) -> f64 {
        self.loss_mask.sum(Kind::Double).double_value(&[])
    }

    /// Rows in groups of two or more candidates (the rows the loss counts), and their
    /// loss-masked tokens.
    pub fn counted_rows_and_tokens(&self) -> (f64, f64) {
        let per_row = Vec::<f64>::try_from(self.loss_mask.sum_dim_intlist(1, false, Kind::Double))
            .unwrap_or_default();
        let (mut rows, mut tokens) = (0.0, 0.0);
        // Groups lists only the counted groups.
        for g in 0..self.groups.count() {
            let members = self.groups.group_rows(g);
            rows += members.len() as f64;
            tokens += members.iter().map(|r| per_row[r]).sum::<f64>();
        }
        (rows, tokens)
    }

    /// The loss-masked tokens of `row`, in order: a sampled row's completion (its ending token
    /// included).
    pub fn completion(&self, row: usize) -> Result<Vec<i64>> {
        if row >= self.n {
            return Err(Error::invalid(format!(
                "row {row} is outside the batch's {} rows",
                self.n
            )));
        }
        let r = row as i64;
        let ids = Vec::<i64>::try_from(self.ids.get(r))?;
        let mask = Vec::<f64>::try_from(self.loss_mask.get(r).to_kind(Kind::Double))?;
        Ok(ids
            .into_iter()
            .zip(mask)
            .filter(|(_, m)| *m != 0.0)
            .map(|(id, _)| id)
            .collect())
    }

    /// Rows `start .. start + len` of ids, attention mask and loss mask on `device`.
    pub fn rows(&self, start: i64, len: i64, device: Device) -> (Tensor, Tensor, Tensor) {
        (
            self.ids.narrow(0, start, len).to_device(device),
            self.attention_mask.narrow(0, start, len).to_device(device),
            self.loss_mask.narrow(0, start, len).to_device(device),
        )
    }
}
