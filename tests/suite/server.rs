//! The serve example end to end: started on a free loopback port and driven by the official
//! `openai` Python client (tests/server/openai_client.py), its greedy text compared with the
//! generate example's. Needs `pip install openai prometheus-client` (`FALCON_MAMBA_PYTHON` names
//! another interpreter).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use falcon_mamba::core::{ChatTemplate, Message};
use serde_json::Value;

use crate::cli::example;
use crate::common::tiny_model;

const PROMPT: &str = "The quick brown fox";
const CHAT: &str = "What is a state space model?";
const END_OF_TURN: &str = "<|im_end|>";

/// A running serve example, killed when dropped.
struct Server {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    url: String,
}

impl Server {
    fn start(extra: &[&str]) -> Self {
        let mut child = example("serve")
            .args(["--model", &tiny_model().display().to_string()])
            .args(["--host", "127.0.0.1", "--port", "0"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let url = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("serve printed {line:?}"))
            .to_string();
        Server { child, url }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The Python interpreter with `openai` and `prometheus_client`, or a failure saying how to get
/// them.
pub fn python() -> Command {
    let python = std::env::var("FALCON_MAMBA_PYTHON").unwrap_or_else(|_| "python3".into());
    let check = Command::new(&python)
        .args(["-c", "import openai, prometheus_client"])
        .output();
    assert!(
        check.as_ref().is_ok_and(|o| o.status.success()),
        "the server tests need {python} with `pip install openai prometheus-client`: {check:?}"
    );
    Command::new(python)
}

/// The generate example's greedy text for `prompt`.
fn generate(prompt: &str, max_new_tokens: usize) -> String {
    let out = example("generate")
        .args(["--model", &tiny_model().display().to_string()])
        .args(["--prompt", prompt])
        .args(["--max-new-tokens", &max_new_tokens.to_string()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    text.strip_suffix('\n').unwrap_or(&text).to_string()
}

#[test]
fn openai_client_end_to_end() {
    let server = Server::start(&["--max-batch", "4"]);
    let model = tiny_model().display().to_string();
    let out = python()
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/server/openai_client.py"
        ))
        .args(["--base-url", &format!("{}/v1", server.url)])
        .args(["--model", &model, "--prompt", PROMPT, "--chat", CHAT])
        .args(["--max-tokens", "12", "--turns", "10"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: Value = serde_json::from_slice(&out.stdout).unwrap();
    let text = |key: &str| seen[key].as_str().unwrap_or_default().to_string();

    assert_eq!(seen["models"], serde_json::json!([model]));
    let expected = generate(PROMPT, 12);
    assert_eq!(text("completion"), expected);
    assert_eq!(text("completion_stream"), expected);
    assert_eq!(seen["completion_finish"], "length");
    assert_eq!(
        seen["completion_stream_finish"],
        serde_json::json!(["length"])
    );
    assert_eq!(seen["completion_usage"]["completion_tokens"], 12);
    if !seen["stopped"].is_null() {
        let cut = &expected[..expected.find(&text("stop")).unwrap()];
        assert_eq!(text("stopped"), cut, "text before the stop string");
        assert_eq!(seen["stopped_finish"], "stop");
    }

    // The chat route renders the template and ends a turn at its end-of-turn marker.
    let template = ChatTemplate::from_dir(tiny_model()).unwrap();
    let rendered = template
        .render(&[Message::new("user", CHAT)], true)
        .unwrap();
    let generated = generate(&rendered, 12);
    let expected_chat = generated.split(END_OF_TURN).next().unwrap();
    assert_eq!(text("chat"), expected_chat);
    assert_eq!(text("chat_stream"), expected_chat);

    for (case, answer) in seen["bad_requests"].as_object().unwrap() {
        let error = &answer["body"]["error"];
        assert_eq!(answer["status"], 400, "{case}: {answer}");
        assert_eq!(error["type"], "invalid_request_error", "{case}: {answer}");
        assert!(
            !error["message"].as_str().unwrap_or_default().is_empty(),
            "{case}: {answer}"
        );
    }

    // Every turn after the first resumes from the cached state: it feeds the new turn's tokens,
    // about as many each time, while the conversation grows.
    let turns = seen["turns"].as_array().unwrap();
    let fed =
        |t: &Value| t["prompt_tokens"].as_u64().unwrap() - t["cached_tokens"].as_u64().unwrap();
    let second = fed(&turns[1]);
    for turn in &turns[1..] {
        assert!(turn["cached_tokens"].as_u64().unwrap() > 0, "{turn}");
        assert!(
            fed(turn) <= second + 2,
            "{turn} fed more than turn 2's {second}"
        );
    }
    let last = turns.last().unwrap();
    assert!(
        last["prompt_tokens"].as_u64().unwrap() > 4 * fed(last),
        "{last}"
    );

    let metrics = &seen["metrics"];
    assert!(
        metrics["prefix_cache_hits_total"].as_f64().unwrap() >= 9.0,
        "{metrics}"
    );
    let errors = metrics[r#"falcon_mamba_requests_total{"endpoint": "chat", "status": "400"}"#]
        .as_f64()
        .unwrap_or(0.0);
    assert!(errors >= 6.0, "{metrics}");
    assert!(
        metrics["falcon_mamba_time_to_first_token_seconds_count"]
            .as_f64()
            .unwrap()
            >= 14.0,
        "{metrics}"
    );
}
