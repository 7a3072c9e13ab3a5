//! Residency: which weights are in RAM, and handing them to the runtime as leases.
//!
//! The runtime asks a [`WeightSource`] for a unit ([`UnitId`]: a layer, an expert, the head,
//! the embedding) and gets a [`Lease`]: the unit's bytes, borrowed, with each tensor (or expert
//! slice) as a [`Part`]. A lease blocks until the bytes are there; dropping it lets the source
//! reuse the memory. The scheduler moves bytes and decides residency; it never does arithmetic
//! on weights.
//!
//! [`ResidentSource`] keeps every unit in RAM (for models that fit); [`StreamingSource`]
//! implements the same trait over what a [`Plan`] pins, a bounded ring of slots and an expert
//! cache, filled by a dedicated I/O thread.

#![warn(missing_docs)]

pub mod layout;
pub mod plan;
mod resident;
mod stream;
pub mod sysmem;
#[cfg(unix)]
#[doc(hidden)]
pub mod testing;
pub mod trace;
mod units;

pub use plan::{BudgetItem, ExpertPolicy, Plan, PlanRequest, RuntimeNeeds};
pub use resident::ResidentSource;
pub use stream::{ReadFailure, StreamingSource, SOURCE_READ_BYTES};
pub use trace::{Trace, Track};
pub use units::{Part, Unit, UnitId, UnitTable};

/// Errors of the scheduler.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SchedulerError {
    /// Reading weights failed.
    #[error(transparent)]
    Load(#[from] flashstream_loader::LoaderError),
    /// The model asks for something this source does not have.
    #[error("unit {0:?} does not exist in this model")]
    NoSuchUnit(UnitId),
    /// A token id outside the embedding.
    #[error("token id {token} is outside the embedding ({n_vocab} rows)")]
    TokenOutOfRange {
        /// The token.
        token: u32,
        /// Rows of the embedding.
        n_vocab: u64,
    },
    /// The model's tensors cannot be grouped into units.
    #[error("model layout: {0}")]
    BadModel(String),
    /// Memory for weights could not be allocated.
    #[error("cannot allocate {bytes} bytes for {what}")]
    OutOfMemory {
        /// How much.
        bytes: u64,
        /// For what.
        what: String,
    },
    /// The budget cannot hold the minimum this model needs.
    #[error("memory budget of {} is below the minimum of {} this model needs ({breakdown}); raise --mem to at least {}", fmt_bytes(*budget), fmt_bytes(*minimum), fmt_bytes(*minimum))]
    BudgetTooSmall {
        /// The budget.
        budget: u64,
        /// The minimum.
        minimum: u64,
        /// What the minimum is made of.
        breakdown: String,
    },
    /// A request that cannot be planned or served (bad context length, wrong plan, ...).
    #[error("{0}")]
    BadRequest(String),
    /// A unit the plan does not keep or stream as a whole (e.g. an embedding read by rows).
    #[error("unit {0:?} is not resident in this plan (it is read piecewise)")]
    NotResident(UnitId),
    /// A read failed; every later lease fails the same way.
    #[error(transparent)]
    ReadFailed(ReadFailure),
    /// The caller's progress callback asked to stop loading.
    #[error("loading was cancelled by the progress callback")]
    Cancelled,
    /// The I/O thread could not be started.
    #[error("cannot start the I/O thread: {0}")]
    Thread(String),
}

/// `bytes` for messages and reports (the one byte formatter of the project): GiB with two
/// decimals from 1 GiB, MiB and KiB with one below, plain bytes below 1 KiB.
pub fn fmt_bytes(bytes: u64) -> String {
    let b = bytes as f64;
    if bytes >= 1 << 30 {
        format!("{:.2} GiB", b / (1u64 << 30) as f64)
    } else if bytes >= 1 << 20 {
        format!("{:.1} MiB", b / (1u64 << 20) as f64)
    } else if bytes >= 1 << 10 {
        format!("{:.1} KiB", b / 1024.0)
    } else {
        format!("{bytes} B")
    }
}

/// Expert-cache counters of one layer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LayerExpertStats {
    /// Expert leases.
    pub leases: u64,
    /// Leases served from the cache without waiting.
    pub hits: u64,
}

/// What a weight source has done so far (cumulative; take differences for a span of time).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SourceStats {
    /// Bytes read from the model files since the start (after the initial load).
    pub bytes_read: u64,
    /// Reads completed since the start (after the initial load).
    pub reads: u64,
    /// Seconds during which at least one read was in flight.
    pub io_busy_s: f64,
    /// Seconds leases (and embedding-row reads) waited for bytes.
    pub stall_s: f64,
    /// Bytes read up front (pinned units).
    pub load_bytes: u64,
    /// Seconds the up-front read took.
    pub load_s: f64,
    /// Leases of ring units.
    pub ring_leases: u64,
    /// Ring units skipped because a lease asked for a later one (a pass cut short).
    pub ring_skips: u64,
    /// Expert leases.
    pub expert_leases: u64,
    /// Expert leases that needed no read when the runtime asked: cached from an earlier use,
    /// or predicted and already read (`expert_prefetch_hits` of them).
    pub expert_hits: u64,
    /// Hits owed to a prediction.
    pub expert_prefetch_hits: u64,
    /// Expert leases that were read on demand.
    pub expert_misses: u64,
    /// Expert leases whose predicted read had started but not finished.
    pub expert_late: u64,
    /// Experts read on demand and evicted before their lease (a cache too small for one
    /// layer's experts).
    pub expert_evicted_unused: u64,
    /// Expert bytes read (aligned), misses and predictions.
    pub expert_bytes_read: u64,
    /// Predicted experts read.
    pub prefetch_issued: u64,
    /// Predicted experts that were leased before being evicted.
    pub prefetch_used: u64,
    /// Predicted experts evicted without being leased.
    pub prefetch_wasted: u64,
    /// Per-layer expert counters (empty without an expert cache).
    pub expert_layers: Vec<LayerExpertStats>,
}

impl SourceStats {
    /// The counters accumulated since `earlier` (a snapshot of the same source); the
    /// up-front load figures are kept as they are.
    pub fn since(&self, earlier: &SourceStats) -> SourceStats {
        let d = |a: u64, b: u64| a.saturating_sub(b);
        SourceStats {
            bytes_read: d(self.bytes_read, earlier.bytes_read),
            reads: d(self.reads, earlier.reads),
            io_busy_s: (self.io_busy_s - earlier.io_busy_s).max(0.0),
            stall_s: (self.stall_s - earlier.stall_s).max(0.0),
            load_bytes: self.load_bytes,
            load_s: self.load_s,
            ring_leases: d(self.ring_leases, earlier.ring_leases),
            ring_skips: d(self.ring_skips, earlier.ring_skips),
            expert_leases: d(self.expert_leases, earlier.expert_leases),
            expert_hits: d(self.expert_hits, earlier.expert_hits),
            expert_prefetch_hits: d(self.expert_prefetch_hits, earlier.expert_prefetch_hits),
            expert_evicted_unused: d(self.expert_evicted_unused, earlier.expert_evicted_unused),
            expert_misses: d(self.expert_misses, earlier.expert_misses),
            expert_late: d(self.expert_late, earlier.expert_late),
            expert_bytes_read: d(self.expert_bytes_read, earlier.expert_bytes_read),
            prefetch_issued: d(self.prefetch_issued, earlier.prefetch_issued),
            prefetch_used: d(self.prefetch_used, earlier.prefetch_used),
            prefetch_wasted: d(self.prefetch_wasted, earlier.prefetch_wasted),
            expert_layers: self
                .expert_layers
                .iter()
                .enumerate()
                .map(|(i, x)| {
                    let y = earlier.expert_layers.get(i).copied().unwrap_or_default();
                    LayerExpertStats {
                        leases: d(x.leases, y.leases),
                        hits: d(x.hits, y.hits),
                    }
                })
                .collect(),
        }
    }
}

/// Gives the runtime a guard when the lease is dropped (streaming sources free the slot).
pub trait Release: Sync {
    /// Called once when the lease holding `slot` is dropped.
    fn release(&self, slot: usize);
}

struct SlotGuard<'a> {
    owner: &'a dyn Release,
    slot: usize,
}

impl Drop for SlotGuard<'_> {
    fn drop(&mut self) {
        self.owner.release(self.slot);
    }
}

/// A unit's bytes in RAM, borrowed from the source until dropped.
pub struct Lease<'a> {
    unit: &'a Unit,
    data: &'a [u8],
    offsets: &'a [usize],
    _guard: Option<SlotGuard<'a>>,
}

impl<'a> Lease<'a> {
    /// A lease over `data`, where part `i` of `unit` starts at `offsets[i]`. `release` (with
    /// its slot number) is told when the lease is dropped.
    ///
    /// # Panics
    /// If `offsets` does not describe parts lying inside `data` (a source bug).
    pub fn new(
        unit: &'a Unit,
        data: &'a [u8],
        offsets: &'a [usize],
        release: Option<(&'a dyn Release, usize)>,
    ) -> Self {
        assert_eq!(offsets.len(), unit.parts.len(), "one offset per part");
        for (p, &o) in unit.parts.iter().zip(offsets) {
            assert!(
                o + p.len as usize <= data.len(),
                "part {} outside the lease",
                p.name
            );
        }
        Lease {
            unit,
            data,
            offsets,
            _guard: release.map(|(owner, slot)| SlotGuard { owner, slot }),
        }
    }

    /// The unit.
    pub fn unit(&self) -> &'a Unit {
        self.unit
    }

    /// The bytes of part `i`.
    ///
    /// # Panics
    /// If `i` is not a part index of this unit.
    pub fn part(&self, i: usize) -> &[u8] {
        let o = self.offsets[i];
        &self.data[o..o + self.unit.parts[i].len as usize]
    }

    /// The bytes of the part called `name`.
    pub fn part_by_name(&self, name: &str) -> Option<&[u8]> {
        self.unit.part_index(name).map(|i| self.part(i))
    }
}

impl std::fmt::Debug for Lease<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("unit", &self.unit.id)
            .finish()
    }
}

/// Where the runtime gets weights from.
pub trait WeightSource: Send + Sync {
    /// The model's units.
    fn units(&self) -> &UnitTable;

    /// The bytes of unit `id`, blocking until they are in RAM.
    fn lease(&self, id: UnitId) -> Result<Lease<'_>, SchedulerError>;

    /// Says which units will probably be asked for soon (predictions: a streaming source reads
    /// them in the background, behind what is needed now, if it has room; a resident one
    /// ignores it). Layers need no hint: a streaming source reads them ahead in use order.
    fn prefetch(&self, _upcoming: &[UnitId]) {}

    /// Says which units will be asked for now, before the first of them is leased (the routed
    /// experts of a layer), so their reads go out together.
    fn will_need(&self, _units: &[UnitId]) {}

    /// Whether `id` is in RAM for the whole run (leasing it never waits nor disturbs the
    /// streaming order).
    fn is_resident(&self, _id: UnitId) -> bool {
        true
    }

    /// Whether every unit is in RAM for the whole run (hints are then pointless).
    fn all_resident(&self) -> bool {
        true
    }

    /// Copies the embedding rows of `tokens` into `out` (`tokens.len()` rows of raw bytes).
    fn embedding_rows(&self, tokens: &[u32], out: &mut [u8]) -> Result<(), SchedulerError>;

    /// Counters so far.
    fn stats(&self) -> SourceStats {
        SourceStats::default()
    }

    /// Called by the runtime at the start of every forward pass (a token, a prompt, a shared
    /// pass), before any lease of that pass and while no other pass runs: the moment a source
    /// may change its residency (e.g. follow a budget that moved). An error fails the pass.
    fn before_pass(&self) -> Result<(), SchedulerError> {
        Ok(())
    }
}

#[cfg(test)]
mod fmt_tests {
    use super::fmt_bytes;

    #[test]
    fn each_unit_at_its_threshold() {
        assert_eq!(fmt_bytes(0), "0 B");
        assert_eq!(fmt_bytes(1023), "1023 B");
        assert_eq!(fmt_bytes(1024), "1.0 KiB");
        assert_eq!(fmt_bytes(48 << 10), "48.0 KiB");
        assert_eq!(fmt_bytes(1 << 20), "1.0 MiB");
        assert_eq!(fmt_bytes(177_600_000), "169.4 MiB");
        assert_eq!(fmt_bytes(3 << 29), "1.50 GiB");
    }
}
