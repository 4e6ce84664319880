//! Multi-turn chat with a Falcon Mamba instruct model, one line per user turn on stdin.
//!
//! ```text
//! cargo run --release --example chat -- --model DIR|HUB_ID [--system TEXT] [--state FILE]
//!     [--backend cpu|wgpu|cuda] [sampling flags as in the generate example]
//! ```
//! The whole conversation lives in the model's fixed-size state: each turn feeds only the text
//! that is new since the last one (the rendered chat template minus what the state already
//! holds), never the history again. Commands: `/reset`, `/save FILE`, `/load FILE`.
//! After every reply a line on stderr counts the tokens fed in that turn.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;
use common::backend::OnBackend;
use common::{line, ModelArgs, SamplingArgs};
use falcon_mamba::core::{ChatTemplate, Message};
use falcon_mamba::prelude::*;
use falcon_mamba::SelectiveScanBackend;

/// Text the ChatML template closes a turn with; the instruct model writes it as plain text.
const END_OF_TURN: &str = "<|im_end|>";

/// Chat with a Falcon Mamba instruct model.
#[derive(Parser, Debug)]
struct Cli {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    sampling: SamplingArgs,
    /// A system message opening the conversation.
    #[arg(long)]
    system: Option<String>,
    /// Start from a conversation saved with /save.
    #[arg(long)]
    state: Option<PathBuf>,
}

/// A conversation and the model state that has read it.
struct Conversation<B: SelectiveScanBackend> {
    messages: Vec<Message>,
    /// Exactly the text the state has read so far.
    fed_text: String,
    /// How many tokens the state has read.
    tokens_read: usize,
    state: State<B>,
}

impl<B: SelectiveScanBackend> Conversation<B> {
    fn new(model: &FalconMamba<B>, system: &Option<String>) -> Self {
        Conversation {
            messages: system
                .iter()
                .map(|s| Message::new("system", s.clone()))
                .collect(),
            fed_text: String::new(),
            tokens_read: 0,
            state: model.new_state(1),
        }
    }

    fn save(&self, path: &Path, model: &FalconMamba<B>) -> Result<(), String> {
        let metadata = BTreeMap::from([
            (
                "chat.messages".to_string(),
                serde_json::to_string(&self.messages).map_err(line)?,
            ),
            ("chat.fed_text".to_string(), self.fed_text.clone()),
            ("chat.tokens_read".to_string(), self.tokens_read.to_string()),
        ]);
        self.state
            .save(path, model.config(), &metadata)
            .map_err(line)
    }

    fn load(path: &Path, model: &FalconMamba<B>) -> Result<Self, String> {
        let (state, metadata) = State::load(path, model.config(), &model.device()).map_err(line)?;
        let field = |key: &str| {
            metadata
                .get(key)
                .cloned()
                .ok_or_else(|| format!("{}: not a chat state (no {key})", path.display()))
        };
        let messages = serde_json::from_str(&field("chat.messages")?)
            .map_err(|e| format!("{}: chat.messages: {e}", path.display()))?;
        let tokens_read = field("chat.tokens_read")?
            .parse()
            .map_err(|e| format!("{}: chat.tokens_read: {e}", path.display()))?;
        Ok(Conversation {
            messages,
            fed_text: field("chat.fed_text")?,
            tokens_read,
            state,
        })
    }
}

struct Chat {
    dir: PathBuf,
    cli: Cli,
}

impl OnBackend for Chat {
    fn run<B: SelectiveScanBackend>(self, device: B::Device) -> Result<(), String> {
        let config = common::generation_config(&self.dir, &self.cli.sampling)?;
        let (model, tokenizer) = common::load::<B>(&self.dir, &device, &self.cli.model.dtype)?;
        let template = ChatTemplate::from_dir(&self.dir).map_err(line)?;
        let mut chat = match &self.cli.state {
            Some(path) => Conversation::load(path, &model)?,
            None => Conversation::new(&model, &self.cli.system),
        };
        eprintln!(
            "chat template: {} | commands: /reset, /save FILE, /load FILE | end with Ctrl-D",
            template.source().display()
        );
        let mut turn = 0;
        for input in std::io::stdin().lock().lines() {
            let input = input.map_err(|e| format!("stdin: {e}"))?;
            let input = input.trim();
            if let Some(path) = input.strip_prefix("/save ") {
                match chat.save(Path::new(path.trim()), &model) {
                    Ok(()) => eprintln!("saved to {}", path.trim()),
                    Err(e) => eprintln!("error: {e}"),
                }
            } else if let Some(path) = input.strip_prefix("/load ") {
                match Conversation::load(Path::new(path.trim()), &model) {
                    Ok(loaded) => {
                        chat = loaded;
                        eprintln!("loaded {} ({} messages)", path.trim(), chat.messages.len());
                    }
                    Err(e) => eprintln!("error: {e}"),
                }
            } else if input == "/reset" {
                chat = Conversation::new(&model, &self.cli.system);
                eprintln!("conversation reset");
            } else if !input.is_empty() {
                turn += 1;
                reply(
                    &model, &tokenizer, &template, &config, &mut chat, input, turn,
                )?;
            }
        }
        Ok(())
    }
}

/// One user turn: feed what is new, stream the reply, record it.
fn reply<B: SelectiveScanBackend>(
    model: &FalconMamba<B>,
    tokenizer: &Tokenizer,
    template: &ChatTemplate,
    config: &GenerationConfig,
    chat: &mut Conversation<B>,
    input: &str,
    turn: usize,
) -> Result<(), String> {
    chat.messages.push(Message::new("user", input));
    let rendered = template.render(&chat.messages, true).map_err(line)?;
    // The template normally extends what the state has read; if it does not (a template that
    // rewrites earlier turns), start over from the whole conversation.
    let new_text = match rendered.strip_prefix(&chat.fed_text) {
        Some(rest) => rest.to_string(),
        None => {
            eprintln!("(the template rewrote earlier turns: re-reading the whole conversation)");
            chat.state = model.new_state(1);
            chat.fed_text.clear();
            chat.tokens_read = 0;
            rendered.clone()
        }
    };
    let prompt = tokenizer.encode(&new_text).map_err(line)?;
    let state = std::mem::replace(&mut chat.state, model.new_state(1));
    let mut generation = model
        .generate_from(&[&prompt], state, config)
        .map_err(line)?;

    let mut decoder = tokenizer.decode_stream();
    let mut text = String::new();
    let mut stdout = std::io::stdout().lock();
    let mut shown = 0;
    let mut generated = Vec::new();
    for step in generation.by_ref() {
        let Some(id) = step.map_err(line)?[0] else {
            break;
        };
        generated.push(id);
        if config.eos_token_ids.contains(&id) {
            break;
        }
        if let Some(piece) = decoder.step(id).map_err(line)? {
            text.push_str(&piece);
        }
        // Print up to a possible start of the end-of-turn marker; stop once it is complete.
        let end = text.find(END_OF_TURN);
        let safe = end.unwrap_or_else(|| text.len() - partial_marker(&text));
        if safe > shown {
            write!(stdout, "{}", &text[shown..safe])
                .and_then(|()| stdout.flush())
                .map_err(line)?;
            shown = safe;
        }
        if end.is_some() {
            break;
        }
    }
    if !text.contains(END_OF_TURN) {
        text.extend(decoder.finish().map_err(line)?);
        write!(stdout, "{}", &text[shown.min(text.len())..]).map_err(line)?;
    }
    writeln!(stdout).map_err(line)?;

    // The state holds the new text and every generated token but the last.
    let fed_generated = generated.len().saturating_sub(1);
    chat.fed_text.push_str(&new_text);
    chat.fed_text.push_str(
        &tokenizer
            .decode(&generated[..fed_generated])
            .map_err(line)?,
    );
    let content = text
        .split(END_OF_TURN)
        .next()
        .unwrap_or_default()
        .to_string();
    chat.messages.push(Message::new("assistant", content));
    chat.state = generation.into_state();
    chat.tokens_read += prompt.len() + fed_generated;
    eprintln!(
        "[turn {turn}: fed {} prompt tokens, generated {}; the state has read {} tokens; state {} bytes]",
        prompt.len(),
        generated.len(),
        chat.tokens_read,
        chat.state.size_in_bytes()
    );
    Ok(())
}

/// Length of the longest suffix of `text` that begins the end-of-turn marker.
fn partial_marker(text: &str) -> usize {
    (1..END_OF_TURN.len())
        .rev()
        .find(|&n| {
            text.is_char_boundary(text.len().saturating_sub(n)) && text.ends_with(&END_OF_TURN[..n])
        })
        .unwrap_or(0)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let model_args = cli.model.clone();
    common::run(&model_args, |dir| Chat { dir, cli })
}
