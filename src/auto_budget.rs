//! Auto budget: the budget follows a share of the memory the OS says is available.
//!
//! An app does not know in advance how much memory it may use: on iOS the limit moves while
//! the app runs (jetsam kills it the moment it is crossed), on a server other processes come
//! and go. In auto mode ([`crate::Engine::set_budget_auto`]) the engine reads the available
//! memory before forward passes (at most once per [`AutoBudget::interval`]) and moves its
//! budget (the same path as [`crate::Engine::set_budget`]) when the target moved by more than
//! [`AutoBudget::hysteresis`].
//!
//! # The target
//!
//! What the OS calls available does not include what the engine already holds, so the share
//! is taken of both together:
//!
//! ```text
//! target = clamp((held + available) × fraction, max(min, engine minimum), max)
//! ```
//!
//! where `held` is what the plan in force counts (pinned weights, slots, expert cache, KV
//! cache, activations, ...: [`crate::Engine::plan`]'s `total_bytes`) and the engine minimum
//! is [`crate::Engine::min_budget`]. The formula is a fixed point: once the engine holds the
//! target, `held + available` is unchanged (what the engine took, the OS no longer counts as
//! available), so the target stays put until something else in the system takes or frees
//! memory. Taking `fraction` of `available` alone would instead halve the budget at every
//! check.

use std::time::Duration;

use crate::scheduler::sysmem;

/// How the budget follows the available memory (see the module docs for the formula).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AutoBudget {
    /// Share of `held + available` to budget, in `(0, 1]`.
    pub fraction: f64,
    /// Lowest budget in bytes (the engine's own minimum applies anyway; 0: that minimum).
    pub min: u64,
    /// Highest budget in bytes (`u64::MAX`: no cap).
    pub max: u64,
    /// Shortest time between two readings of the available memory; passes in between do not
    /// look (`Duration::ZERO`: every pass).
    pub interval: Duration,
    /// Changes smaller than this share of the current budget are skipped, so the budget does
    /// not thrash on noise (each change stops the I/O thread and may read pinned weights
    /// again). In `[0, 1)`.
    pub hysteresis: f64,
}

impl Default for AutoBudget {
    /// Three quarters (as the default fixed budget), no bounds, at most every 100 ms, 5%.
    fn default() -> Self {
        AutoBudget {
            fraction: 0.75,
            min: 0,
            max: u64::MAX,
            interval: Duration::from_millis(100),
            hysteresis: 0.05,
        }
    }
}

impl AutoBudget {
    /// The defaults with another `fraction`.
    pub fn with_fraction(fraction: f64) -> Self {
        AutoBudget {
            fraction,
            ..AutoBudget::default()
        }
    }

    /// Whether the settings can work; the message says which one is wrong.
    pub fn check(&self) -> Result<(), String> {
        if !(self.fraction > 0.0 && self.fraction <= 1.0) {
            return Err(format!(
                "auto budget fraction {} is out of range: give a share in (0, 1], e.g. 0.6",
                self.fraction
            ));
        }
        if self.min > self.max {
            return Err(format!(
                "auto budget minimum {} exceeds its maximum {}",
                self.min, self.max
            ));
        }
        if !(0.0..1.0).contains(&self.hysteresis) {
            return Err(format!(
                "auto budget hysteresis {} is out of range: give a share in [0, 1), e.g. 0.05",
                self.hysteresis
            ));
        }
        Ok(())
    }

    /// The budget for an engine holding `held` bytes when `available` more are available and
    /// it needs `floor` at least: `(held + available) × fraction`, clamped to
    /// `[max(min, floor), max(max, floor)]` (the floor wins over a too-small `max`).
    pub fn target(&self, held: u64, available: u64, floor: u64) -> u64 {
        let lo = self.min.max(floor);
        let hi = self.max.max(lo);
        let t = (held.saturating_add(available) as f64 * self.fraction) as u64;
        t.clamp(lo, hi)
    }

    /// The budget to move to from `current`, or `None` when the target is within the
    /// hysteresis of it.
    pub fn next_budget(&self, current: u64, held: u64, available: u64, floor: u64) -> Option<u64> {
        let t = self.target(held, available, floor);
        let diff = t.abs_diff(current);
        (diff > 0 && diff as f64 >= self.hysteresis * current as f64).then_some(t)
    }
}

/// Where auto mode reads the available memory: the OS ([`OsMemory`]), or in tests and apps
/// with their own knowledge, anything else (a closure `Fn() -> Option<u64>` is one).
pub trait MemoryReader: Send + Sync {
    /// Bytes this process may still allocate, `None` when it cannot be told now (the budget
    /// then stays as it is).
    fn available(&self) -> Option<u64>;
}

impl<F: Fn() -> Option<u64> + Send + Sync> MemoryReader for F {
    fn available(&self) -> Option<u64> {
        self()
    }
}

/// The OS's reading ([`sysmem::available_memory`]): on Linux the room under the process's
/// memory cgroup when it has a limit (limit − usage + inactive file cache) or `MemAvailable`
/// (the smaller of the two), on iOS `os_proc_available_memory()`; no reading elsewhere.
#[derive(Debug, Clone, Copy, Default)]
pub struct OsMemory;

impl MemoryReader for OsMemory {
    fn available(&self) -> Option<u64> {
        sysmem::available_memory()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: u64 = 1 << 20;

    #[test]
    fn target_is_a_share_of_held_plus_available_clamped() {
        let a = AutoBudget::with_fraction(0.5);
        assert_eq!(a.target(100 * M, 300 * M, 10 * M), 200 * M);
        // The floor (engine minimum) and min raise it; max caps it, but never below the floor.
        assert_eq!(a.target(0, 10 * M, 20 * M), 20 * M);
        let b = AutoBudget {
            min: 50 * M,
            max: 150 * M,
            ..a
        };
        assert_eq!(b.target(0, 10 * M, 20 * M), 50 * M);
        assert_eq!(b.target(100 * M, 900 * M, 20 * M), 150 * M);
        assert_eq!(b.target(100 * M, 900 * M, 400 * M), 400 * M);
        // No overflow at the top: the sum saturates, the float product saturates.
        assert_eq!(a.target(u64::MAX, u64::MAX, 0), 1 << 63);
        assert_eq!(
            AutoBudget::with_fraction(1.0).target(u64::MAX, 1, 0),
            u64::MAX
        );
    }

    #[test]
    fn fixed_point_once_the_engine_holds_the_target() {
        // 1000 MiB free, nothing held: budget 600. Holding 600 leaves 400 available: still 600.
        let a = AutoBudget::with_fraction(0.6);
        let t = a.next_budget(100 * M, 0, 1000 * M, 0).unwrap();
        assert_eq!(t, 600 * M);
        assert_eq!(a.next_budget(t, t, 1000 * M - t, 0), None);
    }

    #[test]
    fn hysteresis_skips_small_moves() {
        let a = AutoBudget::with_fraction(1.0);
        // 4% up: skipped; 6% up or down: taken; no move at all: skipped even without hysteresis.
        assert_eq!(a.next_budget(100 * M, 100 * M, 4 * M, 0), None);
        assert_eq!(a.next_budget(100 * M, 100 * M, 6 * M, 0), Some(106 * M));
        assert_eq!(a.next_budget(100 * M, 94 * M, 0, 0), Some(94 * M));
        let z = AutoBudget {
            hysteresis: 0.0,
            ..a
        };
        assert_eq!(z.next_budget(100 * M, 100 * M, 0, 0), None);
        assert_eq!(z.next_budget(100 * M, 100 * M, 1, 0), Some(100 * M + 1));
    }

    #[test]
    fn checks_name_the_bad_setting() {
        assert!(AutoBudget::default().check().is_ok());
        for f in [0.0, -0.5, 1.5, f64::NAN] {
            let e = AutoBudget::with_fraction(f).check().unwrap_err();
            assert!(e.contains("fraction"), "{e}");
        }
        let e = AutoBudget {
            min: 2,
            max: 1,
            ..AutoBudget::default()
        }
        .check()
        .unwrap_err();
        assert!(e.contains("minimum"), "{e}");
        let e = AutoBudget {
            hysteresis: 1.0,
            ..AutoBudget::default()
        }
        .check()
        .unwrap_err();
        assert!(e.contains("hysteresis"), "{e}");
    }

    #[test]
    fn closures_are_readers() {
        let r: Box<dyn MemoryReader> = Box::new(|| Some(42u64));
        assert_eq!(r.available(), Some(42));
        #[cfg(target_os = "linux")]
        assert!(OsMemory.available().is_some());
    }
}
