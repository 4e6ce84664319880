//! A streaming read of a buffer on every core: the access pattern of a memory-bound decode step,
//! and so the bound such a step can reach. Shared by the bench example and `benches/scan.rs`.

use rayon::prelude::*;

/// The sum of `buffer`, read once front to back in 256 KiB pieces spread over the thread pool.
pub fn sum(buffer: &[f32]) -> f32 {
    buffer
        .par_chunks(1 << 16)
        .map(|chunk| {
            // Eight independent sums so the adds vectorise.
            let mut acc = [0.0f32; 8];
            for v in chunk.chunks_exact(8) {
                for (a, x) in acc.iter_mut().zip(v) {
                    *a += x;
                }
            }
            acc.iter().sum::<f32>()
        })
        .sum::<f32>()
}
