//! End-to-end decode on a random-weight 130m-shaped Falcon Mamba (H 768, 24 layers, vocab 65024,
//! f32, batch 1) on burn-ndarray: the time of one `step` (one token), after a 16-token prompt.
//!
//! `cargo bench --profile dev --bench decode`

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use falcon_mamba::model::burn::backend::NdArray;
use falcon_mamba::{FalconMamba, FalconMambaConfig, Prefill};

type B = NdArray<f32>;

fn decode(c: &mut Criterion) {
    let config = FalconMambaConfig::falcon_mamba(768, 24, 65024).expect("valid shape");
    let model = FalconMamba::<B>::random(config, &Default::default(), 0).expect("random model");
    let mut state = model.new_state(1);
    let prompt: Vec<u32> = (100..116).collect();
    let ids = model.input_ids(&[prompt]).expect("ids");
    model
        .prefill(ids, &mut state, Prefill::Parallel)
        .expect("prefill");
    let token = model.input_ids(&[[42u32]]).expect("ids").squeeze_dim(1);

    let mut group = c.benchmark_group("decode_130m");
    group.sample_size(20);
    group.throughput(Throughput::Elements(1));
    group.bench_function("step", |bench| {
        bench.iter(|| model.step(token.clone(), &mut state).expect("step"))
    });
    group.finish();
}

criterion_group!(benches, decode);
criterion_main!(benches);
