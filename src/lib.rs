//! adpo: Anchored Direct Preference Optimization on libtorch, with a stable C ABI.
//!
//! Crate map: [`objective`] (the model-free loss), [`config`], [`error`], [`version`],
//! and `ffi` (the C ABI, declared in include/adpo.h).

pub mod config;
pub mod error;
pub mod ffi;
pub mod objective;
pub mod version;

pub use config::ObjectiveConfig;
pub use error::{Error, Result, Status};
pub use objective::{EvalInputs, EvalOutput, Groups, Metrics, Objective, Signal, TokenInputs};
