//! Scalar reference kernels: dequantization, activation quantization and dot products.
//!
//! This file is long (about 1100 lines) on purpose: it is the one reference every SIMD family
//! is tested against, and each weight type's dequantizer, quantizer and dot sit beside their
//! siblings so that a difference in operation order is visible in one read.
//!
//! Every function here computes what ggml's portable C code computes, in the same order:
//! - `dequantize_row` follows ggml's `dequantize_row_*` (f16 scales converted exactly to f32,
//!   products formed in the same order, e.g. Q4_K is `(d*sc)*q - dmin*m`), so it is bit-exact
//!   with ggml and gguf-py;
//! - `quantize_row_q8_0/q8_1` follow ggml's x86 `quantize_row_q8_0/q8_1` (the quantizers
//!   llama.cpp's products use there: `q = nearest(x · 127/amax)`, ties to even) and
//!   `quantize_row_q8_k` follows `quantize_row_q8_K_ref` (ties to even, `iscale = -127/max`),
//!   bit for bit;
//! - the `vec_dot_*` functions follow the generic `ggml_vec_dot_*` of ggml-cpu: exact integer
//!   sums inside a block, then f32 scaling and f32 accumulation in ggml's order (the K-quant
//!   dots keep ggml's eight f32 lane accumulators; the float dots accumulate in f64).
//!
//! These are the reference the SIMD kernels are tested against.
//!
//! Lengths: the typed functions take block slices. A dot of slices of different lengths is
//! `NaN`; a quantizer given an output of the wrong length fills it with blocks whose scale is
//! `NaN` (so any dot computed from them is `NaN`), never panics. [`dequantize_row`],
//! [`quantize_row`] and [`vec_dot`] check lengths and return [`KernelError::BadLength`]; the
//! byte-level functions returned by [`dot_fn`] and [`quantize_fn`] (whose signatures cannot
//! carry an error) map an error to a `NaN` result and to an output filled with `0xff` bytes
//! (every scale and float `NaN`) respectively.

use std::borrow::Cow;

use bytemuck::Pod;
use flashstream_formats::blocks::{
    e8m0_to_f32_half, k_scale_min, q3k_scales, Bf16Le, BlockIQ4NL, BlockIQ4XS, BlockMXFP4,
    BlockQ2K, BlockQ3K, BlockQ4K, BlockQ4_0, BlockQ4_1, BlockQ5K, BlockQ5_0, BlockQ5_1, BlockQ6K,
    BlockQ8K, BlockQ8_0, BlockQ8_1, F16Le, IQ4NL_VALUES, MXFP4_VALUES, QK, QK_K,
};
use flashstream_formats::GgmlType;

use super::{DotFn, KernelError, QuantizeFn};

// ------------------------------------------------------------------------------------------
// Small helpers
// ------------------------------------------------------------------------------------------

/// ggml's `nearest_int`: round to nearest, ties to even, by adding 1.5 * 2^23 (valid for
/// |v| < 2^22, which every caller here guarantees for finite input).
#[inline(always)]
fn nearest_int(v: f32) -> i32 {
    let t = v + 12_582_912.0;
    (t.to_bits() & 0x007f_ffff) as i32 - 0x0040_0000
}

/// C's `MAX(a, b)` (`a > b ? a : b`), which keeps `b` when either is NaN.
#[inline(always)]
fn c_max(a: f32, b: f32) -> f32 {
    if a > b {
        a
    } else {
        b
    }
}

/// The 6-bit scale of sub-block `ib` (0..8) of an IQ4_XS block, before the `- 32`.
#[inline(always)]
fn iq4xs_scale(b: &BlockIQ4XS, ib: usize) -> i32 {
    let h = u16::from_le_bytes(b.scales_h);
    let lo = (b.scales_l[ib / 2] >> (4 * (ib % 2))) & 0x0f;
    let hi = ((h >> (2 * ib)) & 3) as u8;
    (lo | (hi << 4)) as i32
}

/// A Q8_0/Q8_1 block whose scale is NaN, written when a quantizer's lengths disagree.
const POISON_F16: F16Le = F16Le([0xff, 0xff]);

// ------------------------------------------------------------------------------------------
// Activation quantization (typed references)
// ------------------------------------------------------------------------------------------

/// The scale of a Q8_0/Q8_1 block and the multiplier that quantizes it, as ggml's x86
/// quantizers compute them: `d = amax / 127`, `id = 127 / amax` (0 for an all-zero block).
#[inline]
fn q8_scale(xb: &[f32]) -> (f32, f32) {
    let amax = xb.iter().fold(0.0f32, |m, v| c_max(m, v.abs()));
    let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
    (amax / 127.0, id)
}

/// Quantizes `x` to Q8_0 blocks as ggml's CPU backend does on x86 (`quantize_row_q8_0`, the
/// one its matrix products use): `d = amax / 127`, `q = nearest(x · (127 / amax))`, ties to
/// even. (ggml's portable `quantize_row_q8_0_ref` multiplies by `1/d` and rounds ties away
/// from zero, which moves a quant by one step now and then; llama.cpp's logits follow the
/// former.)
///
/// `x.len()` must be `32 * y.len()`; otherwise every block of `y` gets a NaN scale.
pub fn quantize_row_q8_0(x: &[f32], y: &mut [BlockQ8_0]) {
    if x.len() != y.len() * QK {
        for b in y.iter_mut() {
            *b = BlockQ8_0 {
                d: POISON_F16,
                qs: [0; QK],
            };
        }
        return;
    }
    for (xb, yb) in x.chunks_exact(QK).zip(y.iter_mut()) {
        let (d, id) = q8_scale(xb);
        yb.d = F16Le::from_f32(d);
        for (q, v) in yb.qs.iter_mut().zip(xb) {
            *q = (v * id).round_ties_even() as i8;
        }
    }
}

/// Quantizes `x` to Q8_1 blocks as ggml's x86 `quantize_row_q8_1`: as
/// [`quantize_row_q8_0`], plus `s = d * sum(q)` (the sum converted to f32, the product rounded
/// to f16).
///
/// `x.len()` must be `32 * y.len()`; otherwise every block of `y` gets a NaN scale.
pub fn quantize_row_q8_1(x: &[f32], y: &mut [BlockQ8_1]) {
    if x.len() != y.len() * QK {
        for b in y.iter_mut() {
            *b = BlockQ8_1 {
                d: POISON_F16,
                s: POISON_F16,
                qs: [0; QK],
            };
        }
        return;
    }
    for (xb, yb) in x.chunks_exact(QK).zip(y.iter_mut()) {
        let (d, id) = q8_scale(xb);
        yb.d = F16Le::from_f32(d);
        let mut sum = 0i32;
        for (q, v) in yb.qs.iter_mut().zip(xb) {
            *q = (v * id).round_ties_even() as i8;
            sum += *q as i32;
        }
        yb.s = F16Le::from_f32(sum as f32 * d);
    }
}

/// Quantizes `x` to Q8_K blocks as ggml's `quantize_row_q8_K_ref`: `max` is the value of
/// largest magnitude (with its sign), `iscale = -127 / max`, `q = min(127,
/// nearest_int(iscale * x))` (ties to even), `d = 1 / iscale`, `bsums` the sums of each 16
/// quants. An all-zero block gets `d = 0`, zero quants and zero sums.
///
/// `x.len()` must be `256 * y.len()`; otherwise every block of `y` gets a NaN scale.
pub fn quantize_row_q8_k(x: &[f32], y: &mut [BlockQ8K]) {
    if x.len() != y.len() * QK_K {
        for b in y.iter_mut() {
            *b = BlockQ8K {
                d: f32::NAN,
                qs: [0; QK_K],
                bsums: [0; QK_K / 16],
            };
        }
        return;
    }
    for (xb, yb) in x.chunks_exact(QK_K).zip(y.iter_mut()) {
        let mut max = 0.0f32;
        let mut amax = 0.0f32;
        for &v in xb {
            let av = v.abs();
            if av > amax {
                amax = av;
                max = v;
            }
        }
        if amax == 0.0 {
            yb.d = 0.0;
            yb.qs = [0; QK_K];
            yb.bsums = [0; QK_K / 16];
            continue;
        }
        let iscale = -127.0 / max;
        for (q, &v) in yb.qs.iter_mut().zip(xb) {
            *q = nearest_int(iscale * v).min(127) as i8;
        }
        for (s, qs) in yb.bsums.iter_mut().zip(yb.qs.chunks_exact(16)) {
            *s = qs.iter().map(|&q| q as i16).sum();
        }
        yb.d = 1.0 / iscale;
    }
}

// ------------------------------------------------------------------------------------------
// Dot products of simple (32-weight) blocks
// ------------------------------------------------------------------------------------------

/// Q4_0 weights · Q8_0 activations, as ggml's `ggml_vec_dot_q4_0_q8_0_generic`:
/// per block `sumf += sumi * dx * dy`. `NaN` if the slices differ in length.
pub fn vec_dot_q4_0_q8_0(x: &[BlockQ4_0], y: &[BlockQ8_0]) -> f32 {
    if x.len() != y.len() {
        return f32::NAN;
    }
    let mut sumf = 0.0f32;
    for (xb, yb) in x.iter().zip(y) {
        let (mut s0, mut s1) = (0i32, 0i32);
        for j in 0..QK / 2 {
            let v0 = (xb.qs[j] & 0x0f) as i32 - 8;
            let v1 = (xb.qs[j] >> 4) as i32 - 8;
            s0 += v0 * yb.qs[j] as i32;
            s1 += v1 * yb.qs[j + QK / 2] as i32;
        }
        let sumi = s0 + s1;
        sumf += sumi as f32 * xb.d.to_f32() * yb.d.to_f32();
    }
    sumf
}

/// Q4_1 weights · Q8_1 activations, as ggml's `ggml_vec_dot_q4_1_q8_1_generic`:
/// per block `sumf += (dx*dy)*sumi + mx*sy`. `NaN` if the slices differ in length.
pub fn vec_dot_q4_1_q8_1(x: &[BlockQ4_1], y: &[BlockQ8_1]) -> f32 {
    if x.len() != y.len() {
        return f32::NAN;
    }
    let mut sumf = 0.0f32;
    for (xb, yb) in x.iter().zip(y) {
        let (mut s0, mut s1) = (0i32, 0i32);
        for j in 0..QK / 2 {
            s0 += (xb.qs[j] & 0x0f) as i32 * yb.qs[j] as i32;
            s1 += (xb.qs[j] >> 4) as i32 * yb.qs[j + QK / 2] as i32;
        }
        let sumi = s0 + s1;
        sumf += (xb.d.to_f32() * yb.d.to_f32()) * sumi as f32 + xb.m.to_f32() * yb.s.to_f32();
    }
    sumf
}

/// The 5-bit quant `j` (0..32) of a Q5_0/Q5_1 block, unsigned (0..32).
#[inline(always)]
fn q5_quant(qs: &[u8; QK / 2], qh: u32, j: usize) -> u8 {
    let (lo, shift) = if j < QK / 2 {
        (qs[j] & 0x0f, j)
    } else {
        (qs[j - QK / 2] >> 4, j)
    };
    lo | ((((qh >> shift) & 1) as u8) << 4)
}

/// Q5_0 weights · Q8_0 activations, as ggml's `ggml_vec_dot_q5_0_q8_0_generic`:
/// per block `sumf += (dx*dy) * sumi`. `NaN` if the slices differ in length.
pub fn vec_dot_q5_0_q8_0(x: &[BlockQ5_0], y: &[BlockQ8_0]) -> f32 {
    if x.len() != y.len() {
        return f32::NAN;
    }
    let mut sumf = 0.0f32;
    for (xb, yb) in x.iter().zip(y) {
        let qh = u32::from_le_bytes(xb.qh);
        let (mut s0, mut s1) = (0i32, 0i32);
        for j in 0..QK / 2 {
            let x0 = q5_quant(&xb.qs, qh, j) as i32 - 16;
            let x1 = q5_quant(&xb.qs, qh, j + QK / 2) as i32 - 16;
            s0 += x0 * yb.qs[j] as i32;
            s1 += x1 * yb.qs[j + QK / 2] as i32;
        }
        let sumi = s0 + s1;
        sumf += (xb.d.to_f32() * yb.d.to_f32()) * sumi as f32;
    }
    sumf
}

/// Q5_1 weights · Q8_1 activations, as ggml's `ggml_vec_dot_q5_1_q8_1_generic`:
/// per block `sumf += (dx*dy)*sumi + mx*sy`. `NaN` if the slices differ in length.
pub fn vec_dot_q5_1_q8_1(x: &[BlockQ5_1], y: &[BlockQ8_1]) -> f32 {
    if x.len() != y.len() {
        return f32::NAN;
    }
    let mut sumf = 0.0f32;
    for (xb, yb) in x.iter().zip(y) {
        let qh = u32::from_le_bytes(xb.qh);
        let (mut s0, mut s1) = (0i32, 0i32);
        for j in 0..QK / 2 {
            s0 += q5_quant(&xb.qs, qh, j) as i32 * yb.qs[j] as i32;
            s1 += q5_quant(&xb.qs, qh, j + QK / 2) as i32 * yb.qs[j + QK / 2] as i32;
        }
        let sumi = s0 + s1;
        sumf += (xb.d.to_f32() * yb.d.to_f32()) * sumi as f32 + xb.m.to_f32() * yb.s.to_f32();
    }
    sumf
}

/// Q8_0 weights · Q8_0 activations, as ggml's `ggml_vec_dot_q8_0_q8_0_generic`:
/// per block `sumf += sumi * (dx*dy)`. `NaN` if the slices differ in length.
pub fn vec_dot_q8_0_q8_0(x: &[BlockQ8_0], y: &[BlockQ8_0]) -> f32 {
    if x.len() != y.len() {
        return f32::NAN;
    }
    let mut sumf = 0.0f32;
    for (xb, yb) in x.iter().zip(y) {
        let sumi: i32 = xb
            .qs
            .iter()
            .zip(&yb.qs)
            .map(|(&a, &b)| a as i32 * b as i32)
            .sum();
        sumf += sumi as f32 * (xb.d.to_f32() * yb.d.to_f32());
    }
    sumf
}

/// IQ4_NL weights · Q8_0 activations, as ggml's `ggml_vec_dot_iq4_nl_q8_0_generic`:
/// per block `sumf += (dy*dx) * sumi`. `NaN` if the slices differ in length.
pub fn vec_dot_iq4_nl_q8_0(x: &[BlockIQ4NL], y: &[BlockQ8_0]) -> f32 {
    if x.len() != y.len() {
        return f32::NAN;
    }
    let mut sumf = 0.0f32;
    for (xb, yb) in x.iter().zip(y) {
        let d = yb.d.to_f32() * xb.d.to_f32();
        let (mut s1, mut s2) = (0i32, 0i32);
        for j in 0..QK / 2 {
            s1 += yb.qs[j] as i32 * IQ4NL_VALUES[(xb.qs[j] & 0x0f) as usize] as i32;
            s2 += yb.qs[j + QK / 2] as i32 * IQ4NL_VALUES[(xb.qs[j] >> 4) as usize] as i32;
        }
        sumf += d * (s1 + s2) as f32;
    }
    sumf
}

/// MXFP4 weights · Q8_0 activations, as ggml's `ggml_vec_dot_mxfp4_q8_0_generic`: per block
/// `sumf += (dy*dx) * sumi` with `dx` the halved E8M0 scale and the doubled E2M1 values as
/// integers. `NaN` if the slices differ in length.
pub fn vec_dot_mxfp4_q8_0(x: &[BlockMXFP4], y: &[BlockQ8_0]) -> f32 {
    if x.len() != y.len() {
        return f32::NAN;
    }
    let mut sumf = 0.0f32;
    for (xb, yb) in x.iter().zip(y) {
        let d = yb.d.to_f32() * e8m0_to_f32_half(xb.e);
        let (mut s1, mut s2) = (0i32, 0i32);
        for j in 0..QK / 2 {
            s1 += yb.qs[j] as i32 * MXFP4_VALUES[(xb.qs[j] & 0x0f) as usize] as i32;
            s2 += yb.qs[j + QK / 2] as i32 * MXFP4_VALUES[(xb.qs[j] >> 4) as usize] as i32;
        }
        sumf += d * (s1 + s2) as f32;
    }
    sumf
}

// ------------------------------------------------------------------------------------------
// Dot products of K-quant super-blocks with Q8_K
// ------------------------------------------------------------------------------------------

/// Adds `scale * q8[p] * a[p]` for the 16 or 32 positions `p` of a sub-block into ggml's eight
/// integer lanes (`lane = p % 8`), as the generic K-quant dots do.
#[inline(always)]
fn accumulate_lanes(aux32: &mut [i32; 8], scale: i32, q8: &[i8], a: &[i8]) {
    for (q8c, ac) in q8.chunks_exact(8).zip(a.chunks_exact(8)) {
        for l in 0..8 {
            // ggml forms the product in an int16 first; it always fits (|q8*a| <= 128*32).
            let p = (q8c[l] as i16 * ac[l] as i16) as i32;
            aux32[l] += scale * p;
        }
    }
}

/// Q2_K weights · Q8_K activations, as ggml's `ggml_vec_dot_q2_K_q8_K_generic`: per block
/// `sumf += dall*isum - dmin*summs` with `dall = dy*d`, `dmin = dy*dmin` and the min term
/// taken from the Q8_K `bsums`. `NaN` if the slices differ in length.
pub fn vec_dot_q2_k_q8_k(x: &[BlockQ2K], y: &[BlockQ8K]) -> f32 {
    if x.len() != y.len() {
        return f32::NAN;
    }
    let mut sumf = 0.0f32;
    for (xb, yb) in x.iter().zip(y) {
        let summs: i32 = (0..16)
            .map(|j| yb.bsums[j] as i32 * (xb.scales[j] >> 4) as i32)
            .sum();
        let dall = yb.d * xb.d.to_f32();
        let dmin = yb.d * xb.dmin.to_f32();
        let mut isum = 0i32;
        for half in 0..2 {
            let q2 = &xb.qs[half * 32..half * 32 + 32];
            for j in 0..4 {
                let shift = 2 * j;
                let q8 = &yb.qs[half * 128 + j * 32..half * 128 + j * 32 + 32];
                for g in 0..2 {
                    let sc = (xb.scales[half * 8 + j * 2 + g] & 0x0f) as i32;
                    let isuml: i32 = (g * 16..g * 16 + 16)
                        .map(|l| q8[l] as i32 * ((q2[l] >> shift) & 3) as i32)
                        .sum();
                    isum += sc * isuml;
                }
            }
        }
        sumf += dall * isum as f32 - dmin * summs as f32;
    }
    sumf
}

/// The 256 signed 3-bit quants (-4..4) of a Q3_K block, in weight order.
#[inline(always)]
fn q3k_quants(b: &BlockQ3K) -> [i8; QK_K] {
    let mut a = [0i8; QK_K];
    for half in 0..2 {
        for j in 0..4 {
            let bit = 1u8 << (half * 4 + j);
            for l in 0..32 {
                let low = ((b.qs[half * 32 + l] >> (2 * j)) & 3) as i8;
                let sub = if b.hmask[l] & bit != 0 { 0 } else { 4 };
                a[half * 128 + j * 32 + l] = low - sub;
            }
        }
    }
    a
}

/// Q3_K weights · Q8_K activations, as ggml's `ggml_vec_dot_q3_K_q8_K_generic` (eight f32
/// lane sums `sums[l] += (d*dy) * aux32[l]`, added up at the end). `NaN` if the slices differ
/// in length.
pub fn vec_dot_q3_k_q8_k(x: &[BlockQ3K], y: &[BlockQ8K]) -> f32 {
    if x.len() != y.len() {
        return f32::NAN;
    }
    let mut sums = [0.0f32; 8];
    for (xb, yb) in x.iter().zip(y) {
        let a = q3k_quants(xb);
        let scales = q3k_scales(&xb.scales);
        let mut aux32 = [0i32; 8];
        for (j, &sc) in scales.iter().enumerate() {
            let r = j * 16..j * 16 + 16;
            accumulate_lanes(&mut aux32, sc as i32, &yb.qs[r.clone()], &a[r]);
        }
        let d = xb.d.to_f32() * yb.d;
        for (s, &v) in sums.iter_mut().zip(&aux32) {
            *s += d * v as f32;
        }
    }
    let mut sumf = 0.0f32;
    for s in sums {
        sumf += s;
    }
    sumf
}

/// The 256 unsigned 4-bit quants of a Q4_K block (or the low 4 bits of a Q5_K block's), in
/// weight order: each 32 bytes hold sub-block `2k` in the low nibbles and `2k+1` in the high.
#[inline(always)]
fn q4k_low_quants(qs: &[u8; QK_K / 2]) -> [i8; QK_K] {
    let mut a = [0i8; QK_K];
    for k in 0..4 {
        for l in 0..32 {
            a[k * 64 + l] = (qs[k * 32 + l] & 0x0f) as i8;
            a[k * 64 + 32 + l] = (qs[k * 32 + l] >> 4) as i8;
        }
    }
    a
}

/// The common tail of the Q4_K and Q5_K dots: lane sums with the 6-bit scales, the min term
/// from `bsums`.
#[inline(always)]
fn k_dot_with_mins(
    a: &[i8; QK_K],
    scales: &[u8; 12],
    d: F16Le,
    dmin: F16Le,
    yb: &BlockQ8K,
    sums: &mut [f32; 8],
    sumf: &mut f32,
) {
    let mut sc = [0u8; 8];
    let mut mn = [0u8; 8];
    for j in 0..8 {
        (sc[j], mn[j]) = k_scale_min(j, scales);
    }
    let sumi: i32 = (0..16).map(|j| yb.bsums[j] as i32 * mn[j / 2] as i32).sum();
    let mut aux32 = [0i32; 8];
    for (j, &s) in sc.iter().enumerate() {
        let r = j * 32..j * 32 + 32;
        accumulate_lanes(&mut aux32, s as i32, &yb.qs[r.clone()], &a[r]);
    }
    let d = d.to_f32() * yb.d;
    for (s, &v) in sums.iter_mut().zip(&aux32) {
        *s += d * v as f32;
    }
    let dmin = dmin.to_f32() * yb.d;
    *sumf -= dmin * sumi as f32;
}

/// Q4_K weights · Q8_K activations, as ggml's `ggml_vec_dot_q4_K_q8_K_generic`: eight f32
/// lane sums of `(d*dy) * aux32[l]`, and `sumf -= (dmin*dy) * sum(bsums * mins)` per block;
/// the lanes are added to `sumf` at the end. `NaN` if the slices differ in length.
pub fn vec_dot_q4_k_q8_k(x: &[BlockQ4K], y: &[BlockQ8K]) -> f32 {
    if x.len() != y.len() {
        return f32::NAN;
    }
    let mut sums = [0.0f32; 8];
    let mut sumf = 0.0f32;
    for (xb, yb) in x.iter().zip(y) {
        let a = q4k_low_quants(&xb.qs);
        k_dot_with_mins(&a, &xb.scales, xb.d, xb.dmin, yb, &mut sums, &mut sumf);
    }
    for s in sums {
        sumf += s;
    }
    sumf
}

/// The 256 unsigned 5-bit quants of a Q5_K block, in weight order.
#[inline(always)]
fn q5k_quants(b: &BlockQ5K) -> [i8; QK_K] {
    let mut a = q4k_low_quants(&b.qs);
    for (k, chunk) in a.chunks_exact_mut(32).enumerate() {
        let bit = 1u8 << k;
        for (l, v) in chunk.iter_mut().enumerate() {
            if b.qh[l] & bit != 0 {
                *v += 16;
            }
        }
    }
    a
}

/// Q5_K weights · Q8_K activations, as ggml's `ggml_vec_dot_q5_K_q8_K_generic` (same
/// structure as [`vec_dot_q4_k_q8_k`]). `NaN` if the slices differ in length.
pub fn vec_dot_q5_k_q8_k(x: &[BlockQ5K], y: &[BlockQ8K]) -> f32 {
    if x.len() != y.len() {
        return f32::NAN;
    }
    let mut sums = [0.0f32; 8];
    let mut sumf = 0.0f32;
    for (xb, yb) in x.iter().zip(y) {
        let a = q5k_quants(xb);
        k_dot_with_mins(&a, &xb.scales, xb.d, xb.dmin, yb, &mut sums, &mut sumf);
    }
    for s in sums {
        sumf += s;
    }
    sumf
}

/// The 256 signed 6-bit quants (-32..32) of a Q6_K block, in weight order.
#[inline(always)]
fn q6k_quants(b: &BlockQ6K) -> [i8; QK_K] {
    let mut a = [0i8; QK_K];
    for half in 0..2 {
        let ql = &b.ql[half * 64..half * 64 + 64];
        let qh = &b.qh[half * 32..half * 32 + 32];
        let out = &mut a[half * 128..half * 128 + 128];
        for l in 0..32 {
            out[l] = ((ql[l] & 0x0f) | ((qh[l] & 3) << 4)) as i8 - 32;
            out[l + 32] = ((ql[l + 32] & 0x0f) | (((qh[l] >> 2) & 3) << 4)) as i8 - 32;
            out[l + 64] = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i8 - 32;
            out[l + 96] = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i8 - 32;
        }
    }
    a
}

/// Q6_K weights · Q8_K activations, as ggml's `ggml_vec_dot_q6_K_q8_K_generic` (eight f32
/// lane sums of `(d*dy) * aux32[l]`). `NaN` if the slices differ in length.
pub fn vec_dot_q6_k_q8_k(x: &[BlockQ6K], y: &[BlockQ8K]) -> f32 {
    if x.len() != y.len() {
        return f32::NAN;
    }
    let mut sums = [0.0f32; 8];
    for (xb, yb) in x.iter().zip(y) {
        let a = q6k_quants(xb);
        let mut aux32 = [0i32; 8];
        for (j, &sc) in xb.scales.iter().enumerate() {
            let r = j * 16..j * 16 + 16;
            accumulate_lanes(&mut aux32, sc as i32, &yb.qs[r.clone()], &a[r]);
        }
        let d = xb.d.to_f32() * yb.d;
        for (s, &v) in sums.iter_mut().zip(&aux32) {
            *s += d * v as f32;
        }
    }
    let mut sumf = 0.0f32;
    for s in sums {
        sumf += s;
    }
    sumf
}

/// IQ4_XS weights · Q8_K activations, as ggml's `ggml_vec_dot_iq4_xs_q8_K_generic`: per
/// sub-block of 32, `sumf += ((d*dy) * (ls - 32)) * sumi`. `NaN` if the slices differ in
/// length.
pub fn vec_dot_iq4_xs_q8_k(x: &[BlockIQ4XS], y: &[BlockQ8K]) -> f32 {
    if x.len() != y.len() {
        return f32::NAN;
    }
    let mut sumf = 0.0f32;
    for (xb, yb) in x.iter().zip(y) {
        let d4d8 = xb.d.to_f32() * yb.d;
        for ib in 0..QK_K / 32 {
            let dl = d4d8 * (iq4xs_scale(xb, ib) - 32) as f32;
            let qs = &xb.qs[ib * 16..ib * 16 + 16];
            let q8 = &yb.qs[ib * 32..ib * 32 + 32];
            let (mut s1, mut s2) = (0i32, 0i32);
            for j in 0..16 {
                s1 += q8[j] as i32 * IQ4NL_VALUES[(qs[j] & 0x0f) as usize] as i32;
                s2 += q8[j + 16] as i32 * IQ4NL_VALUES[(qs[j] >> 4) as usize] as i32;
            }
            sumf += dl * (s1 + s2) as f32;
        }
    }
    sumf
}

// ------------------------------------------------------------------------------------------
// Float dot products
// ------------------------------------------------------------------------------------------

/// F16 · F16, as ggml's scalar `ggml_vec_dot_f16`: each product in f32, summed in f64, the
/// sum rounded to f32. `NaN` if the slices differ in length.
pub fn vec_dot_f16_f16(x: &[F16Le], y: &[F16Le]) -> f32 {
    if x.len() != y.len() {
        return f32::NAN;
    }
    let mut sum = 0.0f64;
    for (a, b) in x.iter().zip(y) {
        sum += (a.to_f32() * b.to_f32()) as f64;
    }
    sum as f32
}

/// BF16 · BF16, as ggml's scalar `ggml_vec_dot_bf16`: each product in f32, summed in f64.
/// `NaN` if the slices differ in length.
pub fn vec_dot_bf16_bf16(x: &[Bf16Le], y: &[Bf16Le]) -> f32 {
    if x.len() != y.len() {
        return f32::NAN;
    }
    let mut sum = 0.0f64;
    for (a, b) in x.iter().zip(y) {
        sum += (a.to_f32() * b.to_f32()) as f64;
    }
    sum as f32
}

/// F32 · F32, as ggml's scalar `ggml_vec_dot_f32`: each product in f32, summed in f64.
/// `NaN` if the slices differ in length.
pub fn vec_dot_f32_f32(x: &[f32], y: &[f32]) -> f32 {
    if x.len() != y.len() {
        return f32::NAN;
    }
    let mut sum = 0.0f64;
    for (a, b) in x.iter().zip(y) {
        sum += (a * b) as f64;
    }
    sum as f32
}

// ------------------------------------------------------------------------------------------
// Dequantization
// ------------------------------------------------------------------------------------------

fn deq_q4_0(x: &[BlockQ4_0], y: &mut [f32]) {
    for (b, out) in x.iter().zip(y.chunks_exact_mut(QK)) {
        let d = b.d.to_f32();
        for j in 0..QK / 2 {
            out[j] = ((b.qs[j] & 0x0f) as i32 - 8) as f32 * d;
            out[j + QK / 2] = ((b.qs[j] >> 4) as i32 - 8) as f32 * d;
        }
    }
}

fn deq_q4_1(x: &[BlockQ4_1], y: &mut [f32]) {
    for (b, out) in x.iter().zip(y.chunks_exact_mut(QK)) {
        let (d, m) = (b.d.to_f32(), b.m.to_f32());
        for j in 0..QK / 2 {
            out[j] = (b.qs[j] & 0x0f) as f32 * d + m;
            out[j + QK / 2] = (b.qs[j] >> 4) as f32 * d + m;
        }
    }
}

fn deq_q5_0(x: &[BlockQ5_0], y: &mut [f32]) {
    for (b, out) in x.iter().zip(y.chunks_exact_mut(QK)) {
        let d = b.d.to_f32();
        let qh = u32::from_le_bytes(b.qh);
        for (j, o) in out.iter_mut().enumerate() {
            *o = (q5_quant(&b.qs, qh, j) as i32 - 16) as f32 * d;
        }
    }
}

fn deq_q5_1(x: &[BlockQ5_1], y: &mut [f32]) {
    for (b, out) in x.iter().zip(y.chunks_exact_mut(QK)) {
        let (d, m) = (b.d.to_f32(), b.m.to_f32());
        let qh = u32::from_le_bytes(b.qh);
        for (j, o) in out.iter_mut().enumerate() {
            *o = q5_quant(&b.qs, qh, j) as f32 * d + m;
        }
    }
}

fn deq_q8_0(x: &[BlockQ8_0], y: &mut [f32]) {
    for (b, out) in x.iter().zip(y.chunks_exact_mut(QK)) {
        let d = b.d.to_f32();
        for (o, &q) in out.iter_mut().zip(&b.qs) {
            *o = q as f32 * d;
        }
    }
}

fn deq_q8_1(x: &[BlockQ8_1], y: &mut [f32]) {
    for (b, out) in x.iter().zip(y.chunks_exact_mut(QK)) {
        let d = b.d.to_f32();
        for (o, &q) in out.iter_mut().zip(&b.qs) {
            *o = q as f32 * d;
        }
    }
}

fn deq_q2_k(x: &[BlockQ2K], y: &mut [f32]) {
    for (b, out) in x.iter().zip(y.chunks_exact_mut(QK_K)) {
        let d = b.d.to_f32();
        let min = b.dmin.to_f32();
        for half in 0..2 {
            let q = &b.qs[half * 32..half * 32 + 32];
            for j in 0..4 {
                let shift = 2 * j;
                for g in 0..2 {
                    let sc = b.scales[half * 8 + j * 2 + g];
                    let dl = d * (sc & 0x0f) as f32;
                    let ml = min * (sc >> 4) as f32;
                    let base = half * 128 + j * 32 + g * 16;
                    for l in 0..16 {
                        out[base + l] = dl * ((q[g * 16 + l] >> shift) & 3) as f32 - ml;
                    }
                }
            }
        }
    }
}

fn deq_q3_k(x: &[BlockQ3K], y: &mut [f32]) {
    for (b, out) in x.iter().zip(y.chunks_exact_mut(QK_K)) {
        let d_all = b.d.to_f32();
        let scales = q3k_scales(&b.scales);
        let a = q3k_quants(b);
        for (j, &sc) in scales.iter().enumerate() {
            let dl = d_all * sc as f32;
            for l in 0..16 {
                out[j * 16 + l] = dl * a[j * 16 + l] as f32;
            }
        }
    }
}

fn deq_k_with_mins(a: &[i8; QK_K], scales: &[u8; 12], d: F16Le, dmin: F16Le, out: &mut [f32]) {
    let d = d.to_f32();
    let min = dmin.to_f32();
    for j in 0..8 {
        let (sc, m) = k_scale_min(j, scales);
        let d1 = d * sc as f32;
        let m1 = min * m as f32;
        for l in 0..32 {
            out[j * 32 + l] = d1 * a[j * 32 + l] as f32 - m1;
        }
    }
}

fn deq_q4_k(x: &[BlockQ4K], y: &mut [f32]) {
    for (b, out) in x.iter().zip(y.chunks_exact_mut(QK_K)) {
        deq_k_with_mins(&q4k_low_quants(&b.qs), &b.scales, b.d, b.dmin, out);
    }
}

fn deq_q5_k(x: &[BlockQ5K], y: &mut [f32]) {
    for (b, out) in x.iter().zip(y.chunks_exact_mut(QK_K)) {
        deq_k_with_mins(&q5k_quants(b), &b.scales, b.d, b.dmin, out);
    }
}

fn deq_q6_k(x: &[BlockQ6K], y: &mut [f32]) {
    for (b, out) in x.iter().zip(y.chunks_exact_mut(QK_K)) {
        let d = b.d.to_f32();
        let a = q6k_quants(b);
        for (j, &sc) in b.scales.iter().enumerate() {
            let ds = d * sc as f32;
            for l in 0..16 {
                out[j * 16 + l] = ds * a[j * 16 + l] as f32;
            }
        }
    }
}

fn deq_iq4_nl(x: &[BlockIQ4NL], y: &mut [f32]) {
    for (b, out) in x.iter().zip(y.chunks_exact_mut(QK)) {
        let d = b.d.to_f32();
        for j in 0..QK / 2 {
            out[j] = d * IQ4NL_VALUES[(b.qs[j] & 0x0f) as usize] as f32;
            out[j + QK / 2] = d * IQ4NL_VALUES[(b.qs[j] >> 4) as usize] as f32;
        }
    }
}

fn deq_mxfp4(x: &[BlockMXFP4], y: &mut [f32]) {
    for (b, out) in x.iter().zip(y.chunks_exact_mut(QK)) {
        let d = e8m0_to_f32_half(b.e);
        for j in 0..QK / 2 {
            out[j] = MXFP4_VALUES[(b.qs[j] & 0x0f) as usize] as f32 * d;
            out[j + QK / 2] = MXFP4_VALUES[(b.qs[j] >> 4) as usize] as f32 * d;
        }
    }
}

fn deq_iq4_xs(x: &[BlockIQ4XS], y: &mut [f32]) {
    for (b, out) in x.iter().zip(y.chunks_exact_mut(QK_K)) {
        let d = b.d.to_f32();
        for ib in 0..QK_K / 32 {
            let dl = d * (iq4xs_scale(b, ib) - 32) as f32;
            let qs = &b.qs[ib * 16..ib * 16 + 16];
            let o = &mut out[ib * 32..ib * 32 + 32];
            for j in 0..16 {
                o[j] = dl * IQ4NL_VALUES[(qs[j] & 0x0f) as usize] as f32;
                o[j + 16] = dl * IQ4NL_VALUES[(qs[j] >> 4) as usize] as f32;
            }
        }
    }
}

/// Q8_K from raw bytes (which need not be aligned): `d` is a little-endian f32.
fn deq_q8_k_bytes(src: &[u8], y: &mut [f32]) {
    let bb = GgmlType::Q8_K.block_bytes();
    for (b, out) in src.chunks_exact(bb).zip(y.chunks_exact_mut(QK_K)) {
        let d = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        for (o, &q) in out.iter_mut().zip(&b[4..4 + QK_K]) {
            *o = q as i8 as f32 * d;
        }
    }
}

fn bad_length(msg: String) -> KernelError {
    KernelError::BadLength(msg)
}

/// Borrows `bytes` as a slice of `T`, or copies them when they are not aligned for `T`.
fn cast_or_copy<'a, T: Pod>(bytes: &'a [u8], what: &str) -> Result<Cow<'a, [T]>, KernelError> {
    let size = std::mem::size_of::<T>();
    if !bytes.len().is_multiple_of(size) {
        return Err(bad_length(format!(
            "{what}: {} bytes is not a whole number of {size}-byte elements",
            bytes.len()
        )));
    }
    match bytemuck::try_cast_slice::<u8, T>(bytes) {
        Ok(s) => Ok(Cow::Borrowed(s)),
        Err(_) => Ok(Cow::Owned(
            bytes
                .chunks_exact(size)
                .map(bytemuck::pod_read_unaligned)
                .collect(),
        )),
    }
}

/// Checks that `bytes` hold exactly `n` values of `ty` (`n` a whole number of blocks).
fn check_row(ty: GgmlType, n: usize, bytes: usize, what: &str) -> Result<(), KernelError> {
    let bs = ty.block_size();
    if !n.is_multiple_of(bs) {
        return Err(bad_length(format!(
            "{what}: {n} values of {ty} is not a whole number of {bs}-value blocks"
        )));
    }
    let want = (n / bs).checked_mul(ty.block_bytes());
    if want != Some(bytes) {
        return Err(bad_length(format!(
            "{what}: {n} values of {ty} take {} bytes, got {bytes}",
            want.map_or_else(|| "too many".to_string(), |w| w.to_string())
        )));
    }
    Ok(())
}

/// Dequantizes the raw bytes `src` of `dst.len()` values of type `ty` into `dst`, bit-exact
/// with ggml's `dequantize_row_*`.
///
/// Supports F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q8_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K,
/// Q8_K, IQ4_NL, IQ4_XS and MXFP4; `src` may have any alignment.
///
/// # Errors
/// [`KernelError::BadLength`] if `dst.len()` is not a whole number of blocks or `src` is not
/// exactly the bytes of that many values; [`KernelError::UnsupportedType`] for other types.
pub fn dequantize_row(ty: GgmlType, src: &[u8], dst: &mut [f32]) -> Result<(), KernelError> {
    fn blocks<T: Pod>(src: &[u8]) -> Result<Cow<'_, [T]>, KernelError> {
        cast_or_copy(src, "dequantize_row source")
    }
    match ty {
        GgmlType::F32
        | GgmlType::F16
        | GgmlType::BF16
        | GgmlType::Q4_0
        | GgmlType::Q4_1
        | GgmlType::Q5_0
        | GgmlType::Q5_1
        | GgmlType::Q8_0
        | GgmlType::Q8_1
        | GgmlType::Q2_K
        | GgmlType::Q3_K
        | GgmlType::Q4_K
        | GgmlType::Q5_K
        | GgmlType::Q6_K
        | GgmlType::Q8_K
        | GgmlType::IQ4_NL
        | GgmlType::IQ4_XS
        | GgmlType::MXFP4 => {}
        _ => return Err(KernelError::UnsupportedType(ty)),
    }
    check_row(ty, dst.len(), src.len(), "dequantize_row")?;
    match ty {
        GgmlType::F32 => {
            for (o, c) in dst.iter_mut().zip(src.chunks_exact(4)) {
                *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
        GgmlType::F16 => {
            for (o, c) in dst.iter_mut().zip(src.chunks_exact(2)) {
                *o = F16Le([c[0], c[1]]).to_f32();
            }
        }
        GgmlType::BF16 => {
            for (o, c) in dst.iter_mut().zip(src.chunks_exact(2)) {
                *o = Bf16Le([c[0], c[1]]).to_f32();
            }
        }
        GgmlType::Q4_0 => deq_q4_0(&blocks(src)?, dst),
        GgmlType::Q4_1 => deq_q4_1(&blocks(src)?, dst),
        GgmlType::Q5_0 => deq_q5_0(&blocks(src)?, dst),
        GgmlType::Q5_1 => deq_q5_1(&blocks(src)?, dst),
        GgmlType::Q8_0 => deq_q8_0(&blocks(src)?, dst),
        GgmlType::Q8_1 => deq_q8_1(&blocks(src)?, dst),
        GgmlType::Q2_K => deq_q2_k(&blocks(src)?, dst),
        GgmlType::Q3_K => deq_q3_k(&blocks(src)?, dst),
        GgmlType::Q4_K => deq_q4_k(&blocks(src)?, dst),
        GgmlType::Q5_K => deq_q5_k(&blocks(src)?, dst),
        GgmlType::Q6_K => deq_q6_k(&blocks(src)?, dst),
        GgmlType::Q8_K => deq_q8_k_bytes(src, dst),
        GgmlType::IQ4_NL => deq_iq4_nl(&blocks(src)?, dst),
        GgmlType::IQ4_XS => deq_iq4_xs(&blocks(src)?, dst),
        GgmlType::MXFP4 => deq_mxfp4(&blocks(src)?, dst),
        _ => return Err(KernelError::UnsupportedType(ty)),
    }
    Ok(())
}

// ------------------------------------------------------------------------------------------
// Checked byte-level entry points
// ------------------------------------------------------------------------------------------

/// Quantizes `x` to the activation type `act` into the raw bytes `out`, which must be exactly
/// `act.row_bytes(x.len())` long.
///
/// `act` is one of Q8_0, Q8_1, Q8_K (quantized as the `quantize_row_q8_*` references), F16
/// (rounded to nearest even), BF16 (as ggml's `ggml_compute_fp32_to_bf16`) or F32 (copied).
///
/// # Errors
/// [`KernelError::BadLength`] if `x.len()` is not a whole number of blocks, `out` has the wrong
/// length, or (Q8_K only) `out` is not 4-byte aligned; [`KernelError::UnsupportedType`] for
/// other types.
pub fn quantize_row(act: GgmlType, x: &[f32], out: &mut [u8]) -> Result<(), KernelError> {
    if !matches!(
        act,
        GgmlType::Q8_0
            | GgmlType::Q8_1
            | GgmlType::Q8_K
            | GgmlType::F16
            | GgmlType::BF16
            | GgmlType::F32
    ) {
        return Err(KernelError::UnsupportedType(act));
    }
    check_row(act, x.len(), out.len(), "quantize_row")?;
    fn blocks_mut<T: Pod>(out: &mut [u8]) -> Result<&mut [T], KernelError> {
        bytemuck::try_cast_slice_mut(out).map_err(|e| {
            bad_length(format!(
                "quantize_row: output buffer cannot hold {}-byte blocks: {e}",
                std::mem::size_of::<T>()
            ))
        })
    }
    match act {
        GgmlType::Q8_0 => quantize_row_q8_0(x, blocks_mut(out)?),
        GgmlType::Q8_1 => quantize_row_q8_1(x, blocks_mut(out)?),
        GgmlType::Q8_K => quantize_row_q8_k(x, blocks_mut(out)?),
        GgmlType::F16 => {
            for (c, &v) in out.chunks_exact_mut(2).zip(x) {
                c.copy_from_slice(&F16Le::from_f32(v).0);
            }
        }
        GgmlType::BF16 => {
            for (c, &v) in out.chunks_exact_mut(2).zip(x) {
                c.copy_from_slice(&Bf16Le::from_f32(v).0);
            }
        }
        GgmlType::F32 => {
            for (c, &v) in out.chunks_exact_mut(4).zip(x) {
                c.copy_from_slice(&v.to_le_bytes());
            }
        }
        _ => return Err(KernelError::UnsupportedType(act)),
    }
    Ok(())
}

fn dot_typed<X: Pod, Y: Pod>(
    ty: GgmlType,
    n: usize,
    w: &[u8],
    a: &[u8],
    f: fn(&[X], &[Y]) -> f32,
) -> Result<f32, KernelError> {
    check_row(ty, n, w.len(), "vec_dot weights")?;
    check_row(ty.vec_dot_type(), n, a.len(), "vec_dot activations")?;
    let x = cast_or_copy::<X>(w, "vec_dot weights")?;
    let y = cast_or_copy::<Y>(a, "vec_dot activations")?;
    Ok(f(&x, &y))
}

/// Dots `n` weights of type `ty` (raw bytes `w`) with `n` activations already quantized to
/// `ty.vec_dot_type()` (raw bytes `a`), with the `vec_dot_*` reference of the type.
///
/// # Errors
/// [`KernelError::BadLength`] if `n` is not a whole number of blocks or either buffer has the
/// wrong length; [`KernelError::UnsupportedType`] for types without a kernel.
pub fn vec_dot(ty: GgmlType, n: usize, w: &[u8], a: &[u8]) -> Result<f32, KernelError> {
    match ty {
        GgmlType::F32 => dot_typed(ty, n, w, a, vec_dot_f32_f32),
        GgmlType::F16 => dot_typed(ty, n, w, a, vec_dot_f16_f16),
        GgmlType::BF16 => dot_typed(ty, n, w, a, vec_dot_bf16_bf16),
        GgmlType::Q4_0 => dot_typed(ty, n, w, a, vec_dot_q4_0_q8_0),
        GgmlType::Q4_1 => dot_typed(ty, n, w, a, vec_dot_q4_1_q8_1),
        GgmlType::Q5_0 => dot_typed(ty, n, w, a, vec_dot_q5_0_q8_0),
        GgmlType::Q5_1 => dot_typed(ty, n, w, a, vec_dot_q5_1_q8_1),
        GgmlType::Q8_0 => dot_typed(ty, n, w, a, vec_dot_q8_0_q8_0),
        GgmlType::Q2_K => dot_typed(ty, n, w, a, vec_dot_q2_k_q8_k),
        GgmlType::Q3_K => dot_typed(ty, n, w, a, vec_dot_q3_k_q8_k),
        GgmlType::Q4_K => dot_typed(ty, n, w, a, vec_dot_q4_k_q8_k),
        GgmlType::Q5_K => dot_typed(ty, n, w, a, vec_dot_q5_k_q8_k),
        GgmlType::Q6_K => dot_typed(ty, n, w, a, vec_dot_q6_k_q8_k),
        GgmlType::IQ4_NL => dot_typed(ty, n, w, a, vec_dot_iq4_nl_q8_0),
        GgmlType::IQ4_XS => dot_typed(ty, n, w, a, vec_dot_iq4_xs_q8_k),
        GgmlType::MXFP4 => dot_typed(ty, n, w, a, vec_dot_mxfp4_q8_0),
        _ => Err(KernelError::UnsupportedType(ty)),
    }
}

// ------------------------------------------------------------------------------------------
// Dispatch
// ------------------------------------------------------------------------------------------

macro_rules! dot_wrappers {
    ($($name:ident => $ty:ident),* $(,)?) => {$(
        fn $name(n: usize, w: &[u8], a: &[u8]) -> f32 {
            vec_dot(GgmlType::$ty, n, w, a).unwrap_or(f32::NAN)
        }
    )*};
}

dot_wrappers!(
    dot_f32 => F32, dot_f16 => F16, dot_bf16 => BF16,
    dot_q4_0 => Q4_0, dot_q4_1 => Q4_1, dot_q5_0 => Q5_0, dot_q5_1 => Q5_1, dot_q8_0 => Q8_0,
    dot_q2_k => Q2_K, dot_q3_k => Q3_K, dot_q4_k => Q4_K, dot_q5_k => Q5_K, dot_q6_k => Q6_K,
    dot_iq4_nl => IQ4_NL, dot_iq4_xs => IQ4_XS, dot_mxfp4 => MXFP4,
);

macro_rules! quantize_wrappers {
    ($($name:ident => $ty:ident),* $(,)?) => {$(
        fn $name(x: &[f32], out: &mut [u8]) {
            if quantize_row(GgmlType::$ty, x, out).is_err() {
                out.fill(0xff);
            }
        }
    )*};
}

quantize_wrappers!(
    quant_q8_0 => Q8_0, quant_q8_1 => Q8_1, quant_q8_k => Q8_K,
    quant_f16 => F16, quant_bf16 => BF16, quant_f32 => F32,
);

/// The scalar dot kernel for weight type `ty` (over raw bytes; an inconsistent length gives
/// `NaN`), or `None` if the type has none.
pub fn dot_fn(ty: GgmlType) -> Option<DotFn> {
    Some(match ty {
        GgmlType::F32 => dot_f32,
        GgmlType::F16 => dot_f16,
        GgmlType::BF16 => dot_bf16,
        GgmlType::Q4_0 => dot_q4_0,
        GgmlType::Q4_1 => dot_q4_1,
        GgmlType::Q5_0 => dot_q5_0,
        GgmlType::Q5_1 => dot_q5_1,
        GgmlType::Q8_0 => dot_q8_0,
        GgmlType::Q2_K => dot_q2_k,
        GgmlType::Q3_K => dot_q3_k,
        GgmlType::Q4_K => dot_q4_k,
        GgmlType::Q5_K => dot_q5_k,
        GgmlType::Q6_K => dot_q6_k,
        GgmlType::IQ4_NL => dot_iq4_nl,
        GgmlType::IQ4_XS => dot_iq4_xs,
        GgmlType::MXFP4 => dot_mxfp4,
        _ => return None,
    })
}

/// The scalar quantizer for activation type `act` (Q8_0, Q8_1, Q8_K, F16, BF16 or F32; an
/// inconsistent length fills the output with `0xff`, which reads as NaN scales), or `None`.
pub fn quantize_fn(act: GgmlType) -> Option<QuantizeFn> {
    Some(match act {
        GgmlType::Q8_0 => quant_q8_0,
        GgmlType::Q8_1 => quant_q8_1,
        GgmlType::Q8_K => quant_q8_k,
        GgmlType::F16 => quant_f16,
        GgmlType::BF16 => quant_bf16,
        GgmlType::F32 => quant_f32,
        _ => return None,
    })
}
