//! Generate text from a local checkpoint directory on the CPU, streamed to stdout.
//!
//! ```text
//! cargo run --release --example generate -- --model DIR --prompt TEXT \
//!     [--max-new-tokens N] [--temperature T] [--top-p P] [--seed S]
//! ```
//! Greedy unless a temperature > 0 is given. The last line (on stderr) reports throughput.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use falcon_mamba::prelude::*;

struct Args {
    model: PathBuf,
    prompt: String,
    max_new_tokens: Option<usize>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    seed: Option<u64>,
}

const USAGE: &str = "usage: generate --model DIR --prompt TEXT [--max-new-tokens N] [--temperature T] [--top-p P] [--seed S]";

fn parse_args() -> Result<Args, String> {
    let mut args = std::env::args().skip(1);
    let (mut model, mut prompt) = (None, None);
    let mut parsed = Args {
        model: PathBuf::new(),
        prompt: String::new(),
        max_new_tokens: None,
        temperature: None,
        top_p: None,
        seed: None,
    };
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or(format!("{flag} needs a value"));
        fn number<T: std::str::FromStr>(flag: &str, v: String) -> Result<T, String> {
            v.parse()
                .map_err(|_| format!("{flag}: not a number: {v:?}"))
        }
        match flag.as_str() {
            "--model" => model = Some(PathBuf::from(value()?)),
            "--prompt" => prompt = Some(value()?),
            "--max-new-tokens" => parsed.max_new_tokens = Some(number(&flag, value()?)?),
            "--temperature" => parsed.temperature = Some(number(&flag, value()?)?),
            "--top-p" => parsed.top_p = Some(number(&flag, value()?)?),
            "--seed" => parsed.seed = Some(number(&flag, value()?)?),
            "-h" | "--help" => return Err(USAGE.into()),
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    parsed.model = model.ok_or(format!("--model is required\n{USAGE}"))?;
    parsed.prompt = prompt.ok_or(format!("--prompt is required\n{USAGE}"))?;
    Ok(parsed)
}

fn generation_config(args: &Args) -> falcon_mamba::Result<GenerationConfig> {
    let file = args.model.join("generation_config.json");
    let mut config = if file.is_file() {
        GenerationConfig::from_file(file)?
    } else {
        GenerationConfig::default()
    };
    if let Some(n) = args.max_new_tokens {
        config = config.with_max_new_tokens(n);
    }
    if let Some(t) = args.temperature {
        config = config.with_temperature(t);
    }
    if let Some(p) = args.top_p {
        config = config.with_top_p(p);
    }
    if let Some(s) = args.seed {
        config = config.with_seed(s);
    }
    config.validate()?;
    Ok(config)
}

fn run(args: &Args) -> falcon_mamba::Result<()> {
    let config = generation_config(args)?;
    let start = Instant::now();
    let device = Default::default();
    let model = FalconMamba::<Cpu>::from_pretrained(&args.model, &device)?;
    let tokenizer = Tokenizer::from_file(args.model.join("tokenizer.json"))?;
    let loaded = start.elapsed();

    let start = Instant::now();
    let mut text = model.generate_text(&tokenizer, &args.prompt, &config)?;
    let prefill = start.elapsed();
    let prompt_tokens = text.tokens().sequences()[0].len();

    let start = Instant::now();
    let mut stdout = std::io::stdout().lock();
    for piece in text.by_ref() {
        write!(stdout, "{}", piece?)
            .and_then(|()| stdout.flush())
            .ok();
    }
    writeln!(stdout).ok();
    let decode = start.elapsed();
    let new_tokens = text.tokens().sequences()[0].len() - prompt_tokens;
    eprintln!(
        "load {:.2} s | prompt {prompt_tokens} tokens, {:.1} tok/s | generated {new_tokens} tokens, {:.1} tok/s",
        loaded.as_secs_f64(),
        prompt_tokens as f64 / prefill.as_secs_f64(),
        new_tokens as f64 / decode.as_secs_f64(),
    );
    Ok(())
}

fn main() -> ExitCode {
    let result = parse_args().and_then(|args| run(&args).map_err(|e| e.to_string()));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::from(2)
        }
    }
}
