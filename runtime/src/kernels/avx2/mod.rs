//! x86-64 kernels for AVX2 + FMA + F16C: dot products of every supported weight type with its
//! paired activation type, and the activation quantizers.
//!
//! # Structure
//! The arithmetic lives in `unsafe fn`s compiled with
//! `#[target_feature(enable = "avx2,fma,f16c")]`, one per (weight type, activation type) pair,
//! over block slices. Calling one on a CPU without those features is undefined behaviour, so
//! the only safe way in is [`dot_fn`] / [`quantize_fn`]: they hand out byte-level wrappers only
//! after [`Isa::Avx2`] has been detected on this CPU.
//!
//! # Numerics
//! Integer block sums are exact, exactly as in the scalar reference; the kernels differ from it
//! only in the order in which per-block float products are accumulated, which is llama.cpp's
//! x86 order (see the `kernels` module's "x86 numerics"; `tile_fast` is the one exception). The quantizers equal the scalar ones bit for
//! bit, which follow the quantizers of ggml's x86 build: Q8_0/Q8_1 round half to even with
//! `id = 127/amax` (what llama.cpp's x86 build computes), Q8_K rounds half to even with
//! `iscale = -127/max` and caps at 127; this includes infinities and blocks so tiny that the
//! multiplier overflows. The one known difference is NaN
//! input to Q8_0/Q8_1: here a NaN never becomes the block maximum, while the reference's C-style
//! `MAX` fold lets a NaN reset it (the block's values are meaningless either way).
//!
//! # Activation precondition
//! The `i8 × i8` products use the sign trick (`|x| · sign(y, x)` with `maddubs`), which is exact
//! as long as the *activation* quants are never -128 (weights may be). The quantizers produce
//! quants in -127..=127 for finite input, except in a block whose largest magnitude is below
//! ~3.7e-37 (where the multiplier overflows, as in ggml) and whose f16 scale is then 0, so the
//! block contributes 0 either way. Hand-built activations holding -128 give a wrong (but
//! memory-safe) result.

use core::arch::x86_64::*;
use std::borrow::Cow;

use flashstream_formats::blocks::{
    as_blocks, BlockIQ4NL, BlockIQ4XS, BlockQ2K, BlockQ3K, BlockQ4K, BlockQ4_0, BlockQ4_1,
    BlockQ5K, BlockQ5_0, BlockQ5_1, BlockQ6K, BlockQ8K, BlockQ8_0, BlockQ8_1, F16Le, QuantBlock,
    IQ4NL_VALUES, QK, QK_K,
};
use flashstream_formats::GgmlType;

use super::{Dot4Fn, DotActRowsFn, DotFn, DotWeightRowsFn, Isa, QuantizeFn};

mod block32;
mod dispatch;
mod floats;
mod kquants;
pub mod mxfp4;
mod quantize;
mod simd;
pub mod tile;
pub mod tile_fast;
mod wrappers;

pub use block32::*;
pub use dispatch::*;
pub use floats::*;
pub use kquants::*;
pub use quantize::*;
use simd::*;
use wrappers::*;
