//! The streaming weight source: pinned units, a slot ring for the per-token units that do not
//! fit, an expert cache, and a dedicated I/O thread that keeps reads in flight.
//!
//! Memory: everything is allocated up front, in [`StreamingSource::with_backend`], exactly as
//! the [`Plan`] counted it: one buffer per pinned unit, `n_slots` ring slots, the expert-cache
//! slots and the embedding-row scratch. Nothing is allocated per token.
//!
//! A new budget ([`StreamingSource::rebudget`] with a plan for it): the source waits for a
//! moment when no lease is held (new leases wait meanwhile), stops the I/O thread, frees what
//! the new plan does not keep (and returns it to the OS), allocates and reads what it adds,
//! and restarts the thread. Leases count in a gate for this; units, layouts and the bytes a
//! lease carries do not change.
//!
//! The ring: per-token units are used in a fixed cyclic order (the plan's `cycle`: the
//! streamed layers, then the output head). Read number `k` of the run holds unit
//! `cycle[k % len]` in slot `k % n_slots`; the I/O thread issues read `k` as soon as the slot's
//! previous occupant (read `k - n_slots`) has been leased and its lease dropped, so it always
//! runs up to `n_slots - 1` units ahead of compute, across token boundaries. A lease of a unit
//! that is not the next in the cycle (a pass cut short by an error) skips forward to it.
//!
//! The expert cache: a lease of an expert that is not cached is a miss, read at once (ahead of
//! queued ring and prefetch reads) into the least recently used slot that is neither leased,
//! loading, nor protected; [`WeightSource::prefetch`] of experts reads predicted experts into
//! the cache in the background and protects them (and already cached ones) from eviction
//! until they have been leased or two newer predictions have come.
//!
//! Files: `residency` (memory and I/O thread of one plan, rebudget), `state` (the slot state
//! machine), `policy` (the expert-cache eviction choices, pure functions), `lease` (ring and expert leases, expert requests),
//! `rows` (embedding rows on demand), `io` (the I/O thread and completions).
//!
//! Errors: a failed read (EIO, a truncated file) fails every later lease with the same
//! [`ReadFailure`]; the weights are never handed out half-read.

mod failure;
mod io;
mod lease;
mod policy;
mod residency;
mod rows;
mod state;

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::{Condvar, Mutex, RwLock};

use flashstream_formats::GgufModel;
use flashstream_loader::{IoKind, ReadBackend};

use crate::layout::UnitLayout;
use crate::plan::Plan;
use crate::trace::Trace;
use crate::{Lease, Release, SchedulerError, SourceStats, UnitId, UnitTable, WeightSource};

pub use failure::ReadFailure;
use residency::Core;
use rows::EmbdInfo;

/// Largest single read op the streaming source submits to the backend (which may split it
/// further into its own `BACKEND_CHUNK_BYTES` chunks).
pub const SOURCE_READ_BYTES: u64 = 4 << 20;

/// How many tokens' worth of expert leases an expert must go unused before a prediction may
/// evict it.
pub const PREDICTION_AGE_TOKENS: u64 = 4;

/// A [`WeightSource`] that streams what the [`Plan`] does not pin.
///
/// Its residency can change while it runs ([`StreamingSource::rebudget`]): the memory behind
/// the plan (the [`Core`]) is rebuilt at a moment when no lease is held, and the unit table and
/// layouts that leases borrow stay.
pub struct StreamingSource {
    units: UnitTable,
    layouts: Vec<UnitLayout>,
    embd: Option<EmbdInfo>,
    row_foot: u64,
    chunk: u64,
    align: u64,
    kind: IoKind,
    core: RwLock<Core>,
    /// Leases (and embedding-row reads) outstanding, and whether a rebudget waits for none.
    gate: Mutex<Gate>,
    gate_cv: Condvar,
    row_lock: Mutex<()>,
    trace: Trace,
}

#[derive(Debug, Default)]
struct Gate {
    outstanding: usize,
    closed: bool,
}

/// Lease "slot" number of pinned leases (they only count in the gate).
const PINNED_SLOT: usize = usize::MAX;

impl std::fmt::Debug for StreamingSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let c = self.core.read();
        f.debug_struct("StreamingSource")
            .field("io", &self.kind)
            .field("pinned", &c.plan.pinned.len())
            .field("cycle", &c.plan.cycle.len())
            .field("slots", &c.plan.n_slots)
            .field("expert_slots", &c.plan.expert_slots)
            .finish()
    }
}

impl StreamingSource {
    /// Allocates what `plan` counted, reads the pinned units through `backend` and starts the
    /// I/O thread, which owns the backend from then on. `chunk_bytes` is the largest single
    /// read ([`SOURCE_READ_BYTES`] is a good default).
    pub fn with_backend(
        model: &GgufModel,
        plan: Plan,
        backend: Box<dyn ReadBackend>,
        chunk_bytes: u64,
    ) -> Result<Self, SchedulerError> {
        Self::with_progress(model, plan, backend, chunk_bytes, &mut |_, _| true)
    }

    /// [`StreamingSource::with_backend`], telling `progress(bytes_read, bytes_to_read)` how the
    /// read of the pinned units goes (after each completed read); when it returns false the
    /// load stops (reads in flight are waited for) with [`SchedulerError::Cancelled`].
    pub fn with_progress(
        model: &GgufModel,
        plan: Plan,
        backend: Box<dyn ReadBackend>,
        chunk_bytes: u64,
        progress: &mut dyn FnMut(u64, u64) -> bool,
    ) -> Result<Self, SchedulerError> {
        Self::with_trace(model, plan, backend, chunk_bytes, progress, Trace::off())
    }

    /// [`StreamingSource::with_progress`] recording into `trace`: each read of the I/O thread
    /// (a unit, on the track of the slot it fills, with its bytes) and each time a lease waited
    /// for bytes (a stall). The up-front read of the pinned units is not recorded.
    pub fn with_trace(
        model: &GgufModel,
        plan: Plan,
        backend: Box<dyn ReadBackend>,
        chunk_bytes: u64,
        progress: &mut dyn FnMut(u64, u64) -> bool,
        trace: Trace,
    ) -> Result<Self, SchedulerError> {
        let _span = tracing::info_span!("streaming_source").entered();
        let units = UnitTable::from_model(model)?;
        if plan.layouts.len() != units.iter().count() {
            return Err(SchedulerError::BadRequest(
                "the plan was made for another model".into(),
            ));
        }
        let align = plan.align;
        if align == 0
            || !align.is_power_of_two()
            || (backend.alignment() as u64) > align
            || !align.is_multiple_of(backend.alignment() as u64)
        {
            return Err(SchedulerError::BadRequest(format!(
                "the plan's reads are {align}-byte aligned but the {} backend needs {}",
                backend.kind(),
                backend.alignment()
            )));
        }
        let kind = backend.kind();
        let chunk = (chunk_bytes.max(align) / align) * align;
        let embd = model.tensor("token_embd.weight").map(|t| EmbdInfo {
            file: t.file,
            offset: t.offset,
            row_bytes: t.row_bytes(),
            n_rows: t.n_rows(),
            pos: units.position(UnitId::Embedding),
            pieces: units.embedding_pieces(),
        });
        let row_foot = embd.map_or(0, |e| e.row_bytes.div_ceil(align) * align + align);
        let layouts = plan.layouts.clone();
        let mut src = StreamingSource {
            units,
            layouts,
            embd,
            row_foot,
            chunk,
            align,
            kind,
            core: RwLock::new(Core::failed(&plan, ReadFailure::NotReady("not loaded"))),
            gate: Mutex::new(Gate::default()),
            gate_cv: Condvar::new(),
            row_lock: Mutex::new(()),
            trace,
        };
        let core = src
            .build_core(
                plan,
                backend,
                HashMap::new(),
                SourceStats::default(),
                progress,
            )
            .map_err(|(e, _)| e)?;
        *src.core.get_mut() = core;
        Ok(src)
    }

    /// The plan it runs now.
    pub fn plan(&self) -> Plan {
        self.core.read().plan.clone()
    }

    /// Counts a lease (or a row read) about to start; waits while a rebudget is due and none
    /// is outstanding.
    fn enter(&self) {
        let mut g = self.gate.lock();
        while g.closed && g.outstanding == 0 {
            self.gate_cv.wait(&mut g);
        }
        g.outstanding += 1;
    }

    fn exit(&self) {
        let mut g = self.gate.lock();
        g.outstanding -= 1;
        if g.outstanding == 0 {
            self.gate_cv.notify_all();
        }
    }

    /// The backend in use (after `auto` resolved).
    pub fn io_kind(&self) -> IoKind {
        self.kind
    }
}

impl Release for StreamingSource {
    fn release(&self, slot: usize) {
        if slot != PINNED_SLOT {
            // No rebudget runs while this lease is outstanding: the core is the one it came from.
            let core = self.core.read();
            let mut st = core.shared.st.lock();
            let n = st.ring.len();
            if slot < n {
                st.ring[slot].leases = st.ring[slot].leases.saturating_sub(1);
            } else if let Some(c) = st.cache.get_mut(slot - n) {
                c.leases = c.leases.saturating_sub(1);
            }
            core.shared.work.notify_one();
        }
        self.exit();
    }
}

impl StreamingSource {
    fn lease_in(&self, core: &Core, id: UnitId) -> Result<Lease<'_>, SchedulerError> {
        let pos = self
            .units
            .position(id)
            .ok_or(SchedulerError::NoSuchUnit(id))?;
        if let Some(r) = core.pinned[pos] {
            let unit = self.units.get(id).ok_or(SchedulerError::NoSuchUnit(id))?;
            // SAFETY: pinned regions are written before the core is installed and freed only
            // by a rebudget, which waits until no lease is outstanding.
            let data = unsafe { r.slice() };
            return Ok(Lease::new(
                unit,
                data,
                &self.layouts[pos].part_offsets,
                Some((self, PINNED_SLOT)),
            ));
        }
        Self::fail_check(&core.shared.st.lock())?;
        if core.cycle_pos.contains_key(&id) {
            return self.lease_ring(core, id, pos);
        }
        if let UnitId::Expert { layer, .. } = id {
            if !core.st.cache.is_empty() {
                return self.lease_expert(core, id, pos, layer);
            }
        }
        Err(SchedulerError::NotResident(id))
    }
}

impl WeightSource for StreamingSource {
    fn units(&self) -> &UnitTable {
        &self.units
    }

    fn lease(&self, id: UnitId) -> Result<Lease<'_>, SchedulerError> {
        self.enter();
        let r = self.lease_in(&self.core.read(), id);
        if r.is_err() {
            self.exit();
        }
        r
    }

    fn prefetch(&self, upcoming: &[UnitId]) {
        self.request(upcoming, false);
    }

    fn will_need(&self, units: &[UnitId]) {
        self.request(units, true);
    }

    fn all_resident(&self) -> bool {
        let c = self.core.read();
        c.st.cycle.is_empty() && c.st.cache.is_empty()
    }

    fn is_resident(&self, id: UnitId) -> bool {
        let c = self.core.read();
        self.units
            .position(id)
            .is_some_and(|p| c.pinned.get(p).is_some_and(|r| r.is_some()))
    }

    fn embedding_rows(&self, tokens: &[u32], out: &mut [u8]) -> Result<(), SchedulerError> {
        self.enter();
        let r = self.rows_in(&self.core.read(), tokens, out);
        self.exit();
        r
    }

    fn stats(&self) -> SourceStats {
        let core = self.core.read();
        let st = core.shared.st.lock();
        let mut s = st.stats.clone();
        // A busy stretch still going on counts up to now.
        if let Some(t) = st.busy_since {
            s.io_busy_s += t.elapsed().as_secs_f64();
        }
        s
    }
}

impl Drop for StreamingSource {
    fn drop(&mut self) {
        // The thread waits for every read in flight before it returns, so the buffers are
        // free to go afterwards.
        self.core.get_mut().stop();
    }
}

/// A shared source (the owner keeps a handle to change its budget while a model leases from
/// it).
impl WeightSource for Arc<StreamingSource> {
    fn units(&self) -> &UnitTable {
        (**self).units()
    }

    fn lease(&self, id: UnitId) -> Result<Lease<'_>, SchedulerError> {
        (**self).lease(id)
    }

    fn prefetch(&self, upcoming: &[UnitId]) {
        (**self).prefetch(upcoming)
    }

    fn will_need(&self, units: &[UnitId]) {
        (**self).will_need(units)
    }

    fn is_resident(&self, id: UnitId) -> bool {
        (**self).is_resident(id)
    }

    fn all_resident(&self) -> bool {
        (**self).all_resident()
    }

    fn embedding_rows(&self, tokens: &[u32], out: &mut [u8]) -> Result<(), SchedulerError> {
        (**self).embedding_rows(tokens, out)
    }

    fn stats(&self) -> SourceStats {
        (**self).stats()
    }

    fn before_pass(&self) -> Result<(), SchedulerError> {
        (**self).before_pass()
    }
}
