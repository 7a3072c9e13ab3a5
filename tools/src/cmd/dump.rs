//! `flashstream dump MODEL TENSOR [--rows N] [--json]`.

use std::path::PathBuf;

use anyhow::{bail, Context};
use flashstream::loader::ModelFiles;
use flashstream::runtime::kernels::scalar::dequantize_row;
use serde_json::json;

#[derive(clap::Args)]
pub struct Args {
    /// The GGUF file.
    model: PathBuf,
    /// Tensor name, e.g. `blk.0.attn_q.weight`.
    tensor: String,
    /// How many rows to print.
    #[arg(long, default_value_t = 1)]
    rows: u64,
    /// Print `{"name","type","shape","rows":[[f32...],...]}`.
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let model = super::open_model(&a.model)?;
    let Some(t) = model.tensor(&a.tensor) else {
        let similar: Vec<&str> = model
            .tensors
            .iter()
            .map(|t| t.name.as_str())
            .filter(|n| n.contains(a.tensor.trim_end_matches(".weight")))
            .take(5)
            .collect();
        if similar.is_empty() {
            bail!(
                "no tensor {:?} in {} (see `flashstream inspect`)",
                a.tensor,
                a.model.display()
            );
        }
        bail!(
            "no tensor {:?} in {}; similar: {}",
            a.tensor,
            a.model.display(),
            similar.join(", ")
        );
    };
    if !t.ty.is_supported_for_compute() {
        bail!(
            "tensor {} has type {}, which flashstream cannot dequantize",
            t.name,
            t.ty
        );
    }
    let files = ModelFiles::open(&model)?;
    let bytes = files
        .read_rows(t, a.rows)
        .with_context(|| format!("reading tensor {}", t.name))?;
    let row_len = t.row_len() as usize;
    let row_bytes = t.row_bytes() as usize;
    let mut rows = Vec::new();
    for chunk in bytes.chunks_exact(row_bytes) {
        let mut out = vec![0f32; row_len];
        dequantize_row(t.ty, chunk, &mut out)?;
        rows.push(out);
    }
    if a.json {
        println!(
            "{}",
            json!({"name": t.name, "type": t.ty.name(), "shape": t.shape, "rows": rows})
        );
    } else {
        println!("{} {} {:?}", t.name, t.ty, t.shape);
        for (i, r) in rows.iter().enumerate() {
            let s: Vec<String> = r.iter().map(|v| format!("{v}")).collect();
            println!("row {i}: [{}]", s.join(", "));
        }
    }
    Ok(())
}
