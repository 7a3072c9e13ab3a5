//! The GGUF container: metadata values, tensor infos, a reader safe on hostile input and a
//! writer.
//!
//! Layout (little-endian): magic `GGUF`, version (u32), tensor count (u64), metadata count
//! (u64), metadata key/value pairs, tensor infos (name, dims, type, offset), padding to
//! `general.alignment` (default 32), tensor data.

mod read;
mod split;
mod write;

use std::collections::HashMap;
use std::path::PathBuf;

use crate::{FormatError, GgmlType, Result};

pub use read::{parse_header, GgufHeader, Limits, ALIGNMENT_KEY, HARD_MAX_ARRAY_DEPTH};
pub use split::{
    parse_split_path, split_info, split_paths, SplitInfo, SPLIT_COUNT_KEY, SPLIT_NO_KEY,
    SPLIT_TENSORS_COUNT_KEY,
};
pub use write::{GgufWriter, TensorDataWriter, WRITE_VERSION};

/// The GGUF magic bytes.
pub const MAGIC: [u8; 4] = *b"GGUF";
/// Alignment of tensor data when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// Maximum number of tensor dimensions (ggml's `GGML_MAX_DIMS`).
pub const MAX_DIMS: usize = 4;

/// The type of a metadata value, with its GGUF id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ValueType {
    /// u8 (0)
    U8,
    /// i8 (1)
    I8,
    /// u16 (2)
    U16,
    /// i16 (3)
    I16,
    /// u32 (4)
    U32,
    /// i32 (5)
    I32,
    /// f32 (6)
    F32,
    /// bool (7)
    Bool,
    /// string (8)
    String,
    /// array (9)
    Array,
    /// u64 (10)
    U64,
    /// i64 (11)
    I64,
    /// f64 (12)
    F64,
}

impl ValueType {
    /// The GGUF id.
    pub const fn id(self) -> u32 {
        match self {
            ValueType::U8 => 0,
            ValueType::I8 => 1,
            ValueType::U16 => 2,
            ValueType::I16 => 3,
            ValueType::U32 => 4,
            ValueType::I32 => 5,
            ValueType::F32 => 6,
            ValueType::Bool => 7,
            ValueType::String => 8,
            ValueType::Array => 9,
            ValueType::U64 => 10,
            ValueType::I64 => 11,
            ValueType::F64 => 12,
        }
    }

    /// The type with GGUF id `id`.
    pub const fn from_id(id: u32) -> Option<Self> {
        Some(match id {
            0 => ValueType::U8,
            1 => ValueType::I8,
            2 => ValueType::U16,
            3 => ValueType::I16,
            4 => ValueType::U32,
            5 => ValueType::I32,
            6 => ValueType::F32,
            7 => ValueType::Bool,
            8 => ValueType::String,
            9 => ValueType::Array,
            10 => ValueType::U64,
            11 => ValueType::I64,
            12 => ValueType::F64,
            _ => return None,
        })
    }

    /// Encoded size of a scalar of this type (`None` for strings and arrays).
    pub const fn scalar_size(self) -> Option<usize> {
        match self {
            ValueType::U8 | ValueType::I8 | ValueType::Bool => Some(1),
            ValueType::U16 | ValueType::I16 => Some(2),
            ValueType::U32 | ValueType::I32 | ValueType::F32 => Some(4),
            ValueType::U64 | ValueType::I64 | ValueType::F64 => Some(8),
            ValueType::String | ValueType::Array => None,
        }
    }
}

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// u8
    U8(u8),
    /// i8
    I8(i8),
    /// u16
    U16(u16),
    /// i16
    I16(i16),
    /// u32
    U32(u32),
    /// i32
    I32(i32),
    /// f32
    F32(f32),
    /// bool
    Bool(bool),
    /// UTF-8 string
    String(String),
    /// homogeneous array
    Array(Array),
    /// u64
    U64(u64),
    /// i64
    I64(i64),
    /// f64
    F64(f64),
}

/// A homogeneous metadata array, stored typed so that a large array costs what its elements
/// cost (a 262144-entry score array is one `Vec<f32>`).
#[derive(Debug, Clone, PartialEq)]
pub enum Array {
    /// u8 elements
    U8(Vec<u8>),
    /// i8 elements
    I8(Vec<i8>),
    /// u16 elements
    U16(Vec<u16>),
    /// i16 elements
    I16(Vec<i16>),
    /// u32 elements
    U32(Vec<u32>),
    /// i32 elements
    I32(Vec<i32>),
    /// f32 elements
    F32(Vec<f32>),
    /// bool elements
    Bool(Vec<bool>),
    /// string elements
    String(Vec<String>),
    /// nested arrays
    Array(Vec<Array>),
    /// u64 elements
    U64(Vec<u64>),
    /// i64 elements
    I64(Vec<i64>),
    /// f64 elements
    F64(Vec<f64>),
}

impl Value {
    /// The value's type.
    pub fn value_type(&self) -> ValueType {
        match self {
            Value::U8(_) => ValueType::U8,
            Value::I8(_) => ValueType::I8,
            Value::U16(_) => ValueType::U16,
            Value::I16(_) => ValueType::I16,
            Value::U32(_) => ValueType::U32,
            Value::I32(_) => ValueType::I32,
            Value::F32(_) => ValueType::F32,
            Value::Bool(_) => ValueType::Bool,
            Value::String(_) => ValueType::String,
            Value::Array(_) => ValueType::Array,
            Value::U64(_) => ValueType::U64,
            Value::I64(_) => ValueType::I64,
            Value::F64(_) => ValueType::F64,
        }
    }

    /// The value as an unsigned integer, if it is a non-negative integer of any width.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v as u64),
            Value::U16(v) => Some(v as u64),
            Value::U32(v) => Some(v as u64),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The value as a signed integer, if it is an integer that fits.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Value::I8(v) => Some(v as i64),
            Value::I16(v) => Some(v as i64),
            Value::I32(v) => Some(v as i64),
            Value::I64(v) => Some(v),
            Value::U8(v) => Some(v as i64),
            Value::U16(v) => Some(v as i64),
            Value::U32(v) => Some(v as i64),
            Value::U64(v) => i64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The value as a float, if it is a float or an integer.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v as f64),
            Value::F64(v) => Some(v),
            _ => self.as_i64().map(|v| v as f64),
        }
    }

    /// The value as a bool.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(v) => Some(v),
            _ => None,
        }
    }

    /// The value as a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// The value as an array.
    pub fn as_array(&self) -> Option<&Array> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
}

impl Array {
    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            Array::U8(v) => v.len(),
            Array::I8(v) => v.len(),
            Array::U16(v) => v.len(),
            Array::I16(v) => v.len(),
            Array::U32(v) => v.len(),
            Array::I32(v) => v.len(),
            Array::F32(v) => v.len(),
            Array::Bool(v) => v.len(),
            Array::String(v) => v.len(),
            Array::Array(v) => v.len(),
            Array::U64(v) => v.len(),
            Array::I64(v) => v.len(),
            Array::F64(v) => v.len(),
        }
    }

    /// Whether the array is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The element type.
    pub fn element_type(&self) -> ValueType {
        match self {
            Array::U8(_) => ValueType::U8,
            Array::I8(_) => ValueType::I8,
            Array::U16(_) => ValueType::U16,
            Array::I16(_) => ValueType::I16,
            Array::U32(_) => ValueType::U32,
            Array::I32(_) => ValueType::I32,
            Array::F32(_) => ValueType::F32,
            Array::Bool(_) => ValueType::Bool,
            Array::String(_) => ValueType::String,
            Array::Array(_) => ValueType::Array,
            Array::U64(_) => ValueType::U64,
            Array::I64(_) => ValueType::I64,
            Array::F64(_) => ValueType::F64,
        }
    }

    /// Element `i` as a [`Value`] (cloned), if in range.
    pub fn get(&self, i: usize) -> Option<Value> {
        Some(match self {
            Array::U8(v) => Value::U8(*v.get(i)?),
            Array::I8(v) => Value::I8(*v.get(i)?),
            Array::U16(v) => Value::U16(*v.get(i)?),
            Array::I16(v) => Value::I16(*v.get(i)?),
            Array::U32(v) => Value::U32(*v.get(i)?),
            Array::I32(v) => Value::I32(*v.get(i)?),
            Array::F32(v) => Value::F32(*v.get(i)?),
            Array::Bool(v) => Value::Bool(*v.get(i)?),
            Array::String(v) => Value::String(v.get(i)?.clone()),
            Array::Array(v) => Value::Array(v.get(i)?.clone()),
            Array::U64(v) => Value::U64(*v.get(i)?),
            Array::I64(v) => Value::I64(*v.get(i)?),
            Array::F64(v) => Value::F64(*v.get(i)?),
        })
    }
}

/// Metadata key/value pairs in file order, with lookup by key.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Metadata {
    entries: Vec<(String, Value)>,
    index: HashMap<String, usize>,
}

impl Metadata {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a pair; a key that is already present is an error.
    pub fn insert(&mut self, key: impl Into<String>, value: Value) -> Result<()> {
        let key = key.into();
        if self.index.contains_key(&key) {
            return Err(FormatError::DuplicateKey(key));
        }
        self.index.insert(key.clone(), self.entries.len());
        self.entries.push((key, value));
        Ok(())
    }

    /// Sets a pair, replacing the value of an existing key in place.
    pub fn set(&mut self, key: impl Into<String>, value: Value) {
        let key = key.into();
        match self.index.get(&key) {
            Some(&i) => self.entries[i].1 = value,
            None => {
                self.index.insert(key.clone(), self.entries.len());
                self.entries.push((key, value));
            }
        }
    }

    /// Removes a key, returning its value.
    pub fn remove(&mut self, key: &str) -> Option<Value> {
        let i = self.index.remove(key)?;
        let (_, v) = self.entries.remove(i);
        for idx in self.index.values_mut() {
            if *idx > i {
                *idx -= 1;
            }
        }
        Some(v)
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.index.get(key).map(|&i| &self.entries[i].1)
    }

    /// Pairs in file order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// Number of pairs.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are no pairs.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// A string value, or an error naming the key if absent or not a string.
    pub fn get_str(&self, key: &str) -> Result<&str> {
        self.require(key)?
            .as_str()
            .ok_or_else(|| bad(key, "expected a string"))
    }

    /// An unsigned integer value, or an error naming the key.
    pub fn get_u64(&self, key: &str) -> Result<u64> {
        self.require(key)?
            .as_u64()
            .ok_or_else(|| bad(key, "expected a non-negative integer"))
    }

    /// A float value (integers accepted), or an error naming the key.
    pub fn get_f64(&self, key: &str) -> Result<f64> {
        self.require(key)?
            .as_f64()
            .ok_or_else(|| bad(key, "expected a number"))
    }

    /// A bool value, or an error naming the key.
    pub fn get_bool(&self, key: &str) -> Result<bool> {
        self.require(key)?
            .as_bool()
            .ok_or_else(|| bad(key, "expected a bool"))
    }

    /// An array value, or an error naming the key.
    pub fn get_array(&self, key: &str) -> Result<&Array> {
        self.require(key)?
            .as_array()
            .ok_or_else(|| bad(key, "expected an array"))
    }

    fn require(&self, key: &str) -> Result<&Value> {
        self.get(key)
            .ok_or_else(|| FormatError::MissingKey(key.to_string()))
    }
}

fn bad(key: &str, reason: &str) -> FormatError {
    FormatError::BadKey {
        key: key.to_string(),
        reason: reason.to_string(),
    }
}

/// Where one tensor's bytes are and what they mean.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    /// Name, e.g. `blk.3.attn_q.weight`.
    pub name: String,
    /// Element type.
    pub ty: GgmlType,
    /// Shape in GGUF order: `shape[0]` is the row length (contiguous dimension).
    pub shape: Vec<u64>,
    /// Index of the file (in [`GgufModel::files`]) holding the data.
    pub file: usize,
    /// Absolute byte offset of the data in that file.
    pub offset: u64,
    /// Byte length of the data.
    pub n_bytes: u64,
}

impl TensorInfo {
    /// Number of elements.
    pub fn n_elements(&self) -> u64 {
        self.shape.iter().product()
    }

    /// Row length (`shape[0]`).
    pub fn row_len(&self) -> u64 {
        self.shape.first().copied().unwrap_or(1)
    }

    /// Number of rows (product of all dims but the first).
    pub fn n_rows(&self) -> u64 {
        self.shape.iter().skip(1).product()
    }

    /// Bytes per row.
    pub fn row_bytes(&self) -> u64 {
        // Validated when the tensor was read or declared.
        self.ty.row_bytes(self.row_len()).unwrap_or(0)
    }

    /// The layer index, for names of the form `blk.N.*`.
    pub fn layer(&self) -> Option<usize> {
        layer_of(&self.name)
    }
}

/// The layer index of a tensor name of the form `blk.N.*`.
pub fn layer_of(name: &str) -> Option<usize> {
    let rest = name.strip_prefix("blk.")?;
    let end = rest.find('.')?;
    rest[..end].parse().ok()
}

/// One file of a (possibly split) model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GgufFile {
    /// Path it was opened from.
    pub path: PathBuf,
    /// Length in bytes.
    pub len: u64,
    /// GGUF version.
    pub version: u32,
    /// Absolute offset of the tensor data section.
    pub data_offset: u64,
    /// Tensor data alignment.
    pub alignment: u64,
}

/// A GGUF model, possibly split over several files, presented as one.
#[derive(Debug, Clone)]
pub struct GgufModel {
    /// The files, in split order (one for an unsplit model).
    pub files: Vec<GgufFile>,
    /// Metadata of the first file (which holds the model's keys).
    pub metadata: Metadata,
    /// Every tensor of every file, in file order.
    pub tensors: Vec<TensorInfo>,
    by_name: HashMap<String, usize>,
}

impl GgufModel {
    /// Builds a model from its parts; tensor names must be unique.
    pub fn from_parts(
        files: Vec<GgufFile>,
        metadata: Metadata,
        tensors: Vec<TensorInfo>,
    ) -> Result<Self> {
        let mut by_name = HashMap::with_capacity(tensors.len());
        for (i, t) in tensors.iter().enumerate() {
            if by_name.insert(t.name.clone(), i).is_some() {
                return Err(FormatError::DuplicateTensor(t.name.clone()));
            }
        }
        Ok(Self {
            files,
            metadata,
            tensors,
            by_name,
        })
    }

    /// The tensor called `name`.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.by_name.get(name).map(|&i| &self.tensors[i])
    }

    /// The tensor called `name`, or an error naming it.
    pub fn require_tensor(&self, name: &str) -> Result<&TensorInfo> {
        self.tensor(name)
            .ok_or_else(|| FormatError::MissingTensor(name.to_string()))
    }

    /// Tensors in layer order: those before the layers (e.g. `token_embd`), then `blk.0.*`,
    /// `blk.1.*`, ..., then the rest (e.g. `output_norm`, `output`). Within a group, file order.
    pub fn tensors_in_layer_order(&self) -> Vec<&TensorInfo> {
        let mut v: Vec<(u8, usize, usize, &TensorInfo)> = self
            .tensors
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let (group, layer) = match t.layer() {
                    Some(l) => (1, l),
                    None if is_head_tensor(&t.name) => (2, 0),
                    None => (0, 0),
                };
                (group, layer, i, t)
            })
            .collect();
        v.sort_by_key(|&(g, l, i, _)| (g, l, i));
        v.into_iter().map(|(_, _, _, t)| t).collect()
    }

    /// The tensors of layer `layer`, in file order.
    pub fn layer_tensors(&self, layer: usize) -> impl Iterator<Item = &TensorInfo> {
        self.tensors
            .iter()
            .filter(move |t| t.layer() == Some(layer))
    }

    /// Total bytes of tensor data.
    pub fn total_tensor_bytes(&self) -> u64 {
        self.tensors.iter().map(|t| t.n_bytes).sum()
    }

    /// The `general.architecture` string.
    pub fn architecture(&self) -> Result<&str> {
        self.metadata.get_str("general.architecture")
    }
}

/// Tensors that come after the layers in a forward pass.
fn is_head_tensor(name: &str) -> bool {
    name.starts_with("output") || name.starts_with("result") || name.starts_with("cls")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_names() {
        assert_eq!(layer_of("blk.12.attn_q.weight"), Some(12));
        assert_eq!(layer_of("blk.x.attn_q.weight"), None);
        assert_eq!(layer_of("token_embd.weight"), None);
    }

    #[test]
    fn metadata_getters_name_the_key() {
        let mut m = Metadata::new();
        m.insert("a", Value::U32(3)).unwrap();
        m.insert("s", Value::String("x".into())).unwrap();
        assert_eq!(m.get_u64("a").unwrap(), 3);
        assert!(matches!(
            m.insert("a", Value::U8(1)),
            Err(FormatError::DuplicateKey(_))
        ));
        let e = m.get_u64("s").unwrap_err().to_string();
        assert!(e.contains("\"s\""), "{e}");
        let e = m.get_u64("missing").unwrap_err().to_string();
        assert!(e.contains("missing"), "{e}");
        m.set("a", Value::U8(9));
        assert_eq!(m.get_u64("a").unwrap(), 9);
        assert_eq!(m.remove("a"), Some(Value::U8(9)));
        assert_eq!(m.get_str("s").unwrap(), "x");
    }
}
