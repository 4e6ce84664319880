//! The CPU backend (burn-ndarray): weights in the library's own host buffers ([`HostMatrix`],
//! any format), the scan and conv as vectorised kernels, projections that read each weight once
//! per step, and a fused decode step.

mod blocks;
pub mod decode;
pub mod matrix;
pub mod matvec;
pub mod scan;
mod team;

use burn::backend::ndarray::{FloatNdArrayElement, IntNdArrayElement, NdArray, QuantElement};
use burn::backend::ndarray::{NdArrayTensor, SharedArray};
use burn::prelude::*;
use falcon_mamba_core::{Result, WeightMatrix};

pub use matrix::{HostMatrix, KernelPath};
pub use scan::{causal_conv1d, rms_norm, selective_scan};

use crate::ops::{Matrix, ScanInput, SelectiveScanBackend, StepWeights};
use crate::state::State;

impl<E, I, Q> SelectiveScanBackend for NdArray<E, I, Q>
where
    E: FloatNdArrayElement,
    I: IntNdArrayElement,
    Q: QuantElement,
    NdArrayTensor: From<SharedArray<E>> + From<SharedArray<I>>,
{
    type Matrix = HostMatrix;

    fn matrix(weights: WeightMatrix, _device: &Self::Device) -> Result<HostMatrix> {
        Ok(HostMatrix::from(weights))
    }

    fn embed(ids: Tensor<Self, 2, Int>, table: &HostMatrix) -> Tensor<Self, 3> {
        let [batch, len] = ids.dims();
        let hidden = table.d_in();
        let device = ids.device();
        let mut h = vec![0.0f32; batch * len * hidden]; // [batch, len, hidden]
        for (out, id) in h
            .chunks_exact_mut(hidden)
            .zip(ids.into_data().iter::<i64>())
        {
            // Ids were checked against the vocabulary by the model; a stray one reads as zeros.
            if let Ok(id) = usize::try_from(id) {
                if id < table.d_out() {
                    table.column(id, out);
                }
            }
        }
        Tensor::from_data(TensorData::new(h, [batch, len, hidden]), &device)
    }

    fn selective_scan(input: ScanInput<Self>) -> (Tensor<Self, 3>, Tensor<Self, 3>) {
        scan::selective_scan(input)
    }

    fn project(
        input: Tensor<Self, 3>,
        weight: &HostMatrix,
        bias: Option<Tensor<Self, 1>>,
    ) -> Tensor<Self, 3> {
        matvec::linear(input, weight, bias)
    }

    fn causal_conv1d(
        x: Tensor<Self, 3>,
        weight: Tensor<Self, 2>,
        bias: Option<Tensor<Self, 1>>,
        conv_state: Tensor<Self, 3>,
    ) -> (Tensor<Self, 3>, Tensor<Self, 3>) {
        scan::causal_conv1d(x, weight, bias, conv_state)
    }

    fn memory_available(_device: &Self::Device) -> Option<u64> {
        available_memory()
    }

    fn pass<R: Send>(pass: impl FnOnce() -> R + Send) -> R {
        rayon::scope(|_| pass())
    }

    fn fused_step(
        weights: &StepWeights<'_, Self>,
        ids: Tensor<Self, 1, Int>,
        state: &mut State<Self>,
    ) -> Option<Result<Tensor<Self, 2>>> {
        decode::step(weights, ids, state)
    }

    fn rms_norm<const D: usize>(
        x: Tensor<Self, D>,
        weight: Option<Tensor<Self, 1>>,
        eps: f64,
    ) -> Tensor<Self, D> {
        scan::rms_norm(x, weight, eps)
    }
}

/// `MemAvailable` of `/proc/meminfo` in bytes (Linux): what the OS can give without swapping.
fn available_memory() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line
        .trim_start_matches("MemAvailable:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    kib.checked_mul(1024)
}
