//! `mkmodel moe --arch qwen35moe --shape qwen3.5-397b-a17b|qwen3.5-122b-a10b|qwen3.5-35b-a3b`
//! and `mkmodel dense --arch qwen35 [--shape qwen3.5-27b]`: random models with a real
//! Qwen3.5 model's per-layer shape (Gated DeltaNet linear-attention layers, every fourth layer
//! gated full attention), expert counts and vocabulary; `--layers N` keeps the shape with
//! fewer layers (the same interval, so a slice of 4 has 3 linear layers and 1 attention layer).
//!
//! The presets are the models' Hugging Face config.json values (Qwen/Qwen3.5-397B-A17B,
//! Qwen3.5-122B-A10B, Qwen3.5-35B-A3B, Qwen3.5-27B), as quoted by public code that loads them,
//! and cross-checked for the 397B and 35B against THUDM slime's Megatron recipes
//! (`scripts/models/qwen3.5-397B-A17B.sh`, `qwen3.5-35B-A3B.sh`, `qwen3.5-27B.sh`):
//! - 397B-A17B: 60 layers, hidden 4096, 32 query / 2 KV heads of 256, 512 experts of 1024,
//!   top-10, one shared expert of 1024, linear attention 16 key heads and 64 value heads of
//!   128, conv kernel 4;
//! - 122B-A10B: 48 layers, hidden 3072, 32 / 2 heads of 256, 256 experts of 1024, top-8,
//!   shared 1024, linear 16 / 64 heads of 128;
//! - 35B-A3B: 40 layers, hidden 2048, 16 / 2 heads of 256, 256 experts of 512, top-8, shared
//!   512, linear 16 / 32 heads of 128;
//! - 27B (dense): 64 layers, hidden 5120, FFN 17408, 24 / 4 heads of 256, linear 16 / 48
//!   heads of 128;
//!
//! and for all: full_attention_interval 4, partial_rotary_factor 0.25 (64 of 256 dims
//! rotated), rope_theta 1e7, rms_norm_eps 1e-6, vocabulary 248320, untied output.
//! Types as a Q4_K_M release: experts by [`ExpertQuant::Q4KM`], every other matrix Q8_0
//! (attention, linear attention, shared expert, dense FFN, embedding, head); norms, router,
//! shared-expert gate, convolution taps and the decay vectors F32.

use anyhow::bail;
use serde_json::json;

use super::glm::ExpertQuant;
use super::shapes::header;
use super::{declare, summary, write_random, Common, Spec};
use flashstream::formats::gguf::GgufWriter;
use flashstream::formats::tensor_names::{arch_tensors, Need};
use flashstream::formats::{Architecture, GgmlType, TensorRole, Value};

/// The dimensions of a Qwen3.5 model.
#[derive(Debug, Clone)]
struct Shape {
    layers: usize,
    embd: usize,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    /// Dense FFN (0 for MoE).
    ff: usize,
    experts: usize,
    top_k: usize,
    expert_ff: usize,
    shared_ff: usize,
    lin_k_heads: usize,
    lin_v_heads: usize,
    lin_head_dim: usize,
    vocab: usize,
}

const INTERVAL: usize = 4;
const CONV: usize = 4;

/// The named presets (see the module comment for the sources).
fn preset(name: &str) -> anyhow::Result<Shape> {
    let big = Shape {
        layers: 60,
        embd: 4096,
        heads: 32,
        kv_heads: 2,
        head_dim: 256,
        ff: 0,
        experts: 512,
        top_k: 10,
        expert_ff: 1024,
        shared_ff: 1024,
        lin_k_heads: 16,
        lin_v_heads: 64,
        lin_head_dim: 128,
        vocab: 248320,
    };
    Ok(match name {
        "qwen3.5-397b-a17b" => big,
        "qwen3.5-122b-a10b" => Shape {
            layers: 48,
            embd: 3072,
            experts: 256,
            top_k: 8,
            ..big
        },
        "qwen3.5-35b-a3b" => Shape {
            layers: 40,
            embd: 2048,
            heads: 16,
            experts: 256,
            top_k: 8,
            expert_ff: 512,
            shared_ff: 512,
            lin_v_heads: 32,
            ..big
        },
        "qwen3.5-27b" => Shape {
            layers: 64,
            embd: 5120,
            heads: 24,
            kv_heads: 4,
            ff: 17408,
            experts: 0,
            top_k: 0,
            expert_ff: 0,
            shared_ff: 0,
            lin_v_heads: 48,
            ..big
        },
        other => bail!(
            "unknown --shape {other:?} for Qwen3.5 (known: qwen3.5-397b-a17b, \
             qwen3.5-122b-a10b, qwen3.5-35b-a3b for qwen35moe; qwen3.5-27b for qwen35)"
        ),
    })
}

/// The tensor of `role` in layer `l`.
fn spec(role: TensorRole, l: usize, s: &Shape, quant: ExpertQuant) -> anyhow::Result<Spec> {
    use TensorRole::*;
    let (q8, f32t) = (GgmlType::Q8_0, GgmlType::F32);
    let u = |x: usize| x as u64;
    let e = u(s.embd);
    let q = u(s.heads * s.head_dim);
    let kv = u(s.kv_heads * s.head_dim);
    let vd = u(s.lin_v_heads * s.lin_head_dim);
    let ch = u(2 * s.lin_k_heads * s.lin_head_dim) + vd;
    let hv = u(s.lin_v_heads);
    let (eff, nx, sff) = (u(s.expert_ff), u(s.experts), u(s.shared_ff));
    let exps = |down: bool| quant.ty(down, l, if down { s.expert_ff } else { s.embd });
    Ok(match role {
        AttnNorm | FfnNorm => Spec::norm(role, l, e),
        AttnQNorm | AttnKNorm => Spec::norm(role, l, u(s.head_dim)),
        // Rows per head [q | gate].
        AttnQ => Spec::new(role, l, q8, &[e, 2 * q]),
        AttnK | AttnV => Spec::new(role, l, q8, &[e, kv]),
        AttnOut => Spec::new(role, l, q8, &[q, e]),
        AttnQkv => Spec::new(role, l, q8, &[e, ch]),
        AttnGate => Spec::new(role, l, q8, &[e, vd]),
        SsmConv1d => Spec::new(role, l, f32t, &[u(CONV), ch]),
        // Decay bias and rate: near 1 and near -1 (`write_random` negates `ssm_a`).
        SsmDt | SsmA => Spec::norm(role, l, hv),
        SsmBeta | SsmAlpha => Spec::new(role, l, q8, &[e, hv]),
        SsmNorm => Spec::norm(role, l, u(s.lin_head_dim)),
        SsmOut => Spec::new(role, l, q8, &[vd, e]),
        FfnGate | FfnUp => Spec::new(role, l, q8, &[e, u(s.ff)]),
        FfnDown => Spec::new(role, l, q8, &[u(s.ff), e]),
        FfnRouter => Spec::new(role, l, f32t, &[e, nx]),
        FfnGateExps | FfnUpExps => Spec::new(role, l, exps(false), &[e, eff, nx]),
        FfnDownExps => Spec::new(role, l, exps(true), &[eff, e, nx]),
        FfnRouterShexp => Spec::new(role, l, f32t, &[e]),
        FfnGateShexp | FfnUpShexp => Spec::new(role, l, q8, &[e, sff]),
        FfnDownShexp => Spec::new(role, l, q8, &[sff, e]),
        other => bail!("{other:?} is not a Qwen3.5 layer tensor"),
    })
}

/// Writes the Qwen3.5 model (`moe`: qwen35moe) of the named shape, `--layers` of them.
pub(super) fn qwen35(c: &Common, moe: bool, shape: Option<&str>) -> anyhow::Result<()> {
    let name = shape.unwrap_or(if moe {
        "qwen3.5-35b-a3b"
    } else {
        "qwen3.5-27b"
    });
    let mut s = preset(name)?;
    if moe != (s.experts > 0) {
        bail!(
            "--shape {name} is a {} model: use `mkmodel {}`",
            if s.experts > 0 { "MoE" } else { "dense" },
            if s.experts > 0 {
                "moe --arch qwen35moe"
            } else {
                "dense --arch qwen35"
            }
        );
    }
    if c.size.is_some() {
        bail!(
            "Qwen3.5 models are made from a real --shape; give --layers N for a slice, not --size"
        );
    }
    if c.ctx == 0 {
        bail!("--ctx must be at least 1");
    }
    let full = s.layers;
    if let Some(n) = c.layers {
        s.layers = n.max(1);
    }
    let quant = ExpertQuant::Q4KM { layers: full };
    let arch = if moe {
        Architecture::Qwen35Moe
    } else {
        Architecture::Qwen35
    };
    let e = s.embd as u64;
    let vocab = s.vocab as u64;
    let mut w = GgufWriter::new();
    let an = arch.name();
    let key = |k: &str| format!("{an}.{k}");
    let mut keys: Vec<(&str, usize)> = vec![
        ("block_count", s.layers),
        ("context_length", c.ctx),
        ("embedding_length", s.embd),
        ("attention.head_count", s.heads),
        ("attention.head_count_kv", s.kv_heads),
        ("attention.key_length", s.head_dim),
        ("attention.value_length", s.head_dim),
        ("rope.dimension_count", s.head_dim / 4),
        ("full_attention_interval", INTERVAL),
        ("ssm.conv_kernel", CONV),
        ("ssm.state_size", s.lin_head_dim),
        ("ssm.group_count", s.lin_k_heads),
        ("ssm.time_step_rank", s.lin_v_heads),
        ("ssm.inner_size", s.lin_v_heads * s.lin_head_dim),
    ];
    if moe {
        keys.extend([
            ("expert_count", s.experts),
            ("expert_used_count", s.top_k),
            ("expert_feed_forward_length", s.expert_ff),
            ("expert_shared_feed_forward_length", s.shared_ff),
        ]);
    } else {
        keys.push(("feed_forward_length", s.ff));
    }
    header(&mut w, an, name, c.seed, &keys, s.vocab)?;
    w.set(key("rope.freq_base"), Value::F32(10_000_000.0))?;
    w.set(key("attention.layer_norm_rms_epsilon"), Value::F32(1e-6))?;
    w.set(
        "general.file_type",
        Value::U32(if moe { quant.file_type() } else { 7 }),
    )?;

    let q8 = GgmlType::Q8_0;
    let table = arch_tensors(arch);
    let mut specs = vec![Spec::new(TensorRole::TokenEmbd, 0, q8, &[e, vocab])];
    for l in 0..s.layers {
        let linear = (l + 1) % INTERVAL != 0;
        for t in table.layer_of(linear, moe) {
            if t.need == Need::Required {
                let mut x = spec(t.role, l, &s, quant)?;
                // The architecture's own name for the role (`post_attention_norm`, `ssm_a`).
                x.name = t.name(l);
                specs.push(x);
            }
        }
    }
    specs.push(Spec::norm(TensorRole::OutputNorm, 0, e));
    specs.push(Spec::new(TensorRole::Output, 0, q8, &[e, vocab]));
    let params = declare(&mut w, &specs)?;
    let nx = s.experts.max(1) as u64;
    let expert_bytes: u64 = specs
        .iter()
        .filter(|x| x.name.starts_with("blk.0.") && x.role.is_expert())
        .map(|x| x.bytes() / nx)
        .sum();
    let len = write_random(w, &specs, &c.out, c.seed)?;
    let linear_layers = (0..s.layers).filter(|l| (l + 1) % INTERVAL != 0).count();
    let state = linear_layers as u64
        * ((CONV as u64 - 1) * (2 * s.lin_k_heads + s.lin_v_heads) as u64 * s.lin_head_dim as u64
            + (s.lin_v_heads * s.lin_head_dim * s.lin_head_dim) as u64)
        * 4;
    summary(
        &c.out,
        c.json,
        json!({"path": c.out, "architecture": an, "shape": name, "bytes": len,
               "params": params, "layers": s.layers, "full_model_layers": full,
               "linear_layers": linear_layers, "embd": s.embd, "heads": s.heads,
               "kv_heads": s.kv_heads, "experts": s.experts, "top_k": s.top_k,
               "expert_ff": s.expert_ff, "vocab": s.vocab, "expert_bytes": expert_bytes,
               "expert_type": if moe { quant.name() } else { "-".into() }, "type": "Q8_0",
               "recurrent_state_bytes": state}),
    )
}
