//! `mkmodel moe --arch deepseek2`: random deepseek2 models (multi-head latent attention,
//! sigmoid routing with a score bias and expert groups, leading dense layers, one shared
//! expert), shaped from `--size` or from a real model's `--shape` (`deepseek-v3`, `kimi-k2`,
//! their config.json dimensions; `--layers N` keeps the shape with fewer layers).
//!
//! Types: the experts take `--type`; the per-head `attn_k_b`/`attn_v_b` (rows of 128 / 512)
//! and every other matrix (attention, dense and shared FFN, head, embedding) are Q8_0, as the
//! dynamic quants people stream keep them at high precision; norms, router and score bias F32.

use anyhow::bail;
use serde_json::json;

use super::{
    byte_vocab, check_dims, declare, dims_for, file_type, size_of, summary, write_random, Dims,
    MoeArgs, Spec,
};
use flashstream::formats::gguf::GgufWriter;
use flashstream::formats::tensor_names::{arch_tensors, Need};
use flashstream::formats::{Architecture, Array, GgmlType, TensorRole, Value};

/// The dimensions of a deepseek2 model.
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
    q_lora: usize,
    kv_lora: usize,
    nope: usize,
    rope: usize,
    v: usize,
    groups: usize,
    groups_used: usize,
    scale: f32,
    vocab: usize,
    rope_base: f32,
    /// YaRN factor, original context, beta_fast, beta_slow.
    yarn: (f32, usize, f32, f32),
}

/// The real models' config.json dimensions.
fn preset(name: &str) -> anyhow::Result<Shape> {
    let v3 = Shape {
        layers: Some(61),
        dense_lead: 3,
        embd: 7168,
        dense_ff: 18432,
        expert_ff: 2048,
        experts: 256,
        top_k: 8,
        shared: 1,
        heads: 128,
        q_lora: 1536,
        kv_lora: 512,
        nope: 128,
        rope: 64,
        v: 128,
        groups: 8,
        groups_used: 4,
        scale: 2.5,
        vocab: 129280,
        rope_base: 10000.0,
        yarn: (40.0, 4096, 32.0, 1.0),
    };
    Ok(match name {
        "deepseek-v3" => v3,
        "kimi-k2" => Shape {
            dense_lead: 1,
            experts: 384,
            heads: 64,
            groups: 1,
            groups_used: 1,
            scale: 2.827,
            vocab: 163840,
            rope_base: 50000.0,
            yarn: (32.0, 4096, 1.0, 1.0),
            ..v3
        },
        other => bail!("unknown --shape {other:?} for deepseek2 (use deepseek-v3 or kimi-k2)"),
    })
}

/// A DeepSeek-V3-like shape scaled to the hidden size `--size` suggests.
fn scaled(a: &MoeArgs) -> anyhow::Result<Shape> {
    let c = &a.c;
    let bpw = c.ty.block_bytes() as f64 / c.ty.block_size() as f64;
    let d = dims_for(
        size_of(c)? as f64 / bpw / (a.experts as f64 / 4.0).max(1.0),
        c.embd,
    );
    let round = |x: usize| x.div_ceil(256).max(1) * 256;
    let groups = if a.experts >= 64 && a.experts.is_multiple_of(8) {
        8
    } else {
        1
    };
    Ok(Shape {
        layers: c.layers,
        dense_lead: 1,
        embd: d.embd,
        dense_ff: d.ff,
        expert_ff: a.expert_ff.unwrap_or_else(|| round(d.embd * 2 / 7)),
        experts: a.experts,
        top_k: a.top_k,
        shared: 1,
        heads: (d.embd / 128).max(1),
        q_lora: round(d.embd * 3 / 14),
        kv_lora: 512,
        nope: 128,
        rope: 64,
        v: 128,
        groups,
        groups_used: groups.div_ceil(2),
        scale: 2.5,
        vocab: 257,
        rope_base: 10000.0,
        yarn: (40.0, 4096, 32.0, 1.0),
    })
}

/// The tensor of `role` in layer `l`.
fn spec(role: TensorRole, l: usize, s: &Shape, ty: GgmlType) -> anyhow::Result<Spec> {
    use TensorRole::*;
    let q8 = GgmlType::Q8_0;
    let u = |x: usize| x as u64;
    let (e, h) = (u(s.embd), u(s.heads));
    let shared_ff = u(s.expert_ff * s.shared);
    Ok(match role {
        AttnNorm | FfnNorm => Spec::norm(role, l, e),
        AttnQANorm => Spec::norm(role, l, u(s.q_lora)),
        AttnKvANorm => Spec::norm(role, l, u(s.kv_lora)),
        AttnQA => Spec::new(role, l, q8, &[e, u(s.q_lora)]),
        AttnQB => Spec::new(role, l, q8, &[u(s.q_lora), h * u(s.nope + s.rope)]),
        AttnKvAMqa => Spec::new(role, l, q8, &[e, u(s.kv_lora + s.rope)]),
        AttnKB => Spec::new(role, l, q8, &[u(s.nope), u(s.kv_lora), h]),
        AttnVB => Spec::new(role, l, q8, &[u(s.kv_lora), u(s.v), h]),
        AttnOut => Spec::new(role, l, q8, &[h * u(s.v), e]),
        FfnGate | FfnUp => Spec::new(role, l, q8, &[e, u(s.dense_ff)]),
        FfnDown => Spec::new(role, l, q8, &[u(s.dense_ff), e]),
        FfnRouter => Spec::new(role, l, GgmlType::F32, &[e, u(s.experts)]),
        FfnExpProbsB => Spec::new(role, l, GgmlType::F32, &[u(s.experts)]),
        FfnGateExps | FfnUpExps => Spec::new(role, l, ty, &[e, u(s.expert_ff), u(s.experts)]),
        FfnDownExps => Spec::new(role, l, ty, &[u(s.expert_ff), e, u(s.experts)]),
        FfnGateShexp | FfnUpShexp => Spec::new(role, l, q8, &[e, shared_ff]),
        FfnDownShexp => Spec::new(role, l, q8, &[shared_ff, e]),
        other => bail!("{other:?} is not a deepseek2 layer tensor"),
    })
}

/// The tensors of layer `l`: the row's required ones, the low-rank query and the score bias.
fn layer_specs(l: usize, s: &Shape, ty: GgmlType, out: &mut Vec<Spec>) -> anyhow::Result<()> {
    let table = arch_tensors(Architecture::Deepseek2);
    for t in table.layer(l >= s.dense_lead) {
        let wanted = t.need == Need::Required
            || matches!(
                t.role,
                TensorRole::AttnQA | TensorRole::AttnQANorm | TensorRole::AttnQB
            )
            || t.role == TensorRole::FfnExpProbsB;
        if wanted {
            out.push(spec(t.role, l, s, ty)?);
        }
    }
    Ok(())
}

/// Writes the deepseek2 model `a` asks for.
pub(super) fn deepseek2(a: MoeArgs, shape: Option<&str>) -> anyhow::Result<()> {
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
    let bs = c.ty.block_size();
    if !s.embd.is_multiple_of(bs) || !s.expert_ff.is_multiple_of(bs) {
        bail!(
            "hidden size {} and expert FFN size {} must be multiples of {}'s block size {bs}",
            s.embd,
            s.expert_ff,
            c.ty
        );
    }
    check_dims(
        c,
        &Dims {
            embd: s.embd,
            ff: s.dense_ff,
            heads: s.heads,
            kv_heads: 1,
        },
    )?;
    if s.top_k > s.experts || s.top_k == 0 {
        bail!("--top-k {} must be in 1..=--experts {}", s.top_k, s.experts);
    }
    let ty = c.ty;
    let e = s.embd as u64;
    let layers = match s.layers {
        Some(n) => n.max(1),
        None => {
            let mut one = Vec::new();
            layer_specs(s.dense_lead.max(1), &s, ty, &mut one)?;
            let per_layer: u64 = one.iter().map(Spec::bytes).sum();
            let fixed = 2 * s.vocab as u64 * e;
            ((size_of(c)?.saturating_sub(fixed) as f64 / per_layer as f64).round() as usize).max(2)
        }
    };
    let dense_lead = s.dense_lead.min(layers - 1);
    s.dense_lead = dense_lead;

    let mut w = GgufWriter::new();
    let arch = "deepseek2";
    let key = |k: &str| format!("{arch}.{k}");
    w.set("general.architecture", Value::String(arch.into()))?;
    w.set(
        "general.name",
        Value::String(format!(
            "flashstream mkmodel {arch} {} seed {}",
            shape.unwrap_or("scaled"),
            c.seed
        )),
    )?;
    let u32s: [(&str, usize); 20] = [
        ("block_count", layers),
        ("context_length", c.ctx),
        ("embedding_length", s.embd),
        ("feed_forward_length", s.dense_ff),
        ("attention.head_count", s.heads),
        ("attention.head_count_kv", 1),
        ("attention.key_length", s.kv_lora + s.rope),
        ("attention.value_length", s.kv_lora),
        ("attention.key_length_mla", s.nope + s.rope),
        ("attention.value_length_mla", s.v),
        ("attention.q_lora_rank", s.q_lora),
        ("attention.kv_lora_rank", s.kv_lora),
        ("rope.dimension_count", s.rope),
        ("expert_count", s.experts),
        ("expert_used_count", s.top_k),
        ("expert_feed_forward_length", s.expert_ff),
        ("expert_shared_count", s.shared),
        ("expert_group_count", s.groups),
        ("expert_group_used_count", s.groups_used),
        ("leading_dense_block_count", dense_lead),
    ];
    for (k, v) in u32s {
        w.set(key(k), Value::U32(v as u32))?;
    }
    w.set(key("expert_gating_func"), Value::U32(2))?;
    w.set(key("expert_weights_scale"), Value::F32(s.scale))?;
    w.set(key("expert_weights_norm"), Value::Bool(true))?;
    w.set(key("rope.freq_base"), Value::F32(s.rope_base))?;
    w.set(key("attention.layer_norm_rms_epsilon"), Value::F32(1e-6))?;
    let (factor, orig, fast, slow) = s.yarn;
    w.set(key("rope.scaling.type"), Value::String("yarn".into()))?;
    w.set(key("rope.scaling.factor"), Value::F32(factor))?;
    w.set(
        key("rope.scaling.original_context_length"),
        Value::U32(orig as u32),
    )?;
    w.set(key("rope.scaling.yarn_beta_fast"), Value::F32(fast))?;
    w.set(key("rope.scaling.yarn_beta_slow"), Value::F32(slow))?;
    w.set(key("rope.scaling.yarn_log_multiplier"), Value::F32(0.1))?;
    w.set("general.quantization_version", Value::U32(2))?;
    w.set("general.file_type", Value::U32(file_type(ty)))?;
    byte_vocab(&mut w)?;
    if s.vocab > 257 {
        // The real vocabulary's size: the 257 byte-level tokens, then unused fillers.
        let mut tokens: Vec<String> = (0..=255u8).map(super::byte_token).collect();
        tokens.push("<|endoftext|>".into());
        tokens.extend((257..s.vocab).map(|i| format!("<|unused_{i}|>")));
        let mut types = vec![1i32; 256];
        types.push(3);
        types.resize(s.vocab, 5);
        w.set("tokenizer.ggml.tokens", Value::Array(Array::String(tokens)))?;
        w.set("tokenizer.ggml.token_type", Value::Array(Array::I32(types)))?;
    }

    let vocab = s.vocab as u64;
    let mut specs = vec![Spec::new(
        TensorRole::TokenEmbd,
        0,
        GgmlType::Q8_0,
        &[e, vocab],
    )];
    for l in 0..layers {
        layer_specs(l, &s, ty, &mut specs)?;
    }
    specs.push(Spec::norm(TensorRole::OutputNorm, 0, e));
    specs.push(Spec::new(
        TensorRole::Output,
        0,
        GgmlType::Q8_0,
        &[e, vocab],
    ));
    let params = declare(&mut w, &specs)?;
    let nx = s.experts as u64;
    let moe_layer = dense_lead.min(layers - 1);
    let prefix = format!("blk.{moe_layer}.");
    let expert_bytes: u64 = specs
        .iter()
        .filter(|x| x.name.starts_with(&prefix) && x.role.is_expert())
        .map(|x| x.bytes() / nx)
        .sum();
    let len = write_random(w, &specs, &c.out, c.seed)?;
    let expert_params = 3 * e * s.expert_ff as u64;
    let moe_layers = (layers - dense_lead) as u64;
    summary(
        &c.out,
        c.json,
        json!({"path": c.out, "architecture": arch, "shape": shape.unwrap_or("scaled"),
               "bytes": len, "params": params, "layers": layers, "dense_layers": dense_lead,
               "embd": s.embd, "heads": s.heads, "expert_ff": s.expert_ff,
               "experts": s.experts, "top_k": s.top_k, "vocab": s.vocab,
               "expert_bytes": expert_bytes, "type": ty.to_string(),
               "kv_bytes_per_token": layers * (s.kv_lora + s.rope) * 2,
               "active_params_per_token":
                   params - moe_layers * expert_params * (nx - s.top_k as u64)}),
    )
}
