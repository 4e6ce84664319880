//! Weight formats: f16 checkpoints load through the same path as f32 and bf16 (which the
//! fixtures cover), a checkpoint's format is kept unless another is asked for, random models
//! take a format, and a format a backend cannot run is a typed error.

use falcon_mamba::{Error, FalconMamba, LoadOptions, WeightFormat};
use safetensors::tensor::Dtype;

use crate::bad_input::{tiny, tiny_with_weights};
use crate::common::{device, load_in, max_abs_diff, Reference, B};

#[test]
fn f16_weights_load_and_stay_close_to_f32() {
    let dir = tiny_with_weights("f16-weights", |_, dtype, shape, bytes| {
        assert_eq!(dtype, Dtype::F32);
        let halves = bytes
            .chunks_exact(4)
            .flat_map(|b| {
                half::f16::from_f32(f32::from_le_bytes([b[0], b[1], b[2], b[3]])).to_le_bytes()
            })
            .collect();
        Some((Dtype::F16, shape, halves))
    });
    let model = FalconMamba::<B>::from_pretrained(&dir, &device::<B>()).unwrap();
    let reference = Reference::open(&tiny());
    let ids = model.input_ids(&reference.ids("b1.input_ids")).unwrap();
    let logits = model.forward(ids, &mut model.new_state(1)).unwrap();
    // f16 keeps 11 significant bits: weights move by ~5e-4 relative, logits (|l| ≤ 13) by ~1e-2.
    let diff = max_abs_diff(logits, reference.tensor("b1.logits"));
    assert!(
        diff > 0.0 && diff < 0.1,
        "f16 weights: logits differ by {diff}"
    );
}

#[test]
fn weights_keep_the_checkpoints_format_unless_asked() {
    let tiny = crate::bad_input::tiny(); // f32
    let bf16 = crate::common::fixture("tiny-bf16");
    assert_eq!(
        load_in::<B>(&tiny, WeightFormat::Bf16).weight_format(),
        WeightFormat::Bf16
    );
    let auto = |dir: &std::path::Path| {
        FalconMamba::<B>::from_pretrained(dir, &device::<B>())
            .unwrap()
            .weight_format()
    };
    assert_eq!(auto(&tiny), WeightFormat::F32);
    assert_eq!(auto(&bf16), WeightFormat::Bf16);
    assert_eq!(
        load_in::<B>(&bf16, WeightFormat::F32).weight_format(),
        WeightFormat::F32
    );
    // Half the bytes of f32 for every matrix; the f32 vectors are the same.
    let f32_bytes = load_in::<B>(&tiny, WeightFormat::F32).weight_bytes();
    let f16_bytes = load_in::<B>(&tiny, WeightFormat::F16).weight_bytes();
    assert!(f16_bytes < f32_bytes * 6 / 10, "{f16_bytes} vs {f32_bytes}");
}

#[test]
fn random_models_take_a_format() {
    let config = falcon_mamba::FalconMambaConfig::falcon_mamba(64, 2, 100).unwrap();
    for format in WeightFormat::ALL {
        let model = FalconMamba::<B>::random_in(config.clone(), format, &device::<B>(), 7).unwrap();
        assert_eq!(model.weight_format(), format);
        let ids = model.input_ids(&[[1u32, 2, 3]]).unwrap();
        let logits = model.forward(ids, &mut model.new_state(1)).unwrap();
        let finite = logits.into_data().iter::<f32>().all(f32::is_finite);
        assert!(finite, "{format}: non-finite logits");
    }
}

/// WGSL has no bf16: asking wgpu for bf16 weights is a typed error naming the format and
/// backend, not garbage; `auto` widens a bf16 checkpoint to f32 there.
#[cfg(feature = "wgpu")]
#[test]
fn bf16_on_wgpu_is_a_typed_error() {
    if crate::common::skip_wgpu() {
        return;
    }
    let options = LoadOptions::default().with_dtype(Some(WeightFormat::Bf16));
    let dir = crate::bad_input::tiny();
    let device = device::<crate::common::Wgpu>();
    match FalconMamba::<crate::common::Wgpu>::from_pretrained_with(
        &dir,
        &device,
        options,
        |_, _| {},
    ) {
        Err(e @ Error::UnsupportedWeightFormat { .. }) => {
            let message = e.to_string();
            assert!(message.contains("bf16"), "{message}");
        }
        Err(e) => panic!("another error: {e}"),
        Ok(_) => panic!("wgpu loaded bf16 weights"),
    }
    // Asked for nothing, a bf16 checkpoint widens to f32 there (exactly) instead.
    let bf16 = crate::common::fixture("tiny-bf16");
    let model = FalconMamba::<crate::common::Wgpu>::from_pretrained(&bf16, &device).unwrap();
    assert_eq!(model.weight_format(), WeightFormat::F32);
}

/// Weights that cannot fit are refused before anything is allocated (a 7B in f32 on a 24 GB
/// machine; here a model far past any machine's memory, so the test holds everywhere).
#[test]
fn weights_too_big_for_memory_are_a_typed_error() {
    let config = falcon_mamba::FalconMambaConfig::falcon_mamba(65536, 8, 65024).unwrap();
    let start = std::time::Instant::now();
    match FalconMamba::<B>::random_in(config, WeightFormat::F32, &device::<B>(), 0) {
        Err(e @ Error::InsufficientMemory { .. }) => {
            let message = e.to_string();
            assert!(
                message.contains("f32") && message.contains("GiB"),
                "{message}"
            );
        }
        Err(e) => panic!("another error: {e}"),
        Ok(_) => panic!("a 1.2 TB model was built"),
    }
    assert!(start.elapsed().as_secs() < 5, "the check came late");
}
