//! Scalar reference kernels. SKELETON.
use super::{DotFn, QuantizeFn};
use flashstream_formats::GgmlType;

/// The scalar dot kernel for weight type `ty`.
pub fn dot_fn(_ty: GgmlType) -> Option<DotFn> {
    None
}
/// The scalar quantizer for activation type `act`.
pub fn quantize_fn(_act: GgmlType) -> Option<QuantizeFn> {
    None
}
/// Dequantizes a row. SKELETON.
pub fn dequantize_row(
    ty: GgmlType,
    _src: &[u8],
    _dst: &mut [f32],
) -> Result<(), super::KernelError> {
    Err(super::KernelError::UnsupportedType(ty))
}
