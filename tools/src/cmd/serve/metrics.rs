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
}

impl Metrics {
    pub fn set_stall_s(&self, s: f64) {
        self.stall_s.store(s.to_bits(), Ordering::Relaxed);
    }

    pub fn set_tokens_per_s(&self, s: f64) {
        self.tokens_per_s.store(s.to_bits(), Ordering::Relaxed);
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
