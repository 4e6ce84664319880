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
