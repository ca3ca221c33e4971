//! The host's own communicator (NCCL, Gloo, torch.distributed, MPI, ...) behind one C callback:
//! an in-place sum of a buffer over all ranks.

use super::Communicator;
use crate::dlpack::{dl_device, dl_dtype, DLDataType, DLDevice};
use crate::error::{Error, Result, Status};
use std::ffi::c_void;
use tch::{Device, Tensor};

/// `fn(userdata, buffer, count, dtype, device) -> 0 on success`: sum `count` elements of
/// `buffer` over all ranks, in place, before returning.
pub type AllreduceFn =
    unsafe extern "C" fn(*mut c_void, *mut c_void, usize, DLDataType, DLDevice) -> i32;
pub type FreeFn = unsafe extern "C" fn(*mut c_void);

pub struct HostCallback {
    rank: usize,
    size: usize,
    reduce: AllreduceFn,
    userdata: *mut c_void,
    free: Option<FreeFn>,
}

// SAFETY: the host's contract (adpo.h) is that the callback and its userdata may be used from
// the thread that calls the trainer, which can change between calls.
unsafe impl Send for HostCallback {}

impl HostCallback {
    /// Takes ownership of `userdata` whatever the outcome: on error it is freed at once.
    pub fn new(
        rank: i32,
        size: i32,
        reduce: AllreduceFn,
        userdata: *mut c_void,
        free: Option<FreeFn>,
    ) -> Result<HostCallback> {
        let cb = HostCallback {
            rank: rank.max(0) as usize,
            size: size.max(0) as usize,
            reduce,
            userdata,
            free,
        };
        if size < 1 || rank < 0 || rank >= size {
            return Err(Error::invalid(format!(
                "rank {rank} and world_size {size}: need world_size >= 1 and 0 <= rank < world_size"
            )));
        }
        Ok(cb)
    }
}

impl Drop for HostCallback {
    fn drop(&mut self) {
        if let Some(free) = self.free {
            // SAFETY: the host gave us this pair to call once when done.
            unsafe { free(self.userdata) };
        }
    }
}

impl Communicator for HostCallback {
    fn rank(&self) -> usize {
        self.rank
    }
    fn size(&self) -> usize {
        self.size
    }
    fn name(&self) -> &'static str {
        "host callback"
    }

    fn all_reduce_sum(&mut self, buf: &mut Tensor) -> Result<()> {
        super::float_bits(buf.kind())?; // the callback's contract: float32 or float64
        assert!(buf.is_contiguous(), "collective buffers are flat copies");
        let (dtype, device) = (dl_dtype(buf.kind())?, dl_device(buf.device())?);
        if let Device::Cuda(i) = buf.device() {
            // The callback may use any stream: the buffer must be complete before it runs.
            tch::Cuda::synchronize(i as i64);
        }
        // SAFETY: the buffer is a live contiguous tensor of numel elements of that dtype.
        let rc =
            unsafe { (self.reduce)(self.userdata, buf.data_ptr(), buf.numel(), dtype, device) };
        if rc != 0 {
            return Err(Error::new(
                Status::Communication,
                format!("the host's all-reduce callback returned {rc}"),
            ));
        }
        Ok(())
    }
}
