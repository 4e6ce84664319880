//! Generation as an iterator: prefill the prompts, then one decode step per `next()`.

use burn::prelude::*;
use falcon_mamba_core::{DecodeStream, GenerationConfig, Result, Sampler, Tokenizer};

use super::falcon_mamba::FalconMamba;
use crate::ops::SelectiveScanBackend;
use crate::state::State;

/// New tokens for a batch of prompts, one step per item: `Some(id)` per row, `None` for rows
/// that have already stopped at an eos id. Ends after `max_new_tokens` steps or when every row
/// has stopped, or after an error (logits without a finite value: NaN weights or state).
pub struct Generation<'m, B: SelectiveScanBackend> {
    model: &'m FalconMamba<B>,
    config: GenerationConfig,
    state: State<B>,
    samplers: Vec<Sampler>,
    /// Prompt and generated ids per row (the repetition penalty's memory).
    seen: Vec<Vec<u32>>,
    finished: Vec<bool>,
    /// Logits after the prompt, until the first token is sampled from them.
    prefill_logits: Option<Tensor<B, 2>>,
    produced: usize,
}

impl<B: SelectiveScanBackend> FalconMamba<B> {
    /// Starts generating from prompts of any lengths (the prefill runs here, in `config.prefill`
    /// mode; see [`FalconMamba::prefill_rows`]). Every row's tokens are those of its prompt
    /// generated alone. Errors on empty or out-of-vocabulary prompts and invalid settings.
    pub fn generate<R: AsRef<[u32]>>(
        &self,
        prompts: &[R],
        config: &GenerationConfig,
    ) -> Result<Generation<'_, B>> {
        let state = self.new_state(prompts.len());
        self.generate_from(prompts, state, config)
    }

    /// Like [`FalconMamba::generate`], continuing from an existing state (e.g. a conversation
    /// so far): only the new prompt tokens are fed.
    pub fn generate_from<R: AsRef<[u32]>>(
        &self,
        prompts: &[R],
        mut state: State<B>,
        config: &GenerationConfig,
    ) -> Result<Generation<'_, B>> {
        config.validate()?;
        let prefill_logits = self.prefill_rows(prompts, &mut state, config.prefill)?;
        Ok(Generation {
            model: self,
            samplers: (0..prompts.len() as u64)
                .map(|row| Sampler::new(config, row))
                .collect(),
            seen: prompts.iter().map(|p| p.as_ref().to_vec()).collect(),
            finished: vec![false; prompts.len()],
            prefill_logits: Some(prefill_logits),
            config: config.clone(),
            state,
            produced: 0,
        })
    }

    /// Generates text from one prompt string, streamed as UTF-8-complete pieces.
    pub fn generate_text<'a>(
        &'a self,
        tokenizer: &'a Tokenizer,
        prompt: &str,
        config: &GenerationConfig,
    ) -> Result<TextGeneration<'a, B>> {
        let ids = tokenizer.encode(prompt)?;
        Ok(TextGeneration {
            tokens: self.generate(&[ids], config)?,
            decoder: Some(tokenizer.decode_stream()),
        })
    }
}

impl<B: SelectiveScanBackend> Generation<'_, B> {
    /// The state after the prompt and every emitted token except the last one, which is fed
    /// only when the next token is asked for. So after the iterator ends (or is dropped) the state
    /// never holds the final token (e.g. an eos), and continuing means feeding it, or the text
    /// that replaces it, first.
    pub fn state(&self) -> &State<B> {
        &self.state
    }

    /// Ends generation and returns the state, e.g. to continue a conversation.
    pub fn into_state(self) -> State<B> {
        self.state
    }

    /// Prompt and generated ids of each row.
    pub fn sequences(&self) -> &[Vec<u32>] {
        &self.seen
    }
}

impl<B: SelectiveScanBackend> Iterator for Generation<'_, B> {
    type Item = Result<Vec<Option<u32>>>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.produced == self.config.max_new_tokens || !self.finished.contains(&false) {
            return None;
        }
        let logits = match self.prefill_logits.take() {
            Some(logits) => logits,
            None => {
                // Feed the previous step's tokens; finished rows feed their last id, whose
                // logits are ignored from now on.
                let fed: Vec<i64> = self
                    .seen
                    .iter()
                    .map(|s| i64::from(*s.last().unwrap_or(&0)))
                    .collect();
                let ids = Tensor::from_data(
                    TensorData::new(fed, [self.seen.len()]),
                    &self.model.device(),
                );
                // The state was checked when generation started, so a step cannot fail.
                self.model.step(ids, &mut self.state).ok()?
            }
        }; // [batch, vocab]
        let vocab = self.model.config.vocab_size;
        let values: Vec<f32> = logits.into_data().iter::<f32>().collect();
        let mut step = Vec::with_capacity(self.samplers.len());
        for (row, sampler) in self.samplers.iter_mut().enumerate() {
            if self.finished[row] {
                step.push(None);
                continue;
            }
            let mut row_logits = values[row * vocab..(row + 1) * vocab].to_vec();
            let id = match sampler.sample(&mut row_logits, &self.seen[row]) {
                Ok(id) => id,
                Err(e) => {
                    // Nothing after this: the rows' states hold what made the logits.
                    self.finished.fill(true);
                    return Some(Err(e));
                }
            };
            self.seen[row].push(id);
            self.finished[row] = self.config.eos_token_ids.contains(&id);
            step.push(Some(id));
        }
        self.produced += 1;
        Some(Ok(step))
    }
}

/// Text pieces of a one-prompt generation, see [`FalconMamba::generate_text`].
pub struct TextGeneration<'a, B: SelectiveScanBackend> {
    tokens: Generation<'a, B>,
    decoder: Option<DecodeStream<'a>>,
}

impl<B: SelectiveScanBackend> TextGeneration<'_, B> {
    /// The underlying token generation (ids, state).
    pub fn tokens(&self) -> &Generation<'_, B> {
        &self.tokens
    }
}

impl<B: SelectiveScanBackend> Iterator for TextGeneration<'_, B> {
    type Item = Result<String>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let step = match self.tokens.next() {
                Some(Ok(step)) => Some(step[0]),
                Some(Err(e)) => {
                    self.decoder = None;
                    return Some(Err(e));
                }
                None => None,
            };
            match step {
                Some(Some(id)) => match self.decoder.as_mut()?.step(id) {
                    Ok(Some(piece)) => return Some(Ok(piece)),
                    Ok(None) => continue,
                    Err(e) => return Some(Err(e)),
                },
                Some(None) | None => {
                    return self.decoder.take()?.finish().transpose();
                }
            }
        }
    }
}
