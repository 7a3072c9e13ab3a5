//! `mkmodel moe --arch gpt-oss|deepseek2|glm4moe --size S` writes a model flashstream runs:
//! `logits` all-resident and under a budget where the experts stream give the same logits bit
//! for bit, and the streamed run really reads experts. (The `--shape` presets are real-model
//! sized, at least a gigabyte even with `--layers 1`: they are exercised by the bench, not
//! here; only their names are checked.)

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

fn fs(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_flashstream"))
        .args(args)
        .output()
        .unwrap()
}

fn ok_json(args: &[&str]) -> Value {
    let out = fs(args);
    assert!(
        out.status.success(),
        "flashstream {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn logits(m: &str, extra: &[&str]) -> Value {
    let mut a = vec![
        "logits",
        m,
        "--tokens",
        "1,17,200,42,99,7,3,150,256,65",
        "--top",
        "8",
        "--json",
    ];
    a.extend(extra);
    ok_json(&a)
}

fn make(dir: &Path, arch: &str, extra: &[&str]) -> (String, Value) {
    let out = dir.join(format!("{arch}.gguf"));
    let out = out.to_str().unwrap().to_string();
    let mut a = vec![
        "mkmodel",
        "moe",
        &out,
        "--arch",
        arch,
        "--size",
        "6MiB",
        "--embd",
        "256",
        "--experts",
        "8",
        "--top-k",
        "2",
        "--json",
    ];
    a.extend(extra);
    let j = ok_json(&a);
    (out, j)
}

#[test]
fn every_frontier_arch_is_made_and_streams_equal_to_resident() {
    let tmp = tempfile::tempdir().unwrap();
    for (arch, extra) in [
        ("gpt-oss", &["--type", "mxfp4"][..]),
        ("deepseek2", &[][..]),
        ("glm4moe", &[][..]),
    ] {
        let (m, made) = make(tmp.path(), arch, extra);
        assert_eq!(made["architecture"], arch, "{made}");
        let bytes = made["bytes"].as_u64().unwrap();
        assert!(
            (2 << 20..12 << 20).contains(&bytes),
            "{arch}: {bytes} bytes for --size 6MiB"
        );
        assert_eq!(std::fs::metadata(&m).unwrap().len(), bytes);
        // The config validates: `inspect` shows no error.
        let out = fs(&["inspect", &m]);
        assert!(out.status.success());
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(!text.contains("error"), "{arch}: {text}");

        let plan = ok_json(&[
            "plan",
            &m,
            "--mem",
            "1TiB",
            "--ctx",
            "16",
            "--bandwidth",
            "1",
            "--json",
        ]);
        let min = plan["minimum_budget_bytes"].as_u64().unwrap();
        let budget = (min + (1 << 20)).to_string();
        let want = logits(&m, &[]);
        assert_eq!(
            want["stats"]["expert_slots"].as_u64(),
            Some(0),
            "{arch}: resident"
        );
        let got = logits(&m, &["--mem", &budget]);
        let slots = got["stats"]["expert_slots"].as_u64().unwrap();
        let n_experts = 8 * made["layers"].as_u64().unwrap();
        assert!(
            slots > 0 && slots < n_experts,
            "{arch} --mem {budget}: {slots} expert slots must stream {n_experts} experts"
        );
        assert!(got["stats"]["bytes_read"].as_u64().unwrap() > 0, "{arch}");
        assert_eq!(
            got["positions"], want["positions"],
            "{arch} --mem {budget}: streamed logits differ from resident"
        );
        // Every position's top logit is finite and the logits are not all alike.
        let tops: Vec<f64> = want["positions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["top"][0][1].as_f64().unwrap())
            .collect();
        assert!(tops.iter().all(|v| v.is_finite()), "{arch}: {tops:?}");
        assert!(tops.windows(2).any(|w| w[0] != w[1]), "{arch}: {tops:?}");
    }
}

#[test]
fn shape_presets_are_known_and_others_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("x.gguf");
    let out = out.to_str().unwrap();
    let bad = fs(&["mkmodel", "moe", out, "--shape", "glm-9", "--layers", "1"]);
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    for name in [
        "gpt-oss-120b",
        "gpt-oss-20b",
        "deepseek-v3",
        "kimi-k2",
        "glm-4.5-air",
        "glm-4.6",
    ] {
        assert!(err.contains(name), "the error lists {name}: {err}");
    }
    assert!(!Path::new(out).exists());
    let bad = fs(&["mkmodel", "moe", out, "--arch", "grok", "--size", "4MiB"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("glm4moe"));
}
