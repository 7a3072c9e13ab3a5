//! The 256-weight K-quants (Q2_K..Q6_K) and IQ4_XS against Q8_K: one-row kernels, and four-row
//! kernels for Q4_K, Q5_K and Q6_K.

use super::*;

/// The 16 bsums of a Q8_K block as 16 i16 lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn bsums(y: &BlockQ8K) -> __m256i {
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
pub(super) fn k4_scales_mins(p: &[u8; 12]) -> (u64, u64) {
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
pub(super) unsafe fn k4_prepare(scales: &[u8; 12], by: &BlockQ8K) -> (__m256i, __m256i) {
    let (s, mn_pairs) = k4_scales_mins_pairs(scales);
    (s, _mm256_madd_epi16(mn_pairs, bsums(by)))
}

/// The weight-only half of [`k4_prepare`]: the 8 scales as i16 (both halves) and each min
/// twice as i16 (`min_j` for the pair of bsums `2j`, `2j + 1`).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn k4_scales_mins_pairs(scales: &[u8; 12]) -> (__m256i, __m256i) {
    let (sc, mn) = k4_scales_mins(scales);
    let s = _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(_mm_cvtsi64_si128(sc as i64)));
    let mn = _mm_cvtsi64_si128(mn as i64);
    (s, _mm256_cvtepu8_epi16(_mm_unpacklo_epi8(mn, mn)))
}

/// Adds one Q4_K/Q5_K super-block to `acc = (Σ, Σ_min)` in the float order of llama.cpp's x86
/// build for Q4_K (its repacked `q4_K_8x8` kernels, used for every Q4_K matrix whose row count
/// is a multiple of 8): `sumi` (Σ scale · q · y) and `msum` (Σ min · bsum) are each summed to
/// one exact i32, converted, and added with one FMA of `d_x · d_y` (`dmin_x · d_y`) into its
/// own scalar; the dot product is `Σ - Σ_min` ([`k4_result`]).
#[inline(always)]
pub(super) unsafe fn k4_accumulate(
    sumi: __m256i,
    msum: __m256i,
    (dy, dx, dminx): (f32, f32, f32),
    acc: &mut (f32, f32),
) {
    acc.0 = (hsum_epi32(sumi) as f32).mul_add(dx * dy, acc.0);
    acc.1 = (hsum_epi32(msum) as f32).mul_add(dminx * dy, acc.1);
}

/// The dot product from the sums of [`k4_accumulate`].
#[inline(always)]
pub(super) fn k4_result(acc: (f32, f32)) -> f32 {
    acc.0 - acc.1
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
    let mut acc = (0.0f32, 0.0f32);
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
        k4_accumulate(sumi, msum, (by.d, h2f(bx.d), h2f(bx.dmin)), &mut acc);
    }
    k4_result(acc)
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
    let mut acc = (0.0f32, 0.0f32);
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
        k4_accumulate(sumi, msum, (by.d, h2f(bx.d), h2f(bx.dmin)), &mut acc);
    }
    k4_result(acc)
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
pub(super) unsafe fn unpack_q4_k(bx: &BlockQ4K) -> [__m256i; 8] {
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
pub(super) unsafe fn unpack_q5_k(bx: &BlockQ5K) -> [__m256i; 8] {
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
pub(super) unsafe fn unpack_q6_k(bx: &BlockQ6K) -> [__m256i; 8] {
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
pub(super) fn lens4<W, A>(x: &[W], y: &[&[A]; 4]) -> bool {
    y.iter().all(|y| y.len() == x.len())
}

/// The per-activation-row half of the four-row Q4_K/Q5_K kernels for super-block `i`: `q`
/// holds its 256 unpacked weights (8 x 32, unsigned), `(d, dmin, scales)` its header; adds the
/// block to each row's accumulator in the one-row kernels' order.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn k4_four_rows(
    q: &[__m256i; 8],
    (d, dmin, scales): (F16Le, F16Le, &[u8; 12]),
    y: [&[BlockQ8K]; 4],
    i: usize,
    acc: &mut [(f32, f32); 4],
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
        k4_accumulate(sumi, msum, (by.d, dx, dminx), acc);
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
    let mut acc = [(0.0f32, 0.0f32); 4];
    for (i, bx) in x.iter().enumerate() {
        let q = unpack_q4_k(bx);
        k4_four_rows(&q, (bx.d, bx.dmin, &bx.scales), y, i, &mut acc);
    }
    acc.map(k4_result)
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
    let mut acc = [(0.0f32, 0.0f32); 4];
    for (i, bx) in x.iter().enumerate() {
        let q = unpack_q5_k(bx);
        k4_four_rows(&q, (bx.d, bx.dmin, &bx.scales), y, i, &mut acc);
    }
    acc.map(k4_result)
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
