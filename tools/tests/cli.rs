//! The `flashstream` binary end to end: inspect and dump on every test model, dump against
//! llama.cpp's (gguf-py's) dequantization golden, and the error paths.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_flashstream"))
}

fn run(args: &[&str]) -> Output {
    bin().args(args).output().expect("run flashstream")
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

fn small_models() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(root().join("testdata/models"))
        .expect("testdata/models")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "gguf"))
        .collect();
    v.sort();
    assert!(v.len() >= 6, "expected the six random test models");
    v
}

/// Where a model named in a golden record lives, if it is here. The real models are fetched by
/// tools/fetch-models.sh; in CI they must be present.
fn find_model(name: &str) -> Option<PathBuf> {
    for dir in ["testdata/models", "models"] {
        let p = root().join(dir).join(name);
        if p.exists() {
            return Some(p);
        }
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("model {name} missing in CI (run tools/fetch-models.sh)");
    }
    eprintln!("SKIPPED: model {name} not found (run tools/fetch-models.sh)");
    None
}

#[test]
fn inspect_json_describes_every_test_model() {
    for m in small_models() {
        let j = ok_json(&["inspect", m.to_str().unwrap(), "--json"]);
        let arch = j["metadata"]["general.architecture"].as_str().unwrap();
        assert_eq!(
            j["config"]["architecture"].as_str(),
            Some(arch),
            "{m:?}: {}",
            j["config"]
        );
        let tensors = j["tensors"].as_array().unwrap();
        assert_eq!(
            tensors.len() as u64,
            j["totals"]["tensors"].as_u64().unwrap()
        );
        // 4 layers; token_embd first, output last (layer order).
        assert_eq!(j["config"]["n_layer"].as_u64(), Some(4));
        assert_eq!(tensors[0]["name"], "token_embd.weight");
        assert!(tensors.last().unwrap()["name"]
            .as_str()
            .unwrap()
            .starts_with("output"));
        let sum: u64 = tensors.iter().map(|t| t["bytes"].as_u64().unwrap()).sum();
        assert_eq!(sum, j["totals"]["bytes"].as_u64().unwrap());
        let by_layer: u64 = j["totals"]["by_layer"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["bytes"].as_u64().unwrap())
            .sum();
        assert_eq!(by_layer, sum);
        // The 257-entry token list is summarised, not printed whole.
        let toks = &j["metadata"]["tokenizer.ggml.tokens"];
        assert_eq!(toks["len"].as_u64(), Some(257), "{toks}");
        assert!(toks["head"].as_array().unwrap().len() < 257);
    }
}

#[test]
fn inspect_text_lists_config_and_tensors() {
    let m = root().join("testdata/models/rand-qwen3moe-q4km.gguf");
    let out = run(&["inspect", m.to_str().unwrap()]);
    assert!(out.status.success());
    let s = String::from_utf8(out.stdout).unwrap();
    for needle in [
        "qwen3moe.expert_count",
        "blk.3.ffn_down_exps.weight",
        "n_expert",
        "by type:",
        "Q4_K",
    ] {
        assert!(s.contains(needle), "missing {needle:?} in:\n{s}");
    }
}

#[test]
fn inspect_real_models() {
    for (name, arch, layers) in [
        ("SmolLM2-135M-Instruct.Q4_1.gguf", "llama", 30),
        ("gemma-3-270m-q4_k_m.gguf", "gemma3", 18),
    ] {
        let Some(m) = find_model(name) else { continue };
        let j = ok_json(&["inspect", m.to_str().unwrap(), "--json"]);
        assert_eq!(j["config"]["architecture"], arch, "{}", j["config"]);
        assert_eq!(j["config"]["n_layer"].as_u64(), Some(layers));
    }
}

fn close(a: f64, b: f64) -> bool {
    // Golden values are rounded to 7 significant digits.
    (a - b).abs() <= 1e-6 * a.abs().max(b.abs()) + 1e-30
}

#[test]
fn dump_matches_the_dequant_golden() {
    let golden = std::fs::read_to_string(root().join("testdata/golden/dequant.jsonl")).unwrap();
    let mut checked = 0;
    for line in golden.lines().filter(|l| !l.trim().is_empty()) {
        let g: Value = serde_json::from_str(line).unwrap();
        let Some(model) = find_model(g["model"].as_str().unwrap()) else {
            continue;
        };
        let name = g["tensor"].as_str().unwrap();
        let want = g["rows"].as_array().unwrap();
        let rows = want.len().to_string();
        let j = ok_json(&[
            "dump",
            model.to_str().unwrap(),
            name,
            "--rows",
            &rows,
            "--json",
        ]);
        assert_eq!(j["name"], g["tensor"]);
        assert_eq!(j["type"], g["type"]);
        assert_eq!(j["shape"], g["shape"]);
        let got = j["rows"].as_array().unwrap();
        assert_eq!(got.len(), want.len());
        for (r, (gr, wr)) in got.iter().zip(want).enumerate() {
            let (gr, wr) = (gr.as_array().unwrap(), wr.as_array().unwrap());
            assert_eq!(gr.len(), wr.len());
            for (i, (a, b)) in gr.iter().zip(wr).enumerate() {
                let (a, b) = (a.as_f64().unwrap(), b.as_f64().unwrap());
                assert!(
                    close(a, b),
                    "{name} ({}) row {r} [{i}]: {a} vs {b}",
                    g["type"]
                );
            }
        }
        checked += 1;
    }
    assert!(checked >= 9, "only {checked} golden tensors checked");
}

fn err_line(args: &[&str]) -> String {
    let out = run(args);
    assert!(!out.status.success(), "{args:?} should fail");
    let e = String::from_utf8(out.stderr).unwrap();
    assert!(!e.contains("panicked"), "{args:?} panicked: {e}");
    e
}

#[test]
fn errors_are_clear() {
    let e = err_line(&["inspect", "/nonexistent/model.gguf"]);
    assert!(e.contains("/nonexistent/model.gguf"), "{e}");
    assert_eq!(e.trim().lines().count(), 1, "{e}");

    let dir = std::env::temp_dir().join(format!("fs-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let not_gguf = dir.join("x.gguf");
    std::fs::write(&not_gguf, b"PK\x03\x04 definitely not a gguf file").unwrap();
    let e = err_line(&["inspect", not_gguf.to_str().unwrap()]);
    assert!(e.contains("not a GGUF"), "{e}");

    let m = root().join("testdata/models/rand-llama-q4_0.gguf");
    let e = err_line(&[
        "dump",
        m.to_str().unwrap(),
        "blk.0.attn_qq.weight",
        "--json",
    ]);
    assert!(e.contains("blk.0.attn_qq.weight"), "{e}");

    let truncated = dir.join("t.gguf");
    let bytes = std::fs::read(&m).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let e = err_line(&["inspect", truncated.to_str().unwrap()]);
    assert!(e.contains("past the end") || e.contains("truncated"), "{e}");

    let e = err_line(&[
        "dump",
        m.to_str().unwrap(),
        "output.weight",
        "--rows",
        "many",
    ]);
    assert!(e.contains("--rows"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}
