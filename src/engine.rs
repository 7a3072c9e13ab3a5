//! One call from a GGUF file to a model running under a memory budget.
//!
//! [`Engine::open`] does, in order: parse and validate the file; count what the runtime will
//! need beside the weights (activations, KV cache per position, logits, tokenizer, parsed
//! metadata); compute the residency [`Plan`] under the budget (everything counted before
//! anything large is allocated; a budget below the minimum is
//! [`SchedulerError::BudgetTooSmall`], which states the minimum); open the read backend; read
//! the pinned weights and start the I/O thread ([`StreamingSource`]); and build the runtime
//! [`Model`] on top. The tools' `run`, `logits` and `bench` commands are thin layers over it.
//!
//! ```no_run
//! use flashstream::{Engine, EngineOptions};
//! use flashstream::runtime::generate::{generate, GenerateOptions};
//!
//! let opts = EngineOptions { mem: Some(512 << 20), ..EngineOptions::default() };
//! let engine = Engine::open("model.gguf", &opts)?;
//! let tokenizer = engine.tokenizer()?;
//! let prompt = tokenizer.encode("The capital of France is", true, true)?;
//! let mut session = engine.session()?;
//! let out = generate(&mut session, &tokenizer, &prompt, &GenerateOptions::default(), |ev| {
//!     print!("{}", ev.text);
//!     std::ops::ControlFlow::Continue(())
//! })?;
//! println!("\n{} tokens/s", out.stats.decode_tokens_per_s);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::path::Path;
use std::sync::Arc;

use crate::auto_budget::{AutoBudget, MemoryReader, OsMemory};
use crate::budget::{Budget, EngineSource};
use crate::formats::{FormatError, GgufModel, ModelConfig};
use crate::loader::{open_backend, BackendOptions, IoKind, LoaderError};
use crate::runtime::chat::ChatTemplate;
use crate::runtime::kernels::Numerics;
use crate::runtime::memory::{metadata_heap_bytes, runtime_needs, NeedsOptions};
use crate::runtime::model::kv::{check_kv_types, KvTypes};
use crate::runtime::model::multi::multi_pass_extra_bytes;
use crate::runtime::model::{Model, ModelOptions, RuntimeError, Session};
use crate::runtime::tokenizer::{Tokenizer, TokenizerError};
use crate::scheduler::{
    sysmem, ExpertPolicy, Plan, PlanRequest, RuntimeNeeds, SchedulerError, SourceStats,
    StreamingSource, Trace, UnitTable, SOURCE_READ_BYTES,
};

/// Errors of [`Engine`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// The file is not a usable GGUF model.
    #[error(transparent)]
    Format(#[from] FormatError),
    /// Planning or streaming failed (budget too small, read error, ...).
    #[error(transparent)]
    Scheduler(#[from] SchedulerError),
    /// The read backend could not be opened.
    #[error(transparent)]
    Loader(#[from] LoaderError),
    /// The runtime refused the model or an input.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// The model's tokenizer could not be read.
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    /// Options that cannot work.
    #[error("{0}")]
    Invalid(String),
}

/// How to run a model. The defaults: the budget is three quarters of the memory the machine
/// can spare, `auto` I/O, all cores, a 512-token batch (lowered when the budget is tight),
/// the context the budget leaves room for (up to 4096 positions).
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// Memory budget in bytes for everything held for the model; `None`: see
    /// [`sysmem::default_budget`].
    pub mem: Option<u64>,
    /// Read backend.
    pub io: IoKind,
    /// Units read ahead of the one computing (`None`: 2 when the budget allows, else 1).
    pub prefetch: Option<usize>,
    /// Compute threads.
    pub threads: usize,
    /// Exact context length; `None`: `wanted_ctx` shrunk to what the budget allows.
    pub ctx: Option<usize>,
    /// Positions the caller needs at least (a planning error below that).
    pub min_ctx: usize,
    /// Positions to aim for when `ctx` is `None` (`None`: 4096), at most the model's.
    pub wanted_ctx: Option<usize>,
    /// Logits rows one eval returns at most (1 for generation).
    pub logits_rows: usize,
    /// Largest batch; halved while the budget cannot hold its activations or they would
    /// take more than an eighth of it (down to [`MIN_BATCH`]).
    pub max_batch: usize,
    /// Heap bytes the caller holds for the model outside the plan (e.g. a tokenizer it built).
    pub extra_bytes: u64,
    /// Count the model's tokenizer in the budget (for callers that will build one).
    pub count_tokenizer: bool,
    /// Expert-cache eviction policy (MoE models).
    pub expert_policy: ExpertPolicy,
    /// Sequences decoded together in shared passes (a server's `--parallel`): the plan counts
    /// this many KV caches of the context length, and their pass scratch and logits.
    pub sequences: usize,
    /// Storage types of the KV cache's keys and values (f16 by default; Q8_0 and Q4_0 take
    /// about 53% and 28% of its bytes), counted in the budget.
    pub kv_types: KvTypes,
    /// How batched matmuls (prompts) round: bit-identical to one token at a time and to
    /// llama.cpp's x86 build ([`Numerics::Llama`], the default) or faster prompts whose last
    /// bits depend on the batch ([`Numerics::Fast`]).
    pub numerics: Numerics,
    /// Told how reading the pinned weights goes; returning false cancels the load
    /// ([`SchedulerError::Cancelled`]).
    pub progress: Option<LoadProgress>,
    /// Records reads, stalls, layer compute and passes (off by default; see
    /// [`crate::scheduler::trace`]). The engine only records: the caller writes the events.
    pub trace: Trace,
}

/// A load-progress callback: `(bytes_read, bytes_to_read) -> keep going`.
#[derive(Clone)]
pub struct LoadProgress(pub Arc<dyn Fn(u64, u64) -> bool + Send + Sync>);

impl std::fmt::Debug for LoadProgress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LoadProgress")
    }
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            mem: None,
            io: IoKind::Auto,
            prefetch: None,
            threads: ModelOptions::default().threads,
            ctx: None,
            min_ctx: 1,
            wanted_ctx: None,
            logits_rows: 1,
            max_batch: ModelOptions::default().max_batch,
            extra_bytes: 0,
            count_tokenizer: true,
            expert_policy: ExpertPolicy::default(),
            sequences: 1,
            kv_types: KvTypes::default(),
            numerics: Numerics::default(),
            progress: None,
            trace: Trace::off(),
        }
    }
}

/// Fewest tokens a prompt chunk may have when the budget forces smaller batches.
pub const MIN_BATCH: usize = 16;

/// The budget `opts` asks for: its `mem`, or the default share of what the machine can spare.
pub fn budget(opts: &EngineOptions) -> Result<u64, EngineError> {
    match opts.mem {
        Some(m) => Ok(m),
        None => sysmem::default_budget().ok_or_else(|| {
            EngineError::Invalid(
                "cannot tell how much memory this machine can spare; give a budget (--mem, e.g. 4GiB)"
                    .into(),
            )
        }),
    }
}

/// The plan for `gguf` under `opts`, and the batch size it was made for: `opts.max_batch`,
/// halved (down to [`MIN_BATCH`]) while the budget cannot hold the activations of a bigger
/// one, or while they would take more than an eighth of the budget (bytes that would
/// otherwise pin weights, which every generated token gains from). A smaller batch only means
/// a long prompt is processed in more chunks (each a pass over the streamed weights).
pub fn plan(
    gguf: &GgufModel,
    config: &ModelConfig,
    opts: &EngineOptions,
) -> Result<(Plan, usize), EngineError> {
    if opts.prefetch == Some(0) {
        return Err(EngineError::Invalid("--prefetch must be at least 1".into()));
    }
    if opts.threads == 0 || opts.max_batch == 0 {
        return Err(EngineError::Invalid(
            "threads and the batch size must be at least 1".into(),
        ));
    }
    check_kv_types(config, opts.kv_types).map_err(EngineError::Invalid)?;
    let units = UnitTable::from_model(gguf)?;
    let req = plan_request(config, opts)?;
    let mut batch = opts.max_batch;
    loop {
        let needs = needs_for(gguf, config, opts, batch);
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

/// The plan request `opts` makes (budget, context, prefetch depth, expert policy).
fn plan_request(config: &ModelConfig, opts: &EngineOptions) -> Result<PlanRequest, EngineError> {
    let mut req = PlanRequest::new(budget(opts)?, config.tied_output);
    req.ctx = opts.ctx;
    req.min_ctx = opts.min_ctx.max(1);
    if let Some(w) = opts.wanted_ctx {
        req.default_ctx = w.max(req.min_ctx);
    }
    req.prefetch_depth = opts.prefetch;
    req.expert_policy = opts.expert_policy;
    Ok(req)
}

/// What the runtime and the caller hold beside the weights at batch size `batch`.
fn needs_for(
    gguf: &GgufModel,
    config: &ModelConfig,
    opts: &EngineOptions,
    batch: usize,
) -> RuntimeNeeds {
    let tokenizer_bytes = if opts.count_tokenizer {
        tokenizer_estimate(gguf)
    } else {
        0
    };
    let mut needs = runtime_needs(
        config,
        &NeedsOptions {
            max_batch: batch,
            threads: opts.threads,
            logits_rows: opts.logits_rows.min(batch),
            kv_types: opts.kv_types,
        },
    );
    needs.fixed.push((
        "parsed metadata and tensor table".into(),
        metadata_heap_bytes(&gguf.metadata) + gguf.tensors.len() as u64 * 256,
    ));
    if opts.sequences > 1 {
        let n = opts.sequences as u64;
        needs.kv_bytes_per_pos = needs.kv_bytes_per_pos.saturating_mul(n);
        needs.fixed.push((
            format!("shared-pass scratch and logits of {n} sequences"),
            multi_pass_extra_bytes(config, batch) + n * config.n_vocab as u64 * 4 * 2,
        ));
    }
    if opts.extra_bytes + tokenizer_bytes > 0 {
        needs
            .fixed
            .push(("tokenizer".into(), opts.extra_bytes + tokenizer_bytes));
    }
    needs
}

/// An upper bound of a tokenizer's heap from its metadata (the vocabulary, scores, types and
/// merges it copies, with per-entry overhead), so it can be counted before it is built.
fn tokenizer_estimate(gguf: &GgufModel) -> u64 {
    use crate::formats::{Array, Value};
    let mut b = 0u64;
    for (k, v) in gguf.metadata.iter() {
        if !k.starts_with("tokenizer.ggml.") {
            continue;
        }
        if let Value::Array(a) = v {
            b += match a {
                Array::String(s) => s.iter().map(|x| x.len() as u64 * 2 + 24).sum(),
                other => other.len() as u64 * 8,
            };
        }
    }
    b
}

/// A model running under its budget: the runtime model (which owns the streaming source), its
/// plan, and what it was opened from.
pub struct Engine {
    gguf: GgufModel,
    model: Model,
    /// The plan in force and how to change it (the model's source holds another handle).
    budget: Arc<Budget>,
    io: IoKind,
    batch: usize,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("io", &self.io)
            .field("batch", &self.batch)
            .field("n_ctx", &self.n_ctx())
            .finish()
    }
}

impl Engine {
    /// Opens the GGUF at `path` (the first part of a split model) and loads it under `opts`.
    pub fn open(path: impl AsRef<Path>, opts: &EngineOptions) -> Result<Engine, EngineError> {
        let gguf = GgufModel::open(path.as_ref())?;
        Self::load(gguf, opts)
    }

    /// Loads an already parsed model under `opts`.
    pub fn load(gguf: GgufModel, opts: &EngineOptions) -> Result<Engine, EngineError> {
        let config = ModelConfig::from_model(&gguf)?;
        let (plan, batch) = plan(&gguf, &config, opts)?;
        Self::with_plan(gguf, opts, plan, batch)
    }

    /// Loads `gguf` with a plan made by [`plan`] (for callers that look at the plan first).
    pub fn with_plan(
        gguf: GgufModel,
        opts: &EngineOptions,
        plan: Plan,
        batch: usize,
    ) -> Result<Engine, EngineError> {
        let _span = tracing::info_span!("engine_load").entered();
        let backend = open_backend(
            &gguf,
            &BackendOptions {
                kind: opts.io,
                queue_depth: None,
            },
        )?;
        let progress = opts.progress.clone();
        let source = Arc::new(StreamingSource::with_trace(
            &gguf,
            plan.clone(),
            backend,
            SOURCE_READ_BYTES,
            &mut |done, total| progress.as_ref().is_none_or(|p| (p.0)(done, total)),
            opts.trace.clone(),
        )?);
        let io = source.io_kind();
        let batch = batch.min(opts.max_batch);
        let config = ModelConfig::from_model(&gguf)?;
        // A new budget is planned for the same model, context, batch and options.
        let mut req = plan_request(&config, opts)?;
        req.ctx = Some(plan.n_ctx);
        let budget = Arc::new(Budget::new(
            UnitTable::from_model(&gguf)?,
            needs_for(&gguf, &config, opts, batch),
            req,
            Arc::clone(&source),
            plan,
        ));
        let model = Model::new(
            &gguf,
            Box::new(EngineSource {
                source,
                budget: Arc::clone(&budget),
            }),
            &ModelOptions {
                threads: opts.threads,
                max_batch: batch,
                kv_types: opts.kv_types,
                numerics: opts.numerics,
                trace: opts.trace.clone(),
                ..ModelOptions::default()
            },
        )?;
        Ok(Engine {
            gguf,
            model,
            budget,
            io,
            batch,
        })
    }

    /// The runtime model.
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// The residency plan it runs now (a copy: [`Engine::set_budget`] may replace it).
    pub fn plan(&self) -> Plan {
        self.read_plan().clone()
    }

    fn read_plan(&self) -> std::sync::RwLockReadGuard<'_, Plan> {
        self.budget.plan()
    }

    /// The KV-cache positions of a session (fixed at load; a new budget keeps it).
    pub fn n_ctx(&self) -> usize {
        self.read_plan().n_ctx
    }

    /// The budget in force, in bytes.
    pub fn budget(&self) -> u64 {
        self.read_plan().budget
    }

    /// The smallest budget this engine can run under with its context and batch size (what
    /// [`Engine::set_budget`] accepts at least).
    pub fn min_budget(&self) -> Result<u64, EngineError> {
        Ok(self.budget.min_budget()?)
    }

    /// Moves the budget to `bytes` while the model stays loaded: plans the same model, context
    /// and batch size under it and changes the residency to that plan before returning
    /// (shrinking frees pinned layers, ring and expert-cache slots and gives the memory back
    /// to the OS; growing pins more, reading it from the file). Safe from any thread, also
    /// while a session generates in another: the change waits for a moment when that pass
    /// holds no weights (between layers or tokens) and the pass goes on under the new plan;
    /// the numbers it computes are the same. A fixed budget turns auto mode
    /// ([`Engine::set_budget_auto`]) off.
    ///
    /// A budget below what this engine needs at least is
    /// [`SchedulerError::BudgetTooSmall`] (stating the minimum) and nothing changes.
    pub fn set_budget(&self, bytes: u64) -> Result<(), EngineError> {
        let _span = tracing::info_span!("set_budget", bytes).entered();
        Ok(self.budget.set(bytes)?)
    }

    /// Auto mode on (`Some`) or off (`None`): the budget follows a share of the memory the OS
    /// says is available ([`OsMemory`]; see [`crate::auto_budget`] for the formula
    /// `clamp((held + available) × fraction, max(min, minimum), max)`). Turning it on reads
    /// the available memory and moves the budget to the target before returning; afterwards
    /// the engine reads it again before a forward pass (a token, a prompt, a shared pass) when
    /// `interval` has passed since the last reading, and moves the budget through the same
    /// path as [`Engine::set_budget`] when the target differs from the budget by at least
    /// `hysteresis`. Turning it off keeps the budget where it is.
    ///
    /// Errors: settings out of range, or a platform without a reading of the available memory
    /// (auto mode needs Linux or iOS), are [`EngineError::Invalid`]; nothing changes then.
    pub fn set_budget_auto(&self, auto: Option<AutoBudget>) -> Result<(), EngineError> {
        match auto {
            Some(a) => self.set_budget_auto_with(a, OsMemory),
            None => self.budget.set_auto(None),
        }
    }

    /// [`Engine::set_budget_auto`] reading the available memory from `reader` instead of the
    /// OS (an app that knows better, or a test feeding values; a closure
    /// `Fn() -> Option<u64>` is a reader).
    pub fn set_budget_auto_with(
        &self,
        auto: AutoBudget,
        reader: impl MemoryReader + 'static,
    ) -> Result<(), EngineError> {
        let _span = tracing::info_span!("set_budget_auto", fraction = auto.fraction).entered();
        self.budget.set_auto(Some((auto, Box::new(reader))))
    }

    /// The auto-mode settings in force (`None`: the budget is fixed).
    pub fn budget_auto(&self) -> Option<AutoBudget> {
        self.budget.auto()
    }

    /// In auto mode, reads the available memory now (whatever the interval) and follows it;
    /// for apps told of memory pressure (e.g. iOS's memory warning) that want the budget to
    /// react before the next pass. Without auto mode it does nothing.
    pub fn check_budget_auto(&self) -> Result<(), EngineError> {
        Ok(self.budget.check_auto(true)?)
    }

    /// The parsed GGUF (metadata, tensor table).
    pub fn gguf(&self) -> &GgufModel {
        &self.gguf
    }

    /// The read backend in use (after `auto` resolved).
    pub fn io(&self) -> IoKind {
        self.io
    }

    /// The largest batch (the plan counted its activations).
    pub fn batch(&self) -> usize {
        self.batch
    }

    /// A session with the planned context (its KV cache was counted in the budget).
    pub fn session(&self) -> Result<Session<'_>, EngineError> {
        Ok(self.model.session(self.n_ctx())?)
    }

    /// The model's tokenizer (counted in the budget unless `count_tokenizer` was off).
    pub fn tokenizer(&self) -> Result<Tokenizer, EngineError> {
        Ok(Tokenizer::from_metadata(&self.gguf.metadata)?)
    }

    /// The model's chat template: its own (`tokenizer.chat_template`), else a built-in one for
    /// its architecture.
    pub fn chat_template(&self, tok: &Tokenizer) -> ChatTemplate {
        let piece = |id: Option<u32>| {
            id.map(|i| String::from_utf8_lossy(&tok.token_to_piece_with(i, true)).into_owned())
                .unwrap_or_default()
        };
        let md = &self.gguf.metadata;
        let arch = md.get_str("general.architecture").unwrap_or_default();
        let template = md.get("tokenizer.chat_template").and_then(|v| v.as_str());
        ChatTemplate::new(template, arch, &piece(tok.bos()), &piece(tok.eos()))
    }

    /// The weight source's counters so far (bytes read, stalls, expert cache).
    pub fn stats(&self) -> SourceStats {
        self.model.source().stats()
    }
}
