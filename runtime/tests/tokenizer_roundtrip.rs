//! encode → decode gives the text back, for arbitrary UTF-8 (property tests), on the random test
//! models' byte-level vocabulary and, when present, on the real models.

use std::path::PathBuf;
use std::sync::OnceLock;

use flashstream_formats::gguf::GgufModel;
use flashstream_runtime::tokenizer::Tokenizer;
use proptest::prelude::*;

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn load(path: PathBuf) -> Tokenizer {
    let model = GgufModel::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    Tokenizer::from_metadata(&model.metadata).unwrap()
}

/// The random models' vocabulary: 256 byte tokens, `<|endoftext|>`, one merge `Ġ Ġ`.
fn rand_vocab() -> &'static Tokenizer {
    static TOK: OnceLock<Tokenizer> = OnceLock::new();
    TOK.get_or_init(|| load(workspace().join("testdata/models/rand-llama-q4_0.gguf")))
}

/// A real model's tokenizer, built once; `None` when absent (a panic under `CI=true`).
fn real(cell: &'static OnceLock<Option<Tokenizer>>, name: &str) -> Option<&'static Tokenizer> {
    let tok = cell.get_or_init(|| {
        let dir = std::env::var_os("FLASHSTREAM_MODELS_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| workspace().join("models"));
        let path = dir.join(name);
        if path.exists() {
            return Some(load(path));
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

fn smollm() -> Option<&'static Tokenizer> {
    static TOK: OnceLock<Option<Tokenizer>> = OnceLock::new();
    real(&TOK, "SmolLM2-135M-Instruct.Q4_1.gguf")
}

fn gemma() -> Option<&'static Tokenizer> {
    static TOK: OnceLock<Option<Tokenizer>> = OnceLock::new();
    real(&TOK, "gemma-3-270m-q4_k_m.gguf")
}

/// Arbitrary text, weighted towards the characters tokenizers treat specially.
fn text() -> impl Strategy<Value = String> {
    let interesting = prop::sample::select(vec![
        " ", "  ", "\n", "\t", "\r\n", "'s", "'T", "123", "é", "日本", "🤖", "\u{3000}",
        "\u{0301}", "!!", "<", "|", ">", "\u{FFFD}", "\u{0}",
    ]);
    let piece = prop_oneof![
        any::<char>().prop_map(String::from),
        "[a-zA-Z0-9 .,]{1,6}",
        interesting.prop_map(String::from)
    ];
    prop::collection::vec(piece, 0..24).prop_map(|v| v.concat())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Every byte is a token in the random models' vocabulary, so any text survives — except
    /// where two spaces meet in one word: llama.cpp merges them by the vocabulary's only merge
    /// into `ĠĠ`, which is not a token, and drops it (see the test below).
    #[test]
    fn random_model_vocab_round_trips(s in text().prop_filter("no double space", |s| !s.contains("  "))) {
        let tok = rand_vocab();
        let ids = tok.encode(&s, false, false).unwrap();
        prop_assert_eq!(ids.len(), s.len());
        prop_assert_eq!(tok.decode(&ids), s.clone());
        let with_special = tok.encode(&s, true, true).unwrap();
        prop_assert_eq!(tok.decode(&with_special), s);
    }

    /// SmolLM2's vocabulary has no token for bytes 0x04 0x06 0x13 0x14 0x16 0x1D 0xF1 0xF2
    /// (nor for the bytes UTF-8 never uses), so characters made of them are dropped, as in
    /// llama.cpp; everything else comes back.
    #[test]
    fn smollm2_round_trips(s in text().prop_filter("bytes without a token", |s| s.chars().all(smollm_has_bytes))) {
        let Some(tok) = smollm() else { return Ok(()) };
        let ids = tok.encode(&s, false, false).unwrap();
        prop_assert_eq!(tok.decode_with(&ids, true), s);
    }

    /// `▁` is SentencePiece's space, so a literal `▁` comes back as a space (as in llama.cpp).
    #[test]
    fn gemma3_round_trips(s in text().prop_filter("no ▁", |s| !s.contains('\u{2581}'))) {
        let Some(tok) = gemma() else { return Ok(()) };
        let ids = tok.encode(&s, false, false).unwrap();
        prop_assert_eq!(tok.decode_with(&ids, true), s);
    }
}

fn smollm_has_bytes(c: char) -> bool {
    !matches!(
        c as u32,
        0x04 | 0x06 | 0x13 | 0x14 | 0x16 | 0x1D | 0x40000..=0xBFFFF
    )
}

#[test]
fn smollm2_drops_bytes_it_has_no_token_for() {
    let Some(tok) = smollm() else { return };
    let ids = tok.encode("a\u{4}b", false, false).unwrap();
    assert_eq!(
        ids,
        [tok.token_id("a").unwrap(), tok.token_id("b").unwrap()]
    );
    assert_eq!(tok.decode(&ids), "ab");
}

/// llama.cpp drops a word whose merged symbol is not a token and has no ASCII bytes: with the
/// random models' `Ġ Ġ` merge that is every pair of spaces inside one pre-tokenizer word.
#[test]
fn random_model_vocab_drops_merged_double_spaces_like_llama_cpp() {
    let tok = rand_vocab();
    assert_eq!(tok.encode("a  ", false, false).unwrap(), vec![97]);
    // Before a word the run keeps its last space for that word: "a", "  ", " b".
    assert_eq!(tok.encode("a   b", false, false).unwrap(), vec![97, 32, 98]);
    // Two spaces before a word are split "a", " ", " b" and survive.
    assert_eq!(
        tok.encode("a  b", false, false).unwrap(),
        vec![97, 32, 32, 98]
    );
}
