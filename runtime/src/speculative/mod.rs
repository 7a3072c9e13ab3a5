//! Speculative decoding: several tokens per pass over the weights.
//!
//! A [`Drafter`] proposes up to K tokens that may follow the text (prompt lookup,
//! [`Lookup`]; a small model with the same vocabulary, [`DraftModel`]). The target then
//! evaluates the last emitted token and the K proposals as one batch (one pass over the
//! streamed weights, the cost of about one decode step when reads bound it) and gets the
//! logits of every position. Walking them in order, each proposal is checked against what the
//! target itself would emit there: greedy, the proposal is kept if it is the target's token;
//! sampling, by the speculative sampling rule ([`accept`]), which keeps the output
//! distribution the target's. At the first rejection the target's own token is emitted; if
//! every proposal is kept, the last row gives one more token for free. The KV cache of the
//! rejected positions is rolled back ([`Session::truncate`]).
//!
//! Greedy output is identical, token for token, to plain decoding: a batch of fewer than 64
//! rows gets, row for row, the arithmetic of single decode steps (the batch kernels equal the
//! one-row ones bit for bit, and attention runs one row at a time below the 64-row tile), so
//! K is capped to keep verification batches under that size.

pub mod accept;
mod draft;
mod lookup;

use std::ops::ControlFlow;
use std::time::Instant;

pub use draft::{check_vocab, DraftModel};
pub use lookup::Lookup;

use crate::generate::{
    GenerateError, GenerateOptions, GenerateStats, Generation, StopReason, TokenEvent,
};
use crate::model::{LogitsWanted, RuntimeError, Session};
use crate::sampler::SamplerError;
use crate::sequence::{SequenceGen, Step};
use crate::tokenizer::Tokenizer;

/// Most tokens proposed per pass: verification batches stay under attention's 64-row tile,
/// where a batch row gets exactly a decode step's arithmetic.
pub const MAX_SPEC_K: usize = 48;

/// Errors setting up speculative decoding.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SpecError {
    /// The draft model's vocabulary is not the target's.
    #[error("the draft model cannot draft for this model: its vocabulary differs ({0}); use a draft model of the same family and tokenizer")]
    VocabMismatch(String),
    /// Invalid sampling parameters.
    #[error(transparent)]
    Sampler(#[from] SamplerError),
}

/// Proposed tokens, and for a drafter that samples, the distribution each was drawn from.
#[derive(Debug, Clone, Default)]
pub struct Proposal {
    /// The proposed tokens, in order.
    pub tokens: Vec<u32>,
    /// For each token, the `(token, probability)` pairs it was drawn from; `None` when each
    /// is proposed for certain (prompt lookup, greedy drafts).
    pub dists: Option<Vec<Vec<(u32, f64)>>>,
}

impl Proposal {
    /// Empties it.
    pub fn clear(&mut self) {
        self.tokens.clear();
        self.dists = None;
    }
}

/// Proposes the tokens that may follow a text.
pub trait Drafter {
    /// Fills `out` with at most `k` tokens that may follow `history` (prompt and output so
    /// far). Proposing none is allowed (that pass is a plain decode step).
    fn propose(
        &mut self,
        history: &[u32],
        k: usize,
        out: &mut Proposal,
    ) -> Result<(), RuntimeError>;
}

/// A drafter that sees `prefix` before the history it is given: for a generation that
/// continues a session holding earlier text (a conversation's previous turns), so the
/// drafter sees the whole context.
pub struct Prefixed<'a> {
    prefix: &'a [u32],
    inner: &'a mut dyn Drafter,
    buf: Vec<u32>,
}

impl<'a> Prefixed<'a> {
    /// `inner`, shown `prefix` first.
    pub fn new(prefix: &'a [u32], inner: &'a mut dyn Drafter) -> Self {
        Prefixed {
            prefix,
            inner,
            buf: Vec::new(),
        }
    }
}

impl std::fmt::Debug for Prefixed<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prefixed")
            .field("prefix", &self.prefix.len())
            .finish_non_exhaustive()
    }
}

impl Drafter for Prefixed<'_> {
    fn propose(
        &mut self,
        history: &[u32],
        k: usize,
        out: &mut Proposal,
    ) -> Result<(), RuntimeError> {
        self.buf.clear();
        self.buf.extend_from_slice(self.prefix);
        self.buf.extend_from_slice(history);
        self.inner.propose(&self.buf, k, out)
    }
}

/// Speculative decoding's parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpecOptions {
    /// Most tokens proposed per pass (capped to [`MAX_SPEC_K`] and the model's batch).
    pub k: usize,
}

impl Default for SpecOptions {
    fn default() -> Self {
        SpecOptions { k: 8 }
    }
}

/// What speculation did in one generation.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SpecStats {
    /// Verification passes (each one pass over the weights).
    pub passes: usize,
    /// Tokens proposed.
    pub proposed: usize,
    /// Proposed tokens kept.
    pub accepted: usize,
    /// Seconds spent drafting.
    pub draft_s: f64,
    /// Tokens emitted per verification pass (the first token, from the prompt's pass, not
    /// counted): plain decoding gives 1.
    pub tokens_per_pass: f64,
}

impl SpecStats {
    /// The share of proposed tokens kept.
    pub fn acceptance(&self) -> f64 {
        if self.proposed == 0 {
            0.0
        } else {
            self.accepted as f64 / self.proposed as f64
        }
    }
}

fn per_s(n: usize, s: f64) -> f64 {
    if s > 0.0 {
        n as f64 / s
    } else {
        0.0
    }
}

/// What one verification pass decided ([`verify_pass`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verified {
    /// Proposed tokens kept.
    pub kept: usize,
    /// The generation ended (a stop condition, or the emit callback said so).
    pub done: bool,
    /// The position to cut the session's cache back to ([`Session::truncate`]): the pending
    /// token and the kept proposals stay; as in plain decoding, the last token emitted is not
    /// in the cache (when generation ended on a kept proposal, its position goes too).
    pub keep_pos: usize,
}

/// Verifies one pass: `logits` holds one row of `n_vocab` per evaluated token (the pending
/// token at position `pos0`, then each of `proposal`'s tokens). Walking the rows in order,
/// each proposal is checked against the target's choice there (greedy: equality; sampling:
/// the rule of [`accept`]); every emitted token (the kept proposals, then the target's own
/// token at the first rejection, or one more after the last row when all are kept) is pushed
/// to `seq` and handed to `emit`, which returns true to end the generation. The caller then
/// truncates the session to [`Verified::keep_pos`].
pub fn verify_pass(
    seq: &mut SequenceGen<'_>,
    logits: &[f32],
    n_vocab: usize,
    proposal: &Proposal,
    pos0: usize,
    n_ctx: usize,
    mut emit: impl FnMut(&mut SequenceGen<'_>, Step) -> bool,
) -> Result<Verified, SamplerError> {
    let drafts = &proposal.tokens;
    let greedy = seq.is_greedy();
    let mut kept = 0;
    let mut done = false;
    let mut ended_on_draft = false;
    for i in 0..=drafts.len() {
        let row = &logits[i * n_vocab..(i + 1) * n_vocab];
        let room = pos0 + i + 1 < n_ctx;
        let (tok, accepted) = if i == drafts.len() {
            (seq.choose(row)?, false)
        } else if greedy {
            let t = seq.choose(row)?;
            (t, t == drafts[i])
        } else {
            let p = seq.distribution(row)?;
            let q = proposal.dists.as_ref().map(|d| d[i].as_slice());
            match accept::verify(&p, q, drafts[i], || seq.uniform()) {
                accept::Verdict::Accept => (drafts[i], true),
                accept::Verdict::Reject(t) => (t, false),
            }
        };
        let step = seq.push(tok, room);
        if accepted {
            kept += 1;
        }
        if emit(seq, step) {
            done = true;
            ended_on_draft = accepted;
            break;
        }
        if !accepted {
            break;
        }
    }
    Ok(Verified {
        kept,
        done,
        keep_pos: pos0 + 1 + kept - usize::from(ended_on_draft),
    })
}

/// [`crate::generate::generate`] with speculative decoding: `drafter` proposes up to
/// `spec.k` tokens per step, verified in one pass. Greedy output is the plain one token for
/// token; sampled output has the plain distribution.
pub fn generate_speculative<F>(
    session: &mut Session<'_>,
    tokenizer: &Tokenizer,
    prompt: &[u32],
    opts: &GenerateOptions,
    spec: &SpecOptions,
    drafter: &mut dyn Drafter,
    mut on_token: F,
) -> Result<(Generation, SpecStats), GenerateError>
where
    F: FnMut(&TokenEvent<'_>) -> ControlFlow<()>,
{
    let _span =
        tracing::info_span!("generate_speculative", prompt = prompt.len(), k = spec.k).entered();
    if prompt.is_empty() {
        return Err(GenerateError::EmptyPrompt);
    }
    if session.recurrent_state().is_some() {
        return Err(GenerateError::CannotRollBack {
            arch: session.model().config().arch.to_string(),
        });
    }
    let n_ctx = session.n_ctx();
    if session.pos() + prompt.len() > n_ctx {
        return Err(GenerateError::PromptTooLong {
            prompt: session.pos() + prompt.len(),
            n_ctx,
        });
    }
    let max_k = spec
        .k
        .min(MAX_SPEC_K)
        .min(session.model().max_batch().saturating_sub(1));
    let n_vocab = session.model().config().n_vocab;
    let mut seq = SequenceGen::new(tokenizer, prompt, opts)?;
    let mut stats = SpecStats::default();
    let start = Instant::now();
    let logits = session.eval(prompt, LogitsWanted::Last)?;
    let prompt_s = start.elapsed().as_secs_f64();
    let mut ttft = 0.0;
    let mut first_at = start;
    let mut proposal = Proposal::default();

    // Emits one step through the callback; true when generation ends.
    let mut emit = |seq: &mut SequenceGen<'_>, step: Step| -> bool {
        let index = seq.tokens().len() - 1;
        if index == 0 {
            first_at = Instant::now();
            ttft = (first_at - start).as_secs_f64();
        }
        let flow = on_token(&TokenEvent {
            token: step.token,
            text: &step.text,
            index,
        });
        if step.finished.is_some() {
            return true;
        }
        if flow.is_break() {
            let tail = seq.cancel();
            if !tail.is_empty() {
                let _ = on_token(&TokenEvent {
                    token: step.token,
                    text: &tail,
                    index,
                });
            }
            return true;
        }
        false
    };

    let mut done = if opts.max_tokens == 0 {
        true
    } else {
        let step = seq.step(&logits, session.pos() < n_ctx)?;
        emit(&mut seq, step)
    };
    while !done {
        let pending = *seq.tokens().last().expect("a token was emitted");
        let pos0 = session.pos();
        let remaining = opts.max_tokens - seq.tokens().len();
        let k = max_k
            .min(remaining.saturating_sub(1))
            .min(n_ctx.saturating_sub(pos0 + 1));
        proposal.clear();
        if k > 0 {
            let t = Instant::now();
            drafter.propose(seq.history(), k, &mut proposal)?;
            stats.draft_s += t.elapsed().as_secs_f64();
            proposal.tokens.truncate(k);
            if let Some(d) = &mut proposal.dists {
                d.truncate(proposal.tokens.len());
            }
        }
        let drafts = &proposal.tokens;
        let mut input = Vec::with_capacity(drafts.len() + 1);
        input.push(pending);
        input.extend_from_slice(drafts);
        let logits = session.eval(&input, LogitsWanted::All)?;
        stats.passes += 1;
        stats.proposed += drafts.len();
        let v = verify_pass(
            &mut seq, &logits, n_vocab, &proposal, pos0, n_ctx, &mut emit,
        )?;
        stats.accepted += v.kept;
        done = v.done;
        // (Models with recurrent layers were refused above, so the cache goes back exactly.)
        let _ = session.truncate(v.keep_pos);
    }
    let tokens = seq.tokens().to_vec();
    let decode_s = if tokens.is_empty() {
        0.0
    } else {
        first_at.elapsed().as_secs_f64()
    };
    let decode_tokens = tokens.len().saturating_sub(1);
    stats.tokens_per_pass = if stats.passes == 0 {
        0.0
    } else {
        decode_tokens as f64 / stats.passes as f64
    };
    let gen_stats = GenerateStats {
        prompt_tokens: prompt.len(),
        generated_tokens: tokens.len(),
        prompt_s,
        decode_s,
        time_to_first_token_s: ttft,
        prompt_tokens_per_s: per_s(prompt.len(), prompt_s),
        decode_tokens_per_s: per_s(decode_tokens, decode_s),
    };
    let stop_reason = seq.finished().unwrap_or(StopReason::MaxTokens);
    Ok((
        Generation {
            prompt_tokens: prompt.to_vec(),
            tokens,
            text: seq.text().to_string(),
            stop_reason,
            stats: gen_stats,
        },
        stats,
    ))
}
