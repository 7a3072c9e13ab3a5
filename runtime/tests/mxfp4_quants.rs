//! MXFP4 (ggml type 39) against gguf-py and against the OCP format's definition.
//!
//! - `testdata/golden/dequant_mxfp4.jsonl` (written by `tools/mxfp4-golden.py` with gguf-py
//!   0.19.0): rows of the random gpt-oss model's expert tensors and a synthetic row with every
//!   exponent byte 0..=255 and every 4-bit code in both nibbles, with gguf-py's dequantized
//!   values. Every MXFP4 weight is a small integer times a power of two, so both sides are
//!   exact: compared bit for bit (±inf included, where `12 · 2^127` overflows f32 as it does in
//!   ggml and gguf-py).
//! - The table of doubled E2M1 values against the E2M1 bit layout (sign, 2-bit exponent with
//!   bias 1, 1-bit mantissa), and the halved E8M0 scale against `2^(e - 128)`.
//! - The scalar dot (ggml's `ggml_vec_dot_mxfp4_q8_0_generic`) against the f64 sum of the
//!   dequantized products, on the real rows and on the synthetic blocks up to exponent byte
//!   239 (subnormal scales included; above, products overflow f32), within
//!   `1e-6 · Σ|w_i·a_i|` (as `scalar_dot.rs`), and the weight type's paired activation type:
//!   Q8_0, as ggml-cpu's `type_traits_cpu[GGML_TYPE_MXFP4].vec_dot_type`.
//! - Every kernel this CPU runs (`dot_kernel` for each available ISA) on the real rows and the
//!   synthetic blocks, against the scalar kernel within the SIMD kernels' bound
//!   (`1e-5 · Σ|w_i·a_i|`).

use flashstream_formats::blocks::{e8m0_to_f32_half, BlockMXFP4, MXFP4_VALUES, QK};
use flashstream_formats::GgmlType;
use flashstream_runtime::kernels::scalar::{dequantize_row, quantize_row, vec_dot};
use flashstream_runtime::kernels::testutil::random_activations;
use flashstream_runtime::kernels::{dot_kernel, Isa, ScratchBuf};
use serde_json::Value;

struct Record {
    what: String,
    row_len: usize,
    bytes: Vec<u8>,
    want: Vec<Vec<f32>>,
}

fn hex_decode(s: &str) -> Vec<u8> {
    assert!(s.len().is_multiple_of(2), "odd hex length");
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("bad hex"))
        .collect()
}

fn golden() -> Vec<Record> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../testdata/golden/dequant_mxfp4.jsonl"
    );
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: Value = serde_json::from_str(l).expect("bad json line");
            assert_eq!(v["type"], "MXFP4");
            let want = v["f32_hex"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| {
                    hex_decode(r.as_str().unwrap())
                        .chunks_exact(4)
                        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                        .collect()
                })
                .collect();
            Record {
                what: format!("{} {}", v["source"], v["tensor"]),
                row_len: v["row_len"].as_u64().unwrap() as usize,
                bytes: hex_decode(v["hex"].as_str().unwrap()),
                want,
            }
        })
        .collect()
}

fn dequant(bytes: &[u8], n: usize) -> Vec<f32> {
    let mut out = vec![0f32; n];
    dequantize_row(GgmlType::MXFP4, bytes, &mut out).unwrap();
    out
}

fn quantize_q8_0(x: &[f32]) -> ScratchBuf {
    let mut a = ScratchBuf::zeroed(GgmlType::Q8_0.row_bytes(x.len() as u64).unwrap() as usize);
    quantize_row(GgmlType::Q8_0, x, a.as_bytes_mut()).unwrap();
    a
}

#[test]
fn dequantize_matches_gguf_py_bit_for_bit() {
    let records = golden();
    assert_eq!(records.len(), 3, "two real tensors and the synthetic row");
    let mut compared = 0usize;
    let mut infinite = 0usize;
    for r in &records {
        let row_bytes = GgmlType::MXFP4.row_bytes(r.row_len as u64).unwrap() as usize;
        assert_eq!(r.bytes.len(), r.want.len() * row_bytes, "{}", r.what);
        // All rows at once, and each row on its own (from an odd address too).
        let all = dequant(&r.bytes, r.want.len() * r.row_len);
        for (i, want) in r.want.iter().enumerate() {
            let raw = &r.bytes[i * row_bytes..(i + 1) * row_bytes];
            let mut shifted = vec![0u8; raw.len() + 1];
            shifted[1..].copy_from_slice(raw);
            let one = dequant(&shifted[1..], r.row_len);
            for (j, &w) in want.iter().enumerate() {
                let got = all[i * r.row_len + j];
                assert_eq!(
                    got.to_bits(),
                    w.to_bits(),
                    "{} row {i} [{j}]: got {got}, gguf-py {w}",
                    r.what
                );
                assert_eq!(one[j].to_bits(), w.to_bits(), "{} row {i} [{j}]", r.what);
                infinite += w.is_infinite() as usize;
                compared += 1;
            }
        }
    }
    assert_eq!(compared, 3 * 192 + 3 * 128 + 8192);
    assert!(
        infinite > 0,
        "the synthetic row reaches the overflow of e = 255"
    );
}

/// E2M1: bit 3 sign, bits 2..1 exponent (bias 1), bit 0 mantissa; exponent 0 is subnormal
/// (`0.5 · m`). The table holds twice that value.
#[test]
fn value_table_is_doubled_e2m1() {
    for (q, &v) in MXFP4_VALUES.iter().enumerate() {
        let sign = if q & 8 != 0 { -1.0 } else { 1.0 };
        let exp = (q >> 1) & 3;
        let man = (q & 1) as f64;
        let value = if exp == 0 {
            0.5 * man
        } else {
            (1.0 + 0.5 * man) * 2f64.powi(exp as i32 - 1)
        };
        assert_eq!(v as f64, 2.0 * sign * value, "code {q:#06b}");
    }
    for e in 0..=255u8 {
        assert_eq!(
            e8m0_to_f32_half(e) as f64,
            2f64.powi(e as i32 - 127) / 2.0,
            "e8m0 {e}"
        );
    }
    assert_eq!(GgmlType::MXFP4.id(), 39);
    assert_eq!(std::mem::size_of::<BlockMXFP4>(), 17);
    assert_eq!(GgmlType::MXFP4.block_size(), QK);
    assert_eq!(GgmlType::MXFP4.vec_dot_type(), GgmlType::Q8_0);
    assert!(GgmlType::MXFP4.is_supported_for_compute());
}

/// `(dot, expected, Σ|w·a|)` of the scalar dot of `w` with the Q8_0 quantization of `x`.
fn dot_and_expected(w: &[u8], x: &[f32]) -> (f32, f64, f64, ScratchBuf) {
    let n = x.len();
    let a = quantize_q8_0(x);
    let got = vec_dot(GgmlType::MXFP4, n, w, a.as_bytes()).unwrap();
    let wd = dequant(w, n);
    let mut ad = vec![0f32; n];
    dequantize_row(GgmlType::Q8_0, a.as_bytes(), &mut ad).unwrap();
    let (mut exp, mut mag) = (0f64, 0f64);
    for (p, q) in wd.iter().zip(&ad) {
        exp += *p as f64 * *q as f64;
        mag += (*p as f64 * *q as f64).abs();
    }
    (got, exp, mag, a)
}

#[test]
fn scalar_dot_matches_dequantized_product() {
    let records = golden();
    let mut checked = 0;
    for r in &records {
        let row_bytes = GgmlType::MXFP4.row_bytes(r.row_len as u64).unwrap() as usize;
        for (i, w) in r.bytes.chunks_exact(row_bytes).enumerate() {
            // The synthetic row: the blocks whose products stay finite (exponent bytes below
            // 240: 12 · 2^111 · 127 · d_y is far from f32's limit), in runs of seven blocks.
            let blocks: Vec<&[u8]> = w.chunks_exact(17).filter(|b| b[0] < 240).collect();
            for (c, chunk) in blocks.chunks(7).enumerate() {
                let wb: Vec<u8> = chunk.concat();
                let n = chunk.len() * QK;
                let x = random_activations(n, (i * 1000 + c) as u64);
                let (got, exp, mag, _) = dot_and_expected(&wb, &x);
                let err = (got as f64 - exp).abs();
                assert!(
                    got.is_finite() && err <= 1e-6 * mag + 1e-300,
                    "{} row {i} chunk {c}: dot {got}, expected {exp} (|w.a| {mag})",
                    r.what
                );
                checked += 1;
            }
        }
    }
    assert!(checked > 40, "{checked}");
}

#[test]
fn every_kernel_matches_scalar() {
    let records = golden();
    for isa in Isa::available() {
        let k = dot_kernel(isa, GgmlType::MXFP4).unwrap();
        assert_eq!(k.act_type, GgmlType::Q8_0);
        for r in &records {
            let row_bytes = GgmlType::MXFP4.row_bytes(r.row_len as u64).unwrap() as usize;
            // The real rows, and the synthetic blocks with finite products (every subnormal
            // and normal scale up to 2^111) in rows of seven blocks: a group of four and a
            // tail of three in the SIMD kernels.
            let rows: Vec<Vec<u8>> = if r.what.contains("synthetic") {
                let finite = r.bytes.chunks_exact(17).filter(|b| b[0] < 240);
                let blocks: Vec<&[u8]> = finite.collect();
                blocks.chunks_exact(7).map(|c| c.concat()).collect()
            } else {
                r.bytes
                    .chunks_exact(row_bytes)
                    .map(|w| w.to_vec())
                    .collect()
            };
            for (i, w) in rows.iter().enumerate() {
                let n = w.len() / 17 * QK;
                let x = random_activations(n, i as u64 + 3);
                let (want, _, mag, a) = dot_and_expected(w, &x);
                let mut a2 = ScratchBuf::zeroed(a.as_bytes().len());
                (k.quantize)(&x, a2.as_bytes_mut());
                assert_eq!(a2.as_bytes(), a.as_bytes(), "{isa:?}: activations");
                let got = (k.dot)(n, w, a2.as_bytes());
                let err = (got as f64 - want as f64).abs();
                assert!(
                    err <= 1e-5 * mag,
                    "{isa:?} {} row {i}: {got} vs scalar {want}",
                    r.what
                );
            }
        }
    }
}
