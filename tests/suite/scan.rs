//! Every scan and conv implementation against the core's scalar f64 reference, on random inputs:
//! the tensor-op reference, the CPU kernel, the op of the backend under test
//! (`FALCON_MAMBA_BACKEND`), and the CubeCL kernels on wgpu whenever that feature is built.

use burn::prelude::*;
use falcon_mamba::core::reference::{self, ScanDims, ScanInputs};
use falcon_mamba::model::ops::{ScanInput, SelectiveScanBackend};

use crate::common::{device, on_backend_under_test, values, B};

/// f32 accumulation over a few hundred steps against f64.
const TOL: f32 = 2e-5;

/// A small deterministic generator of values in [-scale, scale).
struct Lcg(u64);

impl Lcg {
    fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n)
            .map(|_| {
                self.0 = self
                    .0
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((self.0 >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
            })
            .collect()
    }
}

fn tensor<B: Backend, const D: usize>(v: &[f32], shape: [usize; D]) -> Tensor<B, D> {
    Tensor::from_data(TensorData::new(v.to_vec(), shape), &device::<B>())
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max)
}

type Scan<B> = fn(ScanInput<B>) -> (Tensor<B, 3>, Tensor<B, 3>);
type Conv<B> = fn(
    Tensor<B, 3>,
    Tensor<B, 2>,
    Option<Tensor<B, 1>>,
    Tensor<B, 3>,
) -> (Tensor<B, 3>, Tensor<B, 3>);

/// Issue 4's grid: B ∈ {1, 3}, D ∈ {1, 37, 256}, N ∈ {8, 16}, L ∈ {1, 5, 300, 2048}.
fn full_grid() -> Vec<(usize, usize, usize, usize)> {
    let mut shapes = Vec::new();
    for batch in [1, 3] {
        for channels in [1, 37, 256] {
            for state in [8, 16] {
                for len in [1, 5, 300, 2048] {
                    shapes.push((batch, channels, state, len));
                }
            }
        }
    }
    shapes
}

/// Runs `scan` against the f64 oracle on random inputs for every shape, with gate, delta bias and
/// initial state all off, all on, and mixed; returns the largest difference seen.
fn check_scan<B: Backend>(scan: Scan<B>, shapes: &[(usize, usize, usize, usize)], tol: f32) -> f32 {
    let mut rng = Lcg(42);
    let mut worst = 0.0f32;
    for &(batch, channels, state, len) in shapes {
        for (gate, bias, initial) in [
            (false, false, false),
            (true, true, true),
            (true, false, true),
        ] {
            let dims = ScanDims {
                batch,
                channels,
                state,
                len,
            };
            let x = rng.vec(batch * channels * len, 1.0);
            // [-8, 2]: trained dt biases put softplus' input near -7 (softplus ≈ 0.001), where a
            // naive log(1 + e^x) loses most digits.
            let delta: Vec<f32> = rng
                .vec(batch * channels * len, 5.0)
                .iter()
                .map(|v| v - 3.0)
                .collect();
            let a: Vec<f32> = rng
                .vec(channels * state, 1.0)
                .iter()
                .map(|v| -(v * 2.0).exp())
                .collect();
            let b = rng.vec(batch * state * len, 1.0);
            let c = rng.vec(batch * state * len, 1.0);
            let d = rng.vec(channels, 1.0);
            let z = rng.vec(batch * channels * len, 2.0);
            let delta_bias = rng.vec(channels, 1.0);
            let s0 = rng.vec(batch * channels * state, 1.0);
            let (y_ref, s_ref) = reference::selective_scan(&ScanInputs {
                dims,
                x: &x,
                delta: &delta,
                a: &a,
                b: &b,
                c: &c,
                d: &d,
                z: gate.then_some(&z[..]),
                delta_bias: bias.then_some(&delta_bias[..]),
                initial_state: initial.then_some(&s0[..]),
            });
            let (y, s) = scan(ScanInput {
                x: tensor(&x, [batch, channels, len]),
                delta: tensor(&delta, [batch, channels, len]),
                a: tensor(&a, [channels, state]),
                b: tensor(&b, [batch, state, len]),
                c: tensor(&c, [batch, state, len]),
                d: tensor(&d, [channels]),
                z: gate.then(|| tensor(&z, [batch, channels, len])),
                delta_bias: bias.then(|| tensor(&delta_bias, [channels])),
                state: if initial {
                    tensor(&s0, [batch, channels, state])
                } else {
                    Tensor::zeros([batch, channels, state], &device::<B>())
                },
            });
            let case =
                format!("B{batch} D{channels} N{state} L{len} z{gate} bias{bias} s0{initial}");
            let (dy, ds) = (max_diff(&values(y), &y_ref), max_diff(&values(s), &s_ref));
            assert!(
                dy <= tol && ds <= tol,
                "{case}: y {dy:e}, state {ds:e} > {tol:e}"
            );
            worst = worst.max(dy).max(ds);
        }
    }
    worst
}

#[test]
fn reference_scan_matches_the_scalar_oracle() {
    // The tensor-op scan takes one step per time step: small shapes only.
    let shapes = [
        (1, 1, 8, 1),
        (3, 37, 16, 5),
        (1, 37, 16, 300),
        (3, 5, 8, 64),
    ];
    let worst = check_scan::<B>(
        falcon_mamba::model::ops::reference::selective_scan,
        &shapes,
        TOL,
    );
    println!("reference scan: worst difference {worst:.2e} (tol {TOL:e})");
}

#[test]
fn cpu_kernel_matches_the_scalar_oracle() {
    let worst = check_scan::<B>(falcon_mamba::model::cpu::selective_scan, &full_grid(), TOL);
    println!("cpu kernel: worst difference {worst:.2e} (tol {TOL:e})");
}

#[test]
fn backend_scan_op_matches_the_scalar_oracle() {
    on_backend_under_test!(backend_scan_op_on);
}

fn backend_scan_op_on<B: SelectiveScanBackend>() {
    let worst = check_scan::<B>(B::selective_scan, &full_grid(), TOL);
    let backend = crate::common::backend_under_test();
    println!("{backend} scan op: worst difference {worst:.2e} (tol {TOL:e})");
}

#[cfg(feature = "wgpu")]
#[test]
fn cube_kernels_match_the_scalar_oracle_on_wgpu() {
    use crate::common::{skip_wgpu, CubeWgpu};
    if skip_wgpu() {
        println!("FALCON_MAMBA_SKIP_WGPU=1: wgpu kernels not tested");
        return;
    }
    let worst =
        check_scan::<CubeWgpu>(falcon_mamba::model::cube::selective_scan, &full_grid(), TOL);
    println!("cube scan on wgpu: worst difference {worst:.2e} (tol {TOL:e})");
    let worst = check_conv::<CubeWgpu>(falcon_mamba::model::cube::causal_conv1d);
    println!("cube conv on wgpu: worst difference {worst:.2e} (tol {CONV_TOL:e})");
}

/// One f32 dot product of `kernel` terms and a SiLU against f64.
const CONV_TOL: f32 = 1e-6;

/// Runs `conv` against the f64 oracle on random inputs (kernel 2, 4 and 6, continuing from a
/// random state); the state must come back bit for bit. Returns the largest difference in y.
fn check_conv<B: Backend>(conv: Conv<B>) -> f32 {
    let mut rng = Lcg(7);
    let mut worst = 0.0f32;
    for (batch, channels, len, kernel) in [
        (1, 1, 1, 4),
        (3, 37, 5, 4),
        (2, 16, 33, 2),
        (1, 8, 3, 6),
        (2, 300, 70, 4),
    ] {
        let dims = ScanDims {
            batch,
            channels,
            state: 1,
            len,
        };
        let x = rng.vec(batch * channels * len, 1.0);
        let w = rng.vec(channels * kernel, 1.0);
        let bias = rng.vec(channels, 0.5);
        let s0 = rng.vec(batch * channels * (kernel - 1), 1.0);
        for with_bias in [true, false] {
            let bias = with_bias.then_some(&bias[..]);
            let (y_ref, s_ref) = reference::causal_conv1d(dims, kernel, &x, &w, bias, Some(&s0));
            let (y, s) = conv(
                tensor(&x, [batch, channels, len]),
                tensor(&w, [channels, kernel]),
                bias.map(|b| tensor(b, [channels])),
                tensor(&s0, [batch, channels, kernel - 1]),
            );
            let (dy, ds) = (max_diff(&values(y), &y_ref), max_diff(&values(s), &s_ref));
            assert!(
                dy <= CONV_TOL && ds == 0.0,
                "B{batch} D{channels} L{len} K{kernel} bias {with_bias}: y {dy:e}, state {ds:e}"
            );
            worst = worst.max(dy);
        }
    }
    worst
}

#[test]
fn cpu_conv_matches_the_scalar_oracle() {
    let worst = check_conv::<B>(falcon_mamba::model::cpu::causal_conv1d);
    println!("cpu conv: worst difference {worst:.2e} (tol {CONV_TOL:e})");
}

#[test]
fn reference_conv_matches_the_scalar_oracle() {
    let worst = check_conv::<B>(falcon_mamba::model::ops::reference::causal_conv1d);
    println!("reference conv: worst difference {worst:.2e} (tol {CONV_TOL:e})");
}

#[test]
fn backend_conv_op_matches_the_scalar_oracle() {
    on_backend_under_test!(backend_conv_op_on);
}

fn backend_conv_op_on<B: SelectiveScanBackend>() {
    let worst = check_conv::<B>(B::causal_conv1d);
    let backend = crate::common::backend_under_test();
    println!("{backend} conv op: worst difference {worst:.2e} (tol {CONV_TOL:e})");
}

/// A decode step scans one time step with its own loop (states as the vector lanes); it must
/// give the bits of the lane-major loop that longer chunks take: one scan of 2 steps against
/// two scans of 1, on the CPU kernel.
#[test]
fn one_step_scans_give_the_bits_of_a_longer_scan() {
    let (batch, channels, state) = (2, 37, 16);
    let mut rng = Lcg(7);
    let x = rng.vec(batch * channels * 2, 1.0);
    let delta = rng.vec(batch * channels * 2, 1.0);
    let z = rng.vec(batch * channels * 2, 1.0);
    let a: Vec<f32> = rng
        .vec(channels * state, 1.0)
        .iter()
        .map(|v| -v.abs() - 0.1)
        .collect();
    let b = rng.vec(batch * state * 2, 1.0);
    let c = rng.vec(batch * state * 2, 1.0);
    let d = rng.vec(channels, 1.0);
    let bias = rng.vec(channels, 1.0);
    let s0 = rng.vec(batch * channels * state, 1.0);
    let input = |t: std::ops::Range<usize>, s: Tensor<B, 3>| {
        let len = t.len();
        let seq =
            |v: &[f32], rows: usize| tensor::<B, 3>(v, [batch, rows, 2]).narrow(2, t.start, len);
        ScanInput {
            x: seq(&x, channels),
            delta: seq(&delta, channels),
            a: tensor(&a, [channels, state]),
            b: seq(&b, state),
            c: seq(&c, state),
            d: tensor(&d, [channels]),
            z: Some(seq(&z, channels)),
            delta_bias: Some(tensor(&bias, [channels])),
            state: s,
        }
    };
    let bits = |t: Tensor<B, 3>| -> Vec<u32> { values(t).iter().map(|v| v.to_bits()).collect() };
    let (y, s) = falcon_mamba::model::cpu::selective_scan(input(
        0..2,
        tensor(&s0, [batch, channels, state]),
    ));
    let (y0, s1) = falcon_mamba::model::cpu::selective_scan(input(
        0..1,
        tensor(&s0, [batch, channels, state]),
    ));
    let (y1, s2) = falcon_mamba::model::cpu::selective_scan(input(1..2, s1));
    assert_eq!(bits(y.clone().narrow(2, 0, 1)), bits(y0), "y at step 0");
    assert_eq!(bits(y.narrow(2, 1, 1)), bits(y1), "y at step 1");
    assert_eq!(bits(s), bits(s2), "the final state");
}
