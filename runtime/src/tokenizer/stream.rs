//! Streaming detokenization: text out as soon as it is complete UTF-8.

use super::Tokenizer;

/// Turns a stream of token ids into text, emitting only complete UTF-8.
///
/// A token may end in the middle of a multi-byte character (byte-level BPE and byte-fallback
/// tokens split characters freely); those trailing bytes are held back until the next token
/// completes them. Bytes that can never become valid UTF-8 are replaced by U+FFFD as soon as
/// that is certain; [`flush`](Self::flush) at the end of the stream replaces an incomplete tail
/// the same way. The concatenation of everything returned equals
/// [`Tokenizer::decode`] of the same ids (with the same `render_special` choice).
#[derive(Debug)]
pub struct StreamDecoder<'a> {
    tokenizer: &'a Tokenizer,
    pending: Vec<u8>,
    render_special: bool,
}

impl<'a> StreamDecoder<'a> {
    /// A decoder over `tokenizer`'s vocabulary; control tokens render as nothing.
    pub fn new(tokenizer: &'a Tokenizer) -> Self {
        Self::with_special(tokenizer, false)
    }

    /// A decoder that renders control tokens as their text when `render_special` is true.
    pub fn with_special(tokenizer: &'a Tokenizer, render_special: bool) -> Self {
        StreamDecoder {
            tokenizer,
            pending: Vec::new(),
            render_special,
        }
    }

    /// Adds token `id` (an id out of range adds nothing) and returns the text completed by it,
    /// if any.
    pub fn push(&mut self, id: u32) -> Option<String> {
        let piece = self.tokenizer.token_to_piece_with(id, self.render_special);
        self.push_bytes(&piece)
    }

    /// Adds raw bytes and returns the text they complete, if any.
    fn push_bytes(&mut self, bytes: &[u8]) -> Option<String> {
        self.pending.extend_from_slice(bytes);
        let mut out = String::new();
        let mut at = 0;
        loop {
            match std::str::from_utf8(&self.pending[at..]) {
                Ok(s) => {
                    out.push_str(s);
                    at = self.pending.len();
                    break;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    // The prefix is valid UTF-8 by the error's own account.
                    out.push_str(&String::from_utf8_lossy(&self.pending[at..at + valid]));
                    at += valid;
                    match e.error_len() {
                        // Invalid whatever follows: replace it now.
                        Some(n) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            at += n;
                        }
                        // An incomplete character at the end: wait for more bytes.
                        None => break,
                    }
                }
            }
        }
        self.pending.drain(..at);
        (!out.is_empty()).then_some(out)
    }

    /// Whether bytes of an incomplete character are being held back.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Ends the stream: returns the held-back bytes, an incomplete character replaced by
    /// U+FFFD, or `None` if nothing was held back.
    pub fn flush(&mut self) -> Option<String> {
        if self.pending.is_empty() {
            return None;
        }
        let s = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        Some(s)
    }
}
