//! Attention of one query row over the f16 KV cache, with llama.cpp's CPU flash-attention
//! arithmetic.
//!
//! llama.cpp (with flash attention, its default on CPU) computes a batch of fewer than
//! [`TILE`] query rows, and every decode step, one row at a time: Q is rounded to f16, each
//! score is an f16·f16 dot product accumulated in f32, scaled (and soft-capped), and the
//! softmax is taken online while V is accumulated **in f16** (the running sum is rounded to
//! f16 after every position and rescaled in f16 when the maximum grows). Batches of at least
//! [`TILE`] rows go through its tiled kernel instead: Q, K and V in f32, tiles of [`TILE`]
//! query rows and [`TILE`] positions, an f32 accumulator. [`attend_f16`] and [`attend_tile`]
//! follow each. A cache with quantized keys or values goes through `attn_quant` instead.
//!
//! Every entry point takes the model's [`Isa`]: the AVX2 inner loops run only under
//! [`Isa::Avx2`] (on a CPU that has it), so [`Isa::Scalar`] is scalar here as in the matvec
//! kernels; both give the same bits.

use half::f16;

use crate::kernels::Isa;

/// Rows per query tile (and positions per KV tile) of llama.cpp's tiled kernel; batches
/// with fewer query rows use the row-at-a-time kernel.
pub const TILE: usize = 64;

/// Dot product of an f32 row (holding f16-representable values) with an f16 row, in the
/// order ggml's 512-bit f16 dot uses: four accumulators of 16 lanes over steps of 64 (fused
/// multiply-add), the accumulators summed pairwise, the lanes by halving; a tail of fewer
/// than 64 is added one by one in f64.
pub fn dot_f16(isa: Isa, a: &[f32], b: &[f16]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if x86::usable(isa) {
        // SAFETY: AVX2, FMA and F16C were detected at run time.
        return unsafe { x86::dot_f16(a, b) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = isa; // the SIMD loops are x86-64 only
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
pub(crate) fn score(dot: f32, scale: f32, softcap: Option<f32>) -> f32 {
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
    isa: Isa,
    q: &[f32],
    keys: &[f16],
    values: &[f16],
    dims: (usize, usize, usize, usize),
    n_kv: usize,
    scale: f32,
    softcap: Option<f32>,
    acc: &mut [f16],
    out: &mut [f32],
) {
    attend_f16_sink(
        isa, q, keys, values, dims, n_kv, scale, softcap, None, acc, out,
    )
}

/// The softmax state `(max, sum)` of a row after its attention sink `s` joins it (one more
/// logit in the maximum and the denominator, no value), as llama.cpp applies it after the
/// last key: returns the factor the accumulated values are scaled by and the new sum.
#[inline]
pub(crate) fn join_sink(s: f32, m: f32, sum: f32) -> (f32, f32) {
    let (ms, vs) = if s > m {
        ((m - s).exp(), 1.0)
    } else {
        (1.0, (s - m).exp())
    };
    (ms, sum.mul_add(ms, vs))
}

/// [`attend_f16`] with an optional attention sink (gpt-oss: one logit per head that joins the
/// softmax's maximum and denominator but adds no value).
#[allow(clippy::too_many_arguments)]
pub fn attend_f16_sink(
    isa: Isa,
    q: &[f32],
    keys: &[f16],
    values: &[f16],
    (dk, k_stride, dv, v_stride): (usize, usize, usize, usize),
    n_kv: usize,
    scale: f32,
    softcap: Option<f32>,
    sink: Option<f32>,
    acc: &mut [f16],
    out: &mut [f32],
) {
    acc[..dv].fill(f16::ZERO);
    let mut m = f32::NEG_INFINITY;
    let mut sum = 0f32;
    for j in 0..n_kv {
        let kr = &keys[j * k_stride..j * k_stride + dk];
        let s = score(dot_f16(isa, q, kr), scale, softcap);
        let (mut ms, mut vs) = (1.0f32, 1.0f32);
        if s > m {
            let old = m;
            m = s;
            ms = (old - m).exp();
            scale_f16(isa, &mut acc[..dv], ms);
        } else {
            vs = (s - m).exp();
        }
        let vr = &values[j * v_stride..j * v_stride + dv];
        fma_f16(isa, &mut acc[..dv], vr, vs);
        sum = sum.mul_add(ms, vs);
    }
    for (o, a) in out[..dv].iter_mut().zip(&acc[..dv]) {
        *o = a.to_f32();
    }
    if let Some(s) = sink {
        let (ms, new_sum) = join_sink(s, m, sum);
        if ms != 1.0 {
            for o in out[..dv].iter_mut() {
                *o *= ms;
            }
        }
        sum = new_sum;
    }
    let inv = if sum == 0.0 { 0.0 } else { 1.0 / sum };
    for o in out[..dv].iter_mut() {
        *o *= inv;
    }
}

/// `acc[i] = f16(acc[i] · s)`.
pub(crate) fn scale_f16(isa: Isa, acc: &mut [f16], s: f32) {
    #[cfg(target_arch = "x86_64")]
    if x86::usable(isa) {
        // SAFETY: AVX2, FMA and F16C were detected at run time.
        return unsafe { x86::scale_f16(acc, s) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = isa; // the SIMD loops are x86-64 only
    scale_f16_scalar(acc, s)
}

fn scale_f16_scalar(acc: &mut [f16], s: f32) {
    for a in acc.iter_mut() {
        *a = f16::from_f32(a.to_f32() * s);
    }
}

/// `acc[i] = f16(fma(v[i], s, acc[i]))`.
pub(crate) fn fma_f16(isa: Isa, acc: &mut [f16], v: &[f16], s: f32) {
    #[cfg(target_arch = "x86_64")]
    if x86::usable(isa) {
        // SAFETY: AVX2, FMA and F16C were detected at run time.
        return unsafe { x86::fma_f16(acc, v, s) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = isa; // the SIMD loops are x86-64 only
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
    use crate::kernels::Isa;
    use half::f16;
    use std::arch::x86_64::*;

    /// Whether to run these loops: the model chose [`Isa::Avx2`] and this CPU has AVX2, FMA
    /// and F16C (checked again, as the entry points are public; std caches it).
    #[inline]
    pub fn usable(isa: Isa) -> bool {
        isa == Isa::Avx2 && isa.is_available()
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

    /// [`super::attend_tile`], compiled for AVX2 + FMA.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn attend_tile(
        q: &[f32],
        p0: usize,
        cache: &super::TileCache<'_>,
        sink: Option<f32>,
        scratch: &mut super::TileScratch,
        out: &mut [f32],
    ) {
        super::attend_tile_body(q, p0, cache, sink, scratch, out)
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

/// The cache one query tile attends over: the keys and values of one KV head, position `j`'s
/// row at `j * k_stride` / `j * v_stride`, and the scoring parameters.
#[derive(Clone, Copy)]
pub struct TileCache<'a> {
    /// Keys from position 0, `dk` values a row.
    pub keys: &'a [f16],
    /// Values from position 0, `dv` values a row.
    pub values: &'a [f16],
    /// Key row length.
    pub dk: usize,
    /// Distance between key rows.
    pub k_stride: usize,
    /// Value row length.
    pub dv: usize,
    /// Distance between value rows.
    pub v_stride: usize,
    /// Score scale.
    pub scale: f32,
    /// Logit soft-cap of the scores, where the model has one.
    pub softcap: Option<f32>,
    /// Sliding window (a query at `p` sees positions above `p - window`), on windowed layers.
    pub window: Option<usize>,
}

/// Scratch of [`attend_tile`], reused across calls.
#[derive(Default)]
pub struct TileScratch {
    kt: Vec<f32>,
    vt: Vec<f32>,
    row: Vec<f32>,
    s: Vec<f32>,
    m: Vec<f32>,
    sum: Vec<f32>,
}

/// A tile of up to [`TILE`] consecutive query rows of one head, tiled kernel (llama.cpp's
/// for batches of at least [`TILE`] rows): f32 Q, K and V; key/value tiles of [`TILE`]
/// positions starting at multiples of [`TILE`]; each score a fused multiply-add chain over
/// the head dimension, scaled (and soft-capped); the softmax maximum of each row updated once
/// per tile; the f32 output accumulated as a fused multiply-add chain over positions.
///
/// Query row `i` (`q[i * dk..]`) is at position `p0 + i` and sees the causal (and windowed)
/// positions before it; its `dv` outputs go to `out[i * dv..]`.
pub fn attend_tile(
    isa: Isa,
    q: &[f32],
    p0: usize,
    cache: &TileCache<'_>,
    scratch: &mut TileScratch,
    out: &mut [f32],
) {
    attend_tile_sink(isa, q, p0, cache, None, scratch, out)
}

/// [`attend_tile`] with an optional attention sink (see [`attend_f16_sink`]), joined to each
/// row after its last key tile.
pub fn attend_tile_sink(
    isa: Isa,
    q: &[f32],
    p0: usize,
    cache: &TileCache<'_>,
    sink: Option<f32>,
    scratch: &mut TileScratch,
    out: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if x86::usable(isa) {
        // SAFETY: AVX2, FMA and F16C were detected at run time.
        return unsafe { x86::attend_tile(q, p0, cache, sink, scratch, out) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = isa; // the SIMD loops are x86-64 only
    attend_tile_body(q, p0, cache, sink, scratch, out)
}

/// `e^x` in f32 to about one ulp, written so that loops over it vectorize (the same value
/// whether or not they do): `x = n·ln 2 + r` with `|r| <= ln 2 / 2`, a degree-7 Taylor
/// polynomial for `e^r`, and `2^n` built from its bits. 0 below -87, infinity above 88.
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split in a part with trailing zero bits (exact products with small n) and the rest.
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // Adding 1.5 * 2^23 rounds to an integer (ties to even) in the low mantissa bits.
    const MAGIC: f32 = 12_582_912.0;
    let xc = x.clamp(-87.0, 88.0);
    let t = xc.mul_add(LOG2E, MAGIC);
    let n = t - MAGIC;
    let ni = (t.to_bits() as i32).wrapping_sub(MAGIC.to_bits() as i32);
    let r = (-n).mul_add(LN2_LO, (-n).mul_add(LN2_HI, xc));
    let mut p: f32 = 1.0 / 5040.0;
    p = p.mul_add(r, 1.0 / 720.0);
    p = p.mul_add(r, 1.0 / 120.0);
    p = p.mul_add(r, 1.0 / 24.0);
    p = p.mul_add(r, 1.0 / 6.0);
    p = p.mul_add(r, 0.5);
    p = p.mul_add(r, 1.0);
    p = p.mul_add(r, 1.0);
    let two_n = f32::from_bits(((ni + 127) as u32) << 23);
    let y = p * two_n;
    if x < -87.0 {
        0.0
    } else if x > 88.0 {
        f32::INFINITY
    } else if x.is_nan() {
        x
    } else {
        y
    }
}

#[inline(always)]
fn attend_tile_body(
    q: &[f32],
    p0: usize,
    c: &TileCache<'_>,
    sink: Option<f32>,
    sc: &mut TileScratch,
    out: &mut [f32],
) {
    use half::slice::HalfFloatSliceExt;
    let (dk, dv) = (c.dk, c.dv);
    let nq = (q.len() / dk.max(1)).min(out.len() / dv.max(1)).min(TILE);
    if nq == 0 {
        return;
    }
    let out = &mut out[..nq * dv];
    out.fill(0.0);
    sc.kt.resize(dk * TILE, 0.0);
    sc.vt.resize(TILE * dv, 0.0);
    sc.row.resize(dk.max(dv), 0.0);
    sc.s.resize(TILE * TILE, 0.0);
    sc.m.clear();
    sc.m.resize(nq, f32::NEG_INFINITY);
    sc.sum.clear();
    sc.sum.resize(nq, 0.0);
    let lo_of = |p: usize| c.window.map_or(0, |w| (p + 1).saturating_sub(w));
    let end = p0 + nq; // one past the last position any row sees
    let mut j0 = lo_of(p0) / TILE * TILE;
    let (qscale, cap) = match c.softcap {
        Some(cap) => (c.scale / cap, cap),
        None => (c.scale, 1.0),
    };
    while j0 < end {
        let nt = (end - j0).min(TILE);
        // K tile transposed (dk × TILE, positions contiguous), V tile (TILE × dv); zeros past
        // the last position.
        for j in 0..nt {
            let kr = &c.keys[(j0 + j) * c.k_stride..(j0 + j) * c.k_stride + dk];
            kr.convert_to_f32_slice(&mut sc.row[..dk]);
            for (d, &v) in sc.row[..dk].iter().enumerate() {
                sc.kt[d * TILE + j] = v;
            }
            let vr = &c.values[(j0 + j) * c.v_stride..(j0 + j) * c.v_stride + dv];
            vr.convert_to_f32_slice(&mut sc.vt[j * dv..(j + 1) * dv]);
        }
        for j in nt..TILE {
            for d in 0..dk {
                sc.kt[d * TILE + j] = 0.0;
            }
        }
        for i in 0..nq {
            let p = p0 + i;
            let (lo, hi) = (lo_of(p), p + 1); // visible positions lo..hi
            if hi <= j0 || lo >= j0 + nt {
                continue;
            }
            // Scores of the whole tile: a fused chain over the head dimension per position.
            let mut acc = [0f32; TILE];
            let qi = &q[i * dk..(i + 1) * dk];
            for (d, &a) in qi.iter().enumerate() {
                let kd: &[f32; TILE] = sc.kt[d * TILE..(d + 1) * TILE].try_into().unwrap();
                for (s, &k) in acc.iter_mut().zip(kd) {
                    *s = a.mul_add(k, *s);
                }
            }
            let srow: &mut [f32; TILE] = (&mut sc.s[i * TILE..(i + 1) * TILE]).try_into().unwrap();
            for (j, (s, &a)) in srow.iter_mut().zip(&acc).enumerate() {
                let v = a * qscale;
                let v = if c.softcap.is_some() {
                    cap * v.tanh()
                } else {
                    v
                };
                let pos = j0 + j;
                *s = if pos >= lo && pos < hi {
                    v
                } else {
                    f32::NEG_INFINITY
                };
            }
            let tmax = srow.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            if tmax == f32::NEG_INFINITY {
                continue;
            }
            let m_old = sc.m[i];
            let m_new = m_old.max(tmax);
            let oi = &mut out[i * dv..(i + 1) * dv];
            if m_new > m_old {
                let ms = exp_f32(m_old - m_new);
                for o in oi.iter_mut() {
                    *o *= ms;
                }
                sc.sum[i] *= ms;
            }
            sc.m[i] = m_new;
            for s in srow.iter_mut() {
                *s = exp_f32(*s - m_new);
            }
            // Sum of the tile in groups of 8 (pairwise within a group), groups in f64.
            let mut tsum = 0f64;
            for g in srow.chunks_exact(8) {
                let h = [g[0] + g[4], g[1] + g[5], g[2] + g[6], g[3] + g[7]];
                tsum += ((h[0] + h[2]) + (h[1] + h[3])) as f64;
            }
            sc.sum[i] += tsum as f32;
            // out += p · V, a fused chain over the visible positions of the tile (the masked
            // ones have weight 0 and would add nothing).
            let (a, b) = (lo.max(j0) - j0, hi.min(j0 + nt) - j0);
            for (ch, oc) in oi.chunks_mut(TILE).enumerate() {
                let w = oc.len();
                let mut o = [0f32; TILE];
                o[..w].copy_from_slice(oc);
                for (j, &pj) in srow.iter().enumerate().take(b).skip(a) {
                    let vr = &sc.vt[j * dv + ch * TILE..j * dv + ch * TILE + w];
                    for (x, &v) in o[..w].iter_mut().zip(vr) {
                        *x = pj.mul_add(v, *x);
                    }
                }
                oc.copy_from_slice(&o[..w]);
            }
        }
        j0 += TILE;
    }
    for (i, oi) in out.chunks_exact_mut(dv).enumerate() {
        if let Some(s) = sink {
            let (ms, sum) = join_sink(s, sc.m[i], sc.sum[i]);
            if ms != 1.0 {
                for o in oi.iter_mut() {
                    *o *= ms;
                }
            }
            sc.sum[i] = sum;
        }
        let inv = if sc.sum[i] == 0.0 {
            0.0
        } else {
            1.0 / sc.sum[i]
        };
        for o in oi.iter_mut() {
            *o *= inv;
        }
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
        attend_f16(
            Isa::detect(),
            &q,
            &k,
            &v,
            (d, d, d, d),
            n,
            0.125,
            None,
            &mut acc,
            &mut out,
        );
        for (a, b) in out.iter().zip(&want) {
            assert!((a - b).abs() < 2e-3, "{a} vs {b}");
        }
        // One query row at position n - 1 sees all n positions.
        let cache = TileCache {
            keys: &k,
            values: &v,
            dk: d,
            k_stride: d,
            dv: d,
            v_stride: d,
            scale: 0.125,
            softcap: None,
            window: None,
        };
        attend_tile(
            Isa::detect(),
            &q,
            n - 1,
            &cache,
            &mut TileScratch::default(),
            &mut out,
        );
        for (a, b) in out.iter().zip(&want) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
    }

    /// A full tile of rows, causal and windowed, against exact attention of each row; the
    /// SIMD build against the portable one bit for bit.
    #[test]
    fn tile_rows_agree_with_exact_attention_and_builds_agree() {
        let r = |i: usize| ((i * 2654435761) % 1000) as f32 / 500.0 - 1.0;
        for (dk, dv, n_pos, p0, nq, window, softcap) in [
            (64, 64, 200, 136, 64, None, None),
            (64, 64, 64, 0, 64, None, None),
            (256, 256, 150, 70, 64, Some(48), None),
            (32, 80, 100, 30, 50, Some(70), Some(30.0)),
            (8, 8, 5, 0, 5, None, None),
        ] {
            // Two KV heads interleaved, the tile reads the second.
            let (ks, vs) = (2 * dk, 2 * dv);
            let k: Vec<f16> = (0..n_pos * ks).map(|i| f16::from_f32(r(i + 99))).collect();
            let v: Vec<f16> = (0..n_pos * vs)
                .map(|i| f16::from_f32(r(i + 12345)))
                .collect();
            let q: Vec<f32> = (0..nq * dk).map(|i| r(i + 7) * 2.0).collect();
            let cache = TileCache {
                keys: &k[dk..],
                values: &v[dv..],
                dk,
                k_stride: ks,
                dv,
                v_stride: vs,
                scale: 0.3,
                softcap,
                window,
            };
            let mut out = vec![0f32; nq * dv];
            attend_tile(
                Isa::detect(),
                &q,
                p0,
                &cache,
                &mut TileScratch::default(),
                &mut out,
            );
            // The same source without SIMD code generation: the same operations in the same
            // order.
            let mut out2 = vec![1f32; nq * dv];
            attend_tile(
                Isa::Scalar,
                &q,
                p0,
                &cache,
                &mut TileScratch::default(),
                &mut out2,
            );
            assert!(
                out.iter()
                    .zip(&out2)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "SIMD and portable builds differ (dk {dk}, dv {dv})"
            );
            for i in 0..nq {
                let p = p0 + i;
                let lo = window.map_or(0, |w: usize| (p + 1).saturating_sub(w));
                let qi = &q[i * dk..(i + 1) * dk];
                let mut s: Vec<f64> = (lo..=p)
                    .map(|j| {
                        let dot: f64 = qi
                            .iter()
                            .zip(&k[j * ks + dk..j * ks + 2 * dk])
                            .map(|(a, b)| *a as f64 * b.to_f64())
                            .sum();
                        let x = dot * 0.3;
                        match softcap {
                            Some(c) => c as f64 * (x / c as f64).tanh(),
                            None => x,
                        }
                    })
                    .collect();
                let mx = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                s.iter_mut().for_each(|x| *x = (*x - mx).exp());
                let tot: f64 = s.iter().sum();
                for c in 0..dv {
                    let want: f64 = (lo..=p)
                        .map(|j| s[j - lo] / tot * v[j * vs + dv + c].to_f64())
                        .sum();
                    let got = out[i * dv + c] as f64;
                    assert!(
                        (got - want).abs() < 1e-4,
                        "row {i} col {c}: {got} vs {want} (dk {dk}, window {window:?})"
                    );
                }
            }
        }
    }

    #[test]
    fn exp_is_within_two_ulp() {
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let want = (x as f64).exp();
            let got = exp_f32(x) as f64;
            let ulp = f32::EPSILON as f64 * want;
            worst = worst.max((got - want).abs() / ulp);
            x += 0.000_731;
        }
        assert!(worst <= 2.0, "worst error {worst} ulp");
        assert_eq!(exp_f32(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp_f32(-100.0), 0.0);
        assert_eq!(exp_f32(0.0), 1.0);
        assert_eq!(exp_f32(100.0), f32::INFINITY);
        assert!(exp_f32(f32::NAN).is_nan());
    }

    /// The SIMD inner loops compute the scalar ones bit for bit, at every length.
    #[test]
    fn simd_inner_loops_equal_scalar() {
        let r = |i: usize| ((i * 2654435761) % 1999) as f32 / 400.0 - 2.5;
        for n in [0, 1, 7, 8, 63, 64, 65, 80, 128, 130, 200, 256, 300] {
            let a: Vec<f32> = (0..n).map(|i| f16::from_f32(r(i + 3)).to_f32()).collect();
            let b: Vec<f16> = (0..n).map(|i| f16::from_f32(r(i + 77))).collect();
            assert_eq!(
                dot_f16(Isa::detect(), &a, &b).to_bits(),
                dot_f16_scalar(&a, &b).to_bits(),
                "dot, n={n}"
            );
            for s in [0.0f32, 0.3, 1.0, 1.7e-3, 7.5] {
                let mut x = b.clone();
                let mut y = b.clone();
                scale_f16(Isa::detect(), &mut x, s);
                scale_f16_scalar(&mut y, s);
                assert_eq!(x, y, "scale, n={n}");
                let v: Vec<f16> = (0..n).map(|i| f16::from_f32(r(i + 5000))).collect();
                fma_f16(Isa::detect(), &mut x, &v, s);
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
        assert!((dot_f16(Isa::detect(), &a, &b) as f64 - want).abs() < 1e-4);
        assert_eq!(dot_f16(Isa::detect(), &[], &[]), 0.0);
    }
}
