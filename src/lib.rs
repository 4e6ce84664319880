//! # falcon-mamba
//!
//! Falcon Mamba (tiiuae/falcon-mamba-7b and -instruct) and plain Mamba-1 language models on the
//! [burn](https://burn.dev) deep-learning framework. Pick a backend by type parameter, load a
//! Hugging Face checkpoint directory, and generate text token by token with a fixed-size
//! recurrent state.
//!
//! ```no_run
//! use falcon_mamba::prelude::*;
//!
//! # fn main() -> falcon_mamba::Result<()> {
//! let device = Default::default();
//! let model = FalconMamba::<Cpu>::from_pretrained("falcon-mamba-7b-instruct", &device)?;
//! let tokenizer = Tokenizer::from_file("falcon-mamba-7b-instruct/tokenizer.json")?;
//! let config = GenerationConfig::default().with_max_new_tokens(32);
//! for piece in model.generate_text(&tokenizer, "The capital of France is", &config)? {
//!     print!("{}", piece?);
//! }
//! # Ok(())
//! # }
//! ```
//!
//! The two crates behind this facade: [`core`] (no burn: config, checkpoint and tokenizer I/O,
//! sampling, the scalar reference scan) and [`model`] (burn: the model, its state, the
//! selective-scan op, generation).
#![warn(missing_docs)]

pub use falcon_mamba_burn as model;
pub use falcon_mamba_core as core;

pub use falcon_mamba_burn::{
    FalconMamba, Generation, LoadOptions, Scheduler, SchedulerConfig, SelectiveScanBackend, State,
    StateCache, TextGeneration,
};
pub use falcon_mamba_core::{
    Error, FalconMambaConfig, GenerationConfig, Prefill, Result, Tokenizer, WeightFormat,
};

/// The CPU backend (burn-ndarray, f32).
#[cfg(feature = "ndarray")]
pub type Cpu = falcon_mamba_burn::burn::backend::NdArray<f32>;

/// Everything needed to load a model and generate.
pub mod prelude {
    #[cfg(feature = "ndarray")]
    pub use crate::Cpu;
    pub use crate::{
        FalconMamba, FalconMambaConfig, GenerationConfig, LoadOptions, Prefill, Scheduler,
        SchedulerConfig, State, Tokenizer, WeightFormat,
    };
}
