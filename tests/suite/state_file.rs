//! The state as a value: saved and loaded bit-exactly, forked by cloning, tied to its model shape.

use std::collections::BTreeMap;

use falcon_mamba::{Error, FalconMamba, FalconMambaConfig, Prefill, State};

use crate::common::{device, fixture, scratch_dir, values, B};

fn model() -> FalconMamba<B> {
    FalconMamba::<B>::from_pretrained(fixture("small"), &device::<B>()).unwrap()
}

/// Greedy continuation of `n` tokens from `state`, with every step's logits.
fn continue_greedy(
    model: &FalconMamba<B>,
    mut state: State<B>,
    first: u32,
    n: usize,
) -> Vec<Vec<f32>> {
    let mut token = first;
    (0..n)
        .map(|_| {
            let ids = model.input_ids(&[[token]]).unwrap().squeeze_dim(1);
            let logits = values(model.step(ids, &mut state).unwrap());
            token = falcon_mamba::core::sampling::argmax(&logits);
            logits
        })
        .collect()
}

#[test]
fn save_load_continue_is_bit_identical() {
    let model = model();
    let prompt: Vec<u32> = (100..140).collect();
    let mut state = model.new_state(1);
    model
        .prefill(
            model.input_ids(&[&prompt]).unwrap(),
            &mut state,
            Prefill::Parallel,
        )
        .unwrap();
    let path = scratch_dir("state").join("prompt.state");
    let metadata = BTreeMap::from([("note".to_string(), "after prompt A".to_string())]);
    state.save(&path, model.config(), &metadata).unwrap();
    let (loaded, read_back) = State::<B>::load(&path, model.config(), &device::<B>()).unwrap();
    assert_eq!(read_back, metadata);

    let direct = continue_greedy(&model, state, 7, 12);
    let resumed = continue_greedy(&model, loaded, 7, 12);
    assert_eq!(direct, resumed, "continuations after save/load differ");
}

#[test]
fn a_cloned_state_forks_independently() {
    let model = model();
    let mut state = model.new_state(1);
    model
        .prefill(
            model.input_ids(&[[5u32, 6, 7, 8]]).unwrap(),
            &mut state,
            Prefill::Parallel,
        )
        .unwrap();
    let before: Vec<f32> = values(state.layers[0].ssm.clone());
    let fork = state.clone();

    let a = continue_greedy(&model, state.clone(), 11, 4);
    let b = continue_greedy(&model, fork.clone(), 12, 4);
    assert_ne!(a, b, "different tokens must give different continuations");
    // Stepping the copies left the originals as they were.
    assert_eq!(values(fork.layers[0].ssm.clone()), before);
    assert_eq!(continue_greedy(&model, fork, 11, 4), a);
}

#[test]
fn state_files_are_checked() {
    let model = model();
    let dir = scratch_dir("state-checks");
    let path = dir.join("small.state");
    model
        .new_state(2)
        .save(&path, model.config(), &BTreeMap::new())
        .unwrap();

    // Another model shape: a typed error naming the differing value.
    let tiny = FalconMambaConfig::from_file(fixture("tiny").join("config.json")).unwrap();
    let e = State::<B>::load(&path, &tiny, &device::<B>()).unwrap_err();
    assert!(matches!(e, Error::StateMismatch { .. }), "{e:?}");
    assert!(e.to_string().contains("hidden_size = 256"), "{e}");

    let e =
        State::<B>::load(dir.join("missing.state"), model.config(), &device::<B>()).unwrap_err();
    assert!(
        matches!(e, Error::Io { .. }) && e.to_string().contains("missing.state"),
        "{e}"
    );

    let weights = fixture("small").join("model.safetensors");
    let e = State::<B>::load(&weights, model.config(), &device::<B>()).unwrap_err();
    assert!(
        matches!(e, Error::Safetensors { .. })
            && e.to_string().contains("not a falcon-mamba state"),
        "{e}"
    );

    // A NaN in the last tensor's last value (the data section ends the file).
    let mut bytes = std::fs::read(&path).unwrap();
    let end = bytes.len();
    bytes[end - 4..].copy_from_slice(&f32::NAN.to_le_bytes());
    std::fs::write(&path, &bytes).unwrap();
    let e = State::<B>::load(&path, model.config(), &device::<B>()).unwrap_err();
    assert!(
        matches!(e, Error::Safetensors { .. }) && e.to_string().contains("NaN"),
        "{e}"
    );

    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let e = State::<B>::load(&path, model.config(), &device::<B>()).unwrap_err();
    assert!(matches!(e, Error::Safetensors { .. }), "{e:?}");

    // A terabyte longer than its header says (sparse): refused at once, nothing read.
    std::fs::write(&path, &bytes).unwrap();
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    file.set_len(bytes.len() as u64 + (1 << 40)).unwrap();
    let start = std::time::Instant::now();
    let e = State::<B>::load(&path, model.config(), &device::<B>()).unwrap_err();
    assert!(e.to_string().contains("not the length of a state"), "{e}");
    assert!(start.elapsed().as_secs() < 5, "took {:?}", start.elapsed());
    std::fs::remove_file(&path).unwrap();

    // Not a regular file: a directory, and a FIFO (which a plain read would wait on forever).
    let fifo = dir.join("fifo.state");
    let _ = std::fs::remove_file(&fifo);
    let made = std::process::Command::new("mkfifo").arg(&fifo).status();
    let mut specials = vec![dir.clone()];
    if made.is_ok_and(|s| s.success()) {
        specials.push(fifo);
    }
    for special in specials {
        let e = State::<B>::load(&special, model.config(), &device::<B>()).unwrap_err();
        assert!(e.to_string().contains("not a regular file"), "{e}");
    }
}
