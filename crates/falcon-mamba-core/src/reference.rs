//! Scalar reference math in plain Rust with f64 accumulation: the oracle every scan and conv
//! implementation (tensor ops, CPU kernel, CubeCL kernel) is tested against.
//!
//! Layouts are mamba-ssm's, channel-major so one (batch, channel) pair reads contiguous time:
//! x, delta, z, y: `[batch, channels, len]`; a: `[channels, state]`; b, c: `[batch, state, len]`;
//! d, delta_bias: `[channels]`; ssm state: `[batch, channels, state]`.

/// Sizes of a scan call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScanDims {
    /// Batch size B.
    pub batch: usize,
    /// Channels D (`intermediate_size`).
    pub channels: usize,
    /// State size N.
    pub state: usize,
    /// Time steps L.
    pub len: usize,
}

/// Inputs of [`selective_scan`]; see the module docs for layouts.
#[derive(Debug, Clone, Copy)]
pub struct ScanInputs<'a> {
    /// Sizes.
    pub dims: ScanDims,
    /// Input sequence.
    pub x: &'a [f32],
    /// dt before bias and softplus.
    pub delta: &'a [f32],
    /// The (negative) continuous-time A = -exp(A_log).
    pub a: &'a [f32],
    /// Input-dependent B.
    pub b: &'a [f32],
    /// Input-dependent C.
    pub c: &'a [f32],
    /// Skip connection D.
    pub d: &'a [f32],
    /// Gate: y is multiplied by silu(z) when present.
    pub z: Option<&'a [f32]>,
    /// Added to delta before softplus when present.
    pub delta_bias: Option<&'a [f32]>,
    /// The state to start from (zeros when absent).
    pub initial_state: Option<&'a [f32]>,
}

/// `delta = softplus(delta + delta_bias)`, `s = exp(delta * a) * s + delta * b * x`,
/// `y = <s, c> + d * x`, `y *= silu(z)`. Returns `(y [B, D, L], final state [B, D, N])`.
pub fn selective_scan(inputs: &ScanInputs) -> (Vec<f32>, Vec<f32>) {
    let ScanDims {
        batch,
        channels,
        state,
        len,
    } = inputs.dims;
    let mut y = vec![0.0f32; batch * channels * len];
    let mut final_state = vec![0.0f32; batch * channels * state];
    let mut s = vec![0.0f64; state];
    for bi in 0..batch {
        for ch in 0..channels {
            let row = (bi * channels + ch) * len;
            let srow = (bi * channels + ch) * state;
            for (n, s) in s.iter_mut().enumerate() {
                *s = inputs
                    .initial_state
                    .map_or(0.0, |s0| f64::from(s0[srow + n]));
            }
            let bias = inputs.delta_bias.map_or(0.0, |bias| f64::from(bias[ch]));
            for t in 0..len {
                let x = f64::from(inputs.x[row + t]);
                let delta = softplus(f64::from(inputs.delta[row + t]) + bias);
                let mut out = 0.0f64;
                for (n, s) in s.iter_mut().enumerate() {
                    let bc = (bi * state + n) * len + t;
                    let a = f64::from(inputs.a[ch * state + n]);
                    *s = (delta * a).exp() * *s + delta * f64::from(inputs.b[bc]) * x;
                    out += *s * f64::from(inputs.c[bc]);
                }
                out += f64::from(inputs.d[ch]) * x;
                if let Some(z) = inputs.z {
                    out *= silu(f64::from(z[row + t]));
                }
                y[row + t] = out as f32;
            }
            for (n, s) in s.iter().enumerate() {
                final_state[srow + n] = *s as f32;
            }
        }
    }
    (y, final_state)
}

/// Depthwise causal conv1d followed by SiLU, continuing from `conv_state` (the K-1 previous
/// inputs per channel; zeros when absent).
///
/// x: `[B, D, L]`, weight: `[D, K]`, bias: `[D]`, conv_state: `[B, D, K-1]`.
/// Returns `(silu(conv(x) + bias) [B, D, L], new conv_state [B, D, K-1])`.
pub fn causal_conv1d(
    dims: ScanDims,
    kernel: usize,
    x: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    conv_state: Option<&[f32]>,
) -> (Vec<f32>, Vec<f32>) {
    let ScanDims {
        batch,
        channels,
        len,
        ..
    } = dims;
    let keep = kernel - 1;
    let mut out = vec![0.0f32; batch * channels * len];
    let mut new_state = vec![0.0f32; batch * channels * keep];
    for bi in 0..batch {
        for ch in 0..channels {
            let row = bi * channels + ch;
            // The padded sequence: K-1 state columns, then x.
            let padded: Vec<f64> = (0..keep)
                .map(|j| conv_state.map_or(0.0, |s| f64::from(s[row * keep + j])))
                .chain(x[row * len..(row + 1) * len].iter().map(|&v| f64::from(v)))
                .collect();
            for t in 0..len {
                let mut acc = bias.map_or(0.0, |b| f64::from(b[ch]));
                for k in 0..kernel {
                    acc += f64::from(weight[ch * kernel + k]) * padded[t + k];
                }
                out[row * len + t] = silu(acc) as f32;
            }
            for j in 0..keep {
                new_state[row * keep + j] = padded[len + j] as f32;
            }
        }
    }
    (out, new_state)
}

/// `ln(1 + e^x)`, linear above 20 like PyTorch's default threshold.
pub fn softplus(x: f64) -> f64 {
    if x > 20.0 {
        x
    } else {
        x.exp().ln_1p()
    }
}

/// `x * sigmoid(x)`.
pub fn silu(x: f64) -> f64 {
    x / (1.0 + (-x).exp())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dims(len: usize) -> ScanDims {
        ScanDims {
            batch: 2,
            channels: 3,
            state: 4,
            len,
        }
    }

    fn ramp(n: usize, scale: f32) -> Vec<f32> {
        (0..n)
            .map(|i| ((i * 7 % 11) as f32 - 5.0) * scale)
            .collect()
    }

    #[test]
    fn a_scan_split_in_two_equals_one_scan() {
        let (l, l1) = (6, 2);
        let (x, delta, b, c) = (ramp(36, 0.3), ramp(36, 0.2), ramp(48, 0.25), ramp(48, 0.15));
        let a: Vec<f32> = ramp(12, 0.1).iter().map(|v| -v.exp()).collect();
        let dd = ramp(3, 0.5);
        // Split time: slice every [.., len] row.
        let cut = |v: &[f32], from: usize, to: usize| -> Vec<f32> {
            v.chunks(l).flat_map(|r| r[from..to].to_vec()).collect()
        };
        let part = |from, to, s0: Option<&[f32]>| {
            let (x, delta, b, c) = (
                cut(&x, from, to),
                cut(&delta, from, to),
                cut(&b, from, to),
                cut(&c, from, to),
            );
            selective_scan(&ScanInputs {
                dims: dims(to - from),
                x: &x,
                delta: &delta,
                a: &a,
                b: &b,
                c: &c,
                d: &dd,
                z: Some(&x),
                delta_bias: Some(&dd),
                initial_state: s0,
            })
        };
        // The carried state is rounded to f32 between the parts: equal to f32 rounding.
        let close = |a: &[f32], b: &[f32]| {
            a.iter()
                .zip(b)
                .all(|(a, b)| (a - b).abs() <= 1e-6 * (1.0 + a.abs()))
        };
        let full = part(0, l, None);
        let (y1, s1) = part(0, l1, None);
        let (y2, s2) = part(l1, l, Some(&s1));
        assert!(close(&s2, &full.1));
        assert_eq!(cut(&full.0, 0, l1), y1);
        assert!(close(&cut(&full.0, l1, l), &y2));
    }

    #[test]
    fn conv_state_carries_the_last_inputs() {
        let d = dims(5);
        let x = ramp(30, 0.4);
        let w = ramp(12, 0.3);
        let (out, state) = causal_conv1d(d, 4, &x, &w, Some(&[0.1, 0.2, 0.3]), None);
        assert_eq!(state[..3], x[2..5]);
        // Position 0 sees only x[0] (zero padding): silu(w[3] * x[0] + bias).
        let expect = silu(f64::from(w[3]) * f64::from(x[0]) + 0.1f32 as f64) as f32;
        assert_eq!(out[0], expect);
    }
}
