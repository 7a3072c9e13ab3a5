//! Read backends: how bytes get from the model files into RAM.
//!
//! Every backend implements [`ReadBackend`], an asynchronous submit/complete interface in the
//! style of io_uring: the caller (the scheduler's I/O thread) submits [`ReadOp`]s, each naming
//! a byte range of a model file and a destination in memory, and collects [`Completion`]s.
//! The backend owns its open files (opened from the [`GgufModel`](flashstream_formats::GgufModel)'s paths with the flags it
//! needs: `O_DIRECT` on Linux, `F_NOCACHE` on Apple).
//!
//! Alignment: a direct backend ([`ReadBackend::alignment`] > 1) needs `offset`, `len` and
//! `dst` to be multiples of the alignment. GGUF tensors are only 32-byte aligned, so the caller
//! rounds the range out and points inside it; `len` may then run past the end of the file, and
//! only the first `required` bytes must exist. A file shorter than `offset + required` (it was
//! truncated while open) is an error, never a silently short buffer.

use std::ptr::NonNull;

use crate::LoaderError;

/// Which backend to use (`--io`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IoKind {
    /// io_uring where the kernel allows it, else the pread pool.
    Auto,
    /// io_uring with `O_DIRECT` (Linux only).
    Uring,
    /// A pool of threads doing positional reads (`O_DIRECT` on Linux, `F_NOCACHE` on Apple).
    Pread,
    /// Copies out of a memory map of the file (for models that fit; reads go through the page
    /// cache, whose pages are dropped behind the copy).
    Mmap,
}

impl IoKind {
    /// Every kind, for `--io` help texts and tests.
    pub const ALL: [IoKind; 4] = [IoKind::Auto, IoKind::Uring, IoKind::Pread, IoKind::Mmap];

    /// The `--io` spelling.
    pub const fn name(self) -> &'static str {
        match self {
            IoKind::Auto => "auto",
            IoKind::Uring => "uring",
            IoKind::Pread => "pread",
            IoKind::Mmap => "mmap",
        }
    }
}

impl std::fmt::Display for IoKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for IoKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        IoKind::ALL
            .iter()
            .copied()
            .find(|k| k.name() == s)
            .ok_or_else(|| {
                format!("unknown I/O backend {s:?} (expected auto, uring, pread or mmap)")
            })
    }
}

/// One read: `len` bytes at `offset` of file `file` into `dst`.
#[derive(Debug, Clone, Copy)]
pub struct ReadOp {
    /// Index of the file in the model (`GgufModel::files`).
    pub file: usize,
    /// Byte offset in the file (a multiple of the backend's alignment).
    pub offset: u64,
    /// Bytes to read (a multiple of the backend's alignment; may run past the end of file).
    pub len: usize,
    /// Bytes from the start of the range that must exist (`required <= len`); reaching the end
    /// of file before them is [`LoaderError::Truncated`].
    pub required: usize,
    /// Destination: valid for writes of `len` bytes, aligned like `offset`.
    pub dst: NonNull<u8>,
    /// The caller's tag, returned in the [`Completion`].
    pub tag: u64,
}

// SAFETY: a ReadOp is a description; the submitter guarantees (see `ReadBackend::submit`)
// that `dst` stays valid and unaliased until the completion is returned, on whatever thread.
unsafe impl Send for ReadOp {}

/// The result of one [`ReadOp`].
#[derive(Debug)]
pub struct Completion {
    /// The op's tag.
    pub tag: u64,
    /// Bytes read (at least `required`), or why the read failed.
    pub result: Result<usize, LoaderError>,
}

/// An asynchronous reader of model bytes.
///
/// Contract: short reads are continued and `EINTR`/`EAGAIN` retried inside the backend; a
/// completion is either all `required` bytes or an error. Ops may complete in any order.
pub trait ReadBackend: Send {
    /// What this backend is (after `auto` resolved).
    fn kind(&self) -> IoKind;

    /// Alignment `offset`, `len` and `dst` of every op must have (1: none).
    fn alignment(&self) -> usize;

    /// How many ops the backend wants in flight to reach full bandwidth.
    fn queue_depth(&self) -> usize;

    /// Ops submitted and not yet returned by [`ReadBackend::wait`].
    fn in_flight(&self) -> usize;

    /// Queues `op`. An op the backend refuses outright (bad file index, misaligned) may be
    /// an `Err` here or an error completion. (This crate's backends refuse with an `Err`:
    /// [`LoaderError::OutOfRange`], [`LoaderError::Misaligned`],
    /// [`LoaderError::InvalidRequest`], or [`LoaderError::FileChanged`] once a file was found
    /// changed; a refused op is not in flight.)
    ///
    /// # Safety
    /// `op.dst` must be valid for writes of `op.len` bytes and must not be read or written by
    /// anyone else until the op's completion has been returned by [`ReadBackend::wait`] (or
    /// the backend has been dropped: dropping waits for every op in flight).
    unsafe fn submit(&mut self, op: ReadOp) -> Result<(), LoaderError>;

    /// Blocks until at least one op in flight has completed (returns at once when none is in
    /// flight) and appends every completion available to `out`.
    ///
    /// An `Err` means the backend itself failed (an io_uring syscall, the read threads gone),
    /// not one read: ops may still be in flight; drop the backend (which waits for them).
    fn wait(&mut self, out: &mut Vec<Completion>) -> Result<(), LoaderError>;

    /// Registers memory that later ops will read into (io_uring fixed buffers); a no-op for
    /// backends that gain nothing from it. Returns whether the memory was registered.
    ///
    /// # Safety
    /// The regions must stay valid until the backend is dropped.
    unsafe fn register_buffers(&mut self, _regions: &[(NonNull<u8>, usize)]) -> bool {
        false
    }

    /// Whether every read bypasses the page cache (`O_DIRECT` / `F_NOCACHE` in effect on every
    /// file). False for mmap, and where a file system refused `O_DIRECT`.
    fn bypasses_cache(&self) -> bool {
        false
    }
}

/// Options for [`open_backend`](crate::open_backend).
#[derive(Debug, Clone)]
pub struct BackendOptions {
    /// Which backend.
    pub kind: IoKind,
    /// Reads in flight (io_uring queue depth, pread threads); `None`: the backend's default.
    pub queue_depth: Option<usize>,
}

impl Default for BackendOptions {
    fn default() -> Self {
        BackendOptions {
            kind: IoKind::Auto,
            queue_depth: None,
        }
    }
}
