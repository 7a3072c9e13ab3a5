//! The tokenizer against llama.cpp's own token ids (`testdata/golden`), on the real models
//! (SmolLM2: byte-level BPE, pre `smollm`; Gemma 3: SentencePiece, 262144 tokens) and on the
//! random test models (257-token byte-level vocabulary).
//!
//! The real models live in `<workspace>/models` (or `$FLASHSTREAM_MODELS_DIR`), fetched by
//! `tools/fetch-models.sh`; when absent their tests print that they skipped, unless `CI=true`,
//! where they fail.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use flashstream_formats::gguf::GgufModel;
use flashstream_runtime::tokenizer::{StreamDecoder, Tokenizer, VocabKind};
use serde_json::Value;

const SMOL: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
const GEMMA: &str = "gemma-3-270m-q4_k_m.gguf";

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn golden(name: &str) -> Vec<Value> {
    let path = workspace().join("testdata/golden").join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| u32::try_from(x.as_u64().unwrap()).unwrap())
        .collect()
}

fn load(path: &Path) -> Tokenizer {
    let model = GgufModel::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    Tokenizer::from_metadata(&model.metadata).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A real model's tokenizer, built once per test binary; `None` (skip) when the file is absent,
/// a panic under `CI=true`.
fn real(name: &str) -> Option<&'static Tokenizer> {
    static SMOL_TOK: OnceLock<Option<Tokenizer>> = OnceLock::new();
    static GEMMA_TOK: OnceLock<Option<Tokenizer>> = OnceLock::new();
    let cell = match name {
        SMOL => &SMOL_TOK,
        GEMMA => &GEMMA_TOK,
        _ => panic!("unknown model {name}"),
    };
    let tok = cell.get_or_init(|| {
        let dir = std::env::var_os("FLASHSTREAM_MODELS_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| workspace().join("models"));
        let path = dir.join(name);
        if path.exists() {
            return Some(load(&path));
        }
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("{} is missing (run tools/fetch-models.sh)", path.display());
        }
        None
    });
    if tok.is_none() {
        eprintln!("skipped: {name} is absent from models/ (run tools/fetch-models.sh)");
    }
    tok.as_ref()
}

/// A random test model's tokenizer (always present in `testdata/models`).
fn rand_model(name: &str) -> Tokenizer {
    load(&workspace().join("testdata/models").join(name))
}

/// Checks every `tokenize.*` case: exact ids; returns how many cases were checked.
fn check_tokenize_cases(tok: &Tokenizer, file: &str) -> usize {
    let cases = golden(file);
    assert!(!cases.is_empty());
    let mut failures = Vec::new();
    for c in &cases {
        let text = c["text"].as_str().unwrap();
        let want = ids(&c["tokens"]);
        let add_special = c["add_special"].as_bool().unwrap();
        let parse_special = c["parse_special"].as_bool().unwrap();
        let got = tok.encode(text, add_special, parse_special).unwrap();
        if got != want {
            failures.push(format!("{text:?}\n  got  {got:?}\n  want {want:?}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{file}: {} of {} cases differ:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    cases.len()
}

/// Checks every `generate.*` record: the prompt encodes to `prompt_tokens`, each step's token
/// renders as its `piece` and all steps decode (and stream) to `text`. The reference rendered
/// control tokens (e.g. a final `<|im_end|>`) as their text.
fn check_generate_records(tok: &Tokenizer, file: &str) -> usize {
    let records = golden(file);
    assert!(!records.is_empty());
    for r in &records {
        let prompt = r["prompt"].as_str().unwrap();
        let add_special = r["add_special"].as_bool().unwrap();
        assert_eq!(
            tok.encode(prompt, add_special, true).unwrap(),
            ids(&r["prompt_tokens"]),
            "{file}: prompt {prompt:?}"
        );
        let steps = r["steps"].as_array().unwrap();
        let mut generated = Vec::new();
        let mut stream = StreamDecoder::with_special(tok, true);
        let mut streamed = String::new();
        for s in steps {
            let id = u32::try_from(s["token"].as_u64().unwrap()).unwrap();
            let piece = String::from_utf8_lossy(&tok.token_to_piece_with(id, true)).into_owned();
            assert_eq!(
                piece,
                s["piece"].as_str().unwrap(),
                "{file}: piece of token {id}"
            );
            generated.push(id);
            streamed.extend(stream.push(id));
        }
        streamed.extend(stream.flush());
        let text = r["text"].as_str().unwrap();
        assert_eq!(
            tok.decode_with(&generated, true),
            text,
            "{file}: decoded continuation of {prompt:?}"
        );
        assert_eq!(
            streamed, text,
            "{file}: streamed continuation of {prompt:?}"
        );
    }
    records.len()
}

#[test]
fn smollm2_tokenize_cases_match_llama_cpp() {
    let Some(tok) = real(SMOL) else { return };
    assert_eq!(tok.kind(), VocabKind::Bpe);
    assert_eq!(tok.pre(), Some("smollm"));
    assert_eq!(tok.n_vocab(), 49152);
    let n = check_tokenize_cases(tok, "tokenize.SmolLM2-135M-Instruct.Q4_1.jsonl");
    assert_eq!(n, 7);
}

#[test]
fn smollm2_generate_records_match_llama_cpp() {
    let Some(tok) = real(SMOL) else { return };
    assert_eq!(
        check_generate_records(tok, "generate.SmolLM2-135M-Instruct.Q4_1.jsonl"),
        3
    );
}

#[test]
fn gemma3_tokenize_cases_match_llama_cpp() {
    let Some(tok) = real(GEMMA) else { return };
    assert_eq!(tok.kind(), VocabKind::SentencePiece);
    assert_eq!(tok.n_vocab(), 262144);
    let n = check_tokenize_cases(tok, "tokenize.gemma-3-270m-q4_k_m.jsonl");
    assert_eq!(n, 6);
}

#[test]
fn gemma3_generate_records_match_llama_cpp() {
    let Some(tok) = real(GEMMA) else { return };
    assert_eq!(
        check_generate_records(tok, "generate.gemma-3-270m-q4_k_m.jsonl"),
        3
    );
}

#[test]
fn smollm2_special_tokens() {
    let Some(tok) = real(SMOL) else { return };
    assert_eq!(
        (tok.bos(), tok.eos(), tok.unk(), tok.pad()),
        (Some(1), Some(2), Some(0), Some(2))
    );
    assert!(!tok.add_bos() && !tok.add_eos());
    let im_start = tok.token_id("<|im_start|>").unwrap();
    let im_end = tok.token_id("<|im_end|>").unwrap();
    assert_eq!(tok.eot(), Some(im_end));
    // As llama.cpp: EOS, <|im_end|>, <|endoftext|> and the FIM repository token end generation.
    assert!(
        tok.is_eog(im_end) && tok.is_eog(2) && tok.is_eog(tok.token_id("<|endoftext|>").unwrap())
    );
    assert!(tok.is_eog(tok.token_id("<reponame>").unwrap()));
    assert!(!tok.is_eog(im_start) && !tok.is_eog(1) && !tok.is_eog(u32::MAX));
    let heap = tok.heap_bytes();
    eprintln!("smollm2 tokenizer holds about {heap} bytes");
    assert!(
        heap > 49_152 * 8 && heap < (49_152 + 48_900) * 100,
        "{heap}"
    );
    // parse_special off: the markers are plain text.
    let plain = tok.encode("<|im_start|>user", false, false).unwrap();
    assert!(!plain.contains(&im_start), "{plain:?}");
    assert_eq!(tok.decode(&plain), "<|im_start|>user");
    assert_eq!(
        tok.encode("<|im_start|>user", false, true).unwrap()[0],
        im_start
    );
    // Control tokens render as nothing unless asked for.
    assert!(tok.token_to_piece(im_start).is_empty());
    assert_eq!(tok.token_to_piece_with(im_start, true), b"<|im_start|>");
}

#[test]
fn gemma3_special_tokens() {
    let Some(tok) = real(GEMMA) else { return };
    assert_eq!(
        (tok.bos(), tok.eos(), tok.unk(), tok.pad()),
        (Some(2), Some(1), Some(3), Some(0))
    );
    assert!(tok.add_bos() && !tok.add_eos() && !tok.add_space_prefix());
    let end_of_turn = tok.token_id("<end_of_turn>").unwrap();
    assert_eq!(tok.eot(), Some(end_of_turn));
    assert!(tok.is_eog(end_of_turn) && tok.is_eog(1));
    assert!(!tok.is_eog(tok.token_id("<start_of_turn>").unwrap()));
    // A compact vocabulary: well under 100 bytes a token.
    let heap = tok.heap_bytes();
    eprintln!("gemma3 tokenizer holds about {heap} bytes");
    assert!(heap > 262_144 * 8 && heap < 262_144 * 100, "{heap}");
    // Byte fallback and the empty text.
    assert_eq!(tok.encode("", true, true).unwrap(), vec![2]);
    assert_eq!(tok.encode("", false, true).unwrap(), Vec::<u32>::new());
    let nul = tok.encode("\u{0}", false, false).unwrap();
    assert_eq!(nul, vec![tok.token_id("<0x00>").unwrap()]);
    assert_eq!(tok.decode(&nul), "\u{0}");
}

#[test]
fn random_models_match_llama_cpp() {
    let files = [
        "generate.rand-llama-f16.jsonl",
        "generate.rand-llama-q4_0.jsonl",
        "generate.rand-llama-q8_0.jsonl",
        "generate.rand-qwen2moe-q2k.jsonl",
        "generate.rand-qwen3-q5km.jsonl",
        "generate.rand-qwen3moe-q4km.jsonl",
    ];
    for file in files {
        let records = golden(file);
        let model = records[0]["model"].as_str().unwrap();
        let tok = rand_model(model);
        assert_eq!(tok.n_vocab(), 257);
        assert_eq!(check_generate_records(&tok, file), 2);
    }
    let tok = rand_model("rand-llama-q4_0.gguf");
    assert_eq!(
        tok.encode("Hello, world", true, true).unwrap(),
        vec![72, 101, 108, 108, 111, 44, 32, 119, 111, 114, 108, 100]
    );
}
