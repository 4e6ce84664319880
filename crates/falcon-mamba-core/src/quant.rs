//! Block quantisation, the scalar reference every kernel is tested against: GGUF's Q8_0 and Q4_0
//! blocks, byte for byte what gguf-py's `gguf.quants.quantize` (and ggml's reference quantiser)
//! write, so a quantized matrix here is a GGUF tensor's bytes (DESIGN.md §8).
//!
//! A block covers [`BLOCK`] consecutive weights of one row of a PyTorch-layout `[out, in]`
//! matrix (along the input dimension) and starts with its f16 scale `d`:
//! - Q8_0: `{f16 d; i8 q[32]}`, weight `j` = `d · q[j]`;
//! - Q4_0: `{f16 d; u8 q[16]}`, weight `j` = `d · ((q[j] & 0xF) − 8)` and weight `j + 16` =
//!   `d · ((q[j] >> 4) − 8)`.
//!
//! Quantisation computes in f32 exactly as gguf-py's numpy code does (the scale's inverse in f32,
//! Q8_0 rounding half away from zero, Q4_0 truncating `x / d + 8.5`), so ties land alike.

/// Weights per block.
pub const BLOCK: usize = 32;

/// Bytes of one Q8_0 block.
pub const Q8_0_BYTES: usize = 2 + BLOCK;

/// Bytes of one Q4_0 block.
pub const Q4_0_BYTES: usize = 2 + BLOCK / 2;

/// numpy's `np_roundf` in gguf-py: round half away from zero, in f32.
fn round_half_away(n: f32) -> f32 {
    let a = n.abs();
    let floored = a.floor();
    let b = floored + (2.0 * (a - floored)).floor();
    if n > 0.0 {
        b
    } else if n < 0.0 {
        -b
    } else {
        0.0
    }
}

/// The scale's inverse as gguf-py takes it: 0 for a zero scale.
fn inverse(d: f32) -> f32 {
    if d == 0.0 {
        0.0
    } else {
        1.0 / d
    }
}

/// Quantizes one block of 32 weights into `out` (34 bytes) as Q8_0.
pub fn quantize_q8_0(block: &[f32], out: &mut [u8]) {
    debug_assert_eq!((block.len(), out.len()), (BLOCK, Q8_0_BYTES));
    let amax = block.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = inverse(d);
    out[..2].copy_from_slice(&half::f16::from_f32(d).to_le_bytes());
    for (q, &x) in out[2..].iter_mut().zip(block) {
        *q = round_half_away(x * id) as i8 as u8;
    }
}

/// Quantizes one block of 32 weights into `out` (18 bytes) as Q4_0.
pub fn quantize_q4_0(block: &[f32], out: &mut [u8]) {
    debug_assert_eq!((block.len(), out.len()), (BLOCK, Q4_0_BYTES));
    // The value of largest magnitude, the first one on a tie (numpy's argmax).
    let max = block[1..]
        .iter()
        .fold(block[0], |m, &v| if v.abs() > m.abs() { v } else { m });
    let d = max / -8.0;
    let id = inverse(d);
    out[..2].copy_from_slice(&half::f16::from_f32(d).to_le_bytes());
    let code = |x: f32| ((x * id + 8.5).trunc() as u8).min(15);
    for j in 0..BLOCK / 2 {
        out[2 + j] = code(block[j]) | (code(block[j + BLOCK / 2]) << 4);
    }
}

/// A block's scale, widened to f32.
fn scale(block: &[u8]) -> f32 {
    half::f16::from_le_bytes([block[0], block[1]]).to_f32()
}

/// Dequantizes one Q8_0 block (34 bytes) into `out` (32 weights).
pub fn dequantize_q8_0(block: &[u8], out: &mut [f32]) {
    let d = scale(block);
    for (o, &q) in out.iter_mut().zip(&block[2..]) {
        *o = f32::from(q as i8) * d;
    }
}

/// Dequantizes one Q4_0 block (18 bytes) into `out` (32 weights).
pub fn dequantize_q4_0(block: &[u8], out: &mut [f32]) {
    let d = scale(block);
    for (j, &q) in block[2..].iter().enumerate() {
        out[j] = f32::from((q & 0xF) as i8 - 8) * d;
        out[j + BLOCK / 2] = f32::from((q >> 4) as i8 - 8) * d;
    }
}

/// One of the two block formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BlockFormat {
    /// GGUF Q8_0.
    Q8_0,
    /// GGUF Q4_0.
    Q4_0,
}

impl BlockFormat {
    /// Bytes of one block.
    pub fn block_bytes(self) -> usize {
        match self {
            BlockFormat::Q8_0 => Q8_0_BYTES,
            BlockFormat::Q4_0 => Q4_0_BYTES,
        }
    }

    /// Bytes of a row of `d_in` weights (`d_in` a multiple of [`BLOCK`]).
    pub fn row_bytes(self, d_in: usize) -> usize {
        d_in / BLOCK * self.block_bytes()
    }

    /// Appends the blocks of `row` (a multiple of [`BLOCK`] weights) to `out`.
    pub fn quantize_row(self, row: &[f32], out: &mut Vec<u8>) {
        debug_assert_eq!(row.len() % BLOCK, 0);
        let start = out.len();
        out.resize(start + self.row_bytes(row.len()), 0);
        let blocks = out[start..].chunks_exact_mut(self.block_bytes());
        for (block, values) in blocks.zip(row.chunks_exact(BLOCK)) {
            match self {
                BlockFormat::Q8_0 => quantize_q8_0(values, block),
                BlockFormat::Q4_0 => quantize_q4_0(values, block),
            }
        }
    }

    /// Dequantizes the blocks of one row into `out` (`bytes.len() / block_bytes * 32` weights).
    pub fn dequantize_row(self, bytes: &[u8], out: &mut [f32]) {
        let blocks = bytes.chunks_exact(self.block_bytes());
        for (block, values) in blocks.zip(out.chunks_exact_mut(BLOCK)) {
            match self {
                BlockFormat::Q8_0 => dequantize_q8_0(block, values),
                BlockFormat::Q4_0 => dequantize_q4_0(block, values),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(format: BlockFormat, row: &[f32]) -> Vec<f32> {
        let mut bytes = Vec::new();
        format.quantize_row(row, &mut bytes);
        let mut out = vec![0.0; row.len()];
        format.dequantize_row(&bytes, &mut out);
        out
    }

    #[test]
    fn zero_block_is_zero() {
        for format in [BlockFormat::Q8_0, BlockFormat::Q4_0] {
            let mut bytes = Vec::new();
            format.quantize_row(&[0.0; 32], &mut bytes);
            assert_eq!(roundtrip(format, &[0.0; 32]), vec![0.0; 32]);
            // Q4_0's scale is 0 / -8 = -0, as in gguf-py.
            assert_eq!(half::f16::from_le_bytes([bytes[0], bytes[1]]).to_f32(), 0.0);
        }
    }

    #[test]
    fn error_within_half_a_step() {
        let row: Vec<f32> = (0..64)
            .map(|i| ((i * 37 % 23) as f32 - 11.0) / 7.0)
            .collect();
        // Q4_0 maps the largest magnitude to -8 steps, so values of the other sign near it clip
        // at +7: a whole step.
        for (format, step) in [
            (BlockFormat::Q8_0, 0.5 / 127.0),
            (BlockFormat::Q4_0, 1.0 / 8.0),
        ] {
            let out = roundtrip(format, &row);
            for (block, deq) in row.chunks(32).zip(out.chunks(32)) {
                let amax = block.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                for (x, y) in block.iter().zip(deq) {
                    // The rounding step, plus the scale's f16 rounding over the whole range.
                    assert!((x - y).abs() <= amax * step + amax * 1e-3, "{x} {y}");
                }
            }
        }
    }

    #[test]
    fn q4_layout_low_nibbles_first_half() {
        let mut row = [0.0f32; 32];
        row[0] = -8.0; // the scale: d = 1
        row[16] = 7.0;
        row[1] = 1.0;
        let mut bytes = Vec::new();
        BlockFormat::Q4_0.quantize_row(&row, &mut bytes);
        assert_eq!(half::f16::from_le_bytes([bytes[0], bytes[1]]).to_f32(), 1.0);
        assert_eq!(bytes[2], 15 << 4); // low: -8 + 8 = 0; high: 7 + 8 = 15
        assert_eq!(bytes[3], 9 | (8 << 4));
    }
}
