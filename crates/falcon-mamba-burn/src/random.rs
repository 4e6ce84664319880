//! Random-weight models of any shape, for benchmarks and tests that need real sizes (130m … 7B)
//! without a checkpoint.

use burn::module::Param;
use burn::nn::{Embedding, Linear};
use burn::prelude::*;
use burn::tensor::Distribution;
use falcon_mamba_core::{FalconMambaConfig, Result};

use crate::mixer::Mixer;
use crate::model::{Block, FalconMamba};
use crate::norm::RmsNorm;
use crate::scan::SelectiveScanBackend;

impl<B: SelectiveScanBackend> FalconMamba<B> {
    /// A model with `config`'s shape and seeded random weights laid out as loaded ones are:
    /// projections ~ N(0, 1/fan_in), embeddings ~ N(0, 1), unit norms and D, A = -[1, …, N] per
    /// channel (the S4D-real init) and dt ≈ 0.01 after softplus. The numbers are meaningless; the
    /// shapes, memory and compute are a real model's.
    pub fn random(config: FalconMambaConfig, device: &B::Device, seed: u64) -> Result<Self> {
        config.validate()?;
        B::seed(device, seed);
        let (h, d, n, k, r, v) = (
            config.hidden_size,
            config.intermediate_size,
            config.state_size,
            config.conv_kernel,
            config.time_step_rank,
            config.vocab_size,
        );
        let normal = |rows: usize, cols: usize, std: f64| {
            Tensor::<B, 2>::random([rows, cols], Distribution::Normal(0.0, std), device)
        };
        // Contiguous [in, out], as loaded weights are.
        let linear = |d_in: usize, d_out: usize, bias: bool| Linear {
            weight: Param::from_tensor(normal(d_in, d_out, (d_in as f64).powf(-0.5))),
            bias: bias.then(|| Param::from_tensor(Tensor::zeros([d_out], device))),
        };
        let ones = |len: usize| Param::from_tensor(Tensor::<B, 1>::ones([len], device));
        let norm = |eps| RmsNorm {
            weight: ones(h),
            eps,
        };
        // softplus(-4.6) ≈ 0.01.
        let dt_bias = -4.6;
        let a = Tensor::<B, 1, Int>::arange(1..n as i64 + 1, device)
            .float()
            .neg()
            .unsqueeze_dim::<2>(0)
            .repeat_dim(0, d); // [d, n]
        let layers = (0..config.num_hidden_layers)
            .map(|_| Block {
                norm: norm(config.layer_norm_epsilon),
                mixer: Mixer {
                    in_proj: linear(h, 2 * d, config.use_bias),
                    conv_weight: Param::from_tensor(normal(d, k, (k as f64).powf(-0.5))),
                    conv_bias: config
                        .use_conv_bias
                        .then(|| Param::from_tensor(Tensor::zeros([d], device))),
                    x_proj: linear(d, r + 2 * n, false),
                    dt_proj: linear(r, d, false),
                    dt_bias: Param::from_tensor(Tensor::full([d], dt_bias, device)),
                    a: Param::from_tensor(a.clone()),
                    d: ones(d),
                    out_proj: linear(d, h, config.use_bias),
                    dt_rank: r,
                    state_size: n,
                    bc_dt_norm_eps: config.mixer_norms().then_some(config.mixer_rms_eps),
                },
            })
            .collect();
        Ok(FalconMamba {
            embedding: Embedding {
                weight: Param::from_tensor(normal(v, h, 1.0)),
            },
            layers,
            norm_f: norm(config.layer_norm_epsilon),
            lm_head: linear(h, v, false),
            config,
        })
    }
}
