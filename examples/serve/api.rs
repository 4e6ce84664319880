//! The OpenAI wire format: request bodies checked field by field (a bad one is a 400 naming the
//! field, in OpenAI's error shape), and the response and stream-chunk bodies.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use falcon_mamba::core::Message;
use falcon_mamba::GenerationConfig;
use serde_json::{json, Map, Value};

use crate::engine::Usage;

/// Which endpoint a request came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `POST /v1/chat/completions`.
    Chat,
    /// `POST /v1/completions`.
    Completions,
}

impl Endpoint {
    /// The name in logs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Endpoint::Chat => "chat",
            Endpoint::Completions => "completions",
        }
    }
}

/// An error response: `{"error": {"message", "type", "param", "code"}}`.
#[derive(Debug)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    message: String,
    kind: &'static str,
    param: Option<String>,
    code: Option<&'static str>,
}

impl ApiError {
    /// A 400 about `param`.
    pub fn invalid(param: &str, message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            kind: "invalid_request_error",
            param: Some(param.to_string()).filter(|p| !p.is_empty()),
            code: None,
        }
    }

    /// A 400 for a field this server does not implement.
    fn unsupported(param: &str, what: &str) -> Self {
        ApiError {
            code: Some("unsupported_parameter"),
            ..Self::invalid(
                param,
                format!("{param}: {what} is not supported by this server"),
            )
        }
    }

    /// A 404 for a model this server does not serve.
    pub fn unknown_model(model: &str, served: &str) -> Self {
        ApiError {
            status: StatusCode::NOT_FOUND,
            message: format!("The model `{model}` does not exist; this server serves `{served}`"),
            kind: "invalid_request_error",
            param: Some("model".into()),
            code: Some("model_not_found"),
        }
    }

    /// 429: the queue is full.
    pub fn busy(limit: usize) -> Self {
        ApiError {
            status: StatusCode::TOO_MANY_REQUESTS,
            message: format!(
                "The server is at its limit of {limit} requests in flight; retry later"
            ),
            kind: "rate_limit_error",
            param: None,
            code: Some("rate_limit_exceeded"),
        }
    }

    /// 500.
    pub fn internal(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: message.into(),
            kind: "server_error",
            param: None,
            code: None,
        }
    }

    /// The JSON body.
    pub fn body(&self) -> Value {
        json!({"error": {
            "message": self.message,
            "type": self.kind,
            "param": self.param,
            "code": self.code,
        }})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body())).into_response()
    }
}

/// What a request asks for.
#[derive(Debug)]
pub enum Prompt {
    /// Chat messages, rendered through the model's chat template.
    Chat(Vec<Message>),
    /// A text prompt.
    Text(String),
}

/// A checked completion request.
#[derive(Debug)]
pub struct Request {
    /// The model named.
    pub model: String,
    /// Messages or text.
    pub prompt: Prompt,
    /// Sampling, stop ids and the token limit.
    pub config: GenerationConfig,
    /// Stop strings.
    pub stop: Vec<String>,
    /// Stream as server-sent events.
    pub stream: bool,
    /// Send a usage chunk before `[DONE]` (`stream_options.include_usage`).
    pub include_usage: bool,
}

/// The largest `max_tokens` a request may ask for.
pub const MAX_TOKENS_LIMIT: usize = 1 << 16;

/// Checks a request body. `defaults` holds the checkpoint's generation settings (stop ids,
/// sampling) that the request's fields override; `default_max_tokens` applies when it sets none.
pub fn parse(
    endpoint: Endpoint,
    body: &[u8],
    defaults: &GenerationConfig,
    default_max_tokens: usize,
) -> Result<Request, ApiError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid("", format!("the body is not valid JSON: {e}")))?;
    let Value::Object(fields) = value else {
        return Err(ApiError::invalid("", "the body must be a JSON object"));
    };
    let model = match fields.get("model") {
        Some(Value::String(m)) => m.clone(),
        Some(_) => return Err(ApiError::invalid("model", "model must be a string")),
        None => return Err(ApiError::invalid("model", "model is required")),
    };
    reject_unsupported(endpoint, &fields)?;
    let prompt = match endpoint {
        Endpoint::Chat => Prompt::Chat(messages(fields.get("messages"))?),
        Endpoint::Completions => Prompt::Text(text_prompt(fields.get("prompt"))?),
    };

    let mut config = defaults.clone();
    let max_tokens = ["max_completion_tokens", "max_tokens"]
        .iter()
        .find_map(|&name| fields.get(name).filter(|v| !v.is_null()).map(|v| (name, v)));
    config.max_new_tokens = match max_tokens {
        Some((name, v)) => match v.as_u64() {
            Some(n) if (1..=MAX_TOKENS_LIMIT as u64).contains(&n) => n as usize,
            _ => {
                return Err(ApiError::invalid(
                    name,
                    format!("{name} must be an integer from 1 to {MAX_TOKENS_LIMIT}, got {v}"),
                ))
            }
        },
        None => default_max_tokens,
    };
    if let Some(t) = number(&fields, "temperature")? {
        if !(0.0..=2.0).contains(&t) {
            return Err(ApiError::invalid(
                "temperature",
                format!("temperature must be between 0 and 2, got {t}"),
            ));
        }
        config = config.with_temperature(t as f32);
    }
    if let Some(p) = number(&fields, "top_p")? {
        if !(p > 0.0 && p <= 1.0) {
            return Err(ApiError::invalid(
                "top_p",
                format!("top_p must be in (0, 1], got {p}"),
            ));
        }
        config = config.with_top_p(p as f32);
    }
    match fields.get("seed") {
        None | Some(Value::Null) => {}
        Some(v) => match v.as_i64() {
            Some(seed) => config = config.with_seed(seed as u64),
            None => {
                return Err(ApiError::invalid(
                    "seed",
                    format!("seed must be an integer, got {v}"),
                ))
            }
        },
    }
    let stop = stop_strings(fields.get("stop"))?;
    let stream = match fields.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(v) => {
            return Err(ApiError::invalid(
                "stream",
                format!("stream must be a boolean, got {v}"),
            ))
        }
    };
    let include_usage = fields
        .get("stream_options")
        .and_then(|o| o.get("include_usage"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    config
        .validate()
        .map_err(|e| ApiError::invalid("", e.to_string()))?;
    Ok(Request {
        model,
        prompt,
        config,
        stop,
        stream,
        include_usage,
    })
}

/// OpenAI fields this server cannot honour: a 400 rather than a silently different answer.
fn reject_unsupported(endpoint: Endpoint, fields: &Map<String, Value>) -> Result<(), ApiError> {
    let set = |name: &str| fields.get(name).filter(|v| !v.is_null());
    if let Some(n) = set("n") {
        if n.as_u64() != Some(1) {
            return Err(ApiError::unsupported("n", "more than one choice"));
        }
    }
    if let Some(b) = set("best_of") {
        if b.as_u64() != Some(1) {
            return Err(ApiError::unsupported("best_of", "more than one candidate"));
        }
    }
    let logprobs = match endpoint {
        Endpoint::Chat => set("logprobs").is_some_and(|v| v != &Value::Bool(false)),
        Endpoint::Completions => set("logprobs").is_some(),
    };
    if logprobs || set("top_logprobs").is_some() {
        return Err(ApiError::unsupported(
            "logprobs",
            "returning log probabilities",
        ));
    }
    if set("echo").is_some_and(|v| v != &Value::Bool(false)) {
        return Err(ApiError::unsupported("echo", "echoing the prompt"));
    }
    if set("suffix").is_some() {
        return Err(ApiError::unsupported("suffix", "insertion"));
    }
    for name in ["tools", "functions", "tool_choice", "function_call"] {
        if set(name).is_some() {
            return Err(ApiError::unsupported(name, "tool calling"));
        }
    }
    for name in ["presence_penalty", "frequency_penalty"] {
        if set(name).is_some_and(|v| v.as_f64() != Some(0.0)) {
            return Err(ApiError::unsupported(name, "a non-zero penalty"));
        }
    }
    if set("logit_bias").is_some_and(|v| v.as_object().is_none_or(|o| !o.is_empty())) {
        return Err(ApiError::unsupported("logit_bias", "logit bias"));
    }
    if let Some(format) = set("response_format") {
        if format.get("type").and_then(Value::as_str) != Some("text") {
            return Err(ApiError::unsupported(
                "response_format",
                "structured output",
            ));
        }
    }
    Ok(())
}

/// A number field, absent or null as `None`.
fn number(fields: &Map<String, Value>, name: &str) -> Result<Option<f64>, ApiError> {
    match fields.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_f64()
            .map(Some)
            .ok_or_else(|| ApiError::invalid(name, format!("{name} must be a number, got {v}"))),
    }
}

/// `messages`: a non-empty list of `{role, content}` with roles system, user or assistant (and
/// `developer`, OpenAI's newer name for system); content a string or a list of text parts.
fn messages(value: Option<&Value>) -> Result<Vec<Message>, ApiError> {
    let list = match value {
        Some(Value::Array(list)) if !list.is_empty() => list,
        Some(Value::Array(_)) => return Err(ApiError::invalid("messages", "messages is empty")),
        Some(_) => return Err(ApiError::invalid("messages", "messages must be a list")),
        None => return Err(ApiError::invalid("messages", "messages is required")),
    };
    list.iter()
        .enumerate()
        .map(|(i, m)| {
            let param = format!("messages[{i}]");
            let role = match m.get("role").and_then(Value::as_str) {
                Some(r @ ("system" | "user" | "assistant")) => r,
                Some("developer") => "system",
                Some(other) => {
                    return Err(ApiError::invalid(
                        &format!("{param}.role"),
                        format!("unknown role `{other}`: expected system, user or assistant"),
                    ))
                }
                None => {
                    return Err(ApiError::invalid(
                        &format!("{param}.role"),
                        "role is required",
                    ))
                }
            };
            let content = match m.get("content") {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Array(parts)) => parts
                    .iter()
                    .map(
                        |p| match (p.get("type").and_then(Value::as_str), p.get("text")) {
                            (Some("text"), Some(Value::String(t))) => Ok(t.as_str()),
                            _ => Err(ApiError::unsupported(
                                &format!("{param}.content"),
                                "content other than text",
                            )),
                        },
                    )
                    .collect::<Result<String, _>>()?,
                _ => {
                    return Err(ApiError::invalid(
                        &format!("{param}.content"),
                        "content must be a string or a list of text parts",
                    ))
                }
            };
            Ok(Message::new(role, content))
        })
        .collect()
}

/// `prompt`: a non-empty string, or a list holding one.
fn text_prompt(value: Option<&Value>) -> Result<String, ApiError> {
    let text = match value {
        Some(Value::String(s)) => s,
        Some(Value::Array(list)) => match &list[..] {
            [Value::String(s)] => s,
            [] | [_] => return Err(ApiError::invalid("prompt", "prompt must be a string")),
            _ => {
                return Err(ApiError::unsupported(
                    "prompt",
                    "more than one prompt per request",
                ))
            }
        },
        Some(_) => return Err(ApiError::invalid("prompt", "prompt must be a string")),
        None => return Err(ApiError::invalid("prompt", "prompt is required")),
    };
    if text.is_empty() {
        return Err(ApiError::invalid("prompt", "prompt is empty"));
    }
    Ok(text.clone())
}

/// `stop`: a string or up to four strings, none empty.
fn stop_strings(value: Option<&Value>) -> Result<Vec<String>, ApiError> {
    let list: Vec<&Value> = match value {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(list)) => list.iter().collect(),
        Some(v) => vec![v],
    };
    if list.len() > 4 {
        return Err(ApiError::invalid("stop", "at most 4 stop strings"));
    }
    list.into_iter()
        .map(|v| match v {
            Value::String(s) if !s.is_empty() => Ok(s.clone()),
            _ => Err(ApiError::invalid(
                "stop",
                "stop strings must be non-empty strings",
            )),
        })
        .collect()
}

/// The fields every response and chunk of one completion share.
pub struct Envelope {
    /// `chatcmpl-…` or `cmpl-…`.
    pub id: String,
    /// Unix seconds.
    pub created: u64,
    /// The model's name.
    pub model: String,
    /// Which endpoint.
    pub endpoint: Endpoint,
}

impl Envelope {
    fn object(&self, object: &str, choice: Value, usage: Option<&Usage>) -> Value {
        let mut body = json!({
            "id": self.id,
            "object": object,
            "created": self.created,
            "model": self.model,
            "choices": if choice.is_null() { json!([]) } else { json!([choice]) },
        });
        if let Some(u) = usage {
            body["usage"] = json!({
                "prompt_tokens": u.prompt_tokens,
                "completion_tokens": u.completion_tokens,
                "total_tokens": u.prompt_tokens + u.completion_tokens,
                "prompt_tokens_details": {"cached_tokens": u.cached_tokens},
            });
        }
        body
    }

    /// The whole (non-streamed) response.
    pub fn response(&self, text: String, usage: &Usage) -> Value {
        match self.endpoint {
            Endpoint::Chat => self.object(
                "chat.completion",
                json!({
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "logprobs": null,
                    "finish_reason": usage.finish_reason,
                }),
                Some(usage),
            ),
            Endpoint::Completions => self.object(
                "text_completion",
                json!({
                    "index": 0,
                    "text": text,
                    "logprobs": null,
                    "finish_reason": usage.finish_reason,
                }),
                Some(usage),
            ),
        }
    }

    /// A stream chunk: the first (`role` only, chat), a piece of text, or the last (`finish`).
    pub fn chunk(&self, text: Option<&str>, finish: Option<&str>) -> Value {
        match self.endpoint {
            Endpoint::Chat => {
                let delta = match text {
                    Some(t) => json!({"content": t}),
                    None if finish.is_none() => json!({"role": "assistant", "content": ""}),
                    None => json!({}),
                };
                self.object(
                    "chat.completion.chunk",
                    json!({"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}),
                    None,
                )
            }
            Endpoint::Completions => self.object(
                "text_completion",
                json!({"index": 0, "text": text.unwrap_or(""), "logprobs": null, "finish_reason": finish}),
                None,
            ),
        }
    }

    /// The usage chunk (`stream_options.include_usage`): no choices.
    pub fn usage_chunk(&self, usage: &Usage) -> Value {
        let object = match self.endpoint {
            Endpoint::Chat => "chat.completion.chunk",
            Endpoint::Completions => "text_completion",
        };
        self.object(object, Value::Null, Some(usage))
    }
}
