//! Projections on the CPU, over [`HostMatrix`] weights in any format. A few rows (decode: one
//! token per sequence) read the weights where they are, once and front to back, widening (or
//! dequantising) them in registers, which is all a memory-bound matrix-vector product should
//! cost; more rows go to the blocked matmul burn uses (matrixmultiply's sgemm), the weights
//! widened a panel at a time.

use std::ops::Range;

use burn::backend::ndarray::NdArrayTensor;
use burn::prelude::*;
use ndarray::linalg::general_mat_mul;
use ndarray::{Array3, ArrayView2, Axis, Ix3};
use rayon::prelude::*;

use super::matrix::HostMatrix;
use super::scan::host;
use crate::ops::Matrix;

/// Above this many rows, the blocked matmul (compute-bound) is the better tool.
pub(crate) const MAX_ROWS: usize = 8;

/// `input @ weight + bias` with `weight` `[in, out]`; see [`crate::ops::SelectiveScanBackend::project`].
pub fn linear<B>(
    input: Tensor<B, 3>,
    weight: &HostMatrix,
    bias: Option<Tensor<B, 1>>,
) -> Tensor<B, 3>
where
    B: Backend<FloatTensorPrimitive = NdArrayTensor>,
{
    let [batch, len, d_in] = input.dims();
    let d_out = weight.d_out();
    let rows = batch * len;
    let device = input.device();
    let mut y = if rows > MAX_ROWS {
        matmul(input, weight)
    } else {
        let x = host(input); // [rows, d_in]
                             // Each thread streams one contiguous block of weight rows (the hardware prefetcher's
                             // best case: strided column slices reach only ~60% of the read bandwidth here, more
                             // blocks than threads a few % less) into its own partial sums; the partials are added
                             // at the end, in block order.
        let blocks = rayon::current_num_threads();
        let partials: Vec<Vec<f32>> = (0..blocks)
            .into_par_iter()
            .map(|block| {
                let mut acc = vec![0.0f32; rows * d_out];
                let inputs = block_range(d_in, blocks, block);
                weight.accumulate(&mut acc, &x, d_in, inputs, 0..d_out);
                acc
            })
            .collect(); // each [rows, d_out]
        let mut partials = partials.into_iter();
        let mut y = partials.next().unwrap_or_else(|| vec![0.0; rows * d_out]); // [rows, d_out]
        for p in partials {
            y.iter_mut().zip(&p).for_each(|(y, p)| *y += p);
        }
        y
    };
    add_bias(&mut y, bias);
    Tensor::from_data(TensorData::new(y, [batch, len, d_out]), &device)
}

/// Weight rows widened per panel of [`matmul`]: a few MB of f32, so a panel stays in cache
/// while the sgemm reads it.
const PANEL_VALUES: usize = 1 << 20;

/// [`linear`] for many rows, `[rows, d_out]`: matrixmultiply's sgemm (multi-threaded) on the
/// input's view, whatever its strides (the mixer's channel-major scan output is a transposed
/// view; the sgemm packs its operands anyway, a copy would be a second pass). f32 weights are
/// read where they are; bf16 and f16 are widened one panel of input rows at a time (never the
/// whole matrix), each panel's product added to the output.
fn matmul<B>(input: Tensor<B, 3>, weight: &HostMatrix) -> Vec<f32>
where
    B: Backend<FloatTensorPrimitive = NdArrayTensor>,
{
    let [batch, len, d_in] = input.dims();
    let d_out = weight.d_out();
    let storage = match input.clone().into_primitive().tensor() {
        NdArrayTensor::F32(storage) => storage,
        // Another float type: its values as f32, row-major.
        _ => {
            let x = host(input);
            let storage = ndarray::ArrayD::from_shape_vec(vec![batch, len, d_in], x)
                .unwrap_or_else(|_| unreachable!("the input holds batch * len * d_in values"));
            storage.into_shared().into()
        }
    };
    let view = storage.view();
    let Ok(x) = view.into_dimensionality::<Ix3>() else {
        unreachable!("a tensor of rank 3 has a view of rank 3")
    }; // [batch, len, d_in]
    let mut y = Array3::<f32>::zeros((batch, len, d_out)); // [batch, len, d_out]
    if let Some(w) = weight.as_f32() {
        let Ok(w) = ArrayView2::from_shape((d_in, d_out), w) else {
            unreachable!("a matrix's buffer holds d_in * d_out values")
        };
        for (x, mut y) in x.axis_iter(Axis(0)).zip(y.axis_iter_mut(Axis(0))) {
            general_mat_mul(1.0, &x, &w, 0.0, &mut y);
        }
    } else if weight.by_outputs() {
        // `[out, in]` rows: panels of output rows, each product written to its columns.
        widened_panels(
            d_out,
            d_in,
            |rows, out| weight.widen_outputs(rows, out),
            |rows, w| {
                let w = w.reversed_axes(); // [d_in, rows]
                for (x, mut y) in x.axis_iter(Axis(0)).zip(y.axis_iter_mut(Axis(0))) {
                    let mut y = y.slice_mut(ndarray::s![.., rows.clone()]);
                    general_mat_mul(1.0, &x, &w, 0.0, &mut y);
                }
            },
        );
    } else {
        // `[in, out]` rows: panels of input rows, each product added to the output.
        widened_panels(
            d_in,
            d_out,
            |rows, out| weight.widen_rows(rows, out),
            |rows, w| {
                for (x, mut y) in x.axis_iter(Axis(0)).zip(y.axis_iter_mut(Axis(0))) {
                    let x = x.slice(ndarray::s![.., rows.clone()]);
                    general_mat_mul(1.0, &x, &w, 1.0, &mut y);
                }
            },
        );
    }
    y.into_raw_vec_and_offset().0
}

/// Walks a matrix of `rows` rows of `width` values a panel of rows at a time: `widen(range,
/// out)` writes rows `range` as f32 into `out` (in parallel, 16 rows per job), then `use_panel`
/// gets the range and the panel `[range.len(), width]`. One panel buffer serves every panel.
fn widened_panels(
    rows: usize,
    width: usize,
    widen: impl Fn(Range<usize>, &mut [f32]) + Sync,
    mut use_panel: impl FnMut(Range<usize>, ArrayView2<'_, f32>),
) {
    let panel_rows = (PANEL_VALUES / width.max(1)).clamp(16, rows.max(16));
    let mut panel = vec![0.0f32; panel_rows.min(rows) * width];
    for start in (0..rows).step_by(panel_rows) {
        let n = panel_rows.min(rows - start);
        let panel = &mut panel[..n * width];
        panel
            .par_chunks_mut(width * 16)
            .enumerate()
            .for_each(|(i, chunk)| {
                let first = start + i * 16;
                widen(first..first + chunk.len() / width, chunk);
            });
        let Ok(w) = ArrayView2::from_shape((n, width), &*panel) else {
            unreachable!("the panel holds n * width values")
        };
        use_panel(start..start + n, w);
    }
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

/// Piece boundaries fall on multiples of this, so that no quantisation block (32 or 64
/// weights along the input) is split between threads.
const ALIGN: usize = 64;

/// The `block`-th of `blocks` equal (but the last) contiguous pieces of `0..len`, each a
/// multiple of [`ALIGN`] long, as the projections here split their input rows among threads;
/// empty past the end.
pub(crate) fn block_range(len: usize, blocks: usize, block: usize) -> Range<usize> {
    let per_block = len
        .div_ceil(blocks.clamp(1, len.max(1)))
        .next_multiple_of(ALIGN);
    (block * per_block).min(len)..((block + 1) * per_block).min(len)
}
