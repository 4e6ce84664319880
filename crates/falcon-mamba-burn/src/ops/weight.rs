//! Weights in their format: [`PackedLinear`], the one weight type every projection (and the
//! embedding table, and lm_head) uses, over the backend's [`Matrix`] storage. A new format is
//! one more [`WeightFormat`] and one accumulate routine per backend; the model never sees it.

use std::fmt::Debug;

use burn::prelude::*;
use burn::tensor::backend::DTypeUsage;
use burn::tensor::ElementConversion;
use burn::tensor::{DType, FloatDType, TensorCreationOptions};
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
    /// Q8_0 / Q4_0: `codes` `[blocks, words, out]` (the block's code bytes, four to a word,
    /// little-endian), `scales` `[blocks, 1, out]`, `table` the value of each code (`[256]`:
    /// the int8 of a byte; `[16]`: a nibble less 8).
    Blocks {
        codes: Tensor<B, 3, Int>,
        scales: Tensor<B, 3>,
        table: Tensor<B, 1>,
    },
    /// bitsandbytes 4-bit: `codes` `[blocks, words, out]` as above (high nibble first),
    /// `absmax` `[blocks, 1, out]`, `table` `[16]` (rounded to `dtype`).
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

/// Per-row code bytes (`d_out` rows of `blocks` blocks of whole words) as `[blocks, words,
/// out]` 32-bit words: input-major, so that dequantising gives `[in, out]` directly.
fn pack_words<B: Backend>(
    bytes: &[u8],
    d_out: usize,
    blocks: usize,
    device: &B::Device,
) -> Tensor<B, 3, Int> {
    let words = bytes.len() / 4 / (d_out * blocks).max(1);
    let mut packed = vec![0i32; bytes.len() / 4];
    for (i, w) in bytes.chunks_exact(4).enumerate() {
        let (o, rest) = (i / (blocks * words), i % (blocks * words));
        packed[rest * d_out + o] = i32::from_le_bytes([w[0], w[1], w[2], w[3]]);
    }
    Tensor::from_data(TensorData::new(packed, [blocks, words, d_out]), device)
}

/// Per-row block scales (`d_out` rows of `blocks`) as `[blocks, 1, out]`.
fn pack_scales<B: Backend>(
    scales: &[f32],
    d_out: usize,
    blocks: usize,
    device: &B::Device,
) -> Tensor<B, 3> {
    let mut packed = vec![0f32; scales.len()];
    for (i, &s) in scales.iter().enumerate() {
        packed[(i % blocks) * d_out + i / blocks] = s;
    }
    Tensor::from_data(TensorData::new(packed, [blocks, 1, d_out]), device)
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
                let table: Vec<f32> = match block {
                    quant::BlockFormat::Q8_0 => (0..=255u8).map(|b| f32::from(b as i8)).collect(),
                    quant::BlockFormat::Q4_0 => (0..16).map(|q| q as f32 - 8.0).collect(),
                };
                let entries = table.len();
                Storage::Blocks {
                    codes: pack_words(&codes, d_out, blocks, device),
                    scales: pack_scales(&scales, d_out, blocks, device),
                    table: Tensor::from_data(TensorData::new(table, [entries]), device),
                }
            }
            WeightData::Bnb4(m) => {
                let blocks = d_in / m.block;
                Storage::Bnb4 {
                    codes: pack_words(&m.codes, d_out, blocks, device),
                    absmax: pack_scales(&m.absmax, d_out, blocks, device),
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

    /// Columns of a quantized matrix, dequantized to `[d_in, n]` (`codes` `[blocks, words, n]`
    /// and `scales` `[blocks, 1, n]`, the columns' slices of the storage). Shifts and masks take
    /// each code out of its word, and the code indexes a table of the values it stands for
    /// (GGUF's `q` and `q - 8`, bitsandbytes' code book): no integer arithmetic beyond that,
    /// one gather, and the result comes out `[in, out]` and contiguous, as the matmul wants it.
    fn dequantize(&self, codes: Tensor<B, 3, Int>, scale: Tensor<B, 3>) -> Tensor<B, 2> {
        let [blocks, words, n] = codes.dims();
        let field = |shift: i64, mask: i64| {
            codes
                .clone()
                .bitwise_right_shift_scalar(shift.elem())
                .bitwise_and_scalar(mask.elem())
        };
        // Four bytes per word, little-endian: byte k of word w is byte 4w + k of the block.
        // Field `i` of a byte is the one `shifts[i]` brings down: [blocks, bytes, fields, n].
        let fields = |shifts: &[i64], mask: i64| {
            let per_byte = shifts.len();
            let parts: Vec<_> = (0..4)
                .flat_map(|k| shifts.iter().map(move |&s| (8 * k + s, mask)))
                .map(|(shift, mask)| field(shift, mask))
                .collect();
            let stacked: Tensor<B, 4, Int> = Tensor::stack(parts, 2); // [blocks, words, 4 * per_byte, n]
            stacked.reshape([blocks, words * 4, per_byte, n])
        };
        let (indices, table) = match &self.storage {
            Storage::Blocks { table, .. } if self.format == WeightFormat::Q8 => {
                (fields(&[0], 0xFF).reshape([blocks, words * 4, n]), table)
            }
            Storage::Blocks { table, .. } => {
                // Byte j holds element j (low nibble) and j + 16 (high): [blocks, 2, 16, n].
                let nibbles = fields(&[0, 4], 0xF).swap_dims(1, 2);
                (nibbles.reshape([blocks, words * 8, n]), table)
            }
            Storage::Bnb4 { table, .. } => {
                // Byte k holds element 2k in its high nibble and 2k + 1 in its low one.
                (fields(&[4, 0], 0xF).reshape([blocks, words * 8, n]), table)
            }
            Storage::Float(_) => unreachable!("float storage is widened, not dequantized"),
        };
        let per_block = indices.dims()[1];
        let values = table
            .clone()
            .select(0, indices.reshape([blocks * per_block * n]))
            .reshape([blocks, per_block, n])
            * scale;
        let values = match &self.storage {
            Storage::Bnb4 { dtype, .. } => match dtype {
                WeightFormat::Bf16 => values.cast(FloatDType::BF16).cast(FloatDType::F32),
                WeightFormat::F16 => values.cast(FloatDType::F16).cast(FloatDType::F32),
                _ => values,
            },
            _ => values,
        };
        values.reshape([self.d_in, n])
    }

    /// The matrix widened (or dequantized) to f32, `[in, out]`.
    pub fn widened(&self) -> Tensor<B, 2> {
        match &self.storage {
            Storage::Float(t) if self.format == WeightFormat::F32 => t.clone(),
            Storage::Float(t) => t.clone().cast(FloatDType::F32),
            Storage::Blocks { codes, scales, .. } => self.dequantize(codes.clone(), scales.clone()),
            Storage::Bnb4 { codes, absmax, .. } => self.dequantize(codes.clone(), absmax.clone()),
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
            Storage::Blocks { codes, scales, .. } => self.dequantize(
                codes.clone().select(2, ids.clone()),
                scales.clone().select(2, ids),
            ),
            Storage::Bnb4 { codes, absmax, .. } => self.dequantize(
                codes.clone().select(2, ids.clone()),
                absmax.clone().select(2, ids),
            ),
        }; // [hidden, batch * len]
        columns.transpose().reshape([batch, len, hidden])
    }
}
