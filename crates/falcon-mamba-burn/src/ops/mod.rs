//! The op layer: what a backend must provide to run a Mamba model, and nothing about the model
//! itself (DESIGN.md §7). [`SelectiveScanBackend`] names the ops (the selective scan, the conv,
//! RMS norm, projections through [`PackedLinear`] weights, a fused decode step over
//! [`StepWeights`]); its provided methods are the tensor-op [`reference`] versions, and each
//! backend (the CPU one in [`crate::cpu`], the CubeCL ones in [`crate::cube`]) overrides what it
//! does better.
//!
//! Layouts are mamba-ssm's (channel-major, so one (batch, channel) pair reads contiguous time),
//! the same as the scalar oracle in [`falcon_mamba_core::reference`].

pub mod reference;
pub mod step;
pub mod weight;

use burn::prelude::*;
use falcon_mamba_core::{Result, WeightFormat, WeightMatrix};

use crate::state::State;
pub use step::{StepDims, StepLayer, StepWeights};
pub use weight::{Matrix, PackedLinear, TensorMatrix};

/// Inputs of one chunk of the selective scan.
#[derive(Debug, Clone)]
pub struct ScanInput<B: Backend> {
    /// The conv output. `[batch, channels, len]`
    pub x: Tensor<B, 3>,
    /// dt after dt_proj, before its bias and softplus. `[batch, channels, len]`
    pub delta: Tensor<B, 3>,
    /// Continuous-time A = -exp(A_log). `[channels, state]`
    pub a: Tensor<B, 2>,
    /// Input-dependent B. `[batch, state, len]`
    pub b: Tensor<B, 3>,
    /// Input-dependent C. `[batch, state, len]`
    pub c: Tensor<B, 3>,
    /// Skip connection D. `[channels]`
    pub d: Tensor<B, 1>,
    /// Gate: the output is multiplied by silu(z) when present. `[batch, channels, len]`
    pub z: Option<Tensor<B, 3>>,
    /// dt_proj's bias, added to delta before softplus when present. `[channels]`
    pub delta_bias: Option<Tensor<B, 1>>,
    /// The SSM state to continue from (zeros for a fresh sequence). `[batch, channels, state]`
    pub state: Tensor<B, 3>,
}

/// A backend that can run the Mamba mixer's sequence ops.
///
/// The provided methods are the tensor-op [`reference`] implementation, valid on every backend
/// (Autodiff included); a backend with a fused kernel overrides them.
pub trait SelectiveScanBackend: Backend {
    /// How this backend keeps a weight matrix (`[in, out]`, in its [`WeightFormat`]).
    ///
    /// [`WeightFormat`]: falcon_mamba_core::WeightFormat
    type Matrix: Matrix;

    /// Moves a weight matrix onto `device`, keeping its format; a format the backend cannot run
    /// there is [`falcon_mamba_core::Error::UnsupportedWeightFormat`].
    fn matrix(weights: WeightMatrix, device: &Self::Device) -> Result<Self::Matrix>;

    /// Whether [`SelectiveScanBackend::matrix`] takes weights in `format` on `device`.
    fn supports_weight_format(device: &Self::Device, format: WeightFormat) -> bool {
        let _ = (device, format);
        true
    }

    /// Embedding lookup: column `id` of `table` (`[hidden, vocab]`) for every id, widened to
    /// f32. ids `[batch, len]` → `[batch, len, hidden]`.
    fn embed(ids: Tensor<Self, 2, Int>, table: &Self::Matrix) -> Tensor<Self, 3>;

    /// `delta = softplus(delta + delta_bias)`; per time step `s = exp(delta * a) * s + delta * b * x`,
    /// `y = <s, c> + d * x`, `y *= silu(z)`; accumulation in f32.
    ///
    /// Returns `(y [batch, channels, len], final state [batch, channels, state])`.
    fn selective_scan(input: ScanInput<Self>) -> (Tensor<Self, 3>, Tensor<Self, 3>) {
        reference::selective_scan(input)
    }

    /// A projection `input @ weight + bias`: input `[batch, len, in]`, weight `[in, out]` in its
    /// format, accumulated in f32. Decoding is one matrix-vector product per weight matrix, the
    /// whole cost of a step on a CPU, which is why each backend brings its own.
    fn project(
        input: Tensor<Self, 3>,
        weight: &Self::Matrix,
        bias: Option<Tensor<Self, 1>>,
    ) -> Tensor<Self, 3>;

    /// RMS normalisation over the last dimension, `x / sqrt(mean(x^2) + eps) * weight` (no weight:
    /// Falcon Mamba's B/C/dt norms). An op of its own because as tensor ops it is seven of them,
    /// and a decode step runs four per layer on vectors of a few hundred values.
    fn rms_norm<const D: usize>(
        x: Tensor<Self, D>,
        weight: Option<Tensor<Self, 1>>,
        eps: f64,
    ) -> Tensor<Self, D> {
        reference::rms_norm(x, weight, eps)
    }

    /// Bytes of memory the device can still give to weights, where the backend can tell (the
    /// CPU: what the OS reports available); `None` where it cannot. Building a model checks that
    /// its weights fit before reading any.
    fn memory_available(device: &Self::Device) -> Option<u64> {
        let _ = device;
        None
    }

    /// Runs one pass of the model (its ops and kernels). CPU backends override it to run the pass
    /// on a thread of their pool: the kernels' parallel loops then start from a worker instead of
    /// handing work from the caller's thread to the pool and back at every op (~7% of a decode
    /// step on two cores).
    fn pass<R: Send>(pass: impl FnOnce() -> R + Send) -> R {
        pass()
    }

    /// A whole decode step (ids `[batch]` → logits `[batch, vocab]`, updating a state already
    /// checked against the weights and batch) as one fused pass over the stacked weights, for backends where a
    /// step's many small ops cost more than its arithmetic. `None` when the backend has no such
    /// pass or it does not apply (e.g. too many rows): the model then runs the step op by op.
    fn fused_step(
        weights: &StepWeights<'_, Self>,
        ids: Tensor<Self, 1, Int>,
        state: &mut State<Self>,
    ) -> Option<Result<Tensor<Self, 2>>> {
        let _ = (weights, ids, state);
        None
    }

    /// Depthwise causal conv1d with bias, then SiLU, continuing from `conv_state` (the K-1 previous
    /// pre-conv inputs per channel).
    ///
    /// x: `[batch, channels, len]`, weight: `[channels, kernel]`, bias: `[channels]`,
    /// conv_state: `[batch, channels, kernel - 1]`.
    /// Returns `(silu(conv(x) + bias) [batch, channels, len], new conv_state)`.
    fn causal_conv1d(
        x: Tensor<Self, 3>,
        weight: Tensor<Self, 2>,
        bias: Option<Tensor<Self, 1>>,
        conv_state: Tensor<Self, 3>,
    ) -> (Tensor<Self, 3>, Tensor<Self, 3>) {
        reference::causal_conv1d(x, weight, bias, conv_state)
    }
}
