//! Splitting special tokens out of the text before the model's tokenizer runs.
//!
//! llama.cpp takes the special tokens (CONTROL, USER_DEFINED and UNKNOWN) longest first and, for
//! each one, splits every remaining piece of raw text at each of its occurrences. The result is
//! not always a leftmost-longest scan (a long token is cut out everywhere before a shorter one
//! is looked at), so the same order is kept here. A trie over the special texts first finds which
//! of them occur at all, so that a vocabulary with thousands of special tokens costs little.

use std::ops::Range;

/// A piece of the input after partitioning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Fragment {
    /// A special token, emitted as is.
    Token(u32),
    /// Raw text for the model's tokenizer: a byte range of the input.
    Text(Range<usize>),
}

/// One special token as the partition needs it.
#[derive(Debug, Clone)]
pub(crate) struct SpecialToken {
    pub id: u32,
    /// Only split out when `parse_special` (CONTROL and UNKNOWN tokens); USER_DEFINED tokens
    /// are always split out.
    pub needs_parse_special: bool,
    /// Whitespace before the token is dropped.
    pub lstrip: bool,
    /// Whitespace after the token is dropped.
    pub rstrip: bool,
}

#[derive(Debug, Default, Clone)]
struct Node {
    /// Sorted by byte.
    children: Vec<(u8, u32)>,
    /// Index into `SpecialTokens::tokens` of the token ending here.
    terminal: Option<u32>,
}

/// The special tokens of a vocabulary, in partition order.
#[derive(Debug, Clone, Default)]
pub(crate) struct SpecialTokens {
    /// Longest text first; equal lengths by id.
    tokens: Vec<SpecialToken>,
    texts: Vec<Box<str>>,
    trie: Vec<Node>,
}

impl SpecialTokens {
    /// Builds the set from `(token, text)` pairs.
    pub(crate) fn new(mut list: Vec<(SpecialToken, Box<str>)>) -> SpecialTokens {
        list.sort_by(|a, b| b.1.len().cmp(&a.1.len()).then(a.0.id.cmp(&b.0.id)));
        let mut trie = vec![Node::default()];
        for (i, (_, text)) in list.iter().enumerate() {
            let mut node = 0usize;
            for &b in text.as_bytes() {
                let children = &trie[node].children;
                node = match children.binary_search_by_key(&b, |&(k, _)| k) {
                    Ok(j) => children[j].1 as usize,
                    Err(j) => {
                        let new = trie.len();
                        trie.push(Node::default());
                        trie[node].children.insert(j, (b, new as u32));
                        new
                    }
                };
            }
            trie[node].terminal = Some(i as u32);
        }
        let (tokens, texts) = list.into_iter().unzip();
        SpecialTokens {
            tokens,
            texts,
            trie,
        }
    }

    /// Approximate heap bytes held.
    pub(crate) fn heap_bytes(&self) -> usize {
        let texts: usize = self.texts.iter().map(|t| t.len() + 16).sum();
        let nodes: usize = self
            .trie
            .iter()
            .map(|n| 32 + 8 * n.children.capacity())
            .sum();
        texts + nodes + self.tokens.capacity() * std::mem::size_of::<SpecialToken>()
    }

    /// Number of special tokens.
    pub(crate) fn len(&self) -> usize {
        self.tokens.len()
    }

    /// Which special tokens occur in `text` (indices into the ordered list).
    fn occurring(&self, text: &[u8]) -> Vec<bool> {
        let mut found = vec![false; self.tokens.len()];
        for start in 0..text.len() {
            let mut node = 0usize;
            for &b in &text[start..] {
                let children = &self.trie[node].children;
                match children.binary_search_by_key(&b, |&(k, _)| k) {
                    Ok(j) => node = children[j].1 as usize,
                    Err(_) => break,
                }
                if let Some(t) = self.trie[node].terminal {
                    found[t as usize] = true;
                }
            }
        }
        found
    }

    /// Partitions `text` into special tokens and raw text.
    pub(crate) fn partition(&self, text: &str, parse_special: bool) -> Vec<Fragment> {
        if text.is_empty() {
            return Vec::new();
        }
        let mut frags = vec![Fragment::Text(0..text.len())];
        if self.tokens.is_empty() {
            return frags;
        }
        let found = self.occurring(text.as_bytes());
        for (i, tok) in self.tokens.iter().enumerate() {
            if !found[i] || (tok.needs_parse_special && !parse_special) {
                continue;
            }
            let needle: &str = &self.texts[i];
            let mut next = Vec::with_capacity(frags.len() + 2);
            for frag in frags {
                let range = match frag {
                    Fragment::Text(r) => r,
                    token => {
                        next.push(token);
                        continue;
                    }
                };
                let mut pos = range.start;
                while let Some(off) = text[pos..range.end].find(needle) {
                    let at = pos + off;
                    let mut left_end = at;
                    if tok.lstrip {
                        while left_end > pos && is_c_space(text.as_bytes()[left_end - 1]) {
                            left_end -= 1;
                        }
                    }
                    if left_end > pos {
                        next.push(Fragment::Text(pos..left_end));
                    }
                    next.push(Fragment::Token(tok.id));
                    pos = at + needle.len();
                    if tok.rstrip {
                        while pos < range.end && is_c_space(text.as_bytes()[pos]) {
                            pos += 1;
                        }
                    }
                }
                if pos < range.end {
                    next.push(Fragment::Text(pos..range.end));
                }
            }
            frags = next;
        }
        frags
    }
}

/// C's `isspace` in the "C" locale.
fn is_c_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | 0x0B | 0x0C | b'\r')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tok(id: u32, parse: bool) -> SpecialToken {
        SpecialToken {
            id,
            needs_parse_special: parse,
            lstrip: false,
            rstrip: false,
        }
    }

    #[test]
    fn longest_first_and_parse_flag() {
        let st = SpecialTokens::new(vec![
            (tok(1, true), "<a>".into()),
            (tok(2, true), "<a><b>".into()),
            (tok(3, false), "\n\n".into()),
            (tok(4, false), "\n".into()),
        ]);
        assert_eq!(st.len(), 4);
        let text = "x<a><b>y<a>\n\n\nz";
        let p = st.partition(text, true);
        assert_eq!(
            p,
            vec![
                Fragment::Text(0..1),
                Fragment::Token(2),
                Fragment::Text(7..8),
                Fragment::Token(1),
                Fragment::Token(3),
                Fragment::Token(4),
                Fragment::Text(14..15),
            ]
        );
        // Without parse_special only the user-defined ones are cut out.
        let p = st.partition(text, false);
        assert_eq!(
            p,
            vec![
                Fragment::Text(0..11),
                Fragment::Token(3),
                Fragment::Token(4),
                Fragment::Text(14..15)
            ]
        );
        assert!(st.partition("", true).is_empty());
    }

    #[test]
    fn strip_flags() {
        let mut t = tok(7, true);
        t.lstrip = true;
        t.rstrip = true;
        let st = SpecialTokens::new(vec![(t, "<s>".into())]);
        assert_eq!(
            st.partition("a  <s> \tb", true),
            vec![
                Fragment::Text(0..1),
                Fragment::Token(7),
                Fragment::Text(8..9)
            ]
        );
        assert_eq!(st.partition(" <s> ", true), vec![Fragment::Token(7)]);
    }
}
