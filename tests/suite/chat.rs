//! Chat prompts against transformers' `apply_chat_template` on tiny-falcon-vocab.

use falcon_mamba::core::{ChatTemplate, Message};
use falcon_mamba::Tokenizer;

use crate::common::{scratch_dir, tiny_model};

fn expected() -> serde_json::Value {
    let dir = tiny_model();
    serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap()
}

fn check(template: &ChatTemplate) {
    let expected = expected();
    let messages: Vec<Message> = serde_json::from_value(expected["chat_messages"].clone()).unwrap();
    let prompt = template.render(&messages, true).unwrap();
    assert_eq!(prompt, expected["chat_prompt"].as_str().unwrap());
    let tokenizer = Tokenizer::from_file(tiny_model().join("tokenizer.json")).unwrap();
    let ids: Vec<u32> = serde_json::from_value(expected["chat_prompt_ids"].clone()).unwrap();
    assert_eq!(tokenizer.encode(&prompt).unwrap(), ids);
}

#[test]
fn chat_template_jinja_renders_like_transformers() {
    let template = ChatTemplate::from_dir(tiny_model()).unwrap();
    assert!(template.source().ends_with("chat_template.jinja"));
    check(&template);
}

#[test]
fn chat_template_inside_tokenizer_config_renders_like_transformers() {
    let source = tiny_model();
    let jinja = std::fs::read_to_string(source.join("chat_template.jinja")).unwrap();
    let mut config: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(source.join("tokenizer_config.json")).unwrap(),
    )
    .unwrap();
    config["chat_template"] = jinja.into();
    let dir = scratch_dir("chat-template-in-config");
    std::fs::write(dir.join("tokenizer_config.json"), config.to_string()).unwrap();
    let template = ChatTemplate::from_dir(&dir).unwrap();
    assert!(template.source().ends_with("tokenizer_config.json"));
    check(&template);
}

#[test]
fn without_a_template_chatml_is_used() {
    let template = ChatTemplate::from_dir(scratch_dir("no-template")).unwrap();
    check(&template);
}
