//! `--trace` writes a valid Chrome trace-event file whose reads add up to the bytes the run
//! reports, with a compute event per layer and pass; `bench --plot` writes an SVG with one
//! bar per decoded token; unwritable paths are clear errors.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::process::{Command, Output};

use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn model() -> String {
    root()
        .join("testdata/models/rand-llama-q4_0.gguf")
        .to_string_lossy()
        .into_owned()
}

fn fs(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_flashstream"))
        .args(args)
        .output()
        .unwrap()
}

/// A budget just above this model's minimum: its layers stream through the ring.
const MEM: &str = "3200K";

fn int(v: &Value, k: &str) -> u64 {
    v["args"][k]
        .as_u64()
        .unwrap_or_else(|| panic!("{k} missing: {v}"))
}

#[test]
fn run_trace_is_valid_and_adds_up() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.json");
    let out = fs(&[
        "run",
        &model(),
        "--mem",
        MEM,
        "-p",
        "hello world",
        "-n",
        "4",
        "--ignore-eos",
        "--threads",
        "1",
        "--json",
        "--trace",
        path.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run: Value = serde_json::from_slice(&out.stdout).unwrap();
    let doc: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(doc["displayTimeUnit"], "ms");
    let events = doc["traceEvents"].as_array().unwrap();

    // Format: every event has the fields of its phase, of the right types.
    let mut named: HashMap<u64, String> = HashMap::new();
    let mut used = BTreeSet::new();
    for e in events {
        assert!(e["name"].is_string(), "{e}");
        assert!(
            e["ts"].is_number() && e["ts"].as_f64().unwrap() >= 0.0,
            "{e}"
        );
        assert!(e["pid"].is_u64() && e["tid"].is_u64(), "{e}");
        let tid = e["tid"].as_u64().unwrap();
        match e["ph"].as_str().unwrap() {
            "M" => {
                if e["name"] == "thread_name" {
                    named.insert(tid, e["args"]["name"].as_str().unwrap().to_string());
                }
            }
            "X" => {
                assert!(e["dur"].as_f64().is_some_and(|d| d >= 0.0), "{e}");
                assert!(e["cat"].is_string(), "{e}");
                used.insert(tid);
            }
            "i" => {
                used.insert(tid);
            }
            other => panic!("unexpected phase {other}: {e}"),
        }
    }
    for t in &used {
        assert!(named.contains_key(t), "track {t} has no thread_name");
    }
    let of = |cat: &str| -> Vec<&Value> { events.iter().filter(|e| e["cat"] == cat).collect() };
    let passes = of("pass");
    assert_eq!(passes.len(), 4, "a prompt pass and 3 decode steps");
    assert!(passes[0]["name"].as_str().unwrap().starts_with("prompt"));
    assert_eq!(
        passes[1]["name"],
        format!("token {}", int(passes[1], "pos"))
    );

    // Reads: each carries its bytes and the source's counter after it; in that order the
    // bytes add up to the counter (no read missing).
    let mut reads = of("read");
    assert!(!reads.is_empty());
    reads.sort_by_key(|e| int(e, "bytes_read_total"));
    let mut sum = 0;
    for r in &reads {
        assert!(named[&r["tid"].as_u64().unwrap()].starts_with("I/O"));
        sum += int(r, "bytes");
        assert_eq!(sum, int(r, "bytes_read_total"), "{r}");
    }
    let at_end: Vec<u64> = passes.iter().map(|p| int(p, "bytes_read_total")).collect();
    let between = |lo: u64, hi: u64| -> u64 {
        reads
            .iter()
            .filter(|r| (lo + 1..=hi).contains(&int(r, "bytes_read_total")))
            .map(|r| int(r, "bytes"))
            .sum()
    };
    let stats = &run["stats"];
    // `run` takes its stats snapshots around the passes while the ring's I/O thread keeps
    // reading ahead, so its figures and the counters at the pass markers differ by whatever
    // completed in between: check the markers' order and that the decode steps read.
    assert!(at_end.windows(2).all(|w| w[0] <= w[1]), "{at_end:?}");
    assert!(between(at_end[0], at_end[3]) > 0, "the decode steps stream");
    assert!(stats["bytes_read"].as_u64().unwrap() > 0, "the run streams");

    // Compute: every layer once per pass, and every streamed layer among them.
    let mut per_pass: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    for c in of("compute") {
        per_pass
            .entry(int(c, "pass"))
            .or_default()
            .push(c["name"].as_str().unwrap().to_string());
    }
    assert_eq!(per_pass.len(), 4);
    let layers: BTreeSet<String> = per_pass[&0]
        .iter()
        .filter(|n| n.starts_with("blk."))
        .cloned()
        .collect();
    for names in per_pass.values() {
        let blk: Vec<&String> = names.iter().filter(|n| n.starts_with("blk.")).collect();
        assert_eq!(blk.len(), layers.len(), "{names:?}");
        assert_eq!(blk.into_iter().cloned().collect::<BTreeSet<_>>(), layers);
        assert!(names.iter().any(|n| n == "output"));
    }
    let n_layer = layers.len();
    for i in 0..n_layer {
        assert!(layers.contains(&format!("blk.{i}")), "{layers:?}");
    }
    // Reads are of layers, of their pieces (one matrix, `blk.N.ffn_up`), of the output head
    // or of its row ranges.
    for r in &reads {
        let name = r["name"].as_str().unwrap();
        let piece_of_layer = name
            .rsplit_once('.')
            .is_some_and(|(layer, _)| layers.contains(layer));
        assert!(
            layers.contains(name)
                || piece_of_layer
                || name == "output"
                || name.starts_with("output rows "),
            "read of {name} is no layer, piece or head"
        );
    }
    // Stalls are named after the unit waited for.
    for s in of("stall") {
        assert!(s["name"].as_str().unwrap().starts_with("stall "), "{s}");
    }
}

#[test]
fn bench_plot_has_a_bar_per_token() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.svg");
    let out = fs(&[
        "bench",
        &model(),
        "--mem",
        MEM,
        "-n",
        "5",
        "--prompt-len",
        "4",
        "--probe-bytes",
        "1M",
        "--threads",
        "1",
        "--json",
        "--plot",
        path.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let svg = std::fs::read_to_string(&path).unwrap();
    let body = svg.trim();
    assert!(
        body.starts_with("<svg") && body.ends_with("</svg>"),
        "{svg}"
    );
    assert_eq!(body.matches("<svg").count(), 1);
    // The compute part of each bar has its own colour; the legend has one more swatch.
    let compute = body.matches("fill=\"#4678C8\"").count();
    assert_eq!(compute, 5 + 1, "{svg}");
    assert!(body.contains("MiB read"));
}

#[test]
fn unwritable_paths_are_clear_errors() {
    let bad = "/nonexistent-dir/x.json";
    let out = fs(&[
        "run",
        &model(),
        "--mem",
        MEM,
        "-p",
        "hi",
        "-n",
        "1",
        "--trace",
        bad,
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--trace") && err.contains(bad), "{err}");
    let out = fs(&[
        "bench",
        &model(),
        "--mem",
        MEM,
        "-n",
        "1",
        "--probe-bytes",
        "1M",
        "--plot",
        "/nonexistent-dir/p.svg",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--plot") && err.contains("p.svg"), "{err}");
}
