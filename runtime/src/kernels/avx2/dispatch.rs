//! The dispatch tables: the safe byte-level wrapper of each weight type, handed out only
//! after the CPU has been checked for AVX2, FMA and F16C.

use super::*;

/// The AVX2 dot kernel for weight type `ty`, or `None` if there is none or this CPU lacks
/// AVX2, FMA or F16C.
///
/// The returned function dots `n` weights (`w`: the raw bytes of a row of type `ty`) with `n`
/// activations already quantized to `ty.vec_dot_type()` (`a`). As the scalar kernels do, it
/// returns NaN if `n` is not a whole number of blocks or either slice is not exactly the bytes
/// of `n` values; weights may have any alignment, and a misaligned Q8_K activation row is
/// copied (slow, but correct).
pub fn dot_fn(ty: GgmlType) -> Option<DotFn> {
    if !Isa::Avx2.is_available() {
        return None;
    }
    let f: DotFn = match ty {
        GgmlType::Q4_0 => w_q4_0,
        GgmlType::Q4_1 => w_q4_1,
        GgmlType::Q5_0 => w_q5_0,
        GgmlType::Q5_1 => w_q5_1,
        GgmlType::Q8_0 => w_q8_0,
        GgmlType::IQ4_NL => w_iq4_nl,
        GgmlType::MXFP4 => mxfp4::w_mxfp4,
        GgmlType::Q2_K => w_q2_k,
        GgmlType::Q3_K => w_q3_k,
        GgmlType::Q4_K => w_q4_k,
        GgmlType::Q5_K => w_q5_k,
        GgmlType::Q6_K => w_q6_k,
        GgmlType::IQ4_XS => w_iq4_xs,
        GgmlType::F16 => w_f16,
        GgmlType::BF16 => w_bf16,
        GgmlType::F32 => w_f32,
        _ => return None,
    };
    Some(f)
}

/// The AVX2 four-row dot product for weight type `ty` (the 32-weight block types, Q4_K, Q5_K
/// and Q6_K), or `None`.
pub fn dot4_fn(ty: GgmlType) -> Option<Dot4Fn> {
    if !Isa::Avx2.is_available() {
        return None;
    }
    let f: Dot4Fn = match ty {
        GgmlType::Q4_0 => w4_q4_0,
        GgmlType::Q4_1 => w4_q4_1,
        GgmlType::Q5_0 => w4_q5_0,
        GgmlType::Q5_1 => w4_q5_1,
        GgmlType::Q8_0 => w4_q8_0,
        GgmlType::IQ4_NL => w4_iq4_nl,
        GgmlType::MXFP4 => mxfp4::w4_mxfp4,
        GgmlType::Q4_K => w4_q4_k,
        GgmlType::Q5_K => w4_q5_k,
        GgmlType::Q6_K => w4_q6_k,
        _ => return None,
    };
    Some(f)
}

/// The AVX2 many-token dot product for weight type `ty` (see [`DotRowsFn`]), or `None`.
///
/// Checks the lengths once for the whole call and then runs the four-row kernel over groups
/// of four activation rows (the one-row kernel for the rest, and for every row of the types
/// without a four-row kernel), so each result equals what [`dot_fn`]'s function gives for
/// that row, bit for bit.
pub fn dot_rows_fn(ty: GgmlType) -> Option<DotRowsFn> {
    if !Isa::Avx2.is_available() {
        return None;
    }
    let f: DotRowsFn = match ty {
        GgmlType::Q4_0 => r_q4_0,
        GgmlType::Q4_1 => r_q4_1,
        GgmlType::Q5_0 => r_q5_0,
        GgmlType::Q5_1 => r_q5_1,
        GgmlType::Q8_0 => r_q8_0,
        GgmlType::IQ4_NL => r_iq4_nl,
        GgmlType::MXFP4 => mxfp4::r_mxfp4,
        GgmlType::Q4_K => r_q4_k,
        GgmlType::Q5_K => r_q5_k,
        GgmlType::Q6_K => r_q6_k,
        _ => return None,
    };
    Some(f)
}

/// The batch kernel over packed activations ([`crate::kernels::act_packed_layout`]) for weight type
/// `ty`, in the best build this CPU runs ([`tile::TileIsa::detect`]), or `None`. Same
/// contract and results as [`dot_rows_fn`]'s kernel, bit for bit, for rows laid out by
/// `quantize_rows` of a kernel with `packed_act`.
pub fn dot_rows_packed_fn(ty: GgmlType) -> Option<DotRowsFn> {
    tile::tile_rows_fn(tile::TileIsa::detect()?, ty)
}

/// The AVX2 many-weight-row dot product for weight type `ty` (see [`DotManyFn`]; the block
/// types), or `None`. Each result equals what [`dot_fn`]'s function gives for that row.
pub fn dot_many_fn(ty: GgmlType) -> Option<DotManyFn> {
    if !Isa::Avx2.is_available() {
        return None;
    }
    let f: DotManyFn = match ty {
        GgmlType::Q4_0 => m_q4_0,
        GgmlType::Q4_1 => m_q4_1,
        GgmlType::Q5_0 => m_q5_0,
        GgmlType::Q5_1 => m_q5_1,
        GgmlType::Q8_0 => m_q8_0,
        GgmlType::IQ4_NL => m_iq4_nl,
        GgmlType::MXFP4 => mxfp4::m_mxfp4,
        GgmlType::Q2_K => m_q2_k,
        GgmlType::Q3_K => m_q3_k,
        GgmlType::Q4_K => m_q4_k,
        GgmlType::Q5_K => m_q5_k,
        GgmlType::Q6_K => m_q6_k,
        GgmlType::IQ4_XS => m_iq4_xs,
        _ => return None,
    };
    Some(f)
}

/// The AVX2 quantizer of f32 activations to `act` (Q8_0, Q8_1, Q8_K, F16 or BF16), or `None`
/// if there is none or this CPU lacks AVX2, FMA or F16C.
///
/// As the scalar quantizers do, the returned function fills `out` with `0xff` bytes (NaN
/// scales) if `x.len()` is not a whole number of blocks, `out` is not exactly
/// `act.row_bytes(x.len())` bytes, or (Q8_K) `out` is not 4-byte aligned.
pub fn quantize_fn(act: GgmlType) -> Option<QuantizeFn> {
    if !Isa::Avx2.is_available() {
        return None;
    }
    let f: QuantizeFn = match act {
        GgmlType::Q8_0 => wq_q8_0,
        GgmlType::Q8_1 => wq_q8_1,
        GgmlType::Q8_K => wq_q8_k,
        GgmlType::F16 => wq_f16,
        GgmlType::BF16 => wq_bf16,
        _ => return None,
    };
    Some(f)
}
