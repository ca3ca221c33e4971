//! Everything a trainer carries from one step to the next, as one list of named tensors: the
//! policy's weights, the optimizer's moments and step count, the anchor copy, the
//! kl_triggered window and hard-copy count, the sampler's generator. Save, load and the rank-0
//! broadcast all go through it, so they cannot disagree about what the state is.
//!
//! Names in a checkpoint: weights under the model's own parameter names; the rest under
//! `checkpoint::STATE_PREFIX`: `optimizer.first.NAME`, `optimizer.second.NAME`,
//! `optimizer.steps`; `anchor.NAME` (the EMA / KL copy), `anchor.window`,
//! `anchor.hard_copies`; `sampler.rng`.

use crate::anchor::{Anchor, AnchorConfig};
use crate::checkpoint::{self, ckpt_error, Named, STATE_PREFIX};
use crate::error::{Error, Result};
use crate::model::Model;
use crate::optimizer::Optimizer;
use std::path::Path;
use tch::{Kind, Tensor};

/// The trainer's state. Built by [`TrainerState::of`], its tensors share storage with the live
/// trainer: writing into them (a broadcast) changes the trainer.
pub struct TrainerState {
    /// Policy weights.
    pub weights: Named,
    /// Optimizer moments, then the anchor copy's weights.
    pub tensors: Named,
    pub steps: u64,
    pub hard_copies: u64,
    pub window: Vec<f64>,
    /// The sampler's generator (`Trainer::sample_rng`).
    pub sample_rng: u64,
    /// Most drifts the kl_triggered window holds (0 for the other anchors, which keep none).
    pub window_capacity: usize,
}

/// The scalar entries of the state (without the prefix).
const SCALARS: [&str; 4] = [
    "optimizer.steps",
    "anchor.window",
    "anchor.hard_copies",
    "sampler.rng",
];

impl TrainerState {
    /// The live state (shallow clones: shared storage).
    pub fn of(policy: &Model, optimizer: &Optimizer, anchor: &Anchor, sample_rng: u64) -> Self {
        let weights: Named = policy
            .values()
            .iter()
            .map(|(k, t)| (k.clone(), t.shallow_clone()))
            .collect();
        let mut tensors: Named = optimizer
            .state(policy.values())
            .into_iter()
            .filter(|(k, _)| k != "optimizer.steps")
            .collect();
        if let Some(copy) = &anchor.copy {
            tensors.extend(
                copy.values()
                    .iter()
                    .map(|(k, t)| (format!("anchor.{k}"), t.shallow_clone())),
            );
        }
        let window_capacity = match anchor.cfg {
            AnchorConfig::KlTriggered { window, .. } => window,
            _ => 0,
        };
        TrainerState {
            weights,
            tensors,
            steps: optimizer.steps(),
            hard_copies: anchor.hard_copies,
            window: anchor.window(),
            sample_rng,
            window_capacity,
        }
    }

    /// The tensors of a checkpoint: weights under their names, the rest under the prefix.
    pub fn to_named(&self) -> Result<Named> {
        if let Some((name, _)) = self
            .weights
            .iter()
            .find(|(k, _)| k.starts_with(STATE_PREFIX))
        {
            return Err(Error::invalid(format!(
                "cannot save parameter {name}: names starting with {STATE_PREFIX} are reserved \
                 for the trainer state"
            )));
        }
        let scalars = [
            Tensor::from_slice(&[self.steps as i64]),
            Tensor::from_slice(&self.window),
            Tensor::from_slice(&[self.hard_copies as i64]),
            // The generator's bits, as int64 (safetensors readers know no uint64).
            Tensor::from_slice(&[self.sample_rng as i64]),
        ];
        let state = self
            .tensors
            .iter()
            .map(|(k, t)| (k.clone(), t.shallow_clone()))
            .chain(SCALARS.iter().map(|k| k.to_string()).zip(scalars));
        Ok(self
            .weights
            .iter()
            .map(|(k, t)| (k.clone(), t.shallow_clone()))
            .chain(state.map(|(k, t)| (format!("{STATE_PREFIX}{k}"), t)))
            .collect())
    }

    /// Reads a checkpoint's tensors as a state shaped like `self` (the live one): every name,
    /// shape and dtype must match, nothing else may be there, and every value must be one a
    /// trainer can hold (`validate.rs`). Nothing is applied.
    pub fn from_named(&self, path: &Path, named: Named) -> Result<TrainerState> {
        let (state, weights): (Named, Named) = named
            .into_iter()
            .partition(|(k, _)| k.starts_with(STATE_PREFIX));
        let state = state
            .into_iter()
            .map(|(k, t)| (k[STATE_PREFIX.len()..].to_string(), t));
        checkpoint::check_matches(path, "parameter", &self.weights, &weights)?;
        let (scalar, mut tensors): (Named, Named) =
            state.partition(|(k, _)| SCALARS.contains(&k.as_str()));
        // A checkpoint of an EMA / KL-triggered run resumes under an anchor without a copy.
        if !self.tensors.iter().any(|(k, _)| k.starts_with("anchor.")) {
            tensors.retain(|(k, _)| !k.starts_with("anchor."));
        }
        checkpoint::check_matches(path, "trainer state tensor", &self.tensors, &tensors)?;
        let find = |name: &str| {
            checkpoint::find(&scalar, name)
                .ok_or_else(|| ckpt_error(path, format!("trainer state lacks {name}")))
        };
        let int = |name: &str| -> Result<i64> {
            let t = find(name)?;
            if t.kind() != Kind::Int64 || t.numel() != 1 {
                return Err(ckpt_error(path, format!("{name} is not one int64")));
            }
            Ok(t.int64_value(&[0]))
        };
        let window = find("anchor.window")?;
        if window.kind() != Kind::Double || window.dim() != 1 {
            return Err(ckpt_error(path, "anchor.window is not a float64 vector"));
        }
        let loaded = TrainerState {
            weights,
            tensors,
            steps: super::validate::count(path, "optimizer.steps", int("optimizer.steps")?)?,
            hard_copies: super::validate::count(
                path,
                "anchor.hard_copies",
                int("anchor.hard_copies")?,
            )?,
            window: Vec::<f64>::try_from(window)?,
            sample_rng: int("sampler.rng")? as u64,
            window_capacity: self.window_capacity,
        };
        loaded.validate(path)?;
        Ok(loaded)
    }

    /// Copies `loaded` (checked by `from_named`) into this live state's tensors.
    pub fn copy_from(&self, loaded: &TrainerState) {
        tch::no_grad(|| {
            let live = self.weights.iter().chain(&self.tensors);
            for (name, t) in live {
                let src = checkpoint::find(&loaded.weights, name)
                    .or_else(|| checkpoint::find(&loaded.tensors, name))
                    .expect("checked by from_named");
                t.shallow_clone().copy_(src);
            }
        });
    }

    /// Every tensor, weights first (for a broadcast).
    pub fn all_tensors(&self) -> Vec<Tensor> {
        self.weights
            .iter()
            .chain(&self.tensors)
            .map(|(_, t)| t.shallow_clone())
            .collect()
    }

    /// The scalars as one float64 vector of fixed length (steps, hard copies, the generator's
    /// two 32-bit halves, window length, the window padded to its capacity), and back: ranks
    /// broadcast equal-sized tensors, and each value is exact in a float64.
    pub fn scalars(&self) -> Vec<f64> {
        let mut v = vec![
            self.steps as f64,
            self.hard_copies as f64,
            (self.sample_rng >> 32) as f64,
            (self.sample_rng & 0xFFFF_FFFF) as f64,
            self.window.len() as f64,
        ];
        v.extend((0..self.window_capacity).map(|i| self.window.get(i).copied().unwrap_or(0.0)));
        v
    }

    pub fn set_scalars(&mut self, v: &[f64]) {
        self.steps = v[0] as u64;
        self.hard_copies = v[1] as u64;
        self.sample_rng = ((v[2] as u64) << 32) | v[3] as u64;
        let len = (v[4] as usize).min(self.window_capacity);
        self.window = v[5..5 + len].to_vec();
    }

    /// Hands the scalars to the optimizer, the anchor and the sampler.
    pub fn apply_scalars(&self, optimizer: &mut Optimizer, anchor: &mut Anchor, rng: &mut u64) {
        optimizer.set_steps(self.steps);
        anchor.hard_copies = self.hard_copies;
        // An anchor without a window (the checkpoint came from a kl_triggered run) keeps none.
        let window = if self.window_capacity == 0 {
            &[][..]
        } else {
            &self.window
        };
        anchor.set_window(window);
        *rng = self.sample_rng;
    }
}
