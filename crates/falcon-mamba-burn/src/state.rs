//! The recurrent state: what makes decoding O(1) per token. Per layer a conv state (the K-1 most
//! recent pre-conv inputs) and an SSM state; its size never depends on the context length.

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use burn::prelude::*;
use falcon_mamba_core::{Error, FalconMambaConfig, Result};
use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;

/// Marks a safetensors file as a saved state.
const FORMAT: &str = "falcon-mamba-state/1";
/// Prefix of caller metadata in the file header, apart from the shape keys.
const USER: &str = "user.";
/// The longest header a state file may have: the shape, the tensor list and caller metadata.
const MAX_HEADER: u64 = 64 << 20;

/// Reads a safetensors header (its length, then the JSON) from the start of a file of `len`
/// bytes, returning the header's length and its metadata.
fn read_header(
    file: &mut std::fs::File,
    len: u64,
) -> std::result::Result<(u64, BTreeMap<String, String>), String> {
    let mut prefix = [0u8; 8];
    file.read_exact(&mut prefix)
        .map_err(|_| format!("{len} bytes, shorter than a safetensors header"))?;
    let header_len = u64::from_le_bytes(prefix);
    if header_len > MAX_HEADER || header_len > len - 8 {
        return Err(format!(
            "header of {header_len} bytes in a file of {len} (at most {MAX_HEADER})"
        ));
    }
    let mut json = vec![0; header_len as usize];
    file.read_exact(&mut json).map_err(|e| e.to_string())?;
    let header: serde_json::Value =
        serde_json::from_slice(&json).map_err(|e| format!("header: {e}"))?;
    let metadata = match header.get("__metadata__") {
        None => BTreeMap::new(),
        Some(serde_json::Value::Object(map)) => map
            .iter()
            .map(|(k, v)| match v {
                serde_json::Value::String(v) => Ok((k.clone(), v.clone())),
                _ => Err(format!("header: metadata `{k}` is not a string")),
            })
            .collect::<std::result::Result<_, _>>()?,
        Some(_) => return Err("header: `__metadata__` is not an object".into()),
    };
    Ok((header_len, metadata))
}

/// One layer's state.
#[derive(Debug, Clone)]
pub struct LayerState<B: Backend> {
    /// The K-1 most recent pre-conv inputs (zeros before the first token). `[batch, channels, kernel - 1]`
    pub conv: Tensor<B, 3>,
    /// The SSM state h. `[batch, channels, state]`
    pub ssm: Tensor<B, 3>,
}

/// The whole model's state for a batch of sequences. Cloning forks it (tensors are
/// copy-on-write in burn).
#[derive(Debug, Clone)]
pub struct State<B: Backend> {
    /// One entry per layer.
    pub layers: Vec<LayerState<B>>,
}

impl<B: Backend> State<B> {
    /// The state of `batch` empty sequences (all zeros).
    pub fn zeros(config: &FalconMambaConfig, batch: usize, device: &B::Device) -> Self {
        let (d, k, n) = (
            config.intermediate_size,
            config.conv_state_len(),
            config.state_size,
        );
        let layers = (0..config.num_hidden_layers)
            .map(|_| LayerState {
                conv: Tensor::zeros([batch, d, k], device),
                ssm: Tensor::zeros([batch, d, n], device),
            })
            .collect();
        State { layers }
    }

    /// Number of sequences.
    pub fn batch_size(&self) -> usize {
        self.layers.first().map_or(0, |l| l.ssm.dims()[0])
    }

    /// Total bytes held by the state's tensors.
    pub fn size_in_bytes(&self) -> usize {
        self.layers
            .iter()
            .map(|l| {
                l.conv.shape().num_elements() * l.conv.dtype().size()
                    + l.ssm.shape().num_elements() * l.ssm.dtype().size()
            })
            .sum()
    }

    /// Checks that this state fits a model with `config` and a batch of `batch` sequences.
    pub fn check(&self, config: &FalconMambaConfig, batch: usize) -> Result<()> {
        let mismatch = |reason: String| Err(Error::StateMismatch { reason });
        if self.layers.len() != config.num_hidden_layers {
            return mismatch(format!(
                "state has {} layers, the model {}",
                self.layers.len(),
                config.num_hidden_layers
            ));
        }
        let (d, k, n) = (
            config.intermediate_size,
            config.conv_state_len(),
            config.state_size,
        );
        for (i, layer) in self.layers.iter().enumerate() {
            if layer.conv.dims() != [batch, d, k] || layer.ssm.dims() != [batch, d, n] {
                return mismatch(format!(
                    "layer {i}: conv state {:?} and ssm state {:?}, expected {:?} and {:?}",
                    layer.conv.dims(),
                    layer.ssm.dims(),
                    [batch, d, k],
                    [batch, d, n]
                ));
            }
        }
        Ok(())
    }
}

impl<B: Backend> State<B> {
    /// The rows `indices` (in that order, repeats allowed) as a new state: e.g. one sequence of a
    /// batch, or the batch without the sequences that ended. Indices must be below
    /// [`State::batch_size`].
    pub fn select_rows(&self, indices: &[usize]) -> Result<Self> {
        let batch = self.batch_size();
        if let Some(&row) = indices.iter().find(|&&i| i >= batch) {
            return Err(Error::StateMismatch {
                reason: format!("row {row} of a state with {batch} rows"),
            });
        }
        let Some(first) = self.layers.first() else {
            return Ok(self.clone());
        };
        let ids: Vec<i64> = indices.iter().map(|&i| i as i64).collect();
        let ids = Tensor::<B, 1, Int>::from_data(
            TensorData::new(ids, [indices.len()]),
            &first.ssm.device(),
        );
        let layers = self
            .layers
            .iter()
            .map(|l| LayerState {
                conv: l.conv.clone().select(0, ids.clone()),
                ssm: l.ssm.clone().select(0, ids.clone()),
            })
            .collect();
        Ok(State { layers })
    }

    /// The states' rows one after another: a batch made of several sequences' states (all for
    /// the same model; [`State::check`] them first when they come from elsewhere).
    pub fn concat(mut states: Vec<Self>) -> Result<Self> {
        if states.len() == 1 {
            if let Some(state) = states.pop() {
                return Ok(state);
            }
        }
        let Some(first) = states.first() else {
            return Err(Error::StateMismatch {
                reason: "no states to concatenate".into(),
            });
        };
        // Per layer, everything but the batch dimension must agree.
        let shape = |s: &Self| -> Vec<[usize; 4]> {
            s.layers
                .iter()
                .map(|l| {
                    let ([_, d, k], [_, _, n]) = (l.conv.dims(), l.ssm.dims());
                    [d, k, l.ssm.dims()[1], n]
                })
                .collect()
        };
        let expected = shape(first);
        if let Some(other) = states.iter().map(shape).find(|s| *s != expected) {
            return Err(Error::StateMismatch {
                reason: format!(
                    "concatenating states of different models: {} layers {:?}… and {} layers {:?}…",
                    expected.len(),
                    expected.first(),
                    other.len(),
                    other.first()
                ),
            });
        }
        let layers = (0..expected.len())
            .map(|i| LayerState {
                conv: Tensor::cat(states.iter().map(|s| s.layers[i].conv.clone()).collect(), 0),
                ssm: Tensor::cat(states.iter().map(|s| s.layers[i].ssm.clone()).collect(), 0),
            })
            .collect();
        Ok(State { layers })
    }
}

impl<B: Backend> State<B> {
    /// The model shape a state depends on, as recorded in a state file.
    fn shape_record(config: &FalconMambaConfig, batch: usize) -> BTreeMap<String, String> {
        [
            ("num_hidden_layers", config.num_hidden_layers),
            ("hidden_size", config.hidden_size),
            ("intermediate_size", config.intermediate_size),
            ("state_size", config.state_size),
            ("conv_kernel", config.conv_kernel),
            ("batch", batch),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    /// Saves the state (f32, bit-exact) to a safetensors file together with the model shape it
    /// belongs to and `metadata` (free-form strings the caller gets back from [`State::load`]).
    pub fn save(
        &self,
        path: impl AsRef<Path>,
        config: &FalconMambaConfig,
        metadata: &BTreeMap<String, String>,
    ) -> Result<()> {
        let path = path.as_ref();
        self.check(config, self.batch_size())?;
        let mut header = Self::shape_record(config, self.batch_size());
        header.insert("format".into(), FORMAT.into());
        header.extend(
            metadata
                .iter()
                .map(|(k, v)| (format!("{USER}{k}"), v.clone())),
        );

        let mut tensors = Vec::with_capacity(2 * self.layers.len());
        for (i, layer) in self.layers.iter().enumerate() {
            for (name, tensor) in [("conv", &layer.conv), ("ssm", &layer.ssm)] {
                let shape = tensor.dims().to_vec();
                let bytes: Vec<u8> = tensor
                    .to_data()
                    .iter::<f32>()
                    .flat_map(f32::to_le_bytes)
                    .collect();
                tensors.push((format!("layers.{i}.{name}"), shape, bytes));
            }
        }
        let views = tensors
            .iter()
            .map(|(name, shape, bytes)| {
                TensorView::new(Dtype::F32, shape.clone(), bytes).map(|view| (name.clone(), view))
            })
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| Error::Safetensors {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })?;
        safetensors::serialize_to_file(views, Some(header.into_iter().collect()), path).map_err(
            |e| Error::Safetensors {
                path: path.to_path_buf(),
                reason: e.to_string(),
            },
        )
    }

    /// Loads a state saved by [`State::save`] for a model with `config`, returning it and the
    /// caller metadata. A file saved for another model shape is a [`Error::StateMismatch`].
    pub fn load(
        path: impl AsRef<Path>,
        config: &FalconMambaConfig,
        device: &B::Device,
    ) -> Result<(Self, BTreeMap<String, String>)> {
        let path = path.as_ref();
        // A FIFO or device would block or never end.
        if std::fs::metadata(path).is_ok_and(|m| !m.is_file()) {
            return Err(Error::Safetensors {
                path: path.to_path_buf(),
                reason: "not a regular file".into(),
            });
        }
        let io = |source| Error::Io {
            path: path.to_path_buf(),
            source,
        };
        let invalid = |reason: String| Error::Safetensors {
            path: path.to_path_buf(),
            reason,
        };
        let mut file = std::fs::File::open(path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        // The header first: the shape it records says how long the file must be, so a file of
        // any other length is refused before its data is read.
        let (header_len, header) = read_header(&mut file, len).map_err(invalid)?;
        if header.get("format").map(String::as_str) != Some(FORMAT) {
            return Err(invalid(format!(
                "not a falcon-mamba state file (no format = {FORMAT})"
            )));
        }
        let batch: usize = header
            .get("batch")
            .and_then(|b| b.parse().ok())
            .ok_or_else(|| invalid("no batch size recorded".into()))?;
        for (key, expected) in Self::shape_record(config, batch) {
            let saved = header.get(&key).map(String::as_str).unwrap_or("(missing)");
            if saved != expected {
                return Err(Error::StateMismatch {
                    reason: format!(
                        "{} was saved for a model with {key} = {saved}, this model has {expected}",
                        path.display()
                    ),
                });
            }
        }
        let per_channel = (config.conv_kernel - 1 + config.state_size) as u64;
        let data = [config.num_hidden_layers, batch, config.intermediate_size]
            .into_iter()
            .try_fold(per_channel * 4, |bytes, n| bytes.checked_mul(n as u64));
        if data.and_then(|d| d.checked_add(8 + header_len)) != Some(len) {
            return Err(invalid(format!(
                "{len} bytes, not the length of a state of batch {batch} for this model"
            )));
        }
        let mut bytes = Vec::with_capacity(len as usize);
        file.seek(SeekFrom::Start(0)).map_err(io)?;
        file.read_to_end(&mut bytes).map_err(io)?;
        let tensors = SafeTensors::deserialize(&bytes).map_err(|e| invalid(e.to_string()))?;
        let read = |name: String| -> Result<Tensor<B, 3>> {
            let view = tensors
                .tensor(&name)
                .map_err(|_| invalid(format!("tensor `{name}` missing")))?;
            if view.dtype() != Dtype::F32 || view.shape().len() != 3 {
                return Err(invalid(format!("tensor `{name}` is not a 3-d F32 tensor")));
            }
            let values: Vec<f32> = view
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            // A state is finite; NaN or infinity here would turn every logit to NaN.
            if let Some(i) = values.iter().position(|v| !v.is_finite()) {
                return Err(invalid(format!(
                    "tensor `{name}` holds {} at element {i}",
                    values[i]
                )));
            }
            Ok(Tensor::from_data(
                TensorData::new(values, view.shape().to_vec()),
                device,
            ))
        };
        let layers = (0..config.num_hidden_layers)
            .map(|i| {
                Ok(LayerState {
                    conv: read(format!("layers.{i}.conv"))?,
                    ssm: read(format!("layers.{i}.ssm"))?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let state = State { layers };
        state.check(config, batch)?;
        let user = header
            .into_iter()
            .filter_map(|(k, v)| k.strip_prefix(USER).map(|k| (k.to_string(), v)))
            .collect();
        Ok((state, user))
    }
}
