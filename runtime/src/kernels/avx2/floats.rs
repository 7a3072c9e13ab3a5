//! The float types (F16, BF16, F32) against themselves.

use super::*;

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
pub(super) unsafe fn load_f16x8(p: *const u8, i: usize) -> __m256 {
    _mm256_cvtph_ps(_mm_loadu_si128(p.add(2 * i) as *const __m128i))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn load_f16(p: *const u8, i: usize) -> f32 {
    h2f(F16Le([*p.add(2 * i), *p.add(2 * i + 1)]))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn load_bf16x8(p: *const u8, i: usize) -> __m256 {
    let h = _mm256_cvtepu16_epi32(_mm_loadu_si128(p.add(2 * i) as *const __m128i));
    _mm256_castsi256_ps(_mm256_slli_epi32::<16>(h))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn load_bf16(p: *const u8, i: usize) -> f32 {
    f32::from_bits((u16::from_le_bytes([*p.add(2 * i), *p.add(2 * i + 1)]) as u32) << 16)
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn load_f32x8(p: *const u8, i: usize) -> __m256 {
    _mm256_loadu_ps(p.add(4 * i) as *const f32)
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn load_f32(p: *const u8, i: usize) -> f32 {
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
