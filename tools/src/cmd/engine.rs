//! Loading a model under a memory budget: `--mem`, `--io`, `--prefetch`, the plan, the
//! streaming source and the runtime model, in that order (the plan counts every byte before
//! anything large is allocated).

use anyhow::Context;

use super::size::parse_size;
use flashstream::formats::{GgufModel, ModelConfig};
use flashstream::loader::{BackendOptions, IoKind};
use flashstream::runtime::memory::{metadata_heap_bytes, runtime_needs, NeedsOptions};
use flashstream::runtime::model::{Model, ModelOptions};
use flashstream::scheduler::{
    fmt_bytes, sysmem, Plan, PlanRequest, SchedulerError, SourceStats, StreamingSource, UnitTable,
    CHUNK_BYTES,
};

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
}

/// What the plan needs to know about the command.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    /// `--ctx`, if given.
    pub ctx: Option<usize>,
    /// Positions the command needs at least.
    pub min_ctx: usize,
    /// Positions it would like when `ctx` is not given (default
    /// [`flashstream::scheduler::plan::DEFAULT_CTX`]); the plan
    /// shrinks it to what the budget leaves room for, down to `min_ctx`.
    pub wanted_ctx: Option<usize>,
    /// Logits rows one eval returns at most.
    pub logits_rows: usize,
    /// Compute threads.
    pub threads: usize,
    /// Largest batch.
    pub max_batch: usize,
    /// Heap bytes already held outside the plan's items that must count (tokenizer).
    pub extra_bytes: u64,
}

/// The budget to use: `--mem`, or the default share of what the machine can spare.
pub fn budget(mem: &MemArgs) -> anyhow::Result<u64> {
    match mem.mem {
        Some(m) => Ok(m),
        None => sysmem::default_budget().context(
            "cannot tell how much memory this machine can spare; give a budget with --mem (e.g. --mem 4GiB)",
        ),
    }
}

/// Fewest tokens a prompt chunk may have when the budget forces smaller batches.
pub const MIN_BATCH: usize = 16;

/// The plan for `gguf` under `mem` for a command of `shape`, and the batch size it was made
/// for: `shape.max_batch`, halved (down to [`MIN_BATCH`]) while the budget cannot hold the
/// activations of a bigger one, or while they would take more than an eighth of the budget
/// (bytes that would otherwise pin weights, which every generated token gains from). A
/// smaller batch only means a long prompt is processed in more chunks (each a pass over the
/// streamed weights).
pub fn make_plan(
    gguf: &GgufModel,
    config: &ModelConfig,
    mem: &MemArgs,
    shape: &Shape,
) -> anyhow::Result<(Plan, usize)> {
    if mem.prefetch == Some(0) {
        anyhow::bail!("--prefetch must be at least 1");
    }
    let units = UnitTable::from_model(gguf)?;
    let mut req = PlanRequest::new(budget(mem)?, config.tied_output);
    req.ctx = shape.ctx;
    req.min_ctx = shape.min_ctx.max(1);
    if let Some(w) = shape.wanted_ctx {
        req.default_ctx = w.max(req.min_ctx);
    }
    req.prefetch_depth = mem.prefetch;
    let mut batch = shape.max_batch.max(1);
    loop {
        let mut needs = runtime_needs(
            config,
            &NeedsOptions {
                max_batch: batch,
                threads: shape.threads,
                logits_rows: shape.logits_rows.min(batch),
            },
        );
        needs.fixed.push((
            "parsed metadata and tensor table".into(),
            metadata_heap_bytes(&gguf.metadata) + gguf.tensors.len() as u64 * 256,
        ));
        if shape.extra_bytes > 0 {
            needs.fixed.push(("tokenizer".into(), shape.extra_bytes));
        }
        // Item 0 of runtime_needs is the batch-dependent activations and scratch.
        let scratch = needs.fixed.first().map_or(0, |f| f.1);
        if batch > MIN_BATCH && scratch > req.budget / 8 {
            batch = (batch / 2).max(MIN_BATCH);
            continue;
        }
        match Plan::compute(&units, &needs, &req) {
            Ok(p) => return Ok((p, batch)),
            Err(SchedulerError::BudgetTooSmall { .. }) if batch > MIN_BATCH => {
                batch = (batch / 2).max(MIN_BATCH);
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// A model ready to run under its budget.
pub struct Engine {
    /// The runtime model (owns the streaming source).
    pub model: Model,
    /// Its plan.
    pub plan: Plan,
    /// The backend in use.
    pub io: IoKind,
    /// The largest batch the plan counted activations for (the model's `max_batch`).
    pub batch: usize,
}

impl Engine {
    /// Loads `gguf` under `mem`: plan, backend, pinned weights, I/O thread, model.
    pub fn load(
        gguf: &GgufModel,
        mem: &MemArgs,
        shape: &Shape,
        label: &std::path::Path,
    ) -> anyhow::Result<Engine> {
        let config = ModelConfig::from_model(gguf)
            .with_context(|| format!("cannot run {}", label.display()))?;
        let (plan, batch) = make_plan(gguf, &config, mem, shape)?;
        Self::from_plan(
            gguf,
            mem,
            plan,
            batch.min(shape.max_batch),
            shape.threads,
            label,
        )
    }

    /// Loads `gguf` with a plan made by [`make_plan`].
    pub fn from_plan(
        gguf: &GgufModel,
        mem: &MemArgs,
        plan: Plan,
        batch: usize,
        threads: usize,
        label: &std::path::Path,
    ) -> anyhow::Result<Engine> {
        let backend = flashstream::loader::open_backend(
            gguf,
            &BackendOptions {
                kind: mem.io,
                queue_depth: None,
            },
        )
        .with_context(|| format!("opening {} for reading", label.display()))?;
        let source = StreamingSource::with_backend(gguf, plan.clone(), backend, CHUNK_BYTES)
            .with_context(|| format!("loading weights of {}", label.display()))?;
        let io = source.io_kind();
        let model = Model::new(
            gguf,
            Box::new(source),
            &ModelOptions {
                threads,
                max_batch: batch,
                ..ModelOptions::default()
            },
        )
        .with_context(|| format!("cannot run {}", label.display()))?;
        Ok(Engine {
            model,
            plan,
            io,
            batch,
        })
    }

    /// The source's counters.
    pub fn stats(&self) -> SourceStats {
        self.model.source().stats()
    }
}

/// A one-paragraph description of a plan, for stderr and `plan`.
pub fn describe_plan(p: &Plan) -> String {
    let mut s = String::new();
    s.push_str(&format!(
        "budget {} (planned {}): {} of weights, {} pinned units, {} streamed per token",
        fmt_bytes(p.budget),
        fmt_bytes(p.total_bytes()),
        fmt_bytes(p.weight_bytes),
        p.pinned.len(),
        p.cycle.len(),
    ));
    if p.n_slots > 0 {
        s.push_str(&format!(
            " through {} slots of {} (prefetch depth {})",
            p.n_slots,
            fmt_bytes(p.slot_bytes),
            p.prefetch_depth
        ));
    }
    if p.expert_slots > 0 {
        s.push_str(&format!(
            "; expert cache {} of {} experts",
            p.expert_slots, p.n_experts_total
        ));
    }
    s.push_str(&format!(
        "; context {} positions; ~{} read per token",
        p.n_ctx,
        fmt_bytes(p.predicted_bytes_per_token() as u64)
    ));
    s
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
