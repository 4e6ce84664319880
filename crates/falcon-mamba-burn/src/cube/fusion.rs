//! The ops on burn's `Fusion` wrapper, which burn's `Wgpu` and `Cuda` aliases become when burn's
//! `fusion` feature is on: the inputs' pending (fusable) ops are flushed, the wrapped backend's
//! kernel runs on the resolved tensors, and the outputs re-enter the fusion stream as freshly
//! initialised tensors, as burn-fusion does for data it uploads. The projections around the scan
//! stay ordinary burn ops that fusion can still optimise.

use burn::tensor::{Tensor, TensorMetadata, TensorPrimitive};
use burn_fusion::client::GlobalFusionClient;
use burn_fusion::stream::OperationStreams;
use burn_fusion::{Fusion, FusionBackend, NoOp};
use burn_ir::{InitOperationIr, OperationIr};

use falcon_mamba_core::{Result, WeightFormat, WeightMatrix};

use crate::ops::{ScanInput, SelectiveScanBackend, TensorMatrix};

type Client<B> = GlobalFusionClient<<B as FusionBackend>::FusionRuntime>;

fn client_of<B: FusionBackend, const D: usize>(tensor: &Tensor<Fusion<B>, D>) -> Client<B> {
    tensor.clone().into_primitive().tensor().client.clone()
}

/// The wrapped backend's tensor, after every op queued for it has run.
fn resolve<B: FusionBackend, const D: usize>(tensor: Tensor<Fusion<B>, D>) -> Tensor<B, D> {
    let fused = tensor.into_primitive().tensor();
    let client = fused.client.clone();
    Tensor::from_primitive(TensorPrimitive::Float(
        client.resolve_tensor_float::<B>(fused),
    ))
}

/// Registers a tensor the wrapped backend computed with the fusion stream.
fn register<B: FusionBackend, const D: usize>(
    tensor: Tensor<B, D>,
    client: &Client<B>,
) -> Tensor<Fusion<B>, D> {
    let primitive = tensor.into_primitive().tensor();
    let (shape, dtype) = (primitive.shape(), primitive.dtype());
    let handle = B::float_tensor_handle(primitive);
    let init = InitOperationIr::create(shape, dtype, || client.register_tensor_handle(handle));
    let mut outputs = client.register(
        OperationStreams::default(),
        OperationIr::Init(init),
        NoOp::<B>::new(),
    );
    let output = outputs
        .pop()
        .expect("an init operation has exactly one output");
    Tensor::from_primitive(TensorPrimitive::Float(output))
}

impl<B> SelectiveScanBackend for Fusion<B>
where
    B: FusionBackend + SelectiveScanBackend,
{
    type Matrix = TensorMatrix<Self>;

    fn matrix(weights: WeightMatrix, device: &Self::Device) -> Result<Self::Matrix> {
        TensorMatrix::new(weights, device)
    }

    fn supports_weight_format(device: &Self::Device, format: WeightFormat) -> bool {
        TensorMatrix::<Self>::supports(device, format)
    }

    fn embed(ids: Tensor<Self, 2, burn::tensor::Int>, table: &Self::Matrix) -> Tensor<Self, 3> {
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
        let client = client_of(&input.x);
        let (y, state) = B::selective_scan(ScanInput {
            x: resolve(input.x),
            delta: resolve(input.delta),
            a: resolve(input.a),
            b: resolve(input.b),
            c: resolve(input.c),
            d: resolve(input.d),
            z: input.z.map(resolve),
            delta_bias: input.delta_bias.map(resolve),
            state: resolve(input.state),
        });
        (register(y, &client), register(state, &client))
    }

    fn causal_conv1d(
        x: Tensor<Self, 3>,
        weight: Tensor<Self, 2>,
        bias: Option<Tensor<Self, 1>>,
        conv_state: Tensor<Self, 3>,
    ) -> (Tensor<Self, 3>, Tensor<Self, 3>) {
        let client = client_of(&x);
        let (y, state) = B::causal_conv1d(
            resolve(x),
            resolve(weight),
            bias.map(resolve),
            resolve(conv_state),
        );
        (register(y, &client), register(state, &client))
    }
}
