//! Weight formats: the element type a weight matrix (a projection, the embedding, lm_head) is
//! kept in (f32, bf16, f16, the Q8_0/Q4_0 blocks of [`crate::quant`], bitsandbytes 4-bit), and
//! [`WeightMatrix`], a matrix in the library's layout handed from a checkpoint (or a random
//! initialiser) to a backend (DESIGN.md §8). Everything else in a model (the SSM parameters,
//! norms, conv taps, biases, the residual stream and the state) stays f32.

use std::fmt;
use std::str::FromStr;

use crate::bnb::Bnb4Matrix;
use crate::error::{Error, Result};
use crate::quant::{self, BlockFormat, BLOCK};

/// The element type of a weight matrix in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WeightFormat {
    /// IEEE single precision, 4 bytes a weight.
    F32,
    /// bfloat16 (f32's exponent, 8 significant bits), 2 bytes a weight.
    Bf16,
    /// IEEE half precision (5-bit exponent, 11 significant bits), 2 bytes a weight.
    F16,
    /// GGUF Q8_0 blocks ([`crate::quant`]): 32 int8 weights and an f16 scale, 34 bytes.
    Q8,
    /// GGUF Q4_0 blocks ([`crate::quant`]): 32 4-bit weights and an f16 scale, 18 bytes.
    Q4,
    /// bitsandbytes fp4/nf4 ([`crate::bnb`]), as TII's 4-bit checkpoints store it: only loaded,
    /// never chosen.
    Bnb4,
}

impl WeightFormat {
    /// The formats a user can choose (`--dtype`), in the order the CLI lists them.
    pub const ALL: [WeightFormat; 5] = [
        WeightFormat::F32,
        WeightFormat::Bf16,
        WeightFormat::F16,
        WeightFormat::Q8,
        WeightFormat::Q4,
    ];

    /// The lowercase name used by `--dtype` and `FALCON_MAMBA_DTYPE`.
    pub fn name(self) -> &'static str {
        match self {
            WeightFormat::F32 => "f32",
            WeightFormat::Bf16 => "bf16",
            WeightFormat::F16 => "f16",
            WeightFormat::Q8 => "q8",
            WeightFormat::Q4 => "q4",
            WeightFormat::Bnb4 => "bnb4",
        }
    }

    /// The block format of a quantized format.
    pub fn block_format(self) -> Option<BlockFormat> {
        match self {
            WeightFormat::Q8 => Some(BlockFormat::Q8_0),
            WeightFormat::Q4 => Some(BlockFormat::Q4_0),
            _ => None,
        }
    }

    /// The format a `[out, in]` matrix with `d_in` inputs is kept in when `self` is asked for:
    /// block formats need whole blocks along the input dimension, other matrices stay f32
    /// (exact, and as llama.cpp does with rows it cannot block).
    pub fn for_inputs(self, d_in: usize) -> WeightFormat {
        match self.block_format() {
            Some(_) if !d_in.is_multiple_of(BLOCK) => WeightFormat::F32,
            _ => self,
        }
    }

    /// Bytes a `[d_out, d_in]` matrix takes in this format (bitsandbytes: blocks of 64), `None`
    /// on overflow.
    pub fn matrix_bytes(self, d_out: usize, d_in: usize) -> Option<u64> {
        let n = (d_out as u64).checked_mul(d_in as u64)?;
        match self.for_inputs(d_in) {
            WeightFormat::F32 => n.checked_mul(4),
            WeightFormat::Bf16 | WeightFormat::F16 => n.checked_mul(2),
            WeightFormat::Q8 => Some(n / BLOCK as u64 * quant::Q8_0_BYTES as u64),
            WeightFormat::Q4 => Some(n / BLOCK as u64 * quant::Q4_0_BYTES as u64),
            WeightFormat::Bnb4 => Some(n.div_ceil(2) + n.div_ceil(64) * 4),
        }
    }

    /// `value` narrowed to this float format (round to nearest even) and widened back: what a
    /// weight of an f32 checkpoint becomes when loaded in this format. Block formats round a
    /// whole row at once ([`WeightFormat::round_matrix`]); for them (and bnb4) this is `value`.
    pub fn round(self, value: f32) -> f32 {
        match self {
            WeightFormat::Bf16 => half::bf16::from_f32(value).to_f32(),
            WeightFormat::F16 => half::f16::from_f32(value).to_f32(),
            _ => value,
        }
    }

    /// A PyTorch-layout `[d_out, d_in]` matrix of f32 values replaced by what loading it in this
    /// format keeps: narrowed and widened back, or quantized and dequantized row by row.
    pub fn round_matrix(self, values: &mut [f32], d_in: usize) {
        match self.for_inputs(d_in).block_format() {
            Some(block) => {
                let mut bytes = Vec::with_capacity(block.row_bytes(d_in));
                for row in values.chunks_exact_mut(d_in) {
                    bytes.clear();
                    block.quantize_row(row, &mut bytes);
                    block.dequantize_row(&bytes, row);
                }
            }
            None => values.iter_mut().for_each(|v| *v = self.round(*v)),
        }
    }

    /// Parses a `--dtype` value: `auto` (the checkpoint's own format) is `None`.
    pub fn parse_choice(text: &str) -> Result<Option<WeightFormat>> {
        if text == "auto" {
            Ok(None)
        } else {
            text.parse().map(Some)
        }
    }
}

impl fmt::Display for WeightFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for WeightFormat {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self> {
        WeightFormat::ALL
            .into_iter()
            .find(|f| f.name() == text)
            .ok_or_else(|| Error::UnknownWeightFormat { name: text.into() })
    }
}

/// The values of a [`WeightMatrix`], in its format.
#[derive(Debug, Clone, PartialEq)]
pub enum WeightData {
    /// f32 values, `[d_in, d_out]`.
    F32(Vec<f32>),
    /// bfloat16 bit patterns, `[d_in, d_out]`.
    Bf16(Vec<u16>),
    /// IEEE half bit patterns, `[d_in, d_out]`.
    F16(Vec<u16>),
    /// Q8_0 blocks, `d_out` rows of `d_in / 32` blocks (a GGUF tensor's bytes).
    Q8(Vec<u8>),
    /// Q4_0 blocks, laid out as [`WeightData::Q8`].
    Q4(Vec<u8>),
    /// bitsandbytes 4-bit, in its own `[out, in]` layout (`d_in` a multiple of its block).
    Bnb4(Bnb4Matrix),
}

/// A weight matrix handed from a checkpoint (or a random initialiser) to a backend. Float
/// formats are laid out `[d_in, d_out]`, row-major (the transpose of PyTorch's `[out, in]`), so
/// that a decode step reads them front to back, one input's weights at a time; for the embedding
/// table that is `[hidden, vocab]`, the tied lm_head's layout, so the two share one matrix. Block
/// formats keep PyTorch's `[out, in]` rows, blocked along the input (a row is one dot product,
/// and one embedding).
#[derive(Debug, Clone, PartialEq)]
pub struct WeightMatrix {
    /// Input features.
    pub d_in: usize,
    /// Output features.
    pub d_out: usize,
    /// The values.
    pub data: WeightData,
}

impl WeightMatrix {
    /// The format the values are in.
    pub fn format(&self) -> WeightFormat {
        match self.data {
            WeightData::F32(_) => WeightFormat::F32,
            WeightData::Bf16(_) => WeightFormat::Bf16,
            WeightData::F16(_) => WeightFormat::F16,
            WeightData::Q8(_) => WeightFormat::Q8,
            WeightData::Q4(_) => WeightFormat::Q4,
            WeightData::Bnb4(_) => WeightFormat::Bnb4,
        }
    }

    /// A matrix from `[d_in, d_out]` f32 values, in `format` (see [`WeightFormat::for_inputs`];
    /// bnb4 cannot be made here and gives f32).
    pub fn from_f32(values: Vec<f32>, d_in: usize, d_out: usize, format: WeightFormat) -> Self {
        debug_assert_eq!(values.len(), d_in * d_out);
        let data = match format.for_inputs(d_in) {
            WeightFormat::F32 | WeightFormat::Bnb4 => WeightData::F32(values),
            WeightFormat::Bf16 => WeightData::Bf16(
                values
                    .iter()
                    .map(|&v| half::bf16::from_f32(v).to_bits())
                    .collect(),
            ),
            WeightFormat::F16 => WeightData::F16(
                values
                    .iter()
                    .map(|&v| half::f16::from_f32(v).to_bits())
                    .collect(),
            ),
            WeightFormat::Q8 | WeightFormat::Q4 => {
                let torch = transpose(d_in, d_out, |i| values[i]); // [d_out, d_in]
                return Self::from_torch_rows(d_out, d_in, format, |o, row| {
                    row.copy_from_slice(&torch[o * d_in..(o + 1) * d_in])
                });
            }
        };
        WeightMatrix { d_in, d_out, data }
    }

    /// A matrix from a PyTorch-layout `[d_out, d_in]` tensor's little-endian bytes stored as
    /// float format `stored`, converted to `format`. Same-format values keep their bits; others
    /// go through f32 (exact widening, round-to-nearest-even narrowing, quantisation row by row:
    /// never the whole matrix in f32).
    pub fn from_torch_bytes(
        bytes: &[u8],
        stored: WeightFormat,
        d_out: usize,
        d_in: usize,
        format: WeightFormat,
    ) -> Self {
        debug_assert!(matches!(
            stored,
            WeightFormat::F32 | WeightFormat::Bf16 | WeightFormat::F16
        ));
        let width = if stored == WeightFormat::F32 { 4 } else { 2 };
        debug_assert_eq!(bytes.len(), d_out * d_in * width);
        let bits16 = |i: usize| u16::from_le_bytes([bytes[2 * i], bytes[2 * i + 1]]);
        let f32_at = |i: usize| match stored {
            WeightFormat::Bf16 => half::bf16::from_bits(bits16(i)).to_f32(),
            WeightFormat::F16 => half::f16::from_bits(bits16(i)).to_f32(),
            _ => f32::from_le_bytes([
                bytes[4 * i],
                bytes[4 * i + 1],
                bytes[4 * i + 2],
                bytes[4 * i + 3],
            ]),
        };
        let data = match (stored, format.for_inputs(d_in)) {
            (_, WeightFormat::F32 | WeightFormat::Bnb4) => {
                WeightData::F32(transpose(d_out, d_in, f32_at))
            }
            (WeightFormat::Bf16, WeightFormat::Bf16) => {
                WeightData::Bf16(transpose(d_out, d_in, bits16))
            }
            (WeightFormat::F16, WeightFormat::F16) => {
                WeightData::F16(transpose(d_out, d_in, bits16))
            }
            (_, WeightFormat::Bf16) => WeightData::Bf16(transpose(d_out, d_in, |i| {
                half::bf16::from_f32(f32_at(i)).to_bits()
            })),
            (_, WeightFormat::F16) => WeightData::F16(transpose(d_out, d_in, |i| {
                half::f16::from_f32(f32_at(i)).to_bits()
            })),
            (_, WeightFormat::Q8 | WeightFormat::Q4) => {
                return Self::from_torch_rows(d_out, d_in, format, |o, row| {
                    let first = o * d_in;
                    row.iter_mut()
                        .enumerate()
                        .for_each(|(i, v)| *v = f32_at(first + i))
                });
            }
        };
        WeightMatrix { d_in, d_out, data }
    }

    /// A matrix in `format` from a source of PyTorch-layout rows: `row(o, out)` writes row `o`
    /// (`d_in` values). Block formats quantize one row at a time; float formats gather the
    /// matrix in f32 first.
    pub fn from_torch_rows(
        d_out: usize,
        d_in: usize,
        format: WeightFormat,
        mut row: impl FnMut(usize, &mut [f32]),
    ) -> Self {
        let mut values = vec![0.0f32; d_in];
        match format.for_inputs(d_in).block_format() {
            Some(block) => {
                let mut bytes = Vec::with_capacity(d_out * block.row_bytes(d_in));
                for o in 0..d_out {
                    row(o, &mut values);
                    block.quantize_row(&values, &mut bytes);
                }
                let data = match block {
                    BlockFormat::Q8_0 => WeightData::Q8(bytes),
                    BlockFormat::Q4_0 => WeightData::Q4(bytes),
                };
                WeightMatrix { d_in, d_out, data }
            }
            None => {
                let mut torch = vec![0.0f32; d_out * d_in]; // [d_out, d_in]
                for (o, r) in torch.chunks_exact_mut(d_in.max(1)).enumerate() {
                    row(o, r);
                }
                let bytes: Vec<u8> = torch.iter().flat_map(|v| v.to_le_bytes()).collect();
                Self::from_torch_bytes(&bytes, WeightFormat::F32, d_out, d_in, format)
            }
        }
    }

    /// A matrix from stored Q8_0/Q4_0 rows (`block`), in `format`: the bytes as they are when
    /// the formats agree, else dequantized and converted.
    pub fn from_blocks(
        bytes: Vec<u8>,
        block: BlockFormat,
        d_out: usize,
        d_in: usize,
        format: WeightFormat,
    ) -> Self {
        if format.block_format() == Some(block) {
            let data = match block {
                BlockFormat::Q8_0 => WeightData::Q8(bytes),
                BlockFormat::Q4_0 => WeightData::Q4(bytes),
            };
            return WeightMatrix { d_in, d_out, data };
        }
        let row_bytes = block.row_bytes(d_in);
        Self::from_torch_rows(d_out, d_in, format, |o, row| {
            block.dequantize_row(&bytes[o * row_bytes..(o + 1) * row_bytes], row)
        })
    }

    /// A matrix from a bitsandbytes 4-bit weight, in `format`: kept as it is for bnb4 when its
    /// blocks fall within rows, else dequantized exactly and converted.
    pub fn from_bnb(m: Bnb4Matrix, format: WeightFormat) -> Self {
        let (d_out, d_in) = (m.d_out, m.d_in);
        if format == WeightFormat::Bnb4 && d_in % m.block == 0 && d_in % 2 == 0 {
            return WeightMatrix {
                d_in,
                d_out,
                data: WeightData::Bnb4(m),
            };
        }
        let torch = m.dequantize(); // [d_out, d_in]
        Self::from_torch_rows(d_out, d_in, format, |o, row| {
            row.copy_from_slice(&torch[o * d_in..(o + 1) * d_in])
        })
    }

    /// The values as f32, PyTorch-layout `[d_out, d_in]` (dequantized where quantized).
    pub fn to_torch_f32(&self) -> Vec<f32> {
        let (d_in, d_out) = (self.d_in, self.d_out);
        let blocks = |bytes: &[u8], block: BlockFormat| {
            let mut out = vec![0.0f32; d_out * d_in];
            let row_bytes = block.row_bytes(d_in);
            for (row, b) in out
                .chunks_exact_mut(d_in.max(1))
                .zip(bytes.chunks_exact(row_bytes.max(1)))
            {
                block.dequantize_row(b, row);
            }
            out
        };
        match &self.data {
            WeightData::Q8(b) => blocks(b, BlockFormat::Q8_0),
            WeightData::Q4(b) => blocks(b, BlockFormat::Q4_0),
            WeightData::Bnb4(m) => m.dequantize(),
            _ => {
                let values = self.to_f32();
                transpose(d_in, d_out, |i| values[i])
            }
        }
    }

    /// The values widened (or dequantized) to f32, `[d_in, d_out]`.
    pub fn to_f32(&self) -> Vec<f32> {
        match &self.data {
            WeightData::F32(v) => v.clone(),
            WeightData::Bf16(v) => v
                .iter()
                .map(|&b| half::bf16::from_bits(b).to_f32())
                .collect(),
            WeightData::F16(v) => v
                .iter()
                .map(|&b| half::f16::from_bits(b).to_f32())
                .collect(),
            WeightData::Q8(_) | WeightData::Q4(_) | WeightData::Bnb4(_) => {
                let torch = self.to_torch_f32();
                transpose(self.d_out, self.d_in, |i| torch[i])
            }
        }
    }

    /// Bytes the values take.
    pub fn bytes(&self) -> usize {
        match &self.data {
            WeightData::F32(v) => 4 * v.len(),
            WeightData::Bf16(v) | WeightData::F16(v) => 2 * v.len(),
            WeightData::Q8(b) | WeightData::Q4(b) => b.len(),
            WeightData::Bnb4(m) => m.bytes(),
        }
    }
}

/// The transpose of a row-major `[rows, cols]` matrix whose element `i` is `at(i)`, in tiles so
/// that both sides are read and written a cache line at a time.
fn transpose<T: Copy + Default>(rows: usize, cols: usize, at: impl Fn(usize) -> T) -> Vec<T> {
    const TILE: usize = 32;
    let mut out = vec![T::default(); rows * cols]; // [cols, rows]
    for r0 in (0..rows).step_by(TILE) {
        for c0 in (0..cols).step_by(TILE) {
            for r in r0..(r0 + TILE).min(rows) {
                for c in c0..(c0 + TILE).min(cols) {
                    out[c * rows + r] = at(r * cols + c);
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn torch_bytes_transpose_and_convert() {
        // [out = 2, in = 3] in PyTorch layout.
        let values = [1.0f32, 2.0, 3.0, 4.0, 5.0, 1.0 / 3.0];
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let m = WeightMatrix::from_torch_bytes(&bytes, WeightFormat::F32, 2, 3, WeightFormat::F32);
        assert_eq!(m.to_f32(), vec![1.0, 4.0, 2.0, 5.0, 3.0, 1.0 / 3.0]);
        let b = WeightMatrix::from_torch_bytes(&bytes, WeightFormat::F32, 2, 3, WeightFormat::Bf16);
        let third = WeightFormat::Bf16.round(1.0 / 3.0);
        assert_ne!(third, 1.0 / 3.0);
        assert_eq!(b.to_f32(), vec![1.0, 4.0, 2.0, 5.0, 3.0, third]);
        // Same format: the bits pass through.
        let halves: Vec<u8> = values
            .iter()
            .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
            .collect();
        let h = WeightMatrix::from_torch_bytes(&halves, WeightFormat::F16, 2, 3, WeightFormat::F16);
        assert_eq!(h.to_f32()[5], WeightFormat::F16.round(1.0 / 3.0));
    }

    #[test]
    fn formats_parse() {
        assert_eq!(WeightFormat::parse_choice("auto").unwrap(), None);
        assert_eq!(
            WeightFormat::parse_choice("bf16").unwrap(),
            Some(WeightFormat::Bf16)
        );
        assert!(matches!(
            WeightFormat::parse_choice("q3"),
            Err(Error::UnknownWeightFormat { .. })
        ));
    }
}
