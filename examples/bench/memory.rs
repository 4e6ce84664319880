//! What the process holds: resident memory now and at its peak (Linux `/proc/self`), and the
//! machine's read bandwidth.

use std::time::Instant;

use falcon_mamba::core::{WeightFormat, WeightMatrix};
use falcon_mamba::model::cpu::{HostMatrix, KernelPath};
use rayon::prelude::*;

/// Resident set size in bytes (`VmRSS`), where the OS reports it, after handing the allocator's
/// free memory back to the OS: glibc keeps freed buffers in per-thread arenas for reuse, and
/// without the trim the reading would drift with whichever activations were freed last.
pub fn resident() -> Option<u64> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free memory to the OS; no live allocation is touched.
    unsafe {
        libc::malloc_trim(0);
    }
    status_kib("VmRSS:").map(|kib| kib * 1024)
}

/// Peak resident set size in bytes since the process started or [`reset_peak`] (`VmHWM`).
pub fn peak() -> Option<u64> {
    status_kib("VmHWM:").map(|kib| kib * 1024)
}

/// Restarts the peak from the current resident size (Linux ≥ 4.0: `5` to `clear_refs`).
pub fn reset_peak() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

fn status_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line[field.len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// Host read bandwidth in bytes/s over a buffer of `bytes` (at least 64 MiB): the best of 5
/// reads by each of two probes, whichever is faster. One is a streaming sum with several cursors
/// per core ([`crate::stream`]); the other is the library's own f32 matrix-vector kernel, the
/// weight reads of a decode step without the rest of it. A buffer the size of the weights one
/// token reads sits in the caches exactly as much as those weights do (a 130m model in bf16
/// fits in a 300 MiB L3), so the bound holds for small models too.
pub fn host_read_bandwidth(bytes: usize) -> f64 {
    let len = (bytes.max(64 << 20) / 4).next_multiple_of(COLUMNS);
    let buffer = vec![1.0f32; len];
    let sum = best_rate(len * 4, || {
        std::hint::black_box(crate::stream::sum(&buffer));
    });
    drop(buffer);
    let rows = len / COLUMNS;
    let matrix = HostMatrix::from(WeightMatrix::from_f32(
        vec![1.0; len],
        rows,
        COLUMNS,
        WeightFormat::F32,
    ));
    let x = vec![1.0f32; rows];
    let matvec = best_rate(len * 4, || {
        let threads = rayon::current_num_threads();
        let per_thread = rows.div_ceil(threads);
        (0..threads).into_par_iter().for_each(|t| {
            let inputs = (t * per_thread).min(rows)..((t + 1) * per_thread).min(rows);
            let mut acc = vec![0.0f32; COLUMNS];
            matrix.accumulate_on(KernelPath::Detected, &mut acc, &x, rows, inputs, 0..COLUMNS);
            std::hint::black_box(acc);
        });
    });
    sum.max(matvec)
}

/// Output columns of the matrix-vector probe: a 16 KiB accumulator row, as a 370m model's
/// in_proj has.
const COLUMNS: usize = 4096;

/// Bytes/s of the fastest of 5 runs of `read` (after one to warm up), each reading `bytes`.
fn best_rate(bytes: usize, read: impl Fn()) -> f64 {
    read();
    let fastest = (0..5)
        .map(|_| {
            let start = Instant::now();
            read();
            start.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min);
    bytes as f64 / fastest
}

/// The median of some values (the upper one of an even count).
pub fn median(values: impl IntoIterator<Item = f64>) -> f64 {
    let mut values: Vec<f64> = values.into_iter().collect();
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}
