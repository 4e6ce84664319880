//! A streaming read of a buffer on every core: the access pattern of a memory-bound decode step,
//! and so the bound such a step can reach. Shared by the bench example and `benches/scan.rs`.
//!
//! Each thread reads its share through several cursors at once, as the decode's matrix-vector
//! product reads four weight rows at once: a single cursor per core keeps fewer cache-line misses
//! in flight, and a bound measured that way came out below the decode's own read rate.

use rayon::prelude::*;

/// Cursors each thread advances together; more read slower (BENCHMARKS.md, "The bandwidth probe").
const STREAMS: usize = 4;
/// Floats each cursor reads per step: one cache line.
const LINE: usize = 16;
/// Independent sums per cursor, so the adds vectorise.
const LANES: usize = 8;

/// The sum of `buffer`, read once: one contiguous share per thread of the pool, each share read
/// through [`STREAMS`] cursors at once.
pub fn sum(buffer: &[f32]) -> f32 {
    let share = buffer.len().div_ceil(rayon::current_num_threads()).max(1);
    buffer.par_chunks(share).map(sum_share).sum::<f32>()
}

/// One thread's share: [`STREAMS`] equal stretches advanced in lockstep, then the remainder.
fn sum_share(share: &[f32]) -> f32 {
    let steps = share.len() / (STREAMS * LINE);
    let stretch = steps * LINE;
    let (streams, rest) = share.split_at(STREAMS * stretch);
    let streams: Vec<&[[f32; LINE]]> = streams
        .chunks_exact(stretch.max(1))
        .map(|s| s.as_chunks::<LINE>().0)
        .collect();
    let mut acc = [[0.0f32; LANES]; STREAMS];
    for step in 0..steps {
        for (acc, stream) in acc.iter_mut().zip(&streams) {
            for half in stream[step].chunks_exact(LANES) {
                for (a, x) in acc.iter_mut().zip(half) {
                    *a += x;
                }
            }
        }
    }
    acc.iter().flatten().sum::<f32>() + rest.iter().sum::<f32>()
}
