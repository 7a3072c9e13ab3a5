//! Where a unit's bytes go in RAM when read with aligned (`O_DIRECT`) reads.
//!
//! GGUF tensors are only 32-byte aligned; direct reads need 4096-aligned file offsets, lengths
//! and memory. A unit's parts are grouped into extents (runs of parts in one file whose
//! aligned ranges touch or nearly touch), each extent is rounded out to the alignment and
//! placed at an aligned position of the unit's buffer, and each part is then found inside its
//! extent at `part.offset - extent start`. Parts therefore keep their file offset modulo the
//! alignment, so every part stays at least 32-byte aligned in memory.

use crate::{SchedulerError, Unit};

/// Parts closer than this in a file are read as one extent (reading the gap is cheaper than
/// another request).
pub const MERGE_GAP: u64 = 64 * 1024;

/// One aligned read of a unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// File index.
    pub file: usize,
    /// Aligned file offset.
    pub offset: u64,
    /// Aligned length (may run past the end of the file).
    pub len: u64,
    /// Bytes from `offset` that must exist (up to the end of the last part).
    pub required: u64,
    /// Where the extent starts in the unit's buffer (aligned).
    pub buf_offset: u64,
}

/// The aligned layout of one unit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitLayout {
    /// The reads, in file order.
    pub extents: Vec<Extent>,
    /// Offset of each part (in the unit's part order) inside the unit's buffer.
    pub part_offsets: Vec<usize>,
    /// Bytes of buffer the unit needs (a multiple of the alignment).
    pub bytes: u64,
}

fn round_down(x: u64, a: u64) -> u64 {
    x / a * a
}

fn round_up(x: u64, a: u64) -> Option<u64> {
    x.checked_add(a - 1).map(|v| v / a * a)
}

impl UnitLayout {
    /// Lays out `unit` for reads aligned to `align` (a power of two; 1 for none).
    pub fn new(unit: &Unit, align: u64) -> Result<Self, SchedulerError> {
        let align = align.max(1);
        let overflow = || SchedulerError::BadModel(format!("unit {:?} lies past 2^64", unit.id));
        // Parts sorted by (file, offset); the unit's own order is kept for `part_offsets`.
        let mut order: Vec<usize> = (0..unit.parts.len()).collect();
        order.sort_by_key(|&i| (unit.parts[i].file, unit.parts[i].offset));
        let mut extents: Vec<Extent> = Vec::new();
        // Extent index of each part.
        let mut part_extent = vec![0usize; unit.parts.len()];
        for &i in &order {
            let p = &unit.parts[i];
            let end = p.offset.checked_add(p.len).ok_or_else(overflow)?;
            let a_start = round_down(p.offset, align);
            let a_end = round_up(end, align).ok_or_else(overflow)?;
            match extents.last_mut() {
                Some(e)
                    if e.file == p.file
                        && a_start <= e.offset + e.len + MERGE_GAP
                        && a_start >= e.offset =>
                {
                    e.len = e.len.max(a_end - e.offset);
                    e.required = e.required.max(end - e.offset);
                }
                _ => extents.push(Extent {
                    file: p.file,
                    offset: a_start,
                    len: a_end - a_start,
                    required: end - a_start,
                    buf_offset: 0,
                }),
            }
            part_extent[i] = extents.len() - 1;
        }
        let mut at = 0u64;
        for e in &mut extents {
            e.buf_offset = at;
            at = at.checked_add(e.len).ok_or_else(overflow)?;
        }
        let part_offsets = unit
            .parts
            .iter()
            .zip(&part_extent)
            .map(|(p, &ei)| {
                let e = &extents[ei];
                usize::try_from(e.buf_offset + (p.offset - e.offset)).map_err(|_| overflow())
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(UnitLayout {
            extents,
            part_offsets,
            bytes: at,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Part, UnitId};
    use flashstream_formats::GgmlType;

    fn part(file: usize, offset: u64, len: u64) -> Part {
        Part {
            name: format!("t{offset}"),
            ty: GgmlType::F32,
            shape: vec![len / 4],
            file,
            offset,
            len,
        }
    }

    #[test]
    fn contiguous_parts_make_one_extent() {
        let u = Unit {
            id: UnitId::Layer(0),
            parts: vec![
                part(0, 8224, 4096),
                part(0, 12320, 100),
                part(0, 12448, 9000),
            ],
        };
        let l = UnitLayout::new(&u, 4096).unwrap();
        assert_eq!(l.extents.len(), 1);
        let e = l.extents[0];
        assert_eq!((e.offset, e.buf_offset), (8192, 0));
        assert_eq!(e.required, 12448 + 9000 - 8192);
        assert_eq!(e.len, (12448 + 9000u64).div_ceil(4096) * 4096 - 8192);
        assert_eq!(l.part_offsets, vec![32, 12320 - 8192, 12448 - 8192]);
        assert_eq!(l.bytes % 4096, 0);
    }

    #[test]
    fn distant_parts_and_files_are_separate_extents() {
        // Given out of file order: the part order is kept for offsets.
        let u = Unit {
            id: UnitId::Expert {
                layer: 0,
                expert: 1,
            },
            parts: vec![part(0, 10_000_032, 64), part(0, 32, 64), part(1, 64, 64)],
        };
        let l = UnitLayout::new(&u, 4096).unwrap();
        assert_eq!(l.extents.len(), 3);
        assert_eq!(l.bytes, 3 * 4096);
        // Part 1 (offset 32) is in the first extent, part 0 in the second, part 2 in the third.
        assert_eq!(
            l.part_offsets,
            vec![4096 + (10_000_032 % 4096), 32, 2 * 4096 + 64]
        );
        for (p, &o) in u.parts.iter().zip(&l.part_offsets) {
            assert_eq!(o as u64 % 32, p.offset % 32);
        }
    }

    #[test]
    fn unaligned_layout() {
        let u = Unit {
            id: UnitId::Head,
            parts: vec![part(0, 100, 10), part(0, 110, 10)],
        };
        let l = UnitLayout::new(&u, 1).unwrap();
        assert_eq!(l.bytes, 20);
        assert_eq!(l.part_offsets, vec![0, 10]);
    }

    #[test]
    fn overflow_is_an_error() {
        let u = Unit {
            id: UnitId::Head,
            parts: vec![part(0, u64::MAX - 10, 100)],
        };
        assert!(UnitLayout::new(&u, 4096).is_err());
    }
}
