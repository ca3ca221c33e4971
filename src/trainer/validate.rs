//! What a loaded trainer state must satisfy before any of it is applied: a well-formed file
//! with valid checksums can still hold values no trainer could have reached (a step counter of
//! -1, an Inf moment, a negative second moment), and applying them would ruin every later step.

use super::TrainerState;
use crate::checkpoint::ckpt_error;
use crate::error::Result;
use crate::optimizer::MAX_STEPS;
use std::path::Path;
use tch::{Device, Kind, Tensor};

/// A counter of the checkpoint: in 0 ..= MAX_STEPS.
pub(super) fn count(path: &Path, name: &str, value: i64) -> Result<u64> {
    if !(0..=MAX_STEPS as i64).contains(&value) {
        return Err(ckpt_error(
            path,
            format!("{name} is {value}, outside 0 ..= {MAX_STEPS}"),
        ));
    }
    Ok(value as u64)
}

impl TrainerState {
    /// Refuses values a trainer cannot hold; names the first offending entry.
    pub(super) fn validate(&self, path: &Path) -> Result<()> {
        if self.hard_copies > self.steps {
            return Err(ckpt_error(
                path,
                format!(
                    "anchor.hard_copies is {} but only {} steps were taken",
                    self.hard_copies, self.steps
                ),
            ));
        }
        if self.window_capacity > 0 && self.window.len() > self.window_capacity {
            return Err(ckpt_error(
                path,
                format!(
                    "anchor.window holds {} drifts; the anchor's window is {}",
                    self.window.len(),
                    self.window_capacity
                ),
            ));
        }
        if !self.window.iter().all(|d| d.is_finite() && *d >= 0.0) {
            return Err(ckpt_error(
                path,
                "anchor.window holds a drift that is negative, NaN or Inf",
            ));
        }
        self.check_values(path)
    }

    /// Every floating tensor finite, second moments >= 0: one flag per tensor, read at once.
    fn check_values(&self, path: &Path) -> Result<()> {
        let named: Vec<(&String, &Tensor)> = self
            .weights
            .iter()
            .chain(&self.tensors)
            .filter(|(_, t)| t.is_floating_point())
            .map(|(k, t)| (k, t))
            .collect();
        if named.is_empty() {
            return Ok(());
        }
        let flags: Vec<Tensor> = named
            .iter()
            .map(|(name, t)| {
                let ok = t.isfinite();
                let ok = if name.starts_with("optimizer.second.") {
                    ok.logical_and(&t.ge(0.0))
                } else {
                    ok
                };
                ok.all().to_device(Device::Cpu)
            })
            .collect();
        let flags = Vec::<bool>::try_from(Tensor::stack(&flags, 0).to_kind(Kind::Bool))?;
        match flags.iter().position(|ok| !ok) {
            None => Ok(()),
            Some(i) => {
                let name = named[i].0;
                let what = if name.starts_with("optimizer.second.") {
                    "a negative, NaN or Inf value"
                } else {
                    "NaN or Inf"
                };
                Err(ckpt_error(path, format!("{name} holds {what}")))
            }
        }
    }
}
