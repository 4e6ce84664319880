//! Falcon Mamba on burn, in layers whose arrows point down (DESIGN.md §7):
//!
//! - [`model`]: [`FalconMamba`], its mixer and norms, loading, random models, generation;
//! - [`ops`]: what a backend provides ([`SelectiveScanBackend`]: scan, conv, norms,
//!   projections over [`PackedLinear`] weights in any [`WeightFormat`], a fused decode step),
//!   with tensor-op defaults; it knows no model type;
//! - [`cpu`] (burn-ndarray) and [`cube`] (wgpu, CUDA): the backends' implementations;
//! - [`state`]: the recurrent state the ops update;
//! - [`serving`]: many sequences at once on top of the model: continuous batching and a
//!   conversation-state cache.
//!
//! [`WeightFormat`]: falcon_mamba_core::WeightFormat
#![warn(missing_docs)]

#[cfg(feature = "ndarray")]
pub mod cpu;
#[cfg(any(feature = "wgpu", feature = "cuda"))]
pub mod cube;
pub mod model;
pub mod ops;
pub mod serving;
pub mod state;

/// The burn version this crate is built on, for naming backends and tensors.
pub use burn;
pub use model::{Block, FalconMamba, Generation, LoadOptions, TextGeneration};
pub use ops::{PackedLinear, ScanInput, SelectiveScanBackend};
pub use serving::{Scheduler, SchedulerConfig, StateCache};
pub use state::{LayerState, State};

/// One model is shared by threads that each generate with their own state.
#[cfg(feature = "ndarray")]
const _: () = {
    const fn shareable<T: Send + Sync>() {}
    shareable::<FalconMamba<burn::backend::NdArray<f32>>>();
    shareable::<State<burn::backend::NdArray<f32>>>();
};
