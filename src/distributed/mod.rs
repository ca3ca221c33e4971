//! Data-parallel training: each rank holds whole groups, and the only collectives a step needs
//! are an all-reduce of the gradients (in flattened buckets) and a small one that agrees on the
//! outcome and reduces the metrics. The transport is an existing engine: MPI (the cargo feature
//! `mpi`, src/distributed/mpi.rs) or the host's own all-reduce callback (host_callback.rs).
//!
//! Every collective here is built on one primitive, an in-place element-wise sum: a broadcast
//! from rank 0 is a sum in which the other ranks contribute zeros (x + 0 is exact), and a gather
//! is a sum in which each rank fills only its own slot.

mod agree;
mod buckets;
pub mod host_callback;
#[cfg(feature = "mpi")]
pub mod mpi;

pub use agree::{GlobalStep, LocalStep, StepWeights};

use crate::error::{Error, Result, Status};
use serde::Deserialize;
use std::time::{Duration, Instant};
use tch::{Device, Tensor};

/// A group of processes that can sum buffers element-wise.
pub trait Communicator: Send {
    fn rank(&self) -> usize;
    fn size(&self) -> usize;
    /// In place: `buf` (contiguous, f32 or f64, on any device) becomes the element-wise sum of
    /// every rank's `buf`. Every rank calls it with the same number of elements.
    fn all_reduce_sum(&mut self, buf: &mut Tensor) -> Result<()>;
    /// For messages: "mpi", "host callback".
    fn name(&self) -> &'static str;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Backend {
    /// One process (the default).
    #[default]
    None,
    /// MPI_COMM_WORLD, joined when the trainer is created (adpo_trainer_use_mpi picks another).
    Mpi,
    /// The host registers an all-reduce callback (adpo_trainer_use_allreduce) before the first
    /// step; stepping without one is an error rather than silently training alone.
    Host,
}

/// The trainer's `distributed` key.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DistributedConfig {
    pub backend: Backend,
    /// Gradient bucket size in MiB (as PyTorch DDP's bucket_cap_mb): one all-reduce per bucket.
    pub bucket_mb: f64,
}

impl Default for DistributedConfig {
    fn default() -> Self {
        DistributedConfig {
            backend: Backend::None,
            bucket_mb: 25.0,
        }
    }
}

impl DistributedConfig {
    pub fn validate(&self) -> Result<()> {
        if !(self.bucket_mb.is_finite() && self.bucket_mb > 0.0) {
            return Err(Error::config(format!(
                "distributed.bucket_mb must be > 0, got {}",
                self.bucket_mb
            )));
        }
        #[cfg(not(feature = "mpi"))]
        if self.backend == Backend::Mpi {
            return Err(no_mpi());
        }
        Ok(())
    }

    pub fn bucket_bytes(&self) -> usize {
        ((self.bucket_mb * 1024.0 * 1024.0) as usize).max(1)
    }
}

/// Bit width of a collective buffer's dtype (the wire carries float32 and float64 only).
pub(crate) fn float_bits(kind: tch::Kind) -> Result<u8> {
    match kind {
        tch::Kind::Float => Ok(32),
        tch::Kind::Double => Ok(64),
        k => Err(Error::invalid(format!("cannot all-reduce dtype {k:?}"))),
    }
}

/// The error of a build without MPI support.
pub fn no_mpi() -> Error {
    Error::new(
        Status::Unsupported,
        "this build of adpo has no MPI support: install OpenMPI (scripts/setup does) and build \
         with the cargo feature `mpi` (make does: cargo build --release --features mpi)",
    )
}

/// A communicator with the trainer's bucket size, and the time spent in collectives.
pub struct Distributed {
    comm: Box<dyn Communicator>,
    bucket_bytes: usize,
    /// Where the policy's gradients live; the small collectives use it too.
    device: Device,
    reduce_time: Duration,
}

impl Distributed {
    pub fn new(comm: Box<dyn Communicator>, bucket_bytes: usize, device: Device) -> Self {
        Distributed {
            comm,
            bucket_bytes,
            device,
            reduce_time: Duration::ZERO,
        }
    }

    pub fn rank(&self) -> usize {
        self.comm.rank()
    }
    pub fn size(&self) -> usize {
        self.comm.size()
    }
    pub fn backend_name(&self) -> &'static str {
        self.comm.name()
    }

    /// Time spent in collectives since the last call (and resets it).
    pub fn take_reduce_time(&mut self) -> Duration {
        std::mem::take(&mut self.reduce_time)
    }

    /// The one primitive, timed.
    fn sum(&mut self, buf: &mut Tensor) -> Result<()> {
        let start = Instant::now();
        let out = self.comm.all_reduce_sum(buf);
        self.reduce_time += start.elapsed();
        out.map_err(|e| {
            Error::new(
                Status::Communication,
                format!(
                    "{} all-reduce on rank {} of {}: {}",
                    self.comm.name(),
                    self.rank(),
                    self.size(),
                    e.message
                ),
            )
        })
    }
}
