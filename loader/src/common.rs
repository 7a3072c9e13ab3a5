//! What every backend shares: the open files with their checks, op validation, and the state
//! machine that turns single reads (short, interrupted, failed) into a chunk's outcome.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use crate::source::ReadSource;
use crate::{Completion, LoaderError, ReadOp};

/// Most bytes one read of a backend (the pread pool or the io_uring ring) covers: the backends
/// split bigger ops into chunks of this size (not to be confused with the scheduler's
/// `SOURCE_READ_BYTES`, the largest op the streaming source submits) (a multiple of every supported alignment) so several are in flight at once.
pub const BACKEND_CHUNK_BYTES: usize = 2 << 20;

/// Consecutive attempts of a chunk that make no progress (`EINTR`, `EAGAIN`, an empty read
/// before the end of the file) before it fails. `EINTR` is retried at once; the others wait a
/// millisecond per attempt after the first hundred, so a source stuck on `EAGAIN` fails after
/// about ten seconds.
pub(crate) const MAX_STALLS: u32 = 10_000;

/// Stalls after which a retry waits a millisecond instead of going again at once.
const STALLS_BEFORE_BACKOFF: u32 = 100;

/// The part of a [`ReadOp`] a backend keeps.
#[derive(Debug, Clone, Copy)]
pub(crate) struct OpMeta {
    pub file: usize,
    pub offset: u64,
    pub len: usize,
    pub required: usize,
    pub tag: u64,
}

impl From<&ReadOp> for OpMeta {
    fn from(op: &ReadOp) -> Self {
        OpMeta {
            file: op.file,
            offset: op.offset,
            len: op.len,
            required: op.required,
            tag: op.tag,
        }
    }
}

/// The chunks of an op: `(file offset, length)`, each at most `BACKEND_CHUNK_BYTES`.
pub(crate) fn chunks(offset: u64, len: usize) -> impl Iterator<Item = (u64, usize)> {
    (0..len)
        .step_by(BACKEND_CHUNK_BYTES)
        .map(move |s| (offset + s as u64, (len - s).min(BACKEND_CHUNK_BYTES)))
}

/// The open files of a backend, their lengths at open, and which were found changed.
pub(crate) struct Files<S: ?Sized> {
    sources: Vec<Arc<S>>,
    lens: Vec<u64>,
    changed: Vec<Option<String>>,
}

impl<S: ReadSource + ?Sized> Files<S> {
    /// `lens`: the length each file is expected to have (its length when opened).
    pub fn new(sources: Vec<Arc<S>>, lens: Vec<u64>) -> Self {
        let changed = vec![None; sources.len()];
        Files {
            sources,
            lens,
            changed,
        }
    }

    pub fn get(&self, i: usize) -> &Arc<S> {
        &self.sources[i]
    }

    pub fn all_bypass_cache(&self) -> bool {
        self.sources.iter().all(|s| s.bypasses_cache())
    }

    /// Checks an op before it is queued: known file not found changed, `required <= len`, no
    /// overflow, aligned offset/len/dst, and the required bytes inside the file as opened.
    pub fn validate(&self, op: &ReadOp, alignment: usize) -> Result<(), LoaderError> {
        let out_of_range = |reason: String| LoaderError::OutOfRange {
            file: op.file,
            offset: op.offset,
            len: op.len as u64,
            reason,
        };
        let Some(src) = self.sources.get(op.file) else {
            return Err(out_of_range(format!(
                "the backend has {} file(s)",
                self.sources.len()
            )));
        };
        if let Some(what) = &self.changed[op.file] {
            return Err(LoaderError::FileChanged {
                path: src.path().to_path_buf(),
                what: what.clone(),
            });
        }
        if op.required > op.len {
            return Err(LoaderError::InvalidRequest(format!(
                "read of file #{} at {}: required ({}) exceeds len ({})",
                op.file, op.offset, op.required, op.len
            )));
        }
        if op.len > isize::MAX as usize || op.offset.checked_add(op.len as u64).is_none() {
            return Err(out_of_range("offset + len overflows".into()));
        }
        let a = alignment as u64;
        if !op.offset.is_multiple_of(a)
            || !op.len.is_multiple_of(alignment)
            || !(op.dst.as_ptr() as usize).is_multiple_of(alignment)
        {
            return Err(LoaderError::Misaligned {
                file: op.file,
                offset: op.offset,
                len: op.len,
                dst: op.dst.as_ptr() as usize,
                alignment,
            });
        }
        let file_len = self.lens[op.file];
        if op.offset + op.required as u64 > file_len {
            return Err(out_of_range(format!(
                "{} has {file_len} bytes, the read requires {} of them from offset {}",
                src.path().display(),
                op.required,
                op.offset
            )));
        }
        Ok(())
    }

    /// The once-per-`wait` check that files are still the ones opened: every file with a
    /// completion in `batch` is checked (one `fstat` of the open file, one `stat` of its path);
    /// a changed file turns this batch's successful completions on it into
    /// [`LoaderError::FileChanged`], and refuses later ops.
    pub fn check_batch(&mut self, batch: &mut [(usize, Completion)]) {
        let mut checked: Vec<usize> = Vec::new();
        for (file, _) in batch.iter() {
            if !checked.contains(file) {
                checked.push(*file);
            }
        }
        for &f in &checked {
            if self.changed[f].is_none() {
                if let Err(what) = self.sources[f].check_unchanged() {
                    tracing::debug!(path = %self.sources[f].path().display(), %what, "model file changed while open");
                    self.changed[f] = Some(what);
                }
            }
        }
        for (file, c) in batch.iter_mut() {
            if let (Some(what), Ok(_)) = (&self.changed[*file], &c.result) {
                c.result = Err(LoaderError::FileChanged {
                    path: self.sources[*file].path().to_path_buf(),
                    what: what.clone(),
                });
            }
        }
    }
}

/// How a chunk ended.
#[derive(Debug)]
pub(crate) enum ChunkEnd {
    /// Every byte of the chunk was read.
    Full,
    /// The file ended at this offset, inside the chunk.
    Eof(u64),
    /// A read failed.
    Failed(io::Error),
}

/// What to do after one read of a chunk.
#[derive(Debug)]
pub(crate) enum Step {
    /// Read again (see [`Progress::next_read`]); `backoff`: wait a little first.
    Again { backoff: bool },
    /// The chunk is finished.
    Done(ChunkEnd),
}

/// The progress of one chunk `[start, end)`: bytes `[start, pos)` are in the destination.
#[derive(Debug, Clone)]
pub(crate) struct Progress {
    pos: u64,
    end: u64,
    align: u64,
    stalls: u32,
}

impl Progress {
    /// `align`: the read alignment of the source (`end` and `start` are multiples of it).
    pub fn new(start: u64, len: usize, align: usize) -> Self {
        Progress {
            pos: start,
            end: start + len as u64,
            align: align.max(1) as u64,
            stalls: 0,
        }
    }

    /// The next read: from `pos` rounded down to the alignment, to the chunk's end.
    pub fn next_read(&self) -> (u64, usize) {
        let at = self.pos - self.pos % self.align;
        (at, (self.end - at) as usize)
    }

    /// A read without progress; `may_wait`: retry after a backoff once stalls pile up
    /// (`EAGAIN`, empty reads), not for `EINTR`.
    fn stall(&mut self, may_wait: bool, why: impl FnOnce() -> String) -> Step {
        self.stalls += 1;
        if self.stalls > MAX_STALLS {
            return Step::Done(ChunkEnd::Failed(io::Error::other(format!(
                "no progress at offset {} after {MAX_STALLS} attempts ({})",
                self.pos,
                why()
            ))));
        }
        Step::Again {
            backoff: may_wait && self.stalls > STALLS_BEFORE_BACKOFF,
        }
    }

    /// Feeds the result of the read [`Progress::next_read`] asked for (at offset `at`).
    /// `current_len` is asked (once) only when a read made no progress, to tell the end of
    /// the file from a short read.
    pub fn on_result(
        &mut self,
        at: u64,
        result: io::Result<usize>,
        current_len: impl FnOnce() -> io::Result<u64>,
    ) -> Step {
        let n = match result {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                return self.stall(false, || e.to_string())
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                return self.stall(true, || e.to_string())
            }
            Err(e) => return Step::Done(ChunkEnd::Failed(e)),
        };
        let reached = (at + n as u64).min(self.end);
        if reached > self.pos {
            self.pos = reached;
            self.stalls = 0;
            if self.pos >= self.end {
                return Step::Done(ChunkEnd::Full);
            }
            if !self.pos.is_multiple_of(self.align) {
                // A direct read that stopped off a block boundary has almost surely hit the
                // end of the file: one fstat instead of a reread to confirm it.
                match current_len() {
                    Ok(len) if len <= self.pos => return Step::Done(ChunkEnd::Eof(len)),
                    Ok(_) => {}
                    Err(e) => return Step::Done(ChunkEnd::Failed(e)),
                }
            }
            return Step::Again { backoff: false };
        }
        // No new bytes: the end of the file, unless the file says it goes on.
        match current_len() {
            Ok(len) if len > self.pos => self.stall(true, || {
                format!("reads return no data although the file has {len} bytes")
            }),
            // A reread from the block boundary may come back shorter than what was already
            // read (a short read, not the end): the file ends at `pos`, or earlier if it shrank.
            Ok(len) => Step::Done(ChunkEnd::Eof(len.min(self.pos))),
            Err(e) => Step::Done(ChunkEnd::Failed(e)),
        }
    }
}

/// Sleeps for a retry that asked for a backoff.
pub(crate) fn backoff() {
    std::thread::sleep(Duration::from_millis(1));
}

/// The merged outcome of an op's chunks.
#[derive(Debug, Default)]
pub(crate) struct OpOutcome {
    eof: Option<u64>,
    error: Option<io::Error>,
}

impl OpOutcome {
    pub fn merge(&mut self, end: ChunkEnd) {
        match end {
            ChunkEnd::Full => {}
            ChunkEnd::Eof(at) => self.eof = Some(self.eof.map_or(at, |e| e.min(at))),
            ChunkEnd::Failed(e) => {
                self.error.get_or_insert(e);
            }
        }
    }

    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    pub fn failed(&self) -> bool {
        self.error.is_some()
    }

    /// The completion: the first error; else [`LoaderError::Truncated`] if the file ended
    /// before `required`; else the bytes read up to the end of the op or of the file.
    pub fn finish(self, op: &OpMeta, path: &std::path::Path) -> Completion {
        let result = if let Some(source) = self.error {
            Err(LoaderError::Io {
                path: path.to_path_buf(),
                source,
            })
        } else {
            let n = self.eof.map_or(op.len, |e| {
                (e.saturating_sub(op.offset) as usize).min(op.len)
            });
            if n < op.required {
                Err(LoaderError::Truncated {
                    path: path.to_path_buf(),
                    offset: op.offset,
                    required: op.required as u64,
                    file_len: self.eof.unwrap_or(op.offset + n as u64),
                })
            } else {
                Ok(n)
            }
        };
        Completion {
            tag: op.tag,
            result,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eintr() -> io::Result<usize> {
        Err(io::Error::from(io::ErrorKind::Interrupted))
    }

    #[test]
    fn chunks_cover_the_op() {
        let v: Vec<_> = chunks(4096, 2 * BACKEND_CHUNK_BYTES + 8192).collect();
        assert_eq!(
            v,
            vec![
                (4096, BACKEND_CHUNK_BYTES),
                (4096 + BACKEND_CHUNK_BYTES as u64, BACKEND_CHUNK_BYTES),
                (4096 + 2 * BACKEND_CHUNK_BYTES as u64, 8192)
            ]
        );
        assert_eq!(chunks(0, 0).count(), 0);
    }

    #[test]
    fn short_reads_continue_and_eof_is_found() {
        let mut p = Progress::new(0, 8192, 1);
        assert_eq!(p.next_read(), (0, 8192));
        assert!(matches!(
            p.on_result(0, Ok(100), || unreachable!()),
            Step::Again { backoff: false }
        ));
        assert_eq!(p.next_read(), (100, 8092));
        assert!(matches!(
            p.on_result(100, eintr(), || unreachable!()),
            Step::Again { .. }
        ));
        assert!(matches!(
            p.on_result(100, Ok(0), || Ok(100)),
            Step::Done(ChunkEnd::Eof(100))
        ));
    }

    #[test]
    fn aligned_continuation_rereads_from_the_block_start() {
        let mut p = Progress::new(4096, 8192, 4096);
        assert!(matches!(
            p.on_result(4096, Ok(1000), || Ok(1 << 20)),
            Step::Again { .. }
        ));
        assert_eq!(p.next_read(), (4096, 8192));
        assert!(matches!(
            p.on_result(4096, Ok(8192), || unreachable!()),
            Step::Done(ChunkEnd::Full)
        ));
        // A short read at the end of the file is confirmed by the length.
        let mut p = Progress::new(0, 8192, 4096);
        assert!(matches!(
            p.on_result(0, Ok(5000), || Ok(5000)),
            Step::Done(ChunkEnd::Eof(5000))
        ));
        // Where the length says there is more: a reread, which returns nothing new.
        let mut p = Progress::new(0, 8192, 4096);
        p.on_result(0, Ok(5000), || Ok(6000));
        assert!(matches!(
            p.on_result(4096, Ok(904), || Ok(5000)),
            Step::Done(ChunkEnd::Eof(5000))
        ));
        // The reread itself short: still the end at 5000, not where the reread stopped.
        let mut p = Progress::new(0, 8192, 4096);
        p.on_result(0, Ok(5000), || Ok(6000));
        assert!(matches!(
            p.on_result(4096, Ok(10), || Ok(5000)),
            Step::Done(ChunkEnd::Eof(5000))
        ));
        // The file shrank meanwhile: it ends where it ends now.
        let mut p = Progress::new(0, 8192, 4096);
        p.on_result(0, Ok(5000), || Ok(6000));
        assert!(matches!(
            p.on_result(4096, Ok(10), || Ok(4106)),
            Step::Done(ChunkEnd::Eof(4106))
        ));
    }

    #[test]
    fn endless_stalls_fail() {
        let mut p = Progress::new(0, 4096, 1);
        let mut last = None;
        for i in 0..=MAX_STALLS {
            let step = p.on_result(0, Ok(0), || Ok(1 << 20));
            if i > STALLS_BEFORE_BACKOFF && i < MAX_STALLS {
                assert!(matches!(step, Step::Again { backoff: true }), "{step:?}");
            }
            last = Some(step);
        }
        let Some(Step::Done(ChunkEnd::Failed(e))) = last else {
            panic!("{last:?}")
        };
        assert!(e.to_string().contains("no progress"), "{e}");
    }

    #[test]
    fn outcome_truncated_and_ok() {
        let op = OpMeta {
            file: 0,
            offset: 4096,
            len: 8192,
            required: 5000,
            tag: 7,
        };
        let mut o = OpOutcome::default();
        o.merge(ChunkEnd::Eof(4096 + 6000));
        let c = o.finish(&op, "f".as_ref());
        assert_eq!((c.tag, c.result.unwrap()), (7, 6000));
        let mut o = OpOutcome::default();
        o.merge(ChunkEnd::Eof(4096 + 4000));
        let c = o.finish(&op, "f".as_ref());
        assert!(
            matches!(c.result, Err(LoaderError::Truncated { file_len: 8096, .. })),
            "{:?}",
            c.result
        );
    }
}
