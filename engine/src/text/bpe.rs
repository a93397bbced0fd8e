//! Byte-level BPE (GGUF `tokenizer.ggml.model = gpt2`), as llama.cpp runs it: the text is cut
//! into words by the pre-tokenizer, each word's bytes are written as GPT-2's printable
//! stand-ins, and inside a word the adjacent pair with the lowest merge rank merges first
//! (ties: leftmost) until no listed merge applies.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::OnceLock;

use super::gguf_tokenizer::GgufTokenizer;
use super::pretokenize::{self, Pre};

/// GPT-2's byte → code point map: printable Latin-1 bytes stand for themselves, the other 68
/// bytes for code points from 256 up, in byte order.
pub fn byte_to_char(b: u8) -> char {
    static MAP: OnceLock<[char; 256]> = OnceLock::new();
    MAP.get_or_init(|| {
        let mut map = ['\0'; 256];
        let mut next = 256u32;
        for (b, slot) in map.iter_mut().enumerate() {
            let printable = matches!(b, 0x21..=0x7e | 0xa1..=0xac | 0xae..=0xff);
            *slot = if printable {
                b as u8 as char
            } else {
                next += 1;
                char::from_u32(next - 1).expect("below the surrogates")
            };
        }
        map
    })[b as usize]
}

/// The byte GPT-2's map sends to `c`, if any.
pub fn char_to_byte(c: char) -> Option<u8> {
    let cp = c as u32;
    match cp {
        0x21..=0x7e | 0xa1..=0xac | 0xae..=0xff => Some(cp as u8),
        256..=323 => (0u8..=255).find(|&b| byte_to_char(b) == c),
        _ => None,
    }
}

#[derive(Clone, Copy)]
struct Symbol {
    start: usize,
    len: usize,
    prev: Option<usize>,
    next: Option<usize>,
}

/// Appends the tokens of `text` (one raw fragment, special tokens already cut out).
pub(super) fn tokenize(vocab: &GgufTokenizer, pre: Pre, text: &str, out: &mut Vec<u32>) {
    let mut word = String::new();
    let mut symbols: Vec<Symbol> = Vec::new();
    let mut queue = BinaryHeap::new();
    for raw in pretokenize::split(pre, text) {
        word.clear();
        word.extend(raw.bytes().map(byte_to_char));
        let w = word.as_bytes();
        symbols.clear();
        queue.clear();
        if pre.ignore_merges() && vocab.token_id(w).is_some() {
            symbols.push(Symbol {
                start: 0,
                len: w.len(),
                prev: None,
                next: None,
            });
        } else {
            for (i, (start, c)) in word.char_indices().enumerate() {
                let end = start + c.len_utf8();
                symbols.push(Symbol {
                    start,
                    len: c.len_utf8(),
                    prev: i.checked_sub(1),
                    next: (end < w.len()).then_some(i + 1),
                });
            }
        }
        let add =
            |symbols: &[Symbol], queue: &mut BinaryHeap<_>, l: Option<usize>, r: Option<usize>| {
                let (Some(l), Some(r)) = (l, r) else {
                    return;
                };
                let (a, b) = (symbols[l], symbols[r]);
                let left = &w[a.start..a.start + a.len];
                let right = &w[b.start..b.start + b.len];
                if let Some(rank) = vocab.merge_rank(left, right) {
                    // Min-heap on (rank, left); the lengths tell a stale entry from a live one.
                    queue.push(Reverse((rank, l, r, a.len, b.len)));
                }
            };
        for i in 1..symbols.len() {
            add(&symbols, &mut queue, Some(i - 1), Some(i));
        }
        while let Some(Reverse((_, l, r, llen, rlen))) = queue.pop() {
            if symbols[l].len != llen || symbols[r].len != rlen || llen == 0 || rlen == 0 {
                continue;
            }
            let right = symbols[r];
            symbols[l].len += right.len;
            symbols[r].len = 0;
            symbols[l].next = right.next;
            if let Some(n) = right.next {
                symbols[n].prev = Some(l);
            }
            let (prev, next) = (symbols[l].prev, symbols[l].next);
            add(&symbols, &mut queue, prev, Some(l));
            add(&symbols, &mut queue, Some(l), next);
        }
        for s in symbols.iter().filter(|s| s.len > 0) {
            let piece = &w[s.start..s.start + s.len];
            match vocab.token_id(piece) {
                Some(id) => out.push(id),
                // llama.cpp looks each byte of the unmerged piece up as a one-byte token and
                // drops those that are not: only ASCII stand-ins can be found that way.
                None => out.extend(piece.iter().filter_map(|&b| vocab.token_id(&[b]))),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_byte_map_is_gpt2s() {
        // Values from GPT-2's published encoder: space is Ġ (U+0120), newline Ċ (U+010A),
        // byte 0 is Ā (U+0100), byte 0xAD (soft hyphen) is Ń (U+0143).
        assert_eq!(byte_to_char(b' '), '\u{120}');
        assert_eq!(byte_to_char(b'\n'), '\u{10a}');
        assert_eq!(byte_to_char(0), '\u{100}');
        assert_eq!(byte_to_char(0xad), '\u{143}');
        assert_eq!(byte_to_char(b'a'), 'a');
        for b in 0..=255u8 {
            assert_eq!(char_to_byte(byte_to_char(b)), Some(b));
        }
        assert_eq!(char_to_byte('\u{144}'), None);
    }
}
