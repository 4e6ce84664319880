//! One decode step of the whole model as a single CPU pass (burn-ndarray, up to a few rows).
//!
//! A decode step reads every weight once, so on the CPU its floor is the memory bandwidth. Run
//! op by op it also pays ~30 small tensor ops per layer, each allocating its output and handing
//! work to the thread pool and back (this pass is 1.07-1.10x as fast at the 370m shape on two
//! cores: the bench example's `step` vs `forward` line). Here each worker thread owns a fixed
//! share of every layer, the workers meet at three barriers per layer, and nothing between the
//! projections is a tensor op:
//!
//! 1. in_proj: worker `w` multiplies its block of hidden features (a contiguous block of weight
//!    rows, the access the read bandwidth favours) into a partial x | z.
//! 2. Worker `w` owns a block of channels: it adds up x and z for them from every partial, steps
//!    their conv, and multiplies its channels' rows of x_proj into a partial dt | B | C.
//! 3. Every worker adds up dt | B | C and normalises them (a few hundred values, cheaper to repeat
//!    than to meet over), projects dt to delta for its channels, scans them, and multiplies its
//!    channels' rows of out_proj into a partial of the mixer output.
//! 4. Every worker adds the partials to its own copy of the residual stream; after the last layer,
//!    each multiplies its block of hidden features into partial logits.
//!
//! The arithmetic is the op-by-op path's in the same order (blocks split as in [`super::matvec`],
//! the same scan, conv and norm code), so both paths give the same bits.

use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError, RwLock};

use burn::backend::ndarray::{NdArrayTensor, SharedArray};
use burn::prelude::*;
use burn::tensor::{DType, TensorPrimitive};
use falcon_mamba_core::{Error, Result};

use super::matrix::HostMatrix;
use super::matvec::{block_range, MAX_ROWS};
use super::scan::{rms_norm_row, silu, ScanBuffers, LANES};
use super::team::Team;
use crate::ops::{Matrix, PackedLinear, SelectiveScanBackend, StepDims, StepWeights};
use crate::state::{LayerState, State};

/// See [`SelectiveScanBackend::fused_step`]. `None` (the caller runs the ops) for more than
/// [`MAX_ROWS`] rows or weights that do not match the dimensions.
pub fn step<B>(
    weights: &StepWeights<'_, B>,
    ids: Tensor<B, 1, Int>,
    state: &mut State<B>,
) -> Option<Result<Tensor<B, 2>>>
where
    B: SelectiveScanBackend<Matrix = HostMatrix> + Backend<FloatTensorPrimitive = NdArrayTensor>,
{
    let rows = ids.dims()[0];
    if rows == 0 || rows > MAX_ROWS {
        return None;
    }
    let device = ids.device();
    let tensors = Weights::of(weights);
    let slices = tensors.slices()?;
    let shape = Shape::of(&weights.dims, rows, &slices)?;

    let vocab = shape.vocab;
    let mut tokens = Vec::with_capacity(rows);
    for (row, id) in ids.into_data().iter::<i64>().enumerate() {
        match usize::try_from(id) {
            Ok(id) if id < vocab => tokens.push(id),
            _ => {
                return Some(Err(Error::TokenOutOfRange {
                    id: u32::try_from(id).unwrap_or(u32::MAX),
                    row,
                    position: 0,
                    vocab_size: vocab,
                }))
            }
        }
    }

    // The state is updated in place: its arrays are taken out of the tensors (copied only if a
    // forked state shares them) and put back whatever happens.
    if !state
        .layers
        .iter()
        .all(|l| l.conv.dtype() == DType::F32 && l.ssm.dtype() == DType::F32)
    {
        return None;
    }
    let (mut conv, mut ssm): (Vec<_>, Vec<_>) = std::mem::take(&mut state.layers)
        .into_iter()
        .map(|l| (host_array(l.conv), host_array(l.ssm)))
        .unzip();
    let logits = run(&shape, &slices, &tokens, &mut conv, &mut ssm);
    state.layers = conv
        .into_iter()
        .zip(ssm)
        .map(|(conv, ssm)| LayerState {
            conv: tensor(conv),
            ssm: tensor(ssm),
        })
        .collect();
    let logits = match logits? {
        Ok(logits) => TensorData::new(logits, [rows, shape.vocab]),
        Err(e) => return Some(Err(e)),
    };
    Some(Ok(Tensor::from_data(logits, &device)))
}

/// The decode threads and the buffers they exchange partial sums in, kept from step to step (the
/// logits partials alone are megabytes, which fresh allocations would fault in page by page on
/// every step). One step at a time holds them; concurrent callers wait their turn asleep.
struct Decoder {
    team: Team,
    exchange: Option<Exchange>,
}

static DECODER: Mutex<Decoder> = Mutex::new(Decoder {
    team: Team::new(),
    exchange: None,
});

/// One worker's channels of each layer's conv and SSM state, `[layer][row]`.
type StateShare<'a> = (Vec<Vec<&'a mut [f32]>>, Vec<Vec<&'a mut [f32]>>);

/// Splits the work among the workers, runs them and adds up the logits, `[rows, vocab]`. `None`
/// if the state does not fit the shape; an error if a worker could not start or failed (the
/// state is then put back as it is, possibly part-way through the step).
fn run(
    shape: &Shape,
    weights: &Weights<'_, &[f32]>,
    tokens: &[usize],
    conv: &mut [SharedArray<f32>],
    ssm: &mut [SharedArray<f32>],
) -> Option<Result<Vec<f32>>> {
    // Each worker's channels of each layer's state, per row: [worker][layer][row].
    let conv_shares = owned_shares(conv, shape, shape.kernel - 1)?;
    let ssm_shares = owned_shares(ssm, shape, shape.state)?;
    let shares: Vec<Mutex<Option<StateShare<'_>>>> = conv_shares
        .into_iter()
        .zip(ssm_shares)
        .map(|share| Mutex::new(Some(share)))
        .collect();

    let mut decoder = DECODER.lock().unwrap_or_else(PoisonError::into_inner);
    let Decoder { team, exchange } = &mut *decoder;
    let exchange = match exchange.take() {
        Some(kept) if kept.fits(shape) => kept,
        _ => Exchange::new(shape),
    };
    let ran = team.run(shape.workers, &|w| {
        // A worker that panics would leave the others spinning: release them, they panic too.
        let _poison = PoisonOnPanic(&exchange.barrier);
        let share = shares[w]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let (conv, ssm) = share.expect("each worker's share is taken once");
        Worker::new(w, shape, weights, &exchange, conv, ssm).run(tokens);
    });
    if let Err(e) = ran {
        return Some(Err(e));
    }

    let mut logits = {
        let partials: Vec<_> = exchange.logits.iter().map(read).collect();
        let mut logits = partials.first()?.to_vec();
        for p in &partials[1..] {
            logits.iter_mut().zip(p.iter()).for_each(|(y, p)| *y += p);
        }
        logits
    };
    decoder.exchange = Some(exchange);
    if let Some(bias) = weights.lm_head_bias {
        for row in logits.chunks_exact_mut(shape.vocab) {
            row.iter_mut().zip(bias).for_each(|(y, b)| *y += b);
        }
    }
    Some(Ok(logits))
}

/// Model dimensions and the work split.
struct Shape {
    rows: usize,
    hidden: usize,
    channels: usize,
    state: usize,
    rank: usize,
    kernel: usize,
    vocab: usize,
    /// Epsilon of the B/C/dt norms, if the model has them.
    bc_dt_norm_eps: Option<f64>,
    /// Epsilon of the block norms and norm_f.
    norm_eps: Vec<f64>,
    workers: usize,
}

impl Shape {
    /// The work split for these dimensions, `None` if a weight's size does not match them (the
    /// op path then runs, and fails as it would).
    fn of(dims: &StepDims, rows: usize, w: &Weights<'_, &[f32]>) -> Option<Self> {
        let shape = Shape {
            rows,
            hidden: dims.hidden,
            channels: dims.channels,
            state: dims.state,
            rank: dims.rank,
            kernel: dims.kernel,
            vocab: dims.vocab,
            bc_dt_norm_eps: dims.bc_dt_norm_eps,
            norm_eps: w.norm_eps.clone(),
            workers: rayon::current_num_threads().max(1),
        };
        let (h, c, n, r, k, v) = (
            shape.hidden,
            shape.channels,
            shape.state,
            shape.rank,
            shape.kernel,
            shape.vocab,
        );
        let x = r + 2 * n;
        let fits = |s: &[f32], len: usize| s.len() == len;
        let fits_opt = |s: Option<&[f32]>, len: usize| s.is_none_or(|s| s.len() == len);
        let matrix = |m: &HostMatrix, d_in: usize, d_out: usize| {
            m.d_in() == d_in && m.d_out() == d_out && m.len_matches()
        };
        let layers_fit = w.layers.iter().all(|l| {
            fits(l.norm, h)
                && matrix(l.in_proj, h, 2 * c)
                && fits_opt(l.in_proj_bias, 2 * c)
                && fits(l.conv, c * k)
                && fits_opt(l.conv_bias, c)
                && matrix(l.x_proj, c, x)
                && fits_opt(l.x_proj_bias, x)
                && matrix(l.dt_proj, r, c)
                && fits(l.dt_bias, c)
                && fits(l.a, c * n)
                && fits(l.d, c)
                && matrix(l.out_proj, c, h)
                && fits_opt(l.out_proj_bias, h)
        });
        let model_fits = matrix(w.embedding, h, v)
            && fits(w.norm_f, h)
            && matrix(w.lm_head, h, v)
            && fits_opt(w.lm_head_bias, v);
        (layers_fit && model_fits && k >= 1).then_some(shape)
    }

    /// The hidden features worker `w` multiplies into in_proj and lm_head.
    fn hidden_block(&self, w: usize) -> Range<usize> {
        block_range(self.hidden, self.workers, w)
    }

    /// The channels worker `w` owns.
    fn channel_block(&self, w: usize) -> Range<usize> {
        block_range(self.channels, self.workers, w)
    }
}

/// The weights a step reads: the matrices in their format, the f32 vectors as tensors (`T` =
/// [`NdArrayTensor`], holding the storage) or as slices borrowed from them (`T` = `&[f32]`).
struct Weights<'a, T> {
    /// `[hidden, vocab]`
    embedding: &'a HostMatrix,
    layers: Vec<LayerWeights<'a, T>>,
    /// `[hidden]`
    norm_f: T,
    /// Epsilon of every block norm, then of norm_f.
    norm_eps: Vec<f64>,
    /// `[hidden, vocab]`
    lm_head: &'a HostMatrix,
    lm_head_bias: Option<T>,
}

/// One layer's weights; layouts as in [`StepLayer`](crate::ops::StepLayer).
struct LayerWeights<'a, T> {
    norm: T,
    in_proj: &'a HostMatrix,
    in_proj_bias: Option<T>,
    conv: T,
    conv_bias: Option<T>,
    x_proj: &'a HostMatrix,
    x_proj_bias: Option<T>,
    dt_proj: &'a HostMatrix,
    dt_bias: T,
    a: T,
    d: T,
    out_proj: &'a HostMatrix,
    out_proj_bias: Option<T>,
}

impl<'a> Weights<'a, NdArrayTensor> {
    fn of<B>(w: &StepWeights<'a, B>) -> Self
    where
        B: SelectiveScanBackend<Matrix = HostMatrix>
            + Backend<FloatTensorPrimitive = NdArrayTensor>,
    {
        let bias = |linear: &PackedLinear<B>| linear.bias.as_ref().map(primitive);
        Weights {
            embedding: w.embedding,
            layers: w
                .layers
                .iter()
                .map(|l| LayerWeights {
                    norm: primitive(l.norm.0),
                    in_proj: &l.in_proj.weight,
                    in_proj_bias: bias(l.in_proj),
                    conv: primitive(l.conv_weight),
                    conv_bias: l.conv_bias.map(primitive),
                    x_proj: &l.x_proj.weight,
                    x_proj_bias: bias(l.x_proj),
                    dt_proj: &l.dt_proj.weight,
                    dt_bias: primitive(l.dt_bias),
                    a: primitive(l.a),
                    d: primitive(l.d),
                    out_proj: &l.out_proj.weight,
                    out_proj_bias: bias(l.out_proj),
                })
                .collect(),
            norm_f: primitive(w.norm_f.0),
            norm_eps: w
                .layers
                .iter()
                .map(|l| l.norm.1)
                .chain([w.norm_f.1])
                .collect(),
            lm_head: &w.lm_head.weight,
            lm_head_bias: bias(w.lm_head),
        }
    }

    /// Every vector's values, `None` if one is not an f32 row-major buffer.
    fn slices(&self) -> Option<Weights<'a, &[f32]>> {
        let layers = self
            .layers
            .iter()
            .map(|l| {
                Some(LayerWeights {
                    norm: slice(&l.norm)?,
                    in_proj: l.in_proj,
                    in_proj_bias: opt(&l.in_proj_bias)?,
                    conv: slice(&l.conv)?,
                    conv_bias: opt(&l.conv_bias)?,
                    x_proj: l.x_proj,
                    x_proj_bias: opt(&l.x_proj_bias)?,
                    dt_proj: l.dt_proj,
                    dt_bias: slice(&l.dt_bias)?,
                    a: slice(&l.a)?,
                    d: slice(&l.d)?,
                    out_proj: l.out_proj,
                    out_proj_bias: opt(&l.out_proj_bias)?,
                })
            })
            .collect::<Option<Vec<_>>>()?;
        Some(Weights {
            embedding: self.embedding,
            layers,
            norm_f: slice(&self.norm_f)?,
            norm_eps: self.norm_eps.clone(),
            lm_head: self.lm_head,
            lm_head_bias: opt(&self.lm_head_bias)?,
        })
    }
}

fn primitive<B, const D: usize>(tensor: &Tensor<B, D>) -> NdArrayTensor
where
    B: Backend<FloatTensorPrimitive = NdArrayTensor>,
{
    tensor.clone().into_primitive().tensor()
}

/// An optional weight's values: `Some(None)` when there is no such weight.
fn opt(t: &Option<NdArrayTensor>) -> Option<Option<&[f32]>> {
    match t {
        Some(t) => slice(t).map(Some),
        None => Some(None),
    }
}

fn slice(t: &NdArrayTensor) -> Option<&[f32]> {
    match t {
        NdArrayTensor::F32(storage) => storage.view().to_slice(),
        _ => None,
    }
}

/// An f32 tensor's array, row-major, and unique so the step can write it (a copy only if a
/// forked state shares it or it is a strided view).
fn host_array<B: Backend<FloatTensorPrimitive = NdArrayTensor>>(
    t: Tensor<B, 3>,
) -> SharedArray<f32> {
    let NdArrayTensor::F32(storage) = t.into_primitive().tensor() else {
        unreachable!("the caller checked for f32")
    };
    let mut array = storage.into_shared();
    if array.as_slice_mut().is_none() {
        array = array.as_standard_layout().into_owned().into_shared();
    }
    array
}

fn tensor<B: Backend<FloatTensorPrimitive = NdArrayTensor>>(
    array: SharedArray<f32>,
) -> Tensor<B, 3> {
    Tensor::from_primitive(TensorPrimitive::Float(NdArrayTensor::from(array)))
}

/// Cuts every layer's state `[rows, channels, width]` into each worker's channels per row:
/// `[worker][layer][row]`, each `[channels of the worker, width]`.
fn owned_shares<'a>(
    layers: &'a mut [SharedArray<f32>],
    shape: &Shape,
    width: usize,
) -> Option<Vec<Vec<Vec<&'a mut [f32]>>>> {
    let mut shares: Vec<Vec<Vec<&mut [f32]>>> = (0..shape.workers).map(|_| Vec::new()).collect();
    for layer in layers {
        let values = layer.as_slice_mut()?;
        if values.len() != shape.rows * shape.channels * width {
            return None;
        }
        let mut per_worker: Vec<Vec<&mut [f32]>> = (0..shape.workers).map(|_| Vec::new()).collect();
        for row in values.chunks_exact_mut(shape.channels * width) {
            let mut rest = row;
            for (w, share) in per_worker.iter_mut().enumerate() {
                let (mine, after) = rest.split_at_mut(shape.channel_block(w).len() * width);
                share.push(mine);
                rest = after;
            }
        }
        for (share, layer_share) in shares.iter_mut().zip(per_worker) {
            share.push(layer_share);
        }
    }
    Some(shares)
}

/// Where workers leave their partial sums for each other: one buffer per worker and
/// projection, written by its owner between two barriers and read by all after the second.
struct Exchange {
    /// `[worker][rows, 2 * channels]`
    in_proj: Vec<RwLock<Vec<f32>>>,
    /// `[worker][rows, rank + 2 * state]`
    x_proj: Vec<RwLock<Vec<f32>>>,
    /// `[worker][rows, hidden]`
    out_proj: Vec<RwLock<Vec<f32>>>,
    /// `[worker][rows, vocab]`
    logits: Vec<RwLock<Vec<f32>>>,
    barrier: SpinBarrier,
    /// The shape the buffers are sized for: rows, workers and the widths above.
    sizes: [usize; 6],
}

impl Exchange {
    fn sizes(shape: &Shape) -> [usize; 6] {
        let x = shape.rank + 2 * shape.state;
        let (rows, workers) = (shape.rows, shape.workers);
        [rows, workers, shape.channels, x, shape.hidden, shape.vocab]
    }

    fn fits(&self, shape: &Shape) -> bool {
        self.sizes == Self::sizes(shape)
    }

    fn new(shape: &Shape) -> Self {
        let buffers = |len: usize| {
            (0..shape.workers)
                .map(|_| RwLock::new(vec![0.0; shape.rows * len]))
                .collect()
        };
        Exchange {
            in_proj: buffers(2 * shape.channels),
            x_proj: buffers(shape.rank + 2 * shape.state),
            out_proj: buffers(shape.hidden),
            logits: buffers(shape.vocab),
            barrier: SpinBarrier::new(shape.workers),
            sizes: Self::sizes(shape),
        }
    }
}

/// A worker's own buffer to fill, zeroed. The lock is never contended: only its owner writes it,
/// between the barriers where nobody reads it.
fn zeroed(buffer: &RwLock<Vec<f32>>) -> std::sync::RwLockWriteGuard<'_, Vec<f32>> {
    let mut guard = buffer
        .write()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    guard.fill(0.0);
    guard
}

fn read(buffer: &RwLock<Vec<f32>>) -> std::sync::RwLockReadGuard<'_, Vec<f32>> {
    buffer
        .read()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// `Σ_w partials[w][i]`, added in worker order (as [`super::matvec`] adds its blocks).
fn sum_at(partials: &[std::sync::RwLockReadGuard<'_, Vec<f32>>], i: usize) -> f32 {
    let mut sum = partials[0][i];
    for p in &partials[1..] {
        sum += p[i];
    }
    sum
}

/// One worker's share of the step, and its private buffers.
struct Worker<'a> {
    w: usize,
    shape: &'a Shape,
    weights: &'a Weights<'a, &'a [f32]>,
    exchange: &'a Exchange,
    /// Its channels' conv state, `[layer][row]`, each `[channels, kernel - 1]`.
    conv: Vec<Vec<&'a mut [f32]>>,
    /// Its channels' SSM state, `[layer][row]`, each `[channels, state]`.
    ssm: Vec<Vec<&'a mut [f32]>>,
    hidden: Range<usize>,
    channels: Range<usize>,
    /// The residual stream, a copy in every worker. `[rows, hidden]`
    h: Vec<f32>,
    /// The block's normalised input. `[rows, hidden]`
    normed: Vec<f32>,
    /// The conv output (the scan's x) of its channels, the rest zero. `[rows, channels]`
    x: Vec<f32>,
    /// Its channels' gate. `[rows, own channels]`
    z: Vec<f32>,
    /// dt | B | C, normalised. `[rows, rank + 2 * state]`
    dt_b_c: Vec<f32>,
    /// Its channels' delta before bias and softplus. `[rows, own channels]`
    delta: Vec<f32>,
    /// One block of dt_proj's partial sums, as `delta`.
    delta_part: Vec<f32>,
    /// The scan output of its channels, the rest zero. `[rows, channels]`
    y: Vec<f32>,
}

impl<'a> Worker<'a> {
    fn new(
        w: usize,
        shape: &'a Shape,
        weights: &'a Weights<'a, &'a [f32]>,
        exchange: &'a Exchange,
        conv: Vec<Vec<&'a mut [f32]>>,
        ssm: Vec<Vec<&'a mut [f32]>>,
    ) -> Self {
        let own = shape.channel_block(w).len();
        let rows = shape.rows;
        Worker {
            w,
            shape,
            weights,
            exchange,
            conv,
            ssm,
            hidden: shape.hidden_block(w),
            channels: shape.channel_block(w),
            h: vec![0.0; rows * shape.hidden],
            normed: vec![0.0; rows * shape.hidden],
            x: vec![0.0; rows * shape.channels],
            z: vec![0.0; rows * own],
            dt_b_c: vec![0.0; rows * (shape.rank + 2 * shape.state)],
            delta: vec![0.0; rows * own],
            delta_part: vec![0.0; rows * own],
            y: vec![0.0; rows * shape.channels],
        }
    }

    fn run(mut self, tokens: &[usize]) {
        let exchange = self.exchange;
        self.embed(tokens);
        for layer in 0..self.weights.layers.len() {
            self.in_proj(layer);
            exchange.barrier.wait();
            self.conv_and_x_proj(layer);
            exchange.barrier.wait();
            self.scan_and_out_proj(layer);
            exchange.barrier.wait();
            self.residual(layer);
        }
        self.logits();
    }

    /// Phase 0: the tokens' embeddings. A column of the `[hidden, vocab]` table is a gather
    /// with a page walk per value, so each worker gathers its block of the features (into its
    /// out_proj buffer, unused until phase 3) and then copies the others' blocks.
    fn embed(&mut self, tokens: &[usize]) {
        let exchange = self.exchange;
        let hidden = self.shape.hidden;
        {
            let own = self.hidden.clone();
            let mut gathered = vec![0.0; tokens.len() * own.len()]; // [rows, own]
            self.weights
                .embedding
                .columns_part(tokens, own.clone(), &mut gathered);
            let mut mine = zeroed(&exchange.out_proj[self.w]);
            for row in 0..tokens.len() {
                let part = &gathered[row * own.len()..(row + 1) * own.len()];
                mine[row * hidden + own.start..row * hidden + own.end].copy_from_slice(part);
            }
        }
        exchange.barrier.wait();
        for (w, part) in exchange.out_proj.iter().map(read).enumerate() {
            let block = self.shape.hidden_block(w);
            for row in 0..tokens.len() {
                let range = row * hidden + block.start..row * hidden + block.end;
                self.h[range.clone()].copy_from_slice(&part[range]);
            }
        }
    }

    /// Phase 1: norm (every worker, whole rows) and this worker's block of in_proj.
    fn in_proj(&mut self, layer: usize) {
        let l = self.weights_of(layer);
        let (hidden, c) = (self.shape.hidden, self.shape.channels);
        self.normalise(l.norm, self.shape.norm_eps[layer]);
        let mut partial = zeroed(&self.exchange.in_proj[self.w]);
        let inputs = self.hidden.clone();
        l.in_proj
            .accumulate(&mut partial, &self.normed, hidden, inputs, 0..2 * c);
    }

    /// Phase 2: x and z for this worker's channels, their conv step, and their rows of x_proj.
    fn conv_and_x_proj(&mut self, layer: usize) {
        let l = self.weights_of(layer);
        let (c, k) = (self.shape.channels, self.shape.kernel);
        let own = self.channels.clone();
        let n = own.len();
        let in_proj: Vec<_> = self.exchange.in_proj.iter().map(read).collect();
        for row in 0..self.shape.rows {
            // Whole rows of channels per pass, so each pass vectorises: x and z from the
            // partials (added in worker order, then the bias, as the op path adds them), the
            // conv, then SiLU.
            let x = &mut self.x[row * c + own.start..row * c + own.end];
            let z = &mut self.z[row * n..(row + 1) * n];
            sum_into(x, &in_proj, row * 2 * c + own.start);
            sum_into(z, &in_proj, row * 2 * c + c + own.start);
            if let Some(bias) = l.in_proj_bias {
                add(x, &bias[own.clone()]);
                add(z, &bias[c + own.start..c + own.end]);
            }
            let history = &mut self.conv[layer][row];
            for (i, x) in x.iter_mut().enumerate() {
                let ch = own.start + i;
                let taps = &l.conv[ch * k..(ch + 1) * k];
                let conv_bias = l.conv_bias.map_or(0.0, |b| b[ch]);
                let history = &mut history[i * (k - 1)..(i + 1) * (k - 1)];
                *x = conv_step(*x, taps, conv_bias, history);
            }
            x.iter_mut().for_each(|v| *v = silu::<false>(*v));
        }
        drop(in_proj);
        let width = self.shape.rank + 2 * self.shape.state;
        let mut partial = zeroed(&self.exchange.x_proj[self.w]);
        let inputs = self.channels.clone();
        l.x_proj
            .accumulate(&mut partial, &self.x, c, inputs, 0..width);
    }

    /// Phase 3: dt | B | C (every worker, whole), delta, the scan and out_proj for this worker's
    /// channels.
    fn scan_and_out_proj(&mut self, layer: usize) {
        let l = self.weights_of(layer);
        let (c, n, r) = (self.shape.channels, self.shape.state, self.shape.rank);
        let width = r + 2 * n;
        {
            let x_proj: Vec<_> = self.exchange.x_proj.iter().map(read).collect();
            for (i, v) in self.dt_b_c.iter_mut().enumerate() {
                *v = sum_at(&x_proj, i) + l.x_proj_bias.map_or(0.0, |b| b[i % width]);
            }
        }
        if let Some(eps) = self.shape.bc_dt_norm_eps {
            for row in self.dt_b_c.chunks_exact_mut(width) {
                let (dt, b_c) = row.split_at_mut(r);
                let (b, c) = b_c.split_at_mut(n);
                for part in [dt, b, c] {
                    rms_norm_row(part, None, eps);
                }
            }
        }

        // delta = dt @ dt_proj for this worker's channels, dt's features in the blocks and order
        // of the op path's matvec.
        let own = self.channels.clone();
        for block in 0..self.shape.workers {
            let inputs = block_range(r, self.shape.workers, block);
            let target = if block == 0 {
                &mut self.delta
            } else {
                &mut self.delta_part
            };
            target.fill(0.0);
            l.dt_proj
                .accumulate(target, &self.dt_b_c, width, inputs, own.clone());
            if block > 0 {
                let part = &self.delta_part;
                self.delta.iter_mut().zip(part).for_each(|(d, p)| *d += p);
            }
        }

        for row in 0..self.shape.rows {
            let bc = &self.dt_b_c[row * width + r..(row + 1) * width];
            let scan = ScanBuffers {
                channels: own.len(),
                state: n,
                len: 1,
                x: &self.x[row * c + own.start..row * c + own.end],
                delta: &self.delta[row * own.len()..(row + 1) * own.len()],
                z: Some(&self.z[row * own.len()..(row + 1) * own.len()]),
                b: &bc[..n],
                c: &bc[n..],
                a: &l.a[own.start * n..own.end * n],
                d: &l.d[own.clone()],
                bias: &l.dt_bias[own.clone()],
            };
            let y = &mut self.y[row * c + own.start..row * c + own.end];
            let s = &mut self.ssm[layer][row];
            for d0 in (0..own.len()).step_by(LANES) {
                scan.block(0, d0, &mut y[d0..], &mut s[d0 * n..]);
            }
        }

        let hidden = self.shape.hidden;
        let mut partial = zeroed(&self.exchange.out_proj[self.w]);
        l.out_proj
            .accumulate(&mut partial, &self.y, c, own, 0..hidden);
    }

    /// Phase 4: the residual stream plus the mixer output.
    fn residual(&mut self, layer: usize) {
        let bias = self.weights.layers[layer].out_proj_bias;
        let hidden = self.shape.hidden;
        let out_proj: Vec<_> = self.exchange.out_proj.iter().map(read).collect();
        for (i, h) in self.h.iter_mut().enumerate() {
            let mixed = sum_at(&out_proj, i) + bias.map_or(0.0, |b| b[i % hidden]);
            *h += mixed;
        }
    }

    /// norm_f and this worker's block of lm_head.
    fn logits(&mut self) {
        let layers = self.weights.layers.len();
        self.normalise(self.weights.norm_f, self.shape.norm_eps[layers]);
        let (hidden, vocab) = (self.shape.hidden, self.shape.vocab);
        let mut partial = zeroed(&self.exchange.logits[self.w]);
        let inputs = self.hidden.clone();
        self.weights
            .lm_head
            .accumulate(&mut partial, &self.normed, hidden, inputs, 0..vocab);
    }

    /// A layer's weights, borrowed from the step rather than from the worker.
    fn weights_of(&self, layer: usize) -> &'a LayerWeights<'a, &'a [f32]> {
        &self.weights.layers[layer]
    }

    fn normalise(&mut self, weight: &[f32], eps: f64) {
        self.normed.copy_from_slice(&self.h);
        for row in self.normed.chunks_exact_mut(self.shape.hidden) {
            rms_norm_row(row, Some(weight), eps);
        }
    }
}

/// One channel's causal conv for one new input `x`, with bias, before the SiLU, shifting `x`
/// into its `history` (the `kernel - 1` previous inputs, oldest first). Same order of
/// operations as [`super::scan::causal_conv1d`].
fn conv_step(x: f32, taps: &[f32], bias: f32, history: &mut [f32]) -> f32 {
    let mut out = bias;
    for (w, v) in taps.iter().zip(history.iter()) {
        out += w * v;
    }
    if let Some(w) = taps.get(history.len()) {
        out += w * x;
    }
    if let Some(last) = history.len().checked_sub(1) {
        history.copy_within(1.., 0);
        history[last] = x;
    }
    out
}

/// `out[i] = Σ_w partials[w][start + i]`, added in worker order (as [`sum_at`]).
fn sum_into(out: &mut [f32], partials: &[std::sync::RwLockReadGuard<'_, Vec<f32>>], start: usize) {
    out.copy_from_slice(&partials[0][start..start + out.len()]);
    for p in &partials[1..] {
        add(out, &p[start..start + out.len()]);
    }
}

fn add(out: &mut [f32], values: &[f32]) {
    out.iter_mut().zip(values).for_each(|(o, v)| *o += v);
}

/// A barrier for a fixed set of threads that each own a core: they wait by spinning (a
/// sleeping wait costs tens of microseconds to wake, and a step meets ~150 times), yielding
/// after a while in case the cores are oversubscribed.
struct SpinBarrier {
    threads: usize,
    arrived: AtomicUsize,
    generation: AtomicUsize,
    poisoned: AtomicBool,
}

impl SpinBarrier {
    fn new(threads: usize) -> Self {
        SpinBarrier {
            threads,
            arrived: AtomicUsize::new(0),
            generation: AtomicUsize::new(0),
            poisoned: AtomicBool::new(false),
        }
    }

    fn wait(&self) {
        let generation = self.generation.load(Ordering::Acquire);
        if self.arrived.fetch_add(1, Ordering::AcqRel) + 1 == self.threads {
            self.arrived.store(0, Ordering::Relaxed);
            self.generation.fetch_add(1, Ordering::Release);
            return;
        }
        let mut spins = 0u32;
        while self.generation.load(Ordering::Acquire) == generation {
            if self.poisoned.load(Ordering::Relaxed) {
                panic!("another decode worker panicked");
            }
            if spins < 1 << 12 {
                spins += 1;
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
    }
}

/// Poisons the barrier if its worker unwinds, so the others stop waiting for it.
struct PoisonOnPanic<'a>(&'a SpinBarrier);

impl Drop for PoisonOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.poisoned.store(true, Ordering::Relaxed);
        }
    }
}
