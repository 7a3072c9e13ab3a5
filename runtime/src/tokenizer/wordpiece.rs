//! WordPiece (`tokenizer.ggml.model = "bert"`), the way llama.cpp runs it: the text is
//! normalized (accents stripped through each code point's canonical decomposition, lowercased)
//! and cut into words at whitespace, punctuation, ASCII symbols and CJK ideographs; each word,
//! prefixed with `▁` (the converter's mark of a word start), is covered greedily from the left by
//! the longest tokens of the vocabulary. A word with any part left uncovered becomes the unknown
//! token as a whole.

use super::nfd_table::NFD_FIRST;
use super::unicode::{class, is_whitespace, Class};

/// The mark the GGUF converter puts before word-initial WordPiece tokens.
const WORD_START: char = '\u{2581}';

/// WordPiece settings read from the metadata.
#[derive(Debug, Clone)]
pub(crate) struct WordPiece {
    /// Appended after the text when special tokens are added (`[SEP]`).
    pub(crate) sep: Option<u32>,
    /// Lowercase the text (`tokenizer.ggml.normalizer.lowercase`, default on).
    lowercase: bool,
    /// Strip accents (`tokenizer.ggml.normalizer.strip_accents`, default: as `lowercase`).
    strip_accents: bool,
    /// Longest token text in bytes: no match is tried beyond it.
    max_token_len: usize,
}

/// The first code point of `c`'s canonical decomposition.
fn nfd_base(c: char) -> char {
    let cp = c as u32;
    let i = NFD_FIRST.partition_point(|&(first, _, _)| first <= cp);
    match i.checked_sub(1).map(|i| NFD_FIRST[i]) {
        Some((_, last, base)) if cp <= last => char::from_u32(base).unwrap_or(c),
        _ => c,
    }
}

/// CJK ideographs that BERT makes words of their own (the ranges llama.cpp takes from Hugging
/// Face's tokenizer, including its 0x2B920 start).
fn is_cjk(c: char) -> bool {
    matches!(c as u32,
        0x4E00..=0x9FFF
            | 0x3400..=0x4DBF
            | 0x20000..=0x2A6DF
            | 0x2A700..=0x2B73F
            | 0x2B740..=0x2B81F
            | 0x2B920..=0x2CEAF
            | 0xF900..=0xFAFF
            | 0x2F800..=0x2FA1F)
}

impl WordPiece {
    /// Settings from the normalizer flags (absent: lowercase and strip accents) and the
    /// vocabulary's longest token.
    pub(crate) fn new(
        lowercase: Option<bool>,
        strip_accents: Option<bool>,
        sep: Option<u32>,
        max_token_len: usize,
    ) -> WordPiece {
        let lowercase = lowercase.unwrap_or(true);
        WordPiece {
            sep,
            lowercase,
            strip_accents: strip_accents.unwrap_or(lowercase),
            max_token_len,
        }
    }

    /// The normalized words of `text`, each starting with `▁`.
    pub(crate) fn words(&self, text: &str) -> Vec<String> {
        let mut words = Vec::new();
        let mut word = String::new();
        let finish = |word: &mut String, words: &mut Vec<String>| {
            if !word.is_empty() {
                words.push(format!("{WORD_START}{word}"));
                word.clear();
            }
        };
        for c in text.chars() {
            let c = if self.strip_accents { nfd_base(c) } else { c };
            if is_whitespace(c) {
                finish(&mut word, &mut words);
                continue;
            }
            let cls = class(c);
            if c == '\0' || c == '\u{FFFD}' || cls == Class::Control {
                continue;
            }
            if self.strip_accents && cls == Class::Mark {
                continue;
            }
            let c = if self.lowercase {
                c.to_lowercase().next().unwrap_or(c)
            } else {
                c
            };
            if cls == Class::Punctuation || (c.is_ascii() && cls == Class::Symbol) || is_cjk(c) {
                finish(&mut word, &mut words);
                word.push(c);
                finish(&mut word, &mut words);
            } else {
                word.push(c);
            }
        }
        finish(&mut word, &mut words);
        words
    }

    /// Covers `word` greedily with the longest tokens `find` knows, appending their ids to
    /// `out`; `false` (and nothing appended) when some part has no token.
    pub(crate) fn encode_word(
        &self,
        word: &str,
        find: impl Fn(&str) -> Option<u32>,
        out: &mut Vec<u32>,
    ) -> bool {
        let start_len = out.len();
        let mut i = 0;
        while i < word.len() {
            let limit = word.len().min(i + self.max_token_len);
            let found = (i + 1..=limit)
                .rev()
                .filter(|&j| word.is_char_boundary(j))
                .find_map(|j| find(&word[i..j]).map(|id| (id, j)));
            match found {
                Some((id, j)) => {
                    out.push(id);
                    i = j;
                }
                None => {
                    out.truncate(start_len);
                    return false;
                }
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_and_splits() {
        let wp = WordPiece::new(None, None, Some(102), 16);
        assert_eq!(
            wp.words("Crème  brûlée,\tİstanbul 日本x $5 a\u{200D}b"),
            [
                "▁creme",
                "▁brulee",
                "▁,",
                "▁istanbul",
                "▁日",
                "▁本",
                "▁x",
                "▁$",
                "▁5",
                "▁ab"
            ]
        );
        let keep = WordPiece::new(Some(false), None, None, 16);
        assert_eq!(keep.words("Crème"), ["▁Crème"]);
    }

    #[test]
    fn greedy_longest_match() {
        let wp = WordPiece::new(None, None, None, 8);
        let vocab = ["▁un", "▁unaff", "aff", "able", "▁a"];
        let find = |t: &str| vocab.iter().position(|&v| v == t).map(|i| i as u32);
        let mut out = vec![7];
        assert!(wp.encode_word("▁unaffable", find, &mut out));
        assert_eq!(out, [7, 1, 3]);
        assert!(!wp.encode_word("▁unxable", find, &mut out));
        assert_eq!(out, [7, 1, 3]);
    }
}
