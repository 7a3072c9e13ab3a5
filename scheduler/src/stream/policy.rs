//! The expert-cache policy as pure functions of the cache slots and a [`Ctx`]: which slot a
//! demanded expert takes ([`victim`]) and which one a predicted expert may take
//! ([`prediction_victim`]). The I/O thread calls them under the state lock.

use super::state::{CacheSlot, Origin};
use super::PREDICTION_AGE_TOKENS;
use crate::plan::ExpertPolicy;
use crate::UnitId;

/// What the choices read besides the slots (a copy of the state's counters).
#[derive(Debug, Clone, Copy)]
pub(super) struct Ctx {
    /// The current request epoch (protection lasts for it and the next).
    pub(super) epoch: u64,
    /// Expert leases so far.
    pub(super) clock: u64,
    /// Expert leases in one token.
    pub(super) window: u64,
    /// Layers of the model.
    pub(super) layers: usize,
    /// The layer of the last expert request or lease.
    pub(super) cur_layer: usize,
    /// Running rate of expert leases that hit the cache.
    pub(super) hit_rate: f64,
    /// Running rate of guesses leased before being evicted.
    pub(super) guess_use_rate: f64,
    /// Distance-then-LRU or plain LRU.
    pub(super) policy: ExpertPolicy,
}

impl Ctx {
    /// How many layers after the current one `layer` comes round again (layers are visited in
    /// order every token: the layer just computed is the furthest away).
    fn distance(&self, layer: usize) -> usize {
        let n = self.layers.max(1);
        (layer + 2 * n - self.cur_layer - 1) % n
    }
}

/// Whether a request of this epoch or the one before protects the slot from eviction.
pub(super) fn protected(slot: &CacheSlot, epoch: u64) -> bool {
    slot.protect != 0 && slot.protect + 1 >= epoch
}

/// The slot to (re)use for a new expert: an empty one, else the least recently used of
/// those neither leased nor loading, taken from the least valuable class first: unused
/// guesses, then anything unprotected; then (`level >= 1`) protected ones; then
/// (`level >= 2`, only for the read a lease is blocked on) experts demanded for this
/// layer and not leased yet.
pub(super) fn victim(cache: &[CacheSlot], ctx: &Ctx, level: u8) -> Option<usize> {
    let free = |i: usize| {
        let s = &cache[i];
        s.leases == 0 && s.loading == 0
    };
    if let Some(i) = (0..cache.len()).find(|&i| free(i) && cache[i].unit.is_none()) {
        return Some(i);
    }
    // 0: an unprotected guess nobody used; 1: unprotected; 2: a protected guess or a
    // protected used expert; 3: demanded for this layer, not leased yet.
    let class = |i: usize| -> u8 {
        match (protected(&cache[i], ctx.epoch), cache[i].origin) {
            (false, Origin::Predicted) => 0,
            (false, _) => 1,
            (true, Origin::Demanded) => 3,
            (true, _) => 2,
        }
    };
    // Within a class: the expert whose layer comes round again last (plain LRU would evict
    // exactly the experts needed soonest whenever one token's experts outnumber the slots),
    // then the least recently used.
    let lru = ctx.policy == ExpertPolicy::Lru;
    let distance = |i: usize| match cache[i].unit {
        _ if lru => 0,
        Some(UnitId::Expert { layer, .. }) => ctx.distance(layer),
        _ => ctx.layers.max(1),
    };
    (0..=level + 1).find_map(|c| {
        (0..cache.len())
            .filter(|&i| free(i) && class(i) == c)
            .max_by_key(|&i| (distance(i), std::cmp::Reverse(cache[i].last_use)))
    })
}

/// The slot a prediction of an expert of `layer` may take: an empty one, an earlier guess
/// nobody used, or one unused for [`PREDICTION_AGE_TOKENS`] tokens; and, while guesses
/// have recently been used more often than cached experts were hit again, an unprotected
/// expert whose layer comes round after `layer` does (the one furthest away). So a guess
/// never pushes out what recent tokens used when the cache holds the working set and
/// routing repeats (measured: plain LRU eviction for guesses doubled the misses there),
/// and replaces far-away experts when the cache is smaller than one token's experts.
pub(super) fn prediction_victim(cache: &[CacheSlot], ctx: &Ctx, layer: usize) -> Option<usize> {
    let n = cache.len();
    if let Some(i) = (0..n).find(|&i| cache[i].unit.is_none()) {
        return Some(i);
    }
    let free = |i: usize| {
        let c = &cache[i];
        c.leases == 0 && c.loading == 0 && !protected(c, ctx.epoch)
    };
    let stale = |i: usize| {
        let c = &cache[i];
        c.origin == Origin::Predicted
            || c.last_use + PREDICTION_AGE_TOKENS * ctx.window <= ctx.clock
    };
    if let Some(i) = (0..n)
        .filter(|&i| free(i) && stale(i))
        .min_by_key(|&i| cache[i].last_use)
    {
        return Some(i);
    }
    if ctx.guess_use_rate <= ctx.hit_rate || ctx.policy == ExpertPolicy::Lru {
        return None;
    }
    let mine = ctx.distance(layer);
    (0..n)
        .filter(|&i| free(i))
        .filter_map(|i| match cache[i].unit {
            Some(UnitId::Expert { layer: l, .. }) if ctx.distance(l) > mine => {
                Some((i, ctx.distance(l)))
            }
            _ => None,
        })
        .max_by_key(|&(i, d)| (d, std::cmp::Reverse(cache[i].last_use)))
        .map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(policy: ExpertPolicy) -> Ctx {
        Ctx {
            epoch: 10,
            clock: 100,
            window: 8,
            layers: 4,
            cur_layer: 0,
            hit_rate: 0.5,
            guess_use_rate: 0.5,
            policy,
        }
    }

    /// A cached, ready, unleased expert.
    fn cached(layer: usize, expert: usize, last_use: u64, origin: Origin) -> CacheSlot {
        CacheSlot {
            unit: Some(UnitId::Expert { layer, expert }),
            loading: 0,
            ready: true,
            leases: 0,
            last_use,
            protect: 0,
            origin,
        }
    }

    #[test]
    fn an_empty_slot_goes_first_and_busy_slots_never() {
        let c = ctx(ExpertPolicy::LayerDistance);
        let mut cache = vec![
            cached(0, 0, 1, Origin::Predicted),
            CacheSlot::default(),
            cached(1, 0, 2, Origin::Used),
        ];
        assert_eq!(victim(&cache, &c, 0), Some(1));
        assert_eq!(prediction_victim(&cache, &c, 2), Some(1));
        cache.remove(1);
        cache[0].leases = 1;
        cache[1].loading = 2;
        for level in 0..=2 {
            assert_eq!(victim(&cache, &c, level), None, "level {level}");
        }
        assert_eq!(prediction_victim(&cache, &c, 2), None);
    }

    #[test]
    fn eviction_order_follows_the_classes_and_levels() {
        let c = ctx(ExpertPolicy::LayerDistance);
        // Same layer everywhere, so only the class and recency decide.
        let mut guess = cached(2, 0, 50, Origin::Predicted);
        let used = cached(2, 1, 10, Origin::Used);
        let mut protected_used = cached(2, 2, 5, Origin::Used);
        protected_used.protect = c.epoch;
        let mut demanded = cached(2, 3, 1, Origin::Demanded);
        demanded.protect = c.epoch - 1;
        let cache = vec![
            used.clone(),
            protected_used.clone(),
            demanded.clone(),
            guess.clone(),
        ];
        // An unused guess goes before an older used expert.
        assert_eq!(victim(&cache, &c, 0), Some(3));
        // Without it: the unprotected used one.
        let cache = vec![used, protected_used.clone(), demanded.clone()];
        assert_eq!(victim(&cache, &c, 0), Some(0));
        // Only protected ones left: level 0 takes none, level 1 the protected used expert,
        // and only level 2 a demanded one.
        let cache = vec![protected_used, demanded.clone()];
        assert_eq!(victim(&cache, &c, 0), None);
        assert_eq!(victim(&cache, &c, 1), Some(0));
        let cache = vec![demanded];
        assert_eq!(victim(&cache, &c, 1), None);
        assert_eq!(victim(&cache, &c, 2), Some(0));
        // Protection lapses two epochs after the request that set it.
        guess.protect = c.epoch - 2;
        assert!(!protected(&guess, c.epoch));
        guess.protect = c.epoch - 1;
        assert!(protected(&guess, c.epoch));
    }

    /// One token's experts outnumber the slots: layers 0..4 each used once this token, in
    /// order; layer 3 was computed last, so layer 0 is needed next. LRU evicts layer 0 (and
    /// so misses on every lease); the distance order evicts layer 3, needed furthest ahead.
    #[test]
    fn distance_avoids_the_lru_thrash() {
        let cache: Vec<CacheSlot> = (0..4)
            .map(|l| cached(l, 0, 1 + l as u64, Origin::Used))
            .collect();
        let mut c = ctx(ExpertPolicy::LayerDistance);
        c.cur_layer = 3;
        assert_eq!(victim(&cache, &c, 0), Some(3));
        c.policy = ExpertPolicy::Lru;
        assert_eq!(victim(&cache, &c, 0), Some(0));
        // Within one layer, the distance order falls back to LRU.
        let cache = vec![
            cached(1, 0, 7, Origin::Used),
            cached(1, 1, 3, Origin::Used),
            cached(1, 2, 9, Origin::Used),
        ];
        c.policy = ExpertPolicy::LayerDistance;
        assert_eq!(victim(&cache, &c, 0), Some(1));
    }

    #[test]
    fn predictions_take_stale_guesses_and_spare_recent_experts() {
        let c = ctx(ExpertPolicy::LayerDistance);
        // Recent uses (within PREDICTION_AGE_TOKENS tokens of `clock`).
        let recent = c.clock - PREDICTION_AGE_TOKENS * c.window + 1;
        let mut cache = vec![
            cached(1, 0, recent, Origin::Used),
            cached(2, 0, recent + 1, Origin::Used),
            cached(3, 0, recent + 2, Origin::Used),
        ];
        // Guesses are not used more than cached experts are hit: nothing recent goes.
        assert_eq!(prediction_victim(&cache, &c, 1), None);
        // An old expert is stale: it goes (the oldest of the stale ones).
        cache[2].last_use = c.clock - PREDICTION_AGE_TOKENS * c.window;
        assert_eq!(prediction_victim(&cache, &c, 1), Some(2));
        // An unused guess is stale whatever its age.
        cache[2].last_use = recent + 2;
        cache[1].origin = Origin::Predicted;
        assert_eq!(prediction_victim(&cache, &c, 1), Some(1));
        // ...unless protected.
        cache[1].protect = c.epoch;
        assert_eq!(prediction_victim(&cache, &c, 1), None);
    }

    #[test]
    fn useful_guesses_replace_experts_further_away() {
        let mut c = ctx(ExpertPolicy::LayerDistance);
        c.cur_layer = 0;
        c.guess_use_rate = 0.9;
        c.hit_rate = 0.1;
        let recent = c.clock;
        let cache: Vec<CacheSlot> = (1..4).map(|l| cached(l, 0, recent, Origin::Used)).collect();
        // A guess for layer 1 (next) may take the expert of layer 3 (furthest away).
        assert_eq!(prediction_victim(&cache, &c, 1), Some(2));
        // A guess for layer 3 finds nothing further away than itself.
        assert_eq!(prediction_victim(&cache, &c, 3), None);
        // Plain LRU never does this.
        c.policy = ExpertPolicy::Lru;
        assert_eq!(prediction_victim(&cache, &c, 1), None);
    }
}
