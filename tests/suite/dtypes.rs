//! Weights stored as f16 load through the same path as f32 and bf16 (which the fixtures cover).

use falcon_mamba::FalconMamba;
use safetensors::tensor::Dtype;

use crate::bad_input::{tiny, tiny_with_weights};
use crate::common::{device, max_abs_diff, Reference, B};

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
