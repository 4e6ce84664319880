//! `FalconMamba<B>`: embedding → blocks (RMSNorm → mixer → residual) → norm_f → lm_head, with the
//! recurrent state threaded through every call (DESIGN.md §2).

use burn::prelude::*;
use falcon_mamba_core::{Error, FalconMambaConfig, Prefill, Result, WeightFormat};

use super::mixer::Mixer;
use super::norm::RmsNorm;
use crate::ops::{Matrix, PackedLinear, SelectiveScanBackend, StepDims, StepLayer, StepWeights};
use crate::state::State;

/// One residual block: `h + mixer(norm(h))`.
#[derive(Debug, Clone)]
pub struct Block<B: SelectiveScanBackend> {
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
///
/// Weight matrices (projections, embedding, lm_head) are kept in the format they were loaded in
/// ([`WeightFormat`]); everything else is f32. Cloning a model shares its weights.
#[derive(Debug, Clone)]
pub struct FalconMamba<B: SelectiveScanBackend> {
    /// Token embeddings, `[hidden, vocab]`: the layout of lm_head, which shares them when tied.
    pub embedding: B::Matrix,
    /// The residual blocks.
    pub layers: Vec<Block<B>>,
    /// Final RMS norm.
    pub norm_f: RmsNorm<B>,
    /// Output projection. `[hidden, vocab]` (with tied embeddings, the embedding matrix itself).
    pub lm_head: PackedLinear<B>,
    /// The configuration the model was built from.
    pub config: FalconMambaConfig,
    /// Where the weights live.
    pub(crate) device: B::Device,
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
        self.device.clone()
    }

    /// The format the weight matrices are kept in.
    pub fn weight_format(&self) -> WeightFormat {
        self.layers
            .first()
            .map_or(self.lm_head.weight.format(), |b| {
                b.mixer.in_proj.weight.format()
            })
    }

    /// Bytes of weights a decode step reads: every block's, norm_f's and lm_head's (with tied
    /// embeddings, the embedding matrix), in their formats. The step reads one column of the
    /// embedding table besides.
    pub fn weight_bytes(&self) -> usize {
        let vector = |t: &Tensor<B, 1>| t.dims()[0] * 4;
        let linear = |l: &PackedLinear<B>| l.weight.bytes() + l.bias.as_ref().map_or(0, vector);
        let layers: usize = self
            .layers
            .iter()
            .map(|b| {
                let m = &b.mixer;
                vector(&b.norm.weight)
                    + linear(&m.in_proj)
                    + m.conv_weight.dims().iter().product::<usize>() * 4
                    + m.conv_bias.as_ref().map_or(0, vector)
                    + linear(&m.x_proj)
                    + linear(&m.dt_proj)
                    + vector(&m.dt_bias)
                    + m.a.dims().iter().product::<usize>() * 4
                    + vector(&m.d)
                    + linear(&m.out_proj)
            })
            .sum();
        layers + vector(&self.norm_f.weight) + linear(&self.lm_head)
    }

    /// The number of parameters (the tied lm_head counted once, as in the checkpoint).
    pub fn num_params(&self) -> usize {
        falcon_mamba_core::ModelTensors::new(&self.config)
            .iter()
            .map(|t| t.len())
            .sum()
    }

    /// Looks up ids `[batch, len]` in the embedding table: `[batch, len, hidden]`.
    pub fn embed(&self, ids: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        B::embed(ids, &self.embedding)
    }

    /// Builds an id tensor `[batch, len]` from rows of equal, non-zero length whose ids are all
    /// below `vocab_size`; anything else is a typed error naming the row and position.
    pub fn input_ids<R: AsRef<[u32]>>(&self, rows: &[R]) -> Result<Tensor<B, 2, Int>> {
        self.check_prompts(rows)?;
        let len = rows[0].as_ref().len();
        if let Some((row, r)) = rows
            .iter()
            .enumerate()
            .find(|(_, r)| r.as_ref().len() != len)
        {
            return Err(Error::RaggedBatch {
                row,
                expected: len,
                actual: r.as_ref().len(),
            });
        }
        let ids: Vec<i64> = rows
            .iter()
            .flat_map(|r| r.as_ref().iter().map(|&id| i64::from(id)))
            .collect();
        Ok(Tensor::from_data(
            TensorData::new(ids, [rows.len(), len]),
            &self.device(),
        ))
    }

    /// Checks that there is at least one prompt, none is empty and every id is below
    /// `vocab_size`; the error names the row and position.
    pub fn check_prompts<R: AsRef<[u32]>>(&self, rows: &[R]) -> Result<()> {
        if rows.is_empty() {
            return Err(Error::EmptyPrompt { row: 0 });
        }
        for (row, r) in rows.iter().enumerate() {
            let r = r.as_ref();
            if r.is_empty() {
                return Err(Error::EmptyPrompt { row });
            }
            if let Some((position, &id)) = r
                .iter()
                .enumerate()
                .find(|(_, &id)| id as usize >= self.config.vocab_size)
            {
                return Err(Error::TokenOutOfRange {
                    id,
                    row,
                    position,
                    vocab_size: self.config.vocab_size,
                });
            }
        }
        Ok(())
    }

    /// Checks a chunk of ids (`[batch, len]`, or `[batch]` for a step): at least one row and
    /// position, every id below `vocab_size`. Reads the ids to the host.
    fn check_ids<const D: usize>(&self, ids: &Tensor<B, D, Int>) -> Result<()> {
        let dims = ids.dims();
        if dims.contains(&0) {
            return Err(Error::EmptyPrompt { row: 0 });
        }
        let len = if D == 2 { dims[1] } else { 1 };
        let vocab_size = self.config.vocab_size;
        let data = ids.to_data();
        let bad = data
            .iter::<i64>()
            .enumerate()
            .find(|&(_, id)| usize::try_from(id).map_or(true, |id| id >= vocab_size));
        match bad {
            Some((i, id)) => Err(Error::TokenOutOfRange {
                id: u32::try_from(id).unwrap_or(u32::MAX),
                row: i / len,
                position: i % len,
                vocab_size,
            }),
            None => Ok(()),
        }
    }

    /// Runs a chunk of ids `[batch, len]` in parallel, continuing from `state` and updating it.
    /// Returns the logits at every position, `[batch, len, vocab]`. Errors on an empty chunk or
    /// an id past the vocabulary.
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
        self.check_ids(&ids)?;
        state.check(&self.config, ids.dims()[0])?;
        let mut h = self.embed(ids); // [batch, len, hidden]
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
        self.check_ids(&ids)?;
        if let Some(logits) = self.fused_step(ids.clone(), state) {
            return logits;
        }
        let logits = self.forward(ids.unsqueeze_dim(1), state)?; // [batch, 1, vocab]
        Ok(logits.squeeze_dim(1))
    }

    /// The backend's fused decode step ([`SelectiveScanBackend::fused_step`]) alone: `None` where
    /// it does not apply (the backend has none, or too many rows), else what [`FalconMamba::step`]
    /// returns.
    pub fn fused_step(
        &self,
        ids: Tensor<B, 1, Int>,
        state: &mut State<B>,
    ) -> Option<Result<Tensor<B, 2>>> {
        if let Err(e) = state.check(&self.config, ids.dims()[0]) {
            return Some(Err(e));
        }
        B::fused_step(&self.step_weights(), ids, state)
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

    /// Feeds prompts of any lengths (a ragged batch), row `i` of `state` reading `prompts[i]`,
    /// and returns each row's logits after its last token, `[batch, vocab]`.
    ///
    /// Rows of equal length are fed together; rows of different lengths are fed as separate
    /// batches into their rows of the state. No row ever sees padding, so every row's logits and
    /// state are those of that row fed alone.
    pub fn prefill_rows<R: AsRef<[u32]>>(
        &self,
        prompts: &[R],
        state: &mut State<B>,
        mode: Prefill,
    ) -> Result<Tensor<B, 2>> {
        self.check_prompts(prompts)?;
        state.check(&self.config, prompts.len())?;
        let mut groups: Vec<(usize, Vec<usize>)> = Vec::new(); // (length, rows)
        for (row, prompt) in prompts.iter().enumerate() {
            let len = prompt.as_ref().len();
            match groups.iter_mut().find(|(l, _)| *l == len) {
                Some((_, rows)) => rows.push(row),
                None => groups.push((len, vec![row])),
            }
        }
        if let [(_, _)] = groups[..] {
            return self.prefill(self.input_ids(prompts)?, state, mode);
        }
        let mut states = Vec::with_capacity(groups.len());
        let mut logits = Vec::with_capacity(groups.len());
        let mut order = Vec::with_capacity(prompts.len()); // original row of each grouped row
        for (_, rows) in &groups {
            let mut group_state = state.select_rows(rows)?;
            let ids: Vec<&[u32]> = rows.iter().map(|&r| prompts[r].as_ref()).collect();
            logits.push(self.prefill(self.input_ids(&ids)?, &mut group_state, mode)?);
            states.push(group_state);
            order.extend_from_slice(rows);
        }
        // Grouped position of each original row.
        let mut back = vec![0; order.len()];
        for (grouped, &row) in order.iter().enumerate() {
            back[row] = grouped;
        }
        *state = State::concat(states)?.select_rows(&back)?;
        let back = Tensor::<B, 1, Int>::from_data(
            TensorData::new(back.iter().map(|&i| i as i64).collect(), [back.len()]),
            &self.device(),
        );
        Ok(Tensor::cat(logits, 0).select(0, back))
    }

    fn logits(&self, hidden: Tensor<B, 3>) -> Tensor<B, 3> {
        B::pass(|| self.lm_head.forward(hidden))
    }

    /// The weights as the op layer's fused step reads them.
    fn step_weights(&self) -> StepWeights<'_, B> {
        let first = self.layers.first().map(|b| &b.mixer);
        StepWeights {
            dims: StepDims {
                hidden: self.config.hidden_size,
                channels: self.config.intermediate_size,
                state: self.config.state_size,
                rank: self.config.time_step_rank,
                kernel: self.config.conv_kernel,
                vocab: self.config.vocab_size,
                bc_dt_norm_eps: first.and_then(|m| m.bc_dt_norm_eps),
            },
            embedding: &self.embedding,
            layers: self
                .layers
                .iter()
                .map(|b| {
                    let m = &b.mixer;
                    StepLayer {
                        norm: (&b.norm.weight, b.norm.eps),
                        in_proj: &m.in_proj,
                        conv_weight: &m.conv_weight,
                        conv_bias: m.conv_bias.as_ref(),
                        x_proj: &m.x_proj,
                        dt_proj: &m.dt_proj,
                        dt_bias: &m.dt_bias,
                        a: &m.a,
                        d: &m.d,
                        out_proj: &m.out_proj,
                    }
                })
                .collect(),
            norm_f: (&self.norm_f.weight, self.norm_f.eps),
            lm_head: &self.lm_head,
        }
    }
}
