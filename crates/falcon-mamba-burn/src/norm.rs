//! RMS normalisation: the block and final norms (with a weight) and Falcon Mamba's weightless
//! B/C/dt norms.

use burn::module::Param;
use burn::prelude::*;

/// `x / sqrt(mean(x^2) + eps) * weight` over the last dimension.
#[derive(Module, Debug)]
pub struct RmsNorm<B: Backend> {
    /// Per-feature scale. `[hidden]`
    pub weight: Param<Tensor<B, 1>>,
    /// Added to the mean square.
    pub eps: f64,
}

impl<B: Backend> RmsNorm<B> {
    /// Normalises `x` over its last dimension and scales it.
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        rms(x, self.eps) * self.weight.val().unsqueeze()
    }
}

/// `x / sqrt(mean(x^2) + eps)` over the last dimension, without a weight.
pub fn rms<B: Backend, const D: usize>(x: Tensor<B, D>, eps: f64) -> Tensor<B, D> {
    let inv_rms = x
        .clone()
        .square()
        .mean_dim(D - 1)
        .add_scalar(eps)
        .sqrt()
        .recip();
    x * inv_rms
}
