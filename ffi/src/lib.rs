//! The C ABI of flashstream (`libflashstream`), in the style of llama.h: opaque handles,
//! parameter structs with `*_default_params()`, a status code from every call and a
//! thread-local last-error message. The header `include/flashstream.h` is generated from this
//! crate by cbindgen (see `tests/header.rs`).
//!
//! One file (about 900 lines) on purpose: every exported `extern "C"` function is here, in the
//! order of the generated header, so the whole C surface reviews as one list; handles, errors
//! and conversions live in their own modules.
//!
//! Rules every function follows: no panic crosses the boundary (a caught one is
//! `FLASHSTREAM_ERR_INTERNAL`); NULL pointers, freed or made-up handles, invalid UTF-8 and
//! out-of-range values are error codes; strings the library returns are either written into
//! caller buffers (with the needed size reported) or freed with `flashstream_string_free`.
//!
//! Threading (also stated at the top of the header, from `cbindgen.toml`): every function may
//! be called from any thread. Engine calls (tokenize, plan, stats, set_budget, new sessions)
//! may run concurrently with each other and with a generating session of the same engine;
//! `flashstream_engine_set_budget` then applies at the generating session's next weight-free
//! moment (between layers or tokens). One session generates on one thread at a time (a second
//! `generate` on the same session waits for the first); several sessions of one engine may
//! generate concurrently. `flashstream_session_cancel` is meant to be called from another
//! thread. The last-error message belongs to the calling thread.

#![warn(missing_docs)]
#![allow(non_camel_case_types)]
#![deny(unsafe_op_in_unsafe_fn)]

mod error;
mod handles;

use std::ffi::{c_char, c_void, CStr, CString};
use std::ops::ControlFlow;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use fs::runtime::chat::Message;
use fs::runtime::generate::{generate, GenerateOptions, StopReason};
use fs::runtime::sampler::{SamplerConfig, SamplerError};
use fs::scheduler::{fmt_bytes, sysmem};
use fs::{AutoBudget, Engine, EngineOptions, LoadProgress};

pub use error::flashstream_status;
use error::*;
use handles::{EngineBox, SessionBox, ENGINES, SESSIONS};

/// A loaded model running under a memory budget (opaque).
pub struct flashstream_engine {
    _opaque: u8,
}

/// A conversation with its KV cache (opaque); generation continues from its position.
pub struct flashstream_session {
    _opaque: u8,
}

/// Load progress: `progress` in [0, 1] (the share of the weights to keep in RAM read so far);
/// return false to cancel the load (`flashstream_engine_open` then returns
/// `FLASHSTREAM_ERR_CANCELLED`). Called on the thread that opens the engine.
pub type flashstream_progress_fn =
    Option<extern "C" fn(progress: f32, user_data: *mut c_void) -> bool>;

/// One generated piece of text (`len` bytes of UTF-8 at `piece`, not NUL-terminated; may be
/// empty for a token that completes no character yet) and its token id. Return true to go on,
/// false to stop. Called on the generating thread.
pub type flashstream_token_fn = Option<
    extern "C" fn(piece: *const c_char, len: usize, token: i32, user_data: *mut c_void) -> bool,
>;

/// How to open a model.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct flashstream_engine_params {
    /// Memory budget in bytes for everything held for the model; 0: three quarters of what
    /// the machine can spare.
    pub mem_bytes: u64,
    /// Compute threads; 0: all cores.
    pub n_threads: u32,
    /// KV-cache positions; 0: what the budget leaves room for, up to 4096.
    pub n_ctx: u32,
    /// Load progress callback, or NULL.
    pub progress_callback: flashstream_progress_fn,
    /// Passed to `progress_callback`.
    pub progress_user_data: *mut c_void,
}

/// How to generate.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct flashstream_sampling_params {
    /// At most this many new tokens.
    pub max_tokens: u32,
    /// Temperature; 0 is greedy.
    pub temperature: f32,
    /// Keep the `top_k` most likely tokens (0 = all).
    pub top_k: u32,
    /// Nucleus sampling threshold (1 = off).
    pub top_p: f32,
    /// Drop tokens below `min_p` times the most likely one (0 = off).
    pub min_p: f32,
    /// Repetition penalty (1 = off).
    pub repeat_penalty: f32,
    /// Tokens the repetition penalty looks back at (also the window of the frequency and
    /// presence penalties).
    pub repeat_last_n: u32,
    /// Subtracted from a token's logit once per occurrence in the window (OpenAI's
    /// `frequency_penalty`; 0 = off).
    pub frequency_penalty: f32,
    /// Subtracted from a token's logit if it occurs in the window (OpenAI's
    /// `presence_penalty`; 0 = off).
    pub presence_penalty: f32,
    /// Sampler seed.
    pub seed: u64,
    /// Stop strings (`n_stop` NUL-terminated UTF-8 strings; the stop string is not output),
    /// or NULL.
    pub stop: *const *const c_char,
    /// Number of stop strings.
    pub n_stop: usize,
    /// Stop at an end-of-generation token.
    pub stop_at_eog: bool,
    /// Add the model's BOS (as the tokenizer says) before the prompt and parse control tokens
    /// written in it; false for the continuation of a conversation.
    pub add_special: bool,
}

/// What a generation did.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct flashstream_generation {
    /// Prompt tokens evaluated.
    pub n_prompt_tokens: u32,
    /// Tokens generated.
    pub n_generated: u32,
    /// Why it stopped: 0 end-of-generation token, 1 stop string, 2 max_tokens, 3 context
    /// full, 4 cancelled (callback or `flashstream_session_cancel`).
    pub stop_reason: u32,
    /// Prompt tokens per second.
    pub prompt_tokens_per_s: f64,
    /// Generated tokens per second (after the first).
    pub decode_tokens_per_s: f64,
}

/// Counters of an engine.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct flashstream_stats {
    /// Bytes read from the model files while running (after the load).
    pub bytes_read: u64,
    /// Bytes read up front (the weights kept in RAM), including after budget changes.
    pub load_bytes: u64,
    /// Seconds the up-front reads took.
    pub load_seconds: f64,
    /// Seconds computation waited for weights (stalls).
    pub stall_seconds: f64,
    /// The process's peak resident memory, bytes (0 if unknown).
    pub peak_memory_bytes: u64,
    /// The process's resident memory now, bytes (0 if unknown).
    pub current_memory_bytes: u64,
    /// The budget in force.
    pub budget_bytes: u64,
    /// What the plan counts under it.
    pub planned_bytes: u64,
    /// The smallest budget `flashstream_engine_set_budget` accepts.
    pub min_budget_bytes: u64,
    /// KV-cache positions of a session.
    pub n_ctx: u32,
    /// Prompt tokens/s of the last generation (0 before any).
    pub prompt_tokens_per_s: f64,
    /// Generated tokens/s of the last generation (0 before any).
    pub decode_tokens_per_s: f64,
    /// Reads from the model files while running.
    pub reads: u64,
    /// MoE expert uses (0 for dense models).
    pub expert_leases: u64,
    /// Of those, the ones the expert cache already held.
    pub expert_hits: u64,
}

/// One chat message (NUL-terminated UTF-8 strings).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct flashstream_chat_message {
    /// "system", "user" or "assistant".
    pub role: *const c_char,
    /// The text.
    pub content: *const c_char,
}

fn out_ptr<'a, T>(p: *mut T, what: &str) -> Result<&'a mut T, Error> {
    // SAFETY: the caller promises a non-NULL pointer is valid for writes (documented per call).
    unsafe { p.as_mut() }.ok_or_else(|| Error::null(what))
}

/// # Safety
/// `p` is NULL or a NUL-terminated string.
unsafe fn str_arg<'a>(p: *const c_char, what: &str) -> Result<&'a str, Error> {
    if p.is_null() {
        return Err(Error::null(what));
    }
    // SAFETY: non-NULL and NUL-terminated by the caller's contract.
    let c = unsafe { CStr::from_ptr(p) };
    c.to_str().map_err(|e| {
        Error::new(
            FLASHSTREAM_ERR_UTF8,
            format!("{what} is not valid UTF-8 ({e})"),
        )
    })
}

/// Writes `s` NUL-terminated into `buf` (`cap` bytes); `len` gets its length without the NUL
/// (also when the buffer is too small).
///
/// # Safety
/// `buf` is NULL or valid for `cap` bytes; `len` is NULL or valid.
unsafe fn write_str(s: &str, buf: *mut c_char, cap: usize, len: *mut usize) -> Result<(), Error> {
    if let Some(l) = unsafe { len.as_mut() } {
        *l = s.len();
    }
    if buf.is_null() {
        return Err(Error::null("the output buffer"));
    }
    if cap < s.len() + 1 {
        return Err(Error::new(
            FLASHSTREAM_ERR_BUFFER_TOO_SMALL,
            format!(
                "the buffer holds {cap} bytes; {} are needed (with the NUL)",
                s.len() + 1
            ),
        ));
    }
    // SAFETY: `buf` holds at least `s.len() + 1` bytes.
    unsafe {
        std::ptr::copy_nonoverlapping(s.as_ptr(), buf.cast::<u8>(), s.len());
        *buf.add(s.len()) = 0;
    }
    Ok(())
}

fn engine_of(e: *const flashstream_engine) -> Result<Arc<EngineBox>, Error> {
    ENGINES.get(e as usize)
}

fn session_of(s: *const flashstream_session) -> Result<Arc<SessionBox>, Error> {
    SESSIONS.get(s as usize)
}

/// The message of the last failed call on this thread ("" after a successful one). Valid
/// until the next call of this library on the same thread.
#[no_mangle]
pub extern "C" fn flashstream_last_error() -> *const c_char {
    error::last_error_ptr()
}

/// The library version ("0.1.0"), a static string.
#[no_mangle]
pub extern "C" fn flashstream_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}

/// The defaults: budget 0 (three quarters of the available memory), all cores, automatic
/// context, no progress callback.
#[no_mangle]
pub extern "C" fn flashstream_engine_default_params() -> flashstream_engine_params {
    flashstream_engine_params {
        mem_bytes: 0,
        n_threads: 0,
        n_ctx: 0,
        progress_callback: None,
        progress_user_data: std::ptr::null_mut(),
    }
}

/// The defaults of the CLI: temperature 0.8, top-k 40, top-p 0.95, min-p 0.05, no repetition
/// penalty, 128 tokens, stop at end-of-generation, BOS added.
#[no_mangle]
pub extern "C" fn flashstream_sampling_default_params() -> flashstream_sampling_params {
    let d = SamplerConfig::default();
    flashstream_sampling_params {
        max_tokens: 128,
        temperature: d.temperature,
        top_k: d.top_k as u32,
        top_p: d.top_p,
        min_p: d.min_p,
        repeat_penalty: d.repeat_penalty,
        repeat_last_n: d.repeat_last_n as u32,
        frequency_penalty: d.frequency_penalty,
        presence_penalty: d.presence_penalty,
        seed: d.seed,
        stop: std::ptr::null(),
        n_stop: 0,
        stop_at_eog: true,
        add_special: true,
    }
}

struct Progress {
    f: extern "C" fn(f32, *mut c_void) -> bool,
    user: *mut c_void,
}
impl Progress {
    fn call(&self, x: f32) -> bool {
        (self.f)(x, self.user)
    }
}

// SAFETY: the callback is only called on the thread that opens the engine (the pinned
// weights are read there), as documented; the pointer is the caller's.
unsafe impl Send for Progress {}
unsafe impl Sync for Progress {}

/// Opens the GGUF model at `path` (the first part of a split model) under `params` (NULL: the
/// defaults) and stores the engine in `*out`. Free it with `flashstream_engine_free`.
///
/// # Safety
/// `path` is a NUL-terminated string; `params` is NULL or valid; `out` is valid for a write.
#[no_mangle]
pub unsafe extern "C" fn flashstream_engine_open(
    path: *const c_char,
    params: *const flashstream_engine_params,
    out: *mut *mut flashstream_engine,
) -> flashstream_status {
    guard(|| {
        let out = out_ptr(out, "out")?;
        *out = std::ptr::null_mut();
        // SAFETY: the caller's contract.
        let path = unsafe { str_arg(path, "path") }?;
        let p = unsafe { params.as_ref() }
            .copied()
            .unwrap_or_else(|| flashstream_engine_default_params());
        let mut opts = EngineOptions::default();
        if p.mem_bytes > 0 {
            opts.mem = Some(p.mem_bytes);
        }
        if p.n_threads > 0 {
            opts.threads = p.n_threads as usize;
        }
        if p.n_ctx > 0 {
            opts.ctx = Some(p.n_ctx as usize);
        }
        if let Some(f) = p.progress_callback {
            let pr = Progress {
                f,
                user: p.progress_user_data,
            };
            opts.progress = Some(LoadProgress(Arc::new(move |done, total| {
                let x = if total == 0 {
                    1.0
                } else {
                    done as f32 / total as f32
                };
                pr.call(x)
            })));
        }
        let engine = Engine::open(path, &opts)?;
        let tokenizer = engine.tokenizer()?;
        let template = engine.chat_template(&tokenizer);
        let key = ENGINES.insert(EngineBox {
            engine,
            tokenizer,
            template,
            last: Default::default(),
        });
        *out = key as *mut flashstream_engine;
        Ok(())
    })
}

/// Frees an engine. Sessions made from it stay usable until they are freed. NULL is
/// `FLASHSTREAM_ERR_NULL`; an already freed handle `FLASHSTREAM_ERR_BAD_HANDLE`.
#[no_mangle]
pub extern "C" fn flashstream_engine_free(engine: *mut flashstream_engine) -> flashstream_status {
    guard(|| ENGINES.remove(engine as usize).map(drop))
}

/// Writes the residency plan (a summary line, then `budget items:` and one line per item of
/// the budget with its size, then the total and the minimum budget, as `flashstream plan`
/// prints them) into `buf` (`cap` bytes, NUL-terminated); `*len` (if not NULL) gets its length without the
/// NUL, also when `buf` is too small (`FLASHSTREAM_ERR_BUFFER_TOO_SMALL`).
///
/// # Safety
/// `buf` is NULL or valid for `cap` bytes; `len` is NULL or valid.
#[no_mangle]
pub unsafe extern "C" fn flashstream_engine_plan(
    engine: *const flashstream_engine,
    buf: *mut c_char,
    cap: usize,
    len: *mut usize,
) -> flashstream_status {
    guard(|| {
        let e = engine_of(engine)?;
        let p = e.engine.plan();
        let line = |what: &str, bytes: u64| format!("  {what:<48} {:>12}\n", fmt_bytes(bytes));
        let mut s = format!("{}\nbudget items:\n", p.describe());
        for i in &p.items {
            s.push_str(&line(&i.what, i.bytes));
        }
        s.push_str(&line("total", p.total_bytes()));
        s.push_str(&line("minimum budget", e.engine.min_budget()?));
        // SAFETY: the caller's contract.
        unsafe { write_str(&s, buf, cap, len) }
    })
}

/// Moves the budget to `bytes` while the model stays loaded: the plan is recomputed for the
/// same model, context and batch; shrinking frees pinned weights, ring and expert-cache slots
/// and returns the memory to the OS before this returns; growing reads more weights into RAM.
/// Greedy output is the same under any budget. May be called from any thread, also while a session
/// generates (the change applies at its next weight-free moment). Below the minimum:
/// `FLASHSTREAM_ERR_BUDGET_TOO_SMALL`, and nothing changes.
#[no_mangle]
pub extern "C" fn flashstream_engine_set_budget(
    engine: *mut flashstream_engine,
    bytes: u64,
) -> flashstream_status {
    guard(|| {
        let e = engine_of(engine)?;
        e.engine.set_budget(bytes)?;
        Ok(())
    })
}

/// Turns auto mode on (`fraction` in (0, 1]) or off (`fraction` = 0): the budget follows
/// `fraction` of what the engine holds plus the memory the OS says is available (iOS:
/// `os_proc_available_memory()`; Linux: the memory cgroup's room and `MemAvailable`, the
/// smaller), read at most every 100 ms before a forward pass and clamped to
/// [`min_bytes` or the model's minimum, `max_bytes` (0 = no maximum)]; moves under 5% of the
/// budget are skipped. Turning it on moves the budget before this returns. A fixed
/// `flashstream_engine_set_budget` turns it off. Where the OS gives no reading:
/// `FLASHSTREAM_ERR_INVALID` (pass a fixed budget instead). Any thread.
#[no_mangle]
pub extern "C" fn flashstream_engine_set_budget_auto(
    engine: *mut flashstream_engine,
    fraction: f64,
    min_bytes: u64,
    max_bytes: u64,
) -> flashstream_status {
    guard(|| {
        let e = engine_of(engine)?;
        if fraction == 0.0 {
            e.engine.set_budget_auto(None)?;
            return Ok(());
        }
        let cfg = AutoBudget {
            fraction,
            min: min_bytes,
            max: if max_bytes == 0 { u64::MAX } else { max_bytes },
            ..AutoBudget::default()
        };
        cfg.check()
            .map_err(|m| Error::invalid(format!("invalid auto budget: {m}")))?;
        e.engine.set_budget_auto(Some(cfg))?;
        Ok(())
    })
}

/// Fills `*out` with the engine's counters.
///
/// # Safety
/// `out` is valid for a write.
#[no_mangle]
pub unsafe extern "C" fn flashstream_engine_stats(
    engine: *const flashstream_engine,
    out: *mut flashstream_stats,
) -> flashstream_status {
    guard(|| {
        let out = out_ptr(out, "out")?;
        let e = engine_of(engine)?;
        let s = e.engine.stats();
        let p = e.engine.plan();
        let last = *e.last.lock().unwrap_or_else(|p| p.into_inner());
        *out = flashstream_stats {
            bytes_read: s.bytes_read,
            load_bytes: s.load_bytes,
            load_seconds: s.load_s,
            stall_seconds: s.stall_s,
            peak_memory_bytes: sysmem::peak_rss().unwrap_or(0),
            current_memory_bytes: sysmem::current_rss().unwrap_or(0),
            budget_bytes: p.budget,
            planned_bytes: p.total_bytes(),
            min_budget_bytes: e.engine.min_budget()?,
            n_ctx: p.n_ctx as u32,
            prompt_tokens_per_s: last.as_ref().map_or(0.0, |l| l.prompt_tokens_per_s),
            decode_tokens_per_s: last.as_ref().map_or(0.0, |l| l.decode_tokens_per_s),
            reads: s.reads,
            expert_leases: s.expert_leases,
            expert_hits: s.expert_hits,
        };
        Ok(())
    })
}

/// Tokenizes `text` into `tokens` (room for `cap`); `*n_tokens` gets the count, also when
/// `cap` is too small (`FLASHSTREAM_ERR_BUFFER_TOO_SMALL`). `add_special`: add BOS/EOS as the
/// model says; `parse_special`: control tokens written in the text become those tokens.
///
/// # Safety
/// `text` is NUL-terminated; `tokens` is NULL or valid for `cap` values; `n_tokens` is valid.
#[no_mangle]
pub unsafe extern "C" fn flashstream_tokenize(
    engine: *const flashstream_engine,
    text: *const c_char,
    add_special: bool,
    parse_special: bool,
    tokens: *mut i32,
    cap: usize,
    n_tokens: *mut usize,
) -> flashstream_status {
    guard(|| {
        let n_out = out_ptr(n_tokens, "n_tokens")?;
        let e = engine_of(engine)?;
        // SAFETY: the caller's contract.
        let text = unsafe { str_arg(text, "text") }?;
        let ids = e
            .tokenizer
            .encode(text, add_special, parse_special)
            .map_err(|x| Error::invalid(x.to_string()))?;
        *n_out = ids.len();
        if ids.len() > cap {
            return Err(Error::new(
                FLASHSTREAM_ERR_BUFFER_TOO_SMALL,
                format!("{} tokens do not fit in {cap}", ids.len()),
            ));
        }
        if ids.is_empty() {
            return Ok(());
        }
        if tokens.is_null() {
            return Err(Error::null("tokens"));
        }
        for (i, &t) in ids.iter().enumerate() {
            // SAFETY: `tokens` holds `cap` >= ids.len() values.
            unsafe { *tokens.add(i) = t as i32 };
        }
        Ok(())
    })
}

/// Writes the text of `n` tokens into `buf` (`cap` bytes, NUL-terminated; `*len` as for
/// `flashstream_engine_plan`). Control tokens render as nothing. A token outside the
/// vocabulary is `FLASHSTREAM_ERR_INVALID`.
///
/// # Safety
/// `tokens` is valid for `n` values (or NULL with `n` 0); `buf` NULL or valid for `cap` bytes.
#[no_mangle]
pub unsafe extern "C" fn flashstream_detokenize(
    engine: *const flashstream_engine,
    tokens: *const i32,
    n: usize,
    buf: *mut c_char,
    cap: usize,
    len: *mut usize,
) -> flashstream_status {
    guard(|| {
        let e = engine_of(engine)?;
        if tokens.is_null() && n > 0 {
            return Err(Error::null("tokens"));
        }
        let ids: &[i32] = if n == 0 {
            &[]
        } else {
            // SAFETY: the caller's contract.
            unsafe { std::slice::from_raw_parts(tokens, n) }
        };
        let n_vocab = e.tokenizer.n_vocab();
        let mut v = Vec::with_capacity(n);
        for &t in ids {
            if t < 0 || t as usize >= n_vocab {
                return Err(Error::invalid(format!(
                    "token {t} is outside the vocabulary (0..{n_vocab})"
                )));
            }
            v.push(t as u32);
        }
        let s = e.tokenizer.decode(&v);
        // SAFETY: the caller's contract.
        unsafe { write_str(&s, buf, cap, len) }
    })
}

/// The messages at `messages` (`n` of them).
///
/// # Safety
/// `messages` is NULL or valid for `n` messages whose strings are NUL-terminated or NULL.
unsafe fn messages_arg(
    messages: *const flashstream_chat_message,
    n: usize,
) -> Result<Vec<Message>, Error> {
    if messages.is_null() && n > 0 {
        return Err(Error::null("messages"));
    }
    let ms: &[flashstream_chat_message] = if n == 0 {
        &[]
    } else {
        // SAFETY: the caller's contract.
        unsafe { std::slice::from_raw_parts(messages, n) }
    };
    let mut v = Vec::with_capacity(n);
    for (i, m) in ms.iter().enumerate() {
        // SAFETY: the caller's contract.
        let role = unsafe { str_arg(m.role, &format!("messages[{i}].role")) }?;
        let content = unsafe { str_arg(m.content, &format!("messages[{i}].content")) }?;
        if !matches!(role, "system" | "user" | "assistant") {
            return Err(Error::invalid(format!(
                "messages[{i}].role is {role:?}; expected system, user or assistant"
            )));
        }
        v.push(Message::new(role, content));
    }
    Ok(v)
}

/// Renders `n` messages with the model's chat template (or a built-in one) into a new string
/// `*out` (free it with `flashstream_string_free`). `add_generation_prompt` ends it with the
/// assistant's turn opener. The result starts with the BOS text when the template writes it:
/// generate from it with `add_special` false in that case.
///
/// # Safety
/// `messages` is valid for `n` messages (or NULL with `n` 0); `out` is valid for a write.
#[no_mangle]
pub unsafe extern "C" fn flashstream_chat_apply_template(
    engine: *const flashstream_engine,
    messages: *const flashstream_chat_message,
    n: usize,
    add_generation_prompt: bool,
    out: *mut *mut c_char,
) -> flashstream_status {
    guard(|| {
        let out = out_ptr(out, "out")?;
        *out = std::ptr::null_mut();
        let e = engine_of(engine)?;
        // SAFETY: the caller's contract.
        let v = unsafe { messages_arg(messages, n) }?;
        let s = e
            .template
            .render(&v, add_generation_prompt)
            .map_err(|x| Error::invalid(x.to_string()))?;
        *out = CString::new(s)
            .map_err(|_| Error::invalid("the rendered chat contains a NUL byte"))?
            .into_raw();
        Ok(())
    })
}

/// Frees a string returned by this library (NULL is allowed and does nothing).
///
/// # Safety
/// `s` is NULL or a string from this library not freed yet.
#[no_mangle]
pub unsafe extern "C" fn flashstream_string_free(s: *mut c_char) {
    if !s.is_null() {
        // SAFETY: made by CString::into_raw in this library.
        drop(unsafe { CString::from_raw(s) });
    }
}

/// A new session (an empty context of the planned length) of `engine` in `*out`.
///
/// # Safety
/// `out` is valid for a write.
#[no_mangle]
pub unsafe extern "C" fn flashstream_session_new(
    engine: *mut flashstream_engine,
    out: *mut *mut flashstream_session,
) -> flashstream_status {
    guard(|| {
        let out = out_ptr(out, "out")?;
        *out = std::ptr::null_mut();
        let e = engine_of(engine)?;
        let key = SESSIONS.insert(SessionBox::new(e)?);
        *out = key as *mut flashstream_session;
        Ok(())
    })
}

/// Frees a session (a generation in progress on another thread finishes first, then it goes).
#[no_mangle]
pub extern "C" fn flashstream_session_free(
    session: *mut flashstream_session,
) -> flashstream_status {
    guard(|| {
        let s = SESSIONS.remove(session as usize)?;
        s.cancel.store(true, Ordering::SeqCst);
        Ok(())
    })
}

/// Empties the session's context (the next generation starts a new conversation).
#[no_mangle]
pub extern "C" fn flashstream_session_reset(
    session: *mut flashstream_session,
) -> flashstream_status {
    guard(|| {
        let s = session_of(session)?;
        s.session.lock().unwrap_or_else(|p| p.into_inner()).reset();
        s.cancel.store(false, Ordering::SeqCst);
        Ok(())
    })
}

/// Asks the generation in progress on this session (on another thread) to stop after the
/// current token (a prompt being evaluated is finished first); that `generate` returns
/// `FLASHSTREAM_OK` with stop reason 4 (cancelled). A cancel that arrives while no generation
/// runs applies to the next one, so one racing the start of a generation is never lost;
/// `flashstream_session_reset` clears it.
#[no_mangle]
pub extern "C" fn flashstream_session_cancel(
    session: *mut flashstream_session,
) -> flashstream_status {
    guard(|| {
        session_of(session)?.cancel.store(true, Ordering::SeqCst);
        Ok(())
    })
}

fn sampling(p: &flashstream_sampling_params) -> Result<GenerateOptions, Error> {
    let sampler = SamplerConfig {
        temperature: p.temperature,
        top_k: p.top_k as usize,
        top_p: p.top_p,
        min_p: p.min_p,
        repeat_penalty: p.repeat_penalty,
        repeat_last_n: p.repeat_last_n as usize,
        frequency_penalty: p.frequency_penalty,
        presence_penalty: p.presence_penalty,
        seed: p.seed,
    };
    sampler.validate().map_err(|e| match e {
        SamplerError::Invalid {
            name,
            value,
            expected,
        } => {
            // The runtime names the CLI flag; name the field of flashstream_sampling_params.
            let field = match name {
                "--temp" => "temperature",
                "--top-p" => "top_p",
                "--min-p" => "min_p",
                "--repeat-penalty" => "repeat_penalty",
                "--frequency-penalty" => "frequency_penalty",
                "--presence-penalty" => "presence_penalty",
                other => other,
            };
            Error::invalid(format!(
                "invalid sampling parameter {field} = {value}: expected {expected}"
            ))
        }
        other => Error::invalid(other.to_string()),
    })?;
    if p.stop.is_null() && p.n_stop > 0 {
        return Err(Error::null("stop"));
    }
    let mut stop = Vec::with_capacity(p.n_stop);
    for i in 0..p.n_stop {
        // SAFETY: `stop` holds `n_stop` string pointers (the caller's contract).
        let s = unsafe { str_arg(*p.stop.add(i), &format!("stop[{i}]")) }?;
        if s.is_empty() {
            return Err(Error::invalid(format!("stop[{i}] is empty")));
        }
        stop.push(s.to_string());
    }
    Ok(GenerateOptions {
        max_tokens: p.max_tokens as usize,
        sampler,
        stop,
        stop_at_eog: p.stop_at_eog,
        ..GenerateOptions::default()
    })
}

/// Generates after `text` (tokenized with the model's BOS if `add_special`) in `s`.
///
/// # Safety
/// The pointers follow `flashstream_session_generate`'s contract.
unsafe fn run_generation(
    s: &SessionBox,
    text: &str,
    add_special: bool,
    p: &flashstream_sampling_params,
    on_token: flashstream_token_fn,
    user_data: *mut c_void,
    out: *mut flashstream_generation,
) -> Result<(), Error> {
    let opts = sampling(p)?;
    let eb = &s.engine;
    let ids = eb
        .tokenizer
        .encode(text, add_special, true)
        .map_err(|x| Error::invalid(x.to_string()))?;
    if ids.is_empty() {
        return Err(Error::invalid("the prompt gives no tokens (it is empty)"));
    }
    let mut session = s.session.lock().unwrap_or_else(|p| p.into_inner());
    let g = generate(&mut session, &eb.tokenizer, &ids, &opts, |ev| {
        if let Some(f) = on_token {
            if !f(
                ev.text.as_ptr().cast(),
                ev.text.len(),
                ev.token as i32,
                user_data,
            ) {
                return ControlFlow::Break(());
            }
        }
        if s.cancel.load(Ordering::SeqCst) {
            return ControlFlow::Break(());
        }
        ControlFlow::Continue(())
    });
    // A cancel is consumed by the generation it stopped (or that ran while it came).
    s.cancel.store(false, Ordering::SeqCst);
    let g = g.map_err(|e| Error::new(FLASHSTREAM_ERR_RUNTIME, e.to_string()))?;
    *eb.last.lock().unwrap_or_else(|p| p.into_inner()) = Some(g.stats);
    // SAFETY: the caller's contract.
    if let Some(o) = unsafe { out.as_mut() } {
        *o = flashstream_generation {
            n_prompt_tokens: g.stats.prompt_tokens as u32,
            n_generated: g.tokens.len() as u32,
            stop_reason: match g.stop_reason {
                StopReason::EndOfGeneration => 0,
                StopReason::StopString => 1,
                StopReason::MaxTokens => 2,
                StopReason::ContextFull => 3,
                StopReason::Cancelled => 4,
            },
            prompt_tokens_per_s: g.stats.prompt_tokens_per_s,
            decode_tokens_per_s: g.stats.decode_tokens_per_s,
        };
    }
    Ok(())
}

/// Generates the continuation of `prompt` in `session` (after what it already holds), calling
/// `on_token` (may be NULL) with each piece of text. Stops at `max_tokens`, a stop string, an
/// end-of-generation token (if asked), a full context, `on_token` returning false or
/// `flashstream_session_cancel`. `out` (may be NULL) gets what happened. An empty prompt or
/// invalid sampling values are `FLASHSTREAM_ERR_INVALID`; a prompt longer than the context
/// left is `FLASHSTREAM_ERR_RUNTIME`.
///
/// # Safety
/// `prompt` is NUL-terminated; `params` NULL (defaults) or valid, its `stop` array valid for
/// `n_stop` strings; `out` NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn flashstream_session_generate(
    session: *mut flashstream_session,
    prompt: *const c_char,
    params: *const flashstream_sampling_params,
    on_token: flashstream_token_fn,
    user_data: *mut c_void,
    out: *mut flashstream_generation,
) -> flashstream_status {
    guard(|| {
        let s = session_of(session)?;
        // SAFETY: the caller's contract.
        let prompt = unsafe { str_arg(prompt, "prompt") }?;
        let p = unsafe { params.as_ref() }
            .copied()
            .unwrap_or_else(|| flashstream_sampling_default_params());
        // SAFETY: the caller's contract.
        unsafe { run_generation(&s, prompt, p.add_special, &p, on_token, user_data, out) }
    })
}

/// Renders `n` messages with the model's chat template and the assistant's turn opener, then
/// generates the reply as `flashstream_session_generate` does (`params->add_special` is
/// ignored: the BOS is added unless the template wrote it). For a conversation, call it with
/// the whole history on a reset (or new) session.
///
/// # Safety
/// `messages` is valid for `n` messages; the other pointers as for
/// `flashstream_session_generate`.
#[no_mangle]
pub unsafe extern "C" fn flashstream_session_chat(
    session: *mut flashstream_session,
    messages: *const flashstream_chat_message,
    n: usize,
    params: *const flashstream_sampling_params,
    on_token: flashstream_token_fn,
    user_data: *mut c_void,
    out: *mut flashstream_generation,
) -> flashstream_status {
    guard(|| {
        let s = session_of(session)?;
        // SAFETY: the caller's contract.
        let msgs = unsafe { messages_arg(messages, n) }?;
        let text = s
            .engine
            .template
            .render(&msgs, true)
            .map_err(|x| Error::invalid(x.to_string()))?;
        let bos = s.engine.template.bos();
        let has_bos = !bos.is_empty() && text.starts_with(bos);
        let p = unsafe { params.as_ref() }
            .copied()
            .unwrap_or_else(|| flashstream_sampling_default_params());
        // SAFETY: the caller's contract.
        unsafe { run_generation(&s, &text, !has_bos, &p, on_token, user_data, out) }
    })
}

/// A static description of a status code ("ok", "null pointer", ...).
#[no_mangle]
pub extern "C" fn flashstream_status_string(status: i32) -> *const c_char {
    let s: &'static str = match status {
        0 => "ok\0",
        1 => "null pointer\0",
        2 => "bad handle\0",
        3 => "invalid UTF-8\0",
        4 => "invalid argument\0",
        5 => "budget too small\0",
        6 => "bad model\0",
        7 => "I/O error\0",
        8 => "cancelled\0",
        9 => "buffer too small\0",
        10 => "runtime error\0",
        11 => "internal error\0",
        _ => "unknown status\0",
    };
    s.as_ptr().cast()
}
