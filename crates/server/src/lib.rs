//! hearth-server: an OpenAI-compatible HTTP API over one loaded model, with continuous
//! batching, a paged KV pool with prefix reuse, and constrained decoding.
pub mod api;
pub mod grammar;
pub mod pages;
pub mod sched;

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
}

/// How many KV pages `opts` gives: the budget's worth, but never less than one full context
/// (plus a page) so that any single admitted request can finish.
pub fn pool_pages(eng: &Engine, opts: &Options) -> usize {
    let per_page = eng.model.kv_pool_bytes_per_token() * opts.page_size;
    let budget = opts.kv_bytes / per_page.max(1);
    let want = (opts.n_ctx * opts.parallel).div_ceil(opts.page_size);
    budget
        .min(want)
        .max(opts.n_ctx.div_ceil(opts.page_size) + 1)
}

/// The HTTP routes over `app`.
pub fn router(app: Arc<App>, body_limit: usize) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(api::chat))
        .route("/v1/completions", post(api::completions))
        .route("/v1/models", get(api::models))
        .route("/v1/models/{id}", get(api::model))
        .route("/health", get(api::health))
        .route("/metrics", get(api::metrics))
        .route("/tokenize", post(api::tokenize))
        .route("/detokenize", post(api::detokenize))
        .fallback(api::not_found)
        .layer(axum::middleware::from_fn_with_state(app.clone(), api::auth))
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(app)
}

/// Start the scheduler thread and serve HTTP until interrupted.
pub fn serve(eng: Engine, opts: Options) -> std::io::Result<()> {
    let eng = Arc::new(eng);
    let tk = &eng.tokenizer;
    let template = tk
        .template()
        .or_else(|_| tk.template_with(hearth_tokenizer::CHATML))
        .map_err(std::io::Error::other)?;
    let metrics = Arc::new(sched::Metrics::default());
    let cfg = sched::Config {
        n_ctx: opts.n_ctx,
        parallel: opts.parallel.max(1),
        batch_tokens: opts.batch_tokens.max(1),
        n_pages: pool_pages(&eng, &opts),
        page_size: opts.page_size,
    };
    let (tx, rx) = std::sync::mpsc::channel();
    let sch = sched::Scheduler::new(eng.clone(), cfg.clone(), metrics.clone());
    std::thread::Builder::new()
        .name("hearth-scheduler".into())
        .spawn(move || sch.run(rx))?;
    let app = Arc::new(App {
        eng,
        template,
        model_id: opts.model_id.clone(),
        aliases: opts.aliases.clone(),
        n_ctx: opts.n_ctx,
        max_queue: opts.max_queue,
        api_key: opts.api_key.clone(),
        tx: Mutex::new(tx),
        metrics,
        created: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    });
    // one thread for HTTP: the cores belong to the model's compute pool, and a second I/O
    // thread waking per streamed token measurably slowed single-stream generation
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
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
        axum::serve(listener, router(app, opts.body_limit))
            .with_graceful_shutdown(async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await
    })
}
