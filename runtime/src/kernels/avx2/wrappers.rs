//! The safe byte-level wrappers: length checks, block views (copied when misaligned), then
//! the `unsafe` kernels; many-row forms check the lengths once per call.

use super::*;

/// Whether `bytes` bytes are exactly `n` values of `ty`, `n` a whole number of blocks.
#[inline(always)]
pub(super) fn row_ok(ty: GgmlType, n: usize, bytes: usize) -> bool {
    n.is_multiple_of(ty.block_size()) && ty.row_bytes(n as u64) == Some(bytes as u64)
}

/// `bytes` as blocks, borrowed, or copied if misaligned (only Q8_K blocks have alignment).
#[inline(always)]
pub(super) fn blocks_of<B: QuantBlock>(bytes: &[u8]) -> Cow<'_, [B]> {
    match as_blocks::<B>(bytes) {
        Ok(b) => Cow::Borrowed(b),
        Err(_) => Cow::Owned(
            bytes
                .chunks_exact(std::mem::size_of::<B>())
                .map(bytemuck::pod_read_unaligned)
                .collect(),
        ),
    }
}

/// One weight row with one activation row: [`super::DotFn`] over the one-row kernel `k1`.
#[inline(always)]
pub(super) fn dot_one<WB: QuantBlock, AB: QuantBlock>(
    n: usize,
    w: &[u8],
    a: &[u8],
    k1: unsafe fn(&[WB], &[AB]) -> f32,
) -> f32 {
    if !row_ok(WB::TYPE, n, w.len()) || !row_ok(AB::TYPE, n, a.len()) {
        return f32::NAN;
    }
    let (x, y) = (blocks_of::<WB>(w), blocks_of::<AB>(a));
    // SAFETY: the wrappers that call this are only handed out by `dot_fn` & co., after they
    // checked that the CPU has AVX2, FMA and F16C; both slices hold `n / block size` blocks.
    unsafe { k1(&x, &y) }
}

/// One weight row with four activation rows: [`super::Dot4Fn`] over the four-row kernel `k4`.
#[inline(always)]
pub(super) fn dot4_one<WB: QuantBlock, AB: QuantBlock>(
    n: usize,
    w: &[u8],
    a: [&[u8]; 4],
    k4: unsafe fn(&[WB], [&[AB]; 4]) -> [f32; 4],
) -> [f32; 4] {
    if !row_ok(WB::TYPE, n, w.len()) || a.iter().any(|a| !row_ok(AB::TYPE, n, a.len())) {
        return [f32::NAN; 4];
    }
    let x = blocks_of::<WB>(w);
    let y = a.map(blocks_of::<AB>);
    // SAFETY: handed out only by `dot4_fn` after the feature check; every slice holds
    // `n / block size` blocks.
    unsafe { k4(&x, [&y[0], &y[1], &y[2], &y[3]]) }
}

/// Many weight rows (`w`, `out.len()` rows of `n` weights) with one activation row: lengths
/// checked once, then the one-row kernel per row (each result equals [`dot_fn`]'s).
#[inline(always)]
pub(super) fn dot_many_with<WB: QuantBlock, AB: QuantBlock>(
    n: usize,
    w: &[u8],
    a: &[u8],
    out: &mut [f32],
    k1: unsafe fn(&[WB], &[AB]) -> f32,
) {
    let w_row = WB::TYPE.row_bytes(n as u64).map_or(0, |b| b as usize);
    let a_row = AB::TYPE
        .row_bytes(n as u64)
        .map_or(usize::MAX, |b| b as usize);
    if w_row == 0
        || !n.is_multiple_of(WB::TYPE.block_size())
        || !n.is_multiple_of(AB::TYPE.block_size())
        || w.len() != out.len() * w_row
        || a.len() < a_row
    {
        out.fill(f32::NAN);
        return;
    }
    let y = blocks_of::<AB>(&a[..a_row]);
    for (o, wr) in out.iter_mut().zip(w.chunks_exact(w_row)) {
        let x = blocks_of::<WB>(wr);
        // SAFETY: handed out only by `dot_many_fn` after the feature check; both slices hold
        // `n / block size` blocks.
        *o = unsafe { k1(&x, &y) };
    }
}

/// The one-row kernel of a 32-weight block type that takes f32 scale tables.
pub(super) type Kernel1T<WB, AB> = unsafe fn(&[WB], &[AB], &[f32], &[f32]) -> f32;

/// [`dot_many_with`] for the 32-weight block types: when the activation row carries its f32
/// scale tables ([`crate::kernels::act_scale_tables`]), the one-row table kernel `k1t` reads them
/// instead of converting the activation's f16 scales again for every weight row.
#[inline(always)]
pub(super) fn dot_many_tables<WB: QuantBlock, AB: QuantBlock>(
    n: usize,
    w: &[u8],
    a: &[u8],
    out: &mut [f32],
    k1: unsafe fn(&[WB], &[AB]) -> f32,
    k1t: Kernel1T<WB, AB>,
) {
    let w_row = WB::TYPE.row_bytes(n as u64).map_or(0, |b| b as usize);
    let tables = crate::kernels::act_scale_tables(AB::TYPE, n).and_then(|(off, n_tables)| {
        let nb = n / 32;
        let end = off + n_tables * nb * 4;
        let t = bytemuck::try_cast_slice::<u8, f32>(a.get(off..end)?).ok()?;
        Some(t.split_at(if n_tables > 1 { nb } else { t.len() }))
    });
    let Some((dy, sy)) = tables else {
        return dot_many_with(n, w, a, out, k1);
    };
    if w_row == 0 || !n.is_multiple_of(WB::TYPE.block_size()) || w.len() != out.len() * w_row {
        out.fill(f32::NAN);
        return;
    }
    let a_row = AB::TYPE.row_bytes(n as u64).map_or(0, |b| b as usize);
    let y = blocks_of::<AB>(&a[..a_row]);
    for (o, wr) in out.iter_mut().zip(w.chunks_exact(w_row)) {
        let x = blocks_of::<WB>(wr);
        // SAFETY: handed out only by `dot_many_fn` after the feature check; the block slices
        // hold `n / 32` blocks and the tables `n / 32` values (`sy` is empty for the types
        // without mins, which do not read it).
        *o = unsafe { k1t(&x, &y, dy, sy) };
    }
}

/// One weight row against `n_tok` activation rows `a_stride` bytes apart in `a`, results to
/// `out[t * out_stride]`: lengths checked once (NaN for every output if they do not fit),
/// then the four-row kernel `k4` per group of four rows and the one-row kernel `k1` for the
/// rest. Activation rows that are not aligned for their blocks are copied.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(super) fn dot_rows_with<WB: QuantBlock, AB: QuantBlock>(
    n: usize,
    w: &[u8],
    a: &[u8],
    a_stride: usize,
    n_tok: usize,
    out: &mut [f32],
    out_stride: usize,
    k1: unsafe fn(&[WB], &[AB]) -> f32,
    k4: impl Fn(usize, &[WB], [&[AB]; 4]) -> [f32; 4],
) {
    if n_tok == 0 {
        return;
    }
    let a_row = AB::TYPE
        .row_bytes(n as u64)
        .map_or(usize::MAX, |b| b as usize);
    let fits = row_ok(WB::TYPE, n, w.len())
        && n.is_multiple_of(AB::TYPE.block_size())
        && (n_tok - 1)
            .checked_mul(a_stride)
            .and_then(|v| v.checked_add(a_row))
            .is_some_and(|end| end <= a.len())
        && (n_tok - 1)
            .checked_mul(out_stride)
            .is_some_and(|last| last < out.len());
    if !fits {
        for t in 0..n_tok {
            if let Some(o) = out.get_mut(t.saturating_mul(out_stride)) {
                *o = f32::NAN;
            }
        }
        return;
    }
    let x = blocks_of::<WB>(w);
    let act = |t: usize| blocks_of::<AB>(&a[t * a_stride..t * a_stride + a_row]);
    let mut t = 0;
    while t + 4 <= n_tok {
        let ys = [act(t), act(t + 1), act(t + 2), act(t + 3)];
        // Every slice holds `n / block size` blocks (checked above).
        let v = k4(t, &x, [&ys[0], &ys[1], &ys[2], &ys[3]]);
        for (j, v) in v.into_iter().enumerate() {
            out[(t + j) * out_stride] = v;
        }
        t += 4;
    }
    while t < n_tok {
        // SAFETY: as above.
        out[t * out_stride] = unsafe { k1(&x, &act(t)) };
        t += 1;
    }
}

/// The four-row kernel of a 32-weight block type that takes f32 scale tables.
pub(super) type Kernel4T<WB, AB> =
    unsafe fn(&[WB], [&[AB]; 4], [&[f32]; 4], [&[f32]; 4]) -> [f32; 4];

/// [`dot_rows_with`] for the 32-weight block types, whose activation rows carry f32 tables of
/// their block scales ([`crate::kernels::act_scale_tables`]): the four-row kernel `k4t` reads those
/// instead of converting the f16 scales per weight row. Rows whose tables are missing or
/// misaligned go through the one-row kernel (the same results).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(super) fn dot_rows_tables<WB: QuantBlock, AB: QuantBlock>(
    n: usize,
    w: &[u8],
    a: &[u8],
    a_stride: usize,
    n_tok: usize,
    out: &mut [f32],
    out_stride: usize,
    k1: unsafe fn(&[WB], &[AB]) -> f32,
    k4t: Kernel4T<WB, AB>,
) {
    let nb = n / 32;
    // The tables of every row, as `quantize_rows` lays them out, or `None` if this buffer
    // does not hold them (then the one-row kernel, which gives the same results).
    let layout = crate::kernels::act_scale_tables(AB::TYPE, n).filter(|&(off, n_tables)| {
        let row_end = off + n_tables * nb * 4;
        n_tok >= 4
            && a_stride >= row_end
            && a_stride.is_multiple_of(4)
            && (a.as_ptr() as usize + off).is_multiple_of(4)
            && (n_tok - 1)
                .checked_mul(a_stride)
                .and_then(|v| v.checked_add(row_end))
                .is_some_and(|end| end <= a.len())
    });
    let table = |t: usize, off: usize, i: usize| -> &[f32] {
        let at = t * a_stride + off + i * nb * 4;
        // Aligned and in bounds: checked for every row above.
        bytemuck::cast_slice(&a[at..at + nb * 4])
    };
    dot_rows_with(
        n,
        w,
        a,
        a_stride,
        n_tok,
        out,
        out_stride,
        k1,
        |t0, x, y| match layout {
            Some((off, n_tables)) => {
                let dy = [0, 1, 2, 3].map(|j| table(t0 + j, off, 0));
                let sy = if n_tables > 1 {
                    [0, 1, 2, 3].map(|j| table(t0 + j, off, 1))
                } else {
                    [&[][..]; 4]
                };
                // SAFETY: reached only from `dot_rows_fn`'s wrappers, after the feature check;
                // every table holds `n / 32` values (`sy` is empty for the types without mins,
                // which do not read it).
                unsafe { k4t(x, y, dy, sy) }
            }
            // SAFETY: as above.
            None => unsafe { [k1(x, y[0]), k1(x, y[1]), k1(x, y[2]), k1(x, y[3])] },
        },
    )
}

/// [`dot_rows_with`] with a four-row kernel `k4` that needs no scale tables (the K-quants).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(super) fn dot_rows_four<WB: QuantBlock, AB: QuantBlock>(
    n: usize,
    w: &[u8],
    a: &[u8],
    a_stride: usize,
    n_tok: usize,
    out: &mut [f32],
    out_stride: usize,
    k1: unsafe fn(&[WB], &[AB]) -> f32,
    k4: unsafe fn(&[WB], [&[AB]; 4]) -> [f32; 4],
) {
    dot_rows_with::<WB, AB>(n, w, a, a_stride, n_tok, out, out_stride, k1, |_, x, y| {
        // SAFETY: handed out only by `dot_rows_fn` after the feature check.
        unsafe { k4(x, y) }
    })
}

/// A float row with a float row of the same type `ty`: [`super::DotFn`] over `k`.
#[inline(always)]
pub(super) fn dot_float(
    ty: GgmlType,
    n: usize,
    w: &[u8],
    a: &[u8],
    k: unsafe fn(usize, *const u8, *const u8) -> f32,
) -> f32 {
    if !row_ok(ty, n, w.len()) || !row_ok(ty, n, a.len()) {
        return f32::NAN;
    }
    // SAFETY: handed out only by `dot_fn` after the feature check; both slices hold exactly
    // `n` values, which the kernel reads with unaligned loads.
    unsafe { k(n, w.as_ptr(), a.as_ptr()) }
}

/// [`super::QuantizeFn`] for a block type `B` over the block quantizer `k`.
#[inline(always)]
pub(super) fn quantize_blocks<B: QuantBlock>(
    x: &[f32],
    out: &mut [u8],
    k: unsafe fn(&[f32], &mut [B]),
) {
    if !row_ok(B::TYPE, x.len(), out.len()) {
        out.fill(0xff);
        return;
    }
    match bytemuck::try_cast_slice_mut::<u8, B>(out) {
        // SAFETY: handed out only by `quantize_fn` after the feature check; `y` holds exactly
        // `x.len() / block size` blocks.
        Ok(y) => unsafe { k(x, y) },
        Err(_) => out.fill(0xff),
    }
}

/// [`super::QuantizeFn`] for a 2-byte float type over the quantizer `k`.
#[inline(always)]
pub(super) fn quantize_halves(x: &[f32], out: &mut [u8], k: unsafe fn(&[f32], *mut u8)) {
    if out.len() != 2 * x.len() {
        out.fill(0xff);
        return;
    }
    // SAFETY: handed out only by `quantize_fn` after the feature check; `out` holds exactly
    // `x.len()` 2-byte values.
    unsafe { k(x, out.as_mut_ptr()) }
}
