//! Projections on the CPU. burn-ndarray 0.21's matmul copies the whole weight matrix on every
//! call, and its input too when that is a strided view (the mixer's channel-major conv and scan
//! outputs). A few rows (decode: one token per sequence) read the weights where they are, once
//! and front to back, which is all a memory-bound matrix-vector product should cost; more rows
//! go to the same blocked matmul burn uses (matrixmultiply), handed the strided views as they
//! are: it packs its operands into blocks anyway.

use std::ops::Range;

use burn::backend::ndarray::NdArrayTensor;
use burn::prelude::*;
use burn::tensor::module::linear as burn_linear;
use ndarray::linalg::general_mat_mul;
use ndarray::{Array3, Axis, Ix2, Ix3};
use rayon::prelude::*;

use crate::scan::cpu::{host, madd};

/// Above this many rows, the blocked matmul (compute-bound) is the better tool.
pub(crate) const MAX_ROWS: usize = 8;

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
        return matmul(input, weight, bias);
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
    let blocks = rayon::current_num_threads();
    let partials: Vec<Vec<f32>> = (0..blocks)
        .into_par_iter()
        .map(|block| {
            let mut acc = vec![0.0f32; rows * d_out];
            let inputs = block_range(d_in, blocks, block);
            accumulate(&mut acc, &x, w, d_in, d_out, inputs, 0..d_out);
            acc
        })
        .collect(); // each [rows, d_out]
    let mut partials = partials.into_iter();
    let mut y = partials.next().unwrap_or_else(|| vec![0.0; rows * d_out]); // [rows, d_out]
    for p in partials {
        y.iter_mut().zip(&p).for_each(|(y, p)| *y += p);
    }
    add_bias(&mut y, bias);
    Tensor::from_data(TensorData::new(y, [batch, len, d_out]), &device)
}

/// [`linear`] for many rows: matrixmultiply's sgemm (multi-threaded) on the tensors' views,
/// whatever their strides, into a fresh row-major output.
fn matmul<B>(input: Tensor<B, 3>, weight: Tensor<B, 2>, bias: Option<Tensor<B, 1>>) -> Tensor<B, 3>
where
    B: Backend<FloatTensorPrimitive = NdArrayTensor>,
{
    let (NdArrayTensor::F32(x), NdArrayTensor::F32(w)) = (
        input.clone().into_primitive().tensor(),
        weight.clone().into_primitive().tensor(),
    ) else {
        return burn_linear(input, weight, bias);
    };
    let (Ok(x), Ok(w)) = (
        x.view().into_dimensionality::<Ix3>(), // [batch, len, d_in]
        w.view().into_dimensionality::<Ix2>(), // [d_in, d_out]
    ) else {
        unreachable!("tensors of rank 3 and 2 have views of rank 3 and 2")
    };
    let (batch, len, d_out) = (x.dim().0, x.dim().1, w.dim().1);
    let mut y = Array3::<f32>::zeros((batch, len, d_out)); // [batch, len, d_out]
    for (x, mut y) in x.axis_iter(Axis(0)).zip(y.axis_iter_mut(Axis(0))) {
        general_mat_mul(1.0, &x, &w, 0.0, &mut y);
    }
    let mut y = y.into_raw_vec_and_offset().0;
    add_bias(&mut y, bias);
    Tensor::from_data(TensorData::new(y, [batch, len, d_out]), &input.device())
}

/// Adds `bias` (`[d_out]`) to every row of `y` (`[rows, d_out]`).
fn add_bias<B>(y: &mut [f32], bias: Option<Tensor<B, 1>>)
where
    B: Backend<FloatTensorPrimitive = NdArrayTensor>,
{
    if let Some(bias) = bias.map(host) {
        for row in y.chunks_exact_mut(bias.len().max(1)) {
            row.iter_mut().zip(&bias).for_each(|(y, b)| *y += b);
        }
    }
}

/// Adds `x[:, inputs] @ w[inputs, outputs]` to `acc` (`[rows, outputs.len()]`), for `x`
/// `[rows, d_in]` and `w` `[d_in, d_out]`: every weight row segment is read once and added,
/// scaled, to every row's accumulator (a vectorised axpy). On x86-64 compiled a second time for
/// AVX2 + FMA and picked at run time, as the scan is.
pub(crate) fn accumulate(
    acc: &mut [f32],
    x: &[f32],
    w: &[f32],
    d_in: usize,
    d_out: usize,
    inputs: Range<usize>,
    outputs: Range<usize>,
) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU supports AVX2 and FMA, checked just above.
        return unsafe { accumulate_avx2_fma(acc, x, w, d_in, d_out, inputs, outputs) };
    }
    accumulate_generic::<false>(acc, x, w, d_in, d_out, inputs, outputs)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn accumulate_avx2_fma(
    acc: &mut [f32],
    x: &[f32],
    w: &[f32],
    d_in: usize,
    d_out: usize,
    inputs: Range<usize>,
    outputs: Range<usize>,
) {
    accumulate_generic::<true>(acc, x, w, d_in, d_out, inputs, outputs)
}

/// [`accumulate`]; `FMA` selects fused multiply-adds.
#[inline(always)]
fn accumulate_generic<const FMA: bool>(
    acc: &mut [f32],
    x: &[f32],
    w: &[f32],
    d_in: usize,
    d_out: usize,
    inputs: Range<usize>,
    outputs: Range<usize>,
) {
    let width = outputs.len();
    if width == 0 {
        return;
    }
    let row = |i: usize| &w[i * d_out + outputs.start..i * d_out + outputs.end];
    // Four weight rows per pass over the accumulators: a quarter of the accumulator traffic and
    // four read streams in flight. Each accumulator still adds the rows in input order.
    let mut i = inputs.start;
    while i + 4 <= inputs.end {
        let (w0, w1, w2, w3) = (row(i), row(i + 1), row(i + 2), row(i + 3));
        for (m, acc) in acc.chunks_exact_mut(width).enumerate() {
            let &[x0, x1, x2, x3] = &x[m * d_in + i..m * d_in + i + 4] else {
                unreachable!("a slice of four")
            };
            let weights = w0.iter().zip(w1).zip(w2).zip(w3);
            for (a, (((w0, w1), w2), w3)) in acc.iter_mut().zip(weights) {
                let mut sum = *a;
                sum = madd::<FMA>(x0, *w0, sum);
                sum = madd::<FMA>(x1, *w1, sum);
                sum = madd::<FMA>(x2, *w2, sum);
                sum = madd::<FMA>(x3, *w3, sum);
                *a = sum;
            }
        }
        i += 4;
    }
    for i in i..inputs.end {
        let w_row = row(i);
        for (m, acc) in acc.chunks_exact_mut(width).enumerate() {
            let xv = x[m * d_in + i];
            for (a, wv) in acc.iter_mut().zip(w_row) {
                *a = madd::<FMA>(xv, *wv, *a);
            }
        }
    }
}

/// The `block`-th of `blocks` equal (but the last) contiguous pieces of `0..len`, as the
/// projections here split their input rows among threads; empty past the end.
pub(crate) fn block_range(len: usize, blocks: usize, block: usize) -> Range<usize> {
    let per_block = len.div_ceil(blocks.clamp(1, len.max(1)));
    (block * per_block).min(len)..((block + 1) * per_block).min(len)
}
