//! Prompt lookup: the longest recent n-gram of the context (prompt and generated text) that
//! occurred before proposes the tokens that followed it there. No model, no memory: it pays
//! where the answer copies its input (code edits, summaries, extraction, JSON).

use super::{Drafter, Proposal};
use crate::model::RuntimeError;

/// The prompt-lookup drafter.
#[derive(Debug, Clone)]
pub struct Lookup {
    ngram_max: usize,
    ngram_min: usize,
}

impl Lookup {
    /// Matches n-grams of `ngram_max` tokens down to `ngram_min` (both at least 1).
    pub fn new(ngram_max: usize, ngram_min: usize) -> Self {
        let ngram_min = ngram_min.max(1);
        Lookup {
            ngram_max: ngram_max.max(ngram_min),
            ngram_min,
        }
    }
}

impl Default for Lookup {
    /// 3-grams down to 1-grams: a single matching token is a cheap guess when a pass
    /// costs its reads whether it verifies one token or several.
    fn default() -> Self {
        Lookup::new(3, 1)
    }
}

/// Where the tokens that followed the most recent earlier occurrence of the last `n` tokens
/// of `h` start.
fn find(h: &[u32], n: usize) -> Option<usize> {
    let len = h.len();
    if len <= n {
        return None;
    }
    let pat = &h[len - n..];
    // Occurrences that end before the last token, so at least one token follows.
    (0..len - n)
        .rev()
        .find(|&j| &h[j..j + n] == pat)
        .map(|j| j + n)
}

impl Drafter for Lookup {
    fn propose(
        &mut self,
        history: &[u32],
        k: usize,
        out: &mut Proposal,
    ) -> Result<(), RuntimeError> {
        out.clear();
        if k == 0 {
            return Ok(());
        }
        for n in (self.ngram_min..=self.ngram_max).rev() {
            if let Some(from) = find(history, n) {
                let to = (from + k).min(history.len());
                out.tokens.extend_from_slice(&history[from..to]);
                return Ok(());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn propose(l: &mut Lookup, h: &[u32], k: usize) -> Vec<u32> {
        let mut p = Proposal::default();
        l.propose(h, k, &mut p).unwrap();
        assert!(p.dists.is_none(), "lookup is a point-mass drafter");
        p.tokens
    }

    #[test]
    fn longest_recent_match_proposes_what_followed() {
        let mut l = Lookup::new(3, 1);
        // "5 6 7" occurred at 1..4 and 8..11; the later one is followed by 9 9.
        let h = [1, 5, 6, 7, 8, 2, 3, 5, 6, 7, 9, 9, 4, 5, 6, 7];
        assert_eq!(propose(&mut l, &h, 2), vec![9, 9]);
        assert_eq!(propose(&mut l, &h, 10), vec![9, 9, 4, 5, 6, 7]);
        // Only a 1-gram matches.
        assert_eq!(propose(&mut l, &[1, 2, 3, 1], 2), vec![2, 3]);
        // A 2-gram beats a more recent 1-gram.
        assert_eq!(propose(&mut l, &[4, 2, 8, 2, 9, 4, 2], 1), vec![8]);
        // Nothing matches, or nothing asked.
        assert!(propose(&mut l, &[1, 2, 3], 4).is_empty());
        assert!(propose(&mut l, &h, 0).is_empty());
        assert!(propose(&mut l, &[], 3).is_empty());
        // The minimum n-gram is honoured.
        let mut l2 = Lookup::new(3, 2);
        assert!(propose(&mut l2, &[1, 2, 3, 1], 2).is_empty());
        assert_eq!(propose(&mut l2, &[1, 2, 3, 1, 2], 2), vec![3, 1]);
    }

    #[test]
    fn a_repeated_token_proposes_its_run() {
        let mut l = Lookup::default();
        assert_eq!(propose(&mut l, &[7, 7, 7, 7], 3), vec![7]);
        assert_eq!(propose(&mut l, &[3, 7, 7, 7, 7, 7], 8), vec![7]);
    }
}
