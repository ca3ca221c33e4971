//! Process-wide settings of the libtorch runtime adpo runs on: the number of intra-op threads
//! (libtorch's default is one per core; on a busy or small machine fewer is often faster, e.g.
//! the 2-core demo machine under load). The objective's fused CPU kernel runs on rayon's pool,
//! sized by RAYON_NUM_THREADS when it first starts.

use crate::error::{Error, Result};

/// The most threads accepted (more than any machine adpo runs on has cores).
const MAX_THREADS: i32 = 4096;

/// Sets libtorch's intra-op thread count for the whole process (every model and trainer).
pub fn set_num_threads(n: i32) -> Result<()> {
    if !(1..=MAX_THREADS).contains(&n) {
        return Err(Error::invalid(format!(
            "the thread count must be in [1, {MAX_THREADS}], got {n}"
        )));
    }
    tch::set_num_threads(n);
    Ok(())
}

/// libtorch's intra-op thread count.
pub fn num_threads() -> i32 {
    tch::get_num_threads()
}
