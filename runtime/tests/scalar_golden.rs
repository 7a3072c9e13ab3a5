//! `dequantize_row` against gguf-py on real tensors.
//!
//! `testdata/golden/dequant.jsonl` holds, for one tensor of every quant type in several
//! models, the first two rows dequantized by gguf-py (values rounded to 7 significant digits).
//! `testdata/golden/dequant_rows.jsonl` holds the quantized bytes of those same rows, copied
//! out of the model files by `tools/extract-golden-rows.py`, so this test needs no model file.
//!
//! Tolerance: `|ours - golden| <= 1e-6 * |golden| + 1e-12`. Rounding to 7 significant digits
//! moves a value by at most 5e-7 relative; the absolute floor only matters for values that
//! are exactly 0 (or denormal-small), where a relative bound is meaningless.

use std::collections::BTreeSet;

use flashstream_formats::GgmlType;
use flashstream_runtime::kernels::scalar::dequantize_row;
use serde_json::Value;

const REL_TOL: f64 = 1e-6;
const ABS_FLOOR: f64 = 1e-12;

fn testdata(name: &str) -> String {
    let path = format!("{}/../testdata/golden/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn hex_decode(s: &str) -> Vec<u8> {
    assert!(s.len().is_multiple_of(2), "odd hex length");
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("bad hex"))
        .collect()
}

fn lines(text: &str) -> Vec<Value> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).expect("bad json line"))
        .collect()
}

#[test]
fn dequantize_matches_gguf_py_on_real_tensors() {
    let golden = lines(&testdata("dequant.jsonl"));
    let raw = lines(&testdata("dequant_rows.jsonl"));
    assert_eq!(golden.len(), raw.len(), "one raw record per golden record");
    let mut covered = BTreeSet::new();
    let mut checked = 0usize;
    for (g, r) in golden.iter().zip(&raw) {
        let key = |v: &Value| {
            (
                v["model"].as_str().unwrap().to_string(),
                v["tensor"].as_str().unwrap().to_string(),
                v["type"].as_str().unwrap().to_string(),
            )
        };
        assert_eq!(key(g), key(r), "records must be in the same order");
        let (model, tensor, tyname) = key(g);
        let ty = GgmlType::from_name(&tyname).unwrap();
        let row_len = g["shape"][0].as_u64().unwrap() as usize;
        assert_eq!(r["row_len"].as_u64().unwrap() as usize, row_len);
        let bytes = hex_decode(r["hex"].as_str().unwrap());
        let rows = g["rows"].as_array().unwrap();
        let row_bytes = ty.row_bytes(row_len as u64).unwrap() as usize;
        assert_eq!(bytes.len(), rows.len() * row_bytes, "{model}/{tensor}");

        // Both rows at once (a multi-row span), and each row on its own.
        let mut all = vec![0f32; rows.len() * row_len];
        dequantize_row(ty, &bytes, &mut all).unwrap();
        for (i, row) in rows.iter().enumerate() {
            let want: Vec<f64> = row
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap())
                .collect();
            assert_eq!(want.len(), row_len);
            let mut one = vec![0f32; row_len];
            dequantize_row(ty, &bytes[i * row_bytes..(i + 1) * row_bytes], &mut one).unwrap();
            assert_eq!(one, all[i * row_len..(i + 1) * row_len]);
            for (j, (&got, &w)) in one.iter().zip(&want).enumerate() {
                let err = (got as f64 - w).abs();
                assert!(
                    err <= REL_TOL * w.abs() + ABS_FLOOR,
                    "{model}/{tensor} ({tyname}) row {i} [{j}]: got {got}, gguf-py {w}"
                );
                checked += 1;
            }
        }
        covered.insert(tyname);
    }
    let expected: BTreeSet<String> = [
        "Q8_0", "Q4_1", "Q5_0", "Q4_K", "Q6_K", "F16", "Q4_0", "Q2_K", "Q3_K", "F32", "Q5_K",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    assert_eq!(
        covered, expected,
        "every type of the golden file is covered"
    );
    assert_eq!(checked, 17_536, "values compared");
}
