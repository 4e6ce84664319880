//! Reading the small text files of a checkpoint (configs, tokenizer, chat template, shard index)
//! with bounds: a special file (FIFO, device) would block or never end, and a huge one would
//! take memory before its parser could object.

use std::io::Read;
use std::path::Path;

use crate::error::{Error, Result};

/// The most bytes a config, generation config, shard index or chat template may take.
pub const MAX_CONFIG_BYTES: u64 = 16 << 20;
/// The most bytes a `tokenizer.json` may take (the largest published ones are tens of MiB).
pub const MAX_TOKENIZER_BYTES: u64 = 256 << 20;

/// The UTF-8 text of the regular file at `path`, refused past `limit` bytes.
pub fn read_text(path: &Path, limit: u64) -> Result<String> {
    let refuse = |reason: String| {
        Error::io(
            path,
            std::io::Error::new(std::io::ErrorKind::InvalidData, reason),
        )
    };
    // Checked before opening: opening a FIFO blocks until someone writes to it.
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if !meta.is_file() {
        return Err(refuse("not a regular file".into()));
    }
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    if meta.len() > limit {
        return Err(refuse(format!(
            "{} bytes, more than the {limit} such a file may take",
            meta.len()
        )));
    }
    // The file may grow after the check: read one byte past the limit at most.
    let mut bytes = Vec::new();
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io(path, e))?;
    if bytes.len() as u64 > limit {
        return Err(refuse(format!(
            "more than the {limit} bytes such a file may take"
        )));
    }
    String::from_utf8(bytes).map_err(|_| refuse("not UTF-8 text".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn special_and_oversized_files_are_refused() {
        let dir = std::env::temp_dir().join(format!("text-file-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let big = dir.join("config.json");
        std::fs::write(&big, vec![b' '; 2048]).unwrap();
        assert_eq!(read_text(&big, 4096).unwrap().len(), 2048);
        let e = read_text(&big, 1024).unwrap_err();
        assert!(e.to_string().contains("config.json"), "{e}");
        let e = read_text(&dir, 1024).unwrap_err();
        assert!(e.to_string().contains("not a regular file"), "{e}");
        let fifo = dir.join("fifo.json");
        let _ = std::fs::remove_file(&fifo);
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        if made.is_ok_and(|s| s.success()) {
            let e = read_text(&fifo, 1024).unwrap_err();
            assert!(e.to_string().contains("not a regular file"), "{e}");
        }
    }
}
