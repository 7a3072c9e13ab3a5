//! Leases of streamed units: the ring in cycle order, the expert cache, and expert requests
//! (demand and predictions).

use std::time::Instant;

use super::residency::Core;
use super::state::{Origin, State};
use super::StreamingSource;
use crate::trace::Track;
use crate::{Lease, SchedulerError, UnitId};

impl StreamingSource {
    /// Experts the runtime needs now (`demand`) or predicts it will need (`!demand`): cached
    /// ones are protected from eviction for this request and the next; the others are queued
    /// for reading (demand ahead of the ring and of predictions, predictions behind).
    pub(super) fn request(&self, units: &[UnitId], demand: bool) {
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

    pub(super) fn fail_check(st: &State) -> Result<(), SchedulerError> {
        match &st.failed {
            Some(f) => Err(SchedulerError::ReadFailed(f.clone())),
            None => Ok(()),
        }
    }

    pub(super) fn lease_ring(
        &self,
        core: &Core,
        id: UnitId,
        pos: usize,
    ) -> Result<Lease<'_>, SchedulerError> {
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
                    stall(core, id, t);
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

    pub(super) fn lease_expert(
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
                        stall(core, id, t);
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

/// Records that a lease of `id` waited from `since` until now.
fn stall(core: &Core, id: UnitId, since: Instant) {
    core.st.trace.span(
        Track::Stalls,
        "stall",
        Some(since),
        || format!("stall {id}"),
        Vec::new,
    );
}
