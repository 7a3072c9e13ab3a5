//! The I/O thread: turns the slot state into reads, keeps the backend's queue full (urgent
//! reads first), and applies completions; and the blocking read of the pinned units.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use flashstream_loader::{Completion, ReadBackend, ReadOp};

use super::residency::{Region, Static};
use super::state::{CacheSlot, Origin, RingSlot, Shared, State};
use super::ReadFailure;
use crate::layout::UnitLayout;
use crate::trace::{ArgValue, Track};
use crate::{SchedulerError, UnitId, UnitTable};

#[derive(Debug, Clone, Copy)]
pub(super) enum Target {
    Ring { slot: usize, seq: u64 },
    Cache { slot: usize },
    Rows,
}

/// The reads of `layout` into `region`, in chunks of at most `chunk` bytes.
pub(super) fn unit_ops(
    layout: &UnitLayout,
    region: Region,
    chunk: u64,
    tag: u64,
    out: &mut Vec<ReadOp>,
) {
    for e in &layout.extents {
        let mut at = 0;
        while at < e.len {
            let len = chunk.min(e.len - at);
            out.push(ReadOp {
                file: e.file,
                offset: e.offset + at,
                len: len as usize,
                required: e.required.saturating_sub(at).min(len) as usize,
                dst: region.at(e.buf_offset + at),
                tag,
            });
            at += len;
        }
    }
}

/// Reads `ops` to completion with as many in flight as the backend wants; returns bytes read.
pub(super) fn read_all(
    backend: &mut dyn ReadBackend,
    ops: &[ReadOp],
    units: &UnitTable,
    progress: &mut dyn FnMut(u64, u64) -> bool,
) -> Result<u64, SchedulerError> {
    let total: u64 = ops.iter().map(|o| o.len as u64).sum();
    if !progress(0, total) {
        return Err(SchedulerError::Cancelled);
    }
    let qd = backend.queue_depth().max(1);
    let mut next = 0;
    let mut bytes = 0u64;
    let mut comps = Vec::new();
    let mut first_err: Option<SchedulerError> = None;
    while next < ops.len() || backend.in_flight() > 0 {
        while first_err.is_none() && next < ops.len() && backend.in_flight() < qd {
            // SAFETY: every op points into a distinct region of a buffer the caller owns and
            // does not touch until this function returns (which waits for every op).
            if let Err(e) = unsafe { backend.submit(ops[next]) } {
                first_err = Some(e.into());
            }
            next += 1;
        }
        if first_err.is_some() && backend.in_flight() == 0 {
            break;
        }
        backend.wait(&mut comps)?;
        for c in comps.drain(..) {
            match c.result {
                Ok(n) => bytes += n as u64,
                Err(e) => {
                    if first_err.is_none() {
                        let unit = units.iter().nth(c.tag as usize).map(|u| u.id);
                        first_err = Some(SchedulerError::ReadFailed(ReadFailure::Read {
                            what: format!("{unit:?}"),
                            source: Arc::new(e),
                        }));
                    }
                }
            }
        }
        if first_err.is_none() && !progress(bytes.min(total), total) {
            first_err = Some(SchedulerError::Cancelled);
        }
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(bytes),
    }
}

/// Turns the state into reads: rows first, then expert misses, then the ring, then
/// predictions.
pub(super) fn plan_work(
    s: &Static,
    st: &mut State,
    slab: &mut Slab,
    urgent: &mut VecDeque<ReadOp>,
    background: &mut VecDeque<ReadOp>,
) {
    let mut ops = Vec::new();
    if let Some(job) = st.rows.as_mut() {
        if !job.issued {
            job.issued = true;
            let tag = slab.insert(Target::Rows);
            for mut op in job.ops.drain(..) {
                op.tag = tag;
                urgent.push_back(op);
            }
            slab.add_refs(tag, job.outstanding);
        }
    }
    if let Some(id) = st.urgent {
        if !st.cache_of.contains_key(&id) {
            if let Some(slot) = st.victim(2) {
                start_expert(s, st, slab, slot, id, Origin::Demanded, &mut ops);
                urgent.extend(ops.drain(..));
            }
        }
    }
    while let Some(&id) = st.demand.front() {
        if st.cache_of.contains_key(&id) {
            st.demand.pop_front();
            continue;
        }
        let Some(slot) = st.victim(1) else { break };
        st.demand.pop_front();
        let epoch = st.epoch;
        start_expert(s, st, slab, slot, id, Origin::Demanded, &mut ops);
        st.cache[slot].protect = epoch;
        urgent.extend(ops.drain(..));
    }
    let n = st.ring.len() as u64;
    while n > 0 && !s.cycle.is_empty() && st.next_read < st.next_lease + n {
        let seq = st.next_read;
        let slot = (seq % n) as usize;
        if !st.ring_slot_free(slot) {
            break;
        }
        let id = s.cycle[(seq % s.cycle.len() as u64) as usize];
        let Some(pos) = s.units.position(id) else {
            break;
        };
        let tag = slab.insert(Target::Ring { slot, seq });
        unit_ops(&s.layouts[pos], s.ring[slot], s.chunk, tag, &mut ops);
        slab.add_refs(tag, ops.len());
        st.ring[slot] = RingSlot {
            seq: Some(seq),
            loading: ops.len(),
            ready: ops.is_empty(),
            leases: 0,
        };
        st.next_read += 1;
        background.extend(ops.drain(..));
    }
    while let Some(&id) = st.predicted.front() {
        if st.cache_of.contains_key(&id) {
            st.predicted.pop_front();
            continue;
        }
        let UnitId::Expert { layer, .. } = id else {
            st.predicted.pop_front();
            continue;
        };
        let Some(slot) = st.prediction_victim(layer) else {
            break;
        };
        st.predicted.pop_front();
        let epoch = st.epoch;
        start_expert(s, st, slab, slot, id, Origin::Predicted, &mut ops);
        st.cache[slot].protect = epoch;
        st.stats.prefetch_issued += 1;
        background.extend(ops.drain(..));
    }
}

pub(super) fn start_expert(
    s: &Static,
    st: &mut State,
    slab: &mut Slab,
    slot: usize,
    id: UnitId,
    origin: Origin,
    ops: &mut Vec<ReadOp>,
) {
    if let Some(old) = st.cache[slot].unit.take() {
        st.cache_of.remove(&old);
        match st.cache[slot].origin {
            Origin::Predicted => {
                st.stats.prefetch_wasted += 1;
                st.guess_use_rate *= 0.95;
            }
            Origin::Demanded => st.stats.expert_evicted_unused += 1,
            Origin::Used => {}
        }
    }
    let Some(pos) = s.units.position(id) else {
        return;
    };
    let tag = slab.insert(Target::Cache { slot });
    unit_ops(&s.layouts[pos], s.cache[slot], s.chunk, tag, ops);
    slab.add_refs(tag, ops.len());
    st.stats.expert_bytes_read += s.layouts[pos].bytes;
    st.cache[slot] = CacheSlot {
        unit: Some(id),
        loading: ops.len(),
        ready: ops.is_empty(),
        leases: 0,
        // A guess is the first to go once unprotected; a demanded read counts as just used.
        last_use: if origin == Origin::Predicted {
            0
        } else {
            st.clock
        },
        protect: 0,
        origin,
    };
    st.cache_of.insert(id, slot);
}

/// Targets of reads in flight, by tag, with the number of ops still out for each (and, for
/// the trace, when the first op went out and the bytes completed so far).
#[derive(Default)]
pub(super) struct Slab {
    pub(super) entries: Vec<Option<(Target, usize)>>,
    pub(super) free: Vec<usize>,
    pub(super) traced: Vec<(Option<Instant>, u64)>,
}

impl Slab {
    pub(super) fn insert(&mut self, t: Target) -> u64 {
        match self.free.pop() {
            Some(i) => {
                self.entries[i] = Some((t, 0));
                self.traced[i] = (None, 0);
                i as u64
            }
            None => {
                self.entries.push(Some((t, 0)));
                self.traced.push((None, 0));
                (self.entries.len() - 1) as u64
            }
        }
    }

    /// Trace: an op of `tag` was submitted (the first one starts the read).
    pub(super) fn submitted(&mut self, tag: u64) {
        if let Some(t) = self.traced.get_mut(tag as usize) {
            t.0.get_or_insert_with(Instant::now);
        }
    }

    /// Trace: `n` bytes of `tag` completed; the read's start and bytes when it was its last op.
    fn completed(&mut self, tag: u64, n: u64) -> Option<(Option<Instant>, u64)> {
        let last = matches!(self.entries.get(tag as usize), Some(Some((_, 1))));
        let t = self.traced.get_mut(tag as usize)?;
        t.1 += n;
        last.then_some(*t)
    }

    pub(super) fn add_refs(&mut self, tag: u64, n: usize) {
        if let Some(Some(e)) = self.entries.get_mut(tag as usize) {
            e.1 += n;
            if e.1 == 0 {
                self.entries[tag as usize] = None;
                self.free.push(tag as usize);
            }
        }
    }

    /// One op of `tag` finished: its target.
    pub(super) fn finish(&mut self, tag: u64) -> Option<Target> {
        let e = self.entries.get_mut(tag as usize)?.as_mut()?;
        let t = e.0;
        e.1 -= 1;
        if e.1 == 0 {
            self.entries[tag as usize] = None;
            self.free.push(tag as usize);
        }
        Some(t)
    }
}

pub(super) fn apply(s: &Static, st: &mut State, slab: &mut Slab, c: Completion) {
    let done = if s.trace.is_on() {
        let n = c.result.as_ref().map_or(0, |&n| n as u64);
        slab.completed(c.tag, n)
    } else {
        None
    };
    let Some(t) = slab.finish(c.tag) else { return };
    match c.result {
        Ok(n) => {
            st.stats.bytes_read += n as u64;
            st.stats.reads += 1;
        }
        Err(e) => {
            if st.failed.is_none() {
                let what = match t {
                    Target::Ring { seq, .. } => {
                        format!("{:?}", s.cycle[(seq % s.cycle.len() as u64) as usize])
                    }
                    Target::Cache { slot } => format!("{:?}", st.cache[slot].unit),
                    Target::Rows => "embedding rows".to_string(),
                };
                st.failed = Some(ReadFailure::Read {
                    what,
                    source: Arc::new(e),
                });
            }
        }
    }
    if let Some((start, bytes)) = done {
        trace_read(s, st, t, start, bytes);
    }
    match t {
        Target::Ring { slot, seq } => {
            let rs = &mut st.ring[slot];
            if rs.seq == Some(seq) {
                rs.loading -= 1;
                rs.ready = rs.loading == 0;
            }
        }
        Target::Cache { slot } => {
            let cs = &mut st.cache[slot];
            cs.loading -= 1;
            cs.ready = cs.loading == 0;
        }
        Target::Rows => {
            if let Some(j) = st.rows.as_mut() {
                j.outstanding -= 1;
            }
        }
    }
}

/// Records the finished read of `t` (its first op went out at `start`) on its slot's track.
fn trace_read(s: &Static, st: &State, t: Target, start: Option<Instant>, bytes: u64) {
    let (track, name) = match t {
        Target::Ring { slot, seq } => (
            Track::RingSlot(slot),
            s.cycle[(seq % s.cycle.len() as u64) as usize].to_string(),
        ),
        Target::Cache { slot } => (
            Track::ExpertSlot(slot),
            st.cache[slot]
                .unit
                .map_or_else(|| "expert".into(), |id| id.to_string()),
        ),
        Target::Rows => (Track::Rows, "token_embd rows".into()),
    };
    // The source's byte counter after this read: the trace's read bytes add up to it.
    let total = st.stats.bytes_read;
    s.trace.span(
        track,
        "read",
        start,
        || name,
        || {
            vec![
                ("bytes", ArgValue::Int(bytes)),
                ("bytes_read_total", ArgValue::Int(total)),
            ]
        },
    );
}

pub(super) fn io_thread(
    mut backend: Box<dyn ReadBackend>,
    s: &Static,
    shared: &Shared,
) -> Box<dyn ReadBackend> {
    let _span = tracing::debug_span!("io_thread", backend = %backend.kind()).entered();
    let qd = backend.queue_depth().max(1);
    let mut slab = Slab::default();
    let mut urgent: VecDeque<ReadOp> = VecDeque::new();
    let mut background: VecDeque<ReadOp> = VecDeque::new();
    let mut comps: Vec<Completion> = Vec::new();
    loop {
        {
            let mut st = shared.st.lock();
            loop {
                if st.shutdown && backend.in_flight() == 0 {
                    return backend;
                }
                if !st.shutdown && st.failed.is_none() {
                    plan_work(s, &mut st, &mut slab, &mut urgent, &mut background);
                }
                if st.shutdown || st.failed.is_some() {
                    // Nothing new goes out; what is queued is dropped.
                    for op in urgent.drain(..).chain(background.drain(..)) {
                        slab.finish(op.tag);
                    }
                }
                if !urgent.is_empty() || !background.is_empty() || backend.in_flight() > 0 {
                    break;
                }
                if let Some(t) = st.busy_since.take() {
                    st.stats.io_busy_s += t.elapsed().as_secs_f64();
                }
                shared.work.wait(&mut st);
            }
        }
        if backend.in_flight() < qd && !(urgent.is_empty() && background.is_empty()) {
            shared.st.lock().busy_since.get_or_insert_with(Instant::now);
        }
        while backend.in_flight() < qd {
            let Some(op) = urgent.pop_front().or_else(|| background.pop_front()) else {
                break;
            };
            if s.trace.is_on() {
                slab.submitted(op.tag);
            }
            // SAFETY: `op.dst` points into a slot that the state machine reserved for this
            // read: it is neither leased nor handed to another read until the completion has
            // been applied, and the buffers outlive this thread (the source joins it first).
            if let Err(e) = unsafe { backend.submit(op) } {
                comps.push(Completion {
                    tag: op.tag,
                    result: Err(e),
                });
            }
        }
        if backend.in_flight() > 0 {
            if let Err(e) = backend.wait(&mut comps) {
                // Fatal: dropping the backend waits for the reads still in flight.
                shared
                    .st
                    .lock()
                    .failed
                    .get_or_insert_with(|| ReadFailure::Backend(Arc::new(e)));
                shared.done.notify_all();
                return backend;
            }
        }
        if !comps.is_empty() {
            let mut st = shared.st.lock();
            for c in comps.drain(..) {
                apply(s, &mut st, &mut slab, c);
            }
            if backend.in_flight() == 0 && urgent.is_empty() && background.is_empty() {
                if let Some(t) = st.busy_since.take() {
                    st.stats.io_busy_s += t.elapsed().as_secs_f64();
                }
            }
            drop(st);
            shared.done.notify_all();
        }
    }
}
