//! RMS normalisation: the block and final norms (with a weight) and Falcon Mamba's weightless
//! B/C/dt norms.

use burn::prelude::*;

use crate::ops::SelectiveScanBackend;

/// `x / sqrt(mean(x^2) + eps) * weight` over the last dimension.
#[derive(Debug, Clone)]
pub struct RmsNorm<B: Backend> {
    /// Per-feature scale. `[hidden]`
    pub weight: Tensor<B, 1>,
    /// Added to the mean square.
    pub eps: f64,
}

impl<B: SelectiveScanBackend> RmsNorm<B> {
    /// Normalises `x` over its last dimension and scales it.
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        B::rms_norm(x, Some(self.weight.clone()), self.eps)
    }
}

/// `x / sqrt(mean(x^2) + eps)` over the last dimension, without a weight.
pub fn rms<B: SelectiveScanBackend, const D: usize>(x: Tensor<B, D>, eps: f64) -> Tensor<B, D> {
    B::rms_norm(x, None, eps)
}
