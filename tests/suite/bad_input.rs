//! Bad input: each case is a typed error whose message names the culprit, never a panic.

use std::path::{Path, PathBuf};

use falcon_mamba::{Error, FalconMamba, GenerationConfig, Tokenizer};
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
