//! The OpenAI request bodies this server takes, validated into a generation job, and the
//! response and stream chunk bodies it sends (`chat.completion`, `chat.completion.chunk`,
//! `text_completion`), field for field as OpenAI's API sends them.
//!
//! Every parameter is looked at: one this server does not implement (or implements only in
//! part, such as `n` > 1) is a 400 naming it, never silently ignored.

use serde_json::{json, Map, Value};

use super::errors::ApiError;
use flashstream::runtime::chat::Message;
use flashstream::runtime::generate::StopReason;
use flashstream::runtime::sampler::SamplerConfig;
use flashstream_structured::Grammar;

/// Which endpoint a body is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Chat,
    Completion,
}

/// The prompt of a request.
#[derive(Debug, Clone)]
pub enum Input {
    Messages(Vec<Message>),
    Text(String),
    Tokens(Vec<u32>),
}

/// A validated generation request.
#[derive(Debug, Clone)]
pub struct GenRequest {
    pub model: Option<String>,
    pub input: Input,
    pub max_tokens: Option<usize>,
    pub sampler: SamplerConfig,
    pub stop: Vec<String>,
    pub ignore_eos: bool,
    pub stream: bool,
    pub include_usage: bool,
    /// What the output must fit (`response_format` or the `grammar` extension), if anything.
    pub grammar: Option<Grammar>,
    /// Prompt-lookup speculative decoding (the `speculative` extension), if asked for.
    pub speculative: Option<SpecRequest>,
}

/// The `speculative` extension: `"lookup"`, or `{"type": "lookup", "k": K, "ngram": N}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpecRequest {
    /// Most tokens proposed per pass.
    pub k: usize,
    /// Longest n-gram matched (down to 1).
    pub ngram: usize,
}

impl Default for SpecRequest {
    fn default() -> Self {
        SpecRequest { k: 8, ngram: 3 }
    }
}

/// Longest n-gram a request may ask prompt lookup to match.
const MAX_NGRAM: u64 = 16;

/// Parameters both endpoints take (and those taken only with their default value).
const COMMON: &[&str] = &[
    "model",
    "max_tokens",
    "temperature",
    "top_p",
    "seed",
    "stop",
    "stream",
    "stream_options",
    "n",
    "presence_penalty",
    "frequency_penalty",
    "top_k",
    "min_p",
    "repeat_penalty",
    "repeat_last_n",
    "ignore_eos",
    "user",
    "logprobs",
    "logit_bias",
    "response_format",
    "grammar",
    "speculative",
];
const CHAT_ONLY: &[&str] = &[
    "messages",
    "max_completion_tokens",
    "top_logprobs",
    "parallel_tool_calls",
    "store",
    "metadata",
];
const COMPLETION_ONLY: &[&str] = &["prompt", "echo", "suffix", "best_of"];

fn num(o: &Map<String, Value>, key: &str) -> Result<Option<f64>, ApiError> {
    match o.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_f64()
            .map(Some)
            .ok_or_else(|| ApiError::param(key, format!("'{key}' must be a number"))),
        Some(_) => Err(ApiError::param(key, format!("'{key}' must be a number"))),
    }
}

fn uint(o: &Map<String, Value>, key: &str) -> Result<Option<u64>, ApiError> {
    match o.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .map(Some)
            .ok_or_else(|| ApiError::param(key, format!("'{key}' must be a non-negative integer"))),
    }
}

fn boolean(o: &Map<String, Value>, key: &str) -> Result<Option<bool>, ApiError> {
    match o.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(ApiError::param(
            key,
            format!("'{key}' must be true or false"),
        )),
    }
}

fn message_text(i: usize, content: &Value) -> Result<String, ApiError> {
    let key = format!("messages[{i}].content");
    match content {
        Value::String(s) => Ok(s.clone()),
        Value::Null => Ok(String::new()),
        Value::Array(parts) => {
            let mut text = String::new();
            for p in parts {
                match (p.get("type").and_then(Value::as_str), p.get("text")) {
                    (Some("text"), Some(Value::String(t))) => text.push_str(t),
                    (Some(t), _) => {
                        return Err(ApiError::unsupported(
                            &key,
                            &format!("with a part of type '{t}': only text parts are supported"),
                        ))
                    }
                    _ => {
                        return Err(ApiError::param(
                            &key,
                            format!("'{key}': a part needs 'type' and 'text'"),
                        ))
                    }
                }
            }
            Ok(text)
        }
        _ => Err(ApiError::param(
            &key,
            format!("'{key}' must be a string or an array of text parts"),
        )),
    }
}

fn messages(v: Option<&Value>) -> Result<Vec<Message>, ApiError> {
    let arr = match v {
        Some(Value::Array(a)) if !a.is_empty() => a,
        Some(Value::Array(_)) => {
            return Err(ApiError::param(
                "messages",
                "'messages' is empty: give at least one message",
            ))
        }
        Some(_) => {
            return Err(ApiError::param(
                "messages",
                "'messages' must be an array of {role, content} objects",
            ))
        }
        None => return Err(ApiError::param("messages", "'messages' is required")),
    };
    let mut out = Vec::with_capacity(arr.len());
    for (i, m) in arr.iter().enumerate() {
        let Some(obj) = m.as_object() else {
            return Err(ApiError::param(
                "messages",
                format!("messages[{i}] must be an object"),
            ));
        };
        for k in obj.keys() {
            if !matches!(k.as_str(), "role" | "content" | "name") {
                return Err(ApiError::unsupported(
                    &format!("messages[{i}].{k}"),
                    "is not supported",
                ));
            }
        }
        let role = match obj.get("role").and_then(Value::as_str) {
            Some(r @ ("system" | "user" | "assistant")) => r,
            Some("developer") => "system",
            Some(r) => {
                return Err(ApiError::param(
                    "messages",
                    format!(
                        "messages[{i}].role '{r}' is not one of system, developer, user, assistant"
                    ),
                ))
            }
            None => {
                return Err(ApiError::param(
                    "messages",
                    format!("messages[{i}].role is required"),
                ))
            }
        };
        let content = message_text(i, obj.get("content").unwrap_or(&Value::Null))?;
        out.push(Message::new(role, &content));
    }
    Ok(out)
}

fn prompt(v: Option<&Value>) -> Result<Input, ApiError> {
    let bad = || {
        ApiError::param(
            "prompt",
            "'prompt' must be a string, a list of one string, or a list of token ids",
        )
    };
    match v {
        Some(Value::String(s)) => Ok(Input::Text(s.clone())),
        Some(Value::Array(a)) if a.len() == 1 && a[0].is_string() => {
            Ok(Input::Text(a[0].as_str().unwrap_or_default().to_string()))
        }
        Some(Value::Array(a)) if !a.is_empty() && a.iter().all(Value::is_u64) => Ok(Input::Tokens(
            a.iter()
                .map(|x| {
                    x.as_u64()
                        .and_then(|t| u32::try_from(t).ok())
                        .ok_or_else(bad)
                })
                .collect::<Result<_, _>>()?,
        )),
        Some(Value::Array(a)) if a.len() > 1 && a.iter().all(Value::is_string) => {
            Err(ApiError::unsupported(
                "prompt",
                "as a list of several prompts: send one prompt per request",
            ))
        }
        None => Err(ApiError::param("prompt", "'prompt' is required")),
        _ => Err(bad()),
    }
}

/// Validates a request body for `kind`.
pub fn parse(kind: Kind, body: &[u8]) -> Result<GenRequest, ApiError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid(format!("the body is not valid JSON: {e}")))?;
    let Value::Object(o) = v else {
        return Err(ApiError::invalid("the body must be a JSON object"));
    };
    let own = match kind {
        Kind::Chat => CHAT_ONLY,
        Kind::Completion => COMPLETION_ONLY,
    };
    let mut unknown: Vec<&str> = o
        .keys()
        .map(String::as_str)
        .filter(|k| !COMMON.contains(k) && !own.contains(k))
        .collect();
    unknown.sort_unstable();
    if let Some(first) = unknown.first() {
        return Err(ApiError::unsupported(
            first,
            &format!(
                "is not supported by this server (unsupported: {})",
                unknown.join(", ")
            ),
        ));
    }
    // Parameters taken only at their default.
    if let Some(n) = uint(&o, "n")? {
        if n != 1 {
            return Err(ApiError::unsupported(
                "n",
                "other than 1: send one request per completion",
            ));
        }
    }
    if let Some(n) = uint(&o, "best_of")? {
        if n != 1 {
            return Err(ApiError::unsupported("best_of", "other than 1"));
        }
    }
    for key in ["presence_penalty", "frequency_penalty"] {
        if num(&o, key)?.is_some_and(|x| !(-2.0..=2.0).contains(&x)) {
            return Err(ApiError::param(
                key,
                format!("'{key}' must be between -2.0 and 2.0"),
            ));
        }
    }
    match o.get("logprobs") {
        None | Some(Value::Null) | Some(Value::Bool(false)) => {}
        _ => {
            return Err(ApiError::unsupported(
                "logprobs",
                "(log probabilities are not returned)",
            ))
        }
    }
    if !matches!(o.get("top_logprobs"), None | Some(Value::Null)) {
        return Err(ApiError::unsupported(
            "top_logprobs",
            "(log probabilities are not returned)",
        ));
    }
    match o.get("logit_bias") {
        None | Some(Value::Null) => {}
        Some(Value::Object(m)) if m.is_empty() => {}
        _ => return Err(ApiError::unsupported("logit_bias", "(no logit biases)")),
    }
    if boolean(&o, "echo")? == Some(true) {
        return Err(ApiError::unsupported("echo", "true"));
    }
    if !matches!(o.get("suffix"), None | Some(Value::Null)) {
        return Err(ApiError::unsupported("suffix", "(no insertion)"));
    }
    let grammar = grammar(&o)?;
    let speculative = speculative(o.get("speculative"))?;
    if speculative.is_some() && grammar.is_some() {
        return Err(ApiError::param(
            "speculative",
            "'speculative' cannot be combined with structured output ('response_format' or \
             'grammar'): drop one of them",
        ));
    }
    if boolean(&o, "parallel_tool_calls")? == Some(true) {
        return Err(ApiError::unsupported("parallel_tool_calls", "(no tools)"));
    }
    let model = match o.get("model") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err(ApiError::param("model", "'model' must be a string")),
    };
    let input = match kind {
        Kind::Chat => Input::Messages(messages(o.get("messages"))?),
        Kind::Completion => prompt(o.get("prompt"))?,
    };
    let max_tokens = match (uint(&o, "max_tokens")?, uint(&o, "max_completion_tokens")?) {
        (Some(_), Some(_)) => {
            return Err(ApiError::param(
                "max_tokens",
                "give max_tokens or max_completion_tokens, not both",
            ))
        }
        (a, b) => a.or(b),
    };
    if max_tokens == Some(0) {
        return Err(ApiError::param(
            "max_tokens",
            "max_tokens must be at least 1",
        ));
    }
    let d = SamplerConfig::default();
    let f32_or = |key: &str, dflt: f32| -> Result<f32, ApiError> {
        Ok(num(&o, key)?.map_or(dflt, |x| x as f32))
    };
    let sampler = SamplerConfig {
        temperature: f32_or("temperature", d.temperature)?,
        top_k: uint(&o, "top_k")?.map_or(d.top_k, |x| x as usize),
        top_p: f32_or("top_p", d.top_p)?,
        min_p: f32_or("min_p", d.min_p)?,
        repeat_penalty: f32_or("repeat_penalty", d.repeat_penalty)?,
        repeat_last_n: uint(&o, "repeat_last_n")?.map_or(d.repeat_last_n, |x| x as usize),
        frequency_penalty: f32_or("frequency_penalty", d.frequency_penalty)?,
        presence_penalty: f32_or("presence_penalty", d.presence_penalty)?,
        seed: match o.get("seed") {
            None | Some(Value::Null) => d.seed,
            Some(v) => v
                .as_u64()
                .or_else(|| v.as_i64().map(|x| x as u64))
                .ok_or_else(|| ApiError::param("seed", "'seed' must be an integer"))?,
        },
    };
    sampler
        .validate()
        .map_err(|e| ApiError::invalid(e.to_string()))?;
    let stop = match o.get("stop") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) if a.len() <= 4 && a.iter().all(Value::is_string) => a
            .iter()
            .filter_map(|s| s.as_str().map(str::to_string))
            .collect(),
        Some(_) => {
            return Err(ApiError::param(
                "stop",
                "'stop' must be a string or a list of up to 4 strings",
            ))
        }
    };
    if stop.iter().any(String::is_empty) {
        return Err(ApiError::param("stop", "stop strings must not be empty"));
    }
    let stream = boolean(&o, "stream")?.unwrap_or(false);
    let include_usage = match o.get("stream_options") {
        None | Some(Value::Null) => false,
        Some(Value::Object(so)) => {
            if let Some(k) = so.keys().find(|k| k.as_str() != "include_usage") {
                return Err(ApiError::unsupported(
                    &format!("stream_options.{k}"),
                    "is not supported",
                ));
            }
            if !stream {
                return Err(ApiError::param(
                    "stream_options",
                    "stream_options needs stream: true",
                ));
            }
            boolean(so, "include_usage")?.unwrap_or(false)
        }
        Some(_) => {
            return Err(ApiError::param(
                "stream_options",
                "'stream_options' must be an object",
            ))
        }
    };
    Ok(GenRequest {
        model,
        input,
        max_tokens: max_tokens.map(|x| x as usize),
        sampler,
        stop,
        ignore_eos: boolean(&o, "ignore_eos")?.unwrap_or(false),
        stream,
        include_usage,
        grammar,
        speculative,
    })
}

/// The `speculative` extension: `null`/absent (off), `"lookup"`, or an object
/// `{"type": "lookup", "k": 1..=48, "ngram": 1..=16}` (both optional).
fn speculative(v: Option<&Value>) -> Result<Option<SpecRequest>, ApiError> {
    let bad_type = |t: &str| {
        ApiError::param(
            "speculative",
            format!(
                "unknown speculative type '{t}': the server drafts by prompt lookup, \
                     \"speculative\": \"lookup\""
            ),
        )
    };
    let o = match v {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(t)) if t == "lookup" => return Ok(Some(SpecRequest::default())),
        Some(Value::String(t)) => return Err(bad_type(t)),
        Some(Value::Object(o)) => o,
        Some(_) => {
            return Err(ApiError::param(
                "speculative",
                "'speculative' must be \"lookup\" or an object {\"type\": \"lookup\", \"k\": K, \"ngram\": N}",
            ))
        }
    };
    if let Some(k) = o
        .keys()
        .find(|k| !matches!(k.as_str(), "type" | "k" | "ngram"))
    {
        return Err(ApiError::param(
            "speculative",
            format!("unknown field 'speculative.{k}' (known: type, k, ngram)"),
        ));
    }
    match o.get("type") {
        Some(Value::String(t)) if t == "lookup" => {}
        Some(Value::String(t)) => return Err(bad_type(t)),
        _ => {
            return Err(ApiError::param(
                "speculative",
                "'speculative.type' is required: \"lookup\"",
            ))
        }
    }
    let d = SpecRequest::default();
    let max_k = flashstream::runtime::speculative::MAX_SPEC_K as u64;
    let k = match uint(o, "k")? {
        None => d.k,
        Some(k) if (1..=max_k).contains(&k) => k as usize,
        Some(k) => {
            return Err(ApiError::param(
                "speculative",
                format!("'speculative.k' is {k}; it must be in 1..={max_k}"),
            ))
        }
    };
    let ngram = match uint(o, "ngram")? {
        None => d.ngram,
        Some(n) if (1..=MAX_NGRAM).contains(&n) => n as usize,
        Some(n) => {
            return Err(ApiError::param(
                "speculative",
                format!("'speculative.ngram' is {n}; it must be in 1..={MAX_NGRAM}"),
            ))
        }
    };
    Ok(Some(SpecRequest { k, ngram }))
}

/// The output constraint of `response_format` and the `grammar` extension (a Lark grammar in
/// llguidance's dialect); at most one of them may constrain. Only the shape is checked here:
/// the grammar is compiled (and a schema that does not compile refused) before queueing.
fn grammar(o: &Map<String, Value>) -> Result<Option<Grammar>, ApiError> {
    let from_format = match o.get("response_format") {
        None | Some(Value::Null) => None,
        Some(rf) => Grammar::from_response_format(rf)
            .map_err(|e| ApiError::param("response_format", e.to_string()))?,
    };
    let lark = match o.get("grammar") {
        None | Some(Value::Null) => None,
        Some(Value::String(g)) => Some(Grammar::lark(g)),
        Some(_) => return Err(ApiError::param(
            "grammar",
            "'grammar' must be a string: a Lark grammar (llguidance's dialect, top rule `start`)",
        )),
    };
    match (from_format, lark) {
        (Some(_), Some(_)) => Err(ApiError::param(
            "grammar",
            "give either 'grammar' or a JSON 'response_format', not both",
        )),
        (a, b) => Ok(a.or(b)),
    }
}

/// OpenAI's `finish_reason` for a stop reason.
pub fn finish_reason(r: StopReason) -> &'static str {
    match r {
        StopReason::EndOfGeneration | StopReason::StopString | StopReason::Cancelled => "stop",
        StopReason::MaxTokens | StopReason::ContextFull => "length",
    }
}

/// Token counts of a finished request.
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    pub prompt: usize,
    pub completion: usize,
}

impl Usage {
    pub fn json(&self) -> Value {
        json!({
            "prompt_tokens": self.prompt,
            "completion_tokens": self.completion,
            "total_tokens": self.prompt + self.completion,
        })
    }
}

/// What identifies one response: id, creation time, model.
#[derive(Debug, Clone)]
pub struct Ident {
    pub id: String,
    pub created: u64,
    pub model: String,
}

impl Ident {
    fn object(&self, kind: Kind, chunk: bool) -> &'static str {
        match (kind, chunk) {
            (Kind::Chat, false) => "chat.completion",
            (Kind::Chat, true) => "chat.completion.chunk",
            (Kind::Completion, _) => "text_completion",
        }
    }

    /// The whole (non-stream) response.
    pub fn response(
        &self,
        kind: Kind,
        text: &str,
        reason: &str,
        usage: Usage,
        timings: Value,
    ) -> Value {
        let choice = match kind {
            Kind::Chat => json!({
                "index": 0,
                "message": {"role": "assistant", "content": text, "refusal": null},
                "logprobs": null,
                "finish_reason": reason,
            }),
            Kind::Completion => json!({
                "index": 0,
                "text": text,
                "logprobs": null,
                "finish_reason": reason,
            }),
        };
        json!({
            "id": self.id,
            "object": self.object(kind, false),
            "created": self.created,
            "model": self.model,
            "system_fingerprint": SYSTEM_FINGERPRINT,
            "choices": [choice],
            "usage": usage.json(),
            "timings": timings,
        })
    }

    /// A stream chunk: `role` (the first chat chunk), `text` (a delta), or `reason` (the last
    /// one); `with_usage` adds `"usage": null` as OpenAI does when usage is asked for.
    pub fn chunk(
        &self,
        kind: Kind,
        role: bool,
        text: Option<&str>,
        reason: Option<&str>,
        with_usage: bool,
    ) -> Value {
        let choice = match kind {
            Kind::Chat => {
                let mut delta = Map::new();
                if role {
                    delta.insert("role".into(), "assistant".into());
                    delta.insert("content".into(), "".into());
                }
                if let Some(t) = text {
                    delta.insert("content".into(), t.into());
                }
                json!({"index": 0, "delta": delta, "logprobs": null, "finish_reason": reason})
            }
            Kind::Completion => json!({
                "index": 0,
                "text": text.unwrap_or(""),
                "logprobs": null,
                "finish_reason": reason,
            }),
        };
        let mut v = json!({
            "id": self.id,
            "object": self.object(kind, true),
            "created": self.created,
            "model": self.model,
            "system_fingerprint": SYSTEM_FINGERPRINT,
            "choices": [choice],
        });
        if with_usage {
            v["usage"] = Value::Null;
        }
        v
    }

    /// The usage chunk sent last when `stream_options.include_usage` (no choices).
    pub fn usage_chunk(&self, kind: Kind, usage: Usage, timings: Value) -> Value {
        json!({
            "id": self.id,
            "object": self.object(kind, true),
            "created": self.created,
            "model": self.model,
            "system_fingerprint": SYSTEM_FINGERPRINT,
            "choices": [],
            "usage": usage.json(),
            "timings": timings,
        })
    }
}

/// Identifies this server build in responses.
pub const SYSTEM_FINGERPRINT: &str = concat!("flashstream-", env!("CARGO_PKG_VERSION"));
