//! The fuzz corpora replayed: every input kept under `fuzz/corpus/<target>/` (the seeds, what
//! fuzzing found worth keeping, and each crash it ever found) run through the fuzz harness, the
//! same functions the cargo-fuzz targets call. A failure names the input's file.

use std::path::Path;

#[path = "../../fuzz/src/lib.rs"]
mod harness;

fn replay(target: &str, run: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut inputs: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("a corpus entry").path())
        .collect();
    inputs.sort();
    assert!(!inputs.is_empty(), "{} is empty", dir.display());
    for input in &inputs {
        let data = std::fs::read(input).expect("a corpus input");
        let outcome = std::panic::catch_unwind(|| run(&data));
        assert!(outcome.is_ok(), "{} fails", input.display());
    }
    println!("{target}: {} inputs", inputs.len());
}

#[test]
fn config() {
    replay("config", harness::config);
}

#[test]
fn checkpoint() {
    replay("checkpoint", harness::checkpoint);
}

#[test]
fn state_file() {
    replay("state_file", harness::state_file);
}

#[test]
fn sampling() {
    replay("sampling", harness::sampling);
}

#[test]
fn tokenizer_stream() {
    replay("tokenizer_stream", harness::tokenizer_stream);
}

#[test]
fn chat_template() {
    replay("chat_template", harness::chat_template);
}

#[test]
fn model() {
    replay("model", harness::model);
}
