//! Attention of one query row over the f16 KV cache, with llama.cpp's CPU flash-attention
//! arithmetic.
//!
//! llama.cpp (with flash attention, its default on CPU) computes a batch of fewer than
//! [`TILE`] query rows, and every decode step, one row at a time: Q is rounded to f16, each
//! score is an f16·f16 dot product accumulated in f32, scaled (and soft-capped), and the
//! softmax is taken online while V is accumulated **in f16** (the running sum is rounded to
//! f16 after every position and rescaled in f16 when the maximum grows). Batches of at least
//! [`TILE`] rows go through its tiled kernel instead: Q, K and V in f32, tiles of [`TILE`]
//! positions, an f32 accumulator. [`attend_f16`] and [`attend_f32`] follow each.

use half::f16;

/// Rows per query tile (and positions per KV tile) of llama.cpp's tiled kernel; batches
/// with fewer query rows use the row-at-a-time kernel.
pub const TILE: usize = 64;

/// Dot product of an f32 row (holding f16-representable values) with an f16 row, in the
/// order ggml's 512-bit f16 dot uses: four accumulators of 16 lanes over steps of 64 (fused
/// multiply-add), the accumulators summed pairwise, the lanes by halving; a tail of fewer
/// than 64 is added one by one in f64.
pub fn dot_f16(a: &[f32], b: &[f16]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if x86::available() {
        // SAFETY: AVX2, FMA and F16C were detected at run time.
        return unsafe { x86::dot_f16(a, b) };
    }
    dot_f16_scalar(a, b)
}

/// The portable [`dot_f16`], the reference the SIMD one is tested against bit for bit.
pub fn dot_f16_scalar(a: &[f32], b: &[f16]) -> f32 {
    const LANES: usize = 16;
    const STEP: usize = 64;
    let mut acc = [[0f32; LANES]; 4];
    let np = a.len().min(b.len()) / STEP * STEP;
    for (xs, ys) in a[..np].chunks_exact(STEP).zip(b[..np].chunks_exact(STEP)) {
        for (j, accj) in acc.iter_mut().enumerate() {
            for (l, aj) in accj.iter_mut().enumerate() {
                let i = j * LANES + l;
                *aj = xs[i].mul_add(ys[i].to_f32(), *aj);
            }
        }
    }
    let mut x = [0f32; LANES];
    for (l, xl) in x.iter_mut().enumerate() {
        *xl = (acc[0][l] + acc[2][l]) + (acc[1][l] + acc[3][l]);
    }
    let mut half = LANES / 2;
    while half > 0 {
        for l in 0..half {
            x[l] += x[l + half];
        }
        half /= 2;
    }
    let mut sum = x[0] as f64;
    for (xa, yb) in a[np..].iter().zip(&b[np..]) {
        sum += (xa * yb.to_f32()) as f64;
    }
    sum as f32
}

/// The score of a dot product: `dot * scale`, or with soft-capping `cap * tanh(dot * (scale /
/// cap))`, in llama.cpp's order of operations.
#[inline]
fn score(dot: f32, scale: f32, softcap: Option<f32>) -> f32 {
    match softcap {
        Some(cap) => cap * (dot * (scale / cap)).tanh(),
        None => dot * scale,
    }
}

/// One query row against `keys`/`values` (`n_kv` rows each of `dk`/`dv` f16 values, the
/// strides `k_stride`/`v_stride` apart), row-at-a-time kernel: `q` must already be rounded
/// to f16 values. Writes the `dv` outputs to `out`; `acc` is scratch of `dv` values.
#[allow(clippy::too_many_arguments)]
pub fn attend_f16(
    q: &[f32],
    keys: &[f16],
    values: &[f16],
    (dk, k_stride, dv, v_stride): (usize, usize, usize, usize),
    n_kv: usize,
    scale: f32,
    softcap: Option<f32>,
    acc: &mut [f16],
    out: &mut [f32],
) {
    acc[..dv].fill(f16::ZERO);
    let mut m = f32::NEG_INFINITY;
    let mut sum = 0f32;
    for j in 0..n_kv {
        let kr = &keys[j * k_stride..j * k_stride + dk];
        let s = score(dot_f16(q, kr), scale, softcap);
        let (mut ms, mut vs) = (1.0f32, 1.0f32);
        if s > m {
            let old = m;
            m = s;
            ms = (old - m).exp();
            scale_f16(&mut acc[..dv], ms);
        } else {
            vs = (s - m).exp();
        }
        let vr = &values[j * v_stride..j * v_stride + dv];
        fma_f16(&mut acc[..dv], vr, vs);
        sum = sum * ms + vs;
    }
    let inv = if sum == 0.0 { 0.0 } else { 1.0 / sum };
    for (o, a) in out[..dv].iter_mut().zip(&acc[..dv]) {
        *o = a.to_f32() * inv;
    }
}

/// `acc[i] = f16(acc[i] · s)`.
fn scale_f16(acc: &mut [f16], s: f32) {
    #[cfg(target_arch = "x86_64")]
    if x86::available() {
        // SAFETY: AVX2, FMA and F16C were detected at run time.
        return unsafe { x86::scale_f16(acc, s) };
    }
    scale_f16_scalar(acc, s)
}

fn scale_f16_scalar(acc: &mut [f16], s: f32) {
    for a in acc.iter_mut() {
        *a = f16::from_f32(a.to_f32() * s);
    }
}

/// `acc[i] = f16(fma(v[i], s, acc[i]))`.
fn fma_f16(acc: &mut [f16], v: &[f16], s: f32) {
    #[cfg(target_arch = "x86_64")]
    if x86::available() {
        // SAFETY: AVX2, FMA and F16C were detected at run time.
        return unsafe { x86::fma_f16(acc, v, s) };
    }
    fma_f16_scalar(acc, v, s)
}

fn fma_f16_scalar(acc: &mut [f16], v: &[f16], s: f32) {
    for (a, &v) in acc.iter_mut().zip(v) {
        *a = f16::from_f32(v.to_f32().mul_add(s, a.to_f32()));
    }
}

/// AVX2 + FMA + F16C versions of the row-at-a-time kernel's inner loops, computing exactly
/// what the scalar ones compute (the same fused operations in the same order; F16C rounds to
/// nearest even as `half` does).
#[cfg(target_arch = "x86_64")]
mod x86 {
    use half::f16;
    use std::arch::x86_64::*;

    /// Whether this CPU has AVX2, FMA and F16C (the kernels' own check; std caches it).
    #[inline]
    pub fn available() -> bool {
        crate::kernels::Isa::Avx2.is_available()
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load_f16(p: *const f16) -> __m256 {
        _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i))
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn store_f16(p: *mut f16, v: __m256) {
        _mm_storeu_si128(
            p as *mut __m128i,
            _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(v),
        )
    }

    /// [`super::dot_f16_scalar`]: accumulator `j` of 16 lanes is the register pair
    /// `acc[2j], acc[2j + 1]`.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_f16(a: &[f32], b: &[f16]) -> f32 {
        let n = a.len().min(b.len());
        let np = n / 64 * 64;
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let mut acc = [_mm256_setzero_ps(); 8];
        let mut i = 0;
        while i < np {
            for (k, r) in acc.iter_mut().enumerate() {
                let x = _mm256_loadu_ps(pa.add(i + 8 * k));
                *r = _mm256_fmadd_ps(x, load_f16(pb.add(i + 8 * k)), *r);
            }
            i += 64;
        }
        // x[l] = (acc0 + acc2) + (acc1 + acc3), lanes 0..8 and 8..16.
        let lo = _mm256_add_ps(_mm256_add_ps(acc[0], acc[4]), _mm256_add_ps(acc[2], acc[6]));
        let hi = _mm256_add_ps(_mm256_add_ps(acc[1], acc[5]), _mm256_add_ps(acc[3], acc[7]));
        let v8 = _mm256_add_ps(lo, hi);
        let v4 = _mm_add_ps(_mm256_castps256_ps128(v8), _mm256_extractf128_ps::<1>(v8));
        let v2 = _mm_add_ps(v4, _mm_movehl_ps(v4, v4));
        let v1 = _mm_add_ss(v2, _mm_shuffle_ps::<0b01>(v2, v2));
        let mut sum = _mm_cvtss_f32(v1) as f64;
        for (xa, yb) in a[np..n].iter().zip(&b[np..n]) {
            sum += (xa * yb.to_f32()) as f64;
        }
        sum as f32
    }

    /// [`super::scale_f16`].
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn scale_f16(acc: &mut [f16], s: f32) {
        let n8 = acc.len() / 8 * 8;
        let p = acc.as_mut_ptr();
        let sv = _mm256_set1_ps(s);
        let mut i = 0;
        while i < n8 {
            store_f16(p.add(i), _mm256_mul_ps(load_f16(p.add(i)), sv));
            i += 8;
        }
        for a in acc[n8..].iter_mut() {
            *a = f16::from_f32(a.to_f32() * s);
        }
    }

    /// [`super::fma_f16`].
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn fma_f16(acc: &mut [f16], v: &[f16], s: f32) {
        let n = acc.len().min(v.len());
        let n8 = n / 8 * 8;
        let (p, pv) = (acc.as_mut_ptr(), v.as_ptr());
        let sv = _mm256_set1_ps(s);
        let mut i = 0;
        while i < n8 {
            let r = _mm256_fmadd_ps(load_f16(pv.add(i)), sv, load_f16(p.add(i)));
            store_f16(p.add(i), r);
            i += 8;
        }
        for (a, &v) in acc[n8..n].iter_mut().zip(&v[n8..n]) {
            *a = f16::from_f32(v.to_f32().mul_add(s, a.to_f32()));
        }
    }
}

/// One query row, tiled kernel: f32 Q, K and V, softmax taken over tiles of [`TILE`]
/// positions (the running maximum updated once per tile), an f32 accumulator. `scores` is
/// scratch of at least [`TILE`] values.
#[allow(clippy::too_many_arguments)]
pub fn attend_f32(
    q: &[f32],
    keys: &[f16],
    values: &[f16],
    (dk, k_stride, dv, v_stride): (usize, usize, usize, usize),
    n_kv: usize,
    scale: f32,
    softcap: Option<f32>,
    scores: &mut [f32],
    out: &mut [f32],
) {
    let out = &mut out[..dv];
    out.fill(0.0);
    let mut m = f32::NEG_INFINITY;
    let mut sum = 0f32;
    let mut j0 = 0;
    while j0 < n_kv {
        let j1 = (j0 + TILE).min(n_kv);
        let tile = &mut scores[..j1 - j0];
        for (s, j) in tile.iter_mut().zip(j0..j1) {
            let kr = &keys[j * k_stride..j * k_stride + dk];
            let dot: f32 = q.iter().zip(kr).map(|(a, b)| a * b.to_f32()).sum();
            *s = score(dot, scale, softcap);
        }
        let tmax = tile.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let new_m = m.max(tmax);
        if new_m > m {
            let ms = (m - new_m).exp();
            for o in out.iter_mut() {
                *o *= ms;
            }
            sum *= ms;
        }
        m = new_m;
        let mut tsum = 0f64;
        for s in tile.iter_mut() {
            *s = (*s - m).exp();
            tsum += *s as f64;
        }
        sum += tsum as f32;
        for (p, j) in tile.iter().zip(j0..j1) {
            let vr = &values[j * v_stride..j * v_stride + dv];
            for (o, &v) in out.iter_mut().zip(vr) {
                *o = p.mul_add(v.to_f32(), *o);
            }
        }
        j0 = j1;
    }
    let inv = if sum == 0.0 { 0.0 } else { 1.0 / sum };
    for o in out.iter_mut() {
        *o *= inv;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(q: &[f32], k: &[f16], v: &[f16], d: usize, n: usize, scale: f32) -> Vec<f32> {
        let mut s: Vec<f64> = (0..n)
            .map(|j| {
                q.iter()
                    .zip(&k[j * d..(j + 1) * d])
                    .map(|(a, b)| *a as f64 * b.to_f64())
                    .sum::<f64>()
                    * scale as f64
            })
            .collect();
        let mx = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let tot: f64 = s
            .iter_mut()
            .map(|x| {
                *x = (*x - mx).exp();
                *x
            })
            .sum();
        (0..d)
            .map(|i| {
                (0..n)
                    .map(|j| s[j] / tot * v[j * d + i].to_f64())
                    .sum::<f64>() as f32
            })
            .collect()
    }

    #[test]
    fn both_kernels_agree_with_exact_attention() {
        let (d, n) = (64, 150);
        let r = |i: usize| ((i * 2654435761) % 1000) as f32 / 500.0 - 1.0;
        let q: Vec<f32> = (0..d).map(|i| f16::from_f32(r(i + 7)).to_f32()).collect();
        let k: Vec<f16> = (0..n * d).map(|i| f16::from_f32(r(i + 99))).collect();
        let v: Vec<f16> = (0..n * d).map(|i| f16::from_f32(r(i + 12345))).collect();
        let want = naive(&q, &k, &v, d, n, 0.125);
        let mut out = vec![0f32; d];
        let mut acc = vec![f16::ZERO; d];
        attend_f16(&q, &k, &v, (d, d, d, d), n, 0.125, None, &mut acc, &mut out);
        for (a, b) in out.iter().zip(&want) {
            assert!((a - b).abs() < 2e-3, "{a} vs {b}");
        }
        let mut scores = vec![0f32; TILE];
        attend_f32(
            &q,
            &k,
            &v,
            (d, d, d, d),
            n,
            0.125,
            None,
            &mut scores,
            &mut out,
        );
        for (a, b) in out.iter().zip(&want) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
    }

    /// The SIMD inner loops compute the scalar ones bit for bit, at every length.
    #[test]
    fn simd_inner_loops_equal_scalar() {
        let r = |i: usize| ((i * 2654435761) % 1999) as f32 / 400.0 - 2.5;
        for n in [0, 1, 7, 8, 63, 64, 65, 80, 128, 130, 200, 256, 300] {
            let a: Vec<f32> = (0..n).map(|i| f16::from_f32(r(i + 3)).to_f32()).collect();
            let b: Vec<f16> = (0..n).map(|i| f16::from_f32(r(i + 77))).collect();
            assert_eq!(
                dot_f16(&a, &b).to_bits(),
                dot_f16_scalar(&a, &b).to_bits(),
                "dot, n={n}"
            );
            for s in [0.0f32, 0.3, 1.0, 1.7e-3, 7.5] {
                let mut x = b.clone();
                let mut y = b.clone();
                scale_f16(&mut x, s);
                scale_f16_scalar(&mut y, s);
                assert_eq!(x, y, "scale, n={n}");
                let v: Vec<f16> = (0..n).map(|i| f16::from_f32(r(i + 5000))).collect();
                fma_f16(&mut x, &v, s);
                fma_f16_scalar(&mut y, &v, s);
                assert_eq!(x, y, "fma, n={n}");
            }
        }
    }

    #[test]
    fn f16_dot_matches_f64_dot() {
        let a: Vec<f32> = (0..200).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f16> = (0..200)
            .map(|i| f16::from_f32((i as f32 * 0.11).cos()))
            .collect();
        let want: f64 = a.iter().zip(&b).map(|(x, y)| *x as f64 * y.to_f64()).sum();
        assert!((dot_f16(&a, &b) as f64 - want).abs() < 1e-4);
        assert_eq!(dot_f16(&[], &[]), 0.0);
    }
}
