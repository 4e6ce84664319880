//! Backend dispatch: run a generic job on the backend and dtype named on the command line.

use falcon_mamba::prelude::*;
use falcon_mamba::SelectiveScanBackend;

/// Work that runs on whichever backend the flags pick.
pub trait OnBackend {
    /// Runs on backend `B`.
    fn run<B: SelectiveScanBackend>(self, device: B::Device) -> Result<(), String>;
}

/// Calls `job` with the backend and dtype named by the flags, or explains why it cannot.
pub fn on_backend(backend: &str, dtype: &str, job: impl OnBackend) -> Result<(), String> {
    match dtype {
        "f32" => {}
        "f16" | "bf16" => {
            return Err(format!(
                "--dtype {dtype} is not supported on {backend} yet: the model runs in f32 (its state is always f32)"
            ))
        }
        other => return Err(format!("unknown --dtype {other:?}: expected f32, f16 or bf16")),
    }
    match backend {
        "cpu" => job.run::<Cpu>(Default::default()),
        #[cfg(feature = "wgpu")]
        "wgpu" => job.run::<falcon_mamba::model::burn::backend::Wgpu>(Default::default()),
        #[cfg(feature = "cuda")]
        "cuda" => job.run::<falcon_mamba::model::burn::backend::Cuda>(Default::default()),
        #[cfg(not(all(feature = "wgpu", feature = "cuda")))]
        b @ ("wgpu" | "cuda") => Err(format!(
            "backend {b} is not compiled into this binary: rebuild with --features {b}"
        )),
        other => Err(format!(
            "unknown backend {other:?}: expected cpu, wgpu or cuda"
        )),
    }
}
