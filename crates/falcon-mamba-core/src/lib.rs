//! Falcon Mamba without a tensor framework: everything a runtime needs around the tensors.
//!
//! - [`FalconMambaConfig`]: `config.json`, resolved and validated (Falcon Mamba and plain Mamba-1).
//! - [`Checkpoint`]: safetensors weights (single file or sharded), checked, read tensor by tensor.
//! - [`ModelTensors`]: the model's tensor list; [`WeightFormat`] and [`WeightMatrix`]: weight
//!   matrices in f32, bf16, f16, GGUF's Q8_0/Q4_0 blocks ([`quant`]) or bitsandbytes 4-bit
//!   ([`bnb`]).
//! - [`quantized::write_quantized`]: a checkpoint converted to q8/q4 (or bf16/f16), loadable as is.
//! - [`Tokenizer`]: `tokenizer.json` with UTF-8-safe streaming decode.
//! - [`GenerationConfig`] and [`Sampler`]: stopping rules and token choice.
//! - [`ChatTemplate`]: chat prompts from the checkpoint's Jinja template (ChatML fallback).
//! - `hub::resolve` (feature `hub`): hub ids to a cached local checkpoint directory.
//! - [`reference`]: the scalar selective scan and conv, the oracle for every kernel.
//! - [`Error`]: the one error type; every failure names the file, tensor or value at fault.
#![warn(missing_docs)]

pub mod bnb;
pub mod chat;
pub mod checkpoint;
pub mod config;
pub mod error;
pub mod generation;
#[cfg(feature = "hub")]
pub mod hub;
pub mod quant;
pub mod quantized;
pub mod reference;
pub mod sampling;
pub mod tensors;
pub mod text_file;
pub mod tokenizer;
pub mod weights;

pub use bnb::Bnb4Matrix;
pub use chat::{ChatTemplate, Message};
pub use checkpoint::Checkpoint;
pub use config::{FalconMambaConfig, ModelType};
pub use error::{Error, Result};
pub use generation::{GenerationConfig, Prefill};
pub use quant::BlockFormat;
pub use sampling::Sampler;
pub use tensors::{expected_tensors, LayerTensors, ModelTensors, TensorSpec};
pub use tokenizer::{DecodeStream, Tokenizer};
pub use weights::{WeightData, WeightFormat, WeightMatrix};
