//! `flashstream tokenize MODEL TEXT [--json]`: the model's own tokenizer.

use std::path::PathBuf;

use serde_json::json;

use super::common::tokenizer;

#[derive(clap::Args)]
pub struct Args {
    /// The GGUF file.
    model: PathBuf,
    /// The text to tokenize.
    text: String,
    /// Do not add BOS/EOS (by default they are added as the model asks).
    #[arg(long)]
    no_bos: bool,
    /// Encode special-token text (e.g. `<|im_start|>`) as plain text.
    #[arg(long)]
    no_parse_special: bool,
    /// Print `{"tokens":[...]}`.
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let gguf = super::open_model(&a.model)?;
    let tok = tokenizer(&gguf, &a.model)?;
    let ids = tok.encode(&a.text, !a.no_bos, !a.no_parse_special)?;
    if a.json {
        println!("{}", json!({ "tokens": ids }));
    } else {
        for id in ids {
            let piece = String::from_utf8_lossy(&tok.token_to_piece_with(id, true)).into_owned();
            println!("{id:>8} {piece:?}");
        }
    }
    Ok(())
}
