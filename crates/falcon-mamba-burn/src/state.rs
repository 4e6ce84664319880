//! The recurrent state: what makes decoding O(1) per token. Per layer a conv state (the K-1 most
//! recent pre-conv inputs) and an SSM state; its size never depends on the context length.

use burn::prelude::*;
use falcon_mamba_core::{Error, FalconMambaConfig, Result};

/// One layer's state.
#[derive(Debug, Clone)]
pub struct LayerState<B: Backend> {
    /// The K-1 most recent pre-conv inputs (zeros before the first token). `[batch, channels, kernel - 1]`
    pub conv: Tensor<B, 3>,
    /// The SSM state h. `[batch, channels, state]`
    pub ssm: Tensor<B, 3>,
}

/// The whole model's state for a batch of sequences. Cloning forks it (tensors are
/// copy-on-write in burn).
#[derive(Debug, Clone)]
pub struct State<B: Backend> {
    /// One entry per layer.
    pub layers: Vec<LayerState<B>>,
}

impl<B: Backend> State<B> {
    /// The state of `batch` empty sequences (all zeros).
    pub fn zeros(config: &FalconMambaConfig, batch: usize, device: &B::Device) -> Self {
        let (d, k, n) = (
            config.intermediate_size,
            config.conv_state_len(),
            config.state_size,
        );
        let layers = (0..config.num_hidden_layers)
            .map(|_| LayerState {
                conv: Tensor::zeros([batch, d, k], device),
                ssm: Tensor::zeros([batch, d, n], device),
            })
            .collect();
        State { layers }
    }

    /// Number of sequences.
    pub fn batch_size(&self) -> usize {
        self.layers.first().map_or(0, |l| l.ssm.dims()[0])
    }

    /// Total bytes held by the state's tensors.
    pub fn size_in_bytes(&self) -> usize {
        self.layers
            .iter()
            .map(|l| {
                l.conv.shape().num_elements() * l.conv.dtype().size()
                    + l.ssm.shape().num_elements() * l.ssm.dtype().size()
            })
            .sum()
    }

    /// Checks that this state fits a model with `config` and a batch of `batch` sequences.
    pub fn check(&self, config: &FalconMambaConfig, batch: usize) -> Result<()> {
        let mismatch = |reason: String| Err(Error::StateMismatch { reason });
        if self.layers.len() != config.num_hidden_layers {
            return mismatch(format!(
                "state has {} layers, the model {}",
                self.layers.len(),
                config.num_hidden_layers
            ));
        }
        let (d, k, n) = (
            config.intermediate_size,
            config.conv_state_len(),
            config.state_size,
        );
        for (i, layer) in self.layers.iter().enumerate() {
            if layer.conv.dims() != [batch, d, k] || layer.ssm.dims() != [batch, d, n] {
                return mismatch(format!(
                    "layer {i}: conv state {:?} and ssm state {:?}, expected {:?} and {:?}",
                    layer.conv.dims(),
                    layer.ssm.dims(),
                    [batch, d, k],
                    [batch, d, n]
                ));
            }
        }
        Ok(())
    }
}
