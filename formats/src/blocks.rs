//! Quantized block layouts, byte-exact with ggml's, viewed zero-copy from borrowed bytes.
//!
//! Every weight block is `#[repr(C)]` with alignment 1 (half floats are stored as
//! [`F16Le`] byte pairs), so a block slice can be borrowed from any byte slice of the right
//! length, wherever a read put it. The activation block [`BlockQ8K`] is built by the runtime
//! in its own buffers and has natural alignment. Sizes are asserted at compile time.

use bytemuck::{Pod, Zeroable};

use crate::{FormatError, GgmlType};

/// Weights per K-quant super-block.
pub const QK_K: usize = 256;
/// Weights per simple quant block.
pub const QK: usize = 32;
/// Bytes of packed 6-bit scales in Q3_K, Q4_K and Q5_K blocks.
pub const K_SCALE_SIZE: usize = 12;

/// A little-endian IEEE half float stored as two bytes (alignment 1).
#[derive(Clone, Copy, Default, PartialEq, Eq, Pod, Zeroable)]
#[repr(transparent)]
pub struct F16Le(pub [u8; 2]);

impl F16Le {
    /// The value as f32.
    #[inline(always)]
    pub fn to_f32(self) -> f32 {
        half::f16::from_le_bytes(self.0).to_f32()
    }
    /// Rounds `v` to the nearest half float.
    #[inline(always)]
    pub fn from_f32(v: f32) -> Self {
        F16Le(half::f16::from_f32(v).to_le_bytes())
    }
}

impl std::fmt::Debug for F16Le {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.to_f32())
    }
}

/// A little-endian bfloat16 stored as two bytes (alignment 1).
#[derive(Clone, Copy, Default, PartialEq, Eq, Pod, Zeroable)]
#[repr(transparent)]
pub struct Bf16Le(pub [u8; 2]);

impl Bf16Le {
    /// The value as f32 (exact: the 16 bits are the top half of an f32).
    #[inline(always)]
    pub fn to_f32(self) -> f32 {
        f32::from_bits((u16::from_le_bytes(self.0) as u32) << 16)
    }
    /// Rounds `v` to the nearest bfloat16, ties to even, as ggml's `ggml_compute_fp32_to_bf16`
    /// does (a NaN stays a NaN, made quiet).
    #[inline(always)]
    pub fn from_f32(v: f32) -> Self {
        let bits = v.to_bits();
        let h = if bits & 0x7fff_ffff > 0x7f80_0000 {
            (bits >> 16) | 0x40
        } else {
            bits.wrapping_add(0x7fff + ((bits >> 16) & 1)) >> 16
        };
        Bf16Le((h as u16).to_le_bytes())
    }
}

impl std::fmt::Debug for Bf16Le {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.to_f32())
    }
}

/// A block type of a quantized format.
pub trait QuantBlock: Pod {
    /// The ggml type whose blocks these are.
    const TYPE: GgmlType;
    /// Weights per block.
    const WEIGHTS: usize = Self::TYPE.block_size();
}

macro_rules! block {
    ($(#[$m:meta])* $name:ident, $ty:expr, $bytes:expr, { $($(#[$fm:meta])* $f:ident : $t:ty),* $(,)? }) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, Pod, Zeroable)]
        #[repr(C)]
        #[allow(missing_docs)] // fields are ggml's, described in the block's doc
        pub struct $name { $($(#[$fm])* pub $f: $t),* }
        impl QuantBlock for $name { const TYPE: GgmlType = $ty; }
        const _: () = assert!(std::mem::size_of::<$name>() == $bytes);
        const _: () = assert!(std::mem::size_of::<$name>() == $ty.block_bytes());
    };
}

block!(
    /// Q4_0: `w = d * (q - 8)`, q in 0..16; low nibbles are weights 0..16, high nibbles 16..32.
    BlockQ4_0, GgmlType::Q4_0, 18, { d: F16Le, qs: [u8; QK / 2] });
block!(
    /// Q4_1: `w = d * q + m`, nibbles as in Q4_0.
    BlockQ4_1, GgmlType::Q4_1, 20, { d: F16Le, m: F16Le, qs: [u8; QK / 2] });
block!(
    /// Q5_0: `w = d * (q - 16)`, fifth bits of the 32 weights in `qh` (little-endian u32).
    BlockQ5_0, GgmlType::Q5_0, 22, { d: F16Le, qh: [u8; 4], qs: [u8; QK / 2] });
block!(
    /// Q5_1: `w = d * q + m`, fifth bits in `qh`.
    BlockQ5_1, GgmlType::Q5_1, 24, { d: F16Le, m: F16Le, qh: [u8; 4], qs: [u8; QK / 2] });
block!(
    /// Q8_0: `w = d * q`.
    BlockQ8_0, GgmlType::Q8_0, 34, { d: F16Le, qs: [i8; QK] });
block!(
    /// Q8_1: `w = d * q`; `s = d * sum(q)` (activation type paired with Q4_1 and Q5_1).
    BlockQ8_1, GgmlType::Q8_1, 36, { d: F16Le, s: F16Le, qs: [i8; QK] });
block!(
    /// Q2_K: 16 sub-blocks of 16; each scale byte holds a 4-bit scale (low) and min (high).
    BlockQ2K, GgmlType::Q2_K, 84, { scales: [u8; QK_K / 16], qs: [u8; QK_K / 4], d: F16Le, dmin: F16Le });
block!(
    /// Q3_K: 16 sub-blocks of 16; high bits in `hmask`, 6-bit signed scales packed in 12 bytes.
    BlockQ3K, GgmlType::Q3_K, 110, { hmask: [u8; QK_K / 8], qs: [u8; QK_K / 4], scales: [u8; K_SCALE_SIZE], d: F16Le });
block!(
    /// Q4_K: 8 sub-blocks of 32 with 6-bit scales and mins packed in 12 bytes.
    BlockQ4K, GgmlType::Q4_K, 144, { d: F16Le, dmin: F16Le, scales: [u8; K_SCALE_SIZE], qs: [u8; QK_K / 2] });
block!(
    /// Q5_K: Q4_K plus a fifth bit per weight in `qh`.
    BlockQ5K, GgmlType::Q5_K, 176, { d: F16Le, dmin: F16Le, scales: [u8; K_SCALE_SIZE], qh: [u8; QK_K / 8], qs: [u8; QK_K / 2] });
block!(
    /// Q6_K: 16 sub-blocks of 16 with signed 8-bit scales; low 4 bits in `ql`, high 2 in `qh`.
    BlockQ6K, GgmlType::Q6_K, 210, { ql: [u8; QK_K / 2], qh: [u8; QK_K / 4], scales: [i8; QK_K / 16], d: F16Le });
block!(
    /// IQ4_NL: 4-bit indices into a fixed non-linear table, nibble order as Q4_0.
    BlockIQ4NL, GgmlType::IQ4_NL, 18, { d: F16Le, qs: [u8; QK / 2] });
block!(
    /// IQ4_XS: 8 sub-blocks of 32 of IQ4_NL indices with 6-bit scales (`scales_h` is a
    /// little-endian u16 of the high 2 bits).
    BlockIQ4XS, GgmlType::IQ4_XS, 136, { d: F16Le, scales_h: [u8; 2], scales_l: [u8; QK_K / 64], qs: [u8; QK_K / 2] });
block!(
    /// MXFP4 (OCP microscaling FP4): `w = e8m0_to_f32_half(e) * MXFP4_VALUES[q]`, one shared
    /// E8M0 exponent byte, then 4-bit E2M1 codes with nibbles ordered as Q4_0 (low nibbles
    /// are weights 0..16, high nibbles 16..32). See [`e8m0_to_f32_half`] and [`MXFP4_VALUES`].
    BlockMXFP4, GgmlType::MXFP4, 17, { e: u8, qs: [u8; QK / 2] });

/// Q8_K: the activation type paired with the K-quants: f32 scale, 256 quants and the sums of
/// each group of 16 quants. Built by the runtime, naturally aligned.
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
#[repr(C)]
pub struct BlockQ8K {
    /// Scale.
    pub d: f32,
    /// Quants.
    pub qs: [i8; QK_K],
    /// Sum of each consecutive 16 quants.
    pub bsums: [i16; QK_K / 16],
}
impl QuantBlock for BlockQ8K {
    const TYPE: GgmlType = GgmlType::Q8_K;
}
const _: () = assert!(std::mem::size_of::<BlockQ8K>() == GgmlType::Q8_K.block_bytes());

/// Borrows `bytes` as blocks of type `B` without copying.
///
/// Fails if the length is not a whole number of blocks or (for naturally aligned blocks such as
/// [`BlockQ8K`]) the pointer is misaligned.
pub fn as_blocks<B: QuantBlock>(bytes: &[u8]) -> Result<&[B], FormatError> {
    bytemuck::try_cast_slice(bytes).map_err(|_| FormatError::BadBlockSlice {
        ty: B::TYPE,
        len: bytes.len(),
    })
}

/// The non-linear table of IQ4_NL and IQ4_XS.
pub const IQ4NL_VALUES: [i8; 16] = [
    -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
];

/// The 16 E2M1 (FP4) values, doubled so they are integers (ggml's `kvalues_mxfp4`): code `q`
/// (sign bit 3, exponent bits 2..1, mantissa bit 0) stands for `MXFP4_VALUES[q] / 2`. The
/// halving is folded into the block scale, [`e8m0_to_f32_half`].
pub const MXFP4_VALUES: [i8; 16] = [0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12];

/// Half the value of an E8M0 scale byte, `2^(e - 127) / 2 = 2^(e - 128)`, as ggml's
/// `ggml_e8m0_to_fp32_half` (and gguf-py's `MXFP4.e8m0_to_fp32_half`) compute it: `e` 0 and 1
/// give the subnormals 2^-128 and 2^-127, every other byte the normal float with exponent
/// field `e - 1`; 255 (NaN in the OCP spec) is read as 2^127, as ggml does.
#[inline(always)]
pub const fn e8m0_to_f32_half(e: u8) -> f32 {
    let bits = if e < 2 {
        0x0020_0000u32 << e
    } else {
        (e as u32 - 1) << 23
    };
    f32::from_bits(bits)
}

/// Unpacks the 6-bit scale and min of sub-block `j` (0..8) of a Q4_K/Q5_K block.
#[inline(always)]
pub fn k_scale_min(j: usize, q: &[u8; K_SCALE_SIZE]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// Unpacks the 16 signed 6-bit scales of a Q3_K block (each in -32..32).
#[inline(always)]
pub fn q3k_scales(packed: &[u8; K_SCALE_SIZE]) -> [i8; 16] {
    let mut out = [0i8; 16];
    for (i, o) in out.iter_mut().enumerate() {
        let low = if i < 8 {
            packed[i] & 0x0f
        } else {
            packed[i - 8] >> 4
        };
        let high = (packed[8 + (i % 4)] >> (2 * (i / 4))) & 3;
        *o = ((low | (high << 4)) as i8) - 32;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_borrow_from_unaligned_bytes() {
        let buf = [0u8; 18 * 3 + 1];
        let b: &[BlockQ4_0] = as_blocks(&buf[1..]).unwrap();
        assert_eq!(b.len(), 3);
        assert!(as_blocks::<BlockQ4_0>(&buf[..20]).is_err());
    }

    #[test]
    fn e8m0_half_is_a_power_of_two_halved() {
        assert_eq!(e8m0_to_f32_half(127), 0.5);
        assert_eq!(e8m0_to_f32_half(128), 1.0);
        assert_eq!(e8m0_to_f32_half(2), 2f32.powi(-126));
        assert_eq!(e8m0_to_f32_half(1), 2f32.powi(-127));
        assert_eq!(e8m0_to_f32_half(0), 2f32.powi(-128));
        assert_eq!(e8m0_to_f32_half(255), 2f32.powi(127));
        for e in 2..=255u8 {
            assert_eq!(e8m0_to_f32_half(e), 2f32.powi(e as i32 - 128), "e = {e}");
        }
    }

    #[test]
    fn f16_round_trip() {
        assert_eq!(F16Le::from_f32(1.5).to_f32(), 1.5);
        assert_eq!(F16Le([0x00, 0x3c]).to_f32(), 1.0);
    }

    #[test]
    fn bf16_rounds_to_nearest_even() {
        assert_eq!(Bf16Le([0x80, 0x3f]).to_f32(), 1.0);
        assert_eq!(Bf16Le::from_f32(1.0).0, [0x80, 0x3f]);
        // Ties go to the even neighbour; anything above a tie rounds up.
        assert_eq!(
            Bf16Le::from_f32(f32::from_bits(0x3f80_8000)).0,
            [0x80, 0x3f]
        );
        assert_eq!(
            Bf16Le::from_f32(f32::from_bits(0x3f81_8000)).0,
            [0x82, 0x3f]
        );
        assert_eq!(
            Bf16Le::from_f32(f32::from_bits(0x3f80_8001)).0,
            [0x81, 0x3f]
        );
        // Overflow to infinity; NaN stays NaN (quiet).
        assert_eq!(Bf16Le::from_f32(f32::MAX).to_f32(), f32::INFINITY);
        assert!(Bf16Le::from_f32(f32::from_bits(0x7f80_0001))
            .to_f32()
            .is_nan());
    }
}
