//! What the trainer does to a batch before the step, each a choice of the config: refuse it
//! when it is older than `max_staleness` steps, drop the groups `filter_groups` finds without
//! signal, and keep truncated rows out of the loss (`mask_truncated_completions`). The
//! caller's batch is never changed: a filtered step works on a copy of the kept rows.

use crate::batch::Batch;
use crate::error::{Error, Result};
use crate::objective::metrics::finite_or_null;
use crate::objective::Level;
use serde::{Deserialize, Serialize};
use std::ops::Deref;
use tch::Kind;

/// The batch a step trains on: the caller's, or a filtered copy (a batch is not Clone, so
/// not a Cow).
pub(super) enum Kept<'a, B> {
    Borrowed(&'a B),
    Owned(B),
}

impl<B> Deref for Kept<'_, B> {
    type Target = B;
    fn deref(&self) -> &B {
        match self {
            Kept::Borrowed(b) => b,
            Kept::Owned(b) => b,
        }
    }
}

/// Which groups carry a learning signal (verl `filter_groups`, OpenRLHF `dynamic_filtering`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupFilter {
    /// Keep a group when its rewards' standard deviation (population) is above this: 0 drops
    /// the groups whose rewards are all equal, as verl's filter_groups does.
    #[serde(default)]
    pub min_std: Option<f64>,
    /// Keep a group when lo < mean reward < hi (OpenRLHF's dynamic_filtering_reward_range).
    #[serde(default)]
    pub mean_range: Option<[f64; 2]>,
}

impl GroupFilter {
    pub const LISTS: &'static [&'static str] = &["mean_range"];

    pub fn validate(&self) -> Result<()> {
        match (self.min_std, self.mean_range) {
            (None, None) => Err(Error::config(
                "filter_groups needs min_std (e.g. 0: drop groups whose rewards are all equal) \
                 or mean_range [lo, hi]",
            )),
            (Some(s), _) if !(s.is_finite() && s >= 0.0) => Err(Error::config(format!(
                "filter_groups.min_std must be >= 0, got {s}"
            ))),
            (_, Some([lo, hi])) if !(lo.is_finite() && hi.is_finite() && lo < hi) => {
                Err(Error::config(format!(
                    "filter_groups.mean_range [{lo}, {hi}] needs finite lo < hi"
                )))
            }
            _ => Ok(()),
        }
    }

    fn keeps(&self, std: f64, mean: f64) -> bool {
        self.min_std.map_or(true, |m| std > m)
            && self
                .mean_range
                .map_or(true, |[lo, hi]| lo < mean && mean < hi)
    }
}

/// What the filters saw (this rank's batch).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct FilterMetrics {
    /// Fraction of the groups of two or more whose rewards are all equal (null with targets).
    #[serde(serialize_with = "finite_or_null")]
    pub frac_reward_zero_std: f64,
    /// Groups of two or more the step trained on, after filter_groups.
    pub groups_kept: u64,
    /// Rows that stopped at max_new_tokens (null when the batch does not know).
    #[serde(serialize_with = "finite_or_null")]
    pub truncated_rows: f64,
    /// Optimizer steps taken since the batch's policy version (null when it has none).
    #[serde(serialize_with = "finite_or_null")]
    pub batch_age: f64,
}

impl FilterMetrics {
    /// No filter looked at a batch (an optimizer step of accumulated gradients).
    pub fn none() -> Self {
        FilterMetrics {
            frac_reward_zero_std: f64::NAN,
            groups_kept: 0,
            truncated_rows: f64::NAN,
            batch_age: f64::NAN,
        }
    }
}

/// The filters of one trainer.
pub(super) struct Filters<'a> {
    pub max_staleness: Option<u64>,
    pub group_filter: Option<&'a GroupFilter>,
    pub mask_truncated: bool,
    pub level: Level,
    /// Optimizer steps taken so far.
    pub steps: u64,
}

impl Filters<'_> {
    /// The batch the step trains on, and what the filters saw.
    pub fn apply<'b>(&self, batch: &'b Batch) -> Result<(Kept<'b, Batch>, FilterMetrics)> {
        let batch_age = self.check_age(batch)?;
        let (stds, means) = group_reward_stats(batch)?;
        let zero = stds.iter().filter(|&&s| s == 0.0).count();
        let mut metrics = FilterMetrics {
            frac_reward_zero_std: match batch.rewards.is_some() && !stds.is_empty() {
                true => zero as f64 / stds.len() as f64,
                false => f64::NAN,
            },
            groups_kept: batch.groups.count() as u64,
            truncated_rows: batch
                .truncated
                .as_ref()
                .map_or(f64::NAN, |t| t.iter().filter(|&&x| x).count() as f64),
            batch_age,
        };
        let mut out = Kept::Borrowed(batch);
        if let Some(f) = self.group_filter {
            let keep: Vec<bool> = stds
                .iter()
                .zip(&means)
                .map(|(&s, &m)| f.keeps(s, m))
                .collect();
            metrics.groups_kept = keep.iter().filter(|&&k| k).count() as u64;
            if metrics.groups_kept == 0 {
                return Err(Error::invalid(format!(
                    "filter_groups kept none of the batch's {} groups (no group's rewards carry \
                     a signal): sample more prompts and step on a batch with some (see the \
                     README, \"Groups without signal\")",
                    keep.len()
                )));
            }
            let mut rows: Vec<usize> = (0..batch.groups.count())
                .filter(|&g| keep[g])
                .flat_map(|g| batch.groups.group_rows(g).iter())
                .collect();
            rows.sort_unstable();
            if rows.len() < batch.n {
                out = Kept::Owned(batch.select(&rows)?);
            }
        }
        if self.mask_truncated {
            out = self.unscore_truncated(out)?;
        }
        Ok((out, metrics))
    }

    fn check_age(&self, batch: &Batch) -> Result<f64> {
        let Some(version) = batch.policy_version else {
            return Ok(f64::NAN);
        };
        if version > self.steps {
            return Err(Error::invalid(format!(
                "the batch's policy version {version} is ahead of this trainer's {} optimizer \
                 steps: it was generated by another trainer, or the version was set wrongly",
                self.steps
            )));
        }
        let age = self.steps - version;
        match self.max_staleness {
            Some(max) if age > max => Err(Error::invalid(format!(
                "the batch is {age} optimizer steps old (policy version {version}, trainer at \
                 step {}): more than max_staleness = {max}; the step is refused",
                self.steps
            ))),
            _ => Ok(age as f64),
        }
    }

    /// Truncated rows out of the loss: GRPO (token level) zeroes their loss masks, as TRL's
    /// mask_truncated_completions does (they still count in their group's advantages); the
    /// sequence-level losses drop them from their groups (a row with no scored token has no
    /// sequence log-prob to compare).
    fn unscore_truncated<'b>(&self, batch: Kept<'b, Batch>) -> Result<Kept<'b, Batch>> {
        let flags = batch.truncated_values().map_err(|e| {
            Error::invalid(format!(
                "mask_truncated_completions is on, but {}",
                e.message
            ))
        })?;
        let truncated: Vec<usize> = (0..batch.n).filter(|&r| flags[r]).collect();
        if truncated.is_empty() {
            return Ok(batch);
        }
        match self.level {
            Level::Tokens => Ok(Kept::Owned(batch.with_rows_unscored(&truncated)?)),
            Level::Sequence => {
                let kept: Vec<usize> = (0..batch.n).filter(|&r| !flags[r]).collect();
                if kept.is_empty() {
                    return Err(Error::invalid(
                        "mask_truncated_completions: every row of the batch was truncated at \
                         max_new_tokens, so none is left to train on",
                    ));
                }
                Ok(Kept::Owned(batch.select(&kept)?))
            }
        }
    }
}

/// Per counted group, the population standard deviation and the mean of its rewards (NaN
/// without rewards).
fn group_reward_stats(batch: &Batch) -> Result<(Vec<f64>, Vec<f64>)> {
    let g = batch.groups.count();
    let Some(r) = &batch.rewards else {
        return Ok((vec![f64::NAN; g], vec![f64::NAN; g]));
    };
    let r = Vec::<f64>::try_from(r.to_kind(Kind::Double))?;
    let mut stds = Vec::with_capacity(g);
    let mut means = Vec::with_capacity(g);
    for i in 0..g {
        let rows = batch.groups.group_rows(i);
        let k = rows.len() as f64;
        let mean = rows.iter().map(|j| r[j]).sum::<f64>() / k;
        let var = rows.iter().map(|j| (r[j] - mean).powi(2)).sum::<f64>() / k;
        // All-equal rewards give exactly 0 (every deviation is 0).
        stds.push(var.sqrt());
        means.push(mean);
    }
    Ok((stds, means))
}
