//! The fused CPU decode step (burn-ndarray's `SelectiveScanBackend::fused_step`, which
//! `FalconMamba::step` runs) against the op-by-op path (`forward` on one-token chunks): the same
//! logits and states to the bit, on every fixture model, in every weight format, with thread
//! pools of 1, 3 and 5 workers and 1, 3 and 8 rows, and a forked state left untouched. The op
//! path itself is checked against transformers by the parity suite. Also: the weight kernels'
//! paths (AVX-512 where the CPU has it, AVX2, portable) against an f64 reference, and AVX2
//! against AVX-512 to the bit.

use burn::prelude::*;
use falcon_mamba::core::WeightMatrix;
use falcon_mamba::model::cpu::{HostMatrix, KernelPath};
use falcon_mamba::{Error, FalconMamba, State, WeightFormat};

use crate::common::{device, fixture_dirs, load_in, B};

/// Deterministic ids below `vocab`, one per row, for step `t`.
fn ids(rows: usize, t: usize, vocab: usize) -> Vec<[u32; 1]> {
    (0..rows)
        .map(|r| [((r * 7919 + t * 104_729 + 13) % vocab) as u32])
        .collect()
}

fn bits<const D: usize>(t: &Tensor<B, D>) -> Vec<u32> {
    t.to_data().iter::<f32>().map(f32::to_bits).collect()
}

fn state_bits(state: &State<B>) -> Vec<u32> {
    state
        .layers
        .iter()
        .flat_map(|l| [bits(&l.conv), bits(&l.ssm)].concat())
        .collect()
}

/// The fused step itself (not `step`, which would fall back to the ops if it declined).
fn fused_step(
    model: &FalconMamba<B>,
    ids: Tensor<B, 1, Int>,
    state: &mut State<B>,
) -> Tensor<B, 2> {
    model
        .fused_step(ids, state)
        .expect("burn-ndarray runs a fused step for up to 8 rows")
        .unwrap()
}

#[test]
fn fused_cpu_step_equals_the_op_path_bit_for_bit() {
    for dir in fixture_dirs() {
        for format in WeightFormat::ALL {
            let model = load_in::<B>(&dir, format);
            let vocab = model.config().vocab_size;
            for threads in [1, 3, 5] {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap();
                for rows in [1, 3, 8] {
                    let what =
                        format!("{} {format}, {threads} threads, {rows} rows", dir.display());
                    pool.install(|| {
                        let mut fused = model.new_state(rows);
                        let mut ops = model.new_state(rows);
                        for t in 0..6 {
                            let ids = model.input_ids(&ids(rows, t, vocab)).unwrap(); // [rows, 1]
                            let fused_logits =
                                fused_step(&model, ids.clone().squeeze_dim(1), &mut fused);
                            let op_logits =
                                model.forward(ids, &mut ops).unwrap().squeeze_dim::<2>(1);
                            assert_eq!(
                                bits(&fused_logits),
                                bits(&op_logits),
                                "{what}: logits of step {t}"
                            );
                            assert!(
                                state_bits(&fused) == state_bits(&ops),
                                "{what}: state after step {t}"
                            );
                        }
                    });
                }
            }
        }
    }
}

/// `acc + x @ w` in f64, `x` `[rows, d_in]`, `w` `[d_in, d_out]`.
fn reference_accumulate(acc: &[f32], x: &[f32], w: &[f32], d_in: usize, d_out: usize) -> Vec<f64> {
    let rows = x.len() / d_in;
    let mut y: Vec<f64> = acc.iter().map(|&a| f64::from(a)).collect();
    for m in 0..rows {
        for i in 0..d_in {
            for o in 0..d_out {
                y[m * d_out + o] += f64::from(x[m * d_in + i]) * f64::from(w[i * d_out + o]);
            }
        }
    }
    y
}

#[test]
fn weight_kernels_match_an_f64_reference_on_both_paths() {
    // Odd sizes: a remainder of input rows past the unrolled passes, of outputs past the vectors
    // past the column tiles more than a group of rows take, and odd row counts.
    for (rows, d_in, d_out) in [
        (3, 37, 29),
        (8, 21, 1100),
        (5, 19, 1100),
        (1, 19, 1100),
        (11, 21, 1100),
    ] {
        kernels_match_reference(rows, d_in, d_out);
    }
}

fn kernels_match_reference(rows: usize, d_in: usize, d_out: usize) {
    let x: Vec<f32> = (0..rows * d_in)
        .map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0)
        .collect();
    let w: Vec<f32> = (0..d_in * d_out)
        .map(|i| ((i * 53 % 97) as f32 - 48.0) / 97.0)
        .collect();
    let acc: Vec<f32> = (0..rows * d_out).map(|i| i as f32 / 10.0).collect();
    for format in WeightFormat::ALL {
        let matrix = WeightMatrix::from_f32(w.clone(), d_in, d_out, format);
        let widened = matrix.to_f32();
        let host = HostMatrix::from(matrix);
        let expected = reference_accumulate(&acc, &x, &widened, d_in, d_out);
        let mut results = Vec::new();
        for path in [KernelPath::Detected, KernelPath::Avx2, KernelPath::Portable] {
            let mut y = acc.clone();
            host.accumulate_on(path, &mut y, &x, d_in, 0..d_in, 0..d_out);
            results.push(y.iter().map(|v| v.to_bits()).collect::<Vec<_>>());
            let worst = y
                .iter()
                .zip(&expected)
                .map(|(&y, &e)| (f64::from(y) - e).abs() / e.abs().max(1.0))
                .fold(0.0, f64::max);
            // At most 37 products of magnitude ≤ 2, each rounded once or twice in f32.
            assert!(
                worst < 1e-5,
                "{format} {path:?} {rows}x{d_in}x{d_out}: relative error {worst:e}"
            );
        }
        // The vector widths add the same products in the same order (the row formats of
        // tests/suite/quant.rs sum their lanes at the end of a row, in a width's own order).
        if matches!(
            format,
            WeightFormat::F32 | WeightFormat::Bf16 | WeightFormat::F16
        ) {
            assert_eq!(results[0], results[1], "{format}: AVX-512 and AVX2 differ");
        }
    }
}

#[test]
fn fused_cpu_step_leaves_a_forked_state_alone() {
    let dir = &fixture_dirs()[0];
    let model = FalconMamba::<B>::from_pretrained(dir, &device::<B>()).unwrap();
    let mut state = model.new_state(1);
    let first = model.input_ids(&[[1u32]]).unwrap().squeeze_dim(1);
    model.step(first, &mut state).unwrap();
    let before = state_bits(&state);
    let mut fork = state.clone();
    let next = model.input_ids(&[[2u32]]).unwrap().squeeze_dim(1);
    fused_step(&model, next, &mut fork);
    assert_eq!(state_bits(&state), before, "the original state changed");
    assert_ne!(state_bits(&fork), before, "the fork did not advance");
}

#[test]
fn fused_cpu_step_rejects_an_out_of_range_id() {
    let dir = &fixture_dirs()[0];
    let model = FalconMamba::<B>::from_pretrained(dir, &device::<B>()).unwrap();
    let vocab = model.config().vocab_size;
    let mut state = model.new_state(2);
    let ids = Tensor::<B, 1, Int>::from_data([3, vocab as i64], &device::<B>());
    let e = model.fused_step(ids, &mut state).unwrap().unwrap_err();
    assert!(matches!(e, Error::TokenOutOfRange { row: 1, .. }), "{e:?}");
    assert_eq!(state.layers.len(), model.config().num_hidden_layers);
}
