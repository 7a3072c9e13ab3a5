//! The activation quantizers (Q8_0, Q8_1, Q8_K, F16, BF16).

use super::*;

/// Largest |x| of 32 values at `p`; NaN lanes are ignored (like ggml's `amax` loop).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn amax32(p: *const f32) -> f32 {
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
pub(super) unsafe fn pack32(q: [__m256i; 4]) -> __m256i {
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
pub(super) unsafe fn round_even_i8(v: __m256) -> __m256i {
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
pub(super) unsafe fn q8_block(p: *const f32) -> (f32, [__m256i; 4]) {
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
