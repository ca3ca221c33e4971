//! C ABI of data-parallel training (src/distributed): which communicator a trainer uses.

// Section of include/adpo.h: Data-parallel training
// Many processes, each with its own groups, over MPI or the host's own all-reduce: the
// update equals that of one process holding every group.

use super::args::write_out;
use super::boundary::{call, call_on, infallible, with_handle};
use super::error::adpo_error;
use super::trainer::adpo_trainer;
use crate::distributed::host_callback::HostCallback;
use crate::dlpack::{DLDataType, DLDevice};
use crate::error::{Error, Status};
use std::ffi::c_void;

/// The host's all-reduce: sum `count` elements of `buffer` over all ranks, in place, and return
/// 0 when the result is in `buffer` (any other value is an error). `dtype` is float32 or
/// float64; `device` is where `buffer` lives (kDLCPU, or kDLCUDA after adpo synchronised its
/// stream: e.g. ncclAllReduce on your stream, then wait for it). Called for each gradient
/// bucket, for the small metric and status reductions, and to copy rank 0's state to the other
/// ranks; always from the thread that called the trainer.
pub type adpo_allreduce_fn = Option<
    unsafe extern "C" fn(
        userdata: *mut c_void,
        buffer: *mut c_void,
        count: usize,
        dtype: DLDataType,
        device: DLDevice,
    ) -> i32,
>;

/// Frees the userdata of an all-reduce callback.
pub type adpo_userdata_free_fn = Option<unsafe extern "C" fn(userdata: *mut c_void)>;

/// Data-parallel training over MPI: `mpi_comm` is the address of an `MPI_Comm` (NULL:
/// MPI_COMM_WORLD), which adpo duplicates for its own traffic. Collective: every rank of the
/// communicator calls it; MPI is initialised if the host has not done it. Rank 0's weights,
/// optimizer and anchor state are copied to every rank, so replicas that start different end
/// identical; the policy and the anchor mode must be the same on every rank. On error the
/// trainer is left training alone (its previous communicator, if any, is released). A build
/// without MPI (the cargo feature `mpi`, which make enables) returns ADPO_STATUS_UNSUPPORTED; see
/// adpo_has_mpi(). Trainer config {"distributed": {"backend": "mpi"}} does the same with
/// MPI_COMM_WORLD at adpo_trainer_new.
#[no_mangle]
pub extern "C" fn adpo_trainer_use_mpi(
    trainer: *mut adpo_trainer,
    mpi_comm: *const c_void,
    err: *mut *mut adpo_error,
) -> Status {
    call_on(err, trainer as *const adpo_trainer, "trainer", |t| {
        // SAFETY: NULL or the address of an MPI_Comm (the documented contract above).
        unsafe { t.inner.lock().use_mpi(mpi_comm) }
    })
}

/// Data-parallel training over the host's own communicator (NCCL, Gloo, torch.distributed,
/// MPI, ...): this process is `rank` of `world_size`, and `allreduce` sums buffers over them.
/// adpo owns `userdata` from this call on, whatever its outcome: `free_userdata` (may be NULL)
/// is called exactly once, when the trainer is freed or another communicator replaces this
/// one, or before returning an error. Collective, like adpo_trainer_use_mpi (rank 0's state is
/// copied to every rank; on error the trainer is left training alone).
#[no_mangle]
pub extern "C" fn adpo_trainer_use_allreduce(
    trainer: *mut adpo_trainer,
    rank: i32,
    world_size: i32,
    allreduce: adpo_allreduce_fn,
    userdata: *mut c_void,
    free_userdata: adpo_userdata_free_fn,
    err: *mut *mut adpo_error,
) -> Status {
    call(err, || {
        // Ownership of userdata passes here, before any check can fail: a HostCallback frees
        // it when dropped (also when HostCallback::new refuses the rank, or when the trainer
        // handle is NULL), else it is freed right here.
        let owned = match allreduce {
            Some(f) => HostCallback::new(rank, world_size, f, userdata, free_userdata),
            None => {
                if let Some(free) = free_userdata {
                    // SAFETY: the host handed us userdata and its free function.
                    unsafe { free(userdata) };
                }
                Err(Error::null("allreduce"))
            }
        };
        with_handle(trainer as *const adpo_trainer, "trainer", |t| {
            t.inner.lock().use_communicator(Box::new(owned?))
        })
    })
}

/// This trainer's rank and number of ranks (0 and 1 when it trains alone). Either output may be
/// NULL.
#[no_mangle]
pub extern "C" fn adpo_trainer_world(
    trainer: *const adpo_trainer,
    out_rank: *mut i32,
    out_world_size: *mut i32,
    err: *mut *mut adpo_error,
) -> Status {
    call_on(err, trainer, "trainer", |t| {
        let (rank, size) = t.inner.lock().world();
        if !out_rank.is_null() {
            write_out(out_rank, "out_rank", rank as i32)?;
        }
        if !out_world_size.is_null() {
            write_out(out_world_size, "out_world_size", size as i32)?;
        }
        Ok(())
    })
}

/// True when this build of adpo can train over MPI (built with the cargo feature `mpi`).
#[no_mangle]
pub extern "C" fn adpo_has_mpi() -> bool {
    infallible(false, || cfg!(feature = "mpi"))
}
