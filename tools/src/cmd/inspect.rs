//! `flashstream inspect MODEL [--json]`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use flashstream::formats::{Array, GgmlType, GgufModel, ModelConfig, Value};
use flashstream::scheduler::fmt_bytes;
use serde_json::{json, Map, Value as Json};

/// Arrays longer than this are summarised.
const ARRAY_SHOWN: usize = 8;

#[derive(clap::Args)]
pub struct Args {
    /// The GGUF file (the first part of a split model).
    model: PathBuf,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let model = super::open_model(&a.model)?;
    let config = ModelConfig::from_model(&model);
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&to_json(&model, &config))?
        );
    } else {
        print_text(&model, &config);
    }
    Ok(())
}

fn array_json(a: &Array) -> Json {
    let n = a.len();
    let items: Vec<Json> = (0..n.min(ARRAY_SHOWN))
        .filter_map(|i| a.get(i).map(|v| value_json(&v)))
        .collect();
    if n <= ARRAY_SHOWN {
        Json::Array(items)
    } else {
        json!({"type": format!("array<{:?}>", a.element_type()).to_lowercase(), "len": n, "head": items})
    }
}

fn value_json(v: &Value) -> Json {
    match v {
        Value::U8(x) => json!(x),
        Value::I8(x) => json!(x),
        Value::U16(x) => json!(x),
        Value::I16(x) => json!(x),
        Value::U32(x) => json!(x),
        Value::I32(x) => json!(x),
        Value::F32(x) => json!(x),
        Value::Bool(x) => json!(x),
        Value::String(s) => json!(s),
        Value::Array(a) => array_json(a),
        Value::U64(x) => json!(x),
        Value::I64(x) => json!(x),
        Value::F64(x) => json!(x),
    }
}

fn value_text(v: &Value) -> String {
    match v {
        Value::String(s) => {
            let mut t: String = s.chars().take(80).collect();
            if t.len() < s.len() {
                t.push_str(&format!("… ({} bytes)", s.len()));
            }
            format!("{t:?}")
        }
        Value::Array(a) => {
            let head: Vec<String> = (0..a.len().min(ARRAY_SHOWN))
                .filter_map(|i| a.get(i).map(|v| value_text(&v)))
                .collect();
            let more = if a.len() > ARRAY_SHOWN { ", …" } else { "" };
            format!(
                "[{:?}; {}] [{}{}]",
                a.element_type(),
                a.len(),
                head.join(", "),
                more
            )
        }
        other => value_json(other).to_string(),
    }
}

fn config_json(config: &Result<ModelConfig, flashstream::formats::FormatError>) -> Json {
    match config {
        Ok(c) => {
            let mut m = Map::new();
            m.insert("architecture".into(), json!(c.arch.name()));
            m.insert("n_layer".into(), json!(c.n_layer));
            m.insert("n_embd".into(), json!(c.n_embd));
            m.insert("n_head".into(), json!(c.n_head));
            m.insert("n_head_kv".into(), json!(c.n_head_kv));
            m.insert("head_dim_k".into(), json!(c.head_dim_k));
            m.insert("head_dim_v".into(), json!(c.head_dim_v));
            m.insert("n_ff".into(), json!(c.n_ff));
            m.insert("n_vocab".into(), json!(c.n_vocab));
            m.insert("n_ctx_train".into(), json!(c.n_ctx_train));
            m.insert("rms_eps".into(), json!(c.rms_eps));
            m.insert(
                "rope".into(),
                json!({"style": format!("{:?}", c.rope.style).to_lowercase(), "dims": c.rope.dims,
                       "freq_base": c.rope.freq_base, "freq_base_swa": c.rope.freq_base_swa,
                       "scaling": format!("{:?}", c.rope.scaling)}),
            );
            if let Some(moe) = c.moe {
                m.insert(
                    "moe".into(),
                    json!({"n_expert": moe.n_expert, "n_expert_used": moe.n_expert_used,
                           "n_ff_expert": moe.n_ff_expert, "n_ff_shared": moe.n_ff_shared,
                           "norm_top_k": moe.norm_top_k}),
                );
            }
            if let Some(s) = c.sliding_window {
                m.insert(
                    "sliding_window".into(),
                    json!({"window": s.window, "pattern": s.pattern}),
                );
            }
            m.insert("attn_softcap".into(), json!(c.attn_softcap));
            m.insert("final_softcap".into(), json!(c.final_softcap));
            m.insert("tied_output".into(), json!(c.tied_output));
            Json::Object(m)
        }
        Err(e) => json!({"error": e.to_string()}),
    }
}

struct Totals {
    by_type: BTreeMap<GgmlType, (usize, u64)>,
    by_layer: BTreeMap<Option<usize>, (usize, u64)>,
}

fn totals(model: &GgufModel) -> Totals {
    let mut by_type = BTreeMap::new();
    let mut by_layer = BTreeMap::new();
    for t in &model.tensors {
        let e = by_type.entry(t.ty).or_insert((0, 0));
        e.0 += 1;
        e.1 += t.n_bytes;
        let e = by_layer.entry(t.layer()).or_insert((0, 0));
        e.0 += 1;
        e.1 += t.n_bytes;
    }
    Totals { by_type, by_layer }
}

fn to_json(
    model: &GgufModel,
    config: &Result<ModelConfig, flashstream::formats::FormatError>,
) -> Json {
    let mut meta = Map::new();
    for (k, v) in model.metadata.iter() {
        meta.insert(k.to_string(), value_json(v));
    }
    let tensors: Vec<Json> = model
        .tensors_in_layer_order()
        .into_iter()
        .map(|t| {
            json!({"name": t.name, "type": t.ty.name(), "shape": t.shape, "file": t.file,
                   "offset": t.offset, "bytes": t.n_bytes})
        })
        .collect();
    let tot = totals(model);
    let by_type: Map<String, Json> = tot
        .by_type
        .iter()
        .map(|(ty, (n, b))| (ty.name().to_string(), json!({"tensors": n, "bytes": b})))
        .collect();
    let by_layer: Vec<Json> = tot
        .by_layer
        .iter()
        .map(|(l, (n, b))| json!({"layer": l, "tensors": n, "bytes": b}))
        .collect();
    let files: Vec<Json> = model
        .files
        .iter()
        .map(|f| {
            json!({"path": f.path.display().to_string(), "bytes": f.len, "version": f.version,
                        "alignment": f.alignment, "data_offset": f.data_offset})
        })
        .collect();
    json!({
        "files": files,
        "metadata": meta,
        "config": config_json(config),
        "tensors": tensors,
        "totals": {"tensors": model.tensors.len(), "bytes": model.total_tensor_bytes(),
                   "by_type": by_type, "by_layer": by_layer},
    })
}

fn print_text(model: &GgufModel, config: &Result<ModelConfig, flashstream::formats::FormatError>) {
    for f in &model.files {
        println!(
            "file: {} ({}, GGUF v{}, alignment {}, data at {})",
            f.path.display(),
            fmt_bytes(f.len),
            f.version,
            f.alignment,
            f.data_offset
        );
    }
    println!("\nmetadata ({} keys):", model.metadata.len());
    for (k, v) in model.metadata.iter() {
        println!("  {k:<48} {}", value_text(v));
    }
    println!("\nconfig:");
    match config_json(config) {
        Json::Object(m) => {
            for (k, v) in m {
                println!("  {k:<16} {v}");
            }
        }
        other => println!("  {other}"),
    }
    println!("\ntensors ({}):", model.tensors.len());
    println!(
        "  {:<40} {:<7} {:<22} {:>4} {:>14} {:>12}",
        "name", "type", "shape", "file", "offset", "bytes"
    );
    for t in model.tensors_in_layer_order() {
        println!(
            "  {:<40} {:<7} {:<22} {:>4} {:>14} {:>12}",
            t.name,
            t.ty.name(),
            format!("{:?}", t.shape),
            t.file,
            t.offset,
            t.n_bytes
        );
    }
    let tot = totals(model);
    println!("\nby type:");
    for (ty, (n, b)) in &tot.by_type {
        println!("  {:<8} {:>5} tensors {:>12}", ty.name(), n, fmt_bytes(*b));
    }
    println!("\nby layer:");
    for (l, (n, b)) in &tot.by_layer {
        let name = l.map_or_else(|| "(none)".to_string(), |l| format!("blk.{l}"));
        println!("  {name:<8} {n:>5} tensors {:>12}", fmt_bytes(*b));
    }
    println!(
        "\ntotal: {} tensors, {}",
        model.tensors.len(),
        fmt_bytes(model.total_tensor_bytes())
    );
}
