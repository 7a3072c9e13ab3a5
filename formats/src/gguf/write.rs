//! GGUF writer (version 3, little-endian).
//!
//! Built for streaming files far larger than memory: declare the metadata and every tensor's
//! name, type and shape up front ([`GgufWriter`]), write the header
//! ([`GgufWriter::write_header`]), then hand over each tensor's bytes in declaration order, in
//! chunks of any size ([`TensorDataWriter::write_chunk`]); alignment padding is inserted
//! automatically. For small models, [`GgufWriter::to_bytes`] and [`GgufWriter::write_file`]
//! write everything from in-memory buffers.
//!
//! The writer only produces files that the reader accepts with the default [`Limits`]: it
//! checks names, shapes, string and array lengths and array nesting as they are given.
//!
//! Layout: the header is padded to the alignment; tensor data follows in declaration order,
//! each tensor padded to the alignment (as llama.cpp and gguf-py do). A file without tensors
//! ends after its metadata, unpadded.
//!
//! [`Limits`]: super::Limits

use std::collections::HashSet;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use super::read::{align_up, alignment_value, tensor_bytes, ALIGNMENT_KEY};
use super::split::{SPLIT_COUNT_KEY, SPLIT_NO_KEY, SPLIT_TENSORS_COUNT_KEY};
use super::{Array, GgufModel, Limits, Metadata, TensorInfo, Value, DEFAULT_ALIGNMENT, MAGIC};
use crate::{FormatError, GgmlType, Result};

/// The GGUF version the writer produces.
pub const WRITE_VERSION: u32 = 3;

/// Output buffer of [`GgufWriter::create`] and [`GgufWriter::write_file`].
const FILE_BUFFER: usize = 1 << 20;

/// Declares the contents of a GGUF file: metadata, tensor data alignment and tensor infos.
///
/// The alignment and the `general.alignment` key are kept consistent: setting the key (with any
/// unsigned integer type) sets the alignment, and [`GgufWriter::set_alignment`] updates the key
/// (adding it, as a u32, when the alignment is not the default 32).
#[derive(Debug, Clone)]
pub struct GgufWriter {
    metadata: Metadata,
    /// Offsets are relative to the data section.
    tensors: Vec<TensorInfo>,
    names: HashSet<String>,
    alignment: u64,
    /// Length of the data section so far (each tensor padded to the alignment).
    data_len: u64,
    limits: Limits,
}

impl Default for GgufWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl GgufWriter {
    /// An empty file with the default alignment (32).
    pub fn new() -> Self {
        GgufWriter {
            metadata: Metadata::new(),
            tensors: Vec::new(),
            names: HashSet::new(),
            alignment: DEFAULT_ALIGNMENT,
            data_len: 0,
            limits: Limits::default(),
        }
    }

    /// An empty file with tensor data aligned to `alignment` (a non-zero power of two).
    pub fn with_alignment(alignment: u64) -> Result<Self> {
        let mut w = Self::new();
        w.set_alignment(alignment)?;
        Ok(w)
    }

    /// A writer declaring the same metadata (and so the same alignment) and the same tensors,
    /// in the same order, as `model`. The split keys (`split.no`, `split.count`,
    /// `split.tensors.count`) are left out: they describe how the source was split, not the
    /// model. The tensor data is the caller's to copy.
    pub fn from_model(model: &GgufModel) -> Result<Self> {
        let mut w = Self::new();
        for (key, value) in model.metadata.iter() {
            if ![SPLIT_NO_KEY, SPLIT_COUNT_KEY, SPLIT_TENSORS_COUNT_KEY].contains(&key) {
                w.set(key, value.clone())?;
            }
        }
        for t in &model.tensors {
            w.add_tensor(t.name.clone(), t.ty, &t.shape)?;
        }
        Ok(w)
    }

    /// The tensor data alignment.
    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// Sets the tensor data alignment (a non-zero power of two). If the metadata holds
    /// `general.alignment` it is updated; if not, it is added when `alignment` is not 32.
    /// Tensors declared so far are laid out again.
    pub fn set_alignment(&mut self, alignment: u64) -> Result<()> {
        if !alignment.is_power_of_two() {
            return Err(FormatError::BadAlignment(alignment));
        }
        self.adopt_alignment(alignment)?;
        if self.metadata.get(ALIGNMENT_KEY).is_some() || alignment != DEFAULT_ALIGNMENT {
            let value = match u32::try_from(alignment) {
                Ok(a) => Value::U32(a),
                Err(_) => Value::U64(alignment),
            };
            self.metadata.set(ALIGNMENT_KEY, value);
        }
        Ok(())
    }

    /// Lays the declared tensors out again for `alignment` (changing nothing on error).
    fn adopt_alignment(&mut self, alignment: u64) -> Result<()> {
        let mut offsets = Vec::with_capacity(self.tensors.len());
        let mut data_len = 0u64;
        for t in &self.tensors {
            offsets.push(data_len);
            data_len = padded_end(data_len, t.n_bytes, alignment, &t.name)?;
        }
        for (t, offset) in self.tensors.iter_mut().zip(offsets) {
            t.offset = offset;
        }
        self.alignment = alignment;
        self.data_len = data_len;
        Ok(())
    }

    /// The metadata declared so far, in order.
    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    /// Sets `key` to `value`, replacing (in place) any earlier value.
    ///
    /// Fails if the key or value would exceed the reader's default [`Limits`] (key length,
    /// string length, array length, array nesting depth), or if `key` is `general.alignment` and
    /// `value` is not a power of two of an unsigned integer type.
    pub fn set(&mut self, key: impl Into<String>, value: Value) -> Result<()> {
        let key = key.into();
        check_len(
            || format!("length of metadata key {key:?}"),
            key.len(),
            self.limits.max_name_len,
        )?;
        check_value(&self.limits, &key, &value)?;
        if self.metadata.get(&key).is_none() && self.metadata.len() as u64 >= self.limits.max_kv {
            return Err(FormatError::LimitExceeded {
                what: "metadata pair count".to_string(),
                value: self.metadata.len() as u64 + 1,
                limit: self.limits.max_kv,
            });
        }
        if key == ALIGNMENT_KEY {
            let alignment = alignment_value(&value)?;
            self.adopt_alignment(alignment)?;
        }
        self.metadata.set(key, value);
        Ok(())
    }

    /// Removes `key`, returning its value. Removing `general.alignment` resets the alignment to
    /// the default 32.
    pub fn remove(&mut self, key: &str) -> Option<Value> {
        let v = self.metadata.remove(key)?;
        if key == ALIGNMENT_KEY {
            // Shrinking the alignment cannot overflow a layout that fitted a larger one.
            let _ = self.adopt_alignment(DEFAULT_ALIGNMENT);
        }
        Some(v)
    }

    /// Sets every pair of `metadata` (in its order), as [`GgufWriter::set`] does.
    pub fn copy_metadata(&mut self, metadata: &Metadata) -> Result<()> {
        for (key, value) in metadata.iter() {
            self.set(key, value.clone())?;
        }
        Ok(())
    }

    /// Declares the next tensor. `shape` is in GGUF order (`shape[0]` is the row length); it
    /// has at most 4 dimensions, each at least 1, and rows must be whole blocks of `ty`.
    pub fn add_tensor(
        &mut self,
        name: impl Into<String>,
        ty: GgmlType,
        shape: &[u64],
    ) -> Result<()> {
        let name = name.into();
        check_len(
            || format!("length of tensor name {name:?}"),
            name.len(),
            self.limits.max_name_len,
        )?;
        if self.tensors.len() as u64 >= self.limits.max_tensors {
            return Err(FormatError::LimitExceeded {
                what: "tensor count".to_string(),
                value: self.tensors.len() as u64 + 1,
                limit: self.limits.max_tensors,
            });
        }
        if self.names.contains(&name) {
            return Err(FormatError::DuplicateTensor(name));
        }
        let n_bytes = tensor_bytes(&name, ty, shape)?;
        let offset = self.data_len;
        self.data_len = padded_end(offset, n_bytes, self.alignment, &name)?;
        self.names.insert(name.clone());
        self.tensors.push(TensorInfo {
            name,
            ty,
            shape: shape.to_vec(),
            file: 0,
            offset,
            n_bytes,
        });
        Ok(())
    }

    /// Number of tensors declared.
    pub fn tensor_count(&self) -> usize {
        self.tensors.len()
    }

    /// The header as it will be written, padded to the alignment when there are tensors. A
    /// file without tensors has no data section to align and ends after its metadata (the
    /// reader accepts that): padding it would turn a hostile `general.alignment` (any power of
    /// two up to 2^63) copied from such a file into a header of that many bytes.
    fn header_bytes(&self) -> Result<Vec<u8>> {
        let mut b = Vec::new();
        b.extend_from_slice(&MAGIC);
        b.extend_from_slice(&WRITE_VERSION.to_le_bytes());
        put_u64(&mut b, self.tensors.len() as u64);
        put_u64(&mut b, self.metadata.len() as u64);
        for (key, value) in self.metadata.iter() {
            put_str(&mut b, key);
            b.extend_from_slice(&value.value_type().id().to_le_bytes());
            put_value(&mut b, value);
        }
        for t in &self.tensors {
            put_str(&mut b, &t.name);
            b.extend_from_slice(&(t.shape.len() as u32).to_le_bytes());
            for &d in &t.shape {
                put_u64(&mut b, d);
            }
            b.extend_from_slice(&t.ty.id().to_le_bytes());
            put_u64(&mut b, t.offset);
        }
        if self.tensors.is_empty() {
            return Ok(b);
        }
        let padded = align_up(b.len() as u64, self.alignment)
            .and_then(|n| usize::try_from(n).ok())
            .ok_or(FormatError::BadAlignment(self.alignment))?;
        b.resize(padded, 0);
        Ok(b)
    }

    /// The tensors as they will be laid out (absolute offsets), and the file's total length.
    pub fn layout(&self) -> Result<(Vec<TensorInfo>, u64)> {
        let data_offset = self.header_bytes()?.len() as u64;
        self.layout_at(data_offset)
    }

    fn layout_at(&self, data_offset: u64) -> Result<(Vec<TensorInfo>, u64)> {
        let overflow = || FormatError::Writer("the file would be larger than 2^64 bytes".into());
        let mut tensors = self.tensors.clone();
        for t in &mut tensors {
            t.offset = data_offset.checked_add(t.offset).ok_or_else(overflow)?;
        }
        let len = data_offset
            .checked_add(self.data_len)
            .ok_or_else(overflow)?;
        Ok((tensors, len))
    }

    /// Writes the header to `out` and returns the writer of the tensor data that must follow.
    pub fn write_header<W: Write>(self, out: W) -> Result<TensorDataWriter<W>> {
        self.write_header_named(out, "<output>".to_string())
    }

    fn write_header_named<W: Write>(
        self,
        mut out: W,
        label: String,
    ) -> Result<TensorDataWriter<W>> {
        let header = self.header_bytes()?;
        let data_offset = header.len() as u64;
        let (tensors, file_len) = self.layout_at(data_offset)?;
        out.write_all(&header).map_err(|source| FormatError::Io {
            path: label.clone(),
            source,
        })?;
        Ok(TensorDataWriter {
            out,
            label,
            tensors,
            alignment: self.alignment,
            data_offset,
            file_len,
            current: 0,
            written: 0,
            failed: false,
        })
    }

    /// Creates (or truncates) the file at `path`, writes the header and returns the writer of
    /// the tensor data.
    pub fn create(self, path: impl AsRef<Path>) -> Result<TensorDataWriter<BufWriter<File>>> {
        let path = path.as_ref();
        let label = path.display().to_string();
        let file = File::create(path).map_err(|source| FormatError::Io {
            path: label.clone(),
            source,
        })?;
        self.write_header_named(BufWriter::with_capacity(FILE_BUFFER, file), label)
    }

    /// Writes the whole file to `out`: `data[i]` is the bytes of the `i`-th declared tensor.
    pub fn write_all<W: Write>(self, out: W, data: &[&[u8]]) -> Result<W> {
        self.check_data_count(data)?;
        let mut w = self.write_header(out)?;
        w.write_all_tensors(data)?;
        w.finish()
    }

    /// The whole file in memory: `data[i]` is the bytes of the `i`-th declared tensor.
    pub fn to_bytes(self, data: &[&[u8]]) -> Result<Vec<u8>> {
        self.write_all(Vec::new(), data)
    }

    /// Writes the whole file to `path`: `data[i]` is the bytes of the `i`-th declared tensor.
    pub fn write_file(self, path: impl AsRef<Path>, data: &[&[u8]]) -> Result<()> {
        self.check_data_count(data)?;
        let mut w = self.create(path)?;
        w.write_all_tensors(data)?;
        let label = w.label.clone();
        let file = w.finish()?;
        file.into_inner()
            .map_err(|e| e.into_error())
            .and_then(|f| f.sync_all())
            .map_err(|source| FormatError::Io {
                path: label,
                source,
            })
    }

    fn check_data_count(&self, data: &[&[u8]]) -> Result<()> {
        if data.len() != self.tensors.len() {
            return Err(FormatError::Writer(format!(
                "{} tensor data buffers given for {} declared tensors",
                data.len(),
                self.tensors.len()
            )));
        }
        Ok(())
    }
}

/// `offset + n_bytes` rounded up to the alignment.
fn padded_end(offset: u64, n_bytes: u64, alignment: u64, name: &str) -> Result<u64> {
    offset
        .checked_add(n_bytes)
        .and_then(|end| align_up(end, alignment))
        .ok_or_else(|| {
            FormatError::Writer(format!(
                "tensor {name:?}: the data section would be larger than 2^64 bytes"
            ))
        })
}

fn check_len(what: impl FnOnce() -> String, len: usize, limit: u64) -> Result<()> {
    if len as u64 > limit {
        return Err(FormatError::LimitExceeded {
            what: what(),
            value: len as u64,
            limit,
        });
    }
    Ok(())
}

/// Checks a value against the reader's limits.
fn check_value(limits: &Limits, key: &str, value: &Value) -> Result<()> {
    match value {
        Value::String(s) => check_len(
            || format!("length of the string value of metadata key {key:?}"),
            s.len(),
            limits.max_string_len,
        ),
        Value::Array(a) => check_array(limits, key, a, 1),
        _ => Ok(()),
    }
}

fn check_array(limits: &Limits, key: &str, a: &Array, depth: u32) -> Result<()> {
    let max_depth = limits.max_array_depth.min(super::HARD_MAX_ARRAY_DEPTH);
    if depth > max_depth {
        return Err(FormatError::LimitExceeded {
            what: format!("array nesting depth of metadata key {key:?}"),
            value: depth.into(),
            limit: max_depth.into(),
        });
    }
    check_len(
        || format!("array length of metadata key {key:?}"),
        a.len(),
        limits.max_array_len,
    )?;
    match a {
        Array::String(v) => {
            for (i, s) in v.iter().enumerate() {
                check_len(
                    || format!("length of string element {i} of metadata key {key:?}"),
                    s.len(),
                    limits.max_string_len,
                )?;
            }
            Ok(())
        }
        Array::Array(v) => v
            .iter()
            .try_for_each(|inner| check_array(limits, key, inner, depth + 1)),
        _ => Ok(()),
    }
}

fn put_u64(b: &mut Vec<u8>, v: u64) {
    b.extend_from_slice(&v.to_le_bytes());
}

fn put_str(b: &mut Vec<u8>, s: &str) {
    put_u64(b, s.len() as u64);
    b.extend_from_slice(s.as_bytes());
}

/// A value's payload (its type id is written by the caller).
fn put_value(b: &mut Vec<u8>, v: &Value) {
    match v {
        Value::U8(x) => b.push(*x),
        Value::I8(x) => b.extend_from_slice(&x.to_le_bytes()),
        Value::U16(x) => b.extend_from_slice(&x.to_le_bytes()),
        Value::I16(x) => b.extend_from_slice(&x.to_le_bytes()),
        Value::U32(x) => b.extend_from_slice(&x.to_le_bytes()),
        Value::I32(x) => b.extend_from_slice(&x.to_le_bytes()),
        Value::F32(x) => b.extend_from_slice(&x.to_le_bytes()),
        Value::Bool(x) => b.push(u8::from(*x)),
        Value::String(s) => put_str(b, s),
        Value::Array(a) => put_array(b, a),
        Value::U64(x) => b.extend_from_slice(&x.to_le_bytes()),
        Value::I64(x) => b.extend_from_slice(&x.to_le_bytes()),
        Value::F64(x) => b.extend_from_slice(&x.to_le_bytes()),
    }
}

/// An array: element type, count, elements.
fn put_array(b: &mut Vec<u8>, a: &Array) {
    b.extend_from_slice(&a.element_type().id().to_le_bytes());
    put_u64(b, a.len() as u64);
    match a {
        Array::U8(v) => b.extend_from_slice(v),
        Array::I8(v) => b.extend(v.iter().flat_map(|x| x.to_le_bytes())),
        Array::U16(v) => b.extend(v.iter().flat_map(|x| x.to_le_bytes())),
        Array::I16(v) => b.extend(v.iter().flat_map(|x| x.to_le_bytes())),
        Array::U32(v) => b.extend(v.iter().flat_map(|x| x.to_le_bytes())),
        Array::I32(v) => b.extend(v.iter().flat_map(|x| x.to_le_bytes())),
        Array::F32(v) => b.extend(v.iter().flat_map(|x| x.to_le_bytes())),
        Array::Bool(v) => b.extend(v.iter().map(|&x| u8::from(x))),
        Array::String(v) => v.iter().for_each(|s| put_str(b, s)),
        Array::Array(v) => v.iter().for_each(|inner| put_array(b, inner)),
        Array::U64(v) => b.extend(v.iter().flat_map(|x| x.to_le_bytes())),
        Array::I64(v) => b.extend(v.iter().flat_map(|x| x.to_le_bytes())),
        Array::F64(v) => b.extend(v.iter().flat_map(|x| x.to_le_bytes())),
    }
}

/// Writes the tensor data section after [`GgufWriter::write_header`]: each tensor's bytes, in
/// declaration order, in chunks of any size. Padding between tensors is inserted automatically.
///
/// Giving a tensor more bytes than it has, data for a tensor other than the next one, or
/// finishing before every tensor is complete is a [`FormatError::Writer`] error (and writes
/// nothing). After an I/O error the output is incomplete and the writer refuses further use.
#[derive(Debug)]
pub struct TensorDataWriter<W: Write> {
    out: W,
    label: String,
    /// Absolute offsets.
    tensors: Vec<TensorInfo>,
    alignment: u64,
    data_offset: u64,
    file_len: u64,
    /// Index of the tensor whose bytes come next.
    current: usize,
    /// Bytes of `tensors[current]` written so far.
    written: u64,
    failed: bool,
}

impl<W: Write> TensorDataWriter<W> {
    /// The tensors with their absolute offsets in the file being written.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// Absolute offset of the tensor data section.
    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }

    /// Length of the complete file.
    pub fn file_len(&self) -> u64 {
        self.file_len
    }

    /// The tensor whose bytes come next (`None` once all are written).
    pub fn next_tensor(&self) -> Option<&TensorInfo> {
        self.tensors.get(self.current)
    }

    /// Bytes of [`TensorDataWriter::next_tensor`] already written.
    pub fn bytes_written_of_next(&self) -> u64 {
        self.written
    }

    /// Appends `chunk` to the data of tensor `name`, which must be the tensor being written
    /// (the first declared tensor not yet complete). When a tensor is complete, its padding is
    /// written and the next tensor's data may follow.
    pub fn write_chunk(&mut self, name: &str, chunk: &[u8]) -> Result<()> {
        if self.failed {
            return Err(FormatError::Writer(format!(
                "{}: an earlier write failed; the output is incomplete",
                self.label
            )));
        }
        let Some(t) = self.tensors.get(self.current) else {
            return Err(FormatError::Writer(format!(
                "data for tensor {name:?} given after all {} declared tensors were complete",
                self.tensors.len()
            )));
        };
        if t.name != name {
            let msg = if self.written > 0 {
                format!(
                    "data for tensor {name:?} given while tensor {:?} has only {} of its {} bytes",
                    t.name, self.written, t.n_bytes
                )
            } else if self.tensors.iter().any(|x| x.name == name) {
                format!(
                    "data for tensor {name:?} given out of order: the next tensor is {:?}",
                    t.name
                )
            } else {
                format!("tensor {name:?} was not declared")
            };
            return Err(FormatError::Writer(msg));
        }
        let n_bytes = t.n_bytes;
        let total = self.written.saturating_add(chunk.len() as u64);
        if total > n_bytes {
            return Err(FormatError::Writer(format!(
                "tensor {name:?}: {total} bytes given, but it has {n_bytes}"
            )));
        }
        self.emit(chunk)?;
        self.written = total;
        if total == n_bytes {
            let pad = align_up(n_bytes, self.alignment).map_or(0, |p| p - n_bytes);
            self.emit_zeros(pad)?;
            self.current += 1;
            self.written = 0;
        }
        Ok(())
    }

    /// Writes all of tensor `name`'s bytes at once; `data` must be exactly its size and no
    /// part of it may have been written yet.
    pub fn write_tensor(&mut self, name: &str, data: &[u8]) -> Result<()> {
        if let Some(t) = self.tensors.get(self.current) {
            if t.name == name && (self.written != 0 || data.len() as u64 != t.n_bytes) {
                return Err(FormatError::Writer(format!(
                    "tensor {name:?}: {} bytes given as the whole tensor, but it has {} \
                     ({} already written)",
                    data.len(),
                    t.n_bytes,
                    self.written
                )));
            }
        }
        self.write_chunk(name, data)
    }

    /// Writes `data[i]` as the whole of the `i`-th not yet written tensor.
    fn write_all_tensors(&mut self, data: &[&[u8]]) -> Result<()> {
        for d in data {
            let name = self
                .next_tensor()
                .map(|t| t.name.clone())
                .unwrap_or_default();
            self.write_tensor(&name, d)?;
        }
        Ok(())
    }

    /// Checks every tensor is complete, flushes and returns the output.
    pub fn finish(mut self) -> Result<W> {
        if let Some(t) = self.tensors.get(self.current) {
            return Err(FormatError::Writer(format!(
                "finished with tensor {:?} at {} of its {} bytes and {} more declared tensor(s) \
                 without data",
                t.name,
                self.written,
                t.n_bytes,
                self.tensors.len() - self.current - 1
            )));
        }
        if self.failed {
            return Err(FormatError::Writer(format!(
                "{}: an earlier write failed; the output is incomplete",
                self.label
            )));
        }
        self.out.flush().map_err(|source| FormatError::Io {
            path: self.label.clone(),
            source,
        })?;
        Ok(self.out)
    }

    fn emit(&mut self, bytes: &[u8]) -> Result<()> {
        if let Err(source) = self.out.write_all(bytes) {
            self.failed = true;
            return Err(FormatError::Io {
                path: self.label.clone(),
                source,
            });
        }
        Ok(())
    }

    fn emit_zeros(&mut self, mut n: u64) -> Result<()> {
        const ZEROS: [u8; 4096] = [0; 4096];
        while n > 0 {
            let k = n.min(ZEROS.len() as u64) as usize;
            self.emit(&ZEROS[..k])?;
            n -= k as u64;
        }
        Ok(())
    }
}
