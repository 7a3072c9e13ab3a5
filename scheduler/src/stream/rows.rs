//! Embedding rows read on demand (when the embedding is not pinned) into the row scratch.

use std::time::Instant;

use flashstream_loader::ReadOp;

use super::residency::Core;
use super::state::RowJob;
use super::StreamingSource;
use crate::{SchedulerError, UnitId};

/// Where embedding rows are in the file.
#[derive(Debug, Clone, Copy)]
pub(super) struct EmbdInfo {
    pub(super) file: usize,
    pub(super) offset: u64,
    pub(super) row_bytes: u64,
    pub(super) n_rows: u64,
    /// Position of the Embedding unit (for pinned copies), if it is one unit.
    pub(super) pos: Option<usize>,
    /// When a tied model's embedding is split into [`UnitId::HeadRows`] units: the position
    /// of the first and the rows each holds (the last may hold fewer).
    pub(super) pieces: Option<(usize, u64)>,
}

impl StreamingSource {
    pub(super) fn rows_in(
        &self,
        core: &Core,
        tokens: &[u32],
        out: &mut [u8],
    ) -> Result<(), SchedulerError> {
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
        if let Some(r) = e.pos.and_then(|p| core.pinned[p]) {
            // SAFETY: pinned regions are immutable while the core is installed.
            let table = unsafe { r.slice() };
            let base = self.layouts[e.pos.unwrap_or(0)].part_offsets[0];
            for (&t, dst) in tokens.iter().zip(out.chunks_exact_mut(rb)) {
                let o = base + t as usize * rb;
                dst.copy_from_slice(&table[o..o + rb]);
            }
            return Ok(());
        }
        if let Some((first, per)) = e.pieces {
            // Rows of pinned head pieces are copied; if any row's piece streams, all are read.
            let piece = |t: u32| first + (u64::from(t) / per) as usize;
            if tokens.iter().all(|&t| core.pinned[piece(t)].is_some()) {
                for (&t, dst) in tokens.iter().zip(out.chunks_exact_mut(rb)) {
                    let pos = piece(t);
                    if let Some(r) = core.pinned[pos] {
                        // SAFETY: pinned regions are immutable while the core is installed.
                        let table = unsafe { r.slice() };
                        let o =
                            self.layouts[pos].part_offsets[0] + (u64::from(t) % per) as usize * rb;
                        dst.copy_from_slice(&table[o..o + rb]);
                    }
                }
                return Ok(());
            }
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
