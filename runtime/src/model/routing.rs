//! MoE routing: from one row of router logits to the selected experts and their weights, as
//! llama.cpp's `build_moe_ffn` computes it, driven by the config alone:
//!
//! 1. gating: softmax over all experts, a sigmoid of each logit, or (gpt-oss,
//!    [`Gating::SoftmaxSelected`]) the raw logits, the softmax coming after the selection;
//! 2. selection scores: the gated scores plus the layer's score bias (`exp_probs_b`), if any;
//! 3. with expert groups (`n_group > 1`): each group scored by the sum of its two best
//!    selection scores, only the `n_group_used` best groups' experts stay selectable;
//! 4. the `k` best selection scores (ties to the lower index);
//! 5. weights: the unbiased gated scores of those experts (a softmax over them for
//!    [`Gating::SoftmaxSelected`]), optionally divided by their sum
//!    (summed in f64, clamped below at f16's smallest normal), then times `weights_scale`.

use flashstream_formats::config::{Gating, MoeConfig};

use crate::ops;

/// Scratch reused across rows.
#[derive(Debug, Default)]
pub(crate) struct RouteScratch {
    select: Vec<f32>,
    idx: Vec<usize>,
    group_score: Vec<f32>,
}

/// Smallest weight sum divided by (llama.cpp clamps it to f16's smallest normal).
const MIN_WEIGHT_SUM: f32 = 1.0 / 16384.0;

/// Orders indices by descending score, ties to the lower index.
fn sort_desc(idx: &mut [usize], score: &[f32]) {
    idx.sort_by(|&a, &b| score[b].total_cmp(&score[a]).then(a.cmp(&b)));
}

/// Routes one row: gates `logits` in place and writes the `moe.n_expert_used` selected
/// experts, best first, with their weights into `out`. `bias` is the layer's per-expert
/// selection bias (`n_expert` values) where it has one.
pub(crate) fn route(
    logits: &mut [f32],
    bias: Option<&[f32]>,
    moe: &MoeConfig,
    s: &mut RouteScratch,
    out: &mut Vec<(usize, f32)>,
) {
    let ne = logits.len();
    match moe.gating {
        Gating::Softmax => ops::softmax(logits),
        Gating::Sigmoid => {
            for v in logits.iter_mut() {
                *v = 1.0 / (1.0 + (-*v).exp());
            }
        }
        Gating::SoftmaxSelected => {}
    }
    let probs: &[f32] = logits;
    s.select.clear();
    match bias {
        Some(b) => s.select.extend(probs.iter().zip(b).map(|(&p, &b)| p + b)),
        None => s.select.extend_from_slice(probs),
    }

    let groups = moe.n_group;
    if groups > 1 && ne.is_multiple_of(groups) && moe.n_group_used < groups {
        let per = ne / groups;
        s.group_score.clear();
        for g in 0..groups {
            let part = &s.select[g * per..(g + 1) * per];
            s.idx.clear();
            s.idx.extend(0..per);
            sort_desc(&mut s.idx, part);
            let score = s.idx.iter().take(2).map(|&i| part[i] as f64).sum::<f64>() as f32;
            s.group_score.push(score);
        }
        s.idx.clear();
        s.idx.extend(0..groups);
        sort_desc(&mut s.idx, &s.group_score);
        let mut keep = vec![false; groups];
        for &g in &s.idx[..moe.n_group_used] {
            keep[g] = true;
        }
        for (g, kept) in keep.iter().enumerate() {
            if !kept {
                s.select[g * per..(g + 1) * per].fill(f32::NEG_INFINITY);
            }
        }
    }

    let k = moe.n_expert_used.min(ne);
    s.idx.clear();
    s.idx.extend(0..ne);
    sort_desc(&mut s.idx, &s.select);
    out.clear();
    out.extend(s.idx[..k].iter().map(|&i| (i, probs[i])));
    if moe.gating == Gating::SoftmaxSelected {
        s.select.clear();
        s.select.extend(out.iter().map(|&(_, w)| w));
        ops::softmax(&mut s.select);
        for ((_, w), &p) in out.iter_mut().zip(&s.select) {
            *w = p;
        }
    }
    if moe.norm_top_k {
        let sum = (out.iter().map(|&(_, w)| w as f64).sum::<f64>() as f32).max(MIN_WEIGHT_SUM);
        for (_, w) in out.iter_mut() {
            *w /= sum;
        }
    }
    if moe.weights_scale != 0.0 && moe.weights_scale != 1.0 {
        for (_, w) in out.iter_mut() {
            *w *= moe.weights_scale;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn moe(gating: Gating, groups: (usize, usize), k: usize) -> MoeConfig {
        MoeConfig {
            n_expert: 8,
            n_expert_used: k,
            n_ff_expert: 32,
            n_ff_shared: None,
            norm_top_k: true,
            gating,
            n_leading_dense: 0,
            n_group: groups.0,
            n_group_used: groups.1,
            weights_scale: 2.5,
        }
    }

    #[test]
    fn sigmoid_bias_selects_but_does_not_weight() {
        let mut logits = vec![0.0, 1.0, 2.0, -1.0, 0.5, 0.0, 0.0, 0.0];
        // Expert 3 has the lowest score but a bias that makes it win the selection.
        let bias = [0.0, 0.0, 0.0, 5.0, 0.0, 0.0, 0.0, 0.0];
        let (mut s, mut out) = (RouteScratch::default(), Vec::new());
        route(
            &mut logits,
            Some(&bias),
            &moe(Gating::Sigmoid, (1, 1), 2),
            &mut s,
            &mut out,
        );
        let sig = |x: f32| 1.0 / (1.0 + (-x).exp());
        assert_eq!(out.iter().map(|p| p.0).collect::<Vec<_>>(), [3, 2]);
        let sum = sig(-1.0) + sig(2.0);
        assert!((out[0].1 - 2.5 * sig(-1.0) / sum).abs() < 1e-6);
        assert!((out[1].1 - 2.5 * sig(2.0) / sum).abs() < 1e-6);
    }

    #[test]
    fn groups_by_top_two_sum() {
        // Four groups of two. Group 0 holds the single best expert but the worst pair sum;
        // groups 1 and 2 have the best pair sums and are kept.
        let mut logits = vec![3.0, -3.0, 1.0, 1.0, 0.9, 0.9, 0.0, 0.0];
        let (mut s, mut out) = (RouteScratch::default(), Vec::new());
        let m = moe(Gating::Sigmoid, (4, 2), 3);
        route(&mut logits, None, &m, &mut s, &mut out);
        assert_eq!(out.iter().map(|p| p.0).collect::<Vec<_>>(), [2, 3, 4]);
        let total: f32 = out.iter().map(|p| p.1).sum();
        assert!((total - 2.5).abs() < 1e-5);
        // Without groups the best expert is chosen.
        let mut logits = vec![3.0, -3.0, 1.0, 1.0, 0.9, 0.9, 0.0, 0.0];
        route(
            &mut logits,
            None,
            &moe(Gating::Sigmoid, (1, 1), 3),
            &mut s,
            &mut out,
        );
        assert_eq!(out[0].0, 0);
    }

    /// gpt-oss: the best raw logits are selected, and their weights are a softmax over the
    /// selected ones only.
    #[test]
    fn softmax_over_selected() {
        let mut logits = vec![0.0, 2.0, -1.0, 1.0, 0.5, 3.0, 0.0, 0.0];
        let mut m = moe(Gating::SoftmaxSelected, (1, 1), 2);
        m.norm_top_k = false;
        m.weights_scale = 1.0;
        let (mut s, mut out) = (RouteScratch::default(), Vec::new());
        route(&mut logits, None, &m, &mut s, &mut out);
        assert_eq!(out.iter().map(|p| p.0).collect::<Vec<_>>(), [5, 1]);
        let (e3, e2) = (3f32.exp(), 2f32.exp());
        assert!((out[0].1 - e3 / (e3 + e2)).abs() < 1e-6);
        assert!((out[1].1 - e2 / (e3 + e2)).abs() < 1e-6);
    }

    /// llama.cpp clamps the weight sum at 2^-14 before dividing: tiny sigmoids stay tiny
    /// instead of being blown up to 1/k each.
    #[test]
    fn renormalised_sum_is_clamped() {
        let mut logits = vec![-30.0, -30.0, -40.0, -40.0, -40.0, -40.0, -40.0, -40.0];
        let mut m = moe(Gating::Sigmoid, (1, 1), 2);
        m.weights_scale = 1.0;
        let (mut s, mut out) = (RouteScratch::default(), Vec::new());
        route(&mut logits, None, &m, &mut s, &mut out);
        let sig = 1.0 / (1.0 + 30f32.exp());
        assert_eq!(
            out,
            vec![(0, sig / MIN_WEIGHT_SUM), (1, sig / MIN_WEIGHT_SUM)]
        );
        assert!(out[0].1 < 1e-8);
    }

    #[test]
    fn softmax_without_scale_sums_to_one() {
        let mut logits = vec![0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8];
        let mut m = moe(Gating::Softmax, (1, 1), 4);
        m.weights_scale = 1.0;
        let (mut s, mut out) = (RouteScratch::default(), Vec::new());
        route(&mut logits, None, &m, &mut s, &mut out);
        assert_eq!(out.iter().map(|p| p.0).collect::<Vec<_>>(), [7, 6, 5, 4]);
        assert!((out.iter().map(|p| p.1).sum::<f32>() - 1.0).abs() < 1e-6);
    }
}
