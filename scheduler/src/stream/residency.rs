//! The memory and I/O thread of one plan (a [`Core`]): allocating what the plan counts, reading
//! the pinned units, and swapping it for another plan's ([`StreamingSource::rebudget`]).

use std::collections::HashMap;
use std::ptr::NonNull;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use parking_lot::{Condvar, Mutex};

use flashstream_loader::{IoBuffer, ReadBackend};

use super::io::{io_thread, read_all, unit_ops};
use super::state::{Shared, State};
use super::{ReadFailure, StreamingSource};
use crate::layout::UnitLayout;
use crate::plan::Plan;
use crate::trace::Trace;
use crate::{LayerExpertStats, SchedulerError, SourceStats, UnitId, UnitTable};

/// A region of memory owned by the source (one of its buffers).
#[derive(Clone, Copy)]
pub(super) struct Region {
    pub(super) ptr: NonNull<u8>,
    pub(super) len: usize,
}

// SAFETY: regions point into buffers the source owns for its whole life; who may touch them
// when is governed by the slot state machine under `Shared::st`.
unsafe impl Send for Region {}
unsafe impl Sync for Region {}

impl Region {
    pub(super) fn of(buf: &mut IoBuffer) -> Region {
        let s = buf.as_mut_slice();
        Region {
            len: s.len(),
            ptr: NonNull::new(s.as_mut_ptr()).unwrap_or(NonNull::dangling()),
        }
    }

    /// # Safety
    /// Nobody may be writing the region for the lifetime of the slice.
    pub(super) unsafe fn slice<'a>(self) -> &'a [u8] {
        std::slice::from_raw_parts(self.ptr.as_ptr(), self.len)
    }

    pub(super) fn at(self, offset: u64) -> NonNull<u8> {
        debug_assert!(offset as usize <= self.len);
        // SAFETY: offsets come from layouts that fit the region (checked when built).
        unsafe { NonNull::new_unchecked(self.ptr.as_ptr().add(offset as usize)) }
    }
}

/// What never changes after construction; shared with the I/O thread.
pub(super) struct Static {
    pub(super) cycle: Vec<UnitId>,
    pub(super) ring: Vec<Region>,
    pub(super) cache: Vec<Region>,
    pub(super) row_scratch: Region,
    /// Row footprint in the scratch.
    pub(super) row_foot: u64,
    pub(super) layouts: Vec<UnitLayout>,
    pub(super) units: UnitTable,
    pub(super) chunk: u64,
    pub(super) align: u64,
    /// Where reads are recorded (off unless the source was given a recording trace).
    pub(super) trace: Trace,
}

/// The memory and the I/O thread of one plan.
pub(super) struct Core {
    pub(super) st: Arc<Static>,
    pub(super) shared: Arc<Shared>,
    pub(super) io: Option<JoinHandle<Box<dyn ReadBackend>>>,
    pub(super) plan: Plan,
    /// Pinned region of each unit (by position), if pinned.
    pub(super) pinned: Vec<Option<Region>>,
    pub(super) cycle_pos: HashMap<UnitId, usize>,
    /// The pinned buffers, by unit position (kept across a rebudget that keeps them pinned).
    pub(super) pinned_bufs: HashMap<usize, IoBuffer>,
    /// Ring, expert-cache and row-scratch buffers (the regions of `st` point into them).
    pub(super) _slot_bufs: Vec<IoBuffer>,
}

impl Core {
    /// Stops the I/O thread (it waits for its reads in flight) and returns the backend.
    pub(super) fn stop(&mut self) -> Option<Box<dyn ReadBackend>> {
        self.shared.st.lock().shutdown = true;
        self.shared.work.notify_all();
        self.io.take().and_then(|h| h.join().ok())
    }
}

impl Core {
    /// A core without memory whose every lease fails with `msg` (before the first build, and
    /// after a rebudget that could restore nothing).
    pub(super) fn failed(plan: &Plan, failure: ReadFailure) -> Core {
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
            trace: Trace::off(),
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
        shared.st.lock().failed = Some(failure);
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
pub(super) fn release_to_os() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

pub(super) fn alloc(bytes: u64, what: &str) -> Result<IoBuffer, SchedulerError> {
    usize::try_from(bytes)
        .ok()
        .and_then(IoBuffer::zeroed)
        .ok_or_else(|| SchedulerError::OutOfMemory {
            bytes,
            what: what.to_string(),
        })
}

impl StreamingSource {
    /// Checks that `plan` can run here (its slots hold every unit that can land in them, the
    /// row scratch holds a row) before anything is freed or allocated for it.
    pub(super) fn check_plan(&self, plan: &Plan) -> Result<(), SchedulerError> {
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
    pub(super) fn build_core(
        &self,
        plan: Plan,
        mut backend: Box<dyn ReadBackend>,
        mut keep: HashMap<usize, IoBuffer>,
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
            trace: self.trace.clone(),
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

    pub(super) fn swap_core(&self, plan: Plan) -> Result<(), SchedulerError> {
        let mut core = self.core.write();
        if let Some(f) = &core.shared.st.lock().failed {
            return Err(SchedulerError::ReadFailed(f.clone()));
        }
        let old_plan = core.plan.clone();
        let stats = core.shared.st.lock().stats.clone();
        let Some(mut backend) = core.stop() else {
            return Err(SchedulerError::Thread(
                "the I/O thread ended abnormally".into(),
            ));
        };
        let failed = core.shared.st.lock().failed.clone();
        if let Some(f) = failed {
            // A read failed while the thread wound down: keep that state.
            *core = Core::failed(&old_plan, f.clone());
            return Err(SchedulerError::ReadFailed(f));
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
        *core = Core::failed(
            &old_plan,
            ReadFailure::NotReady("the residency is being changed"),
        );
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
                    Err((e2, _)) => {
                        *core = Core::failed(&old_plan, ReadFailure::Rebuild(Arc::new(e2)))
                    }
                }
                Err(e)
            }
            Err((e, None)) => {
                // Only a thread that could not start loses the backend: later leases fail
                // with that error, and the caller gets it too.
                let sticky = match &e {
                    SchedulerError::Thread(m) => SchedulerError::Thread(m.clone()),
                    other => SchedulerError::BadRequest(other.to_string()),
                };
                *core = Core::failed(&old_plan, ReadFailure::Rebuild(Arc::new(sticky)));
                Err(e)
            }
        }
    }
}
