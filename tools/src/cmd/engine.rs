//! The memory and I/O flags (`--mem`, `--io`, `--prefetch`, `--stats`) and how plans and
//! streaming statistics are shown; loading itself is the library's [`flashstream::Engine`].

use super::size::parse_size;
use flashstream::loader::IoKind;
use flashstream::scheduler::{ExpertPolicy, Plan, SourceStats};
use flashstream::EngineOptions;

/// Memory and I/O options shared by the commands that run a model.
#[derive(clap::Args, Debug, Clone)]
pub struct MemArgs {
    /// Memory budget for everything held for the model (weights in RAM, slots, KV cache,
    /// activations, tokenizer), e.g. 512MiB or 12GiB. Default: 3/4 of the memory available.
    #[arg(long, value_parser = parse_size)]
    pub mem: Option<u64>,
    /// Read backend: auto (io_uring, else pread), uring, pread or mmap.
    #[arg(long, default_value = "auto")]
    pub io: IoKind,
    /// Units read ahead of the one computing (default 2 when the budget allows, else 1).
    #[arg(long)]
    pub prefetch: Option<usize>,
    /// Print streaming statistics to stderr at the end.
    #[arg(long)]
    pub stats: bool,
    /// MoE expert-cache eviction: distance (the layer needed furthest ahead, then LRU) or lru.
    #[arg(long, default_value = "distance")]
    pub expert_policy: ExpertPolicy,
}

impl MemArgs {
    /// The library options these flags (and a command's `shape`) stand for.
    pub fn options(&self, shape: EngineOptions) -> EngineOptions {
        EngineOptions {
            mem: self.mem,
            io: self.io,
            prefetch: self.prefetch,
            expert_policy: self.expert_policy,
            ..shape
        }
    }
}

/// A one-paragraph description of a plan, for stderr and `plan` ([`Plan::describe`]).
pub fn describe_plan(p: impl std::borrow::Borrow<Plan>) -> String {
    p.borrow().describe()
}

/// Streaming statistics as JSON fields (for `--json` stats objects).
pub fn stats_json(
    d: &SourceStats,
    tokens: u64,
    wall_s: f64,
) -> serde_json::Map<String, serde_json::Value> {
    let mut m = serde_json::Map::new();
    let per = |x: f64| if tokens > 0 { x / tokens as f64 } else { 0.0 };
    m.insert("bytes_read".into(), d.bytes_read.into());
    m.insert(
        "bytes_read_per_token".into(),
        per(d.bytes_read as f64).into(),
    );
    m.insert("io_busy_s".into(), d.io_busy_s.into());
    m.insert("stall_s".into(), d.stall_s.into());
    m.insert("compute_s".into(), (wall_s - d.stall_s).max(0.0).into());
    if d.expert_leases > 0 {
        m.insert("expert_leases".into(), d.expert_leases.into());
        m.insert(
            "expert_hit_rate".into(),
            (d.expert_hits as f64 / d.expert_leases as f64).into(),
        );
        m.insert(
            "expert_bytes_read_per_token".into(),
            per(d.expert_bytes_read as f64).into(),
        );
        m.insert("expert_misses".into(), d.expert_misses.into());
        m.insert("expert_prefetch_hits".into(), d.expert_prefetch_hits.into());
        m.insert("expert_prefetch_late".into(), d.expert_late.into());
        m.insert("prefetch_issued".into(), d.prefetch_issued.into());
        if d.prefetch_issued > 0 {
            // Of the predicted experts read, the share then used.
            m.insert(
                "prefetch_precision".into(),
                (d.prefetch_used as f64 / d.prefetch_issued as f64).into(),
            );
        }
    }
    m
}
