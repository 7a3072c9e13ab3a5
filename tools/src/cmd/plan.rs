//! `flashstream plan MODEL --mem SIZE [--json]`: the residency plan and what it implies.

use std::path::PathBuf;

use anyhow::Context;
use serde_json::json;

use super::engine::{describe_plan, MemArgs};
use flashstream::engine::budget;
use flashstream::formats::tensor_names::PIECE_ROLES;
use flashstream::formats::ModelConfig;
use flashstream::loader::{probe_read_bandwidth, BackendOptions, IoKind};
use flashstream::runtime::memory::kv_bytes_per_position_for;
use flashstream::runtime::model::kv::{check_kv_types, KvType, KvTypes};
use flashstream::scheduler::{fmt_bytes, Plan, SchedulerError, UnitId};
use flashstream::{EngineError, EngineOptions};

#[derive(clap::Args)]
pub struct Args {
    /// The GGUF file (the first part of a split model).
    model: PathBuf,
    #[command(flatten)]
    mem: MemArgs,
    /// Context length (default: what the budget leaves room for, at most 4096).
    #[arg(long)]
    ctx: Option<usize>,
    /// Compute threads (they size the attention scratch).
    #[arg(long)]
    threads: Option<usize>,
    /// Device read bandwidth in GB/s for the predicted tokens/s (default: measure it with a
    /// short O_DIRECT read of the model file).
    #[arg(long)]
    bandwidth: Option<f64>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// "0-3,7,9-12" for a sorted list of layer indices.
fn ranges(v: &[usize]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < v.len() {
        let mut j = i;
        while j + 1 < v.len() && v[j + 1] == v[j] + 1 {
            j += 1;
        }
        out.push(if i == j {
            v[i].to_string()
        } else {
            format!("{}-{}", v[i], v[j])
        });
        i = j + 1;
    }
    out.join(",")
}

fn layers_of(ids: &[UnitId]) -> Vec<usize> {
    ids.iter()
        .filter_map(|u| match u {
            UnitId::Layer(l) => Some(*l),
            _ => None,
        })
        .collect()
}

/// Layer pieces grouped by matrix: `ffn_up [0-3,7]`, and head row ranges: `output rows
/// [0-5]`; then every other unit by name.
fn others_of(ids: &[UnitId]) -> Vec<String> {
    let mut by_piece: std::collections::BTreeMap<usize, Vec<usize>> = Default::default();
    let mut head_rows = Vec::new();
    let mut out = Vec::new();
    for u in ids {
        match *u {
            UnitId::Layer(_) => {}
            UnitId::Piece { layer, piece } => by_piece.entry(piece).or_default().push(layer),
            UnitId::HeadRows(k) => head_rows.push(k),
            other => out.push(other.to_string()),
        }
    }
    let mut groups: Vec<String> = by_piece
        .into_iter()
        .map(|(piece, mut layers)| {
            layers.sort_unstable();
            let name = PIECE_ROLES.get(piece).map_or("piece", |r| r.base_name());
            format!("{name} [{}]", ranges(&layers))
        })
        .collect();
    if !head_rows.is_empty() {
        head_rows.sort_unstable();
        groups.push(format!("output rows [{}]", ranges(&head_rows)));
    }
    groups.extend(out);
    groups
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let gguf = super::open_model(&a.model)?;
    let config = ModelConfig::from_model(&gguf)
        .with_context(|| format!("cannot run {}", a.model.display()))?;
    if a.threads == Some(0) {
        anyhow::bail!("--threads must be at least 1");
    }
    let threads = a
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let opts = a.mem.options(EngineOptions {
        ctx: a.ctx,
        threads,
        ..EngineOptions::default()
    })?;
    let (plan, batch) = flashstream::engine::plan(&gguf, &config, &opts)?;
    // The minimum: the same request with a budget of one byte.
    let minimum = {
        let tiny = EngineOptions {
            mem: Some(1),
            ..opts.clone()
        };
        match flashstream::engine::plan(&gguf, &config, &tiny) {
            Err(EngineError::Scheduler(SchedulerError::BudgetTooSmall { minimum, .. })) => {
                Some(minimum)
            }
            _ => None,
        }
    };
    let (gbps, measured) = match a.bandwidth {
        Some(b) if b > 0.0 && b.is_finite() => (Some(b), false),
        Some(b) => anyhow::bail!("--bandwidth {b} must be a positive number of GB/s"),
        None if plan.streams() => {
            let kind = if a.mem.io == IoKind::Mmap {
                IoKind::Pread
            } else {
                a.mem.io
            };
            let p = probe_read_bandwidth(
                &gguf,
                &BackendOptions {
                    kind,
                    queue_depth: None,
                },
                1 << 30,
            )
            .context("measuring the read bandwidth (give --bandwidth GBPS to skip)")?;
            (Some(p.gb_per_s), true)
        }
        None => (None, false),
    };
    let tps = gbps.and_then(|g| plan.predicted_tokens_per_s(g));
    let kv_by_type = kv_bytes_by_type(&config, plan.n_ctx);
    if a.json {
        let mut j = plan_json(&plan, minimum, gbps, measured, tps, budget(&opts)?);
        j["kv_type_k"] = opts.kv_types.k.name().into();
        j["kv_type_v"] = opts.kv_types.v.name().into();
        j["kv_bytes_by_type"] = kv_by_type
            .iter()
            .map(|(t, b)| (t.name().to_string(), json!(b)))
            .collect::<serde_json::Map<_, _>>()
            .into();
        println!("{j}");
        return Ok(());
    }
    println!("{}", describe_plan(&plan));
    println!("prompt batches of up to {batch} tokens");
    println!();
    println!("budget items:");
    for i in &plan.items {
        println!("  {:<48} {:>12}", i.what, fmt_bytes(i.bytes));
    }
    println!("  {:<48} {:>12}", "total", fmt_bytes(plan.total_bytes()));
    if let Some(m) = minimum {
        println!(
            "  {:<48} {:>12}",
            "minimum budget for this model",
            fmt_bytes(m)
        );
    }
    println!();
    println!(
        "KV cache ({}): {} for {} positions",
        opts.kv_types,
        fmt_bytes(plan.kv_bytes),
        plan.n_ctx
    );
    if let Some(&(_, f16)) = kv_by_type.first() {
        let per: Vec<String> = kv_by_type
            .iter()
            .map(|&(t, b)| {
                let saved = if f16 > 0 {
                    100.0 * (f16 as f64 - b as f64) / f16 as f64
                } else {
                    0.0
                };
                format!("{t} {} (saves {saved:.0}% vs f16)", fmt_bytes(b))
            })
            .collect();
        println!("KV cache by --kv-type: {}", per.join(", "));
    }
    println!();
    if plan
        .pinned
        .iter()
        .chain(&plan.cycle)
        .any(|u| matches!(u, UnitId::Piece { .. } | UnitId::HeadRows(_)))
    {
        println!(
            "units: layers split into pieces stream each matrix on its own (their norms and \
             biases, the cores, stay pinned; `layers` below are whole layers or cores); \
             ring slots hold the largest streamed piece"
        );
    }
    let pl = layers_of(&plan.pinned);
    let sl = layers_of(&plan.cycle);
    println!(
        "pinned:   layers [{}] {}",
        ranges(&pl),
        others_of(&plan.pinned).join(" ")
    );
    println!(
        "streamed: layers [{}] {}",
        ranges(&sl),
        others_of(&plan.cycle).join(" ")
    );
    if plan.embedding_on_demand {
        println!("embedding: rows read on demand");
    }
    println!(
        "read per token: {} ring{}",
        fmt_bytes(plan.ring_bytes_per_token),
        if plan.expert_slots > 0 {
            format!(
                " + up to {} of routed experts ({:.0}% expected cache hits if routing were uniform)",
                fmt_bytes(plan.expert_bytes_per_token_max),
                plan.expert_hit_rate_uniform * 100.0
            )
        } else {
            String::new()
        }
    );
    match (gbps, tps) {
        (Some(g), Some(t)) => println!(
            "predicted decode: {t:.2} tokens/s at {g:.2} GB/s{} (if reads are the bottleneck)",
            if measured { " (measured)" } else { "" }
        ),
        _ => println!("predicted decode: nothing is read per token (compute bound)"),
    }
    Ok(())
}

/// The KV-cache bytes of `n_ctx` positions for each `--kv-type` the model can use (f16
/// first).
fn kv_bytes_by_type(config: &ModelConfig, n_ctx: usize) -> Vec<(KvType, u64)> {
    KvType::ALL
        .into_iter()
        .map(KvTypes::both)
        .filter(|t| check_kv_types(config, *t).is_ok())
        .map(|t| (t.k, kv_bytes_per_position_for(config, t) * n_ctx as u64))
        .collect()
}

fn plan_json(
    p: &Plan,
    minimum: Option<u64>,
    gbps: Option<f64>,
    measured: bool,
    tps: Option<f64>,
    budget: u64,
) -> serde_json::Value {
    let ids = |v: &[UnitId]| -> Vec<String> { v.iter().map(|u| u.to_string()).collect() };
    json!({
        "budget_bytes": budget,
        "planned_bytes": p.total_bytes(),
        "minimum_budget_bytes": minimum,
        "items": p.items.iter().map(|i| json!({"what": i.what, "bytes": i.bytes})).collect::<Vec<_>>(),
        "weight_bytes": p.weight_bytes,
        "pinned": ids(&p.pinned),
        "streamed": ids(&p.cycle),
        "slot_bytes": p.slot_bytes,
        "n_slots": p.n_slots,
        "prefetch_depth": p.prefetch_depth,
        "expert_slots": p.expert_slots,
        "expert_slot_bytes": p.expert_slot_bytes,
        "n_experts": p.n_experts_total,
        "n_ctx": p.n_ctx,
        "kv_bytes": p.kv_bytes,
        "embedding_on_demand": p.embedding_on_demand,
        "ring_bytes_per_token": p.ring_bytes_per_token,
        "expert_bytes_per_token_max": p.expert_bytes_per_token_max,
        "predicted_bytes_per_token": p.predicted_bytes_per_token(),
        "device_read_gbps": gbps,
        "bandwidth_measured": measured,
        "predicted_tokens_per_s": tps,
    })
}
