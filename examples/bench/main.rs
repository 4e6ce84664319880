//! Falcon Mamba's promises, measured: a random-weight model of a real shape (no checkpoint) on any
//! backend, and
//! - decode: per-token latency (median over `--decode-tokens` steps of `generate`) and the
//!   process's resident memory at growing positions (the context is fed by chunked prefill), both
//!   taken in rounds that visit every position in turn; at the first position also `step` against
//!   `forward` on one-token chunks (the backend's fused step, where it has one, against the ops);
//! - prefill: tokens/s and peak resident memory per prompt length in parallel, chunked and
//!   sequential mode, the longest prompt each mode handled under `--max-mem`, and parallel against
//!   sequential at 2048 tokens measured interleaved;
//! - the decode bandwidth bound: the read bandwidth measured in the same run (before and after
//!   the decode, the faster) ÷ the weight bytes one token reads in the model's format, and the
//!   fraction of it the decode reaches;
//! - streams (`--run streams`): concurrent streams through the `Scheduler` against one;
//! - soak (`--run soak`): one generation of `--soak-tokens` tokens, speed and resident memory per
//!   window of 10,000.
//!
//! ```text
//! cargo run --release --example bench -- [--shape 130m|370m|1.4b|7b] [--backend cpu|wgpu|cuda]
//!     [--layers N] [--vocab 65024] [--dtype f32|bf16|f16|q8|q4]
//!     [--run bandwidth,decode,prefill,streams,soak] [--positions 256,1024,4096,16384,65536]
//!     [--decode-tokens 32] [--prompts 128,256,...,32768] [--chunk 512] [--sequential-max N]
//!     [--streams 8] [--rounds 7] [--soak-tokens 100000]
//!     [--max-mem 16GiB] [--out target/bench] [--font FILE.ttf]
//! ```
//! Markdown tables go to stdout, progress to stderr; `decode.csv`, `prefill.csv`, `decode.png`
//! and `prefill.png` to `--out`. Resident memory is the whole process's (weights included), read
//! from `/proc/self/status` (Linux; elsewhere the memory columns are empty). On a GPU backend it is
//! host memory only.

#[path = "../common/backend.rs"]
mod backend;
mod memory;
mod plot;
mod report;
mod stream;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use backend::OnBackend;
use clap::Parser;
use falcon_mamba::model::burn::prelude::*;
use falcon_mamba::model::burn::tensor::Distribution;
use falcon_mamba::model::serving::Event;
use falcon_mamba::{
    FalconMamba, FalconMambaConfig, GenerationConfig, Prefill, SelectiveScanBackend, State,
    WeightFormat,
};
use falcon_mamba::{Scheduler, SchedulerConfig};
use report::{DecodeRow, PrefillRow, Report, Soak, SoakWindow, Speedup, StepPaths, Streams};

/// Benchmark decode and prefill of a random-weight Falcon Mamba.
#[derive(Parser, Debug)]
struct Cli {
    /// Model shape: 130m, 370m, 1.4b or 7b (hidden 768/1024/2048/4096, 24/48/48/64 layers,
    /// vocabulary 65024).
    #[arg(long, default_value = "130m")]
    shape: String,
    /// Layers instead of the shape's own count: a shallower model of the same widths, for a
    /// quick run of the whole program (CI's smoke run). The report's title gives the count.
    #[arg(long)]
    layers: Option<usize>,
    /// cpu, wgpu or cuda (the last two need the cargo feature of that name).
    #[arg(long, default_value = "cpu")]
    backend: String,
    /// Vocabulary size (65024 for every Falcon Mamba). Mesa's lavapipe binds at most 128 MiB
    /// per buffer, less than a 65024-row f32 embedding, so a wgpu run there needs a smaller one.
    #[arg(long, default_value_t = 65024)]
    vocab: usize,
    /// Weight format: f32, bf16, f16, q8 or q4 (activations and the state are f32).
    #[arg(long, default_value = "f32")]
    dtype: WeightFormat,
    /// What to measure: any of bandwidth, decode, prefill, streams and soak (the last two not
    /// by default).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "bandwidth,decode,prefill"
    )]
    run: Vec<String>,
    /// Context lengths at which decode is timed, ascending.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "256,1024,4096,16384,65536"
    )]
    positions: Vec<usize>,
    /// Decode steps timed at each position, rounded up to a multiple of 4 (the median is
    /// reported).
    #[arg(long, default_value_t = 32)]
    decode_tokens: usize,
    /// Prompt lengths for prefill, ascending.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "128,256,512,1024,2048,4096,8192,16384,32768"
    )]
    prompts: Vec<usize>,
    /// Chunk length of chunked prefill (also how decode reaches its positions).
    #[arg(long, default_value_t = 512)]
    chunk: usize,
    /// Concurrent streams of the streams run, against one.
    #[arg(long, default_value_t = 8)]
    streams: usize,
    /// Rounds of the streams run.
    #[arg(long, default_value_t = 7)]
    rounds: usize,
    /// Tokens of the soak run's one generation.
    #[arg(long, default_value_t = 100_000)]
    soak_tokens: usize,
    /// Longest prompt fed sequentially (default: the longest of --prompts). Token by token
    /// costs one decode step per token.
    #[arg(long)]
    sequential_max: Option<usize>,
    /// Memory cap for the longest-prompt search: parallel prefill stops before a prompt whose
    /// peak would pass it (e.g. 8GiB, 512MiB).
    #[arg(long, default_value = "16GiB")]
    max_mem: String,
    /// Folder for the CSV files and plots.
    #[arg(long, default_value = "target/bench")]
    out: PathBuf,
    /// TrueType font for the plots' labels (default: DejaVu Sans or Liberation Sans where
    /// installed; without one, no plots).
    #[arg(long)]
    font: Option<PathBuf>,
}

/// Hidden size and layer count of the published Mamba-1 / Falcon Mamba sizes.
fn shape(name: &str) -> Result<(usize, usize), String> {
    match name {
        "130m" => Ok((768, 24)),
        "370m" => Ok((1024, 48)),
        "1.4b" => Ok((2048, 48)),
        "7b" => Ok((4096, 64)),
        other => Err(format!(
            "unknown --shape {other:?}: expected 130m, 370m, 1.4b or 7b"
        )),
    }
}

/// `8GiB`, `512MiB`, `1000000` (bytes).
fn parse_bytes(text: &str) -> Result<u64, String> {
    let units = [
        ("GiB", 1u64 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
        ("", 1),
    ];
    let (number, unit) = units
        .iter()
        .find_map(|(suffix, unit)| text.strip_suffix(suffix).map(|n| (n, *unit)))
        .unwrap_or((text, 1));
    number
        .trim()
        .parse::<f64>()
        .ok()
        .filter(|n| *n > 0.0)
        .map(|n| (n * unit as f64) as u64)
        .ok_or_else(|| format!("--max-mem {text:?}: expected a size such as 8GiB or 512MiB"))
}

/// Deterministic token ids below the vocabulary size (a 64-bit LCG).
struct Ids {
    seed: u64,
    vocab: u32,
}

impl Ids {
    fn take(&mut self, n: usize) -> Vec<u32> {
        (0..n)
            .map(|_| {
                self.seed = self
                    .seed
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                ((self.seed >> 33) % u64::from(self.vocab)) as u32
            })
            .collect()
    }
}

struct Bench {
    cli: Cli,
}

impl OnBackend for Bench {
    fn run<B: SelectiveScanBackend>(self, device: B::Device) -> Result<(), String> {
        let cli = self.cli;
        let (hidden, shape_layers) = shape(&cli.shape)?;
        let layers = cli.layers.unwrap_or(shape_layers);
        let max_mem = parse_bytes(&cli.max_mem)?;
        for list in [&cli.positions, &cli.prompts] {
            if list.is_empty() || list.windows(2).any(|w| w[0] >= w[1]) || list[0] == 0 {
                return Err(format!(
                    "{list:?}: positions and prompts must be ascending and > 0"
                ));
            }
        }
        if let Some(other) = cli
            .run
            .iter()
            .find(|r| !["bandwidth", "decode", "prefill", "streams", "soak"].contains(&r.as_str()))
        {
            return Err(format!(
                "--run {other:?}: expected bandwidth, decode, prefill, streams or soak"
            ));
        }
        let config = FalconMambaConfig::falcon_mamba(hidden, layers, cli.vocab).map_err(line)?;
        eprintln!(
            "building a random {} model on {} ...",
            cli.shape, cli.backend
        );
        let start = Instant::now();
        let model = FalconMamba::<B>::random_in(config, cli.dtype, &device, 0).map_err(line)?;
        B::sync(&device).map_err(|e| format!("{e:?}"))?;
        let mut report = Report::new(&cli.shape, &cli.backend, cli.dtype.name(), &model);
        eprintln!("built in {:.1} s", start.elapsed().as_secs_f64());
        let mut ids = Ids {
            seed: 0,
            vocab: model.config().vocab_size as u32,
        };

        let wants = |what: &str| cli.run.iter().any(|r| r == what);
        let bandwidth = || -> Result<f64, String> {
            eprintln!("measuring read bandwidth ...");
            if cli.backend == "cpu" {
                Ok(memory::host_read_bandwidth(model.weight_bytes()))
            } else {
                device_read_bandwidth::<B>(&device)
            }
        };
        if wants("bandwidth") {
            report.bandwidth = Some(bandwidth()?);
        }
        if wants("decode") {
            (report.decode, report.step_paths) = decode(&model, &cli, &mut ids)?;
            // A shared machine's bandwidth drifts: the bound is the faster of the probes
            // before and after the decode it bounds.
            if let Some(before) = report.bandwidth {
                report.bandwidth = Some(before.max(bandwidth()?));
            }
        }
        if wants("prefill") {
            (report.prefill, report.speedup) = prefill(&model, &cli, &mut ids, max_mem)?;
        }
        if wants("streams") {
            report.streams = Some(streams(&model, &cli, &mut ids)?);
        }
        if wants("soak") {
            report.soak = Some(soak(&model, &cli, &mut ids)?);
        }

        print!("{}", report.markdown(max_mem));
        std::fs::create_dir_all(&cli.out).map_err(|e| format!("{}: {e}", cli.out.display()))?;
        report.write_csv(&cli.out)?;
        match plot::font(cli.font.as_deref()) {
            Some(font) => {
                plot::decode(&report.decode, &cli.out.join("decode.png"), font)?;
                plot::prefill(&report.prefill, &cli.out.join("prefill.png"), font)?;
                eprintln!("wrote {}/{{decode,prefill}}.{{csv,png}}", cli.out.display());
            }
            None => eprintln!(
                "wrote {}/{{decode,prefill}}.csv; no plots: no TrueType font found (pass --font)",
                cli.out.display()
            ),
        }
        Ok(())
    }
}

fn line(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// Device read bandwidth in bytes/s: the median of 10 sums of a 64 MiB tensor (lavapipe binds at
/// most 128 MiB per buffer), timed to the device's completion. A GPU whose cache holds part of it
/// reads it faster than memory: the bound comes out higher, the fraction lower.
fn device_read_bandwidth<B: Backend>(device: &B::Device) -> Result<f64, String> {
    let len = 1 << 24;
    let x = Tensor::<B, 1>::random([len], Distribution::Default, device);
    let sync = || B::sync(device).map_err(|e| format!("{e:?}"));
    let _ = x.clone().sum();
    sync()?;
    let mut times = Vec::new();
    for _ in 0..10 {
        let start = Instant::now();
        let _ = x.clone().sum();
        sync()?;
        times.push(start.elapsed().as_secs_f64());
    }
    Ok((len * 4) as f64 / memory::median(times))
}

/// Decode steps run after reaching each position, before its state is saved.
const WARM_UP_STEPS: usize = 4;
/// Timed decode steps per position per round.
const STEPS_PER_ROUND: usize = 4;

/// Decode latency and resident memory at each position, in two phases. Reach: chunked prefill
/// to each position in turn (one state alive), a few decode steps, the state saved to a file.
/// Measure: all saved states loaded, then `decode_tokens` steps per position of the library's
/// generation loop (step + sampling) in interleaved rounds, the process's resident memory read
/// after each position's steps (every state alive in every reading), so that the machine's slow
/// moments and the allocator's drift fall on every position alike rather than on whichever ran
/// then. In the same rounds, at the first position, [`step_paths`].
fn decode<B: SelectiveScanBackend>(
    model: &FalconMamba<B>,
    cli: &Cli,
    ids: &mut Ids,
) -> Result<(Vec<DecodeRow>, Option<StepPaths>), String> {
    let device = model.device();
    let sync = || B::sync(&device).map_err(|e| format!("{e:?}"));
    let config = |prefill, steps| {
        GenerationConfig::default()
            .with_max_new_tokens(1 + steps)
            .with_eos_token_ids(Vec::new())
            .with_prefill(prefill)
    };
    let dir = cli.out.join("states");
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let file = |position: usize| dir.join(format!("position-{position}.safetensors"));

    let mut state = model.new_state(1);
    let mut position = 0;
    let mut rows = Vec::new();
    for &target in &cli.positions {
        let prompt = ids.take(target.saturating_sub(position).max(1));
        eprintln!(
            "decode: feeding {} tokens to reach position {target} ...",
            prompt.len()
        );
        let start = Instant::now();
        let mut generation = model
            .generate_from(
                &[prompt],
                state,
                &config(Prefill::Chunked(cli.chunk), WARM_UP_STEPS),
            )
            .map_err(line)?;
        // The first token comes from the prompt's logits.
        generation.next().transpose().map_err(line)?;
        sync()?;
        let reach = start.elapsed().as_secs_f64();
        for _ in 0..WARM_UP_STEPS {
            generation
                .next()
                .ok_or("generation ended early")?
                .map_err(line)?;
        }
        position = target.max(position + 1) + WARM_UP_STEPS;
        state = generation.into_state();
        state
            .save(file(target), model.config(), &Default::default())
            .map_err(line)?;
        rows.push(DecodeRow {
            position: target,
            latency: f64::NAN,
            resident: None,
            state_bytes: state.size_in_bytes(),
            reach_seconds: reach,
        });
    }
    drop(state);

    let mut states = Vec::new();
    for row in &rows {
        let (state, _) =
            State::<B>::load(file(row.position), model.config(), &device).map_err(line)?;
        states.push(Some(state));
    }
    let mut times = vec![Vec::new(); rows.len()];
    let mut residents = vec![Vec::new(); rows.len()];
    let (mut fused, mut ops) = (Vec::new(), Vec::new());
    let rounds = cli.decode_tokens.div_ceil(STEPS_PER_ROUND);
    eprintln!("decode: timing {rounds} rounds of {STEPS_PER_ROUND} steps at each position ...");
    for _ in 0..rounds {
        for (i, (slot, times)) in states.iter_mut().zip(&mut times).enumerate() {
            let state = slot.take().ok_or("state taken twice")?;
            let token = ids.take(1);
            let mut generation = model
                .generate_from(
                    &[token],
                    state,
                    &config(Prefill::Sequential, STEPS_PER_ROUND),
                )
                .map_err(line)?;
            generation.next().transpose().map_err(line)?;
            sync()?;
            for _ in 0..STEPS_PER_ROUND {
                let start = Instant::now();
                generation
                    .next()
                    .ok_or("generation ended early")?
                    .map_err(line)?;
                times.push(start.elapsed().as_secs_f64());
            }
            *slot = Some(generation.into_state());
            residents[i].extend(memory::resident());
        }
        if let Some(Some(state)) = states.first() {
            step_paths(model, state, ids, &mut fused, &mut ops)?;
        }
    }
    for ((row, times), residents) in rows.iter_mut().zip(times).zip(residents) {
        row.latency = memory::median(times);
        row.resident = (!residents.is_empty())
            .then(|| memory::median(residents.into_iter().map(|r| r as f64)) as u64);
        eprintln!(
            "decode at {}: {:.2} ms/token, resident {}",
            row.position,
            row.latency * 1e3,
            report::mib(row.resident)
        );
        let _ = std::fs::remove_file(file(row.position));
    }
    let _ = std::fs::remove_dir(&dir);
    let paths = (!fused.is_empty()).then(|| StepPaths {
        position: rows[0].position,
        step: memory::median(fused),
        forward: memory::median(ops),
    });
    Ok((rows, paths))
}

/// [`STEPS_PER_ROUND`] decode steps from two forks of `state`, alternating: `step` (the backend's
/// fused step, where it has one) and `forward` on a one-token chunk (the model's ops one by one),
/// each timed with its logits read to the host.
fn step_paths<B: SelectiveScanBackend>(
    model: &FalconMamba<B>,
    state: &State<B>,
    ids: &mut Ids,
    fused: &mut Vec<f64>,
    ops: &mut Vec<f64>,
) -> Result<(), String> {
    let (mut by_step, mut by_forward) = (state.clone(), state.clone());
    for _ in 0..STEPS_PER_ROUND {
        let token = model.input_ids(&[ids.take(1)]).map_err(line)?; // [1, 1]
        let start = Instant::now();
        let logits = model.step(token.clone().squeeze_dim(1), &mut by_step);
        logits.map_err(line)?.into_data();
        fused.push(start.elapsed().as_secs_f64());
        let start = Instant::now();
        let logits = model.forward(token, &mut by_forward);
        logits.map_err(line)?.into_data();
        ops.push(start.elapsed().as_secs_f64());
    }
    Ok(())
}

/// Prefill in each mode. Chunked and sequential feed one prompt of the longest length and read
/// the clock and the peak at every length on the way (a shorter prompt's prefill is a prefix of
/// a longer one's); parallel runs each length from a fresh state and stops before the length
/// whose peak, extrapolated from the last two, would pass `max_mem`.
fn prefill<B: SelectiveScanBackend>(
    model: &FalconMamba<B>,
    cli: &Cli,
    ids: &mut Ids,
    max_mem: u64,
) -> Result<(Vec<PrefillRow>, Option<Speedup>), String> {
    let device = model.device();
    let sync = || B::sync(&device).map_err(|e| format!("{e:?}"));
    let longest = *cli.prompts.last().unwrap_or(&1);
    let prompt = ids.take(longest);
    let mut rows = Vec::new();

    let sequential_max = cli.sequential_max.unwrap_or(longest);
    for mode in [Prefill::Chunked(cli.chunk), Prefill::Sequential] {
        let mut state = model.new_state(1);
        let base = memory::resident();
        memory::reset_peak();
        let start = Instant::now();
        let mut fed = 0;
        for &len in &cli.prompts {
            if mode == Prefill::Sequential && len > sequential_max {
                break;
            }
            let ids = model.input_ids(&[&prompt[fed..len]]).map_err(line)?;
            let _ = model.prefill(ids, &mut state, mode).map_err(line)?;
            sync()?;
            fed = len;
            rows.push(PrefillRow::new(
                mode,
                len,
                start.elapsed().as_secs_f64(),
                base,
            ));
            eprintln!("prefill {}", rows[rows.len() - 1]);
        }
    }

    let mut peaks: Vec<(usize, u64)> = Vec::new();
    for &len in &cli.prompts {
        if let [.., (l0, p0), (l1, p1)] = peaks[..] {
            let slope = p1.saturating_sub(p0) as f64 / (l1 - l0) as f64;
            let predicted = p1 as f64 + slope * (len - l1) as f64;
            if predicted > max_mem as f64 {
                eprintln!(
                    "prefill parallel {len}: skipped, predicted peak {} over --max-mem",
                    report::mib(Some(predicted as u64))
                );
                break;
            }
        }
        let mut state = model.new_state(1);
        let base = memory::resident();
        memory::reset_peak();
        let start = Instant::now();
        let ids = model.input_ids(&[&prompt[..len]]).map_err(line)?;
        let _ = model
            .prefill(ids, &mut state, Prefill::Parallel)
            .map_err(line)?;
        sync()?;
        let row = PrefillRow::new(Prefill::Parallel, len, start.elapsed().as_secs_f64(), base);
        eprintln!("prefill {row}");
        let over = row.peak.is_some_and(|p| p > max_mem);
        if let Some(peak) = row.peak {
            peaks.push((len, peak));
        }
        rows.push(row);
        if over {
            break;
        }
    }

    let measured = |mode| rows.iter().any(|r| r.mode == mode && r.len == SPEEDUP_LEN);
    let speedup = if measured(Prefill::Parallel) && measured(Prefill::Sequential) {
        Some(speedup(model, &prompt[..SPEEDUP_LEN])?)
    } else {
        None
    };
    Ok((rows, speedup))
}

/// The prompt length of the parallel vs sequential comparison.
const SPEEDUP_LEN: usize = 2048;
/// Parallel prefills in the comparison, and pieces the sequential prefill is cut into.
const SPEEDUP_ROUNDS: usize = 4;

/// Parallel against sequential prefill of `prompt`, interleaved so that both see the same
/// machine: [`SPEEDUP_ROUNDS`] parallel prefills from a fresh state (the median counts), and
/// between them one sequential prefill of the same prompt fed in as many pieces (their sum
/// counts: the same tokens, positions and work as in one go).
fn speedup<B: SelectiveScanBackend>(
    model: &FalconMamba<B>,
    prompt: &[u32],
) -> Result<Speedup, String> {
    let device = model.device();
    // Seconds to prefill `tokens` into `state` in `mode`, to the device's completion.
    let timed = |tokens: &[u32], state: &mut State<B>, mode| -> Result<f64, String> {
        let ids = model.input_ids(&[tokens]).map_err(line)?;
        let start = Instant::now();
        let _ = model.prefill(ids, state, mode).map_err(line)?;
        B::sync(&device).map_err(|e| format!("{e:?}"))?;
        Ok(start.elapsed().as_secs_f64())
    };
    eprintln!(
        "prefill: parallel vs sequential at {} tokens, {SPEEDUP_ROUNDS} rounds ...",
        prompt.len()
    );
    let mut sequential_state = model.new_state(1);
    let (mut parallel, mut sequential) = (Vec::new(), 0.0);
    for piece in prompt.chunks(prompt.len().div_ceil(SPEEDUP_ROUNDS)) {
        parallel.push(timed(prompt, &mut model.new_state(1), Prefill::Parallel)?);
        sequential += timed(piece, &mut sequential_state, Prefill::Sequential)?;
    }
    Ok(Speedup {
        len: prompt.len(),
        parallel: prompt.len() as f64 / memory::median(parallel),
        sequential: prompt.len() as f64 / sequential,
    })
}

/// Decoded tokens per stream in the streams run.
const STREAM_TOKENS: usize = 64;

/// Aggregate decode throughput of `--streams` streams through the `Scheduler` against one
/// stream, in `--rounds` rounds that each run both, so that the machine's slow moments fall on
/// both alike. Each stream gets a 16-token prompt, fed before the clock starts.
fn streams<B: SelectiveScanBackend>(
    model: &FalconMamba<B>,
    cli: &Cli,
    ids: &mut Ids,
) -> Result<Streams, String> {
    let config = GenerationConfig::default()
        .with_max_new_tokens(STREAM_TOKENS + 1)
        .with_eos_token_ids(Vec::new());
    let mut run = |streams: usize| -> Result<f64, String> {
        let mut scheduler =
            Scheduler::new(model, SchedulerConfig::default().with_max_batch(streams))
                .map_err(line)?;
        for _ in 0..streams {
            scheduler.add(ids.take(16), &config).map_err(line)?;
        }
        // Prompts and first tokens.
        scheduler.step().map_err(line)?;
        let start = Instant::now();
        let mut tokens = 0;
        while !scheduler.is_idle() {
            tokens += scheduler
                .step()
                .map_err(line)?
                .iter()
                .filter(|e| matches!(e, Event::Token { .. }))
                .count();
        }
        Ok(tokens as f64 / start.elapsed().as_secs_f64())
    };
    let mut result = Streams {
        streams: cli.streams,
        tokens: STREAM_TOKENS,
        one: Vec::new(),
        many: Vec::new(),
    };
    run(cli.streams)?; // warm-up
    for round in 1..=cli.rounds {
        eprintln!("streams: round {round} of {} ...", cli.rounds);
        result.one.push(run(1)?);
        result.many.push(run(cli.streams)?);
    }
    Ok(result)
}

/// Tokens per window of the soak run.
const SOAK_WINDOW: usize = 10_000;

/// One greedy generation of `--soak-tokens` tokens from a 16-token prompt: speed and resident
/// memory per window of [`SOAK_WINDOW`] tokens (the last window may be shorter).
fn soak<B: SelectiveScanBackend>(
    model: &FalconMamba<B>,
    cli: &Cli,
    ids: &mut Ids,
) -> Result<Soak, String> {
    let config = GenerationConfig::default()
        .with_max_new_tokens(cli.soak_tokens)
        .with_eos_token_ids(Vec::new());
    let generation = model.generate(&[ids.take(16)], &config).map_err(line)?;
    let mut soak = Soak {
        window: SOAK_WINDOW,
        windows: Vec::new(),
    };
    memory::reset_peak();
    let mut start = Instant::now();
    let mut in_window = 0;
    for (produced, step) in (1..).zip(generation) {
        step.map_err(line)?;
        in_window += 1;
        if in_window == SOAK_WINDOW || produced == cli.soak_tokens {
            let window = SoakWindow {
                produced,
                tokens_per_second: in_window as f64 / start.elapsed().as_secs_f64(),
                resident: memory::resident(),
                peak: memory::peak(),
            };
            eprintln!(
                "soak: {produced} tokens, {:.1} tok/s, resident {}",
                window.tokens_per_second,
                report::mib(window.resident)
            );
            soak.windows.push(window);
            memory::reset_peak();
            in_window = 0;
            start = Instant::now();
        }
    }
    Ok(soak)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let backend = cli.backend.clone();
    match backend::on_backend(&backend, Bench { cli }) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}
