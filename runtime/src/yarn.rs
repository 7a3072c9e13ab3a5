//! YaRN rotary position embedding tables, as ggml's CPU `rope` computes them.
//!
//! YaRN interpolates positions by `freq_scale = 1/factor` in the low-frequency dimensions and
//! keeps (extrapolates) them in the high-frequency ones, with a linear ramp between the
//! correction dimensions of `beta_fast` (32) and `beta_slow` (1) rotations over the original
//! context; cos and sin are scaled by `attn_factor · (1 + 0.1 ln(factor))`, where llama.cpp
//! sets `attn_factor = get_mscale(factor) / (1 + 0.1 ln(factor))` (1 for gpt-oss, so its
//! tables carry YaRN's magnitude `1 + 0.1 ln 32`; deepseek2's mscale ratio with its log
//! multiplier, computed where the config reads the file). The one YaRN implementation, used
//! by the standard attention (gpt-oss) and by MLA (deepseek2).

use flashstream_formats::config::RopeScaling;

/// The YaRN parameters of one RoPE base.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Yarn {
    /// `1/factor`.
    pub freq_scale: f32,
    /// Weight of the extrapolation ramp (1 when YaRN is on).
    pub ext_factor: f32,
    /// Magnitude factor before the `1 + 0.1 ln(factor)` of the rope op.
    pub attn_factor: f32,
    /// First and last correction dimension (pairs below `[0]` keep their frequency, above
    /// `[1]` are fully interpolated).
    pub corr_dims: [f32; 2],
}

/// ggml's `rope_yarn_corr_dim`: the dimension whose wavelength makes `n_rot` rotations over
/// `n_ctx_orig` positions.
fn corr_dim(n_dims: usize, n_ctx_orig: usize, n_rot: f32, base: f32) -> f32 {
    n_dims as f32 * (n_ctx_orig as f32 / (n_rot * 2.0 * std::f32::consts::PI)).ln()
        / (2.0 * base.ln())
}

impl Yarn {
    /// The parameters of a [`RopeScaling::Yarn`] for `n_dims` rotated dimensions and the
    /// RoPE `base`, as llama.cpp's context and rope op derive them (the config's
    /// `attn_factor` already holds llama.cpp's mscale ratio, `rope.scaling.attn_factor` and
    /// deepseek2's `yarn_log_multiplier`); `None` for any other scaling.
    pub fn from_scaling(scaling: RopeScaling, n_dims: usize, base: f32) -> Option<Self> {
        let RopeScaling::Yarn {
            factor,
            original_context,
            beta_fast,
            beta_slow,
            attn_factor,
            ..
        } = scaling
        else {
            return None;
        };
        let start = corr_dim(n_dims, original_context, beta_fast, base).floor();
        let end = corr_dim(n_dims, original_context, beta_slow, base).ceil();
        Some(Yarn {
            freq_scale: 1.0 / factor,
            ext_factor: 1.0,
            attn_factor,
            corr_dims: [start.max(0.0), end.min(n_dims as f32 - 1.0)],
        })
    }

    /// The cos/sin tables of position `pos` for `dims` rotated dimensions (`dims/2` pairs),
    /// with optional per-pair frequency divisors.
    pub fn cache(
        &self,
        pos: usize,
        dims: usize,
        base: f32,
        factors: Option<&[f32]>,
        cos: &mut [f32],
        sin: &mut [f32],
    ) {
        let theta_scale = base.powf(-2.0 / dims as f32);
        let mut theta = pos as f32;
        let [low, high] = self.corr_dims;
        for i in 0..dims / 2 {
            let ff = factors.and_then(|f| f.get(i)).copied().unwrap_or(1.0);
            let extrap = theta / ff;
            let interp = self.freq_scale * extrap;
            let mut mscale = self.attn_factor;
            let t = if self.ext_factor != 0.0 {
                let y = (i as f32 - low) / (high - low).max(0.001);
                let ramp = (1.0 - y.clamp(0.0, 1.0)) * self.ext_factor;
                mscale *= 1.0 + 0.1 * (1.0 / self.freq_scale).ln();
                interp * (1.0 - ramp) + extrap * ramp
            } else {
                interp
            };
            cos[i] = t.cos() * mscale;
            sin[i] = t.sin() * mscale;
            theta *= theta_scale;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// gpt-oss-120b's parameters (factor 32 over 4096, base 150000, 64 dims): ggml's
    /// correction dims are 8 and 18 (floor 8.09, ceil 17.4), `attn_factor` is 1 and the
    /// magnitude `1 + 0.1 ln 32`, the highest
    /// frequency pair keeps its angle and the lowest is interpolated by 1/32.
    #[test]
    fn gpt_oss_parameters() {
        // As the config reads a gpt-oss file: default betas, llama.cpp's attn_factor.
        let f = 1.0 / (1.0 / 32f32);
        let scaling = RopeScaling::Yarn {
            factor: 32.0,
            original_context: 4096,
            beta_fast: 32.0,
            beta_slow: 1.0,
            attn_factor: (0.1 * f.ln() + 1.0) / (1.0 + 0.1 * f.ln()),
            log_mul: 0.0,
        };
        let y = Yarn::from_scaling(scaling, 64, 150000.0).unwrap();
        assert_eq!(y.corr_dims, [8.0, 18.0]);
        assert!((y.attn_factor - 1.0).abs() < 1e-6);
        let (mut c, mut s) = (vec![0f32; 32], vec![0f32; 32]);
        let pos = 1000;
        y.cache(pos, 64, 150000.0, None, &mut c, &mut s);
        let full = pos as f32;
        let mag = y.attn_factor * (1.0 + 0.1 * 32f32.ln());
        assert!((c[0] - full.cos() * mag).abs() < 1e-4, "{}", c[0]);
        let last = pos as f32 * 150000f32.powf(-62.0 / 64.0) / 32.0;
        assert!((c[31] - last.cos() * mag).abs() < 1e-4);
        for i in 0..32 {
            assert!(
                (c[i] * c[i] + s[i] * s[i] - mag * mag).abs() < 1e-4,
                "pair {i}"
            );
        }
    }

    /// Without extrapolation it is the plain scaled table.
    #[test]
    fn no_ramp_is_linear_scaling() {
        let y = Yarn {
            freq_scale: 0.5,
            ext_factor: 0.0,
            attn_factor: 1.0,
            corr_dims: [0.0, 10.0],
        };
        let (mut c, mut s) = (vec![0f32; 4], vec![0f32; 4]);
        let (mut c2, mut s2) = (vec![0f32; 4], vec![0f32; 4]);
        y.cache(7, 8, 10000.0, None, &mut c, &mut s);
        crate::ops::rope_cache(7, 8, 10000.0, 0.5, None, &mut c2, &mut s2);
        assert_eq!(c, c2);
        assert_eq!(s, s2);
    }
}
