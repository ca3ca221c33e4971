//! Joining other ranks (data-parallel training): MPI or the host's all-reduce. On joining,
//! every rank takes rank 0's whole trainer state (`state.rs`).

use super::{Trainer, TrainerState};
use crate::distributed::{Backend, Communicator, Distributed};
use crate::error::{catch_torch, Error, Result};
use tch::{Device, Tensor};

impl Trainer {
    /// Joins the ranks of `comm` (collective: every rank calls it). Rank 0's weights, optimizer
    /// and anchor state are copied to every rank, so replicas that start different end
    /// identical; the models must have the same parameters on every rank.
    pub fn use_communicator(&mut self, comm: Box<dyn Communicator>) -> Result<()> {
        let device = self.policy.lock().device();
        self.dist = Some(Distributed::new(
            comm,
            self.cfg.distributed.bucket_bytes(),
            device,
        ));
        let synced = self.sync_from_root();
        if synced.is_err() {
            self.dist = None;
        }
        synced
    }

    /// Joins an MPI communicator: `comm` is the address of an MPI_Comm, NULL = MPI_COMM_WORLD.
    ///
    /// # Safety
    /// `comm` is NULL or points to a valid MPI_Comm of the MPI library adpo was built with.
    pub unsafe fn use_mpi(&mut self, comm: *const std::ffi::c_void) -> Result<()> {
        #[cfg(feature = "mpi")]
        {
            // SAFETY: the caller's contract, passed on.
            let comm = unsafe { crate::distributed::mpi::MpiComm::join(comm) }?;
            self.use_communicator(Box::new(comm))
        }
        #[cfg(not(feature = "mpi"))]
        {
            let _ = comm;
            Err(crate::distributed::no_mpi())
        }
    }

    /// (rank, number of ranks): (0, 1) in one process.
    pub fn world(&self) -> (usize, usize) {
        self.dist.as_ref().map_or((0, 1), |d| (d.rank(), d.size()))
    }

    /// Backend "host" configured, but no communicator registered yet.
    pub fn awaits_communicator(&self) -> bool {
        self.cfg.distributed.backend == Backend::Host && self.dist.is_none()
    }

    /// The host backend needs its callback before the first step.
    pub(super) fn check_communicator(&self) -> Result<()> {
        if self.awaits_communicator() {
            return Err(Error::invalid(
                "distributed backend \"host\": register the host's all-reduce callback \
                 before the first step",
            ));
        }
        Ok(())
    }

    /// Milliseconds spent in collectives since the last call.
    pub(super) fn take_reduce_time_ms(&mut self) -> f64 {
        self.dist
            .as_mut()
            .map_or(0.0, |d| d.take_reduce_time().as_secs_f64() * 1e3)
    }

    /// Every rank's trainer state becomes rank 0's.
    pub(super) fn sync_from_root(&mut self) -> Result<()> {
        let policy_arc = self.policy.clone();
        let policy = policy_arc.lock();
        let mut state = TrainerState::of(&policy, &self.optimizer, &self.anchor, self.sample_rng);
        let scalars = Tensor::from_slice(&state.scalars()).to_device(policy.device());
        let mut tensors = state.all_tensors();
        tensors.push(scalars.shallow_clone());
        let dist = self.dist.as_mut().expect("called with a communicator");
        check_same_shape_everywhere(dist, &tensors)?;
        catch_torch(|| dist.broadcast(&tensors))?;
        policy.store_masters();
        self.anchor.store_masters();
        let scalars = Vec::<f64>::try_from(scalars.to_device(Device::Cpu))?;
        state.set_scalars(&scalars);
        state.apply_scalars(&mut self.optimizer, &mut self.anchor, &mut self.sample_rng);
        Ok(())
    }
}

/// The same state everywhere (model and anchor mode), or the buckets would not line up.
fn check_same_shape_everywhere(dist: &mut Distributed, tensors: &[Tensor]) -> Result<()> {
    let (rank, size) = (dist.rank(), dist.size());
    let numel: usize = tensors.iter().map(|t| t.numel()).sum();
    let mut shapes = vec![0.0; 2 * size];
    shapes[2 * rank] = tensors.len() as f64;
    shapes[2 * rank + 1] = numel as f64;
    let shapes = dist.agree(None, shapes)?;
    if shapes.chunks(2).any(|s| s != &shapes[..2]) {
        let each: Vec<String> = shapes
            .chunks(2)
            .enumerate()
            .map(|(r, s)| format!("rank {r}: {} tensors, {} values", s[0], s[1]))
            .collect();
        return Err(Error::invalid(format!(
            "the trainer state differs across ranks ({}): load the same model with the same \
             anchor mode on every rank",
            each.join("; ")
        )));
    }
    Ok(())
}
