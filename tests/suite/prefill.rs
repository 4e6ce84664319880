//! Parallel == Chunked(n) == Sequential prefill: last-position logits ≤ 1e-4, final states ≤ 1e-5
//! × max(1, largest state magnitude), on every fixture, over the batch-of-2 prompt extended by the
//! forced tokens. (Few-row chunks take the CPU backend's matrix-vector path and long ones the
//! blocked matmul: different summation orders, whose rounding scales with the values; Mamba-1's
//! conv states reach ~30.)

use burn::prelude::*;
use falcon_mamba::SelectiveScanBackend;
use falcon_mamba::{Prefill, State};

use crate::common::{max_abs_diff, on_backend_under_test};
use crate::parity::for_each_fixture;

const LOGITS_TOL: f32 = 1e-4;
const STATE_TOL: f32 = 1e-5;

/// [`STATE_TOL`] scaled to the state's largest magnitude.
fn state_tol<B: Backend>(state: &State<B>) -> f32 {
    let largest = state
        .layers
        .iter()
        .map(|l| {
            let conv = crate::common::values(l.conv.clone().abs().max())[0];
            conv.max(crate::common::values(l.ssm.clone().abs().max())[0])
        })
        .fold(1.0, f32::max);
    STATE_TOL * largest
}

fn state_diff<B: Backend>(a: &State<B>, b: &State<B>) -> f32 {
    a.layers
        .iter()
        .zip(&b.layers)
        .map(|(a, b)| {
            max_abs_diff(a.conv.clone(), b.conv.clone())
                .max(max_abs_diff(a.ssm.clone(), b.ssm.clone()))
        })
        .fold(0.0, f32::max)
}

#[test]
fn every_prefill_mode_gives_the_same_logits_and_state() {
    on_backend_under_test!(every_prefill_mode_on);
}

fn every_prefill_mode_on<B: SelectiveScanBackend>() {
    for_each_fixture::<B>("prefill", |f, batch| {
        let forced = f.reference.ids(&format!("{batch}.forced_ids"));
        let rows: Vec<Vec<u32>> = f
            .prompt(batch)
            .into_iter()
            .zip(forced)
            .map(|(p, x)| p.into_iter().chain(x).collect())
            .collect();
        let len = rows[0].len();
        let ids = f.model.input_ids(&rows).unwrap();
        let run = |mode| {
            let mut state = f.model.new_state(rows.len());
            let logits = f.model.prefill(ids.clone(), &mut state, mode).unwrap();
            (logits, state)
        };
        let (parallel_logits, parallel_state) = run(Prefill::Parallel);
        let mut modes = vec![Prefill::Sequential];
        // n = 1, n not dividing the length, n = length, n > length.
        modes.extend([1, 2, 3, 7, len, len + 5].map(Prefill::Chunked));
        let mut out = Vec::new();
        for mode in modes {
            let (logits, state) = run(mode);
            out.push((
                format!("{mode:?} logits"),
                max_abs_diff(logits, parallel_logits.clone()),
                LOGITS_TOL,
            ));
            out.push((
                format!("{mode:?} state"),
                state_diff(&state, &parallel_state),
                state_tol(&parallel_state),
            ));
        }

        // Every position's logits, chunk by chunk through `forward`, against one parallel pass.
        let mut state = f.model.new_state(rows.len());
        let whole = f.model.forward(ids.clone(), &mut state).unwrap();
        let mut state = f.model.new_state(rows.len());
        let chunks: Vec<Tensor<B, 3>> = (0..len)
            .step_by(5)
            .map(|s| {
                f.model
                    .forward(ids.clone().narrow(1, s, 5.min(len - s)), &mut state)
                    .unwrap()
            })
            .collect();
        out.push((
            "chunks of 5, all positions".into(),
            max_abs_diff(Tensor::cat(chunks, 1), whole),
            LOGITS_TOL,
        ));
        out
    });
}
