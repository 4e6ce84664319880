//! Chat prompts: the checkpoint's Jinja chat template (`chat_template.jinja`, or `chat_template`
//! in `tokenizer_config.json`), rendered like transformers' `apply_chat_template`, with Falcon
//! Mamba instruct's ChatML format as the fallback.

use std::path::{Path, PathBuf};

use minijinja::{context, Environment, ErrorKind};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::text_file::{read_text, MAX_CONFIG_BYTES};

/// The format falcon-mamba-7b-instruct uses.
pub const CHATML_TEMPLATE: &str = "{% for message in messages %}<|im_start|>{{ message['role'] }}\n\
{{ message['content'] }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The text.
    pub content: String,
}

impl Message {
    /// A message with this role and text.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Message {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// A compiled chat template.
pub struct ChatTemplate {
    env: Environment<'static>,
    source: PathBuf,
    bos_token: String,
    eos_token: String,
}

impl ChatTemplate {
    /// The checkpoint's template: `dir/chat_template.jinja` if present, else the `chat_template`
    /// entry of `dir/tokenizer_config.json`, else [`CHATML_TEMPLATE`].
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let config_path = dir.join("tokenizer_config.json");
        let config: Value = if config_path.is_file() {
            let text = read_text(&config_path, MAX_CONFIG_BYTES)?;
            serde_json::from_str(&text).map_err(|source| Error::Json {
                path: config_path.clone(),
                source,
            })?
        } else {
            Value::Null
        };
        let special = |key: &str| match &config[key] {
            Value::String(s) => s.clone(),
            Value::Object(o) => o
                .get("content")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
            _ => String::new(),
        };
        let (bos_token, eos_token) = (special("bos_token"), special("eos_token"));

        let jinja = dir.join("chat_template.jinja");
        let (source, path) = if jinja.is_file() {
            (read_text(&jinja, MAX_CONFIG_BYTES)?, jinja)
        } else {
            match &config["chat_template"] {
                Value::String(s) => (s.clone(), config_path),
                // Several named templates: transformers uses the one called "default".
                Value::Array(list) => {
                    let default = list
                        .iter()
                        .find(|t| t["name"] == "default")
                        .and_then(|t| t["template"].as_str())
                        .ok_or_else(|| Error::Template {
                            path: config_path.clone(),
                            reason: "chat_template is a list without a \"default\" entry".into(),
                        })?;
                    (default.to_string(), config_path)
                }
                _ => (
                    CHATML_TEMPLATE.to_string(),
                    PathBuf::from("<built-in ChatML>"),
                ),
            }
        };
        Self::new(source, path, bos_token, eos_token)
    }

    /// Compiles `source`; `path` names it in errors.
    pub fn new(
        source: String,
        path: PathBuf,
        bos_token: String,
        eos_token: String,
    ) -> Result<Self> {
        let mut env = Environment::new();
        // transformers renders with trim_blocks and lstrip_blocks.
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_fuel(Some(FUEL));
        env.add_function(
            "raise_exception",
            |message: String| -> std::result::Result<String, minijinja::Error> {
                Err(minijinja::Error::new(ErrorKind::InvalidOperation, message))
            },
        );
        env.add_template_owned("chat", source)
            .map_err(|e| Error::Template {
                path: path.clone(),
                reason: e.to_string(),
            })?;
        Ok(ChatTemplate {
            env,
            source: path,
            bos_token,
            eos_token,
        })
    }

    /// Renders a conversation; `add_generation_prompt` appends the assistant turn's opening.
    ///
    /// A render is bounded: it runs at most a few million template instructions (a template
    /// looping over huge ranges is an error within a second) and writes at most 16 MiB. What
    /// minijinja cannot bound is a value a template builds without writing it: a string doubled
    /// in a loop costs one instruction per doubling, so such a template can use memory until the
    /// allocator fails. Render templates from untrusted repositories only after reading them, or
    /// pass your own ([`ChatTemplate::new`]).
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        let template = self.env.get_template("chat").map_err(|e| self.error(e))?;
        let mut out = CappedText::default();
        let rendered = template.render_captured_to(
            context! {
                messages => messages,
                add_generation_prompt => add_generation_prompt,
                bos_token => self.bos_token,
                eos_token => self.eos_token,
            },
            &mut out,
        );
        if out.over {
            return Err(Error::Template {
                path: self.source.clone(),
                reason: format!("the rendered text passes {MAX_RENDERED} bytes"),
            });
        }
        rendered.map_err(|e| self.error(e))?;
        String::from_utf8(out.bytes).map_err(|_| Error::Template {
            path: self.source.clone(),
            reason: "the rendered text is not UTF-8".into(),
        })
    }

    /// Where the template came from.
    pub fn source(&self) -> &Path {
        &self.source
    }

    fn error(&self, e: minijinja::Error) -> Error {
        Error::Template {
            path: self.source.clone(),
            reason: e.to_string(),
        }
    }
}

/// Template instructions one render may run: real chat templates take thousands for a long
/// conversation; a hostile one (loops over huge ranges) stops here, in well under a second.
const FUEL: u64 = 5_000_000;

/// Bytes one render may write.
const MAX_RENDERED: usize = 16 << 20;

/// A render's output, refused past [`MAX_RENDERED`] bytes.
#[derive(Default)]
struct CappedText {
    bytes: Vec<u8>,
    over: bool,
}

impl std::io::Write for CappedText {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.bytes.len() + buf.len() > MAX_RENDERED {
            self.over = true;
            return Err(std::io::Error::other("rendered text too long"));
        }
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_templates_stop_with_an_error() {
        for source in [
            "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
            "{% set s = namespace(t='xx') %}{% for i in range(64) %}{% set s.t = s.t ~ s.t %}\
             {{ s.t }}{% endfor %}",
        ] {
            let t = ChatTemplate::new(
                source.into(),
                "evil.jinja".into(),
                String::new(),
                String::new(),
            )
            .unwrap();
            let start = std::time::Instant::now();
            match t.render(&[Message::new("user", "hi")], true) {
                Err(Error::Template { path, .. }) => assert_eq!(path, Path::new("evil.jinja")),
                other => panic!("{source}: {other:?}"),
            }
            assert!(start.elapsed().as_secs() < 5, "{source}");
        }
    }

    #[test]
    fn chatml_fallback_renders_turns_and_the_generation_prompt() {
        let t = ChatTemplate::new(
            CHATML_TEMPLATE.into(),
            "t".into(),
            String::new(),
            String::new(),
        )
        .unwrap();
        let text = t
            .render(
                &[
                    Message::new("user", "Hi"),
                    Message::new("assistant", "Hello"),
                ],
                true,
            )
            .unwrap();
        assert_eq!(
            text,
            "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn template_errors_name_the_source() {
        let e = ChatTemplate::new(
            "{% if %}".into(),
            "bad.jinja".into(),
            String::new(),
            String::new(),
        )
        .err()
        .unwrap();
        assert!(e.to_string().contains("bad.jinja"), "{e}");
        let t = ChatTemplate::new(
            "{{ raise_exception('roles must alternate') }}".into(),
            "t.jinja".into(),
            String::new(),
            String::new(),
        )
        .unwrap();
        let e = t.render(&[], false).unwrap_err();
        assert!(e.to_string().contains("roles must alternate"), "{e}");
    }
}
