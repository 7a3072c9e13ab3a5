//! Tokenizer behaviour on small hand-made vocabularies: streaming detokenization, special tokens,
//! SentencePiece details, malformed metadata.

use flashstream_formats::gguf::{Array, Metadata, Value};
use flashstream_runtime::tokenizer::{
    keys, StreamDecoder, TokenType, Tokenizer, TokenizerError, VocabKind,
};

/// GPT-2's byte → character table (printable Latin-1 stands for itself, the rest from U+0100).
fn byte_char(b: u8) -> char {
    let keeps = |b: u32| {
        (0x21..=0x7E).contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b)
    };
    if keeps(b as u32) {
        return char::from(b);
    }
    let n = (0..b as u32).filter(|&x| !keeps(x)).count() as u32;
    char::from_u32(256 + n).unwrap()
}

/// A byte-level BPE vocabulary: ids 0..=255 are the bytes, 256 is `<|endoftext|>` (control),
/// then `extra` tokens `(text, type)`.
fn bpe_vocab(extra: &[(&str, i32)], merges: &[&str]) -> Metadata {
    let mut tokens: Vec<String> = (0..=255u8).map(|b| byte_char(b).to_string()).collect();
    let mut types = vec![1i32; 256];
    tokens.push("<|endoftext|>".into());
    types.push(3);
    for (t, ty) in extra {
        tokens.push(t.to_string());
        types.push(*ty);
    }
    let mut md = Metadata::new();
    md.set(keys::MODEL, Value::String("gpt2".into()));
    md.set(keys::PRE, Value::String("default".into()));
    md.set(keys::TOKENS, Value::Array(Array::String(tokens)));
    md.set(keys::TOKEN_TYPE, Value::Array(Array::I32(types)));
    md.set(
        keys::MERGES,
        Value::Array(Array::String(
            merges.iter().map(|s| s.to_string()).collect(),
        )),
    );
    md.set(keys::BOS_ID, Value::U32(256));
    md.set(keys::EOS_ID, Value::U32(256));
    md
}

/// A SentencePiece vocabulary: `<unk>`, `<s>`, `</s>`, the 256 byte tokens, then `pieces`
/// `(text, score, type)`.
fn spm_vocab(pieces: &[(&str, f32, i32)]) -> Metadata {
    let mut tokens = vec!["<unk>".to_string(), "<s>".into(), "</s>".into()];
    let mut scores = vec![0.0f32; 3];
    let mut types = vec![2i32, 3, 3];
    for b in 0..=255u8 {
        tokens.push(format!("<0x{b:02X}>"));
        scores.push(0.0);
        types.push(6);
    }
    for (t, s, ty) in pieces {
        tokens.push(t.to_string());
        scores.push(*s);
        types.push(*ty);
    }
    let mut md = Metadata::new();
    md.set(keys::MODEL, Value::String("llama".into()));
    md.set(keys::TOKENS, Value::Array(Array::String(tokens)));
    md.set(keys::SCORES, Value::Array(Array::F32(scores)));
    md.set(keys::TOKEN_TYPE, Value::Array(Array::I32(types)));
    md
}

fn build(md: &Metadata) -> Tokenizer {
    Tokenizer::from_metadata(md).unwrap()
}

#[test]
fn streaming_holds_back_split_characters() {
    let tok = build(&bpe_vocab(&[], &[]));
    // "é" is C3 A9: the first byte alone is not text yet.
    let mut s = StreamDecoder::new(&tok);
    assert_eq!(s.push(b'a' as u32), Some("a".to_string()));
    assert_eq!(s.push(0xC3), None);
    assert!(s.has_pending());
    assert_eq!(s.push(0xA9), Some("é".to_string()));
    assert!(!s.has_pending());
    // A 4-byte character over four tokens, followed by ASCII in the same push.
    for (i, &b) in "🤖".as_bytes().iter().enumerate() {
        let out = s.push(b as u32);
        if i < 3 {
            assert_eq!(out, None);
        } else {
            assert_eq!(out.as_deref(), Some("🤖"));
        }
    }
    // A byte that can never start a character is replaced at once.
    assert_eq!(s.push(0xFF).as_deref(), Some("\u{FFFD}"));
    // A lead byte followed by a non-continuation: replaced, and the ASCII kept.
    assert_eq!(s.push(0xE6), None);
    assert_eq!(s.push(b'x' as u32).as_deref(), Some("\u{FFFD}x"));
    // An incomplete tail at the end becomes U+FFFD on flush.
    assert_eq!(s.push(0xE6), None);
    assert_eq!(s.push(0x97), None);
    assert_eq!(s.flush().as_deref(), Some("\u{FFFD}"));
    assert_eq!(s.flush(), None);
    // Control tokens and ids out of range add nothing.
    assert_eq!(s.push(256), None);
    assert_eq!(s.push(u32::MAX), None);
    assert_eq!(
        StreamDecoder::with_special(&tok, true).push(256).as_deref(),
        Some("<|endoftext|>")
    );
}

#[test]
fn streaming_concatenation_equals_decode() {
    let tok = build(&bpe_vocab(&[], &[]));
    let text = "naïve 日本語 🤖 ok";
    let ids = tok.encode(text, false, false).unwrap();
    assert_eq!(ids.len(), text.len(), "one token per byte");
    let mut s = tok.stream_decoder();
    let mut out = String::new();
    let mut emitted = 0;
    for &id in &ids {
        if let Some(t) = s.push(id) {
            emitted += 1;
            out.push_str(&t);
        }
    }
    out.extend(s.flush());
    assert_eq!(out, text);
    assert_eq!(tok.decode(&ids), text);
    assert!(
        emitted < ids.len(),
        "multi-byte characters come out once complete"
    );
}

#[test]
fn bpe_merges_by_rank() {
    let tok = build(&bpe_vocab(
        &[
            ("he", 1),
            ("ll", 1),
            ("hell", 1),
            ("hello", 1),
            ("Ġhello", 1),
            ("Ġh", 1),
        ],
        &["h e", "l l", "he ll", "hell o", "Ġ h", "Ġh ello", "Ġ hello"],
    ));
    let hello = tok.token_id("hello").unwrap();
    let sp_hello = tok.token_id("Ġhello").unwrap();
    // Lowest rank first: "h e" (0), "l l" (1), "he ll" (2), "hell o" (3); the "Ġ h" (4)
    // candidate went stale when "h" merged, so " hello" ends as "Ġ hello" (6).
    assert_eq!(
        tok.encode("hello hello", false, false).unwrap(),
        vec![hello, sp_hello]
    );
    assert_eq!(tok.decode(&[hello, sp_hello]), "hello hello");
    // A pair without a merge stays apart: " h" then the rest.
    let sp_h = tok.token_id("Ġh").unwrap();
    let ll = tok.token_id("ll").unwrap();
    assert_eq!(
        tok.encode(" hxllo", false, false).unwrap(),
        vec![sp_h, b'x' as u32, ll, b'o' as u32]
    );
    assert_eq!(tok.token_text(hello), Some("hello"));
    assert_eq!(tok.token_text(u32::MAX), None);
}

#[test]
fn special_tokens_parse_on_and_off() {
    let md = bpe_vocab(&[("<|im_start|>", 3), ("<tool>", 4)], &[]);
    let tok = build(&md);
    let im_start = tok.token_id("<|im_start|>").unwrap();
    let tool = tok.token_id("<tool>").unwrap();
    assert_eq!(tok.token_type(im_start), Some(TokenType::Control));
    assert_eq!(tok.token_type(tool), Some(TokenType::UserDefined));
    let text = "<|im_start|>a<tool>";
    assert_eq!(
        tok.encode(text, false, true).unwrap(),
        vec![im_start, b'a' as u32, tool]
    );
    // Without parse_special the control token is text; user-defined tokens are still matched.
    let plain = tok.encode(text, false, false).unwrap();
    assert_eq!(plain.len(), "<|im_start|>a".len() + 1);
    assert_eq!(*plain.last().unwrap(), tool);
    assert_eq!(tok.decode(&plain), text);
    // Control tokens render as nothing, user-defined ones as their text.
    assert_eq!(tok.decode(&[im_start, tool]), "<tool>");
    assert_eq!(
        tok.decode_with(&[im_start, tool], true),
        "<|im_start|><tool>"
    );
    // <|endoftext|> is recognised as end of turn / generation.
    assert_eq!(tok.eot(), Some(256));
    assert!(tok.is_eog(256) && !tok.is_eog(im_start));
}

#[test]
fn bpe_bos_eos_per_metadata() {
    let mut md = bpe_vocab(&[], &[]);
    let tok = build(&md);
    assert!(!tok.add_bos(), "BPE adds no BOS unless asked");
    assert_eq!(tok.encode("a", true, true).unwrap(), vec![97]);
    md.set(keys::ADD_BOS, Value::Bool(true));
    md.set(keys::ADD_EOS, Value::Bool(true));
    let tok = build(&md);
    assert_eq!(tok.encode("a", true, true).unwrap(), vec![256, 97, 256]);
    assert_eq!(tok.encode("a", false, true).unwrap(), vec![97]);
    // The llama3 pre-tokenizer implies BOS when the key is absent.
    let mut md = bpe_vocab(&[], &[]);
    md.set(keys::PRE, Value::String("llama-bpe".into()));
    assert!(build(&md).add_bos());
}

#[test]
fn sentencepiece_scores_prefix_and_byte_fallback() {
    let md = spm_vocab(&[
        ("▁", -1.0, 1),
        ("▁h", -2.0, 1),
        ("he", -1.5, 1),
        ("ll", -1.0, 1),
        ("▁he", -3.0, 1),
        ("llo", -2.0, 1),
        ("▁hello", -4.0, 1),
        ("h", -5.0, 1),
        ("e", -5.0, 1),
        ("l", -5.0, 1),
        ("o", -5.0, 1),
        ("<start>", 0.0, 3),
        ("\n\n", 0.0, 4),
    ]);
    let tok = build(&md);
    assert_eq!(tok.kind(), VocabKind::SentencePiece);
    assert!(tok.add_bos() && tok.add_space_prefix());
    let id = |t: &str| tok.token_id(t).unwrap();
    // Default: BOS and a leading space.
    assert_eq!(
        tok.encode("hello", true, true).unwrap(),
        vec![1, id("▁hello")]
    );
    assert_eq!(tok.decode(&[1, id("▁hello")]), " hello");
    // The prefix space comes back after any special token, user-defined ones included.
    assert_eq!(
        tok.encode("<start>hello\n\nhello", false, true).unwrap(),
        vec![id("<start>"), id("▁hello"), id("\n\n"), id("▁hello")]
    );
    // "€" has no token: its three bytes fall back to <0xNN>.
    let euro = tok.encode("€", false, false).unwrap();
    assert_eq!(
        euro,
        vec![id("▁"), id("<0xE2>"), id("<0x82>"), id("<0xAC>")]
    );
    assert_eq!(tok.decode(&euro), " €");
    // add_space_prefix = false.
    let mut md2 = md.clone();
    md2.set(keys::ADD_SPACE_PREFIX, Value::Bool(false));
    let tok2 = build(&md2);
    // Highest score first: "ll" (-1.0), "he" (-1.5), then "llo" (-2.0).
    assert_eq!(
        tok2.encode("hello", false, false).unwrap(),
        vec![id("he"), id("llo")]
    );
    // Empty text: BOS alone with add_special.
    assert_eq!(tok.encode("", true, true).unwrap(), vec![1]);
    assert_eq!(tok.encode("", false, true).unwrap(), Vec::<u32>::new());
}

fn err(md: &Metadata) -> TokenizerError {
    Tokenizer::from_metadata(md).unwrap_err()
}

#[test]
fn malformed_metadata_is_an_error_naming_the_key() {
    let good = bpe_vocab(&[], &["Ġ Ġ"]);
    assert!(Tokenizer::from_metadata(&good).is_ok());

    let mut md = good.clone();
    md.remove(keys::MODEL);
    assert_eq!(err(&md), TokenizerError::MissingKey(keys::MODEL.into()));

    let mut md = good.clone();
    md.set(keys::MODEL, Value::String("t5".into()));
    assert!(err(&md).to_string().contains("\"t5\""));

    let mut md = good.clone();
    md.set(keys::PRE, Value::String("no-such-pre".into()));
    let e = err(&md);
    assert_eq!(e, TokenizerError::UnknownPreTokenizer("no-such-pre".into()));
    assert!(e.to_string().contains("tokenizer.ggml.pre"));

    let mut md = good.clone();
    md.set(keys::TOKENS, Value::Array(Array::I32(vec![1, 2])));
    assert!(err(&md).to_string().contains(keys::TOKENS));

    let mut md = good.clone();
    md.set(keys::TOKEN_TYPE, Value::Array(Array::I32(vec![1; 10])));
    let e = err(&md);
    assert!(
        matches!(&e, TokenizerError::LengthMismatch { key, len: 10, n_vocab: 257 } if key == keys::TOKEN_TYPE),
        "{e}"
    );

    let mut md = good.clone();
    md.set(keys::SCORES, Value::Array(Array::F32(vec![0.0; 300])));
    assert!(err(&md).to_string().contains(keys::SCORES));

    let mut md = good.clone();
    md.set(keys::SCORES, Value::Array(Array::String(vec![])));
    assert!(err(&md).to_string().contains(keys::SCORES));

    let mut md = good.clone();
    md.set(keys::EOS_ID, Value::U32(257));
    let e = err(&md);
    assert_eq!(
        e,
        TokenizerError::IdOutOfRange {
            key: keys::EOS_ID.into(),
            id: 257,
            n_vocab: 257
        }
    );
    assert!(e.to_string().contains(keys::EOS_ID));

    let mut md = good.clone();
    md.set(keys::BOS_ID, Value::I32(-1));
    assert!(err(&md).to_string().contains(keys::BOS_ID));

    let mut md = good.clone();
    md.set(keys::ADD_BOS, Value::U8(1));
    assert!(err(&md).to_string().contains(keys::ADD_BOS));

    let mut md = good.clone();
    md.set(
        keys::MERGES,
        Value::Array(Array::String(vec!["Ġ Ġ".into(), "ab".into()])),
    );
    let e = err(&md);
    assert_eq!(
        e,
        TokenizerError::BadMerge {
            index: 1,
            entry: "ab".into()
        }
    );
    assert!(e.to_string().contains(keys::MERGES));

    let mut md = good.clone();
    md.remove(keys::MERGES);
    assert_eq!(err(&md), TokenizerError::MissingKey(keys::MERGES.into()));

    let mut md = good.clone();
    let Some(Value::Array(Array::String(mut toks))) = md.get(keys::TOKENS).cloned() else {
        unreachable!()
    };
    toks[5] = toks[6].clone();
    md.set(keys::TOKENS, Value::Array(Array::String(toks)));
    assert!(matches!(
        err(&md),
        TokenizerError::DuplicateToken {
            first: 5,
            second: 6,
            ..
        }
    ));

    let mut md = good.clone();
    md.set(keys::TOKENS, Value::Array(Array::String(vec![])));
    assert!(err(&md).to_string().contains(keys::TOKENS));

    // Asked to add BOS, but the vocabulary has none (chatglm has no default BOS).
    let mut md = good.clone();
    md.remove(keys::BOS_ID);
    md.set(keys::PRE, Value::String("chatglm-bpe".into()));
    md.set(keys::ADD_BOS, Value::Bool(true));
    assert!(matches!(
        err(&md),
        TokenizerError::MissingSpecialToken { .. }
    ));

    // SentencePiece: scores must match the vocabulary too.
    let mut md = spm_vocab(&[("▁a", -1.0, 1)]);
    assert!(Tokenizer::from_metadata(&md).is_ok());
    md.set(keys::SCORES, Value::Array(Array::F32(vec![0.0])));
    assert!(err(&md).to_string().contains(keys::SCORES));
}

#[test]
fn ids_out_of_range_never_panic() {
    let tok = build(&bpe_vocab(&[], &[]));
    for id in [257, 1000, u32::MAX] {
        assert!(tok.token_to_piece(id).is_empty());
        assert!(tok.token_to_piece_with(id, true).is_empty());
        assert_eq!(tok.token_text(id), None);
        assert_eq!(tok.token_type(id), None);
        assert!(!tok.is_eog(id));
        assert!(!tok.is_control(id));
    }
    assert_eq!(tok.decode(&[104, u32::MAX, 105]), "hi");
}

#[test]
fn missing_pre_means_default() {
    let mut md = bpe_vocab(&[], &[]);
    md.remove(keys::PRE);
    assert_eq!(build(&md).pre(), Some("default"));
}
