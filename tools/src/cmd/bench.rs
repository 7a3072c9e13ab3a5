//! `flashstream bench MODEL --mem SIZE [-n N] [--prompt-len P] [--json]`: in one run, the
//! device's sequential `O_DIRECT` read bandwidth on the model file, then prompt and decode
//! speed under the budget, as ratios to what the device allows. `--parallel` and `--spec`
//! hand over to `bench_parallel.rs` and `bench_spec.rs`.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{bail, Context};
use serde_json::{json, Value};

use super::engine::{describe_plan, stats_json, MemArgs};
use super::size::parse_size;
use flashstream::formats::ModelConfig;
use flashstream::loader::{probe_ranges, probe_read_bandwidth, BackendOptions, IoKind};
use flashstream::runtime::model::LogitsWanted;
use flashstream::runtime::model::PredictionStats;
use flashstream::scheduler::{fmt_bytes, sysmem, SourceStats, UnitId, UnitTable};
use flashstream::{Engine, EngineOptions};

#[derive(clap::Args)]
pub struct Args {
    /// The GGUF file (the first part of a split model).
    model: PathBuf,
    #[command(flatten)]
    mem: MemArgs,
    /// Tokens to generate.
    #[arg(short = 'n', long = "n-predict", default_value_t = 16)]
    n: usize,
    /// Prompt length in tokens (random token ids, seeded).
    #[arg(long, default_value_t = 64)]
    prompt_len: usize,
    /// Compute threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Context length (default: prompt + generated tokens).
    #[arg(long)]
    ctx: Option<usize>,
    /// Most bytes each bandwidth-probe pass reads (of what the plan streams for dense models,
    /// of the file for MoE models).
    #[arg(long, default_value = "4GiB", value_parser = parse_size)]
    probe_bytes: u64,
    /// Seed of the prompt's token ids (and of `--decode-input random`).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// What each decode step is fed: `greedy` (the argmax of the last logits) or `random`
    /// (seeded random token ids: random-weight models decode greedily into loops that route
    /// to the same experts every token, which flatters an expert cache).
    #[arg(long, default_value = "greedy", value_parser = ["greedy", "random"])]
    decode_input: String,
    /// MoE models: after the run, decode 2n more tokens alternating next-layer expert
    /// prediction on and off token by token, and report both.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    compare_predict: bool,
    /// Print JSON.
    #[arg(long)]
    json: bool,
    /// Instead: aggregate decode speed with N sequences sharing each pass, for each N of a
    /// comma-separated list (e.g. 1,2,4,8).
    #[arg(long, value_delimiter = ',')]
    parallel: Vec<usize>,
    #[command(flatten)]
    spec: super::bench_spec::BenchSpecArgs,
    #[command(flatten)]
    trace: super::trace::TraceArgs,
    /// Draw per decoded token the time waiting for reads, the compute time and the bytes
    /// read as an SVG chart in FILE.
    #[arg(long, value_name = "FILE")]
    plot: Option<PathBuf>,
}

/// Decode steps and what they read.
#[derive(Default)]
struct Phase {
    secs: f64,
    io: SourceStats,
    pred: PredictionStats,
    per_token: Vec<f64>,
}

impl Phase {
    fn add(&mut self, secs: f64, d: &SourceStats, p: &PredictionStats) {
        self.secs += secs;
        self.per_token.push(secs);
        let io = &mut self.io;
        io.bytes_read += d.bytes_read;
        io.reads += d.reads;
        io.io_busy_s += d.io_busy_s;
        io.stall_s += d.stall_s;
        io.expert_leases += d.expert_leases;
        io.expert_hits += d.expert_hits;
        io.expert_prefetch_hits += d.expert_prefetch_hits;
        io.expert_misses += d.expert_misses;
        io.expert_late += d.expert_late;
        io.expert_bytes_read += d.expert_bytes_read;
        io.prefetch_issued += d.prefetch_issued;
        io.prefetch_used += d.prefetch_used;
        io.prefetch_wasted += d.prefetch_wasted;
        io.ring_leases += d.ring_leases;
        self.pred.predicted += p.predicted;
        self.pred.correct += p.correct;
        self.pred.actual += p.actual;
    }

    fn json(&self) -> Value {
        let n = self.per_token.len().max(1) as f64;
        let io = &self.io;
        json!({
            "tokens": self.per_token.len(),
            "decode_tokens_per_s": n / self.secs,
            "bytes_read_per_token": io.bytes_read as f64 / n,
            "expert_bytes_read_per_token": io.expert_bytes_read as f64 / n,
            "stall_s": io.stall_s,
            "wait_fraction": io.stall_s / self.secs,
            "expert_hit_rate": ratio(io.expert_hits, io.expert_leases),
            "expert_misses_per_token": io.expert_misses as f64 / n,
            "prefetch_hits": io.expert_prefetch_hits,
            "prefetch_late": io.expert_late,
            "prediction_accuracy": self.pred.accuracy(),
            "prediction_precision": self.pred.precision(),
        })
    }
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
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

pub fn run(a: Args) -> anyhow::Result<()> {
    if (a.trace.trace.is_some() || a.plot.is_some())
        && (!a.parallel.is_empty() || a.spec.spec.is_some())
    {
        bail!("--trace and --plot work with the plain bench, not with --parallel or --spec");
    }
    let mut trace = a.trace.start()?;
    if a.plot.is_some() && !trace.is_on() {
        trace =
            flashstream::scheduler::Trace::new(flashstream::scheduler::trace::DEFAULT_TRACE_CAP);
    }
    if let Some(p) = &a.plot {
        std::fs::File::create(p).with_context(|| {
            format!(
                "cannot write the plot {} (--plot): give a path in a writable directory",
                p.display()
            )
        })?;
    }
    let (trace_args, plot) = (a.trace.clone(), a.plot.clone());
    let r = bench(a, trace.clone());
    // The trace is written also when the bench failed part-way.
    let w = trace_args.finish(&trace);
    let title = r?;
    w?;
    if let Some(p) = plot {
        super::plot::draw(&p, &title, &super::plot::token_bars(&trace.events()))?;
    }
    Ok(())
}

/// The bench itself; returns a title for the plot.
fn bench(a: Args, trace: flashstream::scheduler::Trace) -> anyhow::Result<String> {
    if a.n == 0 || a.prompt_len == 0 {
        bail!("-n and --prompt-len must be at least 1");
    }
    if a.threads == Some(0) {
        bail!("--threads must be at least 1");
    }
    let gguf = super::open_model(&a.model)?;
    if !a.parallel.is_empty() {
        return super::bench_parallel::run(super::bench_parallel::ParallelArgs {
            gguf,
            mem: &a.mem,
            threads: a
                .threads
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
            list: &a.parallel,
            n: a.n,
            prompt_len: a.prompt_len,
            seed: a.seed,
            json: a.json,
        })
        .map(|()| String::new());
    }
    if a.spec.spec.is_some() {
        return super::bench_spec::run(super::bench_spec::SpecBench {
            gguf,
            model: a.model.clone(),
            mem: &a.mem,
            threads: a
                .threads
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
            n: a.n,
            prompt_len: a.prompt_len,
            seed: a.seed,
            json: a.json,
            args: &a.spec,
        })
        .map(|()| String::new());
    }
    let config = ModelConfig::from_model(&gguf)
        .with_context(|| format!("cannot run {}", a.model.display()))?;
    let threads = a
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let need = a.prompt_len + a.n * 3;

    let opts = a.mem.options(EngineOptions {
        ctx: Some(a.ctx.unwrap_or(need)),
        min_ctx: need,
        threads,
        count_tokenizer: false,
        trace,
        ..EngineOptions::default()
    })?;
    let (plan, batch) = flashstream::engine::plan(&gguf, &config, &opts)?;

    // 1. The device, on this file, now: sequential direct reads of the bytes the plan streams
    // (of the start of the file for MoE models, whose experts are read as routed), three
    // passes: one with the other cores idle, two with them busy. Decoding keeps the cores
    // busy, and on a virtual machine an idle vCPU takes each completion interrupt late (halt
    // and wake-up), so a probe on idle cores understates what the device delivers to a busy
    // process. The fastest pass is the figure; the idle one is reported too.
    let probe_kind = if a.mem.io == IoKind::Mmap {
        IoKind::Pread
    } else {
        a.mem.io
    };
    let probe_opts = BackendOptions {
        kind: probe_kind,
        queue_depth: None,
    };
    let units = UnitTable::from_model(&gguf)?;
    let ranges: Vec<(usize, u64, u64)> = if plan.n_experts_total == 0 {
        plan.cycle
            .iter()
            .filter_map(|id| units.position(*id))
            .flat_map(|pos| plan.layouts[pos].extents.iter())
            .map(|e| (e.file, e.offset, e.len))
            .collect()
    } else {
        Vec::new()
    };
    let run_probe = || {
        if ranges.is_empty() {
            probe_read_bandwidth(&gguf, &probe_opts, a.probe_bytes)
        } else {
            probe_ranges(&gguf, &probe_opts, &ranges, a.probe_bytes)
        }
        .context("measuring the device read bandwidth")
    };
    let idle = run_probe()?;
    let busy_probe = || {
        let stop = AtomicBool::new(false);
        std::thread::scope(|sc| {
            for _ in 0..threads.max(1) {
                sc.spawn(|| {
                    while !stop.load(Ordering::Relaxed) {
                        std::hint::spin_loop();
                    }
                });
            }
            let r = run_probe();
            stop.store(true, Ordering::Relaxed);
            r
        })
    };
    // Twice busy: a virtual disk backed by the host's page cache reads the same bytes faster
    // the second time, as decoding (which rereads them every token) will find them.
    let busy = busy_probe()?;
    let busy2 = busy_probe()?;
    let busy = if busy2.gb_per_s > busy.gb_per_s {
        busy2
    } else {
        busy
    };
    let probe = if busy.gb_per_s >= idle.gb_per_s {
        busy
    } else {
        idle
    };

    // 2. Load under the budget.
    let t_load = Instant::now();
    let (load_opts, bar) = crate::progress::loading(opts);
    let engine = Engine::with_plan(gguf, &load_opts, plan, batch)
        .with_context(|| format!("cannot run {}", a.model.display()))?;
    drop(bar);
    let load_s = t_load.elapsed().as_secs_f64();
    a.mem.start(&engine)?;
    if !a.json {
        eprintln!("{}", describe_plan(engine.plan()));
    }
    let model = engine.model();
    // The engine's own read path without compute: every streamed unit leased and dropped in
    // order, once. On this kind of machine (a virtual disk) it reads faster than the
    // loader's probe; both are the device read with O_DIRECT on this file now, so the faster
    // one is the device figure the ratios use.
    // MoE models stream experts, not the ring: the pass reads every expert that is not
    // pinned, a layer at a time (asked for together, as routing does, then leased in order).
    let streamed_experts: Vec<Vec<UnitId>> = if engine.plan().expert_slots > 0 {
        let src = model.source();
        let mut by_layer = vec![Vec::new(); units.n_layer()];
        for u in units.iter() {
            if let UnitId::Expert { layer, .. } = u.id {
                if !src.is_resident(u.id) && layer < by_layer.len() {
                    by_layer[layer].push(u.id);
                }
            }
        }
        by_layer
    } else {
        Vec::new()
    };
    let stream_pass = || -> anyhow::Result<f64> {
        let src = model.source();
        let before = src.stats();
        let t = Instant::now();
        for id in &engine.plan().cycle {
            drop(src.lease(*id)?);
        }
        for layer in &streamed_experts {
            src.will_need(layer);
            for id in layer {
                drop(src.lease(*id)?);
            }
        }
        let d = src.stats().since(&before);
        let secs = t.elapsed().as_secs_f64();
        Ok(if secs > 0.0 && d.bytes_read > 0 {
            d.bytes_read as f64 / secs / 1e9
        } else {
            0.0
        })
    };
    let stream_only = stream_pass()?;
    let mut session = model.session(engine.plan().n_ctx)?;

    // 3. Prompt: random ids (seeded), one eval.
    let mut x = a.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let prompt: Vec<u32> = (0..a.prompt_len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % config.n_vocab as u64) as u32
        })
        .collect();
    let s0 = engine.stats();
    let t0 = Instant::now();
    let logits = session.eval(&prompt, LogitsWanted::Last)?;
    let prompt_s = t0.elapsed().as_secs_f64();
    let s1 = engine.stats();

    // 4. Decode: greedy, one token a step (MoE: next-layer expert prediction on).
    let is_moe = engine.plan().expert_slots > 0;
    let random_input = a.decode_input == "random";
    let mut next = argmax(&logits);
    // One decode step at a time, accumulated into a Phase per prediction setting.
    let mut step = |predict: bool, ph: &mut Phase| -> anyhow::Result<()> {
        model.set_predict_experts(predict);
        let st0 = engine.stats();
        let p0 = model.prediction_stats();
        let t = Instant::now();
        let l = session.eval(&[next], LogitsWanted::Last)?;
        let dt = t.elapsed().as_secs_f64();
        next = if random_input {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % config.n_vocab as u64) as u32
        } else {
            argmax(&l)
        };
        ph.add(
            dt,
            &engine.stats().since(&st0),
            &model.prediction_stats().since(&p0),
        );
        Ok(())
    };
    let mut main = Phase::default();
    for _ in 0..a.n {
        step(true, &mut main)?;
    }
    let decode_s = main.secs;
    let per_token = main.per_token.clone();
    // The effect of prediction under the same conditions: after the run above warmed the
    // cache, 2n more tokens alternating on and off, token by token.
    let compare = if is_moe && a.compare_predict {
        let (mut on, mut off) = (Phase::default(), Phase::default());
        for i in 0..2 * a.n {
            if i % 2 == 0 {
                step(true, &mut on)?;
            } else {
                step(false, &mut off)?;
            }
        }
        Some((on, off))
    } else {
        None
    };
    model.set_predict_experts(true);
    // The same pass once more after decoding: a virtual disk can deliver more (or less) once
    // the host has seen the file, and decoding met the device as it was then. The fastest
    // direct-read figure of the run is the device bandwidth the ratios use.
    let stream_after = stream_pass()?;
    let device_gbps = probe.gb_per_s.max(stream_only).max(stream_after);
    let dd = main.io.clone();
    let dp = s1.since(&s0);
    let n = a.n as f64;
    let bytes_per_token = dd.bytes_read as f64 / n;
    let read_gbps = dd.bytes_read as f64 / decode_s / 1e9;
    let theoretical = if bytes_per_token > 0.0 {
        Some(device_gbps * 1e9 / bytes_per_token)
    } else {
        None
    };
    let decode_tps = n / decode_s;
    // DESIGN.md: per token the ideal time is max(bytes read / device bandwidth, compute time);
    // stall is what the run took beyond it.
    let compute_s = (decode_s - dd.stall_s).max(0.0);
    let io_s = if device_gbps > 0.0 {
        dd.bytes_read as f64 / (device_gbps * 1e9)
    } else {
        0.0
    };
    let ideal_s = io_s.max(compute_s);
    let stall_fraction = if decode_s > 0.0 {
        ((decode_s - ideal_s) / decode_s).max(0.0)
    } else {
        0.0
    };
    let mut stats = stats_json(&dd, a.n as u64, decode_s);
    let mut sorted = per_token.clone();
    sorted.sort_by(f64::total_cmp);
    let out = json!({
        "model": a.model,
        "io": engine.io().to_string(),
        "threads": threads,
        "decode_input": a.decode_input,
        "expert_policy": a.mem.expert_policy.to_string(),
        "budget_bytes": engine.plan().budget,
        "planned_bytes": engine.plan().total_bytes(),
        "weight_bytes": engine.plan().weight_bytes,
        "device_read_gbps": device_gbps,
        "device_read_gbps_idle_cores": idle.gb_per_s,
        "device_read_gbps_busy_cores": busy.gb_per_s,
        "device_read_gbps_engine_no_compute": stream_only,
        "device_read_gbps_engine_no_compute_after": stream_after,
        "device_probe_bytes": probe.bytes,
        "device_probe_bypasses_cache": probe.bypasses_cache,
        "load_s": load_s,
        "load_bytes": s1.load_bytes,
        "prompt_tokens": a.prompt_len,
        "generated_tokens": a.n,
        "prompt_tokens_per_s": a.prompt_len as f64 / prompt_s,
        "time_to_first_token_s": prompt_s,
        "prompt_bytes_read": dp.bytes_read,
        "decode_tokens_per_s": decode_tps,
        "decode_token_s_median": sorted[sorted.len() / 2],
        "bytes_read_per_token": bytes_per_token,
        "plan_bytes_per_token": engine.plan().predicted_bytes_per_token(),
        "read_gbps": read_gbps,
        "io_efficiency": if device_gbps > 0.0 { read_gbps / device_gbps } else { 0.0 },
        // The rate while reads were in flight, against the device: how well the bytes that
        // are read are read (what matters when decode is not I/O bound, e.g. MoE).
        "io_efficiency_busy": if device_gbps > 0.0 && dd.io_busy_s > 0.0 {
            dd.bytes_read as f64 / dd.io_busy_s / 1e9 / device_gbps
        } else {
            0.0
        },
        "stall_fraction": stall_fraction,
        "wait_fraction": if decode_s > 0.0 { dd.stall_s / decode_s } else { 0.0 },
        "theoretical_tokens_per_s": theoretical,
        "decode_vs_theoretical": theoretical.map(|t| decode_tps / t),
        "peak_memory_bytes": sysmem::peak_rss(),
        "pinned_units": engine.plan().pinned.len(),
        "streamed_units": engine.plan().cycle.len(),
        "expert_slots": engine.plan().expert_slots,
        "n_experts": engine.plan().n_experts_total,
        "expert_bytes_per_token_max": engine.plan().expert_bytes_per_token_max,
        "dense_equivalent_bytes_per_token": engine.plan().weight_bytes,
        "prediction": compare.as_ref().map(|(on, off)| json!({
            "on": on.json(),
            "off": off.json(),
            "stall_removed_s_per_token": off.io.stall_s / off.per_token.len().max(1) as f64
                - on.io.stall_s / on.per_token.len().max(1) as f64,
        })),
        "main_run": main.json(),
    });
    let mut out = match out {
        Value::Object(m) => m,
        _ => unreachable!("json! of an object literal is an object"),
    };
    out.append(&mut stats);
    let title = format!(
        "{} under {}: {decode_tps:.2} tokens/s",
        a.model
            .file_name()
            .map_or_else(String::new, |f| f.to_string_lossy().into_owned()),
        fmt_bytes(engine.plan().budget)
    );
    if a.json {
        println!("{}", Value::Object(out));
        return Ok(title);
    }
    let g = |k: &str| out.get(k).cloned().unwrap_or(Value::Null);
    println!(
        "device read bandwidth (O_DIRECT, this file): {device_gbps:.2} GB/s (probe {:.2} idle / {:.2} busy cores over {}; engine without compute {stream_only:.2} before, {stream_after:.2} after decoding)",
        idle.gb_per_s,
        busy.gb_per_s,
        fmt_bytes(probe.bytes)
    );
    println!(
        "prompt: {} tokens at {:.2} tokens/s ({} read)",
        a.prompt_len,
        a.prompt_len as f64 / prompt_s,
        fmt_bytes(dp.bytes_read)
    );
    println!(
        "decode: {} tokens at {:.3} tokens/s; {} read per token at {:.2} GB/s",
        a.n,
        decode_tps,
        fmt_bytes(bytes_per_token as u64),
        read_gbps
    );
    if let Some(t) = theoretical {
        println!(
            "theoretical {t:.3} tokens/s (device / bytes per token): {:.0}% of it; io_efficiency {:.2}, stall {:.0}% (beyond max(I/O, compute))",
            decode_tps / t * 100.0,
            read_gbps / device_gbps,
            g("stall_fraction").as_f64().unwrap_or(0.0) * 100.0
        );
    }
    if let Some(p) = sysmem::peak_rss() {
        println!(
            "peak memory {} (budget {})",
            fmt_bytes(p),
            fmt_bytes(engine.plan().budget)
        );
    }
    Ok(title)
}
