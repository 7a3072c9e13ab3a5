//! A small event recorder for looking at the streaming pipeline: weight reads on the I/O
//! thread, each layer's compute, the time compute waited on a lease (stalls) and one marker
//! per pass, on a monotonic clock relative to the recorder's start.
//!
//! A [`Trace`] is a cheap handle (an `Option<Arc>`): clones share one event list. Off
//! ([`Trace::off`], the default) every call is a branch and nothing else. Recording never does
//! I/O: the caller takes the events ([`Trace::events`]) and writes them where it wants (the
//! tools write Chrome trace-event JSON). At most `cap` events are kept; the next one is
//! replaced by a single [`Track::Passes`] note saying recording stopped, so a long-running
//! server does not grow without limit.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;

/// Events a trace keeps by default before it stops recording.
pub const DEFAULT_TRACE_CAP: usize = 1_000_000;

/// Where an event is drawn (a thread/track of the trace viewer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Track {
    /// One marker per forward pass (a token, or a prompt chunk).
    Passes,
    /// Layer compute on the model's thread.
    Compute,
    /// Time the compute thread waited for bytes not yet read.
    Stalls,
    /// Reads into ring slot `n` (reads into one slot never overlap).
    RingSlot(usize),
    /// Reads into expert-cache slot `n`.
    ExpertSlot(usize),
    /// Embedding rows read on demand.
    Rows,
}

/// One argument value of an event.
#[derive(Debug, Clone, PartialEq)]
pub enum ArgValue {
    /// A count (bytes, an index).
    Int(u64),
    /// A label.
    Str(String),
}

/// One recorded event: a complete span (`dur_us` is `Some`) or an instant.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// What it is (`"blk.3"`, `"stall blk.7"`, `"token 5"`).
    pub name: String,
    /// Kind: `"read"`, `"compute"`, `"stall"`, `"pass"`, `"note"`.
    pub cat: &'static str,
    /// Track it belongs to.
    pub track: Track,
    /// Start, in microseconds since the trace started.
    pub ts_us: f64,
    /// Duration in microseconds (`None`: an instant).
    pub dur_us: Option<f64>,
    /// Extra fields.
    pub args: Vec<(&'static str, ArgValue)>,
}

#[derive(Debug)]
struct Inner {
    start: Instant,
    cap: usize,
    events: Mutex<Vec<Event>>,
    full: AtomicBool,
    passes: AtomicU64,
}

/// The recorder handle (see the module docs). `Trace::default()` is off.
#[derive(Debug, Clone, Default)]
pub struct Trace(Option<Arc<Inner>>);

impl Trace {
    /// A trace that records nothing.
    pub fn off() -> Trace {
        Trace(None)
    }

    /// A recording trace that keeps at most `cap` events (then one note that it stopped).
    pub fn new(cap: usize) -> Trace {
        Trace(Some(Arc::new(Inner {
            start: Instant::now(),
            cap: cap.max(1),
            events: Mutex::new(Vec::new()),
            full: AtomicBool::new(false),
            passes: AtomicU64::new(0),
        })))
    }

    /// Whether it records.
    #[inline]
    pub fn is_on(&self) -> bool {
        self.0.is_some()
    }

    /// Now, when recording (for the start of a span); `None` when off.
    #[inline]
    pub fn now(&self) -> Option<Instant> {
        self.0.as_ref().map(|_| Instant::now())
    }

    /// A new pass number (0, 1, ...; always 0 when off).
    pub fn next_pass(&self) -> u64 {
        self.0
            .as_ref()
            .map_or(0, |i| i.passes.fetch_add(1, Ordering::Relaxed))
    }

    /// Records a span from `start` (from [`Trace::now`]) to now. `name` is only called when
    /// recording.
    #[inline]
    pub fn span(
        &self,
        track: Track,
        cat: &'static str,
        start: Option<Instant>,
        name: impl FnOnce() -> String,
        args: impl FnOnce() -> Vec<(&'static str, ArgValue)>,
    ) {
        if let (Some(inner), Some(start)) = (&self.0, start) {
            let end = Instant::now();
            inner.push(Event {
                name: name(),
                cat,
                track,
                ts_us: inner.us(start),
                dur_us: Some(end.saturating_duration_since(start).as_secs_f64() * 1e6),
                args: args(),
            });
        }
    }

    /// The events so far, in the order they were recorded.
    pub fn events(&self) -> Vec<Event> {
        self.0
            .as_ref()
            .map_or_else(Vec::new, |i| i.events.lock().clone())
    }
}

impl Inner {
    fn us(&self, t: Instant) -> f64 {
        t.saturating_duration_since(self.start).as_secs_f64() * 1e6
    }

    fn push(&self, e: Event) {
        if self.full.load(Ordering::Relaxed) {
            return;
        }
        let mut ev = self.events.lock();
        if ev.len() + 1 >= self.cap {
            if !self.full.swap(true, Ordering::Relaxed) {
                let n = ev.len();
                ev.push(Event {
                    name: format!("trace full: recording stopped after {n} events"),
                    cat: "note",
                    track: Track::Passes,
                    ts_us: e.ts_us,
                    dur_us: None,
                    args: Vec::new(),
                });
            }
            return;
        }
        ev.push(e);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_records_nothing_and_cap_stops_with_a_note() {
        let off = Trace::off();
        off.span(
            Track::Compute,
            "compute",
            off.now(),
            || "x".into(),
            Vec::new,
        );
        assert!(off.events().is_empty());
        let t = Trace::new(3);
        for i in 0..5 {
            t.span(
                Track::Compute,
                "compute",
                t.now(),
                || format!("e{i}"),
                Vec::new,
            );
        }
        let ev = t.events();
        let names: Vec<&str> = ev.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names[..2], ["e0", "e1"]);
        assert_eq!(ev.len(), 3);
        assert!(names[2].starts_with("trace full"), "{names:?}");
        assert!(ev[0].dur_us.is_some_and(|d| d >= 0.0));
    }
}
