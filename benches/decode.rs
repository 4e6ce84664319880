//! End-to-end decode on a random-weight 130m-shaped Falcon Mamba (H 768, 24 layers, vocab 65024,
//! f32, batch 1): the time of one `step` (one token), after a 16-token prompt, against `forward`
//! on a one-token chunk (the same step as the model's ops one by one; on burn-ndarray `step` runs
//! the backend's fused decode pass, elsewhere the same ops). On burn-ndarray;
//! with `--all-features` and `FALCON_MAMBA_BACKEND=wgpu` (or `cuda`) on that backend instead,
//! timed to the device's completion. Also four threads each stepping its own sequence, at once
//! against in turn (the CPU's decode threads take one step at a time, so at once should cost no
//! more).
//!
//! The `serving_*` group measures batching on the same model: one decode step of 1 and of 8 rows
//! (the weights are read once per step, so 8 rows should cost far less than 8 steps); the
//! [`Scheduler`] decoding 64 tokens for 1 and for 8 concurrent streams (aggregate throughput,
//! after the prompts are fed);
//! and a ragged prefill (rows of 8, 32, 128 and 512 tokens fed as separate groups into one
//! batched state) against the padded batch a masked prefill would compute (4 rows of 512).
//!
//! `cargo bench --bench decode`. `FALCON_MAMBA_BENCH_VOCAB` overrides the vocabulary
//! size: Mesa's lavapipe binds at most 128 MiB per buffer, less than the 65024 × 768 f32 embedding.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use falcon_mamba::model::burn::backend::NdArray;
use falcon_mamba::{
    FalconMamba, FalconMambaConfig, GenerationConfig, Prefill, Scheduler, SchedulerConfig,
    SelectiveScanBackend,
};

/// Threads stepping at once in the `step_*_callers_*` pair.
const CALLERS: usize = 4;

fn decode_on<B: SelectiveScanBackend>(c: &mut Criterion, name: &str) {
    let device = B::Device::default();
    let vocab = std::env::var("FALCON_MAMBA_BENCH_VOCAB")
        .map(|v| v.parse().expect("FALCON_MAMBA_BENCH_VOCAB is a number"))
        .unwrap_or(65024);
    let config = FalconMambaConfig::falcon_mamba(768, 24, vocab).expect("valid shape");
    let model = FalconMamba::<B>::random(config, &device, 0).expect("random model");
    let mut state = model.new_state(1);
    let prompt: Vec<u32> = (100..116).collect();
    let ids = model.input_ids(&[prompt]).expect("ids");
    model
        .prefill(ids, &mut state, Prefill::Parallel)
        .expect("prefill");
    let token = model.input_ids(&[[42u32]]).expect("ids").squeeze_dim(1);

    let mut group = c.benchmark_group(format!("decode_130m_vocab{vocab}_{name}"));
    group.sample_size(20);
    group.throughput(Throughput::Elements(1));
    group.bench_function("step", |bench| {
        bench.iter(|| {
            let logits = model.step(token.clone(), &mut state).expect("step");
            B::sync(&device).expect("device runs the step");
            logits
        })
    });
    group.bench_function("forward_one_token", |bench| {
        bench.iter(|| {
            let chunk = token.clone().unsqueeze_dim(1); // [1, 1]
            let logits = model.forward(chunk, &mut state).expect("forward");
            B::sync(&device).expect("device runs the step");
            logits
        })
    });
    // Several threads stepping their own sequences at once share the cores: four steps at once
    // should take about as long as four in turn, not longer.
    let mut states: Vec<_> = (0..CALLERS).map(|_| state.clone()).collect();
    group.throughput(Throughput::Elements(CALLERS as u64));
    group.bench_function(format!("step_{CALLERS}_callers_in_turn"), |bench| {
        bench.iter(|| {
            for state in &mut states {
                model.step(token.clone(), state).expect("step");
            }
            B::sync(&device).expect("device runs the steps");
        })
    });
    group.bench_function(format!("step_{CALLERS}_callers_at_once"), |bench| {
        bench.iter(|| {
            std::thread::scope(|scope| {
                for state in &mut states {
                    let (model, token) = (&model, token.clone());
                    scope.spawn(move || model.step(token, state).expect("step"));
                }
            });
            B::sync(&device).expect("device runs the steps");
        })
    });
    group.finish();
    serving_on(c, &model, name, vocab);
}

fn serving_on<B: SelectiveScanBackend>(
    c: &mut Criterion,
    model: &FalconMamba<B>,
    name: &str,
    vocab: usize,
) {
    let device = model.device();
    let mut group = c.benchmark_group(format!("serving_130m_vocab{vocab}_{name}"));
    group.sample_size(10);
    for rows in [1usize, 8] {
        let prompts: Vec<Vec<u32>> = (0..rows as u32)
            .map(|r| (100 + r..116 + r).collect())
            .collect();
        let mut state = model.new_state(rows);
        let ids = model.input_ids(&prompts).expect("ids");
        model
            .prefill(ids, &mut state, Prefill::Parallel)
            .expect("prefill");
        let tokens = model
            .input_ids(&[vec![42u32; rows]])
            .expect("ids")
            .squeeze_dim(0);
        group.throughput(Throughput::Elements(rows as u64));
        group.bench_function(format!("step_rows_{rows}"), |bench| {
            bench.iter(|| {
                let logits = model.step(tokens.clone(), &mut state).expect("step");
                B::sync(&device).expect("device runs the step");
                logits
            })
        });
    }
    // Decode only: the prompts are fed (and the first tokens sampled) before the clock starts.
    let new_tokens = 64;
    let config = GenerationConfig::default().with_max_new_tokens(new_tokens);
    for streams in [1usize, 8] {
        group.throughput(Throughput::Elements((streams * (new_tokens - 1)) as u64));
        group.bench_function(format!("scheduler_streams_{streams}"), |bench| {
            bench.iter_custom(|iters| {
                let mut total = std::time::Duration::ZERO;
                for _ in 0..iters {
                    let mut scheduler =
                        Scheduler::new(model, SchedulerConfig::default()).expect("scheduler");
                    for s in 0..streams as u32 {
                        scheduler
                            .add(vec![100 + s, 200 + s, 300 + s, 400 + s], &config)
                            .expect("valid prompt");
                    }
                    scheduler.step().expect("prefill step");
                    let start = std::time::Instant::now();
                    while !scheduler.is_idle() {
                        scheduler.step().expect("step");
                    }
                    total += start.elapsed();
                }
                total
            })
        });
    }
    group.throughput(Throughput::Elements(8 + 32 + 128 + 512));
    let ragged: Vec<Vec<u32>> = [8u32, 32, 128, 512]
        .iter()
        .map(|&n| (0..n).map(|i| (i * 31 + n) % vocab as u32).collect())
        .collect();
    group.bench_function("prefill_ragged_8_32_128_512", |bench| {
        bench.iter(|| {
            let mut state = model.new_state(ragged.len());
            let logits = model
                .prefill_rows(&ragged, &mut state, Prefill::Parallel)
                .expect("prefill");
            B::sync(&device).expect("device runs the prefill");
            logits
        })
    });
    let padded: Vec<Vec<u32>> = ragged
        .iter()
        .map(|r| r.iter().copied().cycle().take(512).collect())
        .collect();
    let padded = model.input_ids(&padded).expect("ids");
    group.bench_function("prefill_padded_4x512", |bench| {
        bench.iter(|| {
            let mut state = model.new_state(4);
            let logits = model
                .prefill(padded.clone(), &mut state, Prefill::Parallel)
                .expect("prefill");
            B::sync(&device).expect("device runs the prefill");
            logits
        })
    });
    group.finish();
}

fn decode(c: &mut Criterion) {
    match std::env::var("FALCON_MAMBA_BACKEND").as_deref() {
        #[cfg(feature = "wgpu")]
        Ok("wgpu") => decode_on::<falcon_mamba::model::burn::backend::Wgpu>(c, "wgpu"),
        #[cfg(feature = "cuda")]
        Ok("cuda") => decode_on::<falcon_mamba::model::burn::backend::Cuda>(c, "cuda"),
        Ok("cpu") | Err(_) => decode_on::<NdArray<f32>>(c, "cpu"),
        Ok(other) => panic!("FALCON_MAMBA_BACKEND={other}: not cpu, or not built (--features)"),
    }
}

criterion_group!(benches, decode);
criterion_main!(benches);
