//! The character classes the pre-tokenizers ask about (`\p{L}`, `\p{N}`, `\p{P}`, `\s`), as
//! llama.cpp's `unicode.cpp` answers them: a code point's general category (here from the
//! `unicode-general-category` crate, Unicode 16.0; llama.cpp generates its own table from the
//! UnicodeData.txt of its day, so code points assigned since then may differ) and whitespace
//! as the Unicode `White_Space` property, which is what llama.cpp's `\s` means.

use unicode_general_category::{get_general_category, GeneralCategory as G};

/// The major class of a code point (the first letter of its general category).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// `\p{L}`.
    Letter,
    /// `\p{N}`.
    Number,
    /// `\p{P}`.
    Punctuation,
    /// `\p{S}`.
    Symbol,
    /// `\p{M}`.
    Mark,
    /// `\p{Z}`.
    Separator,
    /// `\p{C}` except unassigned code points.
    Control,
    /// Not assigned (`Cn`).
    Unassigned,
}

/// The class of `c`.
pub fn class(c: char) -> Class {
    if c.is_ascii() {
        return ascii_class(c as u8);
    }
    match get_general_category(c) {
        G::UppercaseLetter
        | G::LowercaseLetter
        | G::TitlecaseLetter
        | G::ModifierLetter
        | G::OtherLetter => Class::Letter,
        G::DecimalNumber | G::LetterNumber | G::OtherNumber => Class::Number,
        G::ConnectorPunctuation
        | G::DashPunctuation
        | G::OpenPunctuation
        | G::ClosePunctuation
        | G::InitialPunctuation
        | G::FinalPunctuation
        | G::OtherPunctuation => Class::Punctuation,
        G::MathSymbol | G::CurrencySymbol | G::ModifierSymbol | G::OtherSymbol => Class::Symbol,
        G::NonspacingMark | G::SpacingMark | G::EnclosingMark => Class::Mark,
        G::SpaceSeparator | G::LineSeparator | G::ParagraphSeparator => Class::Separator,
        G::Control | G::Format | G::PrivateUse | G::Surrogate => Class::Control,
        // Unassigned, and any category a later version of the crate adds.
        _ => Class::Unassigned,
    }
}

fn ascii_class(b: u8) -> Class {
    match b {
        b'A'..=b'Z' | b'a'..=b'z' => Class::Letter,
        b'0'..=b'9' => Class::Number,
        b' ' => Class::Separator,
        b'$' | b'+' | b'<' | b'=' | b'>' | b'^' | b'`' | b'|' | b'~' => Class::Symbol,
        0x21..=0x7e => Class::Punctuation,
        _ => Class::Control,
    }
}

/// Whether `c` has the Unicode `White_Space` property (llama.cpp's `\s`).
pub fn is_whitespace(c: char) -> bool {
    matches!(
        c as u32,
        0x09..=0x0d
            | 0x20
            | 0x85
            | 0xa0
            | 0x1680
            | 0x2000..=0x200a
            | 0x2028
            | 0x2029
            | 0x202f
            | 0x205f
            | 0x3000
    )
}

/// A code point's classes as the splitters test them.
#[derive(Debug, Clone, Copy)]
pub struct Flags {
    /// `\p{L}`.
    pub letter: bool,
    /// `\p{N}`.
    pub number: bool,
    /// `\p{P}`.
    pub punctuation: bool,
    /// `\s`.
    pub whitespace: bool,
}

impl Flags {
    /// The flags of `c`.
    pub fn of(c: char) -> Self {
        let class = class(c);
        Self {
            letter: class == Class::Letter,
            number: class == Class::Number,
            punctuation: class == Class::Punctuation,
            whitespace: is_whitespace(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ascii_classes_agree_with_the_unicode_table() {
        for b in 0u8..128 {
            let c = b as char;
            let table = match get_general_category(c) {
                G::UppercaseLetter | G::LowercaseLetter => Class::Letter,
                G::DecimalNumber => Class::Number,
                G::SpaceSeparator => Class::Separator,
                G::MathSymbol | G::CurrencySymbol | G::ModifierSymbol => Class::Symbol,
                G::Control => Class::Control,
                _ => Class::Punctuation,
            };
            assert_eq!(ascii_class(b), table, "{b:#x}");
        }
    }

    #[test]
    fn classes_of_a_few_scripts() {
        assert_eq!(class('ä'), Class::Letter);
        assert_eq!(class('中'), Class::Letter);
        assert_eq!(class('½'), Class::Number);
        assert_eq!(class('٣'), Class::Number);
        assert_eq!(class('…'), Class::Punctuation);
        assert_eq!(class('€'), Class::Symbol);
        assert_eq!(class('\u{301}'), Class::Mark);
        assert_eq!(class('\u{e000}'), Class::Control);
        assert!(is_whitespace('\u{3000}') && is_whitespace('\n') && !is_whitespace('\u{200b}'));
    }
}
