//! The HTTP side: OpenAI-shaped requests in, scheduler jobs out, responses (or SSE streams)
//! back. Everything a client can send is validated here; errors are OpenAI-shaped JSON.
use crate::grammar::Grammar;
use crate::sched::{Event, Finish, Job, Metrics, TokenLogprob};
use crate::tools::{Family, Frame, OutputParser, param_types};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use hearth_engine::{Engine, SamplingParams};
use hearth_tokenizer::{ChatTemplate, StreamDecoder};
use serde::Deserialize;
use serde_json::{Value, json};
use std::convert::Infallible;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;

/// What the handlers share.
pub struct App {
    /// The model and tokenizer.
    pub eng: Arc<Engine>,
    /// The chat template.
    pub template: ChatTemplate,
    /// The name clients use for the model.
    pub model_id: String,
    /// Other names accepted for it (the file name).
    pub aliases: Vec<String>,
    /// Context size per sequence.
    pub n_ctx: usize,
    /// Most sequences running at once.
    pub parallel: usize,
    /// Most requests waiting for a slot before 429.
    pub max_queue: usize,
    /// Required bearer token.
    pub api_key: Option<String>,
    /// The scheduler's inbox.
    pub tx: Mutex<std::sync::mpsc::Sender<Job>>,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// Server start (unix seconds).
    pub created: u64,
    /// How the model writes tool calls.
    pub family: Family,
    /// Its template writes `<think>` reasoning.
    pub thinks: bool,
    /// How a forced tool call is written in its syntax (None: the Hermes form).
    pub frame: Option<Frame>,
    /// How the model pools an embedding (or why it gives none).
    pub pooling: Result<hearth_engine::Pooling, String>,
    /// Longest text of any one token, in bytes: a prompt text longer than the context times
    /// four times this is refused before it is tokenized (tokenizing megabytes only to refuse
    /// them costs seconds of CPU and memory the allocator keeps).
    pub max_token_bytes: usize,
}

/// An OpenAI-shaped error response.
#[derive(Debug)]
pub struct ApiError {
    pub(crate) status: StatusCode,
    pub(crate) message: String,
    pub(crate) param: Option<&'static str>,
    pub(crate) code: Option<&'static str>,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
            param: None,
            code: None,
        }
    }
    pub(crate) fn bad(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }
    pub(crate) fn param(mut self, p: &'static str) -> ApiError {
        self.param = Some(p);
        self
    }
    pub(crate) fn code(mut self, c: &'static str) -> ApiError {
        self.code = Some(c);
        self
    }
}

impl ApiError {
    /// OpenAI's error type for the status.
    pub(crate) fn kind(&self) -> &'static str {
        match self.status.as_u16() {
            401 => "authentication_error",
            429 => "rate_limit_error",
            400..=499 => "invalid_request_error",
            _ => "server_error",
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let kind = self.kind();
        let body = json!({"error": {
            "message": self.message,
            "type": kind,
            "param": self.param,
            "code": self.code,
        }});
        (self.status, axum::Json(body)).into_response()
    }
}

pub(crate) type ApiResult<T> = Result<T, ApiError>;

/// Run `f` on a blocking thread. Parsing a request, rendering its template, tokenizing its
/// prompt and compiling its grammar can take long for a big request; on the runtime's
/// workers they would hold up every other connection, `/health` included.
pub(crate) async fn off_runtime<T: Send + 'static>(
    f: impl FnOnce() -> ApiResult<T> + Send + 'static,
) -> ApiResult<T> {
    tokio::task::spawn_blocking(f).await.map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("internal error while preparing the request: {e}"),
        )
    })?
}

pub(crate) fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub(crate) fn new_id(prefix: &str) -> String {
    use std::sync::atomic::AtomicU64;
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Relaxed);
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    format!("{prefix}-{:x}{n:x}", t & 0xffff_ffff_ffff)
}

/// Parse a JSON body, mapping every failure to a 400 (or 413 for an oversized body).
pub(crate) fn parse<T: for<'de> Deserialize<'de>>(
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<T> {
    let body = body.map_err(|e| ApiError::new(e.status(), e.body_text()))?;
    serde_json::from_slice(&body).map_err(|e| ApiError::bad(format!("invalid request body: {e}")))
}

/// Fields both generation endpoints take: OpenAI's (some accepted and ignored, such as
/// `user`) and the sampling extensions llama.cpp's server also takes.
const COMMON_FIELDS: &[&str] = &[
    "model",
    "stream",
    "stream_options",
    "max_tokens",
    "stop",
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "repeat_penalty",
    "seed",
    "presence_penalty",
    "frequency_penalty",
    "n",
    "logit_bias",
    "user",
    "metadata",
    "store",
    "service_tier",
    "prompt_cache_key",
    "safety_identifier",
];
pub(crate) const CHAT_FIELDS: &[&str] = &[
    "messages",
    "max_completion_tokens",
    "logprobs",
    "top_logprobs",
    "tools",
    "tool_choice",
    "response_format",
    "parallel_tool_calls",
    "modalities",
    "reasoning_effort",
    "verbosity",
    "chat_template_kwargs",
];

/// Parse a generation request: like OpenAI, a field the endpoint does not know is a 400.
pub(crate) fn parse_checked<T: for<'de> Deserialize<'de>>(
    body: Result<Bytes, BytesRejection>,
    own: &[&str],
) -> ApiResult<T> {
    let v: Value = parse(body)?;
    let Value::Object(o) = &v else {
        return Err(ApiError::bad("the request body must be a JSON object"));
    };
    if let Some(k) = o
        .keys()
        .find(|k| !COMMON_FIELDS.contains(&k.as_str()) && !own.contains(&k.as_str()))
    {
        return Err(ApiError::bad(format!(
            "Unrecognized request argument supplied: {k}"
        )));
    }
    serde_json::from_value(v).map_err(|e| ApiError::bad(format!("invalid request body: {e}")))
}

/// `logit_bias`: token id (as a string key) -> bias in [-100, 100].
pub(crate) fn logit_bias(
    v: &Option<std::collections::HashMap<String, f32>>,
    n_vocab: usize,
) -> ApiResult<Vec<(u32, f32)>> {
    let mut out = Vec::new();
    for (k, &b) in v.iter().flatten() {
        let t: u32 = k
            .parse()
            .ok()
            .filter(|&t: &u32| (t as usize) < n_vocab)
            .ok_or_else(|| {
                ApiError::bad(format!(
                    "logit_bias key '{k}' is not a token id below {n_vocab}"
                ))
                .param("logit_bias")
            })?;
        if !(-100.0..=100.0).contains(&b) {
            return Err(ApiError::bad(format!(
                "logit_bias values must be in [-100, 100], got {b}"
            ))
            .param("logit_bias"));
        }
        out.push((t, b));
    }
    Ok(out)
}

/// Require the API key, when one is set.
pub async fn auth(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    if let Some(key) = &app.api_key {
        let h = req.headers();
        let bearer = h
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        // Anthropic's clients send the key as x-api-key
        let x_key = h.get("x-api-key").and_then(|v| v.to_str().ok());
        let ok = bearer.or(x_key).is_some_and(|k| k.trim() == key);
        // the page (GET /) has no secrets: it asks for the key and sends it with its requests
        if !ok && req.uri().path() != "/health" && req.uri().path() != "/" {
            let e = ApiError::new(StatusCode::UNAUTHORIZED, "invalid or missing API key")
                .code("invalid_api_key");
            if crate::messages::is_anthropic(req.uri().path()) {
                return crate::messages::error_response(e);
            }
            return e.into_response();
        }
    }
    next.run(req).await
}

/// Unknown paths get an OpenAI-shaped 404.
pub async fn not_found(req: Request) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("no endpoint {} {}", req.method(), req.uri().path()),
    )
}

fn model_json(app: &App) -> Value {
    json!({
        "id": app.model_id,
        "object": "model",
        "created": app.created,
        "owned_by": "hearth",
        "meta": {
            "n_ctx": app.n_ctx,
            "n_vocab": app.eng.n_vocab(),
            "n_params": app.eng.n_params(),
        }
    })
}

/// GET /v1/models
pub async fn models(State(app): State<Arc<App>>) -> axum::Json<Value> {
    axum::Json(json!({"object": "list", "data": [model_json(&app)]}))
}

/// GET /v1/models/{id}
pub async fn model(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<Value>> {
    check_model(&app, Some(&id))?;
    Ok(axum::Json(model_json(&app)))
}

/// GET /health
pub async fn health() -> axum::Json<Value> {
    axum::Json(json!({"status": "ok"}))
}

/// GET /metrics (Prometheus text format)
pub async fn metrics(State(app): State<Arc<App>>) -> Response {
    let m = &app.metrics;
    let g = |a: &std::sync::atomic::AtomicU64| a.load(Relaxed);
    let ttft_n = g(&m.ttft_count);
    let mut s = String::new();
    let mut put = |name: &str, kind: &str, help: &str, v: String| {
        s.push_str(&format!(
            "# HELP hearth_{name} {help}\n# TYPE hearth_{name} {kind}\nhearth_{name} {v}\n"
        ));
    };
    put(
        "requests_total",
        "counter",
        "Requests finished (including cancelled).",
        g(&m.requests).to_string(),
    );
    put(
        "requests_rejected_total",
        "counter",
        "Requests refused because the queue was full.",
        g(&m.rejected).to_string(),
    );
    put(
        "prompt_tokens_total",
        "counter",
        "Prompt tokens of admitted requests.",
        g(&m.prompt_tokens).to_string(),
    );
    put(
        "prompt_tokens_cached_total",
        "counter",
        "Prompt tokens reused from the prefix cache.",
        g(&m.cached_tokens).to_string(),
    );
    put(
        "generated_tokens_total",
        "counter",
        "Tokens generated.",
        g(&m.generated_tokens).to_string(),
    );
    put(
        "time_to_first_token_seconds_sum",
        "counter",
        "Sum of times to first token.",
        format!("{:.6}", g(&m.ttft_us) as f64 / 1e6),
    );
    put(
        "time_to_first_token_seconds_count",
        "counter",
        "Requests that produced a first token.",
        ttft_n.to_string(),
    );
    put(
        "generation_tokens_per_second",
        "gauge",
        "Tokens generated per second in the last step.",
        format!("{:.3}", g(&m.tps_milli) as f64 / 1000.0),
    );
    put(
        "busy_seconds_total",
        "counter",
        "Time spent in forward passes.",
        format!("{:.6}", g(&m.busy_us) as f64 / 1e6),
    );
    put(
        "queue_length",
        "gauge",
        "Requests waiting for admission.",
        app.metrics.waiting.load(Relaxed).to_string(),
    );
    put(
        "running_sequences",
        "gauge",
        "Sequences being processed.",
        g(&m.running).to_string(),
    );
    let (used, total) = (g(&m.pages_used), g(&m.pages_total).max(1));
    put(
        "kv_cache_usage_ratio",
        "gauge",
        "Share of KV pages held by running sequences.",
        format!("{:.4}", used as f64 / total as f64),
    );
    put(
        "kv_cache_pages_total",
        "gauge",
        "Pages in the KV pool.",
        total.to_string(),
    );
    put(
        "preemptions_total",
        "counter",
        "Sequences preempted for lack of KV pages.",
        g(&m.preempted).to_string(),
    );
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], s).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenizeReq {
    content: String,
    #[serde(default)]
    add_special: bool,
    #[serde(default)]
    with_pieces: bool,
}

/// POST /tokenize
pub async fn tokenize(
    State(app): State<Arc<App>>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<axum::Json<Value>> {
    off_runtime(move || tokenize_body(&app, body)).await
}

fn tokenize_body(app: &App, body: Result<Bytes, BytesRejection>) -> ApiResult<axum::Json<Value>> {
    let r: TokenizeReq = parse(body)?;
    let tk = &app.eng.tokenizer;
    let ids = tk
        .encode(&r.content, r.add_special)
        .map_err(|e| ApiError::bad(e.to_string()))?;
    if r.with_pieces {
        let t: Vec<Value> = ids
            .iter()
            .map(|&i| json!({"id": i, "piece": String::from_utf8_lossy(tk.token_bytes(i))}))
            .collect();
        return Ok(axum::Json(json!({"tokens": t})));
    }
    Ok(axum::Json(json!({"tokens": ids})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DetokenizeReq {
    tokens: Vec<u32>,
}

/// POST /detokenize
pub async fn detokenize(
    State(app): State<Arc<App>>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<axum::Json<Value>> {
    let r: DetokenizeReq = parse(body)?;
    let nv = app.eng.n_vocab();
    if let Some(bad) = r.tokens.iter().find(|&&t| t as usize >= nv) {
        return Err(
            ApiError::bad(format!("token id {bad} is outside the vocabulary of {nv}"))
                .param("tokens"),
        );
    }
    Ok(axum::Json(
        json!({"content": app.eng.tokenizer.decode(&r.tokens)}),
    ))
}

pub(crate) fn check_model(app: &App, m: Option<&str>) -> ApiResult<()> {
    match m {
        None | Some("") => Ok(()),
        Some(m) if m == app.model_id || app.aliases.iter().any(|a| a == m) => Ok(()),
        Some(m) => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!(
                "The model '{m}' does not exist; this server serves '{}'",
                app.model_id
            ),
        )
        .param("model")
        .code("model_not_found")),
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
pub(crate) enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize, Default)]
pub(crate) struct StreamOptions {
    #[serde(default)]
    pub(crate) include_usage: bool,
}

/// Settings both endpoints share.
#[derive(Deserialize)]
pub(crate) struct Common {
    pub(crate) model: Option<String>,
    #[serde(default)]
    pub(crate) stream: bool,
    pub(crate) stream_options: Option<StreamOptions>,
    pub(crate) max_tokens: Option<u64>,
    pub(crate) stop: Option<Stop>,
    pub(crate) temperature: Option<f32>,
    pub(crate) top_p: Option<f32>,
    pub(crate) top_k: Option<u32>,
    pub(crate) min_p: Option<f32>,
    pub(crate) repeat_penalty: Option<f32>,
    pub(crate) seed: Option<u64>,
    pub(crate) presence_penalty: Option<f32>,
    pub(crate) frequency_penalty: Option<f32>,
    pub(crate) n: Option<u32>,
    pub(crate) logit_bias: Option<std::collections::HashMap<String, f32>>,
    pub(crate) best_of: Option<u32>,
}

#[derive(Deserialize)]
pub(crate) struct ChatReq {
    #[serde(flatten)]
    pub(crate) common: Common,
    pub(crate) messages: Vec<Value>,
    pub(crate) max_completion_tokens: Option<u64>,
    pub(crate) logprobs: Option<bool>,
    pub(crate) top_logprobs: Option<u32>,
    pub(crate) tools: Option<Vec<Tool>>,
    pub(crate) tool_choice: Option<Value>,
    pub(crate) response_format: Option<Value>,
    pub(crate) reasoning_effort: Option<String>,
    pub(crate) chat_template_kwargs: Option<serde_json::Map<String, Value>>,
}

#[derive(Deserialize, Clone)]
pub(crate) struct Tool {
    #[serde(rename = "type")]
    kind: String,
    function: Function,
}

#[derive(Deserialize, Clone, serde::Serialize)]
struct Function {
    name: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    parameters: Option<Value>,
}

/// What a validated request asks of the generator.
pub(crate) struct Gen {
    pub(crate) prompt: Vec<u32>,
    pub(crate) max_tokens: usize,
    pub(crate) sampling: SamplingParams,
    pub(crate) stops: Vec<String>,
    pub(crate) top_logprobs: Option<usize>,
    pub(crate) prompt_logprobs: bool,
    pub(crate) grammar: Option<Arc<Grammar>>,
    pub(crate) logit_bias: Vec<(u32, f32)>,
}

pub(crate) fn sampling(c: &Common) -> ApiResult<SamplingParams> {
    let mut p = SamplingParams::default();
    if let Some(t) = c.temperature {
        if !(0.0..=2.0).contains(&t) {
            return Err(
                ApiError::bad(format!("temperature must be in [0, 2], got {t}"))
                    .param("temperature"),
            );
        }
        p.temperature = t;
    }
    if let Some(v) = c.top_p {
        p.top_p = v;
    }
    if let Some(v) = c.top_k {
        p.top_k = v as usize;
    }
    if let Some(v) = c.min_p {
        p.min_p = v;
    }
    if let Some(v) = c.repeat_penalty {
        p.repeat_penalty = v;
    }
    p.presence_penalty = c.presence_penalty.unwrap_or(0.0);
    p.frequency_penalty = c.frequency_penalty.unwrap_or(0.0);
    p.seed = c.seed.unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
    });
    p.validate().map_err(|e| {
        // each message starts with the name of the setting it is about
        const NAMES: [&str; 6] = [
            "temperature",
            "top_p",
            "min_p",
            "repeat_penalty",
            "presence_penalty",
            "frequency_penalty",
        ];
        let name = NAMES.iter().find(|n| e.starts_with(*n)).copied();
        let err = ApiError::bad(e);
        match name {
            Some(n) => err.param(n),
            None => err,
        }
    })?;
    Ok(p)
}

/// Longest stop sequence accepted.
const MAX_STOP_BYTES: usize = 1024;

pub(crate) fn stops(c: &Common) -> ApiResult<Vec<String>> {
    let v = match &c.stop {
        None => Vec::new(),
        Some(Stop::One(s)) => vec![s.clone()],
        Some(Stop::Many(v)) => v.clone(),
    };
    if v.len() > 4 {
        return Err(ApiError::bad("at most 4 stop sequences are allowed").param("stop"));
    }
    // each token's text is searched for every stop string and held back while it may be the
    // start of one: that work grows with a stop string's length
    if let Some(s) = v.iter().find(|s| s.len() > MAX_STOP_BYTES) {
        return Err(ApiError::bad(format!(
            "a stop sequence may be at most {MAX_STOP_BYTES} bytes long, not {}",
            s.len()
        ))
        .param("stop"));
    }
    Ok(v.into_iter().filter(|s| !s.is_empty()).collect())
}

/// Refuse a prompt text that cannot fit the context whatever its tokens: one with more than
/// four times as many bytes as the context's worth of the longest tokens.
pub(crate) fn check_text_len(app: &App, text: &str) -> ApiResult<()> {
    let most = app
        .n_ctx
        .saturating_mul(app.max_token_bytes.max(1))
        .saturating_mul(4);
    if text.len() > most {
        return Err(ApiError::bad(format!(
            "This model's maximum context length is {} tokens. However, your prompt of {} bytes is far longer than that.",
            app.n_ctx,
            text.len()
        ))
        .code("context_length_exceeded"));
    }
    Ok(())
}

/// Check the prompt's length against the context and settle `max_tokens`.
pub(crate) fn budget(
    app: &App,
    n_prompt: usize,
    requested: Option<u64>,
    default: Option<usize>,
) -> ApiResult<usize> {
    if n_prompt == 0 {
        return Err(ApiError::bad("the prompt is empty").param("prompt"));
    }
    if n_prompt >= app.n_ctx {
        return Err(ApiError::bad(format!(
            "This model's maximum context length is {} tokens. However, your prompt has {} tokens, leaving no room for output.",
            app.n_ctx, n_prompt
        ))
        .code("context_length_exceeded"));
    }
    let room = app.n_ctx - n_prompt;
    match requested {
        Some(0) => Err(ApiError::bad("max_tokens must be at least 1").param("max_tokens")),
        Some(m) => Ok((m.min(room as u64)) as usize),
        None => Ok(default.unwrap_or(room).min(room)),
    }
}

/// Text of a message's `content`: a string, null, or a list of text parts.
fn content_text(v: Option<&Value>) -> ApiResult<String> {
    match v {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(parts)) => {
            let mut s = String::new();
            for p in parts {
                match (
                    p.get("type").and_then(Value::as_str),
                    p.get("text").and_then(Value::as_str),
                ) {
                    (Some("text"), Some(t)) => s.push_str(t),
                    _ => {
                        return Err(ApiError::bad("only text content parts are supported")
                            .param("messages"));
                    }
                }
            }
            Ok(s)
        }
        Some(_) => Err(
            ApiError::bad("message content must be a string or a list of parts").param("messages"),
        ),
    }
}

/// The messages as the template will see them.
/// What a chat template renders itself (the rest is described to the model in text).
#[derive(Clone, Copy)]
struct TemplateCaps {
    /// It renders assistant messages' `tool_calls`.
    tool_calls: bool,
    /// It renders the `tools` list.
    tools: bool,
}

impl TemplateCaps {
    fn of(t: &ChatTemplate) -> TemplateCaps {
        TemplateCaps {
            tool_calls: t.mentions("tool_calls"),
            tools: t.mentions("tools"),
        }
    }
}

fn chat_messages(caps: TemplateCaps, req: &ChatReq, tools: &[Tool]) -> ApiResult<Vec<Value>> {
    if req.messages.is_empty() {
        return Err(ApiError::bad("messages must not be empty").param("messages"));
    }
    let tmpl_tools = caps.tool_calls;
    let mut out = Vec::new();
    for m in &req.messages {
        let role = m
            .get("role")
            .and_then(Value::as_str)
            .ok_or_else(|| ApiError::bad("each message needs a string role").param("messages"))?;
        let mut content = content_text(m.get("content"))?;
        let role = match role {
            "system" | "developer" => "system",
            "user" => "user",
            "assistant" => "assistant",
            "tool" => "tool",
            r => return Err(ApiError::bad(format!("unknown message role '{r}'")).param("messages")),
        };
        let mut msg = json!({"role": role});
        if let Some(calls) = m.get("tool_calls").and_then(Value::as_array) {
            if tmpl_tools {
                // templates (HF convention) expect the arguments as an object, OpenAI sends a
                // JSON string
                let calls = calls
                    .iter()
                    .map(|c| {
                        let mut c = c.clone();
                        if let Some(Value::String(a)) = c.pointer("/function/arguments") {
                            if let Ok(v) = serde_json::from_str::<Value>(a) {
                                c["function"]["arguments"] = v;
                            }
                        }
                        c
                    })
                    .collect();
                msg["tool_calls"] = Value::Array(calls);
            } else {
                for c in calls {
                    let f = c.get("function").cloned().unwrap_or(Value::Null);
                    let args = match f.get("arguments") {
                        Some(Value::String(s)) => {
                            serde_json::from_str(s).unwrap_or(Value::String(s.clone()))
                        }
                        Some(v) => v.clone(),
                        None => json!({}),
                    };
                    let call = json!({"name": f.get("name").cloned().unwrap_or(Value::Null), "arguments": args});
                    if !content.is_empty() {
                        content.push('\n');
                    }
                    content.push_str(&format!("<tool_call>\n{call}\n</tool_call>"));
                }
            }
        }
        if role == "tool" && !tmpl_tools {
            content = format!("<tool_response>\n{content}\n</tool_response>");
        }
        if let Some(id) = m.get("tool_call_id") {
            msg["tool_call_id"] = id.clone();
        }
        for k in ["reasoning_content", "thinking"] {
            if let Some(Value::String(r)) = m.get(k) {
                msg[k] = json!(r);
            }
        }
        msg["content"] = Value::String(content);
        out.push(msg);
    }
    if !tools.is_empty() && !caps.tools {
        // describe the tools in a system message, Hermes style
        let sigs: Vec<String> = tools
            .iter()
            .map(|t| json!({"type": "function", "function": t.function}).to_string())
            .collect();
        let text = format!(
            "You can call functions. Their signatures are inside <tools></tools>:\n<tools>\n{}\n</tools>\nTo call one, answer with a JSON object naming the function and its arguments inside <tool_call></tool_call> tags:\n<tool_call>\n{{\"name\": <function-name>, \"arguments\": <args-json-object>}}\n</tool_call>",
            sigs.join("\n")
        );
        if out[0]["role"] == "system" {
            let old = out[0]["content"].as_str().unwrap_or("").to_string();
            out[0]["content"] = Value::String(format!("{old}\n\n{text}"));
        } else {
            out.insert(0, json!({"role": "system", "content": text}));
        }
    }
    Ok(out)
}

/// A chat request checked and its grammar compiled: everything that needs no model.
struct ChatPlan {
    /// The tools the model may call (none under `tool_choice: none`).
    tools: Vec<Tool>,
    grammar: Option<Grammar>,
    /// A call is forced (tool_choice required or named).
    forced: bool,
    top_logprobs: Option<usize>,
    sampling: SamplingParams,
    stops: Vec<String>,
    logit_bias: Vec<(u32, f32)>,
}

fn chat_plan(req: &ChatReq, n_vocab: usize, frame: Option<&Frame>) -> ApiResult<ChatPlan> {
    let c = &req.common;
    if c.n.unwrap_or(1) != 1 {
        return Err(ApiError::bad("only n = 1 is supported").param("n"));
    }
    let mut tools = req.tools.clone().unwrap_or_default();
    for t in &tools {
        if t.kind != "function" {
            return Err(ApiError::bad(format!("unsupported tool type '{}'", t.kind)).param("tools"));
        }
    }
    // tool_choice: none / auto / required / a named function
    let mut forced: Option<Vec<Tool>> = None;
    match &req.tool_choice {
        None => {}
        Some(Value::String(s)) if s == "auto" => {}
        Some(Value::String(s)) if s == "none" => tools.clear(),
        Some(Value::String(s)) if s == "required" => {
            if tools.is_empty() {
                return Err(
                    ApiError::bad("tool_choice 'required' needs tools").param("tool_choice")
                );
            }
            forced = Some(tools.clone());
        }
        Some(v) => {
            let name = v
                .pointer("/function/name")
                .and_then(Value::as_str)
                .ok_or_else(|| {
                    ApiError::bad("tool_choice must be none, auto, required or a function")
                        .param("tool_choice")
                })?;
            let t = tools
                .iter()
                .find(|t| t.function.name == name)
                .ok_or_else(|| {
                    ApiError::bad(format!("tool_choice names '{name}', which is not in tools"))
                        .param("tool_choice")
                })?;
            forced = Some(vec![t.clone()]);
        }
    }
    let mut grammar = match &forced {
        Some(ts) => {
            let list: Vec<(String, Value)> = ts
                .iter()
                .map(|t| {
                    (
                        t.function.name.clone(),
                        t.function
                            .parameters
                            .clone()
                            .unwrap_or(json!({"type": "object"})),
                    )
                })
                .collect();
            let g = match frame {
                // in the family's own syntax
                Some(f) => f.grammar(&list),
                None => Grammar::tool_call(&list),
            };
            Some(g.map_err(|e| ApiError::bad(format!("tool parameters: {e}")).param("tools"))?)
        }
        None => None,
    };
    if let Some(rf) = &req.response_format {
        let g = match rf.get("type").and_then(Value::as_str) {
            Some("text") => None,
            Some("json_object") => Some(Grammar::json_object()),
            Some("json_schema") => {
                let schema = rf.pointer("/json_schema/schema").ok_or_else(|| {
                    ApiError::bad("response_format json_schema needs json_schema.schema")
                        .param("response_format")
                })?;
                Some(Grammar::json_schema(schema).map_err(|e| {
                    ApiError::bad(format!("json_schema: {e}")).param("response_format")
                })?)
            }
            _ => {
                return Err(ApiError::bad(
                    "response_format.type must be text, json_object or json_schema",
                )
                .param("response_format"));
            }
        };
        if g.is_some() {
            if grammar.is_some() {
                return Err(ApiError::bad(
                    "a forced tool call and a response_format cannot both apply",
                )
                .param("response_format"));
            }
            grammar = g;
        }
    }
    let top_logprobs = match (req.logprobs.unwrap_or(false), req.top_logprobs) {
        (_, Some(k)) if k > 20 => {
            return Err(ApiError::bad("top_logprobs must be in [0, 20]").param("top_logprobs"));
        }
        (true, k) => Some(k.unwrap_or(0) as usize),
        (false, Some(_)) => {
            return Err(ApiError::bad("top_logprobs needs logprobs: true").param("top_logprobs"));
        }
        (false, None) => None,
    };
    Ok(ChatPlan {
        tools,
        forced: forced.is_some(),
        grammar,
        top_logprobs,
        sampling: sampling(c)?,
        stops: stops(c)?,
        logit_bias: logit_bias(&c.logit_bias, n_vocab)?,
    })
}

pub(crate) fn chat_gen(app: &App, req: &ChatReq) -> ApiResult<(Gen, OutCfg)> {
    let plan = chat_plan(req, app.eng.n_vocab(), app.frame.as_ref())?;
    let tools = &plan.tools;
    let messages = chat_messages(TemplateCaps::of(&app.template), req, tools)?;
    // variables for the template: chat_template_kwargs (enable_thinking and the like), and
    // reasoning_effort
    let mut kw = req.chat_template_kwargs.clone().unwrap_or_default();
    if let Some(e) = &req.reasoning_effort {
        kw.insert("reasoning_effort".into(), json!(e));
    }
    let tool_list = (!tools.is_empty()).then(|| {
        tools
            .iter()
            .map(|t| json!({"type": "function", "function": t.function}))
            .collect::<Vec<_>>()
    });
    let render = |m: &Vec<Value>| {
        app.template
            .render_kw(m, tool_list.as_ref(), true, Some(&kw))
    };
    let text = render(&messages)
        .or_else(|e| {
            // some templates (DeepSeek R1's) concatenate the arguments as a JSON string
            let strings: Vec<Value> = messages.iter().map(args_as_strings).collect();
            if strings == messages {
                Err(e)
            } else {
                render(&strings)
            }
        })
        .map_err(|e| ApiError::bad(e.to_string()).param("messages"))?;
    check_text_len(app, &text)?;
    let prompt = app
        .eng
        .tokenizer
        .encode(&text, true)
        .map_err(|e| ApiError::bad(e.to_string()))?;
    let max = budget(
        app,
        prompt.len(),
        req.max_completion_tokens.or(req.common.max_tokens),
        None,
    )?;
    let out = OutCfg {
        // a forced call without the family's frame is written in the Hermes form
        family: if plan.forced && app.frame.is_none() {
            Family::Hermes
        } else {
            app.family
        },
        thinks: app.thinks,
        // (a forced call's grammar starts the output with the call, not inside <think>)
        in_think: app.thinks && !plan.forced && text.trim_end().ends_with("<think>"),
        types: (!tools.is_empty()).then(|| {
            param_types(
                tools
                    .iter()
                    .map(|t| (t.function.name.as_str(), t.function.parameters.as_ref())),
            )
        }),
    };
    Ok((
        Gen {
            prompt,
            max_tokens: max,
            sampling: plan.sampling,
            stops: plan.stops,
            top_logprobs: plan.top_logprobs,
            prompt_logprobs: false,
            grammar: plan.grammar.map(Arc::new),
            logit_bias: plan.logit_bias,
        },
        out,
    ))
}

/// `m` with its tool calls' arguments as JSON strings.
fn args_as_strings(m: &Value) -> Value {
    let mut m = m.clone();
    for c in m
        .get_mut("tool_calls")
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
    {
        if let Some(a) = c
            .pointer_mut("/function/arguments")
            .filter(|a| !a.is_string())
        {
            *a = Value::String(a.to_string());
        }
    }
    m
}

/// How to read a chat request's output.
pub(crate) struct OutCfg {
    pub family: Family,
    pub thinks: bool,
    pub in_think: bool,
    /// The tools' parameter types, when tool calls are parsed.
    pub types: Option<crate::tools::ParamTypes>,
}

impl OutCfg {
    pub fn parser(&self) -> OutputParser {
        OutputParser::new(self.family, self.thinks, self.in_think, self.types.clone())
    }
}

/// A running request: the scheduler's events turned into text.
pub(crate) struct Run {
    pub(crate) rx: mpsc::UnboundedReceiver<Event>,
    pub(crate) dec: StreamDecoder,
    pub(crate) stops: Vec<String>,
    pub(crate) text: String,
    /// Bytes of `text` already handed out.
    pub(crate) sent: usize,
    pub(crate) tokens: Vec<(u32, Option<TokenLogprob>)>,
    /// Tokens whose text was handed out.
    pub(crate) tokens_sent: usize,
    pub(crate) prompt_lps: Vec<TokenLogprob>,
    pub(crate) n_prompt: usize,
    pub(crate) finish: Option<&'static str>,
    pub(crate) cached: usize,
    /// The stop string that ended the output.
    pub(crate) stopped_by: Option<String>,
}

/// A piece of output ready to send.
pub(crate) struct Piece {
    pub(crate) text: String,
    pub(crate) tokens: Vec<(u32, Option<TokenLogprob>)>,
}

/// Count a request in, or refuse it with 429 when every slot and queue place is taken.
pub(crate) fn admit(app: &App) -> ApiResult<()> {
    // a request waits only when every slot is busy: a burst of parallel + queue requests is
    // always accepted, however far the scheduler has got with admitting them
    let limit = (app.parallel + app.max_queue) as u64;
    if app.metrics.in_flight.fetch_add(1, Relaxed) >= limit {
        app.metrics.in_flight.fetch_sub(1, Relaxed);
        app.metrics.rejected.fetch_add(1, Relaxed);
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "the server is busy: every slot is taken and the request queue is full; retry later",
        )
        .code("rate_limit_exceeded"));
    }
    Ok(())
}

/// Hand `job` (already counted in `in_flight`) to the scheduler.
pub(crate) fn send_job(app: &App, job: Job) -> ApiResult<()> {
    app.metrics.waiting.fetch_add(1, Relaxed);
    // a poisoned lock still holds a working sender
    let sent = match app.tx.lock() {
        Ok(tx) => tx.send(job),
        Err(p) => p.into_inner().send(job),
    };
    if sent.is_err() {
        app.metrics.waiting.fetch_sub(1, Relaxed);
        app.metrics.in_flight.fetch_sub(1, Relaxed);
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the scheduler has stopped",
        ));
    }
    Ok(())
}

pub(crate) fn submit(app: &App, g: Gen) -> ApiResult<Run> {
    admit(app)?;
    let (tx, rx) = mpsc::unbounded_channel();
    let n_prompt = g.prompt.len();
    let job = Job {
        prompt: g.prompt,
        max_tokens: g.max_tokens,
        sampling: g.sampling,
        top_logprobs: g.top_logprobs,
        prompt_logprobs: g.prompt_logprobs,
        grammar: g.grammar,
        logit_bias: g.logit_bias,
        embed: None,
        events: tx,
        received: Instant::now(),
    };
    send_job(app, job)?;
    Ok(Run {
        rx,
        dec: StreamDecoder::default(),
        stops: g.stops,
        text: String::new(),
        sent: 0,
        tokens: Vec::new(),
        tokens_sent: 0,
        prompt_lps: Vec::new(),
        n_prompt,
        finish: None,
        cached: 0,
        stopped_by: None,
    })
}

impl Run {
    /// The next piece of output, or None when the generation is over.
    pub(crate) async fn next(&mut self, eng: &Engine) -> ApiResult<Option<Piece>> {
        loop {
            if self.finish.is_some() {
                return Ok(None);
            }
            let ev = self.rx.recv().await;
            match ev {
                Some(Event::Prompt(lps)) => self.prompt_lps.extend(lps),
                Some(Event::Token(t, lp)) => {
                    self.tokens.push((t, lp));
                    let s = self.dec.push(eng.tokenizer.token_bytes(t));
                    self.text.push_str(&s);
                    if let Some(p) = self.cut() {
                        return Ok(Some(p));
                    }
                }
                Some(Event::Done {
                    finish,
                    cached_tokens,
                }) => {
                    self.cached = cached_tokens;
                    let rest = self.dec.flush();
                    self.text.push_str(&rest);
                    self.finish = Some(match finish {
                        Finish::Stop => "stop",
                        Finish::Length => "length",
                    });
                    // a stop string may complete in the flushed text
                    if let Some((i, n)) = self.find_stop() {
                        self.stopped_by = Some(self.text[i..i + n].to_string());
                        self.text.truncate(i);
                        self.finish = Some("stop");
                    }
                    return Ok(Some(self.take(self.text.len())));
                }
                Some(Event::Error(e)) => {
                    return Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e));
                }
                Some(Event::Refused(e)) => {
                    return Err(ApiError::bad(e).param("response_format"));
                }
                Some(Event::Embedding(_)) => {
                    return Err(ApiError::new(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "the scheduler answered a generation with an embedding",
                    ));
                }
                None => {
                    return Err(ApiError::new(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "the scheduler dropped the request",
                    ));
                }
            }
        }
    }

    fn find_stop(&self) -> Option<(usize, usize)> {
        let from = self.sent;
        self.stops
            .iter()
            .filter_map(|s| {
                self.text[from..]
                    .find(s.as_str())
                    .map(|i| (from + i, s.len()))
            })
            .min()
    }

    /// After new text: stop at a stop string, or hand out what cannot be part of one.
    fn cut(&mut self) -> Option<Piece> {
        if let Some((i, n)) = self.find_stop() {
            self.stopped_by = Some(self.text[i..i + n].to_string());
            self.text.truncate(i);
            self.finish = Some("stop");
            self.rx.close(); // cancels the sequence in the scheduler
            return Some(self.take(i));
        }
        // hold back a tail that may be the start of a stop string
        let mut safe = self.text.len();
        for s in &self.stops {
            for k in (1..s.len()).rev() {
                if self.text.len() >= k && s.is_char_boundary(k) && self.text.ends_with(&s[..k]) {
                    safe = safe.min(self.text.len() - k);
                    break;
                }
            }
        }
        if safe > self.sent || self.tokens.len() > self.tokens_sent {
            Some(self.take(safe.max(self.sent)))
        } else {
            None
        }
    }

    fn take(&mut self, upto: usize) -> Piece {
        let text = self.text[self.sent..upto].to_string();
        self.sent = upto;
        let tokens = self.tokens[self.tokens_sent..].to_vec();
        self.tokens_sent = self.tokens.len();
        Piece { text, tokens }
    }

    /// All of the output, through `parser`: its events (for the answers that are not streamed).
    pub(crate) async fn parse_all(
        &mut self,
        eng: &Engine,
        parser: &mut OutputParser,
    ) -> ApiResult<Vec<crate::tools::Ev>> {
        let mut evs = Vec::new();
        while let Some(p) = self.next(eng).await? {
            evs.extend(parser.push(&p.text));
        }
        evs.extend(parser.finish());
        Ok(evs)
    }

    pub(crate) fn usage(&self) -> Value {
        let n = self.tokens.len();
        json!({
            "prompt_tokens": self.n_prompt,
            "completion_tokens": n,
            "total_tokens": self.n_prompt + n,
            "prompt_tokens_details": {"cached_tokens": self.cached},
        })
    }
}

/// The sending side of an SSE response.
pub(crate) struct Sink(pub(crate) mpsc::Sender<Result<SseEvent, Infallible>>);

impl Sink {
    pub(crate) fn new() -> (Sink, Response) {
        let (tx, rx) = mpsc::channel(64);
        let resp = Sse::new(tokio_stream::wrappers::ReceiverStream::new(rx))
            .keep_alive(KeepAlive::default())
            .into_response();
        (Sink(tx), resp)
    }

    /// Send one event; false once the client has gone.
    pub(crate) async fn send(&self, v: Value) -> bool {
        self.0
            .send(Ok(SseEvent::default().data(v.to_string())))
            .await
            .is_ok()
    }

    /// Send one named event (`event: NAME`); false once the client has gone.
    pub(crate) async fn event(&self, name: &str, v: Value) -> bool {
        self.0
            .send(Ok(SseEvent::default().event(name).data(v.to_string())))
            .await
            .is_ok()
    }

    /// The run's next piece; None when it is over (`run.finish` is set), failed (the error
    /// was sent) or the client left while nothing was being sent.
    pub(crate) async fn next(&self, run: &mut Run, eng: &Engine) -> Option<Piece> {
        let r = tokio::select! {
            r = run.next(eng) => r,
            _ = self.0.closed() => return None,
        };
        match r {
            Ok(p) => p,
            Err(e) => {
                let _ = self
                    .send(
                        json!({"error": {"message": e.message, "type": e.kind(), "code": e.code}}),
                    )
                    .await;
                None
            }
        }
    }

    /// While streaming: the events `parser` makes of the run's next piece, and whether the
    /// output is complete (the parser flushed); an error when the run failed; None when the
    /// client left.
    pub(crate) async fn parsed(
        &self,
        run: &mut Run,
        eng: &Engine,
        parser: &mut OutputParser,
    ) -> Option<ApiResult<(Vec<crate::tools::Ev>, bool)>> {
        let r = tokio::select! {
            r = run.next(eng) => r,
            _ = self.0.closed() => return None,
        };
        Some(r.map(|p| match p {
            Some(p) => (parser.push(&p.text), false),
            None => (parser.finish(), true),
        }))
    }

    /// The usage chunk (when `usage_head` is given: the chunk fields to put it in), then
    /// `[DONE]`.
    pub(crate) async fn close(&self, usage_head: Option<Value>, run: &Run) {
        if let Some(mut u) = usage_head {
            u["choices"] = json!([]);
            u["usage"] = run.usage();
            if !self.send(u).await {
                return;
            }
        }
        let _ = self.0.send(Ok(SseEvent::default().data("[DONE]"))).await;
    }
}

pub(crate) fn token_str(eng: &Engine, t: u32) -> String {
    String::from_utf8_lossy(eng.tokenizer.token_bytes(t)).into_owned()
}

pub(crate) fn chat_logprobs(eng: &Engine, toks: &[(u32, Option<TokenLogprob>)]) -> Value {
    let content: Vec<Value> = toks
        .iter()
        .filter_map(|(_, lp)| lp.as_ref())
        .map(|lp| {
            let top: Vec<Value> = lp
                .top
                .iter()
                .map(|&(t, l)| json!({"token": token_str(eng, t), "logprob": l, "bytes": eng.tokenizer.token_bytes(t)}))
                .collect();
            json!({
                "token": token_str(eng, lp.token),
                "logprob": lp.logprob,
                "bytes": eng.tokenizer.token_bytes(lp.token),
                "top_logprobs": top,
            })
        })
        .collect();
    json!({"content": content})
}

/// Every check a request body of `path` gets that needs no model: JSON parsing into the API
/// types, the sampling and tool settings, message contents and the constrained-decoding
/// grammar (compiled, then fed `output`). For the fuzzers; errors are the normal outcome.
#[doc(hidden)]
pub fn fuzz_request(path: &str, body: &[u8], output: &[u8]) {
    let raw = body;
    let body = || Ok(Bytes::copy_from_slice(body));
    const N_VOCAB: usize = 49152;
    match path {
        "/v1/chat/completions" => {
            let Ok(req) = parse_checked::<ChatReq>(body(), CHAT_FIELDS) else {
                return;
            };
            let Ok(plan) = chat_plan(&req, N_VOCAB, None) else {
                return;
            };
            for caps in [false, true] {
                let caps = TemplateCaps {
                    tool_calls: caps,
                    tools: caps,
                };
                let _ = chat_messages(caps, &req, &plan.tools);
            }
            if let Some(g) = plan.grammar {
                let mut m = crate::grammar::Matcher::new(Arc::new(g));
                for chunk in output.chunks(3) {
                    if m.allows(chunk) {
                        let _ = m.accept(chunk);
                    }
                }
                let _ = m.is_complete();
            }
        }
        "/v1/completions" => crate::completions::fuzz(raw, N_VOCAB),
        "/v1/messages" => crate::messages::fuzz(raw),
        "/v1/responses" => crate::responses::fuzz(raw),
        "/v1/embeddings" => crate::embeddings::fuzz(raw),
        "/output" => crate::tools::fuzz_output(output),
        "/tokenize" => {
            let _ = parse::<TokenizeReq>(body());
        }
        _ => {
            let _ = parse::<DetokenizeReq>(body());
        }
    }
}
