//! Continuous batching: sequences join and leave between decode steps, and every step decodes all
//! running sequences as one batch, so the weights are read once per step whatever the number of
//! sequences. Prompts are fed in chunks between steps, so a long one never stalls the others.

use std::collections::VecDeque;

use burn::prelude::*;
use falcon_mamba_core::{Error, GenerationConfig, Result, Sampler, Tokenizer};

use super::cache::{CacheStats, StateCache};
use crate::model::FalconMamba;
use crate::ops::SelectiveScanBackend;
use crate::state::State;

/// Names a sequence added to a [`Scheduler`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SequenceId(pub u64);

impl std::fmt::Display for SequenceId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "seq-{}", self.0)
    }
}

/// Why a sequence ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// It produced one of its stop ids (the id is its last token).
    Stop,
    /// It produced `max_new_tokens` tokens.
    Length,
    /// The caller ended it ([`Scheduler::stop`]).
    Stopped,
    /// Its logits had no finite value (NaN weights, or a NaN state it resumed from): no token
    /// could be picked, and its state is not cached.
    InvalidLogits,
}

/// What a [`Scheduler::step`] produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A new token of a sequence.
    Token {
        /// The sequence.
        id: SequenceId,
        /// The token id.
        token: u32,
    },
    /// A sequence ended; it produced no tokens after this.
    Finished {
        /// The sequence.
        id: SequenceId,
        /// Why.
        reason: FinishReason,
        /// Tokens of its prompt.
        prompt_tokens: usize,
        /// Of those, tokens a cached state had already read (not fed again).
        cached_tokens: usize,
        /// Tokens it produced.
        generated_tokens: usize,
    },
}

/// How a [`Scheduler`] batches and caches. Builder style; the defaults suit the CPU backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchedulerConfig {
    /// At most this many sequences are decoded (or being prefilled) at once; the rest wait.
    pub max_batch: usize,
    /// Prompt tokens fed per step, across the sequences being prefilled: bounds how long the
    /// running sequences wait for their next token while a long prompt is read.
    pub prefill_chunk: usize,
    /// Bytes of conversation states the cache may hold (0: no cache).
    pub cache_bytes: usize,
    /// Also cache a prompt's state every this many tokens (`None`: only at each request's end).
    pub snapshot_every: Option<usize>,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            max_batch: 8,
            prefill_chunk: 256,
            cache_bytes: 0,
            snapshot_every: None,
        }
    }
}

impl SchedulerConfig {
    /// Sets the largest batch.
    pub fn with_max_batch(mut self, n: usize) -> Self {
        self.max_batch = n;
        self
    }

    /// Sets the prompt tokens fed per step.
    pub fn with_prefill_chunk(mut self, n: usize) -> Self {
        self.prefill_chunk = n;
        self
    }

    /// Sets the state cache's byte budget.
    pub fn with_cache_bytes(mut self, bytes: usize) -> Self {
        self.cache_bytes = bytes;
        self
    }

    /// Caches long prompts' states every `n` tokens too.
    pub fn with_snapshot_every(mut self, n: usize) -> Self {
        self.snapshot_every = Some(n);
        self
    }

    fn validate(&self) -> Result<()> {
        let invalid = |field, value: usize| {
            Err(Error::InvalidGeneration {
                field,
                value: value.to_string(),
                reason: "must be at least 1",
            })
        };
        match (self.max_batch, self.prefill_chunk, self.snapshot_every) {
            (0, _, _) => invalid("max_batch", 0),
            (_, 0, _) => invalid("prefill_chunk", 0),
            (_, _, Some(0)) => invalid("snapshot_every", 0),
            _ => Ok(()),
        }
    }
}

/// Counters of a [`Scheduler`], for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SchedulerStats {
    /// Sequences decoding now.
    pub running: usize,
    /// Sequences waiting or being prefilled.
    pub waiting: usize,
    /// Prompt tokens fed so far (cache hits not counted).
    pub prompt_tokens_fed: u64,
    /// Tokens produced so far.
    pub generated_tokens: u64,
    /// The state cache's counters.
    pub cache: CacheStats,
}

/// One sequence: its tokens, sampler and how far its prompt has been read.
struct Sequence<B: SelectiveScanBackend> {
    id: SequenceId,
    config: GenerationConfig,
    sampler: Sampler,
    /// Prompt, then generated tokens.
    tokens: Vec<u32>,
    prompt_len: usize,
    /// Tokens its state has read.
    fed: usize,
    /// Prompt tokens a cached state had read.
    cached: usize,
    /// Its own state while its prompt is fed (`None` before the first chunk).
    state: Option<State<B>>,
    /// Its logits had no finite value: its state is not worth caching.
    poisoned: bool,
}

impl<B: SelectiveScanBackend> Sequence<B> {
    fn generated(&self) -> usize {
        self.tokens.len() - self.prompt_len
    }

    fn finished(&self, reason: FinishReason) -> Event {
        Event::Finished {
            id: self.id,
            reason,
            prompt_tokens: self.prompt_len,
            cached_tokens: self.cached,
            generated_tokens: self.generated(),
        }
    }

    /// Samples a token from this sequence's logits; returns it and whether the sequence ended.
    fn sample(&mut self, logits: &mut [f32]) -> (Option<Event>, Option<FinishReason>) {
        let Ok(token) = self.sampler.sample(logits, &self.tokens) else {
            return (None, Some(FinishReason::InvalidLogits));
        };
        self.tokens.push(token);
        let end = if self.config.eos_token_ids.contains(&token) {
            Some(FinishReason::Stop)
        } else if self.generated() >= self.config.max_new_tokens {
            Some(FinishReason::Length)
        } else {
            None
        };
        (Some(Event::Token { id: self.id, token }), end)
    }
}

/// Decodes many sequences at once, each with its own prompt, sampling settings, stop ids and
/// token limit; sequences join ([`Scheduler::add`]) and leave (at a stop id, at their limit, or
/// [`Scheduler::stop`]) between steps. Each [`Scheduler::step`] feeds up to
/// [`SchedulerConfig::prefill_chunk`] prompt tokens of joining sequences, then decodes every
/// running sequence as one batch. A sequence's tokens are those it would get alone.
///
/// With a cache budget, a sequence's state is cached when it ends (keyed by every token it has
/// read) and a new prompt that extends a cached one restores it and feeds only the rest.
pub struct Scheduler<'m, B: SelectiveScanBackend> {
    model: &'m FalconMamba<B>,
    tokenizer: Option<&'m Tokenizer>,
    config: SchedulerConfig,
    cache: StateCache<B>,
    /// Added, prompt not yet fully read; the first `max_batch - running` are being prefilled.
    joining: VecDeque<Sequence<B>>,
    /// Decoding; row `i` of `state` is `running[i]`'s.
    running: Vec<Sequence<B>>,
    state: Option<State<B>>,
    next_id: u64,
    prompt_tokens_fed: u64,
    generated_tokens: u64,
}

impl<'m, B: SelectiveScanBackend> Scheduler<'m, B> {
    /// A scheduler for `model`, with no sequences.
    pub fn new(model: &'m FalconMamba<B>, config: SchedulerConfig) -> Result<Self> {
        config.validate()?;
        Ok(Scheduler {
            model,
            tokenizer: None,
            cache: StateCache::new(config.cache_bytes),
            config,
            joining: VecDeque::new(),
            running: Vec::new(),
            state: None,
            next_id: 0,
            prompt_tokens_fed: 0,
            generated_tokens: 0,
        })
    }

    /// Lets [`Scheduler::add_text`] tokenize, and labels cached states with their text.
    pub fn with_tokenizer(mut self, tokenizer: &'m Tokenizer) -> Self {
        self.tokenizer = Some(tokenizer);
        self
    }

    /// Adds a sequence with prompt `tokens`; it starts once a batch row is free. Its tokens come
    /// out of later [`Scheduler::step`]s as [`Event::Token`]s, then an [`Event::Finished`].
    pub fn add(&mut self, tokens: Vec<u32>, config: &GenerationConfig) -> Result<SequenceId> {
        config.validate()?;
        self.model.check_prompts(&[&tokens])?;
        let id = SequenceId(self.next_id);
        self.next_id += 1;
        self.joining.push_back(Sequence {
            id,
            config: config.clone(),
            sampler: Sampler::new(config, 0),
            prompt_len: tokens.len(),
            tokens,
            fed: 0,
            cached: 0,
            state: None,
            poisoned: false,
        });
        Ok(id)
    }

    /// Adds a sequence whose prompt is `text` (needs [`Scheduler::with_tokenizer`]). The longest
    /// cached text that begins `text` keeps its tokens, and only the rest is tokenized: a chat
    /// turn then resumes from the previous turn's state even where re-tokenizing the generated
    /// reply would have given other ids. Returns the id and the prompt's token count.
    pub fn add_text(
        &mut self,
        text: &str,
        config: &GenerationConfig,
    ) -> Result<(SequenceId, usize)> {
        let tokenizer = self.tokenizer.ok_or(Error::InvalidGeneration {
            field: "prompt",
            value: "text".into(),
            reason: "the scheduler has no tokenizer (Scheduler::with_tokenizer)",
        })?;
        let tokens = match self.cache.longest_text_prefix(text) {
            Some((cached, len)) => {
                let mut tokens = cached.to_vec();
                tokens.extend(tokenizer.encode(&text[len..])?);
                tokens
            }
            None => tokenizer.encode(text)?,
        };
        let len = tokens.len();
        Ok((self.add(tokens, config)?, len))
    }

    /// Ends a sequence now (e.g. its client left, or its text reached a stop string); its state
    /// is cached as at a natural end. Returns its [`Event::Finished`] (reason
    /// [`FinishReason::Stopped`]), or `None` for an unknown or finished id.
    pub fn stop(&mut self, id: SequenceId) -> Option<Event> {
        if let Some(i) = self.joining.iter().position(|s| s.id == id) {
            return self
                .joining
                .remove(i)
                .map(|s| s.finished(FinishReason::Stopped));
        }
        let i = self.running.iter().position(|s| s.id == id)?;
        let event = self.running[i].finished(FinishReason::Stopped);
        self.remove_rows(&[i]).ok()?;
        Some(event)
    }

    /// True when no sequence is waiting or running.
    pub fn is_idle(&self) -> bool {
        self.joining.is_empty() && self.running.is_empty()
    }

    /// Counters for metrics.
    pub fn stats(&self) -> SchedulerStats {
        SchedulerStats {
            running: self.running.len(),
            waiting: self.joining.len(),
            prompt_tokens_fed: self.prompt_tokens_fed,
            generated_tokens: self.generated_tokens,
            cache: self.cache.stats(),
        }
    }

    /// The state cache.
    pub fn cache(&mut self) -> &mut StateCache<B> {
        &mut self.cache
    }

    /// Feeds a chunk of joining prompts, then decodes one token of every running sequence.
    /// Returns the tokens produced and the sequences that ended, in order.
    pub fn step(&mut self) -> Result<Vec<Event>> {
        let mut events = Vec::new();
        self.prefill(&mut events)?;
        self.decode(&mut events)?;
        Ok(events)
    }

    /// Feeds up to `prefill_chunk` prompt tokens, front of the queue first, to the sequences that
    /// have a batch row; those whose prompt is read sample their first token and start running.
    fn prefill(&mut self, events: &mut Vec<Event>) -> Result<()> {
        let mut budget = self.config.prefill_chunk;
        let mut i = 0;
        // Sequences past the free rows wait; one that starts takes a row.
        while budget > 0 && i + self.running.len() < self.config.max_batch {
            let Some(seq) = self.joining.get_mut(i) else {
                break;
            };
            // Its first chunk starts from the longest cached prefix, if any.
            let (cache, model) = (&mut self.cache, self.model);
            let state = seq.state.get_or_insert_with(|| {
                let (fed, state) = cache
                    .lookup(&seq.tokens)
                    .unwrap_or_else(|| (0, model.new_state(1)));
                (seq.fed, seq.cached) = (fed, fed);
                state
            });
            let remaining = seq.prompt_len - seq.fed;
            let mut n = budget.min(remaining);
            if let Some(every) = self.config.snapshot_every {
                n = n.min(every - seq.fed % every);
            }
            let ids = model.input_ids(&[&seq.tokens[seq.fed..seq.fed + n]])?;
            let logits = if n == remaining {
                Some(model.prefill(ids, state, Default::default())?)
            } else {
                model.hidden(ids, state)?;
                None
            };
            seq.fed += n;
            budget -= n;
            self.prompt_tokens_fed += n as u64;
            if self.config.snapshot_every.is_some_and(|e| seq.fed % e == 0) {
                let (tokens, state) = (seq.tokens[..seq.fed].to_vec(), state.clone());
                self.snapshot(&tokens, state);
            }
            match logits {
                None => i += 1,
                Some(logits) => {
                    if let Some(mut seq) = self.joining.remove(i) {
                        if let Some(state) = seq.state.take() {
                            self.start(seq, state, logits, events)?;
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// A sequence whose prompt is read (into `state`): its first token, then a batch row unless
    /// it ended.
    fn start(
        &mut self,
        mut seq: Sequence<B>,
        state: State<B>,
        logits: Tensor<B, 2>,
        events: &mut Vec<Event>,
    ) -> Result<()> {
        if seq.config.max_new_tokens == 0 {
            self.snapshot(&seq.tokens, state);
            events.push(seq.finished(FinishReason::Length));
            return Ok(());
        }
        let mut values = host_values(logits); // [vocab]
        let (token, end) = seq.sample(&mut values);
        self.generated_tokens += u64::from(token.is_some());
        events.extend(token);
        if let Some(reason) = end {
            if reason != FinishReason::InvalidLogits {
                self.snapshot(&seq.tokens[..seq.tokens.len() - 1], state);
            }
            events.push(seq.finished(reason));
            return Ok(());
        }
        self.state = Some(match self.state.take() {
            Some(batch) => State::concat(vec![batch, state])?,
            None => state,
        });
        self.running.push(seq);
        Ok(())
    }

    /// One decode step of every running sequence: each feeds its last token.
    fn decode(&mut self, events: &mut Vec<Event>) -> Result<()> {
        let Some(state) = self.state.as_mut() else {
            return Ok(());
        };
        let last: Vec<i64> = self
            .running
            .iter()
            .map(|s| i64::from(*s.tokens.last().unwrap_or(&0)))
            .collect();
        let ids = Tensor::from_data(
            TensorData::new(last, [self.running.len()]),
            &self.model.device(),
        );
        let logits = self.model.step(ids, state)?; // [rows, vocab]
        let vocab = self.model.config().vocab_size;
        let mut values = host_values(logits); // [rows, vocab]
        let mut ended = Vec::new();
        for (row, (seq, logits)) in self
            .running
            .iter_mut()
            .zip(values.chunks_exact_mut(vocab))
            .enumerate()
        {
            seq.fed += 1;
            let (token, end) = seq.sample(logits);
            self.generated_tokens += u64::from(token.is_some());
            events.extend(token);
            if let Some(reason) = end {
                events.push(seq.finished(reason));
                ended.push(row);
                if reason == FinishReason::InvalidLogits {
                    seq.poisoned = true;
                }
            }
        }
        self.remove_rows(&ended)
    }

    /// Takes rows out of the batch, caching each one's state (unless its logits were invalid).
    fn remove_rows(&mut self, rows: &[usize]) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let Some(state) = self.state.take() else {
            return Ok(());
        };
        for &row in rows {
            if self.cache.budget() > 0 && !self.running[row].poisoned {
                let seq = &self.running[row];
                let tokens = seq.tokens[..seq.fed].to_vec();
                self.snapshot(&tokens, state.select_rows(&[row])?);
            }
        }
        let keep: Vec<usize> = (0..self.running.len())
            .filter(|r| !rows.contains(r))
            .collect();
        let running = std::mem::take(&mut self.running);
        self.running = running
            .into_iter()
            .enumerate()
            .filter_map(|(r, seq)| (!rows.contains(&r)).then_some(seq))
            .collect();
        if !keep.is_empty() {
            self.state = Some(state.select_rows(&keep)?);
        }
        Ok(())
    }

    /// Caches a one-row state that has read `tokens`, labelled with their text when a tokenizer
    /// is set.
    fn snapshot(&mut self, tokens: &[u32], state: State<B>) {
        if self.cache.budget() == 0 {
            return;
        }
        let text = self.tokenizer.and_then(|t| t.decode(tokens).ok());
        self.cache.insert(tokens, state, text);
    }
}

/// A logits tensor's values on the host, as f32.
fn host_values<B: SelectiveScanBackend, const D: usize>(logits: Tensor<B, D>) -> Vec<f32> {
    let data = logits.into_data().convert::<f32>();
    data.to_vec::<f32>()
        .unwrap_or_else(|_| data.iter::<f32>().collect())
}
