//! Everything a trainer carries from one step to the next, as one list of named tensors: the
//! policy's weights, the optimizer's moments and step count, the anchor copy, the
//! kl_triggered window and hard-copy count. Save, load and the rank-0 broadcast all go
//! through it, so they cannot disagree about what the state is.
//!
//! Names: weights under the model's own parameter names; `optimizer.first.NAME`,
//! `optimizer.second.NAME`, `optimizer.steps`; `anchor.NAME` (the EMA / KL copy),
//! `anchor.window`, `anchor.hard_copies`.

use crate::anchor::Anchor;
use crate::checkpoint::{self, Named};
use crate::error::{Error, Result, Status};
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
}

fn ckpt_error(path: &Path, what: impl std::fmt::Display) -> Error {
    Error::new(
        Status::Checkpoint,
        format!("checkpoint {}: {what}", path.display()),
    )
}

impl TrainerState {
    /// The live state (shallow clones: shared storage).
    pub fn of(policy: &Model, optimizer: &Optimizer, anchor: &Anchor) -> TrainerState {
        let weights: Named = policy
            .params()
            .iter()
            .map(|(k, t)| (k.clone(), t.shallow_clone()))
            .collect();
        let mut tensors: Named = optimizer
            .state(policy.params())
            .into_iter()
            .filter(|(k, _)| k != "optimizer.steps")
            .collect();
        if let Some(copy) = &anchor.copy {
            tensors.extend(
                copy.params()
                    .iter()
                    .map(|(k, t)| (format!("anchor.{k}"), t.shallow_clone())),
            );
        }
        TrainerState {
            weights,
            tensors,
            steps: optimizer.steps(),
            hard_copies: anchor.hard_copies,
            window: anchor.window(),
        }
    }

    /// The weights file and the state file of a checkpoint.
    pub fn to_files(&self) -> (Named, Named) {
        let mut state: Named = self
            .tensors
            .iter()
            .map(|(k, t)| (k.clone(), t.shallow_clone()))
            .collect();
        state.push((
            "optimizer.steps".into(),
            Tensor::from_slice(&[self.steps as i64]),
        ));
        state.push(("anchor.window".into(), Tensor::from_slice(&self.window)));
        state.push((
            "anchor.hard_copies".into(),
            Tensor::from_slice(&[self.hard_copies as i64]),
        ));
        let weights = self
            .weights
            .iter()
            .map(|(k, t)| (k.clone(), t.shallow_clone()))
            .collect();
        (weights, state)
    }

    /// Reads the files of a checkpoint as a state shaped like `self` (the live one): every
    /// name, shape and dtype must match, and nothing else may be there. Nothing is applied.
    pub fn from_files(&self, path: &Path, weights: Named, state: Named) -> Result<TrainerState> {
        checkpoint::check_matches(path, "parameter", &self.weights, &weights)?;
        let scalars = ["optimizer.steps", "anchor.window", "anchor.hard_copies"];
        let (scalar, mut tensors): (Named, Named) = state
            .into_iter()
            .partition(|(k, _)| scalars.contains(&k.as_str()));
        // A checkpoint of an EMA / KL-triggered run resumes under an anchor without a copy.
        if !self.tensors.iter().any(|(k, _)| k.starts_with("anchor.")) {
            tensors.retain(|(k, _)| !k.starts_with("anchor."));
        }
        checkpoint::check_matches(path, "trainer state tensor", &self.tensors, &tensors)?;
        let find = |name: &str| {
            checkpoint::find(&scalar, name)
                .ok_or_else(|| ckpt_error(path, format!("trainer state lacks {name}")))
        };
        let count = |name: &str| -> Result<u64> {
            let t = find(name)?;
            if t.kind() != Kind::Int64 || t.numel() != 1 {
                return Err(ckpt_error(path, format!("{name} is not one int64")));
            }
            Ok(t.int64_value(&[0]) as u64)
        };
        let window = find("anchor.window")?;
        if window.kind() != Kind::Double || window.dim() != 1 {
            return Err(ckpt_error(path, "anchor.window is not a float64 vector"));
        }
        Ok(TrainerState {
            weights,
            tensors,
            steps: count("optimizer.steps")?,
            hard_copies: count("anchor.hard_copies")?,
            window: Vec::<f64>::try_from(window)?,
        })
    }

    /// Copies `loaded` (checked by `from_files`) into this live state's tensors; returns the
    /// scalars for the optimizer and anchor to take.
    pub fn copy_from(&self, loaded: &TrainerState) {
        tch::no_grad(|| {
            let live = self.weights.iter().chain(&self.tensors);
            for (name, t) in live {
                let src = checkpoint::find(&loaded.weights, name)
                    .or_else(|| checkpoint::find(&loaded.tensors, name))
                    .expect("checked by from_files");
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

    /// The scalars as one float64 vector of fixed length (steps, hard copies, window length,
    /// the window padded to `capacity`), and back: ranks broadcast equal-sized tensors.
    pub fn scalars(&self, capacity: usize) -> Vec<f64> {
        let mut v = vec![
            self.steps as f64,
            self.hard_copies as f64,
            self.window.len() as f64,
        ];
        v.extend((0..capacity).map(|i| self.window.get(i).copied().unwrap_or(0.0)));
        v
    }

    pub fn set_scalars(&mut self, v: &[f64], capacity: usize) {
        self.steps = v[0] as u64;
        self.hard_copies = v[1] as u64;
        let len = (v[2] as usize).min(capacity);
        self.window = v[3..3 + len].to_vec();
    }

    /// Hands the scalars to the optimizer and the anchor.
    pub fn apply_scalars(&self, optimizer: &mut Optimizer, anchor: &mut Anchor) {
        optimizer.set_steps(self.steps);
        anchor.hard_copies = self.hard_copies;
        anchor.set_window(&self.window);
    }
}
