//! `flashstream bench MODEL --mem SIZE --spec lookup|draft:MODEL [-p TEXT | --prompt-file F]`:
//! plain decoding and speculative decoding of the same prompt in one run, under one plan:
//! decode tokens/s, tokens per pass, acceptance, bytes read per token (MoE: expert bytes per
//! token; a verification pass reads the union of its positions' experts), and whether the
//! two outputs are identical (greedy). A text prompt's answer stops at the model's
//! end-of-generation token (or `-n`); random ids always decode `-n` tokens.

use std::ops::ControlFlow;
use std::path::PathBuf;

use anyhow::{bail, Context};
use serde_json::{json, Value};

use super::common::{chat_template, render_chat};
use super::engine::{describe_plan, MemArgs};
use super::spec::{load_draft, target_mem, SpecArgs};
use flashstream::formats::GgufModel;
use flashstream::runtime::chat::Message;
use flashstream::runtime::generate::{generate, GenerateOptions, Generation};
use flashstream::runtime::sampler::SamplerConfig;
use flashstream::runtime::speculative::{generate_speculative, SpecStats};
use flashstream::runtime::tokenizer::Tokenizer;
use flashstream::scheduler::{fmt_bytes, SourceStats};
use flashstream::{Engine, EngineOptions};

/// The speculative bench's own flags (with `bench --spec`).
#[derive(clap::Args, Debug, Clone)]
pub struct BenchSpecArgs {
    /// Compare plain decoding with speculative decoding in the same run: `lookup` (prompt
    /// lookup) or `draft:MODEL` (a draft model, resident inside the budget).
    #[arg(long, value_name = "lookup|draft:MODEL")]
    pub spec: Option<String>,
    /// With `--spec`: most tokens proposed per pass.
    #[arg(long, default_value_t = flashstream::runtime::speculative::SpecOptions::default().k)]
    pub spec_k: usize,
    /// With `--spec lookup`: the longest n-gram matched.
    #[arg(long, default_value_t = 3)]
    pub lookup_ngram: usize,
    /// With `--spec`: the prompt text (default: seeded random token ids).
    #[arg(short = 'p', long, conflicts_with = "prompt_file")]
    pub prompt: Option<String>,
    /// With `--spec`: read the prompt from FILE.
    #[arg(long, value_name = "FILE")]
    pub prompt_file: Option<PathBuf>,
    /// With `--spec`: apply the chat template (the prompt is one user message).
    #[arg(long)]
    pub chat: bool,
}

/// What the speculative bench needs from `bench`'s flags.
pub struct SpecBench<'a> {
    pub gguf: GgufModel,
    pub model: PathBuf,
    pub mem: &'a MemArgs,
    pub threads: usize,
    pub n: usize,
    pub prompt_len: usize,
    pub seed: u64,
    pub json: bool,
    pub args: &'a BenchSpecArgs,
}

/// One decoding's figures.
struct Run {
    gen: Generation,
    io: SourceStats,
    spec: Option<SpecStats>,
}

impl Run {
    fn json(&self) -> Value {
        let s = &self.gen.stats;
        let steps = s.generated_tokens.saturating_sub(1).max(1) as f64;
        let mut j = json!({
            "generated_tokens": s.generated_tokens,
            "decode_s": s.decode_s,
            "decode_tokens_per_s": s.decode_tokens_per_s,
            "bytes_read_per_token": self.io.bytes_read as f64 / steps,
            "expert_bytes_read_per_token": self.io.expert_bytes_read as f64 / steps,
            "stall_s": self.io.stall_s,
            "tokens_per_pass": self.spec.map_or(1.0, |x| x.tokens_per_pass),
        });
        if let (Some(x), Some(o)) = (&self.spec, j.as_object_mut()) {
            o.insert("passes".into(), x.passes.into());
            o.insert("proposed".into(), x.proposed.into());
            o.insert("accepted".into(), x.accepted.into());
            o.insert("acceptance".into(), x.acceptance().into());
            o.insert("draft_s".into(), x.draft_s.into());
        }
        j
    }
}

pub fn run(b: SpecBench<'_>) -> anyhow::Result<()> {
    let a = b.args;
    let kind = a.spec.as_deref().unwrap_or_default();
    let spec = SpecArgs {
        lookup: kind == "lookup",
        lookup_ngram: a.lookup_ngram,
        draft: kind.strip_prefix("draft:").map(PathBuf::from),
        spec_k: a.spec_k,
    };
    if !spec.on() {
        bail!("--spec {kind:?}: write lookup or draft:MODEL");
    }
    spec.validate()?;
    let tok = Tokenizer::from_metadata(&b.gguf.metadata)
        .with_context(|| format!("cannot read the tokenizer of {}", b.model.display()))?;
    let text = match (&a.prompt, &a.prompt_file) {
        (Some(p), _) => Some(p.clone()),
        (None, Some(f)) => {
            Some(std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?)
        }
        (None, None) => None,
    };
    // A text prompt's answer ends where the model ends it; random ids have no answer.
    let stop_at_eog = text.is_some();
    let prompt: Vec<u32> = match text {
        Some(t) if a.chat => {
            let tpl = chat_template(&b.gguf, &tok);
            let (r, add) = render_chat(&tpl, &[Message::new("user", &t)])?;
            tok.encode(&r, add, true)?
        }
        Some(t) => tok.encode(&t, true, true)?,
        None => {
            let nv = tok.n_vocab() as u64;
            let mut x = b.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
            (0..b.prompt_len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    (x % nv) as u32
                })
                .collect()
        }
    };
    if prompt.is_empty() {
        bail!("the prompt gives no tokens");
    }
    let ctx = prompt.len() + b.n + 1;
    let draft = match &spec.draft {
        Some(p) => Some(load_draft(p, &tok, ctx, b.threads)?),
        None => None,
    };
    let mut mem = b.mem.clone();
    if let Some(d) = &draft {
        mem.mem = Some(target_mem(b.mem.mem, d.bytes)?);
    }
    let opts = mem.options(EngineOptions {
        ctx: Some(ctx),
        min_ctx: ctx,
        threads: b.threads,
        logits_rows: spec.logits_rows(),
        count_tokenizer: false,
        extra_bytes: tok.heap_bytes() as u64,
        ..EngineOptions::default()
    })?;
    let (opts, bar) = crate::progress::loading(opts);
    let engine = Engine::load(b.gguf, &opts).context("cannot load the model")?;
    drop(bar);
    if !b.json {
        eprintln!("[{}]", describe_plan(engine.plan()));
    }
    let gen_opts = GenerateOptions {
        max_tokens: b.n,
        sampler: SamplerConfig::greedy(),
        stop_at_eog,
        ..GenerateOptions::default()
    };
    let mut session = engine.session()?;
    // Source counters at the first token: the decode's share is what follows.
    let decode = |session: &mut flashstream::runtime::model::Session<'_>,
                  spec_run: bool|
     -> anyhow::Result<Run> {
        session.reset();
        let mut first: Option<SourceStats> = None;
        let on_token = |_: &flashstream::runtime::generate::TokenEvent<'_>| {
            if first.is_none() {
                first = Some(engine.stats());
            }
            ControlFlow::Continue(())
        };
        let (gen, st) = if spec_run {
            let mut drafter = super::spec::drafter(
                &spec,
                draft.as_ref(),
                engine.model().config().n_vocab,
                &gen_opts.sampler,
            )?;
            let (g, st) = generate_speculative(
                session,
                &tok,
                &prompt,
                &gen_opts,
                &spec.options(),
                drafter.as_mut(),
                on_token,
            )?;
            (g, Some(st))
        } else {
            (generate(session, &tok, &prompt, &gen_opts, on_token)?, None)
        };
        let end = engine.stats();
        let io = end.since(&first.unwrap_or_else(|| end.clone()));
        Ok(Run { gen, io, spec: st })
    };
    let plain = decode(&mut session, false)?;
    let specd = decode(&mut session, true)?;
    let identical = plain.gen.tokens == specd.gen.tokens;
    let speedup = if plain.gen.stats.decode_tokens_per_s > 0.0 {
        specd.gen.stats.decode_tokens_per_s / plain.gen.stats.decode_tokens_per_s
    } else {
        0.0
    };
    let out = json!({
        "model": b.model,
        "spec": kind,
        "spec_k": spec.spec_k,
        "prompt_tokens": prompt.len(),
        "budget_bytes": engine.plan().budget,
        "planned_bytes": engine.plan().total_bytes(),
        "draft_bytes": draft.as_ref().map(|d| d.bytes),
        "weight_bytes": engine.plan().weight_bytes,
        "plain": plain.json(),
        "speculative": specd.json(),
        "identical": identical,
        "decode_speedup": speedup,
    });
    if b.json {
        println!("{out}");
    } else {
        for (name, r) in [("plain", &plain), (kind, &specd)] {
            let j = r.json();
            println!(
                "{name:>12}: {} tokens at {:.2} tokens/s, {:.2} tokens per pass, {} read per token{}",
                r.gen.stats.generated_tokens,
                r.gen.stats.decode_tokens_per_s,
                j["tokens_per_pass"].as_f64().unwrap_or(1.0),
                fmt_bytes(j["bytes_read_per_token"].as_f64().unwrap_or(0.0) as u64),
                r.spec.map_or(String::new(), |s| format!(
                    ", {} of {} proposed accepted",
                    s.accepted, s.proposed
                )),
            );
        }
        println!(
            "speculative decoding: {speedup:.2}x decode tokens/s; outputs {}",
            if identical { "identical" } else { "DIFFER" }
        );
    }
    if !identical {
        bail!("the speculative output differs from plain greedy decoding");
    }
    Ok(())
}
