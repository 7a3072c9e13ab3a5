//! x86-64 kernels for AVX2 + FMA + F16C: dot products of every supported weight type with its
//! paired activation type, and the activation quantizers.
//!
//! # Structure
//! The arithmetic lives in `unsafe fn`s compiled with
//! `#[target_feature(enable = "avx2,fma,f16c")]`, one per (weight type, activation type) pair,
//! over block slices. Calling one on a CPU without those features is undefined behaviour, so
//! the only safe way in is [`dot_fn`] / [`quantize_fn`]: they hand out byte-level wrappers only
//! after [`Isa::Avx2`] has been detected on this CPU.
//!
//! # Numerics
//! Integer block sums are exact, exactly as in the scalar reference; the kernels differ from it
//! only in the order in which per-block float products are accumulated (several vector lanes and
//! accumulators, summed at the end). The quantizers equal the scalar ones bit for
//! bit, which follow the quantizers of ggml's x86 build: Q8_0/Q8_1 round half to even with
//! `id = 127/amax` (what llama.cpp's x86 build computes), Q8_K rounds half to even with
//! `iscale = -127/max` and caps at 127; this includes infinities and blocks so tiny that the
//! multiplier overflows. The one known difference is NaN
//! input to Q8_0/Q8_1: here a NaN never becomes the block maximum, while the reference's C-style
//! `MAX` fold lets a NaN reset it (the block's values are meaningless either way).
//!
//! # Activation precondition
//! The `i8 × i8` products use the sign trick (`|x| · sign(y, x)` with `maddubs`), which is exact
//! as long as the *activation* quants are never -128 (weights may be). The quantizers produce
//! quants in -127..=127 for finite input, except in a block whose largest magnitude is below
//! ~3.7e-37 (where the multiplier overflows, as in ggml) and whose f16 scale is then 0, so the
//! block contributes 0 either way. Hand-built activations holding -128 give a wrong (but
//! memory-safe) result.

use core::arch::x86_64::*;
use std::borrow::Cow;

use flashstream_formats::blocks::{
    as_blocks, BlockIQ4NL, BlockIQ4XS, BlockQ2K, BlockQ3K, BlockQ4K, BlockQ4_0, BlockQ4_1,
    BlockQ5K, BlockQ5_0, BlockQ5_1, BlockQ6K, BlockQ8K, BlockQ8_0, BlockQ8_1, F16Le, QuantBlock,
    IQ4NL_VALUES, QK, QK_K,
};
use flashstream_formats::GgmlType;

use super::{Dot4Fn, DotFn, DotManyFn, DotRowsFn, Isa, QuantizeFn};

// ---------------------------------------------------------------------------------------------
// Dispatch
// ---------------------------------------------------------------------------------------------

/// The AVX2 dot kernel for weight type `ty`, or `None` if there is none or this CPU lacks
/// AVX2, FMA or F16C.
///
/// The returned function dots `n` weights (`w`: the raw bytes of a row of type `ty`) with `n`
/// activations already quantized to `ty.vec_dot_type()` (`a`). As the scalar kernels do, it
/// returns NaN if `n` is not a whole number of blocks or either slice is not exactly the bytes
/// of `n` values; weights may have any alignment, and a misaligned Q8_K activation row is
/// copied (slow, but correct).
pub fn dot_fn(ty: GgmlType) -> Option<DotFn> {
    if !Isa::Avx2.is_available() {
        return None;
    }
    let f: DotFn = match ty {
        GgmlType::Q4_0 => w_q4_0,
        GgmlType::Q4_1 => w_q4_1,
        GgmlType::Q5_0 => w_q5_0,
        GgmlType::Q5_1 => w_q5_1,
        GgmlType::Q8_0 => w_q8_0,
        GgmlType::IQ4_NL => w_iq4_nl,
        GgmlType::MXFP4 => mxfp4::w_mxfp4,
        GgmlType::Q2_K => w_q2_k,
        GgmlType::Q3_K => w_q3_k,
        GgmlType::Q4_K => w_q4_k,
        GgmlType::Q5_K => w_q5_k,
        GgmlType::Q6_K => w_q6_k,
        GgmlType::IQ4_XS => w_iq4_xs,
        GgmlType::F16 => w_f16,
        GgmlType::BF16 => w_bf16,
        GgmlType::F32 => w_f32,
        _ => return None,
    };
    Some(f)
}

/// The AVX2 four-row dot product for weight type `ty` (the 32-weight block types, Q4_K, Q5_K
/// and Q6_K), or `None`.
pub fn dot4_fn(ty: GgmlType) -> Option<Dot4Fn> {
    if !Isa::Avx2.is_available() {
        return None;
    }
    let f: Dot4Fn = match ty {
        GgmlType::Q4_0 => w4_q4_0,
        GgmlType::Q4_1 => w4_q4_1,
        GgmlType::Q5_0 => w4_q5_0,
        GgmlType::Q5_1 => w4_q5_1,
        GgmlType::Q8_0 => w4_q8_0,
        GgmlType::IQ4_NL => w4_iq4_nl,
        GgmlType::MXFP4 => mxfp4::w4_mxfp4,
        GgmlType::Q4_K => w4_q4_k,
        GgmlType::Q5_K => w4_q5_k,
        GgmlType::Q6_K => w4_q6_k,
        _ => return None,
    };
    Some(f)
}

/// The AVX2 many-token dot product for weight type `ty` (see [`DotRowsFn`]), or `None`.
///
/// Checks the lengths once for the whole call and then runs the four-row kernel over groups
/// of four activation rows (the one-row kernel for the rest, and for every row of the types
/// without a four-row kernel), so each result equals what [`dot_fn`]'s function gives for
/// that row, bit for bit.
pub fn dot_rows_fn(ty: GgmlType) -> Option<DotRowsFn> {
    if !Isa::Avx2.is_available() {
        return None;
    }
    let f: DotRowsFn = match ty {
        GgmlType::Q4_0 => r_q4_0,
        GgmlType::Q4_1 => r_q4_1,
        GgmlType::Q5_0 => r_q5_0,
        GgmlType::Q5_1 => r_q5_1,
        GgmlType::Q8_0 => r_q8_0,
        GgmlType::IQ4_NL => r_iq4_nl,
        GgmlType::MXFP4 => mxfp4::r_mxfp4,
        GgmlType::Q4_K => r_q4_k,
        GgmlType::Q5_K => r_q5_k,
        GgmlType::Q6_K => r_q6_k,
        _ => return None,
    };
    Some(f)
}

/// The batch kernel over packed activations ([`super::act_packed_layout`]) for weight type
/// `ty`, in the best build this CPU runs ([`tile::TileIsa::detect`]), or `None`. Same
/// contract and results as [`dot_rows_fn`]'s kernel, bit for bit, for rows laid out by
/// `quantize_rows` of a kernel with `packed_act`.
pub fn dot_rows_packed_fn(ty: GgmlType) -> Option<DotRowsFn> {
    tile::tile_rows_fn(tile::TileIsa::detect()?, ty)
}

/// The AVX2 many-weight-row dot product for weight type `ty` (see [`DotManyFn`]; the block
/// types), or `None`. Each result equals what [`dot_fn`]'s function gives for that row.
pub fn dot_many_fn(ty: GgmlType) -> Option<DotManyFn> {
    if !Isa::Avx2.is_available() {
        return None;
    }
    let f: DotManyFn = match ty {
        GgmlType::Q4_0 => m_q4_0,
        GgmlType::Q4_1 => m_q4_1,
        GgmlType::Q5_0 => m_q5_0,
        GgmlType::Q5_1 => m_q5_1,
        GgmlType::Q8_0 => m_q8_0,
        GgmlType::IQ4_NL => m_iq4_nl,
        GgmlType::MXFP4 => mxfp4::m_mxfp4,
        GgmlType::Q2_K => m_q2_k,
        GgmlType::Q3_K => m_q3_k,
        GgmlType::Q4_K => m_q4_k,
        GgmlType::Q5_K => m_q5_k,
        GgmlType::Q6_K => m_q6_k,
        GgmlType::IQ4_XS => m_iq4_xs,
        _ => return None,
    };
    Some(f)
}

/// The AVX2 quantizer of f32 activations to `act` (Q8_0, Q8_1, Q8_K, F16 or BF16), or `None`
/// if there is none or this CPU lacks AVX2, FMA or F16C.
///
/// As the scalar quantizers do, the returned function fills `out` with `0xff` bytes (NaN
/// scales) if `x.len()` is not a whole number of blocks, `out` is not exactly
/// `act.row_bytes(x.len())` bytes, or (Q8_K) `out` is not 4-byte aligned.
pub fn quantize_fn(act: GgmlType) -> Option<QuantizeFn> {
    if !Isa::Avx2.is_available() {
        return None;
    }
    let f: QuantizeFn = match act {
        GgmlType::Q8_0 => wq_q8_0,
        GgmlType::Q8_1 => wq_q8_1,
        GgmlType::Q8_K => wq_q8_k,
        GgmlType::F16 => wq_f16,
        GgmlType::BF16 => wq_bf16,
        _ => return None,
    };
    Some(f)
}

/// Whether `bytes` bytes are exactly `n` values of `ty`, `n` a whole number of blocks.
#[inline(always)]
fn row_ok(ty: GgmlType, n: usize, bytes: usize) -> bool {
    n.is_multiple_of(ty.block_size()) && ty.row_bytes(n as u64) == Some(bytes as u64)
}

/// `bytes` as blocks, borrowed, or copied if misaligned (only Q8_K blocks have alignment).
#[inline(always)]
fn blocks_of<B: QuantBlock>(bytes: &[u8]) -> Cow<'_, [B]> {
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

macro_rules! dot_wrappers {
    ($($wrapper:ident => $kernel:ident($wb:ty, $ab:ty);)*) => {$(
        fn $wrapper(n: usize, w: &[u8], a: &[u8]) -> f32 {
            if !row_ok(<$wb>::TYPE, n, w.len()) || !row_ok(<$ab>::TYPE, n, a.len()) {
                return f32::NAN;
            }
            let (x, y) = (blocks_of::<$wb>(w), blocks_of::<$ab>(a));
            // SAFETY: this wrapper is only handed out by `dot_fn`, after it checked that the
            // CPU has AVX2, FMA and F16C; both slices hold `n / block size` blocks.
            unsafe { $kernel(&x, &y) }
        }
    )*};
}

dot_wrappers! {
    w_q4_0 => vec_dot_q4_0_q8_0(BlockQ4_0, BlockQ8_0);
    w_q4_1 => vec_dot_q4_1_q8_1(BlockQ4_1, BlockQ8_1);
    w_q5_0 => vec_dot_q5_0_q8_0(BlockQ5_0, BlockQ8_0);
    w_q5_1 => vec_dot_q5_1_q8_1(BlockQ5_1, BlockQ8_1);
    w_q8_0 => vec_dot_q8_0_q8_0(BlockQ8_0, BlockQ8_0);
    w_iq4_nl => vec_dot_iq4_nl_q8_0(BlockIQ4NL, BlockQ8_0);
    w_q2_k => vec_dot_q2_k_q8_k(BlockQ2K, BlockQ8K);
    w_q3_k => vec_dot_q3_k_q8_k(BlockQ3K, BlockQ8K);
    w_q4_k => vec_dot_q4_k_q8_k(BlockQ4K, BlockQ8K);
    w_q5_k => vec_dot_q5_k_q8_k(BlockQ5K, BlockQ8K);
    w_q6_k => vec_dot_q6_k_q8_k(BlockQ6K, BlockQ8K);
    w_iq4_xs => vec_dot_iq4_xs_q8_k(BlockIQ4XS, BlockQ8K);
}

/// Many weight rows (`w`, `out.len()` rows of `n` weights) with one activation row: lengths
/// checked once, then the one-row kernel per row (each result equals [`dot_fn`]'s).
#[inline(always)]
fn dot_many_with<WB: QuantBlock, AB: QuantBlock>(
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
type Kernel1T<WB, AB> = unsafe fn(&[WB], &[AB], &[f32], &[f32]) -> f32;

/// [`dot_many_with`] for the 32-weight block types: when the activation row carries its f32
/// scale tables ([`super::act_scale_tables`]), the one-row table kernel `k1t` reads them
/// instead of converting the activation's f16 scales again for every weight row.
#[inline(always)]
fn dot_many_tables<WB: QuantBlock, AB: QuantBlock>(
    n: usize,
    w: &[u8],
    a: &[u8],
    out: &mut [f32],
    k1: unsafe fn(&[WB], &[AB]) -> f32,
    k1t: Kernel1T<WB, AB>,
) {
    let w_row = WB::TYPE.row_bytes(n as u64).map_or(0, |b| b as usize);
    let tables = super::act_scale_tables(AB::TYPE, n).and_then(|(off, n_tables)| {
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

macro_rules! dot_many_wrappers {
    ($($wrapper:ident => $kernel:ident($wb:ty, $ab:ty);)*) => {$(
        fn $wrapper(n: usize, w: &[u8], a: &[u8], out: &mut [f32]) {
            dot_many_with::<$wb, $ab>(n, w, a, out, $kernel)
        }
    )*};
    (tables $($wrapper:ident => $kernel:ident, $k1t:ident($wb:ty, $ab:ty);)*) => {$(
        fn $wrapper(n: usize, w: &[u8], a: &[u8], out: &mut [f32]) {
            dot_many_tables::<$wb, $ab>(n, w, a, out, $kernel, $k1t)
        }
    )*};
}

dot_many_wrappers! {
    tables
    m_q4_0 => vec_dot_q4_0_q8_0, vec_dot1t_q4_0_q8_0(BlockQ4_0, BlockQ8_0);
    m_q4_1 => vec_dot_q4_1_q8_1, vec_dot1t_q4_1_q8_1(BlockQ4_1, BlockQ8_1);
    m_q5_0 => vec_dot_q5_0_q8_0, vec_dot1t_q5_0_q8_0(BlockQ5_0, BlockQ8_0);
    m_q5_1 => vec_dot_q5_1_q8_1, vec_dot1t_q5_1_q8_1(BlockQ5_1, BlockQ8_1);
    m_q8_0 => vec_dot_q8_0_q8_0, vec_dot1t_q8_0_q8_0(BlockQ8_0, BlockQ8_0);
    m_iq4_nl => vec_dot_iq4_nl_q8_0, vec_dot1t_iq4_nl_q8_0(BlockIQ4NL, BlockQ8_0);
}

dot_many_wrappers! {
    m_q2_k => vec_dot_q2_k_q8_k(BlockQ2K, BlockQ8K);
    m_q3_k => vec_dot_q3_k_q8_k(BlockQ3K, BlockQ8K);
    m_q4_k => vec_dot_q4_k_q8_k(BlockQ4K, BlockQ8K);
    m_q5_k => vec_dot_q5_k_q8_k(BlockQ5K, BlockQ8K);
    m_q6_k => vec_dot_q6_k_q8_k(BlockQ6K, BlockQ8K);
    m_iq4_xs => vec_dot_iq4_xs_q8_k(BlockIQ4XS, BlockQ8K);
}

macro_rules! dot4_wrappers {
    ($($wrapper:ident => $kernel:ident($wb:ty, $ab:ty);)*) => {$(
        fn $wrapper(n: usize, w: &[u8], a: [&[u8]; 4]) -> [f32; 4] {
            if !row_ok(<$wb>::TYPE, n, w.len()) || a.iter().any(|a| !row_ok(<$ab>::TYPE, n, a.len())) {
                return [f32::NAN; 4];
            }
            let x = blocks_of::<$wb>(w);
            let y = a.map(blocks_of::<$ab>);
            // SAFETY: handed out only by `dot4_fn` after the feature check; every slice
            // holds `n / 32` blocks.
            unsafe { $kernel(&x, [&y[0], &y[1], &y[2], &y[3]]) }
        }
    )*};
}

dot4_wrappers! {
    w4_q4_0 => vec_dot4_q4_0_q8_0(BlockQ4_0, BlockQ8_0);
    w4_q4_1 => vec_dot4_q4_1_q8_1(BlockQ4_1, BlockQ8_1);
    w4_q5_0 => vec_dot4_q5_0_q8_0(BlockQ5_0, BlockQ8_0);
    w4_q5_1 => vec_dot4_q5_1_q8_1(BlockQ5_1, BlockQ8_1);
    w4_q8_0 => vec_dot4_q8_0_q8_0(BlockQ8_0, BlockQ8_0);
    w4_iq4_nl => vec_dot4_iq4_nl_q8_0(BlockIQ4NL, BlockQ8_0);
    w4_q4_k => vec_dot4_q4_k_q8_k(BlockQ4K, BlockQ8K);
    w4_q5_k => vec_dot4_q5_k_q8_k(BlockQ5K, BlockQ8K);
    w4_q6_k => vec_dot4_q6_k_q8_k(BlockQ6K, BlockQ8K);
}

/// One weight row against `n_tok` activation rows `a_stride` bytes apart in `a`, results to
/// `out[t * out_stride]`: lengths checked once (NaN for every output if they do not fit),
/// then the four-row kernel `k4` per group of four rows and the one-row kernel `k1` for the
/// rest. Activation rows that are not aligned for their blocks are copied.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn dot_rows_with<WB: QuantBlock, AB: QuantBlock>(
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
type Kernel4T<WB, AB> = unsafe fn(&[WB], [&[AB]; 4], [&[f32]; 4], [&[f32]; 4]) -> [f32; 4];

/// [`dot_rows_with`] for the 32-weight block types, whose activation rows carry f32 tables of
/// their block scales ([`super::act_scale_tables`]): the four-row kernel `k4t` reads those
/// instead of converting the f16 scales per weight row. Rows whose tables are missing or
/// misaligned go through the one-row kernel (the same results).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn dot_rows_tables<WB: QuantBlock, AB: QuantBlock>(
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
    let layout = super::act_scale_tables(AB::TYPE, n).filter(|&(off, n_tables)| {
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

macro_rules! dot_rows_wrappers {
    ($($wrapper:ident => $k1:ident, $k4:ident($wb:ty, $ab:ty);)*) => {$(
        fn $wrapper(
            n: usize,
            w: &[u8],
            a: &[u8],
            a_stride: usize,
            n_tok: usize,
            out: &mut [f32],
            out_stride: usize,
        ) {
            dot_rows_with::<$wb, $ab>(n, w, a, a_stride, n_tok, out, out_stride, $k1, |_, x, y| {
                // SAFETY: handed out only by `dot_rows_fn` after the feature check.
                unsafe { $k4(x, y) }
            })
        }
    )*};
    (tables $($wrapper:ident => $k1:ident, $k4t:ident($wb:ty, $ab:ty);)*) => {$(
        fn $wrapper(
            n: usize,
            w: &[u8],
            a: &[u8],
            a_stride: usize,
            n_tok: usize,
            out: &mut [f32],
            out_stride: usize,
        ) {
            dot_rows_tables::<$wb, $ab>(n, w, a, a_stride, n_tok, out, out_stride, $k1, $k4t)
        }
    )*};
}

dot_rows_wrappers! {
    tables
    r_q4_0 => vec_dot_q4_0_q8_0, vec_dot4t_q4_0_q8_0(BlockQ4_0, BlockQ8_0);
    r_q4_1 => vec_dot_q4_1_q8_1, vec_dot4t_q4_1_q8_1(BlockQ4_1, BlockQ8_1);
    r_q5_0 => vec_dot_q5_0_q8_0, vec_dot4t_q5_0_q8_0(BlockQ5_0, BlockQ8_0);
    r_q5_1 => vec_dot_q5_1_q8_1, vec_dot4t_q5_1_q8_1(BlockQ5_1, BlockQ8_1);
    r_q8_0 => vec_dot_q8_0_q8_0, vec_dot4t_q8_0_q8_0(BlockQ8_0, BlockQ8_0);
    r_iq4_nl => vec_dot_iq4_nl_q8_0, vec_dot4t_iq4_nl_q8_0(BlockIQ4NL, BlockQ8_0);
}

dot_rows_wrappers! {
    r_q4_k => vec_dot_q4_k_q8_k, vec_dot4_q4_k_q8_k(BlockQ4K, BlockQ8K);
    r_q5_k => vec_dot_q5_k_q8_k, vec_dot4_q5_k_q8_k(BlockQ5K, BlockQ8K);
    r_q6_k => vec_dot_q6_k_q8_k, vec_dot4_q6_k_q8_k(BlockQ6K, BlockQ8K);
}

macro_rules! float_dot_wrappers {
    ($($wrapper:ident => $kernel:ident($ty:expr);)*) => {$(
        fn $wrapper(n: usize, w: &[u8], a: &[u8]) -> f32 {
            if !row_ok($ty, n, w.len()) || !row_ok($ty, n, a.len()) {
                return f32::NAN;
            }
            // SAFETY: handed out only by `dot_fn` after the feature check; both slices hold
            // exactly `n` values, which the kernel reads with unaligned loads.
            unsafe { $kernel(n, w.as_ptr(), a.as_ptr()) }
        }
    )*};
}

float_dot_wrappers! {
    w_f16 => vec_dot_f16_f16(GgmlType::F16);
    w_bf16 => vec_dot_bf16_bf16(GgmlType::BF16);
    w_f32 => vec_dot_f32_f32(GgmlType::F32);
}

macro_rules! quantize_wrappers {
    ($($wrapper:ident => $kernel:ident($b:ty);)*) => {$(
        fn $wrapper(x: &[f32], out: &mut [u8]) {
            if !row_ok(<$b>::TYPE, x.len(), out.len()) {
                out.fill(0xff);
                return;
            }
            match bytemuck::try_cast_slice_mut::<u8, $b>(out) {
                // SAFETY: handed out only by `quantize_fn` after the feature check; `y` holds
                // exactly `x.len() / block size` blocks.
                Ok(y) => unsafe { $kernel(x, y) },
                Err(_) => out.fill(0xff),
            }
        }
    )*};
}

quantize_wrappers! {
    wq_q8_0 => quantize_row_q8_0(BlockQ8_0);
    wq_q8_1 => quantize_row_q8_1(BlockQ8_1);
    wq_q8_k => quantize_row_q8_k(BlockQ8K);
}

fn wq_f16(x: &[f32], out: &mut [u8]) {
    if out.len() != 2 * x.len() {
        out.fill(0xff);
        return;
    }
    // SAFETY: handed out only by `quantize_fn` after the feature check; `out` holds exactly
    // `x.len()` 2-byte values.
    unsafe { quantize_row_f16(x, out.as_mut_ptr()) }
}

fn wq_bf16(x: &[f32], out: &mut [u8]) {
    if out.len() != 2 * x.len() {
        out.fill(0xff);
        return;
    }
    // SAFETY: as in `wq_f16`.
    unsafe { quantize_row_bf16(x, out.as_mut_ptr()) }
}

// ---------------------------------------------------------------------------------------------
// Helpers (all inlined into the kernels, which share their target features)
// ---------------------------------------------------------------------------------------------

/// An f16 scale as f32 (exact, via F16C).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn h2f(h: F16Le) -> f32 {
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(
        u16::from_le_bytes(h.0) as i32
    )))
}

/// Sum of the 8 lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn hsum_ps(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

/// Sum of the 8 lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn hsum_epi32(v: __m256i) -> i32 {
    let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
    let s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b01>(s));
    _mm_cvtsi128_si32(s)
}

/// Maximum of the 8 lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn hmax_ps(v: __m256) -> f32 {
    let s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_max_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

/// 32 bytes from the 16 bytes at `p`: low nibbles in lanes 0..16, high nibbles in 16..32 (the
/// weight order of Q4_0-style blocks), each in 0..16.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn nibbles32(p: *const u8) -> __m256i {
    // Broadcasting the 16 bytes to both halves is a pure load; one variable shift then moves
    // the high half's high nibbles down (bits crossing into the byte below are masked off).
    let both = _mm256_broadcastsi128_si256(_mm_loadu_si128(p as *const __m128i));
    let shifted = _mm256_srlv_epi32(both, _mm256_setr_epi32(0, 0, 0, 0, 4, 4, 4, 4));
    _mm256_and_si256(shifted, _mm256_set1_epi8(0x0f))
}

/// 32 bytes, byte `k` 0xFF if bit `k` of `bits` is set, else 0.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn bits32(bits: u32) -> __m256i {
    let spread = _mm256_shuffle_epi8(
        _mm256_set1_epi32(bits as i32),
        _mm256_setr_epi64x(
            0,
            0x0101_0101_0101_0101,
            0x0202_0202_0202_0202,
            0x0303_0303_0303_0303,
        ),
    );
    let select = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
    _mm256_cmpeq_epi8(_mm256_and_si256(spread, select), select)
}

/// 32 unsigned bytes (at most 255) times 32 signed bytes, summed in groups of 4 into 8 i32.
///
/// `maddubs` saturates its i16 pair sums, so `x` must stay small enough that
/// `2 · x · |y| ≤ 32767` (true for every caller: x ≤ 127 against |y| ≤ 127).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_u8i8(x: __m256i, y: __m256i) -> __m256i {
    _mm256_madd_epi16(_mm256_maddubs_epi16(x, y), _mm256_set1_epi16(1))
}

/// 32 signed bytes times 32 signed bytes (y never -128), summed in groups of 4 into 8 i32.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_i8i8(x: __m256i, y: __m256i) -> __m256i {
    dot_u8i8(_mm256_sign_epi8(x, x), _mm256_sign_epi8(y, x))
}

/// Like [`dot_i8i8`] but stops at 16 i16 pair sums (for a later `madd` with scales).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_i8i8_pairs(x: __m256i, y: __m256i) -> __m256i {
    _mm256_maddubs_epi16(_mm256_sign_epi8(x, x), _mm256_sign_epi8(y, x))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn load256(p: *const u8) -> __m256i {
    _mm256_loadu_si256(p as *const __m256i)
}

const fn scale_shuffle_8() -> [[u8; 32]; 8] {
    let mut t = [[0u8; 32]; 8];
    let mut k = 0;
    while k < 8 {
        let mut i = 0;
        while i < 32 {
            t[k][i] = (2 * k + (i & 1)) as u8;
            i += 1;
        }
        k += 1;
    }
    t
}

const fn scale_shuffle_pairs() -> [[u8; 32]; 4] {
    let mut t = [[0u8; 32]; 4];
    let mut p = 0;
    while p < 4 {
        let mut i = 0;
        while i < 32 {
            let lane = i / 16;
            t[p][i] = (4 * p + 2 * lane + (i & 1)) as u8;
            i += 1;
        }
        p += 1;
    }
    t
}

/// `_mm256_shuffle_epi8` controls that broadcast i16 lane `k` (0..8) of each 128-bit half.
static SHUF_SCALE8: [[u8; 32]; 8] = scale_shuffle_8();
/// `_mm256_shuffle_epi8` controls that broadcast i16 lane `2p` of the low half over the low
/// half and lane `2p + 1` of the high half over the high half (scales of two 16-weight groups).
static SHUF_SCALE_PAIR: [[u8; 32]; 4] = scale_shuffle_pairs();

/// The i16 scale `k` (0..8) of `s` (both 128-bit halves holding the same 8 scales) in all lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn scale8(s: __m256i, k: usize) -> __m256i {
    _mm256_shuffle_epi8(s, load256(SHUF_SCALE8[k].as_ptr()))
}

/// For 32 weights made of two 16-weight groups: scale `2p` of `s` over the low 16 lanes and
/// scale `2p + 1` over the high 16 (`s`: both halves hold the same 8 i16 scales).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn scale_pair(s: __m256i, p: usize) -> __m256i {
    _mm256_shuffle_epi8(s, load256(SHUF_SCALE_PAIR[p].as_ptr()))
}

/// 16 i8 scales as two 256-bit vectors of i16, each half of the first holding scales 0..8 and
/// each half of the second scales 8..16.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn split_scales16(sc: __m128i) -> (__m256i, __m256i) {
    let lo = _mm_cvtepi8_epi16(sc);
    let hi = _mm_cvtepi8_epi16(_mm_srli_si128::<8>(sc));
    (
        _mm256_broadcastsi128_si256(lo),
        _mm256_broadcastsi128_si256(hi),
    )
}

/// Four f16 values packed into a u64 (lane k in bits 16k..16k+16).
#[inline(always)]
fn pack4(h: [F16Le; 4]) -> u64 {
    h.iter().enumerate().fold(0, |acc, (k, v)| {
        acc | (u16::from_le_bytes(v.0) as u64) << (16 * k)
    })
}

/// `[a0·b0, a1·b1, a2·b2, a3·b3]` for four f16 values packed in `a` and four in `b`: one F16C
/// conversion for the scales of four blocks instead of eight scalar ones.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn mul_f16x4(a: u64, b: u64) -> __m128 {
    let f = _mm256_cvtph_ps(_mm_set_epi64x(b as i64, a as i64));
    _mm_mul_ps(_mm256_castps256_ps128(f), _mm256_extractf128_ps::<1>(f))
}

/// The lane sums of four i32 vectors, as `[Σs0, Σs1, Σs2, Σs3]` split over the two halves:
/// lane k of the low half plus lane k of the high half is Σs_k.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn hsum4_epi32(s: [__m256i; 4]) -> __m256i {
    _mm256_hadd_epi32(_mm256_hadd_epi32(s[0], s[1]), _mm256_hadd_epi32(s[2], s[3]))
}

/// Dot-product loop over the blocks of a 32-weight type, four blocks per step.
///
/// `$isum` (with `$bx`, `$by` bound to a block pair) yields the block's exact integer dot as
/// 8 partial i32 sums. Per four blocks, the eight f16 scales are converted at once, the four
/// integer sums reduced together, and one FMA adds `d_x · d_y · sum` for all four. With
/// `mins`, `Σ m_x · s_y` (Q4_1/Q5_1 against Q8_1) is added as well. Leftover blocks (fewer
/// than four) are done one by one.
macro_rules! blocks32 {
    ($x:expr, $y:expr, |$bx:ident, $by:ident| $isum:expr) => {
        blocks32!(@ $x, $y, |$bx, $by| $isum, false)
    };
    ($x:expr, $y:expr, |$bx:ident, $by:ident| $isum:expr, mins) => {
        blocks32!(@ $x, $y, |$bx, $by| $isum, true)
    };
    (@ $x:expr, $y:expr, |$bx:ident, $by:ident| $isum:expr, $mins:tt) => {{
        let (x, y) = ($x, $y);
        if x.len() != y.len() {
            return f32::NAN;
        }
        let mut acc = _mm256_setzero_ps();
        #[allow(unused_mut)] // only the `mins` variant adds to it
        let mut acc_m = _mm_setzero_ps();
        let (xq, yq) = (x.chunks_exact(4), y.chunks_exact(4));
        let (xr, yr) = (xq.remainder(), yq.remainder());
        for (x4, y4) in xq.zip(yq) {
            blocks32!(@group x4, y4, |$bx, $by| $isum, $mins, acc, acc_m);
        }
        let tail = blocks32!(@tail xr, yr, |$bx, $by| $isum, $mins);
        blocks32!(@finish acc, acc_m, tail)
    }};
    // Four blocks into the accumulators.
    (@group $x4:ident, $y4:ident, |$bx:ident, $by:ident| $isum:expr, $mins:tt,
     $acc:expr, $acc_m:expr) => {{
        let mut s = [_mm256_setzero_si256(); 4];
        for (k, sk) in s.iter_mut().enumerate() {
            let ($bx, $by) = ($x4.get_unchecked(k), $y4.get_unchecked(k));
            *sk = $isum;
        }
        let d = mul_f16x4(
            pack4([$x4[0].d, $x4[1].d, $x4[2].d, $x4[3].d]),
            pack4([$y4[0].d, $y4[1].d, $y4[2].d, $y4[3].d]),
        );
        let sums = _mm256_cvtepi32_ps(hsum4_epi32(s));
        $acc = _mm256_fmadd_ps(_mm256_set_m128(d, d), sums, $acc);
        blocks32!(@mins $mins, $acc_m, $x4, $y4);
    }};
    // Fewer than four leftover blocks, one by one.
    (@tail $xr:expr, $yr:expr, |$bx:ident, $by:ident| $isum:expr, $mins:tt) => {{
        let mut tail = 0.0f32;
        for ($bx, $by) in $xr.iter().zip($yr) {
            tail += h2f($bx.d) * h2f($by.d) * hsum_epi32($isum) as f32;
            blocks32!(@min1 $mins, tail, $bx, $by);
        }
        tail
    }};
    (@finish $acc:expr, $acc_m:expr, $tail:expr) => {{
        let m = _mm_add_ps($acc_m, _mm_movehl_ps($acc_m, $acc_m));
        let m = _mm_cvtss_f32(_mm_add_ss(m, _mm_movehdup_ps(m)));
        hsum_ps($acc) + m + $tail
    }};
    (@mins false, $acc_m:expr, $x4:ident, $y4:ident) => {};
    (@mins true, $acc_m:expr, $x4:ident, $y4:ident) => {
        $acc_m = _mm_add_ps(
            $acc_m,
            mul_f16x4(
                pack4([$x4[0].m, $x4[1].m, $x4[2].m, $x4[3].m]),
                pack4([$y4[0].s, $y4[1].s, $y4[2].s, $y4[3].s]),
            ),
        );
    };
    (@min1 false, $t:ident, $bx:ident, $by:ident) => {};
    (@min1 true, $t:ident, $bx:ident, $by:ident) => {
        $t += h2f($bx.m) * h2f($by.s);
    };
}

/// [`blocks32!`] for one weight row and four activation rows: for each activation row the
/// same steps of [`blocks32!`] in the same order (so each result equals the one-row kernel's
/// bit for bit), while each weight block is loaded and unpacked once for all four.
macro_rules! blocks32x4 {
    ($x:expr, $ys:expr, |$bx:ident, $by:ident| $isum:expr) => {
        blocks32x4!(@ $x, $ys, |$bx, $by| $isum, false)
    };
    ($x:expr, $ys:expr, |$bx:ident, $by:ident| $isum:expr, mins) => {
        blocks32x4!(@ $x, $ys, |$bx, $by| $isum, true)
    };
    (@ $x:expr, $ys:expr, |$bx:ident, $by:ident| $isum:expr, $mins:tt) => {{
        let (x, ys) = ($x, $ys);
        if ys.iter().any(|y| y.len() != x.len()) {
            return [f32::NAN; 4];
        }
        let mut acc = [_mm256_setzero_ps(); 4];
        #[allow(unused_mut)] // only the `mins` variant adds to it
        let mut acc_m = [_mm_setzero_ps(); 4];
        let nq = x.len() / 4 * 4;
        let mut i = 0;
        while i < nq {
            let x4 = x.get_unchecked(i..i + 4);
            for t in 0..4 {
                let y4 = ys[t].get_unchecked(i..i + 4);
                blocks32!(@group x4, y4, |$bx, $by| $isum, $mins, acc[t], acc_m[t]);
            }
            i += 4;
        }
        let mut out = [0f32; 4];
        for t in 0..4 {
            let tail = blocks32!(@tail x[nq..], &ys[t][nq..], |$bx, $by| $isum, $mins);
            out[t] = blocks32!(@finish acc[t], acc_m[t], tail);
        }
        out
    }};
}

/// [`blocks32x4!`] with the activation rows' block scales already in f32 (`$dy`, and `$sy`
/// for the `mins` variant: the tables [`quantize_rows`](super::matvec::quantize_rows) lays
/// out after each row's blocks). The same values in the same order as [`blocks32!`] per row
/// (`f32(d_x) · f32(d_y)` is what the F16C conversion of both gives), so each result equals
/// the one-row kernel's bit for bit; the weight scales are converted once per group for all
/// four rows and the activation scales once per matmul.
macro_rules! blocks32x4t {
    ($nr:literal; $x:expr, $ys:expr, $dy:expr, $sy:expr, |$bx:ident| $prep:expr, |$w:ident, $by:ident| $dot:expr) => {
        blocks32x4t!(@ $nr; $x, $ys, $dy, $sy, |$bx| $prep, |$w, $by| $dot, false)
    };
    ($nr:literal; $x:expr, $ys:expr, $dy:expr, $sy:expr, |$bx:ident| $prep:expr, |$w:ident, $by:ident| $dot:expr, mins) => {
        blocks32x4t!(@ $nr; $x, $ys, $dy, $sy, |$bx| $prep, |$w, $by| $dot, true)
    };
    (@ $nr:literal; $x:expr, $ys:expr, $dy:expr, $sy:expr, |$bx:ident| $prep:expr, |$w:ident, $by:ident| $dot:expr, $mins:tt) => {{
        let (x, ys, dy, sy) = ($x, $ys, $dy, $sy);
        if ys.iter().any(|y| y.len() != x.len())
            || dy.iter().any(|d| d.len() != x.len())
            || ($mins && sy.iter().any(|d| d.len() != x.len()))
        {
            return [f32::NAN; $nr];
        }
        let mut acc = [_mm256_setzero_ps(); $nr];
        #[allow(unused_mut)] // only the `mins` variant adds to it
        let mut acc_m = [_mm_setzero_ps(); $nr];
        let nq = x.len() / 4 * 4;
        let mut i = 0;
        while i < nq {
            let x4 = x.get_unchecked(i..i + 4);
            let dx = _mm256_castps256_ps128(_mm256_cvtph_ps(_mm_set_epi64x(
                0,
                pack4([x4[0].d, x4[1].d, x4[2].d, x4[3].d]) as i64,
            )));
            #[allow(unused_variables)] // only the `mins` variant uses it
            let mx = blocks32x4t!(@mx $mins, x4);
            // Each weight block unpacked once, for all four rows.
            let wk = [
                { let $bx = x4.get_unchecked(0); $prep },
                { let $bx = x4.get_unchecked(1); $prep },
                { let $bx = x4.get_unchecked(2); $prep },
                { let $bx = x4.get_unchecked(3); $prep },
            ];
            for t in 0..$nr {
                let y4 = ys[t].get_unchecked(i..i + 4);
                let mut s = [_mm256_setzero_si256(); 4];
                for (k, sk) in s.iter_mut().enumerate() {
                    let ($w, $by) = (wk[k], y4.get_unchecked(k));
                    *sk = $dot;
                }
                let d = _mm_mul_ps(dx, _mm_loadu_ps(dy[t].as_ptr().add(i)));
                let sums = _mm256_cvtepi32_ps(hsum4_epi32(s));
                acc[t] = _mm256_fmadd_ps(_mm256_set_m128(d, d), sums, acc[t]);
                blocks32x4t!(@mins $mins, acc_m[t], mx, sy[t], i);
            }
            i += 4;
        }
        let mut out = [0f32; $nr];
        for t in 0..$nr {
            let mut tail = 0.0f32;
            for (j, ($bx, $by)) in x[nq..].iter().zip(&ys[t][nq..]).enumerate() {
                let $w = $prep;
                tail += h2f($bx.d) * dy[t][nq + j] * hsum_epi32($dot) as f32;
                blocks32x4t!(@min1 $mins, tail, $bx, sy[t][nq + j]);
            }
            out[t] = blocks32!(@finish acc[t], acc_m[t], tail);
        }
        out
    }};
    (@mx false, $x4:ident) => { () };
    (@mx true, $x4:ident) => {
        _mm256_castps256_ps128(_mm256_cvtph_ps(_mm_set_epi64x(
            0,
            pack4([$x4[0].m, $x4[1].m, $x4[2].m, $x4[3].m]) as i64,
        )))
    };
    (@mins false, $acc_m:expr, $mx:ident, $sy:expr, $i:ident) => {};
    (@mins true, $acc_m:expr, $mx:ident, $sy:expr, $i:ident) => {
        $acc_m = _mm_add_ps($acc_m, _mm_mul_ps($mx, _mm_loadu_ps($sy.as_ptr().add($i))));
    };
    (@min1 false, $t:ident, $bx:ident, $s:expr) => {};
    (@min1 true, $t:ident, $bx:ident, $s:expr) => {
        $t += h2f($bx.m) * $s;
    };
}

/// A 32-weight block kernel as a one-row function (`blocks32!`) and a four-row one
/// (`blocks32x4!`) from one integer-dot expression.
macro_rules! kernel32 {
    (
        $(#[$doc:meta])* $name:ident, $name4:ident, $name4t:ident, $name1t:ident($wb:ty, $ab:ty)
        [$($setup:stmt;)*] |$bx:ident, $by:ident| $isum:expr,
        prep |$pbx:ident| $prep:expr, dot |$w:ident, $pby:ident| $dot:expr $(, $mins:ident)?
    ) => {
        $(#[$doc])*
        #[target_feature(enable = "avx2,fma,f16c")]
        pub unsafe fn $name(x: &[$wb], y: &[$ab]) -> f32 {
            $($setup)*
            blocks32!(x, y, |$bx, $by| $isum $(, $mins)?)
        }

        #[doc = concat!("[`", stringify!($name), "`] of one weight row with four activation rows; each result equals the one-row kernel's bit for bit.")]
        ///
        /// # Safety
        /// The CPU must support AVX2, FMA and F16C.
        #[target_feature(enable = "avx2,fma,f16c")]
        pub unsafe fn $name4(x: &[$wb], y: [&[$ab]; 4]) -> [f32; 4] {
            $($setup)*
            blocks32x4!(x, y, |$bx, $by| $isum $(, $mins)?)
        }

        #[doc = concat!("[`", stringify!($name4), "`] with the activation block scales as f32 tables (`dy`, and `sy` for the types with mins; see `blocks32x4t!`); each result equals the one-row kernel's bit for bit.")]
        ///
        /// # Safety
        /// The CPU must support AVX2, FMA and F16C.
        #[target_feature(enable = "avx2,fma,f16c")]
        pub unsafe fn $name4t(
            x: &[$wb],
            y: [&[$ab]; 4],
            dy: [&[f32]; 4],
            sy: [&[f32]; 4],
        ) -> [f32; 4] {
            $($setup)*
            blocks32x4t!(4; x, y, dy, sy, |$pbx| $prep, |$w, $pby| $dot $(, $mins)?)
        }

        #[doc = concat!("[`", stringify!($name), "`] with the activation block scales as f32 tables (see `blocks32x4t!`); the result equals the one-row kernel's bit for bit.")]
        ///
        /// # Safety
        /// The CPU must support AVX2, FMA and F16C.
        #[target_feature(enable = "avx2,fma,f16c")]
        pub unsafe fn $name1t(x: &[$wb], y: &[$ab], dy: &[f32], sy: &[f32]) -> f32 {
            #[inline]
            #[target_feature(enable = "avx2,fma,f16c")]
            unsafe fn one(
                x: &[$wb],
                y: [&[$ab]; 1],
                dy: [&[f32]; 1],
                sy: [&[f32]; 1],
            ) -> [f32; 1] {
                $($setup)*
                blocks32x4t!(1; x, y, dy, sy, |$pbx| $prep, |$w, $pby| $dot $(, $mins)?)
            }
            one(x, [y], [dy], [sy])[0]
        }
    };
}

// ---------------------------------------------------------------------------------------------
// 32-weight block types
// ---------------------------------------------------------------------------------------------

kernel32! {
    /// Q4_0 · Q8_0 over `x.len()` blocks. Returns NaN if `x` and `y` differ in length.
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA and F16C.
    vec_dot_q4_0_q8_0, vec_dot4_q4_0_q8_0, vec_dot4t_q4_0_q8_0, vec_dot1t_q4_0_q8_0(BlockQ4_0, BlockQ8_0)
    [let eight = _mm256_set1_epi8(8);]
    |bx, by| {
        // Σ (q - 8) · y = Σ q · y - Σ 8 · y, both exact in i16 pairs (q ≤ 15, |y| ≤ 127).
        let qy = load256(by.qs.as_ptr() as *const u8);
        let p = _mm256_sub_epi16(
            _mm256_maddubs_epi16(nibbles32(bx.qs.as_ptr()), qy),
            _mm256_maddubs_epi16(eight, qy),
        );
        _mm256_madd_epi16(p, _mm256_set1_epi16(1))
    },
    prep |bx| {
        let q = _mm256_sub_epi8(nibbles32(bx.qs.as_ptr()), eight);
        (_mm256_sign_epi8(q, q), q)
    },
    dot |w, by| dot_u8i8(
        w.0,
        _mm256_sign_epi8(load256(by.qs.as_ptr() as *const u8), w.1)
    )
}

kernel32! {
    /// Q4_1 · Q8_1 over `x.len()` blocks. Returns NaN if `x` and `y` differ in length.
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA and F16C.
    vec_dot_q4_1_q8_1, vec_dot4_q4_1_q8_1, vec_dot4t_q4_1_q8_1, vec_dot1t_q4_1_q8_1(BlockQ4_1, BlockQ8_1)
    []
    |bx, by| dot_u8i8(
        nibbles32(bx.qs.as_ptr()),
        load256(by.qs.as_ptr() as *const u8)
    ),
    prep |bx| nibbles32(bx.qs.as_ptr()),
    dot |w, by| dot_u8i8(w, load256(by.qs.as_ptr() as *const u8)),
    mins
}

kernel32! {
    /// Q5_0 · Q8_0 over `x.len()` blocks. Returns NaN if `x` and `y` differ in length.
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA and F16C.
    vec_dot_q5_0_q8_0, vec_dot4_q5_0_q8_0, vec_dot4t_q5_0_q8_0, vec_dot1t_q5_0_q8_0(BlockQ5_0, BlockQ8_0)
    [let sixteen = _mm256_set1_epi8(0x10);]
    |bx, by| {
        // Σ (q - 16) · y = Σ q · y - Σ 16 · y with q = nibble | fifth bit << 4 in 0..32.
        let hb = _mm256_and_si256(bits32(u32::from_le_bytes(bx.qh)), sixteen);
        let qx = _mm256_or_si256(nibbles32(bx.qs.as_ptr()), hb);
        let qy = load256(by.qs.as_ptr() as *const u8);
        let p = _mm256_sub_epi16(
            _mm256_maddubs_epi16(qx, qy),
            _mm256_maddubs_epi16(sixteen, qy),
        );
        _mm256_madd_epi16(p, _mm256_set1_epi16(1))
    },
    prep |bx| {
        let hb = _mm256_and_si256(bits32(u32::from_le_bytes(bx.qh)), sixteen);
        _mm256_or_si256(nibbles32(bx.qs.as_ptr()), hb)
    },
    dot |w, by| {
        let qy = load256(by.qs.as_ptr() as *const u8);
        let p = _mm256_sub_epi16(
            _mm256_maddubs_epi16(w, qy),
            _mm256_maddubs_epi16(sixteen, qy),
        );
        _mm256_madd_epi16(p, _mm256_set1_epi16(1))
    }
}

kernel32! {
    /// Q5_1 · Q8_1 over `x.len()` blocks. Returns NaN if `x` and `y` differ in length.
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA and F16C.
    vec_dot_q5_1_q8_1, vec_dot4_q5_1_q8_1, vec_dot4t_q5_1_q8_1, vec_dot1t_q5_1_q8_1(BlockQ5_1, BlockQ8_1)
    [let sixteen = _mm256_set1_epi8(0x10);]
    |bx, by| {
        let hb = _mm256_and_si256(bits32(u32::from_le_bytes(bx.qh)), sixteen);
        let qx = _mm256_or_si256(nibbles32(bx.qs.as_ptr()), hb);
        dot_u8i8(qx, load256(by.qs.as_ptr() as *const u8))
    },
    prep |bx| {
        let hb = _mm256_and_si256(bits32(u32::from_le_bytes(bx.qh)), sixteen);
        _mm256_or_si256(nibbles32(bx.qs.as_ptr()), hb)
    },
    dot |w, by| dot_u8i8(w, load256(by.qs.as_ptr() as *const u8)),
    mins
}

kernel32! {
    /// Q8_0 · Q8_0 over `x.len()` blocks. Returns NaN if `x` and `y` differ in length.
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA and F16C.
    vec_dot_q8_0_q8_0, vec_dot4_q8_0_q8_0, vec_dot4t_q8_0_q8_0, vec_dot1t_q8_0_q8_0(BlockQ8_0, BlockQ8_0)
    []
    |bx, by| dot_i8i8(
        load256(bx.qs.as_ptr() as *const u8),
        load256(by.qs.as_ptr() as *const u8)
    ),
    prep |bx| {
        let q = load256(bx.qs.as_ptr() as *const u8);
        (_mm256_sign_epi8(q, q), q)
    },
    dot |w, by| dot_u8i8(
        w.0,
        _mm256_sign_epi8(load256(by.qs.as_ptr() as *const u8), w.1)
    )
}

kernel32! {
    /// IQ4_NL · Q8_0 over `x.len()` blocks. Returns NaN if `x` and `y` differ in length.
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA and F16C.
    vec_dot_iq4_nl_q8_0, vec_dot4_iq4_nl_q8_0, vec_dot4t_iq4_nl_q8_0, vec_dot1t_iq4_nl_q8_0(BlockIQ4NL, BlockQ8_0)
    [let table =
        _mm256_broadcastsi128_si256(_mm_loadu_si128(IQ4NL_VALUES.as_ptr() as *const __m128i));]
    |bx, by| dot_i8i8(
        _mm256_shuffle_epi8(table, nibbles32(bx.qs.as_ptr())),
        load256(by.qs.as_ptr() as *const u8)
    ),
    prep |bx| {
        let q = _mm256_shuffle_epi8(table, nibbles32(bx.qs.as_ptr()));
        (_mm256_sign_epi8(q, q), q)
    },
    dot |w, by| dot_u8i8(
        w.0,
        _mm256_sign_epi8(load256(by.qs.as_ptr() as *const u8), w.1)
    )
}

// ---------------------------------------------------------------------------------------------
// 256-weight K-quants (activations Q8_K)
// ---------------------------------------------------------------------------------------------

/// The 16 bsums of a Q8_K block as 16 i16 lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn bsums(y: &BlockQ8K) -> __m256i {
    _mm256_loadu_si256(y.bsums.as_ptr() as *const __m256i)
}

/// Q2_K · Q8_K over `x.len()` super-blocks.
///
/// # Safety
/// As [`vec_dot_q4_0_q8_0`].
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn vec_dot_q2_k_q8_k(x: &[BlockQ2K], y: &[BlockQ8K]) -> f32 {
    if x.len() != y.len() {
        return f32::NAN;
    }
    let m4 = _mm_set1_epi8(0x0f);
    let m3 = _mm256_set1_epi8(3);
    let mut acc = _mm256_setzero_ps();
    for (bx, by) in x.iter().zip(y) {
        let dy = by.d;
        let packed = _mm_loadu_si128(bx.scales.as_ptr() as *const __m128i);
        let sc = _mm_and_si128(packed, m4);
        let mins = _mm_and_si128(_mm_srli_epi16::<4>(packed), m4);
        // Σ_g min_g · bsum_g, as 8 partial sums.
        let msum = _mm256_madd_epi16(_mm256_cvtepu8_epi16(mins), bsums(by));
        let (s_lo, s_hi) = split_scales16(sc);
        let q8 = by.qs.as_ptr() as *const u8;
        let mut sumi = _mm256_setzero_si256();
        for half in 0..2 {
            let s = if half == 0 { s_lo } else { s_hi };
            let mut qv = load256(bx.qs.as_ptr().add(32 * half));
            for j in 0..4 {
                let q = _mm256_and_si256(qv, m3);
                let p = _mm256_maddubs_epi16(q, load256(q8.add(128 * half + 32 * j)));
                sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(p, scale_pair(s, j)));
                qv = _mm256_srli_epi16::<2>(qv);
            }
        }
        let d = dy * h2f(bx.d);
        let dmin = dy * h2f(bx.dmin);
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
        acc = _mm256_fnmadd_ps(_mm256_set1_ps(dmin), _mm256_cvtepi32_ps(msum), acc);
    }
    hsum_ps(acc)
}

/// Q3_K · Q8_K over `x.len()` super-blocks.
///
/// # Safety
/// As [`vec_dot_q4_0_q8_0`].
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn vec_dot_q3_k_q8_k(x: &[BlockQ3K], y: &[BlockQ8K]) -> f32 {
    if x.len() != y.len() {
        return f32::NAN;
    }
    let m3 = _mm256_set1_epi8(3);
    let m4 = _mm256_set1_epi8(4);
    let mut acc = _mm256_setzero_ps();
    for (bx, by) in x.iter().zip(y) {
        // 16 signed 6-bit scales: low 4 bits from bytes 0..8 (low then high nibbles), high 2
        // bits from bytes 8..12 (bit pairs 0, 2, 4, 6 for scales 0..4, 4..8, 8..12, 12..16).
        let p = &bx.scales;
        let a = u32::from_le_bytes([p[0], p[1], p[2], p[3]]);
        let b = u32::from_le_bytes([p[4], p[5], p[6], p[7]]);
        let c = u32::from_le_bytes([p[8], p[9], p[10], p[11]]);
        const LO4: u32 = 0x0f0f_0f0f;
        const LO2: u32 = 0x0303_0303;
        let s0 = (a & LO4) | ((c & LO2) << 4);
        let s1 = (b & LO4) | (((c >> 2) & LO2) << 4);
        let s2 = ((a >> 4) & LO4) | (((c >> 4) & LO2) << 4);
        let s3 = ((b >> 4) & LO4) | (((c >> 6) & LO2) << 4);
        let sc = _mm_sub_epi8(
            _mm_setr_epi32(s0 as i32, s1 as i32, s2 as i32, s3 as i32),
            _mm_set1_epi8(32),
        );
        // Weights are q3 - 4 with q3 = low 2 bits | high bit << 2 in 0..8: dot the unsigned
        // q3 and subtract 4 · Σ_g scale_g · bsum_g.
        let offset = _mm256_madd_epi16(_mm256_cvtepi8_epi16(sc), bsums(by));
        let (s_lo, s_hi) = split_scales16(sc);
        let q8 = by.qs.as_ptr() as *const u8;
        let mut hm = load256(bx.hmask.as_ptr());
        let mut sumi = _mm256_setzero_si256();
        for half in 0..2 {
            let s = if half == 0 { s_lo } else { s_hi };
            let mut qv = load256(bx.qs.as_ptr().add(32 * half));
            for j in 0..4 {
                let hb = _mm256_and_si256(_mm256_slli_epi16::<2>(hm), m4);
                let q = _mm256_or_si256(_mm256_and_si256(qv, m3), hb);
                let p = _mm256_maddubs_epi16(q, load256(q8.add(128 * half + 32 * j)));
                sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(p, scale_pair(s, j)));
                qv = _mm256_srli_epi16::<2>(qv);
                hm = _mm256_srli_epi16::<1>(hm);
            }
        }
        sumi = _mm256_sub_epi32(sumi, _mm256_slli_epi32::<2>(offset));
        let d = by.d * h2f(bx.d);
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
    }
    hsum_ps(acc)
}

/// The 8 6-bit scales and 8 6-bit mins of a Q4_K/Q5_K block, as two u64 of 8 bytes.
#[inline(always)]
fn k4_scales_mins(p: &[u8; 12]) -> (u64, u64) {
    let a = u32::from_le_bytes([p[0], p[1], p[2], p[3]]);
    let b = u32::from_le_bytes([p[4], p[5], p[6], p[7]]);
    let c = u32::from_le_bytes([p[8], p[9], p[10], p[11]]);
    const LO6: u32 = 0x3f3f_3f3f;
    const LO4: u32 = 0x0f0f_0f0f;
    const LO2: u32 = 0x0303_0303;
    let sc_lo = a & LO6;
    let mn_lo = b & LO6;
    let sc_hi = (c & LO4) | (((a >> 6) & LO2) << 4);
    let mn_hi = ((c >> 4) & LO4) | (((b >> 6) & LO2) << 4);
    (
        sc_lo as u64 | (sc_hi as u64) << 32,
        mn_lo as u64 | (mn_hi as u64) << 32,
    )
}

/// Per super-block parts shared by Q4_K and Q5_K: the 8 scales broadcast to both halves as
/// i16, and Σ_j min_j · (bsum_2j + bsum_2j+1) as 8 partial sums.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn k4_prepare(scales: &[u8; 12], by: &BlockQ8K) -> (__m256i, __m256i) {
    let (s, mn_pairs) = k4_scales_mins_pairs(scales);
    (s, _mm256_madd_epi16(mn_pairs, bsums(by)))
}

/// The weight-only half of [`k4_prepare`]: the 8 scales as i16 (both halves) and each min
/// twice as i16 (`min_j` for the pair of bsums `2j`, `2j + 1`).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn k4_scales_mins_pairs(scales: &[u8; 12]) -> (__m256i, __m256i) {
    let (sc, mn) = k4_scales_mins(scales);
    let s = _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(_mm_cvtsi64_si128(sc as i64)));
    let mn = _mm_cvtsi64_si128(mn as i64);
    (s, _mm256_cvtepu8_epi16(_mm_unpacklo_epi8(mn, mn)))
}

/// Q4_K · Q8_K over `x.len()` super-blocks.
///
/// # Safety
/// As [`vec_dot_q4_0_q8_0`].
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn vec_dot_q4_k_q8_k(x: &[BlockQ4K], y: &[BlockQ8K]) -> f32 {
    if x.len() != y.len() {
        return f32::NAN;
    }
    let m4 = _mm256_set1_epi8(0x0f);
    let mut acc = _mm256_setzero_ps();
    for (bx, by) in x.iter().zip(y) {
        let (s, msum) = k4_prepare(&bx.scales, by);
        let q8 = by.qs.as_ptr() as *const u8;
        let mut sumi = _mm256_setzero_si256();
        for j in 0..4 {
            let q4 = load256(bx.qs.as_ptr().add(32 * j));
            let lo = _mm256_and_si256(q4, m4);
            let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(q4), m4);
            let pl = _mm256_maddubs_epi16(lo, load256(q8.add(64 * j)));
            let ph = _mm256_maddubs_epi16(hi, load256(q8.add(64 * j + 32)));
            sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(pl, scale8(s, 2 * j)));
            sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(ph, scale8(s, 2 * j + 1)));
        }
        let d = by.d * h2f(bx.d);
        let dmin = by.d * h2f(bx.dmin);
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
        acc = _mm256_fnmadd_ps(_mm256_set1_ps(dmin), _mm256_cvtepi32_ps(msum), acc);
    }
    hsum_ps(acc)
}

/// Q5_K · Q8_K over `x.len()` super-blocks.
///
/// # Safety
/// As [`vec_dot_q4_0_q8_0`].
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn vec_dot_q5_k_q8_k(x: &[BlockQ5K], y: &[BlockQ8K]) -> f32 {
    if x.len() != y.len() {
        return f32::NAN;
    }
    let m4 = _mm256_set1_epi8(0x0f);
    let b4 = _mm256_set1_epi8(0x10);
    let mut acc = _mm256_setzero_ps();
    for (bx, by) in x.iter().zip(y) {
        let (s, msum) = k4_prepare(&bx.scales, by);
        let q8 = by.qs.as_ptr() as *const u8;
        // Bit 2j of qh[l] is the fifth bit of weight 64j + l, bit 2j + 1 that of 64j + 32 + l.
        let mut qh = load256(bx.qh.as_ptr());
        let mut sumi = _mm256_setzero_si256();
        for j in 0..4 {
            let q4 = load256(bx.qs.as_ptr().add(32 * j));
            let lo = _mm256_or_si256(
                _mm256_and_si256(q4, m4),
                _mm256_and_si256(_mm256_slli_epi16::<4>(qh), b4),
            );
            let hi = _mm256_or_si256(
                _mm256_and_si256(_mm256_srli_epi16::<4>(q4), m4),
                _mm256_and_si256(_mm256_slli_epi16::<3>(qh), b4),
            );
            let pl = _mm256_maddubs_epi16(lo, load256(q8.add(64 * j)));
            let ph = _mm256_maddubs_epi16(hi, load256(q8.add(64 * j + 32)));
            sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(pl, scale8(s, 2 * j)));
            sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(ph, scale8(s, 2 * j + 1)));
            qh = _mm256_srli_epi16::<2>(qh);
        }
        let d = by.d * h2f(bx.d);
        let dmin = by.d * h2f(bx.dmin);
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
        acc = _mm256_fnmadd_ps(_mm256_set1_ps(dmin), _mm256_cvtepi32_ps(msum), acc);
    }
    hsum_ps(acc)
}

/// Q6_K · Q8_K over `x.len()` super-blocks.
///
/// # Safety
/// As [`vec_dot_q4_0_q8_0`].
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn vec_dot_q6_k_q8_k(x: &[BlockQ6K], y: &[BlockQ8K]) -> f32 {
    if x.len() != y.len() {
        return f32::NAN;
    }
    let m4 = _mm256_set1_epi8(0x0f);
    let m2 = _mm256_set1_epi8(0x30);
    let mut acc = _mm256_setzero_ps();
    for (bx, by) in x.iter().zip(y) {
        let sc = _mm_loadu_si128(bx.scales.as_ptr() as *const __m128i);
        // Weights are q6 - 32 with q6 in 0..64: dot the unsigned q6 and subtract
        // 32 · Σ_g scale_g · bsum_g.
        let offset = _mm256_madd_epi16(_mm256_cvtepi8_epi16(sc), bsums(by));
        let (s_lo, s_hi) = split_scales16(sc);
        let q8 = by.qs.as_ptr() as *const u8;
        let mut sumi = _mm256_setzero_si256();
        for half in 0..2 {
            let s = if half == 0 { s_lo } else { s_hi };
            let qla = load256(bx.ql.as_ptr().add(64 * half));
            let qlb = load256(bx.ql.as_ptr().add(64 * half + 32));
            let qh = load256(bx.qh.as_ptr().add(32 * half));
            let q = [
                _mm256_or_si256(
                    _mm256_and_si256(qla, m4),
                    _mm256_and_si256(_mm256_slli_epi16::<4>(qh), m2),
                ),
                _mm256_or_si256(
                    _mm256_and_si256(qlb, m4),
                    _mm256_and_si256(_mm256_slli_epi16::<2>(qh), m2),
                ),
                _mm256_or_si256(
                    _mm256_and_si256(_mm256_srli_epi16::<4>(qla), m4),
                    _mm256_and_si256(qh, m2),
                ),
                _mm256_or_si256(
                    _mm256_and_si256(_mm256_srli_epi16::<4>(qlb), m4),
                    _mm256_and_si256(_mm256_srli_epi16::<2>(qh), m2),
                ),
            ];
            for (j, &qj) in q.iter().enumerate() {
                let p = _mm256_maddubs_epi16(qj, load256(q8.add(128 * half + 32 * j)));
                sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(p, scale_pair(s, j)));
            }
        }
        sumi = _mm256_sub_epi32(sumi, _mm256_slli_epi32::<5>(offset));
        let d = by.d * h2f(bx.d);
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
    }
    hsum_ps(acc)
}

/// The 256 weights of a Q4_K block as 8 vectors of unsigned bytes (0..16), vector `c` the
/// weights `32c..32c + 32`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn unpack_q4_k(bx: &BlockQ4K) -> [__m256i; 8] {
    let m4 = _mm256_set1_epi8(0x0f);
    let mut q = [_mm256_setzero_si256(); 8];
    for j in 0..4 {
        let q4 = load256(bx.qs.as_ptr().add(32 * j));
        q[2 * j] = _mm256_and_si256(q4, m4);
        q[2 * j + 1] = _mm256_and_si256(_mm256_srli_epi16::<4>(q4), m4);
    }
    q
}

/// The 256 weights of a Q5_K block as 8 vectors of unsigned bytes (0..32), as
/// [`unpack_q4_k`].
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn unpack_q5_k(bx: &BlockQ5K) -> [__m256i; 8] {
    let m4 = _mm256_set1_epi8(0x0f);
    let b4 = _mm256_set1_epi8(0x10);
    // Bit 2j of qh[l] is the fifth bit of weight 64j + l, bit 2j + 1 that of 64j + 32 + l.
    let mut qh = load256(bx.qh.as_ptr());
    let mut q = [_mm256_setzero_si256(); 8];
    for j in 0..4 {
        let q4 = load256(bx.qs.as_ptr().add(32 * j));
        q[2 * j] = _mm256_or_si256(
            _mm256_and_si256(q4, m4),
            _mm256_and_si256(_mm256_slli_epi16::<4>(qh), b4),
        );
        q[2 * j + 1] = _mm256_or_si256(
            _mm256_and_si256(_mm256_srli_epi16::<4>(q4), m4),
            _mm256_and_si256(_mm256_slli_epi16::<3>(qh), b4),
        );
        qh = _mm256_srli_epi16::<2>(qh);
    }
    q
}

/// The 256 weights of a Q6_K block as 8 vectors of unsigned bytes (0..64, the stored `q6`
/// before its offset of 32), as [`unpack_q4_k`].
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn unpack_q6_k(bx: &BlockQ6K) -> [__m256i; 8] {
    let m4 = _mm256_set1_epi8(0x0f);
    let m2 = _mm256_set1_epi8(0x30);
    let mut q = [_mm256_setzero_si256(); 8];
    for half in 0..2 {
        let qla = load256(bx.ql.as_ptr().add(64 * half));
        let qlb = load256(bx.ql.as_ptr().add(64 * half + 32));
        let qh = load256(bx.qh.as_ptr().add(32 * half));
        q[4 * half] = _mm256_or_si256(
            _mm256_and_si256(qla, m4),
            _mm256_and_si256(_mm256_slli_epi16::<4>(qh), m2),
        );
        q[4 * half + 1] = _mm256_or_si256(
            _mm256_and_si256(qlb, m4),
            _mm256_and_si256(_mm256_slli_epi16::<2>(qh), m2),
        );
        q[4 * half + 2] = _mm256_or_si256(
            _mm256_and_si256(_mm256_srli_epi16::<4>(qla), m4),
            _mm256_and_si256(qh, m2),
        );
        q[4 * half + 3] = _mm256_or_si256(
            _mm256_and_si256(_mm256_srli_epi16::<4>(qlb), m4),
            _mm256_and_si256(_mm256_srli_epi16::<2>(qh), m2),
        );
    }
    q
}

/// Checks that four activation rows match the weight row's length (the four-row kernels
/// return NaN otherwise, as the one-row ones do).
#[inline(always)]
fn lens4<W, A>(x: &[W], y: &[&[A]; 4]) -> bool {
    y.iter().all(|y| y.len() == x.len())
}

/// The per-activation-row half of the four-row Q4_K/Q5_K kernels for super-block `i`: `q`
/// holds its 256 unpacked weights (8 x 32, unsigned), `(d, dmin, scales)` its header; adds the
/// block to each row's accumulator in the one-row kernels' order.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn k4_four_rows(
    q: &[__m256i; 8],
    (d, dmin, scales): (F16Le, F16Le, &[u8; 12]),
    y: [&[BlockQ8K]; 4],
    i: usize,
    acc: &mut [__m256; 4],
) {
    let (dx, dminx) = (h2f(d), h2f(dmin));
    let (s, mn_pairs) = k4_scales_mins_pairs(scales);
    for (t, acc) in acc.iter_mut().enumerate() {
        let by = y[t].get_unchecked(i);
        let msum = _mm256_madd_epi16(mn_pairs, bsums(by));
        let q8 = by.qs.as_ptr() as *const u8;
        let mut sumi = _mm256_setzero_si256();
        for j in 0..4 {
            let pl = _mm256_maddubs_epi16(q[2 * j], load256(q8.add(64 * j)));
            let ph = _mm256_maddubs_epi16(q[2 * j + 1], load256(q8.add(64 * j + 32)));
            sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(pl, scale8(s, 2 * j)));
            sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(ph, scale8(s, 2 * j + 1)));
        }
        let d = by.d * dx;
        let dmin = by.d * dminx;
        *acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), *acc);
        *acc = _mm256_fnmadd_ps(_mm256_set1_ps(dmin), _mm256_cvtepi32_ps(msum), *acc);
    }
}

/// [`vec_dot_q4_k_q8_k`] of one weight row with four activation rows; each result equals the
/// one-row kernel's bit for bit (the same integer sums and float steps per row), while each
/// super-block's weights are loaded and unpacked once for all four.
///
/// # Safety
/// As [`vec_dot_q4_0_q8_0`].
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn vec_dot4_q4_k_q8_k(x: &[BlockQ4K], y: [&[BlockQ8K]; 4]) -> [f32; 4] {
    if !lens4(x, &y) {
        return [f32::NAN; 4];
    }
    let mut acc = [_mm256_setzero_ps(); 4];
    for (i, bx) in x.iter().enumerate() {
        let q = unpack_q4_k(bx);
        k4_four_rows(&q, (bx.d, bx.dmin, &bx.scales), y, i, &mut acc);
    }
    acc.map(|a| hsum_ps(a))
}

/// [`vec_dot_q5_k_q8_k`] of one weight row with four activation rows; each result equals the
/// one-row kernel's bit for bit.
///
/// # Safety
/// As [`vec_dot_q4_0_q8_0`].
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn vec_dot4_q5_k_q8_k(x: &[BlockQ5K], y: [&[BlockQ8K]; 4]) -> [f32; 4] {
    if !lens4(x, &y) {
        return [f32::NAN; 4];
    }
    let mut acc = [_mm256_setzero_ps(); 4];
    for (i, bx) in x.iter().enumerate() {
        let q = unpack_q5_k(bx);
        k4_four_rows(&q, (bx.d, bx.dmin, &bx.scales), y, i, &mut acc);
    }
    acc.map(|a| hsum_ps(a))
}

/// [`vec_dot_q6_k_q8_k`] of one weight row with four activation rows; each result equals the
/// one-row kernel's bit for bit.
///
/// # Safety
/// As [`vec_dot_q4_0_q8_0`].
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn vec_dot4_q6_k_q8_k(x: &[BlockQ6K], y: [&[BlockQ8K]; 4]) -> [f32; 4] {
    if !lens4(x, &y) {
        return [f32::NAN; 4];
    }
    let mut acc = [_mm256_setzero_ps(); 4];
    for (i, bx) in x.iter().enumerate() {
        let sc = _mm_loadu_si128(bx.scales.as_ptr() as *const __m128i);
        let sc16 = _mm256_cvtepi8_epi16(sc);
        let (s_lo, s_hi) = split_scales16(sc);
        let q = unpack_q6_k(bx);
        let dx = h2f(bx.d);
        for (t, acc) in acc.iter_mut().enumerate() {
            let by = y[t].get_unchecked(i);
            let offset = _mm256_madd_epi16(sc16, bsums(by));
            let q8 = by.qs.as_ptr() as *const u8;
            let mut sumi = _mm256_setzero_si256();
            for half in 0..2 {
                let s = if half == 0 { s_lo } else { s_hi };
                for j in 0..4 {
                    let p =
                        _mm256_maddubs_epi16(q[4 * half + j], load256(q8.add(128 * half + 32 * j)));
                    sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(p, scale_pair(s, j)));
                }
            }
            sumi = _mm256_sub_epi32(sumi, _mm256_slli_epi32::<5>(offset));
            let d = by.d * dx;
            *acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), *acc);
        }
    }
    acc.map(|a| hsum_ps(a))
}

/// IQ4_XS · Q8_K over `x.len()` super-blocks.
///
/// # Safety
/// As [`vec_dot_q4_0_q8_0`].
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn vec_dot_iq4_xs_q8_k(x: &[BlockIQ4XS], y: &[BlockQ8K]) -> f32 {
    if x.len() != y.len() {
        return f32::NAN;
    }
    let table =
        _mm256_broadcastsi128_si256(_mm_loadu_si128(IQ4NL_VALUES.as_ptr() as *const __m128i));
    let lo_shifts = _mm256_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28);
    let hi_shifts = _mm256_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14);
    let mut acc = _mm256_setzero_ps();
    for (bx, by) in x.iter().zip(y) {
        // Scale of sub-block k: nibble k of scales_l | bits 2k..2k+2 of scales_h << 4, minus 32.
        let lo = _mm256_srlv_epi32(
            _mm256_set1_epi32(u32::from_le_bytes(bx.scales_l) as i32),
            lo_shifts,
        );
        let hi = _mm256_srlv_epi32(
            _mm256_set1_epi32(u16::from_le_bytes(bx.scales_h) as i32),
            hi_shifts,
        );
        let ls = _mm256_or_si256(
            _mm256_and_si256(lo, _mm256_set1_epi32(0x0f)),
            _mm256_slli_epi32::<4>(_mm256_and_si256(hi, _mm256_set1_epi32(3))),
        );
        let ls = _mm256_sub_epi32(ls, _mm256_set1_epi32(32));
        let s16 = _mm_packs_epi32(
            _mm256_castsi256_si128(ls),
            _mm256_extracti128_si256::<1>(ls),
        );
        let s = _mm256_broadcastsi128_si256(s16);
        let q8 = by.qs.as_ptr() as *const u8;
        let mut sumi = _mm256_setzero_si256();
        for k in 0..8 {
            let qx = _mm256_shuffle_epi8(table, nibbles32(bx.qs.as_ptr().add(16 * k)));
            let p = dot_i8i8_pairs(qx, load256(q8.add(32 * k)));
            sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(p, scale8(s, k)));
        }
        let d = by.d * h2f(bx.d);
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
    }
    hsum_ps(acc)
}

// ---------------------------------------------------------------------------------------------
// Float types
// ---------------------------------------------------------------------------------------------

/// Dot-product loop over `n` float elements, 32 per step in four accumulators, then 8 per step,
/// then a scalar tail. `$load(ptr, i)` yields 8 f32 lanes of element `i..i + 8`; `$one(ptr, i)`
/// yields element `i` as f32.
macro_rules! float_dot {
    ($n:expr, $x:expr, $y:expr, $load:ident, $one:ident) => {{
        let (n, x, y) = ($n, $x, $y);
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut i = 0usize;
        while i + 32 <= n {
            for (k, a) in acc.iter_mut().enumerate() {
                *a = _mm256_fmadd_ps($load(x, i + 8 * k), $load(y, i + 8 * k), *a);
            }
            i += 32;
        }
        while i + 8 <= n {
            acc[0] = _mm256_fmadd_ps($load(x, i), $load(y, i), acc[0]);
            i += 8;
        }
        let mut sum = hsum_ps(_mm256_add_ps(
            _mm256_add_ps(acc[0], acc[1]),
            _mm256_add_ps(acc[2], acc[3]),
        ));
        while i < n {
            sum += $one(x, i) * $one(y, i);
            i += 1;
        }
        sum
    }};
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn load_f16x8(p: *const u8, i: usize) -> __m256 {
    _mm256_cvtph_ps(_mm_loadu_si128(p.add(2 * i) as *const __m128i))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn load_f16(p: *const u8, i: usize) -> f32 {
    h2f(F16Le([*p.add(2 * i), *p.add(2 * i + 1)]))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn load_bf16x8(p: *const u8, i: usize) -> __m256 {
    let h = _mm256_cvtepu16_epi32(_mm_loadu_si128(p.add(2 * i) as *const __m128i));
    _mm256_castsi256_ps(_mm256_slli_epi32::<16>(h))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn load_bf16(p: *const u8, i: usize) -> f32 {
    f32::from_bits((u16::from_le_bytes([*p.add(2 * i), *p.add(2 * i + 1)]) as u32) << 16)
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn load_f32x8(p: *const u8, i: usize) -> __m256 {
    _mm256_loadu_ps(p.add(4 * i) as *const f32)
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn load_f32(p: *const u8, i: usize) -> f32 {
    (p.add(4 * i) as *const f32).read_unaligned()
}

/// F16 · F16 over `n` elements stored little-endian at `x` and `y` (any alignment).
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C; `x` and `y` must be valid for reads of `2 n` bytes.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn vec_dot_f16_f16(n: usize, x: *const u8, y: *const u8) -> f32 {
    float_dot!(n, x, y, load_f16x8, load_f16)
}

/// BF16 · BF16 over `n` elements stored little-endian at `x` and `y` (any alignment).
///
/// # Safety
/// As [`vec_dot_f16_f16`].
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn vec_dot_bf16_bf16(n: usize, x: *const u8, y: *const u8) -> f32 {
    float_dot!(n, x, y, load_bf16x8, load_bf16)
}

/// F32 · F32 over `n` elements stored little-endian at `x` and `y` (any alignment).
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C; `x` and `y` must be valid for reads of `4 n` bytes.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn vec_dot_f32_f32(n: usize, x: *const u8, y: *const u8) -> f32 {
    float_dot!(n, x, y, load_f32x8, load_f32)
}

// ---------------------------------------------------------------------------------------------
// Activation quantizers
// ---------------------------------------------------------------------------------------------

/// Largest |x| of 32 values at `p`; NaN lanes are ignored (like ggml's `amax` loop).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn amax32(p: *const f32) -> f32 {
    let sign = _mm256_set1_ps(-0.0);
    let mut m = _mm256_setzero_ps();
    for k in 0..4 {
        // max_ps returns its second operand when either is NaN: keep `m` second.
        m = _mm256_max_ps(_mm256_andnot_ps(sign, _mm256_loadu_ps(p.add(8 * k))), m);
    }
    hmax_ps(m)
}

/// Packs 32 i32 (in -128..=127) from four vectors into 32 i8 in order.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn pack32(q: [__m256i; 4]) -> __m256i {
    let a = _mm256_packs_epi32(q[0], q[1]);
    let b = _mm256_packs_epi32(q[2], q[3]);
    let c = _mm256_packs_epi16(a, b);
    _mm256_permutevar8x32_epi32(c, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7))
}

/// `v` rounded to the nearest integer, halfway cases to even, then converted as Rust's
/// `as i8` does (saturating to -128..=127, NaN to 0): the scalar reference's
/// `(x * id).round_ties_even() as i8`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn round_even_i8(v: __m256) -> __m256i {
    let r = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(v);
    // max/min return their second operand for NaN: NaN → -128 → 127, so clear NaN after.
    let r = _mm256_min_ps(
        _mm256_max_ps(r, _mm256_set1_ps(-128.0)),
        _mm256_set1_ps(127.0),
    );
    let r = _mm256_and_ps(r, _mm256_cmp_ps::<_CMP_ORD_Q>(v, v));
    _mm256_cvttps_epi32(r)
}

/// Quantizes 32 values at `p` as ggml's x86 Q8_0/Q8_1 quantizers do: `d = amax / 127`,
/// `q = nearest(x · (127 / amax))`, ties to even. Returns `d` and the quants as 4 × 8 i32.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q8_block(p: *const f32) -> (f32, [__m256i; 4]) {
    let amax = amax32(p);
    let d = amax / 127.0;
    let id = _mm256_set1_ps(if amax != 0.0 { 127.0 / amax } else { 0.0 });
    let mut q = [_mm256_setzero_si256(); 4];
    for (k, qk) in q.iter_mut().enumerate() {
        *qk = round_even_i8(_mm256_mul_ps(_mm256_loadu_ps(p.add(8 * k)), id));
    }
    (d, q)
}

/// Quantizes `x` to Q8_0 blocks, bit-exact with the scalar quantizer (ggml's x86 rule).
///
/// If `x.len()` is not `32 * y.len()`, every byte of `y` is set to `0xff` (NaN scales).
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn quantize_row_q8_0(x: &[f32], y: &mut [BlockQ8_0]) {
    if x.len() != QK * y.len() {
        bytemuck::cast_slice_mut::<_, u8>(y).fill(0xff);
        return;
    }
    for (xb, yb) in x.chunks_exact(QK).zip(y.iter_mut()) {
        let (d, q) = q8_block(xb.as_ptr());
        yb.d = F16Le::from_f32(d);
        _mm256_storeu_si256(yb.qs.as_mut_ptr() as *mut __m256i, pack32(q));
    }
}

/// Quantizes `x` to Q8_1 blocks, bit-exact with the scalar quantizer (ggml's x86 rule).
///
/// # Safety
/// As [`quantize_row_q8_0`].
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn quantize_row_q8_1(x: &[f32], y: &mut [BlockQ8_1]) {
    if x.len() != QK * y.len() {
        bytemuck::cast_slice_mut::<_, u8>(y).fill(0xff);
        return;
    }
    for (xb, yb) in x.chunks_exact(QK).zip(y.iter_mut()) {
        let (d, q) = q8_block(xb.as_ptr());
        let sum = hsum_epi32(_mm256_add_epi32(
            _mm256_add_epi32(q[0], q[1]),
            _mm256_add_epi32(q[2], q[3]),
        ));
        yb.d = F16Le::from_f32(d);
        yb.s = F16Le::from_f32(sum as f32 * d);
        _mm256_storeu_si256(yb.qs.as_mut_ptr() as *mut __m256i, pack32(q));
    }
}

/// Quantizes `x` to Q8_K blocks (bit-exact with ggml's `quantize_row_q8_K_ref`: the scale
/// comes from the first element of largest magnitude, `q = min(127, nearest(x · -127 / max))`
/// with ties to even).
///
/// If `x.len()` is not `256 * y.len()`, every byte of `y` is set to `0xff` (NaN scale).
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn quantize_row_q8_k(x: &[f32], y: &mut [BlockQ8K]) {
    if x.len() != QK_K * y.len() {
        bytemuck::cast_slice_mut::<_, u8>(y).fill(0xff);
        return;
    }
    let sign = _mm256_set1_ps(-0.0);
    for (xb, yb) in x.chunks_exact(QK_K).zip(y.iter_mut()) {
        let p = xb.as_ptr();
        let mut m = _mm256_setzero_ps();
        for k in 0..QK_K / 8 {
            m = _mm256_max_ps(_mm256_andnot_ps(sign, _mm256_loadu_ps(p.add(8 * k))), m);
        }
        let amax = hmax_ps(m);
        if amax == 0.0 || amax.is_nan() {
            *yb = bytemuck::Zeroable::zeroed();
            continue;
        }
        // The reference keeps the first element whose magnitude beats all before it.
        let va = _mm256_set1_ps(amax);
        let mut first = 0;
        for k in 0..QK_K / 8 {
            let a = _mm256_andnot_ps(sign, _mm256_loadu_ps(p.add(8 * k)));
            let hit = _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_EQ_OQ>(a, va));
            if hit != 0 {
                first = 8 * k + hit.trailing_zeros() as usize;
                break;
            }
        }
        let iscale = -127.0 / xb[first];
        let vs = _mm256_set1_ps(iscale);
        let cap = _mm256_set1_epi32(127);
        let inf = _mm256_set1_ps(f32::INFINITY);
        let mut sums = [_mm256_setzero_si256(); 16];
        for g in 0..QK_K / 32 {
            let mut q = [_mm256_setzero_si256(); 4];
            for (k, qk) in q.iter_mut().enumerate() {
                // cvtps rounds with MXCSR's mode, which Rust leaves at nearest-even.
                let v = _mm256_mul_ps(_mm256_loadu_ps(p.add(32 * g + 8 * k)), vs);
                // Infinities and NaN (only when -127 / max overflows, or for NaN input)
                // become 0, as the reference's `nearest_int` makes them.
                let finite = _mm256_cmp_ps::<_CMP_LT_OQ>(_mm256_andnot_ps(sign, v), inf);
                let v = _mm256_and_ps(v, finite);
                *qk = _mm256_min_epi32(_mm256_cvtps_epi32(v), cap);
            }
            sums[2 * g] = _mm256_add_epi32(q[0], q[1]);
            sums[2 * g + 1] = _mm256_add_epi32(q[2], q[3]);
            _mm256_storeu_si256(yb.qs.as_mut_ptr().add(32 * g) as *mut __m256i, pack32(q));
        }
        // Horizontal sums of the 16 groups, four at a time.
        let mut bs = [_mm_setzero_si128(); 4];
        for (k, b) in bs.iter_mut().enumerate() {
            let s = &sums[4 * k..4 * k + 4];
            let h = _mm256_hadd_epi32(_mm256_hadd_epi32(s[0], s[1]), _mm256_hadd_epi32(s[2], s[3]));
            *b = _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256::<1>(h));
        }
        let b = yb.bsums.as_mut_ptr() as *mut __m128i;
        _mm_storeu_si128(b, _mm_packs_epi32(bs[0], bs[1]));
        _mm_storeu_si128(b.add(1), _mm_packs_epi32(bs[2], bs[3]));
        yb.d = 1.0 / iscale;
    }
}

/// Converts `x` to little-endian F16 at `out` (round to nearest even, as `half` and ggml do).
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C; `out` must be valid for writes of `2 x.len()` bytes.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn quantize_row_f16(x: &[f32], out: *mut u8) {
    let n = x.len();
    let mut i = 0;
    while i + 8 <= n {
        let h =
            _mm256_cvtps_ph::<{ _MM_FROUND_TO_NEAREST_INT }>(_mm256_loadu_ps(x.as_ptr().add(i)));
        _mm_storeu_si128(out.add(2 * i) as *mut __m128i, h);
        i += 8;
    }
    while i < n {
        let h = F16Le::from_f32(x[i]).0;
        *out.add(2 * i) = h[0];
        *out.add(2 * i + 1) = h[1];
        i += 1;
    }
}

/// Converts `x` to little-endian BF16 at `out` (round to nearest even; NaN stays a quiet NaN,
/// as `half` and ggml do).
///
/// # Safety
/// As [`quantize_row_f16`].
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn quantize_row_bf16(x: &[f32], out: *mut u8) {
    let n = x.len();
    let mut i = 0;
    let one = _mm256_set1_epi32(1);
    let bias = _mm256_set1_epi32(0x7fff);
    let quiet = _mm256_set1_epi32(0x40);
    while i + 16 <= n {
        let mut r = [_mm256_setzero_si256(); 2];
        for (k, rk) in r.iter_mut().enumerate() {
            let v = _mm256_loadu_ps(x.as_ptr().add(i + 8 * k));
            let u = _mm256_castps_si256(v);
            let top = _mm256_srli_epi32::<16>(u);
            let rounded = _mm256_srli_epi32::<16>(_mm256_add_epi32(
                u,
                _mm256_add_epi32(bias, _mm256_and_si256(top, one)),
            ));
            let nan = _mm256_castps_si256(_mm256_cmp_ps::<_CMP_UNORD_Q>(v, v));
            *rk = _mm256_blendv_epi8(rounded, _mm256_or_si256(top, quiet), nan);
        }
        // packus works per 128-bit half: fix the order of the 64-bit quarters.
        let packed = _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_packus_epi32(r[0], r[1]));
        _mm256_storeu_si256(out.add(2 * i) as *mut __m256i, packed);
        i += 16;
    }
    while i < n {
        let h = half::bf16::from_f32(x[i]).to_le_bytes();
        *out.add(2 * i) = h[0];
        *out.add(2 * i + 1) = h[1];
        i += 1;
    }
}

pub mod mxfp4;
pub mod tile;
