//! The HTTP routes: OpenAI's endpoints, tokenize/detokenize, health, metrics and the chat page.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::mpsc::TrySendError;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap};
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Map, Value};
use tokio::sync::mpsc::UnboundedReceiver;

use super::api::{self, finish_reason, GenRequest, Ident, Input, Kind, Usage};
use super::errors::ApiError;
use super::scheduler::{Event, Job};
use super::AppState;
use crate::cmd::common::render_chat;
use flashstream::runtime::generate::GenerateOptions;
use flashstream_structured::{Constraint, Grammar, StructuredError, StructuredVocab};

/// The chat page (one static file, no external resources).
const PAGE: &str = include_str!("page.html");

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/v1/models", get(models))
        .route("/v1/models/{id}", get(model))
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .route("/tokenize", post(tokenize))
        .route("/detokenize", post(detokenize))
        .fallback(not_found)
        .with_state(state)
}

async fn page() -> Html<&'static str> {
    Html(PAGE)
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such route: see /v1/models, /v1/chat/completions, /v1/completions, /tokenize, /detokenize, /health, /metrics", "not_found")
}

fn auth(st: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(key) = &st.api_key else {
        return Ok(());
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if given == Some(key.as_str()) {
        Ok(())
    } else {
        Err(ApiError::unauthorized())
    }
}

fn ready(st: &AppState) -> Result<usize, ApiError> {
    match st.n_ctx.load(Ordering::Acquire) {
        0 => Err(ApiError::unavailable(
            "the model is loading; retry when /health says ok",
        )),
        n => Ok(n),
    }
}

async fn health(State(st): State<Arc<AppState>>) -> Response {
    match ready(&st) {
        Ok(_) => Json(json!({"status": "ok"})).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn metrics(State(st): State<Arc<AppState>>) -> Response {
    let body = st.metrics.render(st.parallel, ready(&st).is_ok());
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}

fn model_json(st: &AppState) -> Value {
    json!({"id": st.model_id, "object": "model", "created": st.created, "owned_by": "flashstream"})
}

async fn models(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    auth(&st, &headers)?;
    Ok(Json(json!({"object": "list", "data": [model_json(&st)]})))
}

async fn model(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    auth(&st, &headers)?;
    if id != st.model_id {
        return Err(unknown_model(&st, &id));
    }
    Ok(Json(model_json(&st)))
}

fn unknown_model(st: &AppState, id: &str) -> ApiError {
    ApiError::not_found(
        format!(
            "the model '{id}' does not exist: this server serves '{}'",
            st.model_id
        ),
        "model_not_found",
    )
}

fn object(body: &[u8], allowed: &[&str]) -> Result<Map<String, Value>, ApiError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid(format!("the body is not valid JSON: {e}")))?;
    let Value::Object(o) = v else {
        return Err(ApiError::invalid("the body must be a JSON object"));
    };
    if let Some(k) = o.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(ApiError::unsupported(
            k,
            &format!("is not supported (known: {})", allowed.join(", ")),
        ));
    }
    Ok(o)
}

async fn tokenize(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    auth(&st, &headers)?;
    let o = object(&body, &["content", "add_special", "with_pieces", "model"])?;
    let Some(text) = o.get("content").and_then(Value::as_str) else {
        return Err(ApiError::param(
            "content",
            "'content' (a string) is required",
        ));
    };
    let flag = |k: &str| -> Result<bool, ApiError> {
        match o.get(k) {
            None | Some(Value::Null) => Ok(false),
            Some(Value::Bool(b)) => Ok(*b),
            Some(_) => Err(ApiError::param(k, format!("'{k}' must be true or false"))),
        }
    };
    let (add_special, pieces) = (flag("add_special")?, flag("with_pieces")?);
    let ids = st
        .tokenizer
        .encode(text, add_special, true)
        .map_err(|e| ApiError::invalid(e.to_string()))?;
    let tokens: Vec<Value> = if pieces {
        ids.iter()
            .map(|&id| {
                let p = String::from_utf8_lossy(&st.tokenizer.token_to_piece_with(id, true))
                    .into_owned();
                json!({"id": id, "piece": p})
            })
            .collect()
    } else {
        ids.iter().map(|&id| json!(id)).collect()
    };
    Ok(Json(json!({"tokens": tokens})))
}

fn token_ids(st: &AppState, v: Option<&Value>, key: &str) -> Result<Vec<u32>, ApiError> {
    let Some(Value::Array(a)) = v else {
        return Err(ApiError::param(
            key,
            format!("'{key}' (a list of token ids) is required"),
        ));
    };
    let n = st.tokenizer.n_vocab();
    a.iter()
        .map(|x| match x.as_u64() {
            Some(t) if (t as usize) < n => Ok(t as u32),
            _ => Err(ApiError::param(
                key,
                format!("'{key}': {x} is not a token id of this vocabulary (0..{n})"),
            )),
        })
        .collect()
}

async fn detokenize(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    auth(&st, &headers)?;
    let o = object(&body, &["tokens", "model"])?;
    let ids = token_ids(&st, o.get("tokens"), "tokens")?;
    Ok(Json(json!({"content": st.tokenizer.decode(&ids)})))
}

async fn chat(State(st): State<Arc<AppState>>, headers: HeaderMap, body: Bytes) -> Response {
    generate(st, headers, Kind::Chat, body)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn completions(State(st): State<Arc<AppState>>, headers: HeaderMap, body: Bytes) -> Response {
    generate(st, headers, Kind::Completion, body)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

fn prompt_tokens(st: &AppState, req: &GenRequest) -> Result<Vec<u32>, ApiError> {
    let enc = |text: &str, add_special: bool| {
        st.tokenizer
            .encode(text, add_special, true)
            .map_err(|e| ApiError::invalid(format!("cannot tokenize the prompt: {e}")))
    };
    let ids = match &req.input {
        Input::Messages(m) => {
            let (text, add_bos) = render_chat(&st.template, m)
                .map_err(|e| ApiError::param("messages", format!("{e:#}")))?;
            enc(&text, add_bos)?
        }
        Input::Text(t) => enc(t, true)?,
        Input::Tokens(t) => token_ids(st, Some(&json!(t)), "prompt")?,
    };
    if ids.is_empty() {
        return Err(ApiError::param("prompt", "the prompt gives no tokens"));
    }
    Ok(ids)
}

async fn generate(
    st: Arc<AppState>,
    headers: HeaderMap,
    kind: Kind,
    body: Bytes,
) -> Result<Response, ApiError> {
    auth(&st, &headers)?;
    let n_ctx = ready(&st)?;
    st.metrics.requests.fetch_add(1, Ordering::Relaxed);
    let r = match api::parse(kind, &body) {
        Ok(req) => {
            let constraint = match req.grammar.clone() {
                None => Ok(None),
                Some(g) => {
                    let st2 = st.clone();
                    tokio::task::spawn_blocking(move || compile(&st2, &g))
                        .await
                        .unwrap_or_else(|e| {
                            Err(ApiError::internal(format!("grammar compiler: {e}")))
                        })
                        .map(Some)
                }
            };
            constraint.and_then(|c| submit(&st, req, c, n_ctx))
        }
        Err(e) => Err(e),
    };
    if r.is_err() {
        st.metrics.errors.fetch_add(1, Ordering::Relaxed);
    }
    let (req, rx) = r?;
    let ident = Ident {
        id: format!(
            "{}-{}",
            if kind == Kind::Chat {
                "chatcmpl"
            } else {
                "cmpl"
            },
            st.next_id.fetch_add(1, Ordering::Relaxed)
        ),
        created: unix_now(),
        model: st.model_id.clone(),
    };
    if req.stream {
        Ok(stream(ident, kind, req.include_usage, rx).into_response())
    } else {
        whole(&st, ident, kind, rx).await
    }
}

type Submitted = (GenRequest, UnboundedReceiver<Event>);

/// The model's token trie for structured output, built at the first constrained request
/// (most servers never get one; it costs a pass over the vocabulary and a few MB beside the
/// budget) and shared by every later one.
fn vocab(st: &AppState) -> Result<&StructuredVocab, ApiError> {
    st.structured
        .get_or_init(|| {
            let t0 = Instant::now();
            let v = StructuredVocab::new(&st.tokenizer).map_err(|e| e.to_string());
            st.metrics.set_vocab_s(t0.elapsed().as_secs_f64());
            v
        })
        .as_ref()
        .map_err(|e| {
            ApiError::invalid(format!(
                "structured output is not available for this model: {e}"
            ))
        })
}

/// Compiles `grammar` into a constraint (its first mask included). A schema or grammar that
/// does not compile is a 400 naming the parameter and llguidance's reason.
fn compile(st: &AppState, grammar: &Grammar) -> Result<Constraint, ApiError> {
    let vocab = vocab(st)?;
    let param = match grammar {
        Grammar::Lark(_) => "grammar",
        _ => "response_format",
    };
    let c = Constraint::new(vocab, grammar).map_err(|e| match e {
        StructuredError::InvalidSchema { .. }
        | StructuredError::InvalidGrammar { .. }
        | StructuredError::ResponseFormat(_) => ApiError::param(param, e.to_string()),
        e => ApiError::internal(e.to_string()),
    })?;
    let s = c.stats();
    st.metrics
        .add_structured(s.masks, s.mask_s, s.commit_s, s.compile_s);
    st.metrics
        .structured_requests
        .fetch_add(1, Ordering::Relaxed);
    Ok(c)
}

fn submit(
    st: &AppState,
    req: GenRequest,
    constraint: Option<Constraint>,
    n_ctx: usize,
) -> Result<Submitted, ApiError> {
    if let Some(m) = &req.model {
        if m != &st.model_id && !m.is_empty() {
            return Err(unknown_model(st, m));
        }
    }
    if req.speculative.is_some() && st.recurrent.load(Ordering::Acquire) {
        return Err(ApiError::param(
            "speculative",
            "this model has recurrent layers, which cannot take back rejected speculative \
             tokens: drop 'speculative'",
        ));
    }
    let prompt = prompt_tokens(st, &req)?;
    if prompt.len() >= n_ctx {
        return Err(ApiError::too_long(prompt.len(), n_ctx));
    }
    let room = n_ctx - prompt.len();
    let opts = GenerateOptions {
        max_tokens: req.max_tokens.unwrap_or(room),
        sampler: req.sampler.clone(),
        stop: req.stop.clone(),
        stop_at_eog: !req.ignore_eos,
        render_special: false,
    };
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    st.metrics.queue_len.fetch_add(1, Ordering::Relaxed);
    let job = Job {
        prompt,
        opts,
        events: tx,
        queued_at: Instant::now(),
        constraint,
        speculative: req.speculative,
    };
    match st.queue.try_send(job) {
        Ok(()) => Ok((req, rx)),
        Err(e) => {
            st.metrics.queue_len.fetch_sub(1, Ordering::Relaxed);
            Err(match e {
                TrySendError::Full(_) => {
                    st.metrics
                        .rejected_queue_full
                        .fetch_add(1, Ordering::Relaxed);
                    ApiError::unavailable(format!(
                        "the queue is full ({} requests wait beside {} running): retry later",
                        st.queue_cap, st.parallel
                    ))
                }
                TrySendError::Disconnected(_) => {
                    ApiError::unavailable("the model thread has stopped")
                }
            })
        }
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

async fn whole(
    st: &AppState,
    ident: Ident,
    kind: Kind,
    mut rx: UnboundedReceiver<Event>,
) -> Result<Response, ApiError> {
    let mut text = String::new();
    while let Some(ev) = rx.recv().await {
        match ev {
            Event::Text(t) => text.push_str(&t),
            Event::Done {
                reason,
                prompt_tokens,
                completion_tokens,
                timings,
            } => {
                let usage = Usage {
                    prompt: prompt_tokens,
                    completion: completion_tokens,
                };
                return Ok(Json(ident.response(
                    kind,
                    &text,
                    finish_reason(reason),
                    usage,
                    timings,
                ))
                .into_response());
            }
            Event::Error(msg) => {
                st.metrics.errors.fetch_add(1, Ordering::Relaxed);
                return Err(ApiError::internal(msg));
            }
        }
    }
    Err(ApiError::internal(
        "the model thread ended the request without an answer",
    ))
}

struct StreamState {
    rx: UnboundedReceiver<Event>,
    ident: Ident,
    kind: Kind,
    include_usage: bool,
    pending: VecDeque<SseEvent>,
    finished: bool,
}

fn data(v: &Value) -> SseEvent {
    SseEvent::default().data(v.to_string())
}

fn stream(
    ident: Ident,
    kind: Kind,
    include_usage: bool,
    rx: UnboundedReceiver<Event>,
) -> Sse<impl futures_util::Stream<Item = Result<SseEvent, Infallible>>> {
    let mut pending = VecDeque::new();
    if kind == Kind::Chat {
        pending.push_back(data(&ident.chunk(kind, true, None, None, include_usage)));
    }
    let state = StreamState {
        rx,
        ident,
        kind,
        include_usage,
        pending,
        finished: false,
    };
    let s = futures_util::stream::unfold(state, |mut s| async move {
        loop {
            if let Some(ev) = s.pending.pop_front() {
                return Some((Ok(ev), s));
            }
            if s.finished {
                return None;
            }
            match s.rx.recv().await {
                Some(Event::Text(t)) => {
                    if !t.is_empty() {
                        let c = s
                            .ident
                            .chunk(s.kind, false, Some(&t), None, s.include_usage);
                        s.pending.push_back(data(&c));
                    }
                }
                Some(Event::Done {
                    reason,
                    prompt_tokens,
                    completion_tokens,
                    timings,
                }) => {
                    let mut c = s.ident.chunk(
                        s.kind,
                        false,
                        None,
                        Some(finish_reason(reason)),
                        s.include_usage,
                    );
                    c["timings"] = timings.clone();
                    s.pending.push_back(data(&c));
                    if s.include_usage {
                        let usage = Usage {
                            prompt: prompt_tokens,
                            completion: completion_tokens,
                        };
                        s.pending
                            .push_back(data(&s.ident.usage_chunk(s.kind, usage, timings)));
                    }
                    s.pending.push_back(SseEvent::default().data("[DONE]"));
                    s.finished = true;
                }
                Some(Event::Error(msg)) => {
                    s.pending.push_back(data(&ApiError::internal(msg).body()));
                    s.pending.push_back(SseEvent::default().data("[DONE]"));
                    s.finished = true;
                }
                None => s.finished = true,
            }
        }
    });
    Sse::new(s)
}
