//! Weight formats: the element type a weight matrix (a projection, the embedding, lm_head) is
//! kept in, and [`WeightMatrix`], a matrix in the library's layout handed from a checkpoint (or
//! a random initialiser) to a backend (DESIGN.md §8). Everything else in a model (the SSM
//! parameters, norms, conv taps, biases, the residual stream and the state) stays f32.

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};

/// The element type of a weight matrix in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WeightFormat {
    /// IEEE single precision, 4 bytes a weight.
    F32,
    /// bfloat16 (f32's exponent, 8 significant bits), 2 bytes a weight.
    Bf16,
    /// IEEE half precision (5-bit exponent, 11 significant bits), 2 bytes a weight.
    F16,
}

impl WeightFormat {
    /// Every format, in the order the CLI lists them.
    pub const ALL: [WeightFormat; 3] = [WeightFormat::F32, WeightFormat::Bf16, WeightFormat::F16];

    /// Bytes one weight takes.
    pub fn bytes_per_weight(self) -> usize {
        match self {
            WeightFormat::F32 => 4,
            WeightFormat::Bf16 | WeightFormat::F16 => 2,
        }
    }

    /// The lowercase name used by `--dtype` and `FALCON_MAMBA_DTYPE`.
    pub fn name(self) -> &'static str {
        match self {
            WeightFormat::F32 => "f32",
            WeightFormat::Bf16 => "bf16",
            WeightFormat::F16 => "f16",
        }
    }

    /// `value` narrowed to this format (round to nearest even) and widened back: what a weight
    /// of an f32 checkpoint becomes when loaded in this format.
    pub fn round(self, value: f32) -> f32 {
        match self {
            WeightFormat::F32 => value,
            WeightFormat::Bf16 => half::bf16::from_f32(value).to_f32(),
            WeightFormat::F16 => half::f16::from_f32(value).to_f32(),
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

/// The values of a [`WeightMatrix`], in its format (bf16 and f16 as their bit patterns).
#[derive(Debug, Clone, PartialEq)]
pub enum WeightData {
    /// f32 values.
    F32(Vec<f32>),
    /// bfloat16 bit patterns.
    Bf16(Vec<u16>),
    /// IEEE half bit patterns.
    F16(Vec<u16>),
}

/// A weight matrix in the library's layout: `[d_in, d_out]`, row-major (the transpose of
/// PyTorch's `[out, in]`), so that a decode step reads it front to back, one input's weights at
/// a time. For the embedding table that is `[hidden, vocab]`: the tied lm_head's layout, so the
/// two share one matrix.
#[derive(Debug, Clone, PartialEq)]
pub struct WeightMatrix {
    /// Rows: the input features.
    pub d_in: usize,
    /// Columns: the output features.
    pub d_out: usize,
    /// `d_in * d_out` values.
    pub data: WeightData,
}

impl WeightMatrix {
    /// The format the values are in.
    pub fn format(&self) -> WeightFormat {
        match self.data {
            WeightData::F32(_) => WeightFormat::F32,
            WeightData::Bf16(_) => WeightFormat::Bf16,
            WeightData::F16(_) => WeightFormat::F16,
        }
    }

    /// A matrix from `[d_in, d_out]` f32 values, narrowed to `format`.
    pub fn from_f32(values: Vec<f32>, d_in: usize, d_out: usize, format: WeightFormat) -> Self {
        debug_assert_eq!(values.len(), d_in * d_out);
        let data = match format {
            WeightFormat::F32 => WeightData::F32(values),
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
        };
        WeightMatrix { d_in, d_out, data }
    }

    /// A matrix from a PyTorch-layout `[d_out, d_in]` tensor's little-endian bytes stored as
    /// `stored`, transposed and converted to `format`. Same-format values keep their bits;
    /// others go through f32 (exact widening, round-to-nearest-even narrowing).
    pub fn from_torch_bytes(
        bytes: &[u8],
        stored: WeightFormat,
        d_out: usize,
        d_in: usize,
        format: WeightFormat,
    ) -> Self {
        debug_assert_eq!(bytes.len(), d_out * d_in * stored.bytes_per_weight());
        let bits16 = |i: usize| u16::from_le_bytes([bytes[2 * i], bytes[2 * i + 1]]);
        let f32_at = |i: usize| match stored {
            WeightFormat::F32 => f32::from_le_bytes([
                bytes[4 * i],
                bytes[4 * i + 1],
                bytes[4 * i + 2],
                bytes[4 * i + 3],
            ]),
            WeightFormat::Bf16 => half::bf16::from_bits(bits16(i)).to_f32(),
            WeightFormat::F16 => half::f16::from_bits(bits16(i)).to_f32(),
        };
        let data = match (stored, format) {
            (_, WeightFormat::F32) => WeightData::F32(transpose(d_out, d_in, f32_at)),
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
        };
        WeightMatrix { d_in, d_out, data }
    }

    /// The values widened to f32, `[d_in, d_out]`.
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
        }
    }

    /// Bytes the values take.
    pub fn bytes(&self) -> usize {
        self.d_in * self.d_out * self.format().bytes_per_weight()
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
