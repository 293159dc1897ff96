//! POST /v1/messages and /v1/messages/count_tokens: Anthropic's Messages API over the same
//! generation as Chat Completions. A request is turned into a chat request (content blocks to
//! messages, `tool_use` to tool calls, `tool_result` to tool messages, `tools` and
//! `tool_choice` to functions, `thinking` to the template's `enable_thinking`), and the
//! output's events into content blocks: `thinking`, `text` and `tool_use`, streamed with
//! Anthropic's event sequence. Errors have Anthropic's shape.
use crate::api::{
    ApiError, ApiResult, App, ChatReq, Sink, chat_gen, check_model, new_id, off_runtime, parse,
    submit,
};
use crate::tools::{Ev, collect};
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};
use std::sync::Arc;

/// Anthropic's error type for a status.
fn error_type(status: StatusCode) -> &'static str {
    match status.as_u16() {
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        503 | 529 => "overloaded_error",
        400..=499 => "invalid_request_error",
        _ => "api_error",
    }
}

fn error_json(e: &ApiError) -> Value {
    json!({"type": "error", "error": {"type": error_type(e.status), "message": e.message}})
}

/// An error in Anthropic's shape.
pub(crate) fn error_response(e: ApiError) -> Response {
    (e.status, axum::Json(error_json(&e))).into_response()
}

/// Whether `path` is one of the Anthropic endpoints (whose errors take its shape).
pub(crate) fn is_anthropic(path: &str) -> bool {
    path.starts_with("/v1/messages")
}

const FIELDS: &[&str] = &[
    "model",
    "messages",
    "system",
    "max_tokens",
    "stop_sequences",
    "temperature",
    "top_p",
    "top_k",
    "stream",
    "tools",
    "tool_choice",
    "thinking",
    "metadata",
    "service_tier",
    "container",
    "mcp_servers",
    "context_management",
    // newer clients' fields, accepted and ignored
    "cache_control",
    "diagnostics",
    "inference_geo",
    "output_config",
    "speed",
    "user_profile_id",
    "workspace_id",
];

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, msg)
}

/// The text of a `tool_result`'s content (a string or text blocks).
fn block_text(v: Option<&Value>, what: &str) -> ApiResult<String> {
    match v {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(bs)) => {
            let mut s = String::new();
            for b in bs {
                match (b.get("type").and_then(Value::as_str), b.get("text")) {
                    (Some("text"), Some(Value::String(t))) => s.push_str(t),
                    (t, _) => {
                        return Err(bad(format!(
                            "{what}: content blocks of type {} are not supported",
                            t.unwrap_or("(none)")
                        )));
                    }
                }
            }
            Ok(s)
        }
        Some(_) => Err(bad(format!("{what} must be a string or a list of blocks"))),
    }
}

/// A Messages request as a Chat Completions one.
fn to_chat(body: &Value, count_only: bool) -> ApiResult<(Value, bool)> {
    let Value::Object(o) = body else {
        return Err(bad("the request body must be a JSON object"));
    };
    let own: &[&str] = FIELDS;
    if let Some(k) = o.keys().find(|k| !own.contains(&k.as_str())) {
        return Err(bad(format!("{k}: Extra inputs are not permitted")));
    }
    let mut msgs = Vec::new();
    match o.get("system") {
        None | Some(Value::Null) => {}
        s => {
            let t = block_text(s, "system")?;
            msgs.push(json!({"role": "system", "content": t}));
        }
    }
    let Some(Value::Array(ms)) = o.get("messages") else {
        return Err(bad("messages: Field required (a list of messages)"));
    };
    for (i, m) in ms.iter().enumerate() {
        let role = m.get("role").and_then(Value::as_str).unwrap_or("");
        if role != "user" && role != "assistant" {
            return Err(bad(format!(
                "messages.{i}.role: Input should be 'user' or 'assistant'"
            )));
        }
        let blocks: Vec<Value> = match m.get("content") {
            Some(Value::String(s)) => vec![json!({"type": "text", "text": s})],
            Some(Value::Array(b)) => b.clone(),
            _ => {
                return Err(bad(format!(
                    "messages.{i}.content: a string or a list of content blocks is required"
                )));
            }
        };
        let (mut text, mut thinking, mut calls) = (String::new(), String::new(), Vec::new());
        for b in &blocks {
            match b.get("type").and_then(Value::as_str) {
                Some("text") => text.push_str(b.get("text").and_then(Value::as_str).unwrap_or("")),
                Some("thinking") if role == "assistant" => {
                    thinking.push_str(b.get("thinking").and_then(Value::as_str).unwrap_or(""))
                }
                Some("redacted_thinking") => {}
                Some("tool_use") if role == "assistant" => {
                    let (Some(id), Some(name)) = (
                        b.get("id").and_then(Value::as_str),
                        b.get("name").and_then(Value::as_str),
                    ) else {
                        return Err(bad(format!(
                            "messages.{i}: tool_use needs an id and a name"
                        )));
                    };
                    let input = b.get("input").cloned().unwrap_or(json!({}));
                    calls.push(json!({"id": id, "type": "function",
                        "function": {"name": name, "arguments": input.to_string()}}));
                }
                Some("tool_result") if role == "user" => {
                    let id = b
                        .get("tool_use_id")
                        .and_then(Value::as_str)
                        .ok_or_else(|| {
                            bad(format!("messages.{i}: tool_result needs a tool_use_id"))
                        })?;
                    let mut t = block_text(b.get("content"), "tool_result content")?;
                    if b.get("is_error").and_then(Value::as_bool) == Some(true) {
                        t = format!("Error: {t}");
                    }
                    msgs.push(json!({"role": "tool", "tool_call_id": id, "content": t}));
                }
                t => {
                    return Err(bad(format!(
                        "messages.{i}: content blocks of type '{}' are not supported here",
                        t.unwrap_or("(none)")
                    )));
                }
            }
        }
        if role == "user" {
            if !text.is_empty() || blocks.is_empty() {
                msgs.push(json!({"role": "user", "content": text}));
            }
        } else {
            let mut a = json!({"role": "assistant", "content": text});
            if !thinking.is_empty() {
                a["reasoning_content"] = json!(thinking);
            }
            if !calls.is_empty() {
                a["tool_calls"] = Value::Array(calls);
            }
            msgs.push(a);
        }
    }
    let mut chat = Map::new();
    chat.insert("messages".into(), Value::Array(msgs));
    for k in ["model", "temperature", "top_p", "top_k"] {
        if let Some(v) = o.get(k) {
            chat.insert(k.into(), v.clone());
        }
    }
    if let Some(t) = o.get("temperature").and_then(Value::as_f64)
        && !(0.0..=1.0).contains(&t)
    {
        return Err(bad(format!("temperature: must be in [0, 1], got {t}")));
    }
    match o.get("max_tokens") {
        Some(v) if v.is_u64() => {
            chat.insert("max_tokens".into(), v.clone());
        }
        None if count_only => {}
        _ => return Err(bad("max_tokens: Field required (a positive integer)")),
    }
    if let Some(s) = o.get("stop_sequences") {
        chat.insert("stop".into(), s.clone());
    }
    if let Some(Value::Array(ts)) = o.get("tools") {
        let mut fs = Vec::new();
        for t in ts {
            let name = t.get("name").and_then(Value::as_str).ok_or_else(|| {
                bad("tools: each tool needs a name (server tools are not supported)")
            })?;
            let mut f = json!({"name": name,
                "parameters": t.get("input_schema").cloned().unwrap_or(json!({"type": "object"}))});
            if let Some(d) = t.get("description") {
                f["description"] = d.clone();
            }
            fs.push(json!({"type": "function", "function": f}));
        }
        chat.insert("tools".into(), Value::Array(fs));
    }
    if let Some(tc) = o.get("tool_choice") {
        let c = match tc.get("type").and_then(Value::as_str) {
            Some("auto") => json!("auto"),
            Some("any") => json!("required"),
            Some("none") => json!("none"),
            Some("tool") => {
                let n = tc
                    .get("name")
                    .and_then(Value::as_str)
                    .ok_or_else(|| bad("tool_choice: type 'tool' needs a name"))?;
                json!({"type": "function", "function": {"name": n}})
            }
            _ => return Err(bad("tool_choice.type must be auto, any, tool or none")),
        };
        chat.insert("tool_choice".into(), c);
    }
    if let Some(t) = o.get("thinking") {
        let on = match t.get("type").and_then(Value::as_str) {
            Some("enabled" | "adaptive") => true,
            Some("disabled") => false,
            _ => return Err(bad("thinking.type must be enabled, adaptive or disabled")),
        };
        chat.insert(
            "chat_template_kwargs".into(),
            json!({"enable_thinking": on, "thinking": on}),
        );
    }
    let stream = o.get("stream").and_then(Value::as_bool).unwrap_or(false);
    chat.insert("stream".into(), json!(stream));
    Ok((Value::Object(chat), stream))
}

fn prepare(
    app: &App,
    body: Result<Bytes, BytesRejection>,
    count: bool,
) -> ApiResult<(ChatReq, crate::api::Gen, crate::api::OutCfg, bool)> {
    let v: Value = parse(body)?;
    let (chat, stream) = to_chat(&v, count)?;
    let mut chat = chat;
    if count {
        chat["max_tokens"] = json!(1);
    }
    let req: ChatReq =
        serde_json::from_value(chat).map_err(|e| bad(format!("invalid request body: {e}")))?;
    check_model(app, req.common.model.as_deref())?;
    let (g, cfg) = chat_gen(app, &req)?;
    Ok((req, g, cfg, stream))
}

/// The fuzz target's part: a body converted as far as a chat request.
pub(crate) fn fuzz(body: &[u8]) {
    if let Ok(v) = serde_json::from_slice::<Value>(body)
        && let Ok((chat, _)) = to_chat(&v, false)
    {
        let _ = serde_json::from_value::<ChatReq>(chat);
    }
}

/// POST /v1/messages/count_tokens
pub async fn count_tokens(
    State(app): State<Arc<App>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let app2 = app.clone();
    match off_runtime(move || prepare(&app2, body, true)).await {
        Ok((_, g, _, _)) => axum::Json(json!({"input_tokens": g.prompt.len()})).into_response(),
        Err(e) => error_response(e),
    }
}

fn stop_reason(finish: Option<&str>, stop_seq: &Option<String>, calls: bool) -> &'static str {
    if calls {
        "tool_use"
    } else if stop_seq.is_some() {
        "stop_sequence"
    } else if finish == Some("length") {
        "max_tokens"
    } else {
        "end_turn"
    }
}

/// The content blocks of a whole output.
fn blocks(evs: &[Ev]) -> Vec<Value> {
    let (reasoning, text, calls) = collect(evs);
    let mut out = Vec::new();
    if !reasoning.is_empty() {
        out.push(json!({"type": "thinking", "thinking": reasoning, "signature": ""}));
    }
    let t = if calls.is_empty() {
        text.as_str()
    } else {
        text.trim()
    };
    if !t.is_empty() || (calls.is_empty() && out.is_empty()) {
        out.push(json!({"type": "text", "text": t}));
    }
    for (id, name, args) in calls {
        let input: Value = serde_json::from_str(&args).unwrap_or_else(|_| json!({}));
        out.push(json!({"type": "tool_use", "id": tool_id(&id), "name": name, "input": input}));
    }
    out
}

fn tool_id(id: &str) -> String {
    if id.starts_with("toolu_") {
        id.to_string()
    } else {
        format!("toolu_{}", id.trim_start_matches("call-"))
    }
}

/// POST /v1/messages
pub async fn messages(
    State(app): State<Arc<App>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match messages_inner(app, body).await {
        Ok(r) => r,
        Err(e) => error_response(e),
    }
}

async fn messages_inner(app: Arc<App>, body: Result<Bytes, BytesRejection>) -> ApiResult<Response> {
    let app2 = app.clone();
    let (_req, g, cfg, stream) = off_runtime(move || prepare(&app2, body, false)).await?;
    let mut run = submit(&app, g)?;
    let mut parser = cfg.parser();
    let id = format!("msg_{}", new_id("").trim_start_matches('-'));
    let model = app.model_id.clone();
    if !stream {
        let evs = run.parse_all(&app.eng, &mut parser).await?;
        let content = blocks(&evs);
        let calls = content.iter().any(|b| b["type"] == "tool_use");
        let reason = stop_reason(run.finish, &run.stopped_by, calls);
        return Ok(axum::Json(json!({
            "id": id,
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": content,
            "stop_reason": reason,
            "stop_sequence": if calls { None } else { run.stopped_by.clone() },
            "usage": usage(&run),
        }))
        .into_response());
    }
    let (sink, resp) = Sink::new();
    tokio::spawn(async move {
        let mut st = Blocks::default();
        let start = json!({"type": "message_start", "message": {
            "id": id, "type": "message", "role": "assistant", "model": model, "content": [],
            "stop_reason": null, "stop_sequence": null,
            "usage": {"input_tokens": run.n_prompt, "output_tokens": 0,
                      "cache_read_input_tokens": 0, "cache_creation_input_tokens": 0}}});
        if !sink.event("message_start", start).await
            || !sink.event("ping", json!({"type": "ping"})).await
        {
            return;
        }
        loop {
            let (evs, done) = match sink.parsed(&mut run, &app.eng, &mut parser).await {
                None => return,
                Some(Ok(r)) => r,
                Some(Err(e)) => {
                    let _ = sink.event("error", error_json(&e)).await;
                    return;
                }
            };
            for e in evs {
                for (name, v) in st.on(e) {
                    if !sink.event(name, v).await {
                        return;
                    }
                }
            }
            if done {
                break;
            }
        }
        if st.blocks == 0 {
            // an empty answer is still one (empty) text block
            for (name, v) in st.on(Ev::Text(String::new())) {
                if !sink.event(name, v).await {
                    return;
                }
            }
        }
        for (name, v) in st.close() {
            if !sink.event(name, v).await {
                return;
            }
        }
        let reason = stop_reason(run.finish, &run.stopped_by, st.calls);
        let stop_seq = if st.calls {
            None
        } else {
            run.stopped_by.clone()
        };
        let _ = sink
            .event(
                "message_delta",
                json!({"type": "message_delta",
                    "delta": {"stop_reason": reason, "stop_sequence": stop_seq},
                    "usage": {"output_tokens": run.tokens.len()}}),
            )
            .await
            && sink
                .event("message_stop", json!({"type": "message_stop"}))
                .await;
    });
    Ok(resp)
}

fn usage(run: &crate::api::Run) -> Value {
    json!({
        "input_tokens": run.n_prompt,
        "output_tokens": run.tokens.len(),
        "cache_read_input_tokens": run.cached,
        "cache_creation_input_tokens": 0,
    })
}

#[derive(PartialEq, Clone, Copy)]
enum Open {
    None,
    Text,
    Thinking,
    Tool,
}

/// The streamed content blocks: which one is open, how many there were.
struct Blocks {
    open: Open,
    blocks: usize,
    calls: bool,
}

impl Default for Blocks {
    fn default() -> Self {
        Blocks {
            open: Open::None,
            blocks: 0,
            calls: false,
        }
    }
}

impl Blocks {
    fn close(&mut self) -> Vec<(&'static str, Value)> {
        let mut out = Vec::new();
        if self.open == Open::Thinking {
            out.push((
                "content_block_delta",
                json!({"type": "content_block_delta", "index": self.blocks - 1,
                    "delta": {"type": "signature_delta", "signature": ""}}),
            ));
        }
        if self.open != Open::None {
            out.push((
                "content_block_stop",
                json!({"type": "content_block_stop", "index": self.blocks - 1}),
            ));
        }
        self.open = Open::None;
        out
    }

    fn begin(&mut self, kind: Open, block: Value) -> Vec<(&'static str, Value)> {
        let mut out = self.close();
        out.push((
            "content_block_start",
            json!({"type": "content_block_start", "index": self.blocks, "content_block": block}),
        ));
        self.blocks += 1;
        self.open = kind;
        out
    }

    /// The events of one parser event.
    fn on(&mut self, e: Ev) -> Vec<(&'static str, Value)> {
        let mut out = Vec::new();
        let (kind, delta) = match e {
            Ev::Text(s) => {
                if self.open != Open::Text {
                    if s.trim().is_empty() && self.open == Open::Tool {
                        return out; // whitespace between calls
                    }
                    out = self.begin(Open::Text, json!({"type": "text", "text": ""}));
                }
                (Open::Text, json!({"type": "text_delta", "text": s}))
            }
            Ev::Think(s) => {
                if self.open != Open::Thinking {
                    out = self.begin(
                        Open::Thinking,
                        json!({"type": "thinking", "thinking": "", "signature": ""}),
                    );
                }
                (
                    Open::Thinking,
                    json!({"type": "thinking_delta", "thinking": s}),
                )
            }
            Ev::Call { id, name, .. } => {
                self.calls = true;
                return self.begin(
                    Open::Tool,
                    json!({"type": "tool_use", "id": tool_id(&id), "name": name, "input": {}}),
                );
            }
            Ev::Args { delta, .. } => (
                Open::Tool,
                json!({"type": "input_json_delta", "partial_json": delta}),
            ),
        };
        if self.open == kind {
            out.push((
                "content_block_delta",
                json!({"type": "content_block_delta", "index": self.blocks - 1, "delta": delta}),
            ));
        }
        out
    }
}
