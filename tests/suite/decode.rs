//! The fused CPU decode step (burn-ndarray's `SelectiveScanBackend::fused_step`, which
//! `FalconMamba::step` runs) against the op-by-op path (`forward` on one-token chunks): the same
//! logits and states to the bit, on every fixture model, one row and a batch, and a forked state
//! left untouched. The op path itself is checked against transformers by the parity suite.

use burn::prelude::*;
use falcon_mamba::{Error, FalconMamba, SelectiveScanBackend, State};

use crate::common::{device, fixture_dirs, B};

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
    B::fused_step(model, ids, state)
        .expect("burn-ndarray runs a fused step for up to 8 rows")
        .unwrap()
}

#[test]
fn fused_cpu_step_equals_the_op_path_bit_for_bit() {
    for dir in fixture_dirs() {
        let model = FalconMamba::<B>::from_pretrained(&dir, &device::<B>()).unwrap();
        let vocab = model.config().vocab_size;
        for rows in [1, 3] {
            let mut fused = model.new_state(rows);
            let mut ops = model.new_state(rows);
            for t in 0..12 {
                let ids = model.input_ids(&ids(rows, t, vocab)).unwrap(); // [rows, 1]
                let fused_logits = fused_step(&model, ids.clone().squeeze_dim(1), &mut fused);
                let op_logits = model.forward(ids, &mut ops).unwrap().squeeze_dim::<2>(1);
                assert_eq!(
                    bits(&fused_logits),
                    bits(&op_logits),
                    "{}: logits of step {t}, {rows} rows",
                    dir.display()
                );
                assert!(
                    state_bits(&fused) == state_bits(&ops),
                    "{}: state after step {t}, {rows} rows",
                    dir.display()
                );
            }
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
    let e = B::fused_step(&model, ids, &mut state).unwrap().unwrap_err();
    assert!(matches!(e, Error::TokenOutOfRange { row: 1, .. }), "{e:?}");
    assert_eq!(state.layers.len(), model.config().num_hidden_layers);
}
