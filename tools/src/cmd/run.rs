//! `flashstream run MODEL -p TEXT [...]`: generate text, streamed to stdout.

use std::io::Write;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde_json::json;

use super::common::{
    build_model, chat_template, render_chat, tokenizer, ModelArgs, Needs, SamplingArgs,
};
use super::engine::{describe_plan, stats_json};
use super::spec::SpecArgs;
use flashstream::runtime::chat::Message;
use flashstream::runtime::generate::{generate_constrained, GenerateOptions};
use flashstream::runtime::speculative::generate_speculative;
use flashstream::runtime::tokenizer::Tokenizer;
use flashstream::scheduler::{sysmem, SourceStats};
use flashstream_structured::{Constraint, Grammar, StructuredVocab};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// The prompt.
    #[arg(short = 'p', long)]
    prompt: String,
    /// Most tokens to generate.
    #[arg(short = 'n', long = "n-predict", default_value_t = 128)]
    n_predict: usize,
    #[command(flatten)]
    sampling: SamplingArgs,
    /// Stop when the text contains this string (may be given several times).
    #[arg(long)]
    stop: Vec<String>,
    /// Do not stop at end-of-generation tokens: always generate `-n` tokens (benchmarks).
    #[arg(long)]
    ignore_eos: bool,
    /// Apply the model's chat template: the prompt is one user message.
    #[arg(long)]
    chat: bool,
    /// With `--chat`: a system message before the user's (the template's default otherwise).
    #[arg(long, requires = "chat")]
    system: Option<String>,
    /// Print one JSON object `{"prompt_tokens","tokens","text","stop_reason","stats"}` at
    /// the end instead of streaming text.
    #[arg(long)]
    json: bool,
    /// Constrain the output to JSON that fits the JSON schema in FILE (the schema itself,
    /// e.g. `{"type":"object","properties":{..},"required":[..]}`).
    #[arg(long, value_name = "FILE", conflicts_with = "grammar")]
    json_schema: Option<PathBuf>,
    /// Constrain the output to the Lark grammar in FILE (llguidance's dialect: `start: ...`;
    /// `%json {..}` embeds a schema).
    #[arg(long, value_name = "FILE")]
    grammar: Option<PathBuf>,
    #[command(flatten)]
    spec: SpecArgs,
    #[command(flatten)]
    trace: super::trace::TraceArgs,
}

/// The constraint `--json-schema` / `--grammar` ask for, compiled (so a bad schema fails
/// before the model loads).
fn constraint(a: &Args, tok: &Tokenizer) -> anyhow::Result<Option<Constraint>> {
    let read =
        |p: &Path| std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()));
    let (grammar, file) = match (&a.json_schema, &a.grammar) {
        (Some(p), _) => {
            let schema: serde_json::Value = serde_json::from_str(&read(p)?).with_context(|| {
                format!("--json-schema {}: the file is not valid JSON", p.display())
            })?;
            (Grammar::json_schema(&schema), p)
        }
        (None, Some(p)) => (Grammar::lark(&read(p)?), p),
        (None, None) => return Ok(None),
    };
    let vocab = StructuredVocab::new(tok)?;
    let c = Constraint::new(&vocab, &grammar)
        .with_context(|| format!("{} {}", grammar.kind(), file.display()))?;
    Ok(Some(c))
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let trace = a.trace.start()?;
    let r = generate_run(&a, &trace);
    // Written also when generation failed part-way: the trace shows how far it got.
    let w = a.trace.finish(&trace);
    r.and(w)
}

fn generate_run(a: &Args, trace: &flashstream::scheduler::Trace) -> anyhow::Result<()> {
    let sampler = a.sampling.config();
    sampler.validate()?;
    if a.stop.iter().any(|s| s.is_empty()) {
        bail!("--stop must not be empty");
    }
    let gguf = super::open_model(&a.model.model)?;
    let tok = tokenizer(&gguf, &a.model.model)?;
    let (text, add_special) = if a.chat {
        let t = chat_template(&gguf, &tok);
        let mut messages = Vec::new();
        if let Some(sys) = &a.system {
            messages.push(Message::new("system", sys));
        }
        messages.push(Message::new("user", &a.prompt));
        render_chat(&t, &messages)?
    } else {
        (a.prompt.clone(), true)
    };
    let prompt = tok.encode(&text, add_special, true)?;
    if prompt.is_empty() {
        bail!("the prompt gives no tokens");
    }
    a.spec.validate()?;
    if a.spec.on() && (a.json_schema.is_some() || a.grammar.is_some()) {
        bail!("--lookup/--draft cannot be combined with --json-schema/--grammar yet");
    }
    let mut constraint = constraint(a, &tok)?;
    let wanted = prompt.len().saturating_add(a.n_predict);
    let threads = a
        .model
        .threads
        .unwrap_or_else(|| flashstream::runtime::model::ModelOptions::default().threads);
    let draft = match &a.spec.draft {
        Some(p) => Some(super::spec::load_draft(
            p,
            &tok,
            a.model.ctx.unwrap_or(wanted),
            threads,
        )?),
        None => None,
    };
    let mut model_args = a.model.clone();
    if let Some(d) = &draft {
        model_args.mem.mem = Some(super::spec::target_mem(a.model.mem.mem, d.bytes)?);
    }
    let loaded = build_model(
        gguf,
        &model_args,
        Needs {
            ctx: Some(prompt.len()),
            wanted_ctx: Some(wanted),
            logits_rows: a.spec.logits_rows(),
            extra_bytes: tok.heap_bytes() as u64,
        },
        trace.clone(),
    )?;
    let n_ctx = loaded.plan().n_ctx;
    let mut session = loaded.model().session(n_ctx)?;
    let s0 = loaded.stats();
    let p0 = loaded.model().prediction_stats();
    // Source counters when the first token is out: the prompt's share, then the decode's.
    let mut s1: Option<SourceStats> = None;
    let opts = GenerateOptions {
        max_tokens: a.n_predict,
        sampler,
        stop: a.stop.clone(),
        stop_at_eog: !a.ignore_eos,
        ..GenerateOptions::default()
    };
    let mut stdout = std::io::stdout().lock();
    let mut write_err = None;
    let dyn_constraint = constraint
        .as_mut()
        .map(|c| c as &mut dyn flashstream::runtime::constraint::LogitsConstraint);
    let on_token = |ev: &flashstream::runtime::generate::TokenEvent<'_>| {
        if s1.is_none() {
            s1 = Some(loaded.stats());
        }
        if !a.json && !ev.text.is_empty() {
            if let Err(e) = stdout
                .write_all(ev.text.as_bytes())
                .and_then(|()| stdout.flush())
            {
                write_err = Some(e);
                return ControlFlow::Break(());
            }
        }
        ControlFlow::Continue(())
    };
    let (out, spec_stats) = if a.spec.on() {
        let n_vocab = loaded.model().config().n_vocab;
        let mut drafter = super::spec::drafter(&a.spec, draft.as_ref(), n_vocab, &opts.sampler)?;
        let (g, st) = generate_speculative(
            &mut session,
            &tok,
            &prompt,
            &opts,
            &a.spec.options(),
            drafter.as_mut(),
            on_token,
        )
        .context("generating")?;
        (g, Some(st))
    } else {
        let g = generate_constrained(&mut session, &tok, &prompt, &opts, dyn_constraint, on_token)
            .context("generating")?;
        (g, None)
    };
    if let Some(e) = write_err {
        return Err(e).context("writing to stdout");
    }
    let complete = constraint.as_mut().map(|c| c.is_accepting());
    if complete == Some(false) {
        eprintln!(
            "warning: the output stopped ({}) before the grammar was complete: it does not fit \
             the schema/grammar (raise -n)",
            out.stop_reason.as_str()
        );
    }
    let s = &out.stats;
    let s2 = loaded.stats();
    let first = s1.unwrap_or_else(|| s2.clone());
    let prompt_io = first.since(&s0);
    // Decode: the steps after the first token (its sampling is part of the prompt's time).
    let decode_io = s2.since(&first);
    let decode_wall = s.decode_s;
    if a.model.mem.stats {
        if !a.json && !out.text.ends_with('\n') {
            eprintln!();
        }
        eprintln!("{}", describe_plan(loaded.plan()));
        eprintln!(
            "[io: {} read for the prompt, {} per generated token; waited {:.3} s for bytes; {} busy {:.3} s]",
            flashstream::scheduler::fmt_bytes(prompt_io.bytes_read),
            flashstream::scheduler::fmt_bytes(
                decode_io.bytes_read / (s.generated_tokens.saturating_sub(1).max(1) as u64)
            ),
            decode_io.stall_s + prompt_io.stall_s,
            loaded.io(),
            decode_io.io_busy_s + prompt_io.io_busy_s,
        );
        if let Some(c) = &constraint {
            let m = c.stats();
            eprintln!(
                "[grammar: compiled in {:.1} ms; mask {:.3} ms/token (max {:.3} ms), commit {:.3} ms/token]",
                m.compile_s * 1e3,
                m.mask_ms_per_token(),
                m.max_mask_s * 1e3,
                m.commit_ms_per_token()
            );
        }
    }
    if a.json {
        let j = json!({
            "prompt_tokens": out.prompt_tokens,
            "tokens": out.tokens,
            "text": out.text,
            "stop_reason": out.stop_reason.as_str(),
            "stats": {
                "prompt_tokens": s.prompt_tokens,
                "generated_tokens": s.generated_tokens,
                "prompt_s": s.prompt_s,
                "decode_s": s.decode_s,
                "prompt_tokens_per_s": s.prompt_tokens_per_s,
                "decode_tokens_per_s": s.decode_tokens_per_s,
                "time_to_first_token_s": s.time_to_first_token_s,
                "threads": loaded.model().threads(),
                "n_ctx": n_ctx,
                "io": loaded.io().to_string(),
                "budget_bytes": loaded.plan().budget,
                "planned_bytes": loaded.plan().total_bytes(),
                "peak_memory_bytes": sysmem::peak_rss(),
                "prompt_bytes_read": prompt_io.bytes_read,
            },
        });
        let mut j = j;
        if let Some(obj) = j["stats"].as_object_mut() {
            if let Some(c) = &constraint {
                let m = c.stats();
                let decode_steps = s.generated_tokens.saturating_sub(1).max(1) as f64;
                obj.insert(
                    "constraint".into(),
                    json!({
                        "complete": complete,
                        "compile_ms": m.compile_s * 1e3,
                        "masks": m.masks,
                        "mask_ms_per_token": m.mask_ms_per_token(),
                        "max_mask_ms": m.max_mask_s * 1e3,
                        "commit_ms_per_token": m.commit_ms_per_token(),
                        "decode_ms_per_token": s.decode_s * 1e3 / decode_steps,
                    }),
                );
            }
            obj.extend(stats_json(
                &decode_io,
                s.generated_tokens.saturating_sub(1) as u64,
                decode_wall,
            ));
            if let Some(st) = &spec_stats {
                obj.insert(
                    "speculative".into(),
                    super::spec::stats_json(st, &super::spec::kind(&a.spec)),
                );
                obj.insert("tokens_per_pass".into(), st.tokens_per_pass.into());
                obj.insert("proposed".into(), st.proposed.into());
                obj.insert("accepted".into(), st.accepted.into());
                obj.insert("passes".into(), st.passes.into());
                obj.insert("draft_s".into(), st.draft_s.into());
                if let Some(d) = &draft {
                    obj.insert("draft_bytes".into(), d.bytes.into());
                }
            }
            let p = loaded.model().prediction_stats().since(&p0);
            if p.actual > 0 {
                // Of the experts routed to, the share the previous layer had predicted.
                obj.insert("prediction_accuracy".into(), p.accuracy().into());
                obj.insert("prediction_precision".into(), p.precision().into());
            }
        }
        writeln!(stdout, "{j}").context("writing to stdout")?;
    } else {
        if !out.text.ends_with('\n') {
            writeln!(stdout).context("writing to stdout")?;
        }
        if let Some(st) = &spec_stats {
            eprintln!(
                "[speculative ({}): {:.2} tokens per pass, {} of {} proposed accepted over {} passes, drafting {:.3} s]",
                super::spec::kind(&a.spec),
                st.tokens_per_pass,
                st.accepted,
                st.proposed,
                st.passes,
                st.draft_s
            );
        }
        eprintln!(
            "[{} prompt tokens at {:.1}/s, {} generated at {:.1}/s, first token after {:.3} s, stop: {}]",
            s.prompt_tokens,
            s.prompt_tokens_per_s,
            s.generated_tokens,
            s.decode_tokens_per_s,
            s.time_to_first_token_s,
            out.stop_reason.as_str()
        );
    }
    Ok(())
}
