//! Falcon Mamba on burn: the model, its recurrent state, the selective-scan op and generation.
//!
//! `FalconMamba<B>` runs on any burn backend `B` that implements [`SelectiveScanBackend`].
#![warn(missing_docs)]

#[cfg(feature = "ndarray")]
mod decode;
pub mod generate;
#[cfg(feature = "ndarray")]
mod matvec;
pub mod mixer;
pub mod model;
pub mod norm;
pub mod pretrained;
pub mod random;
pub mod scan;
pub mod state;

/// The burn version this crate is built on, for naming backends and tensors.
pub use burn;
pub use generate::{Generation, TextGeneration};
pub use model::{Block, FalconMamba};
pub use scan::{ScanInput, SelectiveScanBackend};
pub use state::{LayerState, State};
