//! `flashstream logits` under a budget that forces streaming equals the all-resident logits
//! bit for bit, for every test model and every read backend; `auto` falls back to pread when
//! io_uring is refused (forced with `FLASHSTREAM_DISABLE_URING=1`).

use std::path::PathBuf;
use std::process::{Command, Output};

use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn fs(args: &[String], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_flashstream"));
    c.args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

fn models() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(root().join("testdata/models"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "gguf"))
        .collect();
    v.sort();
    for real in [
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "gemma-3-270m-q4_k_m.gguf",
    ] {
        let p = root().join("models").join(real);
        if p.exists() {
            v.push(p);
        } else {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "{real} missing"
            );
        }
    }
    v
}

const TOKENS: &str = "1,17,200,42,99,7,3,150";

fn logits(model: &str, extra: &[&str], env: &[(&str, &str)]) -> Result<Value, String> {
    let mut a: Vec<String> = ["logits", model, "--tokens", TOKENS, "--top", "8", "--json"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    a.extend(extra.iter().map(|s| s.to_string()));
    let out = fs(&a, env);
    if out.status.success() {
        Ok(serde_json::from_slice(&out.stdout).unwrap())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// A budget within 64 KiB of the smallest one `logits` accepts.
fn smallest_budget(model: &str) -> u64 {
    let out = fs(
        &[
            "plan",
            model,
            "--mem",
            "1TiB",
            "--ctx",
            "8",
            "--bandwidth",
            "1",
            "--json",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect::<Vec<_>>(),
        &[],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let j: Value = serde_json::from_slice(&out.stdout).unwrap();
    let min = j["minimum_budget_bytes"].as_u64().unwrap();
    // `plan` counts one logits row; `logits` holds one per input token: search upwards.
    let ok = |b: u64| logits(model, &["--mem", &b.to_string(), "--io", "pread"], &[]).is_ok();
    let (mut lo, mut hi) = (min, min + (64 << 20));
    assert!(ok(hi), "{model}: even {hi} bytes fail");
    while hi - lo > 64 << 10 {
        let mid = lo + (hi - lo) / 2;
        if ok(mid) {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    hi
}

#[test]
fn every_backend_streams_the_same_logits_as_resident() {
    for path in models() {
        let m = path.to_str().unwrap();
        let want = logits(m, &[], &[]).unwrap();
        assert_eq!(
            want["stats"]["streamed_units"].as_u64(),
            Some(0),
            "{m}: resident"
        );
        let budget = smallest_budget(m).to_string();
        for io in ["uring", "pread", "mmap", "auto"] {
            let got = logits(m, &["--mem", &budget, "--io", io], &[])
                .unwrap_or_else(|e| panic!("{m} --io {io}: {e}"));
            assert!(
                got["stats"]["streamed_units"].as_u64().unwrap() > 0,
                "{m}: --mem {budget} must stream"
            );
            assert!(got["stats"]["bytes_read"].as_u64().unwrap() > 0);
            assert_eq!(
                got["positions"], want["positions"],
                "{m} --io {io} --mem {budget}: logits differ from resident"
            );
        }
    }
}

/// A quantized KV cache (both, and K and V apart) streams the same logits as resident.
#[test]
fn quantized_kv_cache_streams_the_same_logits_as_resident() {
    for name in ["rand-llama-f16.gguf", "rand-qwen3-q5km.gguf"] {
        let m = root().join("testdata/models").join(name);
        let m = m.to_str().unwrap();
        // The f16 cache's smallest budget holds every smaller cache too.
        let budget = smallest_budget(m).to_string();
        for kv in [
            &["--kv-type", "q8_0"][..],
            &["--kv-type", "q4_0"],
            &["--kv-type-k", "q4_0", "--kv-type-v", "f16"],
        ] {
            let want = logits(m, kv, &[]).unwrap();
            let f16 = logits(m, &[], &[]).unwrap();
            assert_ne!(want["positions"], f16["positions"], "{m} {kv:?}: no effect");
            let mut a = kv.to_vec();
            a.extend(["--mem", &budget, "--io", "pread"]);
            let got = logits(m, &a, &[]).unwrap_or_else(|e| panic!("{m} {kv:?}: {e}"));
            assert!(got["stats"]["streamed_units"].as_u64().unwrap() > 0);
            assert_eq!(got["positions"], want["positions"], "{m} {kv:?}");
        }
    }
}

#[test]
fn auto_falls_back_to_pread_when_io_uring_is_refused() {
    let m = root().join("testdata/models/rand-llama-q4_0.gguf");
    let m = m.to_str().unwrap();
    let want = logits(m, &[], &[]).unwrap();
    let budget = smallest_budget(m).to_string();
    let env = [
        ("FLASHSTREAM_DISABLE_URING", "1"),
        ("FLASHSTREAM_LOG", "flashstream_loader=debug"),
    ];
    let mut a: Vec<String> = ["logits", m, "--tokens", TOKENS, "--top", "8", "--json"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    a.extend([
        "--mem".to_string(),
        budget.clone(),
        "--io".into(),
        "auto".into(),
    ]);
    let out = fs(&a, &env);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(got["stats"]["io"], "pread");
    assert_eq!(got["positions"], want["positions"]);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        log.contains("FLASHSTREAM_DISABLE_URING") || log.contains("pread"),
        "the fallback is said at debug level: {log}"
    );
    // Asked for explicitly, a refused io_uring is an error that says why.
    let err = logits(m, &["--mem", &budget, "--io", "uring"], &env[..1]).unwrap_err();
    assert!(err.contains("io_uring") || err.contains("uring"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

/// The random MoE models' llama.cpp goldens hold streamed too: teacher-forced under the
/// smallest budget (experts read as routed through a two-slot cache), every logit of the
/// reference top-10 within 0.1 + 0.02·|logit| and top-1 agreement at least 75%.
#[test]
fn moe_goldens_hold_when_experts_stream() {
    for (file, model) in [
        (
            "generate.rand-qwen3moe-q4km.jsonl",
            "rand-qwen3moe-q4km.gguf",
        ),
        ("generate.rand-qwen2moe-q2k.jsonl", "rand-qwen2moe-q2k.gguf"),
        (
            "generate.rand-deepseek2-q4k.jsonl",
            "rand-deepseek2-q4k.gguf",
        ),
        ("generate.rand-gptoss-mxfp4.jsonl", "rand-gptoss-mxfp4.gguf"),
        ("generate.rand-glm4moe-q5k.jsonl", "rand-glm4moe-q5k.gguf"),
    ] {
        let m = root().join("testdata/models").join(model);
        let m = m.to_str().unwrap();
        // The golden sequences are longer than the probe's: room for their KV cache and logits.
        let budget = (smallest_budget(m) + (1 << 20)).to_string();
        let text = std::fs::read_to_string(root().join("testdata/golden").join(file)).unwrap();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let c: Value = serde_json::from_str(line).unwrap();
            let ids = |v: &Value| -> Vec<u64> {
                v.as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_u64().unwrap())
                    .collect()
            };
            let steps = c["steps"].as_array().unwrap();
            let mut seq = ids(&c["prompt_tokens"]);
            let n0 = seq.len() - 1;
            seq.extend(
                steps[..steps.len() - 1]
                    .iter()
                    .map(|s| s["token"].as_u64().unwrap()),
            );
            let list = seq
                .iter()
                .map(|t| t.to_string())
                .collect::<Vec<_>>()
                .join(",");
            let mut a: Vec<String> = ["logits", m, "--tokens", &list, "--top", "10", "--json"]
                .iter()
                .map(|s| s.to_string())
                .collect();
            a.extend(["--mem".to_string(), budget.clone()]);
            let out = fs(&a, &[]);
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let j: Value = serde_json::from_slice(&out.stdout).unwrap();
            assert!(
                j["stats"]["expert_slots"].as_u64().unwrap() > 0,
                "{model}: experts must stream"
            );
            let pos = j["positions"].as_array().unwrap();
            let mut top1 = 0;
            for (k, s) in steps.iter().enumerate() {
                let ours: Vec<(u64, f64)> = pos[n0 + k]["top"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|p| (p[0].as_u64().unwrap(), p[1].as_f64().unwrap()))
                    .collect();
                if ours[0].0 == s["token"].as_u64().unwrap() {
                    top1 += 1;
                }
                for tv in s["top"].as_array().unwrap() {
                    let (t, v) = (tv[0].as_u64().unwrap(), tv[1].as_f64().unwrap());
                    let err = match ours.iter().find(|o| o.0 == t) {
                        Some(x) => (x.1 - v).abs(),
                        None => (v - ours[9].1).max(0.0),
                    };
                    assert!(
                        err <= 0.1 + 0.02 * v.abs(),
                        "{file} step {k} token {t}: {err}"
                    );
                }
            }
            assert!(
                top1 * 4 >= steps.len() * 3,
                "{file}: top-1 {top1}/{}",
                steps.len()
            );
        }
    }
}
