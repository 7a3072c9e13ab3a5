//! `flashstream logits MODEL --tokens 1,2,3 [--top K] [--json]`: teacher-forced logits.

use anyhow::{bail, Context};
use serde_json::json;

use super::common::{load_model, ModelArgs};
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
    let loaded = load_model(&a.model, Some(n))?;
    let model = &loaded.model;
    let n_vocab = model.config().n_vocab;
    let mut session = model.session(loaded.n_ctx)?;
    let logits = session
        .eval(&a.tokens, LogitsWanted::All)
        .context("evaluating the sequence")?;
    let mut positions = Vec::with_capacity(n);
    for (pos, row) in logits.chunks_exact(n_vocab).enumerate() {
        let mut idx: Vec<usize> = (0..n_vocab).collect();
        let k = a.top.min(n_vocab);
        idx.select_nth_unstable_by(k - 1, |&x, &y| row[y].total_cmp(&row[x]).then(x.cmp(&y)));
        idx.truncate(k);
        idx.sort_by(|&x, &y| row[y].total_cmp(&row[x]).then(x.cmp(&y)));
        let top: Vec<(u32, f32)> = idx.iter().map(|&i| (i as u32, row[i])).collect();
        positions.push((pos, top));
    }
    if a.json {
        let p: Vec<_> = positions
            .iter()
            .map(|(pos, top)| json!({"pos": pos, "top": top}))
            .collect();
        println!("{}", json!({"positions": p}));
    } else {
        for (pos, top) in &positions {
            let s: Vec<String> = top.iter().map(|(i, l)| format!("{i}:{l:.4}")).collect();
            println!("pos {pos} (token {}): {}", a.tokens[*pos], s.join(" "));
        }
    }
    Ok(())
}
