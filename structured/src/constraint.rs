//! One sequence's grammar state: the allowed-token mask each step, and the commit of the
//! sampled token.

use std::time::Instant;

use flashstream_runtime::constraint::{ConstraintError, LogitsConstraint};
use llguidance::api::StopReason;
use llguidance::toktrie::SimpleVob;
use llguidance::Matcher;

use crate::{Grammar, StructuredError, StructuredVocab};

/// Time spent in the grammar engine by one [`Constraint`].
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct MaskStats {
    /// Seconds compiling the grammar ([`Constraint::new`], without its first mask).
    pub compile_s: f64,
    /// Masks computed (one per generated token).
    pub masks: u64,
    /// Seconds computing masks and applying them to logits.
    pub mask_s: f64,
    /// The slowest single mask, in seconds.
    pub max_mask_s: f64,
    /// Tokens committed.
    pub commits: u64,
    /// Seconds committing tokens.
    pub commit_s: f64,
}

impl MaskStats {
    /// Mean milliseconds per mask.
    pub fn mask_ms_per_token(&self) -> f64 {
        if self.masks == 0 {
            0.0
        } else {
            self.mask_s * 1e3 / self.masks as f64
        }
    }

    /// Mean milliseconds per commit.
    pub fn commit_ms_per_token(&self) -> f64 {
        if self.commits == 0 {
            0.0
        } else {
            self.commit_s * 1e3 / self.commits as f64
        }
    }
}

/// The set of tokens allowed at one step.
#[derive(Clone)]
pub struct AllowedTokens {
    bits: SimpleVob,
    n_vocab: usize,
}

impl std::fmt::Debug for AllowedTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AllowedTokens")
            .field("count", &self.count())
            .field("n_vocab", &self.n_vocab)
            .finish()
    }
}

impl AllowedTokens {
    /// Whether `token` may come next.
    pub fn is_allowed(&self, token: u32) -> bool {
        (token as usize) < self.n_vocab && self.bits.is_allowed(token)
    }

    /// How many tokens are allowed.
    pub fn count(&self) -> usize {
        let mut n = 0;
        self.bits
            .iter_set_entries(|i| n += usize::from(i < self.n_vocab));
        n
    }

    /// The allowed token ids, ascending.
    pub fn to_vec(&self) -> Vec<u32> {
        let mut v = Vec::new();
        self.bits.iter_set_entries(|i| {
            if i < self.n_vocab {
                v.push(i as u32)
            }
        });
        v
    }

    /// The bitset: bit `i % 32` of word `i / 32` is token `i` (words past the vocabulary
    /// are zero-padded).
    pub fn words(&self) -> &[u32] {
        self.bits.as_slice()
    }

    /// Sets the logits of disallowed tokens (and of ids past the vocabulary) to `-inf`.
    pub fn apply(&self, logits: &mut [f32]) {
        let words = self.bits.as_slice();
        let n = self.n_vocab.min(words.len() * 32).min(logits.len());
        for (chunk, &w) in logits[..n].chunks_mut(32).zip(words) {
            if w == u32::MAX {
                continue;
            }
            for (j, l) in chunk.iter_mut().enumerate() {
                if (w >> j) & 1 == 0 {
                    *l = f32::NEG_INFINITY;
                }
            }
        }
        if logits.len() > n {
            logits[n..].fill(f32::NEG_INFINITY);
        }
    }
}

/// One sequence's grammar state. Per step: [`mask`](Self::mask) (or
/// [`allowed_tokens`](Self::allowed_tokens)), sample, [`commit`](Self::commit); the output
/// is done when [`is_finished`](Self::is_finished). `Send`, so a server can keep one per
/// sequence on any thread.
pub struct Constraint {
    matcher: Matcher,
    n_vocab: usize,
    kind: &'static str,
    /// The mask for the next step when already known (the first one is computed by `new`,
    /// so an unsatisfiable grammar fails there).
    next: Option<SimpleVob>,
    stats: MaskStats,
}

impl std::fmt::Debug for Constraint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Constraint")
            .field("kind", &self.kind)
            .field("n_vocab", &self.n_vocab)
            .field("stop_reason", &self.matcher.stop_reason())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl Constraint {
    /// Compiles `grammar` over `vocab` and computes the first mask. A grammar that does not
    /// compile, or allows nothing, is [`StructuredError::InvalidSchema`] /
    /// [`StructuredError::InvalidGrammar`] with llguidance's reason.
    pub fn new(vocab: &StructuredVocab, grammar: &Grammar) -> Result<Constraint, StructuredError> {
        let _span = tracing::info_span!("constraint_new", kind = grammar.kind()).entered();
        let invalid = |reason: String| match grammar {
            Grammar::Lark(_) => StructuredError::InvalidGrammar { reason },
            _ => StructuredError::InvalidSchema { reason },
        };
        let t0 = Instant::now();
        let top = grammar.to_llguidance()?;
        let parser = vocab
            .factory()
            .create_parser(top)
            .map_err(|e| invalid(format!("{e:#}")))?;
        let mut matcher = Matcher::new(Ok(parser));
        if let Some(e) = matcher.get_error() {
            return Err(invalid(e));
        }
        for w in matcher.grammar_warnings() {
            tracing::warn!(kind = grammar.kind(), "{w}");
        }
        let compile_s = t0.elapsed().as_secs_f64();
        let mut c = Constraint {
            matcher,
            n_vocab: vocab.n_vocab(),
            kind: grammar.kind(),
            next: None,
            stats: MaskStats {
                compile_s,
                ..MaskStats::default()
            },
        };
        let first = c.compute().map_err(|e| match e {
            StructuredError::Engine(reason) => invalid(reason),
            e => e,
        })?;
        if first.is_zero() {
            return Err(invalid("no output can fit it".into()));
        }
        c.next = Some(first);
        Ok(c)
    }

    fn compute(&mut self) -> Result<SimpleVob, StructuredError> {
        let t0 = Instant::now();
        let r = self
            .matcher
            .compute_mask_or_eos()
            .map_err(|e| StructuredError::Engine(format!("{e:#}")));
        let s = t0.elapsed().as_secs_f64();
        self.stats.masks += 1;
        self.stats.mask_s += s;
        self.stats.max_mask_s = self.stats.max_mask_s.max(s);
        r
    }

    fn take_next(&mut self) -> Result<SimpleVob, StructuredError> {
        match self.next.take() {
            Some(m) => Ok(m),
            None => self.compute(),
        }
    }

    /// The tokens allowed next (the end-of-generation tokens among them once the output may
    /// end; only those once it is complete).
    pub fn allowed_tokens(&mut self) -> Result<AllowedTokens, StructuredError> {
        let bits = self.take_next()?;
        Ok(AllowedTokens {
            bits,
            n_vocab: self.n_vocab,
        })
    }

    /// Sets every disallowed token's logit to `-inf` (ids past the vocabulary included).
    pub fn mask(&mut self, logits: &mut [f32]) -> Result<(), StructuredError> {
        let allowed = self.allowed_tokens()?;
        let t0 = Instant::now();
        allowed.apply(logits);
        self.stats.mask_s += t0.elapsed().as_secs_f64();
        Ok(())
    }

    /// Advances past `token` (normally one the last mask allowed).
    pub fn commit(&mut self, token: u32) -> Result<(), StructuredError> {
        self.next = None;
        let t0 = Instant::now();
        let r = if (token as usize) < self.n_vocab {
            self.matcher
                .consume_token(token)
                .map_err(|e| format!("{e:#}"))
        } else {
            Err(format!("the vocabulary has {} tokens", self.n_vocab))
        };
        self.stats.commits += 1;
        self.stats.commit_s += t0.elapsed().as_secs_f64();
        r.map_err(|reason| StructuredError::Rejected { token, reason })
    }

    /// Whether the output is complete: the grammar allows nothing more, or an
    /// end-of-generation token was committed where the output could end.
    pub fn is_finished(&self) -> bool {
        matches!(
            self.matcher.stop_reason(),
            StopReason::NoExtension | StopReason::NoExtensionBias | StopReason::EndOfSentence
        )
    }

    /// Whether the output so far is a complete match (it could end here).
    pub fn is_accepting(&mut self) -> bool {
        self.is_finished() || self.matcher.is_accepting().unwrap_or(false)
    }

    /// The engine's failure, if it has failed (further masks and commits fail too).
    pub fn error(&self) -> Option<String> {
        self.matcher.get_error()
    }

    /// Time spent so far.
    pub fn stats(&self) -> MaskStats {
        self.stats
    }
}

impl LogitsConstraint for Constraint {
    fn apply(&mut self, logits: &mut [f32]) -> Result<(), ConstraintError> {
        self.mask(logits).map_err(ConstraintError::new)
    }

    fn accept(&mut self, token: u32) -> Result<(), ConstraintError> {
        self.commit(token).map_err(ConstraintError::new)
    }

    fn finished(&self) -> bool {
        self.is_finished()
    }
}
