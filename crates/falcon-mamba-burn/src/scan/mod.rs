//! The backend ops: the selective scan and conv (and the projections, whose decode-sized case
//! some backends serve better than burn's matmul). Model code calls [`SelectiveScanBackend`];
//! each backend picks an implementation by implementing the trait.
//!
//! Layouts are mamba-ssm's (channel-major, so one (batch, channel) pair reads contiguous time),
//! the same as the scalar oracle in [`falcon_mamba_core::reference`].

#[cfg(feature = "ndarray")]
pub mod cpu;
#[cfg(any(feature = "wgpu", feature = "cuda"))]
pub mod cube;
#[cfg(feature = "fusion")]
pub mod fusion;
pub mod reference;

use burn::prelude::*;
use falcon_mamba_core::Result;

use crate::{FalconMamba, State};

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
    /// `delta = softplus(delta + delta_bias)`; per time step `s = exp(delta * a) * s + delta * b * x`,
    /// `y = <s, c> + d * x`, `y *= silu(z)`; accumulation in f32.
    ///
    /// Returns `(y [batch, channels, len], final state [batch, channels, state])`.
    fn selective_scan(input: ScanInput<Self>) -> (Tensor<Self, 3>, Tensor<Self, 3>) {
        reference::selective_scan(input)
    }

    /// A projection `input @ weight + bias`: input `[batch, len, in]`, weight `[in, out]`.
    /// It lives here with the scan because it is the other op a backend may need to replace:
    /// decoding is one matrix-vector product per weight matrix, and burn-ndarray's matmul copies
    /// the weights on every call.
    fn project(
        input: Tensor<Self, 3>,
        weight: Tensor<Self, 2>,
        bias: Option<Tensor<Self, 1>>,
    ) -> Tensor<Self, 3> {
        burn::tensor::module::linear(input, weight, bias)
    }

    /// RMS normalisation over the last dimension, `x / sqrt(mean(x^2) + eps) * weight` (no weight:
    /// Falcon Mamba's B/C/dt norms). An op of its own because as tensor ops it is seven of them,
    /// and a decode step runs four per layer on vectors of a few hundred values.
    fn rms_norm<const D: usize>(
        x: Tensor<Self, D>,
        weight: Option<Tensor<Self, 1>>,
        eps: f64,
    ) -> Tensor<Self, D> {
        crate::norm::rms_norm_reference(x, weight, eps)
    }

    /// Runs one pass of the model (its ops and kernels). CPU backends override it to run the pass
    /// on a thread of their pool: the kernels' parallel loops then start from a worker instead of
    /// handing work from the caller's thread to the pool and back at every op (~7% of a decode
    /// step on two cores).
    fn pass<R: Send>(pass: impl FnOnce() -> R + Send) -> R {
        pass()
    }

    /// The whole model's decode step (ids `[batch]` → logits `[batch, vocab]`, updating a state
    /// already checked against the model and batch) as one fused pass, for backends where a
    /// step's many small ops cost more than its arithmetic. `None` when the backend has no such
    /// pass or it does not apply (e.g. too many rows): the model then runs the step op by op.
    fn fused_step(
        model: &FalconMamba<Self>,
        ids: Tensor<Self, 1, Int>,
        state: &mut State<Self>,
    ) -> Option<Result<Tensor<Self, 2>>> {
        let _ = (model, ids, state);
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

#[cfg(feature = "ndarray")]
impl<E, I, Q> SelectiveScanBackend for burn::backend::NdArray<E, I, Q>
where
    E: burn::backend::ndarray::FloatNdArrayElement,
    I: burn::backend::ndarray::IntNdArrayElement,
    Q: burn::backend::ndarray::QuantElement,
    burn::backend::ndarray::NdArrayTensor:
        From<burn::backend::ndarray::SharedArray<E>> + From<burn::backend::ndarray::SharedArray<I>>,
{
    fn selective_scan(input: ScanInput<Self>) -> (Tensor<Self, 3>, Tensor<Self, 3>) {
        cpu::selective_scan(input)
    }

    fn project(
        input: Tensor<Self, 3>,
        weight: Tensor<Self, 2>,
        bias: Option<Tensor<Self, 1>>,
    ) -> Tensor<Self, 3> {
        crate::matvec::linear(input, weight, bias)
    }

    fn causal_conv1d(
        x: Tensor<Self, 3>,
        weight: Tensor<Self, 2>,
        bias: Option<Tensor<Self, 1>>,
        conv_state: Tensor<Self, 3>,
    ) -> (Tensor<Self, 3>, Tensor<Self, 3>) {
        cpu::causal_conv1d(x, weight, bias, conv_state)
    }

    fn pass<R: Send>(pass: impl FnOnce() -> R + Send) -> R {
        rayon::scope(|_| pass())
    }

    fn fused_step(
        model: &FalconMamba<Self>,
        ids: Tensor<Self, 1, Int>,
        state: &mut State<Self>,
    ) -> Option<Result<Tensor<Self, 2>>> {
        crate::decode::step(model, ids, state)
    }

    fn rms_norm<const D: usize>(
        x: Tensor<Self, D>,
        weight: Option<Tensor<Self, 1>>,
        eps: f64,
    ) -> Tensor<Self, D> {
        cpu::rms_norm(x, weight, eps)
    }
}

/// burn-wgpu and burn-cuda (burn's `Wgpu` and `Cuda` without its `fusion` feature; with it, they
/// wrap this backend in `Fusion`, see [`fusion`]) are this backend over different CubeCL
/// runtimes; one kernel source serves both.
#[cfg(any(feature = "wgpu", feature = "cuda"))]
impl<R, F, I, BT> SelectiveScanBackend for burn_cubecl::CubeBackend<R, F, I, BT>
where
    R: burn_cubecl::CubeRuntime,
    F: burn_cubecl::FloatElement,
    I: burn_cubecl::IntElement,
    BT: burn_cubecl::BoolElement,
{
    fn selective_scan(input: ScanInput<Self>) -> (Tensor<Self, 3>, Tensor<Self, 3>) {
        cube::selective_scan(input)
    }

    fn causal_conv1d(
        x: Tensor<Self, 3>,
        weight: Tensor<Self, 2>,
        bias: Option<Tensor<Self, 1>>,
        conv_state: Tensor<Self, 3>,
    ) -> (Tensor<Self, 3>, Tensor<Self, 3>) {
        cube::causal_conv1d(x, weight, bias, conv_state)
    }
}
