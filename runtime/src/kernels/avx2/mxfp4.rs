//! MXFP4 · Q8_0 for AVX2 + FMA + F16C: the one-row dot, the four-row dot, and the many-row
//! (`dot_rows`) and many-weight-row (`dot_many`) entries the dispatch hands out.
//!
//! A block's 32 codes become the doubled E2M1 values (-12..=12, ggml's `kvalues_mxfp4`) with
//! one byte shuffle, as IQ4_NL's table lookup; the block's integer dot with the Q8_0 quants is
//! exact (i32). Per four blocks, the halved E8M0 scales are built as f32 bit patterns in one
//! vector (`2^(e - 128)`, subnormal for `e < 2`, as ggml's `ggml_e8m0_to_fp32_half`), times
//! the four activation scales, and one FMA adds the four scaled sums, as the other 32-weight
//! block types do in `avx2.rs`. Every entry point runs the same steps in the same order for a
//! given (weight row, activation row), so all of them give the one-row kernel's result bit
//! for bit; against the scalar reference only the f32 accumulation order differs.

use core::arch::x86_64::*;

use flashstream_formats::blocks::{e8m0_to_f32_half, BlockMXFP4, BlockQ8_0, MXFP4_VALUES};
use flashstream_formats::GgmlType;

use super::{
    blocks_of, dot_many_tables, dot_rows_tables, dot_u8i8, hsum4_epi32, hsum_epi32, hsum_ps,
    load256, nibbles32, pack4, row_ok,
};

/// The halved E8M0 scales of four blocks as f32 lanes: bits `(e - 1) << 23` for `e >= 2`,
/// `0x0020_0000 << e` for `e` 0 and 1 (the subnormals 2^-128 and 2^-127).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn e8m0_half4(x4: &[BlockMXFP4]) -> __m128 {
    let e = _mm_setr_epi32(
        x4[0].e as i32,
        x4[1].e as i32,
        x4[2].e as i32,
        x4[3].e as i32,
    );
    let normal = _mm_slli_epi32::<23>(_mm_sub_epi32(e, _mm_set1_epi32(1)));
    let subnormal = _mm_sllv_epi32(_mm_set1_epi32(0x0020_0000), e);
    let small = _mm_cmpgt_epi32(_mm_set1_epi32(2), e);
    _mm_castsi128_ps(_mm_blendv_epi8(normal, subnormal, small))
}

/// The f16 scales of four Q8_0 blocks as f32 lanes (exact).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q8_scales4(y4: &[BlockQ8_0]) -> __m128 {
    _mm_cvtph_ps(_mm_set_epi64x(
        0,
        pack4([y4[0].d, y4[1].d, y4[2].d, y4[3].d]) as i64,
    ))
}

/// A block's 32 weights as signed bytes (doubled E2M1 values), with their magnitudes: the
/// operands of the sign trick (`|w| · sign(y, w)`, exact since `|w| <= 12`).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn unpack(table: __m256i, bx: &BlockMXFP4) -> (__m256i, __m256i) {
    let w = _mm256_shuffle_epi8(table, nibbles32(bx.qs.as_ptr()));
    (_mm256_sign_epi8(w, w), w)
}

/// The exact integer dot of an unpacked weight block with a Q8_0 block, as 8 partial i32 sums.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn block_dot(w: (__m256i, __m256i), by: &BlockQ8_0) -> __m256i {
    dot_u8i8(
        w.0,
        _mm256_sign_epi8(load256(by.qs.as_ptr() as *const u8), w.1),
    )
}

/// One MXFP4 row against `$nr` Q8_0 rows. Per group of four blocks: the weights unpacked once,
/// then for each activation row the four integer sums reduced together and one FMA of
/// `dx · dy` (`$dy4`, with `$t` the row and `$i` the first block bound, gives the four `dy`)
/// into that row's accumulator; leftover blocks one by one (`$dy1` with `$t`, `$i`: one `dy`).
macro_rules! rows {
    ($nr:literal; $x:expr, $ys:expr, |$t:ident, $i:ident| $dy4:expr, $dy1:expr) => {{
        let (x, ys) = ($x, $ys);
        if ys.iter().any(|y| y.len() != x.len()) {
            return [f32::NAN; $nr];
        }
        let table =
            _mm256_broadcastsi128_si256(_mm_loadu_si128(MXFP4_VALUES.as_ptr() as *const __m128i));
        let mut acc = [_mm256_setzero_ps(); $nr];
        let nq = x.len() / 4 * 4;
        let mut $i = 0;
        while $i < nq {
            let x4 = x.get_unchecked($i..$i + 4);
            let dx = e8m0_half4(x4);
            let wk = [
                unpack(table, x4.get_unchecked(0)),
                unpack(table, x4.get_unchecked(1)),
                unpack(table, x4.get_unchecked(2)),
                unpack(table, x4.get_unchecked(3)),
            ];
            for $t in 0..$nr {
                let y4 = ys[$t].get_unchecked($i..$i + 4);
                let s = [
                    block_dot(wk[0], y4.get_unchecked(0)),
                    block_dot(wk[1], y4.get_unchecked(1)),
                    block_dot(wk[2], y4.get_unchecked(2)),
                    block_dot(wk[3], y4.get_unchecked(3)),
                ];
                let d = _mm_mul_ps(dx, $dy4);
                let sums = _mm256_cvtepi32_ps(hsum4_epi32(s));
                acc[$t] = _mm256_fmadd_ps(_mm256_set_m128(d, d), sums, acc[$t]);
            }
            $i += 4;
        }
        let mut out = [0f32; $nr];
        for $t in 0..$nr {
            let mut tail = 0.0f32;
            $i = nq;
            while $i < x.len() {
                let bx = x.get_unchecked($i);
                let sum = hsum_epi32(block_dot(unpack(table, bx), ys[$t].get_unchecked($i)));
                tail += e8m0_to_f32_half(bx.e) * $dy1 * sum as f32;
                $i += 1;
            }
            out[$t] = hsum_ps(acc[$t]) + tail;
        }
        out
    }};
}

/// MXFP4 · Q8_0 over `x.len()` blocks. Returns NaN if `x` and `y` differ in length.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn vec_dot_mxfp4_q8_0(x: &[BlockMXFP4], y: &[BlockQ8_0]) -> f32 {
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn one(x: &[BlockMXFP4], ys: [&[BlockQ8_0]; 1]) -> [f32; 1] {
        rows!(1; x, ys, |t, i| q8_scales4(ys[t].get_unchecked(i..i + 4)),
              ys[t].get_unchecked(i).d.to_f32())
    }
    one(x, [y])[0]
}

/// [`vec_dot_mxfp4_q8_0`] of one weight row with four activation rows; each result equals the
/// one-row kernel's bit for bit.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn vec_dot4_mxfp4_q8_0(x: &[BlockMXFP4], ys: [&[BlockQ8_0]; 4]) -> [f32; 4] {
    rows!(4; x, ys, |t, i| q8_scales4(ys[t].get_unchecked(i..i + 4)),
          ys[t].get_unchecked(i).d.to_f32())
}

/// [`vec_dot4_mxfp4_q8_0`] with the activation block scales as f32 tables (`dy`, laid out by
/// `quantize_rows`; `_sy` is unused: MXFP4 has no min term); each result equals the one-row
/// kernel's bit for bit (the f16 to f32 conversion is exact).
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn vec_dot4t_mxfp4_q8_0(
    x: &[BlockMXFP4],
    ys: [&[BlockQ8_0]; 4],
    dy: [&[f32]; 4],
    _sy: [&[f32]; 4],
) -> [f32; 4] {
    if dy.iter().any(|d| d.len() != x.len()) {
        return [f32::NAN; 4];
    }
    rows!(4; x, ys, |t, i| _mm_loadu_ps(dy[t].as_ptr().add(i)), *dy[t].get_unchecked(i))
}

/// [`vec_dot_mxfp4_q8_0`] with the activation block scales as an f32 table; the result equals
/// the one-row kernel's bit for bit.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn vec_dot1t_mxfp4_q8_0(
    x: &[BlockMXFP4],
    y: &[BlockQ8_0],
    dy: &[f32],
    _sy: &[f32],
) -> f32 {
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn one(x: &[BlockMXFP4], ys: [&[BlockQ8_0]; 1], dy: &[f32]) -> [f32; 1] {
        if dy.len() != x.len() {
            return [f32::NAN];
        }
        rows!(1; x, ys, |t, i| _mm_loadu_ps(dy.as_ptr().add(i)), *dy.get_unchecked(i))
    }
    one(x, [y], dy)[0]
}

// ---------------------------------------------------------------------------------------------
// Byte-level entry points, handed out by `avx2::dot_fn` & co. after the feature check.

/// [`super::DotFn`] for MXFP4: NaN unless both rows are exactly `n` values.
pub(super) fn dot(n: usize, w: &[u8], a: &[u8]) -> f32 {
    if !row_ok(GgmlType::MXFP4, n, w.len()) || !row_ok(GgmlType::Q8_0, n, a.len()) {
        return f32::NAN;
    }
    let (x, y) = (blocks_of::<BlockMXFP4>(w), blocks_of::<BlockQ8_0>(a));
    // SAFETY: handed out only by `dot_fn` after it checked AVX2, FMA and F16C; both slices
    // hold `n / 32` blocks.
    unsafe { vec_dot_mxfp4_q8_0(&x, &y) }
}

/// [`super::Dot4Fn`] for MXFP4.
pub(super) fn dot4(n: usize, w: &[u8], a: [&[u8]; 4]) -> [f32; 4] {
    if !row_ok(GgmlType::MXFP4, n, w.len()) || a.iter().any(|a| !row_ok(GgmlType::Q8_0, n, a.len()))
    {
        return [f32::NAN; 4];
    }
    let x = blocks_of::<BlockMXFP4>(w);
    let y = a.map(blocks_of::<BlockQ8_0>);
    // SAFETY: handed out only by `dot4_fn` after the feature check; every slice holds
    // `n / 32` blocks.
    unsafe { vec_dot4_mxfp4_q8_0(&x, [&y[0], &y[1], &y[2], &y[3]]) }
}

/// [`super::DotActRowsFn`] for MXFP4 (four activation rows at a time, reading their f32 scale
/// tables).
pub(super) fn dot_rows(
    n: usize,
    w: &[u8],
    a: &[u8],
    a_stride: usize,
    n_tok: usize,
    out: &mut [f32],
    out_stride: usize,
) {
    dot_rows_tables::<BlockMXFP4, BlockQ8_0>(
        n,
        w,
        a,
        a_stride,
        n_tok,
        out,
        out_stride,
        vec_dot_mxfp4_q8_0,
        vec_dot4t_mxfp4_q8_0,
    )
}

/// [`super::DotWeightRowsFn`] for MXFP4 (reading the activation row's f32 scale table when present).
pub(super) fn dot_many(n: usize, w: &[u8], a: &[u8], out: &mut [f32]) {
    dot_many_tables::<BlockMXFP4, BlockQ8_0>(n, w, a, out, vec_dot_mxfp4_q8_0, vec_dot1t_mxfp4_q8_0)
}
