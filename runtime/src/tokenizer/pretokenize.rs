//! Pre-tokenizers of byte-level BPE vocabularies: the text is split into words by a list of
//! regexes applied one after the other (each one splits the pieces the previous one left), the
//! way llama.cpp does for each `tokenizer.ggml.pre` value.
//!
//! Two regexes llama.cpp runs through hand-written code (the GPT-2 one and the llama3 one) are
//! hand-written here too, with the same edge behaviour. The others run through `fancy_regex` on
//! a "collapsed" text where each non-ASCII code point is replaced by a marker of its category
//! (and `\p{..}` in the pattern by a class of that marker plus the ASCII members), which is how
//! llama.cpp gets category-aware regexes out of `std::regex`; the result is the same splits,
//! including llama.cpp's reading of ASCII categories.

use std::ops::Range;

use fancy_regex::Regex;

use super::unicode::{self, Flags};
use super::TokenizerError;

/// Which hand-written or regex splitter to run.
enum Splitter {
    /// `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)` (and `\s+`).
    Gpt2,
    /// `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`
    Llama3,
    /// A regex over the collapsed text (categories present in the pattern).
    Collapsed(Regex),
    /// A regex over the text itself, non-ASCII whitespace turned into `\x0B`.
    Wide(Regex),
}

/// Per-pre-tokenizer settings besides the split that llama.cpp ties to the `pre` value.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct PreOptions {
    /// A word that is itself a token is emitted whole, without merging.
    pub ignore_merges: bool,
    /// Default of `add_bos_token` when the key is absent.
    pub add_bos: bool,
    /// The vocabulary has no BOS unless the metadata names one.
    pub no_default_bos: bool,
}

/// A configured pre-tokenizer.
pub(crate) struct PreTokenizer {
    name: String,
    splitters: Vec<Splitter>,
    pub(crate) options: PreOptions,
}

impl std::fmt::Debug for PreTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PreTokenizer")
            .field("name", &self.name)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

// Patterns, in llama.cpp's notation: `\p{X}` is expanded by `expand_categories`.
const CONTRACTIONS: &str = "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])";
const QWEN2_TAIL: &str = "|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
const PORO: &str = " ?[^(\\s|.,!?\u{2026}\u{3002}\u{FF0C}\u{3001}\u{0964}\u{06D4}\u{060C})]+";

/// The letters of deepseek-llm's word regex (its own list of ranges, not `\p{L}`).
const DEEPSEEK_LLM_LETTERS: &str =
    "\u{B5}\u{C0}-\u{D6}\u{D8}-\u{F6}\u{F8}-\u{1BA}\u{1BC}-\u{1BF}\u{1C4}-\u{293}\u{295}-\
    \u{2AF}\u{370}-\u{373}\u{376}\u{377}\u{37B}-\u{37D}\u{37F}\u{386}\u{388}-\u{38A}\u{38C}\
    \u{38E}-\u{3A1}\u{3A3}-\u{3F5}\u{3F7}-\u{481}\u{48A}-\u{52F}\u{531}-\u{556}\u{10A0}-\
    \u{10C5}\u{13A0}-\u{13F5}\u{13F8}-\u{13FD}\u{1C90}-\u{1CBA}\u{1CBD}-\u{1CBF}\u{1D00}-\
    \u{1D2B}\u{1D6B}-\u{1D77}\u{1D79}-\u{1D9A}\u{1E00}-\u{1F15}\u{1F18}-\u{1F1D}\u{1F20}-\
    \u{1F45}\u{1F48}-\u{1F4D}\u{1F50}-\u{1F57}\u{1F59}\u{1F5B}\u{1F5D}\u{1F5F}-\u{1F7D}\
    \u{1F80}-\u{1FB4}\u{1FB6}-\u{1FBC}\u{1FBE}\u{1FC2}-\u{1FC4}\u{1FC6}-\u{1FCC}\u{1FD0}-\
    \u{1FD3}\u{1FD6}-\u{1FDB}\u{1FE0}-\u{1FEC}\u{1FF2}-\u{1FF4}\u{1FF6}-\u{1FFC}\u{2102}\
    \u{2107}\u{210A}-\u{2113}\u{2115}\u{2119}-\u{211D}\u{2124}\u{2126}\u{2128}\u{212A}-\
    \u{212D}\u{212F}-\u{2134}\u{2139}\u{213C}-\u{213F}\u{2145}-\u{2149}\u{214E}\u{2183}\
    \u{2184}\u{2C00}-\u{2C7B}\u{2C7E}-\u{2CE4}\u{2CEB}-\u{2CEE}\u{2CF2}\u{2CF3}\u{A640}-\
    \u{A66D}\u{A680}-\u{A69B}\u{A722}-\u{A76F}\u{A771}-\u{A787}\u{A78B}-\u{A78E}\u{AB70}-\
    \u{ABBF}\u{FB00}-\u{FB06}\u{FB13}-\u{FB17}\u{FF21}-\u{FF3A}\u{FF41}-\u{FF5A}\u{10400}-\
    \u{1044F}\u{104B0}-\u{104D3}\u{104D8}-\u{104FB}\u{10C80}-\u{10CB2}\u{10CC0}-\u{10CF2}\
    \u{118A0}-\u{118DF}\u{1E900}-\u{1E943}";

/// CJK ideographs, everything from U+0800 up to them, and Hangul (both deepseek vocabularies).
const CJK_HANGUL: &str = "[\\x{4E00}-\\x{9FA5}\\x{0800}-\\x{4E00}\\x{AC00}-\\x{D7FF}]+";

/// The `pre` values understood, for error messages.
pub(crate) const SUPPORTED: &str = "default, llama3, llama-v3, llama-bpe, falcon3, falcon-h1, pixtral, \
midm-2.0, lfm2, dbrx, smaug-bpe, chatglm-bpe, glm4, deepseek-v3, hunyuan-dense, joyai-llm, falcon, \
starcoder, refact, command-r, smollm, codeshell, exaone, minerva-7b, mellum2, gpt-2, phi-2, jina-es, \
jina-de, gigachat, jina-v2-es, jina-v2-de, jina-v1-en, jina-v2-code, roberta-bpe, a.x-4.0, mellum, \
modern-bert, exaone4, mpt, olmo, jais, trillion, granite-docling, qwen2, deepseek-r1-qwen, kormo, \
f2llmv2, megrez, stablelm2, hunyuan, solar-open, grok-2, qwen35, poro-chat, bloom, gpt3-finnish, \
viking, tekken, gpt-4o, llama4, kanana2, talkie, minimax-m2, seed-coder, bailingmoe, bailingmoe2, \
llada-moe, ufakzeka, minicpm5, jina-v5-nano, hy_v4, deepseek-llm, deepseek-coder";

enum Spec {
    Gpt2,
    Llama3,
    Collapsed(String),
    Wide(String),
}

impl PreTokenizer {
    /// The pre-tokenizer llama.cpp uses for `tokenizer.ggml.pre = name`; `None` for a name it
    /// does not know (or that this crate does not implement).
    pub(crate) fn new(name: &str) -> Result<Option<PreTokenizer>, TokenizerError> {
        let mut options = PreOptions::default();
        let qwen2 = format!("{CONTRACTIONS}{QWEN2_TAIL}");
        let specs: Vec<Spec> = match name {
            "default" => vec![
                Spec::Collapsed("[\\p{P}\\$\\+<=>\\^~\\|]+".into()),
                Spec::Gpt2,
                Spec::Collapsed("\\p{N}+".into()),
                Spec::Wide("[0-9][0-9][0-9]".into()),
            ],
            "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral"
            | "midm-2.0" | "lfm2" | "jina-v5-nano" => {
                options.ignore_merges = true;
                options.add_bos = true;
                vec![Spec::Llama3]
            }
            "dbrx" | "smaug-bpe" => vec![Spec::Llama3],
            "chatglm-bpe" | "glm4" => {
                options.no_default_bos = true;
                vec![Spec::Llama3]
            }
            "deepseek-v3" | "hunyuan-dense" | "joyai-llm" | "hy_v4" => vec![
                Spec::Collapsed("\\p{N}{1,3}".into()),
                Spec::Wide("[\\x{4E00}-\\x{9FA5}\\x{3040}-\\x{309F}\\x{30A0}-\\x{30FF}]+".into()),
                Spec::Collapsed(
                    "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+\
                     |[^\\r\\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+\
                     | ?[\\p{P}\\p{S}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
                        .into(),
                ),
            ],
            "falcon" => vec![
                Spec::Collapsed("[\\p{P}\\$\\+<=>\\^~\\|`]+".into()),
                Spec::Gpt2,
                Spec::Wide("[0-9][0-9][0-9]".into()),
            ],
            "starcoder" | "refact" | "command-r" | "smollm" | "codeshell" | "exaone"
            | "minerva-7b" | "mellum2" => vec![Spec::Collapsed("\\p{N}".into()), Spec::Gpt2],
            "gpt-2" | "phi-2" | "jina-es" | "jina-de" | "gigachat" | "jina-v2-es"
            | "jina-v2-de" | "jina-v1-en" | "jina-v2-code" | "roberta-bpe" | "a.x-4.0"
            | "mellum" | "modern-bert" | "exaone4" | "mpt" | "olmo" | "jais" | "trillion"
            | "granite-docling" => vec![Spec::Gpt2],
            "qwen2" | "deepseek-r1-qwen" | "kormo" | "f2llmv2" | "megrez" | "stablelm2"
            | "hunyuan" | "solar-open" | "grok-2" => vec![Spec::Collapsed(qwen2)],
            "qwen35" => vec![Spec::Collapsed(format!(
                "{CONTRACTIONS}|[^\\r\\n\\p{{L}}\\p{{N}}]?[\\p{{L}}\\p{{M}}]+|\\p{{N}}\
                 | ?[^\\s\\p{{L}}\\p{{M}}\\p{{N}}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
            ))],
            "poro-chat" | "bloom" | "gpt3-finnish" => vec![Spec::Wide(PORO.into())],
            "viking" => vec![Spec::Wide(PORO.into()), Spec::Collapsed("\\p{N}".into())],
            "tekken" => {
                options.ignore_merges = true;
                options.add_bos = true;
                vec![Spec::Collapsed(
                    "[^\\r\\n\\p{L}\\p{N}]?((?=[\\p{L}])([^a-z]))*((?=[\\p{L}])([^A-Z]))+\
                     |[^\\r\\n\\p{L}\\p{N}]?((?=[\\p{L}])([^a-z]))+((?=[\\p{L}])([^A-Z]))*\
                     |\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
                        .into(),
                )]
            }
            "gpt-4o" | "llama4" | "kanana2" | "talkie" | "minimax-m2" => {
                vec![Spec::Collapsed(format!(
                    "[^\\r\\n\\p{{L}}\\p{{N}}]?((?=[\\p{{L}}])([^a-z]))*((?=[\\p{{L}}])([^A-Z]))+{CONTRACTIONS}?\
                     |[^\\r\\n\\p{{L}}\\p{{N}}]?((?=[\\p{{L}}])([^a-z]))+((?=[\\p{{L}}])([^A-Z]))*{CONTRACTIONS}?\
                     |\\p{{N}}{{1,3}}| ?[^\\s\\p{{L}}\\p{{N}}]+[\\r\\n/]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
                ))]
            }
            "seed-coder" => vec![Spec::Collapsed(format!(
                "{CONTRACTIONS}|[^\\r\\n\\p{{L}}\\p{{N}}]?\\p{{L}}+|\\p{{N}}{{1}}\
                 | ?[^\\s\\p{{L}}\\p{{N}}\\r\\n]+|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
            ))],
            "bailingmoe" | "bailingmoe2" | "llada-moe" => vec![Spec::Collapsed(
                "'(?:[sSdDmMtT]|[lL][lL]|[vV][eE]|[rR][eE])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}\
                 | ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]|\\s+(?!\\S)|\\s+"
                    .into(),
            )],
            "ufakzeka" => vec![Spec::Collapsed(QWEN2_TAIL[1..].into())],
            "minicpm5" => {
                options.ignore_merges = true;
                vec![
                    Spec::Collapsed("\\p{N}{1,3}".into()),
                    Spec::Collapsed(format!(
                        "{CONTRACTIONS}|[^\\r\\n\\p{{L}}\\p{{N}}]?\\p{{L}}+|\\p{{N}}+\
                         | ?[^\\s\\p{{L}}\\p{{N}}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
                    )),
                ]
            }
            "deepseek-llm" => vec![
                Spec::Wide("[\\r\\n]".into()),
                Spec::Wide(format!("\\s?[A-Za-z{DEEPSEEK_LLM_LETTERS}]+")),
                Spec::Wide(
                    "\\s?[!-/:-~\\x{FF01}-\\x{FF0F}\\x{FF1A}-\\x{FF5E}\\x{2018}-\\x{201F}\\x{3000}-\\x{3002}]+"
                        .into(),
                ),
                Spec::Wide("\\s+$".into()),
                Spec::Wide(CJK_HANGUL.into()),
                Spec::Collapsed("\\p{N}+".into()),
            ],
            "deepseek-coder" => vec![
                Spec::Wide("[\\r\\n]".into()),
                Spec::Collapsed("\\s?\\p{L}+".into()),
                Spec::Collapsed("\\s?\\p{P}+".into()),
                Spec::Wide(CJK_HANGUL.into()),
                Spec::Collapsed("\\p{N}".into()),
            ],
            _ => return Ok(None),
        };
        let mut splitters = Vec::with_capacity(specs.len());
        for spec in specs {
            splitters.push(match spec {
                Spec::Gpt2 => Splitter::Gpt2,
                Spec::Llama3 => Splitter::Llama3,
                Spec::Collapsed(p) => Splitter::Collapsed(compile(name, &expand_categories(&p))?),
                Spec::Wide(p) => Splitter::Wide(compile(name, &p)?),
            });
        }
        Ok(Some(PreTokenizer {
            name: name.to_string(),
            splitters,
            options,
        }))
    }

    /// The `pre` name.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// Splits `text` into words, returned as byte ranges of `text` that cover it in order.
    pub(crate) fn split(&self, text: &str) -> Result<Vec<Range<usize>>, TokenizerError> {
        let chars: Vec<char> = text.chars().collect();
        // Byte offset of each code point, plus the end.
        let mut byte_at: Vec<usize> = text.char_indices().map(|(i, _)| i).collect();
        byte_at.push(text.len());

        let mut segments: Vec<Range<usize>> = Vec::new();
        if !chars.is_empty() {
            segments.push(0..chars.len());
        }
        let mut collapsed: Option<Mapped> = None;
        let mut wide: Option<Mapped> = None;
        for splitter in &self.splitters {
            let mut next = Vec::with_capacity(segments.len() * 2);
            for seg in &segments {
                match splitter {
                    Splitter::Gpt2 => split_gpt2(&chars, seg.clone(), &mut next),
                    Splitter::Llama3 => split_llama3(&chars, seg.clone(), &mut next),
                    Splitter::Collapsed(re) => {
                        let m =
                            collapsed.get_or_insert_with(|| Mapped::new(&chars, unicode::collapse));
                        self.split_regex(re, m, seg.clone(), &mut next)?
                    }
                    Splitter::Wide(re) => {
                        let m = wide.get_or_insert_with(|| Mapped::new(&chars, unicode::widen));
                        self.split_regex(re, m, seg.clone(), &mut next)?
                    }
                }
            }
            segments = next;
        }
        Ok(segments
            .into_iter()
            .map(|r| byte_at[r.start]..byte_at[r.end])
            .collect())
    }

    /// Splits one segment with a regex: each match is a word and so is each gap between them.
    fn split_regex(
        &self,
        re: &Regex,
        m: &Mapped,
        seg: Range<usize>,
        out: &mut Vec<Range<usize>>,
    ) -> Result<(), TokenizerError> {
        let base = m.byte_at[seg.start];
        let hay = &m.text[base..m.byte_at[seg.end]];
        let mut prev = seg.start;
        for found in re.find_iter(hay) {
            let found = found.map_err(|e| TokenizerError::Regex {
                pre: self.name.clone(),
                message: e.to_string(),
            })?;
            if found.start() == found.end() {
                continue;
            }
            let start = m.char_index(base + found.start());
            let end = m.char_index(base + found.end());
            if start > prev {
                out.push(prev..start);
            }
            out.push(start..end);
            prev = end;
        }
        if prev < seg.end {
            out.push(prev..seg.end);
        }
        Ok(())
    }
}

fn compile(pre: &str, pattern: &str) -> Result<Regex, TokenizerError> {
    Regex::new(pattern).map_err(|e| TokenizerError::Regex {
        pre: pre.to_string(),
        message: e.to_string(),
    })
}

/// A text with one (mapped) character per code point of the original, and the byte offset of
/// each character, so that matches can be turned back into code point positions.
struct Mapped {
    text: String,
    byte_at: Vec<usize>,
}

impl Mapped {
    fn new(chars: &[char], map: fn(char) -> char) -> Mapped {
        let mut text = String::with_capacity(chars.len() * 2);
        let mut byte_at = Vec::with_capacity(chars.len() + 1);
        for &c in chars {
            byte_at.push(text.len());
            text.push(map(c));
        }
        byte_at.push(text.len());
        Mapped { text, byte_at }
    }

    /// The code point index of byte offset `b` (a character boundary).
    fn char_index(&self, b: usize) -> usize {
        self.byte_at.partition_point(|&x| x < b)
    }
}

/// Rewrites `\p{X}` (X one of the categories llama.cpp collapses) into the class of its marker and
/// its ASCII members, bracketed unless already inside brackets.
fn expand_categories(pattern: &str) -> String {
    fn members(cat: &str) -> Option<&'static str> {
        Some(match cat {
            "N" => "\\x{D1}0-9",
            "L" | "Lu" | "Ll" | "Lt" | "Lm" | "Lo" => "\\x{D2}A-Za-z",
            "P" => "\\x{D3}!-#%-*,-/:-;?-@\\[-\\]_\\{\\}",
            "M" => "\\x{D4}",
            // llama.cpp's ASCII symbols; `~` is not among them.
            "S" => "\\x{D5}\\$\\+<->\\^`\\|",
            _ => return None,
        })
    }
    let mut out = String::with_capacity(pattern.len() * 2);
    let mut inside = false;
    let mut rest = pattern;
    while let Some(c) = rest.chars().next() {
        if c == '\\' {
            if let Some(after) = rest.strip_prefix("\\p{") {
                if let Some(close) = after.find('}') {
                    if let Some(m) = members(&after[..close]) {
                        if inside {
                            out.push_str(m);
                        } else {
                            out.push('[');
                            out.push_str(m);
                            out.push(']');
                        }
                        rest = &after[close + 1..];
                        continue;
                    }
                }
            }
            // Any other escape: copy it with the escaped character.
            let mut it = rest.chars();
            it.next();
            out.push('\\');
            if let Some(e) = it.next() {
                out.push(e);
            }
            rest = it.as_str();
            continue;
        }
        if c == '[' && !inside {
            inside = true;
        } else if c == ']' && inside {
            inside = false;
        }
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    out
}

/// Code point view of one segment, as the hand-written splitters see it.
struct Seg<'a> {
    chars: &'a [char],
    start: usize,
    end: usize,
    prev_end: usize,
}

impl Seg<'_> {
    fn get(&self, pos: usize) -> Option<char> {
        if (self.start..self.end).contains(&pos) {
            self.chars.get(pos).copied()
        } else {
            None
        }
    }

    fn flags(&self, pos: usize) -> Flags {
        self.get(pos).map(Flags::of).unwrap_or_default()
    }

    /// Ends the current word at `end`; returns its length in code points.
    fn emit(&mut self, end: usize, out: &mut Vec<Range<usize>>) -> usize {
        let len = end.saturating_sub(self.prev_end);
        if len > 0 {
            out.push(self.prev_end..end);
        }
        self.prev_end = end;
        len
    }
}

fn is_contraction1(c: char) -> bool {
    matches!(c, 's' | 't' | 'm' | 'd')
}

fn is_contraction2(a: char, b: char) -> bool {
    matches!((a, b), ('r', 'e') | ('v', 'e') | ('l', 'l'))
}

fn split_gpt2(chars: &[char], seg: Range<usize>, out: &mut Vec<Range<usize>>) {
    let mut s = Seg {
        chars,
        start: seg.start,
        end: seg.end,
        prev_end: seg.start,
    };
    let end = seg.end;
    let mut pos = seg.start;
    while pos < end {
        let Some(c) = s.get(pos) else { break };
        let flags = s.flags(pos);

        // 's|'t|'re|'ve|'m|'ll|'d
        if c == '\'' && pos + 1 < end {
            let n1 = s.get(pos + 1).unwrap_or('\0');
            if is_contraction1(n1) {
                pos += s.emit(pos + 2, out);
                continue;
            }
            if pos + 2 < end {
                let n2 = s.get(pos + 2).unwrap_or('\0');
                if is_contraction2(n1, n2) {
                    pos += s.emit(pos + 3, out);
                    continue;
                }
            }
        }

        let mut f2 = if c == ' ' { s.flags(pos + 1) } else { flags };
        // ' '?\p{L}+
        if f2.letter {
            pos += usize::from(c == ' ');
            while f2.letter {
                pos += 1;
                f2 = s.flags(pos);
            }
            s.emit(pos, out);
            continue;
        }
        // ' '?\p{N}+
        if f2.number {
            pos += usize::from(c == ' ');
            while f2.number {
                pos += 1;
                f2 = s.flags(pos);
            }
            s.emit(pos, out);
            continue;
        }
        // ' '?[^\s\p{L}\p{N}]+
        if !(f2.whitespace || f2.letter || f2.number) && f2.present {
            pos += usize::from(c == ' ');
            while !(f2.whitespace || f2.letter || f2.number) && f2.present {
                pos += 1;
                f2 = s.flags(pos);
            }
            s.emit(pos, out);
            continue;
        }

        let mut n_ws = 0;
        while s.flags(pos + n_ws).whitespace {
            n_ws += 1;
        }
        // \s+(?!\S): a run followed by more text keeps its last whitespace for the next word.
        if n_ws > 1 && s.get(pos + n_ws).is_some() {
            pos += n_ws - 1;
            s.emit(pos, out);
            continue;
        }
        // \s+
        if n_ws > 0 {
            pos += n_ws;
            s.emit(pos, out);
            continue;
        }
        pos += 1;
        s.emit(pos, out);
    }
}

fn split_llama3(chars: &[char], seg: Range<usize>, out: &mut Vec<Range<usize>>) {
    let mut s = Seg {
        chars,
        start: seg.start,
        end: seg.end,
        prev_end: seg.start,
    };
    let end = seg.end;
    let mut pos = seg.start;
    while pos < end {
        let Some(c) = s.get(pos) else { break };
        let flags = s.flags(pos);

        // (?i:'s|'t|'re|'ve|'m|'ll|'d)
        if c == '\'' && pos + 1 < end {
            let n1 = unicode::to_lower_ascii(s.get(pos + 1).unwrap_or('\0'));
            if is_contraction1(n1) {
                pos += s.emit(pos + 2, out);
                continue;
            }
            if pos + 2 < end {
                let n2 = unicode::to_lower_ascii(s.get(pos + 2).unwrap_or('\0'));
                if is_contraction2(n1, n2) {
                    pos += s.emit(pos + 3, out);
                    continue;
                }
            }
        }

        // [^\r\n\p{L}\p{N}]?\p{L}+
        if !(c == '\r' || c == '\n' || flags.number) && (flags.letter || s.flags(pos + 1).letter) {
            pos += 1;
            while s.flags(pos).letter {
                pos += 1;
            }
            s.emit(pos, out);
            continue;
        }

        // \p{N}{1,3}
        if flags.number {
            let mut first = pos;
            while s.flags(pos).number {
                pos += 1;
                if pos - first >= 3 {
                    s.emit(pos, out);
                    first = pos;
                }
            }
            s.emit(pos, out);
            continue;
        }

        // ' '?[^\s\p{L}\p{N}]+[\r\n]*  (llama.cpp tests the presence of the current code point)
        let mut f2 = if c == ' ' { s.flags(pos + 1) } else { flags };
        if !(f2.whitespace || f2.letter || f2.number) && flags.present {
            pos += usize::from(c == ' ');
            while !(f2.whitespace || f2.letter || f2.number) && f2.present {
                pos += 1;
                f2 = s.flags(pos);
            }
            while matches!(s.get(pos), Some('\r' | '\n')) {
                pos += 1;
            }
            s.emit(pos, out);
            continue;
        }

        let mut n_ws = 0;
        let mut last_newline_end = None;
        while s.flags(pos + n_ws).whitespace {
            if matches!(s.get(pos + n_ws), Some('\r' | '\n')) {
                last_newline_end = Some(pos + n_ws + 1);
            }
            n_ws += 1;
        }
        // \s*[\r\n]+
        if let Some(e) = last_newline_end {
            pos = e;
            s.emit(pos, out);
            continue;
        }
        // \s+(?!\S)
        if n_ws > 1 && s.get(pos + n_ws).is_some() {
            pos += n_ws - 1;
            s.emit(pos, out);
            continue;
        }
        // \s+
        if n_ws > 0 {
            pos += n_ws;
            s.emit(pos, out);
            continue;
        }
        pos += 1;
        s.emit(pos, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(pre: &str, text: &str) -> Vec<String> {
        let p = PreTokenizer::new(pre).unwrap().unwrap();
        p.split(text)
            .unwrap()
            .into_iter()
            .map(|r| text[r].to_string())
            .collect()
    }

    #[test]
    fn expand() {
        assert_eq!(expand_categories("\\p{N}+"), "[\\x{D1}0-9]+");
        assert_eq!(expand_categories("[^\\s\\p{L}]"), "[^\\s\\x{D2}A-Za-z]");
        assert_eq!(expand_categories("\\s+(?!\\S)"), "\\s+(?!\\S)");
        assert_eq!(expand_categories("[\\[\\p{M}]"), "[\\[\\x{D4}]");
    }

    #[test]
    fn gpt2_words() {
        assert_eq!(
            words("gpt-2", "Hello world, it's 2024!  ok  "),
            ["Hello", " world", ",", " it", "'s", " 2024", "!", " ", " ok", "  "]
        );
        assert_eq!(words("gpt-2", "a\n\nb"), ["a", "\n", "\n", "b"]);
        assert_eq!(words("gpt-2", " \u{3000}x"), [" ", "\u{3000}", "x"]);
    }

    #[test]
    fn llama3_words() {
        assert_eq!(
            words("llama3", "Hello WORLD'S 12345 ok\n\n  x  "),
            ["Hello", " WORLD", "'S", " ", "123", "45", " ok", "\n\n", " ", " x", "  "]
        );
        assert_eq!(words("llama3", "\"quoted\""), ["\"quoted", "\""]);
    }

    #[test]
    fn smollm_splits_digits() {
        assert_eq!(
            words("smollm", "numbers 1234 and 3.14"),
            ["numbers", " ", "1", "2", "3", "4", " and", " ", "3", ".", "1", "4"]
        );
    }

    #[test]
    fn default_words() {
        assert_eq!(
            words("default", "a+b=12345 (x)"),
            ["a", "+", "b", "=", "123", "45", " ", "(", "x", ")"]
        );
    }

    #[test]
    fn qwen2_words() {
        assert_eq!(
            words("qwen2", "I'M 123 caf\u{e9}!!\n\n  end  "),
            [
                "I",
                "'M",
                " ",
                "1",
                "2",
                "3",
                " caf\u{e9}",
                "!!\n\n",
                " ",
                " end",
                "  "
            ]
        );
    }

    #[test]
    fn every_pre_compiles_and_covers_the_text() {
        let text =
            "Hi! It's 12345 \u{e9}t\u{e9}, \u{65e5}\u{672c}\u{8a9e} \u{1F916}\t\r\n  x\u{3000}y ~$";
        for name in SUPPORTED.split(',').map(str::trim) {
            let p = PreTokenizer::new(name)
                .unwrap()
                .unwrap_or_else(|| panic!("{name}"));
            let ranges = p.split(text).unwrap();
            let mut at = 0;
            for r in &ranges {
                assert_eq!(r.start, at, "{name}");
                assert!(r.end > r.start, "{name}");
                at = r.end;
            }
            assert_eq!(at, text.len(), "{name}");
        }
        assert!(PreTokenizer::new("no-such-pre").unwrap().is_none());
    }

    /// Long runs of one kind of character stay within the regex engine's backtracking limit.
    #[test]
    fn long_runs_split_without_regex_failure() {
        let inputs = [
            format!("{}x", " ".repeat(20_000)),
            "A".repeat(20_000),
            "a".repeat(20_000),
            format!("{}!", "\t \n".repeat(6_000)),
            "1".repeat(20_000),
            "é".repeat(10_000),
        ];
        for name in SUPPORTED.split(',').map(str::trim) {
            let p = PreTokenizer::new(name).unwrap().unwrap();
            for text in &inputs {
                let r = p.split(text);
                assert!(r.is_ok(), "{name}: {r:?}");
            }
        }
    }
}
