//! Code point classes, the GPT-2 byte↔character mapping and the "collapsed" text used to run
//! category-based split regexes.

use super::unicode_table::CLASS_RANGES;

/// The general-category class of a code point, as llama.cpp's pre-tokenizers see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Class {
    /// Unassigned (`Cn`).
    Undefined,
    /// `\p{N}`
    Number,
    /// `\p{L}`
    Letter,
    /// `\p{Z}`
    Separator,
    /// `\p{M}`
    Mark,
    /// `\p{P}`
    Punctuation,
    /// `\p{S}`
    Symbol,
    /// `\p{C}` other than `Cn`
    Control,
}

impl Class {
    fn from_code(code: u8) -> Class {
        match code {
            1 => Class::Number,
            2 => Class::Letter,
            3 => Class::Separator,
            4 => Class::Mark,
            5 => Class::Punctuation,
            6 => Class::Symbol,
            7 => Class::Control,
            _ => Class::Undefined,
        }
    }
}

/// The class of `c`.
pub(crate) fn class(c: char) -> Class {
    let cp = c as u32;
    // Index of the last range starting at or before `cp`; the first range starts at 0.
    let i = CLASS_RANGES.partition_point(|&(start, _)| start <= cp);
    match i.checked_sub(1).and_then(|i| CLASS_RANGES.get(i)) {
        Some(&(_, code)) => Class::from_code(code),
        None => Class::Undefined,
    }
}

/// Unicode `White_Space`: what llama.cpp's splitters treat as `\s`.
pub(crate) fn is_whitespace(c: char) -> bool {
    matches!(
        c as u32,
        0x09..=0x0D
            | 0x20
            | 0x85
            | 0xA0
            | 0x1680
            | 0x2000..=0x200A
            | 0x2028
            | 0x2029
            | 0x202F
            | 0x205F
            | 0x3000
    )
}

/// Flags of a code point inside a segment, the way llama.cpp's hand-written splitters test them.
/// A position outside the segment has no flag at all (`any() == false`), while every code point
/// inside has at least its class.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Flags {
    pub letter: bool,
    pub number: bool,
    pub whitespace: bool,
    /// False only for "no code point here" (outside the segment).
    pub present: bool,
}

impl Flags {
    pub(crate) fn of(c: char) -> Flags {
        let cl = class(c);
        Flags {
            letter: cl == Class::Letter,
            number: cl == Class::Number,
            whitespace: is_whitespace(c),
            present: true,
        }
    }
}

/// Simple lowercase mapping, enough for the case-insensitive contractions (`'s`, `'T`, ...) of
/// the llama3 splitter: the only code points whose lowercase is one of `s t m d r e v l` are the
/// ASCII capitals, so ASCII folding is exact for that use.
pub(crate) fn to_lower_ascii(c: char) -> char {
    c.to_ascii_lowercase()
}

/// The GPT-2 byte-level mapping: each byte is shown as a printable character, so that a byte
/// string becomes a text of "visible" characters that BPE merges operate on. Printable Latin-1
/// bytes stand for themselves; the other 68 take the code points 256, 257, ... in byte order.
pub(crate) struct ByteMap {
    to_char: [char; 256],
    /// Indexed by code point (all below 256 + 68): the byte it stands for, or -1.
    to_byte: [i16; 256 + 68],
}

impl ByteMap {
    pub(crate) fn new() -> ByteMap {
        let keeps_itself = |b: u32| {
            (0x21..=0x7E).contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b)
        };
        let mut to_char = ['\0'; 256];
        let mut to_byte = [-1i16; 256 + 68];
        let mut next = 256u32;
        for b in 0..256u32 {
            let cp = if keeps_itself(b) {
                b
            } else {
                next += 1;
                next - 1
            };
            // Every value is below 256 + 68, a valid scalar value.
            to_char[b as usize] = char::from_u32(cp).unwrap_or('\u{FFFD}');
            to_byte[cp as usize] = b as i16;
        }
        ByteMap { to_char, to_byte }
    }

    /// The character standing for byte `b`.
    pub(crate) fn char_of(&self, b: u8) -> char {
        self.to_char[b as usize]
    }

    /// The byte a character stands for, if it is one of the 256.
    pub(crate) fn byte_of(&self, c: char) -> Option<u8> {
        let v = *self.to_byte.get(c as usize)?;
        u8::try_from(v).ok()
    }

    /// Appends the byte-level form of `bytes` to `out`.
    pub(crate) fn encode(&self, bytes: &[u8], out: &mut String) {
        for &b in bytes {
            out.push(self.char_of(b));
        }
    }
}

/// Markers standing for whole classes in the collapsed text (llama.cpp collapses every non-ASCII
/// code point to one byte; we use the same code points as characters).
pub(crate) const COLLAPSED_OTHER: char = '\u{D0}';
pub(crate) const COLLAPSED_NUMBER: char = '\u{D1}';
pub(crate) const COLLAPSED_LETTER: char = '\u{D2}';
pub(crate) const COLLAPSED_PUNCTUATION: char = '\u{D3}';
pub(crate) const COLLAPSED_MARK: char = '\u{D4}';
pub(crate) const COLLAPSED_SYMBOL: char = '\u{D5}';
/// Non-ASCII whitespace becomes a vertical tab, which `\s` matches.
pub(crate) const COLLAPSED_SPACE: char = '\u{0B}';

/// The collapsed form of `c`: ASCII stays itself, anything else becomes the marker of its class.
pub(crate) fn collapse(c: char) -> char {
    if c.is_ascii() {
        return c;
    }
    if is_whitespace(c) {
        return COLLAPSED_SPACE;
    }
    match class(c) {
        Class::Number => COLLAPSED_NUMBER,
        Class::Letter => COLLAPSED_LETTER,
        Class::Punctuation => COLLAPSED_PUNCTUATION,
        Class::Mark => COLLAPSED_MARK,
        Class::Symbol => COLLAPSED_SYMBOL,
        Class::Undefined | Class::Separator | Class::Control => COLLAPSED_OTHER,
    }
}

/// The form used for regexes without categories: the text itself, except that non-ASCII
/// whitespace becomes a vertical tab (as llama.cpp does before running such regexes).
pub(crate) fn widen(c: char) -> char {
    if !c.is_ascii() && is_whitespace(c) {
        COLLAPSED_SPACE
    } else {
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes() {
        assert_eq!(class('a'), Class::Letter);
        assert_eq!(class('Z'), Class::Letter);
        assert_eq!(class('7'), Class::Number);
        assert_eq!(class('!'), Class::Punctuation);
        assert_eq!(class('$'), Class::Symbol);
        assert_eq!(class('~'), Class::Symbol);
        assert_eq!(class(' '), Class::Separator);
        assert_eq!(class('\n'), Class::Control);
        assert_eq!(class('é'), Class::Letter);
        assert_eq!(class('日'), Class::Letter);
        assert_eq!(class('\u{0301}'), Class::Mark);
        assert_eq!(class('🤖'), Class::Symbol);
        assert_eq!(class('\u{0378}'), Class::Undefined);
        assert_eq!(class('\u{2EBF0}'), Class::Letter); // CJK extension I, new in 15.1
        assert_eq!(class('\u{1C89}'), Class::Undefined); // assigned only in 16.0
        assert_eq!(class('\u{10FFFF}'), Class::Undefined);
        assert_eq!(super::super::unicode_table::UNICODE_VERSION, "15.1.0");
    }

    #[test]
    fn byte_map_round_trips() {
        let m = ByteMap::new();
        assert_eq!(m.char_of(b' '), 'Ġ');
        assert_eq!(m.char_of(b'\n'), 'Ċ');
        assert_eq!(m.char_of(0), 'Ā');
        assert_eq!(m.char_of(b'a'), 'a');
        let mut seen = std::collections::HashSet::new();
        for b in 0..=255u8 {
            let c = m.char_of(b);
            assert!(seen.insert(c));
            assert_eq!(m.byte_of(c), Some(b));
        }
        assert_eq!(m.byte_of('€'), None);
        assert_eq!(m.byte_of('\u{144}'), None);
    }
}
