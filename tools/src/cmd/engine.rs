//! The memory and I/O flags (`--mem`, `--io`, `--prefetch`, `--stats`, `--kv-type`) and how plans and
//! streaming statistics are shown; loading itself is the library's [`flashstream::Engine`].

use anyhow::Context;

use super::size::parse_size;
use flashstream::loader::IoKind;
use flashstream::runtime::kernels::Numerics;
use flashstream::runtime::model::kv::{KvType, KvTypes};
use flashstream::scheduler::{sysmem, ExpertPolicy, Plan, SourceStats};
use flashstream::{AutoBudget, Engine, EngineOptions};

/// Parses a KV-cache type flag (`f16`, `q8_0`, `q4_0`).
pub fn parse_kv_type(s: &str) -> Result<KvType, String> {
    KvType::parse(s.trim()).ok_or_else(|| {
        let names: Vec<&str> = KvType::ALL.iter().map(|t| t.name()).collect();
        format!(
            "unknown KV-cache type {s:?} (accepted: {})",
            names.join(", ")
        )
    })
}

/// What `--mem` asks for: a fixed budget, or one that follows the available memory.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MemSpec {
    /// A fixed budget in bytes.
    Bytes(u64),
    /// `auto[:FRACTION]`: the library's auto mode with this fraction.
    Auto(f64),
}

/// Parses `--mem`: a size (`512MiB`, `12GiB`), `auto` (3/4) or `auto:FRACTION` (`auto:0.6`).
pub fn parse_mem(s: &str) -> Result<MemSpec, String> {
    let t = s.trim();
    let Some(rest) = t.strip_prefix("auto") else {
        return parse_size(t).map(MemSpec::Bytes);
    };
    let fraction = match rest {
        "" => AutoBudget::default().fraction,
        r => {
            let f = r.strip_prefix(':').ok_or_else(|| {
                format!("invalid --mem {s:?}: write auto or auto:FRACTION, e.g. auto:0.6")
            })?;
            f.parse::<f64>().map_err(|_| {
                format!("invalid --mem {s:?}: {f:?} is not a number; write e.g. auto:0.6")
            })?
        }
    };
    AutoBudget::with_fraction(fraction)
        .check()
        .map_err(|e| format!("invalid --mem {s:?}: {e}"))?;
    Ok(MemSpec::Auto(fraction))
}

/// Memory and I/O options shared by the commands that run a model.
#[derive(clap::Args, Debug, Clone)]
pub struct MemArgs {
    /// Memory budget for everything held for the model (weights in RAM, slots, KV cache,
    /// activations, tokenizer), e.g. 512MiB or 12GiB. Default: 3/4 of the memory available.
    /// `auto` or `auto:FRACTION` (e.g. auto:0.6): the budget follows that share of the
    /// memory available (cgroup limit or MemAvailable on Linux), rechecked between tokens.
    #[arg(long, value_parser = parse_mem)]
    pub mem: Option<MemSpec>,
    /// Read backend: auto (io_uring, else pread), uring, pread or mmap.
    #[arg(long, default_value = "auto")]
    pub io: IoKind,
    /// Units read ahead of the one computing (default 2 when the budget allows, else 1).
    #[arg(long)]
    pub prefetch: Option<usize>,
    /// Print streaming statistics to stderr at the end.
    #[arg(long)]
    pub stats: bool,
    /// MoE expert-cache eviction: distance (the layer needed furthest ahead, then LRU) or lru.
    #[arg(long, default_value = "distance")]
    pub expert_policy: ExpertPolicy,
    /// KV-cache storage type of keys and values, as llama.cpp's `--cache-type-k/-v`: f16
    /// (default), q8_0 or q4_0 (about 53% / 28% of the f16 bytes, counted in the budget).
    #[arg(long, value_parser = parse_kv_type)]
    pub kv_type: Option<KvType>,
    /// KV-cache type of the keys alone (overrides --kv-type for them).
    #[arg(long, value_parser = parse_kv_type)]
    pub kv_type_k: Option<KvType>,
    /// KV-cache type of the values alone (overrides --kv-type for them).
    #[arg(long, value_parser = parse_kv_type)]
    pub kv_type_v: Option<KvType>,
    /// How prompt batches round: llama (every batch rounds as single tokens do, in llama.cpp's
    /// x86 order: on x86 the logits equal llama.cpp's evaluating token by token) or fast (x86:
    /// about twice the prompt speed for Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 and IQ4_NL weights, with
    /// last bits that depend on the batch, so speculative decoding and shared server passes
    /// no longer reproduce plain decoding bit for bit).
    #[arg(long, default_value = "llama")]
    pub numerics: Numerics,
}

impl MemArgs {
    /// The KV-cache types `--kv-type`, `--kv-type-k` and `--kv-type-v` ask for.
    pub fn kv_types(&self) -> KvTypes {
        let both = self.kv_type.unwrap_or_default();
        KvTypes {
            k: self.kv_type_k.unwrap_or(both),
            v: self.kv_type_v.unwrap_or(both),
        }
    }

    /// The library options these flags (and a command's `shape`) stand for. With `--mem
    /// auto`, the budget to open with is the auto target with nothing held yet: the fraction
    /// of what is available now.
    pub fn options(&self, shape: EngineOptions) -> anyhow::Result<EngineOptions> {
        let mem = match self.mem {
            None => None,
            Some(MemSpec::Bytes(b)) => Some(b),
            Some(MemSpec::Auto(f)) => {
                let avail = sysmem::available_memory().with_context(|| {
                    format!(
                        "--mem auto is not supported on {}: it cannot read the available memory; give a size (e.g. --mem 4GiB)",
                        std::env::consts::OS
                    )
                })?;
                Some(AutoBudget::with_fraction(f).target(0, avail, 1))
            }
        };
        Ok(EngineOptions {
            mem,
            io: self.io,
            prefetch: self.prefetch,
            expert_policy: self.expert_policy,
            kv_types: self.kv_types(),
            numerics: self.numerics,
            ..shape
        })
    }

    /// After the model loaded: turns the library's auto mode on for `--mem auto`.
    pub fn start(&self, engine: &Engine) -> anyhow::Result<()> {
        if let Some(MemSpec::Auto(f)) = self.mem {
            engine
                .set_budget_auto(Some(AutoBudget::with_fraction(f)))
                .context("cannot start the auto budget (--mem auto)")?;
        }
        Ok(())
    }
}

/// A one-paragraph description of a plan, for stderr and `plan` ([`Plan::describe`]).
pub fn describe_plan(p: impl std::borrow::Borrow<Plan>) -> String {
    p.borrow().describe()
}

/// Streaming statistics as JSON fields (for `--json` stats objects).
pub fn stats_json(
    d: &SourceStats,
    tokens: u64,
    wall_s: f64,
) -> serde_json::Map<String, serde_json::Value> {
    let mut m = serde_json::Map::new();
    let per = |x: f64| if tokens > 0 { x / tokens as f64 } else { 0.0 };
    m.insert("bytes_read".into(), d.bytes_read.into());
    m.insert(
        "bytes_read_per_token".into(),
        per(d.bytes_read as f64).into(),
    );
    m.insert("io_busy_s".into(), d.io_busy_s.into());
    m.insert("stall_s".into(), d.stall_s.into());
    m.insert("compute_s".into(), (wall_s - d.stall_s).max(0.0).into());
    if d.expert_leases > 0 {
        m.insert("expert_leases".into(), d.expert_leases.into());
        m.insert(
            "expert_hit_rate".into(),
            (d.expert_hits as f64 / d.expert_leases as f64).into(),
        );
        m.insert(
            "expert_bytes_read_per_token".into(),
            per(d.expert_bytes_read as f64).into(),
        );
        m.insert("expert_misses".into(), d.expert_misses.into());
        m.insert("expert_prefetch_hits".into(), d.expert_prefetch_hits.into());
        m.insert("expert_prefetch_late".into(), d.expert_late.into());
        m.insert("prefetch_issued".into(), d.prefetch_issued.into());
        if d.prefetch_issued > 0 {
            // Of the predicted experts read, the share then used.
            m.insert(
                "prefetch_precision".into(),
                (d.prefetch_used as f64 / d.prefetch_issued as f64).into(),
            );
        }
    }
    m
}

#[cfg(test)]
mod tests {
    use super::{parse_mem, MemSpec};

    #[test]
    fn mem_sizes_and_auto() {
        assert_eq!(parse_mem("512MiB"), Ok(MemSpec::Bytes(512 << 20)));
        assert_eq!(parse_mem("auto"), Ok(MemSpec::Auto(0.75)));
        assert_eq!(parse_mem("auto:0.6"), Ok(MemSpec::Auto(0.6)));
        assert_eq!(parse_mem(" auto:1 "), Ok(MemSpec::Auto(1.0)));
        for bad in [
            "auto:0",
            "auto:1.5",
            "auto:-0.2",
            "auto:lots",
            "auto0.5",
            "autox",
            "lots",
        ] {
            assert!(parse_mem(bad).is_err(), "{bad}");
        }
        assert!(parse_mem("auto:2").unwrap_err().contains("fraction"));
    }
}
