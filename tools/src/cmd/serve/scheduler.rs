//! The model's thread: admits queued requests into up to `--parallel` sequence slots and runs
//! shared weight passes ([`MultiPass`]) until every sequence is done.
//!
//! A pass takes one token from every decoding sequence and a prompt chunk from sequences
//! still reading their prompt (as many tokens as the batch has room for beside the decode
//! rows); a sequence whose prompt is done samples its next token from the pass's logits. A
//! request whose receiver is gone (the client disconnected) is cancelled before the next
//! pass; a finished one frees its slot for the queue.
//!
//! A request with structured output carries its compiled [`Constraint`]: before that
//! sequence samples, its logits are masked to what the grammar allows; the sampled token is
//! committed; it ends (`stop`) when the grammar is complete. Other sequences of the same pass
//! are untouched.
//!
//! A request with the `speculative` extension drafts by prompt lookup: each pass its
//! sequence adds, beside its pending token, up to K proposed tokens (fewer when the batch is
//! full) and gets the logits of every row; [`verify_pass`] keeps the longest prefix the
//! target agrees with (the rule of `generate_speculative`), the rejected positions are
//! rolled back, and every emitted token is sent like a plain one.

use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, TryRecvError};
use std::time::Instant;

use serde_json::{json, Value};
use tokio::sync::mpsc::UnboundedSender;

use super::api::SpecRequest;
use super::metrics::Metrics;
use flashstream::runtime::generate::{GenerateOptions, StopReason};
use flashstream::runtime::model::{MultiPass, RowLogits, SeqInput, Session};
use flashstream::runtime::sequence::SequenceGen;
use flashstream::runtime::speculative::{
    verify_pass, Drafter, Lookup, Proposal, SpecStats, MAX_SPEC_K,
};
use flashstream::runtime::tokenizer::Tokenizer;
use flashstream::Engine;
use flashstream_structured::{Constraint, MaskStats};

/// A request for the model thread.
pub struct Job {
    pub prompt: Vec<u32>,
    pub opts: GenerateOptions,
    pub events: UnboundedSender<Event>,
    pub queued_at: Instant,
    /// The output constraint, compiled (its first mask computed) before queueing.
    pub constraint: Option<Constraint>,
    /// Prompt-lookup speculative decoding, if asked for.
    pub speculative: Option<SpecRequest>,
}

/// What the model thread tells a request.
#[derive(Debug)]
pub enum Event {
    /// Text to append (may be empty for a token whose text is held back).
    Text(String),
    /// The end, with counts and timings.
    Done {
        reason: StopReason,
        prompt_tokens: usize,
        completion_tokens: usize,
        timings: Value,
    },
    /// The model failed.
    Error(String),
}

struct Active<'t> {
    job: Job,
    gen: SequenceGen<'t>,
    /// Prompt tokens evaluated so far.
    done: usize,
    /// The token to evaluate next once decoding.
    next: Option<u32>,
    started: Instant,
    first_token: Option<Instant>,
    /// This sequence's share of the bytes read by the passes it took part in.
    bytes: f64,
    decode_bytes: f64,
    spec: Option<Spec>,
}

/// A speculative sequence's drafter, this pass's proposal and its figures.
struct Spec {
    req: SpecRequest,
    drafter: Lookup,
    proposal: Proposal,
    stats: SpecStats,
}

impl Active<'_> {
    fn in_prompt(&self) -> bool {
        self.done < self.job.prompt.len()
    }
}

/// Runs the model thread's loop until the queue's senders are gone.
pub fn run(
    engine: &Engine,
    tokenizer: &Tokenizer,
    parallel: usize,
    rx: Receiver<Job>,
    metrics: &Metrics,
) {
    let model = engine.model();
    let max_batch = model.max_batch().max(1);
    let n_vocab = model.config().n_vocab;
    let mut sessions: Vec<Session<'_>> = Vec::with_capacity(parallel);
    for _ in 0..parallel {
        match engine.session() {
            Ok(s) => sessions.push(s),
            Err(e) => {
                tracing::error!("cannot make a session: {e}");
                fail_all(&rx, &format!("cannot make a session: {e}"));
                return;
            }
        }
    }
    let mut slots: Vec<Option<Active<'_>>> = (0..parallel).map(|_| None).collect();
    let mut multi = MultiPass::new();
    loop {
        // Admit queued requests into free slots (block only when nothing is running).
        for i in 0..parallel {
            if slots[i].is_some() {
                continue;
            }
            let idle = slots.iter().all(Option::is_none);
            let job = if idle {
                match rx.recv() {
                    Ok(j) => j,
                    Err(_) => return,
                }
            } else {
                match rx.try_recv() {
                    Ok(j) => j,
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => return,
                }
            };
            metrics.queue_len.fetch_sub(1, Ordering::Relaxed);
            if job.events.is_closed() {
                metrics.cancelled.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let n_ctx = sessions[i].n_ctx();
            if job.prompt.is_empty() || job.prompt.len() >= n_ctx {
                let _ = job.events.send(Event::Error(format!(
                    "the prompt has {} tokens; a sequence holds 1..{n_ctx}",
                    job.prompt.len()
                )));
                continue;
            }
            let gen = match SequenceGen::new(tokenizer, &job.prompt, &job.opts) {
                Ok(g) => g,
                Err(e) => {
                    let _ = job.events.send(Event::Error(e.to_string()));
                    continue;
                }
            };
            sessions[i].reset();
            let job_spec = job.speculative.map(|req| Spec {
                req,
                drafter: Lookup::new(req.ngram, 1),
                proposal: Proposal::default(),
                stats: SpecStats::default(),
            });
            slots[i] = Some(Active {
                job,
                gen,
                done: 0,
                next: None,
                started: Instant::now(),
                first_token: None,
                bytes: 0.0,
                decode_bytes: 0.0,
                spec: job_spec,
            });
        }
        // Cancel the sequences whose client is gone.
        for slot in slots.iter_mut() {
            if slot.as_ref().is_some_and(|a| a.job.events.is_closed()) {
                *slot = None;
                metrics.cancelled.fetch_add(1, Ordering::Relaxed);
            }
        }
        let active = slots.iter().filter(|s| s.is_some()).count();
        metrics.active.store(active as u64, Ordering::Relaxed);
        if active == 0 {
            continue;
        }

        // This pass's tokens: decode rows first, then prompt chunks in the room left.
        // Speculative sequences' proposals come next, as many as the batch has room for.
        let mut room = max_batch - slots.iter().flatten().filter(|a| !a.in_prompt()).count();
        let mut toks: Vec<Vec<u32>> = vec![Vec::new(); parallel];
        for (i, slot) in slots.iter_mut().enumerate() {
            let Some(a) = slot else { continue };
            let (Some(t), false) = (a.next, a.in_prompt()) else {
                continue;
            };
            toks[i] = vec![t];
            let Some(sp) = a.spec.as_mut() else { continue };
            sp.proposal.clear();
            let remaining = a.job.opts.max_tokens.saturating_sub(a.gen.tokens().len());
            let k = sp
                .req
                .k
                .min(MAX_SPEC_K)
                .min(room)
                .min(remaining.saturating_sub(1))
                .min(sessions[i].n_ctx().saturating_sub(sessions[i].pos() + 1));
            if k == 0 {
                continue;
            }
            let t0 = Instant::now();
            // Prompt lookup cannot fail; an error would only mean no proposal.
            if sp
                .drafter
                .propose(a.gen.history(), k, &mut sp.proposal)
                .is_err()
            {
                sp.proposal.clear();
            }
            sp.stats.draft_s += t0.elapsed().as_secs_f64();
            sp.proposal.tokens.truncate(k);
            room -= sp.proposal.tokens.len();
            toks[i].extend_from_slice(&sp.proposal.tokens);
        }
        for (i, slot) in slots.iter().enumerate() {
            let Some(a) = slot else { continue };
            if a.in_prompt() {
                let take = (a.job.prompt.len() - a.done).min(room);
                toks[i] = a.job.prompt[a.done..a.done + take].to_vec();
                room -= take;
            }
        }
        let in_pass: Vec<usize> = (0..parallel).filter(|&i| !toks[i].is_empty()).collect();
        let mut inputs: Vec<SeqInput<'_, '_>> = sessions
            .iter_mut()
            .enumerate()
            .filter(|(i, _)| !toks[*i].is_empty())
            .map(|(i, s)| {
                let a = slots[i].as_ref().expect("a slot with tokens is active");
                SeqInput {
                    session: s,
                    tokens: &toks[i],
                    want_logits: if a.in_prompt() {
                        if a.done + toks[i].len() == a.job.prompt.len() {
                            RowLogits::Last
                        } else {
                            RowLogits::None
                        }
                    } else if a.spec.is_some() {
                        RowLogits::All
                    } else {
                        RowLogits::Last
                    },
                }
            })
            .collect();
        let s0 = engine.stats();
        let t0 = Instant::now();
        let result = multi.eval(model, &mut inputs);
        drop(inputs);
        let pass_s = t0.elapsed().as_secs_f64();
        let s1 = engine.stats();
        let d = s1.since(&s0);
        metrics.passes.fetch_add(1, Ordering::Relaxed);
        metrics.bytes_read.store(s1.bytes_read, Ordering::Relaxed);
        metrics.set_stall_s(s1.stall_s);
        let logits = match result {
            Ok(l) => l,
            Err(e) => {
                tracing::error!("shared pass failed: {e}");
                for &i in &in_pass {
                    if let Some(a) = slots[i].take() {
                        let _ = a
                            .job
                            .events
                            .send(Event::Error(format!("the model failed: {e}")));
                    }
                }
                continue;
            }
        };
        let share = d.bytes_read as f64 / in_pass.len() as f64;
        let mut generated = 0u64;
        for (&i, l) in in_pass.iter().zip(logits) {
            let a = slots[i].as_mut().expect("in the pass");
            a.bytes += share;
            if a.in_prompt() {
                a.done += toks[i].len();
                metrics
                    .prompt_tokens
                    .fetch_add(toks[i].len() as u64, Ordering::Relaxed);
                if a.in_prompt() {
                    continue;
                }
            } else {
                a.decode_bytes += share;
            }
            let Some(mut l) = l else { continue };
            if let (Some(sp), Some(_)) = (a.spec.as_mut(), a.first_token) {
                // A speculative decode step: verify the proposals.
                let pos0 = sessions[i].pos() - toks[i].len();
                let n_ctx = sessions[i].n_ctx();
                sp.stats.passes += 1;
                sp.stats.proposed += sp.proposal.tokens.len();
                let events = &a.job.events;
                let mut emitted = 0u64;
                let mut last = None;
                let mut ended = None;
                let r = verify_pass(
                    &mut a.gen,
                    &l,
                    n_vocab,
                    &sp.proposal,
                    pos0,
                    n_ctx,
                    |_, step| {
                        emitted += 1;
                        last = Some(step.token);
                        ended = step.finished;
                        let _ = events.send(Event::Text(step.text));
                        step.finished.is_some()
                    },
                );
                generated += emitted;
                let v = match r {
                    Ok(v) => v,
                    Err(e) => {
                        let _ = a.job.events.send(Event::Error(e.to_string()));
                        slots[i] = None;
                        continue;
                    }
                };
                sp.stats.accepted += v.kept;
                metrics.add_speculative(sp.proposal.tokens.len() as u64, v.kept as u64);
                // Attention-only models (recurrent ones are refused at the request) go back
                // exactly.
                let _ = sessions[i].truncate(v.keep_pos);
                a.next = last;
                if let Some(reason) = ended {
                    let a = slots[i].take().expect("in the pass");
                    finish(a, reason, metrics);
                }
                continue;
            }
            let room = sessions[i].pos() < sessions[i].n_ctx();
            let step = match a.job.constraint.as_mut() {
                None => a.gen.step(&l, room).map_err(|e| e.to_string()),
                Some(c) => {
                    let before = c.stats();
                    let r = a.gen.step_constrained(&mut l, room, c);
                    record(metrics, &before, &c.stats());
                    r.map_err(|e| format!("{e:#}"))
                }
            };
            let step = match step {
                Ok(s) => s,
                Err(e) => {
                    let _ = a.job.events.send(Event::Error(e));
                    slots[i] = None;
                    continue;
                }
            };
            generated += 1;
            if a.first_token.is_none() {
                a.first_token = Some(Instant::now());
            }
            let _ = a.job.events.send(Event::Text(step.text));
            a.next = Some(step.token);
            if let Some(reason) = step.finished {
                let a = slots[i].take().expect("in the pass");
                finish(a, reason, metrics);
            }
        }
        metrics
            .completion_tokens
            .fetch_add(generated, Ordering::Relaxed);
        if generated > 0 && pass_s > 0.0 {
            metrics.set_tokens_per_s(generated as f64 / pass_s);
        }
    }
}

/// Adds the grammar time between two snapshots of a constraint's statistics.
fn record(metrics: &Metrics, before: &MaskStats, after: &MaskStats) {
    metrics.add_structured(
        after.masks - before.masks,
        after.mask_s - before.mask_s,
        after.commit_s - before.commit_s,
        0.0,
    );
}

/// The structured-output part of a response's `timings`.
fn structured_timings(s: &MaskStats) -> Value {
    json!({
        "compile_ms": s.compile_s * 1e3,
        "masks": s.masks,
        "mask_ms": s.mask_s * 1e3,
        "mask_ms_per_token": s.mask_ms_per_token(),
        "max_mask_ms": s.max_mask_s * 1e3,
        "commit_ms_per_token": s.commit_ms_per_token(),
    })
}

fn finish(a: Active<'_>, reason: StopReason, metrics: &Metrics) {
    let n = a.gen.tokens().len();
    let now = Instant::now();
    let first = a.first_token.unwrap_or(now);
    let prompt_ms = (first - a.started).as_secs_f64() * 1e3;
    let predicted_ms = (now - first).as_secs_f64() * 1e3;
    let decode_steps = n.saturating_sub(1);
    let mut timings = json!({
        "prompt_n": a.job.prompt.len(),
        "prompt_ms": prompt_ms,
        "queue_ms": (a.started - a.job.queued_at).as_secs_f64() * 1e3,
        "predicted_n": n,
        "predicted_ms": predicted_ms,
        "predicted_per_second": if predicted_ms > 0.0 { decode_steps as f64 / (predicted_ms / 1e3) } else { 0.0 },
        "bytes_read": a.bytes,
        "bytes_read_per_token": if decode_steps > 0 { a.decode_bytes / decode_steps as f64 } else { 0.0 },
    });
    if let Some(c) = &a.job.constraint {
        timings["structured"] = structured_timings(&c.stats());
    }
    if let Some(sp) = &a.spec {
        let s = &sp.stats;
        timings["speculative"] = json!({
            "type": "lookup",
            "k": sp.req.k,
            "ngram": sp.req.ngram,
            "passes": s.passes,
            "proposed": s.proposed,
            "accepted": s.accepted,
            "acceptance": s.acceptance(),
            "tokens_per_pass": if s.passes > 0 { decode_steps as f64 / s.passes as f64 } else { 0.0 },
            "draft_ms": s.draft_s * 1e3,
        });
    }
    metrics.requests_done.fetch_add(1, Ordering::Relaxed);
    let _ = a.job.events.send(Event::Done {
        reason,
        prompt_tokens: a.job.prompt.len(),
        completion_tokens: n,
        timings,
    });
}

/// Answers every queued request with `msg` (the model could not be loaded) until the senders
/// are gone.
pub fn fail_all(rx: &Receiver<Job>, msg: &str) {
    while let Ok(job) = rx.recv() {
        let _ = job.events.send(Event::Error(msg.to_string()));
    }
}
