//! [`StepWeights`]: what a fused decode step reads, described without the model type: the
//! stacked layers' weights as borrowed tensors and [`PackedLinear`]s, and the dimensions.

use burn::prelude::*;

use super::{PackedLinear, SelectiveScanBackend};

/// The dimensions a decode step needs.
#[derive(Debug, Clone, PartialEq)]
pub struct StepDims {
    /// Residual stream width H.
    pub hidden: usize,
    /// Mixer channels D (d_inner).
    pub channels: usize,
    /// State size N.
    pub state: usize,
    /// Rank R of dt.
    pub rank: usize,
    /// Conv kernel K.
    pub kernel: usize,
    /// Vocabulary size V.
    pub vocab: usize,
    /// Epsilon of the weightless B/C/dt norms; `None` for plain Mamba-1.
    pub bc_dt_norm_eps: Option<f64>,
}

/// One layer's weights, layouts as in the mixer: `h += out_proj(scan(conv(in_proj(norm(h)))))`.
#[derive(Debug)]
pub struct StepLayer<'a, B: SelectiveScanBackend> {
    /// Block norm weight `[hidden]` and its epsilon.
    pub norm: (&'a Tensor<B, 1>, f64),
    /// hidden → x | z.
    pub in_proj: &'a PackedLinear<B>,
    /// Conv taps `[channels, kernel]`.
    pub conv_weight: &'a Tensor<B, 2>,
    /// Conv bias `[channels]`.
    pub conv_bias: Option<&'a Tensor<B, 1>>,
    /// channels → dt | B | C.
    pub x_proj: &'a PackedLinear<B>,
    /// rank → channels (its bias is `dt_bias`, added inside the scan).
    pub dt_proj: &'a PackedLinear<B>,
    /// `[channels]`
    pub dt_bias: &'a Tensor<B, 1>,
    /// A = -exp(A_log). `[channels, state]`
    pub a: &'a Tensor<B, 2>,
    /// `[channels]`
    pub d: &'a Tensor<B, 1>,
    /// channels → hidden.
    pub out_proj: &'a PackedLinear<B>,
}

/// Everything one decode step reads, in order: embedding lookup, the layers, norm_f, lm_head.
#[derive(Debug)]
pub struct StepWeights<'a, B: SelectiveScanBackend> {
    /// Dimensions.
    pub dims: StepDims,
    /// The embedding table `[hidden, vocab]`.
    pub embedding: &'a B::Matrix,
    /// The blocks.
    pub layers: Vec<StepLayer<'a, B>>,
    /// Final norm weight `[hidden]` and its epsilon.
    pub norm_f: (&'a Tensor<B, 1>, f64),
    /// hidden → vocab.
    pub lm_head: &'a PackedLinear<B>,
}
