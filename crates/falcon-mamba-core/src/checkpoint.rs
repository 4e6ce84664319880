//! Hugging Face safetensors checkpoints: a single `model.safetensors` or an index plus shards,
//! checked name by name and shape by shape against the config before any tensor is read. Tensors
//! are read with positioned reads, one at a time: nothing stays resident but what the caller
//! keeps, and a file truncated while open is an I/O error rather than a fault.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, Metadata, TensorInfo};
use serde::Deserialize;

use crate::bnb::{self, Bnb4Matrix};
use crate::config::FalconMambaConfig;
use crate::error::{Error, Result};
use crate::quant;
use crate::tensors::ModelTensors;
use crate::text_file::{read_text, MAX_CONFIG_BYTES};
use crate::weights::{WeightData, WeightFormat, WeightMatrix};

const SINGLE_FILE: &str = "model.safetensors";
const INDEX_FILE: &str = "model.safetensors.index.json";

/// An opened checkpoint: every weight file open and its header parsed, every tensor located.
pub struct Checkpoint {
    dir: PathBuf,
    files: Vec<WeightFile>,
    /// Tensor name → index into `files`.
    locations: HashMap<String, usize>,
}

struct WeightFile {
    path: PathBuf,
    file: File,
    /// Byte offset of the data section (tensor offsets are relative to it).
    data_start: u64,
    metadata: Metadata,
}

/// The largest safetensors header read (the format's own limit).
const MAX_HEADER: u64 = 100_000_000;

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
        // `exists`, not `is_file`: a FIFO or device by either name is refused, not skipped.
        let (files, expected) = if single.exists() {
            (vec![WeightFile::open(single)?], None)
        } else if index.exists() {
            let text = read_text(&index, MAX_CONFIG_BYTES)?;
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
                if !is_shard_name(shard) {
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

    /// Checks that every tensor `config` requires is present with the right shape and dtype: a
    /// float tensor, or for a weight matrix also Q8_0/Q4_0 blocks or bitsandbytes 4-bit (whose
    /// quantisation state is checked too). Reads nothing but quantisation states.
    pub fn check(&self, config: &FalconMambaConfig) -> Result<()> {
        let tensors = ModelTensors::new(config);
        let matrices: HashSet<&str> = tensors.matrices().map(|t| t.name.as_str()).collect();
        for spec in tensors.iter() {
            if matrices.contains(spec.name.as_str()) {
                self.matrix_storage(&spec.name, spec.shape[0], spec.shape[1])?;
                continue;
            }
            let (file, info) = self.locate(&spec.name)?;
            if info.shape != spec.shape {
                return Err(shape_mismatch(file, &spec.name, &spec.shape, &info.shape));
            }
            float_format(file, &spec.name, info)?;
        }
        Ok(())
    }

    /// Reads a float tensor (F32, F16 or BF16 on disk) as f32 values in row-major order, with its shape.
    ///
    /// bf16 and f16 widen to f32 exactly.
    pub fn read_f32(&self, name: &str) -> Result<(Vec<f32>, Vec<usize>)> {
        let (file, info) = self.locate(name)?;
        let stored = float_format(file, name, info)?;
        let bytes = file.read(info)?;
        let shape = info.shape.clone();
        // A 1-column matrix's transpose is itself: the conversion is all that happens.
        let len = shape.iter().product();
        let values = WeightMatrix::from_torch_bytes(&bytes, stored, len, 1, WeightFormat::F32);
        Ok((values.to_f32(), shape))
    }

    /// Reads the weight matrix `name`, `[d_out, d_in]` in PyTorch's layout, as a [`WeightMatrix`]
    /// in `format` (`None`: as stored). Only the tensor's own bytes and the result are held.
    pub fn read_matrix(
        &self,
        name: &str,
        d_out: usize,
        d_in: usize,
        format: Option<WeightFormat>,
    ) -> Result<WeightMatrix> {
        let stored = self.matrix_storage(name, d_out, d_in)?;
        let format = format.unwrap_or(stored);
        let (file, info) = self.locate(name)?;
        let float = matches!(
            stored,
            WeightFormat::F32 | WeightFormat::Bf16 | WeightFormat::F16
        );
        if float && format.for_inputs(d_in).block_format().is_some() {
            return self.quantize_streaming(file, info, stored, d_out, d_in, format);
        }
        let bytes = file.read(info)?;
        Ok(match stored {
            WeightFormat::Bnb4 => {
                WeightMatrix::from_bnb(self.read_bnb(name, bytes, d_out, d_in)?, format)
            }
            WeightFormat::Q8 | WeightFormat::Q4 => {
                let block = stored
                    .block_format()
                    .unwrap_or_else(|| unreachable!("a block format"));
                WeightMatrix::from_blocks(bytes, block, d_out, d_in, format)
            }
            _ => WeightMatrix::from_torch_bytes(&bytes, stored, d_out, d_in, format),
        })
    }

    /// A float matrix quantized to a block format while it is read, a few MiB of rows at a
    /// time: quantizing a 7B's lm_head holds its blocks and one chunk, never the whole tensor.
    fn quantize_streaming(
        &self,
        file: &WeightFile,
        info: &TensorInfo,
        stored: WeightFormat,
        d_out: usize,
        d_in: usize,
        format: WeightFormat,
    ) -> Result<WeightMatrix> {
        const CHUNK_BYTES: usize = 8 << 20;
        let width = if stored == WeightFormat::F32 { 4 } else { 2 };
        let row_bytes = d_in * width;
        let rows_per_chunk = (CHUNK_BYTES / row_bytes.max(1)).max(1);
        let mut chunk = Vec::new();
        let mut first = 0;
        let mut failure = None;
        let m = WeightMatrix::from_torch_rows(d_out, d_in, format, |o, row| {
            if failure.is_some() {
                return;
            }
            if o == first + chunk.len() / row_bytes.max(1) || chunk.is_empty() {
                first = o;
                let n = rows_per_chunk.min(d_out - o);
                chunk.resize(n * row_bytes, 0);
                let offset = file.data_start + (info.data_offsets.0 + o * row_bytes) as u64;
                if let Err(e) = read_at(&file.file, &mut chunk, offset) {
                    failure = Some(Error::io(&file.path, e));
                    return;
                }
            }
            let bytes = &chunk[(o - first) * row_bytes..(o - first + 1) * row_bytes];
            let one = WeightMatrix::from_torch_bytes(bytes, stored, 1, d_in, WeightFormat::F32);
            if let WeightData::F32(values) = one.data {
                row.copy_from_slice(&values);
            }
        });
        match failure {
            Some(e) => Err(e),
            None => Ok(m),
        }
    }

    /// The format the weight matrix `name` (`[d_out, d_in]`) is stored in, after checking its
    /// shape (and, for bitsandbytes, its quantisation state) against those dimensions.
    pub fn matrix_storage(&self, name: &str, d_out: usize, d_in: usize) -> Result<WeightFormat> {
        let (file, info) = self.locate(name)?;
        if info.dtype != Dtype::U8 {
            if info.shape != [d_out, d_in] {
                return Err(shape_mismatch(file, name, &[d_out, d_in], &info.shape));
            }
            return float_format(file, name, info);
        }
        if self.contains(&format!("{name}{}", bnb::ABSMAX)) {
            self.check_bnb(name, d_out, d_in)?;
            return Ok(WeightFormat::Bnb4);
        }
        for format in [WeightFormat::Q8, WeightFormat::Q4] {
            let Some(block) = format.block_format() else {
                continue;
            };
            if d_in.is_multiple_of(quant::BLOCK) && info.shape == [d_out, block.row_bytes(d_in)] {
                return Ok(format);
            }
        }
        Err(Error::InvalidQuantization {
            name: name.into(),
            path: file.path.clone(),
            reason: format!(
                "u8 tensor of shape {:?} is neither Q8_0 nor Q4_0 rows of a [{d_out}, {d_in}] matrix, nor bitsandbytes 4-bit (no `{name}{}`)",
                info.shape,
                bnb::ABSMAX
            ),
        })
    }

    /// The quant state of bitsandbytes weight `name`, with the name of its tensor.
    fn bnb_state(&self, name: &str) -> Result<(String, bnb::QuantState)> {
        let prefix = format!("{name}{}", bnb::QUANT_STATE);
        let state_name = self
            .locations
            .keys()
            .find(|k| k.starts_with(&prefix))
            .cloned()
            .ok_or_else(|| Error::MissingTensor {
                name: format!("{prefix}nf4"),
                dir: self.dir.clone(),
            })?;
        let (file, info) = self.locate(&state_name)?;
        let invalid = |reason: String| Error::InvalidQuantization {
            name: state_name.clone(),
            path: file.path.clone(),
            reason,
        };
        if info.dtype != Dtype::U8 || info.data_offsets.1 - info.data_offsets.0 > 1 << 16 {
            return Err(invalid(format!(
                "expected the u8 bytes of a JSON object, found {:?} {:?}",
                info.dtype, info.shape
            )));
        }
        let state = bnb::QuantState::parse(&file.read(info)?).map_err(invalid)?;
        let suffix = &state_name[prefix.len()..];
        if suffix != state.quant_type {
            return Err(invalid(format!(
                "the tensor name says {suffix}, the state says quant_type {}",
                state.quant_type
            )));
        }
        Ok((state_name, state))
    }

    /// Checks a bitsandbytes weight's tensors against each other and `[d_out, d_in]` from
    /// their headers and quant state alone.
    fn check_bnb(&self, name: &str, d_out: usize, d_in: usize) -> Result<()> {
        let (state_name, state) = self.bnb_state(name)?;
        let n = d_out * d_in;
        let (file, _) = self.locate(&state_name)?;
        let invalid = |tensor: &str, reason: String| Error::InvalidQuantization {
            name: tensor.into(),
            path: file.path.clone(),
            reason,
        };
        if state.shape != [d_out, d_in] {
            return Err(invalid(
                &state_name,
                format!(
                    "quant_state shape {:?} disagrees with the config's [{d_out}, {d_in}]",
                    state.shape
                ),
            ));
        }
        let len = |tensor: &str| -> Result<(usize, Dtype)> {
            let (_, info) = self.locate(tensor)?;
            Ok((info.shape.iter().product(), info.dtype))
        };
        let expect = |tensor: String, want: usize, dtype: Dtype| -> Result<()> {
            let (got, got_dtype) = len(&tensor)?;
            if got != want || got_dtype != dtype {
                return Err(invalid(
                    &tensor,
                    format!("has {got} {got_dtype:?} values, expected {want} {dtype:?}"),
                ));
            }
            Ok(())
        };
        expect(name.into(), n.div_ceil(2), Dtype::U8)?;
        let blocks = n.div_ceil(state.blocksize);
        expect(format!("{name}{}", bnb::QUANT_MAP), 16, Dtype::F32)?;
        match state.nested {
            None => expect(format!("{name}{}", bnb::ABSMAX), blocks, Dtype::F32),
            Some((nested_block, _)) => {
                expect(format!("{name}{}", bnb::ABSMAX), blocks, Dtype::U8)?;
                expect(format!("{name}{}", bnb::NESTED_QUANT_MAP), 256, Dtype::F32)?;
                expect(
                    format!("{name}{}", bnb::NESTED_ABSMAX),
                    blocks.div_ceil(nested_block),
                    Dtype::F32,
                )
            }
        }
    }

    /// Reads bitsandbytes weight `name`'s companions around its `codes`.
    fn read_bnb(
        &self,
        name: &str,
        codes: Vec<u8>,
        d_out: usize,
        d_in: usize,
    ) -> Result<Bnb4Matrix> {
        let (state_name, state) = self.bnb_state(name)?;
        let f32s = |suffix: &str| self.read_f32(&format!("{name}{suffix}")).map(|(v, _)| v);
        let absmax_name = format!("{name}{}", bnb::ABSMAX);
        let (absmax, nested) = match state.nested {
            None => (bnb::Absmax::F32(f32s(bnb::ABSMAX)?), None),
            Some(_) => {
                let (file, info) = self.locate(&absmax_name)?;
                let codes = file.read(info)?;
                let nested = (f32s(bnb::NESTED_ABSMAX)?, f32s(bnb::NESTED_QUANT_MAP)?);
                (bnb::Absmax::Codes(codes), Some(nested))
            }
        };
        let parts = bnb::Bnb4Parts {
            codes,
            absmax,
            quant_map: f32s(bnb::QUANT_MAP)?,
            nested,
            state,
        };
        Bnb4Matrix::new(parts, d_out, d_in).map_err(|reason| {
            let (file, _) = self
                .locate(&state_name)
                .unwrap_or_else(|_| unreachable!("located above"));
            Error::InvalidQuantization {
                name: name.into(),
                path: file.path.clone(),
                reason,
            }
        })
    }

    fn locate(&self, name: &str) -> Result<(&WeightFile, &TensorInfo)> {
        let missing = || Error::MissingTensor {
            name: name.into(),
            dir: self.dir.clone(),
        };
        let file = &self.files[*self.locations.get(name).ok_or_else(missing)?];
        let info = file.metadata.info(name).ok_or_else(missing)?;
        Ok((file, info))
    }
}

/// Whether an index's shard name is a plain file name (letters, digits, `-`, `_`, `.`; not
/// starting with a dot), which joined to the checkpoint directory, or to a hub URL, stays there.
pub fn is_shard_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

impl WeightFile {
    fn open(path: PathBuf) -> Result<Self> {
        let invalid = |reason: String| Error::Safetensors {
            path: path.clone(),
            reason,
        };
        // Checked before opening: opening a FIFO blocks until someone writes to it.
        if !std::fs::metadata(&path)
            .map_err(|e| Error::io(&path, e))?
            .is_file()
        {
            return Err(invalid("not a regular file".into()));
        }
        let file = File::open(&path).map_err(|e| Error::io(&path, e))?;
        let file_len = file.metadata().map_err(|e| Error::io(&path, e))?.len();
        let mut len_bytes = [0u8; 8];
        read_at(&file, &mut len_bytes, 0)
            .map_err(|_| invalid("file too short for a header".into()))?;
        let header_len = u64::from_le_bytes(len_bytes);
        if header_len > MAX_HEADER || 8 + header_len > file_len {
            return Err(invalid(format!(
                "header length {header_len} does not fit the file ({file_len} bytes)"
            )));
        }
        let mut header = vec![0u8; header_len as usize];
        read_at(&file, &mut header, 8).map_err(|e| Error::io(&path, e))?;
        let metadata: Metadata =
            serde_json::from_slice(&header).map_err(|e| invalid(format!("invalid header: {e}")))?;
        let data_start = 8 + header_len;
        // Tensors must tile the data section exactly, each as long as its shape and dtype say.
        let tensors = metadata.tensors();
        let mut infos: Vec<_> = tensors.iter().collect();
        infos.sort_by_key(|(_, info)| info.data_offsets);
        let mut end = 0usize;
        for (name, info) in &infos {
            let (start, stop) = info.data_offsets;
            let bytes = info
                .shape
                .iter()
                .try_fold(info.dtype.bitsize(), |acc, &d| acc.checked_mul(d))
                .map(|bits| bits.div_ceil(8));
            if start != end || Some(stop.wrapping_sub(start)) != bytes || stop < start {
                return Err(invalid(format!(
                    "tensor `{name}` has offsets {start}..{stop}, which do not fit its shape and dtype"
                )));
            }
            end = stop;
        }
        if data_start + end as u64 != file_len {
            return Err(invalid(
                "file size does not match its header (truncated or padded)".into(),
            ));
        }
        drop(infos);
        drop(tensors);
        Ok(WeightFile {
            path,
            file,
            data_start,
            metadata,
        })
    }

    /// A tensor's bytes, read from the file.
    fn read(&self, info: &TensorInfo) -> Result<Vec<u8>> {
        let (start, stop) = info.data_offsets;
        let mut bytes = vec![0u8; stop - start];
        read_at(&self.file, &mut bytes, self.data_start + start as u64)
            .map_err(|e| Error::io(&self.path, e))?;
        Ok(bytes)
    }
}

/// Fills `buf` from `file` at `offset`, leaving the file position alone.
fn read_at(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        std::os::unix::fs::FileExt::read_exact_at(file, buf, offset)
    }
    #[cfg(windows)]
    {
        let mut done = 0;
        while done < buf.len() {
            let n = std::os::windows::fs::FileExt::seek_read(
                file,
                &mut buf[done..],
                offset + done as u64,
            )?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            done += n;
        }
        Ok(())
    }
}

/// The weight format of a float tensor; other dtypes are a typed error.
fn float_format(file: &WeightFile, name: &str, info: &TensorInfo) -> Result<WeightFormat> {
    match info.dtype {
        Dtype::F32 => Ok(WeightFormat::F32),
        Dtype::BF16 => Ok(WeightFormat::Bf16),
        Dtype::F16 => Ok(WeightFormat::F16),
        other => Err(Error::UnsupportedDtype {
            name: name.into(),
            path: file.path.clone(),
            dtype: format!("{other:?}"),
        }),
    }
}

fn shape_mismatch(file: &WeightFile, name: &str, expected: &[usize], actual: &[usize]) -> Error {
    Error::ShapeMismatch {
        name: name.into(),
        path: file.path.clone(),
        expected: expected.to_vec(),
        actual: actual.to_vec(),
    }
}
