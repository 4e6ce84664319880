//! The one error type of the library: every variant names the file, tensor or value at fault.

use std::path::PathBuf;

/// Everything that can go wrong while loading or running a Falcon Mamba model.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file could not be opened or read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// A JSON file (config, generation config, shard index) is not valid JSON for its purpose.
    #[error("invalid JSON in {}: {source}", path.display())]
    Json {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        #[source]
        source: serde_json::Error,
    },
    /// A config value is out of range or unsupported.
    #[error("invalid config {}: `{field}` = {value}: {reason}", path.display())]
    InvalidConfig {
        /// The config file (or `<memory>` for configs built in code).
        path: PathBuf,
        /// The field at fault.
        field: &'static str,
        /// Its value, as written.
        value: String,
        /// Why it is rejected.
        reason: &'static str,
    },
    /// A generation setting is out of range.
    #[error("invalid generation setting `{field}` = {value}: {reason}")]
    InvalidGeneration {
        /// The setting at fault.
        field: &'static str,
        /// Its value.
        value: String,
        /// Why it is rejected.
        reason: &'static str,
    },
    /// The directory holds neither `model.safetensors` nor `model.safetensors.index.json`.
    #[error("no weights in {}: expected model.safetensors or model.safetensors.index.json", dir.display())]
    NoWeights {
        /// The checkpoint directory.
        dir: PathBuf,
    },
    /// A safetensors file is malformed or truncated.
    #[error("invalid safetensors file {}: {reason}", path.display())]
    Safetensors {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The shard index json is malformed or inconsistent.
    #[error("invalid shard index {}: {reason}", path.display())]
    InvalidIndex {
        /// The index file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A tensor the config requires is not in the checkpoint.
    #[error("tensor `{name}` is missing from the checkpoint in {}", dir.display())]
    MissingTensor {
        /// The tensor name.
        name: String,
        /// The checkpoint directory.
        dir: PathBuf,
    },
    /// A tensor's shape does not match the config.
    #[error("tensor `{name}` in {} has shape {actual:?}, the config requires {expected:?}", path.display())]
    ShapeMismatch {
        /// The tensor name.
        name: String,
        /// The file holding it.
        path: PathBuf,
        /// The shape the config implies.
        expected: Vec<usize>,
        /// The shape on disk.
        actual: Vec<usize>,
    },
    /// A tensor is stored in a dtype the loader cannot read as floats.
    #[error("tensor `{name}` in {} has dtype {dtype}; supported weight dtypes are F32, F16 and BF16", path.display())]
    UnsupportedDtype {
        /// The tensor name.
        name: String,
        /// The file holding it.
        path: PathBuf,
        /// The dtype on disk.
        dtype: String,
    },
    /// A weight format name (`--dtype`, `FALCON_MAMBA_DTYPE`) is not one the library knows.
    #[error("unknown weight format `{name}`: expected auto, f32, bf16, f16, q8 or q4")]
    UnknownWeightFormat {
        /// The name given.
        name: String,
    },
    /// A quantized weight (bitsandbytes 4-bit, or this library's Q8_0/Q4_0 blocks) whose
    /// companion tensors or quantisation state disagree with each other or with the config.
    #[error("quantized tensor `{name}` in {}: {reason}", path.display())]
    InvalidQuantization {
        /// The weight (or companion) tensor at fault.
        name: String,
        /// The file holding it.
        path: PathBuf,
        /// What is wrong, with the values at fault.
        reason: String,
    },
    /// The backend cannot store or compute with weights in this format on its device.
    #[error("the {backend} backend cannot run {format} weights on this device; load them as f32 (`--dtype f32`) or f16")]
    UnsupportedWeightFormat {
        /// The weight format asked for.
        format: crate::weights::WeightFormat,
        /// The backend, as burn names it.
        backend: String,
    },
    /// The model's weights would not fit in the memory the device has available.
    #[error("the weights need {:.1} GiB in {format}, but only {:.1} GiB of memory is available: choose a smaller weight format (e.g. --dtype bf16) or free memory", *needed as f64 / 1073741824.0, *available as f64 / 1073741824.0)]
    InsufficientMemory {
        /// The weight format asked for.
        format: crate::weights::WeightFormat,
        /// Bytes the weights need.
        needed: u64,
        /// Bytes available.
        available: u64,
    },
    /// The tokenizer file could not be loaded or used.
    #[error("tokenizer {}: {reason}", path.display())]
    Tokenizer {
        /// The tokenizer file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// A chat template could not be compiled or rendered.
    #[error("chat template {}: {reason}", path.display())]
    Template {
        /// Where the template came from.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// A hub id could not be resolved or downloaded.
    #[error("cannot get `{id}` from the Hugging Face hub: {reason} (without network access, pass a local checkpoint directory instead)")]
    Hub {
        /// The hub id (or the path that was neither a directory nor an id).
        id: String,
        /// What went wrong.
        reason: String,
    },
    /// A prompt has no tokens.
    #[error("empty prompt (batch row {row}): at least one token is needed")]
    EmptyPrompt {
        /// The batch row.
        row: usize,
    },
    /// Prompts of one batch differ in length.
    #[error("batch row {row} has {actual} tokens but row 0 has {expected}: prompts of a batch must have equal length")]
    RaggedBatch {
        /// The first row that differs.
        row: usize,
        /// Row 0's length.
        expected: usize,
        /// This row's length.
        actual: usize,
    },
    /// A token id does not exist in the model's vocabulary.
    #[error("token id {id} (batch row {row}, position {position}) is out of range: vocab_size is {vocab_size}")]
    TokenOutOfRange {
        /// The id.
        id: u32,
        /// The batch row.
        row: usize,
        /// The position in the row.
        position: usize,
        /// The model's vocabulary size.
        vocab_size: usize,
    },
    /// A row of logits has no finite value, so no token can be picked: the weights or the
    /// state hold NaN or infinity.
    #[error("no finite logit among {len}: the model's weights or its state hold NaN or infinity")]
    NonFiniteLogits {
        /// The row's length.
        len: usize,
    },
    /// A thread of the CPU decode step could not be started, or one failed mid-step.
    #[error("decode step failed: {reason}")]
    Worker {
        /// What went wrong.
        reason: String,
    },
    /// A recurrent state does not fit the model or batch it is used with.
    #[error("state mismatch: {reason}")]
    StateMismatch {
        /// What differs.
        reason: String,
    },
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
