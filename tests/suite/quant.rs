//! 8- and 4-bit weights: the core's Q8_0/Q4_0 quantiser against gguf-py's bytes, the
//! bitsandbytes dequantisation against bitsandbytes' own, the row kernels (every CPU path)
//! against an f64 reference on the dequantized weights, the quantized checkpoint round trip,
//! and bad quantisation states. Model-level parity in q8/q4 is the parity suite's
//! (`FALCON_MAMBA_DTYPE=q8|q4`; bitsandbytes fixtures run natively when it is unset).

use std::path::{Path, PathBuf};

use falcon_mamba::core::bnb::{Absmax, Bnb4Parts, QuantState};
use falcon_mamba::core::quantized::write_quantized;
use falcon_mamba::core::{BlockFormat, Bnb4Matrix, Checkpoint, WeightData, WeightMatrix};
use falcon_mamba::model::cpu::{HostMatrix, KernelPath};
use falcon_mamba::{Error, FalconMamba, FalconMambaConfig, WeightFormat};
use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;

use crate::common::{device, fixtures_root, load_in, scratch_dir, B};

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

#[test]
fn q8_0_and_q4_0_equal_gguf_py_byte_for_byte() {
    let bytes = std::fs::read(fixtures_root().join("quant/gguf-oracle.safetensors")).unwrap();
    let file = SafeTensors::deserialize(&bytes).unwrap();
    let mut cases: Vec<String> = file
        .names()
        .iter()
        .filter_map(|n| n.strip_suffix(".input").map(str::to_string))
        .collect();
    cases.sort();
    assert!(cases.len() >= 7, "{cases:?}");
    for case in cases {
        let input = file.tensor(&format!("{case}.input")).unwrap();
        let cols = input.shape()[1];
        let values = f32s(input.data());
        for (block, name) in [(BlockFormat::Q8_0, "q8_0"), (BlockFormat::Q4_0, "q4_0")] {
            let expected = file.tensor(&format!("{case}.{name}")).unwrap();
            let mut ours = Vec::new();
            for row in values.chunks_exact(cols) {
                block.quantize_row(row, &mut ours);
            }
            assert_eq!(ours, expected.data(), "{case} {name}: bytes differ");
            let dequant = f32s(
                file.tensor(&format!("{case}.{name}_dequant"))
                    .unwrap()
                    .data(),
            );
            let mut back = vec![0.0f32; values.len()];
            for (row, out) in ours
                .chunks_exact(block.row_bytes(cols))
                .zip(back.chunks_exact_mut(cols))
            {
                block.dequantize_row(row, out);
            }
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(
                bits(&back),
                bits(&dequant),
                "{case} {name}: dequantized values"
            );
        }
    }
}

fn bnb_fixtures() -> Vec<PathBuf> {
    let dirs: Vec<PathBuf> = ["bnb-fp4", "bnb-nf4", "bnb-fp4-dq", "bnb-nf4-dq"]
        .iter()
        .map(|n| fixtures_root().join(n))
        .collect();
    assert!(
        dirs.iter().all(|d| d.is_dir()),
        "bitsandbytes fixtures missing"
    );
    dirs
}

#[test]
fn bitsandbytes_weights_dequantize_exactly_as_bitsandbytes() {
    for dir in bnb_fixtures() {
        let bytes = std::fs::read(dir.join("dequantized.safetensors")).unwrap();
        let expected = SafeTensors::deserialize(&bytes).unwrap();
        let checkpoint = Checkpoint::open(&dir).unwrap();
        let mut compared = 0;
        for (name, tensor) in expected.tensors() {
            let [d_out, d_in] = tensor.shape()[..] else {
                panic!("{name}: not a matrix")
            };
            assert_eq!(
                checkpoint.matrix_storage(&name, d_out, d_in).unwrap(),
                WeightFormat::Bnb4
            );
            for format in [None, Some(WeightFormat::F32)] {
                let m = checkpoint.read_matrix(&name, d_out, d_in, format).unwrap();
                let ours: Vec<u32> = m.to_torch_f32().iter().map(|v| v.to_bits()).collect();
                let theirs: Vec<u32> = f32s(tensor.data()).iter().map(|v| v.to_bits()).collect();
                assert_eq!(ours, theirs, "{} {name} ({format:?})", dir.display());
            }
            compared += 1;
        }
        assert!(compared >= 8, "{}: {compared} matrices", dir.display());
    }
}

#[test]
fn bitsandbytes_matrices_stay_4_bit_where_blocks_fit_rows() {
    let dir = &bnb_fixtures()[0];
    let model = load_in::<B>(dir, None);
    assert_eq!(model.weight_format(), WeightFormat::Bnb4);
    let f32_model = load_in::<B>(dir, WeightFormat::F32);
    assert!(model.weight_bytes() * 2 < f32_model.weight_bytes());
}

/// `acc + x[:, inputs] · W[outputs, inputs]ᵀ` in f64, `w` PyTorch-layout `[d_out, d_in]`.
fn reference_rows(
    acc: &[f32],
    x: &[f32],
    w: &[f32],
    d_in: usize,
    inputs: std::ops::Range<usize>,
    outputs: std::ops::Range<usize>,
) -> Vec<f64> {
    let width = outputs.len();
    let mut y: Vec<f64> = acc.iter().map(|&a| f64::from(a)).collect();
    for m in 0..acc.len() / width {
        for (j, o) in outputs.clone().enumerate() {
            for i in inputs.clone() {
                y[m * width + j] += f64::from(x[m * d_in + i]) * f64::from(w[o * d_in + i]);
            }
        }
    }
    y
}

fn check_row_kernels(what: &str, matrix: WeightMatrix) {
    let (d_in, d_out) = (matrix.d_in, matrix.d_out);
    let w = matrix.to_torch_f32();
    let host = HostMatrix::from(matrix);
    for rows in [1, 3, 5] {
        let x: Vec<f32> = (0..rows * d_in)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0)
            .collect();
        // The whole matrix, and one thread's piece of it (inputs from a block boundary, some
        // outputs).
        for (inputs, outputs) in [(0..d_in, 0..d_out), (64..d_in, 3..d_out - 2)] {
            let acc: Vec<f32> = (0..rows * outputs.len()).map(|i| i as f32 / 10.0).collect();
            let expected = reference_rows(&acc, &x, &w, d_in, inputs.clone(), outputs.clone());
            let scale: f64 = w.iter().map(|v| f64::from(v.abs())).sum::<f64>() / d_out as f64;
            for path in [KernelPath::Detected, KernelPath::Avx2, KernelPath::Portable] {
                let mut y = acc.clone();
                host.accumulate_on(path, &mut y, &x, d_in, inputs.clone(), outputs.clone());
                let worst = y
                    .iter()
                    .zip(&expected)
                    .map(|(&y, &e)| (f64::from(y) - e).abs() / (2.0 * scale).max(1.0))
                    .fold(0.0, f64::max);
                // A dot product of up to 160 terms of magnitude ≤ 2·|w|, in f32.
                assert!(
                    worst < 1e-5,
                    "{what} {rows} rows {path:?} {inputs:?}: error {worst:e}"
                );
            }
        }
    }
}

#[test]
fn row_kernels_match_an_f64_reference_on_every_path() {
    let (d_in, d_out) = (160, 29);
    let w: Vec<f32> = (0..d_in * d_out)
        .map(|i| ((i * 53 % 97) as f32 - 48.0) / 97.0)
        .collect(); // [d_in, d_out]
    for format in [WeightFormat::Q8, WeightFormat::Q4] {
        let m = WeightMatrix::from_f32(w.clone(), d_in, d_out, format);
        assert_eq!(m.format(), format);
        check_row_kernels(format.name(), m);
    }
    // bitsandbytes: blocks of 64, a code table, f32 and f16 dequantised weights.
    let (d_in, d_out) = (128, 29);
    for name in ["float32", "float16"] {
        let state = QuantState::parse(
            format!(
                r#"{{"quant_type":"nf4","blocksize":64,"dtype":"{name}","shape":[{d_out},{d_in}]}}"#
            )
            .as_bytes(),
        )
        .unwrap();
        let parts = Bnb4Parts {
            codes: (0..d_out * d_in / 2)
                .map(|i| (i * 131 % 256) as u8)
                .collect(),
            absmax: Absmax::F32(
                (0..d_out * d_in / 64)
                    .map(|i| 0.1 + i as f32 / 37.0)
                    .collect(),
            ),
            quant_map: (0..16).map(|k| (k as f32 - 7.5) / 7.3).collect(),
            nested: None,
            state,
        };
        let m = WeightMatrix::from_bnb(
            Bnb4Matrix::new(parts, d_out, d_in).unwrap(),
            WeightFormat::Bnb4,
        );
        assert_eq!(m.format(), WeightFormat::Bnb4);
        check_row_kernels(&format!("bnb4 {name}"), m);
    }
}

#[test]
fn block_formats_keep_unblockable_matrices_in_f32() {
    let m = WeightMatrix::from_f32(vec![0.5; 40 * 3], 40, 3, WeightFormat::Q4);
    assert_eq!(m.format(), WeightFormat::F32);
    let m = WeightMatrix::from_f32(vec![0.5; 64 * 3], 64, 3, WeightFormat::Q4);
    assert!(matches!(m.data, WeightData::Q4(ref b) if b.len() == 3 * 2 * 18));
}

fn logits(model: &FalconMamba<B>) -> Vec<f32> {
    let ids = model.input_ids(&[[3u32, 17, 5, 9, 11]]).unwrap();
    let mut state = model.new_state(1);
    model
        .forward(ids, &mut state)
        .unwrap()
        .into_data()
        .to_vec()
        .unwrap()
}

#[test]
fn a_quantized_checkpoint_loads_as_quantizing_at_load() {
    let src = fixtures_root().join("small");
    for format in [WeightFormat::Q8, WeightFormat::Q4] {
        let out = scratch_dir(&format!("quantized-{format}"));
        write_quantized(&src, &out, format, |_, _| {}).unwrap();
        let checkpoint = Checkpoint::open(&out).unwrap();
        let config = FalconMambaConfig::from_file(out.join("config.json")).unwrap();
        let in_proj = &falcon_mamba::core::ModelTensors::new(&config).layers[0].in_proj;
        assert_eq!(
            checkpoint
                .matrix_storage(&in_proj.name, in_proj.shape[0], in_proj.shape[1])
                .unwrap(),
            format
        );
        let stored = load_in::<B>(&out, None);
        assert_eq!(stored.weight_format(), format);
        let at_load = load_in::<B>(&src, format);
        let bits = |v: Vec<f32>| v.into_iter().map(f32::to_bits).collect::<Vec<_>>();
        assert_eq!(bits(logits(&stored)), bits(logits(&at_load)), "{format}");
        let _ = std::fs::remove_dir_all(&out);
    }
}

/// A copy of bitsandbytes fixture `dir` with tensor `name` replaced by `(dtype, shape, bytes)`.
fn corrupted(dir: &Path, name: &str, dtype: Dtype, shape: Vec<usize>, data: Vec<u8>) -> PathBuf {
    let out = scratch_dir(&format!("bnb-bad-{}", name.replace('.', "-")));
    std::fs::copy(dir.join("config.json"), out.join("config.json")).unwrap();
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    let file = SafeTensors::deserialize(&bytes).unwrap();
    let mut views: Vec<(String, TensorView<'_>)> = file
        .tensors()
        .into_iter()
        .filter(|(n, _)| n != name)
        .collect();
    views.push((name.into(), TensorView::new(dtype, shape, &data).unwrap()));
    safetensors::serialize_to_file(views, None, &out.join("model.safetensors")).unwrap();
    out
}

fn load_error(dir: &Path) -> Error {
    match FalconMamba::<B>::from_pretrained(dir, &device::<B>()) {
        Ok(_) => panic!("{} loaded", dir.display()),
        Err(e) => e,
    }
}

#[test]
fn bad_bitsandbytes_states_are_typed_errors_naming_tensor_and_value() {
    let dir = fixtures_root().join("bnb-nf4");
    let weight = "backbone.layers.0.mixer.in_proj.weight";
    let state_name = format!("{weight}.quant_state.bitsandbytes__nf4");
    let json = |text: &str| text.as_bytes().to_vec();

    let shape = json(r#"{"quant_type":"nf4","blocksize":64,"dtype":"float32","shape":[100,64]}"#);
    let bad = corrupted(&dir, &state_name, Dtype::U8, vec![shape.len()], shape);
    let e = load_error(&bad);
    let _ = std::fs::remove_dir_all(&bad);
    let text = e.to_string();
    assert!(
        matches!(e, Error::InvalidQuantization { ref name, .. } if name == &state_name),
        "{e:?}"
    );
    assert!(text.contains("[100, 64]"), "{text}");

    let kind = json(r#"{"quant_type":"nf3","blocksize":64,"dtype":"float32","shape":[128,64]}"#);
    let bad = corrupted(&dir, &state_name, Dtype::U8, vec![kind.len()], kind);
    let text = load_error(&bad).to_string();
    let _ = std::fs::remove_dir_all(&bad);
    assert!(text.contains("nf3") && text.contains(&state_name), "{text}");

    let absmax = format!("{weight}.absmax");
    let short: Vec<u8> = [1.0f32; 5].iter().flat_map(|v| v.to_le_bytes()).collect();
    let bad = corrupted(&dir, &absmax, Dtype::F32, vec![5], short);
    let e = load_error(&bad);
    let text = e.to_string();
    assert!(
        matches!(e, Error::InvalidQuantization { ref name, .. } if name == &absmax),
        "{e:?}"
    );
    assert!(text.contains("has 5 F32 values, expected 128"), "{text}");
    let _ = std::fs::remove_dir_all(bad);
}

#[test]
fn quantized_embeddings_of_one_token_equal_those_of_many() {
    crate::common::on_backend_under_test!(embeddings_on);
}

fn embeddings_on<Bk: falcon_mamba::SelectiveScanBackend>() {
    let dir = fixtures_root().join("tiny");
    for format in [WeightFormat::Q8, WeightFormat::Q4] {
        let model = load_in::<Bk>(&dir, format);
        let many = model.input_ids(&[[5u32, 6, 7]]).unwrap();
        let one = model.input_ids(&[[6u32]]).unwrap();
        let all: Vec<f32> = model.embed(many).into_data().to_vec().unwrap();
        let single: Vec<f32> = model.embed(one).into_data().to_vec().unwrap();
        let hidden = single.len();
        assert_eq!(&all[hidden..2 * hidden], &single[..], "{format}");
    }
}

/// Next-token distributions (softmax of the logits) at every position of `prompts`.
fn distributions(model: &FalconMamba<B>, prompts: &[Vec<u32>]) -> Vec<Vec<f64>> {
    let mut out = Vec::new();
    for prompt in prompts {
        let ids = model.input_ids(std::slice::from_ref(prompt)).unwrap();
        let mut state = model.new_state(1);
        let logits: Vec<f32> = model
            .forward(ids, &mut state)
            .unwrap()
            .into_data()
            .to_vec()
            .unwrap();
        let vocab = model.config().vocab_size;
        for row in logits.chunks_exact(vocab) {
            let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
            let exp: Vec<f64> = row.iter().map(|&v| f64::from(v - max).exp()).collect();
            let total: f64 = exp.iter().sum();
            out.push(exp.into_iter().map(|e| e / total).collect());
        }
    }
    out
}

/// (top-1 agreement, mean KL(reference ‖ other) in nats) over matching positions.
fn agreement(reference: &[Vec<f64>], other: &[Vec<f64>]) -> (f64, f64) {
    let argmax = |p: &[f64]| {
        p.iter()
            .enumerate()
            .fold(
                (0, f64::MIN),
                |best, (i, &v)| if v > best.1 { (i, v) } else { best },
            )
            .0
    };
    let mut same = 0;
    let mut kl = 0.0;
    for (p, q) in reference.iter().zip(other) {
        same += usize::from(argmax(p) == argmax(q));
        kl += p
            .iter()
            .zip(q)
            .filter(|(&p, _)| p > 0.0)
            .map(|(&p, &q)| p * (p / q.max(1e-300)).ln())
            .sum::<f64>();
    }
    let n = reference.len() as f64;
    (same as f64 / n, kl / n)
}

/// Quality of q8 and q4 against f32, whole model and with the embedding / lm_head kept f32,
/// on the tokenizer-real tiny model and the `small` fixture (random weights: the numbers are
/// relative, see README). Printed for BENCHMARKS.md; the bounds only catch a broken quantiser.
#[test]
fn quantized_logits_stay_close_to_the_f32_model() {
    let tiny = crate::common::tiny_model();
    let tokenizer = falcon_mamba::Tokenizer::from_file(tiny.join("tokenizer.json")).unwrap();
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(tiny.join("expected.json")).unwrap())
            .unwrap();
    let tiny_prompts: Vec<Vec<u32>> = expected["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| tokenizer.encode(c["prompt"].as_str().unwrap()).unwrap())
        .collect();
    let small = fixtures_root().join("small");
    let reference = crate::common::Reference::open(&small);
    let small_prompts: Vec<Vec<u32>> = ["b1", "b2"]
        .iter()
        .flat_map(|b| reference.ids(&format!("{b}.input_ids")))
        .collect();
    for (dir, prompts) in [(tiny, tiny_prompts), (small, small_prompts)] {
        let f32_model = load_in::<B>(&dir, WeightFormat::F32);
        let config = FalconMambaConfig::from_file(dir.join("config.json")).unwrap();
        let embedding_names: Vec<String> = {
            let t = falcon_mamba::core::ModelTensors::new(&config);
            std::iter::once(t.embedding.name)
                .chain(t.lm_head.map(|l| l.name))
                .collect()
        };
        let base = distributions(&f32_model, &prompts);
        for format in [WeightFormat::Q8, WeightFormat::Q4] {
            let all = distributions(&load_in::<B>(&dir, format), &prompts);
            let copy = crate::common::rounded_copy_where(&dir, format, |name| {
                !embedding_names.iter().any(|e| e == name)
            });
            let projections = distributions(&load_in::<B>(&copy, WeightFormat::F32), &prompts);
            let _ = std::fs::remove_dir_all(&copy);
            let (top1, kl) = agreement(&base, &all);
            let (top1_p, kl_p) = agreement(&base, &projections);
            println!(
                "quality {:<18} {format}: all matrices top-1 {:.3} KL {kl:.2e} | embedding/lm_head f32 top-1 {:.3} KL {kl_p:.2e} ({} positions)",
                dir.file_name().unwrap().to_string_lossy(),
                top1,
                top1_p,
                base.len()
            );
            let (min_top1, max_kl) = match format {
                WeightFormat::Q8 => (0.9, 0.01),
                _ => (0.25, 0.3),
            };
            assert!(
                top1 >= min_top1 && kl <= max_kl,
                "{format}: top-1 {top1}, KL {kl}"
            );
        }
    }
}

#[test]
fn row_kernels_carry_a_nan_input_to_the_outputs() {
    let (d_in, d_out) = (64, 16);
    let w: Vec<f32> = (0..d_in * d_out).map(|i| (i % 13) as f32 / 13.0).collect();
    for format in [WeightFormat::Q8, WeightFormat::Q4] {
        let host = HostMatrix::from(WeightMatrix::from_f32(w.clone(), d_in, d_out, format));
        for path in [KernelPath::Detected, KernelPath::Avx2, KernelPath::Portable] {
            let mut x = vec![0.5f32; d_in];
            x[40] = f32::NAN;
            let mut y = vec![0.0f32; d_out];
            host.accumulate_on(path, &mut y, &x, d_in, 0..d_in, 0..d_out);
            assert!(y.iter().all(|v| v.is_nan()), "{format} {path:?}: {y:?}");
        }
    }
}
