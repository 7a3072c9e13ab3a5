//! Element-wise and row operations of the forward pass, on f32 activations.
//!
//! Each follows the arithmetic of llama.cpp's CPU backend where that matters for matching its
//! logits (e.g. RMSNorm accumulates the sum of squares in f64, as ggml does).

/// `out = x / rms(x) * w` as ggml computes it: each square in f32, summed in order in f64.
pub fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    debug_assert!(x.len() == w.len() && x.len() == out.len());
    let sum: f64 = x.iter().map(|&v| (v * v) as f64).sum();
    let mean = (sum / x.len() as f64) as f32;
    let scale = 1.0 / (mean + eps).sqrt();
    for ((o, &v), &g) in out.iter_mut().zip(x).zip(w) {
        *o = v * scale * g;
    }
}

/// [`rms_norm`] in place.
pub fn rms_norm_inplace(x: &mut [f32], w: &[f32], eps: f32) {
    debug_assert!(x.len() == w.len());
    let sum: f64 = x.iter().map(|&v| (v * v) as f64).sum();
    let mean = (sum / x.len() as f64) as f32;
    let scale = 1.0 / (mean + eps).sqrt();
    for (v, &g) in x.iter_mut().zip(w) {
        *v = *v * scale * g;
    }
}

/// Numerically stable softmax in place.
pub fn softmax(x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if max == f32::NEG_INFINITY {
        return;
    }
    let mut sum = 0f64;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v as f64;
    }
    let inv = (1.0 / sum) as f32;
    for v in x.iter_mut() {
        *v *= inv;
    }
}

/// SiLU: `x * sigmoid(x)`.
#[inline]
pub fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// GELU, tanh approximation (as ggml's `gelu`).
#[inline]
pub fn gelu(x: f32) -> f32 {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    const COEF: f32 = 0.044_715;
    0.5 * x * (1.0 + (SQRT_2_OVER_PI * x * (1.0 + COEF * x * x)).tanh())
}

/// `gate[i] = silu(gate[i]) * up[i]` (SwiGLU) over rows of `row` values, as llama.cpp's x86
/// build computes it: the first `row / 16 * 16` values of each row with [`silu_vec`] (its
/// 16-lane AVX-512 loop), the rest with libm's `expf` ([`silu`]). The two differ in the last
/// bit of about a quarter of the values, which a Q4_0 KV cache can turn into a flipped quant.
pub fn swiglu(gate: &mut [f32], up: &[f32], row: usize) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has FMA (checked just above).
        return unsafe { swiglu_fma(gate, up, row) };
    }
    swiglu_body(gate, up, row);
}

/// [`swiglu_body`] compiled with FMA, so that `mul_add` is one instruction.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn swiglu_fma(gate: &mut [f32], up: &[f32], row: usize) {
    swiglu_body(gate, up, row);
}

#[inline(always)]
fn swiglu_body(gate: &mut [f32], up: &[f32], row: usize) {
    let row = row.max(1);
    let vec_part = row / 16 * 16;
    for (gr, ur) in gate.chunks_mut(row).zip(up.chunks(row)) {
        for (i, (g, &u)) in gr.iter_mut().zip(ur).enumerate() {
            *g = if i < vec_part { silu_vec(*g) } else { silu(*g) } * u;
        }
    }
}

/// SiLU with [`exp_vec`]: `x / (1 + e^-x)` as ggml's AVX-512 `ggml_v_silu`.
#[inline(always)]
pub fn silu_vec(x: f32) -> f32 {
    x / (1.0 + exp_vec(-x))
}

/// `e^x` exactly as ggml's AVX-512 vector loops compute it (`ggml_v_expf`, up to 1.5 ulp from
/// the true value): `x = n·ln2 + b` with `n` rounded to an integer, a degree-5 polynomial in
/// `b` (FMA steps in ggml's order), scaled by `2^n` with one rounding; beyond `|n| > 192`
/// infinity or zero. Bit for bit on every target where `mul_add` is a fused multiply-add.
#[inline(always)]
pub fn exp_vec(x: f32) -> f32 {
    const SHIFT: f32 = f32::from_bits(0x4b40_0000); // 1.5 · 2^23: rounds to an integer
    const LOG2E: f32 = f32::from_bits(0x3fb8_aa3b);
    const LN2_HI: f32 = f32::from_bits(0x3f31_7200);
    const LN2_LO: f32 = f32::from_bits(0x35bf_be8e);
    const C: [f32; 5] = [
        f32::from_bits(0x3f7f_fff6),
        f32::from_bits(0x3eff_fedb),
        f32::from_bits(0x3e2a_af33),
        f32::from_bits(0x3d2b_9f17),
        f32::from_bits(0x3c07_2010),
    ];
    let z = x.mul_add(LOG2E, SHIFT);
    let n = z - SHIFT;
    let b = (-n).mul_add(LN2_LO, (-n).mul_add(LN2_HI, x));
    if n.abs() > 192.0 {
        return if n <= 0.0 { 0.0 } else { f32::INFINITY };
    }
    let u = b * b;
    let j = C[4]
        .mul_add(b, C[3])
        .mul_add(u, C[2].mul_add(b, C[1]))
        .mul_add(u, C[0].mul_add(b, 1.0));
    // j · 2^n with one rounding (AVX-512's `scalef`): 2^n as two normal powers of two, the
    // first product exact.
    let ni = n as i32;
    let h = ni / 2;
    let pow2 = |e: i32| f32::from_bits(((e + 127) as u32) << 23);
    (j * pow2(h)) * pow2(ni - h)
}

/// `gate[i] = gelu(gate[i]) * up[i]` (GeGLU).
pub fn geglu(gate: &mut [f32], up: &[f32]) {
    for (g, &u) in gate.iter_mut().zip(up) {
        *g = gelu(*g) * u;
    }
}

/// GELU as ggml's CPU backend computes it: the input rounded to f16 and looked up in a table
/// of f16 results (`|x| >= 10` passes through: 0 below, `x` above).
#[inline]
pub fn gelu_f16_table(x: f32) -> f32 {
    if x <= -10.0 {
        0.0
    } else if x >= 10.0 {
        x
    } else {
        gelu_table()[half::f16::from_f32(x).to_bits() as usize]
    }
}

/// `f16(gelu(h))` as f32 for every f16 bit pattern `h`, built once (65536 evaluations).
fn gelu_table() -> &'static [f32] {
    static TABLE: std::sync::OnceLock<Vec<f32>> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        (0..=u16::MAX)
            .map(|b| {
                let h = half::f16::from_bits(b).to_f32();
                half::f16::from_f32(gelu(h)).to_f32()
            })
            .collect()
    })
}

/// [`geglu`] with [`gelu_f16_table`], as ggml's `geglu` on CPU.
pub fn geglu_f16_table(gate: &mut [f32], up: &[f32]) {
    for (g, &u) in gate.iter_mut().zip(up) {
        *g = gelu_f16_table(*g) * u;
    }
}

/// gpt-oss's clamped SwiGLU as ggml's `swiglu_oai`: `gate[i] = x·σ(alpha·x)·(y + 1)` with
/// `x = min(gate[i], limit)`, `y = clamp(up[i], -limit, limit)`.
pub fn swiglu_oai(gate: &mut [f32], up: &[f32], alpha: f32, limit: f32) {
    for (g, &u) in gate.iter_mut().zip(up) {
        let x = g.min(limit);
        let y = u.clamp(-limit, limit);
        *g = x / (1.0 + (alpha * -x).exp()) * (y + 1.0);
    }
}

/// `y += x`.
pub fn add_assign(y: &mut [f32], x: &[f32]) {
    for (a, &b) in y.iter_mut().zip(x) {
        *a += b;
    }
}

/// `y *= s`.
pub fn scale(y: &mut [f32], s: f32) {
    for a in y.iter_mut() {
        *a *= s;
    }
}

/// `x = cap * tanh(x / cap)` (logit soft-capping).
pub fn softcap(x: &mut [f32], cap: f32) {
    for v in x.iter_mut() {
        *v = cap * (*v / cap).tanh();
    }
}

/// Rotary position embedding tables for one position: `cos`/`sin` of
/// `theta_i = freq_scale * (pos * base^(-2i/dims) / factor_i)` for `i in 0..dims/2`, computed
/// in the order ggml's rope cache uses (the per-pair factors, e.g. Llama 3's `rope_freqs`,
/// divide the angle before the scale).
pub fn rope_cache(
    pos: usize,
    dims: usize,
    base: f32,
    freq_scale: f32,
    factors: Option<&[f32]>,
    cos: &mut [f32],
    sin: &mut [f32],
) {
    let theta_scale = base.powf(-2.0 / dims as f32);
    let mut theta = pos as f32;
    for i in 0..dims / 2 {
        let ff = factors.and_then(|f| f.get(i)).copied().unwrap_or(1.0);
        let t = freq_scale * (theta / ff);
        cos[i] = t.cos();
        sin[i] = t.sin();
        theta *= theta_scale;
    }
}

/// `(a·cos − b·sin, a·sin + b·cos)` as llama.cpp's x86 build computes it: the compiler
/// contracts each line of ggml's `rotate_pairs` into one fused multiply-add of `a` over the
/// rounded `b` product (read from the machine code of its `libggml-cpu`: `vfmsub231ss` /
/// `vfmadd132ss`, `vfmaddsub` in the vector loops), which differs from two rounded products
/// in the last bit.
#[inline(always)]
fn rotate_pair(a: f32, b: f32, cos: f32, sin: f32) -> (f32, f32) {
    (a.mul_add(cos, -(b * sin)), a.mul_add(sin, b * cos))
}

/// Rotates the first `dims` elements of each head of `x` (heads of `head_dim`) in place.
/// `neox` pairs element `i` with `i + dims/2`; otherwise adjacent pairs `(2i, 2i+1)`.
pub fn rope_apply(
    x: &mut [f32],
    head_dim: usize,
    dims: usize,
    neox: bool,
    cos: &[f32],
    sin: &[f32],
) {
    for head in x.chunks_exact_mut(head_dim) {
        if neox {
            let half = dims / 2;
            for i in 0..half {
                let (a, b) = (head[i], head[i + half]);
                (head[i], head[i + half]) = rotate_pair(a, b, cos[i], sin[i]);
            }
        } else {
            for i in 0..dims / 2 {
                let (a, b) = (head[2 * i], head[2 * i + 1]);
                (head[2 * i], head[2 * i + 1]) = rotate_pair(a, b, cos[i], sin[i]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The table lookup gives what rounding to f16, GELU and rounding again give.
    #[test]
    fn gelu_table_equals_direct_evaluation() {
        let mut x = -12.0f32;
        while x < 12.0 {
            let h = half::f16::from_f32(x).to_f32();
            let want = if x <= -10.0 {
                0.0
            } else if x >= 10.0 {
                x
            } else {
                half::f16::from_f32(gelu(h)).to_f32()
            };
            assert_eq!(gelu_f16_table(x).to_bits(), want.to_bits(), "x = {x}");
            x += 0.000_37;
        }
    }

    #[test]
    fn rms_norm_unit_rms() {
        let x: Vec<f32> = (0..64).map(|i| (i as f32 - 30.0) * 0.37).collect();
        let w = vec![1.0; 64];
        let mut out = vec![0.0; 64];
        rms_norm(&x, &w, 0.0, &mut out);
        let rms = (out.iter().map(|v| v * v).sum::<f32>() / 64.0).sqrt();
        assert!((rms - 1.0).abs() < 1e-5, "{rms}");
        let mut y = x.clone();
        rms_norm_inplace(&mut y, &w, 0.0);
        assert_eq!(y, out);
    }

    #[test]
    fn softmax_sums_to_one_and_orders() {
        let mut x = vec![1.0, 2.0, 3.0, -1000.0];
        softmax(&mut x);
        assert!((x.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(x[2] > x[1] && x[1] > x[0] && x[3] == 0.0);
    }

    #[test]
    fn activations() {
        assert!((silu(1.0) - 0.731_058_6).abs() < 1e-6);
        assert!((gelu(1.0) - 0.841_192).abs() < 1e-5);
        assert_eq!(silu(0.0), 0.0);
    }

    /// The clamps: the gate only from above, the up projection on both sides.
    #[test]
    fn swiglu_oai_clamps() {
        let mut g = [10.0f32, -10.0, 1.0, 0.0];
        let u = [20.0f32, 0.0, -20.0, 5.0];
        swiglu_oai(&mut g, &u, 1.702, 7.0);
        let act = |x: f32| x / (1.0 + (-1.702 * x).exp());
        assert_eq!(g[0], act(7.0) * 8.0);
        assert_eq!(g[1], act(-10.0));
        assert_eq!(g[2], act(1.0) * -6.0);
        assert_eq!(g[3], 0.0);
    }

    #[test]
    fn rope_rotates_pairs_and_keeps_norm() {
        let dims = 8;
        let mut cos = vec![0.0; dims / 2];
        let mut sin = vec![0.0; dims / 2];
        rope_cache(3, dims, 10000.0, 1.0, None, &mut cos, &mut sin);
        // theta_0 = pos for the first pair.
        assert!((cos[0] - 3f32.cos()).abs() < 1e-6);
        for neox in [false, true] {
            let x: Vec<f32> = (0..16).map(|i| i as f32 * 0.1 - 0.5).collect();
            let mut y = x.clone();
            rope_apply(&mut y, 8, dims, neox, &cos, &sin);
            let n0: f32 = x.iter().map(|v| v * v).sum();
            let n1: f32 = y.iter().map(|v| v * v).sum();
            assert!((n0 - n1).abs() < 1e-4);
            assert_ne!(x, y);
        }
        // Position 0 is the identity.
        rope_cache(0, dims, 10000.0, 1.0, None, &mut cos, &mut sin);
        let x: Vec<f32> = (0..8).map(|i| i as f32).collect();
        let mut y = x.clone();
        rope_apply(&mut y, 8, dims, true, &cos, &sin);
        assert_eq!(x, y);
    }
}
