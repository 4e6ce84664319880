//! The measurements, as markdown tables (with the derived ratios) and CSV files.

use std::fmt::Write as _;
use std::path::Path;

use falcon_mamba::{FalconMamba, Prefill, SelectiveScanBackend};

use crate::memory;

/// Decode at one position.
pub struct DecodeRow {
    /// Tokens in the state when the timed steps start.
    pub position: usize,
    /// Median seconds per token.
    pub latency: f64,
    /// Process resident bytes after decoding at this position (median over the rounds; the
    /// states of every position alive).
    pub resident: Option<u64>,
    /// The recurrent state's bytes.
    pub state_bytes: usize,
    /// Seconds the chunked prefill took to get here from the previous position.
    pub reach_seconds: f64,
}

/// One prompt length in one prefill mode.
pub struct PrefillRow {
    pub mode: Prefill,
    pub len: usize,
    pub seconds: f64,
    /// Process peak resident bytes during the prefill.
    pub peak: Option<u64>,
    /// The peak minus the resident bytes before the prefill (weights, buffers): what the
    /// prefill itself held.
    pub activations: Option<u64>,
}

impl PrefillRow {
    /// A row for a prefill that started with `base` resident bytes, taken right after it.
    pub fn new(mode: Prefill, len: usize, seconds: f64, base: Option<u64>) -> Self {
        let peak = memory::peak();
        PrefillRow {
            mode,
            len,
            seconds,
            peak,
            activations: peak.zip(base).map(|(p, b)| p.saturating_sub(b)),
        }
    }

    fn tokens_per_second(&self) -> f64 {
        self.len as f64 / self.seconds
    }
}

impl std::fmt::Display for PrefillRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {:.1} tok/s, peak {}",
            self.mode,
            self.len,
            self.tokens_per_second(),
            mib(self.peak)
        )
    }
}

/// Everything one run measured.
pub struct Report {
    title: String,
    params: usize,
    /// Bytes one decode step reads from the weights: all of them but the embedding table, of
    /// which it reads one row.
    weight_bytes: usize,
    /// Read bandwidth in bytes/s.
    pub bandwidth: Option<f64>,
    pub decode: Vec<DecodeRow>,
    pub step_paths: Option<StepPaths>,
    pub prefill: Vec<PrefillRow>,
    pub speedup: Option<Speedup>,
    pub streams: Option<Streams>,
}

/// Aggregate decode throughput of concurrent streams through the `Scheduler` against one
/// stream, measured in interleaved rounds, tokens/s per round.
pub struct Streams {
    pub streams: usize,
    pub tokens: usize,
    pub one: Vec<f64>,
    pub many: Vec<f64>,
}

/// Parallel against sequential prefill of one prompt, measured interleaved, in tokens/s.
pub struct Speedup {
    pub len: usize,
    pub parallel: f64,
    pub sequential: f64,
}

/// One decode step two ways at the same position, median seconds, logits read to the host.
pub struct StepPaths {
    pub position: usize,
    /// `FalconMamba::step`: the backend's fused step where it has one.
    pub step: f64,
    /// `FalconMamba::forward` on a one-token chunk: the model's ops one by one.
    pub forward: f64,
}

/// Bytes as MiB with one decimal, or `n/a`.
pub fn mib(bytes: Option<u64>) -> String {
    bytes.map_or("n/a".into(), |b| {
        format!("{:.1} MiB", b as f64 / (1 << 20) as f64)
    })
}

fn ratio(a: Option<u64>, b: Option<u64>) -> Option<f64> {
    a.zip(b).map(|(a, b)| a as f64 / b as f64)
}

impl Report {
    pub fn new<B: SelectiveScanBackend>(
        shape: &str,
        backend: &str,
        dtype: &str,
        model: &FalconMamba<B>,
    ) -> Self {
        let config = model.config();
        let params = model.num_params();
        Report {
            title: format!(
                "{shape} (hidden {}, {} layers, vocab {}), {dtype}, {backend}, batch 1",
                config.hidden_size, config.num_hidden_layers, config.vocab_size
            ),
            params,
            weight_bytes: model.weight_bytes(),
            bandwidth: None,
            decode: Vec::new(),
            step_paths: None,
            prefill: Vec::new(),
            speedup: None,
            streams: None,
        }
    }

    /// The tables and the ratios the promises are judged by.
    pub fn markdown(&self, max_mem: u64) -> String {
        let mut md = String::new();
        let _ = writeln!(md, "## {}\n", self.title);
        if cfg!(debug_assertions) {
            let _ = writeln!(
                md,
                "**An unoptimised build (the dev profile): these numbers mean nothing; measure \
                 with `--release`.**\n"
            );
        }
        let _ = writeln!(
            md,
            "{:.1} M parameters; one decode step reads {:.1} MB of weights (matrices in the \
             model's format, the rest f32).\n",
            self.params as f64 / 1e6,
            self.weight_bytes as f64 / 1e6
        );
        if let Some(bandwidth) = self.bandwidth {
            let bound = bandwidth / self.weight_bytes as f64;
            let _ = writeln!(
                md,
                "Read bandwidth {:.1} GB/s → decode bound {bound:.1} tok/s ({:.2} ms/token).",
                bandwidth / 1e9,
                1e3 / bound
            );
            if let Some(first) = self.decode.first() {
                let fraction = 1.0 / first.latency / bound;
                let _ = writeln!(
                    md,
                    "Decode at position {}: {:.1} tok/s, weights read at {:.1} GB/s = **{:.0}% of \
                     the bound**.",
                    first.position,
                    1.0 / first.latency,
                    self.weight_bytes as f64 / first.latency / 1e9,
                    100.0 * fraction
                );
                if fraction > 1.0 {
                    let _ = writeln!(
                        md,
                        "The decode read faster than the bandwidth probe: part of its weights \
                         came from cache, or the machine's bandwidth changed between the two."
                    );
                }
            }
            let _ = writeln!(md);
        }
        if let Some(paths) = &self.step_paths {
            let _ = writeln!(
                md,
                "One step at position {}, logits to the host: `step` {:.2} ms, `forward` on a \
                 one-token chunk (the ops one by one) {:.2} ms: `step` is **{:.2}x** as fast.\n",
                paths.position,
                paths.step * 1e3,
                paths.forward * 1e3,
                paths.forward / paths.step
            );
        }
        self.decode_markdown(&mut md);
        self.prefill_markdown(&mut md, max_mem);
        if let Some(streams) = &self.streams {
            streams.markdown(&mut md);
        }
        md
    }

    fn decode_markdown(&self, md: &mut String) {
        let Some(first) = self.decode.first() else {
            return;
        };
        let _ = writeln!(md, "### Decode vs position\n");
        let _ = writeln!(
            md,
            "| position | ms/token (median) | tok/s | ÷ first | resident | ÷ first | state bytes | prefill to here |"
        );
        let _ = writeln!(
            md,
            "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
        );
        for row in &self.decode {
            let _ = writeln!(
                md,
                "| {} | {:.2} | {:.1} | {:.3} | {} | {} | {} | {:.1} s |",
                row.position,
                row.latency * 1e3,
                1.0 / row.latency,
                row.latency / first.latency,
                mib(row.resident),
                ratio(row.resident, first.resident).map_or("n/a".into(), |r| format!("{r:.4}")),
                row.state_bytes,
                row.reach_seconds
            );
        }
        let _ = writeln!(md);
    }

    fn prefill_markdown(&self, md: &mut String, max_mem: u64) {
        if self.prefill.is_empty() {
            return;
        }
        let _ = writeln!(md, "### Prefill\n");
        let _ = writeln!(
            md,
            "| mode | prompt | seconds | tok/s | peak resident | held by the prefill |"
        );
        let _ = writeln!(md, "| --- | ---: | ---: | ---: | ---: | ---: |");
        for row in &self.prefill {
            let _ = writeln!(
                md,
                "| {} | {} | {:.2} | {:.1} | {} | {} |",
                row.mode,
                row.len,
                row.seconds,
                row.tokens_per_second(),
                mib(row.peak),
                mib(row.activations)
            );
        }
        let _ = writeln!(md);
        let modes: Vec<Prefill> = self.prefill.iter().fold(Vec::new(), |mut modes, row| {
            if !modes.contains(&row.mode) {
                modes.push(row.mode);
            }
            modes
        });
        for mode in &modes {
            let rows: Vec<&PrefillRow> = self.prefill.iter().filter(|r| r.mode == *mode).collect();
            let longest = rows
                .iter()
                .filter(|r| r.peak.is_some_and(|p| p <= max_mem))
                .map(|r| r.len)
                .max();
            let _ = write!(
                md,
                "- {mode}: longest prompt under {}: {}",
                mib(Some(max_mem)),
                longest.map_or("none".into(), |l| l.to_string())
            );
            let from = rows.iter().find(|r| r.len >= 1024);
            if let (Some(from), Some(to)) = (from, rows.last()) {
                if let Some(growth) = ratio(to.peak, from.peak) {
                    let _ = write!(
                        md,
                        "; peak growth {} → {} tokens: {:+.2}%",
                        from.len,
                        to.len,
                        (growth - 1.0) * 100.0
                    );
                }
            }
            let _ = writeln!(md);
        }
        let at = |mode: Prefill, len: usize| {
            self.prefill
                .iter()
                .find(|r| r.mode == mode && r.len == len)
                .map(PrefillRow::tokens_per_second)
        };
        if let (Some(parallel), Some(sequential)) =
            (at(Prefill::Parallel, 2048), at(Prefill::Sequential, 2048))
        {
            let _ = writeln!(
                md,
                "- parallel ÷ sequential at 2048 tokens (the table's runs): {:.1}x faster",
                parallel / sequential
            );
        }
        if let Some(s) = &self.speedup {
            let _ = writeln!(
                md,
                "- parallel ÷ sequential at {} tokens, interleaved (parallel {:.1} tok/s, \
                 sequential {:.1} tok/s): **{:.1}x** faster",
                s.len,
                s.parallel,
                s.sequential,
                s.parallel / s.sequential
            );
        }
        let _ = writeln!(md);
    }

    /// `decode.csv` and `prefill.csv` in `dir`.
    pub fn write_csv(&self, dir: &Path) -> Result<(), String> {
        let opt = |b: Option<u64>| b.map_or(String::new(), |b| b.to_string());
        let mut decode = String::from(
            "position,latency_ms,tokens_per_s,resident_bytes,state_bytes,prefill_to_here_s\n",
        );
        for r in &self.decode {
            let _ = writeln!(
                decode,
                "{},{:.4},{:.3},{},{},{:.3}",
                r.position,
                r.latency * 1e3,
                1.0 / r.latency,
                opt(r.resident),
                r.state_bytes,
                r.reach_seconds
            );
        }
        let mut prefill = String::from(
            "mode,prompt_tokens,seconds,tokens_per_s,peak_resident_bytes,prefill_bytes\n",
        );
        for r in &self.prefill {
            let _ = writeln!(
                prefill,
                "{},{},{:.4},{:.3},{},{}",
                r.mode,
                r.len,
                r.seconds,
                r.tokens_per_second(),
                opt(r.peak),
                opt(r.activations)
            );
        }
        for (name, text) in [("decode.csv", decode), ("prefill.csv", prefill)] {
            let path = dir.join(name);
            std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
        }
        Ok(())
    }
}

impl Streams {
    fn markdown(&self, md: &mut String) {
        let _ = writeln!(
            md,
            "### Concurrent streams\n\n{} streams against 1 through the `Scheduler`, {} decoded \
             tokens each (after their prompts), in interleaved rounds; aggregate tokens/s.\n",
            self.streams, self.tokens
        );
        let _ = writeln!(
            md,
            "| round | 1 stream | {} streams | ratio |\n| ---: | ---: | ---: | ---: |",
            self.streams
        );
        for (round, (one, many)) in self.one.iter().zip(&self.many).enumerate() {
            let _ = writeln!(
                md,
                "| {} | {one:.1} | {many:.1} | {:.2} |",
                round + 1,
                many / one
            );
        }
        let (one, many) = (median(&self.one), median(&self.many));
        let _ = writeln!(
            md,
            "\nMedians: 1 stream {one:.1} tok/s, {} streams {many:.1} tok/s: **{:.2}x** one \
             stream's throughput.\n",
            self.streams,
            many / one
        );
    }
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}
