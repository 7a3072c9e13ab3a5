//! `flashstream chat`: a piped conversation of several turns under a budget, `/reset`, and
//! the KV cache reused across turns (each turn evaluates only what the cache does not hold).

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

fn model() -> Option<PathBuf> {
    let p =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/SmolLM2-135M-Instruct.Q4_1.gguf");
    if p.exists() {
        return Some(p);
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{} missing",
        p.display()
    );
    eprintln!("chat test: SmolLM2 not fetched; not run");
    None
}

fn chat(input: &str, extra: &[&str]) -> (String, String) {
    let m = model().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_flashstream"))
        .args([
            "chat",
            m.to_str().unwrap(),
            "--temp",
            "0",
            "-n",
            "40",
            "--threads",
            "2",
        ])
        .args(["--system", "You are a helpful assistant."])
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// "[N tokens at R/s; P of C positions used]" lines: P per turn.
fn positions(stderr: &str) -> Vec<usize> {
    stderr
        .lines()
        .filter_map(|l| l.split("; ").nth(1)?.split(" of ").next()?.parse().ok())
        .collect()
}

#[test]
fn conversation_turns_reset_and_cache_reuse() {
    if model().is_none() {
        return;
    }
    let (out, err) = chat(
        "What is the capital of France?\nAnd of Italy?\n/reset\nWhat is the capital of France?\n",
        &["--mem", "96MiB"],
    );
    let replies: Vec<&str> = out.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(replies.len(), 3, "{out}\n{err}");
    assert!(replies[0].contains("Paris"), "{out}");
    assert!(
        replies[1].contains("Rome"),
        "the second turn sees the first: {out}"
    );
    assert_eq!(
        replies[2], replies[0],
        "after /reset the same question, the same answer"
    );
    assert!(err.contains("[conversation cleared]"), "{err}");
    let p = positions(&err);
    assert_eq!(p.len(), 3, "{err}");
    // The second turn continues the first; after the reset the count starts over.
    assert!(p[1] > p[0] && p[2] == p[0], "{p:?}");
}
