//! gpt-oss random models for `mkmodel moe`: `--arch gpt-oss --size S` (dimensions from the
//! size), and `--shape gpt-oss-120b|gpt-oss-20b`, the real models' per-layer dimensions,
//! expert counts, vocabulary size and quant types (`--layers N` keeps the shape with fewer
//! layers), so a benchmark can run a slice of the real model's shape.
//!
//! The real shapes are those of OpenAI's released config.json (openai/gpt-oss-120b and
//! gpt-oss-20b; transformers' and vLLM's `GptOssConfig` defaults are the 120B's) as llama.cpp
//! converts them (24 layers = 20B, 36 = 120B in `src/models/openai-moe.cpp`): hidden
//! 2880, 64 query heads and 8 KV heads of 64, experts of 2880, top-4, a 128-token window on
//! even layers, RoPE base 150000 with YaRN factor 32 over 4096 positions, vocabulary 201088.
//! Quant types as ggml-org's MXFP4 release (llama.cpp's `MXFP4_MOE` file type): experts
//! MXFP4, the other matrices Q8_0, router, norms, biases and sinks F32. The 120B: 36 layers
//! of 128 experts, top-4; the 20B: 24 layers of 32 experts, top-4.

use anyhow::bail;
use serde_json::json;

use super::{
    arch_tensors, byte_token, byte_vocab, common_keys, declare, dims_for, file_type, layer_count,
    push_specs, size_of, summary, write_random, Architecture, Array, Dims, GgmlType, GgufWriter,
    LayerShape, MoeArgs, Spec, TensorRole, Value,
};

/// One gpt-oss shape.
struct Shape {
    layers: usize,
    embd: usize,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    experts: usize,
    top_k: usize,
    expert_ff: usize,
    vocab: usize,
    /// Expert matrices.
    expert_ty: GgmlType,
    /// Attention matrices, embedding and output head.
    ty: GgmlType,
}

const WINDOW: u32 = 128;
const ROPE_BASE: f32 = 150000.0;
const YARN_FACTOR: f32 = 32.0;
const YARN_ORIG_CTX: usize = 4096;

/// The named presets.
fn preset(name: &str) -> anyhow::Result<Shape> {
    let base = Shape {
        layers: 36,
        embd: 2880,
        heads: 64,
        kv_heads: 8,
        head_dim: 64,
        experts: 128,
        top_k: 4,
        expert_ff: 2880,
        vocab: 201088,
        expert_ty: GgmlType::MXFP4,
        ty: GgmlType::Q8_0,
    };
    Ok(match name {
        "gpt-oss-120b" => base,
        "gpt-oss-20b" => Shape {
            layers: 24,
            experts: 32,
            ..base
        },
        other => bail!(
            "unknown --shape {other:?} (known: gpt-oss-120b, gpt-oss-20b, deepseek-v3, kimi-k2, \
             glm-4.5-air, glm-4.6)"
        ),
    })
}

/// A gpt-oss shape from `--size` and the other flags: 64-wide heads, up to 8 KV heads,
/// experts as wide as the hidden size (gpt-oss's choice) unless `--expert-ff` says otherwise.
fn from_args(a: &MoeArgs) -> anyhow::Result<Shape> {
    let c = &a.c;
    let d = moe_dims(a)?;
    let heads = (d.embd / 64).max(1);
    Ok(Shape {
        layers: 0,
        embd: d.embd,
        heads,
        kv_heads: heads.min(8),
        head_dim: 64,
        experts: a.experts,
        top_k: a.top_k,
        expert_ff: a.expert_ff.unwrap_or(d.embd),
        vocab: 257,
        expert_ty: c.ty,
        ty: GgmlType::Q8_0,
    })
}

/// `mkmodel moe` for gpt-oss (`--arch gpt-oss` or a `--shape`).
pub(super) fn moe_shaped(a: &MoeArgs) -> anyhow::Result<()> {
    let c = &a.c;
    let s = match a.shape.as_deref() {
        Some(name) => preset(name)?,
        None => from_args(a)?,
    };
    let (e, q) = (s.embd as u64, (s.heads * s.head_dim) as u64);
    let kv = (s.kv_heads * s.head_dim) as u64;
    let (ff, nx, vocab) = (s.expert_ff as u64, s.experts as u64, s.vocab as u64);
    for (what, n, ty) in [
        ("hidden size", e, s.ty),
        ("hidden size", e, s.expert_ty),
        ("expert FFN size", ff, s.expert_ty),
        ("query width", q, s.ty),
    ] {
        if !n.is_multiple_of(ty.block_size() as u64) {
            bail!(
                "{what} {n} must be a multiple of {ty}'s block size {}",
                ty.block_size()
            );
        }
    }
    if s.embd % s.head_dim != 0 && a.shape.is_none() {
        bail!(
            "--embd {} must be a multiple of the head size {}",
            s.embd,
            s.head_dim
        );
    }
    if c.ctx == 0 {
        bail!("--ctx must be at least 1");
    }
    let bytes = |ty: GgmlType, n: u64| n * ty.block_bytes() as u64 / ty.block_size() as u64;
    let per_layer = bytes(s.ty, 2 * e * q + 2 * e * kv)
        + bytes(s.expert_ty, 3 * e * ff * nx)
        + 4 * (q + 2 * kv + 4 * e + nx * (e + 1) + nx * (2 * ff + e) + s.heads as u64);
    let layers = if a.shape.is_some() && c.layers.is_none() && c.size.is_none() {
        s.layers
    } else {
        layer_count(c, per_layer, 2 * bytes(s.ty, vocab * e))?
    };

    let arch = Architecture::GptOss.name();
    let mut w = GgufWriter::new();
    let dims = Dims {
        embd: s.embd,
        ff: s.expert_ff,
        heads: s.heads,
        kv_heads: s.kv_heads,
    };
    common_keys(&mut w, arch, c, &dims, layers, 257)?;
    if vocab > 257 {
        pad_vocab(&mut w, s.vocab)?;
    }
    let key = |k: &str| format!("{arch}.{k}");
    let u32v = |n: usize| Value::U32(n as u32);
    w.set(key("attention.key_length"), u32v(s.head_dim))?;
    w.set(key("attention.value_length"), u32v(s.head_dim))?;
    w.set(key("attention.sliding_window"), Value::U32(WINDOW))?;
    w.set(key("expert_count"), u32v(s.experts))?;
    w.set(key("expert_used_count"), u32v(s.top_k))?;
    w.set(key("expert_feed_forward_length"), u32v(s.expert_ff))?;
    w.set(key("rope.freq_base"), Value::F32(ROPE_BASE))?;
    w.set(key("rope.scaling.type"), Value::String("yarn".into()))?;
    w.set(key("rope.scaling.factor"), Value::F32(YARN_FACTOR))?;
    w.set(
        key("rope.scaling.original_context_length"),
        u32v(YARN_ORIG_CTX.min(c.ctx)),
    )?;
    // llama.cpp's LLAMA_FTYPE_MOSTLY_MXFP4_MOE.
    let ftype = if s.expert_ty == GgmlType::MXFP4 {
        38
    } else {
        file_type(s.expert_ty)
    };
    w.set("general.file_type", Value::U32(ftype))?;

    let table = arch_tensors(Architecture::GptOss);
    let shape = LayerShape {
        ty: s.ty,
        expert_ty: s.expert_ty,
        embd: e,
        heads: s.heads as u64,
        q,
        head_dim: s.head_dim as u64,
        kv,
        ff,
        experts: nx,
        shared_ff: 0,
    };
    let mut specs = vec![Spec::new(TensorRole::TokenEmbd, 0, s.ty, &[e, vocab])];
    for l in 0..layers {
        push_specs(table.attn, l, &shape, &mut specs)?;
        push_specs(table.moe_ffn, l, &shape, &mut specs)?;
    }
    specs.push(Spec::norm(TensorRole::OutputNorm, 0, e));
    specs.push(Spec::new(TensorRole::Output, 0, s.ty, &[e, vocab]));
    let params = declare(&mut w, &specs)?;
    let expert_bytes: u64 = specs
        .iter()
        .filter(|s| s.name.starts_with("blk.0.") && s.role.is_expert())
        .map(|s| s.bytes() / nx)
        .sum();
    let len = write_random(w, &specs, &c.out, c.seed)?;
    summary(
        &c.out,
        c.json,
        json!({"path": c.out, "architecture": arch, "shape": a.shape, "bytes": len,
               "params": params, "layers": layers, "embd": s.embd, "heads": s.heads,
               "kv_heads": s.kv_heads, "expert_ff": s.expert_ff, "experts": s.experts,
               "top_k": s.top_k, "vocab": s.vocab, "expert_bytes": expert_bytes,
               "expert_type": s.expert_ty.to_string(), "type": s.ty.to_string(),
               "active_params_per_token": params - (layers as u64) * 3 * e * ff * (nx - s.top_k as u64)}),
    )
}

/// The opening keys of a deepseek2 / glm4moe file: the architecture, a name saying what
/// made it, `arch.KEY` for each of `keys`, and the byte vocabulary padded to `vocab` tokens.
pub(super) fn header(
    w: &mut GgufWriter,
    arch: &str,
    made: &str,
    seed: u64,
    keys: &[(&str, usize)],
    vocab: usize,
) -> anyhow::Result<()> {
    w.set("general.architecture", Value::String(arch.into()))?;
    w.set(
        "general.name",
        Value::String(format!("flashstream mkmodel {arch} {made} seed {seed}")),
    )?;
    for (k, v) in keys {
        w.set(format!("{arch}.{k}"), Value::U32(*v as u32))?;
    }
    w.set("general.quantization_version", Value::U32(2))?;
    byte_vocab(w)?;
    if vocab > 257 {
        pad_vocab(w, vocab)?;
    }
    Ok(())
}

/// The dimensions `--size` (or `--embd`) suggests for a MoE of `--experts` (about a quarter
/// of them counted, as only some are read per token), after checking `--top-k`.
pub(super) fn moe_dims(a: &MoeArgs) -> anyhow::Result<Dims> {
    let c = &a.c;
    if a.experts == 0 || a.top_k == 0 || a.top_k > a.experts {
        bail!("--top-k {} must be in 1..=--experts {}", a.top_k, a.experts);
    }
    let bpw = c.ty.block_bytes() as f64 / c.ty.block_size() as f64;
    Ok(dims_for(
        size_of(c)? as f64 / bpw / (a.experts as f64 / 4.0).max(1.0),
        c.embd,
    ))
}

/// Replaces the 257-token byte vocabulary with one of `n` tokens: the 256 bytes,
/// `<|endoftext|>` (256), then control tokens `<|reserved_N|>` (never produced by
/// tokenizing text, so a real model's vocabulary size costs nothing but its rows).
fn pad_vocab(w: &mut GgufWriter, n: usize) -> anyhow::Result<()> {
    let mut tokens: Vec<String> = (0..=255u8).map(byte_token).collect();
    tokens.push("<|endoftext|>".into());
    let mut types = vec![1i32; 256];
    types.push(3);
    for i in tokens.len()..n {
        tokens.push(format!("<|reserved_{i}|>"));
        types.push(3);
    }
    w.set("tokenizer.ggml.tokens", Value::Array(Array::String(tokens)))?;
    w.set("tokenizer.ggml.token_type", Value::Array(Array::I32(types)))?;
    Ok(())
}
