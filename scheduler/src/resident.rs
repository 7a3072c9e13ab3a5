//! Everything in RAM: each unit read once into an aligned buffer.

use flashstream_formats::GgufModel;
use flashstream_loader::{IoBuffer, ModelFiles};

use crate::{Lease, SchedulerError, UnitId, UnitTable, WeightSource};

/// Alignment of parts inside a unit buffer (f32 tensors are viewed in place).
const PART_ALIGN: usize = 64;

struct Loaded {
    buf: IoBuffer,
    offsets: Vec<usize>,
}

/// A [`WeightSource`] that reads every unit into RAM up front.
pub struct ResidentSource {
    units: UnitTable,
    loaded: Vec<Loaded>,
    embd_row_bytes: usize,
    embd_rows: u64,
}

impl ResidentSource {
    /// Reads every tensor of `model` into memory.
    pub fn load(model: &GgufModel) -> Result<Self, SchedulerError> {
        let _span = tracing::info_span!("resident_load").entered();
        let units = UnitTable::from_model(model)?;
        let files = ModelFiles::open(model)?;
        let mut loaded = Vec::new();
        for unit in units.iter() {
            let mut offsets = Vec::with_capacity(unit.parts.len());
            let mut size = 0usize;
            for p in &unit.parts {
                offsets.push(size);
                size = (size + p.len as usize).div_ceil(PART_ALIGN) * PART_ALIGN;
            }
            let mut buf = IoBuffer::zeroed(size).ok_or(SchedulerError::OutOfMemory {
                bytes: size as u64,
                what: format!("unit {:?}", unit.id),
            })?;
            for (p, &o) in unit.parts.iter().zip(&offsets) {
                files.read_exact_at(
                    p.file,
                    p.offset,
                    &mut buf.as_mut_slice()[o..o + p.len as usize],
                )?;
            }
            loaded.push(Loaded { buf, offsets });
        }
        let (embd_row_bytes, embd_rows) = match model.tensor("token_embd.weight") {
            Some(t) => (t.row_bytes() as usize, t.n_rows()),
            None => (0, 0),
        };
        Ok(ResidentSource {
            units,
            loaded,
            embd_row_bytes,
            embd_rows,
        })
    }

    fn index(&self, id: UnitId) -> Result<usize, SchedulerError> {
        self.units
            .position(id)
            .ok_or(SchedulerError::NoSuchUnit(id))
    }
}

impl WeightSource for ResidentSource {
    fn units(&self) -> &UnitTable {
        &self.units
    }

    fn lease(&self, id: UnitId) -> Result<Lease<'_>, SchedulerError> {
        let unit = self.units.get(id).ok_or(SchedulerError::NoSuchUnit(id))?;
        let l = &self.loaded[self.index(id)?];
        Ok(Lease::new(unit, l.buf.as_slice(), &l.offsets, None))
    }

    fn embedding_rows(&self, tokens: &[u32], out: &mut [u8]) -> Result<(), SchedulerError> {
        let rb = self.embd_row_bytes;
        // A tied model's embedding may be split into head row ranges of `per` rows each.
        let (whole, per) = match self.units.embedding_pieces() {
            Some((_, per)) => (false, per.max(1)),
            None => (true, self.embd_rows.max(1)),
        };
        for (t, dst) in tokens.iter().zip(out.chunks_exact_mut(rb)) {
            let t = u64::from(*t);
            if t >= self.embd_rows {
                return Err(SchedulerError::TokenOutOfRange {
                    token: t as u32,
                    n_vocab: self.embd_rows,
                });
            }
            let id = if whole {
                UnitId::Embedding
            } else {
                UnitId::HeadRows((t / per) as usize)
            };
            let lease = self.lease(id)?;
            let o = (t % per) as usize * rb;
            dst.copy_from_slice(&lease.part(0)[o..o + rb]);
        }
        Ok(())
    }
}
