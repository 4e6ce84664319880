//! Generate text from a checkpoint directory or hub id, streamed to stdout.
//!
//! ```text
//! cargo run --release --example generate -- --model DIR|HUB_ID --prompt TEXT   (or the prompt on stdin)
//!     [--backend cpu|wgpu|cuda] [--max-new-tokens N] [--temperature T] [--top-k K] [--top-p P]
//!     [--repetition-penalty R] [--seed S] [--prefill parallel|chunked:N|sequential]
//! ```
//! The last line (stderr) reports load time, prompt and generation throughput and the state size.

mod common;

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use common::backend::OnBackend;
use common::{line, ModelArgs, SamplingArgs};
use falcon_mamba::SelectiveScanBackend;

/// Generate text with a Falcon Mamba model.
#[derive(Parser, Debug)]
struct Cli {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    sampling: SamplingArgs,
    /// The prompt (read from stdin when absent).
    #[arg(long)]
    prompt: Option<String>,
}

struct Generate {
    dir: PathBuf,
    cli: Cli,
}

impl OnBackend for Generate {
    fn run<B: SelectiveScanBackend>(self, device: B::Device) -> Result<(), String> {
        let config = common::generation_config(&self.dir, &self.cli.sampling)?;
        let prompt = match self.cli.prompt {
            Some(p) => p,
            None => {
                let mut text = String::new();
                std::io::stdin()
                    .read_to_string(&mut text)
                    .map_err(|e| format!("stdin: {e}"))?;
                // `echo "prompt" | generate` should not end the prompt with a newline.
                text.strip_suffix('\n').map(str::to_string).unwrap_or(text)
            }
        };
        let start = Instant::now();
        let (model, tokenizer) = common::load::<B>(&self.dir, &device, &self.cli.model.dtype)?;
        let loaded = start.elapsed();

        let start = Instant::now();
        let mut text = model
            .generate_text(&tokenizer, &prompt, &config)
            .map_err(line)?;
        let prefill = start.elapsed();
        let prompt_tokens = text.tokens().sequences()[0].len();

        let start = Instant::now();
        let mut stdout = std::io::stdout().lock();
        for piece in text.by_ref() {
            let piece = piece.map_err(line)?;
            stdout
                .write_all(piece.as_bytes())
                .and_then(|()| stdout.flush())
                .map_err(|e| format!("stdout: {e}"))?;
        }
        writeln!(stdout).map_err(|e| format!("stdout: {e}"))?;
        let decode = start.elapsed();
        let new_tokens = text.tokens().sequences()[0].len() - prompt_tokens;
        eprintln!(
            "load {:.2} s | prompt {prompt_tokens} tokens at {:.1} tok/s | {new_tokens} new tokens at {:.1} tok/s | state {} bytes",
            loaded.as_secs_f64(),
            prompt_tokens as f64 / prefill.as_secs_f64(),
            new_tokens as f64 / decode.as_secs_f64(),
            text.tokens().state().size_in_bytes(),
        );
        Ok(())
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let model_args = cli.model.clone();
    common::run(&model_args, |dir| Generate { dir, cli })
}
