//! `POST /v1/embeddings` (OpenAI's shape): each input's final hidden states pooled as the
//! model defines (mean, cls or last token) and L2-normalised, computed by the scheduler
//! alongside generations.
use crate::api::{ApiError, ApiResult, App, admit, check_model, check_text_len, off_runtime};
use crate::sched::{Event, Job};
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use hearth_engine::SamplingParams;
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;
use tokio::sync::mpsc;

/// Most inputs in one request (OpenAI's limit).
const MAX_INPUTS: usize = 2048;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EmbeddingsReq {
    input: Value,
    model: Option<String>,
    encoding_format: Option<String>,
    dimensions: Option<u64>,
    #[allow(dead_code)]
    user: Option<String>,
}

/// One input: text to tokenize, or token ids.
#[derive(Debug, PartialEq)]
enum Input {
    Text(String),
    Ids(Vec<u32>),
}

const INPUT_SHAPES: &str = "input must be a string, an array of strings, an array of token ids or an array of arrays of token ids";

fn token_ids(v: &[Value], n_vocab: usize) -> ApiResult<Vec<u32>> {
    v.iter()
        .map(|t| {
            let id = t
                .as_u64()
                .ok_or_else(|| ApiError::bad(INPUT_SHAPES).param("input"))?;
            if id >= n_vocab as u64 {
                return Err(ApiError::bad(format!(
                    "token id {id} is outside the vocabulary of {n_vocab}"
                ))
                .param("input"));
            }
            Ok(id as u32)
        })
        .collect()
}

/// The request's inputs, in order.
fn inputs(input: &Value, n_vocab: usize) -> ApiResult<Vec<Input>> {
    let bad = || ApiError::bad(INPUT_SHAPES).param("input");
    let items = match input {
        Value::String(s) => return Ok(vec![Input::Text(s.clone())]),
        Value::Array(a) => a,
        _ => return Err(bad()),
    };
    if items.is_empty() {
        return Err(ApiError::bad("input must not be empty").param("input"));
    }
    if items.iter().all(Value::is_number) {
        return Ok(vec![Input::Ids(token_ids(items, n_vocab)?)]);
    }
    if items.len() > MAX_INPUTS {
        return Err(ApiError::bad(format!(
            "input has {} items; at most {MAX_INPUTS} are allowed in one request",
            items.len()
        ))
        .param("input"));
    }
    items
        .iter()
        .map(|it| match it {
            Value::String(s) => Ok(Input::Text(s.clone())),
            Value::Array(ids) => Ok(Input::Ids(token_ids(ids, n_vocab)?)),
            _ => Err(bad()),
        })
        .collect()
}

/// Standard base64 (with padding) of `bytes`.
fn base64(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for c in bytes.chunks(3) {
        let n = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        for k in 0..4 {
            if k <= c.len() {
                out.push(A[(n >> (18 - 6 * k) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A vector as the response carries it: JSON numbers (each the shortest decimal that reads
/// back as the same f32), or base64 of its little-endian f32 bytes.
fn encode(v: &[f32], base64_format: bool) -> Value {
    if base64_format {
        let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        return Value::String(base64(&bytes));
    }
    Value::Array(
        v.iter()
            .map(|x| json!(format!("{x}").parse::<f64>().unwrap_or(0.0)))
            .collect(),
    )
}

/// A checked request: the inputs' tokens and the output format.
struct Plan {
    tokens: Vec<Vec<u32>>,
    base64: bool,
}

fn check(app: &App, body: Result<Bytes, BytesRejection>) -> ApiResult<Plan> {
    let req: EmbeddingsReq = crate::api::parse(body)?;
    check_model(app, req.model.as_deref())?;
    let base64 = match req.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(f) => {
            return Err(ApiError::bad(format!(
                "encoding_format must be float or base64, not '{f}'"
            ))
            .param("encoding_format"));
        }
    };
    let n_embd = app.eng.model.cfg.n_embd;
    match req.dimensions {
        None => {}
        Some(d) if d == n_embd as u64 => {}
        Some(d) => {
            return Err(ApiError::bad(format!(
                "dimensions is not supported: this model's embeddings have {n_embd} dimensions, and cannot be shortened to {d}"
            ))
            .param("dimensions"));
        }
    }
    if let Err(e) = &app.pooling {
        return Err(ApiError::bad(format!("this model gives no embeddings: {e}")).param("model"));
    }
    let tk = &app.eng.tokenizer;
    let mut tokens = Vec::new();
    for (i, inp) in inputs(&req.input, app.eng.n_vocab())?
        .into_iter()
        .enumerate()
    {
        let ids = match inp {
            Input::Ids(ids) => ids,
            Input::Text(t) => {
                check_text_len(app, &t)?;
                tk.encode(&t, true)
                    .map_err(|e| ApiError::bad(e.to_string()).param("input"))?
            }
        };
        if ids.is_empty() {
            return Err(ApiError::bad(format!("input {i} is empty")).param("input"));
        }
        if ids.len() > app.n_ctx {
            return Err(ApiError::bad(format!(
                "This model's maximum context length is {} tokens. However, input {i} has {} tokens.",
                app.n_ctx,
                ids.len()
            ))
            .param("input")
            .code("context_length_exceeded"));
        }
        tokens.push(ids);
    }
    Ok(Plan { tokens, base64 })
}

/// The embedding of one job's answer.
async fn answer(rx: &mut mpsc::UnboundedReceiver<Event>) -> ApiResult<Vec<f32>> {
    let internal = |m: String| Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, m));
    match rx.recv().await {
        Some(Event::Embedding(v)) if v.iter().all(|x| x.is_finite()) => Ok(v),
        Some(Event::Embedding(_)) => internal(
            "the model produced a non-finite embedding: its weights or the computation are broken"
                .into(),
        ),
        Some(Event::Error(e)) => internal(e),
        Some(Event::Refused(e)) => Err(ApiError::bad(e)),
        Some(Event::Prompt(_) | Event::Token(..) | Event::Done { .. }) => {
            internal("the scheduler answered an embedding request with a generation".into())
        }
        None => internal("the scheduler dropped the request".into()),
    }
}

/// POST /v1/embeddings
///
/// The request is admitted (or refused with 429) as one; its inputs then go to the scheduler
/// as jobs, at most `parallel` at a time, so a request of many inputs neither floods the queue
/// nor takes more than its share of slots. A client that leaves cancels the jobs in flight.
pub async fn embeddings(
    State(app): State<Arc<App>>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<axum::Json<Value>> {
    let app2 = app.clone();
    let plan = off_runtime(move || check(&app2, body)).await?;
    let pooling = app
        .pooling
        .clone()
        .map_err(|e| ApiError::bad(format!("this model gives no embeddings: {e}")))?;
    let n = plan.tokens.len();
    let n_tokens: usize = plan.tokens.iter().map(Vec::len).sum();
    admit(&app)?;
    let window = app.parallel.max(1);
    let mut todo = plan.tokens.into_iter();
    let mut pending = VecDeque::new();
    let mut data = Vec::with_capacity(n);
    let mut counted = true; // the admission above counts the first job
    while data.len() < n {
        while pending.len() < window {
            let Some(prompt) = todo.next() else {
                break;
            };
            if !counted {
                // the request's later inputs: it was admitted already
                app.metrics.in_flight.fetch_add(1, Relaxed);
            }
            counted = false;
            let (tx, rx) = mpsc::unbounded_channel();
            crate::api::send_job(
                &app,
                Job {
                    prompt,
                    max_tokens: 0,
                    sampling: SamplingParams::default(),
                    top_logprobs: None,
                    prompt_logprobs: false,
                    grammar: None,
                    logit_bias: Vec::new(),
                    embed: Some(pooling),
                    events: tx,
                    received: Instant::now(),
                },
            )?;
            pending.push_back(rx);
        }
        let Some(mut rx) = pending.pop_front() else {
            break;
        };
        let v = answer(&mut rx).await?;
        data.push(json!({
            "object": "embedding",
            "index": data.len(),
            "embedding": encode(&v, plan.base64),
        }));
    }
    Ok(axum::Json(json!({
        "object": "list",
        "data": data,
        "model": app.model_id,
        "usage": {"prompt_tokens": n_tokens, "total_tokens": n_tokens},
    })))
}

/// The fuzz target's part: a body through the request and input parsing.
pub(crate) fn fuzz(raw: &[u8]) {
    if let Ok(req) = serde_json::from_slice::<EmbeddingsReq>(raw) {
        let _ = inputs(&req.input, 49152);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_input_shape_and_the_bad_ones() {
        let t = |v: Value| inputs(&v, 100);
        assert_eq!(t(json!("hi")).unwrap(), vec![Input::Text("hi".into())]);
        assert_eq!(
            t(json!(["a", "b"])).unwrap(),
            vec![Input::Text("a".into()), Input::Text("b".into())]
        );
        assert_eq!(
            t(json!([1, 2, 3])).unwrap(),
            vec![Input::Ids(vec![1, 2, 3])]
        );
        assert_eq!(
            t(json!([[1], [2, 3]])).unwrap(),
            vec![Input::Ids(vec![1]), Input::Ids(vec![2, 3])]
        );
        for (bad, says) in [
            (json!([]), "must not be empty"),
            (json!(5), "input must be"),
            (json!({"a": 1}), "input must be"),
            (json!(["a", 1]), "input must be"),
            (json!([1, -2]), "input must be"),
            (json!([1.5]), "input must be"),
            (json!([[1], ["x"]]), "input must be"),
            (json!([100]), "outside the vocabulary"),
            (json!([[1], [7, 1000]]), "outside the vocabulary"),
            (json!(vec!["x"; MAX_INPUTS + 1]), "at most 2048"),
        ] {
            let e = t(bad.clone()).unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{bad}");
            assert!(e.message.contains(says), "{bad}: {}", e.message);
        }
    }

    #[test]
    fn base64_is_standard_with_padding() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64(&[0xff, 0xfe, 0x00, 0x01]), "//4AAQ==");
        // 1.0f32 little-endian: 00 00 80 3f
        assert_eq!(encode(&[1.0], true), json!("AACAPw=="));
    }

    #[test]
    fn floats_are_written_shortest_and_read_back_exactly() {
        let v = [0.1f32, -1.0 / 3.0, 1e-8, 0.0];
        let e = encode(&v, false);
        assert_eq!(e[0].to_string(), "0.1");
        for (x, j) in v.iter().zip(e.as_array().unwrap()) {
            assert_eq!(j.as_f64().unwrap() as f32, *x);
        }
    }
}
