//! The scalar kernels against the independent `ggml-quants` crate (0.1), for the types it
//! implements completely: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q8_1, F16 and BF16 (its K-quants and
//! IQ4 types are `todo!()`, and its Q8_K stores an f16 scale, so it is not ggml's layout).
//!
//! This is the only external check of Q5_1 and BF16, which the golden file lacks.
//!
//! - Dequantization of random blocks (`testutil::random_weights`): bit-equal.
//! - Activation quantization (F16, BF16): byte-equal. Q8_0/Q8_1: the same scales, and quants
//!   within one step of ggml-quants' (which follows ggml's portable `_ref` quantizer: `x · 1/d`,
//!   ties away from zero), while ours follow ggml's x86 quantizer (`x · 127/amax`, ties to
//!   even), checked exactly against that rule written out here.
//! - Dots: our `vec_dot_*` against the f64 sum of products of ggml-quants' dequantized weights
//!   and our quantized-then-dequantized activations, within `1e-6 * sum(|w_i * a_i|)`
//!   (plus the Q8_1 `s` term, see `scalar_dot.rs`).

use flashstream_formats::blocks::{as_blocks, Bf16Le, BlockQ8_0, BlockQ8_1, F16Le, QK};
use flashstream_formats::GgmlType;
use flashstream_runtime::kernels::scalar::{
    dequantize_row, quantize_row, quantize_row_q8_0, quantize_row_q8_1, vec_dot,
};
use flashstream_runtime::kernels::testutil::{random_activations, random_weights, Rng};
use flashstream_runtime::kernels::ScratchBuf;
use ggml_quants::{bf16, f16, Quantize, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q8_1};

fn h(b: &[u8]) -> f16 {
    f16::from_le_bytes([b[0], b[1]])
}

fn arr<const N: usize>(b: &[u8]) -> [u8; N] {
    b[..N].try_into().unwrap()
}

/// ggml-quants' dequantization of one block of `ty` given as ggml bytes.
fn their_dequant_block(ty: GgmlType, b: &[u8]) -> [f32; QK] {
    match ty {
        GgmlType::Q4_0 => Q4_0 {
            delta: h(b),
            quants: arr(&b[2..]),
        }
        .dequantize(),
        GgmlType::Q4_1 => {
            // DeltaMin has private constructors; build it by layout from its two public f16s.
            let mut blk = <Q4_1 as Quantize<f32, QK>>::quantize(&[0.0; QK]);
            blk.delta_min.delta = h(b);
            blk.delta_min.min = h(&b[2..]);
            blk.quants = arr(&b[4..]);
            blk.dequantize()
        }
        GgmlType::Q5_0 => Q5_0 {
            delta: h(b),
            qh: arr(&b[2..]),
            ql: arr(&b[6..]),
        }
        .dequantize(),
        GgmlType::Q5_1 => {
            let mut blk = <Q5_1 as Quantize<f32, QK>>::quantize(&[0.0; QK]);
            blk.delta_min.delta = h(b);
            blk.delta_min.min = h(&b[2..]);
            blk.qh = arr(&b[4..]);
            blk.ql = arr(&b[8..]);
            blk.dequantize()
        }
        GgmlType::Q8_0 => Q8_0 {
            delta: h(b),
            quants: arr::<QK>(&b[2..]).map(|v| v as i8),
        }
        .dequantize(),
        GgmlType::Q8_1 => Q8_1 {
            delta: h(b),
            sum: h(&b[2..]),
            quants: arr::<QK>(&b[4..]).map(|v| v as i8),
        }
        .dequantize(),
        _ => unreachable!(),
    }
}

fn their_dequant(ty: GgmlType, bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(ty.block_bytes())
        .flat_map(|b| their_dequant_block(ty, b))
        .collect()
}

fn our_dequant(ty: GgmlType, bytes: &[u8], n: usize) -> Vec<f32> {
    let mut out = vec![0f32; n];
    dequantize_row(ty, bytes, &mut out).unwrap();
    out
}

const SIMPLE: [GgmlType; 5] = [
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
];

#[test]
fn struct_layouts_agree() {
    assert_eq!(std::mem::size_of::<Q4_0>(), GgmlType::Q4_0.block_bytes());
    assert_eq!(std::mem::size_of::<Q4_1>(), GgmlType::Q4_1.block_bytes());
    assert_eq!(std::mem::size_of::<Q5_0>(), GgmlType::Q5_0.block_bytes());
    assert_eq!(std::mem::size_of::<Q5_1>(), GgmlType::Q5_1.block_bytes());
    assert_eq!(std::mem::size_of::<Q8_0>(), GgmlType::Q8_0.block_bytes());
    assert_eq!(std::mem::size_of::<Q8_1>(), GgmlType::Q8_1.block_bytes());
}

#[test]
fn dequantize_equals_ggml_quants() {
    for ty in SIMPLE {
        for seed in 0..20u64 {
            let n = 32 * 64;
            let w = random_weights(ty, n, seed);
            let ours = our_dequant(ty, &w, n);
            let theirs = their_dequant(ty, &w);
            for (i, (a, b)) in ours.iter().zip(&theirs).enumerate() {
                assert_eq!(
                    a.to_bits(),
                    b.to_bits(),
                    "{ty} seed {seed} [{i}]: {a} vs {b}"
                );
            }
        }
    }
    // Q8_1 as an activation buffer: random quants, random scale.
    let mut rng = Rng::new(5);
    let mut bytes = vec![0u8; 36 * 64];
    rng.fill(&mut bytes);
    for b in bytes.chunks_exact_mut(36) {
        b[..2].copy_from_slice(&F16Le::from_f32(rng.uniform(-0.1, 0.1)).0);
    }
    let ours = our_dequant(GgmlType::Q8_1, &bytes, 32 * 64);
    let theirs = their_dequant(GgmlType::Q8_1, &bytes);
    assert_eq!(
        ours.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
        theirs.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
    );
    // F16 and BF16: every bit pattern that is not NaN.
    let all: Vec<u8> = (0..=u16::MAX).flat_map(|v| v.to_le_bytes()).collect();
    let n = 1 << 16;
    let f = our_dequant(GgmlType::F16, &all, n);
    let b = our_dequant(GgmlType::BF16, &all, n);
    for v in 0..=u16::MAX {
        let i = v as usize;
        let fv = <f16 as Quantize<f32, 1>>::dequantize(&f16::from_bits(v))[0];
        let bv = <bf16 as Quantize<f32, 1>>::dequantize(&bf16::from_bits(v))[0];
        if fv.is_nan() {
            assert!(f[i].is_nan());
        } else {
            assert_eq!(f[i].to_bits(), fv.to_bits(), "f16 {v:#06x}");
        }
        if bv.is_nan() {
            assert!(b[i].is_nan());
        } else {
            assert_eq!(b[i].to_bits(), bv.to_bits(), "bf16 {v:#06x}");
        }
    }
}

fn activations(seed: u64, n: usize) -> Vec<f32> {
    let mut x = random_activations(n, seed);
    if seed.is_multiple_of(3) {
        x[..QK].fill(0.0); // an all-zero block
    }
    if seed % 3 == 1 {
        x[QK..2 * QK].fill(0.25); // a constant block
        x[2 * QK..3 * QK].iter_mut().for_each(|v| *v *= 1e-6); // a tiny block
    }
    x
}

/// ggml's x86 Q8_0/Q8_1 rule: `q = nearest(x · (127 / amax))`, ties to even.
fn x86_rule(xb: &[f32; QK]) -> [i8; QK] {
    let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
    let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
    std::array::from_fn(|i| (xb[i] * id).round_ties_even() as i8)
}

#[test]
fn activation_quantizers_match_ggml_quants() {
    for seed in 0..30u64 {
        let n = 32 * 32;
        let x = activations(seed, n);
        let mut q0 = vec![
            BlockQ8_0 {
                d: F16Le::default(),
                qs: [0; QK]
            };
            n / QK
        ];
        let mut q1 = vec![
            BlockQ8_1 {
                d: F16Le::default(),
                s: F16Le::default(),
                qs: [0; QK]
            };
            n / QK
        ];
        quantize_row_q8_0(&x, &mut q0);
        quantize_row_q8_1(&x, &mut q1);
        for (i, xb) in x.chunks_exact(QK).enumerate() {
            let xb: &[f32; QK] = xb.try_into().unwrap();
            let t0 = <Q8_0 as Quantize<f32, QK>>::quantize(xb);
            assert_eq!(
                q0[i].d.0,
                t0.delta.to_le_bytes(),
                "Q8_0 d, seed {seed} block {i}"
            );
            let want = x86_rule(xb);
            assert_eq!(q0[i].qs, want, "Q8_0 qs, seed {seed} block {i}");
            for (a, b) in q0[i].qs.iter().zip(&t0.quants) {
                assert!((*a as i32 - *b as i32).abs() <= 1, "seed {seed} block {i}");
            }
            let t1 = <Q8_1 as Quantize<f32, QK>>::quantize(xb);
            assert_eq!(
                q1[i].d.0,
                t1.delta.to_le_bytes(),
                "Q8_1 d, seed {seed} block {i}"
            );
            let sum: i32 = want.iter().map(|&q| q as i32).sum();
            let s_want =
                F16Le::from_f32(sum as f32 * xb.iter().fold(0f32, |m, v| m.max(v.abs())) / 127.0);
            assert_eq!(q1[i].s.0, s_want.0, "Q8_1 s, seed {seed} block {i}");
            assert_eq!(q1[i].qs, want, "Q8_1 qs, seed {seed} block {i}");
        }

        // F16 and BF16 activations.
        let mut buf = ScratchBuf::zeroed(2 * n);
        quantize_row(GgmlType::F16, &x, buf.as_bytes_mut()).unwrap();
        for (c, &v) in buf.as_bytes().chunks_exact(2).zip(&x) {
            let t = <f16 as Quantize<f32, 1>>::quantize(&[v]);
            assert_eq!(c, t.to_le_bytes(), "f16 of {v}");
        }
        quantize_row(GgmlType::BF16, &x, buf.as_bytes_mut()).unwrap();
        for (c, &v) in buf.as_bytes().chunks_exact(2).zip(&x) {
            let t = <bf16 as Quantize<f32, 1>>::quantize(&[v]);
            assert_eq!(c, t.to_le_bytes(), "bf16 of {v}");
        }
    }
    // BF16 rounding on the edges: ties, carries into the exponent, infinities, NaN.
    let mut rng = Rng::new(9);
    let mut specials: Vec<u32> = vec![
        0x3f80_8000, // tie, even below: stays
        0x3f81_8000, // tie, odd below: rounds up
        0x3f80_8001,
        0x3fff_ffff, // carries into the exponent
        0x7f7f_ffff, // rounds to infinity
        0xff7f_ffff,
        0x7f80_0000,
        0xff80_0000,
        0x7f80_0001, // signalling NaN: made quiet
        0xffc0_0000,
        0x0000_0001, // denormals
        0x8000_8000,
        0,
        0x8000_0000,
    ];
    specials.extend((0..100_000).map(|_| rng.next_u64() as u32));
    for bits in specials {
        let v = f32::from_bits(bits);
        let ours = Bf16Le::from_f32(v).0;
        let theirs = <bf16 as Quantize<f32, 1>>::quantize(&[v]).to_le_bytes();
        assert_eq!(ours, theirs, "bf16 of {bits:#010x}");
    }
}

#[test]
fn dots_match_ggml_quants_dequantized_products() {
    for ty in SIMPLE {
        let act = ty.vec_dot_type();
        for seed in 0..10u64 {
            let n = 32 * (1 + seed as usize * 13);
            let w = random_weights(ty, n, seed + 100);
            let x = activations(seed, n.max(96));
            let x = &x[..n];
            let mut a = ScratchBuf::zeroed(act.row_bytes(n as u64).unwrap() as usize);
            quantize_row(act, x, a.as_bytes_mut()).unwrap();
            let got = vec_dot(ty, n, &w, a.as_bytes()).unwrap() as f64;

            // Their dequantized weights times their quantized-and-dequantized activations.
            let wd = their_dequant(ty, &w);
            let mut expected = 0f64;
            let mut magnitude = 0f64;
            for (bi, (wb, xb)) in wd.chunks_exact(QK).zip(x.chunks_exact(QK)).enumerate() {
                let xb: &[f32; QK] = xb.try_into().unwrap();
                let _ = xb;
                let ad: [f32; QK] = if act == GgmlType::Q8_1 {
                    let t = &as_blocks::<BlockQ8_1>(a.as_bytes()).unwrap()[bi];
                    // ggml's dot uses the stored f16 `s = d*sum(q)` for the min term: add
                    // m * (s - d*sum(q)), with m the weight block's min (bytes 2..4).
                    let sum: i32 = t.qs.iter().map(|&q| q as i32).sum();
                    let exact = t.d.to_f32() as f64 * sum as f64;
                    let m = h(&w[bi * ty.block_bytes() + 2..]).to_f32() as f64;
                    expected += m * (t.s.to_f32() as f64 - exact);
                    std::array::from_fn(|i| t.d.to_f32() * t.qs[i] as f32)
                } else {
                    let t = &as_blocks::<BlockQ8_0>(a.as_bytes()).unwrap()[bi];
                    std::array::from_fn(|i| t.d.to_f32() * t.qs[i] as f32)
                };
                for (p, q) in wb.iter().zip(&ad) {
                    expected += *p as f64 * *q as f64;
                    magnitude += (*p as f64 * *q as f64).abs();
                }
            }
            assert!(
                (got - expected).abs() <= 1e-6 * magnitude,
                "{ty} n={n} seed={seed}: {got} vs {expected} (|w.a| {magnitude})"
            );
            // Also sanity-check that the activation bytes decode through our block types.
            match act {
                GgmlType::Q8_0 => {
                    assert_eq!(as_blocks::<BlockQ8_0>(a.as_bytes()).unwrap().len(), n / QK)
                }
                _ => assert_eq!(as_blocks::<BlockQ8_1>(a.as_bytes()).unwrap().len(), n / QK),
            }
        }
    }
}
