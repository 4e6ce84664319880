//! Parity with HF transformers on every fixture folder: logits, hidden states, per-layer outputs,
//! layer-0 intermediates, the state after the prompt, step and forced decode, greedy ids, for the
//! batch of 1 and the batch of 2, on the backend `FALCON_MAMBA_BACKEND` names, with the weight
//! matrices in the format `FALCON_MAMBA_DTYPE` names (unset or `auto`: each checkpoint's own,
//! bitsandbytes 4-bit included). Tolerance on the CPU and CUDA: logits max
//! abs diff ≤ 1e-4 (DESIGN.md §4); other tensors ≤ 1e-4 × max(1, their largest magnitude),
//! because f32 rounding grows with magnitude (plain Mamba-1 has no B/C norms: its layer-0
//! gated_y reaches ~230, where one ulp is 1.5e-5). On wgpu both are doubled (see
//! [`tolerance_factor`]).
//!
//! The reference: transformers' outputs when the model computes with the checkpoint's own
//! weights (f32, or a bf16/f16 checkpoint kept in its format: transformers computed in f32 on
//! its exactly widened weights). When loading narrows the weights (an f32 checkpoint in bf16),
//! transformers never saw those weights: the reference is then our f32 model, itself checked
//! against transformers by the f32 run, on the narrowed-then-widened weights ([`rounded_copy`]).

use std::path::{Path, PathBuf};

use burn::prelude::*;
use falcon_mamba::core::{Checkpoint, ModelTensors};
use falcon_mamba::{FalconMamba, FalconMambaConfig, GenerationConfig, Prefill};
use falcon_mamba::{SelectiveScanBackend, WeightFormat};

use crate::common::{
    device, dtype_under_test, fixture_dirs, load_in, max_abs_diff, on_backend_under_test,
    rounded_copy, tolerance_factor, Reference,
};

/// DESIGN.md §4's logits tolerance, times the backend's [`tolerance_factor`] (1 on CPU and CUDA).
fn tol() -> f32 {
    1e-4 * tolerance_factor()
}

/// The tolerance for a non-logit reference tensor: [`tol`] relative to its magnitude.
fn scaled_tol<B: Backend>(reference: &Tensor<B, 3>) -> f32 {
    tol() * crate::common::values(reference.clone().abs().max())[0].max(1.0)
}

/// transformers computing in bf16 (`*_bf16_native`) against our f32 compute: only a sanity bound.
const BF16_NATIVE_TOL: f32 = 0.5;

pub struct Fixture<B: SelectiveScanBackend> {
    pub name: String,
    pub dir: PathBuf,
    /// The model under test, its matrices in [`dtype_under_test`].
    pub model: FalconMamba<B>,
    /// transformers' outputs.
    pub reference: Reference,
    /// When loading narrowed the weights: the f32 model on the narrowed-then-widened weights,
    /// the reference instead of transformers.
    pub twin: Option<FalconMamba<B>>,
    pub batches: Vec<String>,
}

/// One compared value: what the model under test gave, and where its reference is.
struct Output<B: Backend> {
    item: String,
    value: Tensor<B, 3>,
    /// The transformers tensor it is compared with.
    reference: String,
    kind: Kind,
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    /// Logits: the absolute tolerance.
    Logits,
    /// Other tensors: the tolerance scaled by the reference's magnitude.
    Scaled,
    /// The conv state: transformers keeps K columns, we keep the K-1 the next step needs.
    ConvState,
}

fn output<B: Backend>(
    item: impl Into<String>,
    value: Tensor<B, 3>,
    reference: String,
    kind: Kind,
) -> Output<B> {
    Output {
        item: item.into(),
        value,
        reference,
        kind,
    }
}

impl<B: SelectiveScanBackend> Fixture<B> {
    fn load(dir: &Path) -> Self {
        let format = dtype_under_test();
        let model = load_in::<B>(dir, format);
        let config = FalconMambaConfig::from_file(dir.join("config.json")).unwrap();
        let embedding = ModelTensors::new(&config).embedding;
        let stored = Checkpoint::open(dir)
            .unwrap()
            .matrix_storage(&embedding.name, embedding.shape[0], embedding.shape[1])
            .unwrap();
        let narrowed = format.is_some_and(|f| f != WeightFormat::F32 && f != stored);
        let twin = narrowed.then(|| {
            let copy = rounded_copy(dir, format.unwrap_or(stored));
            let twin = load_in::<B>(&copy, WeightFormat::F32);
            let _ = std::fs::remove_dir_all(&copy);
            twin
        });
        let meta: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(dir.join("reference.json")).expect("reference.json"),
        )
        .expect("reference.json is JSON");
        let batches = meta["batch_prefixes"]
            .as_array()
            .expect("batch_prefixes")
            .iter()
            .map(|p| p.as_str().expect("prefix").to_string())
            .collect();
        Fixture {
            name: dir.file_name().unwrap().to_string_lossy().into_owned(),
            dir: dir.to_path_buf(),
            model,
            reference: Reference::open(dir),
            twin,
            batches,
        }
    }

    pub fn prompt(&self, batch: &str) -> Vec<Vec<u32>> {
        self.reference.ids(&format!("{batch}.input_ids"))
    }

    /// The reference positions covered by `*.logits` and `*.hidden_final`.
    fn positions(&self) -> Tensor<B, 1, Int> {
        let positions: Vec<i64> = self.reference.ids("positions")[0]
            .iter()
            .map(|&p| i64::from(p))
            .collect();
        let n = positions.len();
        Tensor::from_data(TensorData::new(positions, [n]), &device::<B>())
    }

    /// Compares `outputs` (of the model under test) with their references: transformers', or
    /// `twin_outputs` (the same computation on the twin) when there is a twin.
    fn compare(
        &self,
        outputs: Vec<Output<B>>,
        twin_outputs: Option<Vec<Output<B>>>,
    ) -> Vec<(String, f32, f32)> {
        let mut twins = twin_outputs.map(Vec::into_iter);
        outputs
            .into_iter()
            .map(|out| {
                let reference: Tensor<B, 3> = match twins.as_mut() {
                    Some(twins) => twins.next().expect("the twin gives the same outputs").value,
                    None => {
                        let reference: Tensor<B, 3> = self.reference.tensor(&out.reference);
                        if out.kind == Kind::ConvState {
                            let k = reference.dims()[2];
                            reference.narrow(2, 1, k - 1)
                        } else {
                            reference
                        }
                    }
                };
                let tol = match out.kind {
                    Kind::Logits => tol(),
                    Kind::Scaled | Kind::ConvState => scaled_tol(&reference),
                };
                (out.item, max_abs_diff(out.value, reference), tol)
            })
            .collect()
    }

    /// Runs `compute` on the model under test and, when there is one, on its twin, and compares.
    fn check(
        &self,
        compute: impl Fn(&FalconMamba<B>) -> Vec<Output<B>>,
    ) -> Vec<(String, f32, f32)> {
        let twin_outputs = self.twin.as_ref().map(&compute);
        self.compare(compute(&self.model), twin_outputs)
    }
}

/// Runs `check` on every fixture and batch prefix, printing each measured difference; fails with
/// every violation listed.
pub fn for_each_fixture<B: SelectiveScanBackend>(
    what: &str,
    mut check: impl FnMut(&Fixture<B>, &str) -> Vec<(String, f32, f32)>,
) {
    let mut failures = Vec::new();
    let format = dtype_under_test().map_or("auto", WeightFormat::name);
    for dir in fixture_dirs() {
        let fixture = Fixture::load(&dir);
        let against = if fixture.twin.is_some() {
            "f32 twin"
        } else {
            "transformers"
        };
        for batch in fixture.batches.clone() {
            for (item, diff, tol) in check(&fixture, &batch) {
                println!(
                    "{what:>14} {:<20} {format} vs {against:<12} {batch} {item:<28} max abs diff {diff:.3e} (tol {tol:.0e})",
                    fixture.name
                );
                if diff.is_nan() || diff > tol {
                    failures.push(format!(
                        "{} ({format}) {batch} {item}: {diff:e} > {tol:e}",
                        fixture.name
                    ));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{what}: {failures:#?}");
}

#[test]
fn full_forward_logits_and_hidden() {
    on_backend_under_test!(full_forward_logits_and_hidden_on);
}

fn full_forward_logits_and_hidden_on<B: SelectiveScanBackend>() {
    for_each_fixture::<B>("forward", |f, batch| {
        let mut out = f.check(|model| {
            let ids = model.input_ids(&f.prompt(batch)).unwrap();
            let mut state = model.new_state(ids.dims()[0]);
            let hidden = model.hidden(ids.clone(), &mut state).unwrap();
            let mut state = model.new_state(ids.dims()[0]);
            let logits = model.forward(ids, &mut state).unwrap();
            vec![
                output(
                    "logits",
                    logits.select(1, f.positions()),
                    format!("{batch}.logits"),
                    Kind::Logits,
                ),
                output(
                    "hidden_final",
                    hidden.select(1, f.positions()),
                    format!("{batch}.hidden_final"),
                    Kind::Scaled,
                ),
            ]
        });
        let native = format!("{batch}.logits_bf16_native");
        if f.twin.is_none() && f.reference.has(&native) {
            let ids = f.model.input_ids(&f.prompt(batch)).unwrap();
            let mut state = f.model.new_state(ids.dims()[0]);
            let logits = f
                .model
                .forward(ids, &mut state)
                .unwrap()
                .select(1, f.positions());
            out.push((
                "logits_bf16_native".into(),
                max_abs_diff(logits, f.reference.tensor(&native)),
                BF16_NATIVE_TOL,
            ));
        }
        out
    });
}

#[test]
fn per_layer_outputs_and_layer0_intermediates() {
    on_backend_under_test!(per_layer_outputs_and_layer0_intermediates_on);
}

fn per_layer_outputs_and_layer0_intermediates_on<B: SelectiveScanBackend>() {
    for_each_fixture::<B>("layers", |f, batch| {
        if !f.reference.has(&format!("{batch}.layer_out.0")) {
            return Vec::new();
        }
        let intermediates = f.reference.has(&format!("{batch}.layer0.norm_out"));
        f.check(|model| {
            let ids = model.input_ids(&f.prompt(batch)).unwrap();
            let mut state = model.new_state(ids.dims()[0]);
            let layers = model.layer_outputs(ids.clone(), &mut state).unwrap();
            let mut out: Vec<_> = layers
                .into_iter()
                .enumerate()
                .map(|(i, layer)| {
                    let name = format!("{batch}.layer_out.{i}");
                    output(
                        format!("layer_out.{i}"),
                        layer.select(1, f.positions()),
                        name,
                        Kind::Scaled,
                    )
                })
                .collect();
            if intermediates {
                let block = &model.layers[0];
                let norm_out = block.norm.forward(model.embed(ids.clone()));
                let mut state = model.new_state(ids.dims()[0]);
                let trace = block.mixer.trace(norm_out.clone(), &mut state.layers[0]);
                let parts = [
                    ("norm_out", norm_out),
                    ("in_proj_out", trace.in_proj_out),
                    ("conv_act_out", trace.conv_act_out),
                    ("x_proj_out", trace.x_proj_out),
                    ("gated_y", trace.gated_y),
                    ("out_proj_out", trace.out_proj_out),
                ];
                for (name, value) in parts {
                    out.push(output(
                        format!("layer0.{name}"),
                        value,
                        format!("{batch}.layer0.{name}"),
                        Kind::Scaled,
                    ));
                }
            }
            out
        })
    });
}

#[test]
fn state_after_the_prompt() {
    on_backend_under_test!(state_after_the_prompt_on);
}

fn state_after_the_prompt_on<B: SelectiveScanBackend>() {
    for_each_fixture::<B>("state", |f, batch| {
        f.check(|model| {
            let ids = model.input_ids(&f.prompt(batch)).unwrap();
            let mut state = model.new_state(ids.dims()[0]);
            model.prefill(ids, &mut state, Prefill::Parallel).unwrap();
            let mut out = Vec::new();
            for (i, layer) in state.layers.into_iter().enumerate() {
                let conv = format!("{batch}.cache.conv_state.{i}");
                out.push(output(
                    format!("conv_state.{i}"),
                    layer.conv,
                    conv,
                    Kind::ConvState,
                ));
                let ssm = format!("{batch}.cache.ssm_state.{i}");
                out.push(output(
                    format!("ssm_state.{i}"),
                    layer.ssm,
                    ssm,
                    Kind::Scaled,
                ));
            }
            out
        })
    });
}

/// Prefill, then feed `fed` one token at a time: the logits after the prompt (when
/// `include_prefill`) and after each fed token, `[batch, steps, vocab]`.
fn decode_logits<B: SelectiveScanBackend>(
    model: &FalconMamba<B>,
    prompt: &[Vec<u32>],
    fed: &[Vec<u32>],
    steps: usize,
    include_prefill: bool,
) -> Tensor<B, 3> {
    let ids = model.input_ids(prompt).unwrap();
    let mut state = model.new_state(ids.dims()[0]);
    let mut logits = vec![model.prefill(ids, &mut state, Prefill::Parallel).unwrap()];
    for t in 0..steps - usize::from(include_prefill) {
        let column: Vec<Vec<u32>> = fed.iter().map(|row| vec![row[t]]).collect();
        let ids = model.input_ids(&column).unwrap().squeeze_dim(1);
        logits.push(model.step(ids, &mut state).unwrap());
    }
    if !include_prefill {
        logits.remove(0);
    }
    Tensor::stack(logits, 1)
}

#[test]
fn step_decode_and_forced_decode_logits() {
    on_backend_under_test!(step_decode_and_forced_decode_logits_on);
}

fn step_decode_and_forced_decode_logits_on<B: SelectiveScanBackend>() {
    for_each_fixture::<B>("decode", |f, batch| {
        let generated = f.reference.ids(&format!("{batch}.generated_ids"));
        let forced = f.reference.ids(&format!("{batch}.forced_ids"));
        let decode = format!("{batch}.decode_logits");
        let forced_name = format!("{batch}.forced_decode_logits");
        let decode_steps = f.reference.f32(&decode).1[1];
        let forced_steps = f.reference.f32(&forced_name).1[1];
        f.check(|model| {
            let prompt = f.prompt(batch);
            vec![
                output(
                    "decode_logits",
                    decode_logits(model, &prompt, &generated, decode_steps, true),
                    decode.clone(),
                    Kind::Logits,
                ),
                output(
                    "forced_decode_logits",
                    decode_logits(model, &prompt, &forced, forced_steps, false),
                    forced_name.clone(),
                    Kind::Logits,
                ),
            ]
        })
    });
}

#[test]
fn greedy_ids_are_identical() {
    on_backend_under_test!(greedy_ids_are_identical_on);
}

fn greedy_ids_are_identical_on<B: SelectiveScanBackend>() {
    for_each_fixture::<B>("greedy", |f, batch| {
        let reference = f.reference.ids(&format!("{batch}.generated_ids"));
        let greedy = |model: &FalconMamba<B>| -> Vec<Vec<u32>> {
            let config = GenerationConfig::default().with_max_new_tokens(reference[0].len());
            let steps: Vec<Vec<Option<u32>>> = model
                .generate(&f.prompt(batch), &config)
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            (0..reference.len())
                .map(|r| {
                    steps
                        .iter()
                        .map(|s| s[r].expect("no eos configured"))
                        .collect()
                })
                .collect()
        };
        let expected = f.twin.as_ref().map_or_else(|| reference.clone(), greedy);
        assert_eq!(
            greedy(&f.model),
            expected,
            "{} {batch}: greedy ids ({})",
            f.name,
            f.dir.display()
        );
        vec![("generated_ids (equal)".into(), 0.0, 0.0)]
    });
}
