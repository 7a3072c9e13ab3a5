//! Residency: which weights are in RAM, and handing them to the runtime as leases.
//!
//! The runtime asks a [`WeightSource`] for a unit ([`UnitId`]: a layer, an expert, the head,
//! the embedding) and gets a [`Lease`]: the unit's bytes, borrowed, with each tensor (or expert
//! slice) as a [`Part`]. A lease blocks until the bytes are there; dropping it lets the source
//! reuse the memory. The scheduler moves bytes and decides residency; it never does arithmetic
//! on weights.
//!
//! [`ResidentSource`] keeps every unit in RAM (for models that fit); the streaming source
//! implements the same trait over a bounded ring of slots.

#![warn(missing_docs)]

mod resident;
mod units;

pub use resident::ResidentSource;
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

    /// Says which units will be asked for next, in order (a streaming source starts reading
    /// them; a resident one ignores it).
    fn prefetch(&self, _upcoming: &[UnitId]) {}

    /// Copies the embedding rows of `tokens` into `out` (`tokens.len()` rows of raw bytes).
    fn embedding_rows(&self, tokens: &[u32], out: &mut [u8]) -> Result<(), SchedulerError>;
}
