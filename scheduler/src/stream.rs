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
//! Errors: a failed read (EIO, a truncated file) fails every later lease with the same
//! message; the weights are never handed out half-read.

use std::collections::{HashMap, VecDeque};
use std::ptr::NonNull;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use parking_lot::{Condvar, Mutex, RwLock};

use flashstream_formats::GgufModel;
use flashstream_loader::{AlignedBuffer, Completion, IoKind, ReadBackend, ReadOp};

use crate::layout::UnitLayout;
use crate::plan::{ExpertPolicy, Plan};
use crate::{
    LayerExpertStats, Lease, Release, SchedulerError, SourceStats, UnitId, UnitTable, WeightSource,
};

/// Largest single read submitted to the backend.
pub const CHUNK_BYTES: u64 = 4 << 20;

/// How many tokens' worth of expert leases an expert must go unused before a prediction may
/// evict it.
pub const PREDICTION_AGE_TOKENS: u64 = 4;

/// A region of memory owned by the source (one of its buffers).
#[derive(Clone, Copy)]
struct Region {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: regions point into buffers the source owns for its whole life; who may touch them
// when is governed by the slot state machine under `Shared::st`.
unsafe impl Send for Region {}
unsafe impl Sync for Region {}

impl Region {
    fn of(buf: &mut AlignedBuffer) -> Region {
        let s = buf.as_mut_slice();
        Region {
            len: s.len(),
            ptr: NonNull::new(s.as_mut_ptr()).unwrap_or(NonNull::dangling()),
        }
    }

    /// # Safety
    /// Nobody may be writing the region for the lifetime of the slice.
    unsafe fn slice<'a>(self) -> &'a [u8] {
        std::slice::from_raw_parts(self.ptr.as_ptr(), self.len)
    }

    fn at(self, offset: u64) -> NonNull<u8> {
        debug_assert!(offset as usize <= self.len);
        // SAFETY: offsets come from layouts that fit the region (checked when built).
        unsafe { NonNull::new_unchecked(self.ptr.as_ptr().add(offset as usize)) }
    }
}

/// Where embedding rows are in the file.
#[derive(Debug, Clone, Copy)]
struct EmbdInfo {
    file: usize,
    offset: u64,
    row_bytes: u64,
    n_rows: u64,
    /// Position of the Embedding unit (for pinned copies).
    pos: usize,
}

/// What never changes after construction; shared with the I/O thread.
struct Static {
    cycle: Vec<UnitId>,
    ring: Vec<Region>,
    cache: Vec<Region>,
    row_scratch: Region,
    /// Row footprint in the scratch.
    row_foot: u64,
    layouts: Vec<UnitLayout>,
    units: UnitTable,
    chunk: u64,
    align: u64,
}

#[derive(Debug, Default, Clone)]
struct RingSlot {
    seq: Option<u64>,
    loading: usize,
    ready: bool,
    leases: usize,
}

#[derive(Debug, Default, Clone)]
struct CacheSlot {
    unit: Option<UnitId>,
    loading: usize,
    ready: bool,
    leases: usize,
    last_use: u64,
    /// Request epoch that last protected it (0: never).
    protect: u64,
    /// Why it was read, until its first lease.
    origin: Origin,
}

/// Why an expert is in the cache.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Origin {
    /// Leased at least once since it was read (or empty).
    #[default]
    Used,
    /// Read because a prediction asked for it; not leased yet.
    Predicted,
    /// Read because the runtime needed it now (`will_need` or a lease); not leased yet.
    Demanded,
}

#[derive(Debug)]
struct RowJob {
    ops: Vec<ReadOp>,
    issued: bool,
    outstanding: usize,
}

struct State {
    ring: Vec<RingSlot>,
    next_read: u64,
    next_lease: u64,
    cache: Vec<CacheSlot>,
    cache_of: HashMap<UnitId, usize>,
    demand: VecDeque<UnitId>,
    /// The expert a lease is blocked on (read first, may evict anything not leased).
    urgent: Option<UnitId>,
    predicted: VecDeque<UnitId>,
    epoch: u64,
    clock: u64,
    /// Expert leases in one token (the plan's estimate): how recent a use protects from
    /// predictions.
    window: u64,
    /// Layers of the model, and the layer of the last expert request or lease.
    layers: usize,
    cur_layer: usize,
    /// Running rates (exponential averages): expert leases that hit the cache, and guesses
    /// that were leased before being evicted.
    hit_rate: f64,
    guess_use_rate: f64,
    policy: ExpertPolicy,
    rows: Option<RowJob>,
    /// When the current stretch with reads in flight began (the I/O thread sets and ends it).
    busy_since: Option<Instant>,
    failed: Option<String>,
    shutdown: bool,
    stats: SourceStats,
}

impl State {
    fn new(
        n_slots: usize,
        expert_slots: usize,
        window: u64,
        layers: usize,
        policy: ExpertPolicy,
        stats: SourceStats,
    ) -> State {
        State {
            ring: vec![RingSlot::default(); n_slots],
            next_read: 0,
            next_lease: 0,
            cache: vec![CacheSlot::default(); expert_slots],
            cache_of: HashMap::new(),
            demand: VecDeque::new(),
            urgent: None,
            predicted: VecDeque::new(),
            epoch: 1,
            clock: 0,
            window,
            layers,
            cur_layer: 0,
            hit_rate: 0.5,
            guess_use_rate: 0.5,
            policy,
            rows: None,
            busy_since: None,
            failed: None,
            shutdown: false,
            stats,
        }
    }

    fn protected(&self, slot: usize) -> bool {
        let p = self.cache[slot].protect;
        p != 0 && p + 1 >= self.epoch
    }

    /// The slot to (re)use for a new expert: an empty one, else the least recently used of
    /// those neither leased nor loading, taken from the least valuable class first: unused
    /// guesses, then anything unprotected; then (`level >= 1`) protected ones; then
    /// (`level >= 2`, only for the read a lease is blocked on) experts demanded for this
    /// layer and not leased yet.
    fn victim(&self, level: u8) -> Option<usize> {
        let free = |i: usize| {
            let s = &self.cache[i];
            s.leases == 0 && s.loading == 0
        };
        if let Some(i) = (0..self.cache.len()).find(|&i| free(i) && self.cache[i].unit.is_none()) {
            return Some(i);
        }
        // 0: an unprotected guess nobody used; 1: unprotected; 2: a protected guess or a
        // protected used expert; 3: demanded for this layer, not leased yet.
        let class = |i: usize| -> u8 {
            match (self.protected(i), self.cache[i].origin) {
                (false, Origin::Predicted) => 0,
                (false, _) => 1,
                (true, Origin::Demanded) => 3,
                (true, _) => 2,
            }
        };
        // Within a class: the expert whose layer comes round again last (layers are visited
        // in order every token, so the layer just computed is needed furthest in the future;
        // plain LRU would evict exactly the experts needed soonest whenever one token's
        // experts outnumber the slots), then the least recently used.
        let n_layer = self.layers.max(1);
        let lru = self.policy == ExpertPolicy::Lru;
        let distance = |i: usize| match self.cache[i].unit {
            _ if lru => 0,
            Some(UnitId::Expert { layer, .. }) => {
                (layer + 2 * n_layer - self.cur_layer - 1) % n_layer
            }
            _ => n_layer,
        };
        (0..=level + 1).find_map(|c| {
            (0..self.cache.len())
                .filter(|&i| free(i) && class(i) == c)
                .max_by_key(|&i| (distance(i), std::cmp::Reverse(self.cache[i].last_use)))
        })
    }

    /// The slot a prediction of an expert of `layer` may take: an empty one, an earlier guess
    /// nobody used, or one unused for [`PREDICTION_AGE_TOKENS`] tokens; and, while guesses
    /// have recently been used more often than cached experts were hit again, an unprotected
    /// expert whose layer comes round after `layer` does (the one furthest away). So a guess
    /// never pushes out what recent tokens used when the cache holds the working set and
    /// routing repeats (measured: plain LRU eviction for guesses doubled the misses there),
    /// and replaces far-away experts when the cache is smaller than one token's experts.
    fn prediction_victim(&self, layer: usize) -> Option<usize> {
        let n = self.cache.len();
        if let Some(i) = (0..n).find(|&i| self.cache[i].unit.is_none()) {
            return Some(i);
        }
        let free = |i: usize| {
            let c = &self.cache[i];
            c.leases == 0 && c.loading == 0 && !self.protected(i)
        };
        let stale = |i: usize| {
            let c = &self.cache[i];
            c.origin == Origin::Predicted
                || c.last_use + PREDICTION_AGE_TOKENS * self.window <= self.clock
        };
        if let Some(i) = (0..n)
            .filter(|&i| free(i) && stale(i))
            .min_by_key(|&i| self.cache[i].last_use)
        {
            return Some(i);
        }
        if self.guess_use_rate <= self.hit_rate || self.policy == ExpertPolicy::Lru {
            return None;
        }
        let n_layer = self.layers.max(1);
        let dist = |l: usize| (l + 2 * n_layer - self.cur_layer - 1) % n_layer;
        let mine = dist(layer);
        (0..n)
            .filter(|&i| free(i))
            .filter_map(|i| match self.cache[i].unit {
                Some(UnitId::Expert { layer: l, .. }) if dist(l) > mine => Some((i, dist(l))),
                _ => None,
            })
            .max_by_key(|&(i, d)| (d, std::cmp::Reverse(self.cache[i].last_use)))
            .map(|(i, _)| i)
    }

    fn ring_slot_free(&self, slot: usize) -> bool {
        let s = &self.ring[slot];
        s.leases == 0 && s.loading == 0 && s.seq.is_none_or(|q| q < self.next_lease)
    }
}

struct Shared {
    st: Mutex<State>,
    /// Wakes the I/O thread (new work, a slot released, shutdown).
    work: Condvar,
    /// Wakes lease waiters (a read completed, an error).
    done: Condvar,
}

/// What a read in flight belongs to.
#[derive(Debug, Clone, Copy)]
enum Target {
    Ring { slot: usize, seq: u64 },
    Cache { slot: usize },
    Rows,
}

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
}

#[derive(Debug, Default)]
struct Gate {
    outstanding: usize,
    closed: bool,
}

/// The memory and the I/O thread of one plan.
struct Core {
    st: Arc<Static>,
    shared: Arc<Shared>,
    io: Option<JoinHandle<Box<dyn ReadBackend>>>,
    plan: Plan,
    /// Pinned region of each unit (by position), if pinned.
    pinned: Vec<Option<Region>>,
    cycle_pos: HashMap<UnitId, usize>,
    /// The pinned buffers, by unit position (kept across a rebudget that keeps them pinned).
    pinned_bufs: HashMap<usize, AlignedBuffer>,
    /// Ring, expert-cache and row-scratch buffers (the regions of `st` point into them).
    _slot_bufs: Vec<AlignedBuffer>,
}

impl Core {
    /// Stops the I/O thread (it waits for its reads in flight) and returns the backend.
    fn stop(&mut self) -> Option<Box<dyn ReadBackend>> {
        self.shared.st.lock().shutdown = true;
        self.shared.work.notify_all();
        self.io.take().and_then(|h| h.join().ok())
    }
}

impl Core {
    /// A core without memory whose every lease fails with `msg` (before the first build, and
    /// after a rebudget that could restore nothing).
    fn failed(plan: &Plan, msg: &str) -> Core {
        let stat = Arc::new(Static {
            cycle: Vec::new(),
            ring: Vec::new(),
            cache: Vec::new(),
            row_scratch: Region {
                ptr: NonNull::dangling(),
                len: 0,
            },
            row_foot: 0,
            layouts: Vec::new(),
            units: UnitTable::default(),
            chunk: 0,
            align: 1,
        });
        let shared = Arc::new(Shared {
            st: Mutex::new(State::new(
                0,
                0,
                0,
                0,
                plan.expert_policy,
                SourceStats::default(),
            )),
            work: Condvar::new(),
            done: Condvar::new(),
        });
        shared.st.lock().failed = Some(msg.to_string());
        Core {
            st: stat,
            shared,
            io: None,
            plan: plan.clone(),
            pinned: vec![None; plan.layouts.len()],
            cycle_pos: HashMap::new(),
            pinned_bufs: HashMap::new(),
            _slot_bufs: Vec::new(),
        }
    }
}

/// Gives freed memory back to the OS now (glibc keeps freed heap chunks below its mmap
/// threshold in the process; `malloc_trim` returns them).
fn release_to_os() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
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

fn alloc(bytes: u64, what: &str) -> Result<AlignedBuffer, SchedulerError> {
    usize::try_from(bytes)
        .ok()
        .and_then(AlignedBuffer::zeroed)
        .ok_or_else(|| SchedulerError::OutOfMemory {
            bytes,
            what: what.to_string(),
        })
}

/// The reads of `layout` into `region`, in chunks of at most `chunk` bytes.
fn unit_ops(layout: &UnitLayout, region: Region, chunk: u64, tag: u64, out: &mut Vec<ReadOp>) {
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

impl StreamingSource {
    /// Allocates what `plan` counted, reads the pinned units through `backend` and starts the
    /// I/O thread, which owns the backend from then on. `chunk_bytes` is the largest single
    /// read ([`CHUNK_BYTES`] is a good default).
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
        let embd = match (
            units.position(UnitId::Embedding),
            model.tensor("token_embd.weight"),
        ) {
            (Some(pos), Some(t)) => Some(EmbdInfo {
                file: t.file,
                offset: t.offset,
                row_bytes: t.row_bytes(),
                n_rows: t.n_rows(),
                pos,
            }),
            _ => None,
        };
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
            core: RwLock::new(Core::failed(&plan, "not loaded")),
            gate: Mutex::new(Gate::default()),
            gate_cv: Condvar::new(),
            row_lock: Mutex::new(()),
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

    /// Checks that `plan` can run here (its slots hold every unit that can land in them, the
    /// row scratch holds a row) before anything is freed or allocated for it.
    fn check_plan(&self, plan: &Plan) -> Result<(), SchedulerError> {
        if plan.layouts.len() != self.layouts.len() || plan.align != self.align {
            return Err(SchedulerError::BadRequest(
                "the plan was made for another model or alignment".into(),
            ));
        }
        for (pos, u) in self.units.iter().enumerate() {
            let need = plan.layouts[pos].bytes;
            let cap = match u.id {
                UnitId::Expert { .. } if plan.expert_slots > 0 => plan.expert_slot_bytes,
                id if plan.cycle.contains(&id) => plan.slot_bytes,
                _ => need,
            };
            if need > cap {
                return Err(SchedulerError::BadRequest(format!(
                    "unit {:?} needs {need} bytes but its slots hold {cap}",
                    u.id
                )));
            }
        }
        if plan.embedding_on_demand
            && (self.row_foot == 0 || plan.row_scratch_bytes < self.row_foot)
        {
            return Err(SchedulerError::BadRequest(
                "the plan reads embedding rows on demand but has no room for one".into(),
            ));
        }
        Ok(())
    }

    /// Allocates what `plan` counts (reusing the buffers of `keep`, pinned units by position
    /// that stay pinned), reads the pinned units that are not in `keep` and starts the I/O
    /// thread. On failure the backend is handed back when the thread was not started.
    #[allow(clippy::type_complexity)]
    fn build_core(
        &self,
        plan: Plan,
        mut backend: Box<dyn ReadBackend>,
        mut keep: HashMap<usize, AlignedBuffer>,
        mut stats: SourceStats,
        progress: &mut dyn FnMut(u64, u64) -> bool,
    ) -> Result<Core, (SchedulerError, Option<Box<dyn ReadBackend>>)> {
        if let Err(e) = self.check_plan(&plan) {
            return Err((e, Some(backend)));
        }
        let units = &self.units;
        let mut pinned_bufs = HashMap::new();
        let mut pinned = vec![None; plan.layouts.len()];
        let mut fresh = Vec::new();
        let mut slot_bufs = Vec::new();
        let allocated = (|| {
            for &id in &plan.pinned {
                let Some(pos) = units.position(id) else {
                    continue;
                };
                let mut b = match keep.remove(&pos) {
                    Some(b) => b,
                    None => {
                        fresh.push(pos);
                        alloc(plan.layouts[pos].bytes, &format!("pinned unit {id:?}"))?
                    }
                };
                pinned[pos] = Some(Region::of(&mut b));
                pinned_bufs.insert(pos, b);
            }
            drop(std::mem::take(&mut keep));
            for i in 0..plan.n_slots {
                slot_bufs.push(alloc(plan.slot_bytes, &format!("ring slot {i}"))?);
            }
            for i in 0..plan.expert_slots {
                slot_bufs.push(alloc(plan.expert_slot_bytes, &format!("expert slot {i}"))?);
            }
            slot_bufs.push(alloc(plan.row_scratch_bytes, "embedding-row scratch")?);
            Ok(())
        })();
        if let Err(e) = allocated {
            return Err((e, Some(backend)));
        }
        let mut regions: Vec<Region> = slot_bufs.iter_mut().map(Region::of).collect();
        let row_scratch = regions.pop().unwrap_or(Region {
            ptr: NonNull::dangling(),
            len: 0,
        });
        let cache = regions.split_off(plan.n_slots);
        let ring = regions;

        // The slots are read into over and over: register them with the backend (io_uring
        // fixed buffers, where the kernel and memlock limit allow; a no-op elsewhere).
        let reg: Vec<(NonNull<u8>, usize)> = ring
            .iter()
            .chain(&cache)
            .chain(std::iter::once(&row_scratch))
            .filter(|r| r.len > 0)
            .map(|r| (r.ptr, r.len))
            .collect();
        // SAFETY: the regions live in `slot_bufs`, which the core keeps until after the I/O
        // thread (which owns the backend) has been joined, and which are unregistered (the
        // backend's buffers replaced) before a rebudget frees them.
        let registered = unsafe { backend.register_buffers(&reg) };
        tracing::debug!(registered, regions = reg.len(), "slot memory registration");

        // Read the pinned units that are not in RAM yet.
        let t0 = Instant::now();
        let mut ops = Vec::new();
        for &pos in &fresh {
            if let Some(r) = pinned[pos] {
                unit_ops(&plan.layouts[pos], r, self.chunk, pos as u64, &mut ops);
            }
        }
        let load_bytes = match read_all(backend.as_mut(), &ops, units, progress) {
            Ok(b) => b,
            Err(e) => return Err((e, Some(backend))),
        };
        let load_s = t0.elapsed().as_secs_f64();
        tracing::debug!(load_bytes, load_s, backend = %self.kind, "pinned units loaded");
        stats.load_bytes += load_bytes;
        stats.load_s += load_s;

        let n_layer = units.n_layer();
        stats.expert_layers.resize(
            if plan.expert_slots > 0 { n_layer } else { 0 },
            LayerExpertStats::default(),
        );
        let stat = Arc::new(Static {
            cycle: plan.cycle.clone(),
            ring,
            cache,
            row_scratch,
            row_foot: self.row_foot,
            layouts: self.layouts.clone(),
            units: units.clone(),
            chunk: self.chunk,
            align: self.align,
        });
        let shared = Arc::new(Shared {
            st: Mutex::new(State::new(
                plan.n_slots,
                plan.expert_slots,
                plan.expert_leases_per_token,
                n_layer,
                plan.expert_policy,
                stats,
            )),
            work: Condvar::new(),
            done: Condvar::new(),
        });
        // The backend moves into the thread; if the thread cannot start it is lost with the
        // closure, so a failed spawn cannot hand it back.
        let io = {
            let (stat, shared) = (Arc::clone(&stat), Arc::clone(&shared));
            std::thread::Builder::new()
                .name("fs-io".into())
                .spawn(move || io_thread(backend, &stat, &shared))
                .map_err(|e| (SchedulerError::Thread(e.to_string()), None))?
        };
        let cycle_pos = plan
            .cycle
            .iter()
            .enumerate()
            .map(|(i, &u)| (u, i))
            .collect();
        Ok(Core {
            st: stat,
            shared,
            io: Some(io),
            plan,
            pinned,
            cycle_pos,
            pinned_bufs,
            _slot_bufs: slot_bufs,
        })
    }

    /// Changes the residency to `plan` (a plan for the same model and alignment, normally the
    /// same model under another budget): waits until no lease is held (a forward pass in
    /// another thread goes on to its next lease-free moment: between layers or tokens; new
    /// leases wait meanwhile), stops the I/O thread, frees the ring, the expert cache and the
    /// pinned units the new plan does not pin (and gives the freed memory back to the OS),
    /// allocates what the new plan counts and reads the units it pins anew. Leases then
    /// continue under the new plan; the bytes they carry are the same.
    ///
    /// A plan that cannot run here is an error before anything changes. If building the new
    /// residency fails (allocation, a read error), the old plan is restored; if even that
    /// fails, every later lease fails with the error.
    pub fn rebudget(&self, plan: Plan) -> Result<(), SchedulerError> {
        let _span = tracing::info_span!("rebudget", budget = plan.budget).entered();
        self.check_plan(&plan)?;
        {
            let mut g = self.gate.lock();
            while g.closed {
                self.gate_cv.wait(&mut g);
            }
            g.closed = true;
            while g.outstanding > 0 {
                self.gate_cv.wait(&mut g);
            }
        }
        let result = self.swap_core(plan);
        let mut g = self.gate.lock();
        g.closed = false;
        self.gate_cv.notify_all();
        result
    }

    fn swap_core(&self, plan: Plan) -> Result<(), SchedulerError> {
        let mut core = self.core.write();
        if let Some(m) = &core.shared.st.lock().failed {
            return Err(SchedulerError::ReadFailed(m.clone()));
        }
        let old_plan = core.plan.clone();
        let stats = core.shared.st.lock().stats.clone();
        let Some(mut backend) = core.stop() else {
            return Err(SchedulerError::Thread(
                "the I/O thread ended abnormally".into(),
            ));
        };
        let failed = core.shared.st.lock().failed.clone();
        if let Some(m) = failed {
            // A read failed while the thread wound down: keep that state.
            *core = Core::failed(&old_plan, &m);
            return Err(SchedulerError::ReadFailed(m));
        }
        // Unregister the slot memory before it is freed.
        // SAFETY: no regions.
        unsafe { backend.register_buffers(&[]) };
        let mut keep = std::mem::take(&mut core.pinned_bufs);
        let new_pins: std::collections::HashSet<usize> = plan
            .pinned
            .iter()
            .filter_map(|&id| self.units.position(id))
            .collect();
        keep.retain(|pos, _| new_pins.contains(pos));
        *core = Core::failed(&old_plan, "the residency is being changed");
        release_to_os();
        match self.build_core(plan, backend, keep, stats.clone(), &mut |_, _| true) {
            Ok(c) => {
                *core = c;
                release_to_os();
                Ok(())
            }
            Err((e, Some(backend))) => {
                tracing::warn!(error = %e, "rebudget failed; restoring the previous plan");
                release_to_os();
                let restored = self.build_core(
                    old_plan.clone(),
                    backend,
                    HashMap::new(),
                    stats,
                    &mut |_, _| true,
                );
                match restored {
                    Ok(c) => *core = c,
                    Err((e2, _)) => *core = Core::failed(&old_plan, &e2.to_string()),
                }
                Err(e)
            }
            Err((e, None)) => {
                *core = Core::failed(&old_plan, &e.to_string());
                Err(e)
            }
        }
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

    /// Experts the runtime needs now (`demand`) or predicts it will need (`!demand`): cached
    /// ones are protected from eviction for this request and the next; the others are queued
    /// for reading (demand ahead of the ring and of predictions, predictions behind).
    fn request(&self, units: &[UnitId], demand: bool) {
        let core = self.core.read();
        if core.st.cache.is_empty() {
            return;
        }
        let mut st = core.shared.st.lock();
        st.epoch += 1;
        let epoch = st.epoch;
        let mut any = false;
        for &id in units {
            let UnitId::Expert { layer, .. } = id else {
                continue;
            };
            if self.units.position(id).is_none() {
                continue;
            }
            if demand {
                st.cur_layer = layer;
            }
            if let Some(&slot) = st.cache_of.get(&id) {
                st.cache[slot].protect = epoch;
            } else if demand {
                st.predicted.retain(|&p| p != id);
                if !st.demand.contains(&id) && st.urgent != Some(id) {
                    st.demand.push_back(id);
                    any = true;
                }
            } else if !st.predicted.contains(&id) && !st.demand.contains(&id) {
                st.predicted.push_back(id);
                any = true;
            }
        }
        // Stale predictions beyond what the cache could hold are dropped.
        let cap = st.cache.len();
        while st.predicted.len() > cap {
            st.predicted.pop_front();
        }
        if any {
            core.shared.work.notify_one();
        }
    }

    fn fail_check(st: &State) -> Result<(), SchedulerError> {
        match &st.failed {
            Some(m) => Err(SchedulerError::ReadFailed(m.clone())),
            None => Ok(()),
        }
    }

    fn lease_ring(&self, core: &Core, id: UnitId, pos: usize) -> Result<Lease<'_>, SchedulerError> {
        let s = &core.st;
        let shared = &core.shared;
        let (n, len) = (s.ring.len() as u64, s.cycle.len() as u64);
        let unit = self.units.get(id).ok_or(SchedulerError::NoSuchUnit(id))?;
        let offsets = &self.layouts[pos].part_offsets;
        let mut st = shared.st.lock();
        let mut waited: Option<Instant> = None;
        // A second lease of the unit leased last, still held: share its slot.
        if st.next_lease > 0 {
            let prev = st.next_lease - 1;
            let slot = (prev % n) as usize;
            if s.cycle[(prev % len) as usize] == id
                && st.ring[slot].seq == Some(prev)
                && st.ring[slot].leases > 0
            {
                st.ring[slot].leases += 1;
                // SAFETY: the slot is leased and ready: nobody writes it.
                let data = unsafe { s.ring[slot].slice() };
                return Ok(Lease::new(unit, data, offsets, Some((self, slot))));
            }
        }
        let c = core.cycle_pos[&id] as u64;
        let cur = st.next_lease;
        let skip = (c + len - cur % len) % len;
        if skip > 0 {
            st.next_lease += skip;
            st.stats.ring_skips += skip;
            if st.next_read < st.next_lease {
                st.next_read = st.next_lease;
            }
            shared.work.notify_one();
        }
        let seq = st.next_lease;
        let slot = (seq % n) as usize;
        loop {
            Self::fail_check(&st)?;
            let rs = &st.ring[slot];
            if rs.seq == Some(seq) && rs.ready {
                st.ring[slot].leases += 1;
                st.next_lease = seq + 1;
                st.stats.ring_leases += 1;
                if let Some(t) = waited {
                    st.stats.stall_s += t.elapsed().as_secs_f64();
                }
                shared.work.notify_one();
                // SAFETY: the slot is ready and leased: the I/O thread does not write it until
                // the lease is dropped and its sequence has been passed.
                let data = unsafe { s.ring[slot].slice() };
                return Ok(Lease::new(unit, data, offsets, Some((self, slot))));
            }
            waited.get_or_insert_with(Instant::now);
            shared.work.notify_one();
            shared.done.wait(&mut st);
        }
    }

    fn lease_expert(
        &self,
        core: &Core,
        id: UnitId,
        pos: usize,
        layer: usize,
    ) -> Result<Lease<'_>, SchedulerError> {
        let s = &core.st;
        let shared = &core.shared;
        let unit = self.units.get(id).ok_or(SchedulerError::NoSuchUnit(id))?;
        let offsets = &self.layouts[pos].part_offsets;
        let mut st = shared.st.lock();
        st.cur_layer = layer;
        let mut first = true;
        let mut waited: Option<Instant> = None;
        loop {
            Self::fail_check(&st)?;
            let found = st.cache_of.get(&id).copied();
            if let Some(slot) = found {
                if st.cache[slot].ready {
                    let clock = st.clock + 1;
                    st.clock = clock;
                    let cs = &mut st.cache[slot];
                    cs.leases += 1;
                    cs.last_use = clock;
                    cs.protect = 0;
                    let origin = std::mem::take(&mut cs.origin);
                    if st.urgent == Some(id) {
                        st.urgent = None;
                    }
                    let stats = &mut st.stats;
                    stats.expert_leases += 1;
                    // Hit: no read was needed now (cached from an earlier use, or predicted
                    // and already in); miss: it was read on demand; late: predicted but its
                    // read had not finished.
                    let hit = match origin {
                        Origin::Used => true,
                        Origin::Predicted => {
                            stats.prefetch_used += 1;
                            if first {
                                stats.expert_prefetch_hits += 1;
                            } else {
                                stats.expert_late += 1;
                            }
                            first
                        }
                        Origin::Demanded => {
                            stats.expert_misses += 1;
                            false
                        }
                    };
                    if hit {
                        stats.expert_hits += 1;
                    }
                    st.hit_rate = 0.98 * st.hit_rate + if hit { 0.02 } else { 0.0 };
                    if origin == Origin::Predicted {
                        st.guess_use_rate = 0.95 * st.guess_use_rate + 0.05;
                    }
                    let stats = &mut st.stats;
                    if let Some(l) = stats.expert_layers.get_mut(layer) {
                        l.leases += 1;
                        l.hits += u64::from(hit);
                    }
                    if let Some(t) = waited {
                        stats.stall_s += t.elapsed().as_secs_f64();
                    }
                    // SAFETY: ready and leased: not written until released and evicted.
                    let data = unsafe { s.cache[slot].slice() };
                    return Ok(Lease::new(
                        unit,
                        data,
                        offsets,
                        Some((self, s.ring.len() + slot)),
                    ));
                }
            } else if st.urgent != Some(id) {
                // Not cached: read it now, before anything else.
                st.demand.retain(|&d| d != id);
                st.urgent = Some(id);
            }
            first = false;
            waited.get_or_insert_with(Instant::now);
            shared.work.notify_one();
            shared.done.wait(&mut st);
        }
    }
}

/// Reads `ops` to completion with as many in flight as the backend wants; returns bytes read.
fn read_all(
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
                        first_err =
                            Some(SchedulerError::ReadFailed(format!("reading {unit:?}: {e}")));
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

    fn rows_in(&self, core: &Core, tokens: &[u32], out: &mut [u8]) -> Result<(), SchedulerError> {
        let e = self
            .embd
            .ok_or(SchedulerError::NoSuchUnit(UnitId::Embedding))?;
        let rb = e.row_bytes as usize;
        if out.len() < tokens.len() * rb {
            return Err(SchedulerError::BadRequest(format!(
                "{} bytes of room for {} embedding rows of {rb} bytes",
                out.len(),
                tokens.len()
            )));
        }
        for &t in tokens {
            if u64::from(t) >= e.n_rows {
                return Err(SchedulerError::TokenOutOfRange {
                    token: t,
                    n_vocab: e.n_rows,
                });
            }
        }
        if let Some(r) = core.pinned[e.pos] {
            // SAFETY: pinned regions are immutable while the core is installed.
            let table = unsafe { r.slice() };
            let base = self.layouts[e.pos].part_offsets[0];
            for (&t, dst) in tokens.iter().zip(out.chunks_exact_mut(rb)) {
                let o = base + t as usize * rb;
                dst.copy_from_slice(&table[o..o + rb]);
            }
            return Ok(());
        }
        Self::fail_check(&core.shared.st.lock())?;
        let _one = self.row_lock.lock();
        let s = &core.st;
        let shared = &core.shared;
        let per = (s.row_scratch.len as u64 / s.row_foot.max(1)).max(1) as usize;
        for (chunk_i, chunk) in tokens.chunks(per).enumerate() {
            let mut ops = Vec::with_capacity(chunk.len());
            let mut inner = Vec::with_capacity(chunk.len());
            for (i, &t) in chunk.iter().enumerate() {
                let start = e.offset + u64::from(t) * e.row_bytes;
                let a = start / s.align * s.align;
                let end = start + e.row_bytes;
                let len = end.div_ceil(s.align) * s.align - a;
                let dst_off = i as u64 * s.row_foot;
                ops.push(ReadOp {
                    file: e.file,
                    offset: a,
                    len: len as usize,
                    required: (end - a) as usize,
                    dst: s.row_scratch.at(dst_off),
                    tag: 0,
                });
                inner.push((dst_off + (start - a)) as usize);
            }
            {
                let mut st = shared.st.lock();
                Self::fail_check(&st)?;
                st.rows = Some(RowJob {
                    outstanding: ops.len(),
                    ops,
                    issued: false,
                });
                shared.work.notify_one();
                let t0 = Instant::now();
                loop {
                    Self::fail_check(&st)?;
                    if st
                        .rows
                        .as_ref()
                        .is_some_and(|j| j.issued && j.outstanding == 0)
                    {
                        break;
                    }
                    shared.done.wait(&mut st);
                }
                st.rows = None;
                st.stats.stall_s += t0.elapsed().as_secs_f64();
            }
            // SAFETY: the row job is complete and the row lock is held: nobody writes the
            // scratch now.
            let scratch = unsafe { s.row_scratch.slice() };
            for (i, &o) in inner.iter().enumerate() {
                let dst = &mut out[(chunk_i * per + i) * rb..(chunk_i * per + i + 1) * rb];
                dst.copy_from_slice(&scratch[o..o + rb]);
            }
        }
        Ok(())
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

/// Turns the state into reads: rows first, then expert misses, then the ring, then
/// predictions.
fn plan_work(
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

fn start_expert(
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

/// Targets of reads in flight, by tag, with the number of ops still out for each.
#[derive(Default)]
struct Slab {
    entries: Vec<Option<(Target, usize)>>,
    free: Vec<usize>,
}

impl Slab {
    fn insert(&mut self, t: Target) -> u64 {
        match self.free.pop() {
            Some(i) => {
                self.entries[i] = Some((t, 0));
                i as u64
            }
            None => {
                self.entries.push(Some((t, 0)));
                (self.entries.len() - 1) as u64
            }
        }
    }

    fn add_refs(&mut self, tag: u64, n: usize) {
        if let Some(Some(e)) = self.entries.get_mut(tag as usize) {
            e.1 += n;
            if e.1 == 0 {
                self.entries[tag as usize] = None;
                self.free.push(tag as usize);
            }
        }
    }

    /// One op of `tag` finished: its target.
    fn finish(&mut self, tag: u64) -> Option<Target> {
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

fn apply(s: &Static, st: &mut State, slab: &mut Slab, c: Completion) {
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
                st.failed = Some(format!("reading {what}: {e}"));
            }
        }
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

fn io_thread(
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
                    .get_or_insert_with(|| format!("read backend failed: {e}"));
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
