//! Backend dispatch: run a generic job on the backend named on the command line.

use falcon_mamba::prelude::*;
use falcon_mamba::SelectiveScanBackend;

/// Work that runs on whichever backend the flags pick.
pub trait OnBackend {
    /// Runs on backend `B`.
    fn run<B: SelectiveScanBackend>(self, device: B::Device) -> Result<(), String>;
}

/// Calls `job` with the backend named by the flags, or explains why it cannot.
pub fn on_backend(backend: &str, job: impl OnBackend) -> Result<(), String> {
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
