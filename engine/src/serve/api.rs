//! The OpenAI request and response shapes: parsing a request body field by field (so that an
//! error names the field), and the JSON of responses, stream chunks and errors.
//!
//! Shapes follow OpenAI's API reference and llama.cpp's server (`server-task.cpp`):
//! `text_completion` / `chat.completion` objects with `choices`, `usage` and `finish_reason`;
//! streams of `data: {chunk}` events ending in `data: [DONE]`.

use serde_json::{json, Map, Value};

use crate::serve::codec::ChatMessage;

/// An error answered as `{"error": {"message", "type", "param", "code"}}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status.
    pub status: u16,
    /// What was wrong and what to do.
    pub message: String,
    /// OpenAI's error type: `invalid_request_error`, `authentication_error`, `server_error`.
    pub kind: &'static str,
    /// The request field at fault, if one is.
    pub param: Option<String>,
    /// A short machine-readable code, if one applies.
    pub code: Option<&'static str>,
}

impl ApiError {
    /// A 400 about field `param`.
    pub fn field(param: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            status: 400,
            message: message.into(),
            kind: "invalid_request_error",
            param: Some(param.into()),
            code: None,
        }
    }

    /// A 400 not about one field.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self {
            status: 400,
            message: message.into(),
            kind: "invalid_request_error",
            param: None,
            code: None,
        }
    }

    /// Another status, of type `server_error` (5xx) or `invalid_request_error`.
    pub fn status(status: u16, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            kind: if status >= 500 {
                "server_error"
            } else {
                "invalid_request_error"
            },
            param: None,
            code: None,
        }
    }

    /// With a `code`.
    pub fn with_code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }

    /// The JSON body.
    pub fn body(&self) -> Value {
        json!({
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }
        })
    }
}

/// What a completion prompt was given as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Prompt {
    /// Text, to be encoded (with BOS).
    Text(String),
    /// Token ids, used as they are.
    Tokens(Vec<u32>),
}

/// The generation settings common to both endpoints.
#[derive(Debug, Clone, PartialEq)]
pub struct Params {
    /// The most tokens to generate; `None`: the endpoint's default.
    pub max_tokens: Option<usize>,
    /// Sampling temperature (0 = greedy).
    pub temperature: f32,
    /// Nucleus sampling threshold (1 = off).
    pub top_p: f32,
    /// Top-k (0 = off).
    pub top_k: usize,
    /// Sampling seed; `None`: a fresh one.
    pub seed: Option<u64>,
    /// Stop strings.
    pub stop: Vec<String>,
    /// Answer as server-sent events.
    pub stream: bool,
    /// Streams: a last chunk with `usage`.
    pub include_usage: bool,
    /// Log-probabilities: `Some(n)` reports each token's and the `n` most likely alternatives.
    pub logprobs: Option<usize>,
    /// Generate through end tokens (llama.cpp's `ignore_eos`: fixed-length runs for benchmarks).
    pub ignore_eos: bool,
}

/// A parsed `POST /v1/completions` body.
#[derive(Debug, Clone, PartialEq)]
pub struct CompletionRequest {
    /// The prompt.
    pub prompt: Prompt,
    /// Generation settings.
    pub params: Params,
}

/// A parsed `POST /v1/chat/completions` body.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatRequest {
    /// The conversation.
    pub messages: Vec<ChatMessage>,
    /// Generation settings.
    pub params: Params,
}

/// Most stop strings a request may give (OpenAI's limit).
pub const MAX_STOP: usize = 4;
/// Most alternatives per token for `logprobs` (completions; OpenAI's limit).
pub const MAX_LOGPROBS: usize = 5;
/// Most alternatives per token for `top_logprobs` (chat; OpenAI's limit).
pub const MAX_TOP_LOGPROBS: usize = 20;

/// Parses a body as a JSON object.
pub fn parse_object(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(format!(
            "the request body is not valid JSON ({e}); send a JSON object"
        ))
        .with_code("invalid_json")
    })?;
    match value {
        Value::Object(map) => Ok(map),
        other => Err(ApiError::bad_request(format!(
            "the request body must be a JSON object, not {}",
            kind(&other)
        ))),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Field access with type checks; a JSON `null` counts as absent.
struct Fields<'a>(&'a Map<String, Value>);

impl<'a> Fields<'a> {
    fn get(&self, name: &str) -> Option<&'a Value> {
        self.0.get(name).filter(|v| !v.is_null())
    }

    fn wrong(name: &str, want: &str, got: &Value) -> ApiError {
        ApiError::field(name, format!("`{name}` must be {want}, not {}", kind(got)))
    }

    fn bool(&self, name: &str) -> Result<Option<bool>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(v) => Err(Self::wrong(name, "a boolean", v)),
        }
    }

    fn number(&self, name: &str, lo: f64, hi: f64) -> Result<Option<f64>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Number(n)) => {
                let x = n.as_f64().unwrap_or(f64::NAN);
                if (lo..=hi).contains(&x) {
                    Ok(Some(x))
                } else {
                    Err(ApiError::field(
                        name,
                        format!("`{name}` must be between {lo} and {hi}, got {n}"),
                    ))
                }
            }
            Some(v) => Err(Self::wrong(name, "a number", v)),
        }
    }

    fn integer(&self, name: &str) -> Result<Option<i64>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Number(n)) => match (n.as_i64(), n.as_u64()) {
                (Some(i), _) => Ok(Some(i)),
                (None, Some(u)) => Ok(Some(i64::try_from(u).unwrap_or(i64::MAX))),
                _ => Err(ApiError::field(
                    name,
                    format!("`{name}` must be an integer, got {n}"),
                )),
            },
            Some(v) => Err(Self::wrong(name, "an integer", v)),
        }
    }

    fn count(&self, name: &str, lo: i64, hi: i64) -> Result<Option<usize>, ApiError> {
        match self.integer(name)? {
            None => Ok(None),
            Some(i) if (lo..=hi).contains(&i) => Ok(Some(i as usize)),
            Some(i) => Err(ApiError::field(
                name,
                if hi == i64::MAX {
                    format!("`{name}` must be at least {lo}, got {i}")
                } else {
                    format!("`{name}` must be between {lo} and {hi}, got {i}")
                },
            )),
        }
    }

    fn string(&self, name: &str) -> Result<Option<&'a str>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(v) => Err(Self::wrong(name, "a string", v)),
        }
    }
}

/// Checks `model` against the served model's id.
fn check_model(f: &Fields, model_id: &str) -> Result<(), ApiError> {
    if let Some(m) = f.string("model")? {
        if m != model_id {
            return Err(ApiError::field(
                "model",
                format!("the model `{m}` does not exist here; this server serves `{model_id}` (GET /v1/models)"),
            )
            .with_code("model_not_found"));
        }
    }
    Ok(())
}

/// Fields this server does not implement: refused unless absent or at their neutral value, so
/// a client never silently gets something other than what it asked for.
fn refuse_unsupported(f: &Fields) -> Result<(), ApiError> {
    if let Some(n) = f.integer("n")? {
        if n != 1 {
            return Err(ApiError::field(
                "n",
                format!("`n` must be 1 (one choice per request), got {n}"),
            ));
        }
    }
    if let Some(n) = f.integer("best_of")? {
        if n != 1 {
            return Err(ApiError::field(
                "best_of",
                format!("`best_of` must be 1, got {n}"),
            ));
        }
    }
    if f.bool("echo")? == Some(true) {
        return Err(ApiError::field("echo", "`echo` is not supported"));
    }
    if f.string("suffix")?.is_some_and(|s| !s.is_empty()) {
        return Err(ApiError::field("suffix", "`suffix` is not supported"));
    }
    for name in ["presence_penalty", "frequency_penalty"] {
        if f.number(name, -2.0, 2.0)?.is_some_and(|x| x != 0.0) {
            return Err(ApiError::field(
                name,
                format!("`{name}` is not supported (only 0)"),
            ));
        }
    }
    if let Some(v) = f.get("logit_bias") {
        match v {
            Value::Object(m) if m.is_empty() => {}
            Value::Object(_) => {
                return Err(ApiError::field(
                    "logit_bias",
                    "`logit_bias` is not supported",
                ))
            }
            v => return Err(Fields::wrong("logit_bias", "an object", v)),
        }
    }
    if let Some(v) = f.get("tools") {
        match v {
            Value::Array(a) if a.is_empty() => {}
            Value::Array(_) => {
                return Err(ApiError::field("tools", "tool calls are not supported"))
            }
            v => return Err(Fields::wrong("tools", "an array", v)),
        }
    }
    if let Some(v) = f.get("response_format") {
        let ty = v.get("type").and_then(Value::as_str);
        if ty != Some("text") {
            return Err(ApiError::field(
                "response_format",
                "only `{\"type\": \"text\"}` is supported",
            ));
        }
    }
    Ok(())
}

fn parse_stop(f: &Fields) -> Result<Vec<String>, ApiError> {
    let list: Vec<String> = match f.get("stop") {
        None => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .enumerate()
            .map(|(i, v)| match v {
                Value::String(s) => Ok(s.clone()),
                v => Err(ApiError::field(
                    format!("stop[{i}]"),
                    format!("`stop` must hold strings; stop[{i}] is {}", kind(v)),
                )),
            })
            .collect::<Result<_, _>>()?,
        Some(v) => return Err(Fields::wrong("stop", "a string or an array of strings", v)),
    };
    if list.len() > MAX_STOP {
        return Err(ApiError::field(
            "stop",
            format!(
                "`stop` may hold at most {MAX_STOP} strings, got {}",
                list.len()
            ),
        ));
    }
    if list.iter().any(String::is_empty) {
        return Err(ApiError::field("stop", "`stop` strings must not be empty"));
    }
    Ok(list)
}

fn parse_params(f: &Fields, chat: bool) -> Result<Params, ApiError> {
    refuse_unsupported(f)?;
    let mut max_tokens = f.count("max_tokens", 1, i64::MAX)?;
    if chat {
        if let Some(m) = f.count("max_completion_tokens", 1, i64::MAX)? {
            max_tokens = Some(m);
        }
    }
    let temperature = f.number("temperature", 0.0, 2.0)?.unwrap_or(1.0) as f32;
    let top_p = f.number("top_p", 0.0, 1.0)?.unwrap_or(1.0) as f32;
    let top_k = f.count("top_k", 0, i64::MAX)?.unwrap_or(0);
    let seed = f.integer("seed")?.map(|s| s as u64);
    let stop = parse_stop(f)?;
    let stream = f.bool("stream")?.unwrap_or(false);
    let include_usage = match f.get("stream_options") {
        None => false,
        Some(Value::Object(o)) => Fields(o)
            .bool("include_usage")
            .map_err(|_| {
                ApiError::field(
                    "stream_options.include_usage",
                    "`stream_options.include_usage` must be a boolean",
                )
            })?
            .unwrap_or(false),
        Some(v) => return Err(Fields::wrong("stream_options", "an object", v)),
    };
    let logprobs = if chat {
        match f.bool("logprobs")? {
            Some(true) => Some(
                f.count("top_logprobs", 0, MAX_TOP_LOGPROBS as i64)?
                    .unwrap_or(0),
            ),
            _ => {
                if f.count("top_logprobs", 0, MAX_TOP_LOGPROBS as i64)?
                    .is_some_and(|n| n > 0)
                {
                    return Err(ApiError::field(
                        "top_logprobs",
                        "`top_logprobs` needs `logprobs: true`",
                    ));
                }
                None
            }
        }
    } else {
        f.count("logprobs", 0, MAX_LOGPROBS as i64)?
    };
    let ignore_eos = f.bool("ignore_eos")?.unwrap_or(false);
    Ok(Params {
        ignore_eos,
        max_tokens,
        temperature,
        top_p,
        top_k,
        seed,
        stop,
        stream,
        include_usage,
        logprobs,
    })
}

/// Token ids from a JSON array, each below `vocab`.
fn token_ids(a: &[Value], vocab: usize, param: &str) -> Result<Vec<u32>, ApiError> {
    a.iter()
        .enumerate()
        .map(|(i, v)| match v.as_u64() {
            Some(id) if (id as usize) < vocab => Ok(id as u32),
            _ => Err(ApiError::field(
                param,
                format!("`{param}` token {i} ({v}) is not a token id of this model's vocabulary (0..{vocab})"),
            )),
        })
        .collect()
}

/// Parses a completions body. `vocab` bounds token-id prompts.
pub fn completion_request(
    body: &Map<String, Value>,
    model_id: &str,
    vocab: usize,
) -> Result<CompletionRequest, ApiError> {
    let f = Fields(body);
    check_model(&f, model_id)?;
    let prompt = match f.get("prompt") {
        None => return Err(ApiError::field("prompt", "`prompt` is required")),
        Some(Value::String(s)) => Prompt::Text(s.clone()),
        Some(Value::Array(a)) if a.iter().all(Value::is_number) && !a.is_empty() => {
            Prompt::Tokens(token_ids(a, vocab, "prompt")?)
        }
        Some(Value::Array(a)) if a.len() == 1 => match &a[0] {
            Value::String(s) => Prompt::Text(s.clone()),
            Value::Array(ids) if !ids.is_empty() => {
                Prompt::Tokens(token_ids(ids, vocab, "prompt")?)
            }
            v => {
                return Err(Fields::wrong(
                    "prompt",
                    "a string, an array of token ids, or an array holding one of those",
                    v,
                ))
            }
        },
        Some(Value::Array(a)) if a.is_empty() => {
            return Err(ApiError::field(
                "prompt",
                "`prompt` must not be an empty array",
            ))
        }
        Some(Value::Array(_)) => {
            return Err(ApiError::field(
                "prompt",
                "`prompt` holds several prompts; send one per request (n = 1)",
            ))
        }
        Some(v) => {
            return Err(Fields::wrong(
                "prompt",
                "a string or an array of token ids",
                v,
            ))
        }
    };
    Ok(CompletionRequest {
        prompt,
        params: parse_params(&f, false)?,
    })
}

/// Parses a chat completions body.
pub fn chat_request(body: &Map<String, Value>, model_id: &str) -> Result<ChatRequest, ApiError> {
    let f = Fields(body);
    check_model(&f, model_id)?;
    let list = match f.get("messages") {
        None => return Err(ApiError::field("messages", "`messages` is required")),
        Some(Value::Array(a)) if a.is_empty() => {
            return Err(ApiError::field("messages", "`messages` must not be empty"))
        }
        Some(Value::Array(a)) => a,
        Some(v) => return Err(Fields::wrong("messages", "an array of messages", v)),
    };
    let mut messages = Vec::with_capacity(list.len());
    for (i, m) in list.iter().enumerate() {
        let Value::Object(m) = m else {
            return Err(ApiError::field(
                format!("messages[{i}]"),
                format!("messages[{i}] must be an object with `role` and `content`"),
            ));
        };
        let role = match m.get("role") {
            Some(Value::String(r)) => match r.as_str() {
                "system" | "developer" => "system",
                "user" => "user",
                "assistant" => "assistant",
                other => {
                    return Err(ApiError::field(
                        format!("messages[{i}].role"),
                        format!("messages[{i}].role `{other}` is not one of system, developer, user, assistant"),
                    ))
                }
            },
            _ => {
                return Err(ApiError::field(
                    format!("messages[{i}].role"),
                    format!("messages[{i}].role must be a string"),
                ))
            }
        };
        let param = format!("messages[{i}].content");
        let content = match m.get("content") {
            Some(Value::String(s)) => s.clone(),
            // An assistant turn that only called tools has no content.
            None | Some(Value::Null) if role == "assistant" => String::new(),
            Some(Value::Array(parts)) => {
                let mut text = String::new();
                for (j, p) in parts.iter().enumerate() {
                    match (
                        p.get("type").and_then(Value::as_str),
                        p.get("text").and_then(Value::as_str),
                    ) {
                        (Some("text"), Some(t)) => text.push_str(t),
                        _ => {
                            return Err(ApiError::field(
                                format!("{param}[{j}]"),
                                format!("{param}[{j}] must be {{\"type\": \"text\", \"text\": ...}} (only text parts are supported)"),
                            ))
                        }
                    }
                }
                text
            }
            _ => {
                return Err(ApiError::field(
                    param.clone(),
                    format!("{param} must be a string or an array of text parts"),
                ))
            }
        };
        messages.push(ChatMessage {
            role: role.to_string(),
            content,
        });
    }
    Ok(ChatRequest {
        messages,
        params: parse_params(&f, true)?,
    })
}

/// `usage`.
pub fn usage(prompt: usize, completion: usize) -> Value {
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => unreachable!(),
        }
    }

    fn completion(v: Value) -> Result<CompletionRequest, ApiError> {
        completion_request(&obj(v), "m", 100)
    }

    #[test]
    fn defaults_follow_openai() {
        let r = completion(json!({"prompt": "hi"})).unwrap();
        assert_eq!(r.prompt, Prompt::Text("hi".into()));
        let p = r.params;
        assert_eq!(
            (p.max_tokens, p.temperature, p.top_p, p.top_k),
            (None, 1.0, 1.0, 0)
        );
        assert!(!p.stream && !p.include_usage && p.stop.is_empty() && p.logprobs.is_none());
    }

    #[test]
    fn every_field_is_read() {
        let r = completion(json!({
            "model": "m", "prompt": [[1, 5, 99]], "max_tokens": 7, "temperature": 0,
            "top_p": 0.5, "top_k": 3, "seed": 42, "stop": ["a", "b"], "stream": true,
            "stream_options": {"include_usage": true}, "logprobs": 2, "n": 1, "user": "x"
        }))
        .unwrap();
        assert_eq!(r.prompt, Prompt::Tokens(vec![1, 5, 99]));
        let p = r.params;
        assert_eq!(p.max_tokens, Some(7));
        assert_eq!(
            (p.temperature, p.top_p, p.top_k, p.seed),
            (0.0, 0.5, 3, Some(42))
        );
        assert_eq!(p.stop, vec!["a".to_string(), "b".to_string()]);
        assert!(p.stream && p.include_usage);
        assert_eq!(p.logprobs, Some(2));
    }

    /// Each bad request names its field.
    #[test]
    fn errors_name_the_field() {
        let cases = [
            (json!({}), "prompt"),
            (json!({"prompt": 5}), "prompt"),
            (json!({"prompt": ["a", "b"]}), "prompt"),
            (json!({"prompt": [1, 100]}), "prompt"),
            (json!({"prompt": "x", "model": "other"}), "model"),
            (json!({"prompt": "x", "max_tokens": 0}), "max_tokens"),
            (json!({"prompt": "x", "max_tokens": -3}), "max_tokens"),
            (json!({"prompt": "x", "max_tokens": "5"}), "max_tokens"),
            (json!({"prompt": "x", "max_tokens": 2.5}), "max_tokens"),
            (json!({"prompt": "x", "temperature": "hot"}), "temperature"),
            (json!({"prompt": "x", "temperature": 3}), "temperature"),
            (json!({"prompt": "x", "top_p": 1.5}), "top_p"),
            (json!({"prompt": "x", "top_k": -1}), "top_k"),
            (json!({"prompt": "x", "n": 2}), "n"),
            (json!({"prompt": "x", "stop": 3}), "stop"),
            (json!({"prompt": "x", "stop": ["a", 1]}), "stop[1]"),
            (
                json!({"prompt": "x", "stop": ["a", "b", "c", "d", "e"]}),
                "stop",
            ),
            (json!({"prompt": "x", "stream": "yes"}), "stream"),
            (json!({"prompt": "x", "logprobs": 9}), "logprobs"),
            (json!({"prompt": "x", "echo": true}), "echo"),
            (
                json!({"prompt": "x", "presence_penalty": 1}),
                "presence_penalty",
            ),
            (json!({"prompt": "x", "seed": "s"}), "seed"),
        ];
        for (body, field) in cases {
            let e = completion(body.clone()).unwrap_err();
            assert_eq!(e.status, 400, "{body}");
            assert_eq!(e.param.as_deref(), Some(field), "{body}: {}", e.message);
            assert_eq!(e.body()["error"]["param"], json!(field));
        }
    }

    #[test]
    fn chat_messages_are_checked_and_parts_joined() {
        let r = chat_request(
            &obj(json!({"messages": [
                {"role": "developer", "content": "sys"},
                {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
                {"role": "assistant", "content": null},
            ], "logprobs": true, "top_logprobs": 3, "max_completion_tokens": 9})),
            "m",
        )
        .unwrap();
        let roles: Vec<&str> = r.messages.iter().map(|m| m.role.as_str()).collect();
        assert_eq!(roles, ["system", "user", "assistant"]);
        assert_eq!(r.messages[1].content, "ab");
        assert_eq!(r.params.logprobs, Some(3));
        assert_eq!(r.params.max_tokens, Some(9));
        for (body, field) in [
            (json!({}), "messages"),
            (json!({"messages": []}), "messages"),
            (json!({"messages": "hi"}), "messages"),
            (json!({"messages": [5]}), "messages[0]"),
            (
                json!({"messages": [{"role": "robot", "content": "x"}]}),
                "messages[0].role",
            ),
            (
                json!({"messages": [{"role": "user", "content": 5}]}),
                "messages[0].content",
            ),
            (
                json!({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}),
                "messages[0].content[0]",
            ),
            (
                json!({"messages": [{"role": "user", "content": "x"}], "top_logprobs": 2}),
                "top_logprobs",
            ),
        ] {
            let e = chat_request(&obj(body.clone()), "m").unwrap_err();
            assert_eq!(e.param.as_deref(), Some(field), "{body}: {}", e.message);
        }
    }

    #[test]
    fn bodies_that_are_not_objects_are_refused() {
        assert_eq!(
            parse_object(b"{\"a\":").unwrap_err().code,
            Some("invalid_json")
        );
        assert!(parse_object(b"[1]")
            .unwrap_err()
            .message
            .contains("an array"));
        assert!(parse_object(b"{}").is_ok());
    }
}
