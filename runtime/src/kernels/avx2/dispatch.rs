//! The dispatch tables, generated from one list of weight types ([`avx2_kernels!`] at the
//! bottom): for each type, a module of safe byte-level wrappers around its `unsafe` kernels
//! (`dot`, and where the type has them `dot4`, `dot_rows`, `dot_many`), and the dispatch
//! functions that hand them out only after the CPU has been checked for AVX2, FMA and F16C.
//! A new weight type is one line in that list (plus its kernels).

use super::*;

/// The safe byte-level signatures of a batch-capable type's wrappers.
macro_rules! batch_wrappers {
    ($wb:ty, $ab:ty, dot4: $dot4:expr, dot_rows: $rows:expr, dot_many: $many:expr) => {
        pub(in crate::kernels::avx2) fn dot4(n: usize, w: &[u8], a: [&[u8]; 4]) -> [f32; 4] {
            dot4_one::<$wb, $ab>(n, w, a, $dot4)
        }

        #[allow(clippy::too_many_arguments)]
        pub(in crate::kernels::avx2) fn dot_rows(
            n: usize,
            w: &[u8],
            a: &[u8],
            a_stride: usize,
            n_tok: usize,
            out: &mut [f32],
            out_stride: usize,
        ) {
            $rows(n, w, a, a_stride, n_tok, out, out_stride)
        }

        pub(in crate::kernels::avx2) fn dot_many(n: usize, w: &[u8], a: &[u8], out: &mut [f32]) {
            $many(n, w, a, out)
        }
    };
}

/// Generates the wrapper modules and the dispatch functions from the list of types, grouped
/// by what kernels a type has:
/// - `blocks32`: 32-weight blocks with one-row, one-row-with-tables, four-row and
///   four-row-with-tables kernels (every entry point);
/// - `kquants4`: one-row and four-row kernels (every entry point; no scale tables);
/// - `kquants`: one-row kernel only (`dot`, `dot_many`);
/// - `floats`: a float dot (`dot` only);
/// - `modules`: a hand-written module with `dot`, `dot4`, `dot_rows` and `dot_many`;
/// - `quantizers`: activation types and their quantizer wrappers.
macro_rules! avx2_kernels {
    (
        blocks32 { $($b:ident: $bt:ident($bw:ty, $ba:ty) => $b1:ident, $b1t:ident, $b4:ident, $b4t:ident;)* }
        kquants4 { $($k:ident: $kt:ident($kw:ty, $ka:ty) => $k1:ident, $k4:ident;)* }
        kquants { $($q:ident: $qt:ident($qw:ty, $qa:ty) => $q1:ident;)* }
        floats { $($f:ident: $ft:ident => $f1:ident;)* }
        modules { $($m:ident: $mt:ident;)* }
        quantizers { $($zt:ident => $zf:expr;)* }
    ) => {
        $(
            /// Safe wrappers of this 32-weight block type's kernels.
            pub(super) mod $b {
                use super::*;

                pub(in crate::kernels::avx2) fn dot(n: usize, w: &[u8], a: &[u8]) -> f32 {
                    dot_one::<$bw, $ba>(n, w, a, $b1)
                }

                batch_wrappers!($bw, $ba,
                    dot4: $b4,
                    dot_rows: |n, w, a, s, t, o, os| {
                        dot_rows_tables::<$bw, $ba>(n, w, a, s, t, o, os, $b1, $b4t)
                    },
                    dot_many: |n, w, a, o| dot_many_tables::<$bw, $ba>(n, w, a, o, $b1, $b1t)
                );
            }
        )*
        $(
            /// Safe wrappers of this K-quant's kernels.
            pub(super) mod $k {
                use super::*;

                pub(in crate::kernels::avx2) fn dot(n: usize, w: &[u8], a: &[u8]) -> f32 {
                    dot_one::<$kw, $ka>(n, w, a, $k1)
                }

                batch_wrappers!($kw, $ka,
                    dot4: $k4,
                    dot_rows: |n, w, a, s, t, o, os| {
                        dot_rows_four::<$kw, $ka>(n, w, a, s, t, o, os, $k1, $k4)
                    },
                    dot_many: |n, w, a, o| dot_many_with::<$kw, $ka>(n, w, a, o, $k1)
                );
            }
        )*
        $(
            /// Safe wrappers of this type's one-row kernel.
            pub(super) mod $q {
                use super::*;

                pub(in crate::kernels::avx2) fn dot(n: usize, w: &[u8], a: &[u8]) -> f32 {
                    dot_one::<$qw, $qa>(n, w, a, $q1)
                }

                pub(in crate::kernels::avx2) fn dot_many(
                    n: usize,
                    w: &[u8],
                    a: &[u8],
                    out: &mut [f32],
                ) {
                    dot_many_with::<$qw, $qa>(n, w, a, out, $q1)
                }
            }
        )*
        $(
            /// The safe wrapper of this float type's dot.
            pub(super) mod $f {
                use super::*;

                pub(in crate::kernels::avx2) fn dot(n: usize, w: &[u8], a: &[u8]) -> f32 {
                    dot_float(GgmlType::$ft, n, w, a, $f1)
                }
            }
        )*

        /// The AVX2 dot kernel for weight type `ty`, or `None` if there is none or this CPU
        /// lacks AVX2, FMA or F16C.
        ///
        /// The returned function dots `n` weights (`w`: the raw bytes of a row of type `ty`)
        /// with `n` activations already quantized to `ty.vec_dot_type()` (`a`). As the scalar
        /// kernels do, it returns NaN if `n` is not a whole number of blocks or either slice is
        /// not exactly the bytes of `n` values; weights may have any alignment, and a
        /// misaligned Q8_K activation row is copied (slow, but correct).
        pub fn dot_fn(ty: GgmlType) -> Option<DotFn> {
            if !Isa::Avx2.is_available() {
                return None;
            }
            let f: DotFn = match ty {
                $(GgmlType::$bt => $b::dot,)*
                $(GgmlType::$mt => $m::dot,)*
                $(GgmlType::$kt => $k::dot,)*
                $(GgmlType::$qt => $q::dot,)*
                $(GgmlType::$ft => $f::dot,)*
                _ => return None,
            };
            Some(f)
        }

        /// The AVX2 four-row dot product for weight type `ty` (the 32-weight block types,
        /// Q4_K, Q5_K and Q6_K), or `None`.
        pub fn dot4_fn(ty: GgmlType) -> Option<Dot4Fn> {
            if !Isa::Avx2.is_available() {
                return None;
            }
            let f: Dot4Fn = match ty {
                $(GgmlType::$bt => $b::dot4,)*
                $(GgmlType::$mt => $m::dot4,)*
                $(GgmlType::$kt => $k::dot4,)*
                _ => return None,
            };
            Some(f)
        }

        /// The AVX2 many-token dot product for weight type `ty` (see [`DotActRowsFn`]), or
        /// `None`.
        ///
        /// Checks the lengths once for the whole call and then runs the four-row kernel over
        /// groups of four activation rows (the one-row kernel for the rest, and for every row
        /// of the types without a four-row kernel), so each result equals what [`dot_fn`]'s
        /// function gives for that row, bit for bit.
        pub fn dot_rows_fn(ty: GgmlType) -> Option<DotActRowsFn> {
            if !Isa::Avx2.is_available() {
                return None;
            }
            let f: DotActRowsFn = match ty {
                $(GgmlType::$bt => $b::dot_rows,)*
                $(GgmlType::$mt => $m::dot_rows,)*
                $(GgmlType::$kt => $k::dot_rows,)*
                _ => return None,
            };
            Some(f)
        }

        /// The AVX2 many-weight-row dot product for weight type `ty` (see [`DotWeightRowsFn`]; the
        /// block types), or `None`. Each result equals what [`dot_fn`]'s function gives for
        /// that row.
        pub fn dot_many_fn(ty: GgmlType) -> Option<DotWeightRowsFn> {
            if !Isa::Avx2.is_available() {
                return None;
            }
            let f: DotWeightRowsFn = match ty {
                $(GgmlType::$bt => $b::dot_many,)*
                $(GgmlType::$mt => $m::dot_many,)*
                $(GgmlType::$kt => $k::dot_many,)*
                $(GgmlType::$qt => $q::dot_many,)*
                _ => return None,
            };
            Some(f)
        }

        /// The AVX2 quantizer of f32 activations to `act` (Q8_0, Q8_1, Q8_K, F16 or BF16), or
        /// `None` if there is none or this CPU lacks AVX2, FMA or F16C.
        ///
        /// As the scalar quantizers do, the returned function fills `out` with `0xff` bytes
        /// (NaN scales) if `x.len()` is not a whole number of blocks, `out` is not exactly
        /// `act.row_bytes(x.len())` bytes, or (Q8_K) `out` is not 4-byte aligned.
        pub fn quantize_fn(act: GgmlType) -> Option<QuantizeFn> {
            if !Isa::Avx2.is_available() {
                return None;
            }
            let f: QuantizeFn = match act {
                $(GgmlType::$zt => $zf,)*
                _ => return None,
            };
            Some(f)
        }
    };
}

/// The tile kernel (prompts: many activation rows) for weight type `ty` in the best build this
/// CPU runs ([`tile::TileIsa::detect`]), or `None`. Same contract and results, bit for bit, as
/// [`dot_rows_fn`]'s kernel for rows laid out by `quantize_rows`.
pub fn dot_rows_tile_fn(ty: GgmlType) -> Option<DotActRowsFn> {
    tile::tile_rows_fn(tile::TileIsa::detect()?, ty)
}

/// The fast tile kernel of the 32-weight types ([`super::tile_fast`]) in the best build this
/// CPU runs, or `None`. Same contract as [`dot_rows_fn`]'s kernel, for rows laid out by
/// `quantize_rows` of a kernel with `packed_act`; results differ from it in the last bits.
pub fn dot_rows_fast_fn(ty: GgmlType) -> Option<DotActRowsFn> {
    super::tile_fast::fast_tile_rows_fn(tile::TileIsa::detect()?, ty)
}

avx2_kernels! {
    blocks32 {
        q4_0: Q4_0(BlockQ4_0, BlockQ8_0) => vec_dot_q4_0_q8_0, vec_dot1t_q4_0_q8_0, vec_dot4_q4_0_q8_0, vec_dot4t_q4_0_q8_0;
        q4_1: Q4_1(BlockQ4_1, BlockQ8_1) => vec_dot_q4_1_q8_1, vec_dot1t_q4_1_q8_1, vec_dot4_q4_1_q8_1, vec_dot4t_q4_1_q8_1;
        q5_0: Q5_0(BlockQ5_0, BlockQ8_0) => vec_dot_q5_0_q8_0, vec_dot1t_q5_0_q8_0, vec_dot4_q5_0_q8_0, vec_dot4t_q5_0_q8_0;
        q5_1: Q5_1(BlockQ5_1, BlockQ8_1) => vec_dot_q5_1_q8_1, vec_dot1t_q5_1_q8_1, vec_dot4_q5_1_q8_1, vec_dot4t_q5_1_q8_1;
        q8_0: Q8_0(BlockQ8_0, BlockQ8_0) => vec_dot_q8_0_q8_0, vec_dot1t_q8_0_q8_0, vec_dot4_q8_0_q8_0, vec_dot4t_q8_0_q8_0;
        iq4_nl: IQ4_NL(BlockIQ4NL, BlockQ8_0) => vec_dot_iq4_nl_q8_0, vec_dot1t_iq4_nl_q8_0, vec_dot4_iq4_nl_q8_0, vec_dot4t_iq4_nl_q8_0;
    }
    kquants4 {
        q4_k: Q4_K(BlockQ4K, BlockQ8K) => vec_dot_q4_k_q8_k, vec_dot4_q4_k_q8_k;
        q5_k: Q5_K(BlockQ5K, BlockQ8K) => vec_dot_q5_k_q8_k, vec_dot4_q5_k_q8_k;
        q6_k: Q6_K(BlockQ6K, BlockQ8K) => vec_dot_q6_k_q8_k, vec_dot4_q6_k_q8_k;
    }
    kquants {
        q2_k: Q2_K(BlockQ2K, BlockQ8K) => vec_dot_q2_k_q8_k;
        q3_k: Q3_K(BlockQ3K, BlockQ8K) => vec_dot_q3_k_q8_k;
        iq4_xs: IQ4_XS(BlockIQ4XS, BlockQ8K) => vec_dot_iq4_xs_q8_k;
    }
    floats {
        fp16: F16 => vec_dot_f16_f16;
        bf16: BF16 => vec_dot_bf16_bf16;
        fp32: F32 => vec_dot_f32_f32;
    }
    modules {
        mxfp4: MXFP4;
    }
    quantizers {
        Q8_0 => |x, out| quantize_blocks::<BlockQ8_0>(x, out, quantize_row_q8_0);
        Q8_1 => |x, out| quantize_blocks::<BlockQ8_1>(x, out, quantize_row_q8_1);
        Q8_K => |x, out| quantize_blocks::<BlockQ8K>(x, out, quantize_row_q8_k);
        F16 => |x, out| quantize_halves(x, out, quantize_row_f16);
        BF16 => |x, out| quantize_halves(x, out, quantize_row_bf16);
    }
}
