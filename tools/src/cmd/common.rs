//! Options shared by the commands that run a model.

use std::path::PathBuf;

use anyhow::{bail, Context};
use flashstream::formats::GgufModel;
use flashstream::runtime::model::{Model, ModelOptions};
use flashstream::runtime::tokenizer::Tokenizer;
use flashstream::scheduler::ResidentSource;

/// Model, context, threads and batch size.
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
    /// Most tokens evaluated in one pass through the layers (longer inputs are chunked).
    #[arg(long, default_value_t = ModelOptions::default().max_batch)]
    pub batch: usize,
}

/// A model ready to run.
pub struct Loaded {
    pub model: Model,
    pub n_ctx: usize,
}

/// The tokenizer stored in the model's metadata.
pub fn tokenizer(gguf: &GgufModel, path: &std::path::Path) -> anyhow::Result<Tokenizer> {
    Tokenizer::from_metadata(&gguf.metadata)
        .with_context(|| format!("cannot read the tokenizer of {}", path.display()))
}

/// Validates the options and the model. `needed` is the context the command needs at least,
/// `wanted` the context it would like when `--ctx` is not given (default: `needed`, else the
/// model's).
pub fn build_model(
    gguf: &GgufModel,
    a: &ModelArgs,
    needed: Option<usize>,
    wanted: Option<usize>,
) -> anyhow::Result<Loaded> {
    if a.threads == Some(0) {
        bail!("--threads must be at least 1");
    }
    if a.batch == 0 {
        bail!("--batch must be at least 1");
    }
    if a.ctx == Some(0) {
        bail!("--ctx must be at least 1");
    }
    let opts = ModelOptions {
        threads: a.threads.unwrap_or_else(|| ModelOptions::default().threads),
        max_batch: a.batch,
        ..ModelOptions::default()
    };
    let source = ResidentSource::load(gguf)
        .with_context(|| format!("loading weights of {}", a.model.display()))?;
    let model = Model::new(gguf, Box::new(source), &opts)
        .with_context(|| format!("cannot run {}", a.model.display()))?;
    let train = model.config().n_ctx_train;
    let n_ctx = match a.ctx {
        Some(c) if c > train => bail!("--ctx {c} exceeds the model's context length {train}"),
        Some(c) => c,
        None => wanted.or(needed).unwrap_or(train).clamp(1, train),
    };
    if let Some(n) = needed {
        if n > n_ctx {
            bail!("the input needs {n} positions but the context holds {n_ctx} (raise --ctx; the model allows {train})");
        }
    }
    Ok(Loaded { model, n_ctx })
}

/// Opens and validates the model; `needed` is the context the command needs at least.
pub fn load_model(a: &ModelArgs, needed: Option<usize>) -> anyhow::Result<Loaded> {
    let gguf = super::open_model(&a.model)?;
    build_model(&gguf, a, needed, None)
}
