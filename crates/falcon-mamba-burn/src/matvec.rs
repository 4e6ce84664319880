//! Projections of a few rows (decode: one token per sequence) on the CPU. burn-ndarray 0.21's
//! matmul copies the whole weight matrix on every call; this reads the weights where they are,
//! once, which is all a memory-bound matrix-vector product should cost.

use burn::backend::ndarray::NdArrayTensor;
use burn::prelude::*;
use burn::tensor::module::linear as burn_linear;
use rayon::prelude::*;

use crate::scan::cpu::host;

/// Above this many rows, burn's blocked matmul (compute-bound) is the better tool.
const MAX_ROWS: usize = 8;
/// Output columns per task: each task streams this slice of every weight row.
const COLUMNS: usize = 512;

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
    let bias = bias.map(host); // [d_out]
    let mut y = vec![0.0f32; rows * d_out]; // [rows, d_out]
    let chunks: Vec<(usize, Vec<f32>)> = (0..d_out.div_ceil(COLUMNS))
        .into_par_iter()
        .map(|chunk| {
            let (j0, j1) = (chunk * COLUMNS, ((chunk + 1) * COLUMNS).min(d_out));
            (j0, columns(&x, w, rows, d_in, d_out, j0, j1))
        })
        .collect();
    for (j0, acc) in chunks {
        let width = acc.len() / rows;
        for m in 0..rows {
            y[m * d_out + j0..m * d_out + j0 + width]
                .copy_from_slice(&acc[m * width..(m + 1) * width]);
        }
    }
    if let Some(bias) = bias {
        for row in y.chunks_exact_mut(d_out) {
            row.iter_mut().zip(&bias).for_each(|(y, b)| *y += b);
        }
    }
    Tensor::from_data(TensorData::new(y, [batch, len, d_out]), &device)
}

/// Columns `j0..j1` of `x @ w` for every row, `[rows, j1 - j0]`: one pass over those columns of
/// `w`, each weight row's slice added to every row's accumulator (a vectorised axpy).
fn columns(
    x: &[f32],
    w: &[f32],
    rows: usize,
    d_in: usize,
    d_out: usize,
    j0: usize,
    j1: usize,
) -> Vec<f32> {
    let width = j1 - j0;
    let mut acc = vec![0.0f32; rows * width];
    for i in 0..d_in {
        let w_row = &w[i * d_out + j0..i * d_out + j1];
        for m in 0..rows {
            let xv = x[m * d_in + i];
            for (a, wv) in acc[m * width..(m + 1) * width].iter_mut().zip(w_row) {
                *a += xv * wv;
            }
        }
    }
    acc
}
