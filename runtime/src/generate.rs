//! Text generation: prompt evaluation, sampling, stop handling, streaming detokenization and
//! timing, as a library API.
//!
//! [`generate`] evaluates the prompt in one pass (chunked by the model's `max_batch`), then
//! decodes one token a step, calling back with every token and the text it completes. Text is
//! streamed as valid UTF-8 (bytes of a character split across tokens are held back until it
//! is complete), and text that might be the start of a stop string is held back until it is
//! known not to be one, so a stop string never reaches the callback.
//!
//! ```no_run
//! # use flashstream_runtime::{generate::*, model::Session, tokenizer::Tokenizer};
//! # fn demo(session: &mut Session<'_>, tok: &Tokenizer) -> Result<(), GenerateError> {
//! let prompt = tok.encode("The capital of France is", true, true)?;
//! let opts = GenerateOptions { max_tokens: 16, ..GenerateOptions::default() };
//! let out = generate(session, tok, &prompt, &opts, |ev| {
//!     print!("{}", ev.text);
//!     std::ops::ControlFlow::Continue(())
//! })?;
//! eprintln!("{:.1} tokens/s", out.stats.decode_tokens_per_s);
//! # Ok(()) }
//! ```

use std::ops::ControlFlow;
use std::time::Instant;

use crate::constraint::{ConstraintError, LogitsConstraint};
use crate::model::{LogitsWanted, RuntimeError, Session};
use crate::sampler::{Sampler, SamplerConfig, SamplerError};
use crate::tokenizer::{StreamDecoder, Tokenizer, TokenizerError};

/// Errors of [`generate`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GenerateError {
    /// The forward pass failed.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// Sampling parameters are invalid.
    #[error(transparent)]
    Sampler(#[from] SamplerError),
    /// The prompt could not be tokenized.
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    /// The output constraint failed (see [`generate_constrained`]).
    #[error(transparent)]
    Constraint(#[from] ConstraintError),
    /// The prompt is empty.
    #[error("the prompt is empty: give at least one token")]
    EmptyPrompt,
    /// The prompt does not fit the context.
    #[error("the prompt has {prompt} tokens but the context holds {n_ctx} (raise --ctx or shorten the prompt)")]
    PromptTooLong {
        /// Prompt tokens (plus positions already in the session).
        prompt: usize,
        /// Context length.
        n_ctx: usize,
    },
    /// Speculative decoding needs to take back rejected positions, which the model's
    /// recurrent (linear-attention) layers cannot do.
    #[error("speculative decoding is not available for {arch} models: their recurrent layers cannot take back rejected tokens; run without --lookup/--draft (a {arch} model can still be a draft model)")]
    CannotRollBack {
        /// The model's architecture.
        arch: String,
    },
}

/// What to generate.
#[derive(Debug, Clone)]
pub struct GenerateOptions {
    /// At most this many new tokens.
    pub max_tokens: usize,
    /// Sampling parameters.
    pub sampler: SamplerConfig,
    /// Stop when the generated text contains any of these (the stop string is not output).
    pub stop: Vec<String>,
    /// Stop at an end-of-generation token (EOS, EOT, …) of the vocabulary.
    pub stop_at_eog: bool,
    /// Render control tokens (e.g. `<|im_end|>`) as their text instead of nothing.
    pub render_special: bool,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions {
            max_tokens: 128,
            sampler: SamplerConfig::default(),
            stop: Vec::new(),
            stop_at_eog: true,
            render_special: false,
        }
    }
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// An end-of-generation token was sampled, or the output constraint is complete.
    EndOfGeneration,
    /// A stop string appeared in the text.
    StopString,
    /// `max_tokens` were generated.
    MaxTokens,
    /// The context is full.
    ContextFull,
    /// The callback asked to stop.
    Cancelled,
}

impl StopReason {
    /// A short name (`eog`, `stop`, `length`, `context`, `cancelled`).
    pub fn as_str(self) -> &'static str {
        match self {
            StopReason::EndOfGeneration => "eog",
            StopReason::StopString => "stop",
            StopReason::MaxTokens => "length",
            StopReason::ContextFull => "context",
            StopReason::Cancelled => "cancelled",
        }
    }
}

/// Timing of a generation (wall clock).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct GenerateStats {
    /// Prompt tokens evaluated.
    pub prompt_tokens: usize,
    /// Tokens generated (including an end-of-generation token).
    pub generated_tokens: usize,
    /// Seconds spent evaluating the prompt.
    pub prompt_s: f64,
    /// Seconds spent generating after the first token (decode steps and sampling).
    pub decode_s: f64,
    /// Seconds from the start until the first generated token was known.
    pub time_to_first_token_s: f64,
    /// Prompt tokens per second.
    pub prompt_tokens_per_s: f64,
    /// Generated tokens per second after the first one (each needs one decode step).
    pub decode_tokens_per_s: f64,
}

/// One generated token, as passed to the callback.
#[derive(Debug, Clone, Copy)]
pub struct TokenEvent<'a> {
    /// The token id.
    pub token: u32,
    /// The text that may be shown now (possibly empty: held back as an incomplete
    /// character or a possible stop-string prefix; or text held back earlier).
    pub text: &'a str,
    /// Index of this token among the generated ones.
    pub index: usize,
}

/// The result of [`generate`].
#[derive(Debug, Clone)]
pub struct Generation {
    /// The prompt tokens.
    pub prompt_tokens: Vec<u32>,
    /// The generated token ids (an end-of-generation token included).
    pub tokens: Vec<u32>,
    /// The generated text (without a matched stop string).
    pub text: String,
    /// Why it ended.
    pub stop_reason: StopReason,
    /// Timing.
    pub stats: GenerateStats,
}

/// Holds back text that could still turn into a stop string.
#[derive(Debug)]
pub(crate) struct StopFilter {
    stops: Vec<String>,
    pending: String,
}

impl StopFilter {
    pub(crate) fn new(stops: &[String]) -> Self {
        StopFilter {
            stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(),
            pending: String::new(),
        }
    }

    /// Adds `text`; returns what can be released and whether a stop string was found (then
    /// the released text ends right before it).
    pub(crate) fn push(&mut self, text: &str) -> (String, bool) {
        self.pending.push_str(text);
        if let Some(at) = self
            .stops
            .iter()
            .filter_map(|s| self.pending.find(s.as_str()))
            .min()
        {
            let out = self.pending[..at].to_string();
            self.pending.clear();
            return (out, true);
        }
        // Keep the longest tail that is a proper prefix of a stop string.
        let mut keep = 0;
        for s in &self.stops {
            for (i, _) in s.char_indices().skip(1) {
                if i > keep && self.pending.ends_with(&s[..i]) {
                    keep = i;
                }
            }
        }
        let cut = self.pending.len() - keep;
        let out = self.pending[..cut].to_string();
        self.pending.drain(..cut);
        (out, false)
    }

    pub(crate) fn finish(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }
}

fn per_s(n: usize, s: f64) -> f64 {
    if s > 0.0 {
        n as f64 / s
    } else {
        0.0
    }
}

/// Generates a continuation of `prompt` in `session` (which continues from its current
/// position), calling `on_token` for every generated token. The callback may return
/// `ControlFlow::Break(())` to stop early.
pub fn generate<F>(
    session: &mut Session<'_>,
    tokenizer: &Tokenizer,
    prompt: &[u32],
    opts: &GenerateOptions,
    on_token: F,
) -> Result<Generation, GenerateError>
where
    F: FnMut(&TokenEvent<'_>) -> ControlFlow<()>,
{
    generate_constrained(session, tokenizer, prompt, opts, None, on_token)
}

/// [`generate`] with an optional output constraint: before each token is sampled the
/// constraint masks the logits, the sampled token is passed to its
/// [`accept`](LogitsConstraint::accept), and generation ends
/// ([`StopReason::EndOfGeneration`]) once it is [`finished`](LogitsConstraint::finished).
/// Its time counts in `decode_s`; the constraint keeps its own statistics.
pub fn generate_constrained<F>(
    session: &mut Session<'_>,
    tokenizer: &Tokenizer,
    prompt: &[u32],
    opts: &GenerateOptions,
    mut constraint: Option<&mut dyn LogitsConstraint>,
    mut on_token: F,
) -> Result<Generation, GenerateError>
where
    F: FnMut(&TokenEvent<'_>) -> ControlFlow<()>,
{
    let _span = tracing::info_span!("generate", prompt = prompt.len()).entered();
    if prompt.is_empty() {
        return Err(GenerateError::EmptyPrompt);
    }
    let n_ctx = session.n_ctx();
    if session.pos() + prompt.len() > n_ctx {
        return Err(GenerateError::PromptTooLong {
            prompt: session.pos() + prompt.len(),
            n_ctx,
        });
    }
    let mut sampler = Sampler::new(opts.sampler.clone())?;
    let start = Instant::now();
    let mut logits = session.eval(prompt, LogitsWanted::Last)?;
    let prompt_s = start.elapsed().as_secs_f64();

    let mut history: Vec<u32> = prompt.to_vec();
    let mut tokens = Vec::new();
    let mut text = String::new();
    let mut decoder = StreamDecoder::with_special(tokenizer, opts.render_special);
    let mut filter = StopFilter::new(&opts.stop);
    let mut ttft = 0.0;
    let mut first_at = start;
    let mut reason = StopReason::MaxTokens;
    while tokens.len() < opts.max_tokens {
        if let Some(c) = constraint.as_deref_mut() {
            c.apply(&mut logits)?;
        }
        let tok = sampler.sample(&logits, &history)?;
        if tokens.is_empty() {
            first_at = Instant::now();
            ttft = (first_at - start).as_secs_f64();
        }
        tokens.push(tok);
        history.push(tok);
        let eog = opts.stop_at_eog && tokenizer.is_eog(tok);
        // The constraint is complete: this token ends the output like an end-of-generation one.
        let complete = match constraint.as_deref_mut() {
            Some(c) => {
                c.accept(tok)?;
                c.finished()
            }
            None => false,
        };
        let mut piece = if eog {
            decoder.flush().unwrap_or_default()
        } else {
            decoder.push(tok).unwrap_or_default()
        };
        if complete && !eog {
            piece.push_str(&decoder.flush().unwrap_or_default());
        }
        let eog = eog || complete;
        let (mut out, stopped) = filter.push(&piece);
        if eog && !stopped {
            out.push_str(&filter.finish());
        }
        text.push_str(&out);
        let ev = TokenEvent {
            token: tok,
            text: &out,
            index: tokens.len() - 1,
        };
        let flow = on_token(&ev);
        if stopped {
            reason = StopReason::StopString;
            break;
        }
        if eog {
            reason = StopReason::EndOfGeneration;
            break;
        }
        if flow.is_break() {
            reason = StopReason::Cancelled;
            break;
        }
        if tokens.len() >= opts.max_tokens {
            break;
        }
        if session.pos() >= n_ctx {
            reason = StopReason::ContextFull;
            break;
        }
        logits = session.eval(&[tok], LogitsWanted::Last)?;
    }
    if !matches!(reason, StopReason::StopString | StopReason::EndOfGeneration) {
        let mut tail = decoder.flush().unwrap_or_default();
        let (out, stopped) = filter.push(&tail);
        tail = out;
        if !stopped {
            tail.push_str(&filter.finish());
        } else {
            reason = StopReason::StopString;
        }
        if !tail.is_empty() {
            text.push_str(&tail);
            if let Some(&last) = tokens.last() {
                let _ = on_token(&TokenEvent {
                    token: last,
                    text: &tail,
                    index: tokens.len() - 1,
                });
            }
        }
    }
    let decode_s = if tokens.is_empty() {
        0.0
    } else {
        first_at.elapsed().as_secs_f64()
    };
    let stats = GenerateStats {
        prompt_tokens: prompt.len(),
        generated_tokens: tokens.len(),
        prompt_s,
        decode_s,
        time_to_first_token_s: ttft,
        prompt_tokens_per_s: per_s(prompt.len(), prompt_s),
        decode_tokens_per_s: per_s(tokens.len().saturating_sub(1), decode_s),
    };
    Ok(Generation {
        prompt_tokens: prompt.to_vec(),
        tokens,
        text,
        stop_reason: reason,
        stats,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], pieces: &[&str]) -> (String, bool) {
        let stops: Vec<String> = stops.iter().map(|s| s.to_string()).collect();
        let mut f = StopFilter::new(&stops);
        let mut out = String::new();
        for p in pieces {
            let (o, stop) = f.push(p);
            out.push_str(&o);
            if stop {
                return (out, true);
            }
        }
        out.push_str(&f.finish());
        (out, false)
    }

    #[test]
    fn stop_strings_are_cut_and_held_back() {
        assert_eq!(run(&["\n\n"], &["a", "b\n", "\nc"]), ("ab".into(), true));
        assert_eq!(run(&["END"], &["xE", "N", "y"]), ("xENy".into(), false));
        assert_eq!(run(&["END"], &["xE", "N", "D!"]), ("x".into(), true));
        assert_eq!(run(&[], &["a", "b"]), ("ab".into(), false));
        assert_eq!(run(&["é!"], &["aé", "!"]), ("a".into(), true));
        // Held back only while it could still match.
        let stops = vec!["abc".to_string()];
        let mut f = StopFilter::new(&stops);
        assert_eq!(f.push("xab"), ("x".to_string(), false));
        assert_eq!(f.push("x"), ("abx".to_string(), false));
    }
}
