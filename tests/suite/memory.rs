//! The constant-memory promise as structure, not timing: a heap counter (this binary's global
//! allocator) measured in a child process that runs nothing else.
//! - Decode: the state's size, tensor count and shapes are the same at position 10 and 2,000 of a
//!   generation, and the live heap between decode steps is the same 1,000 and 2,000 steps later,
//!   as are the decode step's threads (started once, not per step).
//! - Prefill: chunked prefill of a 4k-token prompt peaks no higher than parallel prefill of one
//!   chunk, while parallel prefill of the same 4k prompt peaks far higher (so the counter sees
//!   activations), yet no higher than parallel prefill of `PARALLEL_CHUNK` tokens.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use falcon_mamba::core::generation::PARALLEL_CHUNK;
use falcon_mamba::{FalconMamba, FalconMambaConfig, GenerationConfig, Prefill, State};

use crate::common::{device, B};

/// The system allocator, counting live bytes and their peak.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded to the system allocator unchanged; only counters are added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(live, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Live heap bytes now.
fn live() -> usize {
    LIVE.load(Ordering::Relaxed)
}

/// The peak of live heap bytes while `f` runs, above what was live when it started.
fn peak_during<R>(f: impl FnOnce() -> R) -> (R, usize) {
    let base = live();
    PEAK.store(base, Ordering::Relaxed);
    let out = f();
    (out, PEAK.load(Ordering::Relaxed) - base)
}

/// A small Falcon Mamba (hidden 64, 2 layers, vocab 256): activations per token dwarf nothing.
fn model() -> FalconMamba<B> {
    let config = FalconMambaConfig::falcon_mamba(64, 2, 256).expect("valid shape");
    FalconMamba::random(config, &device::<B>(), 1).expect("random model")
}

/// The ids of this process's threads named as the fused decode step's team names them (Linux;
/// the kernel keeps the first 15 bytes of a name).
fn decode_threads() -> Vec<u64> {
    let mut ids: Vec<u64> = std::fs::read_dir("/proc/self/task")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|task| {
            std::fs::read_to_string(task.path().join("comm"))
                .is_ok_and(|name| name.starts_with("falcon-mamba-de"))
        })
        .filter_map(|task| task.file_name().to_str()?.parse().ok())
        .collect();
    ids.sort_unstable();
    ids
}

/// Each state tensor's shape, in order.
fn shapes(state: &State<B>) -> Vec<Vec<usize>> {
    state
        .layers
        .iter()
        .flat_map(|l| [l.conv.dims().to_vec(), l.ssm.dims().to_vec()])
        .collect()
}

#[test]
fn decode_and_chunked_prefill_hold_constant_memory() {
    // Other tests allocate concurrently in this process; the child runs only the measurement.
    let exe = std::env::current_exe().expect("the test binary's path");
    let out = std::process::Command::new(exe)
        .args([
            "--exact",
            "memory::measured_alone",
            "--ignored",
            "--nocapture",
        ])
        .args(["--test-threads", "1"])
        .output()
        .expect("the test binary runs again");
    let text = String::from_utf8_lossy(&out.stdout);
    println!("{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the measurement failed");
    assert!(text.contains("1 passed"), "the measurement did not run");
}

/// Run by [`decode_and_chunked_prefill_hold_constant_memory`] in a process of its own.
#[test]
#[ignore = "run in a child process by decode_and_chunked_prefill_hold_constant_memory"]
fn measured_alone() {
    let model = model();

    let config = GenerationConfig::default()
        .with_max_new_tokens(2_000)
        .with_eos_token_ids(Vec::new());
    let mut generation = model
        .generate(&[[1u32, 2, 3]], &config)
        .expect("generation");
    let (mut at_10, mut at_2000) = (None, None);
    for produced in 1..=2_000 {
        generation.next().expect("2,000 tokens").expect("a token");
        let snapshot = || {
            let state = generation.state();
            (state.size_in_bytes(), shapes(state))
        };
        match produced {
            10 => at_10 = Some(snapshot()),
            2_000 => at_2000 = Some(snapshot()),
            _ => {}
        }
    }
    let ((bytes_10, shapes_10), (bytes_2000, shapes_2000)) =
        (at_10.expect("position 10"), at_2000.expect("position 2000"));
    println!(
        "state: {bytes_10} bytes, {} tensors at position 10; {bytes_2000} bytes, {} tensors at 2,000",
        shapes_10.len(),
        shapes_2000.len()
    );
    assert_eq!(bytes_10, bytes_2000, "state size changed");
    assert_eq!(shapes_10, shapes_2000, "state tensors changed");
    let mut state = generation.into_state();

    // The heap between decode steps, without the generation's id history: the least live bytes
    // over the 10 steps ending 1,000 and 2,000 steps on (the least, so a buffer some pool happens
    // to hold at one step does not count). A leak of 8 bytes a token would show.
    let token = model.input_ids(&[[5u32]]).expect("ids").squeeze_dim(1);
    let mut window = |steps: usize| {
        (0..steps)
            .map(|_| {
                model.step(token.clone(), &mut state).expect("step");
                live()
            })
            .collect::<Vec<_>>()
    };
    window(990);
    let at_1000 = window(10).into_iter().min().expect("10 steps");
    let team_at_1000 = decode_threads();
    window(980);
    let at_2000 = window(10).into_iter().min().expect("10 steps");
    let team_at_2000 = decode_threads();
    // The fused step's threads are started once and kept: the same ones 1,000 steps apart.
    println!("decode threads: {team_at_1000:?} at 1,000 steps, {team_at_2000:?} at 2,000");
    if cfg!(target_os = "linux") {
        assert_eq!(team_at_1000.len(), rayon::current_num_threads());
        assert_eq!(
            team_at_1000, team_at_2000,
            "decode threads were started anew"
        );
    }
    println!("live heap between steps: {at_1000} bytes 1,000 steps on, {at_2000} 2,000 steps on");
    let slack = 8 * 1024;
    assert!(
        at_2000 <= at_1000 + slack,
        "live heap grew by {} bytes over 1,000 decode steps",
        at_2000 - at_1000
    );
    drop(state);

    let chunk = 64;
    let prompt: Vec<u32> = (0..4096).map(|i| (i * 7 % 256) as u32).collect();
    let prefill = |len: usize, mode: Prefill| {
        let mut state = model.new_state(1);
        let ids = model.input_ids(&[&prompt[..len]]).expect("ids");
        peak_during(|| model.prefill(ids, &mut state, mode).expect("prefill")).1
    };
    let one_chunk = prefill(chunk, Prefill::Parallel);
    let chunked = prefill(4096, Prefill::Chunked(chunk));
    let parallel = prefill(4096, Prefill::Parallel);
    let parallel_most = prefill(PARALLEL_CHUNK, Prefill::Parallel);
    println!(
        "peak heap above the model: one {chunk}-token chunk {one_chunk} bytes, chunked 4k \
         {chunked}, parallel 4k {parallel}, parallel {PARALLEL_CHUNK} {parallel_most}"
    );
    assert!(
        parallel <= parallel_most + parallel_most / 10,
        "parallel prefill of 4096 tokens held {parallel} bytes, of {PARALLEL_CHUNK} tokens \
         {parallel_most}: long prompts must go in passes of at most {PARALLEL_CHUNK}"
    );
    assert!(
        chunked <= one_chunk + one_chunk / 10,
        "chunked prefill of 4096 tokens held {chunked} bytes, one chunk {one_chunk}"
    );
    assert!(
        parallel > 16 * one_chunk,
        "parallel 4k ({parallel} bytes) should hold far more than one chunk ({one_chunk}): \
         the counter is not seeing activations"
    );
}
