//! `mkmodel moe --arch glm4moe`: random GLM-4.5-style models (q/k/v biases, optional per-head
//! q/k norms, partial NeoX RoPE, leading dense layers, sigmoid routing with a score bias, one
//! ungated shared expert), shaped from `--size` or from a real model's `--shape`
//! (`glm-4.5-air`, `glm-4.6`; `--layers N` keeps the shape with fewer layers). Also the
//! Q4_K_M expert types the real-shape presets of every architecture share.
//!
//! The presets are the models' Hugging Face config.json values (zai-org/GLM-4.5-Air,
//! zai-org/GLM-4.6), cross-checked against THUDM slime's Megatron recipes
//! `scripts/models/glm4.5-106B-A12B.sh` (GLM-4.5-Air) and `glm4.5-355B-A32B.sh` (GLM-4.5, whose
//! dimensions GLM-4.6 keeps; GLM-4.6 only raises the context to 202752): hidden 4096 / 5120,
//! dense FFN 10944 / 12288, experts of 1408 / 1536, 128 / 160 experts, top-8, one shared
//! expert, 96 query heads and 8 KV heads of 128, half the head rotated (partial_rotary_factor
//! 0.5), RoPE base 1e6, 1 / 3 leading dense layers, 46 / 92 trunk layers (the one NextN layer
//! of the release is left out, as flashstream skips it), routed scale 1.0 / 2.5, q/k norms
//! only on GLM-4.6 (`use_qk_norm`), vocabulary 151552.
//!
//! Types as the common GGUF releases (unsloth / ggml-org Q4_K_M): see [`ExpertQuant`]; every
//! other matrix Q8_0 (attention, dense and shared FFN, embedding, head), norms, biases and
//! router F32.

use anyhow::bail;
use serde_json::json;

use super::shapes::{header, moe_dims};
use super::{declare, file_type, size_of, summary, write_random, MoeArgs, Spec};
use flashstream::formats::gguf::GgufWriter;
use flashstream::formats::tensor_names::{arch_tensors, Need};
use flashstream::formats::{Architecture, GgmlType, TensorRole, Value};

/// The types of the routed-expert matrices.
#[derive(Debug, Clone, Copy)]
pub(super) enum ExpertQuant {
    /// One type for all (`--type`).
    Uniform(GgmlType),
    /// llama.cpp's `Q4_K_M` file type (`llama-quant.cpp`, `llama_tensor_get_type`): Q4_K,
    /// with `ffn_down` raised to Q6_K on the layers `use_more_bits` picks (the first and last
    /// eighth, then every third) of the full model's `layers`; a row length that is not a
    /// multiple of 256 falls back to Q5_0 (for Q4_K) or Q8_0 (for Q6_K), as llama.cpp does.
    Q4KM {
        /// The full model's layer count (the rule's `n_layer`, also for a `--layers` slice).
        layers: usize,
    },
}

impl ExpertQuant {
    /// The type of an expert matrix of layer `l` with rows of `row` weights.
    pub(super) fn ty(self, down: bool, l: usize, row: usize) -> GgmlType {
        match self {
            ExpertQuant::Uniform(t) => t,
            ExpertQuant::Q4KM { layers: n } => {
                let more_bits =
                    l < n / 8 || l >= 7 * n / 8 || (l as isize - (n / 8) as isize) % 3 == 2;
                let t = if down && more_bits {
                    GgmlType::Q6_K
                } else {
                    GgmlType::Q4_K
                };
                match (row.is_multiple_of(256), t) {
                    (true, t) => t,
                    (false, GgmlType::Q6_K) => GgmlType::Q8_0,
                    (false, _) => GgmlType::Q5_0,
                }
            }
        }
    }

    /// llama.cpp's `general.file_type` of such a file.
    pub(super) fn file_type(self) -> u32 {
        match self {
            ExpertQuant::Uniform(t) => file_type(t),
            ExpertQuant::Q4KM { .. } => 15,
        }
    }

    /// The name the summary prints.
    pub(super) fn name(self) -> String {
        match self {
            ExpertQuant::Uniform(t) => t.to_string(),
            ExpertQuant::Q4KM { .. } => "Q4_K_M".into(),
        }
    }
}

/// The FFN of a leading-dense, shared-expert, sigmoid-routed MoE (deepseek2 and glm4moe
/// alike): Q8_0 dense and shared matrices, F32 router and score bias, experts by `quant`.
pub(super) struct MoeFfn {
    pub(super) embd: usize,
    pub(super) dense_ff: usize,
    pub(super) expert_ff: usize,
    pub(super) experts: usize,
    pub(super) shared: usize,
    pub(super) quant: ExpertQuant,
}

impl MoeFfn {
    /// The FFN tensor of `role` in layer `l`, or `None` for a role outside the FFN.
    pub(super) fn spec(&self, role: TensorRole, l: usize) -> Option<Spec> {
        use TensorRole::*;
        let (q8, f32t) = (GgmlType::Q8_0, GgmlType::F32);
        let u = |x: usize| x as u64;
        let (e, ff, eff, nx) = (
            u(self.embd),
            u(self.dense_ff),
            u(self.expert_ff),
            u(self.experts),
        );
        let shared_ff = eff * u(self.shared);
        let exps = |down: bool| {
            self.quant
                .ty(down, l, if down { self.expert_ff } else { self.embd })
        };
        Some(match role {
            FfnGate | FfnUp => Spec::new(role, l, q8, &[e, ff]),
            FfnDown => Spec::new(role, l, q8, &[ff, e]),
            FfnRouter => Spec::new(role, l, f32t, &[e, nx]),
            FfnExpProbsB => Spec::new(role, l, f32t, &[nx]),
            FfnGateExps | FfnUpExps => Spec::new(role, l, exps(false), &[e, eff, nx]),
            FfnDownExps => Spec::new(role, l, exps(true), &[eff, e, nx]),
            FfnGateShexp | FfnUpShexp => Spec::new(role, l, q8, &[e, shared_ff]),
            FfnDownShexp => Spec::new(role, l, q8, &[shared_ff, e]),
            _ => return None,
        })
    }
}

/// The dimensions of a glm4moe model.
#[derive(Debug, Clone)]
struct Shape {
    layers: Option<usize>,
    dense_lead: usize,
    embd: usize,
    dense_ff: usize,
    expert_ff: usize,
    experts: usize,
    top_k: usize,
    shared: usize,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    rope_dims: usize,
    qk_norm: bool,
    scale: f32,
    vocab: usize,
    quant: ExpertQuant,
}

/// The real models' config.json dimensions (see the module comment).
fn preset(name: &str) -> anyhow::Result<Shape> {
    let glm46 = Shape {
        layers: Some(92),
        dense_lead: 3,
        embd: 5120,
        dense_ff: 12288,
        expert_ff: 1536,
        experts: 160,
        top_k: 8,
        shared: 1,
        heads: 96,
        kv_heads: 8,
        head_dim: 128,
        rope_dims: 64,
        qk_norm: true,
        scale: 2.5,
        vocab: 151552,
        quant: ExpertQuant::Q4KM { layers: 92 },
    };
    Ok(match name {
        "glm-4.6" => glm46,
        "glm-4.5-air" => Shape {
            layers: Some(46),
            dense_lead: 1,
            embd: 4096,
            dense_ff: 10944,
            expert_ff: 1408,
            experts: 128,
            qk_norm: false,
            scale: 1.0,
            quant: ExpertQuant::Q4KM { layers: 46 },
            ..glm46
        },
        other => bail!("unknown --shape {other:?} for glm4moe (use glm-4.5-air or glm-4.6)"),
    })
}

/// A GLM-4.5-like shape scaled to the hidden size `--size` suggests (or `--embd`).
fn scaled(a: &MoeArgs) -> anyhow::Result<Shape> {
    let c = &a.c;
    let d = moe_dims(a)?;
    Ok(Shape {
        layers: c.layers,
        dense_lead: 1,
        embd: d.embd,
        dense_ff: d.ff,
        expert_ff: a
            .expert_ff
            .unwrap_or_else(|| (d.embd * 3 / 8).div_ceil(256).max(1) * 256),
        experts: a.experts,
        top_k: a.top_k,
        shared: 1,
        heads: d.heads,
        kv_heads: d.kv_heads,
        head_dim: 128,
        rope_dims: 64,
        qk_norm: true,
        scale: 2.5,
        vocab: 257,
        quant: ExpertQuant::Uniform(c.ty),
    })
}

/// The tensor of `role` in layer `l`.
fn spec(role: TensorRole, l: usize, s: &Shape) -> anyhow::Result<Spec> {
    use TensorRole::*;
    let ffn = MoeFfn {
        embd: s.embd,
        dense_ff: s.dense_ff,
        expert_ff: s.expert_ff,
        experts: s.experts,
        shared: s.shared,
        quant: s.quant,
    };
    if let Some(x) = ffn.spec(role, l) {
        return Ok(x);
    }
    let (q8, f32t) = (GgmlType::Q8_0, GgmlType::F32);
    let e = s.embd as u64;
    let (q, kv) = (
        (s.heads * s.head_dim) as u64,
        (s.kv_heads * s.head_dim) as u64,
    );
    Ok(match role {
        AttnNorm | FfnNorm => Spec::norm(role, l, e),
        AttnQNorm | AttnKNorm => Spec::norm(role, l, s.head_dim as u64),
        AttnQ => Spec::new(role, l, q8, &[e, q]),
        AttnK | AttnV => Spec::new(role, l, q8, &[e, kv]),
        AttnQBias => Spec::new(role, l, f32t, &[q]),
        AttnKBias | AttnVBias => Spec::new(role, l, f32t, &[kv]),
        AttnOut => Spec::new(role, l, q8, &[q, e]),
        other => bail!("{other:?} is not a glm4moe layer tensor"),
    })
}

/// The tensors of layer `l`: the row's required ones, the biases, the score bias and (when
/// the shape has them) the q/k norms.
fn layer_specs(l: usize, s: &Shape, out: &mut Vec<Spec>) -> anyhow::Result<()> {
    use TensorRole::*;
    let table = arch_tensors(Architecture::Glm4Moe);
    for t in table.layer(l >= s.dense_lead) {
        let wanted = t.need == Need::Required
            || matches!(t.role, AttnQBias | AttnKBias | AttnVBias | FfnExpProbsB)
            || (s.qk_norm && matches!(t.role, AttnQNorm | AttnKNorm));
        if wanted {
            let mut x = spec(t.role, l, s)?;
            // The architecture's own name for the role (`post_attention_norm`).
            x.name = t.name(l);
            out.push(x);
        }
    }
    Ok(())
}

/// Writes the glm4moe model `a` asks for.
pub(super) fn glm4moe(a: MoeArgs, shape: Option<&str>) -> anyhow::Result<()> {
    let c = &a.c;
    let mut s = match shape {
        Some(name) => preset(name)?,
        None => scaled(&a)?,
    };
    if shape.is_some() {
        if let Some(n) = c.layers {
            s.layers = Some(n);
        }
    }
    let ty_block = |row: usize, down: bool| s.quant.ty(down, s.dense_lead, row).block_size();
    if !s.embd.is_multiple_of(ty_block(s.embd, false))
        || !s.expert_ff.is_multiple_of(ty_block(s.expert_ff, true))
        || !s.embd.is_multiple_of(32)
        || !s.dense_ff.is_multiple_of(32)
    {
        bail!(
            "hidden size {} and expert FFN size {} must be multiples of the expert type's block \
             size ({}), and the dense FFN size {} of 32",
            s.embd,
            s.expert_ff,
            s.quant.name(),
            s.dense_ff
        );
    }
    if c.ctx == 0 {
        bail!("--ctx must be at least 1");
    }
    if s.kv_heads == 0 || !s.heads.is_multiple_of(s.kv_heads) {
        bail!(
            "{} query heads must be a multiple of {} KV heads",
            s.heads,
            s.kv_heads
        );
    }
    let e = s.embd as u64;
    let vocab = s.vocab as u64;
    let layers = match s.layers {
        Some(n) => n.max(1),
        None => {
            let mut one = Vec::new();
            layer_specs(s.dense_lead.max(1), &s, &mut one)?;
            let per_layer: u64 = one.iter().map(Spec::bytes).sum();
            let fixed = 2 * vocab * e * 34 / 32;
            ((size_of(c)?.saturating_sub(fixed) as f64 / per_layer as f64).round() as usize).max(2)
        }
    };
    s.dense_lead = s.dense_lead.min(layers - 1);

    let mut w = GgufWriter::new();
    let arch = Architecture::Glm4Moe.name();
    let key = |k: &str| format!("{arch}.{k}");
    let keys: [(&str, usize); 16] = [
        ("block_count", layers),
        ("context_length", c.ctx),
        ("embedding_length", s.embd),
        ("feed_forward_length", s.dense_ff),
        ("attention.head_count", s.heads),
        ("attention.head_count_kv", s.kv_heads),
        ("attention.key_length", s.head_dim),
        ("attention.value_length", s.head_dim),
        ("rope.dimension_count", s.rope_dims),
        ("expert_count", s.experts),
        ("expert_used_count", s.top_k),
        ("expert_feed_forward_length", s.expert_ff),
        ("expert_shared_count", s.shared),
        ("leading_dense_block_count", s.dense_lead),
        ("expert_gating_func", 2),
        ("nextn_predict_layers", 0),
    ];
    let made = shape.unwrap_or("scaled");
    header(&mut w, arch, made, c.seed, &keys, s.vocab)?;
    w.set(key("expert_weights_scale"), Value::F32(s.scale))?;
    w.set(key("expert_weights_norm"), Value::Bool(true))?;
    w.set(key("rope.freq_base"), Value::F32(1_000_000.0))?;
    w.set(key("attention.layer_norm_rms_epsilon"), Value::F32(1e-5))?;
    w.set("general.file_type", Value::U32(s.quant.file_type()))?;

    let q8 = GgmlType::Q8_0;
    let mut specs = vec![Spec::new(TensorRole::TokenEmbd, 0, q8, &[e, vocab])];
    for l in 0..layers {
        layer_specs(l, &s, &mut specs)?;
    }
    specs.push(Spec::norm(TensorRole::OutputNorm, 0, e));
    specs.push(Spec::new(TensorRole::Output, 0, q8, &[e, vocab]));
    let params = declare(&mut w, &specs)?;
    let nx = s.experts as u64;
    let prefix = format!("blk.{}.", s.dense_lead);
    let expert_bytes: u64 = specs
        .iter()
        .filter(|x| x.name.starts_with(&prefix) && x.role.is_expert())
        .map(|x| x.bytes() / nx)
        .sum();
    let len = write_random(w, &specs, &c.out, c.seed)?;
    let expert_params = 3 * e * s.expert_ff as u64;
    let moe_layers = (layers - s.dense_lead) as u64;
    summary(
        &c.out,
        c.json,
        json!({"path": c.out, "architecture": arch, "shape": made,
               "bytes": len, "params": params, "layers": layers,
               "dense_layers": s.dense_lead, "embd": s.embd, "heads": s.heads,
               "kv_heads": s.kv_heads, "expert_ff": s.expert_ff, "experts": s.experts,
               "top_k": s.top_k, "vocab": s.vocab, "expert_bytes": expert_bytes,
               "expert_type": s.quant.name(), "type": "Q8_0",
               "active_params_per_token":
                   params - moe_layers * expert_params * (nx - s.top_k as u64)}),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cmd::mkmodel::{random_tensor, Rng};
    use flashstream::runtime::kernels::scalar::dequantize_row;

    #[test]
    fn q4_k_m_raises_ffn_down_on_the_layers_llama_cpp_picks() {
        let q = ExpertQuant::Q4KM { layers: 61 };
        // use_more_bits(l, 61): l < 7, l >= 53, or (l - 7) % 3 == 2.
        let six: Vec<usize> = (0..61)
            .filter(|&l| q.ty(true, l, 2048) == GgmlType::Q6_K)
            .collect();
        let want: Vec<usize> = (0..7).chain((9..53).step_by(3)).chain(53..61).collect();
        assert_eq!(six, want);
        assert!((0..61).all(|l| q.ty(false, l, 7168) == GgmlType::Q4_K));
        // Rows that are not a multiple of 256 (GLM-4.5-Air's 1408): llama.cpp's fallbacks.
        let air = ExpertQuant::Q4KM { layers: 46 };
        assert_eq!(air.ty(true, 0, 1408), GgmlType::Q8_0);
        assert_eq!(air.ty(true, 6, 1408), GgmlType::Q5_0);
        assert_eq!(
            ExpertQuant::Uniform(GgmlType::Q4_0).ty(true, 0, 1408),
            GgmlType::Q4_0
        );
    }

    #[test]
    fn random_q5_0_weights_have_the_intended_scale() {
        let k = 1408;
        let mut bytes = Vec::new();
        let mut rng = Rng::with_stream(3, 0);
        random_tensor(
            GgmlType::Q5_0,
            k,
            (k * 64) as u64,
            1.0,
            &mut rng,
            1 << 16,
            |b| {
                bytes.extend_from_slice(b);
                Ok(())
            },
        )
        .unwrap();
        let row = k / 32 * 22;
        assert_eq!(bytes.len(), 64 * row);
        let mut w = vec![0f32; k * 64];
        for (src, dst) in bytes.chunks_exact(row).zip(w.chunks_exact_mut(k)) {
            dequantize_row(GgmlType::Q5_0, src, dst).unwrap();
        }
        let n = w.len() as f64;
        let mean = w.iter().map(|&x| x as f64).sum::<f64>() / n;
        let sd = (w.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n).sqrt();
        let want = 1.0 / (k as f64).sqrt();
        assert!((sd / want - 1.0).abs() < 0.1, "sd {sd} vs {want}");
        assert!(mean.abs() < 0.1 * want, "mean {mean}");
    }
}
