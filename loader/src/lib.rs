//! Files, aligned buffers and read backends.
//!
//! [`ModelFiles`] is the plain positional reader that tools use to look at tensor bytes;
//! [`ReadBackend`] is the asynchronous interface the scheduler streams weights through.

#![warn(missing_docs)]

mod backend;
mod buffer;

pub use backend::{BackendOptions, Completion, IoKind, ReadBackend, ReadOp};
pub use buffer::{AlignedBuffer, ALIGN};

use std::fs::File;
use std::path::{Path, PathBuf};

use flashstream_formats::{GgufModel, TensorInfo};

/// Errors of the loader.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoaderError {
    /// Opening or reading a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A read outside a file or of an unknown file.
    #[error("read of {len} bytes at {offset} in file #{file} is out of range: {reason}")]
    OutOfRange {
        /// File index.
        file: usize,
        /// Offset.
        offset: u64,
        /// Length.
        len: u64,
        /// Why.
        reason: String,
    },
    /// A file is shorter than the model needs: it was truncated (or replaced) while open.
    #[error("{path} ended at byte {file_len} but {required} bytes at offset {offset} are needed: the model file was truncated or replaced while open; restore it and restart")]
    Truncated {
        /// The file.
        path: PathBuf,
        /// Offset of the read.
        offset: u64,
        /// Bytes the read needed.
        required: u64,
        /// Where the file ended.
        file_len: u64,
    },
    /// A backend cannot be used here (io_uring refused by the kernel or a seccomp profile,
    /// `O_DIRECT` unsupported by the file system, ...).
    #[error("I/O backend {kind} is unavailable: {reason}")]
    Unavailable {
        /// The backend.
        kind: IoKind,
        /// Why.
        reason: String,
    },
}

/// The open files of a model, read with positional reads.
#[derive(Debug)]
pub struct ModelFiles {
    files: Vec<(PathBuf, File, u64)>,
}

impl ModelFiles {
    /// Opens every file of `model` read-only and checks it still has the length it was
    /// parsed with.
    pub fn open(model: &GgufModel) -> Result<Self, LoaderError> {
        let mut files = Vec::with_capacity(model.files.len());
        for f in &model.files {
            let file = File::open(&f.path).map_err(|source| LoaderError::Io {
                path: f.path.clone(),
                source,
            })?;
            let len = file
                .metadata()
                .map_err(|source| LoaderError::Io {
                    path: f.path.clone(),
                    source,
                })?
                .len();
            files.push((f.path.clone(), file, len));
        }
        Ok(ModelFiles { files })
    }

    /// Path of file `i`.
    pub fn path(&self, i: usize) -> Option<&Path> {
        self.files.get(i).map(|f| f.0.as_path())
    }

    /// Reads exactly `buf.len()` bytes at `offset` of file `file` (short reads are continued,
    /// EINTR retried; reading past the end is an error).
    pub fn read_exact_at(
        &self,
        file: usize,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<(), LoaderError> {
        let (path, f, len) = self
            .files
            .get(file)
            .ok_or_else(|| LoaderError::OutOfRange {
                file,
                offset,
                len: buf.len() as u64,
                reason: format!("the model has {} files", self.files.len()),
            })?;
        let end = offset.checked_add(buf.len() as u64);
        if end.is_none_or(|e| e > *len) {
            return Err(LoaderError::OutOfRange {
                file,
                offset,
                len: buf.len() as u64,
                reason: format!("{} has {len} bytes", path.display()),
            });
        }
        read_exact_at(f, buf, offset).map_err(|source| LoaderError::Io {
            path: path.clone(),
            source,
        })
    }

    /// Reads the first `n_rows` rows of tensor `t` (all of it if it has fewer).
    pub fn read_rows(&self, t: &TensorInfo, n_rows: u64) -> Result<Vec<u8>, LoaderError> {
        let rows = n_rows.min(t.n_rows().max(1));
        let len = rows.saturating_mul(t.row_bytes()).min(t.n_bytes);
        let mut buf = vec![0u8; len as usize];
        self.read_exact_at(t.file, t.offset, &mut buf)?;
        Ok(buf)
    }
}

#[cfg(unix)]
fn read_exact_at(f: &File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(f, buf, offset)
}

#[cfg(windows)]
fn read_exact_at(f: &File, mut buf: &mut [u8], mut offset: u64) -> std::io::Result<()> {
    use std::os::windows::fs::FileExt;
    while !buf.is_empty() {
        match f.seek_read(buf, offset) {
            Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => {
                buf = &mut buf[n..];
                offset += n as u64;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
