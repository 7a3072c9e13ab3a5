//! `Engine::set_budget_auto`: with an injected reading of the available memory, the budget
//! follows it before passes (clamped to the engine's minimum and the settings' maximum,
//! skipping moves within the hysteresis, no more often than the interval), the greedy text
//! stays the same while it moves, and a fixed budget turns auto mode off.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use flashstream::{AutoBudget, Engine, EngineError};

mod common;
use common::{greedy, models, opts, root};

/// A reader whose value the test sets (`u64::MAX`: no reading).
fn reader(v: &Arc<AtomicU64>) -> impl Fn() -> Option<u64> + Send + Sync + 'static {
    let v = Arc::clone(v);
    move || match v.load(Ordering::SeqCst) {
        u64::MAX => None,
        x => Some(x),
    }
}

const PLENTY: u64 = 1 << 40;

#[test]
fn the_budget_follows_the_available_memory_and_the_text_stays() {
    for path in models() {
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let size = std::fs::metadata(&path).unwrap().len();
        let engine = Engine::open(&path, &opts(4 * size + (256 << 20))).unwrap();
        let big = engine.budget();
        let min = engine.min_budget().unwrap();
        let want = greedy(&engine, 12, |_| {});

        let avail = Arc::new(AtomicU64::new(PLENTY));
        let cfg = AutoBudget {
            fraction: 0.5,
            max: big,
            interval: Duration::ZERO,
            ..AutoBudget::default()
        };
        // Plenty available: the cap.
        engine.set_budget_auto_with(cfg, reader(&avail)).unwrap();
        assert_eq!(engine.budget_auto(), Some(cfg), "{name}");
        assert_eq!(engine.budget(), big, "{name}");
        assert!(!engine.plan().streams(), "{name}");

        // Nothing available: every pass takes half of what is held, down to the minimum
        // within a few tokens; the text is the same all the way.
        avail.store(0, Ordering::SeqCst);
        let mut seen = Vec::new();
        let got = greedy(&engine, 12, |_| seen.push(engine.budget()));
        assert_eq!(got, want, "{name}: while shrinking");
        assert_eq!(engine.budget(), min, "{name}: budgets seen {seen:?}");
        assert!(engine.plan().streams(), "{name}");
        assert!(
            seen.windows(2).all(|w| w[1] <= w[0]),
            "{name}: shrinking only: {seen:?}"
        );

        // No reading: the budget stays.
        avail.store(u64::MAX, Ordering::SeqCst);
        assert_eq!(greedy(&engine, 4, |_| {}), want[..4], "{name}");
        assert_eq!(engine.budget(), min, "{name}");

        // Plenty again: back to the cap in one step, everything pinned again.
        avail.store(PLENTY, Ordering::SeqCst);
        assert_eq!(greedy(&engine, 12, |_| {}), want, "{name}: after growing");
        assert_eq!(engine.budget(), big, "{name}");
        assert!(!engine.plan().streams(), "{name}");

        // The reading changes between tokens: the budget moves at the next pass, the text
        // does not.
        let mut budgets = Vec::new();
        let got = greedy(&engine, 12, |i| {
            budgets.push(engine.budget());
            avail.store(if i % 3 == 0 { 0 } else { PLENTY }, Ordering::SeqCst);
        });
        assert_eq!(got, want, "{name}: reading changed between tokens");
        assert!(budgets.contains(&big), "{name}: {budgets:?}");
        assert!(budgets.iter().any(|&b| b < big), "{name}: {budgets:?}");

        // A fixed budget turns auto mode off: the reading no longer matters.
        engine.set_budget(big).unwrap();
        assert_eq!(engine.budget_auto(), None, "{name}");
        avail.store(0, Ordering::SeqCst);
        assert_eq!(greedy(&engine, 4, |_| {}), want[..4], "{name}");
        assert_eq!(engine.budget(), big, "{name}");
    }
}

#[test]
fn hysteresis_interval_and_errors() {
    let path = root().join("testdata/models/rand-llama-q8_0.gguf");
    let engine = Engine::open(&path, &opts(64 << 20)).unwrap();
    let min = engine.min_budget().unwrap();
    let avail = Arc::new(AtomicU64::new(0));
    // Target = held + available, no cap.
    let cfg = AutoBudget {
        fraction: 1.0,
        interval: Duration::ZERO,
        hysteresis: 0.05,
        ..AutoBudget::default()
    };
    engine.set_budget_auto_with(cfg, reader(&avail)).unwrap();
    // held + 0 is below the budget (the plan holds less than it may): it shrinks toward what
    // is held, never below the minimum.
    let b0 = engine.budget();
    assert!(b0 >= min && b0 <= 64 << 20);

    // A target 3% above the budget: skipped. 8% above: taken.
    let step = |pct: u64| {
        let p = engine.plan();
        let target = p.budget + p.budget * pct / 100;
        avail.store(target - p.total_bytes(), Ordering::SeqCst);
        greedy(&engine, 1, |_| {});
        target
    };
    let before = engine.budget();
    step(3);
    assert_eq!(engine.budget(), before, "within the hysteresis");
    let t = step(8);
    assert_eq!(engine.budget(), t, "beyond the hysteresis");

    // A long interval: passes do not look, a forced check does.
    engine
        .set_budget_auto_with(
            AutoBudget {
                interval: Duration::from_secs(3600),
                ..cfg
            },
            reader(&avail),
        )
        .unwrap();
    let b = engine.budget();
    let p = engine.plan();
    avail.store(2 * b - p.total_bytes(), Ordering::SeqCst);
    greedy(&engine, 3, |_| {});
    assert_eq!(engine.budget(), b, "the interval has not passed");
    engine.check_budget_auto().unwrap();
    assert_eq!(engine.budget(), 2 * b, "a forced check follows the reading");

    // Off: the budget stays where it is.
    engine.set_budget_auto(None).unwrap();
    assert_eq!(engine.budget_auto(), None);
    avail.store(0, Ordering::SeqCst);
    engine.check_budget_auto().unwrap();
    assert_eq!(engine.budget(), 2 * b);

    // Bad settings and no reading are errors that change nothing.
    for bad in [
        AutoBudget::with_fraction(0.0),
        AutoBudget::with_fraction(1.5),
        AutoBudget {
            min: 10,
            max: 5,
            ..cfg
        },
    ] {
        match engine.set_budget_auto_with(bad, reader(&avail)) {
            Err(EngineError::Invalid(m)) => assert!(m.contains("auto budget"), "{m}"),
            other => panic!("expected Invalid, got {other:?}"),
        }
    }
    match engine.set_budget_auto_with(cfg, || None) {
        Err(EngineError::Invalid(m)) => assert!(m.contains("not supported"), "{m}"),
        other => panic!("expected Invalid, got {other:?}"),
    }
    assert_eq!(engine.budget_auto(), None);
    assert_eq!(engine.budget(), 2 * b);

    // The OS reading works on Linux.
    #[cfg(target_os = "linux")]
    {
        engine
            .set_budget_auto(Some(AutoBudget {
                max: 64 << 20,
                ..AutoBudget::default()
            }))
            .unwrap();
        assert!(engine.budget() >= min && engine.budget() <= 64 << 20);
        assert_eq!(greedy(&engine, 2, |_| {}).len(), 2);
    }
}
