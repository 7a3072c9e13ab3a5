//! aarch64 NEON kernels, with an `sdot` (ARMv8.2 dotprod) variant of every integer dot, and
//! batch (tile) kernels in [`tile`] (`sdot`, and `smmla` where the CPU has i8mm).
//!
//! This file (about 850 lines) keeps the shared primitives, the K-quant one-row kernels, the
//! float dots and the quantizers together on purpose: the NEON family reads best whole, like
//! the scalar reference it mirrors. The 32-weight block kernels (one-row and tile are the same
//! function) are in `block32`, the K-quant tile kernels in `ktile`, the batch drivers and
//! their dispatch in [`tile`].
//!
//! NEON itself is part of the aarch64 baseline, so the plain kernels run on every aarch64 CPU.
//! The dotprod kernels are compiled with `#[target_feature(enable = "dotprod")]` (the i8mm
//! ones with `"dotprod,i8mm"`) and are only ever entered after
//! [`std::arch::is_aarch64_feature_detected!`] said yes (checked in the safe wrapper on every
//! call, which costs one cached atomic load per call).
//!
//! `vdotq_s32` and `vmmlaq_s32` are still unstable in Rust, and the f16→f32 conversion
//! intrinsics are newer than the workspace's minimum Rust version, so `sdot`, `smmla`, `fcvt`
//! and `fcvtl`/`fcvtl2` are emitted with small `asm!` wrappers (stable since Rust 1.59).
//!
//! Arithmetic contract, shared with the scalar reference: every block's integer dot product is
//! exact (i32), and only the per-block float scaling and the final sum are rounded, in a
//! different order than the scalar code. The activation quantizers reproduce the scalar
//! quantizers bit for bit (same f32 operations, same rounding mode), except for Q8_0/Q8_1
//! blocks that contain a NaN.
//!
//! The integer kernels are generic over [`I8Dot`], the 16-lane i8 dot primitive: [`Sdot`]
//! (one `sdot`) or [`Mull`] (`smull`/`smull2` + `sadalp`, plain NEON). Both compute exact
//! sums and only group the products into lanes differently. The K-quant kernels reduce each
//! super-block's integer sum before scaling it, so both variants give identical results; the
//! 32-weight-block kernels scale the four i32 lanes separately (no horizontal add per block),
//! so the variants may differ in the last bits.
//!
//! The safe entry points handed out by [`dot_fn`] / [`quantize_fn`] never panic: rows that are
//! not exactly `n` values, or misaligned Q8_K activations, are passed to the scalar entry
//! points, which return NaN (or fill the output with NaN-scale bytes) for bad lengths.

use std::arch::aarch64::*;
use std::arch::asm;

use flashstream_formats::blocks::{
    as_blocks, e8m0_to_f32_half, k_scale_min, q3k_scales, BlockIQ4NL, BlockIQ4XS, BlockMXFP4,
    BlockQ2K, BlockQ3K, BlockQ4K, BlockQ4_0, BlockQ4_1, BlockQ5K, BlockQ5_0, BlockQ5_1, BlockQ6K,
    BlockQ8K, BlockQ8_0, BlockQ8_1, F16Le, QuantBlock, IQ4NL_VALUES, MXFP4_VALUES, QK, QK_K,
};
use flashstream_formats::GgmlType;

use super::{scalar, DotBlockFn, DotFn, QuantizeFn};

mod block32;
mod ktile;
pub mod tile;

// The raw f16/bf16/f32 rows are read as little-endian lanes.
const _: () = assert!(
    cfg!(target_endian = "little"),
    "the NEON kernels assume little-endian aarch64"
);

/// The NEON dot kernel for weight type `ty`, if there is one.
///
/// With `dotprod`, the integer kernels use `sdot` — but only if this CPU has it; otherwise
/// (and with `dotprod == false`) the plain NEON kernels are returned. Float types (F32, F16,
/// BF16) have a single version.
pub fn dot_fn(ty: GgmlType, dotprod: bool) -> Option<DotFn> {
    let sdot = dotprod && has_dotprod();
    macro_rules! pick {
        ($f:ident) => {
            if sdot {
                $f::<true> as DotFn
            } else {
                $f::<false> as DotFn
            }
        };
    }
    Some(match ty {
        GgmlType::Q4_0 => pick!(dot_q4_0),
        GgmlType::Q4_1 => pick!(dot_q4_1),
        GgmlType::Q5_0 => pick!(dot_q5_0),
        GgmlType::Q5_1 => pick!(dot_q5_1),
        GgmlType::Q8_0 => pick!(dot_q8_0),
        GgmlType::IQ4_NL => pick!(dot_iq4_nl),
        GgmlType::MXFP4 => pick!(dot_mxfp4),
        GgmlType::Q2_K => pick!(dot_q2_k),
        GgmlType::Q3_K => pick!(dot_q3_k),
        GgmlType::Q4_K => pick!(dot_q4_k),
        GgmlType::Q5_K => pick!(dot_q5_k),
        GgmlType::Q6_K => pick!(dot_q6_k),
        GgmlType::IQ4_XS => pick!(dot_iq4_xs),
        GgmlType::F32 => dot_f32,
        GgmlType::F16 => dot_f16,
        GgmlType::BF16 => dot_bf16,
        _ => return None,
    })
}

/// The NEON batch kernel ([`DotBlockFn`]: a block of weight rows against many activation
/// rows) for weight type `ty`, if there is one: the plain NEON build, or with `dotprod` the
/// best build this CPU runs ([`tile::TileIsa::detect`]). Each result equals what
/// [`dot_fn`]`(ty, dotprod)`'s kernel gives, bit for bit.
pub fn dot_block_fn(ty: GgmlType, dotprod: bool) -> Option<DotBlockFn> {
    tile::tile_rows_fn(tile::TileIsa::detect(dotprod), ty)
}

/// The NEON quantizer for activation type `act`, if there is one (Q8_0, Q8_1, Q8_K).
pub fn quantize_fn(act: GgmlType) -> Option<QuantizeFn> {
    match act {
        GgmlType::Q8_0 => Some(quantize_q8_0_bytes),
        GgmlType::Q8_1 => Some(quantize_q8_1_bytes),
        GgmlType::Q8_K => Some(quantize_q8_k_bytes),
        _ => None,
    }
}

/// Whether this CPU has the dot-product extension (`sdot`/`udot`).
pub fn has_dotprod() -> bool {
    std::arch::is_aarch64_feature_detected!("dotprod")
}

// ---------------------------------------------------------------------------------------------
// Small asm helpers (instructions whose intrinsics are unstable or newer than the MSRV).

/// Converts a half float (raw bits) to f32 with the baseline `fcvt` instruction.
#[inline(always)]
fn h2f(bits: u16) -> f32 {
    let r: f32;
    // SAFETY: `fcvt Sd, Hn` is part of the aarch64 baseline FP; it touches no memory, stack
    // or flags, and only the named registers.
    unsafe {
        asm!("fcvt {0:s}, {1:h}", out(vreg) r, in(vreg) bits,
             options(pure, nomem, nostack, preserves_flags));
    }
    r
}

/// The f32 value of a stored half float.
#[inline(always)]
fn f16(h: F16Le) -> f32 {
    h2f(u16::from_le_bytes(h.0))
}

/// Widens the low four half floats of `v` (raw bits) to f32 (`fcvtl`, baseline).
#[inline(always)]
fn h2f_low(v: uint16x8_t) -> float32x4_t {
    let r: float32x4_t;
    // SAFETY: baseline instruction, registers only.
    unsafe {
        asm!("fcvtl {0:v}.4s, {1:v}.4h", out(vreg) r, in(vreg) v,
             options(pure, nomem, nostack, preserves_flags));
    }
    r
}

/// Widens the high four half floats of `v` (raw bits) to f32 (`fcvtl2`, baseline).
#[inline(always)]
fn h2f_high(v: uint16x8_t) -> float32x4_t {
    let r: float32x4_t;
    // SAFETY: baseline instruction, registers only.
    unsafe {
        asm!("fcvtl2 {0:v}.4s, {1:v}.8h", out(vreg) r, in(vreg) v,
             options(pure, nomem, nostack, preserves_flags));
    }
    r
}

/// The 16-lane i8 dot primitive the integer kernels are generic over.
trait I8Dot {
    /// Adds the 16 products `a[i]*b[i]` into the four i32 lanes of `acc` (how they are
    /// grouped into lanes is up to the implementation; the lane total is exact).
    ///
    /// # Safety
    /// The CPU must support the instructions of the implementation.
    unsafe fn dot(acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t;
}

/// `sdot` (dotprod). Only used inside `#[target_feature(enable = "dotprod")]` functions.
struct Sdot;

impl I8Dot for Sdot {
    #[inline(always)]
    unsafe fn dot(mut acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
        // SAFETY: the caller guarantees dotprod (this is only inlined into
        // `#[target_feature(enable = "dotprod")]` kernels entered after detection). Registers
        // only.
        asm!("sdot {0:v}.4s, {1:v}.16b, {2:v}.16b", inout(vreg) acc, in(vreg) a, in(vreg) b,
             options(pure, nomem, nostack, preserves_flags));
        acc
    }
}

/// Plain NEON: widening multiplies, then pairwise add-accumulate into i32 lanes. Each i16
/// product is accumulated separately, so no i16 sum can overflow even for -128·-128.
struct Mull;

impl I8Dot for Mull {
    #[inline(always)]
    unsafe fn dot(acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
        let lo = vmull_s8(vget_low_s8(a), vget_low_s8(b));
        let hi = vmull_high_s8(a, b);
        vpadalq_s16(vpadalq_s16(acc, lo), hi)
    }
}

/// The i32 sum of the 16 products of `a` and `b`, as four lanes.
#[inline(always)]
unsafe fn dot16<D: I8Dot>(a: int8x16_t, b: int8x16_t) -> int32x4_t {
    D::dot(vdupq_n_s32(0), a, b)
}

/// The i32 sum of the 32 products of `(a0, a1)` and `(b0, b1)`, as four lanes.
#[inline(always)]
unsafe fn dot32<D: I8Dot>(a0: int8x16_t, a1: int8x16_t, b0: int8x16_t, b1: int8x16_t) -> int32x4_t {
    D::dot(D::dot(vdupq_n_s32(0), a0, b0), a1, b1)
}

#[inline(always)]
unsafe fn ld_s8(p: &[i8]) -> int8x16_t {
    debug_assert!(p.len() >= 16);
    vld1q_s8(p.as_ptr())
}

#[inline(always)]
unsafe fn ld_u8(p: &[u8]) -> uint8x16_t {
    debug_assert!(p.len() >= 16);
    vld1q_u8(p.as_ptr())
}

#[inline(always)]
unsafe fn s8(v: uint8x16_t) -> int8x16_t {
    vreinterpretq_s8_u8(v)
}

// ---------------------------------------------------------------------------------------------
// 32-weight block kernels (paired with Q8_0 / Q8_1): `block32`; this is the shared Q5 helper.

/// Bit `i % 8` of each lane, for expanding packed high bits to bytes.
const BIT_OF_LANE: [u8; 16] = [1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128];
/// Byte indices (into a u32 repeated four times) selecting qh bytes 0,1 and 2,3.
const QH_LO_IDX: [u8; 16] = [0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1];
const QH_HI_IDX: [u8; 16] = [2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3];

/// Expands the 32 fifth bits of a Q5_0/Q5_1 block to `0x10`/`0` bytes: (weights 0..16,
/// weights 16..32).
#[inline(always)]
unsafe fn q5_high_bits(qh: [u8; 4]) -> (uint8x16_t, uint8x16_t) {
    let v = vreinterpretq_u8_u32(vdupq_n_u32(u32::from_le_bytes(qh)));
    let bits = vld1q_u8(BIT_OF_LANE.as_ptr());
    let b5 = vdupq_n_u8(0x10);
    let lo = vqtbl1q_u8(v, vld1q_u8(QH_LO_IDX.as_ptr()));
    let hi = vqtbl1q_u8(v, vld1q_u8(QH_HI_IDX.as_ptr()));
    (
        vandq_u8(vtstq_u8(lo, bits), b5),
        vandq_u8(vtstq_u8(hi, bits), b5),
    )
}

// ---------------------------------------------------------------------------------------------
// K-quant kernels (paired with Q8_K). Each super-block's weighted integer sum is exact in i32;
// it is scaled once by `d_x * d_y`, and the mins term once by `dmin_x * d_y`.

/// Shifts every byte of `v` right by `n` (0..8); constant-folded once loops are unrolled.
#[inline(always)]
unsafe fn shr_u8(v: uint8x16_t, n: i8) -> uint8x16_t {
    vshlq_u8(v, vdupq_n_s8(-n))
}

/// Shifts every byte of `v` left by `n` (negative: right).
#[inline(always)]
unsafe fn shl_u8(v: uint8x16_t, n: i8) -> uint8x16_t {
    vshlq_u8(v, vdupq_n_s8(n))
}

/// `Σ mins[k] * sums[k]` over 8 i16 lanes, in i32.
#[inline(always)]
unsafe fn dot_i16x8(mins: int16x8_t, sums: int16x8_t) -> i32 {
    let p = vmull_s16(vget_low_s16(mins), vget_low_s16(sums));
    vaddvq_s32(vmlal_high_s16(p, mins, sums))
}

#[inline(always)]
unsafe fn q2_k_q8_k<D: I8Dot>(x: &[BlockQ2K], y: &[BlockQ8K]) -> f32 {
    let m3 = vdupq_n_u8(3);
    let m4 = vdupq_n_u8(0x0f);
    let mut sum = 0.0f32;
    for (xb, yb) in x.iter().zip(y) {
        let packed = ld_u8(&xb.scales);
        // Mins term: Σ_k min_k · bsums_k over the 16 sub-blocks.
        let mins = vshrq_n_u8::<4>(packed);
        let b0 = vld1q_s16(yb.bsums.as_ptr());
        let b1 = vld1q_s16(yb.bsums.as_ptr().add(8));
        let m_lo = vreinterpretq_s16_u16(vmovl_u8(vget_low_u8(mins)));
        let m_hi = vreinterpretq_s16_u16(vmovl_high_u8(mins));
        let min_sum = dot_i16x8(m_lo, b0) + dot_i16x8(m_hi, b1);

        let mut sc = [0u8; 16];
        vst1q_u8(sc.as_mut_ptr(), vandq_u8(packed, m4));

        let mut isum = vdupq_n_s32(0);
        for n in 0..2 {
            let q0 = ld_u8(&xb.qs[32 * n..]);
            let q1 = ld_u8(&xb.qs[32 * n + 16..]);
            for j in 0..4 {
                let base = 128 * n + 32 * j;
                let is = 8 * n + 2 * j;
                let a0 = s8(vandq_u8(shr_u8(q0, 2 * j as i8), m3));
                let a1 = s8(vandq_u8(shr_u8(q1, 2 * j as i8), m3));
                let p0 = dot16::<D>(a0, ld_s8(&yb.qs[base..]));
                let p1 = dot16::<D>(a1, ld_s8(&yb.qs[base + 16..]));
                isum = vmlaq_n_s32(isum, p0, sc[is] as i32);
                isum = vmlaq_n_s32(isum, p1, sc[is + 1] as i32);
            }
        }
        let d = f16(xb.d) * yb.d;
        let dmin = f16(xb.dmin) * yb.d;
        sum += d * vaddvq_s32(isum) as f32 - dmin * min_sum as f32;
    }
    sum
}

#[inline(always)]
unsafe fn q3_k_q8_k<D: I8Dot>(x: &[BlockQ3K], y: &[BlockQ8K]) -> f32 {
    let m3 = vdupq_n_u8(3);
    let b2 = vdupq_n_u8(4);
    let mut sum = 0.0f32;
    for (xb, yb) in x.iter().zip(y) {
        let sc = q3k_scales(&xb.scales);
        // Inverted high bits: a clear bit means "subtract 4".
        let nh0 = vmvnq_u8(ld_u8(&xb.hmask));
        let nh1 = vmvnq_u8(ld_u8(&xb.hmask[16..]));
        let mut isum = vdupq_n_s32(0);
        for n in 0..2 {
            let q0 = ld_u8(&xb.qs[32 * n..]);
            let q1 = ld_u8(&xb.qs[32 * n + 16..]);
            for j in 0..4 {
                let g = (4 * n + j) as i8; // which hmask bit
                let base = 128 * n + 32 * j;
                let is = 8 * n + 2 * j;
                let sub0 = vandq_u8(shl_u8(nh0, 2 - g), b2);
                let sub1 = vandq_u8(shl_u8(nh1, 2 - g), b2);
                let a0 = vsubq_s8(s8(vandq_u8(shr_u8(q0, 2 * j as i8), m3)), s8(sub0));
                let a1 = vsubq_s8(s8(vandq_u8(shr_u8(q1, 2 * j as i8), m3)), s8(sub1));
                let p0 = dot16::<D>(a0, ld_s8(&yb.qs[base..]));
                let p1 = dot16::<D>(a1, ld_s8(&yb.qs[base + 16..]));
                isum = vmlaq_n_s32(isum, p0, sc[is] as i32);
                isum = vmlaq_n_s32(isum, p1, sc[is + 1] as i32);
            }
        }
        sum += f16(xb.d) * yb.d * vaddvq_s32(isum) as f32;
    }
    sum
}

/// Scales and mins (both 0..64) of the 8 sub-blocks of a Q4_K/Q5_K block.
#[inline(always)]
fn k_scales_mins(packed: &[u8; 12]) -> ([u8; 8], [u8; 8]) {
    let mut sc = [0u8; 8];
    let mut mn = [0u8; 8];
    for j in 0..8 {
        (sc[j], mn[j]) = k_scale_min(j, packed);
    }
    (sc, mn)
}

/// `Σ_j mins[j] · (bsums[2j] + bsums[2j+1])` for a Q4_K/Q5_K block.
#[inline(always)]
unsafe fn k_min_sum(mins: &[u8; 8], yb: &BlockQ8K) -> i32 {
    let b0 = vld1q_s16(yb.bsums.as_ptr());
    let b1 = vld1q_s16(yb.bsums.as_ptr().add(8));
    // Sums of 32 quants, |·| ≤ 32·128, fit in i16.
    let pairs = vpaddq_s16(b0, b1);
    let m = vreinterpretq_s16_u16(vmovl_u8(vld1_u8(mins.as_ptr())));
    dot_i16x8(m, pairs)
}

#[inline(always)]
unsafe fn q4_k_q8_k<D: I8Dot>(x: &[BlockQ4K], y: &[BlockQ8K]) -> f32 {
    let m4 = vdupq_n_u8(0x0f);
    let mut sum = 0.0f32;
    for (xb, yb) in x.iter().zip(y) {
        let (sc, mn) = k_scales_mins(&xb.scales);
        let min_sum = k_min_sum(&mn, yb);
        let mut isum = vdupq_n_s32(0);
        for j in 0..4 {
            let q0 = ld_u8(&xb.qs[32 * j..]);
            let q1 = ld_u8(&xb.qs[32 * j + 16..]);
            let y = &yb.qs[64 * j..];
            let lo = dot32::<D>(
                s8(vandq_u8(q0, m4)),
                s8(vandq_u8(q1, m4)),
                ld_s8(y),
                ld_s8(&y[16..]),
            );
            let hi = dot32::<D>(
                s8(vshrq_n_u8::<4>(q0)),
                s8(vshrq_n_u8::<4>(q1)),
                ld_s8(&y[32..]),
                ld_s8(&y[48..]),
            );
            isum = vmlaq_n_s32(isum, lo, sc[2 * j] as i32);
            isum = vmlaq_n_s32(isum, hi, sc[2 * j + 1] as i32);
        }
        let d = f16(xb.d) * yb.d;
        let dmin = f16(xb.dmin) * yb.d;
        sum += d * vaddvq_s32(isum) as f32 - dmin * min_sum as f32;
    }
    sum
}

#[inline(always)]
unsafe fn q5_k_q8_k<D: I8Dot>(x: &[BlockQ5K], y: &[BlockQ8K]) -> f32 {
    let m4 = vdupq_n_u8(0x0f);
    let b4 = vdupq_n_u8(0x10);
    let mut sum = 0.0f32;
    for (xb, yb) in x.iter().zip(y) {
        let (sc, mn) = k_scales_mins(&xb.scales);
        let min_sum = k_min_sum(&mn, yb);
        let h0 = ld_u8(&xb.qh);
        let h1 = ld_u8(&xb.qh[16..]);
        let mut isum = vdupq_n_s32(0);
        for j in 0..4 {
            let q0 = ld_u8(&xb.qs[32 * j..]);
            let q1 = ld_u8(&xb.qs[32 * j + 16..]);
            let y = &yb.qs[64 * j..];
            // Bit 2j of qh is the fifth bit of the low nibbles, bit 2j+1 of the high ones;
            // move each to bit 4.
            let s_lo = 4 - 2 * j as i8;
            let s_hi = 3 - 2 * j as i8;
            let lo0 = vorrq_u8(vandq_u8(q0, m4), vandq_u8(shl_u8(h0, s_lo), b4));
            let lo1 = vorrq_u8(vandq_u8(q1, m4), vandq_u8(shl_u8(h1, s_lo), b4));
            let hi0 = vorrq_u8(vshrq_n_u8::<4>(q0), vandq_u8(shl_u8(h0, s_hi), b4));
            let hi1 = vorrq_u8(vshrq_n_u8::<4>(q1), vandq_u8(shl_u8(h1, s_hi), b4));
            let lo = dot32::<D>(s8(lo0), s8(lo1), ld_s8(y), ld_s8(&y[16..]));
            let hi = dot32::<D>(s8(hi0), s8(hi1), ld_s8(&y[32..]), ld_s8(&y[48..]));
            isum = vmlaq_n_s32(isum, lo, sc[2 * j] as i32);
            isum = vmlaq_n_s32(isum, hi, sc[2 * j + 1] as i32);
        }
        let d = f16(xb.d) * yb.d;
        let dmin = f16(xb.dmin) * yb.d;
        sum += d * vaddvq_s32(isum) as f32 - dmin * min_sum as f32;
    }
    sum
}

#[inline(always)]
unsafe fn q6_k_q8_k<D: I8Dot>(x: &[BlockQ6K], y: &[BlockQ8K]) -> f32 {
    let m4 = vdupq_n_u8(0x0f);
    let m2 = vdupq_n_u8(0x30);
    let off = vdupq_n_s8(32);
    let mut sum = 0.0f32;
    for (xb, yb) in x.iter().zip(y) {
        let mut isum = vdupq_n_s32(0);
        for n in 0..2 {
            let ql = &xb.ql[64 * n..];
            let qh = &xb.qh[32 * n..];
            let sc = &xb.scales[8 * n..];
            let y = &yb.qs[128 * n..];
            for h in 0..2 {
                let l0 = ld_u8(&ql[16 * h..]);
                let l1 = ld_u8(&ql[32 + 16 * h..]);
                let hb = ld_u8(&qh[16 * h..]);
                // Weights l, l+32, l+64, l+96 of this half: low nibble / high nibble of
                // ql[l] and ql[l+32], with bit pairs 0-1, 2-3, 4-5, 6-7 of qh[l] on top.
                let w0 = vorrq_u8(vandq_u8(l0, m4), vandq_u8(vshlq_n_u8::<4>(hb), m2));
                let w1 = vorrq_u8(vandq_u8(l1, m4), vandq_u8(vshlq_n_u8::<2>(hb), m2));
                let w2 = vorrq_u8(vshrq_n_u8::<4>(l0), vandq_u8(hb, m2));
                let w3 = vorrq_u8(vshrq_n_u8::<4>(l1), vandq_u8(vshrq_n_u8::<2>(hb), m2));
                let ws = [w0, w1, w2, w3];
                for (k, w) in ws.into_iter().enumerate() {
                    let a = vsubq_s8(s8(w), off);
                    let p = dot16::<D>(a, ld_s8(&y[32 * k + 16 * h..]));
                    isum = vmlaq_n_s32(isum, p, sc[2 * k + h] as i32);
                }
            }
        }
        sum += f16(xb.d) * yb.d * vaddvq_s32(isum) as f32;
    }
    sum
}

#[inline(always)]
unsafe fn iq4_xs_q8_k<D: I8Dot>(x: &[BlockIQ4XS], y: &[BlockQ8K]) -> f32 {
    let m4 = vdupq_n_u8(0x0f);
    let table = vld1q_s8(IQ4NL_VALUES.as_ptr());
    let mut sum = 0.0f32;
    for (xb, yb) in x.iter().zip(y) {
        let sh = u16::from_le_bytes(xb.scales_h);
        let mut isum = vdupq_n_s32(0);
        for ib in 0..8 {
            let low = (xb.scales_l[ib / 2] >> (4 * (ib % 2))) & 0x0f;
            let high = ((sh >> (2 * ib)) & 3) as u8;
            let ls = (low | (high << 4)) as i32 - 32;
            let q = ld_u8(&xb.qs[16 * ib..]);
            let lo = vqtbl1q_s8(table, vandq_u8(q, m4));
            let hi = vqtbl1q_s8(table, vshrq_n_u8::<4>(q));
            let y = &yb.qs[32 * ib..];
            let p = dot32::<D>(lo, hi, ld_s8(y), ld_s8(&y[16..]));
            isum = vmlaq_n_s32(isum, p, ls);
        }
        sum += f16(xb.d) * yb.d * vaddvq_s32(isum) as f32;
    }
    sum
}

// ---------------------------------------------------------------------------------------------
// Safe byte-level entry points.

/// Borrows `bytes` as the `B` blocks of an `n`-value row, if they are exactly that (and, for
/// naturally aligned blocks, aligned).
fn row<B: QuantBlock>(bytes: &[u8], n: usize) -> Option<&[B]> {
    let blocks: &[B] = as_blocks(bytes).ok()?;
    (n.is_multiple_of(B::WEIGHTS) && blocks.len() == n / B::WEIGHTS).then_some(blocks)
}

/// The scalar kernel for `ty`, which handles (or rejects, with NaN) rows the NEON entry
/// points do not take: wrong lengths or misaligned activations.
#[cold]
fn scalar_dot(ty: GgmlType, n: usize, w: &[u8], a: &[u8]) -> f32 {
    match scalar::dot_fn(ty) {
        Some(f) => f(n, w, a),
        None => f32::NAN,
    }
}

/// Defines the safe `DotFn` entry `$name::<SDOT>` for weight type `$ty`: kernel `$kernel`
/// over blocks `$w`·`$a`, with `sdot` if `SDOT` and the CPU has it. The `b32` form uses the
/// 32-weight block kernel ([`block32::b32_tile`] with one activation row).
macro_rules! int_dot {
    (b32 $name:ident, $ty:ident, $w:ty) => {
        int_dot!(
            $name,
            $ty,
            [block32::b32_dot::<Sdot, $w>, block32::b32_dot::<Mull, $w>],
            $w,
            <$w as block32::W32>::A
        );
    };
    ($name:ident, $ty:ident, $kernel:ident, $w:ty, $a:ty) => {
        int_dot!($name, $ty, [$kernel::<Sdot>, $kernel::<Mull>], $w, $a);
    };
    ($name:ident, $ty:ident, [$sdot:expr, $mull:expr], $w:ty, $a:ty) => {
        fn $name<const SDOT: bool>(n: usize, w: &[u8], a: &[u8]) -> f32 {
            let (Some(x), Some(y)) = (row::<$w>(w, n), row::<$a>(a, n)) else {
                return scalar_dot(GgmlType::$ty, n, w, a);
            };
            #[target_feature(enable = "dotprod")]
            unsafe fn with_sdot(x: &[$w], y: &[$a]) -> f32 {
                ($sdot)(x, y)
            }
            if SDOT && has_dotprod() {
                // SAFETY: dotprod was detected on this CPU just now; the kernel reads only
                // within the two equally long block slices.
                unsafe { with_sdot(x, y) }
            } else {
                // SAFETY: plain NEON is baseline on aarch64; reads stay within the slices.
                unsafe { ($mull)(x, y) }
            }
        }
    };
}

int_dot!(b32 dot_q4_0, Q4_0, BlockQ4_0);
int_dot!(b32 dot_q4_1, Q4_1, BlockQ4_1);
int_dot!(b32 dot_q5_0, Q5_0, BlockQ5_0);
int_dot!(b32 dot_q5_1, Q5_1, BlockQ5_1);
int_dot!(b32 dot_q8_0, Q8_0, BlockQ8_0);
int_dot!(b32 dot_iq4_nl, IQ4_NL, BlockIQ4NL);
int_dot!(b32 dot_mxfp4, MXFP4, BlockMXFP4);
int_dot!(dot_q2_k, Q2_K, q2_k_q8_k, BlockQ2K, BlockQ8K);
int_dot!(dot_q3_k, Q3_K, q3_k_q8_k, BlockQ3K, BlockQ8K);
int_dot!(dot_q4_k, Q4_K, q4_k_q8_k, BlockQ4K, BlockQ8K);
int_dot!(dot_q5_k, Q5_K, q5_k_q8_k, BlockQ5K, BlockQ8K);
int_dot!(dot_q6_k, Q6_K, q6_k_q8_k, BlockQ6K, BlockQ8K);
int_dot!(dot_iq4_xs, IQ4_XS, iq4_xs_q8_k, BlockIQ4XS, BlockQ8K);

/// Whether `w` and `a` are both `n` elements of `size` bytes.
fn float_rows_ok(n: usize, w: &[u8], a: &[u8], size: usize) -> bool {
    n.checked_mul(size)
        .is_some_and(|b| w.len() == b && a.len() == b)
}

/// Sums four f32 accumulators and their lanes.
#[inline(always)]
unsafe fn hsum4(acc: [float32x4_t; 4]) -> f32 {
    vaddvq_f32(vaddq_f32(
        vaddq_f32(acc[0], acc[1]),
        vaddq_f32(acc[2], acc[3]),
    ))
}

fn dot_f32(n: usize, w: &[u8], a: &[u8]) -> f32 {
    if !float_rows_ok(n, w, a, 4) {
        return scalar_dot(GgmlType::F32, n, w, a);
    }
    // SAFETY: every 16-byte load starts at `16*i` with `16*i + 16 <= 4n`, inside both slices.
    unsafe {
        let (wp, ap) = (w.as_ptr(), a.as_ptr());
        let ld = |p: *const u8, i: usize| vreinterpretq_f32_u8(vld1q_u8(p.add(16 * i)));
        let mut acc = [vdupq_n_f32(0.0); 4];
        let vecs = n / 4;
        let mut i = 0;
        while i + 4 <= vecs {
            for (k, c) in acc.iter_mut().enumerate() {
                *c = vfmaq_f32(*c, ld(wp, i + k), ld(ap, i + k));
            }
            i += 4;
        }
        while i < vecs {
            acc[0] = vfmaq_f32(acc[0], ld(wp, i), ld(ap, i));
            i += 1;
        }
        let mut s = hsum4(acc);
        for j in 4 * vecs..n {
            let f =
                |b: &[u8]| f32::from_le_bytes([b[4 * j], b[4 * j + 1], b[4 * j + 2], b[4 * j + 3]]);
            s += f(w) * f(a);
        }
        s
    }
}

/// Dot of two rows of 16-bit floats, widened to f32 eight lanes at a time by `widen`.
#[inline(always)]
unsafe fn dot_16bit(
    n: usize,
    w: &[u8],
    a: &[u8],
    widen: impl Fn(uint16x8_t) -> (float32x4_t, float32x4_t),
    scalar: impl Fn(u16) -> f32,
) -> f32 {
    let (wp, ap) = (w.as_ptr(), a.as_ptr());
    let ld = |p: *const u8, i: usize| vreinterpretq_u16_u8(vld1q_u8(p.add(16 * i)));
    let mut acc = [vdupq_n_f32(0.0); 4];
    let vecs = n / 8;
    let mut i = 0;
    while i + 2 <= vecs {
        let (w0, w1) = widen(ld(wp, i));
        let (a0, a1) = widen(ld(ap, i));
        let (w2, w3) = widen(ld(wp, i + 1));
        let (a2, a3) = widen(ld(ap, i + 1));
        acc[0] = vfmaq_f32(acc[0], w0, a0);
        acc[1] = vfmaq_f32(acc[1], w1, a1);
        acc[2] = vfmaq_f32(acc[2], w2, a2);
        acc[3] = vfmaq_f32(acc[3], w3, a3);
        i += 2;
    }
    if i < vecs {
        let (w0, w1) = widen(ld(wp, i));
        let (a0, a1) = widen(ld(ap, i));
        acc[0] = vfmaq_f32(acc[0], w0, a0);
        acc[1] = vfmaq_f32(acc[1], w1, a1);
    }
    let mut s = hsum4(acc);
    for j in 8 * vecs..n {
        let h = |b: &[u8]| scalar(u16::from_le_bytes([b[2 * j], b[2 * j + 1]]));
        s += h(w) * h(a);
    }
    s
}

fn dot_f16(n: usize, w: &[u8], a: &[u8]) -> f32 {
    if !float_rows_ok(n, w, a, 2) {
        return scalar_dot(GgmlType::F16, n, w, a);
    }
    // SAFETY: loads cover bytes `16*i..16*i+16` with `i < n/8`, inside both `2n`-byte slices.
    unsafe { dot_16bit(n, w, a, |v| (h2f_low(v), h2f_high(v)), h2f) }
}

fn dot_bf16(n: usize, w: &[u8], a: &[u8]) -> f32 {
    if !float_rows_ok(n, w, a, 2) {
        return scalar_dot(GgmlType::BF16, n, w, a);
    }
    // A bf16 is the high half of an f32: widening each lane by a 16-bit left shift is exact.
    let widen = |v: uint16x8_t| {
        // SAFETY: register-only NEON arithmetic (baseline).
        unsafe {
            (
                vreinterpretq_f32_u32(vshll_n_u16::<16>(vget_low_u16(v))),
                vreinterpretq_f32_u32(vshll_high_n_u16::<16>(v)),
            )
        }
    };
    // SAFETY: as for F16.
    unsafe { dot_16bit(n, w, a, widen, |b| f32::from_bits((b as u32) << 16)) }
}

// ---------------------------------------------------------------------------------------------
// Activation quantizers. Each reproduces the scalar reference bit for bit: the same f32 scale
// computations, the same products, the same rounding (half to even for Q8_0/Q8_1 with
// `id = 127/amax`, as ggml's x86 quantizers; ggml's `nearest_int` trick, half to even, for
// Q8_K), the same saturation.
// The one exception: a Q8_0/Q8_1 block containing a NaN, where the scalar code keeps C's
// order-dependent `MAX` and NEON ignores the NaN when taking the block maximum.

/// Loads 32 floats.
#[inline(always)]
unsafe fn load8x4(x: &[f32]) -> [float32x4_t; 8] {
    debug_assert!(x.len() >= 32);
    let mut v = [vdupq_n_f32(0.0); 8];
    for (k, r) in v.iter_mut().enumerate() {
        *r = vld1q_f32(x.as_ptr().add(4 * k));
    }
    v
}

/// Max |x| over 32 floats (NaNs ignored).
#[inline(always)]
unsafe fn amax32(v: &[float32x4_t; 8]) -> f32 {
    let mut m = vabsq_f32(v[0]);
    for r in &v[1..] {
        m = vmaxnmq_f32(m, vabsq_f32(*r));
    }
    vmaxnmvq_f32(m)
}

/// Rounds 32 floats times `id` half to even and stores them as i8 (saturating);
/// returns their sum.
#[inline(always)]
unsafe fn round_store_32(v: &[float32x4_t; 8], id: f32, out: &mut [i8; 32]) -> i32 {
    let mut sum = 0i32;
    for h in 0..2 {
        let i: [int32x4_t; 4] =
            std::array::from_fn(|k| vcvtnq_s32_f32(vmulq_n_f32(v[4 * h + k], id)));
        let a = vcombine_s16(vqmovn_s32(i[0]), vqmovn_s32(i[1]));
        let b = vcombine_s16(vqmovn_s32(i[2]), vqmovn_s32(i[3]));
        let q = vcombine_s8(vqmovn_s16(a), vqmovn_s16(b));
        sum += vaddlvq_s8(q) as i32;
        vst1q_s8(out.as_mut_ptr().add(16 * h), q);
    }
    sum
}

/// Quantizes `x` to Q8_0 blocks (`d = amax/127`, `q = nearest(x · 127/amax)`, ties to even),
/// with NEON.
///
/// `x.len()` must be `32 * y.len()`; otherwise, as the scalar quantizer does, every block of
/// `y` gets a NaN scale.
pub fn quantize_row_q8_0(x: &[f32], y: &mut [BlockQ8_0]) {
    if x.len() != QK * y.len() {
        return scalar::quantize_row_q8_0(x, y);
    }
    for (xb, yb) in x.chunks_exact(QK).zip(y.iter_mut()) {
        // SAFETY: `xb` holds 32 floats; the stores go to the 32-byte `yb.qs`.
        unsafe {
            let v = load8x4(xb);
            let amax = amax32(&v);
            let d = amax / 127.0;
            let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
            yb.d = F16Le::from_f32(d);
            round_store_32(&v, id, &mut yb.qs);
        }
    }
}

/// Quantizes `x` to Q8_1 blocks (as Q8_0, plus `s = d * Σq`), with NEON.
///
/// `x.len()` must be `32 * y.len()`; otherwise, as the scalar quantizer does, every block of
/// `y` gets a NaN scale.
pub fn quantize_row_q8_1(x: &[f32], y: &mut [BlockQ8_1]) {
    if x.len() != QK * y.len() {
        return scalar::quantize_row_q8_1(x, y);
    }
    for (xb, yb) in x.chunks_exact(QK).zip(y.iter_mut()) {
        // SAFETY: as for Q8_0.
        unsafe {
            let v = load8x4(xb);
            let amax = amax32(&v);
            let d = amax / 127.0;
            let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
            let sum = round_store_32(&v, id, &mut yb.qs);
            yb.d = F16Le::from_f32(d);
            yb.s = F16Le::from_f32(sum as f32 * d);
        }
    }
}

/// Quantizes `x` to Q8_K blocks, with NEON: the first value of largest magnitude, `max`,
/// maps to -127 (`iscale = -127/max`, `q = min(127, nearest_int(iscale*x))`,
/// `d = 1/iscale`); an all-zero block gets `d = 0` and zero quants and sums.
///
/// `x.len()` must be `256 * y.len()`; otherwise, as the scalar quantizer does, every block
/// of `y` gets a NaN scale.
pub fn quantize_row_q8_k(x: &[f32], y: &mut [BlockQ8K]) {
    if x.len() != QK_K * y.len() {
        return scalar::quantize_row_q8_k(x, y);
    }
    for (xb, yb) in x.chunks_exact(QK_K).zip(y.iter_mut()) {
        // SAFETY: all loads are within the 256 floats of `xb`, all stores within `yb`.
        unsafe {
            let p = xb.as_ptr();
            let mut m = vabsq_f32(vld1q_f32(p));
            for k in 1..QK_K / 4 {
                m = vmaxnmq_f32(m, vabsq_f32(vld1q_f32(p.add(4 * k))));
            }
            let amax = vmaxnmvq_f32(m);
            // The first value whose magnitude is the maximum decides the sign of the scale.
            let max = match xb.iter().find(|v| v.abs() == amax) {
                Some(&v) if amax != 0.0 => v,
                _ => {
                    *yb = bytemuck::Zeroable::zeroed();
                    continue;
                }
            };
            let iscale = -127.0 / max;
            // ggml's `nearest_int`, lane-wise: add 1.5·2^23 and take the low mantissa bits.
            // Round-half-even like `vcvtnq`, and identical to the scalar trick even where
            // `iscale * x` is not finite (a block of subnormals makes `iscale` infinite).
            let magic = vdupq_n_f32(12_582_912.0);
            let mant = vdupq_n_s32(0x007f_ffff);
            let bias = vdupq_n_s32(0x0040_0000);
            let lim = vdupq_n_s32(127);
            for g in 0..QK_K / 16 {
                let i: [int32x4_t; 4] = std::array::from_fn(|k| {
                    let v = vmulq_n_f32(vld1q_f32(p.add(16 * g + 4 * k)), iscale);
                    let bits = vreinterpretq_s32_f32(vaddq_f32(v, magic));
                    vminq_s32(vsubq_s32(vandq_s32(bits, mant), bias), lim)
                });
                // Truncating narrows, as the scalar `as i8` (all values are in -127..=127
                // unless the block is degenerate).
                let a = vcombine_s16(vmovn_s32(i[0]), vmovn_s32(i[1]));
                let b = vcombine_s16(vmovn_s32(i[2]), vmovn_s32(i[3]));
                let q = vcombine_s8(vmovn_s16(a), vmovn_s16(b));
                vst1q_s8(yb.qs.as_mut_ptr().add(16 * g), q);
                yb.bsums[g] = vaddlvq_s8(q);
            }
            yb.d = 1.0 / iscale;
        }
    }
}

/// Defines the `QuantizeFn` entry `$name` for activation type `$ty` over blocks `$b`:
/// quantizes with `$typed`, or leaves a buffer that is not exactly the row to the scalar
/// quantizer (which fills it with NaN-scale bytes).
macro_rules! quantize_entry {
    ($name:ident, $ty:ident, $typed:ident, $b:ty) => {
        fn $name(x: &[f32], out: &mut [u8]) {
            let n = x.len();
            match bytemuck::try_cast_slice_mut::<u8, $b>(out) {
                Ok(y) if y.len() * <$b>::WEIGHTS == n => $typed(x, y),
                _ => match scalar::quantize_fn(GgmlType::$ty) {
                    Some(f) => f(x, out),
                    None => out.fill(0xff),
                },
            }
        }
    };
}

quantize_entry!(quantize_q8_0_bytes, Q8_0, quantize_row_q8_0, BlockQ8_0);
quantize_entry!(quantize_q8_1_bytes, Q8_1, quantize_row_q8_1, BlockQ8_1);
quantize_entry!(quantize_q8_k_bytes, Q8_K, quantize_row_q8_k, BlockQ8K);
