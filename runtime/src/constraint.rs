//! A hook that restricts which tokens may be generated: structured output (JSON schemas,
//! grammars) plugs into [`generate_constrained`](crate::generate::generate_constrained), and a
//! server's batched loop drives one [`LogitsConstraint`] per sequence the same way.
//!
//! Each step: [`apply`](LogitsConstraint::apply) to the logits (disallowed tokens become
//! `-inf`), sample, [`accept`](LogitsConstraint::accept) the sampled token, then stop if
//! [`finished`](LogitsConstraint::finished). The runtime has no grammar engine of its own;
//! the `flashstream-structured` crate implements this trait with llguidance.

/// An error of a [`LogitsConstraint`] (a token it rejects, an internal failure of its
/// engine), with the implementation's own error as its source.
#[derive(Debug, thiserror::Error)]
#[error("output constraint: {0}")]
pub struct ConstraintError(#[source] pub Box<dyn std::error::Error + Send + Sync + 'static>);

impl ConstraintError {
    /// Wraps an implementation's error.
    pub fn new(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        ConstraintError(Box::new(e))
    }
}

/// Restricts the tokens a sequence may continue with (one value per sequence, stateful).
pub trait LogitsConstraint {
    /// Sets the logit of every token that may not come next to `f32::NEG_INFINITY` (at least
    /// one stays finite while the constraint is not [`finished`](Self::finished)). `logits`
    /// has one entry per token id; entries past the constraint's vocabulary are disallowed.
    fn apply(&mut self, logits: &mut [f32]) -> Result<(), ConstraintError>;

    /// Advances past `token`, the one chosen after [`apply`](Self::apply). A token that was
    /// not allowed is an error.
    fn accept(&mut self, token: u32) -> Result<(), ConstraintError>;

    /// Whether the constrained output is complete and nothing may follow it: generation ends
    /// here.
    fn finished(&self) -> bool;
}
