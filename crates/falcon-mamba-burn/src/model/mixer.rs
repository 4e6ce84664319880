//! The Mamba mixer: in_proj → causal conv + SiLU → x_proj → (B/C/dt norms) → dt_proj → selective
//! scan gated by silu(z) → out_proj (DESIGN.md §2).

use burn::prelude::*;

use super::norm::rms;
use crate::ops::{PackedLinear, ScanInput, SelectiveScanBackend};
use crate::state::LayerState;

/// One layer's mixer. Projections are [`PackedLinear`]s in the model's weight format; the SSM
/// parameters, conv and biases are f32.
#[derive(Debug, Clone)]
pub struct Mixer<B: SelectiveScanBackend> {
    /// hidden → x | z. `[hidden, 2 * channels]`
    pub in_proj: PackedLinear<B>,
    /// Depthwise conv taps. `[channels, kernel]`
    pub conv_weight: Tensor<B, 2>,
    /// Conv bias. `[channels]`
    pub conv_bias: Option<Tensor<B, 1>>,
    /// channels → dt | B | C. `[channels, rank + 2 * state]`
    pub x_proj: PackedLinear<B>,
    /// rank → channels, without its bias (the scan adds it). `[rank, channels]`
    pub dt_proj: PackedLinear<B>,
    /// dt_proj's bias, added inside the scan before softplus. `[channels]`
    pub dt_bias: Tensor<B, 1>,
    /// A = -exp(A_log), computed once when the weights are loaded rather than every step.
    /// `[channels, state]`
    pub a: Tensor<B, 2>,
    /// Skip connection. `[channels]`
    pub d: Tensor<B, 1>,
    /// channels → hidden. `[channels, hidden]`
    pub out_proj: PackedLinear<B>,
    /// Rank R of dt.
    pub dt_rank: usize,
    /// State size N.
    pub state_size: usize,
    /// Epsilon of the weightless B/C/dt norms; `None` for plain Mamba-1.
    pub bc_dt_norm_eps: Option<f64>,
}

/// The mixer's intermediate values, named as in the fixtures (`b1.layer0.*`), all `[batch, len, _]`.
#[derive(Debug, Clone)]
pub struct MixerTrace<B: SelectiveScanBackend> {
    /// in_proj output, x | z.
    pub in_proj_out: Tensor<B, 3>,
    /// silu(conv(x) + bias).
    pub conv_act_out: Tensor<B, 3>,
    /// x_proj output, dt | B | C, before the weightless norms.
    pub x_proj_out: Tensor<B, 3>,
    /// (scan + D x) * silu(z).
    pub gated_y: Tensor<B, 3>,
    /// out_proj output.
    pub out_proj_out: Tensor<B, 3>,
}

impl<B: SelectiveScanBackend> Mixer<B> {
    /// Mixes a chunk `[batch, len, hidden]` (already normalised), continuing from and updating
    /// `state`. Returns `[batch, len, hidden]`.
    pub fn forward(&self, hidden: Tensor<B, 3>, state: &mut LayerState<B>) -> Tensor<B, 3> {
        self.run(hidden, state).out_proj_out
    }

    /// Like [`Mixer::forward`], also returning every intermediate value.
    pub fn trace(&self, hidden: Tensor<B, 3>, state: &mut LayerState<B>) -> MixerTrace<B> {
        self.run(hidden, state)
    }

    fn run(&self, hidden: Tensor<B, 3>, state: &mut LayerState<B>) -> MixerTrace<B> {
        let channels = self.d.dims()[0];
        let (r, n) = (self.dt_rank, self.state_size);

        let in_proj_out = self.in_proj.forward(hidden); // [batch, len, 2 * channels]
        let x = in_proj_out.clone().narrow(2, 0, channels).swap_dims(1, 2); // [batch, channels, len]
        let z = in_proj_out
            .clone()
            .narrow(2, channels, channels)
            .swap_dims(1, 2); // [batch, channels, len]

        let (x, conv_state) = B::causal_conv1d(
            x,
            self.conv_weight.clone(),
            self.conv_bias.clone(),
            state.conv.clone(),
        ); // [batch, channels, len]
        let conv_act_out = x.clone().swap_dims(1, 2); // [batch, len, channels]

        let x_proj_out = self.x_proj.forward(conv_act_out.clone()); // [batch, len, r + 2n]
        let mut dt = x_proj_out.clone().narrow(2, 0, r); // [batch, len, r]
        let mut b = x_proj_out.clone().narrow(2, r, n); // [batch, len, n]
        let mut c = x_proj_out.clone().narrow(2, r + n, n); // [batch, len, n]
        if let Some(eps) = self.bc_dt_norm_eps {
            dt = rms(dt, eps);
            b = rms(b, eps);
            c = rms(c, eps);
        }
        let delta = self.dt_proj.forward(dt).swap_dims(1, 2); // [batch, channels, len]

        let (y, ssm_state) = B::selective_scan(ScanInput {
            x,
            delta,
            a: self.a.clone(),
            b: b.swap_dims(1, 2), // [batch, n, len]
            c: c.swap_dims(1, 2), // [batch, n, len]
            d: self.d.clone(),
            z: Some(z),
            delta_bias: Some(self.dt_bias.clone()),
            state: state.ssm.clone(),
        }); // [batch, channels, len]
        state.conv = conv_state;
        state.ssm = ssm_state;

        let gated_y = y.swap_dims(1, 2); // [batch, len, channels]
        let out_proj_out = self.out_proj.forward(gated_y.clone()); // [batch, len, hidden]
        MixerTrace {
            in_proj_out,
            conv_act_out,
            x_proj_out,
            gated_y,
            out_proj_out,
        }
    }
}
