//! `flashstream bench MODEL --mem SIZE --parallel 1,2,4,8`: aggregate decode speed and bytes
//! read per token when N sequences share each pass over the weights.
//!
//! One engine is planned for the largest N (its KV caches and pass scratch counted in the
//! budget), so every N runs under the same plan. For each N: N sequences of random prompts
//! (seeded, one per sequence) are read in shared passes, then `-n` tokens are decoded for all
//! of them together (greedy), each step one [`MultiPass`] pass; the decode steps are timed.

use std::time::Instant;

use anyhow::{bail, Context};
use serde_json::{json, Value};

use super::engine::{describe_plan, MemArgs};
use flashstream::formats::GgufModel;
use flashstream::runtime::model::{MultiPass, RowLogits, SeqInput, Session};
use flashstream::scheduler::fmt_bytes;
use flashstream::{Engine, EngineOptions};

/// What the parallel bench needs from `bench`'s flags.
pub struct ParallelArgs<'a> {
    pub gguf: GgufModel,
    pub mem: &'a MemArgs,
    pub threads: usize,
    pub list: &'a [usize],
    pub n: usize,
    pub prompt_len: usize,
    pub seed: u64,
    pub json: bool,
}

fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[best] {
            best = i;
        }
    }
    best as u32
}

fn prompt(len: usize, seed: u64, n_vocab: usize) -> Vec<u32> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % n_vocab as u64) as u32
        })
        .collect()
}

pub fn run(a: ParallelArgs<'_>) -> anyhow::Result<()> {
    let Some(&most) = a.list.iter().max() else {
        bail!("--parallel needs at least one count");
    };
    if a.list.contains(&0) {
        bail!("--parallel counts must be at least 1");
    }
    let ctx = a.prompt_len + a.n + 1;
    let opts = a.mem.options(EngineOptions {
        ctx: Some(ctx),
        min_ctx: ctx,
        threads: a.threads,
        count_tokenizer: false,
        sequences: most,
        ..EngineOptions::default()
    })?;
    let (opts, bar) = crate::progress::loading(opts);
    let engine = Engine::load(a.gguf, &opts).context("cannot load the model")?;
    drop(bar);
    a.mem.start(&engine)?;
    if !a.json {
        eprintln!("[{}; {most} sequences]", describe_plan(engine.plan()));
    }
    let model = engine.model();
    let n_vocab = model.config().n_vocab;
    let mut sessions: Vec<Session<'_>> = (0..most)
        .map(|_| engine.session())
        .collect::<Result<_, _>>()?;
    let mut multi = MultiPass::new();
    let mut rows = Vec::new();
    for &np in a.list {
        let prompts: Vec<Vec<u32>> = (0..np)
            .map(|i| prompt(a.prompt_len, a.seed + i as u64, n_vocab))
            .collect();
        for s in sessions.iter_mut() {
            s.reset();
        }
        // Prompts: as many per pass as the batch holds.
        let mut next: Vec<u32> = Vec::with_capacity(np);
        let per_pass = (model.max_batch() / a.prompt_len).max(1);
        for group in (0..np).collect::<Vec<_>>().chunks(per_pass) {
            let mut inputs: Vec<SeqInput<'_, '_>> = sessions
                .iter_mut()
                .enumerate()
                .filter(|(i, _)| group.contains(i))
                .map(|(i, s)| SeqInput {
                    session: s,
                    tokens: &prompts[i],
                    want_logits: RowLogits::Last,
                })
                .collect();
            for l in multi.eval(model, &mut inputs)? {
                next.push(argmax(&l.context("prompt logits")?));
            }
        }
        let s0 = engine.stats();
        let t0 = Instant::now();
        for _ in 0..a.n {
            let toks: Vec<[u32; 1]> = next.iter().map(|&t| [t]).collect();
            let mut inputs: Vec<SeqInput<'_, '_>> = sessions
                .iter_mut()
                .zip(&toks)
                .map(|(s, t)| SeqInput {
                    session: s,
                    tokens: t,
                    want_logits: RowLogits::Last,
                })
                .collect();
            let out = multi.eval(model, &mut inputs)?;
            next = out
                .into_iter()
                .map(|l| l.map(|l| argmax(&l)).context("decode logits"))
                .collect::<anyhow::Result<_>>()?;
        }
        let secs = t0.elapsed().as_secs_f64();
        let d = engine.stats().since(&s0);
        let tokens = (np * a.n) as f64;
        rows.push(json!({
            "parallel": np,
            "decode_tokens": np * a.n,
            "decode_s": secs,
            "aggregate_tokens_per_s": tokens / secs,
            "per_sequence_tokens_per_s": a.n as f64 / secs,
            "bytes_read_per_token": d.bytes_read as f64 / tokens,
            "bytes_read_per_pass": d.bytes_read as f64 / a.n as f64,
            "stall_s": d.stall_s,
            "expert_bytes_read_per_token": d.expert_bytes_read as f64 / tokens,
        }));
    }
    let base = rows[0]["aggregate_tokens_per_s"].as_f64().unwrap_or(0.0);
    if a.json {
        let out = json!({
            "model": engine.gguf().metadata.get_str("general.name").unwrap_or_default(),
            "budget": engine.plan().budget,
            "weights": engine.plan().weight_bytes,
            "streamed_per_token": engine.plan().predicted_bytes_per_token(),
            "prompt_len": a.prompt_len,
            "n": a.n,
            "runs": Value::Array(rows),
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!("parallel  aggregate tok/s  per-seq tok/s  read/token  speedup");
        for r in &rows {
            let agg = r["aggregate_tokens_per_s"].as_f64().unwrap_or(0.0);
            println!(
                "{:>8}  {:>15.2}  {:>13.2}  {:>10}  {:>6.2}x",
                r["parallel"],
                agg,
                r["per_sequence_tokens_per_s"].as_f64().unwrap_or(0.0),
                fmt_bytes(r["bytes_read_per_token"].as_f64().unwrap_or(0.0) as u64),
                if base > 0.0 { agg / base } else { 0.0 },
            );
        }
    }
    Ok(())
}
