//! MoE routing: from one row of router logits to the selected experts and their weights.
//!
//! One config-driven function for every architecture, following llama.cpp's `build_moe_ffn`:
//! the gating function turns logits into scores ([`Gating`]); experts are selected by top-k on
//! the scores plus the optional per-expert score bias (`exp_probs_b`, used for selection
//! only); the weights are the selected experts' unbiased scores, optionally renormalised (their
//! sum clamped below at 2^-14, ggml's `clamp` before `div`, and summed in f64 as ggml's
//! `sum_rows`), then multiplied by the weights scale when it is not 1.

use flashstream_formats::config::{Gating, MoeConfig};

use crate::ops;

/// The smallest normal f16, llama.cpp's floor for the weight sum before renormalising.
const MIN_WEIGHT_SUM: f32 = 1.0 / 16384.0;

/// How a layer routes: the model's MoE config and the layer's score bias.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Router<'a> {
    /// Gating, top-k, renormalisation and scale.
    pub moe: &'a MoeConfig,
    /// Per-expert bias added to the scores for selection only.
    pub score_bias: Option<&'a [f32]>,
}

/// Reusable buffers of [`Router::route`].
#[derive(Debug, Default)]
pub(crate) struct RouteScratch {
    idx: Vec<usize>,
    select: Vec<f32>,
}

impl Router<'_> {
    /// Experts used per row (at most the expert count).
    pub fn k(&self) -> usize {
        self.moe.n_expert_used.min(self.moe.n_expert)
    }

    /// Routes one row: `logits` (one per expert) become scores in place; `out` gets the
    /// selected experts, best first (ties to the lower index), with their weights.
    pub fn route(&self, logits: &mut [f32], rs: &mut RouteScratch, out: &mut Vec<(usize, f32)>) {
        match self.moe.gating {
            Gating::Softmax => ops::softmax(logits),
            Gating::Sigmoid => {
                for v in logits.iter_mut() {
                    *v = 1.0 / (1.0 + (-*v).exp());
                }
            }
        }
        let scores: &[f32] = logits;
        let select: &[f32] = match self.score_bias {
            Some(b) => {
                rs.select.clear();
                rs.select
                    .extend(scores.iter().zip(b).map(|(&s, &bias)| s + bias));
                &rs.select
            }
            None => scores,
        };
        rs.idx.clear();
        rs.idx.extend(0..scores.len());
        rs.idx
            .sort_by(|&a, &b| select[b].total_cmp(&select[a]).then(a.cmp(&b)));
        let top = &rs.idx[..self.k().min(scores.len())];
        out.clear();
        out.extend(top.iter().map(|&i| (i, scores[i])));
        if self.moe.norm_top_k {
            let sum = out.iter().map(|&(_, w)| f64::from(w)).sum::<f64>() as f32;
            let sum = sum.max(MIN_WEIGHT_SUM);
            for (_, w) in out.iter_mut() {
                *w /= sum;
            }
        }
        let scale = self.moe.weights_scale;
        if scale != 1.0 && scale != 0.0 {
            for (_, w) in out.iter_mut() {
                *w *= scale;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn moe(gating: Gating, norm_top_k: bool, weights_scale: f32) -> MoeConfig {
        MoeConfig {
            n_expert: 4,
            n_expert_used: 2,
            n_ff_expert: 8,
            n_ff_shared: None,
            norm_top_k,
            weights_scale,
            gating,
            n_leading_dense: 0,
        }
    }

    fn run(r: Router<'_>, logits: &[f32]) -> Vec<(usize, f32)> {
        let mut l = logits.to_vec();
        let mut out = Vec::new();
        r.route(&mut l, &mut RouteScratch::default(), &mut out);
        out
    }

    #[test]
    fn softmax_top_k_renormalised() {
        let m = moe(Gating::Softmax, true, 1.0);
        let r = Router {
            moe: &m,
            score_bias: None,
        };
        let out = run(r, &[0.0, 2.0, 1.0, 2.0]);
        // Ties go to the lower index; two equal scores share the weight.
        assert_eq!(out, vec![(1, 0.5), (3, 0.5)]);
    }

    #[test]
    fn sigmoid_bias_selects_but_does_not_weigh() {
        let m = moe(Gating::Sigmoid, false, 2.5);
        let bias = [0.0, 0.0, 10.0, 0.0];
        let r = Router {
            moe: &m,
            score_bias: Some(&bias),
        };
        let sig = |x: f32| 1.0 / (1.0 + (-x).exp());
        let out = run(r, &[3.0, -1.0, -2.0, 1.0]);
        // Expert 2 has the lowest logit but the bias selects it; its weight is its own
        // (unbiased) sigmoid, times the scale.
        assert_eq!(out, vec![(2, sig(-2.0) * 2.5), (0, sig(3.0) * 2.5)]);
    }

    #[test]
    fn renormalised_sum_is_clamped() {
        let m = moe(Gating::Sigmoid, true, 1.0);
        let r = Router {
            moe: &m,
            score_bias: None,
        };
        // Sigmoids of -30 are ~9e-14: their sum is clamped to 2^-14, so the weights stay tiny
        // instead of becoming 0.5 each.
        let out = run(r, &[-30.0, -30.0, -40.0, -40.0]);
        let s = 1.0 / (1.0 + 30f32.exp());
        assert_eq!(out, vec![(0, s / MIN_WEIGHT_SUM), (1, s / MIN_WEIGHT_SUM)]);
        assert!(out[0].1 < 1e-8);
    }
}
