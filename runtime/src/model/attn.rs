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
            for a in acc[..dv].iter_mut() {
                *a = f16::from_f32(a.to_f32() * ms);
            }
        } else {
            vs = (s - m).exp();
        }
        let vr = &values[j * v_stride..j * v_stride + dv];
        for (a, &v) in acc[..dv].iter_mut().zip(vr) {
            *a = f16::from_f32(v.to_f32().mul_add(vs, a.to_f32()));
        }
        sum = sum * ms + vs;
    }
    let inv = if sum == 0.0 { 0.0 } else { 1.0 / sum };
    for (o, a) in out[..dv].iter_mut().zip(&acc[..dv]) {
        *o = a.to_f32() * inv;
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
