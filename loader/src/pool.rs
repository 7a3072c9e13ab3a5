//! The thread-pool backends: N worker threads doing positional reads through a
//! [`ReadSource`] (the pread backend over [`FileSource`]s, the mmap backend over maps).
//!
//! An op is split into chunks of at most [`BACKEND_CHUNK_BYTES`] that go into one queue, so a big op
//! keeps several threads (and device queues) busy. The thread finishing an op's last chunk
//! sends its completion; [`ReadBackend::wait`] collects completions and checks once per batch
//! that the files touched are still the ones opened (see `Files::check_batch`).

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;

use flashstream_formats::GgufModel;

use crate::common::{
    backoff, chunks, ChunkEnd, Files, OpMeta, OpOutcome, Progress, Step, BACKEND_CHUNK_BYTES,
};
use crate::source::{FileSource, ReadSource};
use crate::{BackendOptions, Completion, IoKind, LoaderError, ReadBackend, ReadOp, ALIGN};

/// Default number of pread threads.
pub const DEFAULT_PREAD_THREADS: usize = 8;

/// Most threads a pool starts.
const MAX_THREADS: usize = 256;

/// A destination pointer that may cross threads (see `ReadBackend::submit`'s contract).
#[derive(Clone, Copy)]
struct Dst(NonNull<u8>);
// SAFETY: the submitter guarantees the memory stays valid and unaliased until the op
// completes; each chunk writes only its own byte range, and the pointer itself is only copied.
unsafe impl Send for Dst {}
// SAFETY: as above; sharing the pointer value between threads reads nothing through it.
unsafe impl Sync for Dst {}

struct OpShared {
    meta: OpMeta,
    dst: Dst,
    source: Arc<dyn ReadSource>,
    remaining: AtomicUsize,
    failed: AtomicBool,
    outcome: Mutex<OpOutcome>,
}

struct Chunk {
    op: Arc<OpShared>,
    start: u64,
    len: usize,
}

#[derive(Default)]
struct Queue {
    chunks: VecDeque<Chunk>,
    shutdown: bool,
}

#[derive(Default)]
struct Shared {
    queue: Mutex<Queue>,
    cv: Condvar,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding these locks leaves consistent data (plain pushes and pops).
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The engine of the pread and mmap backends.
pub(crate) struct Pool {
    kind: IoKind,
    alignment: usize,
    files: Files<dyn ReadSource>,
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
    rx: Receiver<(usize, Completion)>,
    ready: Vec<(usize, Completion)>,
    in_flight: usize,
}

impl Pool {
    /// `lens`: the expected length of each file; `alignment` must be a power of two, at most
    /// [`BACKEND_CHUNK_BYTES`] and a multiple of every source's read alignment.
    pub fn new(
        kind: IoKind,
        sources: Vec<Arc<dyn ReadSource>>,
        lens: Vec<u64>,
        threads: usize,
        alignment: usize,
    ) -> Result<Self, LoaderError> {
        if !alignment.is_power_of_two() || alignment > BACKEND_CHUNK_BYTES {
            return Err(LoaderError::InvalidRequest(format!(
                "alignment {alignment} must be a power of two of at most {BACKEND_CHUNK_BYTES}"
            )));
        }
        for s in &sources {
            let a = s.read_alignment().max(1);
            if !alignment.is_multiple_of(a) {
                return Err(LoaderError::InvalidRequest(format!(
                    "{} needs reads aligned to {a} bytes, more than the backend's {alignment}",
                    s.path().display()
                )));
            }
        }
        let n = threads.clamp(1, MAX_THREADS);
        let shared = Arc::new(Shared::default());
        let (tx, rx) = mpsc::channel();
        let mut handles = Vec::with_capacity(n);
        for i in 0..n {
            let (sh, tx) = (Arc::clone(&shared), tx.clone());
            let spawned = std::thread::Builder::new()
                .name(format!("fs-{}-{i}", kind.name()))
                .spawn(move || worker(&sh, &tx));
            match spawned {
                Ok(h) => handles.push(h),
                Err(source) => {
                    stop(&shared, &mut handles);
                    return Err(LoaderError::Unavailable {
                        kind,
                        reason: format!("cannot start read thread {i} of {n}: {source}"),
                    });
                }
            }
        }
        Ok(Pool {
            kind,
            alignment,
            files: Files::new(sources, lens),
            shared,
            threads: handles,
            rx,
            ready: Vec::new(),
            in_flight: 0,
        })
    }

    fn submit(&mut self, op: ReadOp) -> Result<(), LoaderError> {
        self.files.validate(&op, self.alignment)?;
        let meta = OpMeta::from(&op);
        let source = Arc::clone(self.files.get(op.file));
        if op.len == 0 {
            let c = OpOutcome::default().finish(&meta, source.path());
            self.ready.push((op.file, c));
            self.in_flight += 1;
            return Ok(());
        }
        source.will_need(op.offset, op.len);
        let n = op.len.div_ceil(BACKEND_CHUNK_BYTES);
        let shared = Arc::new(OpShared {
            meta,
            dst: Dst(op.dst),
            source,
            remaining: AtomicUsize::new(n),
            failed: AtomicBool::new(false),
            outcome: Mutex::new(OpOutcome::default()),
        });
        {
            let mut q = lock(&self.shared.queue);
            for (start, len) in chunks(op.offset, op.len) {
                q.chunks.push_back(Chunk {
                    op: Arc::clone(&shared),
                    start,
                    len,
                });
            }
        }
        if n == 1 {
            self.shared.cv.notify_one();
        } else {
            self.shared.cv.notify_all();
        }
        self.in_flight += 1;
        Ok(())
    }

    fn wait(&mut self, out: &mut Vec<Completion>) -> Result<(), LoaderError> {
        if self.in_flight == 0 {
            return Ok(());
        }
        let mut batch = std::mem::take(&mut self.ready);
        if batch.is_empty() {
            match self.rx.recv() {
                Ok(c) => batch.push(c),
                Err(_) => {
                    return Err(LoaderError::Unavailable {
                        kind: self.kind,
                        reason: "every read thread has exited".into(),
                    })
                }
            }
        }
        batch.extend(self.rx.try_iter());
        self.files.check_batch(&mut batch);
        self.in_flight -= batch.len();
        out.extend(batch.into_iter().map(|(_, c)| c));
        Ok(())
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        stop(&self.shared, &mut self.threads);
    }
}

/// Drops the queued chunks (no thread has touched their memory), lets the threads finish the
/// chunks they are reading, and joins them.
fn stop(shared: &Shared, threads: &mut Vec<JoinHandle<()>>) {
    {
        let mut q = lock(&shared.queue);
        q.shutdown = true;
        q.chunks.clear();
    }
    shared.cv.notify_all();
    for h in threads.drain(..) {
        // A worker cannot panic outside catch_unwind; nothing to report if it did.
        let _ = h.join();
    }
}

fn worker(shared: &Shared, tx: &Sender<(usize, Completion)>) {
    loop {
        let chunk = {
            let mut q = lock(&shared.queue);
            loop {
                if q.shutdown {
                    return;
                }
                if let Some(c) = q.chunks.pop_front() {
                    break c;
                }
                q = shared.cv.wait(q).unwrap_or_else(PoisonError::into_inner);
            }
        };
        let op = &chunk.op;
        if !op.failed.load(Ordering::Relaxed) {
            let end = catch_unwind(AssertUnwindSafe(|| read_chunk(&chunk))).unwrap_or_else(|_| {
                ChunkEnd::Failed(std::io::Error::other("a read thread panicked"))
            });
            if matches!(end, ChunkEnd::Failed(_)) {
                op.failed.store(true, Ordering::Relaxed);
            }
            lock(&op.outcome).merge(end);
        }
        if op.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            let outcome = std::mem::take(&mut *lock(&op.outcome));
            let c = outcome.finish(&op.meta, op.source.path());
            // The receiver lives until every worker is joined.
            let _ = tx.send((op.meta.file, c));
        }
    }
}

fn read_chunk(chunk: &Chunk) -> ChunkEnd {
    let op = &chunk.op;
    let src = &*op.source;
    let mut p = Progress::new(chunk.start, chunk.len, src.read_alignment());
    let end = loop {
        let (at, len) = p.next_read();
        let rel = (at - op.meta.offset) as usize;
        // SAFETY: [rel, rel + len) lies inside this chunk's part of the op's destination
        // (`at` is at or after the chunk's start, the read ends at the chunk's end), which the
        // submitter keeps valid and which no other chunk writes.
        let buf = unsafe {
            std::slice::from_raw_parts_mut(
                op.dst
                    .0
                    .as_ptr()
                    .add(rel)
                    .cast::<std::mem::MaybeUninit<u8>>(),
                len,
            )
        };
        let r = src.read_at(buf, at);
        match p.on_result(at, r, || src.current_len()) {
            Step::Again { backoff: true } => backoff(),
            Step::Again { backoff: false } => {}
            Step::Done(end) => break end,
        }
    };
    src.release(chunk.start, chunk.len);
    end
}

/// The pread backend: a pool of threads doing positional reads, `O_DIRECT` on Linux
/// (buffered + `posix_fadvise(DONTNEED)` where the file system refuses it), `F_NOCACHE` +
/// `F_RDADVISE` on Apple. Works everywhere; ops are split into chunks of [`BACKEND_CHUNK_BYTES`].
///
/// (The mmap backend is this type over map sources; its [`ReadBackend::kind`] says
/// [`IoKind::Mmap`].)
pub struct PreadBackend {
    pool: Pool,
}

impl PreadBackend {
    pub(crate) fn from_pool(pool: Pool) -> Self {
        PreadBackend { pool }
    }

    /// Opens every file of `model` (uncached where possible) and starts
    /// `opts.queue_depth` (default [`DEFAULT_PREAD_THREADS`]) threads. A file whose length
    /// differs from the parsed model's is an error.
    pub fn open(model: &GgufModel, opts: &BackendOptions) -> Result<Self, LoaderError> {
        let files = open_model_files(model, true)?;
        let lens = files.iter().map(|f| f.len_at_open()).collect();
        let sources = files
            .into_iter()
            .map(|f| f as Arc<dyn ReadSource>)
            .collect();
        let threads = opts.queue_depth.unwrap_or(DEFAULT_PREAD_THREADS);
        Ok(PreadBackend {
            pool: Pool::new(IoKind::Pread, sources, lens, threads, ALIGN)?,
        })
    }

    /// A pread backend over caller-provided sources (file `i` of ops is `sources[i]`), e.g. a
    /// fault-injecting wrapper of a [`FileSource`] in tests. `alignment` is what ops must
    /// have ([`ReadBackend::alignment`]): a power of two, at most [`BACKEND_CHUNK_BYTES`], a multiple
    /// of every source's [`ReadSource::read_alignment`]. Each source's length is taken now.
    pub fn from_sources(
        sources: Vec<Arc<dyn ReadSource>>,
        threads: usize,
        alignment: usize,
    ) -> Result<Self, LoaderError> {
        let lens = sources
            .iter()
            .map(|s| {
                s.current_len().map_err(|source| LoaderError::Io {
                    path: s.path().to_path_buf(),
                    source,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(PreadBackend {
            pool: Pool::new(IoKind::Pread, sources, lens, threads, alignment)?,
        })
    }
}

impl ReadBackend for PreadBackend {
    fn kind(&self) -> IoKind {
        self.pool.kind
    }
    fn alignment(&self) -> usize {
        self.pool.alignment
    }
    fn queue_depth(&self) -> usize {
        self.pool.threads.len()
    }
    fn in_flight(&self) -> usize {
        self.pool.in_flight
    }
    unsafe fn submit(&mut self, op: ReadOp) -> Result<(), LoaderError> {
        self.pool.submit(op)
    }
    fn wait(&mut self, out: &mut Vec<Completion>) -> Result<(), LoaderError> {
        self.pool.wait(out)
    }
    fn bypasses_cache(&self) -> bool {
        self.pool.files.all_bypass_cache()
    }
}

/// Opens every file of `model` and checks each has the length it was parsed with (shorter:
/// [`LoaderError::Truncated`]; longer: [`LoaderError::FileChanged`]).
pub(crate) fn open_model_files(
    model: &GgufModel,
    uncached: bool,
) -> Result<Vec<Arc<FileSource>>, LoaderError> {
    let mut out = Vec::with_capacity(model.files.len());
    for f in &model.files {
        let src = FileSource::open(&f.path, uncached)?;
        let len = src.len_at_open();
        if len < f.len {
            return Err(LoaderError::Truncated {
                path: f.path.clone(),
                offset: 0,
                required: f.len,
                file_len: len,
            });
        }
        if len != f.len {
            return Err(LoaderError::FileChanged {
                path: f.path.clone(),
                what: format!("it has {len} bytes, {} when the model was parsed", f.len),
            });
        }
        out.push(Arc::new(src));
    }
    Ok(out)
}
