//! Building a [`Tokenizer`] from GGUF metadata: the vocabulary, the algorithm of its kind, the
//! special token ids, the end-of-generation set and llama.cpp's per-family rules.

use std::collections::BTreeSet;

use flashstream_formats::gguf::{Array, Metadata, Value};

use super::special::{SpecialToken, SpecialTokens};
use super::strtable::StrTable;
use super::unicode::ByteMap;
use super::*;

// Texts llama.cpp recognises as special tokens when the metadata does not name them.
const EOT_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "<\u{FF5C}end\u{2581}of\u{2581}sentence\u{FF5C}>",
    "<end_of_utterance>",
];
const EOM_TEXTS: &[&str] = &["<|eom_id|>"];
const FIM_PRE_TEXTS: &[&str] = &[
    "<|fim_prefix|>",
    "<fim-prefix>",
    "<fim_prefix>",
    "<\u{FF5C}fim\u{2581}begin\u{FF5C}>",
    "<PRE>",
    "\u{2581}<PRE>",
    "<|code_prefix|>",
    "<|prefix|>",
];
const FIM_SUF_TEXTS: &[&str] = &[
    "<|fim_suffix|>",
    "<fim-suffix>",
    "<fim_suffix>",
    "<\u{FF5C}fim\u{2581}hole\u{FF5C}>",
    "<SUF>",
    "\u{2581}<SUF>",
    "<|code_suffix|>",
    "<|suffix|>",
];
const FIM_MID_TEXTS: &[&str] = &[
    "<|fim_middle|>",
    "<fim-middle>",
    "<fim_middle>",
    "<\u{FF5C}fim\u{2581}end\u{FF5C}>",
    "<MID>",
    "\u{2581}<MID>",
    "<|code_middle|>",
    "<|middle|>",
];
const FIM_PAD_TEXTS: &[&str] = &["<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"];
const FIM_REP_TEXTS: &[&str] = &[
    "<|fim_repo|>",
    "<|repo_name|>",
    "<fim-repo>",
    "<REPO>",
    "<reponame>",
];
const FIM_SEP_TEXTS: &[&str] = &["<|file_sep|>"];
const EOG_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    "<|flush|>",
    "<|calls|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "</s>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "[EOS]",
    "<|end_of_text|>",
    "<end_of_utterance>",
    "<eos>",
    "<turn|>",
    "<|tool_response>",
    "<\u{FF5C}end\u{2581}of\u{2581}sentence\u{FF5C}>",
    "[e~[",
];
/// Tokens llama.cpp always renders (gpt-oss's harmony format).
const ALWAYS_RENDERED: &[&str] = &["<|channel|>", "<|message|>", "<|start|>", "<|constrain|>"];

/// Typed access to the metadata, with errors that name the key.
struct Md<'a>(&'a Metadata);

impl<'a> Md<'a> {
    fn str(&self, key: &str) -> Result<Option<&'a str>, TokenizerError> {
        match self.0.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(bad(key, "expected a string")),
        }
    }

    fn bool(&self, key: &str) -> Result<Option<bool>, TokenizerError> {
        match self.0.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(_) => Err(bad(key, "expected a bool")),
        }
    }

    fn id(&self, key: &str, n_vocab: usize) -> Result<Option<u32>, TokenizerError> {
        let Some(v) = self.0.get(key) else {
            return Ok(None);
        };
        let id = v
            .as_u64()
            .ok_or_else(|| bad(key, "expected a non-negative integer"))?;
        if id >= n_vocab as u64 {
            return Err(TokenizerError::IdOutOfRange {
                key: key.to_string(),
                id,
                n_vocab,
            });
        }
        Ok(Some(id as u32))
    }

    fn array(&self, key: &str) -> Result<Option<&'a Array>, TokenizerError> {
        match self.0.get(key) {
            None => Ok(None),
            Some(Value::Array(a)) => Ok(Some(a)),
            Some(_) => Err(bad(key, "expected an array")),
        }
    }
}

fn bad(key: &str, reason: impl Into<String>) -> TokenizerError {
    TokenizerError::BadKey {
        key: key.to_string(),
        reason: reason.into(),
    }
}

fn check_len(key: &str, len: usize, n_vocab: usize) -> Result<(), TokenizerError> {
    if len != n_vocab {
        return Err(TokenizerError::LengthMismatch {
            key: key.to_string(),
            len,
            n_vocab,
        });
    }
    Ok(())
}

fn int_array(key: &str, a: &Array) -> Result<Vec<i64>, TokenizerError> {
    Ok(match a {
        Array::I32(v) => v.iter().map(|&x| x as i64).collect(),
        Array::U32(v) => v.iter().map(|&x| x as i64).collect(),
        Array::I8(v) => v.iter().map(|&x| x as i64).collect(),
        Array::U8(v) => v.iter().map(|&x| x as i64).collect(),
        Array::I16(v) => v.iter().map(|&x| x as i64).collect(),
        Array::U16(v) => v.iter().map(|&x| x as i64).collect(),
        Array::I64(v) => v.clone(),
        Array::U64(v) => v.iter().map(|&x| i64::try_from(x).unwrap_or(-1)).collect(),
        _ => {
            return Err(bad(
                key,
                format!(
                    "expected an integer array, found {:?} elements",
                    a.element_type()
                ),
            ))
        }
    })
}

fn float_array(key: &str, a: &Array) -> Result<Vec<f32>, TokenizerError> {
    Ok(match a {
        Array::F32(v) => v.clone(),
        Array::F64(v) => v.iter().map(|&x| x as f32).collect(),
        Array::I32(v) => v.iter().map(|&x| x as f32).collect(),
        _ => {
            return Err(bad(
                key,
                format!(
                    "expected a float array, found {:?} elements",
                    a.element_type()
                ),
            ))
        }
    })
}

impl Tokenizer {
    /// Builds the tokenizer described by `metadata` (the `tokenizer.ggml.*` keys; `general.name`
    /// is read for one llama.cpp model-specific rule).
    ///
    /// Absent keys take llama.cpp's defaults: SentencePiece vocabularies add BOS (id 1) and a
    /// leading space, BPE ones add BOS only where the pre-tokenizer implies it (llama3 family)
    /// or `add_bos_token` says so. A missing or empty `tokenizer.ggml.pre` means `default` (with
    /// a warning, as llama.cpp does); an unknown one is an error naming it (llama.cpp refuses
    /// it too).
    pub fn from_metadata(metadata: &Metadata) -> Result<Tokenizer, TokenizerError> {
        let md = Md(metadata);
        let kind = vocab_kind(&md)?;
        let Vocabulary {
            texts: vocab,
            scores,
            types,
            mut attrs,
            max_len,
        } = vocabulary(&md)?;
        let n_vocab = vocab.len();
        let (algorithm, defaults) = match kind {
            VocabKind::SentencePiece => spm(&vocab),
            VocabKind::WordPiece => wpm(&md, n_vocab, max_len)?,
            VocabKind::Bpe => bpe(&md)?,
        };
        let add_space_prefix = md
            .bool(keys::ADD_SPACE_PREFIX)?
            .unwrap_or(defaults.add_space_prefix);
        let mut ids = special_ids(&md, n_vocab, &defaults)?;
        let (add_bos, add_eos) = bos_eos_flags(&md, &ids, &defaults)?;
        control_tokens_by_text(&mut ids, &mut attrs, &vocab);
        mark_unused(&mut attrs, &vocab);
        let mut eog = end_of_generation(&ids, &mut attrs, &vocab);
        always_rendered(&mut attrs, &vocab);
        family_rules(&md, &mut eog, &mut attrs, &vocab);
        let special = special_tokens(&attrs, &vocab);
        Ok(Tokenizer {
            algorithm,
            vocab,
            scores,
            types,
            attrs,
            special,
            bos: ids[BOS],
            eos: ids[EOS],
            eot: ids[EOT],
            eom: ids[EOM],
            unk: ids[UNK],
            pad: ids[PAD],
            eog,
            add_bos,
            add_eos,
            add_space_prefix,
        })
    }
}

/// The vocabulary's kind (`tokenizer.ggml.model`).
fn vocab_kind(md: &Md<'_>) -> Result<VocabKind, TokenizerError> {
    let model = md
        .str(keys::MODEL)?
        .ok_or_else(|| TokenizerError::MissingKey(keys::MODEL.into()))?;
    match model {
        "gpt2" => Ok(VocabKind::Bpe),
        "llama" => Ok(VocabKind::SentencePiece),
        "bert" => Ok(VocabKind::WordPiece),
        other => Err(TokenizerError::UnsupportedModel(other.to_string())),
    }
}

/// The token table, by id.
struct Vocabulary {
    /// Texts by id, and ids by text.
    texts: StrTable,
    scores: Vec<f32>,
    types: Vec<TokenType>,
    /// Attributes from the types (the later steps add to them).
    attrs: Vec<u16>,
    /// Longest text in the metadata, in bytes.
    max_len: usize,
}

/// The token texts, scores and types.
fn vocabulary(md: &Md<'_>) -> Result<Vocabulary, TokenizerError> {
    let texts_in = match md.array(keys::TOKENS)? {
        Some(Array::String(v)) => v,
        Some(_) => return Err(bad(keys::TOKENS, "expected an array of strings")),
        None => return Err(TokenizerError::MissingKey(keys::TOKENS.into())),
    };
    let n_vocab = texts_in.len();
    if n_vocab == 0 {
        return Err(bad(keys::TOKENS, "the vocabulary is empty"));
    }
    if n_vocab > i32::MAX as usize {
        return Err(bad(keys::TOKENS, "too many tokens"));
    }
    let scores = match md.array(keys::SCORES)? {
        Some(a) => {
            check_len(keys::SCORES, a.len(), n_vocab)?;
            float_array(keys::SCORES, a)?
        }
        None => vec![0.0; n_vocab],
    };
    let types: Vec<TokenType> = match md.array(keys::TOKEN_TYPE)? {
        Some(a) => {
            check_len(keys::TOKEN_TYPE, a.len(), n_vocab)?;
            int_array(keys::TOKEN_TYPE, a)?
                .into_iter()
                .map(TokenType::from_gguf)
                .collect()
        }
        None => vec![TokenType::Normal; n_vocab],
    };
    let attrs: Vec<u16> = types.iter().map(|&t| attr_of(t)).collect();

    let too_large = |_| bad(keys::TOKENS, "the vocabulary's text is too large");
    let mut texts = StrTable::with_capacity(n_vocab, texts_in.iter().map(String::len).sum());
    for (i, t) in texts_in.iter().enumerate() {
        // llama.cpp names empty tokens rather than leaving them empty.
        let named;
        let text = if t.is_empty() {
            named = format!("[EMPTY_{i}]");
            &named
        } else {
            t
        };
        if let Err(first) = texts.push(text).map_err(too_large)? {
            return Err(TokenizerError::DuplicateToken {
                text: text.clone(),
                first,
                second: i as u32,
            });
        }
    }
    Ok(Vocabulary {
        texts,
        scores,
        types,
        attrs,
        max_len: texts_in.iter().map(String::len).max().unwrap_or(0),
    })
}

/// What the vocabulary's kind implies before the metadata says otherwise.
struct KindDefaults {
    add_space_prefix: bool,
    add_bos: bool,
    add_eos: bool,
    bos: Option<u32>,
    eos: Option<u32>,
    unk: Option<u32>,
}

/// SentencePiece: the token of each byte for byte fallback.
fn spm(vocab: &StrTable) -> (Algorithm, KindDefaults) {
    let mut byte_tokens = Box::new([None; 256]);
    for (b, slot) in byte_tokens.iter_mut().enumerate() {
        let hex = format!("<0x{b:02X}>");
        *slot = vocab.find(&hex).or_else(|| {
            // Fallback: the byte itself as a one-byte text (ASCII only in UTF-8).
            let b = u8::try_from(b).ok().filter(u8::is_ascii)?;
            let mut buf = [0u8; 4];
            vocab.find(char::from(b).encode_utf8(&mut buf))
        });
    }
    let defaults = KindDefaults {
        add_space_prefix: true,
        add_bos: true,
        add_eos: false,
        bos: Some(1),
        eos: Some(2),
        unk: Some(0),
    };
    (Algorithm::Spm { byte_tokens }, defaults)
}

/// WordPiece: the normalizer's options and the separator.
fn wpm(
    md: &Md<'_>,
    n_vocab: usize,
    max_len: usize,
) -> Result<(Algorithm, KindDefaults), TokenizerError> {
    let sep = md
        .id(keys::SEP_ID, n_vocab)?
        .or(Some(102))
        .filter(|&i| (i as usize) < n_vocab);
    let wp = wordpiece::WordPiece::new(
        md.bool(keys::NORMALIZER_LOWERCASE)?,
        md.bool(keys::NORMALIZER_STRIP_ACCENTS)?,
        sep,
        max_len,
    );
    // llama.cpp's defaults: [CLS] 101 opens, [SEP] 102 closes, [UNK] is 100.
    let defaults = KindDefaults {
        add_space_prefix: false,
        add_bos: true,
        add_eos: false,
        bos: Some(101),
        eos: None,
        unk: Some(100),
    };
    Ok((Algorithm::Wpm(wp), defaults))
}

/// BPE: the pre-tokenizer and the merge ranks.
fn bpe(md: &Md<'_>) -> Result<(Algorithm, KindDefaults), TokenizerError> {
    let pre_name = match md.str(keys::PRE)? {
        Some(p) if !p.is_empty() => p,
        _ => {
            tracing::warn!(
                "tokenizer metadata has no {}: using 'default' (generation quality may suffer)",
                keys::PRE
            );
            "default"
        }
    };
    let pre = pretokenize::PreTokenizer::new(pre_name)?
        .ok_or_else(|| TokenizerError::UnknownPreTokenizer(pre_name.to_string()))?;
    let (ranks, rank_of) = merges(md)?;
    let defaults = KindDefaults {
        add_space_prefix: false,
        add_bos: pre.options.add_bos,
        add_eos: false,
        bos: if pre.options.no_default_bos {
            None
        } else {
            Some(11)
        },
        eos: Some(11),
        unk: None,
    };
    let algorithm = Algorithm::Bpe {
        pre,
        ranks,
        rank_of,
        bytes: Box::new(ByteMap::new()),
    };
    Ok((algorithm, defaults))
}

/// The BPE merges `"left right"` and the rank of each (a repeated merge keeps its first).
fn merges(md: &Md<'_>) -> Result<(StrTable, Vec<u32>), TokenizerError> {
    let merges = match md.array(keys::MERGES)? {
        Some(Array::String(v)) => v,
        Some(_) => return Err(bad(keys::MERGES, "expected an array of strings")),
        None => return Err(TokenizerError::MissingKey(keys::MERGES.into())),
    };
    let mut ranks = StrTable::with_capacity(merges.len(), merges.iter().map(String::len).sum());
    let mut rank_of = Vec::with_capacity(merges.len());
    for (i, m) in merges.iter().enumerate() {
        // The separator is the first space after the first byte (a part may itself start
        // with a space in some vocabularies).
        let sep = m
            .as_bytes()
            .iter()
            .skip(1)
            .position(|&b| b == b' ')
            .map(|p| p + 1);
        let Some(sep) = sep else {
            return Err(TokenizerError::BadMerge {
                index: i,
                entry: m.clone(),
            });
        };
        if sep + 1 >= m.len() {
            return Err(TokenizerError::BadMerge {
                index: i,
                entry: m.clone(),
            });
        }
        let too_many = |_| bad(keys::MERGES, "too many merges");
        let rank = u32::try_from(i).map_err(too_many)?;
        // A repeated merge keeps its first rank.
        if ranks
            .push(m)
            .map_err(|_| bad(keys::MERGES, "too large"))?
            .is_ok()
        {
            rank_of.push(rank);
        }
    }
    Ok((ranks, rank_of))
}

// Slots of the special ids.
const BOS: usize = 0;
const EOS: usize = 1;
const EOT: usize = 2;
const EOM: usize = 3;
const UNK: usize = 4;
const PAD: usize = 5;
const FIM_PRE: usize = 6;
const FIM_SUF: usize = 7;
const FIM_MID: usize = 8;
const FIM_PAD: usize = 9;
const FIM_REP: usize = 10;
const FIM_SEP: usize = 11;

/// The special token ids, by slot.
type SpecialIds = [Option<u32>; 12];

/// The kind's default BOS, EOS and UNK (those inside the vocabulary), then the ids the
/// metadata names, in llama.cpp's order (the deprecated FIM keys come last and win).
fn special_ids(
    md: &Md<'_>,
    n_vocab: usize,
    defaults: &KindDefaults,
) -> Result<SpecialIds, TokenizerError> {
    let in_range = |id: Option<u32>| id.filter(|&i| (i as usize) < n_vocab);
    let mut ids: SpecialIds = [None; 12];
    (ids[BOS], ids[EOS], ids[UNK]) = (
        in_range(defaults.bos),
        in_range(defaults.eos),
        in_range(defaults.unk),
    );
    for (key, slot) in [
        (keys::BOS_ID, BOS),
        (keys::EOS_ID, EOS),
        (keys::EOT_ID, EOT),
        (keys::EOM_ID, EOM),
        (keys::UNK_ID, UNK),
        (keys::PAD_ID, PAD),
        (keys::FIM_PRE_ID, FIM_PRE),
        (keys::FIM_SUF_ID, FIM_SUF),
        (keys::FIM_MID_ID, FIM_MID),
        (keys::FIM_PAD_ID, FIM_PAD),
        (keys::FIM_REP_ID, FIM_REP),
        (keys::FIM_SEP_ID, FIM_SEP),
        (keys::PREFIX_ID, FIM_PRE),
        (keys::SUFFIX_ID, FIM_SUF),
        (keys::MIDDLE_ID, FIM_MID),
    ] {
        if let Some(id) = md.id(key, n_vocab)? {
            ids[slot] = Some(id);
        }
    }
    Ok(ids)
}

/// Whether to add BOS and EOS: the metadata's flags over the kind's defaults; a flag set
/// without its token is an error.
fn bos_eos_flags(
    md: &Md<'_>,
    ids: &SpecialIds,
    defaults: &KindDefaults,
) -> Result<(bool, bool), TokenizerError> {
    let add_bos = md.bool(keys::ADD_BOS)?.unwrap_or(defaults.add_bos);
    let add_eos = md.bool(keys::ADD_EOS)?.unwrap_or(defaults.add_eos);
    if add_bos && ids[BOS].is_none() {
        return Err(TokenizerError::MissingSpecialToken {
            flag_key: keys::ADD_BOS.into(),
            id_key: keys::BOS_ID.into(),
        });
    }
    if add_eos && ids[EOS].is_none() {
        return Err(TokenizerError::MissingSpecialToken {
            flag_key: keys::ADD_EOS.into(),
            id_key: keys::EOS_ID.into(),
        });
    }
    Ok((add_bos, add_eos))
}

/// llama.cpp recognises unnamed special tokens by their text and makes them control tokens.
/// Where several texts match (e.g. both `<|im_end|>` and `<|endoftext|>`), llama.cpp takes
/// whichever its hash map yields first; we take the first in list order.
fn control_tokens_by_text(ids: &mut SpecialIds, attrs: &mut [u16], vocab: &StrTable) {
    let find = |list: &[&str]| list.iter().find_map(|t| vocab.find(t));
    for (slot, list) in [
        (EOT, EOT_TEXTS),
        (EOM, EOM_TEXTS),
        (FIM_PRE, FIM_PRE_TEXTS),
        (FIM_SUF, FIM_SUF_TEXTS),
        (FIM_MID, FIM_MID_TEXTS),
        (FIM_PAD, FIM_PAD_TEXTS),
        (FIM_REP, FIM_REP_TEXTS),
        (FIM_SEP, FIM_SEP_TEXTS),
    ] {
        if ids[slot].is_none() {
            if let Some(id) = find(list) {
                ids[slot] = Some(id);
                attrs[id as usize] |= ATTR_CONTROL;
            }
        }
    }
}

/// Control tokens named "...unused..." are unused slots.
fn mark_unused(attrs: &mut [u16], vocab: &StrTable) {
    for (i, a) in attrs.iter_mut().enumerate() {
        if *a & ATTR_CONTROL != 0 && vocab.get(i).is_some_and(|t| t.contains("unused")) {
            *a |= ATTR_UNUSED;
        }
    }
}

/// The end-of-generation tokens: the FIM pad/repo/separator ids, the texts llama.cpp knows
/// (made control tokens), and EOS, EOT and EOM.
fn end_of_generation(ids: &SpecialIds, attrs: &mut [u16], vocab: &StrTable) -> BTreeSet<u32> {
    let mut eog: BTreeSet<u32> = [ids[FIM_PAD], ids[FIM_REP], ids[FIM_SEP]]
        .into_iter()
        .flatten()
        .collect();
    for t in EOG_TEXTS {
        if let Some(id) = vocab.find(t) {
            eog.insert(id);
            attrs[id as usize] |= ATTR_CONTROL;
        }
    }
    eog.extend([ids[EOS], ids[EOT], ids[EOM]].into_iter().flatten());
    eog
}

/// Tokens llama.cpp always renders become user-defined.
fn always_rendered(attrs: &mut [u16], vocab: &StrTable) {
    for t in ALWAYS_RENDERED {
        if let Some(id) = vocab.find(t) {
            attrs[id as usize] = ATTR_USER_DEFINED;
        }
    }
}

/// llama.cpp's rules for particular model families.
fn family_rules(md: &Md<'_>, eog: &mut BTreeSet<u32>, attrs: &mut [u16], vocab: &StrTable) {
    let eog_id = |eog: &BTreeSet<u32>, t: &str| vocab.find(t).filter(|id| eog.contains(id));
    // gpt-oss (harmony) and solar-open end turns with <|return|>/<|call|> or
    // <|calls|>/<|flush|>, and use <|end|> mid-stream.
    if let Some(end) = eog_id(eog, "<|end|>") {
        let has = |t: &str| eog_id(eog, t).is_some();
        let call = has("<|call|>") || has("<|calls|>");
        if call && (has("<|return|>") || has("<|flush|>")) {
            eog.remove(&end);
            attrs[end as usize] = ATTR_USER_DEFINED;
        }
    }
    // Gemma 4 uses </s> inside tool responses.
    if let (Some(s), Some(_)) = (eog_id(eog, "</s>"), eog_id(eog, "<|tool_response>")) {
        eog.remove(&s);
        attrs[s as usize] = ATTR_NORMAL;
    }
    // Phi-3 strips whitespace after its special tokens (llama.cpp keys this on the name).
    let name = md
        .str("general.name")
        .ok()
        .flatten()
        .unwrap_or("")
        .to_lowercase();
    if name.contains("phi-3") || name.contains("phi3") {
        for a in attrs.iter_mut().filter(|a| is_special(**a)) {
            *a |= ATTR_RSTRIP;
        }
        if let Some(id) = vocab.find("</s>") {
            attrs[id as usize] |= ATTR_RSTRIP;
        }
        for t in ["<unk>", "<s>", "<|endoftext|>"] {
            if let Some(id) = vocab.find(t) {
                attrs[id as usize] &= !ATTR_RSTRIP;
            }
        }
    }
}

/// Whether attributes make a token special (matched in text when parsing specials).
fn is_special(a: u16) -> bool {
    a & (ATTR_CONTROL | ATTR_USER_DEFINED | ATTR_UNKNOWN) != 0
}

/// The special tokens, for matching in text.
fn special_tokens(attrs: &[u16], vocab: &StrTable) -> SpecialTokens {
    SpecialTokens::new(
        (0..attrs.len())
            .filter(|&i| is_special(attrs[i]))
            .map(|i| {
                let a = attrs[i];
                let tok = SpecialToken {
                    id: i as u32,
                    needs_parse_special: a & (ATTR_CONTROL | ATTR_UNKNOWN) != 0,
                    lstrip: a & ATTR_LSTRIP != 0,
                    rstrip: a & ATTR_RSTRIP != 0,
                };
                (tok, vocab.get(i).unwrap_or_default().into())
            })
            .collect(),
    )
}
