//! POST /v1/responses: OpenAI's Responses API, stateless (no `previous_response_id`, nothing
//! stored). Input items become chat messages (`function_call` items the assistant's tool
//! calls, `function_call_output` items tool messages, `reasoning` items the assistant's
//! reasoning); the output's events become `reasoning`, `message` and `function_call` items,
//! streamed with the Responses event sequence.
use crate::api::{
    ApiError, ApiResult, App, ChatReq, Gen, OutCfg, Run, Sink, chat_gen, check_model, new_id, now,
    off_runtime, parse, submit,
};
use crate::tools::{Ev, collect};
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};
use std::sync::Arc;

const FIELDS: &[&str] = &[
    "model",
    "input",
    "instructions",
    "tools",
    "tool_choice",
    "max_output_tokens",
    "temperature",
    "top_p",
    "stream",
    "reasoning",
    "text",
    "store",
    "metadata",
    "parallel_tool_calls",
    "include",
    "truncation",
    "user",
    "service_tier",
    "prompt_cache_key",
    "safety_identifier",
    "stream_options",
    "background",
    "previous_response_id",
    "conversation",
    "top_logprobs",
    "max_tool_calls",
    "prompt",
];

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError::new(axum::http::StatusCode::BAD_REQUEST, msg)
}

/// The text of an input message's content: a string or input_text/output_text parts.
fn content_text(v: Option<&Value>, i: usize) -> ApiResult<String> {
    match v {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(parts)) => {
            let mut s = String::new();
            for p in parts {
                match (p.get("type").and_then(Value::as_str), p.get("text")) {
                    (Some("input_text" | "output_text" | "text"), Some(Value::String(t))) => {
                        s.push_str(t)
                    }
                    (t, _) => {
                        return Err(bad(format!(
                            "input[{i}]: content parts of type '{}' are not supported",
                            t.unwrap_or("(none)")
                        ))
                        .param("input"));
                    }
                }
            }
            Ok(s)
        }
        Some(_) => Err(bad(format!(
            "input[{i}].content must be a string or a list of parts"
        ))),
    }
}

/// A Responses request as a Chat Completions one; and whether it streams.
fn to_chat(o: &Map<String, Value>) -> ApiResult<(Value, bool)> {
    if let Some(k) = o.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        return Err(bad(format!("Unrecognized request argument supplied: {k}")));
    }
    for k in ["previous_response_id", "conversation", "prompt"] {
        if o.get(k).is_some_and(|v| !v.is_null()) {
            return Err(bad(format!(
                "{k} is not supported: this server keeps no state; send the whole conversation as input items"
            ))
            .param(k));
        }
    }
    if o.get("background").and_then(Value::as_bool) == Some(true) {
        return Err(bad("background responses are not supported").param("background"));
    }
    let mut msgs: Vec<Value> = Vec::new();
    if let Some(Value::String(s)) = o.get("instructions") {
        msgs.push(json!({"role": "system", "content": s}));
    }
    let mut reasoning = String::new();
    match o.get("input") {
        Some(Value::String(s)) => msgs.push(json!({"role": "user", "content": s})),
        Some(Value::Array(items)) => {
            for (i, it) in items.iter().enumerate() {
                let kind = it.get("type").and_then(Value::as_str).unwrap_or("message");
                match kind {
                    "message" => {
                        let role = match it.get("role").and_then(Value::as_str) {
                            Some(r @ ("user" | "assistant" | "system")) => r,
                            Some("developer") => "system",
                            _ => {
                                return Err(bad(format!(
                                    "input[{i}].role must be user, assistant, system or developer"
                                ))
                                .param("input"));
                            }
                        };
                        let mut m =
                            json!({"role": role, "content": content_text(it.get("content"), i)?});
                        if role == "assistant" && !reasoning.is_empty() {
                            m["reasoning_content"] = json!(std::mem::take(&mut reasoning));
                        }
                        msgs.push(m);
                    }
                    "reasoning" => {
                        for k in ["content", "summary"] {
                            for p in it.get(k).and_then(Value::as_array).into_iter().flatten() {
                                if let Some(t) = p.get("text").and_then(Value::as_str) {
                                    reasoning.push_str(t);
                                }
                            }
                        }
                    }
                    "function_call" => {
                        let (Some(id), Some(name)) = (
                            it.get("call_id").and_then(Value::as_str),
                            it.get("name").and_then(Value::as_str),
                        ) else {
                            return Err(bad(format!(
                                "input[{i}]: a function_call needs call_id and name"
                            ))
                            .param("input"));
                        };
                        let args = it.get("arguments").and_then(Value::as_str).unwrap_or("{}");
                        let call = json!({"id": id, "type": "function",
                            "function": {"name": name, "arguments": args}});
                        // calls right after an assistant message (or each other) join it
                        match msgs.last_mut() {
                            Some(m) if m["role"] == "assistant" => {
                                if let Some(Value::Array(cs)) = m.get_mut("tool_calls") {
                                    cs.push(call);
                                } else {
                                    m["tool_calls"] = json!([call]);
                                }
                            }
                            _ => {
                                let mut m = json!({"role": "assistant", "content": "", "tool_calls": [call]});
                                if !reasoning.is_empty() {
                                    m["reasoning_content"] = json!(std::mem::take(&mut reasoning));
                                }
                                msgs.push(m);
                            }
                        }
                    }
                    "function_call_output" => {
                        let id = it.get("call_id").and_then(Value::as_str).ok_or_else(|| {
                            bad(format!("input[{i}]: a function_call_output needs call_id"))
                                .param("input")
                        })?;
                        let out = match it.get("output") {
                            Some(Value::String(s)) => s.clone(),
                            o => content_text(o, i)?,
                        };
                        msgs.push(json!({"role": "tool", "tool_call_id": id, "content": out}));
                    }
                    t => {
                        return Err(bad(format!(
                            "input[{i}]: items of type '{t}' are not supported"
                        ))
                        .param("input"));
                    }
                }
            }
        }
        _ => return Err(bad("input must be a string or a list of items").param("input")),
    }
    let mut chat = Map::new();
    chat.insert("messages".into(), Value::Array(msgs));
    for k in ["model", "temperature", "top_p", "parallel_tool_calls"] {
        if let Some(v) = o.get(k) {
            chat.insert(k.into(), v.clone());
        }
    }
    if let Some(v) = o.get("max_output_tokens").filter(|v| !v.is_null()) {
        chat.insert("max_tokens".into(), v.clone());
    }
    if let Some(Value::Array(ts)) = o.get("tools") {
        let mut fs = Vec::new();
        for t in ts {
            if t.get("type").and_then(Value::as_str) != Some("function") {
                return Err(bad("only function tools are supported").param("tools"));
            }
            let name = t
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| bad("each function tool needs a name").param("tools"))?;
            let mut f = json!({"name": name,
                "parameters": t.get("parameters").cloned().unwrap_or(json!({"type": "object"}))});
            if let Some(d) = t.get("description") {
                f["description"] = d.clone();
            }
            fs.push(json!({"type": "function", "function": f}));
        }
        chat.insert("tools".into(), Value::Array(fs));
    }
    if let Some(tc) = o.get("tool_choice") {
        let c = match tc {
            Value::String(_) => tc.clone(),
            _ => match (tc.get("type").and_then(Value::as_str), tc.get("name")) {
                (Some("function"), Some(n)) => json!({"type": "function", "function": {"name": n}}),
                _ => {
                    return Err(
                        bad("tool_choice must be none, auto, required or a function")
                            .param("tool_choice"),
                    );
                }
            },
        };
        chat.insert("tool_choice".into(), c);
    }
    if let Some(e) = o
        .get("reasoning")
        .and_then(|r| r.get("effort"))
        .filter(|v| !v.is_null())
    {
        chat.insert("reasoning_effort".into(), e.clone());
        let on = e.as_str() != Some("none") && e.as_str() != Some("minimal");
        chat.insert(
            "chat_template_kwargs".into(),
            json!({"enable_thinking": on}),
        );
    }
    if let Some(f) = o.get("text").and_then(|t| t.get("format")) {
        let rf = match f.get("type").and_then(Value::as_str) {
            Some("text") => json!({"type": "text"}),
            Some("json_object") => json!({"type": "json_object"}),
            Some("json_schema") => json!({"type": "json_schema", "json_schema": {
                "name": f.get("name").cloned().unwrap_or(json!("output")),
                "schema": f.get("schema").cloned().unwrap_or(json!({}))}}),
            _ => {
                return Err(
                    bad("text.format.type must be text, json_object or json_schema").param("text"),
                );
            }
        };
        chat.insert("response_format".into(), rf);
    }
    let stream = o.get("stream").and_then(Value::as_bool).unwrap_or(false);
    Ok((Value::Object(chat), stream))
}

fn prepare(
    app: &App,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<(Value, Gen, OutCfg, bool)> {
    let v: Value = parse(body)?;
    let Value::Object(o) = &v else {
        return Err(bad("the request body must be a JSON object"));
    };
    let (chat, stream) = to_chat(o)?;
    let req: ChatReq =
        serde_json::from_value(chat).map_err(|e| bad(format!("invalid request body: {e}")))?;
    check_model(app, req.common.model.as_deref())?;
    let (g, cfg) = chat_gen(app, &req)?;
    Ok((v, g, cfg, stream))
}

/// The fuzz target's part: a body converted as far as a chat request.
pub(crate) fn fuzz(body: &[u8]) {
    if let Ok(Value::Object(o)) = serde_json::from_slice::<Value>(body)
        && let Ok((chat, _)) = to_chat(&o)
    {
        let _ = serde_json::from_value::<ChatReq>(chat);
    }
}

/// The response object (`output` and `status` filled in by the caller).
fn response_obj(id: &str, created: u64, model: &str, req: &Value) -> Value {
    let get = |k: &str, d: Value| req.get(k).cloned().unwrap_or(d);
    json!({
        "id": id,
        "object": "response",
        "created_at": created,
        "status": "in_progress",
        "error": null,
        "incomplete_details": null,
        "instructions": get("instructions", Value::Null),
        "max_output_tokens": get("max_output_tokens", Value::Null),
        "model": model,
        "output": [],
        "parallel_tool_calls": get("parallel_tool_calls", json!(true)),
        "previous_response_id": null,
        "reasoning": get("reasoning", json!({"effort": null, "summary": null})),
        "store": false,
        "temperature": get("temperature", json!(1.0)),
        "text": get("text", json!({"format": {"type": "text"}})),
        "tool_choice": get("tool_choice", json!("auto")),
        "tools": get("tools", json!([])),
        "top_p": get("top_p", json!(1.0)),
        "truncation": "disabled",
        "usage": null,
        "metadata": get("metadata", json!({})),
    })
}

fn finish_obj(r: &mut Value, run: &Run, output: Vec<Value>, reasoning_tokens: usize) {
    let incomplete = run.finish == Some("length");
    r["status"] = json!(if incomplete {
        "incomplete"
    } else {
        "completed"
    });
    if incomplete {
        r["incomplete_details"] = json!({"reason": "max_output_tokens"});
    }
    r["output"] = Value::Array(output);
    let n = run.tokens.len();
    r["usage"] = json!({
        "input_tokens": run.n_prompt,
        "input_tokens_details": {"cached_tokens": run.cached},
        "output_tokens": n,
        "output_tokens_details": {"reasoning_tokens": reasoning_tokens.min(n)},
        "total_tokens": run.n_prompt + n,
    });
}

fn reasoning_item(id: &str, text: &str) -> Value {
    json!({"id": id, "type": "reasoning", "summary": [],
           "content": [{"type": "reasoning_text", "text": text}]})
}

fn message_item(id: &str, text: &str, status: &str) -> Value {
    json!({"id": id, "type": "message", "role": "assistant", "status": status,
           "content": if status == "completed" {
               json!([{"type": "output_text", "text": text, "annotations": [], "logprobs": []}])
           } else { json!([]) }})
}

fn call_item(id: &str, call_id: &str, name: &str, args: &str, status: &str) -> Value {
    json!({"id": id, "type": "function_call", "call_id": call_id, "name": name,
           "arguments": args, "status": status})
}

/// POST /v1/responses
pub async fn responses(
    State(app): State<Arc<App>>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let app2 = app.clone();
    let (req, g, cfg, stream) = off_runtime(move || prepare(&app2, body)).await?;
    let mut run = submit(&app, g)?;
    let mut parser = cfg.parser();
    let id = format!("resp_{}", new_id("").trim_start_matches('-'));
    let created = now();
    let mut obj = response_obj(&id, created, &app.model_id, &req);
    if !stream {
        let evs = run.parse_all(&app.eng, &mut parser).await?;
        let (reasoning, text, calls) = collect(&evs);
        let mut out = Vec::new();
        if !reasoning.is_empty() {
            out.push(reasoning_item(&new_id("rs"), &reasoning));
        }
        let text = if calls.is_empty() {
            text.as_str()
        } else {
            text.trim()
        };
        if !text.is_empty() || calls.is_empty() {
            out.push(message_item(&new_id("msg"), text, "completed"));
        }
        for (call_id, name, args) in calls {
            out.push(call_item(
                &new_id("fc"),
                &call_id,
                &name,
                &args,
                "completed",
            ));
        }
        let rt = app
            .eng
            .tokenizer
            .encode(&reasoning, false)
            .map(|t| t.len())
            .unwrap_or(0);
        finish_obj(&mut obj, &run, out, rt);
        return Ok(axum::Json(obj).into_response());
    }
    let (sink, resp) = Sink::new();
    tokio::spawn(async move {
        let mut st = Items {
            seq: 0,
            open: None,
            done: Vec::new(),
            reasoning: String::new(),
        };
        let r0 = obj.clone();
        if !st
            .send(&sink, "response.created", json!({"response": r0}))
            .await
            || !st
                .send(
                    &sink,
                    "response.in_progress",
                    json!({"response": obj.clone()}),
                )
                .await
        {
            return;
        }
        loop {
            let (evs, done) = match sink.parsed(&mut run, &app.eng, &mut parser).await {
                None => return,
                Some(Ok(r)) => r,
                Some(Err(e)) => {
                    let mut f = obj.clone();
                    f["status"] = json!("failed");
                    f["error"] = json!({"code": "server_error", "message": e.message});
                    let _ = st
                        .send(&sink, "response.failed", json!({"response": f}))
                        .await;
                    return;
                }
            };
            for e in evs {
                if !st.on(&sink, e).await {
                    return;
                }
            }
            if done {
                break;
            }
        }
        if st.done.is_empty() && st.open.is_none() && !st.on(&sink, Ev::Text(String::new())).await {
            return;
        }
        if !st.close(&sink).await {
            return;
        }
        let rt = app
            .eng
            .tokenizer
            .encode(&st.reasoning, false)
            .map(|t| t.len())
            .unwrap_or(0);
        let output = std::mem::take(&mut st.done);
        finish_obj(&mut obj, &run, output, rt);
        let kind = if obj["status"] == "incomplete" {
            "response.incomplete"
        } else {
            "response.completed"
        };
        let _ = st.send(&sink, kind, json!({"response": obj})).await;
    });
    Ok(resp)
}

/// The item being streamed.
enum Item {
    Reasoning {
        id: String,
        text: String,
    },
    Message {
        id: String,
        text: String,
    },
    Call {
        id: String,
        call_id: String,
        name: String,
        args: String,
    },
}

/// The streamed output items.
struct Items {
    seq: u64,
    open: Option<Item>,
    done: Vec<Value>,
    /// All reasoning text (its token count is reported).
    reasoning: String,
}

impl Items {
    async fn send(&mut self, sink: &Sink, kind: &str, mut v: Value) -> bool {
        v["type"] = json!(kind);
        v["sequence_number"] = json!(self.seq);
        self.seq += 1;
        sink.event(kind, v).await
    }

    fn index(&self) -> usize {
        self.done.len()
    }

    /// Finish the open item.
    async fn close(&mut self, sink: &Sink) -> bool {
        let Some(item) = self.open.take() else {
            return true;
        };
        let oi = self.index();
        let (item, ok) = match item {
            Item::Reasoning { id, text } => {
                let ok = self
                    .send(
                        sink,
                        "response.reasoning_text.done",
                        json!({"item_id": id,
                        "output_index": oi, "content_index": 0, "text": text}),
                    )
                    .await
                    && self
                        .send(
                            sink,
                            "response.content_part.done",
                            json!({"item_id": id,
                            "output_index": oi, "content_index": 0,
                            "part": {"type": "reasoning_text", "text": text}}),
                        )
                        .await;
                (reasoning_item(&id, &text), ok)
            }
            Item::Message { id, text } => {
                let part =
                    json!({"type": "output_text", "text": text, "annotations": [], "logprobs": []});
                let ok = self
                    .send(
                        sink,
                        "response.output_text.done",
                        json!({"item_id": id,
                        "output_index": oi, "content_index": 0, "text": text, "logprobs": []}),
                    )
                    .await
                    && self
                        .send(
                            sink,
                            "response.content_part.done",
                            json!({"item_id": id,
                            "output_index": oi, "content_index": 0, "part": part}),
                        )
                        .await;
                (message_item(&id, &text, "completed"), ok)
            }
            Item::Call {
                id,
                call_id,
                name,
                args,
            } => {
                let ok = self
                    .send(
                        sink,
                        "response.function_call_arguments.done",
                        json!({"item_id": id,
                        "output_index": oi, "name": name, "arguments": args}),
                    )
                    .await;
                (call_item(&id, &call_id, &name, &args, "completed"), ok)
            }
        };
        if !ok {
            return false;
        }
        let ok = self
            .send(
                sink,
                "response.output_item.done",
                json!({"output_index": oi, "item": item}),
            )
            .await;
        self.done.push(item);
        ok
    }

    async fn begin(&mut self, sink: &Sink, item: Item) -> bool {
        if !self.close(sink).await {
            return false;
        }
        let oi = self.index();
        let (added, part) = match &item {
            Item::Reasoning { id, .. } => (
                json!({"id": id, "type": "reasoning", "summary": [], "content": []}),
                Some((id.clone(), json!({"type": "reasoning_text", "text": ""}))),
            ),
            Item::Message { id, .. } => (
                message_item(id, "", "in_progress"),
                Some((
                    id.clone(),
                    json!({"type": "output_text", "text": "", "annotations": [], "logprobs": []}),
                )),
            ),
            Item::Call {
                id, call_id, name, ..
            } => (call_item(id, call_id, name, "", "in_progress"), None),
        };
        self.open = Some(item);
        if !self
            .send(
                sink,
                "response.output_item.added",
                json!({"output_index": oi, "item": added}),
            )
            .await
        {
            return false;
        }
        match part {
            Some((id, part)) => {
                self.send(
                    sink,
                    "response.content_part.added",
                    json!({"item_id": id,
                    "output_index": oi, "content_index": 0, "part": part}),
                )
                .await
            }
            None => true,
        }
    }

    async fn on(&mut self, sink: &Sink, e: Ev) -> bool {
        let oi = self.index();
        match e {
            Ev::Think(s) => {
                self.reasoning.push_str(&s);
                if !matches!(self.open, Some(Item::Reasoning { .. }))
                    && !self
                        .begin(
                            sink,
                            Item::Reasoning {
                                id: new_id("rs"),
                                text: String::new(),
                            },
                        )
                        .await
                {
                    return false;
                }
                let Some(Item::Reasoning { id, text }) = &mut self.open else {
                    return false;
                };
                text.push_str(&s);
                let id = id.clone();
                self.send(
                    sink,
                    "response.reasoning_text.delta",
                    json!({"item_id": id,
                    "output_index": oi, "content_index": 0, "delta": s}),
                )
                .await
            }
            Ev::Text(s) => {
                if !matches!(self.open, Some(Item::Message { .. })) {
                    if s.trim().is_empty() && matches!(self.open, Some(Item::Call { .. })) {
                        return true; // whitespace between calls
                    }
                    if !self
                        .begin(
                            sink,
                            Item::Message {
                                id: new_id("msg"),
                                text: String::new(),
                            },
                        )
                        .await
                    {
                        return false;
                    }
                }
                let oi = self.index();
                let Some(Item::Message { id, text }) = &mut self.open else {
                    return false;
                };
                text.push_str(&s);
                let id = id.clone();
                if s.is_empty() {
                    return true;
                }
                self.send(
                    sink,
                    "response.output_text.delta",
                    json!({"item_id": id,
                    "output_index": oi, "content_index": 0, "delta": s, "logprobs": []}),
                )
                .await
            }
            Ev::Call { id, name, .. } => {
                let item = Item::Call {
                    id: new_id("fc"),
                    call_id: id,
                    name,
                    args: String::new(),
                };
                self.begin(sink, item).await
            }
            Ev::Args { delta, .. } => {
                let Some(Item::Call { id, args, .. }) = &mut self.open else {
                    return true;
                };
                args.push_str(&delta);
                let id = id.clone();
                self.send(
                    sink,
                    "response.function_call_arguments.delta",
                    json!({"item_id": id,
                    "output_index": oi, "delta": delta}),
                )
                .await
            }
        }
    }
}
