//! Falcon Mamba without a tensor framework: everything a runtime needs around the tensors.
//!
//! - [`FalconMambaConfig`]: `config.json`, resolved and validated (Falcon Mamba and plain Mamba-1).
//! - [`Checkpoint`]: safetensors weights (single file or sharded), memory-mapped and checked.
//! - [`Tokenizer`]: `tokenizer.json` with UTF-8-safe streaming decode.
//! - [`GenerationConfig`] and [`Sampler`]: stopping rules and token choice.
//! - [`reference`]: the scalar selective scan and conv, the oracle for every kernel.
//! - [`Error`]: the one error type; every failure names the file, tensor or value at fault.
#![warn(missing_docs)]

pub mod checkpoint;
pub mod config;
pub mod error;
pub mod generation;
pub mod reference;
pub mod sampling;
pub mod tokenizer;

pub use checkpoint::{expected_tensors, Checkpoint, TensorSpec};
pub use config::{FalconMambaConfig, ModelType};
pub use error::{Error, Result};
pub use generation::{GenerationConfig, Prefill};
pub use sampling::Sampler;
pub use tokenizer::{DecodeStream, Tokenizer};
