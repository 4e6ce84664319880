//! The Hugging Face tokenizer (`tokenizer.json`) and UTF-8-safe incremental decoding for streaming.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::text_file::{read_text, MAX_TOKENIZER_BYTES};

/// A `tokenizer.json` tokenizer. Encoding adds no special tokens (Falcon's tokenizer has no
/// post-processor, and transformers' results in our fixtures are made that way).
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    path: PathBuf,
}

impl Tokenizer {
    /// Loads `tokenizer.json`.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        Self::from_json(&read_text(path, MAX_TOKENIZER_BYTES)?, path)
    }

    /// Parses the text of a `tokenizer.json` (one embedded in a binary, say); `source` names it
    /// in errors.
    pub fn from_json(json: &str, source: impl AsRef<Path>) -> Result<Self> {
        let path = source.as_ref().to_path_buf();
        let inner = json
            .parse::<tokenizers::Tokenizer>()
            .map_err(|e| Error::Tokenizer {
                path: path.clone(),
                reason: e.to_string(),
            })?;
        Ok(Tokenizer { inner, path })
    }

    /// Text → token ids (special-token strings such as `<|endoftext|>` map to their ids).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let encoding = self.inner.encode(text, false).map_err(|e| self.error(e))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// Token ids → text, keeping special tokens (`skip_special_tokens = false`), like
    /// `tokenizers`' own `decode`.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner.decode(ids, false).map_err(|e| self.error(e))
    }

    /// Number of ids, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The id of a token string (e.g. `"<|endoftext|>"`), if it exists.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// A decoder that turns ids arriving one by one into text pieces that are always whole
    /// UTF-8 characters; their concatenation equals [`Tokenizer::decode`] of all ids.
    pub fn decode_stream(&self) -> DecodeStream<'_> {
        DecodeStream {
            tokenizer: self,
            ids: Vec::new(),
            prefix_offset: 0,
            read_offset: 0,
        }
    }

    /// The wrapped `tokenizers` tokenizer, for anything this wrapper does not cover.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    fn error(&self, e: tokenizers::Error) -> Error {
        Error::Tokenizer {
            path: self.path.clone(),
            reason: e.to_string(),
        }
    }
}

/// Incremental decoder, see [`Tokenizer::decode_stream`].
///
/// A byte-level BPE token may hold part of a multi-byte character. Text is released only once
/// the ids since the last release decode to complete characters; the tail is decoded against the
/// previous token(s) as context so that decoders which treat a leading space specially stay exact.
pub struct DecodeStream<'t> {
    tokenizer: &'t Tokenizer,
    ids: Vec<u32>,
    /// Start of the context window (ids already released, kept for context).
    prefix_offset: usize,
    /// First id whose text has not been released.
    read_offset: usize,
}

impl DecodeStream<'_> {
    /// Feeds one id; returns the newly completed text, if any.
    pub fn step(&mut self, id: u32) -> Result<Option<String>> {
        self.ids.push(id);
        let prefix = self
            .tokenizer
            .decode(&self.ids[self.prefix_offset..self.read_offset])?;
        let text = self.tokenizer.decode(&self.ids[self.prefix_offset..])?;
        if text.len() > prefix.len() && !text.ends_with(char::REPLACEMENT_CHARACTER) {
            let piece = past_prefix(&text, prefix.len()).to_string();
            self.prefix_offset = self.read_offset;
            self.read_offset = self.ids.len();
            Ok(Some(piece))
        } else {
            Ok(None)
        }
    }

    /// Releases whatever is still held back (an incomplete character decodes to U+FFFD, exactly as
    /// a whole-sequence decode would render it).
    pub fn finish(self) -> Result<Option<String>> {
        let prefix = self
            .tokenizer
            .decode(&self.ids[self.prefix_offset..self.read_offset])?;
        let text = self.tokenizer.decode(&self.ids[self.prefix_offset..])?;
        Ok(Some(past_prefix(&text, prefix.len()))
            .filter(|s| !s.is_empty())
            .map(str::to_string))
    }
}

/// `text` from the first character boundary at or past `len`. The text normally extends the
/// prefix of that length; a byte-fallback decoder can render the prefix's bytes differently once
/// more bytes follow (a valid character becomes one replacement character per byte).
fn past_prefix(text: &str, len: usize) -> &str {
    let mut start = len.min(text.len());
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A byte-fallback tokenizer: `x`, `z` and the bytes 0xC3 and 0xA9 (`é` is C3 A9).
    fn byte_fallback() -> Tokenizer {
        let json = include_str!("../../../tests/fixtures/tokenizer/byte-fallback.json");
        Tokenizer::from_json(json, "byte-fallback.json").unwrap()
    }

    #[test]
    fn streaming_survives_bytes_that_change_meaning() {
        let tokenizer = byte_fallback();
        // x, é, then a stray continuation byte turns C3 A9 A9 into three replacement
        // characters, so the decoded prefix "é" is no prefix of the new text.
        let ids = [0u32, 2, 3, 3, 1];
        let mut stream = tokenizer.decode_stream();
        let mut text = String::new();
        for &id in &ids {
            text.extend(stream.step(id).unwrap());
        }
        text.extend(stream.finish().unwrap());
        assert_eq!(text, "xé\u{FFFD}\u{FFFD}z");
        assert_eq!(
            tokenizer.decode(&ids).unwrap(),
            "x\u{FFFD}\u{FFFD}\u{FFFD}z"
        );
    }
}
