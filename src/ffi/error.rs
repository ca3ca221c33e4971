//! The `adpo_error` object handed to C callers through the optional `adpo_error **err`.

// Section of include/adpo.h: Errors
// A failed call returns its status and, when `err` is not NULL, an adpo_error that
// carries the status and a message naming the argument at fault. Free it with adpo_error_free.

use crate::echo::cap_message;
use crate::error::{Error, Status};
use std::ffi::{c_char, CString};

/// An error: a status code and a message. Created by adpo, freed with adpo_error_free().
/// adpo writes nothing to the host's stderr: the message of an error, a caught panic's
/// included, comes back only here. Set ADPO_LOG=1 in the environment to also have the panics
/// adpo catches printed to stderr (by Rust's panic hook, with their location). Inputs echoed in
/// a message are shortened (see README "Errors and logging"), so a message stays short.
pub struct adpo_error {
    status: Status,
    message: CString,
}

/// Stores `e` into `*err` when `err` is non-NULL.
pub(crate) fn report(err: *mut *mut adpo_error, e: &Error) {
    if err.is_null() {
        return;
    }
    let message = cap_message(&e.message).replace('\0', " ");
    let message = CString::new(message).unwrap_or_default();
    let boxed = Box::new(adpo_error {
        status: e.status,
        message,
    });
    // SAFETY: err is non-NULL and points to writable storage for one pointer (caller contract).
    unsafe { *err = Box::into_raw(boxed) };
}

/// The error's message, valid until adpo_error_free(err). NULL err gives "".
#[no_mangle]
pub extern "C" fn adpo_error_message(err: *const adpo_error) -> *const c_char {
    super::boundary::infallible(c"".as_ptr(), || {
        // SAFETY: a non-NULL err was created by adpo and not yet freed (caller contract).
        match unsafe { err.as_ref() } {
            Some(e) => e.message.as_ptr(),
            None => c"".as_ptr(),
        }
    })
}

/// The error's status code. NULL err gives ADPO_STATUS_NULL_ARGUMENT.
#[no_mangle]
pub extern "C" fn adpo_error_status(err: *const adpo_error) -> Status {
    super::boundary::infallible(Status::NullArgument, || {
        // SAFETY: as in adpo_error_message.
        match unsafe { err.as_ref() } {
            Some(e) => e.status,
            None => Status::NullArgument,
        }
    })
}

/// Frees an error. NULL is a no-op.
#[no_mangle]
pub extern "C" fn adpo_error_free(err: *mut adpo_error) {
    super::boundary::infallible((), || {
        if !err.is_null() {
            // SAFETY: err came from Box::into_raw in report() and is freed once (caller contract).
            drop(unsafe { Box::from_raw(err) });
        }
    })
}
