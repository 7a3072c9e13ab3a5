//! `flashstream chat MODEL [--system TEXT] [--mem SIZE]`: an interactive conversation.
//!
//! Each line read from stdin is a user message; the whole conversation is rendered with the
//! model's chat template, and only the tokens after what the KV cache already holds are
//! evaluated (the conversation so far is its shared prefix), then the reply streams to stdout.
//! `/reset` starts over, `/quit` (or end of input) leaves.

use std::io::{BufRead, Write};
use std::ops::ControlFlow;

use anyhow::Context;

use super::common::{
    build_model, chat_template, render_chat, tokenizer, ModelArgs, Needs, SamplingArgs,
};
use flashstream::runtime::chat::Message;
use flashstream::runtime::generate::{generate, GenerateOptions};
use flashstream::runtime::speculative::{generate_speculative, Prefixed};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    sampling: SamplingArgs,
    /// A system message opening the conversation.
    #[arg(long)]
    system: Option<String>,
    /// Most tokens per reply.
    #[arg(short = 'n', long = "n-predict", default_value_t = 512)]
    n_predict: usize,
    #[command(flatten)]
    spec: super::spec::SpecArgs,
}

/// Length of the common prefix of `a` and `b`.
fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let sampler = a.sampling.config();
    sampler.validate()?;
    let gguf = super::open_model(&a.model.model)?;
    let tok = tokenizer(&gguf, &a.model.model)?;
    let template = chat_template(&gguf, &tok);
    a.spec.validate()?;
    let wanted = flashstream::scheduler::plan::DEFAULT_CTX;
    let draft = match &a.spec.draft {
        Some(p) => Some(super::spec::load_draft(
            p,
            &tok,
            a.model.ctx.unwrap_or(wanted),
            a.model
                .threads
                .unwrap_or_else(|| flashstream::runtime::model::ModelOptions::default().threads),
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
            ctx: Some(1),
            wanted_ctx: Some(wanted),
            logits_rows: a.spec.logits_rows(),
            extra_bytes: tok.heap_bytes() as u64,
        },
        flashstream::scheduler::Trace::off(),
    )?;
    let mut drafter = if a.spec.on() {
        Some(super::spec::drafter(
            &a.spec,
            draft.as_ref(),
            loaded.model().config().n_vocab,
            &a.sampling.config(),
        )?)
    } else {
        None
    };
    let mut session = loaded.session()?;
    let n_ctx = session.n_ctx();
    eprintln!(
        "[{}; /reset to start over, /quit to leave]",
        super::engine::describe_plan(loaded.plan())
    );
    let opts = GenerateOptions {
        max_tokens: a.n_predict,
        sampler,
        ..GenerateOptions::default()
    };
    let mut messages: Vec<Message> = Vec::new();
    if let Some(s) = &a.system {
        messages.push(Message::new("system", s));
    }
    let first = messages.len();
    // The tokens the session's KV cache holds, in order.
    let mut held: Vec<u32> = Vec::new();
    let stdin = std::io::stdin();
    let mut stdout = std::io::stdout();
    let mut line = String::new();
    loop {
        eprint!("> ");
        line.clear();
        if stdin.lock().read_line(&mut line).context("reading stdin")? == 0 {
            break;
        }
        let text = line.trim_end_matches(['\n', '\r']);
        match text.trim() {
            "" => continue,
            "/quit" | "/exit" => break,
            "/reset" => {
                messages.truncate(first);
                held.clear();
                session.reset();
                eprintln!("[conversation cleared]");
                continue;
            }
            _ => {}
        }
        messages.push(Message::new("user", text));
        let (rendered, add_bos) = render_chat(&template, &messages)?;
        let all = tok.encode(&rendered, add_bos, true)?;
        let keep = common_prefix(&held, &all).min(all.len().saturating_sub(1));
        // A model with a recurrent state cannot go back: it starts over (keep 0).
        let keep = session.truncate(keep);
        held.truncate(keep);
        let new = &all[keep..];
        if keep + new.len() >= n_ctx {
            messages.pop();
            eprintln!(
                "[the conversation needs {} of {n_ctx} context positions: /reset, or raise --ctx/--mem]",
                keep + new.len()
            );
            continue;
        }
        let show = |ev: &flashstream::runtime::generate::TokenEvent<'_>| {
            let _ = stdout.write_all(ev.text.as_bytes());
            let _ = stdout.flush();
            ControlFlow::Continue(())
        };
        let mut spec_stats = None;
        let out = match drafter.as_mut() {
            Some(d) => {
                // The drafter sees the whole conversation, not just this turn's new tokens.
                let mut p = Prefixed::new(&held, d.as_mut());
                generate_speculative(
                    &mut session,
                    &tok,
                    new,
                    &opts,
                    &a.spec.options(),
                    &mut p,
                    show,
                )
                .map(|(g, st)| {
                    spec_stats = Some(st);
                    g
                })
            }
            None => generate(&mut session, &tok, new, &opts, show),
        };
        let out = match out {
            Ok(o) => o,
            Err(e) => {
                // The session may hold part of this turn: start the next from a clean cache.
                messages.pop();
                held.clear();
                session.reset();
                eprintln!("\n[error: {e}]");
                continue;
            }
        };
        writeln!(stdout)?;
        held.extend_from_slice(new);
        // Every generated token but the last was evaluated.
        held.extend_from_slice(&out.tokens[..out.tokens.len().saturating_sub(1)]);
        messages.push(Message::new("assistant", out.text.trim()));
        let spec_note = spec_stats.map_or(String::new(), |st| {
            format!(
                "; {:.2} tokens per pass, {} of {} proposed accepted",
                st.tokens_per_pass, st.accepted, st.proposed
            )
        });
        eprintln!(
            "[{} tokens at {:.1}/s{spec_note}; {} of {n_ctx} positions used]",
            out.stats.generated_tokens,
            out.stats.decode_tokens_per_s,
            session.pos()
        );
    }
    Ok(())
}
