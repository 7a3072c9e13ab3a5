//! One sequence's generation, a token at a time, for callers that run the forward passes
//! themselves (a server decoding several sequences in shared passes): sampling, end of
//! generation, stop strings and streamed UTF-8 text exactly as [`crate::generate::generate`]
//! does them, fed one logit vector at a time, with an optional output constraint per
//! sequence as [`crate::generate::generate_constrained`] applies it.

use crate::constraint::LogitsConstraint;
use crate::generate::{GenerateError, GenerateOptions, StopFilter, StopReason};
use crate::sampler::{Sampler, SamplerError};
use crate::tokenizer::{StreamDecoder, Tokenizer};

/// The state of one sequence's generation.
#[derive(Debug)]
pub struct SequenceGen<'t> {
    tokenizer: &'t Tokenizer,
    sampler: Sampler,
    decoder: StreamDecoder<'t>,
    filter: StopFilter,
    history: Vec<u32>,
    tokens: Vec<u32>,
    text: String,
    max_tokens: usize,
    stop_at_eog: bool,
    finished: Option<StopReason>,
}

/// What one step produced.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// The sampled token.
    pub token: u32,
    /// Text that may be shown now (possibly empty: held back as an incomplete character or a
    /// possible stop-string prefix; at the end, everything held back).
    pub text: String,
    /// Why generation ended with this token, if it did.
    pub finished: Option<StopReason>,
}

impl<'t> SequenceGen<'t> {
    /// A generation continuing `prompt` under `opts` (its `max_tokens`, sampler, stop
    /// strings, `stop_at_eog`, `render_special`).
    pub fn new(
        tokenizer: &'t Tokenizer,
        prompt: &[u32],
        opts: &GenerateOptions,
    ) -> Result<Self, SamplerError> {
        Ok(SequenceGen {
            tokenizer,
            sampler: Sampler::new(opts.sampler.clone())?,
            decoder: StreamDecoder::with_special(tokenizer, opts.render_special),
            filter: StopFilter::new(&opts.stop),
            history: prompt.to_vec(),
            tokens: Vec::new(),
            text: String::new(),
            max_tokens: opts.max_tokens,
            stop_at_eog: opts.stop_at_eog,
            finished: None,
        })
    }

    /// Samples the next token from `logits` (those of the last token evaluated).
    /// `room` says whether the context can take one more position (else the generation ends
    /// with [`StopReason::ContextFull`]).
    pub fn step(&mut self, logits: &[f32], room: bool) -> Result<Step, SamplerError> {
        let tok = self.sampler.sample(logits, &self.history)?;
        Ok(self.advance(tok, false, room))
    }

    /// [`step`](Self::step) under an output constraint: it masks `logits` (in place), the
    /// sampled token is passed to its [`accept`](LogitsConstraint::accept), and the
    /// generation ends ([`StopReason::EndOfGeneration`]) once it is
    /// [`finished`](LogitsConstraint::finished).
    pub fn step_constrained(
        &mut self,
        logits: &mut [f32],
        room: bool,
        constraint: &mut dyn LogitsConstraint,
    ) -> Result<Step, GenerateError> {
        constraint.apply(logits)?;
        let tok = self.sampler.sample(logits, &self.history)?;
        constraint.accept(tok)?;
        Ok(self.advance(tok, constraint.finished(), room))
    }

    /// Records `tok`, chosen by the caller (speculative decoding's verification), as
    /// [`step`](Self::step) records a sampled one.
    pub fn push(&mut self, tok: u32, room: bool) -> Step {
        self.advance(tok, false, room)
    }

    /// The token [`step`](Self::step) would sample from `logits`, without recording it.
    pub fn choose(&mut self, logits: &[f32]) -> Result<u32, SamplerError> {
        self.sampler.sample(logits, &self.history)
    }

    /// The distribution [`step`](Self::step) samples from (see
    /// [`Sampler::distribution`]).
    pub fn distribution(&mut self, logits: &[f32]) -> Result<Vec<(u32, f64)>, SamplerError> {
        self.sampler.distribution(logits, &self.history)
    }

    /// A uniform draw in `[0, 1)` from the sequence's seeded generator.
    pub fn uniform(&mut self) -> f64 {
        self.sampler.uniform()
    }

    /// Whether sampling is greedy (temperature 0).
    pub fn is_greedy(&self) -> bool {
        self.sampler.config().temperature == 0.0
    }

    /// The prompt followed by the tokens generated so far.
    pub fn history(&self) -> &[u32] {
        &self.history
    }

    /// Ends the generation early ([`StopReason::Cancelled`]): returns the text held back
    /// (an incomplete character is dropped; a stop string found in it still ends the text
    /// before it, as [`StopReason::StopString`]).
    pub fn cancel(&mut self) -> String {
        if self.finished.is_some() {
            return String::new();
        }
        let tail = self.decoder.flush().unwrap_or_default();
        let (mut out, stopped) = self.filter.push(&tail);
        if stopped {
            self.finished = Some(StopReason::StopString);
        } else {
            out.push_str(&self.filter.finish());
            self.finished = Some(StopReason::Cancelled);
        }
        self.text.push_str(&out);
        out
    }

    /// Records `tok`; `complete` says the output constraint ends here.
    fn advance(&mut self, tok: u32, complete: bool, room: bool) -> Step {
        self.tokens.push(tok);
        self.history.push(tok);
        let eog = self.stop_at_eog && self.tokenizer.is_eog(tok);
        let mut piece = if eog {
            self.decoder.flush().unwrap_or_default()
        } else {
            self.decoder.push(tok).unwrap_or_default()
        };
        if complete && !eog {
            piece.push_str(&self.decoder.flush().unwrap_or_default());
        }
        let eog = eog || complete;
        let (mut out, stopped) = self.filter.push(&piece);
        if eog && !stopped {
            out.push_str(&self.filter.finish());
        }
        let mut finished = if stopped {
            Some(StopReason::StopString)
        } else if eog {
            Some(StopReason::EndOfGeneration)
        } else if self.tokens.len() >= self.max_tokens {
            Some(StopReason::MaxTokens)
        } else if !room {
            Some(StopReason::ContextFull)
        } else {
            None
        };
        if matches!(
            finished,
            Some(StopReason::MaxTokens | StopReason::ContextFull)
        ) {
            let tail = self.decoder.flush().unwrap_or_default();
            let (t, stopped) = self.filter.push(&tail);
            out.push_str(&t);
            if stopped {
                finished = Some(StopReason::StopString);
            } else {
                out.push_str(&self.filter.finish());
            }
        }
        self.text.push_str(&out);
        self.finished = finished;
        Step {
            token: tok,
            text: out,
            finished,
        }
    }

    /// The tokens generated so far (an end-of-generation token included).
    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    /// The text released so far.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Why it ended, once it has.
    pub fn finished(&self) -> Option<StopReason> {
        self.finished
    }
}
