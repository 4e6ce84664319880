//! The fuzz harness: one function per fuzz target, each taking the fuzzer's bytes. The targets in
//! `fuzz_targets/` call these under libFuzzer; the test suite compiles this file as a module and
//! replays every input kept under `corpus/` through the same functions.
//!
//! Each function asserts what must hold for any input: no panic, a typed error where the input is
//! bad, and, where a result comes back, that it is sane (an id inside the logits, a state of the
//! right shape, the same logits from the fused step and the op path).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

use falcon_mamba::core::chat::{ChatTemplate, Message};
use falcon_mamba::core::{expected_tensors, Error, Sampler, Tokenizer};
use falcon_mamba::model::burn::tensor::{Int, Tensor, TensorData};
use falcon_mamba::{Cpu, FalconMamba, FalconMambaConfig, GenerationConfig, Prefill, State};

/// Separates the files of one checkpoint input (index, then shards).
pub const FILE_SEPARATOR: &[u8] = b"\n--falcon-mamba-fuzz-file--\n";

/// The model configs a checkpoint input may pair with: the first byte picks one.
const CHECKPOINT_CONFIGS: [&str; 5] = [
    include_str!("../../tests/fixtures/tiny/config.json"),
    include_str!("../../tests/fixtures/mamba1-tiny/config.json"),
    include_str!("../../tests/fixtures/tiny-untied-bias/config.json"),
    include_str!("../../tests/fixtures/bnb-nf4/config.json"),
    include_str!("../../tests/fixtures/tiny-bf16/config.json"),
];

/// `config.json` (first byte even) or `generation_config.json` (odd): parsed and checked.
pub fn config(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode % 2 == 0 {
        let Ok(text) = std::str::from_utf8(rest) else {
            return;
        };
        if let Ok(config) = FalconMambaConfig::from_json(text, "config.json") {
            config
                .validate()
                .expect("from_json accepted a config validate refuses");
            // Every layer's tensors, and the embedding.
            assert!(expected_tensors(&config).len() > config.num_hidden_layers);
        }
    } else {
        let dir = Scratch::new();
        let path = dir.file("generation_config.json", rest);
        if let Ok(generation) = GenerationConfig::from_file(&path) {
            let _ = generation.validate();
        }
    }
}

/// A checkpoint directory: a config picked by the first byte, then either `model.safetensors`
/// (the rest) or, where the rest holds [`FILE_SEPARATOR`], an index followed by its shards.
pub fn checkpoint(data: &[u8]) {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let dir = Scratch::new();
    let config = CHECKPOINT_CONFIGS[usize::from(pick) % CHECKPOINT_CONFIGS.len()];
    dir.file("config.json", config.as_bytes());
    let files = split(rest, FILE_SEPARATOR);
    if let [model] = files.as_slice() {
        dir.file("model.safetensors", model);
    } else {
        let shards = files.len() - 1;
        dir.file("model.safetensors.index.json", files[0]);
        for (i, shard) in files[1..].iter().enumerate() {
            let name = format!("model-{:05}-of-{shards:05}.safetensors", i + 1);
            dir.file(&name, shard);
        }
    }
    if let Ok(model) = FalconMamba::<Cpu>::from_pretrained(dir.path(), &Default::default()) {
        let mut state = model.new_state(1);
        model
            .step(ids_1d(&[0]), &mut state)
            .expect("a loaded model refused a step");
    }
}

/// A state file for the tiny fixture model. First byte even: the rest is the file. Odd: a state
/// saved by [`State::save`] (batch from the second byte) with the rest applied as edits of five
/// bytes each, a little-endian offset and a byte to xor there (0: truncate there instead).
pub fn state_file(data: &[u8]) {
    let [mode, batch, edits @ ..] = data else {
        return;
    };
    let config = tiny_config();
    let dir = Scratch::new();
    let path = dir.path().join("state.safetensors");
    if mode % 2 == 0 {
        std::fs::write(&path, &data[1..]).expect("writing the scratch file");
    } else {
        let batch = 1 + usize::from(*batch % 3);
        let metadata = [("turn".to_string(), "3".to_string())].into();
        State::<Cpu>::zeros(config, batch, &Default::default())
            .save(&path, config, &metadata)
            .expect("saving a zero state");
        let mut bytes = std::fs::read(&path).expect("reading the state back");
        for edit in edits.chunks_exact(5) {
            let offset = u32::from_le_bytes([edit[0], edit[1], edit[2], edit[3]]) as usize;
            let offset = offset % (bytes.len() + 1);
            match edit[4] {
                0 => bytes.truncate(offset),
                x if offset < bytes.len() => bytes[offset] ^= x,
                _ => {}
            }
        }
        std::fs::write(&path, bytes).expect("writing the scratch file");
    }
    if let Ok((state, _)) = State::<Cpu>::load(&path, config, &Default::default()) {
        state
            .check(config, state.batch_size())
            .expect("a loaded state does not fit its model");
        for layer in &state.layers {
            for t in [&layer.conv, &layer.ssm] {
                let finite = t.to_data().iter::<f32>().all(f32::is_finite);
                assert!(finite, "a loaded state holds NaN or inf");
            }
        }
    }
}

/// Sampling settings from the first 18 bytes (any the config accepts), logits from the rest (f32,
/// little-endian; NaN and inf included), the ids seen being the first few logits' indices.
pub fn sampling(data: &[u8]) {
    let Some((head, rest)) = data.split_at_checked(18) else {
        return;
    };
    let f32_at = |i: usize| f32::from_le_bytes([head[i], head[i + 1], head[i + 2], head[i + 3]]);
    let config = GenerationConfig {
        do_sample: head[0] % 2 == 1,
        temperature: f32_at(1),
        top_k: (head[5] > 0).then_some(usize::from(head[5])),
        top_p: (head[6] % 2 == 1).then(|| f32_at(7)),
        repetition_penalty: f32_at(11),
        seed: u64::from(head[15]),
        ..GenerationConfig::default()
    };
    if config.validate().is_err() {
        return;
    }
    let mut logits: Vec<f32> = rest
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    let seen: Vec<u32> = (0..u32::from(head[16] % 8)).collect();
    let stream = u64::from(head[17]);
    match Sampler::new(&config, stream).sample(&mut logits, &seen) {
        Ok(id) => {
            let l = logits.get(id as usize).expect("an id past the logits");
            assert!(!l.is_nan(), "picked a NaN logit");
        }
        Err(Error::NonFiniteLogits { len }) => {
            assert_eq!(len, logits.len());
            assert!(
                !logits.iter().any(|l| l.is_finite()),
                "refused logits with a finite value"
            );
        }
        Err(e) => panic!("unexpected error: {e}"),
    }
}

/// Streaming decode: the first byte picks the Falcon tokenizer (even) or a byte-fallback one
/// (odd); the rest are ids (u16, little-endian), some past the vocabulary. The pieces must add up
/// to the whole decode wherever that is valid text.
pub fn tokenizer_stream(data: &[u8]) {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let tokenizer = if pick % 2 == 0 {
        falcon_tokenizer()
    } else {
        byte_fallback_tokenizer()
    };
    let ids: Vec<u32> = rest
        .chunks_exact(2)
        .map(|b| u32::from(u16::from_le_bytes([b[0], b[1]])))
        .collect();
    let mut stream = tokenizer.decode_stream();
    let mut streamed = String::new();
    for &id in &ids {
        match stream.step(id) {
            Ok(piece) => streamed.extend(piece),
            Err(_) => return,
        }
    }
    if let Ok(piece) = stream.finish() {
        streamed.extend(piece);
    }
    // Where the ids make valid text, the pieces add up to it exactly. (Where they do not, a
    // byte-fallback decoder renders a byte by what follows it, so text already released can
    // differ from a whole decode's replacement characters.)
    if let Ok(whole) = tokenizer.decode(&ids) {
        if !whole.contains(char::REPLACEMENT_CHARACTER) {
            assert_eq!(streamed, whole);
        }
    }
}

/// A chat template (the bytes up to the first NUL) rendered over a conversation whose messages
/// hold the rest; fuel and an output cap bound any template.
pub fn chat_template(data: &[u8]) {
    let (source, content) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let source = String::from_utf8_lossy(source).into_owned();
    let content = String::from_utf8_lossy(content);
    let Ok(template) = ChatTemplate::new(
        source,
        PathBuf::from("chat_template.jinja"),
        "<s>".into(),
        "</s>".into(),
    ) else {
        return;
    };
    let messages = [
        Message::new("system", "Be brief."),
        Message::new("user", content.as_ref()),
        Message::new("assistant", content.as_ref()),
    ];
    let _ = template.render(&messages, data.len() % 2 == 1);
}

/// The model's entry points on a tiny random model: the first byte picks the call (a chunk
/// through `forward`, a decode `step` checked against the op path, or a ragged `prefill_rows`),
/// the next two the number of rows (1 to 11, past the fused step's 8) and tokens per row (0 to
/// 5), the rest ids (u16, little-endian, some past the vocabulary).
pub fn model(data: &[u8]) {
    let [call, rows, len, rest @ ..] = data else {
        return;
    };
    let model = tiny_model();
    let vocab = model.config().vocab_size;
    let rows = 1 + usize::from(*rows % 11);
    let mut ids = rest
        .chunks_exact(2)
        .map(|b| u32::from(u16::from_le_bytes([b[0], b[1]])) % (vocab as u32 + 8));
    let mut next = || ids.next().unwrap_or(1);
    match call % 3 {
        0 => {
            let len = usize::from(*len % 6);
            let chunk: Vec<Vec<u32>> = (0..rows)
                .map(|_| (0..len).map(|_| next()).collect())
                .collect();
            let flat: Vec<i64> = chunk.iter().flatten().map(|&id| i64::from(id)).collect();
            let ids = Tensor::from_data(TensorData::new(flat, [rows, len]), &Default::default());
            let mut state = model.new_state(rows);
            let result = model.forward(ids, &mut state);
            match expected_error(&chunk, vocab) {
                Some(want) => assert_same_error(result.map(|_| ()), &want),
                None => {
                    let logits = result.expect("a valid chunk was refused");
                    assert_eq!(logits.dims(), [rows, len, vocab]);
                    assert!(logits.to_data().iter::<f32>().all(f32::is_finite));
                }
            }
        }
        1 => {
            // A state with some history: one valid token per row first.
            let mut state = model.new_state(rows);
            let warm: Vec<u32> = (0..rows).map(|_| next() % vocab as u32).collect();
            model
                .step(ids_1d(&warm), &mut state)
                .expect("a valid step was refused");
            let step: Vec<u32> = (0..rows).map(|_| next()).collect();
            let mut ops = state.clone();
            let result = model.step(ids_1d(&step), &mut state);
            let rows_of_one: Vec<Vec<u32>> = step.iter().map(|&id| vec![id]).collect();
            match expected_error(&rows_of_one, vocab) {
                Some(want) => assert_same_error(result.map(|_| ()), &want),
                None => {
                    let logits = result.expect("a valid step was refused");
                    let ids = ids_1d(&step).unsqueeze_dim(1);
                    let op_logits = model.forward(ids, &mut ops).expect("the op path refused");
                    let op_logits = op_logits.squeeze_dim::<2>(1);
                    let diff = (logits - op_logits).abs().max().into_scalar();
                    assert!(diff <= 1e-5, "step and forward differ by {diff}");
                }
            }
        }
        _ => {
            let prompts: Vec<Vec<u32>> = (0..rows)
                .map(|_| (0..next() % 6).map(|_| next()).collect())
                .collect();
            let mut state = model.new_state(rows);
            let result = model.prefill_rows(&prompts, &mut state, Prefill::Parallel);
            match expected_error(&prompts, vocab) {
                Some(want) => assert_same_error(result.map(|_| ()), &want),
                None => {
                    let logits = result.expect("valid prompts were refused");
                    let last = prompts.len() - 1;
                    let mut alone = model.new_state(1);
                    let logits_alone = model
                        .prefill_rows(&prompts[last..], &mut alone, Prefill::Parallel)
                        .expect("a valid prompt was refused");
                    let row = logits.narrow(0, last, 1);
                    let diff = (row - logits_alone).abs().max().into_scalar();
                    assert!(diff <= 1e-4, "a row fed with others differs by {diff}");
                }
            }
        }
    }
}

/// The error a batch of rows must give, in the model's order: a row without ids, or the first
/// id past the vocabulary.
fn expected_error(rows: &[Vec<u32>], vocab_size: usize) -> Option<Error> {
    for (row, ids) in rows.iter().enumerate() {
        if ids.is_empty() {
            return Some(Error::EmptyPrompt { row });
        }
        if let Some(position) = ids.iter().position(|&id| id as usize >= vocab_size) {
            return Some(Error::TokenOutOfRange {
                id: ids[position],
                row,
                position,
                vocab_size,
            });
        }
    }
    None
}

fn assert_same_error(result: falcon_mamba::Result<()>, want: &Error) {
    match result {
        Ok(()) => panic!("accepted what should be refused with: {want}"),
        Err(e) => assert_eq!(e.to_string(), want.to_string()),
    }
}

fn ids_1d(ids: &[u32]) -> Tensor<Cpu, 1, Int> {
    let ids: Vec<i64> = ids.iter().map(|&id| i64::from(id)).collect();
    let len = ids.len();
    Tensor::from_data(TensorData::new(ids, [len]), &Default::default())
}

fn split<'a>(data: &'a [u8], separator: &[u8]) -> Vec<&'a [u8]> {
    let mut parts = Vec::new();
    let mut rest = data;
    while let Some(i) = rest.windows(separator.len()).position(|w| w == separator) {
        parts.push(&rest[..i]);
        rest = &rest[i + separator.len()..];
    }
    parts.push(rest);
    parts
}

fn tiny_config() -> &'static FalconMambaConfig {
    static CONFIG: OnceLock<FalconMambaConfig> = OnceLock::new();
    CONFIG.get_or_init(|| {
        FalconMambaConfig::from_json(CHECKPOINT_CONFIGS[0], "tiny/config.json")
            .expect("the tiny fixture's config")
    })
}

/// 2 layers of width 64, 300 tokens: small enough for thousands of calls a second.
fn tiny_model() -> &'static FalconMamba<Cpu> {
    static MODEL: OnceLock<FalconMamba<Cpu>> = OnceLock::new();
    MODEL.get_or_init(|| {
        let config = FalconMambaConfig::falcon_mamba(64, 2, 300).expect("a tiny config");
        FalconMamba::random(config, &Default::default(), 7).expect("a tiny random model")
    })
}

fn falcon_tokenizer() -> &'static Tokenizer {
    static TOKENIZER: OnceLock<Tokenizer> = OnceLock::new();
    TOKENIZER.get_or_init(|| {
        let json = include_str!("../../tests/fixtures/tokenizer/tokenizer.json");
        Tokenizer::from_json(json, "tokenizer.json").expect("Falcon's tokenizer")
    })
}

fn byte_fallback_tokenizer() -> &'static Tokenizer {
    static TOKENIZER: OnceLock<Tokenizer> = OnceLock::new();
    TOKENIZER.get_or_init(|| {
        let json = include_str!("../../tests/fixtures/tokenizer/byte-fallback.json");
        Tokenizer::from_json(json, "byte-fallback.json").expect("the byte-fallback tokenizer")
    })
}

/// A fresh directory under the system's temporary one, removed on drop: one per call, so that
/// calls on several threads (the test suite) never share files.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("falcon-mamba-fuzz-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("creating a scratch directory");
        Scratch(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }

    fn file(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, bytes).expect("writing a scratch file");
        path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
