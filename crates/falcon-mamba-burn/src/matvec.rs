//! Projections of a few rows (decode: one token per sequence) on the CPU. burn-ndarray 0.21's
//! matmul copies the whole weight matrix on every call; this reads the weights where they are,
//! once and front to back, which is all a memory-bound matrix-vector product should cost.

use burn::backend::ndarray::NdArrayTensor;
use burn::prelude::*;
use burn::tensor::module::linear as burn_linear;
use rayon::prelude::*;

use crate::scan::cpu::host;

/// Above this many rows, burn's blocked matmul (compute-bound) is the better tool.
const MAX_ROWS: usize = 8;

/// `input @ weight + bias` with `weight` `[in, out]`; see [`crate::scan::SelectiveScanBackend::project`].
pub fn linear<B>(
    input: Tensor<B, 3>,
    weight: Tensor<B, 2>,
    bias: Option<Tensor<B, 1>>,
) -> Tensor<B, 3>
where
    B: Backend<FloatTensorPrimitive = NdArrayTensor>,
{
    let [batch, len, d_in] = input.dims();
    let d_out = weight.dims()[1];
    let rows = batch * len;
    if rows > MAX_ROWS {
        return burn_linear(input, weight, bias);
    }
    let NdArrayTensor::F32(storage) = weight.clone().into_primitive().tensor() else {
        return burn_linear(input, weight, bias);
    };
    let view = storage.view();
    let Some(w) = view.as_slice() else {
        return burn_linear(input, weight, bias);
    };
    let device = input.device();
    let x = host(input); // [rows, d_in]

    // Each thread streams one contiguous block of weight rows (the hardware prefetcher's best
    // case: strided column slices reach only ~60% of the read bandwidth here, more blocks than
    // threads a few % less) into its own partial sums; the partials are added at the end.
    let blocks = rayon::current_num_threads().clamp(1, d_in);
    let block_rows = d_in.div_ceil(blocks);
    let partials: Vec<Vec<f32>> = (0..d_in.div_ceil(block_rows))
        .into_par_iter()
        .map(|block| {
            let (i0, i1) = (block * block_rows, ((block + 1) * block_rows).min(d_in));
            partial(&x, w, rows, d_in, d_out, i0, i1)
        })
        .collect(); // each [rows, d_out]
    let mut partials = partials.into_iter();
    let mut y = partials.next().unwrap_or_else(|| vec![0.0; rows * d_out]); // [rows, d_out]
    for p in partials {
        y.iter_mut().zip(&p).for_each(|(y, p)| *y += p);
    }
    if let Some(bias) = bias.map(host) {
        for row in y.chunks_exact_mut(d_out) {
            row.iter_mut().zip(&bias).for_each(|(y, b)| *y += b);
        }
    }
    Tensor::from_data(TensorData::new(y, [batch, len, d_out]), &device)
}

/// `x[:, i0..i1] @ w[i0..i1, :]`, `[rows, d_out]`: every weight row in the block is read once
/// and added, scaled, to every row's accumulator (a vectorised axpy).
fn partial(
    x: &[f32],
    w: &[f32],
    rows: usize,
    d_in: usize,
    d_out: usize,
    i0: usize,
    i1: usize,
) -> Vec<f32> {
    let mut acc = vec![0.0f32; rows * d_out];
    for i in i0..i1 {
        let w_row = &w[i * d_out..(i + 1) * d_out];
        for (m, acc) in acc.chunks_exact_mut(d_out).enumerate() {
            let xv = x[m * d_in + i];
            for (a, wv) in acc.iter_mut().zip(w_row) {
                *a += xv * wv;
            }
        }
    }
    acc
}
