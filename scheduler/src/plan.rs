//! The residency plan: computed once, up front, from the unit table and the memory budget.
//!
//! Every byte the process holds for a model is counted here before anything is allocated:
//! the pinned weights, the slot ring, the expert cache, the KV cache, the runtime's
//! activations and scratch (given by the runtime as [`RuntimeNeeds`]), the embedding-row
//! scratch and the small always-resident tensors. A budget that cannot hold the minimum is a
//! [`SchedulerError::BudgetTooSmall`] that states the minimum and what it is made of.
//!
//! Policy (see DESIGN.md, "The streaming model"):
//! - the units needed for every token are the layers (for MoE models: each layer's
//!   always-needed part) and the output matrix (`output.weight`, or the embedding when the
//!   output is tied); they are pinned while the budget allows and the rest streams, in layer
//!   order, through a ring of `prefetch_depth + 1` slots;
//! - which units are pinned is chosen to minimise the bytes streamed per token: every slot is
//!   as large as the largest streamed unit, so an output head much larger than a layer is
//!   pinned rather than sized into every slot when that streams fewer bytes; pinned layers
//!   are spread evenly through the cycle, so the ring refills while they compute;
//! - MoE experts are not per-token units: the budget left after the per-token units goes to an
//!   expert cache (at least [`MIN_EXPERT_SLOTS`] slots);
//! - the input embedding is read row by row on demand unless it is the tied output matrix, and
//!   is pinned only with budget to spare;
//! - without an explicit context length the KV cache gets the positions the command would
//!   like ([`DEFAULT_CTX`] unless it says), at most the model's and at most a quarter of the
//!   budget, shrunk to what the budget leaves room for (never below what the command needs).

use crate::layout::UnitLayout;
use crate::{SchedulerError, UnitId, UnitTable};

/// Default KV-cache length when none is asked for (as llama.cpp's default context).
pub const DEFAULT_CTX: usize = 4096;
/// Default prefetch depth (units read ahead of the one computing).
pub const DEFAULT_PREFETCH_DEPTH: usize = 2;
/// Fewest expert-cache slots a MoE plan has (one computing, one loading).
pub const MIN_EXPERT_SLOTS: usize = 2;
/// Target size of the scratch that embedding rows are read into.
pub const ROW_SCRATCH_TARGET: u64 = 1 << 20;

/// How the expert cache chooses what to evict.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum ExpertPolicy {
    /// The expert whose layer comes round again last (the layer just computed), then the
    /// least recently used: what a cyclic layer order makes optimal when one token's experts
    /// outnumber the slots.
    #[default]
    LayerDistance,
    /// Least recently used (for comparison: it thrashes when the cache is smaller than one
    /// token's experts).
    Lru,
}

impl ExpertPolicy {
    /// The `--expert-policy` spelling.
    pub const fn name(self) -> &'static str {
        match self {
            ExpertPolicy::LayerDistance => "distance",
            ExpertPolicy::Lru => "lru",
        }
    }
}

impl std::fmt::Display for ExpertPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for ExpertPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "distance" => Ok(ExpertPolicy::LayerDistance),
            "lru" => Ok(ExpertPolicy::Lru),
            _ => Err(format!(
                "unknown expert policy {s:?} (expected distance or lru)"
            )),
        }
    }
}

/// What the runtime needs beside the weights (from the model config, computed without them).
#[derive(Debug, Clone, Default)]
pub struct RuntimeNeeds {
    /// Fixed allocations, named: activations and scratch at the largest batch, logits,
    /// tokenizer, parsed metadata, ...
    pub fixed: Vec<(String, u64)>,
    /// KV-cache bytes per position.
    pub kv_bytes_per_pos: u64,
    /// The model's training context (the most positions a KV cache may have).
    pub n_ctx_max: usize,
    /// Experts used per token per layer (MoE models).
    pub experts_per_token: usize,
}

/// What the caller asks of the plan.
#[derive(Debug, Clone)]
pub struct PlanRequest {
    /// The memory budget in bytes.
    pub budget: u64,
    /// `--ctx`: an exact context length, or `None` for the default.
    pub ctx: Option<usize>,
    /// The fewest positions the command needs (e.g. the length of a teacher-forced sequence).
    pub min_ctx: usize,
    /// The context to aim for when `ctx` is `None` ([`DEFAULT_CTX`] by default; at most the
    /// model's), shrunk to what the budget leaves room for, down to `min_ctx`.
    pub default_ctx: usize,
    /// Whether the output matrix is the token embedding (tied output).
    pub tied_output: bool,
    /// Units read ahead of the one computing; `None`: [`DEFAULT_PREFETCH_DEPTH`] when the
    /// budget allows, else 1.
    pub prefetch_depth: Option<usize>,
    /// Read alignment of the backend (4096 for `O_DIRECT`, 1 for none).
    pub align: u64,
    /// Expert-cache eviction policy.
    pub expert_policy: ExpertPolicy,
}

impl PlanRequest {
    /// A request for `budget` bytes with the default context, alignment 4096.
    pub fn new(budget: u64, tied_output: bool) -> Self {
        PlanRequest {
            budget,
            ctx: None,
            min_ctx: 1,
            default_ctx: DEFAULT_CTX,
            tied_output,
            prefetch_depth: None,
            align: 4096,
            expert_policy: ExpertPolicy::default(),
        }
    }
}

/// One line of the budget.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BudgetItem {
    /// What it is.
    pub what: String,
    /// Bytes.
    pub bytes: u64,
}

/// The residency plan of one model under one budget.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The budget it was made for.
    pub budget: u64,
    /// Everything the budget holds (their sum is [`Plan::total_bytes`] ≤ `budget`).
    pub items: Vec<BudgetItem>,
    /// Units kept in RAM for the whole run.
    pub pinned: Vec<UnitId>,
    /// Units streamed every token through the ring, in the order they are used.
    pub cycle: Vec<UnitId>,
    /// Bytes of each ring slot.
    pub slot_bytes: u64,
    /// Ring slots (`prefetch_depth + 1`, or 0 when nothing streams).
    pub n_slots: usize,
    /// Units read ahead of the one computing.
    pub prefetch_depth: usize,
    /// Bytes of each expert-cache slot.
    pub expert_slot_bytes: u64,
    /// Expert-cache slots (0 for dense models).
    pub expert_slots: usize,
    /// Experts in the model (all layers).
    pub n_experts_total: usize,
    /// KV-cache positions.
    pub n_ctx: usize,
    /// KV-cache bytes.
    pub kv_bytes: u64,
    /// Whether embedding rows are read from flash per token (the embedding is not resident).
    pub embedding_on_demand: bool,
    /// Bytes of the scratch embedding rows are read into (0 when the embedding is resident).
    pub row_scratch_bytes: u64,
    /// Bytes of every unit's weights as stored (unaligned), the model's size.
    pub weight_bytes: u64,
    /// Bytes streamed through the ring per token (aligned reads).
    pub ring_bytes_per_token: u64,
    /// Routed expert bytes per token if every expert missed the cache (MoE; 0 for dense).
    pub expert_bytes_per_token_max: u64,
    /// Expected expert-cache hit rate if routing were uniform (cache slots / experts).
    pub expert_hit_rate_uniform: f64,
    /// Expert leases per token if every layer routes each token to distinct experts
    /// (layers x experts used per token; 0 for dense models).
    pub expert_leases_per_token: u64,
    /// Read alignment the layouts were made for.
    pub align: u64,
    /// Expert-cache eviction policy.
    pub expert_policy: ExpertPolicy,
    /// The aligned layout of every unit, by [`UnitTable::position`].
    pub layouts: Vec<UnitLayout>,
}

impl Plan {
    /// Sum of the budget items.
    pub fn total_bytes(&self) -> u64 {
        self.items.iter().map(|i| i.bytes).sum()
    }

    /// Predicted bytes read from flash per generated token: the ring, plus routed experts at
    /// the uniform-routing hit rate.
    pub fn predicted_bytes_per_token(&self) -> f64 {
        self.ring_bytes_per_token as f64
            + self.expert_bytes_per_token_max as f64 * (1.0 - self.expert_hit_rate_uniform)
    }

    /// Predicted decode tokens/s when reading at `gbps` (10^9 bytes/s) is the bottleneck
    /// (`None` when nothing is read per token: compute bound).
    pub fn predicted_tokens_per_s(&self, gbps: f64) -> Option<f64> {
        let b = self.predicted_bytes_per_token();
        (b > 0.0 && gbps > 0.0).then(|| gbps * 1e9 / b)
    }

    /// A one-paragraph description (budget, pinned and streamed units, slots, context, bytes
    /// read per token), as the CLI prints it.
    pub fn describe(&self) -> String {
        let mut s = format!(
            "budget {} (planned {}): {} of weights, {} pinned units, {} streamed per token",
            crate::fmt_bytes(self.budget),
            crate::fmt_bytes(self.total_bytes()),
            crate::fmt_bytes(self.weight_bytes),
            self.pinned.len(),
            self.cycle.len(),
        );
        if self.n_slots > 0 {
            s.push_str(&format!(
                " through {} slots of {} (prefetch depth {})",
                self.n_slots,
                crate::fmt_bytes(self.slot_bytes),
                self.prefetch_depth
            ));
        }
        if self.expert_slots > 0 {
            s.push_str(&format!(
                "; expert cache {} of {} experts",
                self.expert_slots, self.n_experts_total
            ));
        }
        s.push_str(&format!(
            "; context {} positions; ~{} read per token",
            self.n_ctx,
            crate::fmt_bytes(self.predicted_bytes_per_token() as u64)
        ));
        s
    }

    /// Whether anything is read from flash per token.
    pub fn streams(&self) -> bool {
        !self.cycle.is_empty() || self.expert_slots > 0 && self.expert_slots < self.n_experts_total
    }
}

/// A weights layout that fits: what is pinned and how the ring looks.
#[derive(Debug, Clone)]
struct WeightsFit {
    pinned: Vec<UnitId>,
    cycle: Vec<UnitId>,
    slot_bytes: u64,
    n_slots: usize,
    depth: usize,
    /// Bytes used (pinned + ring).
    used: u64,
    streamed: u64,
}

/// Pins per-token units into `avail` bytes so that the fewest bytes stream; `None` if not even
/// the smallest ring fits.
fn fit_weights(units: &[(UnitId, u64)], avail: u64, depth_pref: usize) -> Option<WeightsFit> {
    let total: u64 = units.iter().map(|u| u.1).sum();
    if total <= avail {
        return Some(WeightsFit {
            pinned: units.iter().map(|u| u.0).collect(),
            cycle: Vec::new(),
            slot_bytes: 0,
            n_slots: 0,
            depth: 0,
            used: total,
            streamed: 0,
        });
    }
    let mut sizes: Vec<u64> = units.iter().map(|u| u.1).collect();
    sizes.sort_unstable_by(|a, b| b.cmp(a));
    sizes.dedup();
    let mut best: Option<WeightsFit> = None;
    for &s in &sizes {
        let forced: u64 = units.iter().filter(|u| u.1 > s).map(|u| u.1).sum();
        for depth in (1..=depth_pref.max(1)).rev() {
            let n = depth as u64 + 1;
            let Some(rem) = avail
                .checked_sub(n.saturating_mul(s))
                .and_then(|r| r.checked_sub(forced))
            else {
                continue;
            };
            let cand: Vec<&(UnitId, u64)> = units.iter().filter(|u| u.1 <= s).collect();
            let cand_total: u64 = cand.iter().map(|u| u.1).sum();
            let mut pin = vec![false; cand.len()];
            let mut left = rem;
            // Spread pins evenly through the cycle (Bresenham on bytes), then fill the rest.
            let frac = (rem as f64 / cand_total.max(1) as f64).min(1.0);
            let mut acc = 0.0f64;
            for (i, u) in cand.iter().enumerate() {
                acc += u.1 as f64 * frac;
                if acc + 0.5 >= u.1 as f64 && u.1 <= left {
                    pin[i] = true;
                    left -= u.1;
                    acc -= u.1 as f64;
                }
            }
            let mut rest: Vec<usize> = (0..cand.len()).filter(|&i| !pin[i]).collect();
            rest.sort_by_key(|&i| std::cmp::Reverse(cand[i].1));
            for i in rest {
                if cand[i].1 <= left {
                    pin[i] = true;
                    left -= cand[i].1;
                }
            }
            let mut pinned: Vec<UnitId> = units.iter().filter(|u| u.1 > s).map(|u| u.0).collect();
            let mut cycle = Vec::new();
            let mut streamed = 0;
            for (i, u) in cand.iter().enumerate() {
                if pin[i] {
                    pinned.push(u.0);
                } else {
                    cycle.push(u.0);
                    streamed += u.1;
                }
            }
            // Keep the cycle in use order (the order of `units`).
            cycle.sort_by_key(|id| units.iter().position(|u| u.0 == *id));
            pinned.sort();
            let fit = WeightsFit {
                pinned,
                cycle,
                slot_bytes: s,
                n_slots: depth + 1,
                depth,
                used: avail - left,
                streamed,
            };
            let better = match &best {
                None => true,
                Some(b) => {
                    (fit.streamed, std::cmp::Reverse(fit.depth))
                        < (b.streamed, std::cmp::Reverse(b.depth))
                }
            };
            if better {
                best = Some(fit);
            }
            break;
        }
    }
    best
}

/// The smallest ring that can stream `units` (2 slots of the smallest possible slot size
/// plus the units that must then be pinned).
fn min_weights_bytes(units: &[(UnitId, u64)]) -> u64 {
    let total: u64 = units.iter().map(|u| u.1).sum();
    let mut sizes: Vec<u64> = units.iter().map(|u| u.1).collect();
    sizes.sort_unstable();
    sizes.dedup();
    sizes
        .iter()
        .map(|&s| 2 * s + units.iter().filter(|u| u.1 > s).map(|u| u.1).sum::<u64>())
        .chain(std::iter::once(total))
        .min()
        .unwrap_or(0)
}

impl Plan {
    /// Plans `units` under `req`, with the runtime's `needs`.
    pub fn compute(
        units: &UnitTable,
        needs: &RuntimeNeeds,
        req: &PlanRequest,
    ) -> Result<Plan, SchedulerError> {
        let align = req.align.max(1);
        if !align.is_power_of_two() {
            return Err(SchedulerError::BadModel(format!(
                "read alignment {align} is not a power of two"
            )));
        }
        let layouts = units
            .iter()
            .map(|u| UnitLayout::new(u, align))
            .collect::<Result<Vec<_>, _>>()?;
        let foot = |id: UnitId| units.position(id).map_or(0, |i| layouts[i].bytes);
        let weight_bytes = units.total_bytes();

        // Per-token units, in use order. A layer split into pieces has its small core (norms,
        // biases) pinned and streams its matrices one by one.
        let mut per_token: Vec<(UnitId, u64)> = Vec::new();
        let mut cores: Vec<UnitId> = Vec::new();
        for l in (0..units.n_layer()).filter(|&l| units.get(UnitId::Layer(l)).is_some()) {
            let mut pieces = units.pieces(l).peekable();
            if pieces.peek().is_some() {
                cores.push(UnitId::Layer(l));
                per_token.extend(pieces.map(|u| (u.id, foot(u.id))));
            } else {
                per_token.push((UnitId::Layer(l), foot(UnitId::Layer(l))));
            }
        }
        let core_bytes: u64 = cores.iter().map(|&id| foot(id)).sum();
        let has_head = units.get(UnitId::Head).is_some();
        let has_embd = units.get(UnitId::Embedding).is_some();
        let head_rows: Vec<(UnitId, u64)> = units.head_rows().map(|u| (u.id, foot(u.id))).collect();
        // A tied model's embedding split into head rows: embedding rows come from those
        // pieces when all are pinned, else from flash.
        let embd_split = units.embedding_pieces().is_some();
        if has_head {
            per_token.push((UnitId::Head, foot(UnitId::Head)));
        } else if !head_rows.is_empty() {
            per_token.extend(head_rows.iter().copied());
        } else if req.tied_output && has_embd {
            per_token.push((UnitId::Embedding, foot(UnitId::Embedding)));
        }
        let embd_in_cycle = !has_head && req.tied_output && (has_embd || embd_split);

        // Experts.
        let n_experts_total = units
            .iter()
            .filter(|u| matches!(u.id, UnitId::Expert { .. }))
            .count();
        let expert_slot_bytes = units
            .iter()
            .filter(|u| matches!(u.id, UnitId::Expert { .. }))
            .map(|u| foot(u.id))
            .max()
            .unwrap_or(0);
        let min_cache_slots = if n_experts_total > 0 {
            MIN_EXPERT_SLOTS.min(n_experts_total)
        } else {
            0
        };
        let min_cache = expert_slot_bytes * min_cache_slots as u64;

        // Embedding rows.
        let row_bytes = units
            .get(UnitId::Embedding)
            .or_else(|| embd_split.then(|| units.get(UnitId::HeadRows(0))).flatten())
            .and_then(|u| u.parts.first())
            .map(|p| {
                let rows = p.shape.iter().skip(1).product::<u64>().max(1);
                p.len / rows
            })
            .unwrap_or(0);
        let row_foot = if row_bytes == 0 {
            0
        } else {
            row_bytes.div_ceil(align) * align + align
        };
        let row_scratch = ROW_SCRATCH_TARGET
            .checked_div(row_foot)
            .map_or(0, |rows| rows.max(1) * row_foot);

        let globals = foot(UnitId::Globals);
        let fixed: u64 = needs.fixed.iter().map(|f| f.1).sum();
        let depth_pref = req.prefetch_depth.unwrap_or(DEFAULT_PREFETCH_DEPTH).max(1);
        let kv = |ctx: usize| needs.kv_bytes_per_pos.saturating_mul(ctx as u64);
        let base = globals + core_bytes + fixed;
        // Scratch for rows is needed unless the embedding ends up resident; count it while
        // solving and give it back if the embedding is pinned.
        let avail_for = |ctx: usize| -> Option<u64> {
            req.budget
                .checked_sub(base)?
                .checked_sub(kv(ctx))?
                .checked_sub(row_scratch)?
                .checked_sub(min_cache)
        };

        let n_ctx_max = needs.n_ctx_max.max(1);
        if req.min_ctx > n_ctx_max {
            return Err(SchedulerError::BadRequest(format!(
                "the input needs {} positions but the model's context is {n_ctx_max}",
                req.min_ctx
            )));
        }
        let (ctx_lo, ctx_hi, explicit) = match req.ctx {
            Some(c) if c == 0 || c > n_ctx_max => {
                return Err(SchedulerError::BadRequest(format!(
                    "--ctx {c} must be in 1..={n_ctx_max} (the model's context length)"
                )))
            }
            Some(c) if c < req.min_ctx => {
                return Err(SchedulerError::BadRequest(format!(
                    "--ctx {c} is shorter than the {} positions the input needs",
                    req.min_ctx
                )))
            }
            Some(c) => (c, c, true),
            None => {
                // At most a quarter of the budget goes to a context nobody asked for exactly:
                // the rest is worth more as pinned weights (read every token).
                let share = (req.budget / 4)
                    .checked_div(needs.kv_bytes_per_pos)
                    .map_or(usize::MAX, |n| n as usize);
                (
                    req.min_ctx.max(1),
                    req.default_ctx.min(n_ctx_max).min(share).max(req.min_ctx),
                    false,
                )
            }
        };
        let solve =
            |ctx: usize| avail_for(ctx).and_then(|a| fit_weights(&per_token, a, depth_pref));
        let (n_ctx, fit) = match solve(ctx_hi) {
            Some(f) => (ctx_hi, f),
            None => {
                // The largest context that fits (feasibility shrinks as the context grows).
                let (mut lo, mut hi) = (ctx_lo, ctx_hi);
                if explicit || solve(lo).is_none() {
                    let min_total =
                        base + kv(ctx_lo) + row_scratch + min_cache + min_weights_bytes(&per_token);
                    let largest = per_token.iter().max_by_key(|u| u.1).map(|u| u.0);
                    let mut parts = vec![
                        format!(
                            "the smallest weight ring {} (largest per-token unit {}: {})",
                            crate::fmt_bytes(min_weights_bytes(&per_token)),
                            largest.unwrap_or(UnitId::Globals),
                            crate::fmt_bytes(per_token.iter().map(|u| u.1).max().unwrap_or(0))
                        ),
                        format!(
                            "KV cache for {ctx_lo} positions {}",
                            crate::fmt_bytes(kv(ctx_lo))
                        ),
                    ];
                    if min_cache > 0 {
                        parts.push(format!(
                            "{min_cache_slots} expert slots {}",
                            crate::fmt_bytes(min_cache)
                        ));
                    }
                    for (what, b) in &needs.fixed {
                        parts.push(format!("{what} {}", crate::fmt_bytes(*b)));
                    }
                    if core_bytes > 0 {
                        parts.push(format!(
                            "pinned layer cores (norms, biases) {}",
                            crate::fmt_bytes(core_bytes)
                        ));
                    }
                    if globals > 0 {
                        parts.push(format!(
                            "small resident tensors {}",
                            crate::fmt_bytes(globals)
                        ));
                    }
                    if row_scratch > 0 {
                        parts.push(format!(
                            "embedding-row scratch {}",
                            crate::fmt_bytes(row_scratch)
                        ));
                    }
                    return Err(SchedulerError::BudgetTooSmall {
                        budget: req.budget,
                        minimum: min_total,
                        breakdown: parts.join(", "),
                    });
                }
                while lo < hi {
                    let mid = lo + (hi - lo).div_ceil(2);
                    if solve(mid).is_some() {
                        lo = mid;
                    } else {
                        hi = mid - 1;
                    }
                }
                let f = solve(lo).ok_or_else(|| {
                    SchedulerError::BadModel("plan: context search lost feasibility".into())
                })?;
                (lo, f)
            }
        };

        let mut left = avail_for(n_ctx).unwrap_or(0) - fit.used;
        let mut pinned = fit.pinned.clone();
        pinned.push(UnitId::Globals);
        pinned.extend(cores.iter().copied());
        // The input embedding: resident if the fit pinned it (tied output) or, for dense
        // models, if what is left holds it; otherwise rows are read on demand.
        let mut embedding_on_demand = (has_embd && !fit.pinned.contains(&UnitId::Embedding))
            || (embd_split && head_rows.iter().any(|u| !fit.pinned.contains(&u.0)));
        let e = foot(UnitId::Embedding);
        if embedding_on_demand && !embd_in_cycle && n_experts_total == 0 && e <= left + row_scratch
        {
            pinned.push(UnitId::Embedding);
            left = left + row_scratch - e;
            embedding_on_demand = false;
        } else if !embedding_on_demand {
            left += row_scratch;
        }
        let row_scratch_bytes = if embedding_on_demand { row_scratch } else { 0 };
        // Experts: all pinned if what is left holds them (nothing is then read per token);
        // else the expert cache takes what is left (at least its minimum, already reserved).
        let all_experts: u64 = units
            .iter()
            .filter(|u| matches!(u.id, UnitId::Expert { .. }))
            .map(|u| foot(u.id))
            .sum();
        let expert_slots = if n_experts_total > 0 && expert_slot_bytes > 0 {
            if all_experts <= left + min_cache && fit.cycle.is_empty() {
                pinned.extend(
                    units
                        .iter()
                        .map(|u| u.id)
                        .filter(|id| matches!(id, UnitId::Expert { .. })),
                );
                0
            } else {
                let extra = (left / expert_slot_bytes) as usize;
                (min_cache_slots + extra).min(n_experts_total)
            }
        } else {
            0
        };
        pinned.sort();
        pinned.dedup();

        let pinned_bytes: u64 = pinned
            .iter()
            .filter(|&&id| id != UnitId::Globals)
            .map(|&id| foot(id))
            .sum();
        let mut items = vec![BudgetItem {
            what: format!(
                "pinned weights ({} units)",
                pinned.iter().filter(|&&id| id != UnitId::Globals).count()
            ),
            bytes: pinned_bytes,
        }];
        if globals > 0 {
            items.push(BudgetItem {
                what: "small resident tensors (norms, rope factors)".into(),
                bytes: globals,
            });
        }
        if fit.n_slots > 0 {
            items.push(BudgetItem {
                what: format!(
                    "slot ring ({} x {})",
                    fit.n_slots,
                    crate::fmt_bytes(fit.slot_bytes)
                ),
                bytes: fit.n_slots as u64 * fit.slot_bytes,
            });
        }
        if expert_slots > 0 {
            items.push(BudgetItem {
                what: format!(
                    "expert cache ({expert_slots} x {})",
                    crate::fmt_bytes(expert_slot_bytes)
                ),
                bytes: expert_slots as u64 * expert_slot_bytes,
            });
        }
        if row_scratch_bytes > 0 {
            items.push(BudgetItem {
                what: "embedding-row scratch".into(),
                bytes: row_scratch_bytes,
            });
        }
        items.push(BudgetItem {
            what: format!("KV cache ({n_ctx} positions)"),
            bytes: kv(n_ctx),
        });
        for (what, b) in &needs.fixed {
            items.push(BudgetItem {
                what: what.clone(),
                bytes: *b,
            });
        }
        // Only the layers with experts route (not deepseek2's / GLM's leading dense ones).
        let expert_bytes_per_token_max = if expert_slots > 0 {
            units.n_expert_layers() as u64 * needs.experts_per_token as u64 * expert_slot_bytes
        } else {
            0
        };
        let plan = Plan {
            budget: req.budget,
            items,
            pinned,
            ring_bytes_per_token: fit.streamed,
            cycle: fit.cycle,
            slot_bytes: fit.slot_bytes,
            n_slots: fit.n_slots,
            prefetch_depth: fit.depth,
            expert_slot_bytes,
            expert_slots,
            n_experts_total,
            n_ctx,
            kv_bytes: kv(n_ctx),
            embedding_on_demand,
            row_scratch_bytes,
            weight_bytes,
            expert_bytes_per_token_max,
            expert_leases_per_token: if expert_slots > 0 {
                units.n_layer() as u64 * needs.experts_per_token as u64
            } else {
                0
            },
            expert_hit_rate_uniform: if expert_slots > 0 {
                expert_slots as f64 / n_experts_total as f64
            } else {
                0.0
            },
            align,
            expert_policy: req.expert_policy,
            layouts,
        };
        if plan.total_bytes() > req.budget {
            return Err(SchedulerError::BadModel(format!(
                "plan bug: {} bytes planned for a budget of {}",
                plan.total_bytes(),
                req.budget
            )));
        }
        Ok(plan)
    }
}
