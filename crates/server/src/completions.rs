//! `POST /v1/completions`: the legacy text completions, with `echo` and `logprobs`.
use crate::api::{
    ApiError, ApiResult, App, Common, Gen, Sink, budget, check_model, check_text_len, logit_bias,
    new_id, now, off_runtime, parse_checked, sampling, stops, submit, token_str,
};
use crate::sched::TokenLogprob;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::response::{IntoResponse, Response};
use hearth_engine::Engine;
use serde::Deserialize;
use serde_json::{Value, json};
use std::sync::Arc;

const COMPLETION_FIELDS: &[&str] = &["prompt", "echo", "logprobs", "suffix", "best_of"];

#[derive(Deserialize)]
#[serde(untagged)]
enum Prompt {
    Text(String),
    Ids(Vec<u32>),
    Texts(Vec<String>),
    IdLists(Vec<Vec<u32>>),
}

#[derive(Deserialize)]
struct CompletionReq {
    #[serde(flatten)]
    common: Common,
    prompt: Prompt,
    #[serde(default)]
    echo: bool,
    logprobs: Option<u32>,
    suffix: Option<String>,
}

fn completion_gen(app: &App, req: &CompletionReq) -> ApiResult<Gen> {
    let c = &req.common;
    if c.n.unwrap_or(1) != 1 {
        return Err(ApiError::bad("only n = 1 is supported").param("n"));
    }
    if c.best_of.unwrap_or(1) != 1 {
        return Err(ApiError::bad("only best_of = 1 is supported").param("best_of"));
    }
    if req.suffix.is_some() {
        return Err(ApiError::bad("suffix is not supported").param("suffix"));
    }
    let tk = &app.eng.tokenizer;
    let enc = |s: &str| {
        check_text_len(app, s)?;
        tk.encode(s, true).map_err(|e| ApiError::bad(e.to_string()))
    };
    let prompt = match &req.prompt {
        Prompt::Text(s) => enc(s)?,
        Prompt::Ids(v) => v.clone(),
        Prompt::Texts(v) if v.len() == 1 => enc(&v[0])?,
        Prompt::IdLists(v) if v.len() == 1 => v[0].clone(),
        _ => return Err(ApiError::bad("one prompt per request is supported").param("prompt")),
    };
    let nv = app.eng.n_vocab();
    if let Some(bad) = prompt.iter().find(|&&t| t as usize >= nv) {
        return Err(
            ApiError::bad(format!("token id {bad} is outside the vocabulary of {nv}"))
                .param("prompt"),
        );
    }
    let top = match req.logprobs {
        Some(k) if k > 5 => {
            return Err(ApiError::bad("logprobs must be in [0, 5]").param("logprobs"));
        }
        k => k.map(|k| k as usize),
    };
    let max = budget(app, prompt.len(), c.max_tokens, Some(16))?;
    Ok(Gen {
        prompt,
        max_tokens: max,
        sampling: sampling(c)?,
        stops: stops(c)?,
        top_logprobs: top,
        prompt_logprobs: req.echo && top.is_some(),
        grammar: None,
        logit_bias: logit_bias(&c.logit_bias, nv)?,
    })
}

/// Legacy completions logprobs for `toks` whose text starts at `offset`.
fn completion_logprobs(
    eng: &Engine,
    toks: &[(u32, Option<TokenLogprob>)],
    mut offset: usize,
) -> Value {
    let mut tokens = Vec::new();
    let mut lps = Vec::new();
    let mut tops = Vec::new();
    let mut offs = Vec::new();
    for (t, lp) in toks {
        let s = token_str(eng, *t);
        offs.push(offset);
        offset += s.len();
        tokens.push(s);
        match lp {
            Some(lp) => {
                lps.push(json!(lp.logprob));
                let m: serde_json::Map<String, Value> = lp
                    .top
                    .iter()
                    .map(|&(t, l)| (token_str(eng, t), json!(l)))
                    .collect();
                tops.push(Value::Object(m));
            }
            None => {
                lps.push(Value::Null);
                tops.push(Value::Null);
            }
        }
    }
    let ids: Vec<u32> = toks.iter().map(|(t, _)| *t).collect();
    // `token_ids` is hearth's addition: the strings alone cannot name tokens exactly
    json!({"tokens": tokens, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offs, "token_ids": ids})
}

/// POST /v1/completions
pub async fn completions(
    State(app): State<Arc<App>>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let app2 = app.clone();
    let (req, g) = off_runtime(move || {
        let req: CompletionReq = parse_checked(body, COMPLETION_FIELDS)?;
        check_model(&app2, req.common.model.as_deref())?;
        let g = completion_gen(&app2, &req)?;
        Ok((req, g))
    })
    .await?;
    let prompt = g.prompt.clone();
    let want_lp = g.top_logprobs.is_some();
    let include_usage = req
        .common
        .stream_options
        .as_ref()
        .is_some_and(|o| o.include_usage);
    let echo = req.echo;
    let mut run = submit(&app, g)?;
    let id = new_id("cmpl");
    let created = now();
    let model = app.model_id.clone();
    let prompt_text = if echo {
        app.eng.tokenizer.decode(&prompt)
    } else {
        String::new()
    };
    if !req.common.stream {
        let mut toks = Vec::new();
        while let Some(p) = run.next(&app.eng).await? {
            toks.extend(p.tokens);
        }
        let lp = if want_lp {
            let mut all: Vec<(u32, Option<TokenLogprob>)> = Vec::new();
            if echo {
                all.push((prompt[0], None));
                for (i, lp) in run.prompt_lps.iter().enumerate() {
                    all.push((prompt[i + 1], Some(lp.clone())));
                }
            }
            let off = all
                .iter()
                .map(|(t, _)| token_str(&app.eng, *t).len())
                .sum::<usize>();
            let mut v = completion_logprobs(&app.eng, &all, 0);
            let gen_v = completion_logprobs(&app.eng, &toks, off);
            for k in [
                "tokens",
                "token_logprobs",
                "top_logprobs",
                "text_offset",
                "token_ids",
            ] {
                let extra = gen_v[k].as_array().cloned().unwrap_or_default();
                if let Some(a) = v[k].as_array_mut() {
                    a.extend(extra);
                }
            }
            v
        } else {
            Value::Null
        };
        return Ok(axum::Json(json!({
            "id": id, "object": "text_completion", "created": created, "model": model,
            "system_fingerprint": "hearth",
            "choices": [{"index": 0, "text": format!("{prompt_text}{}", run.text), "logprobs": lp, "finish_reason": run.finish.unwrap_or("stop")}],
            "usage": run.usage(),
        }))
        .into_response());
    }
    let (sink, resp) = Sink::new();
    let app2 = app.clone();
    tokio::spawn(async move {
        let head =
            json!({"id": id, "object": "text_completion", "created": created, "model": model});
        let chunk = |text: String, lp: Value, finish: Value| {
            let mut c = head.clone();
            c["choices"] =
                json!([{"index": 0, "text": text, "logprobs": lp, "finish_reason": finish}]);
            c
        };
        if echo
            && !sink
                .send(chunk(prompt_text, Value::Null, Value::Null))
                .await
        {
            return;
        }
        while let Some(p) = sink.next(&mut run, &app2.eng).await {
            let lp = if want_lp {
                completion_logprobs(&app2.eng, &p.tokens, 0)
            } else {
                Value::Null
            };
            if p.text.is_empty() && p.tokens.is_empty() {
                continue;
            }
            if !sink.send(chunk(p.text, lp, Value::Null)).await {
                return;
            }
        }
        let Some(finish) = run.finish else {
            return; // failed or abandoned
        };
        if sink
            .send(chunk(String::new(), Value::Null, json!(finish)))
            .await
        {
            sink.close(include_usage.then(|| head.clone()), &run).await;
        }
    });
    Ok(resp)
}

/// The fuzz target's part: a body through the request parsing and the settings' checks.
pub(crate) fn fuzz(raw: &[u8], n_vocab: usize) {
    let body = Ok(Bytes::copy_from_slice(raw));
    if let Ok(req) = parse_checked::<CompletionReq>(body, COMPLETION_FIELDS) {
        let _ = sampling(&req.common);
        let _ = stops(&req.common);
        let _ = logit_bias(&req.common.logit_bias, n_vocab);
    }
}
