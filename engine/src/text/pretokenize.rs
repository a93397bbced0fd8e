//! Byte-level BPE pre-tokenizers: a text is cut into words before merges run inside each word.
//!
//! Each pre-tokenizer is a list of patterns applied in turn, every pattern re-cutting the pieces
//! the previous one left (text between matches stays a piece of its own), exactly as llama.cpp's
//! `unicode_regex_split` does. The patterns are hand-written matchers rather than a regex
//! engine: the GPT-2 and Llama 3 patterns need look-ahead (`\s+(?!\S)`), which Rust's `regex`
//! lacks, and llama.cpp itself runs these two through hand-written code whose edge cases
//! (contractions only inside a fragment, `\p{N}{1,3}` chunking) we follow.

use super::unicode::Flags;

/// Which pre-tokenizer a GGUF names in `tokenizer.ggml.pre`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pre {
    /// `default` (or no key): punctuation runs, GPT-2, digit runs, ASCII digit triples.
    Default,
    /// `gpt-2`.
    Gpt2,
    /// `llama-bpe` / `llama3` / `llama-v3`: Llama 3's pattern (digits in groups of up to 3).
    Llama3,
    /// `smollm` (and `command-r`): single digits, then GPT-2; no space cleaning on decode.
    Smollm,
    /// `starcoder` / `refact`: SmolLM's split, with space cleaning on decode.
    Starcoder,
}

impl Pre {
    /// The pre-tokenizer called `name`, with whether merges are skipped for words that are
    /// whole tokens (`ignore_merges`) and whether detokenising cleans spaces before
    /// punctuation (`clean_spaces`), as llama.cpp sets them; `None` if we do not know it.
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "default" => Pre::Default,
            "gpt-2" | "mpt" => Pre::Gpt2,
            "llama-bpe" | "llama3" | "llama-v3" => Pre::Llama3,
            "smollm" | "command-r" => Pre::Smollm,
            "starcoder" | "refact" => Pre::Starcoder,
            _ => return None,
        })
    }

    /// The names [`Pre::from_name`] accepts.
    pub const NAMES: &'static [&'static str] = &[
        "default",
        "gpt-2",
        "mpt",
        "llama-bpe",
        "llama3",
        "llama-v3",
        "smollm",
        "command-r",
        "starcoder",
        "refact",
    ];

    /// Whether a word that is itself a token skips the merges (Llama 3 sets it).
    pub fn ignore_merges(self) -> bool {
        self == Pre::Llama3
    }

    /// Whether detokenising drops the space before `?!.,` and some contractions.
    pub fn clean_spaces(self) -> bool {
        self != Pre::Smollm
    }

    /// Whether a BOS is added by default (before `tokenizer.ggml.add_bos_token` is read).
    pub fn add_bos_default(self) -> bool {
        self == Pre::Llama3
    }
}

/// One pattern of a pre-tokenizer.
#[derive(Debug, Clone, Copy)]
enum Pattern {
    /// `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`
    Gpt2,
    /// Llama 3's pattern with `\p{N}{1,max_digits}`.
    Llama3 { max_digits: usize },
    /// `[\p{P}\$\+<=>\^~\|]+`
    PunctuationRuns,
    /// `\p{N}`
    SingleNumbers,
    /// `\p{N}+`
    NumberRuns,
    /// `[0-9][0-9][0-9]`
    AsciiDigitTriples,
}

impl Pre {
    fn patterns(self) -> &'static [Pattern] {
        match self {
            Pre::Default => &[
                Pattern::PunctuationRuns,
                Pattern::Gpt2,
                Pattern::NumberRuns,
                Pattern::AsciiDigitTriples,
            ],
            Pre::Gpt2 => &[Pattern::Gpt2],
            Pre::Llama3 => &[Pattern::Llama3 { max_digits: 3 }],
            Pre::Smollm | Pre::Starcoder => &[Pattern::SingleNumbers, Pattern::Gpt2],
        }
    }
}

/// Cuts `text` into words (contiguous, covering all of it, none empty).
pub fn split(pre: Pre, text: &str) -> Vec<&str> {
    let chars: Vec<char> = text.chars().collect();
    let mut starts: Vec<usize> = text.char_indices().map(|(i, _)| i).collect();
    starts.push(text.len());
    let flags: Vec<Flags> = chars.iter().map(|&c| Flags::of(c)).collect();
    let mut pieces = if chars.is_empty() {
        vec![]
    } else {
        vec![chars.len()]
    };
    for &pattern in pre.patterns() {
        pieces = apply(pattern, &chars, &flags, &pieces);
    }
    let mut out = Vec::with_capacity(pieces.len());
    let mut at = 0;
    for len in pieces {
        out.push(&text[starts[at]..starts[at + len]]);
        at += len;
    }
    out
}

/// Re-cuts each piece (lengths in code points) by `pattern`.
fn apply(pattern: Pattern, chars: &[char], flags: &[Flags], pieces: &[usize]) -> Vec<usize> {
    let mut out = Vec::with_capacity(pieces.len());
    let mut start = 0;
    for &len in pieces {
        let frag = Fragment {
            chars: &chars[start..start + len],
            flags: &flags[start..start + len],
        };
        match pattern {
            Pattern::Gpt2 => gpt2(frag, &mut out),
            Pattern::Llama3 { max_digits } => llama3(frag, max_digits, &mut out),
            Pattern::PunctuationRuns => runs(frag, &mut out, |c, f| {
                if c.is_ascii() {
                    f.punctuation || "$+<=>^~|".contains(c)
                } else {
                    f.punctuation && !f.whitespace
                }
            }),
            Pattern::NumberRuns => runs(frag, &mut out, is_number),
            Pattern::SingleNumbers => matches(frag, &mut out, |f, at| {
                is_number(f.chars[at], f.flags[at]).then_some(1)
            }),
            Pattern::AsciiDigitTriples => matches(frag, &mut out, |f, at| {
                let digit = |i: usize| f.chars.get(i).is_some_and(|c| c.is_ascii_digit());
                (digit(at) && digit(at + 1) && digit(at + 2)).then_some(3)
            }),
        }
        start += len;
    }
    out
}

/// `\p{N}` as llama.cpp's collapsed-text regex sees it: ASCII digits, or a non-ASCII,
/// non-space number.
fn is_number(c: char, f: Flags) -> bool {
    if c.is_ascii() {
        c.is_ascii_digit()
    } else {
        f.number && !f.whitespace
    }
}

#[derive(Clone, Copy)]
struct Fragment<'a> {
    chars: &'a [char],
    flags: &'a [Flags],
}

impl Fragment<'_> {
    fn len(&self) -> usize {
        self.chars.len()
    }

    /// The code point at `at`, `None` past the fragment (the matchers never look across one).
    fn char(&self, at: usize) -> Option<char> {
        self.chars.get(at).copied()
    }

    fn flags(&self, at: usize) -> Option<Flags> {
        self.flags.get(at).copied()
    }

    fn letter(&self, at: usize) -> bool {
        self.flags(at).is_some_and(|f| f.letter)
    }

    fn number(&self, at: usize) -> bool {
        self.flags(at).is_some_and(|f| f.number)
    }

    fn space(&self, at: usize) -> bool {
        self.flags(at).is_some_and(|f| f.whitespace)
    }

    /// In the fragment and none of `\s`, `\p{L}`, `\p{N}`.
    fn other(&self, at: usize) -> bool {
        self.flags(at)
            .is_some_and(|f| !(f.whitespace || f.letter || f.number))
    }

    /// Length of the contraction (`'s`, `'t`, `'re`, ...) at `at`, if any.
    fn contraction(&self, at: usize, any_case: bool) -> Option<usize> {
        if self.char(at) != Some('\'') || at + 1 >= self.len() {
            return None;
        }
        let lower = |i: usize| {
            let c = self.chars[i];
            if any_case {
                c.to_ascii_lowercase()
            } else {
                c
            }
        };
        let a = lower(at + 1);
        if matches!(a, 's' | 't' | 'm' | 'd') {
            return Some(2);
        }
        if at + 2 < self.len() {
            let b = lower(at + 2);
            if matches!((a, b), ('r', 'e') | ('v', 'e') | ('l', 'l')) {
                return Some(3);
            }
        }
        None
    }

    /// Number of whitespace code points from `at`.
    fn spaces(&self, at: usize) -> usize {
        (at..self.len()).take_while(|&i| self.space(i)).count()
    }
}

/// GPT-2's pattern over one fragment, pushing word lengths.
fn gpt2(f: Fragment, out: &mut Vec<usize>) {
    let mut pos = 0;
    while pos < f.len() {
        let start = pos;
        let mut at = start;
        if let Some(n) = f.contraction(pos, false) {
            pos = cut(out, pos, start + n);
            continue;
        }
        let lead = usize::from(f.char(at) == Some(' '));
        // ` ?\p{L}+`, ` ?\p{N}+`, ` ?[^\s\p{L}\p{N}]+`
        let class: Option<fn(&Fragment, usize) -> bool> = if f.letter(at + lead) {
            Some(|f, i| f.letter(i))
        } else if f.number(at + lead) {
            Some(|f, i| f.number(i))
        } else if f.other(at + lead) {
            Some(|f, i| f.other(i))
        } else {
            None
        };
        if let Some(class) = class {
            at += lead;
            while class(&f, at) {
                at += 1;
            }
            pos = cut(out, pos, at);
            continue;
        }
        let n = f.spaces(at);
        if n > 1 && at + n < f.len() {
            // `\s+(?!\S)`: leave the last space to the word that follows.
            pos = cut(out, pos, at + n - 1);
        } else if n > 0 {
            pos = cut(out, pos, at + n);
        } else {
            pos = cut(out, pos, at + 1);
        }
    }
}

/// Llama 3's pattern over one fragment.
fn llama3(f: Fragment, max_digits: usize, out: &mut Vec<usize>) {
    let mut pos = 0;
    while pos < f.len() {
        let start = pos;
        let c = f.chars[pos];
        if let Some(n) = f.contraction(pos, true) {
            pos = cut(out, pos, start + n);
            continue;
        }
        // `[^\r\n\p{L}\p{N}]?\p{L}+`
        if !(c == '\r' || c == '\n' || f.number(pos)) && (f.letter(pos) || f.letter(pos + 1)) {
            let mut at = pos + 1;
            while f.letter(at) {
                at += 1;
            }
            pos = cut(out, pos, at);
            continue;
        }
        // `\p{N}{1,3}`
        if f.number(pos) {
            let mut at = pos;
            let mut group = pos;
            while f.number(at) {
                at += 1;
                if at - group >= max_digits {
                    pos = cut(out, pos, at);
                    group = at;
                }
            }
            pos = cut(out, pos, at);
            continue;
        }
        // ` ?[^\s\p{L}\p{N}]+[\r\n]*`
        let lead = usize::from(c == ' ');
        let after = pos + lead;
        if after >= f.len() || f.other(after) {
            let mut at = after;
            while f.other(at) {
                at += 1;
            }
            while matches!(f.char(at), Some('\r' | '\n')) {
                at += 1;
            }
            pos = cut(out, pos, at);
            continue;
        }
        // `\s*[\r\n]+`, `\s+(?!\S)`, `\s+`
        let n = f.spaces(pos);
        let last_newline = (pos..pos + n).rfind(|&i| matches!(f.chars[i], '\r' | '\n'));
        if let Some(i) = last_newline {
            pos = cut(out, pos, i + 1);
        } else if n > 1 && pos + n < f.len() {
            pos = cut(out, pos, pos + n - 1);
        } else if n > 0 {
            pos = cut(out, pos, pos + n);
        } else {
            pos = cut(out, pos, pos + 1);
        }
    }
}

/// Records the word `from..to` (if not empty) and returns where the next one starts.
fn cut(out: &mut Vec<usize>, from: usize, to: usize) -> usize {
    if to > from {
        out.push(to - from);
    }
    to
}

/// Maximal runs of code points for which `member` holds, and the gaps between them.
fn runs(f: Fragment, out: &mut Vec<usize>, member: impl Fn(char, Flags) -> bool) {
    let mut at = 0;
    while at < f.len() {
        let inside = member(f.chars[at], f.flags[at]);
        let start = at;
        while at < f.len() && member(f.chars[at], f.flags[at]) == inside {
            at += 1;
        }
        out.push(at - start);
    }
}

/// Leftmost non-overlapping matches (`match_at` gives a match's length at a position), with
/// the text between them as pieces of their own.
fn matches(
    f: Fragment,
    out: &mut Vec<usize>,
    match_at: impl Fn(&Fragment, usize) -> Option<usize>,
) {
    let mut gap = 0;
    let mut at = 0;
    while at < f.len() {
        if let Some(n) = match_at(&f, at) {
            if at > gap {
                out.push(at - gap);
            }
            out.push(n);
            at += n;
            gap = at;
        } else {
            at += 1;
        }
    }
    if f.len() > gap {
        out.push(f.len() - gap);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpt2_words() {
        assert_eq!(
            split(Pre::Gpt2, "Hello world's  123 !!  x\n\n"),
            ["Hello", " world", "'s", " ", " 123", " !!", " ", " x", "\n\n"]
        );
    }

    #[test]
    fn llama3_words() {
        assert_eq!(
            split(Pre::Llama3, "I'VE 12345 ok?!\n\n  hi\r\n"),
            ["I", "'VE", " ", "123", "45", " ok", "?!\n\n", " ", " hi", "\r\n"]
        );
    }

    #[test]
    fn default_and_smollm_words() {
        assert_eq!(split(Pre::Smollm, "ab 123"), ["ab", " ", "1", "2", "3"]);
        assert_eq!(
            split(Pre::Default, "a+b=12345"),
            ["a", "+", "b", "=", "123", "45"]
        );
    }
}
