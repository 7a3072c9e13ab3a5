//! The slot state machine shared by leases and the I/O thread (under one lock).

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use parking_lot::{Condvar, Mutex};

use flashstream_loader::ReadOp;

use super::policy;
use super::ReadFailure;
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
    pub(super) failed: Option<ReadFailure>,
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

    /// The counters the expert-cache policy reads.
    pub(super) fn policy_ctx(&self) -> policy::Ctx {
        policy::Ctx {
            epoch: self.epoch,
            clock: self.clock,
            window: self.window,
            layers: self.layers,
            cur_layer: self.cur_layer,
            hit_rate: self.hit_rate,
            guess_use_rate: self.guess_use_rate,
            policy: self.policy,
        }
    }

    /// [`policy::victim`] for this state.
    pub(super) fn victim(&self, level: u8) -> Option<usize> {
        policy::victim(&self.cache, &self.policy_ctx(), level)
    }

    /// [`policy::prediction_victim`] for this state.
    pub(super) fn prediction_victim(&self, layer: usize) -> Option<usize> {
        policy::prediction_victim(&self.cache, &self.policy_ctx(), layer)
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
