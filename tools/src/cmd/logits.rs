//! `flashstream logits MODEL --tokens 1,2,3 [--top K] [--json]`: teacher-forced logits.

use anyhow::{bail, Context};
use serde_json::json;

use super::common::{build_model, ModelArgs, Needs};
use flashstream::runtime::model::LogitsWanted;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// Comma-separated token ids, fed as one sequence from position 0.
    #[arg(long, value_delimiter = ',', required = true)]
    tokens: Vec<u32>,
    /// How many of the largest logits to print per position.
    #[arg(long, default_value_t = 10)]
    top: usize,
    /// Print `{"positions":[{"pos":0,"top":[[id,logit],...]},...]}`.
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    if a.top == 0 {
        bail!("--top must be at least 1");
    }
    let n = a.tokens.len();
    let gguf = super::open_model(&a.model.model)?;
    let loaded = build_model(
        gguf,
        &a.model,
        Needs {
            ctx: Some(n),
            logits_rows: n,
            ..Needs::default()
        },
        flashstream::scheduler::Trace::off(),
    )?;
    let model = loaded.model();
    let n_vocab = model.config().n_vocab;
    let mut session = model.session(loaded.plan().n_ctx)?;
    // One batch at a time (the plan counted logits for one), keeping only the top K rows.
    let mut positions = Vec::with_capacity(n);
    for chunk in a.tokens.chunks(loaded.batch().max(1)) {
        let logits = session
            .eval(chunk, LogitsWanted::All)
            .context("evaluating the sequence")?;
        for row in logits.chunks_exact(n_vocab) {
            positions.push((positions.len(), top_k(row, a.top)));
        }
    }
    if a.model.mem.stats {
        eprintln!("{}", super::engine::describe_plan(loaded.plan()));
        eprintln!("{:?}", loaded.stats());
    }
    if a.json {
        let p: Vec<_> = positions
            .iter()
            .map(|(pos, top)| json!({"pos": pos, "top": top}))
            .collect();
        let st = loaded.stats();
        println!(
            "{}",
            json!({
                "positions": p,
                "stats": {
                    "io": loaded.io().to_string(),
                    "budget_bytes": loaded.plan().budget,
                    "planned_bytes": loaded.plan().total_bytes(),
                    "streamed_units": loaded.plan().cycle.len(),
                    "expert_slots": loaded.plan().expert_slots,
                    "bytes_read": st.bytes_read,
                    "load_bytes": st.load_bytes,
                    "peak_memory_bytes": flashstream::scheduler::sysmem::peak_rss(),
                }
            })
        );
    } else {
        for (pos, top) in &positions {
            let s: Vec<String> = top.iter().map(|(i, l)| format!("{i}:{l:.4}")).collect();
            println!("pos {pos} (token {}): {}", a.tokens[*pos], s.join(" "));
        }
    }
    Ok(())
}

/// The `k` largest `(id, logit)` of `row`, largest first (ties: lower id first), without
/// allocating per vocabulary entry.
fn top_k(row: &[f32], k: usize) -> Vec<(u32, f32)> {
    let better = |a: (u32, f32), b: (u32, f32)| a.1.total_cmp(&b.1).then(b.0.cmp(&a.0)).is_gt();
    let mut top: Vec<(u32, f32)> = Vec::with_capacity(k + 1);
    for (i, &v) in row.iter().enumerate() {
        let c = (i as u32, v);
        if top.len() == k && !better(c, top[k - 1]) {
            continue;
        }
        let at = top.iter().position(|&t| better(c, t)).unwrap_or(top.len());
        top.insert(at, c);
        top.truncate(k);
    }
    top
}
