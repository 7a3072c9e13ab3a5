//! The AVX2 kernels against the scalar reference.
//!
//! - Quantizers (Q8_0, Q8_1, Q8_K, F16, BF16): bit-exact with the scalar ones, which follow
//!   ggml's reference quantizers (so no tie tolerance is needed: the AVX2 code rounds exactly as
//!   the references do). NaN inputs are excluded, see `avx2.rs`.
//! - Dot products, on the *same* quantized activations: `|avx2 - scalar| <= 1e-5 * B`, where
//!   `B = Σ_i |w_i| · |a_i|` (in f64; for types with a min term, `|w_i|` is replaced by
//!   `|scale part| + |min part|`, because the kernels sum those two separately). Block sums are
//!   exact integers on both sides, so the kernels differ only in how the per-block f32 products
//!   are accumulated: the measured gap is ~1e-7 · B, while a wrong nibble, bit or scale moves
//!   the result by a sizeable fraction of B.
//! - The same through [`dot_kernel`] end to end (each ISA quantizing its own activations).
//!
//! Every test prints a message and passes when the CPU lacks AVX2/FMA/F16C. On other
//! architectures this file compiles to nothing.

#![cfg(target_arch = "x86_64")]

mod common;

use flashstream_formats::GgmlType;
use flashstream_runtime::kernels::scalar::{dequantize_row, quantize_row, vec_dot};
use flashstream_runtime::kernels::testutil::{random_activations, random_weights, Rng};
use flashstream_runtime::kernels::{avx2, dot_kernel, matvec, Isa, ScratchBuf};
use proptest::prelude::*;

const ACT_TYPES: [GgmlType; 5] = [
    GgmlType::Q8_0,
    GgmlType::Q8_1,
    GgmlType::Q8_K,
    GgmlType::F16,
    GgmlType::BF16,
];

const REL_TOL: f64 = 1e-5;

fn have_avx2() -> bool {
    let ok = Isa::Avx2.is_available();
    if !ok {
        println!("skipping: this CPU lacks AVX2+FMA+F16C");
    }
    ok
}

/// Lengths tried: one block, odd block counts, 4096; for float types also ragged tails.
fn lengths(ty: GgmlType) -> Vec<usize> {
    match ty.block_size() {
        256 => vec![256, 768, 1792, 4096],
        32 => vec![32, 96, 224, 1056, 4096],
        _ => vec![1, 7, 8, 31, 33, 100, 1000, 4096, 4099],
    }
}

fn quantize_scalar(act: GgmlType, x: &[f32]) -> ScratchBuf {
    let mut buf = ScratchBuf::zeroed(act.row_bytes(x.len() as u64).unwrap() as usize);
    quantize_row(act, x, buf.as_bytes_mut()).unwrap();
    buf
}

fn dequant(ty: GgmlType, bytes: &[u8], n: usize) -> Vec<f64> {
    let mut out = vec![0f32; n];
    dequantize_row(ty, bytes, &mut out).unwrap();
    out.into_iter().map(f64::from).collect()
}

/// Byte offsets of (scale, min) f16 fields, for weight types with a min term.
fn scale_min_fields(ty: GgmlType) -> Option<(usize, usize)> {
    match ty {
        GgmlType::Q4_1 | GgmlType::Q5_1 | GgmlType::Q4_K | GgmlType::Q5_K => Some((0, 2)),
        GgmlType::Q2_K => Some((80, 82)),
        _ => None,
    }
}

/// `|w_i|` for the error bound: for types with a min, `|scale part| + |min part|`, got by
/// dequantizing copies with the min or the scale zeroed.
fn abs_weights(ty: GgmlType, w: &[u8], n: usize) -> Vec<f64> {
    match scale_min_fields(ty) {
        None => dequant(ty, w, n).into_iter().map(f64::abs).collect(),
        Some((d_off, m_off)) => {
            let bb = ty.block_bytes();
            let zeroed = |off: usize| {
                let mut c = w.to_vec();
                for b in c.chunks_exact_mut(bb) {
                    b[off..off + 2].copy_from_slice(&[0, 0]);
                }
                dequant(ty, &c, n)
            };
            let scale_part = zeroed(m_off);
            let min_part = zeroed(d_off);
            scale_part
                .iter()
                .zip(&min_part)
                .map(|(s, m)| s.abs() + m.abs())
                .collect()
        }
    }
}

/// The error bound `B` of the module docs.
fn bound(ty: GgmlType, w: &[u8], a: &[u8], n: usize) -> f64 {
    let aw = abs_weights(ty, w, n);
    let act = dequant(ty.vec_dot_type(), a, n);
    aw.iter().zip(&act).map(|(w, a)| w * a.abs()).sum()
}

fn check_close(what: &str, got: f32, want: f32, b: f64) {
    let diff = (got as f64 - want as f64).abs();
    assert!(
        got.is_finite() && want.is_finite() && diff <= REL_TOL * b + 1e-30,
        "{what}: avx2 {got} vs scalar {want} (diff {diff:e}, allowed {:e})",
        REL_TOL * b
    );
}

#[test]
fn dot_products_match_scalar_on_same_activations() {
    if !have_avx2() {
        return;
    }
    let mut worst = 0.0f64;
    for ty in common::compute_types() {
        let dot = avx2::dot_fn(ty).unwrap_or_else(|| panic!("no AVX2 dot for {ty}"));
        for n in lengths(ty) {
            for seed in 1..=4u64 {
                let w = random_weights(ty, n, seed);
                let x = random_activations(n, seed * 31 + 7);
                let a = quantize_scalar(ty.vec_dot_type(), &x);
                let want = vec_dot(ty, n, &w, a.as_bytes()).unwrap();
                let got = dot(n, &w, a.as_bytes());
                let b = bound(ty, &w, a.as_bytes(), n);
                check_close(&format!("{ty} n={n} seed={seed}"), got, want, b);
                worst = worst.max((got as f64 - want as f64).abs() / b);
            }
        }
    }
    println!("worst |avx2 - scalar| / B = {worst:e}");
}

/// Weights that differ from the scalar kernel's view would be caught: flipping one quant byte
/// of one block changes the AVX2 result (the test above can fail).
#[test]
fn a_changed_quant_changes_the_dot() {
    if !have_avx2() {
        return;
    }
    // (type, offset of a quant byte inside a block)
    for (ty, off) in [
        (GgmlType::Q4_0, 10),
        (GgmlType::Q4_K, 100),
        (GgmlType::Q6_K, 50),
        (GgmlType::Q3_K, 40),
        (GgmlType::MXFP4, 9),
    ] {
        let n = 512;
        let mut w = random_weights(ty, n, 5);
        let x = random_activations(n, 6);
        let a = quantize_scalar(ty.vec_dot_type(), &x);
        let dot = avx2::dot_fn(ty).unwrap();
        let before = dot(n, &w, a.as_bytes());
        // Flip a byte in the quants of the last block.
        let last = w.len() - ty.block_bytes();
        w[last + off] ^= 0x5a;
        let after = dot(n, &w, a.as_bytes());
        let want = vec_dot(ty, n, &w, a.as_bytes()).unwrap();
        assert_ne!(before, after, "{ty}");
        check_close(
            &format!("{ty} flipped"),
            after,
            want,
            bound(ty, &w, a.as_bytes(), n),
        );
    }
}

/// Inputs for the quantizer tests: random rows plus rows built to hit the edge cases (ties at
/// .5 after scaling, zero blocks, repeated extremes of both signs, tiny, huge and infinite
/// values).
fn quantizer_inputs() -> Vec<Vec<f32>> {
    let mut rows = Vec::new();
    for (n, seed) in [(256, 1), (768, 2), (4096, 3), (1024, 4)] {
        rows.push(random_activations(n, seed));
    }
    // Ties: with amax = 127, d = 1 and every half-integer is a tie.
    let mut ties = Vec::new();
    for k in 0..512 {
        let v = if k % 32 == 0 {
            127.0
        } else {
            (k % 127) as f32 - 63.5
        };
        ties.push(if k % 3 == 0 { -v } else { v });
    }
    rows.push(ties);
    // Ties for Q8_K: iscale = -127 / max = 1 with max = -127.
    rows.push(
        (0..256)
            .map(|k| {
                if k == 5 {
                    -127.0
                } else {
                    (k % 100) as f32 * 0.5 - 25.0
                }
            })
            .collect(),
    );
    // A zero block between non-zero ones, and extremes of both signs (first one wins in Q8_K).
    let mut z = vec![0f32; 768];
    z[3] = -2.0;
    z[40] = 2.0;
    z[300] = 2.0;
    z[301] = -2.0;
    z[600] = 1e-40;
    z[700] = -1e-38;
    rows.push(z);
    // Huge and infinite values.
    let mut h = random_activations(512, 9);
    h[10] = 3e38;
    h[300] = f32::INFINITY;
    h[301] = f32::NEG_INFINITY;
    rows.push(h);
    let mut rng = Rng::new(77);
    rows.push((0..2048).map(|_| rng.uniform(-1e-3, 1e-3)).collect());
    rows
}

#[test]
fn quantizers_are_bit_exact_with_scalar() {
    if !have_avx2() {
        return;
    }
    for act in ACT_TYPES {
        let q = avx2::quantize_fn(act).unwrap_or_else(|| panic!("no AVX2 quantizer for {act}"));
        for (r, x) in quantizer_inputs().iter().enumerate() {
            let want = quantize_scalar(act, x);
            let mut got = ScratchBuf::zeroed(want.as_bytes().len());
            q(x, got.as_bytes_mut());
            if let Some(i) =
                (0..want.as_bytes().len()).find(|&i| got.as_bytes()[i] != want.as_bytes()[i])
            {
                panic!("{act} row {r}: first differing byte {i}");
            }
        }
    }
    // Ragged lengths for the float conversions.
    for act in [GgmlType::F16, GgmlType::BF16] {
        let q = avx2::quantize_fn(act).unwrap();
        for n in [0, 1, 7, 15, 16, 17, 33, 1001] {
            let x = random_activations(n, n as u64);
            let want = quantize_scalar(act, &x);
            let mut got = ScratchBuf::zeroed(2 * n);
            q(&x, got.as_bytes_mut());
            assert_eq!(got.as_bytes(), want.as_bytes(), "{act} n={n}");
        }
    }
}

#[test]
fn float_conversions_keep_special_values() {
    if !have_avx2() {
        return;
    }
    let mut x = vec![
        0.0,
        -0.0,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        -f32::NAN,
        f32::from_bits(0x7f80_0001),
        f32::MAX,
        f32::MIN_POSITIVE,
        1e-45,
        65504.0,
        65520.0,
        1.0 + f32::EPSILON,
        f32::from_bits(0x3f80_8000),
        f32::from_bits(0x3f81_8000),
        f32::from_bits(0x7f7f_ffff),
    ];
    x.extend(random_activations(16, 3));
    for act in [GgmlType::F16, GgmlType::BF16] {
        let q = avx2::quantize_fn(act).unwrap();
        let want = quantize_scalar(act, &x);
        let mut got = ScratchBuf::zeroed(2 * x.len());
        q(&x, got.as_bytes_mut());
        assert_eq!(got.as_bytes(), want.as_bytes(), "{act}");
    }
}

#[test]
fn dot_kernel_avx2_matches_scalar_end_to_end() {
    if !have_avx2() {
        return;
    }
    for ty in common::compute_types() {
        let k_avx = dot_kernel(Isa::Avx2, ty).unwrap();
        let k_ref = dot_kernel(Isa::Scalar, ty).unwrap();
        assert_eq!(k_avx.act_type, k_ref.act_type);
        for n in lengths(ty) {
            for seed in [11u64, 12] {
                let w = random_weights(ty, n, seed);
                let x = random_activations(n, seed + 100);
                let bytes = k_ref.act_type.row_bytes(n as u64).unwrap() as usize;
                let (mut a_avx, mut a_ref) = (ScratchBuf::zeroed(bytes), ScratchBuf::zeroed(bytes));
                (k_avx.quantize)(&x, a_avx.as_bytes_mut());
                (k_ref.quantize)(&x, a_ref.as_bytes_mut());
                assert_eq!(a_avx.as_bytes(), a_ref.as_bytes(), "{ty} n={n} activations");
                let got = (k_avx.dot)(n, &w, a_avx.as_bytes());
                let want = (k_ref.dot)(n, &w, a_ref.as_bytes());
                check_close(
                    &format!("{ty} n={n} seed={seed} via dot_kernel"),
                    got,
                    want,
                    bound(ty, &w, a_ref.as_bytes(), n),
                );
            }
        }
    }
}

/// The four-row dot products equal four one-row ones bit for bit (lengths with and without a
/// tail of fewer than four blocks); a bad length in any row gives NaN for all four.
#[test]
fn four_row_dots_equal_one_row_dots_bit_for_bit() {
    if !have_avx2() {
        return;
    }
    let mut covered = 0;
    for ty in common::compute_types() {
        let Some(dot4) = avx2::dot4_fn(ty) else {
            continue;
        };
        covered += 1;
        let dot = avx2::dot_fn(ty).unwrap();
        for n in lengths(ty).into_iter().chain([256, 1280]) {
            let w = random_weights(ty, n, 5);
            let acts: Vec<ScratchBuf> = (0..4)
                .map(|i| quantize_scalar(ty.vec_dot_type(), &random_activations(n, 40 + i)))
                .collect();
            let a = [0, 1, 2, 3].map(|i| acts[i].as_bytes());
            let got = dot4(n, &w, a);
            for i in 0..4 {
                assert_eq!(
                    got[i].to_bits(),
                    dot(n, &w, a[i]).to_bits(),
                    "{ty} n={n} row {i}"
                );
            }
            let short = &a[2][..a[2].len() - 1];
            let bad = dot4(n, &w, [a[0], a[1], short, a[3]]);
            assert!(bad.iter().all(|v| v.is_nan()), "{ty} n={n} short row");
        }
    }
    assert_eq!(
        covered, 10,
        "the 32-weight block types, Q4_K, Q5_K and Q6_K have four-row kernels"
    );
}

/// The many-row dot products equal one-row ones bit for bit for every count of rows (groups
/// of four and the rest), at a stride and with strided output; lengths that do not fit give
/// NaN in every output.
#[test]
fn many_row_dots_equal_one_row_dots_bit_for_bit() {
    if !have_avx2() {
        return;
    }
    let mut covered = 0;
    for ty in common::compute_types() {
        let Some(rows) = avx2::dot_rows_fn(ty) else {
            continue;
        };
        covered += 1;
        let dot = avx2::dot_fn(ty).unwrap();
        let n = 2 * ty.block_size().max(32) * 3;
        let w = random_weights(ty, n, 9);
        let act = ty.vec_dot_type();
        let a_row = act.row_bytes(n as u64).unwrap() as usize;
        let kernel = dot_kernel(Isa::Avx2, ty).unwrap();
        let stride = matvec::act_row_stride(&kernel, n).unwrap();
        for n_tok in [1, 3, 4, 5, 8, 11] {
            let x: Vec<f32> = (0..n_tok)
                .flat_map(|t| random_activations(n, 100 + t as u64))
                .collect();
            let mut a = ScratchBuf::default();
            matvec::quantize_rows(&kernel, &x, n, &mut a).unwrap();
            let mut out = vec![0f32; 3 * n_tok];
            rows(n, &w, a.as_bytes(), stride, n_tok, &mut out, 3);
            for t in 0..n_tok {
                let want = dot(n, &w, &a.as_bytes()[t * stride..t * stride + a_row]);
                assert_eq!(
                    out[3 * t].to_bits(),
                    want.to_bits(),
                    "{ty} n_tok={n_tok} row {t}"
                );
                assert_eq!(out[3 * t + 1], 0.0, "{ty}: wrote between outputs");
            }
            let short = &a.as_bytes()[..a.as_bytes().len() - stride + a_row - 1];
            rows(n, &w, short, stride, n_tok, &mut out, 3);
            assert!(
                (0..n_tok).all(|t| out[3 * t].is_nan()),
                "{ty} n_tok={n_tok}: short activations"
            );
            let mut small = vec![0f32; 3 * (n_tok - 1)];
            rows(n, &w, a.as_bytes(), stride, n_tok, &mut small, 3);
            assert!(
                (0..n_tok - 1).all(|t| small[3 * t].is_nan()),
                "{ty} n_tok={n_tok}: short output"
            );
            rows(
                n,
                &w[..w.len() - 1],
                a.as_bytes(),
                stride,
                n_tok,
                &mut out,
                3,
            );
            assert!(
                (0..n_tok).all(|t| out[3 * t].is_nan()),
                "{ty}: short weights"
            );
        }
    }
    assert_eq!(
        covered, 10,
        "the types with four-row kernels have many-row ones"
    );
}

/// How a tile kernel's results must relate to the one-row kernel's.
#[derive(Clone, Copy, PartialEq)]
enum Agreement {
    /// Bit for bit (the llama.cpp-order tiles).
    Exact,
    /// Within 1e-5 of the largest result of the call (the fast tiles, which scale four
    /// blocks at once; a wrong lane, scale or offset is off by the result's own size).
    Close,
}

/// A tile kernel family (`rows_fn` per build and type) against the one-row kernel, every
/// build this CPU runs: over rows with whole groups of four blocks and leftovers, tiles of
/// four activation rows and remainders, blocks of weight rows, and buffers that do not fit
/// (NaN, as the one-row kernel). `packed`: the activations carry the packed copy.
fn check_tiles(
    rows_fn: fn(
        flashstream_runtime::kernels::avx2::tile::TileIsa,
        GgmlType,
    ) -> Option<flashstream_runtime::kernels::DotActRowsFn>,
    packed: bool,
    agreement: Agreement,
) -> usize {
    use flashstream_runtime::kernels::avx2::tile::TileIsa;
    let agree = |got: f32, want: f32, scale: f32, what: &dyn Fn() -> String| match agreement {
        Agreement::Exact => {
            assert_eq!(got.to_bits(), want.to_bits(), "{}: {got} vs {want}", what())
        }
        Agreement::Close => assert!(
            (got - want).abs() <= 1e-5 * scale,
            "{}: {got} vs {want} (scale {scale})",
            what()
        ),
    };
    let mut covered = 0;
    for isa in [TileIsa::Avx2, TileIsa::AvxVnni, TileIsa::Avx512Vnni] {
        if !isa.is_available() {
            eprintln!("tile build {isa:?} not available on this CPU; skipped");
            continue;
        }
        for ty in common::compute_types() {
            let Some(rows) = rows_fn(isa, ty) else {
                continue;
            };
            covered += 1;
            let dot = avx2::dot_fn(ty).unwrap();
            let act = ty.vec_dot_type();
            let mut kernel = dot_kernel(Isa::Avx2, ty).unwrap();
            kernel.packed_act = packed;
            let lengths: &[(usize, u64)] = if ty.block_size() == 256 {
                &[(256, 1), (768, 2), (2560, 3)]
            } else {
                &[(128, 1), (192, 2), (640, 3), (96, 4), (1056, 5)]
            };
            for &(n, seed) in lengths {
                let w = random_weights(ty, n, seed);
                let a_row = act.row_bytes(n as u64).unwrap() as usize;
                let stride = matvec::act_row_stride(&kernel, n).unwrap();
                for n_tok in [1, 3, 4, 5, 8, 11] {
                    let x: Vec<f32> = (0..n_tok)
                        .flat_map(|t| random_activations(n, 200 + seed * 16 + t as u64))
                        .collect();
                    let mut a = ScratchBuf::default();
                    matvec::quantize_rows(&kernel, &x, n, &mut a).unwrap();
                    let mut out = vec![0f32; 2 * n_tok];
                    rows(n, &w, a.as_bytes(), stride, n_tok, &mut out, 2);
                    let wants: Vec<f32> = (0..n_tok)
                        .map(|t| dot(n, &w, &a.as_bytes()[t * stride..t * stride + a_row]))
                        .collect();
                    let scale = wants.iter().fold(0f32, |m, v| m.max(v.abs()));
                    for t in 0..n_tok {
                        agree(out[2 * t], wants[t], scale, &|| {
                            format!("{isa:?} {ty} n={n} n_tok={n_tok} row {t}")
                        });
                        assert_eq!(out[2 * t + 1], 0.0, "{ty}: wrote between outputs");
                    }
                    let short = &a.as_bytes()[..a.as_bytes().len() - stride + a_row - 1];
                    rows(n, &w, short, stride, n_tok, &mut out, 2);
                    assert!(
                        (0..n_tok).all(|t| out[2 * t].is_nan()),
                        "{isa:?} {ty} n_tok={n_tok}: short activations"
                    );
                    rows(
                        n,
                        &w[..w.len() - 1],
                        a.as_bytes(),
                        stride,
                        n_tok,
                        &mut out,
                        2,
                    );
                    assert!(
                        (0..n_tok).all(|t| out[2 * t].is_nan()),
                        "{isa:?} {ty}: short weights"
                    );
                    // A block of weight rows (more than one unpacked block of 16), results
                    // at t * out_stride + r.
                    let m = 18;
                    let wm: Vec<u8> = (0..m)
                        .flat_map(|r| random_weights(ty, n, seed * 100 + r as u64))
                        .collect();
                    let w_row = ty.row_bytes(n as u64).unwrap() as usize;
                    let os = m + 1;
                    let mut outm = vec![0f32; os * n_tok];
                    rows(n, &wm, a.as_bytes(), stride, n_tok, &mut outm, os);
                    let mut wantm = vec![0f32; os * n_tok];
                    for t in 0..n_tok {
                        let at = &a.as_bytes()[t * stride..t * stride + a_row];
                        for r in 0..m {
                            wantm[t * os + r] = dot(n, &wm[r * w_row..(r + 1) * w_row], at);
                        }
                    }
                    let scale = wantm.iter().fold(0f32, |m, v| m.max(v.abs()));
                    for t in 0..n_tok {
                        for r in 0..m {
                            agree(outm[t * os + r], wantm[t * os + r], scale, &|| {
                                format!("{isa:?} {ty} n={n} n_tok={n_tok} block row {r} token {t}")
                            });
                        }
                        assert_eq!(outm[t * os + m], 0.0, "{ty}: wrote past the block");
                    }
                }
            }
        }
    }
    covered
}

/// The llama.cpp-order tile kernels (`Numerics::Llama`, and the K-quants either way) equal the
/// one-row kernel bit for bit, with or without the packed activation copy.
#[test]
fn tile_dots_equal_one_row_dots_bit_for_bit() {
    use flashstream_runtime::kernels::avx2::tile::tile_rows_fn;
    if !have_avx2() {
        return;
    }
    for packed in [false, true] {
        let covered = check_tiles(tile_rows_fn, packed, Agreement::Exact);
        assert!(
            covered >= 7,
            "the AVX2 build covers at least the 4/5-bit types and the K-quants"
        );
    }
}

/// The fast tile kernels (`Numerics::Fast`) agree with the one-row kernel to rounding.
#[test]
fn fast_tile_dots_agree_with_one_row_dots() {
    use flashstream_runtime::kernels::avx2::tile_fast::fast_tile_rows_fn;
    if !have_avx2() {
        return;
    }
    let covered = check_tiles(fast_tile_rows_fn, true, Agreement::Close);
    assert!(
        covered >= 4,
        "the AVX2 build covers at least the four 4/5-bit types"
    );
}

#[test]
fn many_weight_row_dots_equal_one_row_dots_bit_for_bit() {
    if !have_avx2() {
        return;
    }
    let mut covered = 0;
    for ty in common::compute_types() {
        let Some(many) = avx2::dot_many_fn(ty) else {
            continue;
        };
        covered += 1;
        let dot = avx2::dot_fn(ty).unwrap();
        let n = ty.block_size().max(32) * 8;
        let rows = 7;
        let w_row = ty.row_bytes(n as u64).unwrap() as usize;
        let w = random_weights(ty, n * rows, 21);
        let a = quantize_scalar(ty.vec_dot_type(), &random_activations(n, 22));
        let mut out = vec![0f32; rows];
        many(n, &w, a.as_bytes(), &mut out);
        for (r, o) in out.iter().enumerate() {
            let want = dot(n, &w[r * w_row..(r + 1) * w_row], a.as_bytes());
            assert_eq!(o.to_bits(), want.to_bits(), "{ty} row {r}");
        }
        // The row as quantize_rows lays it out (with the scale tables, where the type has
        // them): the same results.
        let kernel = dot_kernel(Isa::Avx2, ty).unwrap();
        let mut full = ScratchBuf::default();
        let x = random_activations(n, 22);
        matvec::quantize_rows(&kernel, &x, n, &mut full).unwrap();
        let mut out2 = vec![0f32; rows];
        many(n, &w, full.as_bytes(), &mut out2);
        for (r, (o, o2)) in out.iter().zip(&out2).enumerate() {
            assert_eq!(o.to_bits(), o2.to_bits(), "{ty} row {r}, with scale tables");
        }
        many(n, &w[..w.len() - 1], a.as_bytes(), &mut out);
        assert!(out.iter().all(|v| v.is_nan()), "{ty}: short weights");
        let mut out = vec![0f32; rows];
        many(n, &w, &a.as_bytes()[1..], &mut out);
        assert!(out.iter().all(|v| v.is_nan()), "{ty}: short activations");
    }
    assert_eq!(covered, 13, "every block type has a many-weight-row kernel");
}

#[test]
fn bad_lengths_give_nan_and_poisoned_output_like_scalar() {
    if !have_avx2() {
        return;
    }
    for ty in common::compute_types() {
        let dot = avx2::dot_fn(ty).unwrap();
        let n = 512;
        let w = random_weights(ty, n, 1);
        let a = quantize_scalar(ty.vec_dot_type(), &random_activations(n, 2));
        let (w, a) = (&w[..], a.as_bytes());
        assert!(dot(n, w, a).is_finite(), "{ty}");
        assert!(dot(n, &w[..w.len() - 1], a).is_nan(), "{ty} short weights");
        assert!(
            dot(n, w, &a[..a.len() - 2]).is_nan(),
            "{ty} short activations"
        );
        assert!(dot(n - 1, w, a).is_nan(), "{ty} n not matching");
        if ty.block_size() > 1 {
            assert!(dot(n + 1, w, a).is_nan(), "{ty} partial block");
        }
    }
    for act in ACT_TYPES {
        let q = avx2::quantize_fn(act).unwrap();
        let x = random_activations(512, 3);
        let good = act.row_bytes(512).unwrap() as usize;
        let mut out = ScratchBuf::zeroed(good + 8);
        q(&x, &mut out.as_bytes_mut()[..good - 2]);
        assert!(
            out.as_bytes()[..good - 2].iter().all(|&b| b == 0xff),
            "{act} short output"
        );
        if act.block_size() > 1 {
            let mut out = ScratchBuf::zeroed(good);
            q(&x[..511], out.as_bytes_mut());
            assert!(
                out.as_bytes().iter().all(|&b| b == 0xff),
                "{act} partial block"
            );
        }
    }
}

#[test]
fn misaligned_q8k_activations_are_copied_not_rejected() {
    if !have_avx2() {
        return;
    }
    let ty = GgmlType::Q4_K;
    let n = 1024;
    let w = random_weights(ty, n, 8);
    let a = quantize_scalar(GgmlType::Q8_K, &random_activations(n, 9));
    let mut shifted = ScratchBuf::zeroed(a.as_bytes().len() + 1);
    shifted.as_bytes_mut()[1..].copy_from_slice(a.as_bytes());
    let dot = avx2::dot_fn(ty).unwrap();
    let aligned = dot(n, &w, a.as_bytes());
    let unaligned = dot(n, &w, &shifted.as_bytes()[1..]);
    assert_eq!(aligned.to_bits(), unaligned.to_bits());
}

/// Random blocks with *any* quant bytes (and the activation pattern drawn by proptest),
/// against the scalar reference.
fn prop_dot(ty: GgmlType, blocks: usize, seed: u64, x: &[f32]) -> Result<(), TestCaseError> {
    let n = blocks * ty.block_size();
    let w = random_weights(ty, n, seed);
    let x: Vec<f32> = x.iter().cycle().take(n).copied().collect();
    let a = quantize_scalar(ty.vec_dot_type(), &x);
    let want = vec_dot(ty, n, &w, a.as_bytes()).unwrap();
    let got = avx2::dot_fn(ty).unwrap()(n, &w, a.as_bytes());
    let b = bound(ty, &w, a.as_bytes(), n);
    let diff = (got as f64 - want as f64).abs();
    prop_assert!(
        diff <= REL_TOL * b + 1e-30,
        "{} blocks={} seed={}: {} vs {}",
        ty,
        blocks,
        seed,
        got,
        want
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn prop_q4_0_q5_1_iq4_nl_mxfp4(blocks in 1usize..40, seed in any::<u64>(),
                             x in prop::collection::vec(-50f32..50f32, 1..300)) {
        if Isa::Avx2.is_available() {
            prop_dot(GgmlType::Q4_0, blocks, seed, &x)?;
            prop_dot(GgmlType::Q5_1, blocks, seed, &x)?;
            prop_dot(GgmlType::IQ4_NL, blocks, seed, &x)?;
            prop_dot(GgmlType::MXFP4, blocks, seed, &x)?;
        }
    }

    #[test]
    fn prop_k_quants(blocks in 1usize..6, seed in any::<u64>(),
                     x in prop::collection::vec(-50f32..50f32, 1..600)) {
        if Isa::Avx2.is_available() {
            for ty in [GgmlType::Q2_K, GgmlType::Q3_K, GgmlType::Q4_K, GgmlType::Q5_K,
                       GgmlType::Q6_K, GgmlType::IQ4_XS] {
                prop_dot(ty, blocks, seed, &x)?;
            }
        }
    }

    #[test]
    fn prop_quantizers_bit_exact(x in prop::collection::vec(
        prop_oneof![-1e4f32..1e4f32, -1f32..1f32, Just(0.0f32), (-200i32..200).prop_map(|v| v as f32 * 0.5)],
        1..600)) {
        if Isa::Avx2.is_available() {
            for act in ACT_TYPES {
                let bs = act.block_size();
                let m = x.len() / bs * bs;
                let want = quantize_scalar(act, &x[..m]);
                let mut got = ScratchBuf::zeroed(want.as_bytes().len());
                avx2::quantize_fn(act).unwrap()(&x[..m], got.as_bytes_mut());
                prop_assert_eq!(got.as_bytes(), want.as_bytes(), "{}", act);
            }
        }
    }
}

/// Rows cut from real GGUF models (`testdata/golden/dequant_rows.jsonl`: Q8_0, Q4_1, Q5_0,
/// Q4_K, Q5_K, Q6_K, Q2_K, Q3_K, F16, F32), dotted with random activations: real scale and
/// quant distributions, not just random bytes.
#[test]
fn real_model_rows_match_scalar() {
    if !have_avx2() {
        return;
    }
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../testdata/golden/dequant_rows.jsonl"
    );
    let text = std::fs::read_to_string(path).expect("testdata/golden/dequant_rows.jsonl");
    let mut checked = 0;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let rec: serde_json::Value = serde_json::from_str(line).unwrap();
        let ty = GgmlType::from_name(rec["type"].as_str().unwrap()).unwrap();
        let n = rec["row_len"].as_u64().unwrap() as usize;
        let row_bytes = rec["row_bytes"].as_u64().unwrap() as usize;
        let hex = rec["hex"].as_str().unwrap().as_bytes();
        let bytes: Vec<u8> = hex
            .chunks_exact(2)
            .map(|h| u8::from_str_radix(std::str::from_utf8(h).unwrap(), 16).unwrap())
            .collect();
        let dot = avx2::dot_fn(ty).unwrap();
        for (r, w) in bytes.chunks_exact(row_bytes).enumerate() {
            let x = random_activations(n, r as u64 + 5);
            let a = quantize_scalar(ty.vec_dot_type(), &x);
            let want = vec_dot(ty, n, w, a.as_bytes()).unwrap();
            let got = dot(n, w, a.as_bytes());
            let what = format!("{} {} row {r}", rec["model"], rec["tensor"]);
            check_close(&what, got, want, bound(ty, w, a.as_bytes(), n));
            checked += 1;
        }
    }
    assert!(checked >= 20, "only {checked} rows checked");
}
