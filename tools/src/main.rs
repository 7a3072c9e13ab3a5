//! The `flashstream` command-line tool.

// The bench command's JSON object is one large `json!` literal.
#![recursion_limit = "256"]

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cmd;

/// Run language models far larger than memory by streaming weights from flash.
#[derive(Parser)]
#[command(name = "flashstream", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show a model's metadata, validated config and tensor table.
    Inspect(cmd::inspect::Args),
    /// Print the first rows of a tensor, dequantized to f32.
    Dump(cmd::dump::Args),
    /// Teacher-forced logits of a token sequence.
    Logits(cmd::logits::Args),
    /// Show the residency plan of a model under a memory budget.
    Plan(cmd::plan::Args),
    /// Measure device read bandwidth, then prompt and decode speed under a budget.
    Bench(cmd::bench::Args),
    /// Write random-weight models of a given size, or upcycle a dense model to a MoE.
    Mkmodel(cmd::mkmodel::Args),
    /// Token ids of a text, by the model's own tokenizer.
    Tokenize(cmd::tokenize::Args),
    /// Render a chat template (a .jinja file or a GGUF's) with a JSON context.
    Template(cmd::template::Args),
    /// Generate text from a prompt (streamed to stdout).
    Run(cmd::run::Args),
    /// An interactive conversation with the model's chat template.
    Chat(cmd::chat::Args),
    /// An OpenAI-compatible HTTP server; concurrent requests share each weight pass.
    Serve(cmd::serve::Args),
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FLASHSTREAM_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(
                e.kind(),
                ErrorKind::DisplayHelp
                    | ErrorKind::DisplayVersion
                    | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            ) {
                e.exit();
            }
            // One line: clap's first line names the flag and what is wrong with it.
            let text = e.render().to_string();
            eprintln!(
                "{}",
                text.lines()
                    .next()
                    .unwrap_or("error: bad arguments")
                    .trim_end()
            );
            return ExitCode::from(2);
        }
    };
    let result = match cli.command {
        Command::Inspect(a) => cmd::inspect::run(a),
        Command::Dump(a) => cmd::dump::run(a),
        Command::Logits(a) => cmd::logits::run(a),
        Command::Mkmodel(a) => cmd::mkmodel::run(a),
        Command::Plan(a) => cmd::plan::run(a),
        Command::Bench(a) => cmd::bench::run(a),
        Command::Tokenize(a) => cmd::tokenize::run(a),
        Command::Template(a) => cmd::template::run(a),
        Command::Run(a) => cmd::run::run(a),
        Command::Chat(a) => cmd::chat::run(a),
        Command::Serve(a) => cmd::serve::run(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One clear line: the error and its causes.
            let mut msg = format!("error: {e}");
            for cause in e.chain().skip(1) {
                msg.push_str(&format!(": {cause}"));
            }
            eprintln!("{msg}");
            ExitCode::FAILURE
        }
    }
}
