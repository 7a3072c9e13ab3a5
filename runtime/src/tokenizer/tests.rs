//! Unit tests on small hand-made vocabularies.

use super::*;
use flashstream_formats::gguf::{Array, Metadata, Value};

/// A byte-level vocabulary like the random test models': every byte is a token (in byte order),
/// plus `<|endoftext|>` (control) and any extra tokens given.
pub(super) fn byte_vocab(extra: &[(&str, i32)], merges: &[&str]) -> Metadata {
    let bm = ByteMap::new();
    let mut tokens: Vec<String> = (0..=255u8).map(|b| bm.char_of(b).to_string()).collect();
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
    md.set(keys::ADD_BOS, Value::Bool(false));
    md
}

#[test]
fn byte_vocab_encodes_bytes() {
    let tok = Tokenizer::from_metadata(&byte_vocab(&[], &[])).unwrap();
    assert_eq!(tok.kind(), VocabKind::Bpe);
    assert_eq!(
        tok.encode("Hi é", true, true).unwrap(),
        vec![72, 105, 32, 0xC3, 0xA9]
    );
    assert_eq!(tok.decode(&[72, 105, 32, 0xC3, 0xA9]), "Hi é");
    assert!(tok.is_eog(256));
    assert!(!tok.is_eog(257));
}

#[test]
fn tokenizer_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Tokenizer>();
}
