//! POST /v1/chat/completions: the output read by the model family's parser, so reasoning
//! goes to `reasoning_content` and tool calls to `tool_calls`, streamed as they come.
use crate::api::{
    ApiResult, App, CHAT_FIELDS, ChatReq, Sink, chat_gen, chat_logprobs, check_model, new_id, now,
    off_runtime, parse_checked, submit,
};
use crate::tools::{Ev, collect};
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use std::sync::Arc;

/// The assistant message of a whole output's events.
pub(crate) fn message(evs: &[Ev]) -> (Value, bool) {
    let (reasoning, text, calls) = collect(evs);
    let mut m = json!({"role": "assistant", "content": text});
    if !reasoning.is_empty() {
        m["reasoning_content"] = json!(reasoning);
    }
    let has_calls = !calls.is_empty();
    if has_calls {
        let t = text.trim();
        m["content"] = if t.is_empty() { Value::Null } else { json!(t) };
        m["tool_calls"] = calls
            .into_iter()
            .map(|(id, name, args)| {
                json!({"id": id, "type": "function", "function": {"name": name, "arguments": args}})
            })
            .collect();
    }
    (m, has_calls)
}

/// Chunk deltas of some events: a call's start and the arguments right after it go in one.
fn deltas(evs: Vec<Ev>) -> Vec<Value> {
    let mut out: Vec<Value> = Vec::new();
    let mut last_call: Option<usize> = None;
    for e in evs {
        match e {
            Ev::Text(s) => {
                last_call = None;
                out.push(json!({"content": s}));
            }
            Ev::Think(s) => {
                last_call = None;
                out.push(json!({"reasoning_content": s}));
            }
            Ev::Call { index, id, name } => {
                last_call = Some(index);
                out.push(
                    json!({"tool_calls": [{"index": index, "id": id, "type": "function",
                    "function": {"name": name, "arguments": ""}}]}),
                );
            }
            Ev::Args { index, delta } => {
                if last_call == Some(index)
                    && let Some(a) = out
                        .last_mut()
                        .and_then(|d| d.pointer_mut("/tool_calls/0/function/arguments"))
                {
                    let s = format!("{}{delta}", a.as_str().unwrap_or(""));
                    *a = json!(s);
                    continue;
                }
                out.push(
                    json!({"tool_calls": [{"index": index, "function": {"arguments": delta}}]}),
                );
            }
        }
    }
    out
}

/// POST /v1/chat/completions
pub async fn chat(
    State(app): State<Arc<App>>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let app2 = app.clone();
    let (req, g, cfg) = off_runtime(move || {
        let req: ChatReq = parse_checked(body, CHAT_FIELDS)?;
        check_model(&app2, req.common.model.as_deref())?;
        let (g, cfg) = chat_gen(&app2, &req)?;
        Ok((req, g, cfg))
    })
    .await?;
    let include_usage = req
        .common
        .stream_options
        .as_ref()
        .is_some_and(|o| o.include_usage);
    let want_lp = g.top_logprobs.is_some();
    let mut run = submit(&app, g)?;
    let mut parser = cfg.parser();
    let id = new_id("chatcmpl");
    let created = now();
    let model = app.model_id.clone();
    if !req.common.stream {
        let mut toks = Vec::new();
        let mut evs = Vec::new();
        while let Some(p) = run.next(&app.eng).await? {
            toks.extend(p.tokens);
            evs.extend(parser.push(&p.text));
        }
        evs.extend(parser.finish());
        let (message, has_calls) = message(&evs);
        let finish = if has_calls {
            "tool_calls"
        } else {
            run.finish.unwrap_or("stop")
        };
        let lp = if want_lp {
            chat_logprobs(&app.eng, &toks)
        } else {
            Value::Null
        };
        return Ok(axum::Json(json!({
            "id": id,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "system_fingerprint": "hearth",
            "choices": [{"index": 0, "message": message, "logprobs": lp, "finish_reason": finish}],
            "usage": run.usage(),
        }))
        .into_response());
    }
    let (sink, resp) = Sink::new();
    let app2 = app.clone();
    tokio::spawn(async move {
        let head = json!({"id": id, "object": "chat.completion.chunk", "created": created,
                          "model": model, "system_fingerprint": "hearth"});
        let chunk = |delta: Value, lp: Value, finish: Value| {
            let mut c = head.clone();
            c["choices"] =
                json!([{"index": 0, "delta": delta, "logprobs": lp, "finish_reason": finish}]);
            c
        };
        if !sink
            .send(chunk(
                json!({"role": "assistant", "content": ""}),
                Value::Null,
                Value::Null,
            ))
            .await
        {
            return;
        }
        let mut has_calls = false;
        loop {
            let (evs, mut lp, done) = match sink.next(&mut run, &app2.eng).await {
                Some(p) => {
                    let lp = (want_lp && !p.tokens.is_empty())
                        .then(|| chat_logprobs(&app2.eng, &p.tokens));
                    (parser.push(&p.text), lp, false)
                }
                None if run.finish.is_some() => (parser.finish(), None, true),
                None => return, // failed or abandoned: dropping `run` cancels the sequence
            };
            has_calls |= evs.iter().any(|e| matches!(e, Ev::Call { .. }));
            let mut ds = deltas(evs);
            if ds.is_empty() && lp.is_some() {
                ds.push(json!({"content": ""}));
            }
            for d in ds {
                let l = lp.take().unwrap_or(Value::Null);
                if !sink.send(chunk(d, l, Value::Null)).await {
                    return;
                }
            }
            if done {
                break;
            }
        }
        let finish = if has_calls {
            "tool_calls"
        } else {
            run.finish.unwrap_or("stop")
        };
        if sink
            .send(chunk(json!({}), Value::Null, json!(finish)))
            .await
        {
            sink.close(include_usage.then(|| head.clone()), &run).await;
        }
    });
    Ok(resp)
}
