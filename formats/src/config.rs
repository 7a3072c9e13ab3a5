//! Typed, validated model configs. SKELETON.

/// A supported architecture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    /// llama
    Llama,
}

/// The config.
#[derive(Debug, Clone)]
pub struct ModelConfig;
