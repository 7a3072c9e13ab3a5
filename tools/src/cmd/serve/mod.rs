//! `flashstream serve MODEL`: an OpenAI-compatible HTTP server (tokio + axum) whose concurrent
//! requests share each streamed weight pass.
//!
//! - `routes.rs`: the endpoints (OpenAI's chat and text completions with SSE streaming,
//!   models, tokenize/detokenize, health, metrics, the chat page);
//! - `api.rs`: request validation and OpenAI's response and chunk bodies;
//! - `scheduler.rs`: the model's thread, `--parallel` sequence slots decoded in shared passes,
//!   fed by a bounded queue;
//! - `metrics.rs`: Prometheus counters; `errors.rs`: OpenAI-shaped errors;
//! - `page.html`: the chat page, compiled in.

mod api;
mod errors;
mod metrics;
mod routes;
mod scheduler;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use anyhow::{bail, Context};

use super::common::{chat_template, tokenizer, ModelArgs};
use super::engine::{describe_plan, MemArgs};
use flashstream::formats::ModelConfig;
use flashstream::runtime::chat::ChatTemplate;
use flashstream::runtime::model::ModelOptions;
use flashstream::runtime::tokenizer::Tokenizer;
use flashstream::{Engine, EngineOptions};
use flashstream_structured::StructuredVocab;
use metrics::Metrics;
use scheduler::Job;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port to listen on (0: any free port, printed at start).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Sequences decoded together in one pass over the weights (each has its own KV cache
    /// of --ctx positions, all counted in the budget).
    #[arg(long, default_value_t = 4)]
    parallel: usize,
    /// Requests that may wait for a sequence slot; more get 503.
    #[arg(long, default_value_t = 64)]
    queue: usize,
    /// Require `Authorization: Bearer KEY` on the API routes.
    #[arg(long)]
    api_key: Option<String>,
    /// The model id clients use (default: the file's stem).
    #[arg(long)]
    alias: Option<String>,
    /// The trace is written when the server stops (Ctrl-C); at most a million events are
    /// kept, then recording stops with a note.
    #[command(flatten)]
    trace: super::trace::TraceArgs,
}

/// What the routes share.
pub struct AppState {
    model_id: String,
    tokenizer: Arc<Tokenizer>,
    template: ChatTemplate,
    /// A sequence's context once the model is loaded; 0 while it loads.
    n_ctx: AtomicUsize,
    /// Whether the model has recurrent layers (set before `n_ctx`): they cannot take back
    /// rejected speculative tokens.
    recurrent: AtomicBool,
    queue: std::sync::mpsc::SyncSender<Job>,
    queue_cap: usize,
    metrics: Arc<Metrics>,
    api_key: Option<String>,
    parallel: usize,
    created: u64,
    next_id: AtomicU64,
    /// The token trie for structured output, built at the first constrained request.
    structured: OnceLock<Result<StructuredVocab, String>>,
}

/// Default context of a sequence when --ctx is not given.
const DEFAULT_CTX: usize = 2048;

pub fn run(a: Args) -> anyhow::Result<()> {
    let trace = a.trace.start()?;
    let trace_args = a.trace.clone();
    let r = serve(a, trace.clone());
    let w = trace_args.finish(&trace);
    r.and(w)
}

fn serve(a: Args, trace: flashstream::scheduler::Trace) -> anyhow::Result<()> {
    if a.parallel == 0 {
        bail!("--parallel must be at least 1");
    }
    if a.queue == 0 {
        bail!("--queue must be at least 1");
    }
    if a.model.threads == Some(0) || a.model.batch == 0 || a.model.ctx == Some(0) {
        bail!("--threads, --batch and --ctx must be at least 1");
    }
    let path = a.model.model.clone();
    let gguf = super::open_model(&path)?;
    let tok = Arc::new(tokenizer(&gguf, &path)?);
    let template = chat_template(&gguf, &tok);
    let train = ModelConfig::from_model(&gguf)
        .with_context(|| format!("cannot run {}", path.display()))?
        .n_ctx_train;
    let ctx = a.model.ctx.unwrap_or(DEFAULT_CTX.min(train));
    if ctx > train {
        bail!("--ctx {ctx} exceeds the model's context length {train}");
    }
    if a.parallel > a.model.batch {
        bail!(
            "--parallel {} exceeds the batch (--batch {}): every pass takes one token per sequence",
            a.parallel,
            a.model.batch
        );
    }
    let model_id = a.alias.clone().unwrap_or_else(|| {
        path.file_stem()
            .map_or_else(|| "model".to_string(), |s| s.to_string_lossy().into_owned())
    });
    let opts = a.model.mem.options(EngineOptions {
        ctx: Some(ctx),
        min_ctx: ctx,
        logits_rows: 1,
        threads: a
            .model
            .threads
            .unwrap_or_else(|| ModelOptions::default().threads),
        max_batch: a.model.batch,
        extra_bytes: tok.heap_bytes() as u64,
        count_tokenizer: false,
        sequences: a.parallel,
        trace,
        ..EngineOptions::default()
    })?;
    let mem = a.model.mem.clone();
    let (tx, rx) = std::sync::mpsc::sync_channel::<Job>(a.queue);
    let metrics = Arc::new(Metrics::default());
    let state = Arc::new(AppState {
        model_id,
        tokenizer: tok.clone(),
        template,
        n_ctx: AtomicUsize::new(0),
        recurrent: AtomicBool::new(false),
        queue: tx,
        queue_cap: a.queue,
        metrics: metrics.clone(),
        api_key: a.api_key.clone(),
        parallel: a.parallel,
        created: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        next_id: AtomicU64::new(1),
        structured: OnceLock::new(),
    });

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let addr = format!("{}:{}", a.host, a.port);
    let listener = rt
        .block_on(tokio::net::TcpListener::bind(&addr))
        .with_context(|| format!("cannot listen on {addr}"))?;
    let local = listener.local_addr().context("listening address")?;
    eprintln!(
        "flashstream serve: listening on http://{local} (loading {})",
        path.display()
    );

    // The model loads and runs on its own thread; the routes answer 503 until it is ready.
    let st = state.clone();
    let parallel = a.parallel;
    let model_path = path.clone();
    std::thread::Builder::new()
        .name("model".into())
        .spawn(move || match load(gguf, &opts, &mem) {
            Ok(engine) => {
                eprintln!(
                    "[{}; {parallel} sequences of {} positions]",
                    describe_plan(engine.plan()),
                    engine.plan().n_ctx
                );
                st.recurrent
                    .store(engine.model().config().ssm.is_some(), Ordering::Release);
                st.n_ctx.store(engine.plan().n_ctx, Ordering::Release);
                scheduler::run(&engine, &tok, parallel, rx, &metrics);
            }
            Err(e) => {
                eprintln!("error: cannot run {}: {e:#}", model_path.display());
                std::process::exit(1);
            }
        })
        .context("cannot start the model thread")?;

    rt.block_on(async move {
        axum::serve(listener, routes::router(state))
            .with_graceful_shutdown(async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await
    })
    .context("serving")?;
    Ok(())
}

/// Loads the model with a progress bar, then starts `--mem auto`.
fn load(
    gguf: flashstream::formats::GgufModel,
    opts: &EngineOptions,
    mem: &MemArgs,
) -> anyhow::Result<Engine> {
    let (opts, bar) = crate::progress::loading(opts.clone());
    let engine = Engine::load(gguf, &opts)?;
    drop(bar);
    mem.start(&engine)?;
    Ok(engine)
}
