//! The panic boundary: every exported function runs its body through one of these, so a panic
//! never unwinds into C. A panic inside a handle's call poisons that handle. Caught panics are
//! not printed (see quiet_panics.rs).

use super::error::{adpo_error, report};
use super::handle::Handle;
use super::quiet_panics::inside_adpo;
use crate::error::{Error, Result, Status};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic payload".to_string()
    }
}

/// Runs a fallible body; returns its status and reports the error through `err`.
pub fn call(err: *mut *mut adpo_error, body: impl FnOnce() -> Result<()>) -> Status {
    let body = || {
        crate::runtime::apply_to_this_thread();
        body()
    };
    match inside_adpo(|| catch_unwind(AssertUnwindSafe(body))) {
        Ok(Ok(())) => Status::Ok,
        Ok(Err(e)) => {
            report(err, &e);
            e.status
        }
        Err(payload) => {
            let e = Error::new(
                Status::Panic,
                format!(
                    "internal panic caught at the C boundary (please report): {}",
                    panic_message(&*payload)
                ),
            );
            report(err, &e);
            Status::Panic
        }
    }
}

/// Runs a body on a handle: NULL and poisoned handles are errors, a panic poisons it.
pub fn call_on<H: Handle>(
    err: *mut *mut adpo_error,
    handle: *const H,
    name: &str,
    body: impl FnOnce(&H) -> Result<()>,
) -> Status {
    call(err, || with_handle(handle, name, body))
}

/// The handle part of [`call_on`], for bodies that must do something before the handle check.
pub fn with_handle<H: Handle>(
    handle: *const H,
    name: &str,
    body: impl FnOnce(&H) -> Result<()>,
) -> Result<()> {
    // SAFETY: a non-NULL handle was created by adpo and not yet freed (caller contract).
    let h = unsafe { handle.as_ref() }.ok_or_else(|| Error::null(name))?;
    if h.poison_flag().load(Ordering::Acquire) {
        return Err(Error::new(
            Status::Poisoned,
            format!(
                "{name} was poisoned by an earlier internal panic; free it and create a new one"
            ),
        ));
    }
    match catch_unwind(AssertUnwindSafe(|| body(h))) {
        Ok(r) => r,
        Err(payload) => {
            h.poison_flag().store(true, Ordering::Release);
            std::panic::resume_unwind(payload)
        }
    }
}

/// For functions that cannot fail: a panic yields `fallback`.
pub fn infallible<T>(fallback: T, body: impl FnOnce() -> T) -> T {
    inside_adpo(|| catch_unwind(AssertUnwindSafe(body))).unwrap_or(fallback)
}
