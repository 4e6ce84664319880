//! Weights in their format: [`PackedLinear`], the one weight type every projection (and the
//! embedding table, and lm_head) uses, over the backend's [`Matrix`] storage. A new format is
//! one more [`WeightFormat`] and one accumulate routine per backend; the model never sees it.

use std::fmt::Debug;

use burn::prelude::*;
use burn::tensor::backend::DTypeUsage;
use burn::tensor::{DType, FloatDType, TensorCreationOptions};
use burn::tensor::ElementConversion;
use falcon_mamba_core::{quant, Error, Result, WeightData, WeightFormat, WeightMatrix};

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
    fn bytes(&self) -> usize;
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

/// A weight matrix as burn tensors: the storage of the CubeCL backends. Float formats are one
/// tensor of their own dtype, widened to f32 one matrix at a time where it is used (their
/// matmul wants one dtype). Quantized formats keep their codes packed in 32-bit words and their
/// scales in f32, and are dequantized where used by a chain of element-wise tensor ops (shift,
/// mask, convert, scale) that burn's fusion compiles into one CubeCL kernel.
#[derive(Debug, Clone)]
pub struct TensorMatrix<B: Backend> {
    storage: Storage<B>,
    d_in: usize,
    d_out: usize,
    format: WeightFormat,
}

#[derive(Debug, Clone)]
enum Storage<B: Backend> {
    /// `[in, out]`, dtype f32, bf16 or f16.
    Float(Tensor<B, 2>),
    /// Q8_0 / Q4_0: `codes` `[out, blocks, words]` (the block's code bytes, four to a word,
    /// little-endian), `scales` `[out, blocks, 1]`.
    Blocks {
        codes: Tensor<B, 3, Int>,
        scales: Tensor<B, 3>,
    },
    /// bitsandbytes 4-bit: `codes` `[out, blocks, words]` as above (high nibble first),
    /// `absmax` `[out, blocks, 1]`, `table` `[16]` (rounded to `dtype`).
    Bnb4 {
        codes: Tensor<B, 3, Int>,
        absmax: Tensor<B, 3>,
        table: Tensor<B, 1>,
        dtype: WeightFormat,
    },
}

impl<B: Backend> Matrix for TensorMatrix<B> {
    fn d_in(&self) -> usize {
        self.d_in
    }
    fn d_out(&self) -> usize {
        self.d_out
    }
    fn format(&self) -> WeightFormat {
        self.format
    }
    fn bytes(&self) -> usize {
        self.format
            .matrix_bytes(self.d_out, self.d_in)
            .map_or(usize::MAX, |b| b as usize)
    }
}

/// `bytes` (a whole number of words per block) as `[out, blocks, words]` 32-bit words.
fn pack_words<B: Backend>(
    bytes: &[u8],
    d_out: usize,
    blocks: usize,
    device: &B::Device,
) -> Tensor<B, 3, Int> {
    let words: Vec<i32> = bytes
        .chunks_exact(4)
        .map(|w| i32::from_le_bytes([w[0], w[1], w[2], w[3]]))
        .collect();
    let per_block = words.len() / (d_out * blocks).max(1);
    Tensor::from_data(TensorData::new(words, [d_out, blocks, per_block]), device)
}

impl<B: Backend> TensorMatrix<B> {
    /// Uploads `weights` in their format, if the device can store and convert it.
    pub fn new(weights: WeightMatrix, device: &B::Device) -> Result<Self> {
        let format = weights.format();
        let (d_in, d_out) = (weights.d_in, weights.d_out);
        let shape = [d_in, d_out];
        if !Self::supports(device, format) {
            return Err(Error::UnsupportedWeightFormat {
                format,
                backend: B::name(device),
            });
        }
        let float = |data: TensorData, dtype: DType| {
            let options = TensorCreationOptions::new(device.clone()).with_dtype(dtype);
            Storage::Float(Tensor::from_data(data, options))
        };
        let storage = match weights.data {
            WeightData::F32(v) => float(TensorData::new(v, shape), DType::F32),
            WeightData::Bf16(v) => float(
                TensorData::new(v.into_iter().map(half::bf16::from_bits).collect(), shape),
                DType::BF16,
            ),
            WeightData::F16(v) => float(
                TensorData::new(v.into_iter().map(half::f16::from_bits).collect(), shape),
                DType::F16,
            ),
            WeightData::Q8(bytes) | WeightData::Q4(bytes) => {
                let block = format
                    .block_format()
                    .unwrap_or_else(|| unreachable!("q8 and q4 are block formats"));
                let blocks = d_in / quant::BLOCK;
                let (scales, codes): (Vec<f32>, Vec<u8>) = bytes
                    .chunks_exact(block.block_bytes())
                    .fold((Vec::new(), Vec::new()), |(mut s, mut c), b| {
                        s.push(half::f16::from_le_bytes([b[0], b[1]]).to_f32());
                        c.extend_from_slice(&b[2..]);
                        (s, c)
                    });
                Storage::Blocks {
                    codes: pack_words(&codes, d_out, blocks, device),
                    scales: Tensor::from_data(
                        TensorData::new(scales, [d_out, blocks, 1]),
                        device,
                    ),
                }
            }
            WeightData::Bnb4(m) => {
                let blocks = d_in / m.block;
                Storage::Bnb4 {
                    codes: pack_words(&m.codes, d_out, blocks, device),
                    absmax: Tensor::from_data(
                        TensorData::new(m.absmax.clone(), [d_out, blocks, 1]),
                        device,
                    ),
                    table: Tensor::from_data(TensorData::new(m.table.to_vec(), [16]), device),
                    dtype: m.dtype,
                }
            }
        };
        Ok(TensorMatrix {
            storage,
            d_in,
            d_out,
            format,
        })
    }

    /// Whether the device can store weights in `format` and convert them to f32.
    pub fn supports(device: &B::Device, format: WeightFormat) -> bool {
        let dtype = match format {
            WeightFormat::Bf16 => DType::BF16,
            WeightFormat::F16 => DType::F16,
            _ => DType::F32,
        };
        let usage = B::dtype_usage(device, dtype);
        usage.contains(DTypeUsage::Storage) && usage.contains(DTypeUsage::Arithmetic)
    }

    /// Output rows `[rows, d_in]` of a quantized matrix, dequantized (`codes` and `scales` the
    /// rows' slices of the storage).
    fn dequantize(&self, codes: Tensor<B, 3, Int>, scale: Tensor<B, 3>) -> Tensor<B, 2> {
        let [rows, blocks, _] = codes.dims();
        let byte = |shift: i64, mask: i64| {
            codes
                .clone()
                .bitwise_right_shift_scalar(shift.elem())
                .bitwise_and_scalar(mask.elem())
        };
        // Four bytes per word, little-endian: element `4w + k` is byte k of word w.
        let bytes = |mask: i64, extra: i64| {
            let per_byte: Vec<_> = (0..4).map(|k| byte(8 * k + extra, mask)).collect();
            let stacked: Tensor<B, 4, Int> = Tensor::stack(per_byte, 3);
            stacked.reshape([rows as i32, blocks as i32, -1])
        };
        let values = match (&self.storage, self.format) {
            (Storage::Blocks { .. }, WeightFormat::Q8) => {
                // Sign-extend the bytes: (b ^ 0x80) - 0x80.
                let b = bytes(0xFF, 0);
                b.bitwise_xor_scalar(0x80.elem()).sub_scalar(0x80).float() * scale
            }
            (Storage::Blocks { .. }, _) => {
                // Low nibbles are elements 0..16, high nibbles 16..32.
                let codes = Tensor::cat(vec![bytes(0xF, 0), bytes(0xF, 4)], 2);
                codes.sub_scalar(8).float() * scale
            }
            (Storage::Bnb4 { table, dtype, .. }, _) => {
                // Byte k holds element 2k in its high nibble and 2k + 1 in its low one.
                let per_byte: Vec<_> = (0..4)
                    .flat_map(|k| [byte(8 * k + 4, 0xF), byte(8 * k, 0xF)])
                    .collect();
                let stacked: Tensor<B, 4, Int> = Tensor::stack(per_byte, 3);
                let count = stacked.dims().iter().product::<usize>();
                let codes = stacked.reshape([count]);
                let weights = table.clone().select(0, codes).reshape([rows as i32, blocks as i32, -1]);
                let weights = weights * scale;
                match dtype {
                    WeightFormat::F32 => weights,
                    WeightFormat::Bf16 => weights.cast(FloatDType::BF16).cast(FloatDType::F32),
                    _ => weights.cast(FloatDType::F16).cast(FloatDType::F32),
                }
            }
            (Storage::Float(_), _) => unreachable!("float storage is widened, not dequantized"),
        };
        values.reshape([rows, self.d_in])
    }

    /// The matrix widened (or dequantized) to f32, `[in, out]`.
    pub fn widened(&self) -> Tensor<B, 2> {
        match &self.storage {
            Storage::Float(t) if self.format == WeightFormat::F32 => t.clone(),
            Storage::Float(t) => t.clone().cast(FloatDType::F32),
            Storage::Blocks { codes, scales } => {
                self.dequantize(codes.clone(), scales.clone()).transpose()
            }
            Storage::Bnb4 { codes, absmax, .. } => {
                self.dequantize(codes.clone(), absmax.clone()).transpose()
            }
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
        let ids = ids.reshape([batch * len]);
        let columns = match &self.storage {
            Storage::Float(t) => {
                let columns = t.clone().select(1, ids); // [hidden, batch * len]
                let columns = match self.format {
                    WeightFormat::F32 => columns,
                    _ => columns.cast(FloatDType::F32),
                };
                return columns.transpose().reshape([batch, len, hidden]);
            }
            Storage::Blocks { codes, scales } => {
                self.dequantize(codes.clone().select(0, ids.clone()), scales.clone().select(0, ids))
            }
            Storage::Bnb4 { codes, absmax, .. } => {
                self.dequantize(codes.clone().select(0, ids.clone()), absmax.clone().select(0, ids))
            }
        }; // [batch * len, hidden]
        columns.reshape([batch, len, hidden])
    }
}
