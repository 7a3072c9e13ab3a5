//! Subcommands.

pub mod common;
pub mod dump;
pub mod inspect;
pub mod logits;
pub mod run;
pub mod tokenize;

use std::path::Path;

use anyhow::Context;
use flashstream::formats::GgufModel;

/// Opens a model, with the path in the error.
pub fn open_model(path: &Path) -> anyhow::Result<GgufModel> {
    GgufModel::open(path).with_context(|| format!("cannot open model {}", path.display()))
}
