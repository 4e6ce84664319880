//! The selective scan and causal conv as CubeCL kernels: one source, compiled by CubeCL for
//! whatever runtime the `CubeBackend` runs on (CUDA for burn-cuda; Vulkan, Metal, DX12 or
//! WebGPU for burn-wgpu).
//!
//! Layout of the scan: one unit per (batch, channel), `CHANNELS_PER_CUBE` adjacent channels of
//! one batch row per cube. A channel's `state` values live in registers for the whole sequence
//! (a local array of comptime length, fully unrolled), so the scan reads x, delta and z once and
//! writes y once. B_t and C_t are the same for every channel of a row, so each cube stages them
//! through shared memory one tile of `CHUNK` time steps at a time instead of every unit reading
//! them from global memory. Inputs are read through their strides: the mixer's B and C are
//! transposed views, and copying them contiguous would cost a launch and a round trip.

#[cfg(feature = "fusion")]
pub mod fusion;

use burn::tensor::{Int, Shape, Tensor, TensorPrimitive};
use burn_cubecl::ops::numeric::empty_device_dtype;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::{BoolElement, CubeBackend, CubeRuntime, FloatElement, IntElement};
use cubecl::prelude::{CubeCount, CubeDim};
use falcon_mamba_core::{Result, WeightFormat, WeightMatrix};

use crate::ops::{ScanInput, SelectiveScanBackend, TensorMatrix};
use kernels::{causal_conv1d_kernel, selective_scan_kernel};

/// Units (channels) per cube: two warps on CUDA, a common workgroup size elsewhere.
const CHANNELS_PER_CUBE: u32 = 64;

/// The kernels, in CubeCL's Rust dialect (its `Tensor` is a strided view of device memory).
mod kernels {
    use cubecl::prelude::*;

    /// Time steps of B and C staged in shared memory at once: with 16 states, 2 × 16 × 32 f32 = 4 KiB
    /// per cube, small enough to keep many cubes resident per multiprocessor.
    const CHUNK: usize = 32;

    /// `delta = softplus(delta + delta_bias)`; `s = exp(delta * a) * s + delta * b * x`;
    /// `y = (<s, c> + d * x) * silu(z)`. Absent `z` or `delta_bias` are comptime flags (their
    /// tensor arguments are then placeholders the kernel never reads).
    #[cube(launch)]
    // CubeCL's kernel dialect has no `div_ceil`.
    #[allow(clippy::too_many_arguments, clippy::manual_div_ceil)]
    pub(super) fn selective_scan_kernel<F: Float>(
        x: &Tensor<F>,             // [batch, channels, len]
        delta: &Tensor<F>,         // [batch, channels, len]
        a: &Tensor<F>,             // [channels, state]
        b: &Tensor<F>,             // [batch, state, len]
        c: &Tensor<F>,             // [batch, state, len]
        d: &Tensor<F>,             // [channels]
        z: &Tensor<F>,             // [batch, channels, len]
        delta_bias: &Tensor<F>,    // [channels]
        state_in: &Tensor<F>,      // [batch, channels, state]
        y: &mut Tensor<F>,         // [batch, channels, len]
        state_out: &mut Tensor<F>, // [batch, channels, state]
        #[comptime] n_state: usize,
        #[comptime] has_z: bool,
        #[comptime] has_bias: bool,
    ) {
        let batch = CUBE_POS_Y as usize;
        let channel = (CUBE_POS_X * CUBE_DIM_X + UNIT_POS_X) as usize;
        let channels = x.shape(1);
        let len = x.shape(2);
        // Units past the last channel still load tiles and reach every barrier.
        let active = channel < channels;

        let mut b_tile = SharedMemory::<F>::new(n_state * CHUNK);
        let mut c_tile = SharedMemory::<F>::new(n_state * CHUNK);
        let mut s = Array::<F>::new(n_state);
        let mut a_row = Array::<F>::new(n_state);
        let mut d_skip = F::new(0.0);
        let mut bias = F::new(0.0);
        #[unroll]
        for n in 0..n_state {
            s[n] = F::new(0.0);
            a_row[n] = F::new(0.0);
        }
        if active {
            #[unroll]
            for n in 0..n_state {
                s[n] = state_in[batch * state_in.stride(0)
                    + channel * state_in.stride(1)
                    + n * state_in.stride(2)];
                a_row[n] = a[channel * a.stride(0) + n * a.stride(1)];
            }
            d_skip = d[channel * d.stride(0)];
            if has_bias {
                bias = delta_bias[channel * delta_bias.stride(0)];
            }
        }

        let x_row = batch * x.stride(0) + channel * x.stride(1);
        let delta_row = batch * delta.stride(0) + channel * delta.stride(1);
        let z_row = batch * z.stride(0) + channel * z.stride(1);
        let y_row = batch * y.stride(0) + channel * y.stride(1);
        let tile = n_state * CHUNK;
        let loads_per_unit = (tile + CUBE_DIM_X as usize - 1) / CUBE_DIM_X as usize;
        let chunks = (len + CHUNK - 1) / CHUNK;

        for chunk in 0..chunks {
            let t0 = chunk * CHUNK;
            // Tile index i = n * CHUNK + t: adjacent units read adjacent time steps.
            for r in 0..loads_per_unit {
                let i = r * CUBE_DIM_X as usize + UNIT_POS_X as usize;
                let n = i / CHUNK;
                let t = t0 + i % CHUNK;
                if i < tile && t < len {
                    b_tile[i] = b[batch * b.stride(0) + n * b.stride(1) + t * b.stride(2)];
                    c_tile[i] = c[batch * c.stride(0) + n * c.stride(1) + t * c.stride(2)];
                }
            }
            sync_cube();

            if active {
                let steps = clamp_max(len - t0, CHUNK);
                for t in 0..steps {
                    let pos = t0 + t;
                    let xv = x[x_row + pos * x.stride(2)];
                    let mut dt = delta[delta_row + pos * delta.stride(2)] + bias;
                    if dt <= F::new(20.0) {
                        dt = softplus_below_threshold::<F>(dt);
                    }
                    let dx = dt * xv;
                    let mut acc = F::new(0.0);
                    #[unroll]
                    for n in 0..n_state {
                        let decay = F::exp(dt * a_row[n]);
                        s[n] = decay * s[n] + dx * b_tile[n * CHUNK + t];
                        acc += s[n] * c_tile[n * CHUNK + t];
                    }
                    let mut out = acc + d_skip * xv;
                    if has_z {
                        let zv = z[z_row + pos * z.stride(2)];
                        out *= zv / (F::new(1.0) + F::exp(F::new(0.0) - zv));
                    }
                    y[y_row + pos * y.stride(2)] = out;
                }
            }
            // The next tile overwrites shared memory other units may still be reading.
            sync_cube();
        }

        if active {
            #[unroll]
            for n in 0..n_state {
                state_out[batch * state_out.stride(0)
                    + channel * state_out.stride(1)
                    + n * state_out.stride(2)] = s[n];
            }
        }
    }

    /// `ln(1 + e^x)` to a few ulps. WGSL has no log1p (CubeCL emits `log(x + 1.0)` there), and
    /// `1 + e^x` rounds away most of e^x's digits when x is very negative, which is where
    /// trained dt biases put delta (softplus ≈ 0.001..0.1). Dividing by `(1 + u) - 1` cancels
    /// that rounding exactly (Goldberg, "What every computer scientist should know...", thm 4).
    #[cube]
    fn softplus_below_threshold<F: Float>(x: F) -> F {
        let u = F::exp(x);
        let w = u + F::new(1.0);
        let mut out = u;
        if w != F::new(1.0) {
            out = F::ln(w) * u / (w - F::new(1.0));
        }
        out
    }

    /// Depthwise causal conv1d with bias, then SiLU: one unit per (batch, channel) walks the
    /// sequence with the last `kernel` inputs in registers.
    #[cube(launch)]
    pub(super) fn causal_conv1d_kernel<F: Float>(
        x: &Tensor<F>,             // [batch, channels, len]
        weight: &Tensor<F>,        // [channels, kernel]
        bias: &Tensor<F>,          // [channels]
        state_in: &Tensor<F>,      // [batch, channels, kernel - 1]
        y: &mut Tensor<F>,         // [batch, channels, len]
        state_out: &mut Tensor<F>, // [batch, channels, kernel - 1]
        #[comptime] kernel: usize,
        #[comptime] has_bias: bool,
    ) {
        let channels = x.shape(1);
        if ABSOLUTE_POS >= x.shape(0) * channels {
            terminate!();
        }
        let batch = ABSOLUTE_POS / channels;
        let channel = ABSOLUTE_POS % channels;
        let len = x.shape(2);

        // window[j] is the input j - (kernel - 1) steps from the current one.
        let mut window = Array::<F>::new(kernel);
        let mut w = Array::<F>::new(kernel);
        let state_row = batch * state_in.stride(0) + channel * state_in.stride(1);
        #[unroll]
        for j in 0..kernel {
            w[j] = weight[channel * weight.stride(0) + j * weight.stride(1)];
            window[j] = F::new(0.0);
        }
        #[unroll]
        for j in 0..kernel - 1 {
            window[j] = state_in[state_row + j * state_in.stride(2)];
        }
        let mut b0 = F::new(0.0);
        if has_bias {
            b0 = bias[channel * bias.stride(0)];
        }

        let x_row = batch * x.stride(0) + channel * x.stride(1);
        let y_row = batch * y.stride(0) + channel * y.stride(1);
        for t in 0..len {
            window[kernel - 1] = x[x_row + t * x.stride(2)];
            let mut acc = b0;
            #[unroll]
            for j in 0..kernel {
                acc += w[j] * window[j];
            }
            y[y_row + t * y.stride(2)] = acc / (F::new(1.0) + F::exp(F::new(0.0) - acc));
            #[unroll]
            for j in 0..kernel - 1 {
                window[j] = window[j + 1];
            }
        }

        let out_row = batch * state_out.stride(0) + channel * state_out.stride(1);
        #[unroll]
        for j in 0..kernel - 1 {
            state_out[out_row + j * state_out.stride(2)] = window[j];
        }
    }
}

type Cube<R, F, I, BT> = CubeBackend<R, F, I, BT>;

/// `(output, new state)`, both `[batch, channels, _]`.
type WithState<R, F, I, BT> = (Tensor<Cube<R, F, I, BT>, 3>, Tensor<Cube<R, F, I, BT>, 3>);

fn primitive<R, F, I, BT, const D: usize>(tensor: Tensor<Cube<R, F, I, BT>, D>) -> CubeTensor<R>
where
    R: CubeRuntime,
    F: FloatElement,
    I: IntElement,
    BT: BoolElement,
{
    tensor.into_primitive().tensor()
}

fn wrap<R, F, I, BT, const D: usize>(tensor: CubeTensor<R>) -> Tensor<Cube<R, F, I, BT>, D>
where
    R: CubeRuntime,
    F: FloatElement,
    I: IntElement,
    BT: BoolElement,
{
    Tensor::from_primitive(TensorPrimitive::Float(tensor))
}

/// A new uninitialised tensor on `like`'s device, in its dtype.
fn empty<R: CubeRuntime>(like: &CubeTensor<R>, shape: [usize; 3]) -> CubeTensor<R> {
    empty_device_dtype(
        like.client.clone(),
        like.device.clone(),
        Shape::from(shape),
        like.dtype,
    )
}

/// See [`crate::ops::SelectiveScanBackend::selective_scan`].
pub fn selective_scan<R, F, I, BT>(input: ScanInput<Cube<R, F, I, BT>>) -> WithState<R, F, I, BT>
where
    R: CubeRuntime,
    F: FloatElement,
    I: IntElement,
    BT: BoolElement,
{
    let [batch, channels, len] = input.x.dims();
    let n_state = input.a.dims()[1];
    let has_z = input.z.is_some();
    let has_bias = input.delta_bias.is_some();

    let x = primitive(input.x);
    let y = empty(&x, [batch, channels, len]);
    let state_out = empty(&x, [batch, channels, n_state]);
    // Absent inputs are comptime-disabled; any tensor of the right rank stands in for them.
    let z = input.z.map(primitive).unwrap_or_else(|| x.clone());
    let delta_bias = input
        .delta_bias
        .map(primitive)
        .unwrap_or_else(|| primitive(input.d.clone()));
    let client = x.client.clone();

    let cube_count = CubeCount::Static(
        channels.div_ceil(CHANNELS_PER_CUBE as usize) as u32,
        batch as u32,
        1,
    );
    selective_scan_kernel::launch::<F, R>(
        &client,
        cube_count,
        CubeDim::new_1d(CHANNELS_PER_CUBE),
        x.into_tensor_arg(),
        primitive(input.delta).into_tensor_arg(),
        primitive(input.a).into_tensor_arg(),
        primitive(input.b).into_tensor_arg(),
        primitive(input.c).into_tensor_arg(),
        primitive(input.d).into_tensor_arg(),
        z.into_tensor_arg(),
        delta_bias.into_tensor_arg(),
        primitive(input.state).into_tensor_arg(),
        y.clone().into_tensor_arg(),
        state_out.clone().into_tensor_arg(),
        n_state,
        has_z,
        has_bias,
    );
    (wrap(y), wrap(state_out))
}

/// See [`crate::ops::SelectiveScanBackend::causal_conv1d`].
pub fn causal_conv1d<R, F, I, BT>(
    x: Tensor<Cube<R, F, I, BT>, 3>,
    weight: Tensor<Cube<R, F, I, BT>, 2>,
    bias: Option<Tensor<Cube<R, F, I, BT>, 1>>,
    conv_state: Tensor<Cube<R, F, I, BT>, 3>,
) -> WithState<R, F, I, BT>
where
    R: CubeRuntime,
    F: FloatElement,
    I: IntElement,
    BT: BoolElement,
{
    let [batch, channels, len] = x.dims();
    let kernel = weight.dims()[1];
    let has_bias = bias.is_some();

    let x = primitive(x);
    let y = empty(&x, [batch, channels, len]);
    let state_out = empty(&x, [batch, channels, kernel - 1]);
    let weight = primitive(weight);
    let bias = bias.map(primitive).unwrap_or_else(|| x.clone());
    let client = x.client.clone();

    let units = batch * channels;
    let cube_dim = CubeDim::new_1d(CHANNELS_PER_CUBE);
    let cube_count = CubeCount::Static(units.div_ceil(CHANNELS_PER_CUBE as usize) as u32, 1, 1);
    causal_conv1d_kernel::launch::<F, R>(
        &client,
        cube_count,
        cube_dim,
        x.into_tensor_arg(),
        weight.into_tensor_arg(),
        bias.into_tensor_arg(),
        primitive(conv_state).into_tensor_arg(),
        y.clone().into_tensor_arg(),
        state_out.clone().into_tensor_arg(),
        kernel,
        has_bias,
    );
    (wrap(y), wrap(state_out))
}

/// burn-wgpu and burn-cuda (burn's `Wgpu` and `Cuda` without its `fusion` feature; with it, they
/// wrap this backend in `Fusion`, see [`fusion`]) are this backend over different CubeCL
/// runtimes; one kernel source serves both. Weights are tensors of their own dtype
/// ([`TensorMatrix`]), widened to f32 a matrix at a time; a dtype the device cannot store (bf16
/// in WGSL) is a typed error at load.
impl<R, F, I, BT> SelectiveScanBackend for CubeBackend<R, F, I, BT>
where
    R: CubeRuntime,
    F: FloatElement,
    I: IntElement,
    BT: BoolElement,
{
    type Matrix = TensorMatrix<Self>;

    fn matrix(weights: WeightMatrix, device: &Self::Device) -> Result<Self::Matrix> {
        TensorMatrix::new(weights, device)
    }

    fn supports_weight_format(device: &Self::Device, format: WeightFormat) -> bool {
        TensorMatrix::<Self>::supports(device, format)
    }

    fn embed(ids: Tensor<Self, 2, Int>, table: &Self::Matrix) -> Tensor<Self, 3> {
        table.embed(ids)
    }

    fn project(
        input: Tensor<Self, 3>,
        weight: &Self::Matrix,
        bias: Option<Tensor<Self, 1>>,
    ) -> Tensor<Self, 3> {
        weight.project(input, bias)
    }

    fn selective_scan(input: ScanInput<Self>) -> (Tensor<Self, 3>, Tensor<Self, 3>) {
        selective_scan(input)
    }

    fn causal_conv1d(
        x: Tensor<Self, 3>,
        weight: Tensor<Self, 2>,
        bias: Option<Tensor<Self, 1>>,
        conv_state: Tensor<Self, 3>,
    ) -> (Tensor<Self, 3>, Tensor<Self, 3>) {
        causal_conv1d(x, weight, bias, conv_state)
    }
}
