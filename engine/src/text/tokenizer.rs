//! The llama2.c tokenizer: reading `tokenizer.bin`, encoding text exactly like llama2.c's
//! `run.c` `encode`, decoding ids back to bytes, and a UTF-8 aware streaming printer buffer.
//!
//! File format (little-endian): `i32 max_token_length`, then per token `f32 score`,
//! `i32 length`, `length` bytes. The vocabulary size is not stored; it comes from the model.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};
use std::path::Path;

/// Id of the beginning-of-sequence token.
pub const BOS: u32 = 1;
/// Id of the end-of-sequence token.
pub const EOS: u32 = 2;
/// Id of the first byte-fallback token: byte `b` encodes as `BYTE_FALLBACK_BASE + b`.
pub const BYTE_FALLBACK_BASE: u32 = 3;
/// The longest token piece accepted from a file, in bytes.
pub const MAX_PIECE_LEN: usize = 1 << 16;
/// The fewest tokens a usable tokenizer has: `<unk>`, BOS, EOS and the 256 byte tokens that
/// byte fallback refers to by id.
pub const MIN_VOCAB_SIZE: usize = BYTE_FALLBACK_BASE as usize + 256;

/// The bytes of U+FFFD, what [`Tokenizer::piece`] and [`Tokenizer::decode_piece`] return for
/// an id outside the vocabulary.
pub const REPLACEMENT_PIECE: &[u8] = "\u{FFFD}".as_bytes();

/// run.c starts its search for the best merge at this score with a strict `>`, so a pair
/// scoring at or below it is never merged; keeping the same bound keeps the same ids.
const MERGE_SCORE_FLOOR: f32 = -1e10;

/// Every byte value, so `<0xXX>` pieces can decode to a `'static` one-byte slice.
static BYTE_PIECES: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        table[i] = i as u8;
        i += 1;
    }
    table
};

/// Why a tokenizer could not be read. Every message names the file (or in-memory origin).
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// The file could not be read at all.
    #[error("cannot read tokenizer file {path}: {source}")]
    Io {
        /// The file that was being read.
        path: String,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file ends inside the header or inside a token entry.
    #[error(
        "tokenizer {origin} is truncated: it ends at byte {offset} in the middle of {what}; \
         the file is damaged or incomplete"
    )]
    Truncated {
        /// The file (or in-memory origin) being read.
        origin: String,
        /// The byte offset where the missing data should start.
        offset: usize,
        /// Which field was cut off.
        what: String,
    },
    /// The header's `max_token_length` is negative.
    #[error(
        "tokenizer {origin} is malformed: max_token_length at byte 0 is {value}, which is negative"
    )]
    BadHeader {
        /// The file (or in-memory origin) being read.
        origin: String,
        /// The value found.
        value: i32,
    },
    /// A token's length field is negative or larger than [`MAX_PIECE_LEN`].
    #[error(
        "tokenizer {origin} is malformed: token {index} has length {length} at byte {offset} \
         (expected 0..={max})",
        max = MAX_PIECE_LEN
    )]
    BadLength {
        /// The file (or in-memory origin) being read.
        origin: String,
        /// The token's index in the file.
        index: usize,
        /// The byte offset of the length field.
        offset: usize,
        /// The value found.
        length: i32,
    },
    /// A token's score is NaN or infinite.
    #[error(
        "tokenizer {origin} is malformed: token {index} has non-finite score {score} at byte {offset}"
    )]
    NonFiniteScore {
        /// The file (or in-memory origin) being read.
        origin: String,
        /// The token's index in the file.
        index: usize,
        /// The byte offset of the score field.
        offset: usize,
        /// The value found.
        score: f32,
    },
    /// The file holds fewer tokens than the model's vocabulary.
    #[error(
        "tokenizer {origin} has {found} tokens but the model needs {needed}; \
         use the tokenizer that belongs to this model"
    )]
    TooFewTokens {
        /// The file (or in-memory origin) being read.
        origin: String,
        /// How many complete entries the file holds.
        found: usize,
        /// How many the model needs.
        needed: usize,
    },
    /// The vocabulary cannot hold the special and byte-fallback tokens encoding relies on.
    #[error(
        "tokenizer {origin} has only {found} tokens; a llama2.c tokenizer needs at least {min} \
         (<unk>, BOS, EOS and 256 byte tokens)",
        min = MIN_VOCAB_SIZE
    )]
    VocabTooSmall {
        /// The file (or in-memory origin) being read.
        origin: String,
        /// How many tokens were requested or found.
        found: usize,
    },
}

/// A llama2.c vocabulary: token pieces, their merge scores and a piece → id lookup.
#[derive(Debug, Clone)]
pub struct Tokenizer {
    /// All pieces back to back; piece `i` is `bytes[offsets[i]..offsets[i + 1]]`.
    bytes: Vec<u8>,
    offsets: Vec<usize>,
    scores: Vec<f32>,
    /// When a piece occurs more than once, the lowest id wins (run.c's bsearch would pick an
    /// arbitrary one; real vocabularies have no duplicates).
    lookup: HashMap<Box<[u8]>, u32>,
    /// The dummy-prefix token; byte fallback for `' '` if the vocabulary has no `" "` piece
    /// (run.c would push id -1 there).
    space_id: u32,
    max_token_length: i32,
    unread_bytes: usize,
}

/// A candidate merge of the adjacent nodes `left` and `right`, valid only while both still
/// hold the ids they had when it was queued (checked lazily when it is popped).
#[derive(Debug, Clone, Copy)]
struct Candidate {
    score: f32,
    left: u32,
    right: u32,
    left_id: u32,
    right_id: u32,
    merged: u32,
}

impl Ord for Candidate {
    fn cmp(&self, other: &Self) -> Ordering {
        // Scores are finite (checked on load); partial_cmp treats -0.0 == 0.0 as C's `>` does.
        // Among equal scores the leftmost pair must win, as run.c's strict `>` scan does, and
        // node indices grow left to right because a merge keeps the left node.
        self.score
            .partial_cmp(&other.score)
            .unwrap_or(Ordering::Equal)
            .then_with(|| other.left.cmp(&self.left))
            .then_with(|| other.right.cmp(&self.right))
            .then_with(|| other.left_id.cmp(&self.left_id))
            .then_with(|| other.right_id.cmp(&self.right_id))
    }
}

impl PartialOrd for Candidate {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Candidate {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Candidate {}

const NONE: u32 = u32::MAX;

impl Tokenizer {
    /// Reads the first `vocab_size` entries of a `tokenizer.bin`; a file with fewer entries is
    /// [`TokenizerError::TooFewTokens`]. Extra entries after them are ignored, as run.c does.
    pub fn from_file(path: &Path, vocab_size: usize) -> Result<Self, TokenizerError> {
        let bytes = read_file(path)?;
        Self::from_bytes(&bytes, Some(vocab_size), &path.display().to_string())
    }

    /// Reads every entry of a `tokenizer.bin` up to the end of the file, for when no model
    /// says how many there should be.
    pub fn from_file_all(path: &Path) -> Result<Self, TokenizerError> {
        let bytes = read_file(path)?;
        Self::from_bytes(&bytes, None, &path.display().to_string())
    }

    /// Parses tokenizer bytes: `vocab_size` entries, or all entries up to the end when `None`.
    /// `origin` names the source in error messages.
    pub fn from_bytes(
        bytes: &[u8],
        vocab_size: Option<usize>,
        origin: &str,
    ) -> Result<Self, TokenizerError> {
        if let Some(n) = vocab_size {
            if n < MIN_VOCAB_SIZE {
                return Err(TokenizerError::VocabTooSmall {
                    origin: origin.to_owned(),
                    found: n,
                });
            }
        }
        let truncated = |offset: usize, what: String| TokenizerError::Truncated {
            origin: origin.to_owned(),
            offset,
            what,
        };
        let max_token_length = read_i32(bytes, 0)
            .ok_or_else(|| truncated(bytes.len(), "the 4-byte header".to_owned()))?;
        if max_token_length < 0 {
            return Err(TokenizerError::BadHeader {
                origin: origin.to_owned(),
                value: max_token_length,
            });
        }

        // Cap the reservation so a huge claimed vocab_size cannot allocate before the data
        // proves it exists; each entry takes at least 8 bytes.
        let cap = vocab_size.unwrap_or(usize::MAX).min(bytes.len() / 8 + 1);
        let mut offsets = Vec::with_capacity(cap + 1);
        let mut scores = Vec::with_capacity(cap);
        let mut pieces = Vec::with_capacity(bytes.len());
        offsets.push(0);
        let mut pos = 4usize;
        loop {
            let index = scores.len();
            if vocab_size == Some(index) {
                break;
            }
            if pos == bytes.len() {
                if let Some(needed) = vocab_size {
                    return Err(TokenizerError::TooFewTokens {
                        origin: origin.to_owned(),
                        found: index,
                        needed,
                    });
                }
                break;
            }
            let score = read_f32(bytes, pos)
                .ok_or_else(|| truncated(pos, format!("the score of token {index}")))?;
            if !score.is_finite() {
                return Err(TokenizerError::NonFiniteScore {
                    origin: origin.to_owned(),
                    index,
                    offset: pos,
                    score,
                });
            }
            let len_pos = pos + 4;
            let length = read_i32(bytes, len_pos)
                .ok_or_else(|| truncated(len_pos, format!("the length of token {index}")))?;
            if length < 0 || length as usize > MAX_PIECE_LEN {
                return Err(TokenizerError::BadLength {
                    origin: origin.to_owned(),
                    index,
                    offset: len_pos,
                    length,
                });
            }
            let start = len_pos + 4;
            let end = start + length as usize;
            let piece = bytes.get(start..end).ok_or_else(|| {
                truncated(
                    start,
                    format!(
                        "the {length} bytes of token {index} (only {} left)",
                        bytes.len() - start
                    ),
                )
            })?;
            pieces.extend_from_slice(piece);
            offsets.push(pieces.len());
            scores.push(score);
            pos = end;
        }
        if scores.len() < MIN_VOCAB_SIZE {
            return Err(TokenizerError::VocabTooSmall {
                origin: origin.to_owned(),
                found: scores.len(),
            });
        }

        let mut lookup = HashMap::with_capacity(scores.len());
        for id in 0..scores.len() {
            let piece = &pieces[offsets[id]..offsets[id + 1]];
            lookup
                .entry(piece.to_vec().into_boxed_slice())
                .or_insert(id as u32);
        }
        let space_id = lookup
            .get(&b" "[..])
            .copied()
            .unwrap_or(BYTE_FALLBACK_BASE + u32::from(b' '));
        Ok(Self {
            bytes: pieces,
            offsets,
            scores,
            lookup,
            space_id,
            max_token_length,
            unread_bytes: bytes.len() - pos,
        })
    }

    /// Number of tokens in the vocabulary.
    pub fn vocab_size(&self) -> usize {
        self.scores.len()
    }

    /// The header's `max_token_length` (informational; nothing here depends on it).
    pub fn max_token_length(&self) -> i32 {
        self.max_token_length
    }

    /// How many bytes of the input follow the last entry read: non-zero when the file holds
    /// more tokens than the requested vocabulary size (run.c ignores them silently; a caller
    /// may want to warn that the tokenizer probably belongs to another model).
    pub fn unread_bytes(&self) -> usize {
        self.unread_bytes
    }

    /// The raw piece of token `id`, or [`REPLACEMENT_PIECE`] when `id` is out of range.
    pub fn piece(&self, id: u32) -> &[u8] {
        let id = id as usize;
        if id < self.scores.len() {
            &self.bytes[self.offsets[id]..self.offsets[id + 1]]
        } else {
            REPLACEMENT_PIECE
        }
    }

    /// The merge score of token `id`, or `None` when `id` is out of range.
    pub fn score(&self, id: u32) -> Option<f32> {
        self.scores.get(id as usize).copied()
    }

    /// The id of a piece, if it is in the vocabulary.
    pub fn token_id(&self, piece: &[u8]) -> Option<u32> {
        self.lookup.get(piece).copied()
    }

    /// Encodes `text` exactly as llama2.c's `run.c` `encode` does: optional BOS, a dummy-prefix
    /// space when the text is non-empty, one token per UTF-8 character (byte fallback
    /// `3 + byte` for characters not in the vocabulary), then repeatedly the highest-scoring
    /// merge of adjacent tokens (leftmost among equals), then optional EOS.
    pub fn encode(&self, text: &str, bos: bool, eos: bool) -> Vec<u32> {
        let mut out = Vec::new();
        self.encode_into(text, bos, eos, &mut out);
        out
    }

    /// [`Tokenizer::encode`] into a reused buffer; `out` is cleared first.
    pub fn encode_into(&self, text: &str, bos: bool, eos: bool, out: &mut Vec<u32>) {
        out.clear();
        // BOS takes part in merges, as in run.c, where it sits in the same token array.
        if bos {
            out.push(BOS);
        }
        if !text.is_empty() {
            out.push(self.space_id);
        }
        let mut utf8 = [0u8; 4];
        for ch in text.chars() {
            let encoded = ch.encode_utf8(&mut utf8).as_bytes();
            match self.lookup.get(encoded) {
                Some(&id) => out.push(id),
                None => out.extend(encoded.iter().map(|&b| BYTE_FALLBACK_BASE + u32::from(b))),
            }
        }
        self.merge(out);
        if eos {
            out.push(EOS);
        }
    }

    /// The id two adjacent tokens merge into and its score, if the merge is allowed.
    fn merge_of(&self, a: u32, b: u32, scratch: &mut Vec<u8>) -> Option<(u32, f32)> {
        scratch.clear();
        scratch.extend_from_slice(self.piece(a));
        scratch.extend_from_slice(self.piece(b));
        let id = *self.lookup.get(scratch.as_slice())?;
        let score = self.scores[id as usize];
        (score > MERGE_SCORE_FLOOR).then_some((id, score))
    }

    /// Greedy BPE over a doubly linked list with a max-heap of candidate merges. run.c rescans
    /// every pair after each merge (quadratic); the heap pops the same pair it would pick, and
    /// stale candidates (a side already merged away or changed) are skipped when popped.
    fn merge(&self, tokens: &mut Vec<u32>) {
        let n = tokens.len();
        if n < 2 {
            return;
        }
        let mut ids = std::mem::take(tokens);
        let mut next: Vec<u32> = (1..=n as u32).collect();
        next[n - 1] = NONE;
        let mut prev: Vec<u32> = (0..n as u32).map(|i| i.wrapping_sub(1)).collect();
        prev[0] = NONE;
        let mut alive = vec![true; n];
        let mut scratch = Vec::with_capacity(64);
        let mut heap = BinaryHeap::with_capacity(n);
        let mut push = |heap: &mut BinaryHeap<Candidate>, ids: &[u32], left: u32, right: u32| {
            let (left_id, right_id) = (ids[left as usize], ids[right as usize]);
            if let Some((merged, score)) = self.merge_of(left_id, right_id, &mut scratch) {
                heap.push(Candidate {
                    score,
                    left,
                    right,
                    left_id,
                    right_id,
                    merged,
                });
            }
        };
        for i in 0..n - 1 {
            push(&mut heap, &ids, i as u32, i as u32 + 1);
        }
        while let Some(c) = heap.pop() {
            let (l, r) = (c.left as usize, c.right as usize);
            if !alive[l] || next[l] != c.right || ids[l] != c.left_id || ids[r] != c.right_id {
                continue;
            }
            ids[l] = c.merged;
            alive[r] = false;
            let after = next[r];
            next[l] = after;
            if after != NONE {
                prev[after as usize] = c.left;
                push(&mut heap, &ids, c.left, after);
            }
            if prev[l] != NONE {
                push(&mut heap, &ids, prev[l], c.left);
            }
        }
        // Merges never reorder nodes, so the survivors in index order are the list in order.
        let mut kept = 0;
        for i in 0..n {
            if alive[i] {
                ids[kept] = ids[i];
                kept += 1;
            }
        }
        ids.truncate(kept);
        *tokens = ids;
    }

    /// The bytes token `id` prints as after token `prev`, following run.c: after BOS one
    /// leading space is dropped; a piece of the exact form `<0xXX>` is the raw byte `XX`.
    /// An out-of-range `id` gives [`REPLACEMENT_PIECE`] rather than an error so a streaming
    /// printer never has to stop mid-text.
    pub fn decode_piece(&self, prev: u32, id: u32) -> &[u8] {
        let mut piece = self.piece(id);
        if prev == BOS && piece.first() == Some(&b' ') {
            piece = &piece[1..];
        }
        match parse_byte_piece(piece) {
            Some(b) => std::slice::from_ref(&BYTE_PIECES[b as usize]),
            None => piece,
        }
    }

    /// Concatenates the decoded pieces of `ids`, leaving out BOS and EOS themselves (they
    /// still count as the previous token). `decode(&encode(s, true, _))` gives back `s` for
    /// vocabularies that hold a `" "` piece. Out-of-range ids decode as [`REPLACEMENT_PIECE`].
    pub fn decode(&self, ids: &[u32]) -> Vec<u8> {
        let mut out = Vec::with_capacity(ids.len() * 4);
        let mut prev = NONE;
        for &id in ids {
            if id != BOS && id != EOS {
                out.extend_from_slice(self.decode_piece(prev, id));
            }
            prev = id;
        }
        out
    }
}

fn read_file(path: &Path) -> Result<Vec<u8>, TokenizerError> {
    std::fs::read(path).map_err(|source| TokenizerError::Io {
        path: path.display().to_string(),
        source,
    })
}

fn read_i32(bytes: &[u8], pos: usize) -> Option<i32> {
    let b = bytes.get(pos..pos.checked_add(4)?)?;
    Some(i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

fn read_f32(bytes: &[u8], pos: usize) -> Option<f32> {
    read_i32(bytes, pos).map(|v| f32::from_bits(v as u32))
}

/// `<0xXX>` with two hex digits (either case) → the byte.
fn parse_byte_piece(piece: &[u8]) -> Option<u8> {
    match piece {
        [b'<', b'0', b'x', hi, lo, b'>'] => Some(hex_digit(*hi)? << 4 | hex_digit(*lo)?),
        _ => None,
    }
}

fn hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Turns a stream of decoded token bytes into printable text as they arrive: emoji and CJK
/// come as several one-byte `<0xXX>` tokens, so an incomplete UTF-8 sequence at the end of a
/// push is held back until later bytes complete it.
///
/// Invalid bytes become U+FFFD, one per maximal invalid subpart (the same output as
/// [`String::from_utf8_lossy`] on the whole stream). Control characters other than `'\n'`,
/// `'\t'` and `'\r'` are dropped, like llama2.c's `safe_printf` but per character rather than
/// per one-byte piece.
#[derive(Debug, Default, Clone)]
pub struct Utf8Stream {
    pending: [u8; 4],
    len: usize,
    /// Total length of the sequence the pending lead byte starts.
    need: usize,
}

impl Utf8Stream {
    /// An empty stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends every character completed by `bytes` to `out`, holding back an incomplete
    /// trailing sequence (at most 3 bytes).
    pub fn push(&mut self, bytes: &[u8], out: &mut String) {
        for &b in bytes {
            self.push_byte(b, out);
        }
    }

    /// Flushes what is held back: an incomplete sequence becomes one U+FFFD.
    pub fn finish(&mut self, out: &mut String) {
        if self.len > 0 {
            out.push(char::REPLACEMENT_CHARACTER);
            self.len = 0;
        }
    }

    /// True when no bytes are held back.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn push_byte(&mut self, b: u8, out: &mut String) {
        if self.len > 0 {
            // The second byte's range depends on the lead byte: this rejects overlong forms,
            // surrogates and code points above U+10FFFF as soon as they can be recognised.
            let (lo, hi) = match (self.len, self.pending[0]) {
                (1, 0xE0) => (0xA0, 0xBF),
                (1, 0xED) => (0x80, 0x9F),
                (1, 0xF0) => (0x90, 0xBF),
                (1, 0xF4) => (0x80, 0x8F),
                _ => (0x80, 0xBF),
            };
            if (lo..=hi).contains(&b) {
                self.pending[self.len] = b;
                self.len += 1;
                if self.len == self.need {
                    let s = std::str::from_utf8(&self.pending[..self.len]).ok();
                    let c = s.and_then(|s| s.chars().next());
                    emit(c.unwrap_or(char::REPLACEMENT_CHARACTER), out);
                    self.len = 0;
                }
                return;
            }
            // The held bytes can never complete: replace them and start afresh at `b`.
            out.push(char::REPLACEMENT_CHARACTER);
            self.len = 0;
        }
        let need = match b {
            0x00..=0x7F => {
                emit(b as char, out);
                return;
            }
            0xC2..=0xDF => 2,
            0xE0..=0xEF => 3,
            0xF0..=0xF4 => 4,
            _ => {
                out.push(char::REPLACEMENT_CHARACTER);
                return;
            }
        };
        self.pending[0] = b;
        self.len = 1;
        self.need = need;
    }
}

fn emit(c: char, out: &mut String) {
    if !c.is_control() || matches!(c, '\n' | '\t' | '\r') {
        out.push(c);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_piece_parsing() {
        assert_eq!(parse_byte_piece(b"<0x0A>"), Some(0x0A));
        assert_eq!(parse_byte_piece(b"<0xff>"), Some(0xFF));
        assert_eq!(parse_byte_piece(b"<0xE6>"), Some(0xE6));
        assert_eq!(parse_byte_piece(b"<0xG0>"), None);
        assert_eq!(parse_byte_piece(b"<0x0A"), None);
        assert_eq!(parse_byte_piece(b"<0x0A>>"), None);
        assert_eq!(parse_byte_piece(b"0x0A"), None);
    }

    #[test]
    fn candidate_order_prefers_score_then_leftmost() {
        let c = |score, left| Candidate {
            score,
            left,
            right: left + 1,
            left_id: 0,
            right_id: 0,
            merged: 0,
        };
        assert!(c(1.0, 5) > c(0.5, 0));
        assert!(c(1.0, 0) > c(1.0, 5));
        assert!(c(0.0, 0) > c(-0.0, 5));
        assert!(c(-0.0, 0) > c(0.0, 5));
    }
}
