//! bitsandbytes 4-bit weights (fp4 and nf4, with or without double quantisation) as transformers
//! saves them, TII's `falcon-mamba-7b-4bit` and `-instruct-4bit` among them (DESIGN.md §8), and
//! their exact dequantisation, the scalar reference for the kernels.
//!
//! A quantized Linear `<name>` is stored as
//! - `<name>`: u8 `[(out·in + 1) / 2, 1]`, two 4-bit codes per byte over the row-major `[out, in]`
//!   matrix, element `2k` in the high nibble of byte `k`, element `2k + 1` in the low one;
//! - `<name>.absmax`: one scale per block of `blocksize` elements (f32, or u8 codes with double
//!   quantisation);
//! - `<name>.quant_map`: the 16-entry code table (f32);
//! - `<name>.quant_state.bitsandbytes__fp4|__nf4`: the bytes of a JSON object with `quant_type`,
//!   `blocksize`, `dtype` and `shape` (and `nested_blocksize`, `nested_offset` with double
//!   quantisation);
//! - with double quantisation, `<name>.nested_absmax` (f32, one per `nested_blocksize` scales) and
//!   `<name>.nested_quant_map` (f32[256]).
//!
//! Weight `i` is `dtype(dtype(quant_map[code(i)]) · absmax[i / blocksize])`, `dtype` the quant
//! state's (rounding to it as bitsandbytes' `dequantize_4bit` does); a doubly quantized scale is
//! `nested_quant_map[q] · nested_absmax[j / nested_blocksize] + nested_offset`, in f32.

use serde_json::Value;

use crate::weights::WeightFormat;

/// The suffixes of the companion tensors of a bitsandbytes 4-bit weight.
pub const ABSMAX: &str = ".absmax";
/// See [`ABSMAX`].
pub const QUANT_MAP: &str = ".quant_map";
/// See [`ABSMAX`].
pub const NESTED_ABSMAX: &str = ".nested_absmax";
/// See [`ABSMAX`].
pub const NESTED_QUANT_MAP: &str = ".nested_quant_map";
/// The quant-state tensor's suffix, followed by `fp4` or `nf4`.
pub const QUANT_STATE: &str = ".quant_state.bitsandbytes__";

/// A 4-bit weight matrix in bitsandbytes' layout, its scales resolved to f32.
#[derive(Debug, Clone, PartialEq)]
pub struct Bnb4Matrix {
    /// Output features (rows of the `[out, in]` matrix).
    pub d_out: usize,
    /// Input features.
    pub d_in: usize,
    /// `(d_out·d_in + 1) / 2` bytes, two codes each, high nibble first.
    pub codes: Vec<u8>,
    /// One scale per `block` elements of the flattened matrix.
    pub absmax: Vec<f32>,
    /// The code table, already rounded to `dtype`.
    pub table: [f32; 16],
    /// Elements per scale.
    pub block: usize,
    /// The dtype bitsandbytes dequantises to (each weight is rounded to it).
    pub dtype: WeightFormat,
}

/// What the quant-state JSON says.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantState {
    /// `fp4` or `nf4`.
    pub quant_type: String,
    /// Elements per absmax.
    pub blocksize: usize,
    /// The dequantised weights' dtype.
    pub dtype: WeightFormat,
    /// `[out, in]`.
    pub shape: Vec<usize>,
    /// With double quantisation: scales per nested absmax, and the offset added back.
    pub nested: Option<(usize, f32)>,
}

impl QuantState {
    /// Parses the quant-state JSON bytes; the reason names the field and value at fault.
    pub fn parse(bytes: &[u8]) -> Result<Self, String> {
        let json: Value =
            serde_json::from_slice(bytes).map_err(|e| format!("quant_state is not JSON: {e}"))?;
        let field = |key: &str| {
            json.get(key)
                .ok_or_else(|| format!("quant_state has no `{key}`"))
        };
        let quant_type = match field("quant_type")?.as_str() {
            Some(t @ ("fp4" | "nf4")) => t.to_string(),
            _ => {
                return Err(format!(
                    "unknown quant_type {}: expected \"fp4\" or \"nf4\"",
                    field("quant_type")?
                ))
            }
        };
        let count = |key: &str| -> Result<usize, String> {
            let v = field(key)?;
            v.as_u64()
                .filter(|&n| n > 0 && n <= 1 << 20)
                .map(|n| n as usize)
                .ok_or_else(|| format!("`{key}` = {v} is not a block size (1..=2^20)"))
        };
        let blocksize = count("blocksize")?;
        let dtype = match field("dtype")?.as_str() {
            Some("float32") => WeightFormat::F32,
            Some("bfloat16") => WeightFormat::Bf16,
            Some("float16") => WeightFormat::F16,
            _ => return Err(format!("unsupported dtype {}", field("dtype")?)),
        };
        let shape = field("shape")?
            .as_array()
            .and_then(|dims| {
                dims.iter()
                    .map(|d| d.as_u64().map(|d| d as usize))
                    .collect()
            })
            .ok_or_else(|| format!("`shape` = {} is not a list of sizes", json["shape"]))?;
        let nested = match json.get("nested_blocksize") {
            None => None,
            Some(_) => {
                let offset = field("nested_offset")?;
                let offset = offset
                    .as_f64()
                    .ok_or_else(|| format!("`nested_offset` = {offset} is not a number"))?;
                Some((count("nested_blocksize")?, offset as f32))
            }
        };
        Ok(QuantState {
            quant_type,
            blocksize,
            dtype,
            shape,
            nested,
        })
    }
}

/// The parts of one saved weight, as read from the checkpoint.
#[derive(Debug, Clone)]
pub struct Bnb4Parts {
    /// The packed codes.
    pub codes: Vec<u8>,
    /// The scales: f32, or u8 codes with double quantisation.
    pub absmax: Absmax,
    /// The 16-entry code table.
    pub quant_map: Vec<f32>,
    /// With double quantisation: the nested absmax and its 256-entry code table.
    pub nested: Option<(Vec<f32>, Vec<f32>)>,
    /// The parsed quant state.
    pub state: QuantState,
}

/// Scales as stored.
#[derive(Debug, Clone)]
pub enum Absmax {
    /// One f32 per block.
    F32(Vec<f32>),
    /// One u8 code per block (double quantisation).
    Codes(Vec<u8>),
}

impl Bnb4Matrix {
    /// Checks `parts` against each other and the `[d_out, d_in]` shape the config requires, and
    /// resolves the scales; the reason names the value at fault.
    pub fn new(parts: Bnb4Parts, d_out: usize, d_in: usize) -> Result<Self, String> {
        let Bnb4Parts {
            codes,
            absmax,
            quant_map,
            nested,
            state,
        } = parts;
        if state.shape != [d_out, d_in] {
            return Err(format!(
                "quant_state shape {:?} disagrees with the config's [{d_out}, {d_in}]",
                state.shape
            ));
        }
        let n = d_out * d_in;
        if codes.len() != n.div_ceil(2) {
            return Err(format!(
                "{} bytes of codes for {n} weights (expected {})",
                codes.len(),
                n.div_ceil(2)
            ));
        }
        let blocks = n.div_ceil(state.blocksize);
        let table: [f32; 16] = quant_map
            .as_slice()
            .try_into()
            .map_err(|_| format!("quant_map has {} entries, expected 16", quant_map.len()))?;
        let absmax = match (absmax, nested, state.nested) {
            (Absmax::F32(a), None, None) => a,
            (Absmax::Codes(q), Some((nested_absmax, nested_map)), Some((nested_block, offset))) => {
                if nested_map.len() != 256 {
                    return Err(format!(
                        "nested_quant_map has {} entries, expected 256",
                        nested_map.len()
                    ));
                }
                if nested_absmax.len() != q.len().div_ceil(nested_block) {
                    return Err(format!(
                        "nested_absmax has {} entries for {} scales in blocks of {nested_block}",
                        nested_absmax.len(),
                        q.len()
                    ));
                }
                q.iter()
                    .enumerate()
                    .map(|(j, &c)| {
                        nested_map[usize::from(c)] * nested_absmax[j / nested_block] + offset
                    })
                    .collect()
            }
            _ => {
                return Err(
                    "the absmax dtype, nested tensors and quant_state disagree about double quantisation"
                        .into(),
                )
            }
        };
        if absmax.len() != blocks {
            return Err(format!(
                "absmax has {} entries, expected {blocks} ({n} weights in blocks of {})",
                absmax.len(),
                state.blocksize
            ));
        }
        Ok(Bnb4Matrix {
            d_out,
            d_in,
            codes,
            absmax,
            table: table.map(|v| state.dtype.round(v)),
            block: state.blocksize,
            dtype: state.dtype,
        })
    }

    /// The code of flattened element `i`.
    pub fn code(&self, i: usize) -> usize {
        let byte = self.codes[i / 2];
        usize::from(if i.is_multiple_of(2) {
            byte >> 4
        } else {
            byte & 0xF
        })
    }

    /// Flattened element `i` dequantised exactly as bitsandbytes does.
    pub fn weight(&self, i: usize) -> f32 {
        self.dtype
            .round(self.table[self.code(i)] * self.absmax[i / self.block])
    }

    /// The matrix dequantised exactly as bitsandbytes does, row-major `[out, in]`.
    pub fn dequantize(&self) -> Vec<f32> {
        (0..self.d_out * self.d_in)
            .map(|i| self.weight(i))
            .collect()
    }

    /// Bytes the codes and scales take.
    pub fn bytes(&self) -> usize {
        self.codes.len() + 4 * self.absmax.len() + 64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(json: &str) -> Result<QuantState, String> {
        QuantState::parse(json.as_bytes())
    }

    #[test]
    fn parses_and_rejects() {
        let s = state(r#"{"quant_type":"nf4","blocksize":64,"dtype":"float32","shape":[4,64]}"#)
            .unwrap();
        assert_eq!(
            (s.blocksize, s.dtype, s.shape.clone()),
            (64, WeightFormat::F32, vec![4, 64])
        );
        let err = state(r#"{"quant_type":"int3","blocksize":64,"dtype":"float32","shape":[4,64]}"#)
            .unwrap_err();
        assert!(err.contains("int3"), "{err}");
        assert!(
            state(r#"{"quant_type":"nf4","blocksize":0,"dtype":"float32","shape":[1]}"#)
                .unwrap_err()
                .contains("blocksize")
        );
    }

    #[test]
    fn dequantizes_high_nibble_first() {
        let state =
            state(r#"{"quant_type":"fp4","blocksize":2,"dtype":"float32","shape":[1,3]}"#).unwrap();
        let parts = Bnb4Parts {
            codes: vec![0x12, 0x30],
            absmax: Absmax::F32(vec![2.0, 10.0]),
            quant_map: (0..16).map(|k| k as f32).collect(),
            nested: None,
            state,
        };
        let m = Bnb4Matrix::new(parts.clone(), 1, 3).unwrap();
        assert_eq!(m.dequantize(), vec![2.0, 4.0, 30.0]);
        let wrong = Bnb4Parts {
            absmax: Absmax::F32(vec![1.0]),
            ..parts
        };
        assert!(Bnb4Matrix::new(wrong, 1, 3).unwrap_err().contains("absmax"));
    }
}
