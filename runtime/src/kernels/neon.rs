//! NEON kernels. SKELETON.
use super::{DotFn, QuantizeFn};
use flashstream_formats::GgmlType;

/// The NEON dot kernel for weight type `ty` (using `sdot` if `dotprod`), if there is one.
pub fn dot_fn(_ty: GgmlType, _dotprod: bool) -> Option<DotFn> {
    None
}
/// The NEON quantizer for activation type `act`, if there is one.
pub fn quantize_fn(_act: GgmlType) -> Option<QuantizeFn> {
    None
}
