//! The C ABI (include/adpo.h is generated from this module by cbindgen). Every exported
//! function goes through `boundary`: it checks and converts arguments and calls the Rust
//! modules; no ADPO logic lives here.
#![allow(non_camel_case_types)]
// C callers hand raw pointers by design; each function's contract is documented in the header.
#![allow(clippy::not_unsafe_ptr_arg_deref)]

// Declared in the order a user reads the header (cbindgen emits functions in this order;
// rustfmt.toml keeps rustfmt from sorting them).
pub mod error;
pub mod version;
pub mod objective;
pub mod dlpack;
pub mod model;
pub mod tokenizer;
pub mod batch;
pub mod trainer;
pub mod split_step;
pub mod sample;
pub mod rollout;
pub mod checkpoint;
pub mod distributed;
// Helpers without exports.
pub mod args;
pub mod boundary;
pub mod handle;
pub mod quiet_panics;
