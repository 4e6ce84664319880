//! Weights in their format: [`PackedLinear`], the one weight type every projection (and the
//! embedding table, and lm_head) uses, over the backend's [`Matrix`] storage. A new format is
//! one more [`WeightFormat`] and one accumulate routine per backend; the model never sees it.

use std::fmt::Debug;

use burn::prelude::*;
use burn::tensor::backend::DTypeUsage;
use burn::tensor::{DType, FloatDType, TensorCreationOptions};
use falcon_mamba_core::{Error, Result, WeightData, WeightFormat, WeightMatrix};

use super::SelectiveScanBackend;

/// A backend's weight matrix: `[d_in, d_out]` in some [`WeightFormat`]. Cloning shares the
/// storage (the tied lm_head is the embedding table).
pub trait Matrix: Clone + Debug + Send + Sync {
    /// Input features (rows).
    fn d_in(&self) -> usize;
    /// Output features (columns).
    fn d_out(&self) -> usize;
    /// The element format.
    fn format(&self) -> WeightFormat;
    /// Bytes the values take.
    fn bytes(&self) -> usize {
        self.d_in() * self.d_out() * self.format().bytes_per_weight()
    }
}

/// `y = x @ W + b`: a weight matrix in its format and an optional f32 bias.
#[derive(Debug, Clone)]
pub struct PackedLinear<B: SelectiveScanBackend> {
    /// `[in, out]`
    pub weight: B::Matrix,
    /// `[out]`
    pub bias: Option<Tensor<B, 1>>,
}

impl<B: SelectiveScanBackend> PackedLinear<B> {
    /// Applies the projection to `input` `[batch, len, in]`, giving `[batch, len, out]`.
    pub fn forward(&self, input: Tensor<B, 3>) -> Tensor<B, 3> {
        B::project(input, &self.weight, self.bias.clone())
    }
}

/// A weight matrix held as a burn tensor of its own dtype, widened to f32 one matrix at a time
/// where it is used: the storage of the CubeCL backends, whose matmul wants one dtype.
#[derive(Debug, Clone)]
pub struct TensorMatrix<B: Backend> {
    /// `[in, out]`, dtype f32, bf16 or f16.
    pub tensor: Tensor<B, 2>,
    format: WeightFormat,
}

impl<B: Backend> Matrix for TensorMatrix<B> {
    fn d_in(&self) -> usize {
        self.tensor.dims()[0]
    }
    fn d_out(&self) -> usize {
        self.tensor.dims()[1]
    }
    fn format(&self) -> WeightFormat {
        self.format
    }
}

impl<B: Backend> TensorMatrix<B> {
    /// Uploads `weights` in their format, if the device can store and convert it.
    pub fn new(weights: WeightMatrix, device: &B::Device) -> Result<Self> {
        let format = weights.format();
        let shape = [weights.d_in, weights.d_out];
        if !Self::supports(device, format) {
            return Err(Error::UnsupportedWeightFormat {
                format,
                backend: B::name(device),
            });
        }
        let (data, dtype) = match weights.data {
            WeightData::F32(v) => (TensorData::new(v, shape), DType::F32),
            WeightData::Bf16(v) => (
                TensorData::new(v.into_iter().map(half::bf16::from_bits).collect(), shape),
                DType::BF16,
            ),
            WeightData::F16(v) => (
                TensorData::new(v.into_iter().map(half::f16::from_bits).collect(), shape),
                DType::F16,
            ),
        };
        let options = TensorCreationOptions::new(device.clone()).with_dtype(dtype);
        Ok(TensorMatrix {
            tensor: Tensor::from_data(data, options),
            format,
        })
    }

    /// Whether the device can store weights in `format` and convert them to f32.
    pub fn supports(device: &B::Device, format: WeightFormat) -> bool {
        let dtype = match format {
            WeightFormat::F32 => DType::F32,
            WeightFormat::Bf16 => DType::BF16,
            WeightFormat::F16 => DType::F16,
        };
        let usage = B::dtype_usage(device, dtype);
        usage.contains(DTypeUsage::Storage) && usage.contains(DTypeUsage::Arithmetic)
    }

    /// The matrix widened to f32 (the tensor itself when it already is).
    pub fn widened(&self) -> Tensor<B, 2> {
        match self.format {
            WeightFormat::F32 => self.tensor.clone(),
            _ => self.tensor.clone().cast(FloatDType::F32),
        }
    }

    /// [`SelectiveScanBackend::project`] from tensor ops.
    pub fn project(&self, input: Tensor<B, 3>, bias: Option<Tensor<B, 1>>) -> Tensor<B, 3> {
        burn::tensor::module::linear(input, self.widened(), bias)
    }

    /// [`SelectiveScanBackend::embed`] from tensor ops: the ids' columns of the table.
    pub fn embed(&self, ids: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        let [batch, len] = ids.dims();
        let hidden = self.d_in();
        let columns = self.tensor.clone().select(1, ids.reshape([batch * len])); // [hidden, batch * len]
        let columns = match self.format {
            WeightFormat::F32 => columns,
            _ => columns.cast(FloatDType::F32),
        };
        columns.transpose().reshape([batch, len, hidden])
    }
}
