//! A draft model: a small model with the target's vocabulary proposes the next tokens one
//! decode step at a time, in its own session (its KV cache follows the accepted text: after
//! a verification it is cut back to the prefix it shares with the context and catches up).

use super::{Drafter, Proposal, SpecError};
use crate::model::{LogitsWanted, RuntimeError, Session};
use crate::sampler::{draw, Sampler, SamplerConfig};
use crate::tokenizer::Tokenizer;

/// Checks that a draft model's tokenizer gives every token id the text the target's gives
/// it (so a drafted id means the same token to both).
pub fn check_vocab(target: &Tokenizer, draft: &Tokenizer) -> Result<(), SpecError> {
    if target.n_vocab() != draft.n_vocab() {
        return Err(SpecError::VocabMismatch(format!(
            "the target has {} tokens, the draft model {}",
            target.n_vocab(),
            draft.n_vocab()
        )));
    }
    for id in 0..target.n_vocab() as u32 {
        let (a, b) = (
            target.token_to_piece_with(id, true),
            draft.token_to_piece_with(id, true),
        );
        if a != b {
            return Err(SpecError::VocabMismatch(format!(
                "token {id} is {:?} in the target and {:?} in the draft model",
                String::from_utf8_lossy(&a),
                String::from_utf8_lossy(&b)
            )));
        }
    }
    Ok(())
}

/// The draft-model drafter.
pub struct DraftModel<'m> {
    session: Session<'m>,
    /// The tokens whose keys and values the draft session holds, in order.
    fed: Vec<u32>,
    sampler: Sampler,
    n_vocab: usize,
}

impl std::fmt::Debug for DraftModel<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DraftModel")
            .field("fed", &self.fed.len())
            .finish_non_exhaustive()
    }
}

impl<'m> DraftModel<'m> {
    /// A drafter running `session` (of a model whose vocabulary [`check_vocab`] accepted;
    /// its logits must have `n_vocab` entries, as the target's) and sampling its proposals
    /// with `sampler` (the target's parameters: greedy drafts for greedy decoding, drafts
    /// drawn from the draft's own distribution otherwise, which the verification uses).
    pub fn new(
        session: Session<'m>,
        n_vocab: usize,
        sampler: SamplerConfig,
    ) -> Result<Self, SpecError> {
        let draft_vocab = session.model().config().n_vocab;
        if draft_vocab != n_vocab {
            return Err(SpecError::VocabMismatch(format!(
                "the target's output has {n_vocab} logits, the draft model's {draft_vocab}"
            )));
        }
        let seed = sampler.seed ^ 0xD4AF_7000_0000_0001;
        let sampler = Sampler::new(SamplerConfig { seed, ..sampler })?;
        Ok(DraftModel {
            session,
            fed: Vec::new(),
            sampler,
            n_vocab,
        })
    }
}

impl Drafter for DraftModel<'_> {
    fn propose(
        &mut self,
        history: &[u32],
        k: usize,
        out: &mut Proposal,
    ) -> Result<(), RuntimeError> {
        out.clear();
        if k == 0 || history.is_empty() {
            return Ok(());
        }
        let n_ctx = self.session.n_ctx();
        if history.len() + k > n_ctx {
            // The draft's context is full: no proposal (plain decoding goes on).
            return Ok(());
        }
        // Keep the shared prefix (at least one token must be evaluated for logits).
        let common = self
            .fed
            .iter()
            .zip(history)
            .take_while(|(a, b)| a == b)
            .count()
            .min(history.len() - 1);
        // A model with recurrent layers cannot go back: it starts over from 0.
        let common = self.session.truncate(common);
        self.fed.truncate(common);
        let mut logits = self.session.eval(&history[common..], LogitsWanted::Last)?;
        self.fed.extend_from_slice(&history[common..]);
        let greedy = self.sampler.config().temperature == 0.0;
        let mut seen = history.to_vec();
        let mut dists = Vec::new();
        for i in 0..k {
            if logits.len() != self.n_vocab {
                break;
            }
            let dist = self
                .sampler
                .distribution(&logits, &seen)
                .map_err(|e| RuntimeError::Invalid(format!("draft model sampling: {e}")))?;
            let d = if greedy || dist.len() == 1 {
                dist[0].0
            } else {
                let r = self.sampler.uniform();
                match draw(&dist, r) {
                    Some(t) => t,
                    None => break,
                }
            };
            out.tokens.push(d);
            seen.push(d);
            if !greedy {
                dists.push(dist);
            }
            if i + 1 < k {
                logits = self.session.eval(&[d], LogitsWanted::Last)?;
                self.fed.push(d);
            }
        }
        if !greedy {
            out.dists = Some(dists);
        }
        Ok(())
    }
}
