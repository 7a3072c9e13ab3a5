//! K-quant tile kernels (Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_XS against Q8_K): each weight
//! super-block is unpacked once into a common form ([`KUnpacked`]: 256 signed weights, a
//! scale per 16 weights, a min per 16 weights) and then dotted with several activation rows,
//! with `sdot`/plain NEON ([`k_tile`], one weight row against `T` activation rows) or `smmla`
//! ([`k_tile_mm`], two weight rows against two activation rows).
//!
//! Bit-exact with the one-row kernels: those reduce each super-block's weighted integer sum
//! (and its mins sum) to one exact i32 before any float operation, so any grouping of the
//! integer products gives the same i32; the float steps here are the one-row kernel's, in the
//! same order (`(d_x·d_y)·isum − (dmin_x·d_y)·min_sum`, or `(d_x·d_y)·isum` for the types
//! without mins, summed over the super-blocks in order).

use super::*;

/// A super-block in the common unpacked form.
#[derive(Clone, Copy)]
#[repr(C, align(16))]
pub(super) struct KUnpacked {
    /// The 256 weights as signed bytes (offsets applied).
    q: [i8; QK_K],
    /// The scale of each 16 weights.
    sc: [i32; 16],
    /// The min of each 16 weights (0 for the types without mins).
    mn: [i16; 16],
    /// `d` as f32.
    d: f32,
    /// `dmin` as f32 (types with mins).
    dmin: f32,
}

impl KUnpacked {
    /// All zeros (a buffer to unpack into).
    pub(super) const ZERO: KUnpacked = KUnpacked {
        q: [0; QK_K],
        sc: [0; 16],
        mn: [0; 16],
        d: 0.0,
        dmin: 0.0,
    };

    #[inline(always)]
    unsafe fn put(&mut self, chunk: usize, v: int8x16_t) {
        vst1q_s8(self.q.as_mut_ptr().add(16 * chunk), v);
    }
}

/// A K-quant weight block that unpacks to [`KUnpacked`].
pub(super) trait KQuant: QuantBlock {
    /// Whether the type has mins (`w = d·sc·q − dmin·m`).
    const MIN: bool;
    /// Unpacks this block into `u`.
    ///
    /// # Safety
    /// NEON (baseline on aarch64).
    unsafe fn unpack(&self, u: &mut KUnpacked);
}

impl KQuant for BlockQ2K {
    const MIN: bool = true;
    #[inline(always)]
    unsafe fn unpack(&self, u: &mut KUnpacked) {
        let m3 = vdupq_n_u8(3);
        for (k, &s) in self.scales.iter().enumerate() {
            u.sc[k] = (s & 0x0f) as i32;
            u.mn[k] = (s >> 4) as i16;
        }
        for n in 0..2 {
            let q0 = ld_u8(&self.qs[32 * n..]);
            let q1 = ld_u8(&self.qs[32 * n + 16..]);
            for j in 0..4 {
                u.put(8 * n + 2 * j, s8(vandq_u8(shr_u8(q0, 2 * j as i8), m3)));
                u.put(8 * n + 2 * j + 1, s8(vandq_u8(shr_u8(q1, 2 * j as i8), m3)));
            }
        }
        u.d = f16(self.d);
        u.dmin = f16(self.dmin);
    }
}

impl KQuant for BlockQ3K {
    const MIN: bool = false;
    #[inline(always)]
    unsafe fn unpack(&self, u: &mut KUnpacked) {
        let m3 = vdupq_n_u8(3);
        let b2 = vdupq_n_u8(4);
        for (k, s) in q3k_scales(&self.scales).into_iter().enumerate() {
            u.sc[k] = s as i32;
        }
        // Inverted high bits: a clear bit means "subtract 4".
        let nh0 = vmvnq_u8(ld_u8(&self.hmask));
        let nh1 = vmvnq_u8(ld_u8(&self.hmask[16..]));
        for n in 0..2 {
            let q0 = ld_u8(&self.qs[32 * n..]);
            let q1 = ld_u8(&self.qs[32 * n + 16..]);
            for j in 0..4 {
                let g = (4 * n + j) as i8;
                let sub0 = vandq_u8(shl_u8(nh0, 2 - g), b2);
                let sub1 = vandq_u8(shl_u8(nh1, 2 - g), b2);
                let a0 = vsubq_s8(s8(vandq_u8(shr_u8(q0, 2 * j as i8), m3)), s8(sub0));
                let a1 = vsubq_s8(s8(vandq_u8(shr_u8(q1, 2 * j as i8), m3)), s8(sub1));
                u.put(8 * n + 2 * j, a0);
                u.put(8 * n + 2 * j + 1, a1);
            }
        }
        u.d = f16(self.d);
    }
}

impl KQuant for BlockQ4K {
    const MIN: bool = true;
    #[inline(always)]
    unsafe fn unpack(&self, u: &mut KUnpacked) {
        let m4 = vdupq_n_u8(0x0f);
        let (sc, mn) = k_scales_mins(&self.scales);
        for j in 0..4 {
            let q0 = ld_u8(&self.qs[32 * j..]);
            let q1 = ld_u8(&self.qs[32 * j + 16..]);
            u.put(4 * j, s8(vandq_u8(q0, m4)));
            u.put(4 * j + 1, s8(vandq_u8(q1, m4)));
            u.put(4 * j + 2, s8(vshrq_n_u8::<4>(q0)));
            u.put(4 * j + 3, s8(vshrq_n_u8::<4>(q1)));
        }
        k_scales_to_16(u, &sc, &mn);
        u.d = f16(self.d);
        u.dmin = f16(self.dmin);
    }
}

/// Spreads the 8 scales and mins of 32 weights each to the 16 groups of 16.
#[inline(always)]
fn k_scales_to_16(u: &mut KUnpacked, sc: &[u8; 8], mn: &[u8; 8]) {
    for j in 0..8 {
        u.sc[2 * j] = sc[j] as i32;
        u.sc[2 * j + 1] = sc[j] as i32;
        u.mn[2 * j] = mn[j] as i16;
        u.mn[2 * j + 1] = mn[j] as i16;
    }
}

impl KQuant for BlockQ5K {
    const MIN: bool = true;
    #[inline(always)]
    unsafe fn unpack(&self, u: &mut KUnpacked) {
        let m4 = vdupq_n_u8(0x0f);
        let b4 = vdupq_n_u8(0x10);
        let (sc, mn) = k_scales_mins(&self.scales);
        let h0 = ld_u8(&self.qh);
        let h1 = ld_u8(&self.qh[16..]);
        for j in 0..4 {
            let q0 = ld_u8(&self.qs[32 * j..]);
            let q1 = ld_u8(&self.qs[32 * j + 16..]);
            // Bit 2j of qh is the fifth bit of the low nibbles, bit 2j+1 of the high ones.
            let s_lo = 4 - 2 * j as i8;
            let s_hi = 3 - 2 * j as i8;
            let hb = |h, s| vandq_u8(shl_u8(h, s), b4);
            u.put(4 * j, s8(vorrq_u8(vandq_u8(q0, m4), hb(h0, s_lo))));
            u.put(4 * j + 1, s8(vorrq_u8(vandq_u8(q1, m4), hb(h1, s_lo))));
            u.put(4 * j + 2, s8(vorrq_u8(vshrq_n_u8::<4>(q0), hb(h0, s_hi))));
            u.put(4 * j + 3, s8(vorrq_u8(vshrq_n_u8::<4>(q1), hb(h1, s_hi))));
        }
        k_scales_to_16(u, &sc, &mn);
        u.d = f16(self.d);
        u.dmin = f16(self.dmin);
    }
}

impl KQuant for BlockQ6K {
    const MIN: bool = false;
    #[inline(always)]
    unsafe fn unpack(&self, u: &mut KUnpacked) {
        let m4 = vdupq_n_u8(0x0f);
        let m2 = vdupq_n_u8(0x30);
        let off = vdupq_n_s8(32);
        for (k, &s) in self.scales.iter().enumerate() {
            u.sc[k] = s as i32;
        }
        for n in 0..2 {
            let ql = &self.ql[64 * n..];
            let qh = &self.qh[32 * n..];
            for h in 0..2 {
                let l0 = ld_u8(&ql[16 * h..]);
                let l1 = ld_u8(&ql[32 + 16 * h..]);
                let hb = ld_u8(&qh[16 * h..]);
                // Weights l, l+32, l+64, l+96 of this half (as in the one-row kernel).
                let w0 = vorrq_u8(vandq_u8(l0, m4), vandq_u8(vshlq_n_u8::<4>(hb), m2));
                let w1 = vorrq_u8(vandq_u8(l1, m4), vandq_u8(vshlq_n_u8::<2>(hb), m2));
                let w2 = vorrq_u8(vshrq_n_u8::<4>(l0), vandq_u8(hb, m2));
                let w3 = vorrq_u8(vshrq_n_u8::<4>(l1), vandq_u8(vshrq_n_u8::<2>(hb), m2));
                for (k, w) in [w0, w1, w2, w3].into_iter().enumerate() {
                    u.put(8 * n + 2 * k + h, vsubq_s8(s8(w), off));
                }
            }
        }
        u.d = f16(self.d);
    }
}

impl KQuant for BlockIQ4XS {
    const MIN: bool = false;
    #[inline(always)]
    unsafe fn unpack(&self, u: &mut KUnpacked) {
        let m4 = vdupq_n_u8(0x0f);
        let table = vld1q_s8(IQ4NL_VALUES.as_ptr());
        let sh = u16::from_le_bytes(self.scales_h);
        for ib in 0..8 {
            let low = (self.scales_l[ib / 2] >> (4 * (ib % 2))) & 0x0f;
            let high = ((sh >> (2 * ib)) & 3) as u8;
            let ls = (low | (high << 4)) as i32 - 32;
            u.sc[2 * ib] = ls;
            u.sc[2 * ib + 1] = ls;
            let q = ld_u8(&self.qs[16 * ib..]);
            u.put(2 * ib, vqtbl1q_s8(table, vandq_u8(q, m4)));
            u.put(2 * ib + 1, vqtbl1q_s8(table, vshrq_n_u8::<4>(q)));
        }
        u.d = f16(self.d);
    }
}

/// `Σ_k mn[k]·bsums[k]`, exact.
#[inline(always)]
unsafe fn min_sum(u: &KUnpacked, y: &BlockQ8K) -> i32 {
    let m0 = vld1q_s16(u.mn.as_ptr());
    let m1 = vld1q_s16(u.mn.as_ptr().add(8));
    let b0 = vld1q_s16(y.bsums.as_ptr());
    let b1 = vld1q_s16(y.bsums.as_ptr().add(8));
    dot_i16x8(m0, b0) + dot_i16x8(m1, b1)
}

/// One super-block's contribution to a result, from its exact integer sum `isum` (the one-row
/// kernel's float steps).
#[inline(always)]
unsafe fn k_term<K: KQuant>(u: &KUnpacked, y: &BlockQ8K, isum: i32) -> f32 {
    if K::MIN {
        let d = u.d * y.d;
        let dmin = u.dmin * y.d;
        d * isum as f32 - dmin * min_sum(u, y) as f32
    } else {
        u.d * y.d * isum as f32
    }
}

/// The dots of one unpacked weight row `x` with `T` activation rows `ys` (each as long), added
/// to `sum` super-block by super-block.
///
/// # Safety
/// The CPU must run `D`'s instructions.
#[inline(always)]
pub(super) unsafe fn k_tile<D: I8Dot, K: KQuant, const T: usize>(
    x: &[KUnpacked],
    ys: [&[BlockQ8K]; T],
) -> [f32; T] {
    let mut sum = [0.0f32; T];
    for (b, u) in x.iter().enumerate() {
        let yb: [&BlockQ8K; T] = std::array::from_fn(|t| &ys[t][b]);
        let mut isum = [vdupq_n_s32(0); T];
        for k in 0..16 {
            let w = vld1q_s8(u.q.as_ptr().add(16 * k));
            for t in 0..T {
                let p = dot16::<D>(w, ld_s8(&yb[t].qs[16 * k..]));
                isum[t] = vmlaq_n_s32(isum[t], p, u.sc[k]);
            }
        }
        for t in 0..T {
            sum[t] += k_term::<K>(u, yb[t], vaddvq_s32(isum[t]));
        }
    }
    sum
}

/// Two unpacked super-blocks interleaved for `smmla`: per group of 16 weights, the first 8
/// bytes of each row, then the second 8 of each; and the scales as `[s0, s0, s1, s1]`.
#[derive(Clone, Copy)]
#[repr(C, align(16))]
pub(super) struct KPair {
    q: [i8; 2 * QK_K],
    sc: [i32; 64],
}

impl KPair {
    /// All zeros (a buffer to interleave into).
    pub(super) const ZERO: KPair = KPair {
        q: [0; 2 * QK_K],
        sc: [0; 64],
    };

    /// Interleaves `u0` and `u1` into `self`.
    ///
    /// # Safety
    /// NEON (baseline on aarch64).
    #[inline(always)]
    pub(super) unsafe fn set(&mut self, u0: &KUnpacked, u1: &KUnpacked) {
        for k in 0..16 {
            let a = vreinterpretq_s64_s8(vld1q_s8(u0.q.as_ptr().add(16 * k)));
            let b = vreinterpretq_s64_s8(vld1q_s8(u1.q.as_ptr().add(16 * k)));
            let p = self.q.as_mut_ptr().add(32 * k);
            vst1q_s8(p, vreinterpretq_s8_s64(vzip1q_s64(a, b)));
            vst1q_s8(p.add(16), vreinterpretq_s8_s64(vzip2q_s64(a, b)));
            self.sc[4 * k..4 * k + 4].copy_from_slice(&[u0.sc[k], u0.sc[k], u1.sc[k], u1.sc[k]]);
        }
    }
}

/// `smmla`: adds the 2×2 products of the two 8-byte rows of `a` with the two of `b` to `acc`
/// (`[a0·b0, a0·b1, a1·b0, a1·b1]`).
///
/// # Safety
/// The CPU must have i8mm; only inlined into `#[target_feature(enable = "i8mm")]` code.
#[inline(always)]
unsafe fn smmla(mut acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
    asm!("smmla {0:v}.4s, {1:v}.16b, {2:v}.16b", inout(vreg) acc, in(vreg) a, in(vreg) b,
         options(pure, nomem, nostack, preserves_flags));
    acc
}

/// The dots of the two weight rows `(x0, x1)` (unpacked, and interleaved in `xp`) with the
/// two activation rows `(y0, y1)`: `[x0·y0, x0·y1, x1·y0, x1·y1]`.
///
/// # Safety
/// The CPU must have i8mm.
#[inline(always)]
pub(super) unsafe fn k_tile_mm<K: KQuant>(
    x0: &[KUnpacked],
    x1: &[KUnpacked],
    xp: &[KPair],
    y0: &[BlockQ8K],
    y1: &[BlockQ8K],
) -> [f32; 4] {
    let mut sum = [0.0f32; 4];
    for (b, p) in xp.iter().enumerate() {
        let (ya, yb) = (&y0[b], &y1[b]);
        let mut isum = vdupq_n_s32(0);
        for k in 0..16 {
            let w0 = vld1q_s8(p.q.as_ptr().add(32 * k));
            let w1 = vld1q_s8(p.q.as_ptr().add(32 * k + 16));
            let a = vreinterpretq_s64_s8(ld_s8(&ya.qs[16 * k..]));
            let c = vreinterpretq_s64_s8(ld_s8(&yb.qs[16 * k..]));
            let a0 = vreinterpretq_s8_s64(vzip1q_s64(a, c));
            let a1 = vreinterpretq_s8_s64(vzip2q_s64(a, c));
            let m = smmla(smmla(vdupq_n_s32(0), w0, a0), w1, a1);
            isum = vmlaq_s32(isum, m, vld1q_s32(p.sc.as_ptr().add(4 * k)));
        }
        let mut is = [0i32; 4];
        vst1q_s32(is.as_mut_ptr(), isum);
        sum[0] += k_term::<K>(&x0[b], ya, is[0]);
        sum[1] += k_term::<K>(&x0[b], yb, is[1]);
        sum[2] += k_term::<K>(&x1[b], ya, is[2]);
        sum[3] += k_term::<K>(&x1[b], yb, is[3]);
    }
    sum
}
