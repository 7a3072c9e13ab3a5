//! Tokenizers built from a GGUF file's own metadata, giving exactly llama.cpp's token ids.
//!
//! Three vocabulary kinds are supported, chosen by `tokenizer.ggml.model`:
//! - `gpt2`: byte-level BPE. The text is split into words by the pre-tokenizer that
//!   `tokenizer.ggml.pre` names (see [`Tokenizer::pre`]), each word's bytes are mapped to
//!   printable characters (GPT-2's byte↔unicode table) and merged by `tokenizer.ggml.merges` rank.
//! - `llama`: SentencePiece BPE (LLaMA 1/2, Gemma): spaces become `▁`, adjacent pieces are merged
//!   by the score of the resulting token, and characters left without a token fall back to
//!   `<0xNN>` byte tokens.
//! - `bert`: WordPiece (see `wordpiece.rs`): normalized words covered by their longest tokens,
//!   `[CLS] … [SEP]` around the text when special tokens are added.
//!
//! Before either runs, special tokens are cut out of the text: USER_DEFINED ones always,
//! CONTROL and UNKNOWN ones when `parse_special` is asked for.
//!
//! Decoding renders each token as llama.cpp's `token_to_piece` does and concatenates the bytes
//! (no clean-up of spaces around punctuation, no stripping of a leading space): what a streaming
//! llama.cpp client prints. [`StreamDecoder`] does the same incrementally.
//!
//! Where llama.cpp is lenient with malformed metadata (it warns and carries on), this module
//! refuses: arrays must have one entry per token, special token ids must be in range and every
//! merge must be two parts separated by a space. Every error names the key.
//!
//! Where llama.cpp's result depends on an unspecified order, a fixed one is used: special tokens
//! of equal length are tried by id, and when several texts could name the end-of-turn or a FIM
//! token the first in llama.cpp's list wins. Not implemented: the other vocabulary kinds
//! (`t5`, `rwkv`, `plamo2`, `gemma4`), the pre-tokenizers outside [`SUPPORTED_PRE_TOKENIZERS`],
//! llama.cpp's model-name rules other than Phi-3's, and the "clean up spaces" pass of
//! `llama_detokenize`.

mod load;
mod merge;
mod nfd_table;
mod pretokenize;
mod special;
mod stream;
mod strtable;
pub(crate) mod unicode;
mod unicode_table;
mod wordpiece;

use std::borrow::Cow;
use std::collections::BTreeSet;

use special::{Fragment, SpecialTokens};
use strtable::StrTable;
use unicode::ByteMap;

pub use stream::StreamDecoder;

/// The Unicode version of the character classes the pre-tokenizers use (llama.cpp's).
pub const UNICODE_VERSION: &str = unicode_table::UNICODE_VERSION;

/// The `tokenizer.ggml.pre` values this module implements, comma separated.
pub const SUPPORTED_PRE_TOKENIZERS: &str = pretokenize::SUPPORTED;

/// Metadata keys read by [`Tokenizer::from_metadata`].
pub mod keys {
    /// Vocabulary kind: `gpt2` or `llama`.
    pub const MODEL: &str = "tokenizer.ggml.model";
    /// Pre-tokenizer of a `gpt2` vocabulary.
    pub const PRE: &str = "tokenizer.ggml.pre";
    /// Token texts.
    pub const TOKENS: &str = "tokenizer.ggml.tokens";
    /// Token scores (SentencePiece merge priorities).
    pub const SCORES: &str = "tokenizer.ggml.scores";
    /// Token types (1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte).
    pub const TOKEN_TYPE: &str = "tokenizer.ggml.token_type";
    /// BPE merges, `"left right"`, best first.
    pub const MERGES: &str = "tokenizer.ggml.merges";
    /// Beginning-of-sequence token id.
    pub const BOS_ID: &str = "tokenizer.ggml.bos_token_id";
    /// End-of-sequence token id.
    pub const EOS_ID: &str = "tokenizer.ggml.eos_token_id";
    /// End-of-turn token id.
    pub const EOT_ID: &str = "tokenizer.ggml.eot_token_id";
    /// End-of-message token id.
    pub const EOM_ID: &str = "tokenizer.ggml.eom_token_id";
    /// Separator token id (`[SEP]`, appended by WordPiece vocabularies; the key's spelling is
    /// the format's).
    pub const SEP_ID: &str = "tokenizer.ggml.seperator_token_id";
    /// Whether a WordPiece vocabulary lowercases the text.
    pub const NORMALIZER_LOWERCASE: &str = "tokenizer.ggml.normalizer.lowercase";
    /// Whether a WordPiece vocabulary strips accents.
    pub const NORMALIZER_STRIP_ACCENTS: &str = "tokenizer.ggml.normalizer.strip_accents";
    /// Unknown token id.
    pub const UNK_ID: &str = "tokenizer.ggml.unknown_token_id";
    /// Padding token id.
    pub const PAD_ID: &str = "tokenizer.ggml.padding_token_id";
    /// Whether encoding with `add_special` prepends BOS.
    pub const ADD_BOS: &str = "tokenizer.ggml.add_bos_token";
    /// Whether encoding with `add_special` appends EOS.
    pub const ADD_EOS: &str = "tokenizer.ggml.add_eos_token";
    /// Whether SentencePiece text gets a leading space.
    pub const ADD_SPACE_PREFIX: &str = "tokenizer.ggml.add_space_prefix";
    /// Fill-in-the-middle prefix token id.
    pub const FIM_PRE_ID: &str = "tokenizer.ggml.fim_pre_token_id";
    /// Fill-in-the-middle suffix token id.
    pub const FIM_SUF_ID: &str = "tokenizer.ggml.fim_suf_token_id";
    /// Fill-in-the-middle middle token id.
    pub const FIM_MID_ID: &str = "tokenizer.ggml.fim_mid_token_id";
    /// Fill-in-the-middle padding token id.
    pub const FIM_PAD_ID: &str = "tokenizer.ggml.fim_pad_token_id";
    /// Fill-in-the-middle repository token id.
    pub const FIM_REP_ID: &str = "tokenizer.ggml.fim_rep_token_id";
    /// Fill-in-the-middle file separator token id.
    pub const FIM_SEP_ID: &str = "tokenizer.ggml.fim_sep_token_id";
    /// Deprecated name of [`FIM_PRE_ID`].
    pub const PREFIX_ID: &str = "tokenizer.ggml.prefix_token_id";
    /// Deprecated name of [`FIM_SUF_ID`].
    pub const SUFFIX_ID: &str = "tokenizer.ggml.suffix_token_id";
    /// Deprecated name of [`FIM_MID_ID`].
    pub const MIDDLE_ID: &str = "tokenizer.ggml.middle_token_id";
}

/// Why a tokenizer could not be built, or a text not encoded.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TokenizerError {
    /// A required key is absent.
    #[error("tokenizer metadata: key {0:?} is missing")]
    MissingKey(String),
    /// A key has the wrong type or an unusable value.
    #[error("tokenizer metadata: key {key:?}: {reason}")]
    BadKey {
        /// The key.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// `tokenizer.ggml.model` names a vocabulary kind this module does not implement.
    #[error("tokenizer metadata: key \"tokenizer.ggml.model\" = {0:?} is not supported (supported: gpt2, llama, bert)")]
    UnsupportedModel(String),
    /// `tokenizer.ggml.pre` names a pre-tokenizer llama.cpp does not know, or this module does
    /// not implement.
    #[error("tokenizer metadata: key \"tokenizer.ggml.pre\" = {0:?} is not a known pre-tokenizer (supported: {list})", list = pretokenize::SUPPORTED)]
    UnknownPreTokenizer(String),
    /// An array has a different number of entries than `tokenizer.ggml.tokens`.
    #[error("tokenizer metadata: key {key:?} has {len} entries, but the vocabulary has {n_vocab} tokens")]
    LengthMismatch {
        /// The key.
        key: String,
        /// Its number of entries.
        len: usize,
        /// Number of tokens.
        n_vocab: usize,
    },
    /// A token id is outside the vocabulary.
    #[error(
        "tokenizer metadata: key {key:?} = {id} is out of range (vocabulary of {n_vocab} tokens)"
    )]
    IdOutOfRange {
        /// The key.
        key: String,
        /// The id.
        id: u64,
        /// Number of tokens.
        n_vocab: usize,
    },
    /// Two tokens have the same text.
    #[error("tokenizer metadata: key \"tokenizer.ggml.tokens\": token {text:?} appears at ids {first} and {second}")]
    DuplicateToken {
        /// The text.
        text: String,
        /// First id.
        first: u32,
        /// Second id.
        second: u32,
    },
    /// A merge is not `"left right"`.
    #[error("tokenizer metadata: key \"tokenizer.ggml.merges\": entry {index} ({entry:?}) is not two parts separated by a space")]
    BadMerge {
        /// Index in the array.
        index: usize,
        /// The entry.
        entry: String,
    },
    /// Adding a special token is asked for, but there is no such token.
    #[error("tokenizer metadata: key {flag_key:?} is true, but {id_key:?} is not set")]
    MissingSpecialToken {
        /// The `add_*` key.
        flag_key: String,
        /// The key that should name the token.
        id_key: String,
    },
    /// A pre-tokenizer regex failed (e.g. its backtracking limit on a pathological input).
    #[error("pre-tokenizer {pre:?}: regex failure: {message}")]
    Regex {
        /// The `tokenizer.ggml.pre` value.
        pre: String,
        /// The regex engine's message.
        message: String,
    },
    /// A SentencePiece byte fallback needs a byte token the vocabulary lacks.
    #[error(
        "the vocabulary has no token for byte 0x{0:02X} (neither <0x{0:02X}> nor the byte itself)"
    )]
    NoByteToken(u8),
    /// A WordPiece word has no tokens and the vocabulary names no unknown token.
    #[error(
        "a word has no WordPiece tokens and the vocabulary has no unknown token \
         (set tokenizer.ggml.unknown_token_id)"
    )]
    NoUnknownToken,
}

/// The kind of vocabulary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VocabKind {
    /// Byte-level BPE (`tokenizer.ggml.model = "gpt2"`).
    Bpe,
    /// SentencePiece BPE (`tokenizer.ggml.model = "llama"`).
    SentencePiece,
    /// WordPiece (`tokenizer.ggml.model = "bert"`).
    WordPiece,
}

/// A token's type, from `tokenizer.ggml.token_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenType {
    /// 0 or any value not listed here.
    Undefined,
    /// 1: an ordinary piece of text.
    Normal,
    /// 2: the unknown token.
    Unknown,
    /// 3: a control token (BOS, EOS, chat markers); renders as nothing by default.
    Control,
    /// 4: a user-defined token, always matched literally in the input.
    UserDefined,
    /// 5: an unused slot.
    Unused,
    /// 6: a byte token `<0xNN>`.
    Byte,
}

impl TokenType {
    fn from_gguf(v: i64) -> TokenType {
        match v {
            1 => TokenType::Normal,
            2 => TokenType::Unknown,
            3 => TokenType::Control,
            4 => TokenType::UserDefined,
            5 => TokenType::Unused,
            6 => TokenType::Byte,
            _ => TokenType::Undefined,
        }
    }
}

// Token attributes, as llama.cpp derives them from the type (plus its adjustments by text).
const ATTR_UNKNOWN: u16 = 1 << 0;
const ATTR_UNUSED: u16 = 1 << 1;
const ATTR_NORMAL: u16 = 1 << 2;
const ATTR_CONTROL: u16 = 1 << 3;
const ATTR_USER_DEFINED: u16 = 1 << 4;
const ATTR_BYTE: u16 = 1 << 5;
const ATTR_LSTRIP: u16 = 1 << 7;
const ATTR_RSTRIP: u16 = 1 << 8;

fn attr_of(t: TokenType) -> u16 {
    match t {
        TokenType::Undefined => 0,
        TokenType::Normal => ATTR_NORMAL,
        TokenType::Unknown => ATTR_UNKNOWN,
        TokenType::Control => ATTR_CONTROL,
        TokenType::UserDefined => ATTR_USER_DEFINED,
        TokenType::Unused => ATTR_UNUSED,
        TokenType::Byte => ATTR_BYTE,
    }
}

const SPACE_MARK: char = '\u{2581}';

/// The tokenization algorithm of the vocabulary's kind, with what it needs besides the shared
/// tables.
enum Algorithm {
    Bpe {
        pre: pretokenize::PreTokenizer,
        /// The merges `"left right"`, by rank (a repeated merge keeps its first rank).
        ranks: StrTable,
        /// Rank of each entry of `ranks`.
        rank_of: Vec<u32>,
        bytes: Box<ByteMap>,
    },
    Spm {
        /// The token of each byte for byte fallback.
        byte_tokens: Box<[Option<u32>; 256]>,
    },
    Wpm(wordpiece::WordPiece),
}

/// A tokenizer built from GGUF metadata. Cheap to share (`Sync`); building one for a 262k-token
/// vocabulary takes a fraction of a second, so build it once per model.
pub struct Tokenizer {
    algorithm: Algorithm,
    /// Token texts by id, and ids by text.
    vocab: StrTable,
    scores: Vec<f32>,
    types: Vec<TokenType>,
    attrs: Vec<u16>,
    special: SpecialTokens,
    bos: Option<u32>,
    eos: Option<u32>,
    eot: Option<u32>,
    eom: Option<u32>,
    unk: Option<u32>,
    pad: Option<u32>,
    eog: BTreeSet<u32>,
    add_bos: bool,
    add_eos: bool,
    add_space_prefix: bool,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("kind", &self.kind())
            .field("pre", &self.pre())
            .field("n_vocab", &self.n_vocab())
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("eog", &self.eog)
            .field("add_bos", &self.add_bos)
            .field("add_eos", &self.add_eos)
            .finish_non_exhaustive()
    }
}

/// Parses the hex byte of a `<0xNN>` token text.
fn byte_of_token_text(text: &str) -> Option<u8> {
    let hex = text.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

impl Tokenizer {
    fn id_of(&self, text: &str) -> Option<u32> {
        self.vocab.find(text)
    }

    /// Renders token `id` with special tokens shown (llama.cpp's `token_to_piece` with
    /// `special = true`); empty for an id out of range.
    fn render(&self, id: u32) -> Cow<'_, [u8]> {
        let i = id as usize;
        let (Some(&attr), Some(text)) = (self.attrs.get(i), self.vocab.get(i)) else {
            return Cow::Borrowed(&[]);
        };
        if attr & (ATTR_UNKNOWN | ATTR_CONTROL | ATTR_USER_DEFINED) != 0 {
            return Cow::Borrowed(text.as_bytes());
        }
        if attr & ATTR_NORMAL != 0 {
            return match &self.algorithm {
                Algorithm::Spm { .. } | Algorithm::Wpm(_) if text.contains(SPACE_MARK) => {
                    Cow::Owned(text.replace(SPACE_MARK, " ").into_bytes())
                }
                Algorithm::Spm { .. } | Algorithm::Wpm(_) => Cow::Borrowed(text.as_bytes()),
                Algorithm::Bpe { bytes, .. } => {
                    let mut out = Vec::with_capacity(text.len());
                    for c in text.chars() {
                        match bytes.byte_of(c) {
                            Some(b) => out.push(b),
                            None => {
                                // llama.cpp's marker for a character outside the byte table.
                                let mut buf = [0u8; 4];
                                out.extend_from_slice(b"[UNK_BYTE_0x");
                                for b in c.encode_utf8(&mut buf).bytes() {
                                    out.extend_from_slice(format!("{b:02x}").as_bytes());
                                }
                                out.extend_from_slice(text.as_bytes());
                                out.push(b']');
                            }
                        }
                    }
                    Cow::Owned(out)
                }
            };
        }
        if attr & ATTR_BYTE != 0 {
            return Cow::Owned(
                byte_of_token_text(text)
                    .map(|b| vec![b])
                    .unwrap_or_default(),
            );
        }
        Cow::Borrowed(&[])
    }

    /// Encodes `text`.
    ///
    /// With `add_special`, BOS and EOS are added as the model's `add_bos_token` /
    /// `add_eos_token` say. With `parse_special`, control tokens written in the text (e.g.
    /// `<|im_start|>`, `<start_of_turn>`) become those tokens; without it they are encoded as
    /// plain text. User-defined tokens are always matched.
    pub fn encode(
        &self,
        text: &str,
        add_special: bool,
        parse_special: bool,
    ) -> Result<Vec<u32>, TokenizerError> {
        let frags = self.special.partition(text, parse_special);
        let mut out = Vec::with_capacity(text.len() / 3 + 2);
        if add_special && self.add_bos {
            out.extend(self.bos);
        }
        match &self.algorithm {
            Algorithm::Spm { byte_tokens } => {
                let mut prev_special = true;
                let mut buf = String::new();
                for frag in frags {
                    match frag {
                        Fragment::Token(id) => {
                            out.push(id);
                            prev_special = true;
                        }
                        Fragment::Text(r) => {
                            buf.clear();
                            if self.add_space_prefix && prev_special {
                                buf.push(SPACE_MARK);
                            }
                            for c in text[r].chars() {
                                buf.push(if c == ' ' { SPACE_MARK } else { c });
                            }
                            self.spm_encode(&buf, byte_tokens, &mut out)?;
                            prev_special = false;
                        }
                    }
                }
            }
            Algorithm::Bpe {
                pre,
                ranks,
                rank_of,
                bytes,
            } => {
                let mut word = String::new();
                let mut key = String::new();
                for frag in frags {
                    match frag {
                        Fragment::Token(id) => out.push(id),
                        Fragment::Text(r) => {
                            let piece = &text[r];
                            for w in pre.split(piece)? {
                                word.clear();
                                bytes.encode(piece[w].as_bytes(), &mut word);
                                let merges = (ranks, rank_of.as_slice());
                                let ignore = pre.options.ignore_merges;
                                self.bpe_encode(&word, ignore, merges, &mut key, &mut out);
                            }
                        }
                    }
                }
            }
            Algorithm::Wpm(wp) => {
                for frag in frags {
                    match frag {
                        Fragment::Token(id) => out.push(id),
                        Fragment::Text(r) => {
                            for word in wp.words(&text[r]) {
                                if !wp.encode_word(&word, |t| self.id_of(t), &mut out) {
                                    out.push(self.unk.ok_or(TokenizerError::NoUnknownToken)?);
                                }
                            }
                        }
                    }
                }
                if add_special {
                    out.extend(wp.sep);
                }
            }
        }
        if add_special && self.add_eos {
            out.extend(self.eos);
        }
        Ok(out)
    }

    fn bpe_encode(
        &self,
        word: &str,
        ignore_merges: bool,
        (ranks, rank_of): (&StrTable, &[u32]),
        key: &mut String,
        out: &mut Vec<u32>,
    ) {
        if ignore_merges {
            if let Some(id) = self.id_of(word) {
                out.push(id);
                return;
            }
        }
        let rank = |l: &str, r: &str| {
            if l.contains(' ') || r.contains(' ') {
                return None;
            }
            key.clear();
            key.push_str(l);
            key.push(' ');
            key.push_str(r);
            let i = ranks.find(key)?;
            rank_of.get(i as usize).copied()
        };
        for (a, b) in merge::bpe(word, rank) {
            let sym = &word[a..b];
            match self.id_of(sym) {
                Some(id) => out.push(id),
                None => {
                    // llama.cpp's fallback: each byte of the byte-level text as a one-byte
                    // token; only ASCII bytes can be one, others are dropped.
                    for &byte in sym.as_bytes() {
                        if byte.is_ascii() {
                            let mut buf = [0u8; 4];
                            if let Some(id) = self.id_of(char::from(byte).encode_utf8(&mut buf)) {
                                out.push(id);
                            }
                        }
                    }
                }
            }
        }
    }

    fn spm_encode(
        &self,
        text: &str,
        byte_tokens: &[Option<u32>; 256],
        out: &mut Vec<u32>,
    ) -> Result<(), TokenizerError> {
        let score = |t: &str| {
            let id = self.id_of(t)?;
            self.scores.get(id as usize).copied()
        };
        for (a, b) in merge::spm(text, score) {
            let sym = &text[a..b];
            match self.id_of(sym) {
                Some(id) => out.push(id),
                None => {
                    for &byte in sym.as_bytes() {
                        let id =
                            byte_tokens[byte as usize].ok_or(TokenizerError::NoByteToken(byte))?;
                        out.push(id);
                    }
                }
            }
        }
        Ok(())
    }

    /// The bytes token `id` stands for, as llama.cpp renders it: byte-level BPE tokens give
    /// their bytes, SentencePiece `▁` gives a space and `<0xNN>` its byte, user-defined tokens
    /// their text; control and unknown tokens give nothing. An id out of range gives nothing.
    pub fn token_to_piece(&self, id: u32) -> Vec<u8> {
        self.token_to_piece_with(id, false)
    }

    /// Like [`token_to_piece`](Self::token_to_piece), but control and unknown tokens render as
    /// their text when `render_special` is true.
    pub fn token_to_piece_with(&self, id: u32, render_special: bool) -> Vec<u8> {
        self.piece(id, render_special).into_owned()
    }

    fn piece(&self, id: u32, render_special: bool) -> Cow<'_, [u8]> {
        let hidden = ATTR_UNKNOWN | ATTR_CONTROL;
        match self.attrs.get(id as usize) {
            Some(a) if render_special || a & hidden == 0 => self.render(id),
            _ => Cow::Borrowed(&[]),
        }
    }

    /// Decodes `ids` to text: the concatenated pieces ([`token_to_piece`](Self::token_to_piece)),
    /// invalid UTF-8 replaced by U+FFFD. Control and unknown tokens and ids out of range give
    /// nothing.
    pub fn decode(&self, ids: &[u32]) -> String {
        self.decode_with(ids, false)
    }

    /// Like [`decode`](Self::decode), rendering control tokens as their text when
    /// `render_special` is true.
    pub fn decode_with(&self, ids: &[u32], render_special: bool) -> String {
        let mut bytes = Vec::new();
        for &id in ids {
            bytes.extend_from_slice(&self.piece(id, render_special));
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// A streaming decoder over this vocabulary.
    pub fn stream_decoder(&self) -> StreamDecoder<'_> {
        StreamDecoder::new(self)
    }

    /// The vocabulary kind.
    pub fn kind(&self) -> VocabKind {
        match self.algorithm {
            Algorithm::Bpe { .. } => VocabKind::Bpe,
            Algorithm::Spm { .. } => VocabKind::SentencePiece,
            Algorithm::Wpm(_) => VocabKind::WordPiece,
        }
    }

    /// The pre-tokenizer name of a BPE vocabulary (`default` when the metadata has none).
    pub fn pre(&self) -> Option<&str> {
        match &self.algorithm {
            Algorithm::Bpe { pre, .. } => Some(pre.name()),
            Algorithm::Spm { .. } | Algorithm::Wpm(_) => None,
        }
    }

    /// Number of tokens.
    pub fn n_vocab(&self) -> usize {
        self.vocab.len()
    }

    /// The text of token `id` as stored in the vocabulary (byte-level or `▁` form), if in range.
    pub fn token_text(&self, id: u32) -> Option<&str> {
        self.vocab.get(id as usize)
    }

    /// The id of the token whose vocabulary text is exactly `text`.
    pub fn token_id(&self, text: &str) -> Option<u32> {
        self.id_of(text)
    }

    /// The type of token `id` from the metadata, if in range.
    pub fn token_type(&self, id: u32) -> Option<TokenType> {
        self.types.get(id as usize).copied()
    }

    /// The score of token `id`, if in range (0 when the metadata has no scores).
    pub fn token_score(&self, id: u32) -> Option<f32> {
        self.scores.get(id as usize).copied()
    }

    /// Whether token `id` is treated as a control token (rendered as nothing, matched in text
    /// only with `parse_special`).
    pub fn is_control(&self, id: u32) -> bool {
        self.attrs
            .get(id as usize)
            .is_some_and(|a| a & ATTR_CONTROL != 0)
    }

    /// Beginning-of-sequence token.
    pub fn bos(&self) -> Option<u32> {
        self.bos
    }

    /// End-of-sequence token.
    pub fn eos(&self) -> Option<u32> {
        self.eos
    }

    /// End-of-turn token (named by the metadata or recognised by its text, e.g. `<|im_end|>`,
    /// `<end_of_turn>`, `<|eot_id|>`).
    pub fn eot(&self) -> Option<u32> {
        self.eot
    }

    /// End-of-message token (`<|eom_id|>`).
    pub fn eom(&self) -> Option<u32> {
        self.eom
    }

    /// Unknown token.
    pub fn unk(&self) -> Option<u32> {
        self.unk
    }

    /// Padding token.
    pub fn pad(&self) -> Option<u32> {
        self.pad
    }

    /// Whether generation should stop at token `id`: EOS, EOT, EOM and the tokens llama.cpp
    /// treats as ending generation (`<|im_end|>`, `<end_of_turn>`, `<|endoftext|>`, FIM
    /// padding/repository/separator tokens, ...). False for ids out of range.
    pub fn is_eog(&self, id: u32) -> bool {
        self.eog.contains(&id)
    }

    /// All end-of-generation tokens, ascending.
    pub fn eog_tokens(&self) -> impl Iterator<Item = u32> + '_ {
        self.eog.iter().copied()
    }

    /// Whether encoding with `add_special` prepends BOS.
    pub fn add_bos(&self) -> bool {
        self.add_bos
    }

    /// Whether encoding with `add_special` appends EOS.
    pub fn add_eos(&self) -> bool {
        self.add_eos
    }

    /// Whether SentencePiece text gets a leading space (after BOS, at the start, and after
    /// each special token).
    pub fn add_space_prefix(&self) -> bool {
        self.add_space_prefix
    }

    /// Approximate heap bytes this tokenizer holds (for memory budgets): about the vocabulary's
    /// text plus 20 bytes a token, and the merges' text plus 16 bytes a merge.
    pub fn heap_bytes(&self) -> usize {
        let algorithm = match &self.algorithm {
            Algorithm::Bpe { ranks, rank_of, .. } => {
                ranks.heap_bytes() + 4 * rank_of.capacity() + std::mem::size_of::<ByteMap>()
            }
            Algorithm::Spm { .. } => 256 * std::mem::size_of::<Option<u32>>(),
            Algorithm::Wpm(_) => 0,
        };
        self.vocab.heap_bytes()
            + 4 * self.scores.capacity()
            + std::mem::size_of::<TokenType>() * self.types.capacity()
            + 2 * self.attrs.capacity()
            + self.special.heap_bytes()
            + 40 * self.eog.len()
            + algorithm
    }

    /// Number of tokens matched literally before tokenization (control, user-defined and
    /// unknown tokens).
    pub fn n_special(&self) -> usize {
        self.special.len()
    }
}

#[cfg(test)]
mod tests;
