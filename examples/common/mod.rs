//! What the examples share: model and sampling flags, hub resolution, backend dispatch.

pub mod backend;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use falcon_mamba::prelude::*;
use falcon_mamba::{LoadOptions, SelectiveScanBackend, WeightFormat};

/// Which model, on which backend.
#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// A local checkpoint directory, or a Hugging Face hub id (downloaded into the usual cache).
    #[arg(long, default_value = "tiiuae/falcon-mamba-7b-instruct")]
    pub model: String,
    /// cpu, wgpu or cuda (the last two need the cargo feature of that name).
    #[arg(long, default_value = "cpu")]
    pub backend: String,
    /// Weight format: auto (the checkpoint's own), f32, bf16, f16, q8 or q4 (GGUF's Q8_0 and
    /// Q4_0 blocks, quantized at load). Activations and the state are f32 whatever the weights
    /// are.
    #[arg(long, default_value = "auto")]
    pub dtype: String,
}

/// How tokens are chosen and the prompt fed.
#[derive(Args, Debug)]
pub struct SamplingArgs {
    /// Maximum number of new tokens (default: generation_config.json, else 20).
    #[arg(long)]
    pub max_new_tokens: Option<usize>,
    /// Sampling temperature; 0 = greedy (the default unless generation_config.json samples).
    #[arg(long, allow_negative_numbers = true)]
    pub temperature: Option<f32>,
    /// Keep the k most likely tokens when sampling.
    #[arg(long)]
    pub top_k: Option<usize>,
    /// Nucleus sampling threshold in (0, 1].
    #[arg(long, allow_negative_numbers = true)]
    pub top_p: Option<f32>,
    /// Repetition penalty (1 = off).
    #[arg(long, allow_negative_numbers = true)]
    pub repetition_penalty: Option<f32>,
    /// Seed of the sampling RNG.
    #[arg(long)]
    pub seed: Option<u64>,
    /// parallel, chunked:N or sequential.
    #[arg(long, default_value = "parallel")]
    pub prefill: String,
}

/// Turns any displayable error into the one-line message the examples print.
pub fn line(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// The checkpoint directory: `model` itself, or the hub id downloaded.
pub fn model_dir(model: &str) -> Result<PathBuf, String> {
    #[cfg(feature = "hub")]
    return falcon_mamba::core::hub::resolve(model).map_err(line);
    #[cfg(not(feature = "hub"))]
    {
        let dir = PathBuf::from(model);
        if dir.is_dir() {
            Ok(dir)
        } else {
            Err(format!(
                "{model}: no such checkpoint directory (hub ids need the `hub` feature)"
            ))
        }
    }
}

/// generation_config.json from `dir` when present, else the defaults.
pub fn checkpoint_generation_config(dir: &std::path::Path) -> Result<GenerationConfig, String> {
    let file = dir.join("generation_config.json");
    if file.is_file() {
        GenerationConfig::from_file(file).map_err(line)
    } else {
        Ok(GenerationConfig::default())
    }
}

/// generation_config.json from `dir` when present, then the flags on top, validated.
pub fn generation_config(
    dir: &std::path::Path,
    args: &SamplingArgs,
) -> Result<GenerationConfig, String> {
    let mut config = checkpoint_generation_config(dir)?;
    if let Some(n) = args.max_new_tokens {
        config = config.with_max_new_tokens(n);
    }
    if let Some(t) = args.temperature {
        config = config.with_temperature(t);
    }
    if let Some(k) = args.top_k {
        config = config.with_top_k(k);
    }
    if let Some(p) = args.top_p {
        config = config.with_top_p(p);
    }
    if let Some(r) = args.repetition_penalty {
        config = config.with_repetition_penalty(r);
    }
    if let Some(s) = args.seed {
        config = config.with_seed(s);
    }
    config = config.with_prefill(args.prefill.parse().map_err(line)?);
    config.validate().map_err(line)?;
    Ok(config)
}

/// `--dtype`: a weight format, or `None` for `auto` (the checkpoint's own).
pub fn parse_dtype(text: &str) -> Result<Option<WeightFormat>, String> {
    WeightFormat::parse_choice(text).map_err(line)
}

/// Loads the model (weights in the `--dtype` format) and tokenizer from `dir` onto `device`,
/// printing progress on stderr for checkpoints that take a while.
pub fn load<B: SelectiveScanBackend>(
    dir: &std::path::Path,
    device: &falcon_mamba::model::burn::tensor::Device<B>,
    dtype: &str,
) -> Result<(FalconMamba<B>, Tokenizer), String> {
    let dtype = parse_dtype(dtype)?;
    let start = std::time::Instant::now();
    let mut shown = 0;
    let progress = |done: usize, total: usize| {
        let seconds = start.elapsed().as_secs();
        if seconds > shown || (done == total && shown > 0) {
            shown = seconds.max(1);
            eprint!("\rloading {done}/{total} tensors ({seconds} s)");
            if done == total {
                eprintln!();
            }
        }
    };
    let options = LoadOptions::default().with_dtype(dtype);
    let model =
        FalconMamba::<B>::from_pretrained_with(dir, device, options, progress).map_err(line)?;
    let tokenizer = Tokenizer::from_file(dir.join("tokenizer.json")).map_err(line)?;
    Ok((model, tokenizer))
}

/// The examples' `main`: resolve the model, run `job` on the chosen backend, and report any
/// error as one line on stderr with a failure exit code.
pub fn run<J: backend::OnBackend>(args: &ModelArgs, job: impl FnOnce(PathBuf) -> J) -> ExitCode {
    match model_dir(&args.model).and_then(|dir| backend::on_backend(&args.backend, job(dir))) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}
