//! MPI as the communicator (the cargo feature `mpi`), through the C shim csrc/mpi_shim.c.

use super::Communicator;
use crate::error::{Error, Result, Status};
use std::ffi::{c_char, c_int, c_void, CStr};
use tch::{Device, Tensor};

extern "C" {
    fn adpo_mpi_shim_ensure_init() -> c_int;
    fn adpo_mpi_shim_comm_dup(comm: *const c_void, out: *mut *mut c_void) -> c_int;
    fn adpo_mpi_shim_rank_size(comm: *mut c_void, rank: *mut c_int, size: *mut c_int) -> c_int;
    fn adpo_mpi_shim_allreduce_sum(
        comm: *mut c_void,
        buf: *mut c_void,
        n: usize,
        bits: c_int,
    ) -> c_int;
    fn adpo_mpi_shim_comm_free(comm: *mut c_void);
    fn adpo_mpi_shim_error_string(code: c_int, out: *mut c_char, capacity: c_int);
}

fn check(rc: c_int, what: &str) -> Result<()> {
    if rc == 0 {
        return Ok(());
    }
    let mut text = [0 as c_char; 512];
    // SAFETY: the shim writes at most 512 bytes, NUL-terminated.
    let message = unsafe {
        adpo_mpi_shim_error_string(rc, text.as_mut_ptr(), text.len() as c_int);
        CStr::from_ptr(text.as_ptr()).to_string_lossy().into_owned()
    };
    Err(Error::new(
        Status::Communication,
        format!("{what}: MPI error {rc}: {message}"),
    ))
}

/// A private duplicate of the host's communicator, so adpo's collectives never match the
/// host's own messages.
pub struct MpiComm {
    comm: *mut c_void,
    rank: usize,
    size: usize,
}

// SAFETY: MPI is initialised with MPI_THREAD_MULTIPLE by adpo (or by the host, whose level it
// chose), and a trainer's calls are serialised by its lock.
unsafe impl Send for MpiComm {}

impl MpiComm {
    /// `comm`: the address of an MPI_Comm, or NULL for MPI_COMM_WORLD. Collective: every rank
    /// of that communicator must call it. Initialises MPI if the host has not.
    ///
    /// # Safety
    /// `comm` is NULL or points to a valid MPI_Comm of the MPI library adpo was built with.
    pub unsafe fn join(comm: *const c_void) -> Result<MpiComm> {
        unsafe {
            check(adpo_mpi_shim_ensure_init(), "MPI_Init_thread")?;
            let mut dup = std::ptr::null_mut();
            check(adpo_mpi_shim_comm_dup(comm, &mut dup), "MPI_Comm_dup")?;
            let (mut rank, mut size) = (0, 0);
            if let Err(e) = check(
                adpo_mpi_shim_rank_size(dup, &mut rank, &mut size),
                "MPI_Comm_rank",
            ) {
                adpo_mpi_shim_comm_free(dup);
                return Err(e);
            }
            Ok(MpiComm {
                comm: dup,
                rank: rank as usize,
                size: size as usize,
            })
        }
    }
}

impl Drop for MpiComm {
    fn drop(&mut self) {
        // SAFETY: comm came from adpo_mpi_shim_comm_dup and is freed once.
        unsafe { adpo_mpi_shim_comm_free(self.comm) };
    }
}

impl Communicator for MpiComm {
    fn rank(&self) -> usize {
        self.rank
    }
    fn size(&self) -> usize {
        self.size
    }
    fn name(&self) -> &'static str {
        "mpi"
    }

    fn all_reduce_sum(&mut self, buf: &mut Tensor) -> Result<()> {
        let bits = super::float_bits(buf.kind())?;
        // Debian's OpenMPI is not CUDA-aware: device buffers go through host memory.
        let on_host = buf.device() == Device::Cpu;
        let host = if on_host {
            buf.shallow_clone()
        } else {
            buf.to_device(Device::Cpu)
        };
        assert!(host.is_contiguous(), "collective buffers are flat copies");
        // SAFETY: host is a live contiguous tensor of numel elements of `bits` width.
        check(
            unsafe {
                adpo_mpi_shim_allreduce_sum(self.comm, host.data_ptr(), host.numel(), bits as c_int)
            },
            "MPI_Allreduce",
        )?;
        if !on_host {
            buf.copy_(&host);
        }
        Ok(())
    }
}
