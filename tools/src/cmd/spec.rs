//! Speculative decoding flags (`--lookup`, `--draft MODEL`, `--spec-k`) shared by `run`,
//! `chat` and `bench`, and the draft model's loading inside the budget: the draft is planned
//! fully resident (weights, KV cache for the context, scratch) and its bytes come off the
//! target's budget.

use std::path::PathBuf;

use anyhow::{bail, Context};
use serde_json::json;

use super::engine::MemSpec;
use flashstream::formats::ModelConfig;
use flashstream::runtime::sampler::SamplerConfig;
use flashstream::runtime::speculative::{
    check_vocab, DraftModel, Drafter, Lookup, SpecOptions, SpecStats,
};
use flashstream::runtime::tokenizer::Tokenizer;
use flashstream::{Engine, EngineOptions};

/// Speculative decoding flags.
#[derive(clap::Args, Debug, Clone)]
pub struct SpecArgs {
    /// Speculative decoding by prompt lookup: the longest recent n-gram of the text that
    /// occurred before proposes the tokens that followed it, verified in one pass.
    #[arg(long, conflicts_with = "draft")]
    pub lookup: bool,
    /// With `--lookup`: the longest n-gram matched (shorter ones down to 1 are tried next).
    #[arg(long, default_value_t = 3)]
    pub lookup_ngram: usize,
    /// Speculative decoding with a draft model (same vocabulary), held resident: its weights
    /// and KV cache are counted in the budget (--mem), which the target gets the rest of.
    #[arg(long, value_name = "MODEL")]
    pub draft: Option<PathBuf>,
    /// Most tokens proposed per pass (at most 48).
    #[arg(long, default_value_t = SpecOptions::default().k)]
    pub spec_k: usize,
}

impl SpecArgs {
    /// Whether any speculation is asked for.
    pub fn on(&self) -> bool {
        self.lookup || self.draft.is_some()
    }

    /// Checks the flags.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.on() && !(1..=flashstream::runtime::speculative::MAX_SPEC_K).contains(&self.spec_k)
        {
            bail!(
                "--spec-k {} must be in 1..={}",
                self.spec_k,
                flashstream::runtime::speculative::MAX_SPEC_K
            );
        }
        if self.lookup_ngram == 0 {
            bail!("--lookup-ngram must be at least 1");
        }
        Ok(())
    }

    /// The logits rows one verification pass returns.
    pub fn logits_rows(&self) -> usize {
        if self.on() {
            self.spec_k + 1
        } else {
            1
        }
    }

    /// The options of [`generate_speculative`](flashstream::runtime::speculative::generate_speculative).
    pub fn options(&self) -> SpecOptions {
        SpecOptions { k: self.spec_k }
    }
}

/// A draft model loaded resident, with its tokenizer.
pub struct Draft {
    /// The draft engine (all of it pinned).
    pub engine: Engine,
    /// Bytes its plan holds.
    pub bytes: u64,
}

/// Loads the draft model at `path` fully resident for `ctx` positions after checking its
/// vocabulary against `target_tok`. The caller takes [`Draft::bytes`] off the target's
/// budget.
pub fn load_draft(
    path: &std::path::Path,
    target_tok: &Tokenizer,
    ctx: usize,
    threads: usize,
) -> anyhow::Result<Draft> {
    let gguf = super::open_model(path)?;
    let tok = Tokenizer::from_metadata(&gguf.metadata).with_context(|| {
        format!(
            "cannot read the tokenizer of draft model {}",
            path.display()
        )
    })?;
    check_vocab(target_tok, &tok).with_context(|| format!("--draft {}", path.display()))?;
    let config = ModelConfig::from_model(&gguf)
        .with_context(|| format!("cannot run draft model {}", path.display()))?;
    let ctx = ctx.min(config.n_ctx_train);
    let opts = EngineOptions {
        // Planned with room to spare to learn what holding all of it takes.
        mem: Some(u64::MAX / 4),
        ctx: Some(ctx),
        min_ctx: ctx,
        threads,
        max_batch: 64,
        logits_rows: 1,
        extra_bytes: tok.heap_bytes() as u64,
        count_tokenizer: false,
        ..EngineOptions::default()
    };
    let plan_at = |mem: u64| {
        flashstream::engine::plan(
            &gguf,
            &config,
            &EngineOptions {
                mem: Some(mem),
                ..opts.clone()
            },
        )
        .with_context(|| format!("cannot plan draft model {}", path.display()))
    };
    let (all, _) = plan_at(u64::MAX / 4)?;
    // The smallest budget, from what holding all of it takes up, under which nothing
    // streams (the planner keeps room for ring slots until it knows everything is pinned).
    let mut mem = all.total_bytes();
    let (plan, batch) = loop {
        let (p, b) = plan_at(mem)?;
        if !p.streams() {
            break (p, b);
        }
        if mem >= all.total_bytes().saturating_mul(2) {
            bail!(
                "draft model {} cannot be planned resident; a draft must be held in RAM (use a smaller one)",
                path.display()
            );
        }
        mem += all.total_bytes() / 32;
    };
    let bytes = plan.total_bytes();
    let opts = EngineOptions {
        mem: Some(mem),
        ..opts
    };
    let engine = Engine::with_plan(gguf, &opts, plan, batch)
        .with_context(|| format!("cannot load draft model {}", path.display()))?;
    Ok(Draft { engine, bytes })
}

/// The budget the target gets when a draft of `draft_bytes` shares `mem` with it.
pub fn target_mem(mem: Option<MemSpec>, draft_bytes: u64) -> anyhow::Result<MemSpec> {
    let total = match mem {
        Some(MemSpec::Bytes(b)) => b,
        Some(MemSpec::Auto(_)) => {
            bail!("--draft needs a fixed budget: give --mem SIZE (auto mode cannot share it)")
        }
        None => flashstream::engine::budget(&EngineOptions::default())?,
    };
    if draft_bytes >= total {
        bail!(
            "the draft model needs {} resident, more than the whole budget {}: raise --mem or use --lookup",
            flashstream::scheduler::fmt_bytes(draft_bytes),
            flashstream::scheduler::fmt_bytes(total)
        );
    }
    Ok(MemSpec::Bytes(total - draft_bytes))
}

/// The drafter the flags ask for (`draft` loaded by [`load_draft`] when `--draft`).
pub fn drafter<'d>(
    a: &SpecArgs,
    draft: Option<&'d Draft>,
    n_vocab: usize,
    sampler: &SamplerConfig,
) -> anyhow::Result<Box<dyn Drafter + 'd>> {
    if let Some(d) = draft {
        let session = d.engine.session()?;
        return Ok(Box::new(DraftModel::new(
            session,
            n_vocab,
            sampler.clone(),
        )?));
    }
    Ok(Box::new(Lookup::new(a.lookup_ngram, 1)))
}

/// Speculation statistics as JSON fields.
pub fn stats_json(s: &SpecStats, kind: &str) -> serde_json::Value {
    json!({
        "drafter": kind,
        "passes": s.passes,
        "proposed": s.proposed,
        "accepted": s.accepted,
        "acceptance": s.acceptance(),
        "tokens_per_pass": s.tokens_per_pass,
        "draft_s": s.draft_s,
    })
}

/// The drafter's name for stats: `lookup` or `draft:PATH`.
pub fn kind(a: &SpecArgs) -> String {
    match &a.draft {
        Some(p) => format!("draft:{}", p.display()),
        None => "lookup".into(),
    }
}
