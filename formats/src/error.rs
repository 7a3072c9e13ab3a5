//! The error type of the formats crate.

use crate::GgmlType;

/// Everything that can be wrong with a GGUF file or a model config.
///
/// Each variant names what is wrong (and where) so a user can act on it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FormatError {
    /// An I/O error while reading or writing `path`.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The file does not start with `GGUF`.
    #[error("not a GGUF file: the first four bytes are {0:02x?}, expected \"GGUF\"")]
    BadMagic([u8; 4]),
    /// A GGUF version this reader does not support.
    #[error("unsupported GGUF version {0} (flashstream reads versions 2 and 3; re-convert the model with a current llama.cpp)")]
    UnsupportedVersion(u32),
    /// A big-endian GGUF.
    #[error("big-endian GGUF files are not supported (the file's version field reads {0:#x} byte-swapped)")]
    BigEndian(u32),
    /// The file ends before a structure it declares.
    #[error("truncated GGUF: {what} at byte {offset} needs {needed} bytes, but the file has {available} left")]
    Truncated {
        /// What was being read.
        what: String,
        /// Where.
        offset: u64,
        /// Bytes needed.
        needed: u64,
        /// Bytes left in the file.
        available: u64,
    },
    /// An unknown metadata value type id.
    #[error("metadata key {key:?}: unknown value type {type_id}")]
    UnknownValueType {
        /// The key.
        key: String,
        /// The type id found.
        type_id: u32,
    },
    /// An unknown tensor type id.
    #[error("unknown ggml tensor type id {0}")]
    UnknownTensorType(u32),
    /// A tensor info with an unknown ggml type id.
    #[error("tensor {name:?}: unknown ggml tensor type id {type_id}")]
    UnknownTensorTypeOf {
        /// The tensor.
        name: String,
        /// The type id found.
        type_id: u32,
    },
    /// A count, length or size beyond a sanity limit or beyond what the file can hold.
    #[error("{what} is {value}, more than the limit {limit}")]
    LimitExceeded {
        /// What was counted.
        what: String,
        /// The value found.
        value: u64,
        /// The limit.
        limit: u64,
    },
    /// A string that is not UTF-8.
    #[error("{what} is not valid UTF-8")]
    InvalidUtf8 {
        /// Which string.
        what: String,
    },
    /// A boolean byte other than 0 or 1.
    #[error("metadata key {key:?}: boolean byte is {value}, expected 0 or 1")]
    InvalidBool {
        /// The key.
        key: String,
        /// The byte.
        value: u8,
    },
    /// A metadata key that occurs twice.
    #[error("metadata key {0:?} occurs twice")]
    DuplicateKey(String),
    /// A tensor name that occurs twice.
    #[error("tensor {0:?} occurs twice")]
    DuplicateTensor(String),
    /// A tensor whose shape is unusable.
    #[error("tensor {name:?}: {reason}")]
    BadTensorShape {
        /// The tensor.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// A tensor whose data lies (partly) outside its file.
    #[error("tensor {name:?}: data at bytes {start}..{end} lies past the end of the file ({file_len} bytes); the file is truncated or corrupt")]
    TensorPastEnd {
        /// The tensor.
        name: String,
        /// Absolute start offset.
        start: u64,
        /// Absolute end offset.
        end: u64,
        /// File length.
        file_len: u64,
    },
    /// Two tensors share bytes.
    #[error("tensors {a:?} and {b:?} overlap in the file")]
    OverlappingTensors {
        /// The first tensor.
        a: String,
        /// The second tensor.
        b: String,
    },
    /// A tensor offset that is not a multiple of the file's alignment.
    #[error("tensor {name:?}: offset {offset} is not a multiple of the alignment {alignment}")]
    MisalignedTensor {
        /// The tensor.
        name: String,
        /// Its offset relative to the data section.
        offset: u64,
        /// The file's alignment.
        alignment: u64,
    },
    /// `general.alignment` is zero or not a power of two.
    #[error("general.alignment is {0}; it must be a non-zero power of two")]
    BadAlignment(u64),
    /// Inconsistent split metadata.
    #[error("split model: {0}")]
    Split(String),
    /// A part of a split model that is not where its name says it should be.
    #[error("split model: part {part} of {count} is missing: {path} does not exist")]
    MissingSplitPart {
        /// The path where the part was looked for.
        path: String,
        /// The 1-based part number.
        part: u32,
        /// The number of parts.
        count: u32,
    },
    /// A required metadata key is absent.
    #[error("missing metadata key {0:?}")]
    MissingKey(String),
    /// A metadata key has the wrong type or an impossible value.
    #[error("metadata key {key:?}: {reason}")]
    BadKey {
        /// The key.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// A required tensor is absent.
    #[error("missing tensor {0:?}")]
    MissingTensor(String),
    /// The model's architecture is not one flashstream runs.
    #[error("unsupported architecture {0:?} (flashstream runs llama, qwen2, qwen3, gemma3, qwen2moe, qwen3moe)")]
    UnsupportedArchitecture(String),
    /// A byte slice that is not a whole number of blocks of a type.
    #[error("{len} bytes are not a whole number of {ty} blocks (or are misaligned)")]
    BadBlockSlice {
        /// The block type.
        ty: GgmlType,
        /// The slice length.
        len: usize,
    },
    /// The writer was used out of order or given inconsistent data.
    #[error("GGUF writer: {0}")]
    Writer(String),
}

/// Result alias for this crate.
pub type Result<T, E = FormatError> = std::result::Result<T, E>;
