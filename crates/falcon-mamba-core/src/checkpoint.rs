//! Hugging Face safetensors checkpoints: a single `model.safetensors` or an index plus shards,
//! memory-mapped, checked name by name and shape by shape against the config before any tensor
//! is materialised.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use safetensors::tensor::{Dtype, Metadata};
use safetensors::SafeTensors;
use serde::Deserialize;

use crate::config::FalconMambaConfig;
use crate::error::{Error, Result};

const SINGLE_FILE: &str = "model.safetensors";
const INDEX_FILE: &str = "model.safetensors.index.json";

/// An opened checkpoint: every weight file mapped, every tensor located.
pub struct Checkpoint {
    dir: PathBuf,
    files: Vec<WeightFile>,
    /// Tensor name → index into `files`.
    locations: HashMap<String, usize>,
}

struct WeightFile {
    path: PathBuf,
    mmap: Mmap,
    /// Byte offset of the data section (tensor offsets are relative to it).
    data_start: usize,
    metadata: Metadata,
}

/// The name and shape of one tensor a config requires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorSpec {
    /// Full checkpoint name, e.g. `backbone.layers.0.mixer.A_log`.
    pub name: String,
    /// Shape in PyTorch layout.
    pub shape: Vec<usize>,
}

#[derive(Deserialize)]
struct ShardIndex {
    weight_map: BTreeMap<String, String>,
}

impl Checkpoint {
    /// Opens `dir/model.safetensors`, or `dir/model.safetensors.index.json` and the shards it names.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        let single = dir.join(SINGLE_FILE);
        let index = dir.join(INDEX_FILE);
        let (files, expected) = if single.is_file() {
            (vec![WeightFile::open(single)?], None)
        } else if index.is_file() {
            let text = std::fs::read_to_string(&index).map_err(|e| Error::io(&index, e))?;
            let parsed: ShardIndex = serde_json::from_str(&text).map_err(|source| Error::Json {
                path: index.clone(),
                source,
            })?;
            let mut shard_names: Vec<&String> = parsed.weight_map.values().collect();
            shard_names.sort();
            shard_names.dedup();
            if shard_names.is_empty() {
                return Err(Error::InvalidIndex {
                    path: index,
                    reason: "weight_map is empty".into(),
                });
            }
            let mut files = Vec::with_capacity(shard_names.len());
            for shard in shard_names {
                if Path::new(shard).components().count() != 1 {
                    return Err(Error::InvalidIndex {
                        path: index,
                        reason: format!("shard name {shard:?} is not a file name"),
                    });
                }
                files.push(WeightFile::open(dir.join(shard))?);
            }
            (files, Some((index, parsed.weight_map)))
        } else {
            return Err(Error::NoWeights { dir });
        };

        let mut locations = HashMap::new();
        for (i, file) in files.iter().enumerate() {
            for name in file.metadata.tensors().into_keys() {
                locations.insert(name, i);
            }
        }
        if let Some((index, weight_map)) = expected {
            for (name, shard) in &weight_map {
                let found = locations.get(name).map(|&i| &files[i].path);
                if found.and_then(|p| p.file_name()) != Some(shard.as_ref()) {
                    return Err(Error::InvalidIndex {
                        path: index,
                        reason: format!("tensor `{name}` is not in its shard {shard}"),
                    });
                }
            }
        }
        Ok(Checkpoint {
            dir,
            files,
            locations,
        })
    }

    /// The checkpoint directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether the checkpoint holds a tensor of this name.
    pub fn contains(&self, name: &str) -> bool {
        self.locations.contains_key(name)
    }

    /// Checks that every tensor `config` requires is present with the right shape and a float dtype.
    pub fn check(&self, config: &FalconMambaConfig) -> Result<()> {
        for spec in expected_tensors(config) {
            let (file, info) = self.locate(&spec.name)?;
            if info.shape != spec.shape {
                return Err(Error::ShapeMismatch {
                    name: spec.name,
                    path: file.path.clone(),
                    expected: spec.shape,
                    actual: info.shape.clone(),
                });
            }
            if !matches!(info.dtype, Dtype::F32 | Dtype::F16 | Dtype::BF16) {
                return Err(Error::UnsupportedDtype {
                    name: spec.name,
                    path: file.path.clone(),
                    dtype: format!("{:?}", info.dtype),
                });
            }
        }
        Ok(())
    }

    /// Reads a float tensor (F32, F16 or BF16 on disk) as f32 values in row-major order, with its shape.
    ///
    /// bf16 and f16 widen to f32 exactly.
    pub fn read_f32(&self, name: &str) -> Result<(Vec<f32>, Vec<usize>)> {
        let (file, info) = self.locate(name)?;
        let (start, end) = info.data_offsets;
        let bytes = &file.mmap[file.data_start + start..file.data_start + end];
        let values = match info.dtype {
            Dtype::F32 => bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            Dtype::BF16 => bytes
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            Dtype::F16 => bytes
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            other => {
                return Err(Error::UnsupportedDtype {
                    name: name.into(),
                    path: file.path.clone(),
                    dtype: format!("{other:?}"),
                })
            }
        };
        Ok((values, info.shape.clone()))
    }

    fn locate(&self, name: &str) -> Result<(&WeightFile, &safetensors::tensor::TensorInfo)> {
        let missing = || Error::MissingTensor {
            name: name.into(),
            dir: self.dir.clone(),
        };
        let file = &self.files[*self.locations.get(name).ok_or_else(missing)?];
        let info = file.metadata.info(name).ok_or_else(missing)?;
        Ok((file, info))
    }
}

impl WeightFile {
    fn open(path: PathBuf) -> Result<Self> {
        let file = File::open(&path).map_err(|e| Error::io(&path, e))?;
        // SAFETY: the map is read-only; a checkpoint modified while loaded is outside our contract,
        // as for every mmap-based loader (safetensors, candle, llama.cpp).
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(&path, e))?;
        let (header_len, metadata) =
            SafeTensors::read_metadata(&mmap).map_err(|e| Error::Safetensors {
                path: path.clone(),
                reason: describe(&e),
            })?;
        Ok(WeightFile {
            path,
            data_start: 8 + header_len,
            mmap,
            metadata,
        })
    }
}

fn describe(e: &safetensors::SafeTensorError) -> String {
    match e {
        safetensors::SafeTensorError::MetadataIncompleteBuffer => {
            "file size does not match its header (truncated or padded)".into()
        }
        safetensors::SafeTensorError::HeaderTooSmall => "file too short for a header".into(),
        other => other.to_string(),
    }
}

/// Every tensor a model with this config reads, with its PyTorch-layout shape.
pub fn expected_tensors(config: &FalconMambaConfig) -> Vec<TensorSpec> {
    let (h, d, n, k, r, v) = (
        config.hidden_size,
        config.intermediate_size,
        config.state_size,
        config.conv_kernel,
        config.time_step_rank,
        config.vocab_size,
    );
    let mut specs = vec![TensorSpec::new("backbone.embeddings.weight", [v, h])];
    for i in 0..config.num_hidden_layers {
        let p = format!("backbone.layers.{i}");
        specs.push(TensorSpec::new(format!("{p}.norm.weight"), [h]));
        specs.push(TensorSpec::new(
            format!("{p}.mixer.in_proj.weight"),
            [2 * d, h],
        ));
        if config.use_bias {
            specs.push(TensorSpec::new(format!("{p}.mixer.in_proj.bias"), [2 * d]));
        }
        specs.push(TensorSpec::new(
            format!("{p}.mixer.conv1d.weight"),
            [d, 1, k],
        ));
        if config.use_conv_bias {
            specs.push(TensorSpec::new(format!("{p}.mixer.conv1d.bias"), [d]));
        }
        specs.push(TensorSpec::new(
            format!("{p}.mixer.x_proj.weight"),
            [r + 2 * n, d],
        ));
        specs.push(TensorSpec::new(format!("{p}.mixer.dt_proj.weight"), [d, r]));
        specs.push(TensorSpec::new(format!("{p}.mixer.dt_proj.bias"), [d]));
        specs.push(TensorSpec::new(format!("{p}.mixer.A_log"), [d, n]));
        specs.push(TensorSpec::new(format!("{p}.mixer.D"), [d]));
        specs.push(TensorSpec::new(
            format!("{p}.mixer.out_proj.weight"),
            [h, d],
        ));
        if config.use_bias {
            specs.push(TensorSpec::new(format!("{p}.mixer.out_proj.bias"), [h]));
        }
    }
    specs.push(TensorSpec::new("backbone.norm_f.weight", [h]));
    if !config.tie_word_embeddings {
        specs.push(TensorSpec::new("lm_head.weight", [v, h]));
    }
    specs
}

impl TensorSpec {
    fn new<const R: usize>(name: impl Into<String>, shape: [usize; R]) -> Self {
        TensorSpec {
            name: name.into(),
            shape: shape.to_vec(),
        }
    }
}
