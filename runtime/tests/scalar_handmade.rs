//! Hand-built blocks with hand-computed values, for the types no golden file or external
//! crate covers (IQ4_NL, IQ4_XS, the Q8_K activation layout) and for layout corners.
//!
//! The IQ4 blocks' expected values were worked out by hand from the format description and
//! then confirmed once with gguf-py 0.19.0 (`gguf.quants.dequantize` of the same bytes).

use flashstream_formats::blocks::{BlockIQ4NL, BlockIQ4XS, BlockQ8K, BlockQ8_0, F16Le, QK_K};
use flashstream_formats::GgmlType;
use flashstream_runtime::kernels::scalar::{
    dequantize_row, vec_dot_iq4_nl_q8_0, vec_dot_iq4_xs_q8_k,
};

/// The IQ4_NL table, as published with llama.cpp's IQ4_NL.
const K: [f32; 16] = [
    -127.0, -104.0, -83.0, -65.0, -49.0, -35.0, -22.0, -10.0, 1.0, 13.0, 25.0, 38.0, 53.0, 69.0,
    89.0, 113.0,
];

fn dequant(ty: GgmlType, bytes: &[u8], n: usize) -> Vec<f32> {
    let mut out = vec![0f32; n];
    dequantize_row(ty, bytes, &mut out).unwrap();
    out
}

fn iq4_nl_block() -> BlockIQ4NL {
    // d = 0.5; byte j holds index j (weight j) and index 15 - j (weight 16 + j).
    let mut qs = [0u8; 16];
    for (j, q) in qs.iter_mut().enumerate() {
        *q = j as u8 | ((15 - j as u8) << 4);
    }
    BlockIQ4NL {
        d: F16Le([0x00, 0x38]),
        qs,
    }
}

#[test]
fn iq4_nl_hand_computed() {
    let b = iq4_nl_block();
    let y = dequant(GgmlType::IQ4_NL, bytemuck::bytes_of(&b), 32);
    #[rustfmt::skip]
    let want: [f32; 32] = [
        -63.5, -52.0, -41.5, -32.5, -24.5, -17.5, -11.0, -5.0,
        0.5, 6.5, 12.5, 19.0, 26.5, 34.5, 44.5, 56.5,
        56.5, 44.5, 34.5, 26.5, 19.0, 12.5, 6.5, 0.5,
        -5.0, -11.0, -17.5, -24.5, -32.5, -41.5, -52.0, -63.5,
    ];
    assert_eq!(y, want);

    // Dot with activations q = 1 (d = 1): 0.5 * 2 * sum(K) = -94; with q = j - 16: by hand.
    let ones = BlockQ8_0 {
        d: F16Le([0x00, 0x3c]),
        qs: [1; 32],
    };
    assert_eq!(vec_dot_iq4_nl_q8_0(&[b], &[ones]), -94.0);
    let mut ramp = ones;
    for (j, q) in ramp.qs.iter_mut().enumerate() {
        *q = j as i8 - 16;
    }
    let by_hand: f32 = want
        .iter()
        .enumerate()
        .map(|(j, w)| w * (j as f32 - 16.0))
        .sum();
    assert_eq!(vec_dot_iq4_nl_q8_0(&[b], &[ramp]), by_hand);
}

/// Sub-block scales 32, 33, 31, 0, 63, 40, 1, 32, i.e. multipliers 0, 1, -1, -32, 31, 8, -31,
/// 0 of d = 0.25. Low nibbles: 0,1 | 15,0 | 15,8 | 1,0; high 2-bit pairs: 2,2,1,0,3,2,0,2
/// packed little-endian into scales_h = 0x8b1a.
fn iq4_xs_block() -> BlockIQ4XS {
    let mut qs = [0u8; QK_K / 2];
    for ib in 0..8 {
        for j in 0..16 {
            qs[ib * 16 + j] = j as u8 | ((((j + ib) % 16) as u8) << 4);
        }
    }
    BlockIQ4XS {
        d: F16Le([0x00, 0x34]),
        scales_h: [0x1a, 0x8b],
        scales_l: [0x10, 0x0f, 0x8f, 0x01],
        qs,
    }
}

#[test]
fn iq4_xs_hand_computed() {
    let b = iq4_xs_block();
    let y = dequant(GgmlType::IQ4_XS, bytemuck::bytes_of(&b), QK_K);
    // Spot values computed by hand: 0.25 * multiplier * K[index].
    assert!(
        y[..32].iter().all(|&v| v == 0.0),
        "sub-block 0: multiplier 0"
    );
    assert_eq!(y[32], -31.75); // 0.25 * 1 * K[0]
    assert_eq!(y[32 + 16], -26.0); // 0.25 * 1 * K[1]
    assert_eq!(y[64 + 15], -28.25); // 0.25 * -1 * K[15]
    assert_eq!(y[96 + 5], 280.0); // 0.25 * -32 * K[5]
    assert_eq!(y[96 + 16 + 13], 1016.0); // 0.25 * -32 * K[(13 + 3) % 16 = 0]
    assert_eq!(y[128 + 16], -379.75); // 0.25 * 31 * K[4]
    assert_eq!(y[160 + 8], 2.0); // 0.25 * 8 * K[8]
    assert_eq!(y[192 + 15], -875.75); // 0.25 * -31 * K[15]
    assert!(
        y[224..].iter().all(|&v| v == 0.0),
        "sub-block 7: multiplier 0"
    );
    // Every value by the formula.
    let mult = [0.0f32, 1.0, -1.0, -32.0, 31.0, 8.0, -31.0, 0.0];
    for ib in 0..8 {
        for j in 0..16 {
            assert_eq!(y[ib * 32 + j], 0.25 * mult[ib] * K[j], "[{ib}][{j}]");
            assert_eq!(
                y[ib * 32 + 16 + j],
                0.25 * mult[ib] * K[(j + ib) % 16],
                "[{ib}][{}]",
                16 + j
            );
        }
    }

    // Dot with a Q8_K block of d = 2, q = 1 everywhere: 2 * 0.25 * sum(mult[ib] * 2*sum(K)).
    let y8 = BlockQ8K {
        d: 2.0,
        qs: [1; QK_K],
        bsums: [16; 16],
    };
    let by_hand = 2.0 * 0.25 * (mult.iter().sum::<f32>() * 2.0 * -94.0);
    assert_eq!(vec_dot_iq4_xs_q8_k(&[b], &[y8]), by_hand);
    assert_eq!(by_hand, 2.0 * 0.25 * (-24.0 * -188.0));
}

#[test]
fn q8_k_dequantizes_from_its_f32_scale() {
    let mut b = BlockQ8K {
        d: -0.125,
        qs: [0; QK_K],
        bsums: [0; 16],
    };
    for (i, q) in b.qs.iter_mut().enumerate() {
        *q = (i as i32 - 128) as i8;
    }
    // Misaligned source bytes are fine.
    let mut bytes = vec![0u8; 293];
    bytes[1..].copy_from_slice(bytemuck::bytes_of(&b));
    let y = dequant(GgmlType::Q8_K, &bytes[1..], QK_K);
    for (i, v) in y.iter().enumerate() {
        assert_eq!(*v, -0.125 * (i as f32 - 128.0));
    }
}
