//! Bad input: each case is a typed error whose message names the culprit, never a panic.

use std::path::{Path, PathBuf};

use falcon_mamba::model::serving::{Event, FinishReason};
use falcon_mamba::{Error, FalconMamba, GenerationConfig, Scheduler, SchedulerConfig, Tokenizer};
use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;

use crate::common::{device, fixture, scratch_dir, tiny_model, B};

pub fn tiny() -> PathBuf {
    fixture("tiny")
}

fn load(dir: &Path) -> Error {
    match FalconMamba::<B>::from_pretrained(dir, &device::<B>()) {
        Ok(_) => panic!("{} loaded", dir.display()),
        Err(e) => e,
    }
}

/// A copy of the `tiny` fixture whose weights went through `edit` (name, dtype, shape, bytes).
pub fn tiny_with_weights(
    name: &str,
    edit: impl Fn(&str, Dtype, Vec<usize>, &[u8]) -> Option<(Dtype, Vec<usize>, Vec<u8>)>,
) -> PathBuf {
    let dir = scratch_dir(name);
    std::fs::copy(tiny().join("config.json"), dir.join("config.json")).unwrap();
    let bytes = std::fs::read(tiny().join("model.safetensors")).unwrap();
    let tensors = SafeTensors::deserialize(&bytes).unwrap();
    let edited: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = tensors
        .tensors()
        .into_iter()
        .filter_map(|(n, v)| {
            edit(&n, v.dtype(), v.shape().to_vec(), v.data()).map(|(d, s, b)| (n, d, s, b))
        })
        .collect();
    let views: Vec<(String, TensorView)> = edited
        .iter()
        .map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    safetensors::serialize_to_file(views, None, &dir.join("model.safetensors")).unwrap();
    dir
}

fn keep(_: &str, d: Dtype, s: Vec<usize>, b: &[u8]) -> Option<(Dtype, Vec<usize>, Vec<u8>)> {
    Some((d, s, b.to_vec()))
}

fn assert_names(e: &Error, culprit: &str) {
    let message = e.to_string();
    assert!(
        message.contains(culprit),
        "error {message:?} does not name {culprit:?}"
    );
}

#[test]
fn missing_config_json() {
    let dir = scratch_dir("no-config");
    std::fs::copy(
        tiny().join("model.safetensors"),
        dir.join("model.safetensors"),
    )
    .unwrap();
    let e = load(&dir);
    assert!(matches!(e, Error::Io { .. }), "{e:?}");
    assert_names(&e, "config.json");
}

#[test]
fn invalid_config_value() {
    let dir = tiny_with_weights("bad-config", keep);
    let config = std::fs::read_to_string(dir.join("config.json")).unwrap();
    std::fs::write(
        dir.join("config.json"),
        config.replace("\"state_size\": 16", "\"state_size\": 0"),
    )
    .unwrap();
    let e = load(&dir);
    assert!(
        matches!(
            e,
            Error::InvalidConfig {
                field: "state_size",
                ..
            }
        ),
        "{e:?}"
    );
    assert_names(&e, "state_size");
}

#[test]
fn missing_tensor() {
    let name = "backbone.layers.1.mixer.A_log";
    let dir = tiny_with_weights("missing-tensor", |n, d, s, b| {
        (n != name).then(|| (d, s, b.to_vec()))
    });
    let e = load(&dir);
    assert!(matches!(e, Error::MissingTensor { .. }), "{e:?}");
    assert_names(&e, name);
}

#[test]
fn wrong_tensor_shape() {
    let name = "backbone.layers.0.mixer.D";
    let dir = tiny_with_weights("wrong-shape", |n, d, s, b| {
        let s = if n == name { vec![64, 2] } else { s };
        Some((d, s, b.to_vec()))
    });
    let e = load(&dir);
    assert!(matches!(e, Error::ShapeMismatch { .. }), "{e:?}");
    assert_names(&e, name);
    assert_names(&e, "[64, 2]");
}

#[test]
fn unsupported_dtype() {
    let name = "backbone.norm_f.weight";
    let dir = tiny_with_weights("int-weights", |n, d, s, b| {
        let d = if n == name { Dtype::I32 } else { d };
        Some((d, s, b.to_vec()))
    });
    let e = load(&dir);
    assert!(matches!(e, Error::UnsupportedDtype { .. }), "{e:?}");
    assert_names(&e, name);
    assert_names(&e, "I32");
}

#[test]
fn truncated_safetensors_file() {
    let dir = scratch_dir("truncated");
    std::fs::copy(tiny().join("config.json"), dir.join("config.json")).unwrap();
    let bytes = std::fs::read(tiny().join("model.safetensors")).unwrap();
    std::fs::write(dir.join("model.safetensors"), &bytes[..bytes.len() - 100]).unwrap();
    let e = load(&dir);
    assert!(matches!(e, Error::Safetensors { .. }), "{e:?}");
    assert_names(&e, "model.safetensors");
    assert_names(&e, "truncated");
}

/// A copy of the sharded fixture.
fn sharded_copy(name: &str) -> PathBuf {
    let source = fixture("tiny-sharded");
    let dir = scratch_dir(name);
    for entry in std::fs::read_dir(&source).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.join(path.file_name().unwrap())).unwrap();
    }
    dir
}

#[test]
fn corrupt_index_json() {
    let dir = sharded_copy("corrupt-index");
    std::fs::write(
        dir.join("model.safetensors.index.json"),
        "{\"weight_map\": {\"a\": ",
    )
    .unwrap();
    let e = load(&dir);
    assert!(matches!(e, Error::Json { .. }), "{e:?}");
    assert_names(&e, "model.safetensors.index.json");
}

#[test]
fn index_naming_a_missing_shard() {
    let dir = sharded_copy("missing-shard");
    std::fs::remove_file(dir.join("model-00003-of-00005.safetensors")).unwrap();
    let e = load(&dir);
    assert!(matches!(e, Error::Io { .. }), "{e:?}");
    assert_names(&e, "model-00003-of-00005.safetensors");
}

#[test]
fn token_id_out_of_range() {
    let model = FalconMamba::<B>::from_pretrained(tiny(), &device::<B>()).unwrap();
    let e = model
        .generate(&[[5u32, 256]], &GenerationConfig::default())
        .err()
        .unwrap();
    assert!(
        matches!(
            e,
            Error::TokenOutOfRange {
                id: 256,
                position: 1,
                ..
            }
        ),
        "{e:?}"
    );
    assert_names(&e, "256");
}

#[test]
fn empty_prompt() {
    let model = FalconMamba::<B>::from_pretrained(tiny(), &device::<B>()).unwrap();
    let e = model
        .generate(&[Vec::<u32>::new()], &GenerationConfig::default())
        .err()
        .unwrap();
    assert!(matches!(e, Error::EmptyPrompt { .. }), "{e:?}");
    assert_names(&e, "empty prompt");

    let dir = tiny_model();
    let model = FalconMamba::<B>::from_pretrained(&dir, &device::<B>()).unwrap();
    let tokenizer = Tokenizer::from_file(dir.join("tokenizer.json")).unwrap();
    let e = model
        .generate_text(&tokenizer, "", &GenerationConfig::default())
        .err()
        .unwrap();
    assert!(matches!(e, Error::EmptyPrompt { .. }), "{e:?}");
}

#[test]
fn ragged_ids_and_bad_settings() {
    let model = FalconMamba::<B>::from_pretrained(tiny(), &device::<B>()).unwrap();
    // An id tensor is rectangular; `generate` takes ragged prompts (tests/suite/serving.rs).
    let e = model.input_ids(&[vec![1u32, 2], vec![3]]).err().unwrap();
    assert!(matches!(e, Error::RaggedBatch { row: 1, .. }), "{e:?}");
    let e = model
        .generate(
            &[[1u32]],
            &GenerationConfig::default()
                .with_temperature(1.0)
                .with_top_p(1.5),
        )
        .err()
        .unwrap();
    assert_names(&e, "top_p");
    let mut state = model.new_state(2);
    let e = model
        .forward(model.input_ids(&[[1u32]]).unwrap(), &mut state)
        .err()
        .unwrap();
    assert!(matches!(e, Error::StateMismatch { .. }), "{e:?}");
}

#[test]
fn nan_logits_end_generation_with_a_typed_error() {
    // NaN in norm_f's weight makes every logit NaN.
    let dir = tiny_with_weights("nan-norm-f", |name, dtype, shape, bytes| {
        let nan: &[u8] = match dtype {
            Dtype::F32 => &[0x00, 0x00, 0xc0, 0x7f],
            Dtype::BF16 => &[0xc0, 0x7f],
            _ => &[0x00, 0x7e],
        };
        let bytes = match name.ends_with("norm_f.weight") {
            true => nan.repeat(bytes.len() / nan.len()),
            false => bytes.to_vec(),
        };
        Some((dtype, shape, bytes))
    });
    let model = FalconMamba::<B>::from_pretrained(&dir, &device::<B>()).unwrap();
    let sampled = GenerationConfig::default()
        .with_temperature(0.7)
        .with_top_p(0.9);
    for config in [GenerationConfig::default(), sampled.clone()] {
        let mut generation = model.generate(&[[1u32, 2]], &config).unwrap();
        match generation.next() {
            Some(Err(e @ Error::NonFiniteLogits { .. })) => assert_names(&e, "NaN"),
            other => panic!("{other:?}"),
        }
        assert!(
            generation.next().is_none(),
            "generation goes on after an error"
        );
    }
    // The scheduler ends that sequence alone, with its reason.
    let mut scheduler = Scheduler::new(&model, SchedulerConfig::default()).unwrap();
    let id = scheduler.add(vec![1, 2], &sampled).unwrap();
    let events = scheduler.step().unwrap();
    assert!(
        events.iter().any(|e| matches!(
            e,
            Event::Finished { id: i, reason: FinishReason::InvalidLogits, generated_tokens: 0, .. } if *i == id
        )),
        "{events:?}"
    );
    assert!(scheduler.is_idle());
}

#[test]
fn empty_chunks_and_ids_past_the_vocabulary_on_every_path() {
    use falcon_mamba::model::burn::prelude::{Int, Tensor, TensorData};
    let model = FalconMamba::<B>::from_pretrained(tiny(), &device::<B>()).unwrap();
    let vocab = model.config().vocab_size as i64;
    let ids2 = |values: Vec<i64>, shape: [usize; 2]| {
        Tensor::<B, 2, Int>::from_data(TensorData::new(values, shape), &device::<B>())
    };
    // A chunk of length 0.
    let mut state = model.new_state(1);
    let e = model
        .forward(ids2(vec![], [1, 0]), &mut state)
        .err()
        .unwrap();
    assert!(matches!(e, Error::EmptyPrompt { .. }), "{e:?}");
    // An id past the vocabulary in a chunk, and in a step of more rows than the fused step
    // takes (the ops then run), and a negative one.
    let e = model
        .forward(ids2(vec![1, 2, vocab], [1, 3]), &mut state)
        .err()
        .unwrap();
    assert!(
        matches!(e, Error::TokenOutOfRange { position: 2, .. }),
        "{e:?}"
    );
    for bad in [vocab + 5, -1] {
        let mut state = model.new_state(9);
        let mut values = vec![1i64; 9];
        values[7] = bad;
        let ids = Tensor::<B, 1, Int>::from_data(TensorData::new(values, [9]), &device::<B>());
        let e = model.step(ids, &mut state).err().unwrap();
        assert!(matches!(e, Error::TokenOutOfRange { row: 7, .. }), "{e:?}");
    }
}

#[test]
fn special_files_are_refused_without_blocking() {
    // A FIFO in place of config.json or the weights: opening one for reading waits for a
    // writer forever. Run each load on a thread, so that a regression fails instead of hanging.
    for name in ["config.json", "model.safetensors"] {
        let dir = scratch_dir(&format!("fifo-{name}"));
        for file in ["config.json", "model.safetensors"] {
            let _ = std::fs::remove_file(dir.join(file));
            if file != name {
                std::fs::copy(tiny().join(file), dir.join(file)).unwrap();
            }
        }
        let made = std::process::Command::new("mkfifo")
            .arg(dir.join(name))
            .status();
        if !made.is_ok_and(|s| s.success()) {
            eprintln!("no mkfifo here: skipped {name}");
            continue;
        }
        let (send, receive) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = send.send(load(&dir).to_string());
        });
        let message = receive
            .recv_timeout(std::time::Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("loading a FIFO {name} blocked"));
        assert!(
            message.contains(name) && message.contains("not a regular file"),
            "{message}"
        );
    }
}

#[test]
fn index_shard_names_stay_in_the_directory() {
    for (i, bad) in [
        "..",
        ".",
        "x#/../../..",
        "/etc/passwd",
        "a/b.safetensors",
        ".hidden",
    ]
    .iter()
    .enumerate()
    {
        let dir = sharded_copy(&format!("bad-shard-name-{i}"));
        let index = dir.join("model.safetensors.index.json");
        let text = std::fs::read_to_string(&index).unwrap();
        let text = text.replacen(
            "\"model-00001-of-00005.safetensors\"",
            &format!("{:?}", bad),
            1,
        );
        std::fs::write(&index, text).unwrap();
        let e = load(&dir);
        assert!(matches!(e, Error::InvalidIndex { .. }), "{bad}: {e:?}");
        assert_names(&e, "not a file name");
    }
}
