#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| falcon_mamba_fuzz::checkpoint(data));
