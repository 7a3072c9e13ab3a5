//! Options shared by the commands that run a model.

use std::path::PathBuf;

use anyhow::{bail, Context};
use flashstream::formats::GgufModel;
use flashstream::formats::ModelConfig;
use flashstream::runtime::chat::{ChatTemplate, Message};
use flashstream::runtime::model::ModelOptions;
use flashstream::runtime::sampler::SamplerConfig;
use flashstream::runtime::tokenizer::Tokenizer;

use super::engine::MemArgs;
use flashstream::{Engine, EngineOptions};

/// Model, context, threads, batch size and the memory budget.
#[derive(clap::Args, Debug, Clone)]
pub struct ModelArgs {
    /// The GGUF file (the first part of a split model).
    pub model: PathBuf,
    /// Context length in tokens (default: what the command needs, within the budget and the
    /// model's).
    #[arg(long)]
    pub ctx: Option<usize>,
    /// Threads for compute (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Most tokens evaluated in one pass through the layers (longer inputs are chunked; a
    /// tight budget may lower it).
    #[arg(long, default_value_t = ModelOptions::default().max_batch)]
    pub batch: usize,
    #[command(flatten)]
    pub mem: MemArgs,
}

/// The tokenizer stored in the model's metadata.
pub fn tokenizer(gguf: &GgufModel, path: &std::path::Path) -> anyhow::Result<Tokenizer> {
    Tokenizer::from_metadata(&gguf.metadata)
        .with_context(|| format!("cannot read the tokenizer of {}", path.display()))
}

/// What a command asks of the model besides the common options.
#[derive(Debug, Clone, Copy, Default)]
pub struct Needs {
    /// Positions the input needs at least.
    pub ctx: Option<usize>,
    /// Positions it would like when `--ctx` is not given.
    pub wanted_ctx: Option<usize>,
    /// Logits rows one eval returns at most.
    pub logits_rows: usize,
    /// Heap bytes already held for the model outside the plan (the tokenizer).
    pub extra_bytes: u64,
}

/// Validates the options and loads the model under its budget (see [`Engine`]).
/// `trace` records the run (off unless the command has `--trace`).
pub fn build_model(
    gguf: GgufModel,
    a: &ModelArgs,
    needs: Needs,
    trace: flashstream::scheduler::Trace,
) -> anyhow::Result<Engine> {
    if a.threads == Some(0) {
        bail!("--threads must be at least 1");
    }
    if a.batch == 0 {
        bail!("--batch must be at least 1");
    }
    if a.ctx == Some(0) {
        bail!("--ctx must be at least 1");
    }
    let train = ModelConfig::from_model(&gguf)
        .with_context(|| format!("cannot run {}", a.model.display()))?
        .n_ctx_train;
    if let Some(c) = a.ctx {
        if c > train {
            bail!("--ctx {c} exceeds the model's context length {train}");
        }
    }
    if let (Some(n), Some(c)) = (needs.ctx, a.ctx) {
        if n > c {
            bail!("the input needs {n} positions but the context (--ctx) is {c}; raise --ctx (the model allows {train})");
        }
    }
    if let Some(n) = needs.ctx {
        if n > train {
            bail!("the input needs {n} positions but the model's context length is {train}");
        }
    }
    let opts = a.mem.options(EngineOptions {
        ctx: a.ctx,
        min_ctx: needs.ctx.unwrap_or(1),
        wanted_ctx: needs.wanted_ctx.or(needs.ctx),
        logits_rows: needs.logits_rows.max(1),
        threads: a.threads.unwrap_or_else(|| ModelOptions::default().threads),
        max_batch: a.batch,
        extra_bytes: needs.extra_bytes,
        count_tokenizer: false,
        trace,
        ..EngineOptions::default()
    })?;
    let (opts, bar) = crate::progress::loading(opts);
    let engine =
        Engine::load(gguf, &opts).with_context(|| format!("cannot run {}", a.model.display()))?;
    drop(bar);
    a.mem.start(&engine)?;
    Ok(engine)
}

/// Sampling flags shared by `run` and `chat`.
#[derive(clap::Args, Debug, Clone)]
pub struct SamplingArgs {
    /// Temperature (0 = greedy).
    #[arg(long, default_value_t = SamplerConfig::default().temperature)]
    pub temp: f32,
    /// Seed of the sampler (a seed always gives the same text).
    #[arg(long, default_value_t = SamplerConfig::default().seed)]
    pub seed: u64,
    /// Keep the K most likely tokens (0 = all).
    #[arg(long, default_value_t = SamplerConfig::default().top_k)]
    pub top_k: usize,
    /// Nucleus sampling: keep the smallest set of tokens reaching this probability (1 = off).
    #[arg(long, default_value_t = SamplerConfig::default().top_p)]
    pub top_p: f32,
    /// Drop tokens less likely than this fraction of the most likely one (0 = off).
    #[arg(long, default_value_t = SamplerConfig::default().min_p)]
    pub min_p: f32,
    /// Penalty for repeating recent tokens (1 = off).
    #[arg(long, default_value_t = SamplerConfig::default().repeat_penalty)]
    pub repeat_penalty: f32,
    /// How many recent tokens the repetition, frequency and presence penalties look at.
    #[arg(long, default_value_t = SamplerConfig::default().repeat_last_n)]
    pub repeat_last_n: usize,
    /// Subtract this from a token's logit per occurrence among the recent tokens (0 = off).
    #[arg(long, default_value_t = SamplerConfig::default().frequency_penalty, allow_hyphen_values = true)]
    pub frequency_penalty: f32,
    /// Subtract this from the logit of a token present among the recent tokens (0 = off).
    #[arg(long, default_value_t = SamplerConfig::default().presence_penalty, allow_hyphen_values = true)]
    pub presence_penalty: f32,
}

impl SamplingArgs {
    /// The sampler these flags describe (validate it before use).
    pub fn config(&self) -> SamplerConfig {
        SamplerConfig {
            temperature: self.temp,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            repeat_penalty: self.repeat_penalty,
            repeat_last_n: self.repeat_last_n,
            frequency_penalty: self.frequency_penalty,
            presence_penalty: self.presence_penalty,
            seed: self.seed,
        }
    }
}

/// The model's chat template (minijinja; built-in fallbacks for models without one).
pub fn chat_template(gguf: &GgufModel, tok: &Tokenizer) -> ChatTemplate {
    let piece = |id: Option<u32>| {
        id.map(|i| String::from_utf8_lossy(&tok.token_to_piece_with(i, true)).into_owned())
            .unwrap_or_default()
    };
    let arch = gguf
        .metadata
        .get_str("general.architecture")
        .unwrap_or_default();
    let template = gguf
        .metadata
        .get("tokenizer.chat_template")
        .and_then(|v| v.as_str());
    ChatTemplate::new(template, arch, &piece(tok.bos()), &piece(tok.eos()))
}

/// `messages` rendered with the generation prompt, and whether the tokenizer should add BOS
/// (not when the template wrote it itself).
pub fn render_chat(t: &ChatTemplate, messages: &[Message]) -> anyhow::Result<(String, bool)> {
    let rendered = t.render(messages, true)?;
    let has_bos = !t.bos().is_empty() && rendered.starts_with(t.bos());
    Ok((rendered, !has_bos))
}
