//! Subcommands.

pub mod bench;
pub mod bench_parallel;
pub mod bench_spec;
pub mod chat;
pub mod common;
pub mod dump;
pub mod engine;
pub mod inspect;
pub mod logits;
pub mod mkmodel;
pub mod plan;
pub mod plot;
pub mod run;
pub mod serve;
pub mod size;
pub mod spec;
pub mod template;
pub mod tokenize;
pub mod trace;

use std::path::Path;

use anyhow::Context;
use flashstream::formats::GgufModel;

/// Opens a model, with the path in the error.
pub fn open_model(path: &Path) -> anyhow::Result<GgufModel> {
    GgufModel::open(path).with_context(|| format!("cannot open model {}", path.display()))
}
