//! What the runtime's integration tests share: the weight types they run the kernels on.

#![allow(dead_code)] // each test file uses a part

use flashstream_formats::GgmlType;

/// Every weight type with compute kernels ([`GgmlType::is_supported_for_compute`]), in
/// [`GgmlType::ALL`]'s order.
pub fn compute_types() -> Vec<GgmlType> {
    GgmlType::ALL
        .into_iter()
        .filter(|t| t.is_supported_for_compute())
        .collect()
}

/// The float weight types (paired with themselves as activations).
pub const FLOAT_TYPES: [GgmlType; 3] = [GgmlType::F32, GgmlType::F16, GgmlType::BF16];

/// The block-quantized weight types with compute kernels (paired with Q8 activations).
pub fn quant_types() -> Vec<GgmlType> {
    compute_types()
        .into_iter()
        .filter(|t| !FLOAT_TYPES.contains(t))
        .collect()
}
