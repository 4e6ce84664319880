//! Loading a Hugging Face checkpoint directory into a [`FalconMamba`]: config.json, then the
//! safetensors weights, checked against the config before any tensor is read, then read one
//! tensor at a time in the chosen [`WeightFormat`].

use std::path::Path;

use falcon_mamba_core::{
    Checkpoint, FalconMambaConfig, Result, TensorSpec, WeightFormat, WeightMatrix,
};

use super::build::{Init, WeightSource};
use super::falcon_mamba::FalconMamba;
use crate::ops::SelectiveScanBackend;

/// How to load a checkpoint.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LoadOptions {
    /// The format to keep the weight matrices in; `None` (the default): each matrix's own in the
    /// checkpoint, or f32 where the backend cannot hold that one (bf16 on wgpu). Block formats
    /// (q8, q4) apply to matrices whose input dimension is a multiple of 32; others stay f32.
    pub dtype: Option<WeightFormat>,
}

impl LoadOptions {
    /// Keeps the weight matrices in `dtype` (`None`: the checkpoint's own format, or f32 where
    /// the backend cannot hold it). Narrowing (f32 → bf16/f16) rounds to nearest even, q8 and q4
    /// quantize row by row as GGUF's Q8_0 and Q4_0 do; widening and dequantising are exact. A format the backend cannot hold is [`falcon_mamba_core::Error::UnsupportedWeightFormat`].
    pub fn with_dtype(mut self, dtype: Option<WeightFormat>) -> Self {
        self.dtype = dtype;
        self
    }
}

impl<B: SelectiveScanBackend> FalconMamba<B> {
    /// Loads `dir/config.json` and the weights next to it (`model.safetensors` or a sharded
    /// index) onto `device`, keeping the weight matrices in the checkpoint's own format.
    pub fn from_pretrained(dir: impl AsRef<Path>, device: &B::Device) -> Result<Self> {
        Self::from_pretrained_with(dir, device, LoadOptions::default(), |_, _| {})
    }

    /// Like [`FalconMamba::from_pretrained`] with `options`, calling
    /// `progress(tensors_loaded, tensors_total)` after each tensor, for a progress bar on large
    /// checkpoints.
    pub fn from_pretrained_with(
        dir: impl AsRef<Path>,
        device: &B::Device,
        options: LoadOptions,
        progress: impl FnMut(usize, usize),
    ) -> Result<Self> {
        let dir = dir.as_ref();
        let config = FalconMambaConfig::from_file(dir.join("config.json"))?;
        let checkpoint = Checkpoint::open(dir)?;
        Self::from_checkpoint(config, &checkpoint, options, device, progress)
    }

    /// Builds the model from an opened checkpoint and its config.
    pub fn from_checkpoint(
        config: FalconMambaConfig,
        checkpoint: &Checkpoint,
        options: LoadOptions,
        device: &B::Device,
        progress: impl FnMut(usize, usize),
    ) -> Result<Self> {
        checkpoint.check(&config)?;
        let format_of = |spec: &TensorSpec| -> WeightFormat {
            let (d_out, d_in) = (spec.shape[0], spec.shape[1]);
            match options.dtype {
                Some(format) => format.for_inputs(d_in),
                None => {
                    // Checked above, so the storage is known.
                    let stored = checkpoint
                        .matrix_storage(&spec.name, d_out, d_in)
                        .unwrap_or(WeightFormat::F32);
                    // A format the device cannot hold (bf16 on wgpu) widens to f32, exactly.
                    if B::supports_weight_format(device, stored) {
                        stored
                    } else {
                        WeightFormat::F32
                    }
                }
            }
        };
        Self::build(
            config,
            &mut CheckpointSource(checkpoint),
            &format_of,
            device,
            progress,
        )
    }
}

/// A checkpoint as a [`WeightSource`].
struct CheckpointSource<'a>(&'a Checkpoint);

impl WeightSource for CheckpointSource<'_> {
    fn values(&mut self, spec: &TensorSpec, _init: Init) -> Result<Vec<f32>> {
        Ok(self.0.read_f32(&spec.name)?.0)
    }

    fn matrix(&mut self, spec: &TensorSpec, format: WeightFormat) -> Result<WeightMatrix> {
        self.0
            .read_matrix(&spec.name, spec.shape[0], spec.shape[1], Some(format))
    }
}
