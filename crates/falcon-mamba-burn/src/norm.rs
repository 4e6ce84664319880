//! RMS normalisation: the block and final norms (with a weight) and Falcon Mamba's weightless
//! B/C/dt norms.

use burn::module::Param;
use burn::prelude::*;

use crate::scan::SelectiveScanBackend;

/// `x / sqrt(mean(x^2) + eps) * weight` over the last dimension.
#[derive(Module, Debug)]
pub struct RmsNorm<B: Backend> {
    /// Per-feature scale. `[hidden]`
    pub weight: Param<Tensor<B, 1>>,
    /// Added to the mean square.
    pub eps: f64,
}

impl<B: SelectiveScanBackend> RmsNorm<B> {
    /// Normalises `x` over its last dimension and scales it.
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        B::rms_norm(x, Some(self.weight.val()), self.eps)
    }
}

/// `x / sqrt(mean(x^2) + eps)` over the last dimension, without a weight.
pub fn rms<B: SelectiveScanBackend, const D: usize>(x: Tensor<B, D>, eps: f64) -> Tensor<B, D> {
    B::rms_norm(x, None, eps)
}

/// [`SelectiveScanBackend::rms_norm`] from tensor ops.
pub fn rms_norm_reference<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    weight: Option<Tensor<B, 1>>,
    eps: f64,
) -> Tensor<B, D> {
    let inv_rms = x
        .clone()
        .square()
        .mean_dim(D - 1)
        .add_scalar(eps)
        .sqrt()
        .recip();
    let y = x * inv_rms;
    match weight {
        Some(w) => y * w.unsqueeze(),
        None => y,
    }
}
