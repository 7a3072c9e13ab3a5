//! Counters of the server, shown at `GET /metrics` in Prometheus' text format.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

/// The server's counters and gauges (atomics: the model thread and the routes update them).
#[derive(Debug, Default)]
pub struct Metrics {
    pub requests: AtomicU64,
    pub requests_done: AtomicU64,
    pub rejected_queue_full: AtomicU64,
    pub errors: AtomicU64,
    pub cancelled: AtomicU64,
    pub prompt_tokens: AtomicU64,
    pub completion_tokens: AtomicU64,
    pub passes: AtomicU64,
    pub bytes_read: AtomicU64,
    /// f64 bits.
    stall_s: AtomicU64,
    /// f64 bits: tokens generated per second in the last shared pass (all sequences).
    tokens_per_s: AtomicU64,
    pub queue_len: AtomicU64,
    pub active: AtomicU64,
    /// Requests with an output constraint (`response_format` JSON, `grammar`).
    pub structured_requests: AtomicU64,
    /// Grammar masks computed (one per constrained token) and their nanoseconds.
    pub masks: AtomicU64,
    mask_ns: AtomicU64,
    /// Nanoseconds committing sampled tokens to the grammar.
    commit_ns: AtomicU64,
    /// Nanoseconds compiling grammars.
    compile_ns: AtomicU64,
    /// f64 bits: seconds building the token trie (once, at the first constrained request).
    vocab_s: AtomicU64,
    /// Tokens proposed by speculative (prompt-lookup) sequences, and those kept.
    spec_proposed: AtomicU64,
    spec_accepted: AtomicU64,
}

fn ns(s: f64) -> u64 {
    (s.max(0.0) * 1e9) as u64
}

impl Metrics {
    pub fn set_stall_s(&self, s: f64) {
        self.stall_s.store(s.to_bits(), Ordering::Relaxed);
    }

    pub fn set_tokens_per_s(&self, s: f64) {
        self.tokens_per_s.store(s.to_bits(), Ordering::Relaxed);
    }

    /// Adds grammar time: `masks` masks taking `mask_s`, commits taking `commit_s`,
    /// compiling taking `compile_s`.
    pub fn add_structured(&self, masks: u64, mask_s: f64, commit_s: f64, compile_s: f64) {
        self.masks.fetch_add(masks, Ordering::Relaxed);
        self.mask_ns.fetch_add(ns(mask_s), Ordering::Relaxed);
        self.commit_ns.fetch_add(ns(commit_s), Ordering::Relaxed);
        self.compile_ns.fetch_add(ns(compile_s), Ordering::Relaxed);
    }

    pub fn add_speculative(&self, proposed: u64, accepted: u64) {
        self.spec_proposed.fetch_add(proposed, Ordering::Relaxed);
        self.spec_accepted.fetch_add(accepted, Ordering::Relaxed);
    }

    pub fn set_vocab_s(&self, s: f64) {
        self.vocab_s.store(s.to_bits(), Ordering::Relaxed);
    }

    /// The Prometheus text exposition.
    pub fn render(&self, parallel: usize, ready: bool) -> String {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let f = |a: &AtomicU64| f64::from_bits(a.load(Ordering::Relaxed));
        let mut s = String::new();
        let mut line = |name: &str, kind: &str, help: &str, value: String| {
            let _ = writeln!(s, "# HELP flashstream_{name} {help}");
            let _ = writeln!(s, "# TYPE flashstream_{name} {kind}");
            let _ = writeln!(s, "flashstream_{name} {value}");
        };
        line(
            "requests_total",
            "counter",
            "Generation requests received.",
            g(&self.requests).to_string(),
        );
        line(
            "requests_completed_total",
            "counter",
            "Generation requests completed.",
            g(&self.requests_done).to_string(),
        );
        line(
            "requests_rejected_total",
            "counter",
            "Requests refused because the queue was full.",
            g(&self.rejected_queue_full).to_string(),
        );
        line(
            "requests_cancelled_total",
            "counter",
            "Requests whose client disconnected before the end.",
            g(&self.cancelled).to_string(),
        );
        line(
            "request_errors_total",
            "counter",
            "Requests answered with an error.",
            g(&self.errors).to_string(),
        );
        line(
            "prompt_tokens_total",
            "counter",
            "Prompt tokens evaluated.",
            g(&self.prompt_tokens).to_string(),
        );
        line(
            "completion_tokens_total",
            "counter",
            "Tokens generated.",
            g(&self.completion_tokens).to_string(),
        );
        line(
            "passes_total",
            "counter",
            "Shared weight passes run.",
            g(&self.passes).to_string(),
        );
        line(
            "bytes_read_total",
            "counter",
            "Weight bytes read from storage.",
            g(&self.bytes_read).to_string(),
        );
        line(
            "stall_seconds_total",
            "counter",
            "Seconds the compute waited for reads.",
            f(&self.stall_s).to_string(),
        );
        line(
            "tokens_per_second",
            "gauge",
            "Tokens generated per second in the last shared pass (all sequences).",
            f(&self.tokens_per_s).to_string(),
        );
        line(
            "queue_length",
            "gauge",
            "Requests waiting for a sequence slot.",
            g(&self.queue_len).to_string(),
        );
        line(
            "active_sequences",
            "gauge",
            "Sequences being generated.",
            g(&self.active).to_string(),
        );
        line(
            "speculative_proposed_tokens_total",
            "counter",
            "Tokens proposed by prompt lookup for speculative requests.",
            g(&self.spec_proposed).to_string(),
        );
        line(
            "speculative_accepted_tokens_total",
            "counter",
            "Proposed tokens the model agreed with (emitted without a pass of their own).",
            g(&self.spec_accepted).to_string(),
        );
        let secs = |a: &AtomicU64| (g(a) as f64 / 1e9).to_string();
        line(
            "structured_requests_total",
            "counter",
            "Requests with an output constraint (response_format json_object/json_schema, grammar).",
            g(&self.structured_requests).to_string(),
        );
        line(
            "structured_masked_tokens_total",
            "counter",
            "Grammar masks computed (one per token of a constrained output).",
            g(&self.masks).to_string(),
        );
        line(
            "structured_mask_seconds_total",
            "counter",
            "Seconds computing grammar masks and applying them to logits.",
            secs(&self.mask_ns),
        );
        line(
            "structured_commit_seconds_total",
            "counter",
            "Seconds advancing grammars past sampled tokens.",
            secs(&self.commit_ns),
        );
        line(
            "structured_compile_seconds_total",
            "counter",
            "Seconds compiling JSON schemas and grammars.",
            secs(&self.compile_ns),
        );
        line(
            "structured_vocab_build_seconds",
            "gauge",
            "Seconds the token trie took to build (at the first constrained request; 0 before).",
            f(&self.vocab_s).to_string(),
        );
        line(
            "parallel_slots",
            "gauge",
            "Sequences decoded together at most (--parallel).",
            parallel.to_string(),
        );
        line(
            "model_ready",
            "gauge",
            "1 once the model is loaded.",
            u8::from(ready).to_string(),
        );
        s
    }
}
