//! `flashstream template TEMPLATE --context CTX.json`: renders a chat template (a `.jinja`
//! file or a GGUF's `tokenizer.chat_template`) with the variables of CTX.json and prints the
//! text and nothing else, through the same renderer as `run --chat` and `chat`.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Context};
use flashstream::runtime::chat::{ChatContext, ChatTemplate};

use super::common::{chat_template, tokenizer};

#[derive(clap::Args)]
pub struct Args {
    /// A Jinja template file, or a GGUF model whose chat template to use.
    template: PathBuf,
    /// JSON with `messages`, and optionally `tools`, `add_generation_prompt`, `bos_token`,
    /// `eos_token` and `date` (YYYY-MM-DD, for `strftime_now`).
    #[arg(long)]
    context: PathBuf,
}

fn is_gguf(path: &std::path::Path) -> anyhow::Result<bool> {
    use std::io::Read;
    let mut magic = [0u8; 4];
    let mut f = std::fs::File::open(path)
        .with_context(|| format!("cannot open template {}", path.display()))?;
    Ok(f.read(&mut magic)? == 4 && &magic == b"GGUF")
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&a.context)
        .with_context(|| format!("cannot read context {}", a.context.display()))?;
    let ctx = ChatContext::from_json(&text)
        .with_context(|| format!("bad context {}", a.context.display()))?;
    let template = if is_gguf(&a.template)? {
        let gguf = super::open_model(&a.template)?;
        if gguf.metadata.get("tokenizer.chat_template").is_none() {
            bail!(
                "{} has no tokenizer.chat_template (pass a .jinja file instead)",
                a.template.display()
            );
        }
        let tok = tokenizer(&gguf, &a.template)?;
        chat_template(&gguf, &tok)
    } else {
        let source = std::fs::read_to_string(&a.template)
            .with_context(|| format!("cannot read template {}", a.template.display()))?;
        ChatTemplate::new(Some(&source), "", "", "")
    };
    let out = template.render_context(&ctx)?;
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(out.as_bytes())?;
    stdout.flush()?;
    Ok(())
}
