//! Options shared by the commands that run a model.

use std::path::PathBuf;

use anyhow::{bail, Context};
use flashstream::runtime::model::{Model, ModelOptions};
use flashstream::scheduler::ResidentSource;

/// Model, context and threads.
#[derive(clap::Args, Debug, Clone)]
pub struct ModelArgs {
    /// The GGUF file (the first part of a split model).
    pub model: PathBuf,
    /// Context length in tokens (default: what the command needs, at most the model's).
    #[arg(long)]
    pub ctx: Option<usize>,
    /// Threads for compute (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
}

/// A model ready to run.
pub struct Loaded {
    pub model: Model,
    pub n_ctx: usize,
}

/// Opens and validates the model; `needed` is the context the command needs at least.
pub fn load_model(a: &ModelArgs, needed: Option<usize>) -> anyhow::Result<Loaded> {
    let gguf = super::open_model(&a.model)?;
    if a.threads == Some(0) {
        bail!("--threads must be at least 1");
    }
    let opts = ModelOptions {
        threads: a.threads.unwrap_or_else(|| ModelOptions::default().threads),
        isa: None,
    };
    let source = ResidentSource::load(&gguf)
        .with_context(|| format!("loading weights of {}", a.model.display()))?;
    let model = Model::new(&gguf, Box::new(source), &opts)
        .with_context(|| format!("cannot run {}", a.model.display()))?;
    let train = model.config().n_ctx_train;
    let n_ctx = match a.ctx {
        Some(0) => bail!("--ctx must be at least 1"),
        Some(c) if c > train => bail!("--ctx {c} exceeds the model's context length {train}"),
        Some(c) => c,
        None => needed.unwrap_or(train).clamp(1, train),
    };
    if let Some(n) = needed {
        if n > n_ctx {
            bail!("the input needs {n} positions but --ctx is {n_ctx}");
        }
    }
    Ok(Loaded { model, n_ctx })
}
