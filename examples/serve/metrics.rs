//! The server's counters, rendered as Prometheus text for `GET /metrics`. The state-cache names
//! follow vLLM's and SGLang's (`prefix_cache_queries_total`, `prefix_cache_hits_total`).

use std::fmt::Write;
use std::sync::Mutex;
use std::time::Duration;

use falcon_mamba::model::serving::SchedulerStats;

use crate::engine::Usage;

/// Upper bounds (seconds) of the time-to-first-token histogram's buckets.
const TTFT_BUCKETS: [f64; 12] = [
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// Everything `/metrics` shows; one lock, taken briefly by handlers and once per engine step.
#[derive(Default)]
pub struct Metrics {
    inner: Mutex<Counters>,
}

#[derive(Default)]
struct Counters {
    /// Requests per endpoint and HTTP status.
    requests: Vec<(&'static str, u16, u64)>,
    prompt_tokens: u64,
    completion_tokens: u64,
    cancelled: u64,
    ttft_buckets: [u64; TTFT_BUCKETS.len()],
    ttft_count: u64,
    ttft_sum: f64,
    /// Decode throughput over the last second of steps that produced tokens.
    window_tokens: usize,
    window_time: Duration,
    decode_tokens_per_second: f64,
    in_flight: usize,
    scheduler: SchedulerStats,
}

impl Metrics {
    /// Counts a request answered with `status`.
    pub fn request(&self, endpoint: &'static str, status: u16) {
        let mut c = self.lock();
        match c
            .requests
            .iter_mut()
            .find(|(e, s, _)| *e == endpoint && *s == status)
        {
            Some(entry) => entry.2 += 1,
            None => c.requests.push((endpoint, status, 1)),
        }
    }

    /// Sets the number of requests admitted and not yet answered.
    pub fn set_in_flight(&self, n: usize) {
        self.lock().in_flight = n;
    }

    /// A request's first token came `elapsed` after it arrived.
    pub fn first_token(&self, elapsed: Duration) {
        let mut c = self.lock();
        let seconds = elapsed.as_secs_f64();
        for (bucket, &bound) in c.ttft_buckets.iter_mut().zip(&TTFT_BUCKETS) {
            if seconds <= bound {
                *bucket += 1;
            }
        }
        c.ttft_count += 1;
        c.ttft_sum += seconds;
    }

    /// A completion ended.
    pub fn finished(&self, usage: &Usage) {
        let mut c = self.lock();
        c.prompt_tokens += usage.prompt_tokens as u64;
        c.completion_tokens += usage.completion_tokens as u64;
    }

    /// A client left before its completion ended.
    pub fn cancelled(&self) {
        self.lock().cancelled += 1;
    }

    /// An engine step made `tokens` tokens in `time`.
    pub fn stepped(&self, tokens: usize, time: Duration, stats: &SchedulerStats) {
        let mut c = self.lock();
        c.scheduler = *stats;
        if tokens > 0 {
            c.window_tokens += tokens;
            c.window_time += time;
            if c.window_time >= Duration::from_secs(1) {
                c.decode_tokens_per_second = c.window_tokens as f64 / c.window_time.as_secs_f64();
                c.window_tokens = 0;
                c.window_time = Duration::ZERO;
            }
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let c = self.lock();
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, samples: &[(String, f64)]| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, value) in samples {
                let _ = writeln!(out, "{name}{labels} {value}");
            }
        };
        let one = |v: f64| [(String::new(), v)];
        let requests: Vec<(String, f64)> = c
            .requests
            .iter()
            .map(|(e, s, n)| (format!("{{endpoint=\"{e}\",status=\"{s}\"}}"), *n as f64))
            .collect();
        metric(
            "falcon_mamba_requests_total",
            "counter",
            "Requests answered, by endpoint and HTTP status.",
            &requests,
        );
        let s = &c.scheduler;
        let counters = [
            (
                "falcon_mamba_prompt_tokens_total",
                "Prompt tokens of finished requests.",
                c.prompt_tokens,
            ),
            (
                "falcon_mamba_prompt_tokens_fed_total",
                "Prompt tokens fed to the model (not restored from the state cache).",
                s.prompt_tokens_fed,
            ),
            (
                "falcon_mamba_generation_tokens_total",
                "Tokens generated.",
                c.completion_tokens,
            ),
            (
                "falcon_mamba_requests_cancelled_total",
                "Requests whose client left before the end.",
                c.cancelled,
            ),
            (
                "prefix_cache_queries_total",
                "State-cache lookups.",
                s.cache.queries,
            ),
            (
                "prefix_cache_hits_total",
                "State-cache lookups that restored a state.",
                s.cache.hits,
            ),
            (
                "prefix_cache_tokens_reused_total",
                "Prompt tokens restored from the state cache.",
                s.cache.tokens_reused,
            ),
            (
                "prefix_cache_evictions_total",
                "States evicted to stay within the byte budget.",
                s.cache.evictions,
            ),
        ];
        for (name, help, value) in counters {
            metric(name, "counter", help, &one(value as f64));
        }
        let gauges = [
            (
                "falcon_mamba_batch_size",
                "Sequences decoding in the last step.",
                s.running as f64,
            ),
            (
                "falcon_mamba_waiting_sequences",
                "Sequences waiting for a batch row or being prefilled.",
                s.waiting as f64,
            ),
            (
                "falcon_mamba_requests_in_flight",
                "Requests admitted and not yet answered.",
                c.in_flight as f64,
            ),
            (
                "falcon_mamba_decode_tokens_per_second",
                "Tokens per second over the last second of steps.",
                c.decode_tokens_per_second,
            ),
            (
                "prefix_cache_bytes",
                "Bytes of state held by the state cache.",
                s.cache.bytes as f64,
            ),
            (
                "prefix_cache_entries",
                "States held by the state cache.",
                s.cache.entries as f64,
            ),
        ];
        for (name, help, value) in gauges {
            metric(name, "gauge", help, &one(value));
        }
        let mut ttft: Vec<(String, f64)> = TTFT_BUCKETS
            .iter()
            .zip(&c.ttft_buckets)
            .map(|(bound, n)| (format!("_bucket{{le=\"{bound}\"}}"), *n as f64))
            .collect();
        ttft.push(("_bucket{le=\"+Inf\"}".into(), c.ttft_count as f64));
        ttft.push(("_sum".into(), c.ttft_sum));
        ttft.push(("_count".into(), c.ttft_count as f64));
        metric(
            "falcon_mamba_time_to_first_token_seconds",
            "histogram",
            "Time from a request's arrival to its first token.",
            &ttft,
        );
        out
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Counters> {
        // A panic while holding the lock cannot leave the counters inconsistent.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}
