//! Trainer checkpoints: the state of `state.rs` written with `crate::checkpoint` (one file:
//! weights and trainer state), and read back with everything checked before anything changes.

use super::{Trainer, TrainerState};
use crate::checkpoint;
use crate::error::{catch_torch, Result};
use std::path::Path;

impl Trainer {
    /// Writes the checkpoint. In data-parallel training only rank 0 writes (the replicas are
    /// identical); every rank calls this and every rank returns rank 0's outcome.
    pub fn save(&mut self, path: &Path) -> Result<()> {
        let root = self.world().0 == 0;
        let local = if root {
            self.write_checkpoint(path)
        } else {
            Ok(())
        };
        match self.dist.as_mut() {
            None => local,
            Some(d) => d.agree(local.as_ref().err(), Vec::new()).map(|_| ()),
        }
    }

    fn write_checkpoint(&self, path: &Path) -> Result<()> {
        catch_torch(|| {
            let policy = self.policy.lock();
            let state = TrainerState::of(&policy, &self.optimizer, &self.anchor, self.sample_rng);
            checkpoint::save(path, &state.to_named()?)
        })
    }

    /// Restores weights, optimizer and anchor state. Everything is checked before anything is
    /// changed: on error the trainer is as it was. In data-parallel training every rank calls
    /// this; rank 0 reads the file and sends the state to the others (which need not see the
    /// file), and every rank returns the same outcome.
    pub fn load(&mut self, path: &Path) -> Result<()> {
        if self.dist.is_none() {
            return self.read_checkpoint(path);
        }
        let local = if self.world().0 == 0 {
            self.read_checkpoint(path)
        } else {
            Ok(())
        };
        let dist = self.dist.as_mut().expect("checked above");
        dist.agree(local.as_ref().err(), Vec::new())?;
        self.sync_from_root()
    }

    fn read_checkpoint(&mut self, path: &Path) -> Result<()> {
        catch_torch(|| {
            let named = checkpoint::load(path)?;
            let policy_arc = self.policy.clone();
            let policy = policy_arc.lock();
            let live = TrainerState::of(&policy, &self.optimizer, &self.anchor, self.sample_rng);
            let loaded = live.from_named(path, named)?;
            // All checked: apply.
            live.copy_from(&loaded);
            policy.store_masters();
            self.anchor.store_masters();
            loaded.apply_scalars(&mut self.optimizer, &mut self.anchor, &mut self.sample_rng);
            Ok(())
        })
    }
}
