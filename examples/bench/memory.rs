//! What the process holds: resident memory now and at its peak (Linux `/proc/self`), and the
//! machine's read bandwidth.

use std::time::Instant;

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

/// Host read bandwidth in bytes/s: the median of 10 streaming sums of a 1 GiB buffer on every
/// core, the bound a memory-bound decode step can reach on the CPU.
pub fn host_read_bandwidth() -> f64 {
    let buffer = vec![1.0f32; 1 << 28];
    let read = || crate::stream::sum(&buffer);
    std::hint::black_box(read());
    let seconds = median((0..10).map(|_| {
        let start = Instant::now();
        std::hint::black_box(read());
        start.elapsed().as_secs_f64()
    }));
    (buffer.len() * 4) as f64 / seconds
}

/// The median of some values (the upper one of an even count).
pub fn median(values: impl IntoIterator<Item = f64>) -> f64 {
    let mut values: Vec<f64> = values.into_iter().collect();
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}
