//! The one error type. Every fallible path in the library returns [`Error`]; the C ABI turns it
//! into an `adpo_status` code plus an `adpo_error` object carrying the message.

use std::fmt;

/// Status codes of the C ABI. Values are stable and never reused: add new codes at the end.
#[repr(i32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    /// Success.
    Ok = 0,
    /// A required pointer argument was NULL.
    NullArgument = 1,
    /// An argument has a value that is not allowed (n = 0, negative target, ...).
    InvalidArgument = 2,
    /// The JSON configuration is malformed, has an unknown key, or a value out of range.
    InvalidConfig = 3,
    /// Lengths, shapes or group structure of the inputs do not agree.
    ShapeMismatch = 4,
    /// An input contains NaN or Inf.
    NonFinite = 5,
    /// A dtype, device, DLPack version or feature that is not supported.
    Unsupported = 6,
    /// libtorch reported an error.
    Torch = 7,
    /// A file could not be read or written.
    Io = 8,
    /// A checkpoint is corrupt, truncated or does not match the model.
    Checkpoint = 9,
    /// A model file is missing or does not follow the causal-LM contract.
    Model = 10,
    /// The handle was poisoned by an earlier panic and must be freed.
    Poisoned = 11,
    /// A panic was caught at the C boundary (a bug in adpo; please report it).
    Panic = 12,
    /// A collective across ranks failed (MPI, or the host's all-reduce callback).
    Communication = 13,
}

impl Status {
    /// The status with this code (what another rank reported), if it is one.
    pub fn from_code(code: i32) -> Option<Status> {
        use Status::*;
        [
            Ok,
            NullArgument,
            InvalidArgument,
            InvalidConfig,
            ShapeMismatch,
            NonFinite,
            Unsupported,
            Torch,
            Io,
            Checkpoint,
            Model,
            Poisoned,
            Panic,
            Communication,
        ]
        .into_iter()
        .find(|s| *s as i32 == code)
    }
}

/// An error with the status it maps to and a message that names the argument at fault.
#[derive(Debug, Clone, PartialEq)]
pub struct Error {
    pub status: Status,
    pub message: String,
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn new(status: Status, message: impl Into<String>) -> Self {
        Error {
            status,
            message: message.into(),
        }
    }
    pub fn null(argument: &str) -> Self {
        Error::new(Status::NullArgument, format!("{argument} must not be NULL"))
    }
    pub fn invalid(message: impl Into<String>) -> Self {
        Error::new(Status::InvalidArgument, message)
    }
    pub fn config(message: impl Into<String>) -> Self {
        Error::new(Status::InvalidConfig, message)
    }
    pub fn shape(message: impl Into<String>) -> Self {
        Error::new(Status::ShapeMismatch, message)
    }
    pub fn non_finite(argument: &str) -> Self {
        Error::new(Status::NonFinite, format!("{argument} contains NaN or Inf"))
    }
    pub fn unsupported(message: impl Into<String>) -> Self {
        Error::new(Status::Unsupported, message)
    }
    pub fn model(message: impl Into<String>) -> Self {
        Error::new(Status::Model, message)
    }
    pub fn checkpoint(message: impl Into<String>) -> Self {
        Error::new(Status::Checkpoint, message)
    }
    pub fn io(message: impl Into<String>) -> Self {
        Error::new(Status::Io, message)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

/// libtorch's message without the C++ backtrace it appends ("Exception raised from ...").
pub fn torch_message(e: &impl fmt::Display) -> String {
    let text = e.to_string();
    match text.find("Exception raised from") {
        Some(i) => text[..i].trim_end().to_string(),
        None => text,
    }
}

impl From<tch::TchError> for Error {
    fn from(e: tch::TchError) -> Self {
        Error::new(Status::Torch, format!("libtorch: {}", torch_message(&e)))
    }
}

/// Runs tensor code written with tch's panicking methods and turns a libtorch failure (which
/// tch reports by panicking with its `TchError`) into `Err(Status::Torch)`. Other panics are
/// bugs and keep unwinding to the C boundary.
pub fn catch_torch<T>(body: impl FnOnce() -> Result<T>) -> Result<T> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)) {
        Ok(r) => r,
        Err(payload) => {
            let text = payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            if text.contains("Torch(") {
                Err(Error::new(
                    Status::Torch,
                    format!("libtorch: {}", torch_message(&text)),
                ))
            } else {
                std::panic::resume_unwind(payload)
            }
        }
    }
}
