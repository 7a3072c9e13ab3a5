//! AVX2 kernels. SKELETON.
use super::{DotFn, QuantizeFn};
use flashstream_formats::GgmlType;

/// The AVX2 dot kernel for weight type `ty`, if there is one.
pub fn dot_fn(_ty: GgmlType) -> Option<DotFn> {
    None
}
/// The AVX2 quantizer for activation type `act`, if there is one.
pub fn quantize_fn(_act: GgmlType) -> Option<QuantizeFn> {
    None
}
