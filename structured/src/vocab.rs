//! The token trie llguidance walks, built from flashstream's tokenizer.

use std::sync::Arc;

use flashstream_runtime::tokenizer::{TokenType, Tokenizer};
use llguidance::toktrie::{ApproximateTokEnv, TokEnv, TokRxInfo, TokTrie};
use llguidance::ParserFactory;

use crate::StructuredError;

/// A model's vocabulary as llguidance sees it, plus its grammar compiler. Build it once per
/// model; clones share it (it is `Send + Sync`).
///
/// Every token id maps to the bytes it renders as ([`Tokenizer::token_to_piece`]). Control
/// and unknown tokens (and any other token that renders as nothing) are marked special
/// (llguidance's `0xFF` prefix before their text): a grammar never produces them as text,
/// only by name (`<|im_end|>` in Lark). The end-of-generation tokens form the EOS set, which
/// the mask allows exactly when the output is complete.
///
/// Tokenizing text (used by llguidance only for forced tokens and token healing, which
/// [`Constraint`](crate::Constraint) does not use) is greedy over the trie.
#[derive(Clone)]
pub struct StructuredVocab {
    factory: Arc<ParserFactory>,
    n_vocab: usize,
    eos: Vec<u32>,
}

impl std::fmt::Debug for StructuredVocab {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StructuredVocab")
            .field("n_vocab", &self.n_vocab)
            .field("eos", &self.eos)
            .finish_non_exhaustive()
    }
}

/// The bytes llguidance sees for token `id`.
fn token_bytes(tok: &Tokenizer, id: u32) -> Vec<u8> {
    let hidden = tok.is_control(id) || tok.token_type(id) == Some(TokenType::Unknown);
    let piece = if hidden {
        Vec::new()
    } else {
        tok.token_to_piece(id)
    };
    if !piece.is_empty() {
        return piece;
    }
    // Special: the marker, then the token's own text (llguidance matches `<|im_end|>` etc.
    // by it). A token without text stays empty, which llguidance never allows.
    let text = tok.token_text(id).unwrap_or_default();
    if text.is_empty() {
        return Vec::new();
    }
    let mut b = Vec::with_capacity(text.len() + 1);
    b.push(TokTrie::SPECIAL_TOKEN_MARKER);
    b.extend_from_slice(text.as_bytes());
    b
}

impl StructuredVocab {
    /// Builds the trie and grammar compiler from `tokenizer` (tens of milliseconds for a
    /// 50k vocabulary).
    pub fn new(tokenizer: &Tokenizer) -> Result<StructuredVocab, StructuredError> {
        let _span =
            tracing::info_span!("structured_vocab", n_vocab = tokenizer.n_vocab()).entered();
        let n_vocab = tokenizer.n_vocab();
        let n = u32::try_from(n_vocab)
            .ok()
            .filter(|&n| n > 0)
            .ok_or_else(|| StructuredError::Vocabulary(format!("{n_vocab} tokens")))?;
        let mut eos: Vec<u32> = tokenizer.eog_tokens().filter(|&t| t < n).collect();
        eos.sort_unstable();
        eos.dedup();
        if let Some(e) = tokenizer.eos().filter(|&t| t < n) {
            // The declared EOS first: llguidance reports it as "the" EOS token.
            eos.retain(|&t| t != e);
            eos.insert(0, e);
        }
        if eos.is_empty() {
            return Err(StructuredError::Vocabulary(
                "it has no end-of-generation token (tokenizer.ggml.eos_token_id), so a complete \
                 output could not end"
                    .into(),
            ));
        }
        let words: Vec<Vec<u8>> = (0..n).map(|id| token_bytes(tokenizer, id)).collect();
        let info = TokRxInfo {
            vocab_size: n,
            tok_eos: eos[0],
            tok_bos: tokenizer.bos().filter(|&t| t < n),
            tok_pad: tokenizer.pad().filter(|&t| t < n),
            tok_unk: tokenizer.unk().filter(|&t| t < n),
            tok_end_of_turn: tokenizer.eot().filter(|&t| t < n),
        };
        let trie = TokTrie::from(&info, &words).with_eos_tokens(&eos);
        let env: TokEnv = Arc::new(ApproximateTokEnv::new(trie));
        let mut factory =
            ParserFactory::new_simple(&env).map_err(|e| StructuredError::Engine(e.to_string()))?;
        // Warnings go to `tracing` (see Constraint::new), not to stderr.
        factory.quiet();
        Ok(StructuredVocab {
            factory: Arc::new(factory),
            n_vocab,
            eos,
        })
    }

    /// Number of tokens (logits past it are always masked).
    pub fn n_vocab(&self) -> usize {
        self.n_vocab
    }

    /// The end-of-generation tokens the mask allows once the output is complete (the
    /// declared EOS first).
    pub fn eos_tokens(&self) -> &[u32] {
        &self.eos
    }

    pub(crate) fn factory(&self) -> &ParserFactory {
        &self.factory
    }
}
