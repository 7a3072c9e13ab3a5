//! `run --lookup` / `run --draft` / `bench --spec` end to end: the same tokens as plain
//! greedy decoding, the speculation statistics in `--json`, the draft model counted inside
//! the budget, and the error for a draft with another vocabulary.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_flashstream"))
        .args(args)
        .output()
        .expect("run flashstream")
}

fn ok_json(args: &[&str]) -> Value {
    let out = run(args);
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("valid JSON")
}

fn real(name: &str) -> Option<String> {
    let p = root().join("models").join(name);
    if p.exists() {
        Some(p.to_string_lossy().into_owned())
    } else if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{} is missing: run tools/fetch-models.sh", p.display());
    } else {
        None
    }
}

fn testdata(name: &str) -> String {
    root()
        .join("testdata/models")
        .join(name)
        .to_string_lossy()
        .into_owned()
}

const PROMPT: &str = "one two three four five six seven eight nine ten\n\
                      one two three four five six seven eight nine ten\none two";

fn generate(model: &str, extra: &[&str]) -> Value {
    let mut args = vec![
        "run",
        model,
        "-p",
        PROMPT,
        "-n",
        "24",
        "--temp",
        "0",
        "--json",
        "--threads",
        "2",
    ];
    args.extend_from_slice(extra);
    ok_json(&args)
}

#[test]
fn run_lookup_streamed_gives_plain_tokens_and_stats() {
    let Some(m) = real("SmolLM2-135M-Instruct.Q4_1.gguf") else {
        return;
    };
    // A budget around half the model: most layers stream.
    let plain = generate(&m, &["--mem", "60MiB"]);
    let spec = generate(&m, &["--mem", "60MiB", "--lookup", "--spec-k", "5"]);
    assert_eq!(plain["tokens"], spec["tokens"]);
    assert_eq!(plain["text"], spec["text"]);
    let s = &spec["stats"];
    for k in [
        "tokens_per_pass",
        "proposed",
        "accepted",
        "passes",
        "draft_s",
    ] {
        assert!(s[k].is_number(), "stats.{k} in {s}");
    }
    assert_eq!(s["speculative"]["drafter"], "lookup");
    let passes = s["passes"].as_u64().unwrap();
    let accepted = s["accepted"].as_u64().unwrap();
    let generated = s["generated_tokens"].as_u64().unwrap();
    assert_eq!(passes + accepted + 1, generated, "{s}");
    assert!(accepted > 0, "the counting prompt repeats: {s}");
    assert!(plain["stats"].get("tokens_per_pass").is_none());
}

#[test]
fn run_draft_counts_the_draft_in_the_budget() {
    let target = testdata("rand-llama-q8_0.gguf");
    let draft = testdata("rand-llama-q4_0.gguf");
    let plain = generate(&target, &["--mem", "64MiB"]);
    let spec = generate(&target, &["--mem", "64MiB", "--draft", &draft]);
    assert_eq!(plain["tokens"], spec["tokens"]);
    let s = &spec["stats"];
    let draft_bytes = s["draft_bytes"].as_u64().unwrap();
    let planned = s["planned_bytes"].as_u64().unwrap();
    assert!(draft_bytes > 0);
    assert!(
        planned + draft_bytes <= 64 << 20,
        "target {planned} + draft {draft_bytes} within the budget"
    );
    assert!(s["speculative"]["drafter"]
        .as_str()
        .unwrap()
        .starts_with("draft:"));
    // A budget the draft alone fills is refused with what to do.
    let out = run(&[
        "run", &target, "-p", PROMPT, "--mem", "1MiB", "--draft", &draft,
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("raise --mem"), "{err}");
}

#[test]
fn draft_with_another_vocabulary_is_a_clear_error() {
    let (Some(smol), Some(gemma)) = (
        real("SmolLM2-135M-Instruct.Q4_1.gguf"),
        real("gemma-3-270m-q4_k_m.gguf"),
    ) else {
        return;
    };
    let out = run(&["run", &smol, "-p", "hi", "--draft", &gemma]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("vocabulary differs"), "{err}");
    assert!(err.contains("--draft"), "{err}");
    // Bad flags are named.
    let out = run(&["run", &smol, "-p", "hi", "--lookup", "--spec-k", "0"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("--spec-k"));
}

#[test]
fn bench_spec_compares_with_plain_decoding_in_one_run() {
    let m = testdata("rand-qwen3moe-q4km.gguf");
    let j = ok_json(&[
        "bench",
        &m,
        "--spec",
        "lookup",
        "-p",
        PROMPT,
        "-n",
        "20",
        "--mem",
        "64MiB",
        "--json",
        "--threads",
        "2",
    ]);
    assert_eq!(j["identical"], true, "{j}");
    assert_eq!(
        j["plain"]["generated_tokens"],
        j["speculative"]["generated_tokens"]
    );
    for run in ["plain", "speculative"] {
        let r = &j[run];
        assert!(r["bytes_read_per_token"].is_number(), "{j}");
        assert!(r["expert_bytes_read_per_token"].is_number(), "{j}");
    }
    let sp = &j["speculative"];
    let n = |k: &str| sp[k].as_u64().unwrap();
    assert_eq!(
        n("passes") + n("accepted") + 1,
        n("generated_tokens"),
        "{j}"
    );
    let out = run(&["bench", &m, "--spec", "nonsense"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("lookup or draft:MODEL"));
}

#[test]
fn speculation_on_a_recurrent_model_is_a_clear_error() {
    // Qwen3.5's linear-attention layers cannot take back rejected tokens.
    let model = testdata("rand-qwen35-q8.gguf");
    let out = run(&["run", &model, "-p", "hi", "-n", "4", "--lookup"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("recurrent layers cannot take back"), "{err}");
    assert!(err.contains("--lookup"), "{err}");
}
