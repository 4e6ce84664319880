//! `GenerationConfig`: how many tokens to make, when to stop, and how to pick each one.
//! Built in code (builder style) or read from `generation_config.json`.

use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

use crate::config::token_ids;
use crate::error::{Error, Result};
use crate::text_file::{read_text, MAX_CONFIG_BYTES};

/// The most tokens [`Prefill::Parallel`] feeds in one pass. Longer prompts go in passes of this
/// many, carrying the state, so activation memory stops growing with the prompt (a few hundred
/// MB at the 7B's widths); a pass this long already keeps the cores busy, so speed is kept.
pub const PARALLEL_CHUNK: usize = 2048;

/// How a prompt is fed through the model before the first new token. All modes give the same
/// logits and state up to f32 rounding; they trade speed against memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Prefill {
    /// Passes of up to [`PARALLEL_CHUNK`] tokens: the fastest, activation memory
    /// O(min(prompt length, PARALLEL_CHUNK)).
    #[default]
    Parallel,
    /// Passes of at most this many tokens, carrying the state: memory O(chunk), any length.
    Chunked(usize),
    /// Token by token through the decode step: constant memory.
    Sequential,
}

impl Prefill {
    /// The number of tokens fed per pass for a prompt of `len` tokens.
    pub fn chunk_len(self, len: usize) -> usize {
        match self {
            Prefill::Parallel => len.clamp(1, PARALLEL_CHUNK),
            Prefill::Chunked(n) => n.max(1),
            Prefill::Sequential => 1,
        }
    }
}

impl std::fmt::Display for Prefill {
    /// `parallel`, `sequential` or `chunked:N`, as [`Prefill::from_str`](std::str::FromStr) reads them.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Prefill::Parallel => write!(f, "parallel"),
            Prefill::Chunked(n) => write!(f, "chunked:{n}"),
            Prefill::Sequential => write!(f, "sequential"),
        }
    }
}

impl std::str::FromStr for Prefill {
    type Err = Error;

    /// Parses `parallel`, `sequential` or `chunked:N`.
    fn from_str(s: &str) -> Result<Self> {
        let invalid = || Error::InvalidGeneration {
            field: "prefill",
            value: s.to_string(),
            reason: "expected parallel, sequential or chunked:N with N >= 1",
        };
        match s {
            "parallel" => Ok(Prefill::Parallel),
            "sequential" => Ok(Prefill::Sequential),
            _ => match s.strip_prefix("chunked:").map(str::parse::<usize>) {
                Some(Ok(n)) if n >= 1 => Ok(Prefill::Chunked(n)),
                _ => Err(invalid()),
            },
        }
    }
}

/// Settings of one generation call. The defaults are transformers': greedy, 20 new tokens.
///
/// ```
/// use falcon_mamba_core::GenerationConfig;
/// let config = GenerationConfig::default()
///     .with_max_new_tokens(64)
///     .with_temperature(0.7)
///     .with_top_p(0.9)
///     .with_seed(42);
/// assert!(config.validate().is_ok());
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationConfig {
    /// Maximum number of new tokens per row.
    pub max_new_tokens: usize,
    /// Sample (`true`) or take the argmax (`false`, greedy).
    pub do_sample: bool,
    /// Softmax temperature when sampling; must be > 0 then.
    pub temperature: f32,
    /// Keep only the k most likely tokens when sampling (`None`: all).
    pub top_k: Option<usize>,
    /// Nucleus sampling: keep the smallest set of tokens whose probability reaches p, in (0, 1].
    pub top_p: Option<f32>,
    /// transformers' repetition penalty (1.0 = off): logits of ids already seen are divided by it
    /// when positive and multiplied when negative.
    pub repetition_penalty: f32,
    /// Seed of the sampling RNG: the same seed gives the same tokens.
    pub seed: u64,
    /// A row stops when it produces one of these ids (the id itself is emitted).
    pub eos_token_ids: Vec<u32>,
    /// How the prompt is fed before the first new token.
    pub prefill: Prefill,
}

impl Default for GenerationConfig {
    fn default() -> Self {
        GenerationConfig {
            max_new_tokens: 20,
            do_sample: false,
            temperature: 1.0,
            top_k: None,
            top_p: None,
            repetition_penalty: 1.0,
            seed: 0,
            eos_token_ids: Vec::new(),
            prefill: Prefill::Parallel,
        }
    }
}

#[derive(Deserialize)]
struct RawGenerationConfig {
    max_new_tokens: Option<usize>,
    do_sample: Option<bool>,
    temperature: Option<f32>,
    top_k: Option<usize>,
    top_p: Option<f32>,
    repetition_penalty: Option<f32>,
    eos_token_id: Option<Value>,
}

impl GenerationConfig {
    /// Reads `generation_config.json`; fields it does not set keep their defaults.
    ///
    /// transformers' `top_k: 50` default only applies when the file sets `do_sample` without
    /// `top_k`, as in transformers.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = read_text(path, MAX_CONFIG_BYTES)?;
        let json = |source| Error::Json {
            path: path.to_path_buf(),
            source,
        };
        let raw: RawGenerationConfig = serde_json::from_str(&text).map_err(json)?;
        let mut config = GenerationConfig::default();
        if let Some(n) = raw.max_new_tokens {
            config.max_new_tokens = n;
        }
        config.do_sample = raw.do_sample.unwrap_or(false);
        if config.do_sample {
            config.top_k = Some(raw.top_k.unwrap_or(50));
        } else {
            config.top_k = raw.top_k;
        }
        if let Some(t) = raw.temperature {
            config.temperature = t;
        }
        config.top_p = raw.top_p.filter(|&p| p < 1.0);
        if let Some(p) = raw.repetition_penalty {
            config.repetition_penalty = p;
        }
        if let Some(v) = raw.eos_token_id.filter(|v| !v.is_null()) {
            config.eos_token_ids = token_ids(&v).ok_or_else(|| Error::InvalidGeneration {
                field: "eos_token_id",
                value: v.to_string(),
                reason: "expected a token id or a list of token ids",
            })?;
        }
        config.validate()?;
        Ok(config)
    }

    /// Sets the maximum number of new tokens.
    pub fn with_max_new_tokens(mut self, n: usize) -> Self {
        self.max_new_tokens = n;
        self
    }

    /// Sets the temperature; `0` means greedy, anything else turns sampling on.
    pub fn with_temperature(mut self, temperature: f32) -> Self {
        self.do_sample = temperature != 0.0;
        self.temperature = temperature;
        self
    }

    /// Greedy decoding (argmax), whatever the temperature.
    pub fn greedy(mut self) -> Self {
        self.do_sample = false;
        self
    }

    /// Keeps only the k most likely tokens when sampling.
    pub fn with_top_k(mut self, k: usize) -> Self {
        self.top_k = Some(k);
        self
    }

    /// Nucleus sampling with threshold p in (0, 1].
    pub fn with_top_p(mut self, p: f32) -> Self {
        self.top_p = Some(p);
        self
    }

    /// Sets the repetition penalty (1.0 = off).
    pub fn with_repetition_penalty(mut self, penalty: f32) -> Self {
        self.repetition_penalty = penalty;
        self
    }

    /// Seeds the sampling RNG.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Stops a row at any of these ids.
    pub fn with_eos_token_ids(mut self, ids: impl Into<Vec<u32>>) -> Self {
        self.eos_token_ids = ids.into();
        self
    }

    /// Chooses how the prompt is fed.
    pub fn with_prefill(mut self, prefill: Prefill) -> Self {
        self.prefill = prefill;
        self
    }

    /// Checks every setting's range.
    pub fn validate(&self) -> Result<()> {
        let invalid = |field, value: String, reason| {
            Err(Error::InvalidGeneration {
                field,
                value,
                reason,
            })
        };
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return invalid(
                "temperature",
                self.temperature.to_string(),
                "must be a finite number >= 0",
            );
        }
        if self.do_sample && self.temperature == 0.0 {
            return invalid(
                "temperature",
                "0".into(),
                "sampling needs a temperature > 0 (use greedy decoding instead)",
            );
        }
        if let Some(p) = self.top_p {
            if !(p > 0.0 && p <= 1.0) {
                return invalid("top_p", p.to_string(), "must be in (0, 1]");
            }
        }
        if self.top_k == Some(0) {
            return invalid("top_k", "0".into(), "must be at least 1");
        }
        if self.prefill == Prefill::Chunked(0) {
            return invalid(
                "prefill",
                "chunked:0".into(),
                "chunks need at least one token",
            );
        }
        if !(self.repetition_penalty.is_finite() && self.repetition_penalty > 0.0) {
            return invalid(
                "repetition_penalty",
                self.repetition_penalty.to_string(),
                "must be a finite number > 0",
            );
        }
        if self.max_new_tokens > MAX_NEW_TOKENS {
            return invalid(
                "max_new_tokens",
                self.max_new_tokens.to_string(),
                "must be at most 2^24 (each generated id is kept for the repetition penalty)",
            );
        }
        Ok(())
    }
}

/// The most tokens one generation may ask for: its ids alone then take 64 MiB.
pub const MAX_NEW_TOKENS: usize = 1 << 24;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absurd_token_counts_are_refused() {
        let e = GenerationConfig::default()
            .with_max_new_tokens(usize::MAX)
            .validate()
            .unwrap_err();
        assert!(
            matches!(
                e,
                Error::InvalidGeneration {
                    field: "max_new_tokens",
                    ..
                }
            ),
            "{e:?}"
        );
        let soak = GenerationConfig::default().with_max_new_tokens(100_000);
        assert!(soak.validate().is_ok());
    }
}
