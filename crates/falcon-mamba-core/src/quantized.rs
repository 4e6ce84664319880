//! Writing a checkpoint with its weight matrices already in a chosen format (the `quantize`
//! example), so that loading it needs no conversion.
//!
//! The directory written is a Hugging Face checkpoint: the source's config.json with a
//! `quantization_config` added (`quant_method` `"falcon-mamba"`, `weight_format`), its other
//! files (tokenizer, generation config, chat template) copied, and one `model.safetensors` in
//! which every weight matrix (see [`crate::ModelTensors::matrices`]) is stored
//! - in q8 or q4: as u8 `[out, in / 32 · 34]` or `[out, in / 32 · 18]`, each row the GGUF Q8_0 or
//!   Q4_0 blocks of PyTorch's `[out, in]` row ([`crate::quant`]); a matrix whose input dimension
//!   is not a multiple of 32 stays f32;
//! - in f32, bf16 or f16: as that dtype, PyTorch's `[out, in]`;
//!
//! and everything else in f32. [`crate::Checkpoint`] recognises the block rows by their dtype and
//! shape. Tensors are converted and written one at a time: only one matrix is held at once.

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use serde_json::{json, Value};

use crate::config::FalconMambaConfig;
use crate::error::{Error, Result};
use crate::tensors::{ModelTensors, TensorSpec};
use crate::weights::{WeightData, WeightFormat};
use crate::Checkpoint;

/// The `quant_method` written into config.json.
pub const QUANT_METHOD: &str = "falcon-mamba";

/// How one tensor is written.
struct Planned<'a> {
    spec: &'a TensorSpec,
    /// The matrix format, for a weight matrix.
    format: Option<WeightFormat>,
    dtype: &'static str,
    shape: Vec<usize>,
    bytes: u64,
}

/// Converts the checkpoint in `src` to `format` into `dst` (created if needed), calling
/// `progress(tensors_done, tensors_total)` after each tensor. Returns the bytes of
/// `model.safetensors`.
pub fn write_quantized(
    src: &Path,
    dst: &Path,
    format: WeightFormat,
    mut progress: impl FnMut(usize, usize),
) -> Result<u64> {
    if format == WeightFormat::Bnb4 {
        return Err(Error::UnknownWeightFormat {
            name: format.name().into(),
        });
    }
    let same = |a: &Path, b: &Path| match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    if same(src, dst) {
        return Err(Error::io(
            dst,
            std::io::Error::other("the output directory is the source checkpoint"),
        ));
    }
    let config_path = src.join("config.json");
    let config = FalconMambaConfig::from_file(&config_path)?;
    let checkpoint = Checkpoint::open(src)?;
    checkpoint.check(&config)?;
    std::fs::create_dir_all(dst).map_err(|e| Error::io(dst, e))?;

    let tensors = ModelTensors::new(&config);
    let matrices: HashSet<&str> = tensors.matrices().map(|t| t.name.as_str()).collect();
    let plan: Vec<Planned<'_>> = tensors
        .iter()
        .map(|spec| {
            if !matrices.contains(spec.name.as_str()) {
                return Planned {
                    spec,
                    format: None,
                    dtype: "F32",
                    shape: spec.shape.clone(),
                    bytes: 4 * spec.len() as u64,
                };
            }
            let (d_out, d_in) = (spec.shape[0], spec.shape[1]);
            let kept = format.for_inputs(d_in);
            let bytes = kept.matrix_bytes(d_out, d_in).unwrap_or(u64::MAX);
            let (dtype, shape) = match kept {
                WeightFormat::Q8 | WeightFormat::Q4 => {
                    ("U8", vec![d_out, bytes as usize / d_out.max(1)])
                }
                WeightFormat::Bf16 => ("BF16", spec.shape.clone()),
                WeightFormat::F16 => ("F16", spec.shape.clone()),
                _ => ("F32", spec.shape.clone()),
            };
            Planned {
                spec,
                format: Some(kept),
                dtype,
                shape,
                bytes,
            }
        })
        .collect();

    let weights = dst.join("model.safetensors");
    let mut out = BufWriter::new(File::create(&weights).map_err(|e| Error::io(&weights, e))?);
    let io = |e| Error::io(&weights, e);
    out.write_all(&header(&plan, format)).map_err(io)?;
    let total = plan.len();
    for (done, p) in plan.iter().enumerate() {
        let bytes: Vec<u8> = match p.format {
            None => checkpoint
                .read_f32(&p.spec.name)?
                .0
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
            Some(kept) => {
                let (d_out, d_in) = (p.spec.shape[0], p.spec.shape[1]);
                let m = checkpoint.read_matrix(&p.spec.name, d_out, d_in, Some(kept))?;
                match m.data {
                    WeightData::Q8(b) | WeightData::Q4(b) => b,
                    WeightData::Bf16(_) | WeightData::F16(_) => {
                        let round = |v: f32| match kept {
                            WeightFormat::Bf16 => half::bf16::from_f32(v).to_le_bytes(),
                            _ => half::f16::from_f32(v).to_le_bytes(),
                        };
                        // Exact: the values are already in the format.
                        m.to_torch_f32().into_iter().flat_map(round).collect()
                    }
                    _ => m
                        .to_torch_f32()
                        .iter()
                        .flat_map(|v| v.to_le_bytes())
                        .collect(),
                }
            }
        };
        debug_assert_eq!(bytes.len() as u64, p.bytes);
        out.write_all(&bytes).map_err(io)?;
        progress(done + 1, total);
    }
    out.flush().map_err(io)?;
    drop(out);

    copy_companions(src, dst)?;
    let mut config_json: Value = serde_json::from_slice(
        &std::fs::read(&config_path).map_err(|e| Error::io(&config_path, e))?,
    )
    .map_err(|source| Error::Json {
        path: config_path.clone(),
        source,
    })?;
    config_json["quantization_config"] = json!({
        "quant_method": QUANT_METHOD,
        "weight_format": format.name(),
    });
    let dst_config = dst.join("config.json");
    let text = serde_json::to_string_pretty(&config_json).map_err(|source| Error::Json {
        path: dst_config.clone(),
        source,
    })?;
    std::fs::write(&dst_config, text).map_err(|e| Error::io(&dst_config, e))?;
    std::fs::metadata(&weights)
        .map(|m| m.len())
        .map_err(|e| Error::io(&weights, e))
}

/// The safetensors header (length prefix included) of `plan`, in its order.
fn header(plan: &[Planned<'_>], format: WeightFormat) -> Vec<u8> {
    let mut entries = BTreeMap::new();
    entries.insert(
        "__metadata__".to_string(),
        json!({ "format": "pt", "falcon_mamba.weight_format": format.name() }),
    );
    let mut offset = 0u64;
    for p in plan {
        entries.insert(
            p.spec.name.clone(),
            json!({ "dtype": p.dtype, "shape": p.shape, "data_offsets": [offset, offset + p.bytes] }),
        );
        offset += p.bytes;
    }
    let mut text = serde_json::to_vec(&entries).unwrap_or_default();
    // The data section starts 8-byte aligned, as safetensors writes it.
    while text.len() % 8 != 0 {
        text.push(b' ');
    }
    let mut bytes = (text.len() as u64).to_le_bytes().to_vec();
    bytes.extend(text);
    bytes
}

/// Copies every file of `src` but the weights and config.json (tokenizer, generation config,
/// chat template) to `dst`.
fn copy_companions(src: &Path, dst: &Path) -> Result<()> {
    let entries = std::fs::read_dir(src).map_err(|e| Error::io(src, e))?;
    for entry in entries {
        let path = entry.map_err(|e| Error::io(src, e))?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let weights = name.ends_with(".safetensors") || name == "model.safetensors.index.json";
        if path.is_file() && !weights && name != "config.json" {
            std::fs::copy(&path, dst.join(name)).map_err(|e| Error::io(&path, e))?;
        }
    }
    Ok(())
}
