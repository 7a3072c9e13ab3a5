//! The scalar dot products against the dequantized values they stand for, and the scalar
//! activation quantizers against their definitions.
//!
//! Tolerance of the dot checks: `|dot - expected| <= 1e-6 * sum(|w_i * a_i|)`, where
//! `expected` is the f64 sum of `dequant(w)[i] * dequant(quantize(x))[i]`. The reference
//! kernels do their block sums exactly in integers and round only when scaling and
//! accumulating in f32 (a few ulps per block, at most 128 blocks here), so a correct kernel
//! stays orders of magnitude inside this bound, while a wrong nibble, bit or scale moves the
//! result by a large fraction of `sum(|w_i * a_i|)`.
//!
//! Q4_1 and Q5_1 dot against Q8_1, whose block carries `s = d * sum(q)` rounded to f16, and
//! ggml's dot uses that stored `s` for the min term; the expected value does the same (the
//! min term is `m * s` per block), as that rounding is part of the definition, not an error.

mod common;

use flashstream_formats::blocks::{as_blocks, BlockQ8K, BlockQ8_1, QK, QK_K};
use flashstream_formats::GgmlType;
use flashstream_runtime::kernels::scalar::{
    self, dequantize_row, quantize_row, quantize_row_q8_0, quantize_row_q8_1, quantize_row_q8_k,
    vec_dot,
};
use flashstream_runtime::kernels::testutil::{random_activations, random_weights};
use flashstream_runtime::kernels::{dot_kernel, Isa, KernelError, ScratchBuf};

const DOT_REL_TOL: f64 = 1e-6;

fn quantize(act: GgmlType, x: &[f32]) -> ScratchBuf {
    let bytes = act.row_bytes(x.len() as u64).unwrap() as usize;
    let mut buf = ScratchBuf::zeroed(bytes);
    quantize_row(act, x, buf.as_bytes_mut()).unwrap();
    buf
}

fn dequant(ty: GgmlType, bytes: &[u8], n: usize) -> Vec<f32> {
    let mut out = vec![0f32; n];
    dequantize_row(ty, bytes, &mut out).unwrap();
    out
}

/// The lengths tried for a type: 1, 3 and 16 blocks of K-quants, more of the small types.
fn lengths(ty: GgmlType) -> Vec<usize> {
    match ty.block_size() {
        256 => vec![256, 768, 4096],
        32 => vec![32, 96, 1024, 4096],
        _ => vec![1, 7, 64, 1000, 4096],
    }
}

/// `m * (s - d * sum(q))` summed over Q8_1 blocks: what ggml's use of the stored `s` adds to
/// the exact dequantized product for Q4_1/Q5_1 weights.
fn q8_1_min_correction(ty: GgmlType, w: &[u8], a: &[u8]) -> f64 {
    let mins: Vec<f32> = match ty {
        GgmlType::Q4_1 => w.chunks_exact(20).map(|b| f16(b[2], b[3])).collect(),
        GgmlType::Q5_1 => w.chunks_exact(24).map(|b| f16(b[2], b[3])).collect(),
        _ => return 0.0,
    };
    let act: &[BlockQ8_1] = as_blocks(a).unwrap();
    mins.iter()
        .zip(act)
        .map(|(&m, b)| {
            let sum: i32 = b.qs.iter().map(|&q| q as i32).sum();
            let exact = b.d.to_f32() as f64 * sum as f64;
            m as f64 * (b.s.to_f32() as f64 - exact)
        })
        .sum()
}

fn f16(lo: u8, hi: u8) -> f32 {
    half::f16::from_le_bytes([lo, hi]).to_f32()
}

#[test]
fn dot_matches_dequantized_product_for_every_type() {
    let mut worst = 0f64;
    for ty in common::compute_types() {
        let act = ty.vec_dot_type();
        for n in lengths(ty) {
            for seed in 0..4u64 {
                let w = random_weights(ty, n, seed * 7919 + n as u64);
                let x = random_activations(n, seed + 1000 * n as u64);
                let a = quantize(act, &x);
                let got = vec_dot(ty, n, &w, a.as_bytes()).unwrap();

                let wd = dequant(ty, &w, n);
                let ad = dequant(act, a.as_bytes(), n);
                let mut expected = 0f64;
                let mut magnitude = 0f64;
                for (p, q) in wd.iter().zip(&ad) {
                    expected += *p as f64 * *q as f64;
                    magnitude += (*p as f64 * *q as f64).abs();
                }
                expected += q8_1_min_correction(ty, &w, a.as_bytes());
                let err = (got as f64 - expected).abs();
                assert!(
                    got.is_finite() && err <= DOT_REL_TOL * magnitude,
                    "{ty} n={n} seed={seed}: dot {got}, expected {expected} (|w.a| {magnitude})"
                );
                if magnitude > 0.0 {
                    worst = worst.max(err / magnitude);
                }

                // The dispatched byte-level kernel is the same function.
                let k = dot_kernel(Isa::Scalar, ty).unwrap();
                assert_eq!(k.act_type, act);
                let bytes = act.row_bytes(n as u64).unwrap() as usize;
                let mut a2 = ScratchBuf::zeroed(bytes);
                (k.quantize)(&x, a2.as_bytes_mut());
                assert_eq!(a2.as_bytes(), a.as_bytes(), "{ty}: quantize_fn differs");
                let got2 = (k.dot)(n, &w, a2.as_bytes());
                assert_eq!(got2.to_bits(), got.to_bits(), "{ty}: dot_fn differs");
            }
        }
    }
    eprintln!("worst relative dot error: {worst:e} (tolerance {DOT_REL_TOL:e})");
}

#[test]
fn dot_fn_and_quantize_fn_cover_exactly_the_supported_types() {
    for ty in GgmlType::ALL {
        assert_eq!(
            scalar::dot_fn(ty).is_some(),
            ty.is_supported_for_compute(),
            "{ty}"
        );
        if ty.is_supported_for_compute() {
            assert!(scalar::quantize_fn(ty.vec_dot_type()).is_some(), "{ty}");
            assert!(dot_kernel(Isa::Scalar, ty).is_ok(), "{ty}");
        } else {
            assert!(matches!(
                dot_kernel(Isa::Scalar, ty),
                Err(KernelError::UnsupportedType(t)) if t == ty
            ));
        }
    }
}

/// The step of an 8-bit activation type: a value is off by at most half a step `d`
/// (Q8_0/Q8_1 round to nearest; Q8_K too, except that +128 clamps to 127, one step).
#[test]
fn activation_quantize_dequantize_within_half_a_step() {
    for n in [32usize, 256, 4096] {
        for seed in 0..5u64 {
            let mut x = random_activations(n, seed);
            if seed == 4 && n >= 2 * QK {
                // An all-zero block and a block of one repeated value.
                x[..QK].fill(0.0);
                x[QK..2 * QK].fill(-0.75);
            }
            for act in [GgmlType::Q8_0, GgmlType::Q8_1] {
                if n % 32 != 0 {
                    continue;
                }
                let a = quantize(act, &x);
                let back = dequant(act, a.as_bytes(), n);
                let bb = act.block_bytes();
                for (i, (v, r)) in x.iter().zip(&back).enumerate() {
                    let blk = &a.as_bytes()[i / QK * bb..];
                    let d = f16(blk[0], blk[1]);
                    // d is rounded to f16, so a value can sit half a step off plus the scale
                    // rounding times 127.
                    let bound = 0.5 * d + 127.0 * d * 2f32.powi(-11) + 1e-30;
                    assert!((v - r).abs() <= bound, "{act} [{i}]: {v} -> {r} (d {d})");
                }
            }
            if n % QK_K == 0 {
                let a = quantize(GgmlType::Q8_K, &x);
                let back = dequant(GgmlType::Q8_K, a.as_bytes(), n);
                let blocks: &[BlockQ8K] = as_blocks(a.as_bytes()).unwrap();
                for (i, (v, r)) in x.iter().zip(&back).enumerate() {
                    let d = blocks[i / QK_K].d.abs();
                    assert!(
                        (v - r).abs() <= 0.5 * d * 1.0001,
                        "Q8_K [{i}]: {v} -> {r} (d {d})"
                    );
                }
            }
            for (act, step) in [
                (GgmlType::F16, 2f32.powi(-11)),
                (GgmlType::BF16, 2f32.powi(-8)),
            ] {
                let a = quantize(act, &x);
                let back = dequant(act, a.as_bytes(), n);
                for (v, r) in x.iter().zip(&back) {
                    assert!((v - r).abs() <= step * v.abs(), "{act}: {v} -> {r}");
                }
            }
            let a = quantize(GgmlType::F32, &x);
            assert_eq!(dequant(GgmlType::F32, a.as_bytes(), n), x);
        }
    }
}

#[test]
fn q8_k_follows_ggml_reference_rules() {
    // max is the signed value of largest magnitude: here -127, so iscale = -127/max = 1 and
    // every product below is exact; ties round to even.
    let mut x = vec![0f32; QK_K];
    x[0] = -127.0;
    x[1] = 0.5;
    x[2] = 1.5;
    x[3] = -2.5;
    x[4] = 2.5;
    x[17] = 127.0;
    let mut y = [BlockQ8K {
        d: 0.0,
        qs: [0; QK_K],
        bsums: [0; QK_K / 16],
    }];
    quantize_row_q8_k(&x, &mut y);
    let b = &y[0];
    assert_eq!(b.d, 1.0);
    assert_eq!(&b.qs[..5], &[-127, 0, 2, -2, 2]);
    assert_eq!(b.qs[17], 127);
    assert_eq!(b.bsums[0], -127 + 2 - 2 + 2);
    assert_eq!(b.bsums[1], 127);
    assert!(b.bsums[2..].iter().all(|&s| s == 0));

    // A positive max gives iscale = -1: d = -1 and negated quants.
    let mut x = vec![0f32; QK_K];
    x[5] = 127.0;
    x[6] = -1.5;
    x[7] = 0.5;
    quantize_row_q8_k(&x, &mut y);
    assert_eq!(y[0].d, -1.0);
    assert_eq!(&y[0].qs[5..8], &[-127, 2, 0]);

    // A scale that is not a power of two: d = 1/iscale exactly as ggml computes it.
    let mut x = vec![0.01f32; QK_K];
    x[100] = -3.0;
    quantize_row_q8_k(&x, &mut y);
    let iscale = -127.0f32 / -3.0;
    assert_eq!(y[0].d.to_bits(), (1.0 / iscale).to_bits());
    assert_eq!(y[0].qs[0], (0.01f32 * iscale).round_ties_even() as i8);

    // All zero: d = 0, quants and sums zero.
    y[0].bsums = [5; 16];
    quantize_row_q8_k(&[0.0; QK_K], &mut y);
    assert_eq!(y[0].d, 0.0);
    assert!(y[0].qs.iter().all(|&q| q == 0));
    assert!(y[0].bsums.iter().all(|&s| s == 0));
}

#[test]
fn q8_0_and_q8_1_follow_ggml_x86_rules() {
    let mut x = [0f32; QK];
    x[0] = 127.0;
    x[1] = 2.5; // ties to even -> 2
    x[2] = -3.5; // -> -4
    x[3] = -127.0;
    x[4] = 0.49;
    let mut y = [flashstream_formats::blocks::BlockQ8_0 {
        d: Default::default(),
        qs: [0; QK],
    }];
    quantize_row_q8_0(&x, &mut y);
    assert_eq!(y[0].d.to_f32(), 1.0);
    assert_eq!(&y[0].qs[..5], &[127, 2, -4, -127, 0]);

    let mut y1 = [BlockQ8_1 {
        d: Default::default(),
        s: Default::default(),
        qs: [0; QK],
    }];
    quantize_row_q8_1(&x, &mut y1);
    assert_eq!(y1[0].d.to_f32(), 1.0);
    assert_eq!(y1[0].qs, y[0].qs);
    assert_eq!(y1[0].s.to_f32(), -2.0); // 127 + 2 - 4 - 127 + 0

    x[5] = 100.0;
    quantize_row_q8_1(&x, &mut y1);
    assert_eq!(y1[0].s.to_f32(), 98.0);

    // All zero: d = 0 and zero quants.
    quantize_row_q8_0(&[0.0; QK], &mut y);
    assert_eq!(y[0].d.to_f32(), 0.0);
    assert!(y[0].qs.iter().all(|&q| q == 0));
}

#[test]
fn bad_lengths_are_errors_not_panics() {
    let bad = |r: Result<(), KernelError>| matches!(r, Err(KernelError::BadLength(_)));
    let mut out = vec![0f32; 64];
    // Not a whole number of blocks.
    assert!(bad(dequantize_row(
        GgmlType::Q4_0,
        &[0; 18],
        &mut out[..33]
    )));
    assert!(bad(dequantize_row(
        GgmlType::Q4_K,
        &[0; 144],
        &mut out[..32]
    )));
    // Source too short / too long for the values.
    assert!(bad(dequantize_row(GgmlType::Q4_0, &[0; 18], &mut out)));
    assert!(bad(dequantize_row(GgmlType::Q4_0, &[0; 37], &mut out)));
    assert!(bad(dequantize_row(GgmlType::F32, &[0; 255], &mut out)));
    assert!(bad(dequantize_row(GgmlType::F16, &[0; 127], &mut out)));
    assert!(matches!(
        dequantize_row(GgmlType::IQ2_XXS, &[0; 66], &mut vec![0f32; 256]),
        Err(KernelError::UnsupportedType(GgmlType::IQ2_XXS))
    ));
    // Empty rows are fine.
    dequantize_row(GgmlType::Q6_K, &[], &mut []).unwrap();

    // quantize_row checks lengths and alignment.
    let x = vec![0.5f32; 256];
    let mut buf = ScratchBuf::zeroed(292 + 4);
    assert!(bad(quantize_row(
        GgmlType::Q8_0,
        &x[..31],
        &mut buf.as_bytes_mut()[..34]
    )));
    assert!(bad(quantize_row(
        GgmlType::Q8_K,
        &x,
        &mut buf.as_bytes_mut()[..291]
    )));
    assert!(bad(quantize_row(
        GgmlType::Q8_K,
        &x,
        &mut buf.as_bytes_mut()[1..293]
    )));
    assert!(matches!(
        quantize_row(GgmlType::Q4_0, &x, buf.as_bytes_mut()),
        Err(KernelError::UnsupportedType(_))
    ));

    // vec_dot checks both buffers against n.
    let w = random_weights(GgmlType::Q4_K, 512, 1);
    let a = quantize(GgmlType::Q8_K, &random_activations(512, 1));
    assert!(vec_dot(GgmlType::Q4_K, 512, &w, a.as_bytes()).is_ok());
    for (n, wl, al) in [
        (256, 288, 584),
        (512, 144, 584),
        (512, 288, 292),
        (500, 288, 584),
    ] {
        assert!(matches!(
            vec_dot(GgmlType::Q4_K, n, &w[..wl], &a.as_bytes()[..al]),
            Err(KernelError::BadLength(_))
        ));
    }

    // The byte-level kernels, whose signatures carry no error: NaN, and a poisoned output.
    let k = dot_kernel(Isa::Scalar, GgmlType::Q4_K).unwrap();
    assert!((k.dot)(256, &w, a.as_bytes()).is_nan());
    assert!((k.dot)(512, &w[..287], a.as_bytes()).is_nan());
    let mut small = ScratchBuf::zeroed(100);
    (k.quantize)(&x, small.as_bytes_mut());
    assert!(small.as_bytes().iter().all(|&b| b == 0xff));
    for ty in common::compute_types() {
        let k = dot_kernel(Isa::Scalar, ty).unwrap();
        let bs = ty.block_size();
        let w = random_weights(ty, 2 * bs, 3);
        let a = quantize(k.act_type, &random_activations(2 * bs, 3));
        assert!((k.dot)(2 * bs, &w, a.as_bytes()).is_finite(), "{ty}");
        assert!((k.dot)(bs, &w, a.as_bytes()).is_nan(), "{ty}");
        assert!((k.dot)(2 * bs, &w[1..], a.as_bytes()).is_nan(), "{ty}");
        assert!((k.dot)(2 * bs, &w, &a.as_bytes()[1..]).is_nan(), "{ty}");
        // Poisoned activations (wrong-length quantize) make the dot NaN, not a number.
        let mut p = ScratchBuf::zeroed(a.as_bytes().len());
        (k.quantize)(&random_activations(2 * bs + 1, 3), p.as_bytes_mut());
        assert!((k.dot)(2 * bs, &w, p.as_bytes()).is_nan(), "{ty}");
    }

    // Typed functions: mismatched slices.
    assert!(scalar::vec_dot_f32_f32(&[1.0, 2.0], &[1.0]).is_nan());
    let mut y = [BlockQ8K {
        d: 0.0,
        qs: [0; QK_K],
        bsums: [0; 16],
    }];
    quantize_row_q8_k(&x[..255], &mut y);
    assert!(y[0].d.is_nan());
}

#[test]
fn misaligned_inputs_give_the_same_results() {
    // Weights borrowed at an odd offset, and Q8_K activations copied to an odd offset (the
    // reference copies them rather than failing).
    for ty in common::compute_types() {
        let act = ty.vec_dot_type();
        let n = 512;
        let w = random_weights(ty, n, 11);
        let x = random_activations(n, 11);
        let a = quantize(act, &x);
        let want = vec_dot(ty, n, &w, a.as_bytes()).unwrap();
        let mut wshift = vec![0u8; w.len() + 1];
        wshift[1..].copy_from_slice(&w);
        let mut ashift = ScratchBuf::zeroed(a.as_bytes().len() + 1);
        ashift.as_bytes_mut()[1..].copy_from_slice(a.as_bytes());
        let got = vec_dot(ty, n, &wshift[1..], &ashift.as_bytes()[1..]).unwrap();
        assert_eq!(got.to_bits(), want.to_bits(), "{ty}");
        let mut d1 = vec![0f32; n];
        let mut d2 = vec![0f32; n];
        dequantize_row(ty, &w, &mut d1).unwrap();
        dequantize_row(ty, &wshift[1..], &mut d2).unwrap();
        assert_eq!(d1, d2, "{ty}");
    }
}
