//! Quantized kernels: dequantization, activation quantization, dot products, matvec/matmul.
//!
//! Every kernel has a scalar reference in [`scalar`]; [`avx2`] (x86-64, AVX2+FMA+F16C detected
//! at run time) and [`neon`] (aarch64, with `dotprod` and `i8mm` where present) are tested
//! against it.
//!
//! Kernels borrow weight bytes (a slot, an mmap, a test buffer); they never own or load them.
//! The dispatch unit is a [`DotKernel`]: for a weight type, the function that quantizes a row
//! of activations to the paired type ([`GgmlType::vec_dot_type`]) and the function that dots a
//! weight row with it, both over raw bytes.
//!
//! # Batch kernels
//! Besides the one-row `dot`, a kernel may have `dot_rows` ([`DotActRowsFn`]: one weight row
//! against every activation row of a batch, lengths checked once, four-row kernels inside that
//! unpack each weight block once), `dot_many` ([`DotWeightRowsFn`]: many weight rows against
//! one activation row, for decode) and `dot_block` (a block of weight rows against every
//! activation row: the tile kernels). Every result equals the one-row `dot`'s, bit for bit,
//! except with the x86 fast tiles ([`Numerics::Fast`], below).
//!
//! [`matvec::quantize_rows`] stores each activation row's Q8_0/Q8_1 block scales again as f32
//! tables after its blocks ([`act_scale_tables`]), so the batch and decode kernels convert
//! them once per matmul rather than once per weight row; for kernels with `packed_act` it adds
//! a packed copy of the row's quants ([`act_packed_layout`]): per group of four blocks, the
//! quants' 4-byte groups transposed so that four dot-product instructions give each half
//! block's exact integer sum, followed by the negated half sums that undo the weights'
//! unsigned offset.
//!
//! # Tile kernels (`avx2::tile`, `avx2::tile_fast`)
//! They unpack 16 weight rows at a time and run each tile of four activation rows against all
//! of them, with `vpdpbusd`/`vpdpwssd` where the CPU has AVX-VNNI or AVX-512 VNNI and plain
//! AVX2 otherwise (`TileIsa`, the best build detected once); for the 32-weight block types and
//! Q4_K, Q5_K, Q6_K. `matmul` uses them for batches when present.
//!
//! # x86 numerics
//! The AVX2 one-row kernels take llama.cpp's x86 float order (per 32-weight block, 8 lane sums
//! of 4 products converted and added with one FMA of `d_x · d_y`; per Q4_K/Q5_K super-block
//! one integer sum each for scales and mins, as its repacked `q4_K_8x8` kernels), and so do
//! `avx2::tile`'s kernels. For the 32-weight types that costs one conversion and one FMA per
//! block and row, which halves prompt throughput next to `avx2::tile_fast`'s one conversion
//! and one FMA per four blocks over the packed activations. [`Numerics::Llama`] (the default)
//! keeps batches bit-identical to single tokens, and so (with the SiLU, RoPE and attention
//! steps that follow llama.cpp's build) logits equal to llama.cpp's; [`Numerics::Fast`] takes
//! the fast tiles for prompts, whose results differ from one-token ones in the last bits.
//!
//! # Tile kernels (`neon::tile`)
//! For the 32-weight block types, one weight row against tiles of four activation rows, weight
//! rows in groups of eight, each block unpacked once per tile; the one-row dot is the same
//! function with one activation row, so the results agree by construction. For the K-quants
//! (Q2_K..Q6_K, IQ4_XS), each weight row unpacked once per call into a common form (256
//! signed bytes, a scale and a min per 16 weights) and run against tiles of four activation
//! rows; with i8mm, weight rows in pairs (interleaved once per call) against pairs of
//! activation rows with `smmla`. The one-row K-quant kernels reduce each super-block to an
//! exact integer before any float step, which is why any grouping of the products (`sdot`,
//! `smull`, `smmla`) gives their results bit for bit. The 32-weight block types have no
//! `smmla` build: their one-row kernel scales `sdot`'s four lanes separately, and matching
//! that with `smmla` needs a per-lane activation layout. Plain NEON, `sdot` and `smmla` are
//! chosen at run time (`TileIsa`); they use no packed activation copy.

use flashstream_formats::GgmlType;

#[cfg(target_arch = "x86_64")]
pub mod avx2;
pub mod matvec;
#[cfg(target_arch = "aarch64")]
pub mod neon;
pub mod scalar;
#[doc(hidden)]
pub mod testutil;

/// Errors of the kernel layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KernelError {
    /// No kernel exists for this type.
    #[error(
        "tensor type {0} is not supported for computation (supported: {names})",
        names = compute_type_names()
    )]
    UnsupportedType(GgmlType),
    /// The requested instruction set is not available on this CPU.
    #[error("instruction set {0:?} is not available on this CPU")]
    IsaUnavailable(Isa),
    /// A length that is not a whole number of blocks, or buffers that disagree.
    #[error("{0}")]
    BadLength(String),
}

/// The types with compute kernels ([`GgmlType::is_supported_for_compute`]), for messages.
fn compute_type_names() -> String {
    let names: Vec<&str> = GgmlType::ALL
        .into_iter()
        .filter(|t| t.is_supported_for_compute())
        .map(GgmlType::name)
        .collect();
    names.join(", ")
}

/// An instruction set a kernel is written for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Isa {
    /// Portable scalar reference.
    Scalar,
    /// x86-64 AVX2 + FMA + F16C.
    Avx2,
    /// aarch64 NEON (without the dot-product extension).
    Neon,
    /// aarch64 NEON with `sdot`/`udot` (ARMv8.2 dotprod).
    NeonDotprod,
}

impl Isa {
    /// Whether this CPU can run kernels of this instruction set.
    pub fn is_available(self) -> bool {
        match self {
            Isa::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => {
                std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                    && std::arch::is_x86_feature_detected!("f16c")
            }
            #[cfg(target_arch = "aarch64")]
            Isa::Neon => std::arch::is_aarch64_feature_detected!("neon"),
            #[cfg(target_arch = "aarch64")]
            Isa::NeonDotprod => {
                std::arch::is_aarch64_feature_detected!("neon")
                    && std::arch::is_aarch64_feature_detected!("dotprod")
            }
            #[allow(unreachable_patterns)]
            _ => false,
        }
    }

    /// The best instruction set of this CPU.
    pub fn detect() -> Isa {
        [Isa::NeonDotprod, Isa::Neon, Isa::Avx2]
            .into_iter()
            .find(|i| i.is_available())
            .unwrap_or(Isa::Scalar)
    }

    /// Every instruction set this CPU can run, scalar first.
    pub fn available() -> Vec<Isa> {
        [Isa::Scalar, Isa::Avx2, Isa::Neon, Isa::NeonDotprod]
            .into_iter()
            .filter(|i| i.is_available())
            .collect()
    }
}

/// Dots one weight row (`w`: raw bytes of `n` weights) with one activation row already
/// quantized to the paired type (`a`: raw bytes of `n` values, 8-byte aligned).
pub type DotFn = fn(n: usize, w: &[u8], a: &[u8]) -> f32;

/// Dots one weight row with four activation rows at once: each result equals what the
/// kernel's [`DotFn`] gives for that row, bit for bit (the weight row is unpacked once).
pub type Dot4Fn = fn(n: usize, w: &[u8], a: [&[u8]; 4]) -> [f32; 4];

/// Dots one weight row (`n` weights, raw bytes `w`) with `n_tok` activation rows laid out by
/// [`matvec::quantize_rows`] (the paired type's blocks, then the f32 scale tables of
/// [`act_scale_tables`]), row `t` at byte `t * a_stride` of `a`, writing the result for row
/// `t` to `out[t * out_stride]`. Each result equals what the kernel's [`DotFn`] gives for that
/// row's blocks, bit for bit; lengths are checked once per call (every output NaN if they do
/// not fit).
/// (One weight row, many activation rows; [`DotWeightRowsFn`] is the other way round.)
pub type DotActRowsFn = fn(
    n: usize,
    w: &[u8],
    a: &[u8],
    a_stride: usize,
    n_tok: usize,
    out: &mut [f32],
    out_stride: usize,
);

/// [`DotActRowsFn`] for `m` weight rows at once (`w`: their raw bytes, contiguous, `n` weights
/// each): the result of weight row `r` and activation row `t` goes to
/// `out[t * out_stride + r]` (`out_stride >= m` when `m > 1`). Each result equals what the
/// kernel's [`DotFn`] gives, bit for bit; buffers that do not fit give NaN as in
/// [`DotActRowsFn`]. A kernel that unpacks the weight rows once per call and runs tiles of
/// activation rows against a block of them (keeping both in L1) implements this.
pub type DotBlockFn = DotActRowsFn;

/// Dots `out.len()` weight rows (`w`: their raw bytes, contiguous, `n` weights each) with one
/// activation row `a` (the paired type's blocks, optionally followed by the rest of the row
/// [`matvec::quantize_rows`] lays out: the scale tables of [`act_scale_tables`], which the
/// kernel then reads), writing row `r`'s result to `out[r]`. Each
/// result equals what the kernel's [`DotFn`] gives for that row, bit for bit; lengths are
/// checked once per call (every output NaN if they do not fit).
/// (Many weight rows, one activation row; [`DotActRowsFn`] is the other way round.)
pub type DotWeightRowsFn = fn(n: usize, w: &[u8], a: &[u8], out: &mut [f32]);

/// Quantizes `x` into `out`, the raw bytes of `x.len()` values of the paired activation type.
/// `out` is 8-byte aligned and exactly `act_type.row_bytes(x.len())` long.
pub type QuantizeFn = fn(x: &[f32], out: &mut [u8]);

/// The kernels for one weight type on one instruction set.
#[derive(Clone, Copy)]
pub struct DotKernel {
    /// The weight type.
    pub weight_type: GgmlType,
    /// The paired activation type.
    pub act_type: GgmlType,
    /// Activation quantizer.
    pub quantize: QuantizeFn,
    /// Dot product.
    pub dot: DotFn,
    /// Dot product with many activation rows, where the instruction set has one for the type
    /// (used for batches; equal to calls of `dot`, except with [`Numerics::Fast`] tiles).
    pub dot_rows: Option<DotActRowsFn>,
    /// Dot products of a block of weight rows with many activation rows, where the
    /// instruction set has one for the type (used for batches in place of `dot_rows`).
    pub dot_block: Option<DotBlockFn>,
    /// Dot product of many weight rows with one activation row, where the instruction set
    /// has one for the type (used for decode steps; equal to calls of `dot`).
    pub dot_many: Option<DotWeightRowsFn>,
    /// Whether `dot_rows` reads the packed copy of each activation row's quants
    /// ([`act_packed_layout`]), which [`matvec::quantize_rows`] then stores after the scale
    /// tables.
    pub packed_act: bool,
    /// The instruction set.
    pub isa: Isa,
}

impl std::fmt::Debug for DotKernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DotKernel")
            .field("weight_type", &self.weight_type)
            .field("act_type", &self.act_type)
            .field("isa", &self.isa)
            .finish()
    }
}

/// How batched matmuls (prompts, several tokens at once) round where that is a choice: the
/// 32-weight types (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, IQ4_NL) on x86 with AVX2. Everywhere else, and
/// for one token at a time, the kernels are the same either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Numerics {
    /// Batches round exactly as single tokens do, in llama.cpp's x86 order (one conversion and
    /// one FMA per block): a row's result never depends on the rows it is batched with (so
    /// speculative verification, shared server passes and chunked prompts give the tokens of
    /// plain decoding bit for bit), and on x86 the output equals llama.cpp evaluating token by
    /// token, bit for bit, for the types and operations whose order is matched.
    #[default]
    Llama,
    /// Tile kernels that convert and scale four blocks at once (`avx2::tile_fast`) for prompt
    /// batches: about twice the prompt throughput for those types, with results that differ
    /// from one-token evaluation in the last bits, so batching changes them.
    Fast,
}

impl std::str::FromStr for Numerics {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "fast" => Ok(Numerics::Fast),
            "llama" => Ok(Numerics::Llama),
            _ => Err(format!("unknown numerics {s:?}: use fast or llama")),
        }
    }
}

/// The kernels for weight type `ty` on `isa`, with the default [`Numerics::Llama`] batches.
///
/// An instruction set without its own version of a kernel uses the scalar one.
pub fn dot_kernel(isa: Isa, ty: GgmlType) -> Result<DotKernel, KernelError> {
    dot_kernel_with(isa, ty, Numerics::default())
}

/// The kernels for weight type `ty` on `isa`, batches rounding as `numerics` says.
pub fn dot_kernel_with(
    isa: Isa,
    ty: GgmlType,
    #[cfg_attr(not(target_arch = "x86_64"), allow(unused_variables))] numerics: Numerics,
) -> Result<DotKernel, KernelError> {
    if !isa.is_available() {
        return Err(KernelError::IsaUnavailable(isa));
    }
    let act_type = ty.vec_dot_type();
    let (dot, quantize) = match isa {
        Isa::Scalar => (None, None),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => (avx2::dot_fn(ty), avx2::quantize_fn(act_type)),
        #[cfg(target_arch = "aarch64")]
        Isa::Neon => (neon::dot_fn(ty, false), neon::quantize_fn(act_type)),
        #[cfg(target_arch = "aarch64")]
        Isa::NeonDotprod => (neon::dot_fn(ty, true), neon::quantize_fn(act_type)),
        #[allow(unreachable_patterns)]
        _ => (None, None),
    };
    let dot = match dot {
        Some(d) => d,
        None => scalar::dot_fn(ty).ok_or(KernelError::UnsupportedType(ty))?,
    };
    let quantize = match quantize {
        Some(q) => q,
        None => scalar::quantize_fn(act_type).ok_or(KernelError::UnsupportedType(ty))?,
    };
    let (dot_rows, dot_block, packed_act) = match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => {
            let fast = match numerics {
                Numerics::Fast => avx2::dot_rows_fast_fn(ty),
                Numerics::Llama => None,
            };
            // The tile kernels take one weight row or a block of them; the fast ones read
            // the packed activation layout.
            match (fast, avx2::dot_rows_tile_fn(ty)) {
                (Some(f), _) => (Some(f), Some(f), true),
                (None, Some(f)) => (Some(f), Some(f), false),
                (None, None) => (avx2::dot_rows_fn(ty), None, false),
            }
        }
        // The tile kernels take one weight row or a block of them.
        #[cfg(target_arch = "aarch64")]
        Isa::Neon | Isa::NeonDotprod => {
            let f = neon::dot_block_fn(ty, isa == Isa::NeonDotprod);
            (f, f, false)
        }
        _ => (None, None, false),
    };
    let dot_many = match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => avx2::dot_many_fn(ty),
        _ => None,
    };
    Ok(DotKernel {
        dot_many,
        weight_type: ty,
        act_type,
        quantize,
        dot,
        dot_rows,
        dot_block,
        packed_act,
        isa,
    })
}

/// The f32 block-scale tables that [`matvec::quantize_rows`] stores after the blocks of an
/// activation row of `n` values of `act`, for the many-row kernels (which then convert each
/// activation scale once per matmul instead of once per weight row): the byte offset of the
/// first table from the row start (a multiple of 16) and the number of tables, each of
/// `n / 32` values: Q8_0 has one (`d`), Q8_1 two (`d`, then `s`). `None` for the other types
/// (Q8_K keeps its scale in f32 already) or a length that is not whole blocks.
pub fn act_scale_tables(act: GgmlType, n: usize) -> Option<(usize, usize)> {
    let tables = match act {
        GgmlType::Q8_0 => 1,
        GgmlType::Q8_1 => 2,
        _ => return None,
    };
    if !n.is_multiple_of(32) {
        return None;
    }
    let row = act.row_bytes(n as u64)? as usize;
    Some((row.div_ceil(16) * 16, tables))
}

/// Bytes of one group of the packed activation layout ([`act_packed_layout`]).
pub const PACKED_GROUP_BYTES: usize = 160;

/// The packed copy of an activation row's quants that [`matvec::quantize_rows`] stores after
/// the scale tables for kernels with [`DotKernel::packed_act`]: the byte offset from the row
/// start (a multiple of 32) and the number of groups. `None` unless `act` is Q8_0 or Q8_1 and
/// the row has at least four blocks.
///
/// Group `g` covers blocks `4g..4g + 4` in [`PACKED_GROUP_BYTES`] bytes: four 32-byte vectors,
/// vector `i` holding bytes `4i..4i + 4` of the first half (quants 0..16) of each of the four
/// blocks, then bytes `16 + 4i..16 + 4i + 4` of their second halves; then eight i32, lane
/// `4h + k` the negated sum of half `h` of block `k`. So one 4-byte-group dot-product
/// instruction per vector, summed over the four vectors, yields the exact integer sum of
/// each half block, lane `4h + k`, the order the one-row kernels reduce their sums into.
/// Blocks past the last whole group stay only in the row itself.
pub fn act_packed_layout(act: GgmlType, n: usize) -> Option<(usize, usize)> {
    let (off, n_tables) = act_scale_tables(act, n)?;
    let groups = n / 32 / 4;
    if groups == 0 {
        return None;
    }
    let end = off + n_tables * (n / 32) * 4;
    Some((end.div_ceil(32) * 32, groups))
}

/// Writes the packed layout of [`act_packed_layout`] for the `groups` groups of `blocks` (the
/// raw Q8_0 or Q8_1 blocks of a row, `block_bytes` each, quants in their last 32 bytes) into
/// `out` (`groups * PACKED_GROUP_BYTES` bytes).
fn pack_act_row(blocks: &[u8], block_bytes: usize, groups: usize, out: &mut [u8]) {
    let qs_at = block_bytes - 32;
    for (g, dst) in out
        .chunks_exact_mut(PACKED_GROUP_BYTES)
        .take(groups)
        .enumerate()
    {
        for k in 0..4 {
            let b = 4 * g + k;
            let qs = &blocks[b * block_bytes + qs_at..(b + 1) * block_bytes];
            for h in 0..2 {
                for i in 0..4 {
                    let src = &qs[16 * h + 4 * i..16 * h + 4 * i + 4];
                    let at = 32 * i + 16 * h + 4 * k;
                    dst[at..at + 4].copy_from_slice(src);
                }
                let sum: i32 = qs[16 * h..16 * h + 16]
                    .iter()
                    .map(|&q| q as i8 as i32)
                    .sum();
                let at = 128 + 4 * (4 * h + k);
                dst[at..at + 4].copy_from_slice(&(-sum).to_le_bytes());
            }
        }
    }
}

/// A byte buffer aligned to 64 bytes for compute (activation rows, scratch); the loader's
/// page-aligned `IoBuffer` is for reads.
#[derive(Clone, Default)]
pub struct ScratchBuf {
    words: Vec<Align64>,
    len: usize,
}

#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Align64([u8; 64]);

impl ScratchBuf {
    /// A zeroed buffer of `len` bytes.
    pub fn zeroed(len: usize) -> Self {
        ScratchBuf {
            words: vec![Align64([0; 64]); len.div_ceil(64)],
            len,
        }
    }

    /// Resizes to `len` bytes (contents unspecified afterwards).
    pub fn resize(&mut self, len: usize) {
        self.words.resize(len.div_ceil(64), Align64([0; 64]));
        self.len = len;
    }

    /// The bytes.
    pub fn as_bytes(&self) -> &[u8] {
        // SAFETY: Align64 is 64 plain bytes; the vector holds at least `len` bytes.
        unsafe { std::slice::from_raw_parts(self.words.as_ptr() as *const u8, self.len) }
    }

    /// The bytes, mutably.
    pub fn as_bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as above, and we hold the unique borrow.
        unsafe { std::slice::from_raw_parts_mut(self.words.as_mut_ptr() as *mut u8, self.len) }
    }
}
