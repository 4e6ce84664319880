//! End-to-end decode on a random-weight 130m-shaped Falcon Mamba (H 768, 24 layers, vocab 65024,
//! f32, batch 1): the time of one `step` (one token), after a 16-token prompt, against `forward`
//! on a one-token chunk (the same step as the model's ops one by one; on burn-ndarray `step` runs
//! the backend's fused decode pass, elsewhere the same ops). On burn-ndarray;
//! with `--all-features` and `FALCON_MAMBA_BACKEND=wgpu` (or `cuda`) on that backend instead,
//! timed to the device's completion.
//!
//! `cargo bench --bench decode`. `FALCON_MAMBA_BENCH_VOCAB` overrides the vocabulary
//! size: Mesa's lavapipe binds at most 128 MiB per buffer, less than the 65024 × 768 f32 embedding.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use falcon_mamba::model::burn::backend::NdArray;
use falcon_mamba::{FalconMamba, FalconMambaConfig, Prefill, SelectiveScanBackend};

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
