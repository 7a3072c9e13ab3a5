//! Files, aligned buffers and read backends.
//!
//! [`ModelFiles`] is the plain positional reader that tools use to look at tensor bytes;
//! [`ReadBackend`] is the asynchronous interface the scheduler streams weights through, and
//! [`open_backend`] opens one over a model's files.
//!
//! # The backends (`--io`)
//!
//! | kind | how | alignment | page cache | where |
//! |------|-----|-----------|------------|-------|
//! | `uring` | io_uring, `O_DIRECT`, up to the queue depth (default 16) reads of ≤ [`BACKEND_CHUNK_BYTES`] in the kernel, driven by the caller's thread; fixed buffers (`READ_FIXED`) after [`ReadBackend::register_buffers`] | 4096 | bypassed | Linux |
//! | `pread` | [`PreadBackend`]: N threads (default 8) doing `pread`, ops split into ≤ [`BACKEND_CHUNK_BYTES`] chunks; `O_DIRECT` on Linux, `F_NOCACHE` + `F_RDADVISE` on Apple | 4096 | bypassed | everywhere |
//! | `mmap` | N threads (default 4) copying out of a read-only map, `madvise(WILLNEED)` at submit, `madvise(DONTNEED)` + `posix_fadvise(DONTNEED)` behind each chunk | 1 | used, then dropped | everywhere |
//! | `auto` | `uring` if the ring can be created and a test read works, else `pread` | | | |
//!
//! Which to pick: `auto` (io_uring where it works: fewest threads and syscalls per byte;
//! pread otherwise) for streaming a model bigger than memory. `pread` where io_uring is
//! refused or misbehaves, and on Apple/other platforms. `mmap` only for a model that fits (the
//! reads transit the page cache, and a file truncated under a mapping can fault the process);
//! it needs no alignment. Where a file system refuses `O_DIRECT` (`EINVAL`), `uring` and
//! `pread` read buffered and drop the pages behind each read
//! ([`ReadBackend::bypasses_cache`] then says false).
//!
//! # Faults
//!
//! Every backend continues short reads, retries `EINTR`/`EAGAIN` (a chunk that makes no
//! progress for 10 000 attempts fails), and ends an op with an error completion on anything
//! else: [`LoaderError::Truncated`] when the file ended before the op's `required` bytes,
//! [`LoaderError::Io`] naming the path otherwise; never a silently short buffer.
//!
//! Files replaced or modified while open: each [`ReadBackend::wait`] checks every file that
//! has a completion in the batch it returns (`fstat` of the open file: size and modification
//! time against those at open; `stat` of the path: same device and inode). A change turns
//! that batch's successful completions on the file into [`LoaderError::FileChanged`] and
//! makes later submits on it fail. Cost: two syscalls per file per `wait`.
//!
//! The pool backends read through [`ReadSource`], the pluggable syscall layer
//! ([`FileSource`] is the real one), so tests inject faults under the real retry logic with
//! [`PreadBackend::from_sources`]. [`DISABLE_URING_ENV`] forces io_uring's refusal.
//!
//! [`probe_read_bandwidth`] measures the device's sequential read bandwidth on the model's
//! files (for `flashstream bench`).

#![warn(missing_docs)]

mod backend;
mod buffer;
mod common;
mod mmap;
mod open;
mod pool;
mod probe;
mod source;
#[cfg(target_os = "linux")]
mod uring;

pub use backend::{BackendOptions, Completion, IoKind, ReadBackend, ReadOp};
pub use buffer::{IoBuffer, ALIGN};
pub use common::BACKEND_CHUNK_BYTES;
pub use mmap::DEFAULT_MMAP_THREADS;
pub use open::{open_backend, DEFAULT_URING_DEPTH, DISABLE_URING_ENV};
pub use pool::{PreadBackend, DEFAULT_PREAD_THREADS};
pub use probe::{
    probe_ranges, probe_read_bandwidth, BandwidthProbe, PROBE_SCRATCH_BYTES, PROBE_STREAMS,
};
pub use source::{FileSource, ReadSource};

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
    /// An op whose offset, length or destination is not a multiple of the backend's
    /// alignment (round the range out to [`ReadBackend::alignment`] and point inside it).
    #[error("read of {len} bytes at offset {offset} of file #{file} into {dst:#x} is not aligned to {alignment} bytes (offset, len and dst must all be multiples of the backend's alignment: round the range out)")]
    Misaligned {
        /// File index.
        file: usize,
        /// Offset.
        offset: u64,
        /// Length.
        len: usize,
        /// Destination address.
        dst: usize,
        /// The backend's alignment.
        alignment: usize,
    },
    /// A request that makes no sense (e.g. `required > len`, a zero-byte probe).
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// A model file was modified or replaced while open (detected by the backend's checks).
    #[error("{path} changed while open: {what}; the bytes read from it cannot be trusted, restart with the file left alone")]
    FileChanged {
        /// The file.
        path: PathBuf,
        /// What changed.
        what: String,
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
