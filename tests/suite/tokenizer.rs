//! The Falcon tokenizer against `tokenizers`' Python results (tests/fixtures/tokenizer).

use falcon_mamba::Tokenizer;

use crate::common::fixture;

/// The Falcon tokenizer and its `encodings.json`.
fn tokenizer_and_encodings() -> (Tokenizer, serde_json::Value) {
    let dir = fixture("tokenizer");
    let tokenizer = Tokenizer::from_file(dir.join("tokenizer.json")).unwrap();
    let encodings = std::fs::read_to_string(dir.join("encodings.json")).unwrap();
    (tokenizer, serde_json::from_str(&encodings).unwrap())
}

#[test]
fn encodings_decodings_and_streaming_match_the_fixture() {
    let (tokenizer, fixture) = tokenizer_and_encodings();
    assert_eq!(
        tokenizer.vocab_size(),
        fixture["vocab_size"].as_u64().unwrap() as usize
    );
    assert_eq!(tokenizer.token_id("<|endoftext|>"), Some(11));
    let cases = fixture["cases"].as_array().unwrap();
    assert!(cases.len() >= 24, "{} cases", cases.len());
    for case in cases {
        let text = case["text"].as_str().unwrap();
        let ids: Vec<u32> = serde_json::from_value(case["ids"].clone()).unwrap();
        let decoded = case["decoded"].as_str().unwrap();
        assert_eq!(tokenizer.encode(text).unwrap(), ids, "encode {text:?}");
        assert_eq!(tokenizer.decode(&ids).unwrap(), decoded, "decode {text:?}");

        let mut stream = tokenizer.decode_stream();
        let mut streamed = String::new();
        for &id in &ids {
            if let Some(piece) = stream.step(id).unwrap() {
                streamed.push_str(&piece);
            }
        }
        streamed.extend(stream.finish().unwrap());
        assert_eq!(streamed, decoded, "streaming decode {text:?}");
    }
}

#[test]
fn streaming_never_splits_a_character() {
    let tokenizer = Tokenizer::from_file(fixture("tokenizer").join("tokenizer.json")).unwrap();
    // Byte-level tokens of multi-byte characters: pieces must each be valid whole characters.
    let text = "日本語のテキスト 🙂👩‍👩‍👧 Ünïcödé";
    let ids = tokenizer.encode(text).unwrap();
    let mut stream = tokenizer.decode_stream();
    let mut pieces = Vec::new();
    for &id in &ids {
        pieces.extend(stream.step(id).unwrap());
    }
    pieces.extend(stream.finish().unwrap());
    assert!(
        pieces
            .iter()
            .all(|p| !p.contains(char::REPLACEMENT_CHARACTER)),
        "{pieces:?}"
    );
    assert_eq!(pieces.concat(), text);
}

#[test]
fn special_tokens_encode_and_decode_as_single_ids() {
    let (tokenizer, fixture) = tokenizer_and_encodings();
    let specials = fixture["special_tokens"].as_object().unwrap();
    assert_eq!(specials.len(), 12);
    for (id, token) in specials {
        let id: u32 = id.parse().unwrap();
        let token = token.as_str().unwrap();
        assert_eq!(tokenizer.encode(token).unwrap(), vec![id], "{token}");
        assert_eq!(tokenizer.decode(&[id]).unwrap(), token);
        assert_eq!(tokenizer.token_id(token), Some(id));
    }
    let ids = tokenizer.encode(">>QUESTION<<Why?<|endoftext|>").unwrap();
    assert_eq!((ids[0], *ids.last().unwrap()), (6, 11));
    assert_eq!(
        tokenizer.decode(&ids).unwrap(),
        ">>QUESTION<<Why?<|endoftext|>"
    );
}
