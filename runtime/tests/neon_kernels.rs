//! The aarch64 NEON kernels — plain NEON and `sdot` (dotprod) variants — against the scalar
//! reference. On other architectures this file compiles to nothing.
//!
//! What is checked, and how tightly:
//! - Activation quantizers (Q8_0, Q8_1, Q8_K): byte-for-byte equal to the scalar ones. They
//!   perform the same f32 operations with the same rounding (half to even, as ggml's x86
//!   quantizers), so no ±1 allowance is needed; rounding ties, zero, subnormal, huge
//!   and infinite blocks are tested explicitly.
//! - Dots on realistic data (testutil's random weights, random activations quantized by the
//!   scalar quantizer): `|neon - scalar| <= 1e-5 * Σ|w_i·a_i|` (dequantized values). Both
//!   kernels compute each block's integer sum exactly and differ only in the order of the f32
//!   scaling and accumulation (a few ulps of the block terms), so a correct kernel is orders
//!   of magnitude inside the bound, while one wrong quant moves the result by far more.
//! - Dots where every scale is a power of two and the integer totals stay below 2^24: every
//!   f32 operation is exact, so NEON, scalar and the f64 sum of the dequantized products must
//!   agree bit for bit (this catches any single wrong quant, bit or scale).
//! - Plain NEON and `sdot` results are bit-identical for the K-quants (same exact integer
//!   sums, same float operations) and within the dot tolerance for the 32-weight blocks (whose
//!   lanes are scaled separately, and the variants group products into lanes differently).
//! - End to end through `dot_kernel(Isa::Neon | Isa::NeonDotprod, ty)`, and odd inputs
//!   (wrong lengths, misaligned activations) behave exactly like the scalar entry points.
//!
//! - The tile (batch) kernels, every build the CPU runs (plain NEON, `sdot`, `smmla`): bit for
//!   bit equal to the one-row kernel of the same level, for blocks of weight rows against
//!   tiles of activation rows and their remainders, also through `matmul`.
//!
//! `FLASHSTREAM_EXPECT_DOTPROD=1` (or `0`) makes the run fail if the CPU (or qemu's model of
//! it) does not (or does) report dotprod, so a CI run cannot silently skip the `sdot` path;
//! `FLASHSTREAM_EXPECT_I8MM` does the same for i8mm and the `smmla` tiles.
#![cfg(target_arch = "aarch64")]

mod common;

use flashstream_formats::blocks::{BlockQ8K, BlockQ8_0, BlockQ8_1, F16Le};
use flashstream_formats::GgmlType;
use flashstream_runtime::kernels::neon::tile::{tile_rows_fn, TileIsa};
use flashstream_runtime::kernels::testutil::{random_activations, random_weights, Rng};
use flashstream_runtime::kernels::{dot_kernel, matvec, neon, scalar, Isa, ScratchBuf};
use flashstream_runtime::pool::WorkerPool;

const ACT_TYPES: [GgmlType; 3] = [GgmlType::Q8_0, GgmlType::Q8_1, GgmlType::Q8_K];

const DOT_REL_TOL: f64 = 1e-5;

const SEEDS: [u64; 3] = [1, 0xdead_beef, 77];

fn all_types() -> impl Iterator<Item = GgmlType> {
    common::quant_types().into_iter().chain(common::FLOAT_TYPES)
}

/// Lengths per type: single, odd and larger block counts (kept small: these run under qemu).
fn lengths(ty: GgmlType) -> Vec<usize> {
    match ty.block_size() {
        256 => vec![256, 768, 2048],
        32 => vec![32, 96, 1024],
        _ => vec![1, 7, 64, 1000],
    }
}

/// The two NEON variants: `(name, dotprod requested)`.
const VARIANTS: [(&str, bool); 2] = [("plain", false), ("sdot", true)];

fn quantize_scalar(act: GgmlType, x: &[f32]) -> ScratchBuf {
    let mut buf = ScratchBuf::zeroed(act.row_bytes(x.len() as u64).unwrap() as usize);
    scalar::quantize_row(act, x, buf.as_bytes_mut()).unwrap();
    buf
}

fn dequant(ty: GgmlType, bytes: &[u8], n: usize) -> Vec<f64> {
    let mut out = vec![0f32; n];
    scalar::dequantize_row(ty, bytes, &mut out).unwrap();
    out.into_iter().map(f64::from).collect()
}

/// `Σ|w_i·a_i|` of the dequantized rows, and their exact (f64) dot.
fn magnitude_and_exact(ty: GgmlType, w: &[u8], a: &[u8], n: usize) -> (f64, f64) {
    let wd = dequant(ty, w, n);
    let ad = dequant(ty.vec_dot_type(), a, n);
    let mag = wd.iter().zip(&ad).map(|(x, y)| (x * y).abs()).sum();
    let exact = wd.iter().zip(&ad).map(|(x, y)| x * y).sum();
    (mag, exact)
}

fn neon_dot(ty: GgmlType, dotprod: bool) -> flashstream_runtime::kernels::DotFn {
    neon::dot_fn(ty, dotprod).unwrap_or_else(|| panic!("no NEON dot for {ty}"))
}

fn scalar_dot(ty: GgmlType) -> flashstream_runtime::kernels::DotFn {
    scalar::dot_fn(ty).unwrap()
}

#[test]
fn dotprod_detection_matches_expectation() {
    let has = neon::has_dotprod();
    eprintln!("dotprod detected: {has}");
    match std::env::var("FLASHSTREAM_EXPECT_DOTPROD").as_deref() {
        Ok("1") => assert!(has, "dotprod expected but not detected"),
        Ok("0") => assert!(!has, "dotprod detected but not expected"),
        _ => {}
    }
    assert_eq!(Isa::NeonDotprod.is_available(), has);
    assert!(Isa::Neon.is_available());
}

#[test]
fn every_compute_type_has_neon_kernels() {
    for ty in all_types() {
        for (_, dp) in VARIANTS {
            assert!(neon::dot_fn(ty, dp).is_some(), "{ty}");
        }
    }
    for act in ACT_TYPES {
        assert!(neon::quantize_fn(act).is_some(), "{act}");
    }
    assert!(neon::dot_fn(GgmlType::IQ2_XXS, true).is_none());
    assert!(neon::quantize_fn(GgmlType::Q4_0).is_none());
}

// ---------------------------------------------------------------------------------------------
// Quantizers

fn check_quantizer_matches(act: GgmlType, x: &[f32], what: &str) {
    let want = quantize_scalar(act, x);
    let mut got = ScratchBuf::zeroed(want.as_bytes().len());
    (neon::quantize_fn(act).unwrap())(x, got.as_bytes_mut());
    if got.as_bytes() != want.as_bytes() {
        let bb = act.block_bytes();
        let blk = got
            .as_bytes()
            .chunks(bb)
            .zip(want.as_bytes().chunks(bb))
            .position(|(g, w)| g != w)
            .unwrap();
        panic!(
            "{act} quantizer differs from scalar ({what}, n = {}), first in block {blk}:\n neon   {:?}\n scalar {:?}",
            x.len(),
            &got.as_bytes()[blk * bb..(blk + 1) * bb],
            &want.as_bytes()[blk * bb..(blk + 1) * bb]
        );
    }
}

#[test]
fn quantizers_match_scalar_bit_for_bit() {
    for act in ACT_TYPES {
        for n in [256, 1024, 4096] {
            for seed in SEEDS {
                check_quantizer_matches(act, &random_activations(n, seed), "random");
            }
        }
        // Per 256-value block: zeros; subnormals (the Q8_K scale becomes infinite); huge
        // values; small integers with a ±max tie (the first of -7, 7 sets the Q8_K sign);
        // infinities.
        let mut rng = Rng::new(5);
        let mut x = vec![0.0f32; 1280];
        for (i, v) in x.iter_mut().enumerate().skip(256) {
            let u = rng.uniform(-1.0, 1.0);
            *v = match i / 256 {
                1 => u * 1e-40,
                2 => u * 3e30,
                3 => (u * 6.0).round(),
                _ => u,
            };
        }
        x[770] = -7.0;
        x[771] = 7.0;
        x[1030] = f32::INFINITY;
        x[1200] = f32::NEG_INFINITY;
        if act == GgmlType::Q8_K {
            // Q8_K matches the scalar code even with NaNs (Q8_0/Q8_1 do not: see neon.rs).
            x[1100] = f32::NAN;
        }
        check_quantizer_matches(act, &x, "special values");
    }
}

#[test]
fn quantizer_rounding_ties() {
    // Q8_0/Q8_1: amax = 127 makes id = 1, so x*id = x exactly: ties round to even.
    let mut x = vec![0.0f32; 32];
    x[0] = 127.0;
    let ties = [0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 126.5, -126.5];
    x[1..9].copy_from_slice(&ties);
    for act in [GgmlType::Q8_0, GgmlType::Q8_1] {
        let mut out = ScratchBuf::zeroed(act.row_bytes(32).unwrap() as usize);
        (neon::quantize_fn(act).unwrap())(&x, out.as_bytes_mut());
        let qs_at = if act == GgmlType::Q8_0 { 2 } else { 4 };
        let qs: Vec<i8> = out.as_bytes()[qs_at..qs_at + 9]
            .iter()
            .map(|&b| b as i8)
            .collect();
        assert_eq!(qs, [127, 0, 2, 2, 0, -2, -2, 126, -126], "{act}");
        check_quantizer_matches(act, &x, "ties");
    }
    // Q8_K: max = -127 makes iscale = 1: ties round to even.
    let mut x = vec![0.0f32; 256];
    x[0] = -127.0;
    x[1..9].copy_from_slice(&ties);
    let mut out = ScratchBuf::zeroed(GgmlType::Q8_K.row_bytes(256).unwrap() as usize);
    (neon::quantize_fn(GgmlType::Q8_K).unwrap())(&x, out.as_bytes_mut());
    let b: &BlockQ8K = &bytemuck::cast_slice(out.as_bytes())[0];
    assert_eq!(b.d, 1.0);
    assert_eq!(&b.qs[..9], &[-127, 0, 2, 2, 0, -2, -2, 126, -126]);
    assert_eq!(b.bsums[0], -127 + 2 + 2 - 2 - 2 + 126 - 126);
    check_quantizer_matches(GgmlType::Q8_K, &x, "ties");
}

// ---------------------------------------------------------------------------------------------
// Dots

#[test]
fn dots_match_scalar_within_tolerance() {
    let mut worst = 0.0f64;
    for ty in all_types() {
        let act = ty.vec_dot_type();
        for n in lengths(ty) {
            for seed in SEEDS {
                let w = random_weights(ty, n, seed);
                let a = quantize_scalar(act, &random_activations(n, seed + 1));
                let (mag, _) = magnitude_and_exact(ty, &w, a.as_bytes(), n);
                let want = scalar_dot(ty)(n, &w, a.as_bytes()) as f64;
                assert!(
                    want.is_finite() && mag > 0.0,
                    "{ty} n={n}: degenerate test data"
                );
                for (name, dp) in VARIANTS {
                    let got = neon_dot(ty, dp)(n, &w, a.as_bytes()) as f64;
                    let diff = (got - want).abs();
                    assert!(
                        diff <= DOT_REL_TOL * mag,
                        "{ty} {name} n={n} seed={seed}: neon {got} scalar {want} \
                         (|diff| {diff:e} > {DOT_REL_TOL:e} * {mag})"
                    );
                    worst = worst.max(diff / mag);
                }
            }
        }
    }
    eprintln!("largest |neon - scalar| / Σ|w·a|: {worst:e}");
}

#[test]
fn plain_and_sdot_agree() {
    for ty in common::quant_types() {
        for n in lengths(ty) {
            let w = random_weights(ty, n, n as u64);
            let a = quantize_scalar(ty.vec_dot_type(), &random_activations(n, 9));
            let (mag, _) = magnitude_and_exact(ty, &w, a.as_bytes(), n);
            let plain = neon_dot(ty, false)(n, &w, a.as_bytes());
            let sdot = neon_dot(ty, true)(n, &w, a.as_bytes());
            if ty.block_size() == 256 {
                // K-quants reduce each super-block's integer sum before any float operation,
                // so the two variants perform identical float operations.
                assert_eq!(
                    plain.to_bits(),
                    sdot.to_bits(),
                    "{ty} n={n}: {plain} vs {sdot}"
                );
            } else {
                // 32-weight blocks scale the four integer lanes separately, and the variants
                // group products into lanes differently.
                let diff = (plain as f64 - sdot as f64).abs();
                assert!(diff <= DOT_REL_TOL * mag, "{ty} n={n}: {plain} vs {sdot}");
            }
        }
    }
}

/// Byte offsets of the f16 scale fields of a block: `d` first, then `m`/`dmin` if any.
fn scale_fields(ty: GgmlType) -> &'static [usize] {
    match ty {
        GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q8_0 | GgmlType::IQ4_NL => &[0],
        GgmlType::IQ4_XS => &[0],
        GgmlType::Q4_1 | GgmlType::Q5_1 | GgmlType::Q4_K | GgmlType::Q5_K => &[0, 2],
        GgmlType::Q2_K => &[80, 82],
        GgmlType::Q3_K => &[108],
        GgmlType::Q6_K => &[208],
        // The E8M0 exponent byte is a power of two by construction (set in `pow2_weights`).
        GgmlType::MXFP4 => &[],
        _ => unreachable!("{ty}"),
    }
}

/// Weights of `ty` with random quants and power-of-two scales (`d = ±1/16`, `m = 1/16`;
/// MXFP4: half scales 2^-2 ..= 2^0).
fn pow2_weights(ty: GgmlType, n: usize, seed: u64) -> Vec<u8> {
    let mut w = random_weights(ty, n, seed);
    let mut rng = Rng::new(seed ^ 0x55);
    for block in w.chunks_mut(ty.block_bytes()) {
        if ty == GgmlType::MXFP4 {
            block[0] = 126 + (rng.next_u64() % 3) as u8;
        }
        for (k, &off) in scale_fields(ty).iter().enumerate() {
            let v = if k == 0 && rng.next_u64() & 1 == 1 {
                -0.0625
            } else {
                0.0625
            };
            block[off..off + 2].copy_from_slice(&F16Le::from_f32(v).0);
        }
    }
    w
}

/// Activations of type `act` built directly: quants in -3..=3, scale 1/8 (so every sum below
/// stays far under 2^24 units and every f32 operation on it is exact).
fn pow2_activations(act: GgmlType, n: usize, seed: u64) -> ScratchBuf {
    let mut rng = Rng::new(seed);
    let mut q = || (rng.next_u64() % 7) as i8 - 3;
    let mut buf = ScratchBuf::zeroed(act.row_bytes(n as u64).unwrap() as usize);
    let d = 0.125f32;
    match act {
        GgmlType::Q8_0 => {
            for b in bytemuck::cast_slice_mut::<u8, BlockQ8_0>(buf.as_bytes_mut()) {
                b.d = F16Le::from_f32(d);
                b.qs.iter_mut().for_each(|v| *v = q());
            }
        }
        GgmlType::Q8_1 => {
            for b in bytemuck::cast_slice_mut::<u8, BlockQ8_1>(buf.as_bytes_mut()) {
                b.d = F16Le::from_f32(d);
                b.qs.iter_mut().for_each(|v| *v = q());
                let sum: i32 = b.qs.iter().map(|&v| v as i32).sum();
                b.s = F16Le::from_f32(d * sum as f32);
            }
        }
        GgmlType::Q8_K => {
            for b in bytemuck::cast_slice_mut::<u8, BlockQ8K>(buf.as_bytes_mut()) {
                b.d = d;
                b.qs.iter_mut().for_each(|v| *v = q());
                for (s, c) in b.bsums.iter_mut().zip(b.qs.chunks(16)) {
                    *s = c.iter().map(|&v| v as i16).sum();
                }
            }
        }
        _ => {
            // Float activations: k/8 for k in -8..=8, exact in F32, F16 and BF16.
            let x: Vec<f32> = (0..n)
                .map(|_| ((rng.next_u64() % 17) as f32 - 8.0) / 8.0)
                .collect();
            scalar::quantize_row(act, &x, buf.as_bytes_mut()).unwrap();
        }
    }
    buf
}

#[test]
fn dots_exact_with_power_of_two_scales() {
    for ty in all_types() {
        let n = if ty.block_size() == 256 { 1024 } else { 992 };
        for seed in SEEDS {
            let w = if ty.block_size() == 1 {
                pow2_activations(ty, n, seed ^ 0x77).as_bytes().to_vec()
            } else {
                pow2_weights(ty, n, seed)
            };
            let a = pow2_activations(ty.vec_dot_type(), n, seed);
            let (_, exact) = magnitude_and_exact(ty, &w, a.as_bytes(), n);
            let want = scalar_dot(ty)(n, &w, a.as_bytes());
            assert_eq!(
                want as f64, exact,
                "{ty} seed={seed}: scalar is not exact on exactly representable data"
            );
            for (name, dp) in VARIANTS {
                let got = neon_dot(ty, dp)(n, &w, a.as_bytes());
                assert_eq!(
                    got.to_bits(),
                    want.to_bits(),
                    "{ty} {name} seed={seed}: {got} vs {want}"
                );
            }
        }
    }
}

#[test]
fn dot_kernel_end_to_end() {
    let isas: Vec<Isa> = [Isa::Neon, Isa::NeonDotprod]
        .into_iter()
        .filter(|i| i.is_available())
        .collect();
    assert!(isas.contains(&Isa::Neon));
    for ty in all_types() {
        let reference = dot_kernel(Isa::Scalar, ty).unwrap();
        let n = if ty.block_size() == 256 { 512 } else { 320 };
        let w = random_weights(ty, n, 3);
        let x = random_activations(n, 4);
        let bytes = reference.act_type.row_bytes(n as u64).unwrap() as usize;
        let mut want_a = ScratchBuf::zeroed(bytes);
        (reference.quantize)(&x, want_a.as_bytes_mut());
        let want = (reference.dot)(n, &w, want_a.as_bytes()) as f64;
        let (mag, _) = magnitude_and_exact(ty, &w, want_a.as_bytes(), n);
        for &isa in &isas {
            let k = dot_kernel(isa, ty).unwrap();
            assert_eq!(
                (k.isa, k.weight_type, k.act_type),
                (isa, ty, ty.vec_dot_type())
            );
            let mut a = ScratchBuf::zeroed(bytes);
            (k.quantize)(&x, a.as_bytes_mut());
            assert!(
                a.as_bytes() == want_a.as_bytes(),
                "{ty} {isa:?}: activations differ"
            );
            let got = (k.dot)(n, &w, a.as_bytes()) as f64;
            assert!(
                (got - want).abs() <= DOT_REL_TOL * mag,
                "{ty} {isa:?}: {got} vs scalar {want}"
            );
        }
    }
}

#[test]
fn odd_inputs_behave_like_scalar() {
    for ty in all_types() {
        let n = ty.block_size().max(32) * 2;
        let w = random_weights(ty, n, 11);
        let a = quantize_scalar(ty.vec_dot_type(), &random_activations(n, 12));
        let a = a.as_bytes();
        for (name, dp) in VARIANTS {
            let f = neon_dot(ty, dp);
            // Wrong lengths: NaN, as the scalar entry points.
            assert!(f(n, &w[1..], a).is_nan(), "{ty} {name}: short weights");
            assert!(
                f(n, &w, &a[..a.len() - 1]).is_nan(),
                "{ty} {name}: short activations"
            );
            assert!(f(n + 1, &w, a).is_nan(), "{ty} {name}: wrong n");
            // Misaligned activations: the same value as the scalar kernel.
            let mut shifted = ScratchBuf::zeroed(a.len() + 1);
            shifted.as_bytes_mut()[1..].copy_from_slice(a);
            let mis = &shifted.as_bytes()[1..];
            let want = scalar_dot(ty)(n, &w, mis);
            let got = f(n, &w, mis);
            let tol = DOT_REL_TOL * magnitude_and_exact(ty, &w, a, n).0;
            assert!(
                (got - want).abs() as f64 <= tol,
                "{ty} {name}: misaligned {got} vs {want}"
            );
        }
    }
    for act in ACT_TYPES {
        let x = random_activations(512, 1);
        let len = act.row_bytes(512).unwrap() as usize;
        let mut out = ScratchBuf::zeroed(len - 1);
        (neon::quantize_fn(act).unwrap())(&x, out.as_bytes_mut());
        assert!(
            out.as_bytes().iter().all(|&b| b == 0xff),
            "{act}: short buffer"
        );
        let mut out = ScratchBuf::zeroed(len);
        (neon::quantize_fn(act).unwrap())(&x[..500], out.as_bytes_mut());
        assert!(
            out.as_bytes().iter().all(|&b| b == 0xff),
            "{act}: wrong length"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Tile (batch) kernels

#[test]
fn i8mm_detection_matches_expectation() {
    let has = neon::tile::has_i8mm();
    eprintln!("i8mm detected: {has}");
    match std::env::var("FLASHSTREAM_EXPECT_I8MM").as_deref() {
        Ok("1") => assert!(has, "i8mm expected but not detected"),
        Ok("0") => assert!(!has, "i8mm detected but not expected"),
        _ => {}
    }
    let want = if has && neon::has_dotprod() {
        TileIsa::I8mm
    } else if neon::has_dotprod() {
        TileIsa::Dotprod
    } else {
        TileIsa::Neon
    };
    assert_eq!(TileIsa::detect(true), want);
    assert_eq!(TileIsa::detect(false), TileIsa::Neon);
}

/// The types with NEON tile kernels.
const TILE_TYPES: [GgmlType; 13] = [
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::IQ4_NL,
    GgmlType::MXFP4,
    GgmlType::Q2_K,
    GgmlType::Q3_K,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
    GgmlType::IQ4_XS,
];

/// Every tile build this CPU runs, against the one-row kernel of the same level (plain NEON for
/// the plain build, `sdot` for the dotprod and i8mm builds): bit for bit, for one weight row and
/// blocks of weight rows (odd and even counts, so the `smmla` pairs and their leftovers both
/// run), tiles of activation rows and remainders, at a stride and with strided output; buffers
/// that do not fit give NaN.
#[test]
fn tile_dots_equal_one_row_dots_bit_for_bit() {
    let mut ran = Vec::new();
    for isa in [TileIsa::Neon, TileIsa::Dotprod, TileIsa::I8mm] {
        if !isa.is_available() {
            eprintln!("tile build {isa:?} not available on this CPU; skipped");
            continue;
        }
        ran.push(isa);
        for ty in common::quant_types() {
            let Some(rows) = tile_rows_fn(isa, ty) else {
                assert!(
                    !TILE_TYPES.contains(&ty),
                    "{isa:?} has no tile kernel for {ty}"
                );
                continue;
            };
            let dot = neon_dot(ty, isa != TileIsa::Neon);
            let act = ty.vec_dot_type();
            let kernel = dot_kernel(Isa::Neon, ty).unwrap();
            let lengths: &[usize] = if ty.block_size() == 256 {
                &[256, 768]
            } else {
                &[32, 96, 160]
            };
            for (i, &n) in lengths.iter().enumerate() {
                let seed = i as u64 + 1;
                let a_row = act.row_bytes(n as u64).unwrap() as usize;
                let stride = matvec::act_row_stride(&kernel, n).unwrap();
                let w_row = ty.row_bytes(n as u64).unwrap() as usize;
                for n_tok in [1, 2, 3, 4, 5, 7] {
                    let x: Vec<f32> = (0..n_tok)
                        .flat_map(|t| random_activations(n, 300 + seed * 16 + t as u64))
                        .collect();
                    let mut a = ScratchBuf::default();
                    matvec::quantize_rows(&kernel, &x, n, &mut a).unwrap();
                    let ab = a.as_bytes();
                    for m in [1, 2, 5, 9] {
                        let w: Vec<u8> = (0..m)
                            .flat_map(|r| random_weights(ty, n, seed * 100 + r as u64))
                            .collect();
                        let os = m + 1;
                        let mut out = vec![0f32; os * n_tok];
                        rows(n, &w, ab, stride, n_tok, &mut out, os);
                        for t in 0..n_tok {
                            let at = &ab[t * stride..t * stride + a_row];
                            for r in 0..m {
                                let want = dot(n, &w[r * w_row..(r + 1) * w_row], at);
                                let got = out[t * os + r];
                                assert_eq!(
                                    got.to_bits(),
                                    want.to_bits(),
                                    "{isa:?} {ty} n={n} n_tok={n_tok} m={m} row {r} token {t}: {got} vs {want}"
                                );
                            }
                            assert_eq!(out[t * os + m], 0.0, "{isa:?} {ty}: wrote past the block");
                        }
                    }
                    // Buffers that do not fit: NaN in every result.
                    let w = random_weights(ty, n, seed);
                    let mut out = vec![0f32; 2 * n_tok];
                    let short = &ab[..ab.len() - stride + a_row - 1];
                    rows(n, &w, short, stride, n_tok, &mut out, 2);
                    assert!(
                        (0..n_tok).all(|t| out[2 * t].is_nan()),
                        "{isa:?} {ty} n_tok={n_tok}: short activations"
                    );
                    out.fill(0.0);
                    rows(n, &w[..w.len() - 1], ab, stride, n_tok, &mut out, 2);
                    assert!(
                        (0..n_tok).all(|t| out[2 * t].is_nan()),
                        "{isa:?} {ty} n_tok={n_tok}: short weights"
                    );
                    let mut small = vec![0f32; 2 * (n_tok - 1)];
                    rows(n, &w, ab, stride, n_tok, &mut small, 2);
                    assert!(
                        (0..n_tok - 1).all(|t| small[2 * t].is_nan()),
                        "{isa:?} {ty} n_tok={n_tok}: short output"
                    );
                }
            }
        }
    }
    eprintln!("tile builds run: {ran:?}");
    // With both expectations set (as ci/aarch64.sh does), exactly the expected builds ran.
    let flag = |v: &str| std::env::var(v).ok().map(|s| s == "1");
    if let (Some(dp), Some(mm)) = (
        flag("FLASHSTREAM_EXPECT_DOTPROD"),
        flag("FLASHSTREAM_EXPECT_I8MM"),
    ) {
        let want = 1 + usize::from(dp) + usize::from(dp && mm);
        assert_eq!(ran.len(), want, "tile builds run: {ran:?}");
    }
}

/// `dot_kernel` hands out the tile kernels as `dot_rows` and `dot_block`, and `matmul` through
/// them equals one-row dots bit for bit.
#[test]
fn matmul_uses_tiles_and_equals_one_row_dots() {
    let pool = WorkerPool::new(2).unwrap();
    for isa in [Isa::Neon, Isa::NeonDotprod] {
        if !isa.is_available() {
            continue;
        }
        for ty in TILE_TYPES {
            let kernel = dot_kernel(isa, ty).unwrap();
            assert!(
                kernel.dot_block.is_some() && kernel.dot_rows.is_some(),
                "{isa:?} {ty}"
            );
            let n = 2 * ty.block_size().max(32);
            let (rows, n_tok) = (37, 6);
            let w: Vec<u8> = (0..rows)
                .flat_map(|r| random_weights(ty, n, 500 + r as u64))
                .collect();
            let x: Vec<f32> = (0..n_tok)
                .flat_map(|t| random_activations(n, 600 + t as u64))
                .collect();
            let mut a = ScratchBuf::default();
            matvec::quantize_rows(&kernel, &x, n, &mut a).unwrap();
            let mut y = vec![0f32; rows * n_tok];
            matvec::matmul(&pool, &kernel, &w, n, &a, n_tok, &mut y).unwrap();
            let stride = matvec::act_row_stride(&kernel, n).unwrap();
            let a_row = kernel.act_type.row_bytes(n as u64).unwrap() as usize;
            let w_row = ty.row_bytes(n as u64).unwrap() as usize;
            for t in 0..n_tok {
                let at = &a.as_bytes()[t * stride..t * stride + a_row];
                for r in 0..rows {
                    let want = (kernel.dot)(n, &w[r * w_row..(r + 1) * w_row], at);
                    assert_eq!(y[t * rows + r].to_bits(), want.to_bits(), "{isa:?} {ty}");
                }
            }
        }
    }
}

/// Not a check but a probe for counting executed instructions under qemu (`-d in_asm,exec`):
/// `FLASHSTREAM_PROBE=<type>,<tiles 0|1>,<reps>` runs `reps` matmuls of 32 rows by 8 tokens on
/// the best NEON level, with or without the tile kernels, and checks the results are finite.
#[test]
#[ignore]
fn probe_matmul() {
    let Ok(spec) = std::env::var("FLASHSTREAM_PROBE") else {
        return;
    };
    let parts: Vec<&str> = spec.split(',').collect();
    let ty = GgmlType::ALL
        .into_iter()
        .find(|t| t.name() == parts[0])
        .expect("type name");
    let tiles = parts[1] == "1";
    let reps: usize = parts[2].parse().expect("reps");
    let pool = WorkerPool::new(1).unwrap();
    let mut kernel = dot_kernel(Isa::detect(), ty).unwrap();
    if !tiles {
        (kernel.dot_block, kernel.dot_rows) = (None, None);
    }
    let (n, rows, n_tok) = (1024, 32, 8);
    let w = random_weights(ty, n * rows, 1);
    let x: Vec<f32> = (0..n_tok)
        .flat_map(|t| random_activations(n, 2 + t as u64))
        .collect();
    let mut a = ScratchBuf::default();
    matvec::quantize_rows(&kernel, &x, n, &mut a).unwrap();
    let mut y = vec![0f32; rows * n_tok];
    for _ in 0..reps {
        matvec::matmul(&pool, &kernel, &w, n, &a, n_tok, &mut y).unwrap();
    }
    assert!(y.iter().all(|v| v.is_finite()));
}
