//! Helpers shared by the kernels (all inlined into them; they share their target features).

use super::*;

/// An f16 scale as f32 (exact, via F16C).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn h2f(h: F16Le) -> f32 {
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(
        u16::from_le_bytes(h.0) as i32
    )))
}

/// Sum of the 8 lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn hsum_ps(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

/// Sum of the 8 lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn hsum_epi32(v: __m256i) -> i32 {
    let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
    let s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b01>(s));
    _mm_cvtsi128_si32(s)
}

/// Maximum of the 8 lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn hmax_ps(v: __m256) -> f32 {
    let s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_max_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

/// 32 bytes from the 16 bytes at `p`: low nibbles in lanes 0..16, high nibbles in 16..32 (the
/// weight order of Q4_0-style blocks), each in 0..16.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn nibbles32(p: *const u8) -> __m256i {
    // Broadcasting the 16 bytes to both halves is a pure load; one variable shift then moves
    // the high half's high nibbles down (bits crossing into the byte below are masked off).
    let both = _mm256_broadcastsi128_si256(_mm_loadu_si128(p as *const __m128i));
    let shifted = _mm256_srlv_epi32(both, _mm256_setr_epi32(0, 0, 0, 0, 4, 4, 4, 4));
    _mm256_and_si256(shifted, _mm256_set1_epi8(0x0f))
}

/// 32 bytes, byte `k` 0xFF if bit `k` of `bits` is set, else 0.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn bits32(bits: u32) -> __m256i {
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
pub(super) unsafe fn dot_u8i8(x: __m256i, y: __m256i) -> __m256i {
    _mm256_madd_epi16(_mm256_maddubs_epi16(x, y), _mm256_set1_epi16(1))
}

/// 32 signed bytes times 32 signed bytes (y never -128), summed in groups of 4 into 8 i32.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot_i8i8(x: __m256i, y: __m256i) -> __m256i {
    dot_u8i8(_mm256_sign_epi8(x, x), _mm256_sign_epi8(y, x))
}

/// Like [`dot_i8i8`] but stops at 16 i16 pair sums (for a later `madd` with scales).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot_i8i8_pairs(x: __m256i, y: __m256i) -> __m256i {
    _mm256_maddubs_epi16(_mm256_sign_epi8(x, x), _mm256_sign_epi8(y, x))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn load256(p: *const u8) -> __m256i {
    _mm256_loadu_si256(p as *const __m256i)
}

pub(super) const fn scale_shuffle_8() -> [[u8; 32]; 8] {
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

pub(super) const fn scale_shuffle_pairs() -> [[u8; 32]; 4] {
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
pub(super) static SHUF_SCALE8: [[u8; 32]; 8] = scale_shuffle_8();
/// `_mm256_shuffle_epi8` controls that broadcast i16 lane `2p` of the low half over the low
/// half and lane `2p + 1` of the high half over the high half (scales of two 16-weight groups).
pub(super) static SHUF_SCALE_PAIR: [[u8; 32]; 4] = scale_shuffle_pairs();

/// The i16 scale `k` (0..8) of `s` (both 128-bit halves holding the same 8 scales) in all lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn scale8(s: __m256i, k: usize) -> __m256i {
    _mm256_shuffle_epi8(s, load256(SHUF_SCALE8[k].as_ptr()))
}

/// For 32 weights made of two 16-weight groups: scale `2p` of `s` over the low 16 lanes and
/// scale `2p + 1` over the high 16 (`s`: both halves hold the same 8 i16 scales).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn scale_pair(s: __m256i, p: usize) -> __m256i {
    _mm256_shuffle_epi8(s, load256(SHUF_SCALE_PAIR[p].as_ptr()))
}

/// 16 i8 scales as two 256-bit vectors of i16, each half of the first holding scales 0..8 and
/// each half of the second scales 8..16.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn split_scales16(sc: __m128i) -> (__m256i, __m256i) {
    let lo = _mm_cvtepi8_epi16(sc);
    let hi = _mm_cvtepi8_epi16(_mm_srli_si128::<8>(sc));
    (
        _mm256_broadcastsi128_si256(lo),
        _mm256_broadcastsi128_si256(hi),
    )
}

/// The four lanes of `v`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn lanes4(v: __m128) -> [f32; 4] {
    let mut out = [0f32; 4];
    _mm_storeu_ps(out.as_mut_ptr(), v);
    out
}

/// Four f16 values packed into a u64 (lane k in bits 16k..16k+16).
#[inline(always)]
pub(super) fn pack4(h: [F16Le; 4]) -> u64 {
    h.iter().enumerate().fold(0, |acc, (k, v)| {
        acc | (u16::from_le_bytes(v.0) as u64) << (16 * k)
    })
}

/// `[a0·b0, a1·b1, a2·b2, a3·b3]` for four f16 values packed in `a` and four in `b`: one F16C
/// conversion for the scales of four blocks instead of eight scalar ones.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn mul_f16x4(a: u64, b: u64) -> __m128 {
    let f = _mm256_cvtph_ps(_mm_set_epi64x(b as i64, a as i64));
    _mm_mul_ps(_mm256_castps256_ps128(f), _mm256_extractf128_ps::<1>(f))
}

/// The lane sums of four i32 vectors, as `[Σs0, Σs1, Σs2, Σs3]` split over the two halves:
/// lane k of the low half plus lane k of the high half is Σs_k.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn hsum4_epi32(s: [__m256i; 4]) -> __m256i {
    _mm256_hadd_epi32(_mm256_hadd_epi32(s[0], s[1]), _mm256_hadd_epi32(s[2], s[3]))
}
