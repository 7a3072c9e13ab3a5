//! `flashstream mkmodel`: random-weight models of a requested size, and MoE upcycling.
//!
//! - `mkmodel dense OUT --size 4GiB [--type q4_0]`: a `llama` model with a byte-level
//!   257-token vocabulary (every byte is a token, id 256 is `<|endoftext|>`), shapes chosen
//!   from the size (or given), weights random but well-scaled (finite, unit-ish activations).
//! - `mkmodel moe OUT --arch qwen3moe --size 20GiB --experts 128 --top-k 8`: the same for a
//!   mixture of experts (`qwen3moe`, `qwen2moe` with a shared expert, or Mixtral-style
//!   `llama`), fused `*_exps` tensors; `--arch deepseek2` (or `--shape deepseek-v3|kimi-k2`,
//!   the real dimensions) in `mkmodel_mla.rs`; `--arch glm4moe` (or `--shape
//!   glm-4.5-air|glm-4.6`) in `mkmodel_glm.rs`.
//! - `mkmodel moe OUT --arch gpt-oss --size 4GiB --type mxfp4`, and `mkmodel moe OUT --shape
//!   gpt-oss-120b [--layers N]`: a gpt-oss MoE, or one with a real model's per-layer shape and
//!   quant types (see `mkmodel_shapes.rs`).
//! - `mkmodel moe OUT --shape qwen3.5-397b-a17b [--layers N]` (and the 122B and 35B) and
//!   `mkmodel dense OUT --arch qwen35 [--shape qwen3.5-27b]`: Qwen3.5's hybrid Gated DeltaNet
//!   / gated attention models with the real dimensions (`mkmodel_qwen35.rs`).
//! - `mkmodel upcycle DENSE OUT --experts N --top-k K`: a Mixtral-style MoE whose N experts
//!   are exact copies of each layer's dense FFN, with a random router. The top-k weights are
//!   renormalised to one, so it computes the dense model's function while every token routes.
//!
//! Everything is written through the GGUF writer in one streaming pass (`mkmodel_write.rs`: the
//! random blocks, the tensor specs and the byte vocabulary; the data is generated chunk by
//! chunk on a second thread), then flushed and dropped from the page cache so that a benchmark
//! right after does not read it from RAM. Each real-shape family has its own file.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde_json::json;

use super::size::parse_size;
use crate::progress::Bar;

#[path = "mkmodel_shapes.rs"]
mod shapes;
use flashstream::formats::gguf::GgufWriter;
use flashstream::formats::tensor_names::{arch_tensors, Need, TensorSpec};
use flashstream::formats::{Architecture, Array, GgmlType, TensorRole, Value};
use flashstream::loader::ModelFiles;
use flashstream::runtime::kernels::testutil::Rng;

#[path = "mkmodel_mla.rs"]
mod mla;

#[path = "mkmodel_glm.rs"]
mod glm;

#[path = "mkmodel_qwen35.rs"]
mod qwen35;

#[path = "mkmodel_write.rs"]
mod write;
use write::*;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    kind: Kind,
}

#[derive(clap::Subcommand)]
enum Kind {
    /// A random-weight dense llama model of about the requested size.
    Dense(DenseArgs),
    /// A random-weight mixture-of-experts model of about the requested size.
    Moe(MoeArgs),
    /// A Mixtral-style MoE whose experts are copies of a dense llama model's FFN.
    Upcycle(UpcycleArgs),
}

#[derive(clap::Args)]
struct Common {
    /// Output GGUF file.
    out: PathBuf,
    /// Target file size (e.g. 4GiB); the layer count is chosen to come close. Required
    /// unless `--shape` is given (then it only sets the layer count, as `--layers` does).
    #[arg(long, value_parser = parse_size)]
    size: Option<u64>,
    /// Weight type of the matrices: q4_0, q8_0, f16, q4_k, q6_k or mxfp4.
    #[arg(long = "type", default_value = "q4_0", value_parser = parse_type)]
    ty: GgmlType,
    /// Seed of the random weights (the same seed gives the same file).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Hidden size (default: chosen from the size).
    #[arg(long)]
    embd: Option<usize>,
    /// Number of layers (default: what reaches the size).
    #[arg(long)]
    layers: Option<usize>,
    /// Context length written into the model.
    #[arg(long, default_value_t = 4096)]
    ctx: usize,
    /// Print a JSON summary.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct DenseArgs {
    #[command(flatten)]
    c: Common,
    /// FFN hidden size (default: about 3.5x the hidden size).
    #[arg(long)]
    ff: Option<usize>,
    /// Architecture: llama (shaped from --size), or qwen35 (Qwen3.5's hybrid linear /
    /// full attention, from a real --shape: qwen3.5-27b, the default; --layers N for a slice).
    #[arg(long, default_value = "llama")]
    arch: String,
    /// A real model's shape (llama: qwen2.5-0.5b, tied output, use --type q8_0 for its real
    /// file; qwen35: qwen3.5-27b).
    #[arg(long)]
    shape: Option<String>,
}

#[derive(clap::Args)]
struct MoeArgs {
    #[command(flatten)]
    c: Common,
    /// Architecture: qwen3moe, qwen2moe (with a shared expert), llama (Mixtral-style),
    /// deepseek2, glm4moe, gpt-oss or qwen35moe (Qwen3.5: from a real --shape only).
    #[arg(long, default_value = "qwen3moe")]
    arch: String,
    /// A real model's shape: its per-layer dimensions, expert counts, vocabulary and the quant
    /// types of its common GGUF release (gpt-oss-120b, gpt-oss-20b: MXFP4; deepseek-v3,
    /// kimi-k2, glm-4.5-air, glm-4.6, qwen3.5-397b-a17b, qwen3.5-122b-a10b, qwen3.5-35b-a3b:
    /// Q4_K_M); `--layers N` keeps the shape with fewer layers.
    /// Sets the architecture; `--type`, `--embd`, `--experts`, `--top-k` and `--expert-ff` do
    /// not apply.
    #[arg(long)]
    shape: Option<String>,
    /// Experts per layer.
    #[arg(long, default_value_t = 64)]
    experts: usize,
    /// Experts used per token.
    #[arg(long, default_value_t = 8)]
    top_k: usize,
    /// Hidden size of one expert (default: 3/8 of the hidden size).
    #[arg(long)]
    expert_ff: Option<usize>,
}

#[derive(clap::Args)]
struct UpcycleArgs {
    /// The dense llama GGUF.
    dense: PathBuf,
    /// Output GGUF file.
    out: PathBuf,
    /// Experts per layer.
    #[arg(long)]
    experts: usize,
    /// Experts used per token.
    #[arg(long)]
    top_k: usize,
    /// Seed of the random router.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Write one tensor per expert (`blk.N.ffn_gate.E.weight`, the older layout) instead of
    /// fused `blk.N.ffn_gate_exps.weight` tensors.
    #[arg(long)]
    split_experts: bool,
    /// Print a JSON summary.
    #[arg(long)]
    json: bool,
}

fn parse_type(s: &str) -> Result<GgmlType, String> {
    match s.to_ascii_lowercase().as_str() {
        "q4_0" => Ok(GgmlType::Q4_0),
        "q8_0" => Ok(GgmlType::Q8_0),
        "f16" => Ok(GgmlType::F16),
        "q4_k" => Ok(GgmlType::Q4_K),
        "q6_k" => Ok(GgmlType::Q6_K),
        "mxfp4" => Ok(GgmlType::MXFP4),
        _ => Err(format!(
            "unsupported weight type {s:?} for mkmodel (use q4_0, q8_0, f16, q4_k, q6_k or mxfp4)"
        )),
    }
}

pub fn run(a: Args) -> anyhow::Result<()> {
    match a.kind {
        Kind::Dense(d) => dense(d),
        Kind::Moe(m) => moe(m),
        Kind::Upcycle(u) => upcycle(u),
    }
}

/// Shapes of a llama-like model from a parameter budget.
struct Dims {
    embd: usize,
    ff: usize,
    heads: usize,
    kv_heads: usize,
}

fn dims_for(params: f64, embd: Option<usize>) -> Dims {
    let embd = embd.unwrap_or(if params < 0.6e9 {
        1024
    } else if params < 2.5e9 {
        2048
    } else if params < 14e9 {
        4096
    } else {
        8192
    });
    let heads = (embd / 128).max(1);
    let kv_heads = if heads >= 8 { 8 } else { heads };
    // llama's 8/3 x, rounded to a multiple of 256: ~3.5x at the sizes above.
    let ff = (embd * 7 / 2).div_ceil(256) * 256;
    Dims {
        embd,
        ff,
        heads,
        kv_heads,
    }
}

fn check_dims(c: &Common, d: &Dims) -> anyhow::Result<()> {
    let bs = c.ty.block_size();
    if !d.embd.is_multiple_of(bs) || !d.ff.is_multiple_of(bs) || !d.embd.is_multiple_of(d.heads) {
        bail!(
            "hidden size {} / FFN size {} must be multiples of {}'s block size {bs}, and of the head count {}",
            d.embd,
            d.ff,
            c.ty,
            d.heads
        );
    }
    if c.ctx == 0 {
        bail!("--ctx must be at least 1");
    }
    Ok(())
}

fn common_keys(
    w: &mut GgufWriter,
    arch: &str,
    c: &Common,
    d: &Dims,
    layers: usize,
    vocab: usize,
) -> anyhow::Result<()> {
    let key = |k: &str| format!("{arch}.{k}");
    w.set("general.architecture", Value::String(arch.into()))?;
    w.set(
        "general.name",
        Value::String(format!("flashstream mkmodel {arch} seed {}", c.seed)),
    )?;
    w.set(key("block_count"), Value::U32(layers as u32))?;
    w.set(key("context_length"), Value::U32(c.ctx as u32))?;
    w.set(key("embedding_length"), Value::U32(d.embd as u32))?;
    w.set(key("feed_forward_length"), Value::U32(d.ff as u32))?;
    w.set(key("attention.head_count"), Value::U32(d.heads as u32))?;
    w.set(
        key("attention.head_count_kv"),
        Value::U32(d.kv_heads as u32),
    )?;
    w.set(key("rope.freq_base"), Value::F32(10000.0))?;
    w.set(key("attention.layer_norm_rms_epsilon"), Value::F32(1e-5))?;
    w.set("general.quantization_version", Value::U32(2))?;
    padded_byte_vocab(w, vocab)
}

/// Sizes the shapes of a layer's tensors come from.
struct LayerShape {
    /// Weight type of the matrices.
    ty: GgmlType,
    /// Weight type of the expert matrices.
    expert_ty: GgmlType,
    embd: u64,
    /// Query heads.
    heads: u64,
    /// Query projection rows (`heads × head_dim`; the hidden size except in gpt-oss).
    q: u64,
    head_dim: u64,
    /// Key/value projection rows (`kv_heads × head_dim`).
    kv: u64,
    /// Dense FFN (or expert) hidden size.
    ff: u64,
    /// Experts per layer (0 for a dense model).
    experts: u64,
    /// Shared expert hidden size.
    shared_ff: u64,
}

/// The tensor of `role` in layer `l`, shaped by `d`.
fn role_spec(role: TensorRole, l: usize, d: &LayerShape) -> anyhow::Result<Spec> {
    use TensorRole::*;
    let (e, ty) = (d.embd, d.ty);
    Ok(match role {
        AttnNorm | FfnNorm | PostAttnNorm | PostFfwNorm => Spec::norm(role, l, e),
        FfnExpProbsB => Spec::new(role, l, GgmlType::F32, &[d.experts]),
        AttnQNorm | AttnKNorm => Spec::norm(role, l, d.head_dim),
        AttnQ => Spec::new(role, l, ty, &[e, d.q]),
        AttnOut => Spec::new(role, l, ty, &[d.q, e]),
        AttnK | AttnV => Spec::new(role, l, ty, &[e, d.kv]),
        AttnQBias => Spec::new(role, l, GgmlType::F32, &[d.q]),
        AttnKBias | AttnVBias => Spec::new(role, l, GgmlType::F32, &[d.kv]),
        AttnOutBias => Spec::new(role, l, GgmlType::F32, &[e]),
        AttnSinks => Spec::new(role, l, GgmlType::F32, &[d.heads]),
        FfnGate | FfnUp => Spec::new(role, l, ty, &[e, d.ff]),
        FfnDown => Spec::new(role, l, ty, &[d.ff, e]),
        FfnRouter => Spec::new(role, l, GgmlType::F32, &[e, d.experts]),
        FfnRouterBias => Spec::new(role, l, GgmlType::F32, &[d.experts]),
        FfnGateExps | FfnUpExps => Spec::new(role, l, d.expert_ty, &[e, d.ff, d.experts]),
        FfnDownExps => Spec::new(role, l, d.expert_ty, &[d.ff, e, d.experts]),
        FfnGateExpsBias | FfnUpExpsBias => Spec::new(role, l, GgmlType::F32, &[d.ff, d.experts]),
        FfnDownExpsBias => Spec::new(role, l, GgmlType::F32, &[e, d.experts]),
        FfnRouterShexp => Spec::new(role, l, GgmlType::F32, &[e]),
        FfnGateShexp | FfnUpShexp => Spec::new(role, l, ty, &[e, d.shared_ff]),
        FfnDownShexp => Spec::new(role, l, ty, &[d.shared_ff, e]),
        AttnQA | AttnQANorm | AttnQB | AttnKvAMqa | AttnKvANorm | AttnKB | AttnVB => {
            bail!("{role:?} is shaped by the deepseek2 writer (mkmodel_mla.rs)")
        }
        AttnQkv | AttnGate | SsmConv1d | SsmDt | SsmA | SsmBeta | SsmAlpha | SsmNorm | SsmOut => {
            bail!("{role:?} is a Qwen3.5 linear-attention tensor, not written by this writer")
        }
        TokenEmbd | OutputNorm | Output | RopeFreqs => {
            bail!("{role:?} is not a layer tensor")
        }
    })
}

/// The required tensors of `specs` in layer `l` (the optional ones are left out).
fn push_specs(
    specs: &[TensorSpec],
    l: usize,
    d: &LayerShape,
    out: &mut Vec<Spec>,
) -> anyhow::Result<()> {
    for t in specs.iter().filter(|t| t.need == Need::Required) {
        let mut s = role_spec(t.role, l, d)?;
        // The architecture's own name for the role (gpt-oss's `post_attention_norm`).
        s.name = t.name(l);
        out.push(s);
    }
    Ok(())
}

fn summary(out: &Path, json: bool, fields: serde_json::Value) -> anyhow::Result<()> {
    if json {
        println!("{fields}");
    } else {
        let mut s = std::io::stdout().lock();
        writeln!(s, "wrote {}", out.display())?;
        if let Some(m) = fields.as_object() {
            for (k, v) in m {
                writeln!(s, "  {k:<16} {v}")?;
            }
        }
    }
    Ok(())
}

fn dense(a: DenseArgs) -> anyhow::Result<()> {
    let c = &a.c;
    // Qwen2.5-0.5B's dimensions (its config.json: hidden 896, intermediate 4864, 24 layers,
    // 14 heads, 2 KV heads, vocabulary 151936, tied embeddings); its Q8_0 file is
    // `--type q8_0`, whose 151936-row embedding (the output head too) is 138 MiB.
    let qwen05 = match (a.arch.as_str(), a.shape.as_deref()) {
        ("qwen35", _) => return qwen35::qwen35(c, false, a.shape.as_deref()),
        ("llama", None) => false,
        ("llama", Some("qwen2.5-0.5b")) => true,
        ("llama", Some(other)) => bail!(
            "unknown --shape {other:?} for a dense llama model (qwen2.5-0.5b; or give --size)"
        ),
        (other, _) => {
            bail!("unsupported --arch {other:?} for a dense model (use llama or qwen35)")
        }
    };
    let bpw = c.ty.block_bytes() as f64 / c.ty.block_size() as f64;
    let mut d = if qwen05 {
        Dims {
            embd: 896,
            ff: 4864,
            heads: 14,
            kv_heads: 2,
        }
    } else {
        dims_for(size_of(c)? as f64 / bpw, c.embd)
    };
    if let Some(ff) = a.ff {
        d.ff = ff;
    }
    check_dims(c, &d)?;
    let e = d.embd as u64;
    let hd = (d.embd / d.heads) as u64;
    let kv = d.kv_heads as u64 * hd;
    let per_layer_w = 2 * e * e + 2 * e * kv + 3 * e * d.ff as u64;
    let per_layer = (per_layer_w as f64 * bpw) as u64 + 8 * e;
    let vocab = if qwen05 { 151_936u64 } else { 257 };
    let layers = match (qwen05, c.layers) {
        (true, None) => 24,
        _ => layer_count(c, per_layer, 2 * vocab * e * 2 + 4 * e)?,
    };
    let mut w = GgufWriter::new();
    common_keys(&mut w, "llama", c, &d, layers, vocab as usize)?;
    w.set("general.file_type", Value::U32(file_type(c.ty)))?;
    let table = arch_tensors(Architecture::Llama);
    let shape = LayerShape {
        ty: c.ty,
        expert_ty: c.ty,
        embd: e,
        heads: d.heads as u64,
        q: e,
        head_dim: hd,
        kv,
        ff: d.ff as u64,
        experts: 0,
        shared_ff: 0,
    };
    // The shaped model ties its output to an embedding of the weight type.
    let embd_ty = if qwen05 { c.ty } else { GgmlType::F16 };
    let mut specs = vec![Spec::new(TensorRole::TokenEmbd, 0, embd_ty, &[e, vocab])];
    for l in 0..layers {
        push_specs(table.attn, l, &shape, &mut specs)?;
        push_specs(table.dense_ffn, l, &shape, &mut specs)?;
    }
    specs.push(Spec::norm(TensorRole::OutputNorm, 0, e));
    if !qwen05 {
        specs.push(Spec::new(TensorRole::Output, 0, GgmlType::F16, &[e, vocab]));
    }
    let params = declare(&mut w, &specs)?;
    let len = write_random(w, &specs, &c.out, c.seed)?;
    summary(
        &c.out,
        c.json,
        json!({"path": c.out, "architecture": "llama", "bytes": len, "params": params,
               "layers": layers, "embd": d.embd, "ff": d.ff, "heads": d.heads,
               "kv_heads": d.kv_heads, "type": c.ty.to_string(),
               "layer_bytes": specs.iter().filter(|s| s.name.starts_with("blk.0.")).map(Spec::bytes).sum::<u64>()}),
    )
}

/// `--layers`, or as many layers of `per_layer` bytes as reach `--size` beside `fixed` bytes.
fn layer_count(c: &Common, per_layer: u64, fixed: u64) -> anyhow::Result<usize> {
    let n = match (c.layers, c.size) {
        (Some(n), _) => n,
        (None, Some(size)) => {
            (size.saturating_sub(fixed) as f64 / per_layer as f64).round() as usize
        }
        (None, None) => bail!("give --size (e.g. --size 4GiB) or --layers"),
    };
    Ok(n.max(1))
}

/// `--size`, required where no `--shape` gives the dimensions.
fn size_of(c: &Common) -> anyhow::Result<u64> {
    c.size.context("--size is required (e.g. --size 4GiB)")
}

/// Declares `specs` in `w`; returns their parameter count.
fn declare(w: &mut GgufWriter, specs: &[Spec]) -> anyhow::Result<u64> {
    for s in specs {
        w.add_tensor(&s.name, s.ty, &s.shape)?;
    }
    Ok(specs.iter().map(|s| s.shape.iter().product::<u64>()).sum())
}

fn file_type(ty: GgmlType) -> u32 {
    // llama.cpp's LLAMA_FTYPE values (informational).
    match ty {
        GgmlType::F16 => 1,
        GgmlType::Q4_0 => 2,
        GgmlType::Q8_0 => 7,
        GgmlType::Q4_K => 15,
        GgmlType::Q6_K => 18,
        _ => 0,
    }
}

fn moe(a: MoeArgs) -> anyhow::Result<()> {
    let c = &a.c;
    let arch = a.arch.as_str();
    if arch == "deepseek2" || matches!(a.shape.as_deref(), Some("deepseek-v3" | "kimi-k2")) {
        let shape = a.shape.clone();
        return mla::deepseek2(a, shape.as_deref());
    }
    if arch == "qwen35moe" || a.shape.as_deref().is_some_and(|s| s.starts_with("qwen3.5")) {
        return qwen35::qwen35(c, true, a.shape.as_deref());
    }
    if arch == "glm4moe" || matches!(a.shape.as_deref(), Some("glm-4.5-air" | "glm-4.6")) {
        let shape = a.shape.clone();
        return glm::glm4moe(a, shape.as_deref());
    }
    if a.shape.is_some() || arch == "gpt-oss" {
        return shapes::moe_shaped(&a);
    }
    if !matches!(arch, "qwen3moe" | "qwen2moe" | "llama") {
        bail!(
            "unsupported --arch {arch:?} for a MoE (use qwen3moe, qwen2moe, llama, deepseek2, \
             glm4moe or gpt-oss)"
        );
    }
    if a.experts == 0 || a.top_k == 0 || a.top_k > a.experts {
        bail!("--top-k {} must be in 1..=--experts {}", a.top_k, a.experts);
    }
    let bpw = c.ty.block_bytes() as f64 / c.ty.block_size() as f64;
    let mut d = dims_for(
        size_of(c)? as f64 / bpw / (a.experts as f64 / 4.0).max(1.0),
        c.embd,
    );
    let eff = a.expert_ff.unwrap_or_else(|| {
        (d.embd * 3 / 8).div_ceil(c.ty.block_size().max(32)) * c.ty.block_size().max(32)
    });
    d.ff = eff;
    check_dims(c, &d)?;
    let e = d.embd as u64;
    let hd = (d.embd / d.heads) as u64;
    let kv = d.kv_heads as u64 * hd;
    let shared_ff = if arch == "qwen2moe" {
        eff as u64 * 2
    } else {
        0
    };
    let nx = a.experts as u64;
    let attn_w = 2 * e * e + 2 * e * kv;
    let per_layer_w = attn_w + 3 * e * eff as u64 * nx + 3 * e * shared_ff;
    let per_layer = (per_layer_w as f64 * bpw) as u64 + 4 * e * nx + 8 * e;
    let vocab = 257u64;
    let layers = layer_count(c, per_layer, 2 * vocab * e * 2)?;
    let mut w = GgufWriter::new();
    common_keys(&mut w, arch, c, &d, layers, 257)?;
    let key = |k: &str| format!("{arch}.{k}");
    w.set(key("expert_count"), Value::U32(a.experts as u32))?;
    w.set(key("expert_used_count"), Value::U32(a.top_k as u32))?;
    w.set(key("expert_feed_forward_length"), Value::U32(eff as u32))?;
    if arch == "qwen2moe" {
        w.set(
            key("expert_shared_feed_forward_length"),
            Value::U32(shared_ff as u32),
        )?;
    }
    if arch == "qwen3moe" {
        w.set(key("attention.key_length"), Value::U32(hd as u32))?;
        w.set(key("attention.value_length"), Value::U32(hd as u32))?;
    }
    w.set("general.file_type", Value::U32(file_type(c.ty)))?;
    let table = arch_tensors(Architecture::from_name(arch)?);
    let shape = LayerShape {
        ty: c.ty,
        expert_ty: c.ty,
        embd: e,
        heads: d.heads as u64,
        q: e,
        head_dim: hd,
        kv,
        ff: eff as u64,
        experts: nx,
        shared_ff,
    };
    let mut specs = vec![Spec::new(
        TensorRole::TokenEmbd,
        0,
        GgmlType::F16,
        &[e, vocab],
    )];
    for l in 0..layers {
        push_specs(table.attn, l, &shape, &mut specs)?;
        push_specs(table.moe_ffn, l, &shape, &mut specs)?;
    }
    specs.push(Spec::norm(TensorRole::OutputNorm, 0, e));
    specs.push(Spec::new(TensorRole::Output, 0, GgmlType::F16, &[e, vocab]));
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
        json!({"path": c.out, "architecture": arch, "bytes": len, "params": params,
               "layers": layers, "embd": d.embd, "expert_ff": eff, "experts": a.experts,
               "top_k": a.top_k, "expert_bytes": expert_bytes, "type": c.ty.to_string(),
               "active_params_per_token": params - (layers as u64) * 3 * e * eff as u64 * (nx - a.top_k as u64)}),
    )
}

fn upcycle(a: UpcycleArgs) -> anyhow::Result<()> {
    if a.experts < 1 || a.top_k < 1 || a.top_k > a.experts {
        bail!("--top-k {} must be in 1..=--experts {}", a.top_k, a.experts);
    }
    let src = super::open_model(&a.dense)?;
    let arch = src.architecture()?.to_string();
    if arch != "llama" {
        bail!(
            "upcycle needs a dense llama model; {} is {arch:?}",
            a.dense.display()
        );
    }
    if src
        .metadata
        .get("llama.expert_count")
        .is_some_and(|v| v.as_u64().unwrap_or(0) > 0)
    {
        bail!("{} already has experts", a.dense.display());
    }
    let n_embd = src.metadata.get_u64("llama.embedding_length")?;
    let files = ModelFiles::open(&src)?;
    let nx = a.experts as u64;
    let mut w = GgufWriter::new();
    w.copy_metadata(&src.metadata)?;
    w.set("llama.expert_count", Value::U32(a.experts as u32))?;
    w.set("llama.expert_used_count", Value::U32(a.top_k as u32))?;
    if let Some(Value::String(n)) = src.metadata.get("general.name") {
        w.set(
            "general.name",
            Value::String(format!(
                "{n} upcycled to {} experts top-{}",
                a.experts, a.top_k
            )),
        )?;
    }
    // What each output tensor is made of: a source tensor (copied `times` times), or a router.
    enum From {
        Copy { src: usize, times: u64 },
        Router { layer: usize },
    }
    let mut plan: Vec<(String, GgmlType, Vec<u64>, From)> = Vec::new();
    for (i, t) in src.tensors.iter().enumerate() {
        let l = t.layer();
        let fused =
            |base: &str| l.and_then(|l| (t.name == format!("blk.{l}.{base}.weight")).then_some(l));
        if let Some(l) = fused("ffn_gate") {
            plan.push((
                format!("blk.{l}.ffn_gate_inp.weight"),
                GgmlType::F32,
                vec![n_embd, nx],
                From::Router { layer: l },
            ));
        }
        let ffn = ["ffn_gate", "ffn_up", "ffn_down"]
            .iter()
            .find_map(|b| fused(b).map(|l| (l, *b)));
        match ffn {
            Some((l, b)) if a.split_experts => {
                for x in 0..nx {
                    plan.push((
                        format!("blk.{l}.{b}.{x}.weight"),
                        t.ty,
                        t.shape.clone(),
                        From::Copy { src: i, times: 1 },
                    ));
                }
            }
            Some((l, b)) => {
                let mut shape = t.shape.clone();
                shape.push(nx);
                plan.push((
                    format!("blk.{l}.{b}_exps.weight"),
                    t.ty,
                    shape,
                    From::Copy { src: i, times: nx },
                ));
            }
            None => plan.push((
                t.name.clone(),
                t.ty,
                t.shape.clone(),
                From::Copy { src: i, times: 1 },
            )),
        }
    }
    for (name, ty, shape, _) in &plan {
        w.add_tensor(name, *ty, shape)?;
    }
    let mut data = w
        .create(&a.out)
        .with_context(|| format!("creating {}", a.out.display()))?;
    let file_len = data.file_len();
    let total = plan
        .iter()
        .map(|(_, _, shape, from)| match from {
            From::Copy { src: i, times } => src.tensors[*i].n_bytes * times,
            From::Router { .. } => shape.iter().product::<u64>() * 4,
        })
        .sum();
    let bar = Bar::bytes(&format!("writing {}", a.out.display()), total);
    let mut buf = Vec::new();
    for (name, _, shape, from) in &plan {
        match from {
            From::Copy { src: i, times } => {
                let t = &src.tensors[*i];
                // Expert e's slice is a whole copy of the source tensor: write it `times`
                // times, reading it in pieces.
                for _ in 0..*times {
                    let mut at = 0u64;
                    while at < t.n_bytes {
                        let n = (CHUNK as u64).min(t.n_bytes - at) as usize;
                        buf.resize(n, 0);
                        files.read_exact_at(t.file, t.offset + at, &mut buf)?;
                        data.write_chunk(name, &buf)?;
                        bar.inc(n as u64);
                        at += n as u64;
                    }
                }
            }
            From::Router { layer } => {
                // One stream per layer: the fused and per-expert layouts get the same router.
                let mut rng = Rng::with_stream(a.seed, *layer as u64);
                let n: u64 = shape.iter().product();
                // Router logits of a few units: tokens spread over all experts.
                let v: Vec<u8> = (0..n)
                    .flat_map(|_| (rng.sym() * 3.0 / (n_embd as f32).sqrt() * 4.0).to_le_bytes())
                    .collect();
                data.write_chunk(name, &v)?;
                bar.inc(v.len() as u64);
            }
        }
    }
    drop(bar);
    finish_file(data.finish()?, &a.out)?;
    summary(
        &a.out,
        a.json,
        json!({"path": a.out, "architecture": "llama", "bytes": file_len, "experts": a.experts,
               "top_k": a.top_k, "source": a.dense}),
    )
}
