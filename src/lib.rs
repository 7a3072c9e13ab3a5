//! flashstream: run language models far larger than memory by streaming weights from flash.
//!
//! This facade re-exports the member crates and adds [`Engine`]: one call from a GGUF file to
//! a model running under a memory budget. See ARCHITECTURE.md for the code map.

#![warn(missing_docs)]

pub mod auto_budget;
mod budget;
pub mod engine;

pub use auto_budget::{AutoBudget, MemoryReader, OsMemory};
pub use engine::{Engine, EngineError, EngineOptions, LoadProgress};

pub use flashstream_formats as formats;
pub use flashstream_loader as loader;
pub use flashstream_runtime as runtime;
pub use flashstream_scheduler as scheduler;
