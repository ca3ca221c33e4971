//! Process-wide settings of the libtorch runtime adpo runs on: the number of intra-op threads.
//! Until the host fixes a count, each call uses the cores other processes leave idle, at most
//! libtorch's default lowered to the cgroup's CPU quota (cpu_budget.rs: on a busy machine
//! fewer threads are much faster). The objective's fused CPU kernel runs on rayon's pool,
//! sized by RAYON_NUM_THREADS when it first starts.

use crate::cpu_budget;
use crate::error::{Error, Result};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::OnceLock;

/// The most threads accepted (more than any machine adpo runs on has cores).
const MAX_THREADS: i32 = 4096;

/// The count the host asked for; 0 until it asks (the automatic count then).
static REQUESTED: AtomicI32 = AtomicI32::new(0);

/// The automatic count's ceiling: libtorch's default when adpo first ran, within the cgroup.
static CEILING: OnceLock<i32> = OnceLock::new();

fn ceiling() -> i32 {
    *CEILING.get_or_init(|| cpu_budget::ceiling(tch::get_num_threads()))
}

/// Sets libtorch's intra-op thread count for the whole process (every model and trainer).
pub fn set_num_threads(n: i32) -> Result<()> {
    if !(1..=MAX_THREADS).contains(&n) {
        return Err(Error::invalid(format!(
            "the thread count must be in [1, {MAX_THREADS}], got {n}"
        )));
    }
    REQUESTED.store(n, Ordering::SeqCst);
    tch::set_num_threads(n);
    Ok(())
}

/// libtorch's intra-op thread count: the requested one, once set; else the automatic count.
pub fn num_threads() -> i32 {
    match REQUESTED.load(Ordering::SeqCst) {
        0 => cpu_budget::threads_now(ceiling()),
        n => n,
    }
}

/// Applies the requested count to the calling thread. libtorch's count lives in OpenMP's
/// per-thread setting, and libtorch copies its global only into threads that had not run it
/// yet: a host thread that ran adpo before the count was set (a Go goroutine's OS thread, a
/// pool worker) would keep the old count. Every C-ABI call runs this first; without a
/// requested count it applies the automatic one, which follows the load.
pub fn apply_to_this_thread() {
    let n = match REQUESTED.load(Ordering::Relaxed) {
        0 => cpu_budget::threads_now(ceiling()),
        n => n,
    };
    if tch::get_num_threads() != n {
        tch::set_num_threads(n);
    }
}
