//! The examples as users run them: the binaries cargo built next to this test.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use falcon_mamba::core::{ChatTemplate, Message};
use falcon_mamba::Tokenizer;

use crate::common::{scratch_dir, tiny_model};

/// `target/<profile>/examples/<name>`, built by `cargo test` with the test binaries.
pub fn example(name: &str) -> Command {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(|deps| deps.parent()).unwrap();
    let path: PathBuf = profile_dir.join("examples").join(name);
    assert!(
        path.is_file(),
        "{} is not built (run cargo test, which builds examples)",
        path.display()
    );
    Command::new(path)
}

fn model_dir() -> String {
    tiny_model().display().to_string()
}

fn run(mut command: Command, stdin: &str) -> Output {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8(bytes.to_vec()).unwrap()
}

#[test]
fn generate_prints_transformers_greedy_text() {
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(tiny_model().join("expected.json")).unwrap())
            .unwrap();
    for case in expected["cases"].as_array().unwrap() {
        let mut command = example("generate");
        let prompt = case["prompt"].as_str().unwrap();
        command.args([
            "--model",
            &model_dir(),
            "--prompt",
            prompt,
            "--max-new-tokens",
            "12",
        ]);
        let out = run(command, "");
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert_eq!(
            text(&out.stdout),
            format!("{}\n", case["greedy_new_text"].as_str().unwrap())
        );
        let stats = text(&out.stderr);
        assert!(
            stats.contains("tok/s") && stats.contains("state 9728 bytes"),
            "{stats}"
        );
    }
    // The prompt from stdin, and another prefill mode: the same text.
    let case = &expected["cases"][1];
    let mut command = example("generate");
    command.args([
        "--model",
        &model_dir(),
        "--max-new-tokens",
        "12",
        "--prefill",
        "chunked:2",
    ]);
    let out = run(command, &format!("{}\n", case["prompt"].as_str().unwrap()));
    assert_eq!(
        text(&out.stdout),
        format!("{}\n", case["greedy_new_text"].as_str().unwrap())
    );
}

/// `(fed, generated, read)` from the
/// `[turn N: fed X prompt tokens, generated G; the state has read Y tokens; ...]` lines.
fn turns(stderr: &str) -> Vec<(usize, usize, usize)> {
    stderr
        .lines()
        .filter(|l| l.starts_with("[turn "))
        .map(|l| {
            let number = |after: &str| -> usize {
                let rest = &l[l.find(after).unwrap() + after.len()..];
                rest.split(' ').next().unwrap().parse().unwrap()
            };
            let generated = l[l.find("generated ").unwrap() + 10..]
                .split(';')
                .next()
                .unwrap();
            (
                number("fed "),
                generated.parse().unwrap(),
                number("has read "),
            )
        })
        .collect()
}

#[test]
fn chat_feeds_only_the_new_turn() {
    let mut command = example("chat");
    command.args(["--model", &model_dir(), "--max-new-tokens", "6"]);
    let out = run(
        command,
        "What is a state space model?\nAnd why is it fast?\n",
    );
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let turns = turns(&stderr);
    assert_eq!(turns.len(), 2, "{stderr}");
    let ((fed1, generated1, read1), (fed2, generated2, read2)) = (turns[0], turns[1]);
    // Turn 1 reads the rendered prompt (30 tokens, transformers' chat_prompt_ids) and every
    // generated token but the last.
    assert_eq!((fed1, read1), (30, 30 + generated1 - 1), "{stderr}");
    // Turn 2 adds only its new tokens to what the state had read, and re-reading the history
    // would have fed more than the state had read after turn 1.
    assert_eq!(read2, read1 + fed2 + generated2 - 1, "{stderr}");

    // Re-reading the history would feed the whole rendered conversation; turn 2 must feed only
    // the part the state has not read (up to a token of tokenizer boundary effects).
    let stdout = text(&out.stdout);
    let replies: Vec<&str> = stdout.lines().collect();
    assert_eq!(replies.len(), 2);
    let dir = tiny_model();
    let template = ChatTemplate::from_dir(&dir).unwrap();
    let conversation = template
        .render(
            &[
                Message::new("user", "What is a state space model?"),
                Message::new("assistant", replies[0]),
                Message::new("user", "And why is it fast?"),
            ],
            true,
        )
        .unwrap();
    let tokenizer = Tokenizer::from_file(dir.join("tokenizer.json")).unwrap();
    let whole = tokenizer.encode(&conversation).unwrap().len();
    assert!(
        fed2 <= whole - read1 + 1,
        "turn 2 fed {fed2} tokens of a {whole}-token conversation whose first {read1} were read already\n{stderr}"
    );
}

#[test]
fn chat_save_reset_load_resumes_the_conversation() {
    let path = scratch_dir("chat-save").join("conversation.state");
    let path = path.display();
    let script = format!("Hello\n/save {path}\nHow are you?\n/reset\n/load {path}\nHow are you?\n");
    let mut command = example("chat");
    command.args(["--model", &model_dir(), "--max-new-tokens", "5"]);
    let out = run(command, &script);
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let replies: Vec<String> = text(&out.stdout).lines().map(str::to_string).collect();
    assert_eq!(replies.len(), 3, "{stderr}");
    assert_eq!(
        replies[1], replies[2],
        "the reloaded conversation continued differently"
    );
    let turns = turns(&stderr);
    assert_eq!(turns[1], turns[2]);
}

/// Bad input: one line on stderr starting with `error:`, a non-zero exit, no panic.
fn assert_one_line_error(out: &Output, mentions: &str) {
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "exit status {:?}", out.status);
    assert!(!stderr.contains("panicked"), "{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(
        lines[0].starts_with("error: ") && lines[0].contains(mentions),
        "{stderr}"
    );
}

#[test]
fn bad_command_lines_give_one_line_errors() {
    let model = model_dir();
    let cases: [(&str, &[&str], &str); 8] = [
        ("generate", &["--model", "/no/such/dir"], "/no/such/dir"),
        ("generate", &["--model", &model, "--dtype", "q3"], "q3"),
        ("generate", &["--model", &model, "--backend", "tpu"], "tpu"),
        (
            "generate",
            &["--model", &model, "--temperature", "-0.5"],
            "temperature",
        ),
        (
            "generate",
            &["--model", &model, "--temperature", "1", "--top-p", "1.5"],
            "top_p",
        ),
        ("generate", &["--model", &model, "--top-p", "0"], "top_p"),
        (
            "chat",
            &["--model", &model, "--state", "/no/such.state"],
            "/no/such.state",
        ),
        ("chat", &["--model", &model, "--backend", "metal"], "metal"),
    ];
    for (name, args, mentions) in cases {
        let mut command = example(name);
        command
            .args(args)
            .args(["--prompt", "hi"].iter().filter(|_| name == "generate"));
        let out = run(command, "");
        assert_one_line_error(&out, mentions);
    }
}

#[test]
fn a_hub_id_without_network_says_to_pass_a_directory() {
    let mut command = example("generate");
    command
        .args([
            "--model",
            "tiiuae/falcon-mamba-7b-instruct",
            "--prompt",
            "hi",
        ])
        // A closed local port stands for "no network", and an empty cache for a first run.
        .env("HF_ENDPOINT", "http://127.0.0.1:9")
        .env("HF_HOME", scratch_dir("empty-hf-home"));
    let out = run(command, "");
    assert_one_line_error(&out, "pass a local checkpoint directory");
}

/// A stand-in for the hub at `HF_ENDPOINT`: serves `files` as hf-hub asks for them (a ranged GET
/// for the metadata, then the body), 404 for anything else, and records every path requested.
fn stub_hub(files: Vec<(&'static str, Vec<u8>)>) -> (String, std::sync::mpsc::Receiver<String>) {
    use std::io::{BufRead, BufReader};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (requested, paths) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request = String::new();
            let _ = reader.read_line(&mut request);
            let mut from = 0;
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                if let Some(range) = line.to_ascii_lowercase().strip_prefix("range: bytes=") {
                    from = range.split('-').next().unwrap().trim().parse().unwrap_or(0);
                }
                line.clear();
            }
            let path = request.split(' ').nth(1).unwrap_or("").to_string();
            let _ = requested.send(path.clone());
            let file = files
                .iter()
                .enumerate()
                .find(|(_, (name, _))| path.ends_with(&format!("/resolve/main/{name}")));
            let response = match file {
                Some((i, (_, body))) => {
                    let part = &body[from.min(body.len())..];
                    let mut head = format!(
                        "HTTP/1.1 206 Partial Content\r\nx-repo-commit: {:040x}\r\netag: \"blob{i}\"\r\n\
                         Content-Range: bytes {from}-{}/{}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        7,
                        body.len().saturating_sub(1),
                        body.len(),
                        part.len()
                    )
                    .into_bytes();
                    head.extend_from_slice(part);
                    head
                }
                None => b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    .to_vec(),
            };
            let _ = stream.write_all(&response);
        }
    });
    (url, paths)
}

#[test]
fn a_hub_index_naming_a_shard_outside_the_repository_is_refused_before_any_download() {
    let model = tiny_model();
    let read = |name: &str| std::fs::read(model.join(name)).unwrap();
    let index = br#"{"metadata": {}, "weight_map": {"backbone.embeddings.weight": "x#/../../../escaped.safetensors"}}"#;
    let (url, paths) = stub_hub(vec![
        ("config.json", read("config.json")),
        ("tokenizer.json", read("tokenizer.json")),
        ("model.safetensors.index.json", index.to_vec()),
    ]);
    let home = scratch_dir("stub-hub-home");
    let mut command = example("generate");
    command
        .args(["--model", "stranger/evil", "--prompt", "hi"])
        .env("HF_ENDPOINT", &url)
        .env("HF_HOME", &home);
    let out = run(command, "");
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let last = stderr.lines().last().unwrap_or("");
    assert!(
        last.starts_with("error: ") && last.contains("shard name") && last.contains("escaped"),
        "{stderr}"
    );
    let requested: Vec<String> = paths.try_iter().collect();
    assert!(
        requested
            .iter()
            .any(|p| p.ends_with("model.safetensors.index.json")),
        "{requested:?}"
    );
    assert!(
        // The URL would end at the `#`: hf-hub would ask for `x` and write the file under the
        // name with its `..`s.
        !requested
            .iter()
            .any(|p| p.ends_with("/x") || p.contains("escaped") || p.contains("..")),
        "the hostile shard was requested: {requested:?}"
    );
    let outside = home.parent().unwrap().join("escaped.safetensors");
    assert!(!outside.exists(), "{} was written", outside.display());
}
