//! `FalconMamba<B>`: embedding → blocks (RMSNorm → mixer → residual) → norm_f → lm_head, with the
//! recurrent state threaded through every call (DESIGN.md §2).

use burn::nn::{Embedding, Linear};
use burn::prelude::*;
use falcon_mamba_core::{Error, FalconMambaConfig, Prefill, Result};

use crate::mixer::Mixer;
use crate::norm::RmsNorm;
use crate::scan::SelectiveScanBackend;
use crate::state::State;

/// One residual block: `h + mixer(norm(h))`.
#[derive(Module, Debug)]
pub struct Block<B: Backend> {
    /// Pre-mixer RMS norm.
    pub norm: RmsNorm<B>,
    /// The Mamba mixer.
    pub mixer: Mixer<B>,
}

/// A Falcon Mamba (or Mamba-1) causal language model on backend `B`.
///
/// All entry points take the recurrent [`State`] explicitly: a fresh [`FalconMamba::new_state`]
/// starts a sequence, and passing the state returned by one call into the next continues it, so
/// a prompt can be fed whole, in chunks or token by token with the same result.
#[derive(Module, Debug)]
pub struct FalconMamba<B: Backend> {
    /// Token embeddings. `[vocab, hidden]`
    pub embedding: Embedding<B>,
    /// The residual blocks.
    pub layers: Vec<Block<B>>,
    /// Final RMS norm.
    pub norm_f: RmsNorm<B>,
    /// Output projection. `[hidden, vocab]` (with tied embeddings, a copy of them in this layout).
    pub lm_head: Linear<B>,
    /// The configuration the model was built from.
    #[module(skip)]
    pub config: FalconMambaConfig,
}

impl<B: SelectiveScanBackend> FalconMamba<B> {
    /// A zero state for `batch` sequences, on the model's device.
    pub fn new_state(&self, batch: usize) -> State<B> {
        State::zeros(&self.config, batch, &self.device())
    }

    /// The configuration the model was built from.
    pub fn config(&self) -> &FalconMambaConfig {
        &self.config
    }

    /// The device holding the weights.
    pub fn device(&self) -> B::Device {
        self.embedding.weight.val().device()
    }

    /// Builds an id tensor `[batch, len]` from rows of equal, non-zero length whose ids are all
    /// below `vocab_size`; anything else is a typed error naming the row and position.
    pub fn input_ids<R: AsRef<[u32]>>(&self, rows: &[R]) -> Result<Tensor<B, 2, Int>> {
        if rows.is_empty() {
            return Err(Error::EmptyPrompt { row: 0 });
        }
        let len = rows[0].as_ref().len();
        let mut ids = Vec::with_capacity(rows.len() * len);
        for (row, r) in rows.iter().enumerate() {
            let r = r.as_ref();
            if r.is_empty() {
                return Err(Error::EmptyPrompt { row });
            }
            if r.len() != len {
                return Err(Error::RaggedBatch {
                    row,
                    expected: len,
                    actual: r.len(),
                });
            }
            for (position, &id) in r.iter().enumerate() {
                if id as usize >= self.config.vocab_size {
                    return Err(Error::TokenOutOfRange {
                        id,
                        row,
                        position,
                        vocab_size: self.config.vocab_size,
                    });
                }
                ids.push(i64::from(id));
            }
        }
        Ok(Tensor::from_data(
            TensorData::new(ids, [rows.len(), len]),
            &self.device(),
        ))
    }

    /// Runs a chunk of ids `[batch, len]` in parallel, continuing from `state` and updating it.
    /// Returns the logits at every position, `[batch, len, vocab]`.
    ///
    /// Ids must be below `vocab_size` ([`FalconMamba::input_ids`] checks that).
    pub fn forward(&self, ids: Tensor<B, 2, Int>, state: &mut State<B>) -> Result<Tensor<B, 3>> {
        let hidden = self.hidden(ids, state)?;
        Ok(self.logits(hidden))
    }

    /// The final hidden states (after norm_f, the input of lm_head), `[batch, len, hidden]`.
    pub fn hidden(&self, ids: Tensor<B, 2, Int>, state: &mut State<B>) -> Result<Tensor<B, 3>> {
        let h = self.residual_stream(ids, state, |_| {})?;
        Ok(self.norm_f.forward(h))
    }

    /// The residual stream after every block (transformers' `output_hidden_states` without the
    /// embedding entry), each `[batch, len, hidden]`.
    pub fn layer_outputs(
        &self,
        ids: Tensor<B, 2, Int>,
        state: &mut State<B>,
    ) -> Result<Vec<Tensor<B, 3>>> {
        let mut outputs = Vec::with_capacity(self.layers.len());
        self.residual_stream(ids, state, |h| outputs.push(h.clone()))?;
        Ok(outputs)
    }

    /// Embedding and every block; `after_block` sees the residual stream after each one.
    fn residual_stream(
        &self,
        ids: Tensor<B, 2, Int>,
        state: &mut State<B>,
        mut after_block: impl FnMut(&Tensor<B, 3>),
    ) -> Result<Tensor<B, 3>> {
        state.check(&self.config, ids.dims()[0])?;
        let mut h = self.embedding.forward(ids); // [batch, len, hidden]
        for (block, layer_state) in self.layers.iter().zip(&mut state.layers) {
            h = B::pass(|| h.clone() + block.mixer.forward(block.norm.forward(h), layer_state));
            after_block(&h);
        }
        Ok(h)
    }

    /// One decode step: ids `[batch]` → logits `[batch, vocab]`, updating `state`.
    ///
    /// Backends with a fused decode pass ([`SelectiveScanBackend::fused_step`]: burn-ndarray, up
    /// to 8 rows) run it here; it gives the same logits and state as [`FalconMamba::forward`] on
    /// a one-token chunk.
    pub fn step(&self, ids: Tensor<B, 1, Int>, state: &mut State<B>) -> Result<Tensor<B, 2>> {
        state.check(&self.config, ids.dims()[0])?;
        if let Some(logits) = B::fused_step(self, ids.clone(), state) {
            return logits;
        }
        let logits = self.forward(ids.unsqueeze_dim(1), state)?; // [batch, 1, vocab]
        Ok(logits.squeeze_dim(1))
    }

    /// Feeds a prompt `[batch, len]` in the given mode, updating `state`, and returns the logits
    /// after its last token, `[batch, vocab]`. Memory: the activations of one chunk, and the
    /// vocabulary logits of one position only.
    pub fn prefill(
        &self,
        ids: Tensor<B, 2, Int>,
        state: &mut State<B>,
        mode: Prefill,
    ) -> Result<Tensor<B, 2>> {
        let [batch, len] = ids.dims();
        state.check(&self.config, batch)?;
        if len == 0 {
            return Err(Error::EmptyPrompt { row: 0 });
        }
        let chunk = mode.chunk_len(len);
        let mut last_hidden = None;
        for start in (0..len).step_by(chunk) {
            let n = chunk.min(len - start);
            let hidden = self.hidden(ids.clone().narrow(1, start, n), state)?; // [batch, n, hidden]
            last_hidden = Some(hidden.narrow(1, n - 1, 1));
        }
        let last_hidden = last_hidden.ok_or(Error::EmptyPrompt { row: 0 })?; // [batch, 1, hidden]
        Ok(self.logits(last_hidden).squeeze_dim(1))
    }

    fn logits(&self, hidden: Tensor<B, 3>) -> Tensor<B, 3> {
        B::pass(|| crate::mixer::project(&self.lm_head, hidden))
    }
}
