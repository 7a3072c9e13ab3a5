//! Parsing the real GGUF files: the small random test models in `testdata/models`, and the
//! fetched real models in `models/` when present.

mod common;

use std::io::Read;
use std::path::PathBuf;
use std::time::Instant;

use common::{test_models, testdata_models};
use flashstream_formats::gguf::{GgufWriter, DEFAULT_ALIGNMENT};
use flashstream_formats::{Array, GgmlType, GgufModel, Value};

/// What we know about each test model (from gguf-py's reader).
struct Facts {
    file: &'static str,
    arch: &'static str,
    n_tensors: usize,
    n_kv: usize,
    data_offset: u64,
    embd_type: GgmlType,
    embd_bytes: u64,
}

const FACTS: [Facts; 6] = [
    Facts {
        file: "rand-llama-f16.gguf",
        arch: "llama",
        n_tensors: 39,
        n_kv: 21,
        data_offset: 6752,
        embd_type: GgmlType::F16,
        embd_bytes: 131584,
    },
    Facts {
        file: "rand-llama-q4_0.gguf",
        arch: "llama",
        n_tensors: 39,
        n_kv: 22,
        data_offset: 6784,
        embd_type: GgmlType::Q4_0,
        embd_bytes: 37008,
    },
    Facts {
        file: "rand-llama-q8_0.gguf",
        arch: "llama",
        n_tensors: 39,
        n_kv: 22,
        data_offset: 6784,
        embd_type: GgmlType::Q8_0,
        embd_bytes: 69904,
    },
    Facts {
        file: "rand-qwen2moe-q2k.gguf",
        arch: "qwen2moe",
        n_tensors: 71,
        n_kv: 26,
        data_offset: 9056,
        embd_type: GgmlType::Q2_K,
        embd_bytes: 21588,
    },
    Facts {
        file: "rand-qwen3-q5km.gguf",
        arch: "qwen3",
        n_tensors: 47,
        n_kv: 22,
        data_offset: 7232,
        embd_type: GgmlType::Q5_K,
        embd_bytes: 45232,
    },
    Facts {
        file: "rand-qwen3moe-q4km.gguf",
        arch: "qwen3moe",
        n_tensors: 51,
        n_kv: 25,
        data_offset: 7808,
        embd_type: GgmlType::Q4_K,
        embd_bytes: 37008,
    },
];

#[test]
fn test_models_parse_with_known_facts() {
    assert!(test_models().len() >= FACTS.len());
    for f in &FACTS {
        let path = testdata_models().join(f.file);
        let m = GgufModel::open(&path).unwrap_or_else(|e| panic!("{}: {e}", f.file));
        let file_len = std::fs::metadata(&path).unwrap().len();
        assert_eq!(m.files.len(), 1);
        let file = &m.files[0];
        assert_eq!(file.path, path);
        assert_eq!(file.len, file_len);
        assert_eq!(file.version, 3);
        assert_eq!(file.alignment, DEFAULT_ALIGNMENT);
        assert_eq!(file.data_offset, f.data_offset, "{}", f.file);
        assert_eq!(m.architecture().unwrap(), f.arch);
        assert_eq!(m.tensors.len(), f.n_tensors, "{}", f.file);
        assert_eq!(m.metadata.len(), f.n_kv, "{}", f.file);
        let key = |k: &str| format!("{}.{k}", f.arch);
        assert_eq!(m.metadata.get_u64(&key("block_count")).unwrap(), 4);
        assert_eq!(m.metadata.get_u64(&key("embedding_length")).unwrap(), 256);
        assert_eq!(m.metadata.get_f64(&key("rope.freq_base")).unwrap(), 1e6);
        assert_eq!(
            m.metadata.get("tokenizer.ggml.bos_token_id"),
            Some(&Value::U32(256))
        );
        assert!(!m.metadata.get_bool("tokenizer.ggml.add_bos_token").unwrap());
        assert_eq!(m.metadata.get_str("tokenizer.ggml.model").unwrap(), "gpt2");
        let Array::String(tokens) = m.metadata.get_array("tokenizer.ggml.tokens").unwrap() else {
            panic!("tokens are not strings");
        };
        assert_eq!(tokens.len(), 257);
        assert_eq!(tokens[256], "<|endoftext|>");
        let Array::I32(types) = m.metadata.get_array("tokenizer.ggml.token_type").unwrap() else {
            panic!("token types are not i32");
        };
        assert_eq!(types.len(), 257);

        let embd = m.require_tensor("token_embd.weight").unwrap();
        assert_eq!(embd.shape, vec![256, 257]);
        assert_eq!(embd.ty, f.embd_type);
        assert_eq!(embd.n_bytes, f.embd_bytes);
        assert_eq!(embd.n_elements(), 256 * 257);
        assert_eq!(embd.file, 0);
        let norm = m.require_tensor("output_norm.weight").unwrap();
        assert_eq!(
            (norm.ty, norm.shape.as_slice(), norm.n_bytes),
            (GgmlType::F32, &[256u64][..], 1024)
        );
        assert_eq!(m.layer_tensors(3).count(), m.layer_tensors(0).count());
        assert!(m.layer_tensors(0).count() >= 9, "{}", f.file);
        assert_eq!(m.layer_tensors(4).count(), 0);

        // Every tensor is inside the data section, aligned, and they tile it in order.
        let mut spans: Vec<(u64, u64)> = m.tensors.iter().map(|t| (t.offset, t.n_bytes)).collect();
        spans.sort();
        let mut end = f.data_offset;
        for (off, n) in spans {
            assert!(off >= end && (off - f.data_offset) % 32 == 0);
            end = off + n;
        }
        assert!(end <= file_len && file_len - end < 32, "{}", f.file);

        // The in-memory parser gives the same model.
        let bytes = std::fs::read(&path).unwrap();
        let mem = GgufModel::from_bytes(&bytes).unwrap();
        assert_eq!(mem.metadata, m.metadata);
        assert_eq!(mem.tensors, m.tensors);
        assert_eq!(mem.files[0].path, PathBuf::from("<memory>"));
    }
}

#[test]
fn moe_models_have_fused_expert_tensors() {
    let m = GgufModel::open(testdata_models().join("rand-qwen3moe-q4km.gguf")).unwrap();
    assert_eq!(m.metadata.get_u64("qwen3moe.expert_count").unwrap(), 16);
    let gate = m.require_tensor("blk.0.ffn_gate_exps.weight").unwrap();
    assert_eq!(gate.shape, vec![256, 256, 16]);
    assert_eq!(gate.n_rows(), 256 * 16);
    let m = GgufModel::open(testdata_models().join("rand-qwen2moe-q2k.gguf")).unwrap();
    assert!(m.tensor("blk.0.ffn_gate_inp_shexp.weight").is_some());
    assert_eq!(
        m.require_tensor("blk.0.attn_q.bias").unwrap().ty,
        GgmlType::F32
    );
}

/// The header the writer produces for a parsed model is byte for byte the original header
/// (gguf-py and llama.cpp lay headers out the same way).
fn assert_header_rewrites_exactly(path: &std::path::Path, m: &GgufModel) {
    let mut out = Vec::new();
    let tdw = GgufWriter::from_model(m)
        .unwrap()
        .write_header(&mut out)
        .unwrap();
    assert_eq!(tdw.data_offset(), m.files[0].data_offset);
    assert_eq!(tdw.tensors(), m.tensors.as_slice());
    drop(tdw);
    let mut original = vec![0u8; usize::try_from(m.files[0].data_offset).unwrap()];
    std::fs::File::open(path)
        .unwrap()
        .read_exact(&mut original)
        .unwrap();
    assert!(
        out == original,
        "{}: rewritten header differs",
        path.display()
    );
}

#[test]
fn headers_rewrite_byte_for_byte() {
    for path in test_models() {
        let m = GgufModel::open(&path).unwrap();
        assert_header_rewrites_exactly(&path, &m);
    }
}

/// The real models fetched by `tools/fetch-models.sh` (git-ignored). Skipped when absent,
/// unless `CI=true`.
fn real_model(name: &str) -> Option<PathBuf> {
    let dir = std::env::var_os("FLASHSTREAM_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models"));
    let path = dir.join(name);
    if path.exists() {
        return Some(path);
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{} is missing (run tools/fetch-models.sh)", path.display());
    }
    eprintln!(
        "skipped: {} is absent (run tools/fetch-models.sh)",
        path.display()
    );
    None
}

#[test]
fn gemma3_270m_parses() {
    let Some(path) = real_model("gemma-3-270m-q4_k_m.gguf") else {
        return;
    };
    let t0 = Instant::now();
    let m = GgufModel::open(&path).unwrap();
    eprintln!("parsed {} in {:?}", path.display(), t0.elapsed());
    assert_eq!(m.architecture().unwrap(), "gemma3");
    assert_eq!(m.tensors.len(), 236);
    assert_eq!(m.metadata.len(), 33);
    assert_eq!(m.files[0].data_offset, 6525120);
    assert_eq!(m.metadata.get_u64("gemma3.block_count").unwrap(), 18);
    assert_eq!(
        m.metadata
            .get_u64("gemma3.attention.sliding_window")
            .unwrap(),
        512
    );
    let tokens = m.metadata.get_array("tokenizer.ggml.tokens").unwrap();
    assert_eq!(tokens.len(), 262144);
    assert!(matches!(tokens, Array::String(_)));
    assert!(matches!(
        m.metadata.get_array("tokenizer.ggml.scores").unwrap(),
        Array::F32(v) if v.len() == 262144
    ));
    let embd = m.require_tensor("token_embd.weight").unwrap();
    assert_eq!(
        (embd.ty, embd.shape.as_slice()),
        (GgmlType::Q8_0, &[640u64, 262144][..])
    );
    assert_eq!(embd.n_bytes, 178257920);
    assert_eq!(
        m.require_tensor("blk.0.attn_k.weight").unwrap().ty,
        GgmlType::Q5_0
    );
    assert!(m.total_tensor_bytes() <= m.files[0].len);
    assert_header_rewrites_exactly(&path, &m);
}

#[test]
fn smollm2_135m_parses() {
    let Some(path) = real_model("SmolLM2-135M-Instruct.Q4_1.gguf") else {
        return;
    };
    let t0 = Instant::now();
    let m = GgufModel::open(&path).unwrap();
    eprintln!("parsed {} in {:?}", path.display(), t0.elapsed());
    assert_eq!(m.architecture().unwrap(), "llama");
    assert_eq!(m.tensors.len(), 272);
    assert_eq!(m.files[0].data_offset, 1785664);
    assert_eq!(m.metadata.get_str("tokenizer.ggml.pre").unwrap(), "smollm");
    assert_eq!(
        m.metadata.get_array("tokenizer.ggml.tokens").unwrap().len(),
        49152
    );
    assert_eq!(
        m.metadata.get_array("tokenizer.ggml.merges").unwrap().len(),
        48900
    );
    assert_eq!(
        m.metadata.get_array("general.languages").unwrap(),
        &Array::String(vec!["en".to_string()])
    );
    let embd = m.require_tensor("token_embd.weight").unwrap();
    assert_eq!(
        (embd.ty, embd.shape.as_slice()),
        (GgmlType::Q8_0, &[576u64, 49152][..])
    );
    assert!(
        m.tensor("output.weight").is_none(),
        "SmolLM2 ties its output to the embedding"
    );
    assert_eq!(
        m.require_tensor("blk.0.ffn_down.weight").unwrap().ty,
        GgmlType::Q4_1
    );
    assert_header_rewrites_exactly(&path, &m);
}
