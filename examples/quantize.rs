//! Convert a checkpoint's weight matrices to q8 or q4 (or bf16/f16) and write it as a checkpoint
//! directory that loads directly, without converting again (layout: the `quantized` module of
//! falcon-mamba-core).
//!
//! ```text
//! cargo run --release --example quantize -- --model DIR|HUB_ID --out DIR --dtype q8|q4|bf16|f16|f32
//! ```
//! Tensors are converted one at a time, so converting a 7B checkpoint holds one matrix in
//! memory, never the model.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use falcon_mamba::core::quantized::write_quantized;
use falcon_mamba::WeightFormat;

/// Write a checkpoint with its weight matrices in another format.
#[derive(Parser, Debug)]
struct Cli {
    /// The source: a local checkpoint directory, or a Hugging Face hub id (with the `hub` feature).
    #[arg(long)]
    model: String,
    /// The directory to write (created if needed).
    #[arg(long)]
    out: PathBuf,
    /// The format of the weight matrices: q8, q4, bf16, f16 or f32.
    #[arg(long)]
    dtype: String,
}

/// The checkpoint directory: `model` itself, or (with the `hub` feature) the hub id downloaded. A
/// missing directory is reported by the conversion, naming the file it could not read.
fn source_dir(model: &str) -> Result<PathBuf, String> {
    #[cfg(feature = "hub")]
    return falcon_mamba::core::hub::resolve(model).map_err(|e| e.to_string());
    #[cfg(not(feature = "hub"))]
    Ok(PathBuf::from(model))
}

fn run(cli: Cli) -> Result<(), String> {
    let format: WeightFormat = cli
        .dtype
        .parse()
        .map_err(|e: falcon_mamba::Error| e.to_string())?;
    let src = source_dir(&cli.model)?;
    let start = Instant::now();
    let mut shown = 0;
    let bytes = write_quantized(&src, &cli.out, format, |done, total| {
        let seconds = start.elapsed().as_secs();
        if seconds > shown || done == total {
            shown = seconds.max(1);
            eprint!("\rconverting {done}/{total} tensors ({seconds} s)");
            if done == total {
                eprintln!();
            }
        }
    })
    .map_err(|e| e.to_string())?;
    eprintln!(
        "wrote {} ({:.2} GB of weights in {format}) in {:.1} s",
        cli.out.display(),
        bytes as f64 / 1e9,
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
