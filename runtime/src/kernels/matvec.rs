//! Matrix-vector and matrix-matrix products of quantized weights, split over a worker pool.
//!
//! Weights are `rows` rows of `k` weights each, as raw bytes of the kernel's weight type,
//! borrowed from wherever they live. Activations are first quantized to the paired type
//! ([`quantize_rows`]); each weight row is then dotted with every activation row while it is
//! hot in cache, so a prompt of many tokens costs one pass over the weights.

use super::{
    act_packed_layout, act_scale_tables, pack_act_row, DotKernel, KernelError, ScratchBuf,
    PACKED_GROUP_BYTES,
};
use crate::pool::{ChunkCounter, SendPtr, WorkerPool};
use half::f16;

/// Rows per unit of work handed to a thread: about four units per thread, of 16 to 128 rows.
/// Long contiguous runs matter: each thread then reads its weight rows as one sequential
/// stream the hardware prefetcher follows (with 16-row units interleaved between two threads,
/// SmolLM2 decoded slower on two threads than on one).
fn rows_per_chunk(rows: usize, threads: usize) -> usize {
    rows.div_ceil(4 * threads.max(1))
        .clamp(MIN_ROWS_PER_CHUNK, 128)
}

/// Below twice this many (row, token) dots, a matmul runs on the calling thread alone.
const MIN_ROWS_PER_CHUNK: usize = 16;

/// Quantizes `n_rows` activation rows of `k` values (`x`, row-major) for `kernel` into `out`.
/// Each quantized row starts at a multiple of [`act_row_stride`] bytes and holds the paired
/// type's blocks, followed (Q8_0, Q8_1) by the f32 tables of its block scales at the offset
/// [`act_scale_tables`] gives and, for kernels with [`DotKernel::packed_act`], the packed
/// quants of [`act_packed_layout`].
pub fn quantize_rows(
    kernel: &DotKernel,
    x: &[f32],
    k: usize,
    out: &mut ScratchBuf,
) -> Result<usize, KernelError> {
    let stride = act_row_stride(kernel, k)?;
    if k == 0 || !x.len().is_multiple_of(k) {
        return Err(KernelError::BadLength(format!(
            "{} activations are not a whole number of rows of {k}",
            x.len()
        )));
    }
    let n_rows = x.len() / k;
    let row_bytes = kernel.act_type.row_bytes(k as u64).unwrap_or(0) as usize;
    out.resize(stride * n_rows);
    let bytes = out.as_bytes_mut();
    let tables = act_scale_tables(kernel.act_type, k);
    let block_bytes = kernel.act_type.block_bytes();
    let packed = act_packed_layout(kernel.act_type, k).filter(|_| kernel.packed_act);
    for (r, xr) in x.chunks_exact(k).enumerate() {
        let row = &mut bytes[r * stride..(r + 1) * stride];
        (kernel.quantize)(xr, &mut row[..row_bytes]);
        if let Some((off, n_tables)) = tables {
            // Q8_0 and Q8_1 blocks start with the f16 scale `d`; Q8_1's `s` follows it.
            let nb = k / 32;
            let (blocks, rest) = row.split_at_mut(off);
            for t in 0..n_tables {
                for b in 0..nb {
                    let at = b * block_bytes + 2 * t;
                    let v = f16::from_le_bytes([blocks[at], blocks[at + 1]]).to_f32();
                    let o = 4 * (t * nb + b);
                    rest[o..o + 4].copy_from_slice(&v.to_ne_bytes());
                }
            }
        }
        if let Some((off, groups)) = packed {
            let (blocks, rest) = row.split_at_mut(off);
            pack_act_row(
                blocks,
                block_bytes,
                groups,
                &mut rest[..groups * PACKED_GROUP_BYTES],
            );
        }
    }
    Ok(n_rows)
}

/// Byte distance between quantized activation rows of length `k` (the row's blocks and scale
/// tables rounded up to 64 bytes, so every row is aligned for any block type).
pub fn act_row_stride(kernel: &DotKernel, k: usize) -> Result<usize, KernelError> {
    let row = kernel.act_type.row_bytes(k as u64).ok_or_else(|| {
        KernelError::BadLength(format!(
            "row length {k} is not a whole number of {} blocks",
            kernel.act_type
        ))
    })? as usize;
    let end = match act_scale_tables(kernel.act_type, k) {
        Some((off, n_tables)) => off + n_tables * (k / 32) * 4,
        None => row,
    };
    let end = match act_packed_layout(kernel.act_type, k).filter(|_| kernel.packed_act) {
        Some((off, groups)) => off + groups * PACKED_GROUP_BYTES,
        None => end,
    };
    Ok(end.div_ceil(64) * 64)
}

/// `y[t * rows + r] = dot(w[r], x[t])` for every weight row `r` and activation row `t`.
///
/// `w` holds `rows` rows of `k` weights of `kernel.weight_type`; `xq` holds `n_tok` activation
/// rows quantized by [`quantize_rows`]; `y` has room for `n_tok * rows` values.
pub fn matmul(
    pool: &WorkerPool,
    kernel: &DotKernel,
    w: &[u8],
    k: usize,
    xq: &ScratchBuf,
    n_tok: usize,
    y: &mut [f32],
) -> Result<(), KernelError> {
    let w_row = kernel.weight_type.row_bytes(k as u64).ok_or_else(|| {
        KernelError::BadLength(format!(
            "row length {k} is not a whole number of {} blocks",
            kernel.weight_type
        ))
    })? as usize;
    if w_row == 0 || !w.len().is_multiple_of(w_row) {
        return Err(KernelError::BadLength(format!(
            "{} weight bytes are not a whole number of rows of {w_row} bytes",
            w.len()
        )));
    }
    let rows = w.len() / w_row;
    let stride = act_row_stride(kernel, k)?;
    let a_row = kernel.act_type.row_bytes(k as u64).unwrap_or(0) as usize;
    if xq.as_bytes().len() < n_tok * stride || y.len() != n_tok * rows {
        return Err(KernelError::BadLength(format!(
            "matmul of {rows}x{k} by {n_tok} rows: activations have {} bytes (need {}), output has {} values (need {})",
            xq.as_bytes().len(),
            n_tok * stride,
            y.len(),
            n_tok * rows
        )));
    }
    let xb = xq.as_bytes();
    // Threads write disjoint elements (distinct rows).
    let out = SendPtr(y.as_mut_ptr());
    let per_chunk = rows_per_chunk(rows, pool.n_threads());
    let chunks = ChunkCounter::new(rows.div_ceil(per_chunk));
    let dot = kernel.dot;
    let act = |t: usize| &xb[t * stride..t * stride + a_row];
    let work = |_thread: usize| {
        let mut col = Vec::new();
        while let Some(c) = chunks.next_chunk() {
            let r0 = c * per_chunk;
            let r1 = (r0 + per_chunk).min(rows);
            if let (1, Some(dot_many)) = (n_tok, kernel.dot_many) {
                // SAFETY: chunks are disjoint row ranges, each claimed once, and r1 <= rows
                // == y.len() for one activation row.
                let ys = unsafe { std::slice::from_raw_parts_mut(out.get().add(r0), r1 - r0) };
                // The whole row, scale tables included.
                dot_many(k, &w[r0 * w_row..r1 * w_row], &xb[..stride], ys);
                continue;
            }
            if let Some(dot_block) = kernel.dot_block {
                // The chunk's results as n_tok rows of r1 - r0, then copied out row by row.
                let m = r1 - r0;
                col.resize(n_tok * m, 0.0);
                dot_block(
                    k,
                    &w[r0 * w_row..r1 * w_row],
                    xb,
                    stride,
                    n_tok,
                    &mut col,
                    m,
                );
                for (t, vals) in col.chunks_exact(m).enumerate() {
                    // SAFETY: (t, r) pairs are distinct across threads (rows are claimed
                    // once) and t * rows + r1 <= y.len() was checked above.
                    let dst =
                        unsafe { std::slice::from_raw_parts_mut(out.get().add(t * rows + r0), m) };
                    dst.copy_from_slice(vals);
                }
                continue;
            }
            for r in r0..r1 {
                let wr = &w[r * w_row..(r + 1) * w_row];
                if let Some(dot_rows) = kernel.dot_rows {
                    col.resize(n_tok, 0.0);
                    dot_rows(k, wr, xb, stride, n_tok, &mut col, 1);
                    for (t, &v) in col.iter().enumerate() {
                        // SAFETY: (t, r) pairs are distinct across threads (rows are claimed
                        // once) and t * rows + r < y.len() was checked above.
                        unsafe { *out.get().add(t * rows + r) = v };
                    }
                    continue;
                }
                // Kernels without a many-row version: one call per activation row.
                for t in 0..n_tok {
                    let v = dot(k, wr, act(t));
                    // SAFETY: as above.
                    unsafe { *out.get().add(t * rows + r) = v };
                }
            }
        }
    };
    if rows * n_tok < 2 * MIN_ROWS_PER_CHUNK {
        work(0);
    } else {
        pool.run(work);
    }
    Ok(())
}

/// `y[r] = dot(w[r], x)`: [`matmul`] with one activation row.
pub fn matvec(
    pool: &WorkerPool,
    kernel: &DotKernel,
    w: &[u8],
    k: usize,
    xq: &ScratchBuf,
    y: &mut [f32],
) -> Result<(), KernelError> {
    matmul(pool, kernel, w, k, xq, 1, y)
}
