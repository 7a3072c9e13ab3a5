//! GGUF reading and writing, ggml quant block layouts and validated model configs.
//!
//! This crate has no I/O policy and does no arithmetic on weights: it tells where every tensor's
//! bytes are and what they mean. GGUF files are untrusted input: every count, length and
//! offset is checked before use, and a malformed file is a [`FormatError`], never a panic.

#![warn(missing_docs)]

pub mod blocks;
pub mod config;
mod error;
mod ggml_type;
pub mod gguf;
pub mod tensor_names;

pub use config::{Architecture, ModelConfig};
pub use error::{FormatError, Result};
pub use ggml_type::GgmlType;
pub use gguf::{Array, GgufModel, Metadata, TensorInfo, Value, ValueType};
pub use tensor_names::{arch_tensors, ArchTensors, TensorRole};
