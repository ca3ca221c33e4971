//! The C ABI (include/adpo.h is generated from this module by cbindgen). Every exported
//! function goes through `boundary`: it checks and converts arguments and calls the Rust
//! modules; no ADPO logic lives here.
#![allow(non_camel_case_types)]
// C callers hand raw pointers by design; each function's contract is documented in the header.
#![allow(clippy::not_unsafe_ptr_arg_deref)]

pub mod batch;
pub mod boundary;
pub mod distributed;
pub mod dlpack;
pub mod error;
pub mod model;
pub mod objective;
pub mod tokenizer;
pub mod trainer;
pub mod version;
