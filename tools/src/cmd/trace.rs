//! `--trace FILE` (run, bench, serve): the engine records reads, stalls, layer compute and
//! passes into a [`Trace`]; this writes them as a Chrome trace-event JSON file (the JSON
//! object format, opened by Perfetto and chrome://tracing), one track per kind of event and
//! one I/O track per slot the reads fill.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use flashstream::scheduler::trace::{ArgValue, Event, DEFAULT_TRACE_CAP};
use flashstream::scheduler::{Trace, Track};
use serde_json::{json, Map, Value};

/// The `--trace` flag.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct TraceArgs {
    /// Write a Chrome trace-event JSON file (open it in Perfetto or chrome://tracing) of the
    /// weight reads, stalls, layer compute and tokens of this run.
    #[arg(long, value_name = "FILE")]
    pub trace: Option<PathBuf>,
}

impl TraceArgs {
    /// A recording trace when `--trace` was given (after checking the file can be written,
    /// so a bad path fails before the model loads), else an off one.
    pub fn start(&self) -> anyhow::Result<Trace> {
        match &self.trace {
            None => Ok(Trace::off()),
            Some(p) => {
                std::fs::File::create(p).with_context(|| {
                    format!(
                        "cannot write the trace file {} (--trace): give a path in a writable directory",
                        p.display()
                    )
                })?;
                Ok(Trace::new(DEFAULT_TRACE_CAP))
            }
        }
    }

    /// Writes what `trace` recorded to the `--trace` file (nothing without the flag).
    pub fn finish(&self, trace: &Trace) -> anyhow::Result<()> {
        match &self.trace {
            Some(p) if trace.is_on() => write(p, &trace.events()),
            _ => Ok(()),
        }
    }
}

/// The thread id of a track, and its name.
pub fn track_tid(t: Track) -> (u64, String) {
    match t {
        Track::Passes => (1, "tokens (passes)".into()),
        Track::Compute => (2, "compute".into()),
        Track::Stalls => (3, "stalls (waiting for reads)".into()),
        Track::Rows => (4, "I/O embedding rows".into()),
        Track::RingSlot(i) => (100 + i as u64, format!("I/O ring slot {i}")),
        Track::ExpertSlot(i) => (10_000 + i as u64, format!("I/O expert slot {i}")),
    }
}

/// The trace-event JSON object of `events`.
pub fn to_json(events: &[Event]) -> Value {
    const PID: u64 = 1;
    let mut out = vec![json!({
        "name": "process_name", "ph": "M", "ts": 0, "pid": PID, "tid": 0,
        "args": {"name": "flashstream"},
    })];
    let tracks: BTreeSet<Track> = events
        .iter()
        .map(|e| e.track)
        .chain([Track::Passes, Track::Compute, Track::Stalls])
        .collect();
    for t in tracks {
        let (tid, name) = track_tid(t);
        out.push(json!({
            "name": "thread_name", "ph": "M", "ts": 0, "pid": PID, "tid": tid,
            "args": {"name": name},
        }));
        out.push(json!({
            "name": "thread_sort_index", "ph": "M", "ts": 0, "pid": PID, "tid": tid,
            "args": {"sort_index": tid},
        }));
    }
    for e in events {
        let args: Map<String, Value> = e
            .args
            .iter()
            .map(|(k, v)| {
                let v = match v {
                    ArgValue::Int(i) => json!(i),
                    ArgValue::Str(s) => json!(s),
                };
                (k.to_string(), v)
            })
            .collect();
        let mut ev = json!({
            "name": e.name, "cat": e.cat, "ts": e.ts_us, "pid": PID,
            "tid": track_tid(e.track).0, "args": args,
        });
        match e.dur_us {
            Some(d) => {
                ev["ph"] = json!("X");
                ev["dur"] = json!(d.max(0.0));
            }
            None => {
                ev["ph"] = json!("i");
                ev["s"] = json!("g");
            }
        }
        out.push(ev);
    }
    json!({"traceEvents": out, "displayTimeUnit": "ms"})
}

/// Writes `events` as trace-event JSON to `path`.
pub fn write(path: &Path, events: &[Event]) -> anyhow::Result<()> {
    let ctx = || format!("cannot write the trace file {} (--trace)", path.display());
    let f = std::fs::File::create(path).with_context(ctx)?;
    let mut w = std::io::BufWriter::new(f);
    serde_json::to_writer(&mut w, &to_json(events)).with_context(ctx)?;
    w.flush().with_context(ctx)?;
    Ok(())
}
