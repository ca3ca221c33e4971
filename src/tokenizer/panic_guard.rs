//! Calls into the `tokenizers` library that cannot take the process or the handle down.
//! tokenizers panics where it should return an error: onig's regex gives up on hard input
//! ("retry-limit-in-match", 12 MB of spaces before a letter for the Llama 3 pattern, 41
//! characters for `(a+)+$`), and a hostile tokenizer.json can index past its own tables. Such a
//! panic is an error of that call. The tokenizer stays usable: it is immutable after load (its
//! caches take their locks with try_lock and skip a poisoned one), so nothing is left half-done.

use crate::error::{Error, Result, Status};
use std::panic::{catch_unwind, AssertUnwindSafe};

fn panic_text(payload: &(dyn std::any::Any + Send)) -> &str {
    if let Some(s) = payload.downcast_ref::<&str>() {
        s
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s
    } else {
        "unknown failure"
    }
}

/// Runs `f`; a panic in it becomes an error of `status` starting with `context`.
pub(super) fn guarded<T>(status: Status, context: &str, f: impl FnOnce() -> T) -> Result<T> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|payload| {
        Error::new(
            status,
            format!("{context}: tokenizers failed: {}", panic_text(&*payload)),
        )
    })
}
