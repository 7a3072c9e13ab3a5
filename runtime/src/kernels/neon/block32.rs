//! The 32-weight block types (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, IQ4_NL, MXFP4, paired with Q8_0 or
//! Q8_1): how each weight block unpacks to 32 signed bytes ([`W32`]), and the one kernel,
//! [`b32_tile`], that dots a weight row with `T` activation rows, unpacking each weight block
//! once. The one-row dot is `b32_tile` with `T = 1`, so a tile of any `T` gives each row the
//! one-row result bit for bit: the same integer lanes (same [`I8Dot`]), the same per-block
//! scale, the same two accumulators (even blocks, odd blocks) and the same final sums.

use super::*;

/// A Q8_0 or Q8_1 activation block.
pub(super) trait A32: QuantBlock {
    /// The 32 quants.
    fn qs(&self) -> &[i8; 32];
    /// The scale `d`, as f32.
    fn d(&self) -> f32;
    /// Q8_1's `s = d · Σq` as f32 (0 for Q8_0, which no kernel with mins reads).
    fn s(&self) -> f32;
}

impl A32 for BlockQ8_0 {
    #[inline(always)]
    fn qs(&self) -> &[i8; 32] {
        &self.qs
    }
    #[inline(always)]
    fn d(&self) -> f32 {
        f16(self.d)
    }
    #[inline(always)]
    fn s(&self) -> f32 {
        0.0
    }
}

impl A32 for BlockQ8_1 {
    #[inline(always)]
    fn qs(&self) -> &[i8; 32] {
        &self.qs
    }
    #[inline(always)]
    fn d(&self) -> f32 {
        f16(self.d)
    }
    #[inline(always)]
    fn s(&self) -> f32 {
        f16(self.s)
    }
}

/// A 32-weight block type: its weights as two vectors of 16 signed bytes (weights 0..16 and
/// 16..32), its scale, and (types with mins) its min.
pub(super) trait W32: QuantBlock {
    /// The paired activation block.
    type A: A32;
    /// Whether the type has a min (`w = d·q + m`), dotted with the activations' `s`.
    const MIN: bool;
    /// The 32 weights as signed bytes.
    ///
    /// # Safety
    /// NEON (baseline on aarch64).
    unsafe fn unpack(&self) -> (int8x16_t, int8x16_t);
    /// The scale as f32.
    fn d(&self) -> f32;
    /// The min as f32 (0 for the types without one).
    fn m(&self) -> f32 {
        0.0
    }
}

/// The two nibble vectors of 16 packed bytes, low nibbles first.
#[inline(always)]
unsafe fn nibbles(qs: &[u8; 16]) -> (uint8x16_t, uint8x16_t) {
    let q = ld_u8(qs);
    (vandq_u8(q, vdupq_n_u8(0x0f)), vshrq_n_u8::<4>(q))
}

impl W32 for BlockQ4_0 {
    type A = BlockQ8_0;
    const MIN: bool = false;
    #[inline(always)]
    unsafe fn unpack(&self) -> (int8x16_t, int8x16_t) {
        let (lo, hi) = nibbles(&self.qs);
        let off = vdupq_n_s8(8);
        (vsubq_s8(s8(lo), off), vsubq_s8(s8(hi), off))
    }
    #[inline(always)]
    fn d(&self) -> f32 {
        f16(self.d)
    }
}

impl W32 for BlockQ4_1 {
    type A = BlockQ8_1;
    const MIN: bool = true;
    #[inline(always)]
    unsafe fn unpack(&self) -> (int8x16_t, int8x16_t) {
        let (lo, hi) = nibbles(&self.qs);
        (s8(lo), s8(hi))
    }
    #[inline(always)]
    fn d(&self) -> f32 {
        f16(self.d)
    }
    #[inline(always)]
    fn m(&self) -> f32 {
        f16(self.m)
    }
}

impl W32 for BlockQ5_0 {
    type A = BlockQ8_0;
    const MIN: bool = false;
    #[inline(always)]
    unsafe fn unpack(&self) -> (int8x16_t, int8x16_t) {
        let (lo, hi) = nibbles(&self.qs);
        let (hlo, hhi) = q5_high_bits(self.qh);
        let off = vdupq_n_s8(16);
        (
            vsubq_s8(s8(vorrq_u8(lo, hlo)), off),
            vsubq_s8(s8(vorrq_u8(hi, hhi)), off),
        )
    }
    #[inline(always)]
    fn d(&self) -> f32 {
        f16(self.d)
    }
}

impl W32 for BlockQ5_1 {
    type A = BlockQ8_1;
    const MIN: bool = true;
    #[inline(always)]
    unsafe fn unpack(&self) -> (int8x16_t, int8x16_t) {
        let (lo, hi) = nibbles(&self.qs);
        let (hlo, hhi) = q5_high_bits(self.qh);
        (s8(vorrq_u8(lo, hlo)), s8(vorrq_u8(hi, hhi)))
    }
    #[inline(always)]
    fn d(&self) -> f32 {
        f16(self.d)
    }
    #[inline(always)]
    fn m(&self) -> f32 {
        f16(self.m)
    }
}

impl W32 for BlockQ8_0 {
    type A = BlockQ8_0;
    const MIN: bool = false;
    #[inline(always)]
    unsafe fn unpack(&self) -> (int8x16_t, int8x16_t) {
        (ld_s8(&self.qs[..16]), ld_s8(&self.qs[16..]))
    }
    #[inline(always)]
    fn d(&self) -> f32 {
        f16(self.d)
    }
}

impl W32 for BlockIQ4NL {
    type A = BlockQ8_0;
    const MIN: bool = false;
    #[inline(always)]
    unsafe fn unpack(&self) -> (int8x16_t, int8x16_t) {
        let (lo, hi) = nibbles(&self.qs);
        let table = vld1q_s8(IQ4NL_VALUES.as_ptr());
        (vqtbl1q_s8(table, lo), vqtbl1q_s8(table, hi))
    }
    #[inline(always)]
    fn d(&self) -> f32 {
        f16(self.d)
    }
}

/// MXFP4: the codes through the table of doubled E2M1 values (as IQ4_NL's), each block scaled
/// by `2^(e - 128)` (ggml's halved E8M0 scale).
impl W32 for BlockMXFP4 {
    type A = BlockQ8_0;
    const MIN: bool = false;
    #[inline(always)]
    unsafe fn unpack(&self) -> (int8x16_t, int8x16_t) {
        let (lo, hi) = nibbles(&self.qs);
        let table = vld1q_s8(MXFP4_VALUES.as_ptr());
        (vqtbl1q_s8(table, lo), vqtbl1q_s8(table, hi))
    }
    #[inline(always)]
    fn d(&self) -> f32 {
        e8m0_to_f32_half(self.e)
    }
}

/// The dots of weight row `x` with the `T` activation rows `ys` (each as long as `x`).
///
/// Per block: the exact i32 lanes of [`dot32`], scaled as four f32 lanes by `d_x · d_y` into
/// one of two accumulators (even blocks, odd blocks), and for the types with mins the scalar
/// `m_x · s_y` summed in block order; the result is the lane sum of both accumulators, plus
/// the mins. Each row's result depends only on that row, so every `T` gives the `T = 1`
/// (one-row kernel) results.
///
/// # Safety
/// The CPU must run `D`'s instructions.
#[inline(always)]
pub(super) unsafe fn b32_tile<D: I8Dot, W: W32, const T: usize>(
    x: &[W],
    ys: [&[W::A]; T],
) -> [f32; T] {
    let mut acc = [[vdupq_n_f32(0.0); 2]; T];
    let mut mins = [0.0f32; T];
    // Block `b` into accumulator `$k` (a constant, so the accumulators stay in registers).
    macro_rules! step {
        ($b:expr, $k:literal) => {{
            let b = $b;
            let xb = &x[b];
            let (lo, hi) = xb.unpack();
            let dx = xb.d();
            let mx = xb.m();
            for t in 0..T {
                let yb = &ys[t][b];
                let q = yb.qs();
                let p = dot32::<D>(lo, hi, ld_s8(&q[..16]), ld_s8(&q[16..]));
                acc[t][$k] = vfmaq_n_f32(acc[t][$k], vcvtq_f32_s32(p), dx * yb.d());
                if W::MIN {
                    mins[t] += mx * yb.s();
                }
            }
        }};
    }
    let mut b = 0;
    while b + 2 <= x.len() {
        step!(b, 0);
        step!(b + 1, 1);
        b += 2;
    }
    if b < x.len() {
        step!(b, 0);
    }
    std::array::from_fn(|t| {
        let s = vaddvq_f32(vaddq_f32(acc[t][0], acc[t][1]));
        if W::MIN {
            s + mins[t]
        } else {
            s
        }
    })
}

/// The one-row dot: [`b32_tile`] with one activation row.
///
/// # Safety
/// As [`b32_tile`].
#[inline(always)]
pub(super) unsafe fn b32_dot<D: I8Dot, W: W32>(x: &[W], y: &[W::A]) -> f32 {
    b32_tile::<D, W, 1>(x, [y])[0]
}
