//! Loading a Hugging Face checkpoint directory into a [`FalconMamba`]: config.json, then the
//! safetensors weights, checked against the config before any tensor is built.

use std::path::Path;

use burn::module::Param;
use burn::nn::{Embedding, Linear};
use burn::prelude::*;
use falcon_mamba_core::{expected_tensors, Checkpoint, FalconMambaConfig, Result};

use crate::mixer::Mixer;
use crate::model::{Block, FalconMamba};
use crate::norm::RmsNorm;
use crate::scan::SelectiveScanBackend;

impl<B: SelectiveScanBackend> FalconMamba<B> {
    /// Loads `dir/config.json` and the weights next to it (`model.safetensors` or a sharded
    /// index) onto `device`. Weights stored in bf16 or f16 are widened exactly to the backend's
    /// float type.
    pub fn from_pretrained(dir: impl AsRef<Path>, device: &B::Device) -> Result<Self> {
        Self::from_pretrained_with_progress(dir, device, |_, _| {})
    }

    /// Like [`FalconMamba::from_pretrained`], calling `progress(tensors_loaded, tensors_total)`
    /// after each tensor, for a progress bar on large checkpoints.
    pub fn from_pretrained_with_progress(
        dir: impl AsRef<Path>,
        device: &B::Device,
        progress: impl FnMut(usize, usize),
    ) -> Result<Self> {
        let dir = dir.as_ref();
        let config = FalconMambaConfig::from_file(dir.join("config.json"))?;
        let checkpoint = Checkpoint::open(dir)?;
        Self::from_checkpoint(config, &checkpoint, device, progress)
    }

    /// Builds the model from an opened checkpoint and its config.
    pub fn from_checkpoint(
        config: FalconMambaConfig,
        checkpoint: &Checkpoint,
        device: &B::Device,
        progress: impl FnMut(usize, usize),
    ) -> Result<Self> {
        checkpoint.check(&config)?;
        let mut loader = Loader {
            checkpoint,
            device,
            loaded: 0,
            total: expected_tensors(&config).len(),
            progress,
        };
        let embedding = Embedding {
            weight: Param::from_tensor(loader.tensor::<2>("backbone.embeddings.weight")?),
        };
        let layers = (0..config.num_hidden_layers)
            .map(|i| loader.block(&config, &format!("backbone.layers.{i}")))
            .collect::<Result<Vec<_>>>()?;
        let norm_f = loader.norm("backbone.norm_f.weight", config.layer_norm_epsilon)?;
        // Tied: lm_head gets its own [hidden, vocab] copy of the embeddings, for the same reason.
        let lm_head = if config.tie_word_embeddings {
            loader.total += 1;
            Linear {
                weight: Param::from_tensor(loader.transposed("backbone.embeddings.weight")?),
                bias: None,
            }
        } else {
            loader.linear("lm_head", false)?
        };
        Ok(FalconMamba {
            embedding,
            layers,
            norm_f,
            lm_head,
            config,
        })
    }
}

struct Loader<'a, B: Backend, P> {
    checkpoint: &'a Checkpoint,
    device: &'a B::Device,
    loaded: usize,
    total: usize,
    progress: P,
}

impl<B: Backend, P: FnMut(usize, usize)> Loader<'_, B, P> {
    fn tensor<const D: usize>(&mut self, name: &str) -> Result<Tensor<B, D>> {
        let (values, shape) = self.checkpoint.read_f32(name)?;
        // `Checkpoint::check` has matched every shape against the config, so ranks agree.
        let tensor = Tensor::from_data(TensorData::new(values, shape), self.device);
        self.loaded += 1;
        (self.progress)(self.loaded, self.total);
        Ok(tensor)
    }

    /// A PyTorch `nn.Linear` (`[out, in]` weight) as a burn `Linear` with a contiguous
    /// `[in, out]` weight: transposed once here, on the host. (A transposed view would be made
    /// contiguous again by the CPU backend's matmul on every call.)
    fn linear(&mut self, prefix: &str, bias: bool) -> Result<Linear<B>> {
        let weight = self.transposed(&format!("{prefix}.weight"))?;
        let bias = if bias {
            Some(Param::from_tensor(
                self.tensor::<1>(&format!("{prefix}.bias"))?,
            ))
        } else {
            None
        };
        Ok(Linear {
            weight: Param::from_tensor(weight),
            bias,
        })
    }

    /// A 2-d tensor `[rows, cols]` as a contiguous `[cols, rows]` tensor.
    fn transposed(&mut self, name: &str) -> Result<Tensor<B, 2>> {
        let (values, shape) = self.checkpoint.read_f32(name)?;
        let (rows, cols) = (shape[0], shape[1]);
        let mut transposed = vec![0.0f32; values.len()];
        for (r, row) in values.chunks_exact(cols).enumerate() {
            for (c, &v) in row.iter().enumerate() {
                transposed[c * rows + r] = v;
            }
        }
        self.loaded += 1;
        (self.progress)(self.loaded, self.total);
        Ok(Tensor::from_data(
            TensorData::new(transposed, [cols, rows]),
            self.device,
        ))
    }

    fn norm(&mut self, name: &str, eps: f64) -> Result<RmsNorm<B>> {
        Ok(RmsNorm {
            weight: Param::from_tensor(self.tensor(name)?),
            eps,
        })
    }

    fn block(&mut self, config: &FalconMambaConfig, prefix: &str) -> Result<Block<B>> {
        let m = format!("{prefix}.mixer");
        let norm = self.norm(&format!("{prefix}.norm.weight"), config.layer_norm_epsilon)?;
        let mixer = Mixer {
            in_proj: self.linear(&format!("{m}.in_proj"), config.use_bias)?,
            conv_weight: Param::from_tensor(
                self.tensor::<3>(&format!("{m}.conv1d.weight"))?
                    .squeeze_dim(1),
            ),
            conv_bias: if config.use_conv_bias {
                Some(Param::from_tensor(
                    self.tensor(&format!("{m}.conv1d.bias"))?,
                ))
            } else {
                None
            },
            x_proj: self.linear(&format!("{m}.x_proj"), false)?,
            dt_proj: self.linear(&format!("{m}.dt_proj"), false)?,
            dt_bias: Param::from_tensor(self.tensor(&format!("{m}.dt_proj.bias"))?),
            a: Param::from_tensor(self.tensor::<2>(&format!("{m}.A_log"))?.exp().neg()),
            d: Param::from_tensor(self.tensor(&format!("{m}.D"))?),
            out_proj: self.linear(&format!("{m}.out_proj"), config.use_bias)?,
            dt_rank: config.time_step_rank,
            state_size: config.state_size,
            bc_dt_norm_eps: config.mixer_norms().then_some(config.mixer_rms_eps),
        };
        Ok(Block { norm, mixer })
    }
}
