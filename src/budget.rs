//! The budget of a loaded engine: plans the loaded model under a new budget, moves the
//! streaming source to it, and in auto mode does so by itself before forward passes.
//!
//! [`Budget`] is shared between the [`crate::Engine`] (explicit calls) and [`EngineSource`],
//! the weight source the runtime model leases from: a thin layer over the
//! [`StreamingSource`] whose [`WeightSource::before_pass`] is auto mode's check.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Instant;

use crate::auto_budget::{AutoBudget, MemoryReader};
use crate::scheduler::{
    Lease, Plan, PlanRequest, RuntimeNeeds, SchedulerError, SourceStats, StreamingSource, UnitId,
    UnitTable, WeightSource,
};

/// Auto mode's state.
struct Auto {
    cfg: AutoBudget,
    reader: Box<dyn MemoryReader>,
    /// The engine's minimum budget (computed once when auto mode is turned on).
    floor: u64,
    /// When the available memory was last read.
    last: Option<Instant>,
}

/// Everything a budget change needs, computed at load (the units, what the runtime needs
/// beside the weights, the plan request with the context fixed), and the plan in force.
pub(crate) struct Budget {
    units: UnitTable,
    needs: RuntimeNeeds,
    req: PlanRequest,
    source: Arc<StreamingSource>,
    plan: RwLock<Plan>,
    /// Serializes residency changes.
    change: Mutex<()>,
    /// Auto mode (taken before `change` by everyone who takes both).
    auto: Mutex<Option<Auto>>,
    /// Whether `auto` is `Some` (read without the lock before every pass).
    auto_on: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Budget {
    pub(crate) fn new(
        units: UnitTable,
        needs: RuntimeNeeds,
        req: PlanRequest,
        source: Arc<StreamingSource>,
        plan: Plan,
    ) -> Self {
        Budget {
            units,
            needs,
            req,
            source,
            plan: RwLock::new(plan),
            change: Mutex::new(()),
            auto: Mutex::new(None),
            auto_on: AtomicBool::new(false),
        }
    }

    pub(crate) fn plan(&self) -> std::sync::RwLockReadGuard<'_, Plan> {
        self.plan.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The plan under `bytes` for what is loaded.
    pub(crate) fn plan_for(&self, bytes: u64) -> Result<Plan, SchedulerError> {
        let req = PlanRequest {
            budget: bytes,
            ..self.req.clone()
        };
        Plan::compute(&self.units, &self.needs, &req)
    }

    /// The smallest budget the loaded model runs under.
    pub(crate) fn min_budget(&self) -> Result<u64, SchedulerError> {
        match self.plan_for(1) {
            Err(SchedulerError::BudgetTooSmall { minimum, .. }) => Ok(minimum),
            Err(e) => Err(e),
            Ok(p) => Ok(p.total_bytes()),
        }
    }

    /// Moves the residency to `plan` (callers hold the `auto` lock, so the order is fixed).
    fn apply(&self, plan: Plan) -> Result<(), SchedulerError> {
        let _one = lock(&self.change);
        self.source.rebudget(plan.clone())?;
        *self.plan.write().unwrap_or_else(|p| p.into_inner()) = plan;
        Ok(())
    }

    /// A fixed budget: plans it (an error changes nothing, auto mode included), turns auto
    /// mode off and applies it.
    pub(crate) fn set(&self, bytes: u64) -> Result<(), SchedulerError> {
        let mut auto = lock(&self.auto);
        let plan = self.plan_for(bytes)?;
        *auto = None;
        self.auto_on.store(false, Ordering::Release);
        self.apply(plan)
    }

    /// Turns auto mode on with `reader` (reading it once now and applying the target at once)
    /// or off (`None`: the budget stays where it is).
    pub(crate) fn set_auto(
        &self,
        cfg: Option<(AutoBudget, Box<dyn MemoryReader>)>,
    ) -> Result<(), crate::EngineError> {
        let mut auto = lock(&self.auto);
        let Some((cfg, reader)) = cfg else {
            *auto = None;
            self.auto_on.store(false, Ordering::Release);
            return Ok(());
        };
        cfg.check().map_err(crate::EngineError::Invalid)?;
        let Some(available) = reader.available() else {
            return Err(crate::EngineError::Invalid(format!(
                "auto budget is not supported here: no reading of the available memory on {} \
                 (auto mode reads Linux's /proc/meminfo and memory cgroup, or iOS's \
                 os_proc_available_memory); give a fixed budget instead",
                std::env::consts::OS
            )));
        };
        let floor = self.min_budget()?;
        let mut a = Auto {
            cfg,
            reader,
            floor,
            last: Some(Instant::now()),
        };
        self.follow(&mut a, available)?;
        *auto = Some(a);
        self.auto_on.store(true, Ordering::Release);
        Ok(())
    }

    /// The auto settings in force.
    pub(crate) fn auto(&self) -> Option<AutoBudget> {
        lock(&self.auto).as_ref().map(|a| a.cfg)
    }

    /// Moves the budget to the target for `available`, unless within the hysteresis.
    fn follow(&self, a: &mut Auto, available: u64) -> Result<(), SchedulerError> {
        let (current, held) = {
            let p = self.plan();
            (p.budget, p.total_bytes())
        };
        let Some(next) = a.cfg.next_budget(current, held, available, a.floor) else {
            return Ok(());
        };
        tracing::info!(
            from = current,
            to = next,
            held,
            available,
            "auto budget follows the available memory"
        );
        self.apply(self.plan_for(next)?)
    }

    /// Auto mode's check: at most once per interval, read the available memory and follow it.
    /// `force` ignores the interval.
    pub(crate) fn check_auto(&self, force: bool) -> Result<(), SchedulerError> {
        if !self.auto_on.load(Ordering::Acquire) {
            return Ok(());
        }
        let mut g = lock(&self.auto);
        let Some(a) = g.as_mut() else {
            return Ok(());
        };
        let now = Instant::now();
        if !force
            && a.last
                .is_some_and(|t| now.duration_since(t) < a.cfg.interval)
        {
            return Ok(());
        }
        a.last = Some(now);
        match a.reader.available() {
            Some(avail) => self.follow(a, avail),
            None => Ok(()),
        }
    }
}

/// The source the engine's model leases from: the streaming source, with auto mode's check
/// before each pass.
pub(crate) struct EngineSource {
    pub(crate) source: Arc<StreamingSource>,
    pub(crate) budget: Arc<Budget>,
}

impl WeightSource for EngineSource {
    fn units(&self) -> &UnitTable {
        self.source.units()
    }

    fn lease(&self, id: UnitId) -> Result<Lease<'_>, SchedulerError> {
        self.source.lease(id)
    }

    fn prefetch(&self, upcoming: &[UnitId]) {
        self.source.prefetch(upcoming)
    }

    fn will_need(&self, units: &[UnitId]) {
        self.source.will_need(units)
    }

    fn is_resident(&self, id: UnitId) -> bool {
        self.source.is_resident(id)
    }

    fn all_resident(&self) -> bool {
        self.source.all_resident()
    }

    fn embedding_rows(&self, tokens: &[u32], out: &mut [u8]) -> Result<(), SchedulerError> {
        self.source.embedding_rows(tokens, out)
    }

    fn stats(&self) -> SourceStats {
        self.source.stats()
    }

    /// A failed automatic change does not fail the pass: the source went back to the plan it
    /// had (or, if even that failed, its next lease reports the error), so the pass goes on
    /// and the next check tries again.
    fn before_pass(&self) -> Result<(), SchedulerError> {
        if let Err(e) = self.budget.check_auto(false) {
            tracing::warn!("auto budget: the change failed, the budget stays: {e}");
        }
        Ok(())
    }
}
