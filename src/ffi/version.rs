//! Versions, CUDA discovery, strings returned by adpo, and the boundary self-test.

// Section of include/adpo.h: Version and utilities
// Run-time versions (check adpo_abi_version() against ADPO_ABI_VERSION), the CUDA device
// count, and the free function for strings adpo hands out.

use super::boundary::{call, infallible};
use super::error::adpo_error;
use crate::error::{Error, Status};
use crate::version::{version_string, ADPO_ABI_VERSION};
use std::ffi::{c_char, CString};
use std::sync::OnceLock;

/// "adpo X.Y.Z (tch A.B.C, libtorch V)". Static storage: do not free.
#[no_mangle]
pub extern "C" fn adpo_version() -> *const c_char {
    infallible(c"adpo".as_ptr(), || {
        static VERSION: OnceLock<CString> = OnceLock::new();
        VERSION
            .get_or_init(|| CString::new(version_string()).unwrap_or_default())
            .as_ptr()
    })
}

/// The ABI version of the loaded library; equals ADPO_ABI_VERSION of a matching header.
#[no_mangle]
pub extern "C" fn adpo_abi_version() -> u32 {
    infallible(ADPO_ABI_VERSION, || ADPO_ABI_VERSION)
}

/// Number of CUDA devices libtorch can use (0 on a machine without CUDA).
#[no_mangle]
pub extern "C" fn adpo_cuda_device_count() -> i32 {
    infallible(0, || {
        if tch::Cuda::is_available() {
            tch::Cuda::device_count() as i32
        } else {
            0
        }
    })
}

/// Fixes the number of threads libtorch's CPU kernels use, for the whole process (every model
/// and trainer). Until it is called, each call uses the cores other processes leave idle, at
/// most one per core within the cgroup's CPU quota (README, "Threads"); fix the count when the
/// host's own threads load the CPU. `n` must be in [1, 4096]: anything else is
/// ADPO_STATUS_INVALID_ARGUMENT. The objective's fused CPU kernel uses its own pool, sized by
/// RAYON_NUM_THREADS at first use.
#[no_mangle]
pub extern "C" fn adpo_set_num_threads(n: i32, err: *mut *mut adpo_error) -> Status {
    call(err, || crate::runtime::set_num_threads(n))
}

/// The number of threads libtorch's CPU kernels use (see adpo_set_num_threads).
#[no_mangle]
pub extern "C" fn adpo_num_threads() -> i32 {
    infallible(0, crate::runtime::num_threads)
}

/// Frees a string that adpo returned with ownership (e.g. adpo_objective_metrics_json). NULL is
/// a no-op.
#[no_mangle]
pub extern "C" fn adpo_string_free(s: *mut c_char) {
    infallible((), || {
        if !s.is_null() {
            // SAFETY: s came from CString::into_raw in adpo and is freed once (caller contract).
            drop(unsafe { CString::from_raw(s) });
        }
    })
}

/// Test hook, not for applications: deliberately panics inside the boundary, returns
/// ADPO_STATUS_PANIC and never unwinds into the caller. The bindings' tests use it to check
/// their handling of ADPO_STATUS_PANIC.
#[no_mangle]
pub extern "C" fn adpo_test_panic(err: *mut *mut adpo_error) -> Status {
    call(err, || -> Result<(), Error> {
        panic!("adpo_test_panic was called")
    })
}
