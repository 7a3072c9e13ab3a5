//! The device read-bandwidth probe (`flashstream bench`'s `device_read_gbps`).

use std::ptr::NonNull;
use std::time::Instant;

use flashstream_formats::GgufModel;

use crate::common::BACKEND_CHUNK_BYTES;
use crate::{open_backend, BackendOptions, Completion, IoBuffer, IoKind, LoaderError, ReadOp};

/// Most scratch memory the probe allocates, whatever the file size.
pub const PROBE_SCRATCH_BYTES: usize = 64 << 20;

/// Sequential streams the probe reads at once.
pub const PROBE_STREAMS: usize = 4;

/// What [`probe_read_bandwidth`] measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BandwidthProbe {
    /// Bytes read.
    pub bytes: u64,
    /// Wall time from the first submit to the last completion.
    pub seconds: f64,
    /// `bytes / seconds / 1e9`.
    pub gb_per_s: f64,
    /// The backend that read (after `auto` resolved).
    pub kind: IoKind,
    /// Whether every read bypassed the page cache (`O_DIRECT` / `F_NOCACHE` in effect). When
    /// false the figure may be the page cache's, not the device's.
    pub bypasses_cache: bool,
}

/// Measures sequential read bandwidth on the model's own files: reads the first `max_bytes`
/// of them (rounded up to the backend's alignment, files taken in order) as
/// [`PROBE_STREAMS`] sequential streams over consecutive parts of that range, their reads
/// interleaved (virtual and striped devices serve parallel streams faster than one; a
/// weight-streaming engine reads several units at different offsets at once), through the
/// backend `opts` names (`mmap` is replaced by `auto`: the probe wants direct reads), with
/// [`BACKEND_CHUNK_BYTES`]-sized reads, twice the backend's queue depth of them in flight into
/// registered buffers where the backend supports them (at most [`PROBE_SCRATCH_BYTES`] of
/// scratch, reused, whatever the file size).
///
/// The figure is the device's only when the reads really bypass the page cache
/// ([`BandwidthProbe::bypasses_cache`]; `O_DIRECT` refused by the file system means buffered
/// reads) and nothing below the file system caches either (a virtual disk backed by the host's
/// page cache measures the host's RAM). A single run on a busy machine is noisy.
pub fn probe_read_bandwidth(
    model: &GgufModel,
    opts: &BackendOptions,
    max_bytes: u64,
) -> Result<BandwidthProbe, LoaderError> {
    let _span = tracing::debug_span!("probe_read_bandwidth", max_bytes).entered();
    if max_bytes == 0 {
        return Err(LoaderError::InvalidRequest(
            "the bandwidth probe needs max_bytes > 0".into(),
        ));
    }
    let ranges: Vec<(usize, u64, u64)> = model
        .files
        .iter()
        .enumerate()
        .map(|(i, f)| (i, 0, f.len))
        .collect();
    probe_chunks(model, opts, &ranges, max_bytes)
}

/// [`probe_read_bandwidth`] over given byte ranges `(file, offset, len)` of the model's files
/// instead of their starts, at most `max_bytes` of them: e.g. what a plan streams, so that the
/// device is measured on the bytes the engine will read (offsets are rounded down and lengths
/// up to the backend's alignment; ranges past the end of a file are cut there).
pub fn probe_ranges(
    model: &GgufModel,
    opts: &BackendOptions,
    ranges: &[(usize, u64, u64)],
    max_bytes: u64,
) -> Result<BandwidthProbe, LoaderError> {
    let _span = tracing::debug_span!("probe_ranges", n = ranges.len()).entered();
    for &(file, offset, len) in ranges {
        let f = model.files.get(file).ok_or_else(|| {
            LoaderError::InvalidRequest(format!(
                "probe range in file #{file}, but the model has {} files",
                model.files.len()
            ))
        })?;
        if offset >= f.len || len == 0 {
            return Err(LoaderError::InvalidRequest(format!(
                "probe range of {len} bytes at {offset} is outside file #{file} ({} bytes)",
                f.len
            )));
        }
    }
    if max_bytes == 0 {
        return Err(LoaderError::InvalidRequest(
            "the bandwidth probe needs max_bytes > 0".into(),
        ));
    }
    probe_chunks(model, opts, ranges, max_bytes)
}

fn probe_chunks(
    model: &GgufModel,
    opts: &BackendOptions,
    ranges: &[(usize, u64, u64)],
    max_bytes: u64,
) -> Result<BandwidthProbe, LoaderError> {
    if model.files.iter().all(|f| f.len == 0) {
        return Err(LoaderError::InvalidRequest(
            "the bandwidth probe needs a model with a non-empty file".into(),
        ));
    }
    let mut opts = opts.clone();
    if opts.kind == IoKind::Mmap {
        opts.kind = IoKind::Auto;
    }
    let depth_hint = opts.queue_depth.unwrap_or(16).clamp(2, 32);
    let total: u64 = ranges.iter().map(|r| r.2).sum();
    let reads = total.min(max_bytes).div_ceil(BACKEND_CHUNK_BYTES as u64);
    let slots = (2 * depth_hint)
        .min(PROBE_SCRATCH_BYTES / BACKEND_CHUNK_BYTES)
        .min(usize::try_from(reads).unwrap_or(usize::MAX))
        .max(1);
    // Declared before the backend so that it outlives it (its drop waits for reads).
    let mut scratch =
        IoBuffer::zeroed(slots * BACKEND_CHUNK_BYTES).ok_or_else(|| LoaderError::Io {
            path: "<bandwidth probe scratch>".into(),
            source: std::io::Error::new(
                std::io::ErrorKind::OutOfMemory,
                format!("cannot allocate {} bytes", slots * BACKEND_CHUNK_BYTES),
            ),
        })?;
    let base = scratch.as_mut_slice().as_mut_ptr();
    let mut backend = open_backend(model, &opts)?;
    let align = backend.alignment() as u64;
    let slots = slots.min(backend.queue_depth().saturating_mul(2)).max(1);

    // SAFETY: the scratch outlives the backend (declared before it).
    unsafe {
        backend.register_buffers(&[(
            NonNull::new(base).expect("live allocation"),
            slots * BACKEND_CHUNK_BYTES,
        )])
    };

    // The reads: (file, offset, bytes left in the file), the range cut into streams whose
    // reads alternate.
    let mut left = max_bytes.div_ceil(align).saturating_mul(align);
    let mut chunks: Vec<(usize, u64, u64)> = Vec::new();
    let mut budget = left;
    'ranges: for &(i, start, len) in ranges {
        let flen = model.files[i].len;
        let mut off = start / align * align;
        let end = start.saturating_add(len).min(flen);
        while off < end {
            if budget == 0 {
                break 'ranges;
            }
            chunks.push((i, off, flen - off));
            budget = budget.saturating_sub(BACKEND_CHUNK_BYTES as u64);
            off += BACKEND_CHUNK_BYTES as u64;
        }
    }
    let per = chunks.len().div_ceil(PROBE_STREAMS).max(1);
    let mut order = Vec::with_capacity(chunks.len());
    for j in 0..per {
        for s in 0..PROBE_STREAMS {
            if let Some(&c) = chunks.get(s * per + j) {
                order.push(c);
            }
        }
    }
    let mut plan = order.into_iter();
    let mut free: Vec<usize> = (0..slots).rev().collect();
    let mut done: Vec<Completion> = Vec::new();
    let mut bytes = 0u64;
    let start = Instant::now();
    loop {
        while left > 0 {
            let Some(&slot) = free.last() else { break };
            let Some((file, offset, rest)) = plan.next() else {
                left = 0;
                break;
            };
            let len = (BACKEND_CHUNK_BYTES as u64)
                .min(left)
                .min(rest.div_ceil(align) * align);
            let required = len.min(rest);
            let op = ReadOp {
                file,
                offset,
                len: len as usize,
                required: required as usize,
                // SAFETY: slot < slots: inside the scratch buffer.
                dst: NonNull::new(unsafe { base.add(slot * BACKEND_CHUNK_BYTES) })
                    .expect("inside a live allocation"),
                tag: slot as u64,
            };
            // SAFETY: each slot is in at most one op at a time; the scratch outlives the
            // backend and is not read until the completion is back.
            unsafe { backend.submit(op) }?;
            free.pop();
            left -= len;
        }
        if backend.in_flight() == 0 {
            break;
        }
        backend.wait(&mut done)?;
        for c in done.drain(..) {
            bytes += c.result? as u64;
            free.push(c.tag as usize);
        }
    }
    let seconds = start.elapsed().as_secs_f64().max(1e-9);
    let probe = BandwidthProbe {
        bytes,
        seconds,
        gb_per_s: bytes as f64 / seconds / 1e9,
        kind: backend.kind(),
        bypasses_cache: backend.bypasses_cache(),
    };
    drop(backend);
    drop(scratch);
    tracing::debug!(?probe, "read bandwidth probe");
    Ok(probe)
}
