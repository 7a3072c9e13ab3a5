//! The compute side of flashstream: kernels, ops, architectures, KV cache, tokenizer, sampler.
//!
//! Architecture invariant: the runtime never opens a file or issues a read. It asks the
//! scheduler for weights and gets a lease that borrows a slot.

#![warn(missing_docs)]

pub mod chat;
pub mod constraint;
pub mod generate;
pub mod kernels;
pub mod memory;
pub mod model;
pub mod ops;
pub mod pool;
pub mod sampler;
pub mod sequence;
pub mod speculative;
pub mod tokenizer;
pub mod yarn;
