//! `Engine::set_budget`: the residency follows a new budget while the model stays loaded, the
//! greedy text is the same before, during and after changes (same math, other residency), a
//! budget below the minimum is an error that changes nothing, and changes from another thread
//! while a session generates are safe.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use flashstream::scheduler::SchedulerError;
use flashstream::{Engine, EngineError};

mod common;
use common::{greedy, models, opts, root};

#[test]
fn a_new_budget_changes_residency_not_output() {
    for path in models() {
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let size = std::fs::metadata(&path).unwrap().len();
        let engine = Engine::open(&path, &opts(4 * size + (256 << 20))).unwrap();
        assert!(!engine.plan().streams(), "{name}: everything fits at first");
        let want = greedy(&engine, 12, |_| {});
        let min = engine.min_budget().unwrap();
        let big = engine.budget();

        // Below the minimum: an error stating it, and nothing changes.
        let before = engine.plan();
        match engine.set_budget(min - 1) {
            Err(EngineError::Scheduler(SchedulerError::BudgetTooSmall { minimum, .. })) => {
                assert_eq!(minimum, min, "{name}")
            }
            other => panic!("{name}: expected BudgetTooSmall, got {other:?}"),
        }
        assert_eq!(engine.plan().pinned, before.pinned, "{name}");
        assert_eq!(engine.budget(), big, "{name}");

        // The minimum streams; the text is the same.
        engine.set_budget(min).unwrap();
        let p = engine.plan();
        assert_eq!(p.budget, min);
        assert!(p.total_bytes() <= min, "{name}: plan over its budget");
        assert!(p.streams(), "{name}: the minimum budget streams");
        assert!(p.pinned.len() < before.pinned.len(), "{name}");
        let read0 = engine.stats().bytes_read;
        assert_eq!(greedy(&engine, 12, |_| {}), want, "{name}: after shrinking");
        assert!(engine.stats().bytes_read > read0, "{name}: it streamed");

        // Growing back pins everything again.
        engine.set_budget(big).unwrap();
        assert!(!engine.plan().streams(), "{name}");
        assert_eq!(engine.plan().pinned, before.pinned, "{name}");
        assert_eq!(greedy(&engine, 12, |_| {}), want, "{name}: after growing");

        // Changes between tokens, from the generating thread itself.
        let mid = min + (big - min) / 3;
        let budgets = [min, big, mid, min, big];
        let got = greedy(&engine, 12, |i| {
            engine.set_budget(budgets[i % budgets.len()]).unwrap();
        });
        assert_eq!(got, want, "{name}: budget changed between tokens");
    }
}

#[test]
fn set_budget_from_another_thread_while_generating() {
    let path = root().join("testdata/models/rand-llama-q8_0.gguf");
    let engine = Engine::open(&path, &opts(64 << 20)).unwrap();
    let want = greedy(&engine, 24, |_| {});
    let min = engine.min_budget().unwrap();
    let done = AtomicBool::new(false);
    let changes = AtomicUsize::new(0);
    let got = std::thread::scope(|sc| {
        sc.spawn(|| {
            let mut i = 0u64;
            while !done.load(Ordering::Relaxed) {
                let b = if i.is_multiple_of(2) {
                    min
                } else {
                    min + (i % 7) * (1 << 20)
                };
                engine.set_budget(b).unwrap();
                changes.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
        });
        let mut runs = Vec::new();
        for _ in 0..3 {
            runs.push(greedy(&engine, 24, |_| {}));
        }
        done.store(true, Ordering::Relaxed);
        runs
    });
    assert!(changes.load(Ordering::Relaxed) > 0);
    for g in got {
        assert_eq!(g, want);
    }
}
