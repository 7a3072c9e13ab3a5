//! GGUF reader, safe on hostile input.
//!
//! GGUF files are untrusted. Every count, length, dimension product and offset read from a file
//! is checked for overflow and against the bytes left in the file *before* anything is allocated
//! for it, so a file of `n` bytes can never make the reader allocate much more than a small
//! multiple of `n` (a string costs 24 bytes of `String` for its 8-byte length field, so an array
//! of empty strings is the worst case at about 3×). On top of that, [`Limits`] caps string and
//! array lengths, array nesting, and the numbers of metadata pairs and tensors. Errors name what
//! is wrong: the metadata key, the tensor, or the byte offset.

use std::collections::HashSet;
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};

use super::split::{self, SplitInfo};
use super::{
    Array, GgufFile, GgufModel, Metadata, TensorInfo, Value, ValueType, DEFAULT_ALIGNMENT, MAGIC,
    MAX_DIMS,
};
use crate::{FormatError, GgmlType, Result};

/// The key holding the tensor data alignment.
pub const ALIGNMENT_KEY: &str = "general.alignment";

/// Deepest array nesting the reader follows whatever [`Limits::max_array_depth`] says: it bounds
/// the reader's recursion.
pub const HARD_MAX_ARRAY_DEPTH: u32 = 64;

/// Smallest encoding of a metadata pair: key length, type, a one-byte value.
const MIN_KV_BYTES: u64 = 8 + 4 + 1;
/// Smallest encoding of a tensor info: name length, `n_dims` (0), type, offset.
const MIN_TENSOR_INFO_BYTES: u64 = 8 + 4 + 4 + 8;
/// Smallest encoding of a string: its length.
const MIN_STRING_BYTES: u64 = 8;
/// Smallest encoding of a nested array: element type and count.
const MIN_NESTED_ARRAY_BYTES: u64 = 4 + 8;
/// Capacity reserved up front for an array of arrays (it grows as elements are actually read,
/// so nested levels never hold reservations for bytes a deeper level is about to consume).
const NESTED_PREALLOC: usize = 1024;
/// Bytes read at a time for numeric arrays.
const CHUNK: usize = 64 * 1024;
/// Read buffer of [`GgufModel::open`].
const OPEN_BUFFER: usize = 1 << 20;

/// Sanity caps applied while parsing, on top of "never more than the file can hold".
#[derive(Debug, Clone)]
pub struct Limits {
    /// Longest string (bytes).
    pub max_string_len: u64,
    /// Most elements in one array.
    pub max_array_len: u64,
    /// Deepest nesting of arrays (an array of scalars has depth 1); never more than
    /// [`HARD_MAX_ARRAY_DEPTH`].
    pub max_array_depth: u32,
    /// Most metadata pairs.
    pub max_kv: u64,
    /// Most tensors.
    pub max_tensors: u64,
    /// Longest tensor name or metadata key (bytes).
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
///
/// Only the header is read (the reader is left just after the tensor infos). Every tensor is
/// checked to lie inside `file_len` bytes, aligned and not overlapping another.
pub fn parse_header<R: Read>(reader: R, file_len: u64, limits: &Limits) -> Result<GgufHeader> {
    parse_named(reader, file_len, limits, "<reader>")
}

/// [`parse_header`], naming `path` in I/O errors.
fn parse_named<R: Read>(
    reader: R,
    file_len: u64,
    limits: &Limits,
    path: &str,
) -> Result<GgufHeader> {
    let mut src = Source {
        inner: reader,
        pos: 0,
        len: file_len,
        path,
    };
    src.header(limits)
}

/// Error context, built only when an error is reported.
type What<'a> = &'a dyn Fn() -> String;

/// A reader that knows its position and how many bytes the file has left.
struct Source<'p, R> {
    inner: R,
    pos: u64,
    len: u64,
    path: &'p str,
}

impl<R: Read> Source<'_, R> {
    fn remaining(&self) -> u64 {
        self.len.saturating_sub(self.pos)
    }

    /// Fails with [`FormatError::Truncated`] unless `needed` bytes are left.
    fn check(&self, needed: u64, what: What<'_>) -> Result<()> {
        let available = self.remaining();
        if needed > available {
            return Err(FormatError::Truncated {
                what: what(),
                offset: self.pos,
                needed,
                available,
            });
        }
        Ok(())
    }

    fn fill(&mut self, buf: &mut [u8], what: What<'_>) -> Result<()> {
        let n = buf.len() as u64;
        self.check(n, what)?;
        if let Err(e) = self.inner.read_exact(buf) {
            let source = if e.kind() == io::ErrorKind::UnexpectedEof {
                io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "the file ended while reading {} at byte {}, before its stated length of \
                         {} bytes (was it truncated while open?)",
                        what(),
                        self.pos,
                        self.len
                    ),
                )
            } else {
                e
            };
            return Err(FormatError::Io {
                path: self.path.to_string(),
                source,
            });
        }
        self.pos += n;
        Ok(())
    }

    fn bytes<const N: usize>(&mut self, what: What<'_>) -> Result<[u8; N]> {
        let mut b = [0u8; N];
        self.fill(&mut b, what)?;
        Ok(b)
    }

    fn u32(&mut self, what: What<'_>) -> Result<u32> {
        self.bytes(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: What<'_>) -> Result<u64> {
        self.bytes(what).map(u64::from_le_bytes)
    }

    /// A length-prefixed byte string of at most `max` bytes.
    fn raw_string(&mut self, max: u64, what: What<'_>) -> Result<Vec<u8>> {
        let len = self.u64(&|| format!("length of {}", what()))?;
        if len > max {
            return Err(FormatError::LimitExceeded {
                what: format!("length of {}", what()),
                value: len,
                limit: max,
            });
        }
        self.check(len, what)?;
        let n = to_usize(len, what)?;
        let mut v = vec![0u8; n];
        self.fill(&mut v, what)?;
        Ok(v)
    }

    fn header(&mut self, limits: &Limits) -> Result<GgufHeader> {
        let magic = self.bytes::<4>(&|| "magic".to_string())?;
        if magic != MAGIC {
            return Err(FormatError::BadMagic(magic));
        }
        let version = self.u32(&|| "version".to_string())?;
        match version {
            2 | 3 => {}
            v if v != 0 && v & 0xFFFF == 0 => return Err(FormatError::BigEndian(v)),
            v => return Err(FormatError::UnsupportedVersion(v)),
        }
        let n_tensors = self.u64(&|| "tensor count".to_string())?;
        let n_kv = self.u64(&|| "metadata pair count".to_string())?;
        limit("tensor count", n_tensors, limits.max_tensors)?;
        limit("metadata pair count", n_kv, limits.max_kv)?;
        let needed = n_kv
            .checked_mul(MIN_KV_BYTES)
            .and_then(|a| a.checked_add(n_tensors.checked_mul(MIN_TENSOR_INFO_BYTES)?))
            .unwrap_or(u64::MAX);
        self.check(needed, &|| {
            format!("{n_kv} metadata pairs and {n_tensors} tensor infos")
        })?;

        let metadata = self.metadata(n_kv, limits)?;
        let alignment = alignment_of(&metadata)?;
        let raw = self.tensor_infos(n_tensors, alignment, limits)?;
        let data_offset =
            align_up(self.pos, alignment).ok_or(FormatError::BadAlignment(alignment))?;
        let tensors = place_tensors(raw, data_offset, self.len)?;
        Ok(GgufHeader {
            version,
            metadata,
            tensors,
            alignment,
            data_offset,
        })
    }

    fn metadata(&mut self, n_kv: u64, limits: &Limits) -> Result<Metadata> {
        let mut md = Metadata::new();
        for i in 0..n_kv {
            let at = self.pos;
            let raw = self.raw_string(limits.max_name_len, &|| {
                format!("metadata key #{i} at byte {at}")
            })?;
            let key = String::from_utf8(raw).map_err(|e| FormatError::InvalidUtf8 {
                what: format!(
                    "metadata key #{i} at byte {at} ({:?})",
                    String::from_utf8_lossy(e.as_bytes())
                ),
            })?;
            if md.get(&key).is_some() {
                return Err(FormatError::DuplicateKey(key));
            }
            let type_id = self.u32(&|| format!("value type of metadata key {key:?}"))?;
            let ty = ValueType::from_id(type_id).ok_or_else(|| FormatError::UnknownValueType {
                key: key.clone(),
                type_id,
            })?;
            let value = self.value(ty, &key, limits)?;
            md.insert(key, value)?;
        }
        Ok(md)
    }

    fn value(&mut self, ty: ValueType, key: &str, limits: &Limits) -> Result<Value> {
        let what = || format!("value of metadata key {key:?}");
        Ok(match ty {
            ValueType::U8 => Value::U8(u8::from_le_bytes(self.bytes(&what)?)),
            ValueType::I8 => Value::I8(i8::from_le_bytes(self.bytes(&what)?)),
            ValueType::U16 => Value::U16(u16::from_le_bytes(self.bytes(&what)?)),
            ValueType::I16 => Value::I16(i16::from_le_bytes(self.bytes(&what)?)),
            ValueType::U32 => Value::U32(u32::from_le_bytes(self.bytes(&what)?)),
            ValueType::I32 => Value::I32(i32::from_le_bytes(self.bytes(&what)?)),
            ValueType::F32 => Value::F32(f32::from_le_bytes(self.bytes(&what)?)),
            ValueType::U64 => Value::U64(u64::from_le_bytes(self.bytes(&what)?)),
            ValueType::I64 => Value::I64(i64::from_le_bytes(self.bytes(&what)?)),
            ValueType::F64 => Value::F64(f64::from_le_bytes(self.bytes(&what)?)),
            ValueType::Bool => {
                let [b] = self.bytes::<1>(&what)?;
                Value::Bool(to_bool(b, || key.to_string())?)
            }
            ValueType::String => Value::String(self.string_value(key, None, limits)?),
            ValueType::Array => Value::Array(self.array(key, 1, limits)?),
        })
    }

    fn string_value(&mut self, key: &str, index: Option<usize>, limits: &Limits) -> Result<String> {
        let what = || match index {
            Some(i) => format!("string element {i} of metadata key {key:?}"),
            None => format!("string value of metadata key {key:?}"),
        };
        let raw = self.raw_string(limits.max_string_len, &what)?;
        String::from_utf8(raw).map_err(|_| FormatError::InvalidUtf8 { what: what() })
    }

    /// An array (element type, count, elements) at nesting depth `depth` (1 for a top-level
    /// array).
    fn array(&mut self, key: &str, depth: u32, limits: &Limits) -> Result<Array> {
        let max_depth = limits.max_array_depth.min(HARD_MAX_ARRAY_DEPTH);
        if depth > max_depth {
            return Err(FormatError::LimitExceeded {
                what: format!("array nesting depth of metadata key {key:?}"),
                value: depth.into(),
                limit: max_depth.into(),
            });
        }
        let type_id = self.u32(&|| format!("array element type of metadata key {key:?}"))?;
        let ty = ValueType::from_id(type_id).ok_or_else(|| FormatError::UnknownValueType {
            key: key.to_string(),
            type_id,
        })?;
        let count = self.u64(&|| format!("array length of metadata key {key:?}"))?;
        limit(
            &format!("array length of metadata key {key:?}"),
            count,
            limits.max_array_len,
        )?;
        let min_elem = match ty.scalar_size() {
            Some(s) => s as u64,
            None if ty == ValueType::String => MIN_STRING_BYTES,
            None => MIN_NESTED_ARRAY_BYTES,
        };
        let what = || format!("array of {count} {ty:?} elements of metadata key {key:?}");
        self.check(count.saturating_mul(min_elem), &what)?;
        let n = to_usize(count, &what)?;
        Ok(match ty {
            ValueType::U8 => Array::U8(self.numeric(n, &what, u8::from_le_bytes)?),
            ValueType::I8 => Array::I8(self.numeric(n, &what, i8::from_le_bytes)?),
            ValueType::U16 => Array::U16(self.numeric(n, &what, u16::from_le_bytes)?),
            ValueType::I16 => Array::I16(self.numeric(n, &what, i16::from_le_bytes)?),
            ValueType::U32 => Array::U32(self.numeric(n, &what, u32::from_le_bytes)?),
            ValueType::I32 => Array::I32(self.numeric(n, &what, i32::from_le_bytes)?),
            ValueType::F32 => Array::F32(self.numeric(n, &what, f32::from_le_bytes)?),
            ValueType::U64 => Array::U64(self.numeric(n, &what, u64::from_le_bytes)?),
            ValueType::I64 => Array::I64(self.numeric(n, &what, i64::from_le_bytes)?),
            ValueType::F64 => Array::F64(self.numeric(n, &what, f64::from_le_bytes)?),
            ValueType::Bool => {
                let raw = self.numeric(n, &what, u8::from_le_bytes)?;
                let mut v = Vec::with_capacity(n);
                for (i, b) in raw.into_iter().enumerate() {
                    v.push(to_bool(b, || format!("{key}[{i}]"))?);
                }
                Array::Bool(v)
            }
            ValueType::String => {
                let mut v = Vec::with_capacity(n);
                for i in 0..n {
                    v.push(self.string_value(key, Some(i), limits)?);
                }
                Array::String(v)
            }
            ValueType::Array => {
                let mut v = Vec::with_capacity(n.min(NESTED_PREALLOC));
                for _ in 0..n {
                    v.push(self.array(key, depth + 1, limits)?);
                }
                Array::Array(v)
            }
        })
    }

    /// `n` little-endian scalars of `N` bytes each (the caller checked `n * N` bytes are left).
    fn numeric<T, const N: usize>(
        &mut self,
        n: usize,
        what: What<'_>,
        decode: fn([u8; N]) -> T,
    ) -> Result<Vec<T>> {
        let total = n.checked_mul(N).ok_or_else(|| FormatError::LimitExceeded {
            what: what(),
            value: n as u64,
            limit: (usize::MAX / N) as u64,
        })?;
        let mut out = Vec::with_capacity(n);
        let mut buf = vec![0u8; total.min(CHUNK / N * N)];
        let mut left = n;
        while left > 0 {
            let k = left.min(buf.len() / N);
            let chunk = &mut buf[..k * N];
            self.fill(chunk, what)?;
            out.extend(chunk.chunks_exact(N).map(|c| {
                let mut a = [0u8; N];
                a.copy_from_slice(c);
                decode(a)
            }));
            left -= k;
        }
        Ok(out)
    }

    fn tensor_infos(
        &mut self,
        n_tensors: u64,
        alignment: u64,
        limits: &Limits,
    ) -> Result<Vec<TensorInfo>> {
        let n = to_usize(n_tensors, &|| "tensor count".to_string())?;
        let mut tensors = Vec::with_capacity(n);
        let mut names = HashSet::with_capacity(n);
        for i in 0..n {
            let at = self.pos;
            let raw = self.raw_string(limits.max_name_len, &|| {
                format!("tensor name #{i} at byte {at}")
            })?;
            let name = String::from_utf8(raw).map_err(|e| FormatError::InvalidUtf8 {
                what: format!(
                    "tensor name #{i} at byte {at} ({:?})",
                    String::from_utf8_lossy(e.as_bytes())
                ),
            })?;
            if !names.insert(name.clone()) {
                return Err(FormatError::DuplicateTensor(name));
            }
            let n_dims = self.u32(&|| format!("dimension count of tensor {name:?}"))?;
            if n_dims as usize > MAX_DIMS {
                return Err(shape_error(
                    &name,
                    format!("has {n_dims} dimensions; GGUF allows at most {MAX_DIMS}"),
                ));
            }
            let mut shape = Vec::with_capacity(n_dims as usize);
            for d in 0..n_dims {
                let dim = self.u64(&|| format!("dimension {d} of tensor {name:?}"))?;
                if dim == 0 {
                    return Err(shape_error(&name, format!("dimension {d} is 0")));
                }
                shape.push(dim);
            }
            let type_id = self.u32(&|| format!("type of tensor {name:?}"))?;
            let ty = GgmlType::from_id(type_id).map_err(|_| FormatError::UnknownTensorTypeOf {
                name: name.clone(),
                type_id,
            })?;
            let offset = self.u64(&|| format!("data offset of tensor {name:?}"))?;
            let n_bytes = tensor_bytes(&name, ty, &shape)?;
            if offset % alignment != 0 {
                return Err(FormatError::MisalignedTensor {
                    name,
                    offset,
                    alignment,
                });
            }
            tensors.push(TensorInfo {
                name,
                ty,
                shape,
                file: 0,
                offset,
                n_bytes,
            });
        }
        Ok(tensors)
    }
}

/// Byte size of a tensor of type `ty` and shape `shape`, checking that the element count fits
/// in an `i64`, that rows are whole blocks and that nothing overflows.
pub(crate) fn tensor_bytes(name: &str, ty: GgmlType, shape: &[u64]) -> Result<u64> {
    if shape.len() > MAX_DIMS {
        return Err(shape_error(
            name,
            format!(
                "has {} dimensions; GGUF allows at most {MAX_DIMS}",
                shape.len()
            ),
        ));
    }
    if let Some(d) = shape.iter().position(|&d| d == 0) {
        return Err(shape_error(name, format!("dimension {d} is 0")));
    }
    let n_elements = shape
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d))
        .filter(|&n| n <= i64::MAX as u64)
        .ok_or_else(|| {
            shape_error(
                name,
                format!("shape {shape:?} has more than 2^63-1 elements"),
            )
        })?;
    let row = shape.first().copied().unwrap_or(1);
    let block = ty.block_size() as u64;
    if row % block != 0 {
        return Err(shape_error(
            name,
            format!("row length {row} is not a multiple of the {ty} block size {block}"),
        ));
    }
    ty.row_bytes(row)
        .and_then(|rb| rb.checked_mul(n_elements / row))
        .ok_or_else(|| shape_error(name, format!("byte size of shape {shape:?} {ty} overflows")))
}

fn shape_error(name: &str, reason: String) -> FormatError {
    FormatError::BadTensorShape {
        name: name.to_string(),
        reason,
    }
}

/// Turns relative offsets into absolute ones and checks every tensor lies inside the file and
/// no two overlap.
fn place_tensors(
    mut tensors: Vec<TensorInfo>,
    data_offset: u64,
    file_len: u64,
) -> Result<Vec<TensorInfo>> {
    for t in &mut tensors {
        let start = data_offset.checked_add(t.offset);
        let end = start.and_then(|s| s.checked_add(t.n_bytes));
        match (start, end) {
            (Some(start), Some(end)) if end <= file_len => t.offset = start,
            _ => {
                let start = data_offset.saturating_add(t.offset);
                return Err(FormatError::TensorPastEnd {
                    name: t.name.clone(),
                    start,
                    end: start.saturating_add(t.n_bytes),
                    file_len,
                });
            }
        }
    }
    check_overlaps(&tensors)?;
    Ok(tensors)
}

/// Fails with [`FormatError::OverlappingTensors`] if two tensors share a byte.
fn check_overlaps(tensors: &[TensorInfo]) -> Result<()> {
    let mut order: Vec<&TensorInfo> = tensors.iter().collect();
    order.sort_by_key(|t| (t.offset, t.n_bytes));
    for pair in order.windows(2) {
        if let [a, b] = pair {
            // Both ends are at most the file length, so the sum cannot overflow.
            if a.offset.saturating_add(a.n_bytes) > b.offset {
                return Err(FormatError::OverlappingTensors {
                    a: a.name.clone(),
                    b: b.name.clone(),
                });
            }
        }
    }
    Ok(())
}

/// The tensor data alignment a file's metadata declares, or the default.
pub(crate) fn alignment_of(md: &Metadata) -> Result<u64> {
    md.get(ALIGNMENT_KEY)
        .map_or(Ok(DEFAULT_ALIGNMENT), alignment_value)
}

/// The alignment a `general.alignment` value gives: any unsigned integer type is accepted; it
/// must be a non-zero power of two.
pub(crate) fn alignment_value(v: &Value) -> Result<u64> {
    let a = match *v {
        Value::U8(x) => u64::from(x),
        Value::U16(x) => u64::from(x),
        Value::U32(x) => u64::from(x),
        Value::U64(x) => x,
        _ => {
            return Err(FormatError::BadKey {
                key: ALIGNMENT_KEY.to_string(),
                reason: format!("expected an unsigned integer, found {:?}", v.value_type()),
            })
        }
    };
    if !a.is_power_of_two() {
        return Err(FormatError::BadAlignment(a));
    }
    Ok(a)
}

/// `pos` rounded up to a multiple of `alignment` (a power of two).
pub(crate) fn align_up(pos: u64, alignment: u64) -> Option<u64> {
    let mask = alignment.checked_sub(1)?;
    Some(pos.checked_add(mask)? & !mask)
}

fn to_bool(b: u8, key: impl FnOnce() -> String) -> Result<bool> {
    match b {
        0 => Ok(false),
        1 => Ok(true),
        value => Err(FormatError::InvalidBool { key: key(), value }),
    }
}

fn limit(what: &str, value: u64, limit: u64) -> Result<()> {
    if value > limit {
        return Err(FormatError::LimitExceeded {
            what: what.to_string(),
            value,
            limit,
        });
    }
    Ok(())
}

fn to_usize(n: u64, what: What<'_>) -> Result<usize> {
    usize::try_from(n).map_err(|_| FormatError::LimitExceeded {
        what: what(),
        value: n,
        limit: usize::MAX as u64,
    })
}

/// Opens one file and parses its header.
fn read_file(path: &Path, limits: &Limits) -> Result<(GgufFile, GgufHeader)> {
    let name = path.display().to_string();
    let io_err = |source| FormatError::Io {
        path: name.clone(),
        source,
    };
    let file = File::open(path).map_err(io_err)?;
    let len = file.metadata().map_err(io_err)?.len();
    let header = parse_named(
        BufReader::with_capacity(OPEN_BUFFER, file),
        len,
        limits,
        &name,
    )?;
    Ok((file_entry(path.to_path_buf(), len, &header), header))
}

fn file_entry(path: PathBuf, len: u64, header: &GgufHeader) -> GgufFile {
    GgufFile {
        path,
        len,
        version: header.version,
        data_offset: header.data_offset,
        alignment: header.alignment,
    }
}

impl GgufModel {
    /// Opens a GGUF model with the default [`Limits`].
    ///
    /// Any file of a split model (`NAME-00001-of-00003.gguf`) opens all of its parts, which must
    /// lie beside it; they are presented as one model (see [`GgufModel::open_with_limits`]).
    pub fn open(path: impl AsRef<Path>) -> Result<GgufModel> {
        Self::open_with_limits(path, &Limits::default())
    }

    /// Opens a GGUF model, parsing each file under `limits`.
    ///
    /// A split model is presented as one: `files` in split order, the metadata of the first
    /// file, every tensor with `file` set to the index of the file holding it. Each part's
    /// `split.no` and `split.count` must match its place, tensor names must be unique across
    /// parts and their total must equal `split.tensors.count`; a missing part is a
    /// [`FormatError::MissingSplitPart`] naming its path.
    pub fn open_with_limits(path: impl AsRef<Path>, limits: &Limits) -> Result<GgufModel> {
        let path = path.as_ref();
        let (file, header) = read_file(path, limits)?;
        let info = split::split_info(&header.metadata)?;
        let Some(SplitInfo { no, count, .. }) = info.filter(|i| i.count > 1) else {
            return assemble(vec![(file, header)]);
        };
        let paths = split::split_paths(path, count);
        let expected = paths.get(usize::from(no)).map(|p| p.file_name());
        if expected != Some(path.file_name()) {
            return Err(FormatError::Split(format!(
                "{} says it is part {} of {count}, but its name does not follow the split \
                 naming NAME-{:05}-of-{count:05}.gguf, so its other parts cannot be found",
                path.display(),
                u32::from(no) + 1,
                u32::from(no) + 1,
            )));
        }
        let mut opened = Some((file, header));
        let mut parts = Vec::with_capacity(paths.len());
        for (i, p) in paths.iter().enumerate() {
            if i == usize::from(no) {
                if let Some(part) = opened.take() {
                    parts.push(part);
                }
                continue;
            }
            match read_file(p, limits) {
                Err(FormatError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                    return Err(FormatError::MissingSplitPart {
                        path: p.display().to_string(),
                        part: i as u32 + 1,
                        count: count.into(),
                    })
                }
                r => parts.push(r?),
            }
        }
        assemble(parts)
    }

    /// Parses a single-file model held in memory (tests, fuzzing), with the default
    /// [`Limits`]. Its path is `<memory>`. A part of a split model is an error (see
    /// [`GgufModel::from_split_bytes`]).
    pub fn from_bytes(bytes: &[u8]) -> Result<GgufModel> {
        Self::from_split_bytes(&[bytes])
    }

    /// Parses a model held in memory as one buffer per file, in split order (a single buffer
    /// for an unsplit model). The files are checked and merged as by
    /// [`GgufModel::open_with_limits`]; their paths are `<memory>` (one file) or
    /// `<memory part N>`.
    pub fn from_split_bytes(parts: &[&[u8]]) -> Result<GgufModel> {
        let limits = Limits::default();
        let mut parsed = Vec::with_capacity(parts.len());
        for (i, bytes) in parts.iter().enumerate() {
            let name = if parts.len() == 1 {
                "<memory>".to_string()
            } else {
                format!("<memory part {}>", i + 1)
            };
            let len = bytes.len() as u64;
            let header = parse_named(*bytes, len, &limits, &name)?;
            parsed.push((file_entry(PathBuf::from(name), len, &header), header));
        }
        assemble(parsed)
    }

    /// Assembles a model from headers the caller parsed itself with [`parse_header`]: one
    /// `(path, file length, header)` per file, in split order, the length being the one given to
    /// [`parse_header`]. The split keys are checked as by [`GgufModel::open_with_limits`], and
    /// every tensor must end within its file's length.
    ///
    /// For callers that do their own I/O, e.g. reading only the head of a file whose length
    /// they know (the fuzz targets in `fuzz/` do so).
    pub fn from_headers(parts: Vec<(PathBuf, u64, GgufHeader)>) -> Result<GgufModel> {
        let mut parsed = Vec::with_capacity(parts.len());
        for (path, len, header) in parts {
            for t in &header.tensors {
                if t.offset.checked_add(t.n_bytes).is_none_or(|end| end > len) {
                    return Err(FormatError::TensorPastEnd {
                        name: t.name.clone(),
                        start: t.offset,
                        end: t.offset.saturating_add(t.n_bytes),
                        file_len: len,
                    });
                }
            }
            parsed.push((file_entry(path, len, &header), header));
        }
        assemble(parsed)
    }
}

/// Merges parsed files (in split order) into one model, checking their split keys.
fn assemble(parts: Vec<(GgufFile, GgufHeader)>) -> Result<GgufModel> {
    let count = parts.len();
    let mut files = Vec::with_capacity(count);
    let mut tensors = Vec::new();
    let mut metadata = None;
    let mut expected_tensors = None;
    for (i, (file, header)) in parts.into_iter().enumerate() {
        let info = split::split_info(&header.metadata)?;
        let (no, declared) = info.map_or((0, 1), |s| (usize::from(s.no), usize::from(s.count)));
        if declared != count {
            return Err(FormatError::Split(format!(
                "{} says the model has {declared} part(s), but {count} were given",
                file.path.display()
            )));
        }
        if no != i {
            return Err(FormatError::Split(format!(
                "{} says it is part {} of {count}, but it was given as part {}",
                file.path.display(),
                no + 1,
                i + 1
            )));
        }
        if let Some(n) = info.and_then(|s| s.tensors_count) {
            match expected_tensors {
                None => expected_tensors = Some(n),
                Some(e) if e != n => {
                    return Err(FormatError::Split(format!(
                        "{} says the model has {n} tensors, but part 1 says {e}",
                        file.path.display()
                    )))
                }
                Some(_) => {}
            }
        }
        tensors.extend(header.tensors.into_iter().map(|mut t| {
            t.file = i;
            t
        }));
        if metadata.is_none() {
            metadata = Some(header.metadata);
        }
        files.push(file);
    }
    if count > 1 {
        let Some(n) = expected_tensors else {
            return Err(FormatError::MissingKey(
                split::SPLIT_TENSORS_COUNT_KEY.to_string(),
            ));
        };
        if n != tensors.len() as u64 {
            return Err(FormatError::Split(format!(
                "{} says the model has {n} tensors, but its {count} parts hold {}",
                split::SPLIT_TENSORS_COUNT_KEY,
                tensors.len()
            )));
        }
    }
    GgufModel::from_parts(files, metadata.unwrap_or_default(), tensors)
}
