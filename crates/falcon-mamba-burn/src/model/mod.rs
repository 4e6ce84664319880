//! The model on top of the op layer: [`FalconMamba`] (embedding → blocks → norm_f → lm_head),
//! its mixer and norms, how it is built (from a checkpoint or random values, through one path)
//! and generation.

mod build;
pub mod falcon_mamba;
pub mod generate;
pub mod mixer;
pub mod norm;
pub mod pretrained;
pub mod random;

pub use falcon_mamba::{Block, FalconMamba};
pub use generate::{Generation, TextGeneration};
pub use pretrained::LoadOptions;
