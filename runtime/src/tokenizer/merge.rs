//! The two merge loops: byte-level BPE (merge the pair of lowest rank) and SentencePiece BPE
//! (merge the pair whose result has the highest score). Both keep a doubly linked list of
//! symbols over the word and a priority queue of candidate pairs, and skip pairs that went stale
//! because one side was merged elsewhere — the way llama.cpp does, so that ties and staleness
//! resolve identically.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

/// A symbol: a byte range of the word, linked to its neighbours.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Symbol {
    pub start: usize,
    /// Byte length; 0 once merged into its left neighbour.
    pub len: usize,
    pub prev: Option<usize>,
    pub next: Option<usize>,
}

/// Splits `word` into one symbol per character.
pub(crate) fn symbols_of(word: &str) -> Vec<Symbol> {
    let n = word.chars().count();
    word.char_indices()
        .enumerate()
        .map(|(i, (start, c))| Symbol {
            start,
            len: c.len_utf8(),
            prev: i.checked_sub(1),
            next: (i + 1 < n).then_some(i + 1),
        })
        .collect()
}

/// A candidate merge of `left` and its right neighbour `right`, ordered so that the binary
/// (max-)heap pops the best one first.
#[derive(Debug, Clone, Copy)]
struct Candidate<K> {
    key: K,
    left: usize,
    right: usize,
    /// Byte length of the merged text when the candidate was made.
    size: usize,
}

/// Lower rank is better.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Rank(u32);

/// Higher score is better (NaN compares equal to everything, as C++'s `<` would leave it).
#[derive(Debug, Clone, Copy)]
struct Score(f32);

trait Priority: Copy {
    /// `Greater` when `self` should be merged before `other`.
    fn compare(&self, other: &Self) -> Ordering;
}

impl Priority for Rank {
    fn compare(&self, other: &Self) -> Ordering {
        other.0.cmp(&self.0)
    }
}

impl Priority for Score {
    fn compare(&self, other: &Self) -> Ordering {
        self.0.partial_cmp(&other.0).unwrap_or(Ordering::Equal)
    }
}

impl<K: Priority> PartialEq for Candidate<K> {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl<K: Priority> Eq for Candidate<K> {}

impl<K: Priority> PartialOrd for Candidate<K> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl<K: Priority> Ord for Candidate<K> {
    fn cmp(&self, other: &Self) -> Ordering {
        // Equal priority: the leftmost pair first.
        self.key
            .compare(&other.key)
            .then(other.left.cmp(&self.left))
    }
}

/// Runs the merge loop over `symbols`. `candidate(left, right, joined)` gives the priority of
/// merging two neighbouring texts (`joined` is their concatenation), or `None` if they do not
/// merge.
fn merge_loop<K: Priority>(
    word: &str,
    symbols: &mut [Symbol],
    mut candidate: impl FnMut(&str, &str, &str) -> Option<K>,
) {
    let mut heap: BinaryHeap<Candidate<K>> = BinaryHeap::new();
    let mut push = |heap: &mut BinaryHeap<Candidate<K>>,
                    symbols: &[Symbol],
                    left: Option<usize>,
                    right: Option<usize>| {
        let (Some(left), Some(right)) = (left, right) else {
            return;
        };
        let (l, r) = (symbols[left], symbols[right]);
        let size = l.len + r.len;
        let (Some(lt), Some(rt), Some(joined)) = (
            word.get(l.start..l.start + l.len),
            word.get(r.start..r.start + r.len),
            word.get(l.start..l.start + size),
        ) else {
            return;
        };
        if let Some(key) = candidate(lt, rt, joined) {
            heap.push(Candidate {
                key,
                left,
                right,
                size,
            });
        }
    };
    for i in 1..symbols.len() {
        push(&mut heap, symbols, Some(i - 1), Some(i));
    }
    while let Some(c) = heap.pop() {
        let (l, r) = (symbols[c.left], symbols[c.right]);
        // Stale: one side was merged away or grew since the candidate was made. Both sides
        // alive means they are still neighbours (symbols only ever disappear), so equal sizes
        // mean equal text.
        if l.len == 0 || r.len == 0 || l.len + r.len != c.size {
            continue;
        }
        symbols[c.left].len += r.len;
        symbols[c.right].len = 0;
        symbols[c.left].next = r.next;
        if let Some(n) = r.next {
            symbols[n].prev = Some(c.left);
        }
        let (prev, next) = (symbols[c.left].prev, symbols[c.left].next);
        push(&mut heap, symbols, prev, Some(c.left));
        push(&mut heap, symbols, Some(c.left), next);
    }
}

/// Byte-level BPE: repeatedly merges the adjacent pair with the lowest merge rank (`rank` gives
/// the rank of a pair of texts). Returns the byte ranges of the final symbols of `word`.
pub(crate) fn bpe(
    word: &str,
    mut rank: impl FnMut(&str, &str) -> Option<u32>,
) -> Vec<(usize, usize)> {
    let mut symbols = symbols_of(word);
    merge_loop(word, &mut symbols, |l, r, _| rank(l, r).map(Rank));
    alive(&symbols)
}

/// SentencePiece BPE: repeatedly merges the adjacent pair whose concatenation is a token with
/// the highest score (`score` gives the score of a text that is a token). Returns the byte
/// ranges of the final symbols of `word`.
pub(crate) fn spm(word: &str, score: impl Fn(&str) -> Option<f32>) -> Vec<(usize, usize)> {
    let mut symbols = symbols_of(word);
    merge_loop(word, &mut symbols, |_, _, joined| score(joined).map(Score));
    alive(&symbols)
}

/// The surviving symbols, in order, as `(start, end)` byte ranges.
fn alive(symbols: &[Symbol]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut at = if symbols.is_empty() { None } else { Some(0) };
    while let Some(i) = at {
        let s = symbols[i];
        if s.len > 0 {
            out.push((s.start, s.start + s.len));
        }
        at = s.next;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts<'a>(word: &'a str, r: &[(usize, usize)]) -> Vec<&'a str> {
        r.iter().map(|&(a, b)| &word[a..b]).collect()
    }

    #[test]
    fn bpe_follows_ranks() {
        let ranks = [("l", "o"), ("lo", "w"), ("e", "r"), ("low", "er")];
        let rank = |a: &str, b: &str| {
            ranks
                .iter()
                .position(|&(x, y)| x == a && y == b)
                .map(|p| p as u32)
        };
        assert_eq!(texts("lower", &bpe("lower", rank)), ["lower"]);
        assert_eq!(
            texts("lowest", &bpe("lowest", rank)),
            ["low", "e", "s", "t"]
        );
        assert_eq!(texts("", &bpe("", rank)), Vec::<&str>::new());
        // Equal ranks: leftmost first.
        let same = |a: &str, b: &str| (a == "a" && b == "a").then_some(0);
        assert_eq!(texts("aaa", &bpe("aaa", same)), ["aa", "a"]);
    }

    #[test]
    fn spm_follows_scores() {
        let vocab = [("ab", -1.0f32), ("bc", -0.5), ("▁x", -0.1)];
        let score = |t: &str| vocab.iter().find(|v| v.0 == t).map(|v| v.1);
        assert_eq!(texts("abc", &spm("abc", score)), ["a", "bc"]);
        assert_eq!(texts("ab", &spm("ab", score)), ["ab"]);
        assert_eq!(texts("▁x▁", &spm("▁x▁", score)), ["▁x", "▁"]);
    }
}
