//! Random-weight models of any shape, for benchmarks and tests that need real sizes (130m … 7B)
//! without a checkpoint. They are built through the same path as loaded ones
//! ([`super::build`]), from a seeded generator on the host, so a seed gives the same weights on
//! every backend.

use falcon_mamba_core::{FalconMambaConfig, Result, TensorSpec, WeightFormat, WeightMatrix};

use super::build::{Init, WeightSource};
use super::falcon_mamba::FalconMamba;
use crate::ops::SelectiveScanBackend;

impl<B: SelectiveScanBackend> FalconMamba<B> {
    /// A model with `config`'s shape and seeded random f32 weights; see
    /// [`FalconMamba::random_in`].
    pub fn random(config: FalconMambaConfig, device: &B::Device, seed: u64) -> Result<Self> {
        Self::random_in(config, WeightFormat::F32, device, seed)
    }

    /// A model with `config`'s shape and seeded random weights, matrices in `format`:
    /// projections and embeddings uniform with the variance of N(0, 1/fan_in), unit norms and D,
    /// A = -[1, …, N] per channel (the S4D-real init) and dt ≈ 0.01 after softplus. The numbers
    /// are meaningless; the shapes, memory and compute are a real model's.
    pub fn random_in(
        config: FalconMambaConfig,
        format: WeightFormat,
        device: &B::Device,
        seed: u64,
    ) -> Result<Self> {
        config.validate()?;
        let mut source = RandomSource {
            state: seed ^ 0x9e37_79b9_7f4a_7c15,
        };
        let format_of = |spec: &TensorSpec| format.for_inputs(spec.shape[1]);
        Self::build(config, &mut source, &format_of, device, |_, _| {})
    }
}

/// A splitmix64 generator as a [`WeightSource`].
struct RandomSource {
    state: u64,
}

impl RandomSource {
    fn next(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform on [-√3·std, √3·std): mean 0, standard deviation `std`.
    fn uniform(&mut self, len: usize, std: f32) -> Vec<f32> {
        let half_width = 3f32.sqrt() * std;
        (0..len)
            .map(|_| {
                let unit = (self.next() >> 40) as f32 / (1u64 << 24) as f32; // [0, 1)
                (2.0 * unit - 1.0) * half_width
            })
            .collect()
    }
}

impl WeightSource for RandomSource {
    fn values(&mut self, spec: &TensorSpec, init: Init) -> Result<Vec<f32>> {
        let len = spec.len();
        Ok(match init {
            Init::Ones => vec![1.0; len],
            Init::Zeros => vec![0.0; len],
            Init::ConvTaps => {
                let kernel = spec.shape.last().copied().unwrap_or(1).max(1);
                self.uniform(len, (kernel as f32).powf(-0.5))
            }
            Init::ALog => {
                let n = spec.shape.last().copied().unwrap_or(1).max(1);
                (0..len).map(|i| ((i % n + 1) as f32).ln()).collect()
            }
            Init::DtBias => vec![-4.6; len],
        })
    }

    fn matrix(&mut self, spec: &TensorSpec, format: WeightFormat) -> Result<WeightMatrix> {
        let (d_out, d_in) = (spec.shape[0], spec.shape[1]);
        let values = self.uniform(d_in * d_out, (d_in as f32).powf(-0.5)); // [in, out]
        Ok(WeightMatrix::from_f32(values, d_in, d_out, format))
    }
}
