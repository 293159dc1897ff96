//! hearth-server: an OpenAI-compatible HTTP API over one loaded model, with continuous
//! batching, a paged KV pool with prefix reuse, and constrained decoding.
pub mod api;
mod chat;
mod completions;
mod embeddings;
mod messages;
mod page;
mod responses;
pub mod tools;
pub use hearth_engine::{grammar, sched};

use api::App;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use hearth_engine::Engine;
use std::sync::{Arc, Mutex};

/// Server settings.
#[derive(Clone, Debug)]
pub struct Options {
    /// Address to bind.
    pub host: String,
    /// Port to bind.
    pub port: u16,
    /// Context size per sequence.
    pub n_ctx: usize,
    /// Most sequences running at once.
    pub parallel: usize,
    /// Tokens per forward pass.
    pub batch_tokens: usize,
    /// KV pool budget in bytes.
    pub kv_bytes: usize,
    /// Positions per KV page.
    pub page_size: usize,
    /// Most requests waiting for admission before answering 429.
    pub max_queue: usize,
    /// Required bearer token.
    pub api_key: Option<String>,
    /// The model's name in the API.
    pub model_id: String,
    /// Other names accepted for it.
    pub aliases: Vec<String>,
    /// Largest request body in bytes.
    pub body_limit: usize,
    /// How long a client may take to send a request's head (the request line and headers).
    pub head_timeout: std::time::Duration,
    /// How long a client may take to send a request's body once its head has arrived.
    pub body_timeout: std::time::Duration,
    /// Most connections open at once; more are closed as soon as they are accepted.
    pub max_connections: usize,
    /// A chat template to use instead of the model's own.
    pub chat_template: Option<String>,
}

impl Options {
    /// The scheduler's sizes.
    pub fn limits(&self) -> sched::Limits {
        sched::Limits {
            n_ctx: self.n_ctx,
            parallel: self.parallel,
            batch_tokens: self.batch_tokens,
            kv_bytes: self.kv_bytes,
            page_size: self.page_size,
        }
    }
}

/// Read the whole request body within `timeout` (a client that stops sending mid-body gets a
/// 408 and its connection back, instead of holding it forever).
async fn body_in_time(
    axum::extract::State((timeout, limit)): axum::extract::State<(std::time::Duration, usize)>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let (parts, body) = req.into_parts();
    let bytes = match tokio::time::timeout(timeout, axum::body::to_bytes(body, limit)).await {
        Ok(Ok(b)) => b,
        Ok(Err(e)) => {
            let too_big = std::error::Error::source(&e)
                .is_some_and(|s| s.to_string().contains("length limit"));
            let (status, msg) = if too_big {
                (
                    axum::http::StatusCode::PAYLOAD_TOO_LARGE,
                    format!("the request body is larger than {limit} bytes"),
                )
            } else {
                (
                    axum::http::StatusCode::BAD_REQUEST,
                    format!("cannot read the request body: {e}"),
                )
            };
            let e = api::ApiError::new(status, msg);
            if messages::is_anthropic(parts.uri.path()) {
                return messages::error_response(e);
            }
            return e.into_response();
        }
        Err(_) => {
            let e = api::ApiError::new(
                axum::http::StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the request body did not arrive within {} s",
                    timeout.as_secs_f64()
                ),
            );
            if messages::is_anthropic(parts.uri.path()) {
                return messages::error_response(e);
            }
            return e.into_response();
        }
    };
    next.run(axum::extract::Request::from_parts(
        parts,
        axum::body::Body::from(bytes),
    ))
    .await
}

/// The HTTP routes over `app`, with bodies of at most `body_limit` bytes read within
/// `body_timeout`.
pub fn router(app: Arc<App>, body_limit: usize, body_timeout: std::time::Duration) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat::chat))
        .route("/v1/completions", post(completions::completions))
        .route("/v1/embeddings", post(embeddings::embeddings))
        .route("/v1/messages", post(messages::messages))
        .route("/v1/responses", post(responses::responses))
        .route("/v1/messages/count_tokens", post(messages::count_tokens))
        .route("/v1/models", get(api::models))
        .route("/v1/models/{id}", get(api::model))
        .route("/", get(page::index))
        .route("/health", get(api::health))
        .route("/metrics", get(api::metrics))
        .route("/tokenize", post(api::tokenize))
        .route("/detokenize", post(api::detokenize))
        .fallback(api::not_found)
        .layer(axum::middleware::from_fn_with_state(app.clone(), api::auth))
        .layer(axum::middleware::from_fn_with_state(
            (body_timeout, body_limit),
            body_in_time,
        ))
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(app)
}

/// Serve `router` on `listener` until `shutdown` resolves: HTTP/1.1, at most
/// `max_connections` at once (more are closed on accept), each given `head_timeout` to send
/// a request head. Idle and half-sent connections are dropped, so slow clients cannot pile
/// up; requests in progress finish before the function returns (or after 30 s of shutdown).
pub async fn serve_connections(
    listener: tokio::net::TcpListener,
    router: Router,
    max_connections: usize,
    head_timeout: std::time::Duration,
    shutdown: impl std::future::Future<Output = ()>,
) {
    use hyper_util::rt::{TokioIo, TokioTimer};
    let slots = Arc::new(tokio::sync::Semaphore::new(max_connections.max(1)));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(head_timeout)
        .keep_alive(true);
    tokio::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(_) => {
                    // out of file descriptors and the like: let connections close first
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            drop(stream); // over the connection cap
            continue;
        };
        let _ = stream.set_nodelay(true);
        let svc = hyper_util::service::TowerToHyperService::new(router.clone());
        let conn = builder.serve_connection(TokioIo::new(stream), svc);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            let _ = conn.await;
            drop(permit);
        });
    }
    drop(listener);
    let _ = tokio::time::timeout(std::time::Duration::from_secs(30), graceful.shutdown()).await;
}

/// Start the scheduler thread and serve HTTP until interrupted.
pub fn serve(eng: Engine, opts: Options) -> std::io::Result<()> {
    let eng = Arc::new(eng);
    let tk = &eng.tokenizer;
    let template = match &opts.chat_template {
        Some(src) => tk.template_with(src),
        None => tk
            .template()
            .or_else(|_| tk.template_with(hearth_tokenizer::CHATML)),
    }
    .map_err(std::io::Error::other)?;
    let max_token_bytes = (0..tk.vocab_size() as u32)
        .map(|t| tk.token_bytes(t).len())
        .max()
        .unwrap_or(1);
    let metrics = Arc::new(sched::Metrics::default());
    let cfg = opts.limits().config(&eng).map_err(std::io::Error::other)?;
    let (tx, rx) = std::sync::mpsc::channel();
    let sch = sched::Scheduler::new(eng.clone(), cfg.clone(), metrics.clone())
        .map_err(std::io::Error::other)?;
    std::thread::Builder::new()
        .name("hearth-scheduler".into())
        .spawn(move || sch.run(rx))?;
    let source = template.source();
    let family = tools::Family::detect(&source, &eng.model.cfg.arch);
    let thinks = tools::template_thinks(&source);
    let app = Arc::new(App {
        frame: tools::Frame::of(family, &source),
        family,
        thinks,
        pooling: eng.pooling().map_err(|e| e.to_string()),
        eng,
        template,
        model_id: opts.model_id.clone(),
        aliases: opts.aliases.clone(),
        n_ctx: opts.n_ctx,
        parallel: cfg.parallel,
        max_queue: opts.max_queue,
        api_key: opts.api_key.clone(),
        tx: Mutex::new(tx),
        metrics,
        max_token_bytes,
        created: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    });
    // two I/O threads: the cores belong to the model's compute pool, but with one a single
    // busy connection could hold up all others. The heavy part of a request (parsing,
    // template, tokenizing, grammar) runs on the blocking pool, at most 8 at a time.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(8)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let addr = format!("{}:{}", opts.host, opts.port);
        let listener = tokio::net::TcpListener::bind(&addr).await?;
        eprintln!(
            "hearth: serving {} on http://{} (context {} per sequence, {} parallel, {} KV pages of {})",
            opts.model_id,
            listener.local_addr()?,
            cfg.n_ctx,
            cfg.parallel,
            cfg.n_pages,
            cfg.page_size
        );
        serve_connections(
            listener,
            router(app, opts.body_limit, opts.body_timeout),
            opts.max_connections,
            opts.head_timeout,
            async {
                let _ = tokio::signal::ctrl_c().await;
            },
        )
        .await;
        Ok(())
    })
}
