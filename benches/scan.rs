//! The selective scan at Falcon Mamba 7B widths (batch 1, D 8192, N 16): each implementation
//! against the tensor-op reference on the same backend, and the machine's read bandwidth, in one
//! run: the CPU kernel on burn-ndarray; with `--features wgpu` / `cuda`, the CubeCL kernel on
//! burn-wgpu / burn-cuda (each timed to the device's completion). Throughputs are the scan's bytes
//! in and out (x, delta, z, y; B, C; both states) per second.
//!
//! `cargo bench --bench scan` (the bench profile: release). For a GPU backend too:
//! `FALCON_MAMBA_BACKEND=wgpu cargo bench --all-features --bench scan`
//! (or `cuda`; the variable the test suite reads).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use falcon_mamba::model::burn::backend::NdArray;
use falcon_mamba::model::burn::prelude::*;
use falcon_mamba::model::burn::tensor::Distribution;
use falcon_mamba::model::cpu;
use falcon_mamba::model::ops::{reference, ScanInput};
#[cfg(any(feature = "wgpu", feature = "cuda"))]
use falcon_mamba::SelectiveScanBackend;

#[path = "../examples/bench/stream.rs"]
mod stream;

const CHANNELS: usize = 8192;
const STATE: usize = 16;

/// Inputs laid out as the mixer makes them: `[batch, len, width]` in memory, viewed channel-major.
fn inputs<B: Backend>(len: usize, device: &B::Device) -> ScanInput<B> {
    let normal = |width: usize| {
        Tensor::<B, 3>::random([1, len, width], Distribution::Normal(0.0, 1.0), device)
            .swap_dims(1, 2)
    };
    ScanInput {
        x: normal(CHANNELS),
        delta: normal(CHANNELS),
        a: Tensor::<B, 2>::random([CHANNELS, STATE], Distribution::Uniform(-4.0, -0.1), device),
        b: normal(STATE),
        c: normal(STATE),
        d: Tensor::ones([CHANNELS], device),
        z: Some(normal(CHANNELS)),
        delta_bias: Some(Tensor::zeros([CHANNELS], device)),
        state: Tensor::zeros([1, CHANNELS, STATE], device),
    }
}

fn scan_bytes(len: usize) -> u64 {
    (4 * (4 * CHANNELS * len + 2 * STATE * len + 2 * CHANNELS * STATE)) as u64
}

fn scan(c: &mut Criterion) {
    let mut group = c.benchmark_group("scan_7b_widths");
    group.sample_size(10);
    for len in [1, 128, 2048] {
        let input = inputs::<NdArray<f32>>(len, &Default::default());
        group.throughput(Throughput::Bytes(scan_bytes(len)));
        group.bench_with_input(BenchmarkId::new("cpu", len), &input, |bench, input| {
            bench.iter(|| cpu::selective_scan(input.clone()))
        });
        group.bench_with_input(
            BenchmarkId::new("reference", len),
            &input,
            |bench, input| bench.iter(|| reference::selective_scan(input.clone())),
        );
    }
    group.finish();
}

/// A scan implementation: `(y, final state)`.
#[cfg(any(feature = "wgpu", feature = "cuda"))]
type Scan<B> = fn(ScanInput<B>) -> (Tensor<B, 3>, Tensor<B, 3>);

/// The backend's scan op (its CubeCL kernel) against the tensor-op reference on the same device.
#[cfg(any(feature = "wgpu", feature = "cuda"))]
fn scan_on<B: SelectiveScanBackend>(c: &mut Criterion, name: &str) {
    if std::env::var("FALCON_MAMBA_BACKEND").as_deref() != Ok(name) {
        return;
    }
    let device = B::Device::default();
    let run = |scan: Scan<B>, input: &ScanInput<B>| {
        let out = scan(input.clone());
        B::sync(&device).expect("device runs the scan");
        out
    };
    let mut group = c.benchmark_group(format!("scan_7b_widths_{name}"));
    group.sample_size(10);
    for len in [1, 128, 2048] {
        let input = inputs::<B>(len, &device);
        group.throughput(Throughput::Bytes(scan_bytes(len)));
        group.bench_with_input(BenchmarkId::new("cube", len), &input, |bench, input| {
            bench.iter(|| run(B::selective_scan, input))
        });
        // At 2048 the reference's [1, 8192, 2048, 16] f32 tensors (1 GiB each) exceed what
        // wgpu lets one buffer hold; it cannot run there at all.
        if len <= 128 {
            group.bench_with_input(
                BenchmarkId::new("reference", len),
                &input,
                |bench, input| bench.iter(|| run(reference::selective_scan, input)),
            );
        }
    }
    group.finish();
}

#[cfg(feature = "wgpu")]
fn scan_wgpu(c: &mut Criterion) {
    scan_on::<falcon_mamba::model::burn::backend::Wgpu>(c, "wgpu");
}

#[cfg(feature = "cuda")]
fn scan_cuda(c: &mut Criterion) {
    scan_on::<falcon_mamba::model::burn::backend::Cuda>(c, "cuda");
}

/// A streaming read of 1 GiB on every core: the bound a memory-bound kernel can reach.
fn bandwidth(c: &mut Criterion) {
    let buffer = vec![1.0f32; 1 << 28];
    let mut group = c.benchmark_group("memory");
    group.sample_size(10);
    group.throughput(Throughput::Bytes((buffer.len() * 4) as u64));
    group.bench_function("read_1GiB", |bench| bench.iter(|| stream::sum(&buffer)));
    group.finish();
}

criterion_group!(benches, bandwidth, scan);
#[cfg(feature = "wgpu")]
criterion_group!(wgpu, scan_wgpu);
#[cfg(feature = "cuda")]
criterion_group!(cuda, scan_cuda);

#[cfg(not(any(feature = "wgpu", feature = "cuda")))]
criterion_main!(benches);
#[cfg(all(feature = "wgpu", not(feature = "cuda")))]
criterion_main!(benches, wgpu);
#[cfg(all(feature = "cuda", not(feature = "wgpu")))]
criterion_main!(benches, cuda);
#[cfg(all(feature = "wgpu", feature = "cuda"))]
criterion_main!(benches, wgpu, cuda);
