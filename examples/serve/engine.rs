//! The engine thread: owns the model's [`Scheduler`], takes jobs from the HTTP handlers, steps the
//! batch, and sends each request its text as it is produced. One thread, so the model runs on
//! one stream of work while tokio serves the connections.

use std::collections::HashMap;
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::Arc;
use std::time::Instant;

use falcon_mamba::core::DecodeStream;
use falcon_mamba::model::serving::{Event, FinishReason, SequenceId};
use falcon_mamba::{FalconMamba, GenerationConfig, Scheduler, SelectiveScanBackend, Tokenizer};
use tokio::sync::mpsc::UnboundedSender;

use crate::metrics::Metrics;

/// One completion request, as the engine runs it.
pub struct Job {
    /// The whole prompt text (a chat already rendered through the template).
    pub prompt: String,
    /// Sampling, stop ids and token limit.
    pub config: GenerationConfig,
    /// Stop strings: the text ends before the first one.
    pub stop: Vec<String>,
    /// `chat` or `completions`, for the log line.
    pub endpoint: &'static str,
    /// When the server received it (time to first token counts from here).
    pub received: Instant,
    /// Where its output goes; dropped by the handler when the client leaves.
    pub out: UnboundedSender<Output>,
}

/// What a request gets back, in order: `Started` or `Failed`, then `Text`s, then `Done`.
#[derive(Debug)]
pub enum Output {
    /// The prompt was accepted.
    Started,
    /// The next piece of text.
    Text(String),
    /// The end.
    Done(Usage),
    /// The request failed (before `Started`: a bad prompt).
    Failed(String),
}

/// Token counts and why a completion ended.
#[derive(Debug, Clone, Copy)]
pub struct Usage {
    /// Tokens of the prompt.
    pub prompt_tokens: usize,
    /// Of those, tokens restored from the state cache instead of being fed.
    pub cached_tokens: usize,
    /// Tokens generated.
    pub completion_tokens: usize,
    /// `stop` (a stop id or string) or `length` (the token limit).
    pub finish_reason: &'static str,
}

/// A running request's output side.
struct Live<'t> {
    job: Job,
    /// `None` once finished.
    decoder: Option<DecodeStream<'t>>,
    /// Everything decoded so far, and how much of it was sent.
    text: String,
    sent: usize,
    prompt_tokens: usize,
    completion_tokens: usize,
}

impl Live<'_> {
    /// Appends a piece and sends what can no longer be the start of a stop string. Returns
    /// `Some(true)` when a stop string ended the text, `None` when the client is gone.
    fn push(&mut self, piece: &str) -> Option<bool> {
        // A stop string may begin in text held back before this piece.
        let longest = self.job.stop.iter().map(String::len).max().unwrap_or(0);
        let mut from = self.sent.saturating_sub(longest);
        self.text.push_str(piece);
        while !self.text.is_char_boundary(from) {
            from -= 1;
        }
        let stop_at = self
            .job
            .stop
            .iter()
            .filter_map(|s| self.text[from..].find(s.as_str()).map(|i| from + i))
            .min();
        let end = match stop_at {
            Some(at) => at,
            None => self.text.len() - self.partial_stop(),
        };
        if end > self.sent {
            let piece = self.text[self.sent..end].to_string();
            self.job.out.send(Output::Text(piece)).ok()?;
            self.sent = end;
        }
        Some(stop_at.is_some())
    }

    /// Length of the longest end of the text that begins a stop string.
    fn partial_stop(&self) -> usize {
        self.job
            .stop
            .iter()
            .flat_map(|s| {
                (1..s.len())
                    .filter(|&n| s.is_char_boundary(n))
                    .map(|n| &s[..n])
            })
            .filter(|prefix| self.text.ends_with(prefix))
            .map(str::len)
            .max()
            .unwrap_or(0)
    }

    fn finish(self, cached_tokens: usize, finish_reason: &'static str, metrics: &Metrics) {
        let usage = Usage {
            prompt_tokens: self.prompt_tokens,
            cached_tokens,
            completion_tokens: self.completion_tokens,
            finish_reason,
        };
        metrics.finished(&usage);
        eprintln!(
            "{} prompt={} cached={} completion={} finish={} time={:.3}s",
            self.job.endpoint,
            usage.prompt_tokens,
            usage.cached_tokens,
            usage.completion_tokens,
            finish_reason,
            self.job.received.elapsed().as_secs_f64()
        );
        let _ = self.job.out.send(Output::Done(usage));
    }
}

/// Runs jobs from `jobs` until every sender is gone.
pub fn run<B: SelectiveScanBackend>(
    model: &FalconMamba<B>,
    tokenizer: &Tokenizer,
    config: falcon_mamba::SchedulerConfig,
    jobs: Receiver<Job>,
    metrics: Arc<Metrics>,
) -> Result<(), String> {
    let mut scheduler = Scheduler::new(model, config)
        .map_err(|e| e.to_string())?
        .with_tokenizer(tokenizer);
    let mut live: HashMap<SequenceId, Live<'_>> = HashMap::new();
    loop {
        // Block only when there is nothing to step.
        if scheduler.is_idle() {
            match jobs.recv() {
                Ok(job) => admit(&mut scheduler, tokenizer, &mut live, job),
                Err(_) => return Ok(()),
            }
        }
        loop {
            match jobs.try_recv() {
                Ok(job) => admit(&mut scheduler, tokenizer, &mut live, job),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) if scheduler.is_idle() => return Ok(()),
                Err(TryRecvError::Disconnected) => break,
            }
        }
        let start = Instant::now();
        let events = match scheduler.step() {
            Ok(events) => events,
            Err(e) => {
                // Nothing a request did causes this; fail what is running and go on.
                eprintln!("error: step failed: {e}");
                for (id, l) in live.drain() {
                    scheduler.stop(id);
                    let _ = l.job.out.send(Output::Failed(e.to_string()));
                }
                continue;
            }
        };
        let tokens = events
            .iter()
            .filter(|e| matches!(e, Event::Token { .. }))
            .count();
        for event in events {
            handle(&mut scheduler, &mut live, event, &metrics);
        }
        metrics.stepped(tokens, start.elapsed(), &scheduler.stats());
    }
}

fn admit<'t, B: SelectiveScanBackend>(
    scheduler: &mut Scheduler<'_, B>,
    tokenizer: &'t Tokenizer,
    live: &mut HashMap<SequenceId, Live<'t>>,
    job: Job,
) {
    match scheduler.add_text(&job.prompt, &job.config) {
        Ok((id, prompt_tokens)) => {
            if job.out.send(Output::Started).is_err() {
                scheduler.stop(id);
                return;
            }
            live.insert(
                id,
                Live {
                    job,
                    decoder: Some(tokenizer.decode_stream()),
                    text: String::new(),
                    sent: 0,
                    prompt_tokens,
                    completion_tokens: 0,
                },
            );
        }
        Err(e) => {
            let _ = job.out.send(Output::Failed(e.to_string()));
        }
    }
}

fn handle<B: SelectiveScanBackend>(
    scheduler: &mut Scheduler<'_, B>,
    live: &mut HashMap<SequenceId, Live<'_>>,
    event: Event,
    metrics: &Metrics,
) {
    match event {
        Event::Token { id, token } => {
            let Some(l) = live.get_mut(&id) else { return };
            if l.completion_tokens == 0 {
                metrics.first_token(l.job.received.elapsed());
            }
            l.completion_tokens += 1;
            if l.job.config.eos_token_ids.contains(&token) {
                return; // the stop id is not text; Finished follows
            }
            let pushed = match l.decoder.as_mut().map(|d| d.step(token)) {
                Some(Ok(Some(piece))) => l.push(&piece),
                Some(Ok(None)) | None => Some(false),
                Some(Err(e)) => {
                    let _ = l.job.out.send(Output::Failed(e.to_string()));
                    None
                }
            };
            match pushed {
                Some(false) => {}
                Some(true) => {
                    let cached = match scheduler.stop(id) {
                        Some(Event::Finished { cached_tokens, .. }) => cached_tokens,
                        _ => 0,
                    };
                    if let Some(l) = live.remove(&id) {
                        l.finish(cached, "stop", metrics);
                    }
                }
                None => {
                    // The client left: free its row.
                    scheduler.stop(id);
                    live.remove(&id);
                    metrics.cancelled();
                }
            }
        }
        Event::Finished {
            id,
            reason,
            cached_tokens,
            ..
        } => {
            let Some(mut l) = live.remove(&id) else {
                return;
            };
            let mut stopped = false;
            if let Some(Ok(Some(rest))) = l.decoder.take().map(DecodeStream::finish) {
                match l.push(&rest) {
                    Some(hit) => stopped = hit,
                    None => {
                        metrics.cancelled();
                        return;
                    }
                }
            }
            // At the end, text held back as the possible start of a stop string is text.
            if !stopped && l.sent < l.text.len() {
                let rest = l.text[l.sent..].to_string();
                let _ = l.job.out.send(Output::Text(rest));
            }
            let reason = match reason {
                FinishReason::Length if !stopped => "length",
                FinishReason::Length => "stop",
                FinishReason::Stop | FinishReason::Stopped => "stop",
                FinishReason::InvalidLogits => "error",
            };
            l.finish(cached_tokens, reason, metrics);
        }
    }
}
