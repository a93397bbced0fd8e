//! SentencePiece-style merging (GGUF `tokenizer.ggml.model = llama`), as llama.cpp runs it: a
//! word starts as one symbol per UTF-8 character; the adjacent pair whose concatenation is the
//! highest-scoring token merges first (ties: leftmost); at the end each symbol is its token, or
//! is split back along the merge that made it, or falls back to byte tokens (`<0xXX>`).

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};

use super::gguf_tokenizer::GgufTokenizer;

#[derive(Clone, Copy)]
struct Symbol {
    start: usize,
    len: usize,
    prev: Option<usize>,
    next: Option<usize>,
}

struct Bigram {
    left: usize,
    right: usize,
    score: f32,
    len: usize,
}

impl PartialEq for Bigram {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Bigram {}
impl PartialOrd for Bigram {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Bigram {
    /// The heap's top: highest score, then leftmost.
    fn cmp(&self, other: &Self) -> Ordering {
        self.score
            .total_cmp(&other.score)
            .then(other.left.cmp(&self.left))
    }
}

/// Appends the tokens of `text` (spaces already written as `▁`).
pub(super) fn tokenize(vocab: &GgufTokenizer, text: &str, out: &mut Vec<u32>) {
    let bytes = text.as_bytes();
    let mut symbols: Vec<Symbol> = Vec::with_capacity(text.len());
    for (i, (start, c)) in text.char_indices().enumerate() {
        let end = start + c.len_utf8();
        symbols.push(Symbol {
            start,
            len: c.len_utf8(),
            prev: i.checked_sub(1),
            next: (end < text.len()).then_some(i + 1),
        });
    }
    let mut queue = BinaryHeap::new();
    // Which two symbols last formed each merged text: llama.cpp keeps one entry per text, so a
    // text merged in two places resegments along the later one.
    let mut rev_merge: HashMap<&[u8], (usize, usize)> = HashMap::new();
    for i in 1..symbols.len() {
        try_add(
            vocab,
            bytes,
            &symbols,
            &mut queue,
            &mut rev_merge,
            Some(i - 1),
            Some(i),
        );
    }
    while let Some(b) = queue.pop() {
        let (l, r) = (symbols[b.left], symbols[b.right]);
        if l.len == 0 || r.len == 0 || l.len + r.len != b.len {
            continue;
        }
        symbols[b.left].len += r.len;
        symbols[b.right].len = 0;
        symbols[b.left].next = r.next;
        if let Some(n) = r.next {
            symbols[n].prev = Some(b.left);
        }
        let prev = symbols[b.left].prev;
        let next = symbols[b.left].next;
        try_add(
            vocab,
            bytes,
            &symbols,
            &mut queue,
            &mut rev_merge,
            prev,
            Some(b.left),
        );
        try_add(
            vocab,
            bytes,
            &symbols,
            &mut queue,
            &mut rev_merge,
            Some(b.left),
            next,
        );
    }
    let mut at = (!symbols.is_empty()).then_some(0);
    let mut stack = Vec::new();
    while let Some(i) = at {
        stack.push(i);
        while let Some(s) = stack.pop() {
            let sym = symbols[s];
            let piece = &bytes[sym.start..sym.start + sym.len];
            if let Some(id) = vocab.token_id(piece) {
                out.push(id);
            } else if let Some(&(left, right)) = rev_merge.get(piece) {
                stack.push(right);
                stack.push(left);
            } else {
                out.extend(piece.iter().filter_map(|&b| vocab.byte_token(b)));
            }
        }
        at = symbols[i].next;
    }
}

/// Queues the merge of `left` and `right` if their concatenation is a token.
fn try_add<'t>(
    vocab: &GgufTokenizer,
    bytes: &'t [u8],
    symbols: &[Symbol],
    queue: &mut BinaryHeap<Bigram>,
    rev_merge: &mut HashMap<&'t [u8], (usize, usize)>,
    left: Option<usize>,
    right: Option<usize>,
) {
    let (Some(left), Some(right)) = (left, right) else {
        return;
    };
    let (l, r) = (symbols[left], symbols[right]);
    let joined = &bytes[l.start..l.start + l.len + r.len];
    let Some(id) = vocab.token_id(joined) else {
        return;
    };
    queue.push(Bigram {
        left,
        right,
        score: vocab.score(id),
        len: joined.len(),
    });
    rev_merge.insert(joined, (left, right));
}
