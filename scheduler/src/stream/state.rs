//! The slot state machine shared by leases and the I/O thread (under one lock), and the
//! expert-cache eviction choices.

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use parking_lot::{Condvar, Mutex};

use flashstream_loader::ReadOp;

use super::PREDICTION_AGE_TOKENS;
use crate::plan::ExpertPolicy;
use crate::{SourceStats, UnitId};

#[derive(Debug, Default, Clone)]
pub(super) struct RingSlot {
    pub(super) seq: Option<u64>,
    pub(super) loading: usize,
    pub(super) ready: bool,
    pub(super) leases: usize,
}

#[derive(Debug, Default, Clone)]
pub(super) struct CacheSlot {
    pub(super) unit: Option<UnitId>,
    pub(super) loading: usize,
    pub(super) ready: bool,
    pub(super) leases: usize,
    pub(super) last_use: u64,
    /// Request epoch that last protected it (0: never).
    pub(super) protect: u64,
    /// Why it was read, until its first lease.
    pub(super) origin: Origin,
}

/// Why an expert is in the cache.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) enum Origin {
    /// Leased at least once since it was read (or empty).
    #[default]
    Used,
    /// Read because a prediction asked for it; not leased yet.
    Predicted,
    /// Read because the runtime needed it now (`will_need` or a lease); not leased yet.
    Demanded,
}

#[derive(Debug)]
pub(super) struct RowJob {
    pub(super) ops: Vec<ReadOp>,
    pub(super) issued: bool,
    pub(super) outstanding: usize,
}

pub(super) struct State {
    pub(super) ring: Vec<RingSlot>,
    pub(super) next_read: u64,
    pub(super) next_lease: u64,
    pub(super) cache: Vec<CacheSlot>,
    pub(super) cache_of: HashMap<UnitId, usize>,
    pub(super) demand: VecDeque<UnitId>,
    /// The expert a lease is blocked on (read first, may evict anything not leased).
    pub(super) urgent: Option<UnitId>,
    pub(super) predicted: VecDeque<UnitId>,
    pub(super) epoch: u64,
    pub(super) clock: u64,
    /// Expert leases in one token (the plan's estimate): how recent a use protects from
    /// predictions.
    pub(super) window: u64,
    /// Layers of the model, and the layer of the last expert request or lease.
    pub(super) layers: usize,
    pub(super) cur_layer: usize,
    /// Running rates (exponential averages): expert leases that hit the cache, and guesses
    /// that were leased before being evicted.
    pub(super) hit_rate: f64,
    pub(super) guess_use_rate: f64,
    pub(super) policy: ExpertPolicy,
    pub(super) rows: Option<RowJob>,
    /// When the current stretch with reads in flight began (the I/O thread sets and ends it).
    pub(super) busy_since: Option<Instant>,
    pub(super) failed: Option<String>,
    pub(super) shutdown: bool,
    pub(super) stats: SourceStats,
}

impl State {
    pub(super) fn new(
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

    pub(super) fn protected(&self, slot: usize) -> bool {
        let p = self.cache[slot].protect;
        p != 0 && p + 1 >= self.epoch
    }

    /// The slot to (re)use for a new expert: an empty one, else the least recently used of
    /// those neither leased nor loading, taken from the least valuable class first: unused
    /// guesses, then anything unprotected; then (`level >= 1`) protected ones; then
    /// (`level >= 2`, only for the read a lease is blocked on) experts demanded for this
    /// layer and not leased yet.
    pub(super) fn victim(&self, level: u8) -> Option<usize> {
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
    pub(super) fn prediction_victim(&self, layer: usize) -> Option<usize> {
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

    pub(super) fn ring_slot_free(&self, slot: usize) -> bool {
        let s = &self.ring[slot];
        s.leases == 0 && s.loading == 0 && s.seq.is_none_or(|q| q < self.next_lease)
    }
}

pub(super) struct Shared {
    pub(super) st: Mutex<State>,
    /// Wakes the I/O thread (new work, a slot released, shutdown).
    pub(super) work: Condvar,
    /// Wakes lease waiters (a read completed, an error).
    pub(super) done: Condvar,
}
