//! adpo: Anchored Direct Preference Optimization on libtorch, with a stable C ABI.
//!
//! Crate map: [`objective`] (the model-free loss), [`model`] (the causal-LM trait: Hugging Face
//! checkpoint directories built natively, and TorchScript modules), [`batch`], [`logprob`]
//! (token log-probs, by chunks of the output head for native models), [`anchor`],
//! [`optimizer`], [`schedule`], [`trainer`] (the step), [`sample`] (batched, KV-cached
//! generation), [`checkpoint`], [`config`], [`distributed`] (data-parallel training),
//! [`tokenizer`] (text and chat templates), [`dlpack`], [`runtime`] (thread count), [`regular_file`] (bounded reads of regular files only), [`error`], [`echo`] (inputs in messages, capped), [`version`], and `ffi` (the
//! C ABI, include/adpo.h: the outer layer, which nothing else imports).

pub mod anchor;
pub mod batch;
pub mod checkpoint;
pub mod config;
pub mod cpu_budget;
pub mod distributed;
pub mod dlpack;
pub mod dtype;
pub mod echo;
pub mod error;
pub mod freed_memory;
pub mod ffi;
pub mod logprob;
pub mod model;
pub mod objective;
pub mod optimizer;
pub mod overlong;
pub mod regular_file;
mod rng;
pub mod runtime;
pub mod sample;
pub mod schedule;
pub mod tokenizer;
pub mod trainer;
pub mod version;

pub use batch::Batch;
pub use config::ObjectiveConfig;
pub use error::{Error, Result, Status};
pub use model::Model;
pub use objective::{EvalInputs, EvalOutput, Groups, Metrics, Objective, Signal, TokenInputs};
pub use tokenizer::Tokenizer;
pub use trainer::{StepMetrics, Trainer};
