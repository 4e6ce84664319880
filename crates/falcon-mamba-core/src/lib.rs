//! Falcon Mamba without a tensor framework: everything a runtime needs around the tensors.
//!
//! - [`FalconMambaConfig`]: `config.json`, resolved and validated (Falcon Mamba and plain Mamba-1).
//! - [`Checkpoint`]: safetensors weights (single file or sharded), memory-mapped and checked.
//! - [`Tokenizer`]: `tokenizer.json` with UTF-8-safe streaming decode.
//! - [`GenerationConfig`] and [`Sampler`]: stopping rules and token choice.
//! - [`ChatTemplate`]: chat prompts from the checkpoint's Jinja template (ChatML fallback).
//! - `hub::resolve` (feature `hub`): hub ids to a cached local checkpoint directory.
//! - [`reference`]: the scalar selective scan and conv, the oracle for every kernel.
//! - [`Error`]: the one error type; every failure names the file, tensor or value at fault.
#![warn(missing_docs)]

pub mod chat;
pub mod checkpoint;
pub mod config;
pub mod error;
pub mod generation;
#[cfg(feature = "hub")]
pub mod hub;
pub mod reference;
pub mod sampling;
pub mod tokenizer;

pub use chat::{ChatTemplate, Message};
pub use checkpoint::{expected_tensors, Checkpoint, TensorSpec};
pub use config::{FalconMambaConfig, ModelType};
pub use error::{Error, Result};
pub use generation::{GenerationConfig, Prefill};
pub use sampling::Sampler;
pub use tokenizer::{DecodeStream, Tokenizer};
