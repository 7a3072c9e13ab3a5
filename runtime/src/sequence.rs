//! One sequence's generation, a token at a time, for callers that run the forward passes
//! themselves (a server decoding several sequences in shared passes): sampling, end of
//! generation, stop strings and streamed UTF-8 text exactly as [`crate::generate::generate`]
//! does them, fed one logit vector at a time.

use crate::generate::{GenerateOptions, StopFilter, StopReason};
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
        self.tokens.push(tok);
        self.history.push(tok);
        let eog = self.stop_at_eog && self.tokenizer.is_eog(tok);
        let piece = if eog {
            self.decoder.flush().unwrap_or_default()
        } else {
            self.decoder.push(tok).unwrap_or_default()
        };
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
        Ok(Step {
            token: tok,
            text: out,
            finished,
        })
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
