//! `config.json`: the model's hyper-parameters, as transformers writes them for `FalconMambaConfig`
//! and `MambaConfig`, resolved (`intermediate_size`, `time_step_rank: "auto"`) and validated.

use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::text_file::{read_text, MAX_CONFIG_BYTES};

/// Which architecture a checkpoint is: the two differ only in the B/C/dt norms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelType {
    /// `falcon_mamba`: Mamba-1 blocks plus weightless RMS norms on B, C and dt.
    FalconMamba,
    /// `mamba`: plain Mamba-1 (`MambaForCausalLM`), no extra norms.
    Mamba,
}

/// A resolved, validated model configuration.
///
/// Field names follow transformers' `FalconMambaConfig`; every field it writes is kept, including
/// the initialisation settings that inference does not use, so a config round-trips.
#[derive(Debug, Clone, PartialEq)]
pub struct FalconMambaConfig {
    /// `model_type`.
    pub model_type: ModelType,
    /// `architectures`, e.g. `["FalconMambaForCausalLM"]`.
    pub architectures: Vec<String>,
    /// Vocabulary size V.
    pub vocab_size: usize,
    /// Residual stream width H.
    pub hidden_size: usize,
    /// Mixer width D: `intermediate_size`, else `expand * hidden_size`.
    pub intermediate_size: usize,
    /// `expand`, as written (not used when `intermediate_size` is present).
    pub expand: usize,
    /// SSM state size N.
    pub state_size: usize,
    /// Number of blocks.
    pub num_hidden_layers: usize,
    /// Depthwise conv kernel width K.
    pub conv_kernel: usize,
    /// Rank R of the dt projection (`"auto"` resolved to ceil(H / 16)).
    pub time_step_rank: usize,
    /// Epsilon of the block and final RMS norms.
    pub layer_norm_epsilon: f64,
    /// Epsilon of the weightless B/C/dt norms (Falcon Mamba only).
    pub mixer_rms_eps: f64,
    /// Whether in_proj and out_proj have biases.
    pub use_bias: bool,
    /// Whether conv1d has a bias.
    pub use_conv_bias: bool,
    /// Whether the residual stream is kept in f32.
    pub residual_in_fp32: bool,
    /// Whether lm_head shares the embedding matrix.
    pub tie_word_embeddings: bool,
    /// Activation of the mixer (only `silu` exists for these models).
    pub hidden_act: String,
    /// `bos_token_id`.
    pub bos_token_id: Option<u32>,
    /// `eos_token_id` (one or several ids).
    pub eos_token_id: Vec<u32>,
    /// `pad_token_id`.
    pub pad_token_id: Option<u32>,
    /// `dtype` (or the older `torch_dtype`) the weights were saved in, e.g. `bfloat16`.
    pub dtype: Option<String>,
    /// Training-time init setting, unused at inference.
    pub initializer_range: f64,
    /// Training-time init setting, unused at inference.
    pub rescale_prenorm_residual: bool,
    /// Training-time dt init setting, unused at inference.
    pub time_step_scale: f64,
    /// Training-time dt init setting, unused at inference.
    pub time_step_min: f64,
    /// Training-time dt init setting, unused at inference.
    pub time_step_max: f64,
    /// Training-time dt init setting, unused at inference.
    pub time_step_init_scheme: String,
    /// Training-time dt init setting, unused at inference.
    pub time_step_floor: f64,
    /// transformers' `use_cache`.
    pub use_cache: bool,
    /// transformers' `use_mambapy` (a PyTorch scan choice; irrelevant here).
    pub use_mambapy: bool,
    /// transformers' `use_associative_scan` (a PyTorch scan choice; irrelevant here).
    pub use_associative_scan: bool,
}

/// config.json as written; every field optional so that defaults match transformers'.
#[derive(Deserialize)]
struct RawConfig {
    model_type: Option<String>,
    architectures: Option<Vec<String>>,
    vocab_size: Option<usize>,
    hidden_size: Option<usize>,
    intermediate_size: Option<usize>,
    expand: Option<usize>,
    state_size: Option<usize>,
    num_hidden_layers: Option<usize>,
    conv_kernel: Option<usize>,
    time_step_rank: Option<Value>,
    layer_norm_epsilon: Option<f64>,
    mixer_rms_eps: Option<f64>,
    use_bias: Option<bool>,
    use_conv_bias: Option<bool>,
    residual_in_fp32: Option<bool>,
    tie_word_embeddings: Option<bool>,
    hidden_act: Option<String>,
    bos_token_id: Option<Value>,
    eos_token_id: Option<Value>,
    pad_token_id: Option<Value>,
    dtype: Option<String>,
    torch_dtype: Option<String>,
    initializer_range: Option<f64>,
    rescale_prenorm_residual: Option<bool>,
    time_step_scale: Option<f64>,
    time_step_min: Option<f64>,
    time_step_max: Option<f64>,
    time_step_init_scheme: Option<String>,
    time_step_floor: Option<f64>,
    use_cache: Option<bool>,
    use_mambapy: Option<bool>,
    use_associative_scan: Option<bool>,
}

impl FalconMambaConfig {
    /// Reads and validates `config.json`.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = read_text(path, MAX_CONFIG_BYTES)?;
        Self::from_json(&text, path)
    }

    /// Parses and validates config JSON; `source` names it in errors.
    pub fn from_json(text: &str, source: impl AsRef<Path>) -> Result<Self> {
        let path = source.as_ref().to_path_buf();
        let raw: RawConfig = serde_json::from_str(text).map_err(|source| Error::Json {
            path: path.clone(),
            source,
        })?;
        let invalid = |field, value: &dyn std::fmt::Debug, reason| Error::InvalidConfig {
            path: path.clone(),
            field,
            value: format!("{value:?}"),
            reason,
        };

        let model_type = match raw.model_type.as_deref() {
            Some("falcon_mamba") | None => ModelType::FalconMamba,
            Some("mamba") => ModelType::Mamba,
            Some(other) => {
                return Err(invalid(
                    "model_type",
                    &other,
                    "expected \"falcon_mamba\" or \"mamba\"",
                ))
            }
        };
        let hidden_size = raw.hidden_size.unwrap_or(768);
        let expand = raw.expand.unwrap_or(2);
        let time_step_rank = match raw.time_step_rank {
            None => hidden_size.div_ceil(16),
            Some(Value::String(s)) if s == "auto" => hidden_size.div_ceil(16),
            Some(Value::Number(n)) => n
                .as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .ok_or_else(|| {
                    invalid(
                        "time_step_rank",
                        &n,
                        "expected a positive integer or \"auto\"",
                    )
                })?,
            Some(other) => {
                return Err(invalid(
                    "time_step_rank",
                    &other,
                    "expected a positive integer or \"auto\"",
                ))
            }
        };
        let token_id = |field: &'static str, v: Option<Value>| -> Result<Vec<u32>> {
            match v {
                None | Some(Value::Null) => Ok(vec![]),
                Some(v) => token_ids(&v).ok_or_else(|| {
                    invalid(field, &v, "expected a token id or a list of token ids")
                }),
            }
        };
        let bos = token_id("bos_token_id", raw.bos_token_id)?;
        let pad = token_id("pad_token_id", raw.pad_token_id)?;
        let config = FalconMambaConfig {
            model_type,
            architectures: raw.architectures.unwrap_or_default(),
            vocab_size: raw.vocab_size.unwrap_or(50280),
            hidden_size,
            intermediate_size: match raw.intermediate_size {
                Some(size) => size,
                None => expand
                    .checked_mul(hidden_size)
                    .ok_or_else(|| match hidden_size {
                        h if h > 1 << 16 => invalid("hidden_size", &h, "must be at most 65536"),
                        _ => invalid("expand", &expand, "expand × hidden_size overflows"),
                    })?,
            },
            expand,
            state_size: raw.state_size.unwrap_or(16),
            num_hidden_layers: raw.num_hidden_layers.unwrap_or(32),
            conv_kernel: raw.conv_kernel.unwrap_or(4),
            time_step_rank,
            layer_norm_epsilon: raw.layer_norm_epsilon.unwrap_or(1e-5),
            mixer_rms_eps: raw.mixer_rms_eps.unwrap_or(1e-6),
            use_bias: raw.use_bias.unwrap_or(false),
            use_conv_bias: raw.use_conv_bias.unwrap_or(true),
            residual_in_fp32: raw.residual_in_fp32.unwrap_or(true),
            tie_word_embeddings: raw.tie_word_embeddings.unwrap_or(true),
            hidden_act: raw.hidden_act.unwrap_or_else(|| "silu".into()),
            bos_token_id: bos.first().copied(),
            eos_token_id: token_id("eos_token_id", raw.eos_token_id)?,
            pad_token_id: pad.first().copied(),
            dtype: raw.dtype.or(raw.torch_dtype),
            initializer_range: raw.initializer_range.unwrap_or(0.1),
            rescale_prenorm_residual: raw.rescale_prenorm_residual.unwrap_or(false),
            time_step_scale: raw.time_step_scale.unwrap_or(1.0),
            time_step_min: raw.time_step_min.unwrap_or(0.001),
            time_step_max: raw.time_step_max.unwrap_or(0.1),
            time_step_init_scheme: raw.time_step_init_scheme.unwrap_or_else(|| "random".into()),
            time_step_floor: raw.time_step_floor.unwrap_or(1e-4),
            use_cache: raw.use_cache.unwrap_or(true),
            use_mambapy: raw.use_mambapy.unwrap_or(false),
            use_associative_scan: raw.use_associative_scan.unwrap_or(true),
        };
        config.validate_as(&path)?;
        Ok(config)
    }

    /// A Falcon Mamba config with these widths and transformers' defaults for everything else
    /// (intermediate_size = 2 × hidden, state 16, conv 4, dt rank ceil(hidden / 16)): the shapes
    /// of random-weight benchmark models, e.g. `(768, 24, 65024)` for a 130m-like model.
    pub fn falcon_mamba(
        hidden_size: usize,
        num_hidden_layers: usize,
        vocab_size: usize,
    ) -> Result<Self> {
        let json = format!(
            r#"{{"hidden_size": {hidden_size}, "num_hidden_layers": {num_hidden_layers}, "vocab_size": {vocab_size}, "tie_word_embeddings": false, "eos_token_id": 11}}"#
        );
        Self::from_json(&json, "<falcon_mamba shape>")
    }

    /// Checks every value the model depends on; `Ok` means a model can be built from it.
    pub fn validate(&self) -> Result<()> {
        self.validate_as(Path::new("<memory>"))
    }

    fn validate_as(&self, path: &Path) -> Result<()> {
        let invalid = |field, value: String, reason| Error::InvalidConfig {
            path: path.to_path_buf(),
            field,
            value,
            reason,
        };
        // Caps far beyond any Mamba model, checked before anything is allocated or listed from
        // these sizes, so that a hostile config fails at once.
        let sizes = [
            (
                "vocab_size",
                self.vocab_size,
                1 << 24,
                "must be at most 2^24",
            ),
            (
                "hidden_size",
                self.hidden_size,
                1 << 16,
                "must be at most 65536",
            ),
            (
                "intermediate_size",
                self.intermediate_size,
                1 << 18,
                "must be at most 262144",
            ),
            (
                "state_size",
                self.state_size,
                1 << 10,
                "must be at most 1024",
            ),
            (
                "num_hidden_layers",
                self.num_hidden_layers,
                1 << 10,
                "must be at most 1024",
            ),
            ("conv_kernel", self.conv_kernel, 64, "must be at most 64"),
            (
                "time_step_rank",
                self.time_step_rank,
                1 << 16,
                "must be at most 65536",
            ),
        ];
        for (field, value, limit, too_large) in sizes {
            if value == 0 {
                return Err(invalid(field, "0".into(), "must be at least 1"));
            }
            if value > limit {
                return Err(invalid(field, value.to_string(), too_large));
            }
        }
        if self.parameters() > MAX_PARAMETERS {
            return Err(invalid(
                "num_hidden_layers",
                self.num_hidden_layers.to_string(),
                "with these widths, more than 10^12 parameters",
            ));
        }
        if self.conv_kernel < 2 {
            return Err(invalid(
                "conv_kernel",
                self.conv_kernel.to_string(),
                "must be at least 2 (the recurrent state keeps K-1 conv inputs)",
            ));
        }
        if u32::try_from(self.vocab_size).is_err() {
            return Err(invalid(
                "vocab_size",
                self.vocab_size.to_string(),
                "token ids must fit in u32",
            ));
        }
        for (field, eps) in [
            ("layer_norm_epsilon", self.layer_norm_epsilon),
            ("mixer_rms_eps", self.mixer_rms_eps),
        ] {
            if !(eps.is_finite() && eps > 0.0) {
                return Err(invalid(field, eps.to_string(), "must be a positive number"));
            }
        }
        if self.hidden_act != "silu" {
            return Err(invalid(
                "hidden_act",
                self.hidden_act.clone(),
                "only \"silu\" is supported",
            ));
        }
        Ok(())
    }

    /// The number of weights the sizes imply (embedding, lm_head and every block; biases and
    /// norms aside). The sizes are capped first, so this cannot overflow.
    fn parameters(&self) -> u64 {
        let [h, d, n, r, k] = [
            self.hidden_size,
            self.intermediate_size,
            self.state_size,
            self.time_step_rank,
            self.conv_kernel,
        ]
        .map(|v| v as u64);
        let block = h * 2 * d + d * k + d * (r + 2 * n) + r * d + d * n + d + d * h;
        2 * self.vocab_size as u64 * h + self.num_hidden_layers as u64 * block
    }

    /// Whether the mixer applies the weightless RMS norms to B, C and dt (Falcon Mamba, not Mamba-1).
    pub fn mixer_norms(&self) -> bool {
        self.model_type == ModelType::FalconMamba
    }

    /// Number of conv-state columns kept between calls: the K-1 most recent pre-conv inputs.
    pub fn conv_state_len(&self) -> usize {
        self.conv_kernel - 1
    }
}

/// A token id or a list of them, as transformers writes `eos_token_id` and friends.
pub(crate) fn token_ids(value: &Value) -> Option<Vec<u32>> {
    let one = |v: &Value| v.as_u64().and_then(|n| u32::try_from(n).ok());
    match value {
        Value::Array(items) => items.iter().map(one).collect(),
        v => one(v).map(|id| vec![id]),
    }
}

/// More weights than this is no Mamba model anyone can load.
const MAX_PARAMETERS: u64 = 1_000_000_000_000;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absurd_sizes_are_refused_before_anything_is_built() {
        for (json, field) in [
            (r#"{"num_hidden_layers": 1000000000}"#, "num_hidden_layers"),
            (r#"{"hidden_size": 18446744073709551615}"#, "hidden_size"),
            (
                r#"{"hidden_size": 4096, "expand": 18446744073709551615}"#,
                "expand",
            ),
            (r#"{"vocab_size": 4294967296}"#, "vocab_size"),
            (r#"{"state_size": 100000}"#, "state_size"),
            (
                r#"{"hidden_size": 65536, "intermediate_size": 262144, "num_hidden_layers": 1024}"#,
                "num_hidden_layers",
            ),
        ] {
            let start = std::time::Instant::now();
            match FalconMambaConfig::from_json(json, "config.json") {
                Err(Error::InvalidConfig { field: f, .. }) => assert_eq!(f, field, "{json}"),
                other => panic!("{json}: {other:?}"),
            }
            assert!(start.elapsed().as_secs() < 1, "{json}");
        }
    }

    #[test]
    fn intermediate_size_wins_over_expand() {
        let c = FalconMambaConfig::from_json(
            r#"{"hidden_size": 32, "expand": 16, "intermediate_size": 64, "vocab_size": 10}"#,
            "t",
        )
        .unwrap();
        assert_eq!(c.intermediate_size, 64);
    }

    #[test]
    fn auto_rank_and_expand_fallback() {
        let c = FalconMambaConfig::from_json(
            r#"{"hidden_size": 4096, "expand": 2, "time_step_rank": "auto", "eos_token_id": [11, 12]}"#,
            "t",
        )
        .unwrap();
        assert_eq!(c.time_step_rank, 256);
        assert_eq!(c.intermediate_size, 8192);
        assert_eq!(c.eos_token_id, vec![11, 12]);
        assert!(c.mixer_norms());
    }

    #[test]
    fn mamba_configs_switch_the_norms_off() {
        let c = FalconMambaConfig::from_json(r#"{"model_type": "mamba"}"#, "t").unwrap();
        assert_eq!(c.model_type, ModelType::Mamba);
        assert!(!c.mixer_norms());
    }

    #[test]
    fn zero_sizes_and_unknown_types_are_named() {
        let e = FalconMambaConfig::from_json(r#"{"state_size": 0}"#, "cfg.json").unwrap_err();
        assert!(e.to_string().contains("state_size"), "{e}");
        let e = FalconMambaConfig::from_json(r#"{"model_type": "llama"}"#, "cfg.json").unwrap_err();
        assert!(e.to_string().contains("model_type"), "{e}");
        let e =
            FalconMambaConfig::from_json(r#"{"time_step_rank": "big"}"#, "cfg.json").unwrap_err();
        assert!(e.to_string().contains("time_step_rank"), "{e}");
    }
}
