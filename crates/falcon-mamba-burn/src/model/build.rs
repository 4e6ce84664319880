//! The one construction path of a model: walk the tensor list ([`ModelTensors`]) and take each
//! tensor from a [`WeightSource`], a checkpoint ([`super::pretrained`]) or seeded random values
//! ([`super::random`]). Weight matrices are built in the chosen format and handed to the
//! backend as they come, so at most one matrix is ever held twice.

use burn::prelude::*;
use falcon_mamba_core::{
    Error, FalconMambaConfig, LayerTensors, ModelTensors, Result, TensorSpec, WeightFormat,
    WeightMatrix,
};

use super::falcon_mamba::{Block, FalconMamba};
use super::mixer::Mixer;
use super::norm::RmsNorm;
use crate::ops::{PackedLinear, SelectiveScanBackend};

/// What a random source fills a vector with (a checkpoint ignores it).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Init {
    /// Norm weights, D.
    Ones,
    /// Biases.
    Zeros,
    /// Conv taps: uniform with the variance of N(0, 1/kernel).
    ConvTaps,
    /// A_log = log(1..=N) per channel (the S4D-real init, A = -[1, …, N]).
    ALog,
    /// dt_proj's bias: softplus(-4.6) ≈ 0.01.
    DtBias,
}

/// Where a model's values come from.
pub(crate) trait WeightSource {
    /// A tensor's f32 values in row-major order (PyTorch layout).
    fn values(&mut self, spec: &TensorSpec, init: Init) -> Result<Vec<f32>>;
    /// A `[out, in]` matrix as a [`WeightMatrix`] in `format`.
    fn matrix(&mut self, spec: &TensorSpec, format: WeightFormat) -> Result<WeightMatrix>;
}

impl<B: SelectiveScanBackend> FalconMamba<B> {
    /// Builds the model `config` describes from `source`, each matrix in the format
    /// `format_of` gives it, calling `progress(tensors_done, tensors_total)` after each tensor.
    /// Weights that would not fit in the memory the backend reports available are an error
    /// before anything is read.
    pub(crate) fn build(
        config: FalconMambaConfig,
        source: &mut impl WeightSource,
        format_of: &dyn Fn(&TensorSpec) -> WeightFormat,
        device: &B::Device,
        progress: impl FnMut(usize, usize),
    ) -> Result<Self> {
        let tensors = ModelTensors::new(&config);
        for spec in tensors.matrices() {
            let format = format_of(spec);
            if !B::supports_weight_format(device, format) {
                return Err(Error::UnsupportedWeightFormat {
                    format,
                    backend: B::name(device),
                });
            }
        }
        let needed = tensors.weight_bytes_with(format_of).unwrap_or(u64::MAX);
        if let Some(available) = B::memory_available(device) {
            if needed > available {
                return Err(Error::InsufficientMemory {
                    format: format_of(&tensors.embedding),
                    needed,
                    available,
                });
            }
        }
        let mut builder = Builder {
            source,
            format_of,
            device,
            done: 0,
            total: tensors.iter().count(),
            progress,
        };
        let embedding: B::Matrix = builder.matrix(&tensors.embedding)?;
        let layers = tensors
            .layers
            .iter()
            .map(|layer| builder.block(&config, layer))
            .collect::<Result<Vec<_>>>()?;
        let norm_f = RmsNorm {
            weight: builder.vector(&tensors.norm_f, Init::Ones)?,
            eps: config.layer_norm_epsilon,
        };
        let lm_head = match &tensors.lm_head {
            Some(spec) => builder.linear(spec, None)?,
            None => PackedLinear {
                weight: embedding.clone(),
                bias: None,
            },
        };
        Ok(FalconMamba {
            embedding,
            layers,
            norm_f,
            lm_head,
            config,
            device: device.clone(),
        })
    }
}

struct Builder<'a, S, B: Backend, P> {
    source: &'a mut S,
    format_of: &'a dyn Fn(&TensorSpec) -> WeightFormat,
    device: &'a B::Device,
    done: usize,
    total: usize,
    progress: P,
}

impl<S: WeightSource, B: SelectiveScanBackend, P: FnMut(usize, usize)> Builder<'_, S, B, P> {
    fn tick(&mut self) {
        self.done += 1;
        (self.progress)(self.done, self.total);
    }

    fn tensor<const D: usize>(
        &mut self,
        spec: &TensorSpec,
        init: Init,
        shape: [usize; D],
        map: impl Fn(f32) -> f32,
    ) -> Result<Tensor<B, D>> {
        let mut values = self.source.values(spec, init)?;
        values.iter_mut().for_each(|v| *v = map(*v));
        self.tick();
        Ok(Tensor::from_data(
            TensorData::new(values, shape),
            self.device,
        ))
    }

    fn vector(&mut self, spec: &TensorSpec, init: Init) -> Result<Tensor<B, 1>> {
        self.tensor(spec, init, [spec.len()], |v| v)
    }

    fn matrix(&mut self, spec: &TensorSpec) -> Result<B::Matrix> {
        let matrix = self.source.matrix(spec, (self.format_of)(spec))?;
        self.tick();
        B::matrix(matrix, self.device)
    }

    fn linear(&mut self, spec: &TensorSpec, bias: Option<&TensorSpec>) -> Result<PackedLinear<B>> {
        Ok(PackedLinear {
            weight: self.matrix(spec)?,
            bias: bias.map(|b| self.vector(b, Init::Zeros)).transpose()?,
        })
    }

    fn block(&mut self, config: &FalconMambaConfig, t: &LayerTensors) -> Result<Block<B>> {
        let norm = RmsNorm {
            weight: self.vector(&t.norm, Init::Ones)?,
            eps: config.layer_norm_epsilon,
        };
        let (channels, kernel) = (config.intermediate_size, config.conv_kernel);
        let mixer = Mixer {
            in_proj: self.linear(&t.in_proj, t.in_proj_bias.as_ref())?,
            conv_weight: self.tensor(&t.conv1d, Init::ConvTaps, [channels, kernel], |v| v)?,
            conv_bias: t
                .conv1d_bias
                .as_ref()
                .map(|b| self.vector(b, Init::Zeros))
                .transpose()?,
            x_proj: self.linear(&t.x_proj, None)?,
            dt_proj: self.linear(&t.dt_proj, None)?,
            dt_bias: self.vector(&t.dt_proj_bias, Init::DtBias)?,
            a: self.tensor(
                &t.a_log,
                Init::ALog,
                [channels, config.state_size],
                |a_log| -a_log.exp(),
            )?,
            d: self.vector(&t.d, Init::Ones)?,
            out_proj: self.linear(&t.out_proj, t.out_proj_bias.as_ref())?,
            dt_rank: config.time_step_rank,
            state_size: config.state_size,
            bc_dt_norm_eps: config.mixer_norms().then_some(config.mixer_rms_eps),
        };
        Ok(Block { norm, mixer })
    }
}
