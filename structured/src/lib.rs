//! Structured output for flashstream: JSON schemas, "any JSON object" and Lark grammars,
//! enforced token by token with [llguidance](https://crates.io/crates/llguidance) (the engine
//! llama.cpp, vLLM and mistral.rs use).
//!
//! Three pieces, from the longest-lived to the shortest:
//! - [`StructuredVocab`]: the token trie llguidance walks, built once per model from the
//!   GGUF vocabulary (every token id's bytes; control tokens marked special; the
//!   end-of-generation tokens as its EOS set). Cheap to clone and shareable across threads.
//! - [`Grammar`]: what the output must be ([`Grammar::json_object`],
//!   [`Grammar::json_schema`], [`Grammar::lark`], or an OpenAI `response_format` through
//!   [`Grammar::from_response_format`]).
//! - [`Constraint`]: one per generated sequence. Each step [`Constraint::mask`] the logits,
//!   sample, [`Constraint::commit`] the token; stop when [`Constraint::is_finished`]. It
//!   implements the runtime's [`LogitsConstraint`], so
//!   [`generate_constrained`](flashstream_runtime::generate::generate_constrained) drives it.
//!
//! ```no_run
//! # use flashstream_runtime::{generate::*, model::Session, tokenizer::Tokenizer};
//! # use flashstream_structured::{Constraint, Grammar, StructuredVocab};
//! # fn demo(session: &mut Session<'_>, tok: &Tokenizer) -> Result<(), Box<dyn std::error::Error>> {
//! let vocab = StructuredVocab::new(tok)?; // once per model
//! let schema = serde_json::json!({
//!     "type": "object",
//!     "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
//!     "required": ["name", "age"],
//! });
//! let mut constraint = Constraint::new(&vocab, &Grammar::json_schema(&schema))?;
//! let prompt = tok.encode("A person as JSON: ", true, true)?;
//! let out = generate_constrained(
//!     session, tok, &prompt, &GenerateOptions::default(), Some(&mut constraint),
//!     |_| std::ops::ControlFlow::Continue(()),
//! )?;
//! let value: serde_json::Value = serde_json::from_str(&out.text)?;
//! eprintln!("{value}; {:.3} ms of masking per token", constraint.stats().mask_ms_per_token());
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

mod constraint;
mod grammar;
mod vocab;

pub use constraint::{AllowedTokens, Constraint, MaskStats};
pub use flashstream_runtime::constraint::LogitsConstraint;
pub use grammar::Grammar;
pub use vocab::StructuredVocab;

/// Errors of structured output.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum StructuredError {
    /// The JSON schema is malformed, uses what llguidance does not support, or no value
    /// can fit it.
    #[error("invalid JSON schema: {reason}")]
    InvalidSchema {
        /// What is wrong (llguidance names the keyword or the part of the schema).
        reason: String,
    },
    /// The Lark grammar does not parse or does not compile.
    #[error("invalid Lark grammar: {reason}")]
    InvalidGrammar {
        /// What is wrong (with the line where llguidance knows it).
        reason: String,
    },
    /// An OpenAI `response_format` value of the wrong shape.
    #[error("invalid response_format: {0}")]
    ResponseFormat(String),
    /// The vocabulary cannot drive a grammar (e.g. it has no end-of-generation token).
    #[error("the vocabulary cannot be used for structured output: {0}")]
    Vocabulary(String),
    /// A token was committed that the grammar does not allow at this point.
    #[error("token {token} is not allowed by the grammar here: {reason}")]
    Rejected {
        /// The token id.
        token: u32,
        /// llguidance's explanation.
        reason: String,
    },
    /// llguidance failed while computing a mask (its state is then unusable).
    #[error("structured output engine: {0}")]
    Engine(String),
}
