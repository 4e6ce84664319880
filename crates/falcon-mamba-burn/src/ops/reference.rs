//! The selective scan and causal conv from burn tensor ops: runs on every backend and keeps the
//! model differentiable. It materialises `[batch, channels, len, state]` tensors and takes one
//! small step per time step, which is why fused kernels exist.

use burn::prelude::*;
use burn::tensor::activation::silu;

use super::ScanInput;

/// See [`super::SelectiveScanBackend::selective_scan`].
pub fn selective_scan<B: Backend>(input: ScanInput<B>) -> (Tensor<B, 3>, Tensor<B, 3>) {
    let ScanInput {
        x,
        delta,
        a,
        b,
        c,
        d,
        z,
        delta_bias,
        state,
    } = input;
    let [_, channels, len] = x.dims();
    let n = a.dims()[1];

    let delta = match delta_bias {
        Some(bias) => delta + bias.reshape([1, channels, 1]),
        None => delta,
    };
    let delta = softplus(delta); // [batch, channels, len]
    let delta_a = (delta.clone().unsqueeze_dim::<4>(3) * a.reshape([1, channels, 1, n])).exp(); // [batch, channels, len, state]
    let delta_b_x = (delta * x.clone()).unsqueeze_dim::<4>(3) * b.swap_dims(1, 2).unsqueeze_dim(1); // [batch, channels, len, state]
    let c = c.swap_dims(1, 2).unsqueeze_dim::<4>(1); // [batch, 1, len, state]

    let mut s = state; // [batch, channels, state]
    let mut ys = Vec::with_capacity(len);
    for t in 0..len {
        let at = |v: &Tensor<B, 4>| v.clone().narrow(2, t, 1).squeeze_dim::<3>(2);
        s = at(&delta_a) * s + at(&delta_b_x);
        ys.push((s.clone() * at(&c)).sum_dim(2)); // [batch, channels, 1]
    }
    let y = Tensor::cat(ys, 2) + x * d.reshape([1, channels, 1]); // [batch, channels, len]
    let y = match z {
        Some(z) => y * silu(z),
        None => y,
    };
    (y, s)
}

/// See [`super::SelectiveScanBackend::causal_conv1d`].
pub fn causal_conv1d<B: Backend>(
    x: Tensor<B, 3>,
    weight: Tensor<B, 2>,
    bias: Option<Tensor<B, 1>>,
    conv_state: Tensor<B, 3>,
) -> (Tensor<B, 3>, Tensor<B, 3>) {
    let [_, channels, len] = x.dims();
    let [_, kernel] = weight.dims();
    let padded = Tensor::cat(vec![conv_state, x], 2); // [batch, channels, kernel - 1 + len]
    let mut acc = (0..kernel)
        .map(|k| padded.clone().narrow(2, k, len) * weight.clone().narrow(1, k, 1).unsqueeze_dim(0))
        .reduce(|acc, term| acc + term)
        .expect("kernel >= 1 is checked by the config"); // [batch, channels, len]
    if let Some(bias) = bias {
        acc = acc + bias.reshape([1, channels, 1]);
    }
    let new_state = padded.narrow(2, len, kernel - 1); // [batch, channels, kernel - 1]
    (silu(acc), new_state)
}

/// `ln(1 + e^x)`, linear above 20 like PyTorch's default threshold (and free of overflow there).
pub fn softplus<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    let large = x.clone().greater_elem(20.0);
    x.clone().exp().log1p().mask_where(large, x)
}

/// See [`super::SelectiveScanBackend::rms_norm`].
pub fn rms_norm<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    weight: Option<Tensor<B, 1>>,
    eps: f64,
) -> Tensor<B, D> {
    let inv_rms = x
        .clone()
        .square()
        .mean_dim(D - 1)
        .add_scalar(eps)
        .sqrt()
        .recip();
    let y = x * inv_rms;
    match weight {
        Some(w) => y * w.unsqueeze(),
        None => y,
    }
}
