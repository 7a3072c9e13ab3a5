//! GGUF reader (safe on hostile input). SKELETON: to be implemented.

use std::io::Read;
use std::path::Path;

use super::{GgufModel, Metadata, TensorInfo};
use crate::{FormatError, Result};

/// Sanity caps applied while parsing, on top of "never more than the file can hold".
#[derive(Debug, Clone)]
pub struct Limits {
    /// Longest string (bytes).
    pub max_string_len: u64,
    /// Most elements in one array.
    pub max_array_len: u64,
    /// Deepest nesting of arrays.
    pub max_array_depth: u32,
    /// Most metadata pairs.
    pub max_kv: u64,
    /// Most tensors.
    pub max_tensors: u64,
    /// Longest tensor name (bytes).
    pub max_name_len: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_string_len: 64 << 20,
            max_array_len: 1 << 28,
            max_array_depth: 8,
            max_kv: 1 << 20,
            max_tensors: 1 << 20,
            max_name_len: 1024,
        }
    }
}

/// The parsed header of one GGUF file.
#[derive(Debug, Clone)]
pub struct GgufHeader {
    /// GGUF version (2 or 3).
    pub version: u32,
    /// Metadata pairs.
    pub metadata: Metadata,
    /// Tensor infos with absolute offsets (`file` is 0).
    pub tensors: Vec<TensorInfo>,
    /// Tensor data alignment.
    pub alignment: u64,
    /// Absolute offset of the tensor data section.
    pub data_offset: u64,
}

/// Parses and validates a GGUF header from `reader`, positioned at the start of a file of
/// `file_len` bytes.
pub fn parse_header<R: Read>(_reader: R, _file_len: u64, _limits: &Limits) -> Result<GgufHeader> {
    Err(FormatError::Writer("not implemented".into()))
}

impl GgufModel {
    /// Opens a GGUF model (the first file of a split model opens all of them).
    pub fn open(_path: impl AsRef<Path>) -> Result<GgufModel> {
        Err(FormatError::Writer("not implemented".into()))
    }

    /// Parses a single-file model held in memory (tests, fuzzing).
    pub fn from_bytes(_bytes: &[u8]) -> Result<GgufModel> {
        Err(FormatError::Writer("not implemented".into()))
    }
}
