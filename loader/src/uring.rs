//! The io_uring backend (Linux): `O_DIRECT` reads of at most [`BACKEND_CHUNK_BYTES`] each, up to the
//! queue depth of them in the kernel at once, all driven from the calling thread (no worker
//! threads).
//!
//! * Short reads are resubmitted for the rest (from the block boundary below, as `O_DIRECT`
//!   needs), `-EINTR`/`-EAGAIN` resubmitted, any other error ends the op with an error
//!   completion. `-EINVAL` on an `O_DIRECT` file switches that file to buffered reads (see
//!   [`FileSource`]) and resubmits.
//! * [`ReadBackend::register_buffers`] registers the caller's memory as fixed buffers, and
//!   reads landing entirely inside one use `READ_FIXED` (no per-read page pinning). The kernel
//!   counts registered memory against `RLIMIT_MEMLOCK` (unless the process has
//!   `CAP_IPC_LOCK`); when it refuses, plain reads are used.
//! * Dropping the backend waits for every read the kernel holds.

use std::collections::VecDeque;
use std::io;
use std::ptr::NonNull;
use std::sync::Arc;

use flashstream_formats::GgufModel;
use io_uring::{opcode, types, IoUring};

use crate::common::{
    backoff, chunks, Files, OpMeta, OpOutcome, Progress, Step, BACKEND_CHUNK_BYTES,
};
use crate::open::{uring_disabled_by_env, DEFAULT_URING_DEPTH, DISABLE_URING_ENV};
use crate::pool::open_model_files;
use crate::source::{FileSource, ReadSource};
use crate::{BackendOptions, Completion, IoKind, LoaderError, ReadBackend, ReadOp, ALIGN};

/// Largest queue depth accepted.
const MAX_DEPTH: usize = 4096;

/// Largest single registered buffer the kernel accepts (bigger regions are split).
const MAX_FIXED_BUFFER: usize = 1 << 30;

/// Most registered buffers.
const MAX_FIXED_BUFFERS: usize = 1 << 14;

/// One chunk: its progress and the op it belongs to.
struct UChunk {
    op: usize,
    progress: Progress,
    start: u64,
    len: usize,
    /// Start of the current read (set when it is queued to the kernel).
    at: u64,
}

struct UOp {
    meta: OpMeta,
    dst: NonNull<u8>,
    remaining: usize,
    outcome: OpOutcome,
}

/// The io_uring backend.
pub(crate) struct UringBackend {
    ring: IoUring,
    files: Files<FileSource>,
    depth: usize,
    ops: Vec<Option<UOp>>,
    free_ops: Vec<usize>,
    /// Chunks in the kernel, indexed by the SQE's user data.
    slots: Vec<Option<UChunk>>,
    free_slots: Vec<usize>,
    /// Chunks waiting for a free slot.
    pending: VecDeque<UChunk>,
    ready: Vec<(usize, Completion)>,
    in_flight: usize,
    /// Registered buffers: (address, length), index = buffer index.
    fixed: Vec<(usize, usize)>,
}

// SAFETY: the raw destination pointers are the submitter's memory, which `submit`'s contract
// lets the backend write from any thread until the op completes; the ring itself is Send.
unsafe impl Send for UringBackend {}

impl UringBackend {
    pub fn open(model: &GgufModel, opts: &BackendOptions) -> Result<Self, LoaderError> {
        if uring_disabled_by_env() {
            return Err(LoaderError::Unavailable {
                kind: IoKind::Uring,
                reason: format!("disabled by {DISABLE_URING_ENV}"),
            });
        }
        let depth = opts
            .queue_depth
            .unwrap_or(DEFAULT_URING_DEPTH)
            .clamp(1, MAX_DEPTH);
        let ring = IoUring::new(depth as u32).map_err(|e| LoaderError::Unavailable {
            kind: IoKind::Uring,
            reason: format!(
                "io_uring_setup with {depth} entries failed: {e} (old kernel, \
                 kernel.io_uring_disabled, or a seccomp profile)"
            ),
        })?;
        let files = open_model_files(model, true)?;
        let lens = files.iter().map(|f| f.len_at_open()).collect();
        Ok(UringBackend {
            ring,
            files: Files::new(files, lens),
            depth,
            ops: Vec::new(),
            free_ops: Vec::new(),
            slots: (0..depth).map(|_| None).collect(),
            free_slots: (0..depth).rev().collect(),
            pending: VecDeque::new(),
            ready: Vec::new(),
            in_flight: 0,
            fixed: Vec::new(),
        })
    }

    fn in_kernel(&self) -> usize {
        self.depth - self.free_slots.len()
    }

    /// The registered buffer holding `[ptr, ptr + len)`, if any.
    fn fixed_index(&self, ptr: usize, len: usize) -> Option<u16> {
        self.fixed
            .iter()
            .position(|&(a, l)| ptr >= a && ptr + len <= a + l)
            .map(|i| i as u16)
    }

    /// Queues pending chunks into free slots and tells the kernel.
    fn pump(&mut self) -> Result<(), LoaderError> {
        let mut pushed = false;
        while let Some(slot) = self.free_slots.last().copied() {
            let Some(mut c) = self.pending.pop_front() else {
                break;
            };
            let (at, len) = c.progress.next_read();
            c.at = at;
            let op = self.ops[c.op].as_ref().expect("chunk of a live op");
            let fd = types::Fd(self.files.get(op.meta.file).fd());
            // SAFETY: `at` lies in this chunk's part of the op's destination.
            let ptr = unsafe { op.dst.as_ptr().add((at - op.meta.offset) as usize) };
            let entry = match self.fixed_index(ptr as usize, len) {
                Some(i) => opcode::ReadFixed::new(fd, ptr, len as u32, i)
                    .offset(at)
                    .build(),
                None => opcode::Read::new(fd, ptr, len as u32).offset(at).build(),
            }
            .user_data(slot as u64);
            // SAFETY: the destination stays valid until the CQE is reaped (submit's contract,
            // and Drop waits); the SQ has room since fewer than `depth` entries are in use.
            if unsafe { self.ring.submission().push(&entry) }.is_err() {
                self.pending.push_front(c);
                break;
            }
            self.free_slots.pop();
            self.slots[slot] = Some(c);
            pushed = true;
        }
        if pushed {
            self.enter(0)?;
        }
        Ok(())
    }

    /// `io_uring_enter`: submits what is queued and waits for `want` completions; `EINTR`,
    /// `EAGAIN` and `EBUSY` are not errors (the caller goes round again).
    fn enter(&mut self, want: usize) -> Result<(), LoaderError> {
        match self.ring.submit_and_wait(want) {
            Ok(_) => Ok(()),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EINTR) | Some(libc::EAGAIN) | Some(libc::EBUSY)
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(LoaderError::Unavailable {
                kind: IoKind::Uring,
                reason: format!("io_uring_enter failed: {e}"),
            }),
        }
    }

    /// Takes every available CQE and advances its chunk.
    fn reap(&mut self) {
        let cqes: Vec<(u64, i32)> = self
            .ring
            .completion()
            .map(|c| (c.user_data(), c.result()))
            .collect();
        for (ud, res) in cqes {
            let slot = ud as usize;
            let Some(mut c) = self.slots.get_mut(slot).and_then(Option::take) else {
                continue;
            };
            self.free_slots.push(slot);
            let file = self.ops[c.op]
                .as_ref()
                .expect("chunk of a live op")
                .meta
                .file;
            let src = Arc::clone(self.files.get(file));
            let result = if res >= 0 {
                Ok(res as usize)
            } else {
                Err(io::Error::from_raw_os_error(-res))
            };
            if res == -libc::EINVAL && src.disable_direct("io_uring read") {
                self.pending.push_front(c);
                continue;
            }
            match c.progress.on_result(c.at, result, || src.current_len()) {
                Step::Again { backoff: b } if !self.op_failed(c.op) => {
                    if b {
                        backoff();
                    }
                    self.pending.push_front(c);
                }
                step => {
                    src.release(c.start, c.len);
                    let op = self.ops[c.op].as_mut().expect("chunk of a live op");
                    if let Step::Done(end) = step {
                        op.outcome.merge(end);
                    }
                    op.remaining -= 1;
                    if op.outcome.failed() {
                        // Chunks of a failed op still waiting need not be read.
                        let id = c.op;
                        let before = self.pending.len();
                        self.pending.retain(|p| p.op != id);
                        op.remaining -= before - self.pending.len();
                    }
                    if op.remaining == 0 {
                        self.finish_op(c.op);
                    }
                }
            }
        }
    }

    fn op_failed(&self, id: usize) -> bool {
        self.ops[id].as_ref().is_some_and(|o| o.outcome.failed())
    }

    fn finish_op(&mut self, id: usize) {
        if let Some(op) = self.ops[id].take() {
            self.free_ops.push(id);
            let path = self.files.get(op.meta.file).path().to_path_buf();
            let c = op.outcome.finish(&op.meta, &path);
            self.ready.push((op.meta.file, c));
        }
    }
}

impl ReadBackend for UringBackend {
    fn kind(&self) -> IoKind {
        IoKind::Uring
    }

    fn alignment(&self) -> usize {
        ALIGN
    }

    fn queue_depth(&self) -> usize {
        self.depth
    }

    fn in_flight(&self) -> usize {
        self.in_flight
    }

    unsafe fn submit(&mut self, op: ReadOp) -> Result<(), LoaderError> {
        self.files.validate(&op, ALIGN)?;
        let meta = OpMeta::from(&op);
        let n = op.len.div_ceil(BACKEND_CHUNK_BYTES);
        let uop = UOp {
            meta,
            dst: op.dst,
            remaining: n,
            outcome: OpOutcome::default(),
        };
        let id = match self.free_ops.pop() {
            Some(i) => {
                self.ops[i] = Some(uop);
                i
            }
            None => {
                self.ops.push(Some(uop));
                self.ops.len() - 1
            }
        };
        self.in_flight += 1;
        if n == 0 {
            self.finish_op(id);
            return Ok(());
        }
        let align = self.files.get(op.file).read_alignment();
        for (start, len) in chunks(op.offset, op.len) {
            self.pending.push_back(UChunk {
                op: id,
                progress: Progress::new(start, len, align),
                start,
                len,
                at: start,
            });
        }
        // The op is accepted (in flight) whatever happens now: were `io_uring_enter` to fail,
        // its reads may sit in the submission queue, so the caller must keep the memory until
        // `wait` (which enters again and reports the failure) or drop.
        if let Err(e) = self.pump() {
            tracing::debug!(error = %e, "io_uring: submit deferred to wait");
        }
        Ok(())
    }

    fn wait(&mut self, out: &mut Vec<Completion>) -> Result<(), LoaderError> {
        if self.in_flight == 0 {
            return Ok(());
        }
        loop {
            self.reap();
            self.pump()?;
            if !self.ready.is_empty() {
                break;
            }
            if self.in_kernel() == 0 {
                return Err(LoaderError::Unavailable {
                    kind: IoKind::Uring,
                    reason: format!(
                        "{} op(s) in flight but no read in the kernel (internal error)",
                        self.in_flight
                    ),
                });
            }
            self.enter(1)?;
        }
        let mut batch = std::mem::take(&mut self.ready);
        self.files.check_batch(&mut batch);
        self.in_flight -= batch.len();
        out.extend(batch.into_iter().map(|(_, c)| c));
        Ok(())
    }

    unsafe fn register_buffers(&mut self, regions: &[(NonNull<u8>, usize)]) -> bool {
        if !self.fixed.is_empty() {
            if self.in_kernel() > 0 {
                return false;
            }
            if self.ring.submitter().unregister_buffers().is_err() {
                return false;
            }
            self.fixed.clear();
        }
        let mut table = Vec::new();
        for &(ptr, len) in regions {
            let mut a = ptr.as_ptr() as usize;
            let mut left = len;
            while left > 0 {
                let n = left.min(MAX_FIXED_BUFFER);
                table.push((a, n));
                a += n;
                left -= n;
            }
        }
        if table.is_empty() || table.len() > MAX_FIXED_BUFFERS {
            return false;
        }
        let iovecs: Vec<libc::iovec> = table
            .iter()
            .map(|&(a, n)| libc::iovec {
                iov_base: a as *mut libc::c_void,
                iov_len: n,
            })
            .collect();
        // SAFETY: the caller keeps the regions valid until the backend is dropped.
        match unsafe { self.ring.submitter().register_buffers(&iovecs) } {
            Ok(()) => {
                tracing::debug!(
                    buffers = table.len(),
                    bytes = table.iter().map(|t| t.1).sum::<usize>(),
                    "io_uring: fixed buffers registered (READ_FIXED)"
                );
                self.fixed = table;
                true
            }
            Err(e) => {
                tracing::debug!(
                    error = %e,
                    memlock_limit = ?memlock_limit(),
                    "io_uring: buffers not registered (RLIMIT_MEMLOCK?): plain reads"
                );
                false
            }
        }
    }

    fn bypasses_cache(&self) -> bool {
        self.files.all_bypass_cache()
    }
}

/// The soft `RLIMIT_MEMLOCK` in bytes (`None`: unlimited or unknown).
fn memlock_limit() -> Option<libc::rlim_t> {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct we pass.
    let ok = unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut r) } == 0;
    (ok && r.rlim_cur != libc::RLIM_INFINITY).then_some(r.rlim_cur)
}

impl Drop for UringBackend {
    fn drop(&mut self) {
        // Chunks not yet in the kernel are simply forgotten; the kernel's must land first.
        self.pending.clear();
        let mut logged = false;
        loop {
            let cqes: Vec<u64> = self.ring.completion().map(|c| c.user_data()).collect();
            for ud in cqes {
                if let Some(s) = self.slots.get_mut(ud as usize) {
                    if s.take().is_some() {
                        self.free_slots.push(ud as usize);
                    }
                }
            }
            // Entries still in the submission queue were never seen by the kernel: they go
            // away with the ring.
            let unsubmitted = self.ring.submission().len();
            if self.in_kernel() <= unsubmitted {
                break;
            }
            if let Err(e) = self.enter(1) {
                if !logged {
                    tracing::debug!(error = %e, "io_uring: waiting for reads in flight");
                    logged = true;
                }
                // Completions still arrive without a working enter (task work runs on any
                // return to user space): poll.
                backoff();
            }
        }
    }
}
