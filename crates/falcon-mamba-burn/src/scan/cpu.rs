//! The selective scan as a CPU kernel (used for burn-ndarray).
//!
//! Inputs are copied once into time-major host buffers (`[batch, len, channels]`, which is how
//! the mixer's projections lay them out anyway), then each rayon task scans one block of
//! `LANES` adjacent channels of one batch row: the lanes are SIMD lanes, the `state` values of
//! every lane stay in registers (or L1) for the whole sequence, B_t and C_t are scalars
//! broadcast to all lanes, and nothing is allocated per time step. `exp` is a polynomial the
//! compiler vectorises; on x86-64 the block is compiled a second time for AVX2 + FMA and picked
//! at run time.

use burn::backend::ndarray::NdArrayTensor;
use burn::prelude::*;
use ndarray::{Axis, Ix3};
use rayon::prelude::*;

use super::reference::softplus_scalar;
use super::ScanInput;

/// Channels per task: two AVX2 vectors, a whole 64-byte cache line of each time step's row.
const LANES: usize = 16;

/// See [`super::SelectiveScanBackend::selective_scan`].
pub fn selective_scan<B>(input: ScanInput<B>) -> (Tensor<B, 3>, Tensor<B, 3>)
where
    B: Backend<FloatTensorPrimitive = NdArrayTensor>,
{
    let device = input.x.device();
    let [batch, channels, len] = input.x.dims();
    let state = input.a.dims()[1];
    let x = time_major(input.x); // [batch, len, channels]
    let delta = time_major(input.delta); // [batch, len, channels]
    let z = input.z.map(time_major); // [batch, len, channels]
    let b = time_major(input.b); // [batch, len, state]
    let c = time_major(input.c); // [batch, len, state]
    let a_rows = host(input.a); // [channels, state]
    let a: Vec<f32> = (0..state * channels)
        .map(|i| a_rows[(i % channels) * state + i / channels])
        .collect(); // [state, channels]
    let d = host(input.d); // [channels]
    let bias = input.delta_bias.map_or_else(|| vec![0.0; channels], host); // [channels]
    let s0 = host(input.state); // [batch, channels, state]

    let blocks_per_row = channels.div_ceil(LANES);
    let shared = Shared {
        channels,
        state,
        len,
        x: &x,
        delta: &delta,
        z: z.as_deref(),
        b: &b,
        c: &c,
        a: &a,
        d: &d,
        bias: &bias,
        s0: &s0,
    };
    // Each task returns its block's outputs `[len, LANES]` and final state `[state, LANES]`.
    let results: Vec<(Vec<f32>, Vec<f32>)> = (0..batch * blocks_per_row)
        .into_par_iter()
        .map(|task| shared.block(task / blocks_per_row, (task % blocks_per_row) * LANES))
        .collect();

    let mut y = vec![0.0f32; batch * len * channels];
    let mut s = vec![0.0f32; batch * channels * state];
    for (task, (y_block, s_block)) in results.into_iter().enumerate() {
        let (bi, d0) = (task / blocks_per_row, (task % blocks_per_row) * LANES);
        let width = LANES.min(channels - d0);
        for t in 0..len {
            let row = (bi * len + t) * channels + d0;
            y[row..row + width].copy_from_slice(&y_block[t * LANES..t * LANES + width]);
        }
        for l in 0..width {
            for n in 0..state {
                s[(bi * channels + d0 + l) * state + n] = s_block[n * LANES + l];
            }
        }
    }
    let y = Tensor::<B, 3>::from_data(TensorData::new(y, [batch, len, channels]), &device);
    let s = Tensor::from_data(TensorData::new(s, [batch, channels, state]), &device);
    (y.swap_dims(1, 2), s)
}

/// A tensor's values in row-major order. burn's `into_data` cannot take the buffer of a shared
/// tensor (weights, states) and then walks it element by element through dynamic-rank indices;
/// this copies the storage's slice in one go.
fn host<B, const D: usize>(t: Tensor<B, D>) -> Vec<f32>
where
    B: Backend<FloatTensorPrimitive = NdArrayTensor>,
{
    if let NdArrayTensor::F32(storage) = t.clone().into_primitive().tensor() {
        if let Some(slice) = storage.view().as_slice() {
            return slice.to_vec();
        }
    }
    t.into_data().iter::<f32>().collect()
}

/// A `[batch, channels, len]` tensor as a contiguous `[batch, len, channels]` buffer.
///
/// The mixer's tensors are `[batch, len, channels]` in memory, viewed channel-major: copied row
/// by row through a typed rank-3 view this is a memcpy per time step (burn's `into_data` would
/// walk a strided view element by element through dynamic-rank indices, ~20x slower).
fn time_major<B>(t: Tensor<B, 3>) -> Vec<f32>
where
    B: Backend<FloatTensorPrimitive = NdArrayTensor>,
{
    let t = t.swap_dims(1, 2);
    let NdArrayTensor::F32(storage) = t.clone().into_primitive().tensor() else {
        return t.into_data().iter::<f32>().collect();
    };
    let view = storage.view();
    let Ok(view) = view.into_dimensionality::<Ix3>() else {
        unreachable!("a rank-3 tensor has a rank-3 view")
    };
    let mut out = Vec::with_capacity(view.len());
    for row in view.axis_iter(Axis(0)) {
        for line in row.axis_iter(Axis(0)) {
            match line.as_slice() {
                Some(slice) => out.extend_from_slice(slice),
                None => out.extend(line.iter().copied()),
            }
        }
    }
    out
}

/// The host buffers every task reads.
struct Shared<'a> {
    channels: usize,
    state: usize,
    len: usize,
    x: &'a [f32],
    delta: &'a [f32],
    z: Option<&'a [f32]>,
    b: &'a [f32],
    c: &'a [f32],
    a: &'a [f32],
    d: &'a [f32],
    bias: &'a [f32],
    s0: &'a [f32],
}

impl Shared<'_> {
    /// Scans channels `d0 .. d0 + LANES` of batch row `bi`.
    fn block(&self, bi: usize, d0: usize) -> (Vec<f32>, Vec<f32>) {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU supports AVX2 and FMA, checked just above.
            return unsafe { self.block_avx2_fma(bi, d0) };
        }
        self.block_generic::<false>(bi, d0)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn block_avx2_fma(&self, bi: usize, d0: usize) -> (Vec<f32>, Vec<f32>) {
        self.block_generic::<true>(bi, d0)
    }

    /// The scan of one block; `FMA` selects fused multiply-adds (only where the CPU has them:
    /// elsewhere `mul_add` is a slow library call).
    #[inline(always)]
    fn block_generic<const FMA: bool>(&self, bi: usize, d0: usize) -> (Vec<f32>, Vec<f32>) {
        let (channels, n_state, len) = (self.channels, self.state, self.len);
        let width = LANES.min(channels - d0);
        // Lanes past the last channel compute on zeros and are dropped by the caller.
        let lanes = |src: &[f32], at: usize| -> [f32; LANES] {
            let mut v = [0.0; LANES];
            v[..width].copy_from_slice(&src[at..at + width]);
            v
        };
        let d = lanes(self.d, d0);
        let bias = lanes(self.bias, d0);
        let a: Vec<[f32; LANES]> = (0..n_state)
            .map(|n| lanes(self.a, n * channels + d0))
            .collect();
        let mut s: Vec<[f32; LANES]> = (0..n_state)
            .map(|n| {
                let mut v = [0.0; LANES];
                for (l, v) in v.iter_mut().enumerate().take(width) {
                    *v = self.s0[(bi * channels + d0 + l) * n_state + n];
                }
                v
            })
            .collect();
        let mut y_out = vec![0.0f32; len * LANES];

        for t in 0..len {
            let row = (bi * len + t) * channels + d0;
            let x = lanes(self.x, row);
            let raw = lanes(self.delta, row);
            let mut delta = [0.0f32; LANES];
            let mut delta_x = [0.0f32; LANES];
            for l in 0..LANES {
                delta[l] = softplus_scalar(raw[l] + bias[l]);
                delta_x[l] = delta[l] * x[l];
            }
            let bc = (bi * len + t) * n_state;
            let mut y = [0.0f32; LANES];
            for n in 0..n_state {
                let (b, c) = (self.b[bc + n], self.c[bc + n]);
                let (a, s) = (&a[n], &mut s[n]);
                for l in 0..LANES {
                    let decay = exp(delta[l] * a[l]);
                    s[l] = madd::<FMA>(decay, s[l], delta_x[l] * b);
                    y[l] = madd::<FMA>(s[l], c, y[l]);
                }
            }
            let out = &mut y_out[t * LANES..(t + 1) * LANES];
            for l in 0..LANES {
                out[l] = madd::<FMA>(d[l], x[l], y[l]);
            }
            if let Some(z) = self.z {
                let z = lanes(z, row);
                for l in 0..LANES {
                    out[l] *= silu(z[l]);
                }
            }
        }
        let s_out = s.iter().flat_map(|v| v.iter().copied()).collect();
        (y_out, s_out)
    }
}

#[inline(always)]
fn madd<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// `e^x` for x in [-87, 88] (clamped outside), relative error below 3e-7 (measured 2.4e-7), in operations the
/// compiler can vectorise: x = k ln2 + r with |r| ≤ ln2/2, e^r by a degree-6 polynomial, 2^k by
/// building the float's exponent bits.
#[inline(always)]
fn exp(x: f32) -> f32 {
    const LOG2_E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // Adding and subtracting 1.5 * 2^23 rounds to the nearest integer without a library call.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let shifted = x * LOG2_E + ROUND;
    let k = shifted - ROUND;
    // `shifted` lies in [2^23, 2^24), where the low mantissa bits are the integer k itself: its
    // bits minus ROUND's are k, with no float-to-int conversion (which would not vectorise).
    let k_bits = shifted.to_bits().wrapping_sub(ROUND.to_bits());
    let r = (x - k * LN2_HI) - k * LN2_LO;
    let p = 1.0 / 720.0;
    let p = p * r + 1.0 / 120.0;
    let p = p * r + 1.0 / 24.0;
    let p = p * r + 1.0 / 6.0;
    let p = p * r + 0.5;
    let p = p * r + 1.0;
    let p = p * r + 1.0;
    p * f32::from_bits(k_bits.wrapping_add(127) << 23)
}

#[cfg(test)]
mod tests {
    #[test]
    fn polynomial_exp_is_accurate() {
        let mut worst = 0.0f64;
        for i in 0..=200_000 {
            let x = -87.0 + 175.0 * i as f32 / 200_000.0;
            let (got, want) = (f64::from(super::exp(x)), f64::from(x).exp());
            worst = worst.max(((got - want) / want).abs());
        }
        assert!(worst < 3e-7, "worst relative error {worst:e}");
    }
}
