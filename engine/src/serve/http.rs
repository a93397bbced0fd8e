//! The HTTP side: routes, authentication, request handling, streaming.
//!
//! A handler parses and checks the request, encodes the prompt (on a blocking thread: a long
//! prompt takes a while), takes an admission permit (slots + queue; none left → 503 at once),
//! submits a [`Job`] to the engine and turns the job's events into the response: one JSON
//! object, or one server-sent event per token. Text is decoded here, not on the engine thread,
//! and stop strings are matched here; dropping the event receiver (a stop string met, or the
//! client gone) is what tells the engine to free the slot.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as Sse, Sse as SseBody};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::{json, Value};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

use crate::decode::sampler::SamplerConfig;
use crate::serve::api::{self, ApiError, Params, Prompt};
use crate::serve::codec::{ChatFormat, TextCodec};
use crate::serve::engine::{EngineHandle, Event, Finish, Job};
use crate::serve::metrics::Metrics;
use crate::serve::stop::StopMatcher;
use crate::text::tokenizer::Utf8Stream;

/// What every handler shares.
pub struct AppState {
    /// The engine thread.
    pub engine: EngineHandle,
    /// The model's tokenizer.
    pub codec: Arc<dyn TextCodec>,
    /// The chat template.
    pub chat: Arc<dyn ChatFormat>,
    /// The model's name in requests and `/v1/models`.
    pub model_id: String,
    /// Positions per slot.
    pub ctx: usize,
    /// Admission: `parallel + queue` permits; a request holds one until its answer is sent.
    pub permits: Arc<Semaphore>,
    /// Slots.
    pub parallel: usize,
    /// Queue length.
    pub queue: usize,
    /// Counters for `/metrics`.
    pub metrics: Arc<Metrics>,
    /// `Authorization: Bearer` key required on every endpoint but `/health`.
    pub api_key: Option<String>,
    /// Unix time the server started (the model's `created`).
    pub created: u64,
    /// Set on SIGTERM / Ctrl-C: new requests get 503.
    pub shutting_down: AtomicBool,
    next_id: AtomicU64,
}

impl AppState {
    /// Shared state for the handlers.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        engine: EngineHandle,
        codec: Arc<dyn TextCodec>,
        chat: Arc<dyn ChatFormat>,
        model_id: String,
        ctx: usize,
        parallel: usize,
        queue: usize,
        metrics: Arc<Metrics>,
        api_key: Option<String>,
    ) -> Self {
        Self {
            engine,
            codec,
            chat,
            model_id,
            ctx,
            permits: Arc::new(Semaphore::new(parallel + queue)),
            parallel,
            queue,
            metrics,
            api_key,
            created: now(),
            shutting_down: AtomicBool::new(false),
            next_id: AtomicU64::new(1),
        }
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The routes, with authentication, the body size limit and panic catching.
pub fn router(state: Arc<AppState>, body_limit: usize) -> Router {
    Router::new()
        .route("/v1/completions", post(completions))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/models", get(models))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), authenticate))
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(on_panic))
        .with_state(state)
}

fn endpoint_of(path: &str) -> &'static str {
    match path {
        "/v1/completions" => "completions",
        "/v1/chat/completions" => "chat_completions",
        "/v1/models" => "models",
        "/health" => "health",
        "/metrics" => "metrics",
        _ => "other",
    }
}

/// An error as a response.
pub fn error_response(e: &ApiError) -> Response {
    let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut r = (status, axum::Json(e.body())).into_response();
    if e.status == 503 {
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    r
}

fn on_panic(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    error_response(&ApiError::status(
        500,
        "internal error while handling the request; the server goes on, retry it",
    ))
}

/// Constant-time comparison, so the key cannot be guessed byte by byte from response times.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn authenticate(State(st): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    if let Some(key) = &st.api_key {
        let path = req.uri().path();
        if path != "/health" {
            let given = req
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "));
            if !given.is_some_and(|g| same(g.trim().as_bytes(), key.as_bytes())) {
                st.metrics.request(endpoint_of(path), 401);
                let mut r = error_response(&ApiError {
                    status: 401,
                    message: "missing or wrong API key: send the header `Authorization: Bearer KEY` with the key the server was started with (--api-key)".into(),
                    kind: "invalid_request_error",
                    param: None,
                    code: Some("invalid_api_key"),
                });
                r.headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                return r;
            }
        }
    }
    next.run(req).await
}

async fn not_found(req: Request) -> Response {
    error_response(&ApiError::status(
        404,
        format!(
            "no endpoint {} {}; the endpoints are POST /v1/completions, POST /v1/chat/completions, GET /v1/models, GET /health, GET /metrics",
            req.method(),
            req.uri().path()
        ),
    ))
}

async fn method_not_allowed(req: Request) -> Response {
    error_response(&ApiError::status(
        405,
        format!("{} is not allowed on {}", req.method(), req.uri().path()),
    ))
}

async fn health(State(st): State<Arc<AppState>>) -> Response {
    st.metrics.request("health", 200);
    let status = if st.shutting_down.load(Relaxed) {
        "shutting down"
    } else {
        "ok"
    };
    axum::Json(json!({"status": status})).into_response()
}

async fn metrics(State(st): State<Arc<AppState>>) -> Response {
    st.metrics.request("metrics", 200);
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        st.metrics.render(),
    )
        .into_response()
}

async fn models(State(st): State<Arc<AppState>>) -> Response {
    st.metrics.request("models", 200);
    axum::Json(json!({
        "object": "list",
        "data": [{
            "id": st.model_id,
            "object": "model",
            "created": st.created,
            "owned_by": "baremetal",
            "meta": {
                "vocab_size": st.codec.vocab_size(),
                "ctx_per_slot": st.ctx,
                "slots": st.parallel,
                "queue": st.queue,
                "chat_template": st.chat.name(),
            },
        }],
    }))
    .into_response()
}

/// Which endpoint a generation answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Completion,
    Chat,
}

impl Kind {
    fn endpoint(self) -> &'static str {
        match self {
            Self::Completion => "completions",
            Self::Chat => "chat_completions",
        }
    }
}

async fn completions(
    State(st): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let r = match completion_job(&st, body).await {
        Ok((prompt, params)) => generate(st.clone(), Kind::Completion, prompt, params).await,
        Err(e) => Err(e),
    };
    respond(&st, Kind::Completion, r)
}

async fn chat_completions(
    State(st): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let r = match chat_job(&st, body).await {
        Ok((prompt, params)) => generate(st.clone(), Kind::Chat, prompt, params).await,
        Err(e) => Err(e),
    };
    respond(&st, Kind::Chat, r)
}

fn respond(st: &AppState, kind: Kind, r: Result<Response, ApiError>) -> Response {
    let r = r.unwrap_or_else(|e| error_response(&e));
    st.metrics.request(kind.endpoint(), r.status().as_u16());
    r
}

fn body_bytes(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|e| {
        let status = e.status().as_u16();
        if status == 413 {
            ApiError::status(
                413,
                format!(
                    "the request body is too large ({e}); the server's limit is set by --max-body"
                ),
            )
        } else {
            ApiError::status(status, format!("the request body could not be read: {e}"))
        }
    })
}

async fn completion_job(
    st: &Arc<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(Vec<u32>, Params), ApiError> {
    let body = body_bytes(body)?;
    let map = api::parse_object(&body)?;
    let req = api::completion_request(&map, &st.model_id, st.codec.vocab_size())?;
    let tokens = match req.prompt {
        Prompt::Tokens(t) => t,
        Prompt::Text(text) => encode(st, text, false, "prompt").await?,
    };
    check_length(st, &tokens, "prompt")?;
    Ok((tokens, req.params))
}

async fn chat_job(
    st: &Arc<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(Vec<u32>, Params), ApiError> {
    let body = body_bytes(body)?;
    let map = api::parse_object(&body)?;
    let mut req = api::chat_request(&map, &st.model_id)?;
    for m in st.chat.end_markers() {
        if !req.params.stop.iter().any(|s| s == m) {
            req.params.stop.push(m.to_string());
        }
    }
    // Rendering runs a template (bounded, but not instant): off the async workers, like encoding.
    let (chat, codec, ctx) = (st.chat.clone(), st.codec.clone(), st.ctx);
    let messages = req.messages;
    let tokens = tokio::task::spawn_blocking(move || {
        let text = chat
            .render(&messages, codec.as_ref())
            .map_err(|e| ApiError::field("messages", e.0))?;
        let at_least = text.len() / codec.max_piece_bytes();
        if at_least > ctx {
            return Ok(Err(at_least));
        }
        Ok(Ok(codec.encode(&text, true)))
    })
    .await
    .map_err(|_| ApiError::status(500, "rendering the chat template failed"))?;
    let tokens = match tokens {
        Ok(Ok(t)) => t,
        Ok(Err(at_least)) => return Err(too_long(st, &format!("at least {at_least}"), "messages")),
        Err(e) => return Err(e),
    };
    check_length(st, &tokens, "messages")?;
    Ok((tokens, req.params))
}

/// `tokens`: the prompt's length, or a lower bound for it (`at least`).
fn too_long(st: &AppState, tokens: &str, param: &str) -> ApiError {
    ApiError::field(
        param,
        format!(
            "the prompt is {tokens} tokens but a slot's context holds {} (--ctx-per-slot); shorten it",
            st.ctx
        ),
    )
    .with_code("context_length_exceeded")
}

fn check_length(st: &AppState, tokens: &[u32], param: &str) -> Result<(), ApiError> {
    if tokens.len() > st.ctx {
        return Err(too_long(st, &tokens.len().to_string(), param));
    }
    Ok(())
}

/// Encodes on a blocking thread; text that cannot fit the context is refused before encoding.
async fn encode(
    st: &Arc<AppState>,
    text: String,
    special: bool,
    param: &str,
) -> Result<Vec<u32>, ApiError> {
    let at_least = text.len() / st.codec.max_piece_bytes();
    if at_least > st.ctx {
        return Err(too_long(st, &format!("at least {at_least}"), param));
    }
    let codec = st.codec.clone();
    tokio::task::spawn_blocking(move || codec.encode(&text, special))
        .await
        .map_err(|_| ApiError::status(500, "encoding the prompt failed"))
}

/// Submits the job and answers: a JSON object, or a stream of events.
async fn generate(
    st: Arc<AppState>,
    kind: Kind,
    prompt: Vec<u32>,
    params: Params,
) -> Result<Response, ApiError> {
    if st.shutting_down.load(Relaxed) {
        return Err(ApiError::status(503, "the server is shutting down"));
    }
    let permit = st.permits.clone().try_acquire_owned().map_err(|_| {
        ApiError::status(
            503,
            format!(
                "the server is busy: all {} slots are in use and {} requests are already waiting; retry later",
                st.parallel, st.queue
            ),
        )
        .with_code("server_busy")
    })?;
    // The last generated token is never fed, so a prompt of P tokens leaves room for ctx - P + 1.
    let room = st.ctx + 1 - prompt.len();
    let max_tokens = match (params.max_tokens, kind) {
        (Some(m), _) => m.min(room),
        (None, Kind::Completion) => 16.min(room),
        (None, Kind::Chat) => room,
    };
    let seed = params.seed.unwrap_or_else(|| {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        nanos ^ st.next_id.load(Relaxed).wrapping_mul(0x9E37_79B9_7F4A_7C15)
    });
    let sampler = SamplerConfig {
        temperature: params.temperature,
        top_p: params.top_p,
        top_k: params.top_k,
        seed,
    };
    let (tx, rx) = mpsc::unbounded_channel();
    let last_prompt_token = *prompt.last().expect("prompts are never empty");
    let prompt_tokens = prompt.len();
    st.engine
        .submit(Job {
            prompt,
            max_tokens,
            sampler,
            logprobs: params.logprobs,
            ignore_eos: params.ignore_eos,
            events: tx,
        })
        .map_err(|e| ApiError::status(500, e.to_string()))?;
    let id = st.next_id.fetch_add(1, Relaxed);
    let gen = Generation {
        st: st.clone(),
        kind,
        id: match kind {
            Kind::Completion => format!("cmpl-{id:016x}"),
            Kind::Chat => format!("chatcmpl-{id:016x}"),
        },
        created: now(),
        rx,
        prev: last_prompt_token,
        utf8: Utf8Stream::new(),
        stop: StopMatcher::new(params.stop.clone()),
        piece: String::new(),
        prompt_tokens,
        completion_tokens: 0,
        logprobs: params.logprobs,
        _permit: permit,
    };
    if params.stream {
        Ok(stream(gen, params.include_usage))
    } else {
        whole(gen).await
    }
}

/// One request's generation as the handler sees it.
struct Generation {
    st: Arc<AppState>,
    kind: Kind,
    id: String,
    created: u64,
    rx: mpsc::UnboundedReceiver<Event>,
    prev: u32,
    utf8: Utf8Stream,
    stop: StopMatcher,
    /// Scratch for one token's text.
    piece: String,
    prompt_tokens: usize,
    completion_tokens: usize,
    logprobs: Option<usize>,
    /// Held until the answer is complete: admission counts requests, not slots.
    _permit: OwnedSemaphorePermit,
}

/// What the next engine event means for the answer.
enum Step {
    /// Text released by this token (maybe empty), with its log-probability entry.
    Text(String, Option<Value>),
    /// The generation is over: the text still held back, and why.
    End(String, Finish),
    /// The engine failed the job.
    Failed(ApiError),
}

impl Generation {
    async fn next(&mut self) -> Step {
        match self.rx.recv().await {
            Some(Event::Token { id, logprob, top }) => {
                self.completion_tokens += 1;
                let entry = logprob.map(|lp| self.logprob_entry(id, lp, &top));
                let bytes = self.st.codec.piece(self.prev, id);
                self.prev = id;
                self.piece.clear();
                self.utf8.push(bytes, &mut self.piece);
                let mut out = String::new();
                if self.stop.push(&self.piece, &mut out) {
                    // Dropping the receiver frees the slot at the engine's next step.
                    self.rx.close();
                    return Step::End(out, Finish::Stop);
                }
                Step::Text(out, entry)
            }
            Some(Event::Done {
                finish,
                prompt_tokens,
                completion_tokens,
            }) => {
                self.prompt_tokens = prompt_tokens;
                self.completion_tokens = completion_tokens;
                self.piece.clear();
                self.utf8.finish(&mut self.piece);
                let mut out = String::new();
                if self.stop.push(&self.piece, &mut out) {
                    return Step::End(out, Finish::Stop);
                }
                self.stop.finish(&mut out);
                Step::End(out, finish)
            }
            Some(Event::Failed { status, message }) => {
                Step::Failed(ApiError::status(status, message))
            }
            None => Step::Failed(ApiError::status(
                500,
                "the engine dropped the request (an internal error); retry it",
            )),
        }
    }

    fn token_text(&self, id: u32) -> (String, Vec<u8>) {
        let bytes = self.st.codec.piece(self.prev, id).to_vec();
        (String::from_utf8_lossy(&bytes).into_owned(), bytes)
    }

    /// The log-probability entry of a token in the endpoint's shape.
    fn logprob_entry(&self, id: u32, logprob: f32, top: &[(u32, f32)]) -> Value {
        let (token, bytes) = self.token_text(id);
        match self.kind {
            Kind::Completion => {
                let mut alts = serde_json::Map::new();
                for &(t, lp) in top {
                    alts.insert(self.token_text(t).0, json!(lp));
                }
                json!({"token": token, "logprob": logprob, "top": alts})
            }
            Kind::Chat => {
                let alts: Vec<Value> = top
                    .iter()
                    .map(|&(t, lp)| {
                        let (s, b) = self.token_text(t);
                        json!({"token": s, "logprob": lp, "bytes": b})
                    })
                    .collect();
                json!({"token": token, "logprob": logprob, "bytes": bytes, "top_logprobs": alts})
            }
        }
    }

    fn usage(&self) -> Value {
        api::usage(self.prompt_tokens, self.completion_tokens)
    }

    /// Completions' `logprobs` object from per-token entries and text offsets.
    fn completion_logprobs(entries: &[Value], offsets: &[usize]) -> Value {
        json!({
            "tokens": entries.iter().map(|e| e["token"].clone()).collect::<Vec<_>>(),
            "token_logprobs": entries.iter().map(|e| e["logprob"].clone()).collect::<Vec<_>>(),
            "top_logprobs": entries.iter().map(|e| e["top"].clone()).collect::<Vec<_>>(),
            "text_offset": offsets,
        })
    }

    fn chunk(
        &self,
        text: &str,
        entry: Option<&Value>,
        finish: Option<Finish>,
        first: bool,
    ) -> Value {
        let finish = finish.map(Finish::as_str);
        match self.kind {
            Kind::Completion => {
                let logprobs =
                    entry.map(|e| Self::completion_logprobs(std::slice::from_ref(e), &[0]));
                json!({
                    "id": self.id, "object": "text_completion", "created": self.created,
                    "model": self.st.model_id,
                    "choices": [{"text": text, "index": 0, "logprobs": logprobs, "finish_reason": finish}],
                })
            }
            Kind::Chat => {
                let delta = if first {
                    json!({"role": "assistant", "content": text})
                } else if finish.is_some() && text.is_empty() {
                    json!({})
                } else {
                    json!({"content": text})
                };
                let logprobs = entry.map(|e| json!({"content": [e]}));
                json!({
                    "id": self.id, "object": "chat.completion.chunk", "created": self.created,
                    "model": self.st.model_id,
                    "choices": [{"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish}],
                })
            }
        }
    }
}

/// Waits for the whole generation and answers one JSON object.
async fn whole(mut g: Generation) -> Result<Response, ApiError> {
    let mut text = String::new();
    let mut entries = Vec::new();
    let mut offsets = Vec::new();
    let finish = loop {
        match g.next().await {
            Step::Text(t, entry) => {
                if let Some(e) = entry {
                    offsets.push(text.len());
                    entries.push(e);
                }
                text.push_str(&t);
            }
            Step::End(t, finish) => {
                text.push_str(&t);
                break finish;
            }
            Step::Failed(e) => return Err(e),
        }
    };
    let body = match g.kind {
        Kind::Completion => {
            let logprobs = g
                .logprobs
                .map(|_| Generation::completion_logprobs(&entries, &offsets));
            json!({
                "id": g.id, "object": "text_completion", "created": g.created,
                "model": g.st.model_id,
                "choices": [{"text": text, "index": 0, "logprobs": logprobs, "finish_reason": finish.as_str()}],
                "usage": g.usage(),
            })
        }
        Kind::Chat => {
            let logprobs = g.logprobs.map(|_| json!({"content": entries}));
            json!({
                "id": g.id, "object": "chat.completion", "created": g.created,
                "model": g.st.model_id,
                "choices": [{
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "logprobs": logprobs,
                    "finish_reason": finish.as_str(),
                }],
                "usage": g.usage(),
            })
        }
    };
    Ok(axum::Json(body).into_response())
}

/// Where a stream is.
enum StreamState {
    /// Before the first token (chat streams open with the assistant role).
    Start,
    Running,
    /// The final events are queued; nothing more is read from the engine.
    Closing,
}

/// Answers with server-sent events: a chunk per token (its text may be empty while a UTF-8
/// character or a possible stop string is incomplete), a final chunk with `finish_reason`,
/// optionally a usage chunk, then `data: [DONE]`. An engine failure is sent as an `error`
/// event before `[DONE]`.
fn stream(g: Generation, include_usage: bool) -> Response {
    let pending: std::collections::VecDeque<Sse> = std::collections::VecDeque::new();
    let events = futures_util::stream::unfold(
        (g, StreamState::Start, pending),
        move |(mut g, mut state, mut pending)| async move {
            loop {
                if let Some(e) = pending.pop_front() {
                    return Some((Ok::<_, Infallible>(e), (g, state, pending)));
                }
                if let StreamState::Closing = state {
                    return None;
                }
                if let (StreamState::Start, Kind::Chat) = (&state, g.kind) {
                    pending.push_back(data(&g.chunk("", None, None, true)));
                    state = StreamState::Running;
                    continue;
                }
                state = StreamState::Running;
                match g.next().await {
                    Step::Text(t, entry) => {
                        pending.push_back(data(&g.chunk(&t, entry.as_ref(), None, false)))
                    }
                    Step::End(t, finish) => {
                        // Text held back until the end (a partial stop string or UTF-8
                        // character) rides on the final chunk, so token chunks stay one each.
                        pending.push_back(data(&g.chunk(&t, None, Some(finish), false)));
                        if include_usage {
                            let object = match g.kind {
                                Kind::Completion => "text_completion",
                                Kind::Chat => "chat.completion.chunk",
                            };
                            pending.push_back(data(&json!({
                                "id": g.id, "object": object, "created": g.created,
                                "model": g.st.model_id, "choices": [], "usage": g.usage(),
                            })));
                        }
                        pending.push_back(Sse::default().data("[DONE]"));
                        state = StreamState::Closing;
                    }
                    Step::Failed(e) => {
                        pending.push_back(data(&e.body()));
                        pending.push_back(Sse::default().data("[DONE]"));
                        state = StreamState::Closing;
                    }
                }
            }
        },
    );
    let mut r = SseBody::new(events).into_response();
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

fn data(v: &Value) -> Sse {
    Sse::default().data(v.to_string())
}
