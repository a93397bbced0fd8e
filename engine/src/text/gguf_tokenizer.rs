//! A GGUF model's own tokenizer, built from its `tokenizer.ggml.*` metadata and run as
//! llama.cpp runs it (`src/llama-vocab.cpp`): the same defaults, special-token handling,
//! end-of-generation set, merges and decoding, so that a prompt becomes the ids llama.cpp
//! would feed the model and generated ids print as llama.cpp prints them.
//!
//! Two vocabulary kinds: `llama` (SentencePiece-style scores with byte fallback, [`super::spm`])
//! and `gpt2` (byte-level BPE with ranked merges, [`super::bpe`]) with the pre-tokenizers of
//! [`super::pretokenize`].

use std::collections::HashMap;
use std::fmt;

use thiserror::Error;

use super::bpe;
use super::pretokenize::Pre;
use super::spm;
use crate::format::gguf::{Gguf, GgufError};

/// Token attributes (llama.cpp's `llama_token_attr` bits).
mod attr {
    pub const UNKNOWN: u16 = 1 << 0;
    pub const UNUSED: u16 = 1 << 1;
    pub const NORMAL: u16 = 1 << 2;
    pub const CONTROL: u16 = 1 << 3;
    pub const USER_DEFINED: u16 = 1 << 4;
    pub const BYTE: u16 = 1 << 5;
}

/// The vocabulary kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// SentencePiece-style (`llama`).
    Spm,
    /// Byte-level BPE (`gpt2`) with its pre-tokenizer.
    Bpe(Pre),
}

/// Why a GGUF's tokenizer could not be built.
#[derive(Debug, Error)]
pub enum GgufTokenizerError {
    /// The file itself could not be read.
    #[error(transparent)]
    Gguf(#[from] GgufError),
    /// A required key is missing.
    #[error("the GGUF file has no `{0}`: it carries no tokenizer (a vocab-less conversion?); re-convert it with llama.cpp's convert_hf_to_gguf.py")]
    Missing(&'static str),
    /// A key has the wrong type.
    #[error("`{key}` in the GGUF file should be {expected}: the file is damaged or from an unsupported converter")]
    Type {
        /// The key.
        key: &'static str,
        /// What it should be.
        expected: &'static str,
    },
    /// A tokenizer model other than `llama` and `gpt2`.
    #[error("tokenizer.ggml.model is `{0}`; baremetal runs `llama` (SentencePiece) and `gpt2` (byte-level BPE) vocabularies")]
    Model(String),
    /// A pre-tokenizer we do not implement.
    #[error("tokenizer.ggml.pre is `{0}`, a pre-tokenizer baremetal does not implement (it knows {1}); tokenizing with another would silently give different ids")]
    Pre(String, Known),
    /// A per-token array shorter than the token list.
    #[error("`{key}` has {got} entries for {tokens} tokens: the file is damaged")]
    Short {
        /// The key.
        key: &'static str,
        /// Its length.
        got: usize,
        /// The number of tokens.
        tokens: usize,
    },
    /// No tokens.
    #[error("tokenizer.ggml.tokens is empty")]
    Empty,
    /// Ids must fit u32.
    #[error("tokenizer.ggml.tokens has {0} entries, more than token ids can number")]
    TooMany(usize),
    /// The vocabulary asks for a BOS it lacks.
    #[error("tokenizer.ggml.add_bos_token is set but the vocabulary has no BOS token")]
    NoBos,
}

/// The pre-tokenizer names we know, for [`GgufTokenizerError::Pre`].
#[derive(Debug, Clone, Copy)]
pub struct Known;

impl fmt::Display for Known {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&Pre::NAMES.join(", "))
    }
}

/// A GGUF vocabulary and how to tokenize with it.
pub struct GgufTokenizer {
    kind: Kind,
    texts: Vec<Box<[u8]>>,
    scores: Vec<f32>,
    attrs: Vec<u16>,
    ids: HashMap<Box<[u8]>, u32>,
    /// Merge halves that are not tokens, interned after the token ids.
    extra: HashMap<Box<[u8]>, u32>,
    merges: HashMap<(u32, u32), u32>,
    /// CONTROL, USER_DEFINED and UNKNOWN tokens, longest first: cut out of text before merging.
    specials: Vec<u32>,
    /// Each token's bytes as printed with special tokens shown.
    pieces: Vec<Box<[u8]>>,
    eog: Vec<bool>,
    bos: Option<u32>,
    eos: Option<u32>,
    eot: Option<u32>,
    unk: Option<u32>,
    add_bos: bool,
    add_eos: bool,
    add_space_prefix: bool,
    clean_spaces: bool,
}

impl fmt::Debug for GgufTokenizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GgufTokenizer")
            .field("kind", &self.kind)
            .field("tokens", &self.texts.len())
            .field("merges", &self.merges.len())
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .finish_non_exhaustive()
    }
}

/// Token texts llama.cpp treats as ending a generation (`llama-vocab.cpp`, the EOG list).
const EOG_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "</s>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "<|end_of_text|>",
    "<end_of_utterance>",
];

/// Token texts llama.cpp takes as EOT when `tokenizer.ggml.eot_token_id` is absent.
const EOT_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<EOT>",
    "_<EOT>",
    "<end_of_utterance>",
];

impl GgufTokenizer {
    /// Builds the tokenizer a GGUF file's metadata describes.
    pub fn from_gguf(g: &Gguf) -> Result<Self, GgufTokenizerError> {
        use GgufTokenizerError as E;
        let model = g
            .get_str("tokenizer.ggml.model")?
            .ok_or(E::Missing("tokenizer.ggml.model"))?;
        let pre_name = g.get_str("tokenizer.ggml.pre")?;
        let kind = match model {
            "llama" => Kind::Spm,
            "gpt2" => {
                let name = pre_name.unwrap_or("default");
                Kind::Bpe(Pre::from_name(name).ok_or_else(|| E::Pre(name.into(), Known))?)
            }
            other => return Err(E::Model(other.into())),
        };

        let tokens = g
            .get_array("tokenizer.ggml.tokens")?
            .ok_or(E::Missing("tokenizer.ggml.tokens"))?;
        let n = tokens.len();
        if n == 0 {
            return Err(E::Empty);
        }
        if u32::try_from(n).is_err() {
            return Err(E::TooMany(n));
        }
        let strings = tokens.strings().ok_or(E::Type {
            key: "tokenizer.ggml.tokens",
            expected: "an array of strings",
        })?;
        let texts: Vec<Box<[u8]>> = strings
            .enumerate()
            .map(|(i, s)| {
                if s.is_empty() {
                    format!("[EMPTY_{i}]").into_bytes().into()
                } else {
                    s.into()
                }
            })
            .collect();

        let scores = match g.get_array("tokenizer.ggml.scores")? {
            None => vec![0.0; n],
            Some(a) => {
                let v: Vec<f32> = if let Some(f) = a.f32s() {
                    f.collect()
                } else if let Some(i) = a.ints() {
                    i.map(|x| x as f32).collect()
                } else {
                    return Err(E::Type {
                        key: "tokenizer.ggml.scores",
                        expected: "an array of f32 or i32",
                    });
                };
                check_len("tokenizer.ggml.scores", v.len(), n)?;
                v
            }
        };
        let mut attrs = match g.get_array("tokenizer.ggml.token_type")? {
            None => vec![attr::NORMAL; n],
            Some(a) => {
                let types = a.ints().ok_or(E::Type {
                    key: "tokenizer.ggml.token_type",
                    expected: "an array of integers",
                })?;
                let v: Vec<u16> = types
                    .map(|t| match t {
                        1 => attr::NORMAL,
                        2 => attr::UNKNOWN,
                        3 => attr::CONTROL,
                        4 => attr::USER_DEFINED,
                        5 => attr::UNUSED,
                        6 => attr::BYTE,
                        _ => 0,
                    })
                    .collect();
                check_len("tokenizer.ggml.token_type", v.len(), n)?;
                v
            }
        };

        let mut ids = HashMap::with_capacity(n);
        for (i, t) in texts.iter().enumerate() {
            ids.insert(t.clone(), i as u32);
        }

        let mut extra = HashMap::new();
        let mut merges = HashMap::new();
        if matches!(kind, Kind::Bpe(_)) {
            let list = g
                .get_array("tokenizer.ggml.merges")?
                .ok_or(E::Missing("tokenizer.ggml.merges"))?;
            let strings = list.strings().ok_or(E::Type {
                key: "tokenizer.ggml.merges",
                expected: "an array of strings",
            })?;
            merges.reserve(list.len());
            let mut intern = |s: &[u8]| -> u32 {
                if let Some(&id) = ids.get(s) {
                    return id;
                }
                let next = (n + extra.len()) as u32;
                *extra.entry(Box::<[u8]>::from(s)).or_insert(next)
            };
            for (rank, m) in strings.enumerate() {
                // Split at the first space after the first byte, as llama.cpp does.
                let Some(pos) = m.iter().skip(1).position(|&b| b == b' ').map(|p| p + 1) else {
                    continue;
                };
                let pair = (intern(&m[..pos]), intern(&m[pos + 1..]));
                merges.entry(pair).or_insert(rank as u32);
            }
        }

        let in_range = |id: usize| (id < n).then_some(id as u32);
        let key_id = |key: &str, default: Option<u32>| -> Result<Option<u32>, GgufError> {
            // An id outside the vocabulary is ignored (llama.cpp warns and keeps the default).
            Ok(match g.get_usize(key)? {
                Some(id) if id < n => Some(id as u32),
                _ => default,
            })
        };
        let (bos0, eos0, unk0) = match kind {
            Kind::Spm => (in_range(1), in_range(2), in_range(0)),
            Kind::Bpe(_) => (in_range(11), in_range(11), None),
        };
        let bos = key_id("tokenizer.ggml.bos_token_id", bos0)?;
        let eos = key_id("tokenizer.ggml.eos_token_id", eos0)?;
        let mut eot = key_id("tokenizer.ggml.eot_token_id", None)?;
        let mut eom = key_id("tokenizer.ggml.eom_token_id", None)?;
        let unk = key_id("tokenizer.ggml.unknown_token_id", unk0)?;
        let fim = [
            key_id("tokenizer.ggml.fim_pad_token_id", None)?,
            key_id("tokenizer.ggml.fim_rep_token_id", None)?,
            key_id("tokenizer.ggml.fim_sep_token_id", None)?,
        ];

        let (mut add_bos, mut add_space_prefix, clean_spaces) = match kind {
            Kind::Spm => (true, true, false),
            Kind::Bpe(pre) => (pre.add_bos_default(), false, pre.clean_spaces()),
        };
        let mut add_eos = false;
        if let Some(v) = g.get_bool("tokenizer.ggml.add_space_prefix")? {
            add_space_prefix = v;
        }
        if let Some(v) = g.get_bool("tokenizer.ggml.add_bos_token")? {
            add_bos = v;
        }
        if let Some(v) = g.get_bool("tokenizer.ggml.add_eos_token")? {
            add_eos = v;
        }
        if add_bos && bos.is_none() {
            return Err(E::NoBos);
        }

        // Control-looking tokens llama.cpp finds by text: EOT/EOM when no key names them, and
        // the end-of-generation set; each is made CONTROL if it was not.
        for (i, t) in texts.iter().enumerate() {
            let is = |list: &[&str]| list.iter().any(|s| s.as_bytes() == &t[..]);
            if eot.is_none() && is(EOT_TEXTS) {
                eot = Some(i as u32);
                attrs[i] |= attr::CONTROL;
            }
            if eom.is_none() && &t[..] == b"<|eom_id|>" {
                eom = Some(i as u32);
                attrs[i] |= attr::CONTROL;
            }
        }
        for (i, t) in texts.iter().enumerate() {
            if attrs[i] & attr::CONTROL != 0 && t.windows(6).any(|w| w == b"unused") {
                attrs[i] |= attr::UNUSED;
            }
        }
        let mut eog = vec![false; n];
        for id in fim.into_iter().flatten() {
            eog[id as usize] = true;
        }
        for (i, t) in texts.iter().enumerate() {
            if EOG_TEXTS.iter().any(|s| s.as_bytes() == &t[..]) {
                eog[i] = true;
                attrs[i] |= attr::CONTROL;
            }
        }
        for id in [eos, eot, eom].into_iter().flatten() {
            eog[id as usize] = true;
        }

        let mut specials: Vec<u32> = (0..n as u32)
            .filter(|&i| {
                attrs[i as usize] & (attr::CONTROL | attr::USER_DEFINED | attr::UNKNOWN) != 0
                    && std::str::from_utf8(&texts[i as usize]).is_ok()
            })
            .collect();
        specials.sort_by_key(|&i| std::cmp::Reverse(texts[i as usize].len()));

        let mut tok = Self {
            kind,
            texts,
            scores,
            attrs,
            ids,
            extra,
            merges,
            specials,
            pieces: Vec::new(),
            eog,
            bos,
            eos,
            eot,
            unk,
            add_bos,
            add_eos,
            add_space_prefix,
            clean_spaces,
        };
        tok.pieces = (0..n as u32).map(|id| tok.make_piece(id).into()).collect();
        Ok(tok)
    }

    /// The vocabulary kind.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// Number of tokens.
    pub fn vocab_size(&self) -> usize {
        self.texts.len()
    }

    /// The BOS token, if the vocabulary has one.
    pub fn bos(&self) -> Option<u32> {
        self.bos
    }

    /// The EOS token, if the vocabulary has one.
    pub fn eos(&self) -> Option<u32> {
        self.eos
    }

    /// The end-of-turn token, if any.
    pub fn eot(&self) -> Option<u32> {
        self.eot
    }

    /// Whether encoding with special tokens adds BOS.
    pub fn add_bos(&self) -> bool {
        self.add_bos
    }

    /// Whether encoding with special tokens adds EOS.
    pub fn add_eos(&self) -> bool {
        self.add_eos
    }

    /// Whether generating `id` ends the text (EOS, EOT, EOM and llama.cpp's EOG texts).
    pub fn is_eog(&self, id: u32) -> bool {
        self.eog.get(id as usize).copied().unwrap_or(false)
    }

    /// The end-of-generation tokens.
    pub fn eog_ids(&self) -> impl Iterator<Item = u32> + '_ {
        (0..self.eog.len() as u32).filter(|&i| self.eog[i as usize])
    }

    /// Whether `id` is a control token (BOS, EOS, `<|eot_id|>`, ...): not printed as text.
    pub fn is_control(&self, id: u32) -> bool {
        self.attrs
            .get(id as usize)
            .is_some_and(|a| a & (attr::CONTROL | attr::UNKNOWN) != 0)
    }

    /// The token's text as the vocabulary stores it (`▁Hello`, `Ġworld`, `<|eot_id|>`).
    pub fn text(&self, id: u32) -> Option<&[u8]> {
        self.texts.get(id as usize).map(|t| &t[..])
    }

    /// The id of the token whose text is `text`.
    pub fn token_id(&self, text: &[u8]) -> Option<u32> {
        self.ids.get(text).copied()
    }

    pub(super) fn score(&self, id: u32) -> f32 {
        self.scores[id as usize]
    }

    pub(super) fn merge_rank(&self, left: &[u8], right: &[u8]) -> Option<u32> {
        let id = |s: &[u8]| self.ids.get(s).or_else(|| self.extra.get(s)).copied();
        self.merges.get(&(id(left)?, id(right)?)).copied()
    }

    /// SentencePiece byte fallback: `<0xXX>`, else the byte itself as a token, else UNK.
    pub(super) fn byte_token(&self, b: u8) -> Option<u32> {
        self.token_id(format!("<0x{b:02X}>").as_bytes())
            .or_else(|| self.token_id(&[b]))
            .or(self.unk)
    }

    /// The tokens of `text`. `add_special`: BOS/EOS as the vocabulary asks. `parse_special`:
    /// text spelling a control token (`<|eot_id|>`, `<s>`) becomes that token (rendered chat
    /// templates); otherwise only user-defined tokens are recognised and the rest is text.
    pub fn encode(&self, text: &str, add_special: bool, parse_special: bool) -> Vec<u32> {
        let mut out = Vec::new();
        if add_special && self.add_bos {
            out.extend(self.bos);
        }
        let mut prev_special = true;
        for frag in self.partition(text, parse_special) {
            match frag {
                Fragment::Token(id) => {
                    out.push(id);
                    prev_special = true;
                }
                Fragment::Text(t) => {
                    match self.kind {
                        Kind::Spm => {
                            let mut s = String::with_capacity(t.len() + 3);
                            if self.add_space_prefix && prev_special {
                                s.push(' ');
                            }
                            s.push_str(t);
                            spm::tokenize(self, &s.replace(' ', "\u{2581}"), &mut out);
                        }
                        Kind::Bpe(pre) => bpe::tokenize(self, pre, t, &mut out),
                    }
                    prev_special = false;
                }
            }
        }
        if add_special && self.add_eos {
            out.extend(self.eos);
        }
        out
    }

    /// Cuts special tokens out of `text`, longest first (llama.cpp's
    /// `tokenizer_st_partition`).
    fn partition<'t>(&self, text: &'t str, parse_special: bool) -> Vec<Fragment<'t>> {
        let mut frags = if text.is_empty() {
            vec![]
        } else {
            vec![Fragment::Text(text)]
        };
        for &id in &self.specials {
            let a = self.attrs[id as usize];
            if !parse_special && a & (attr::CONTROL | attr::UNKNOWN) != 0 {
                continue;
            }
            let needle = std::str::from_utf8(&self.texts[id as usize]).expect("specials are UTF-8");
            if !frags
                .iter()
                .any(|f| matches!(f, Fragment::Text(t) if t.contains(needle)))
            {
                continue;
            }
            let mut next = Vec::with_capacity(frags.len() + 2);
            for f in frags {
                let Fragment::Text(mut t) = f else {
                    next.push(f);
                    continue;
                };
                while let Some(at) = t.find(needle) {
                    if at > 0 {
                        next.push(Fragment::Text(&t[..at]));
                    }
                    next.push(Fragment::Token(id));
                    t = &t[at + needle.len()..];
                }
                if !t.is_empty() {
                    next.push(Fragment::Text(t));
                }
            }
            frags = next;
        }
        frags
    }

    /// The bytes token `id` prints as; special tokens print their text only if `special`.
    pub fn piece(&self, id: u32, special: bool) -> &[u8] {
        match self.pieces.get(id as usize) {
            Some(_) if !special && self.is_control(id) => b"",
            Some(p) => p,
            None => b"",
        }
    }

    /// The bytes `id` adds to generated text after `prev`: control tokens print nothing, and a
    /// SentencePiece word right after BOS loses the space the encoder put before it.
    pub fn decode_piece(&self, prev: u32, id: u32) -> &[u8] {
        let p = self.piece(id, false);
        if self.add_space_prefix && Some(prev) == self.bos {
            p.strip_prefix(b" ").unwrap_or(p)
        } else {
            p
        }
    }

    /// The text of `ids` (llama.cpp's `detokenize`): `remove_special` drops a leading BOS and
    /// trailing EOS the vocabulary adds, `unparse_special` prints control tokens' text.
    pub fn decode(&self, ids: &[u32], remove_special: bool, unparse_special: bool) -> Vec<u8> {
        let mut ids = ids;
        let mut remove_space = self.add_space_prefix;
        if remove_special && self.add_bos && !ids.is_empty() && ids.first() == self.bos.as_ref() {
            remove_space = false;
            ids = &ids[1..];
        }
        if remove_special && self.add_eos && ids.last().is_some() && ids.last() == self.eos.as_ref()
        {
            ids = &ids[..ids.len() - 1];
        }
        let mut text = Vec::new();
        for &id in ids {
            let mut p = self.piece(id, unparse_special);
            if remove_space {
                p = p.strip_prefix(b" ").unwrap_or(p);
            }
            remove_space = false;
            text.extend_from_slice(p);
        }
        if self.clean_spaces {
            clean_spaces(&mut text);
        }
        text
    }

    /// What token `id` prints as with special tokens shown (llama.cpp's piece cache).
    fn make_piece(&self, id: u32) -> Vec<u8> {
        let a = self.attrs[id as usize];
        let text = &self.texts[id as usize];
        if a & (attr::UNKNOWN | attr::CONTROL | attr::USER_DEFINED) != 0 {
            return text.to_vec();
        }
        if a & attr::NORMAL != 0 {
            return match self.kind {
                Kind::Spm => replace_all(text, "\u{2581}".as_bytes(), b" "),
                Kind::Bpe(_) => bpe_decode(text),
            };
        }
        if a & attr::BYTE != 0 {
            return vec![hex_byte(text)];
        }
        Vec::new()
    }
}

fn check_len(key: &'static str, got: usize, tokens: usize) -> Result<(), GgufTokenizerError> {
    if got < tokens {
        return Err(GgufTokenizerError::Short { key, got, tokens });
    }
    Ok(())
}

enum Fragment<'t> {
    Text(&'t str),
    Token(u32),
}

fn replace_all(s: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i..].starts_with(from) {
            out.extend_from_slice(to);
            i += from.len();
        } else {
            out.push(s[i]);
            i += 1;
        }
    }
    out
}

/// A byte token's value from its text `<0xXX>` (llama.cpp parses the two characters at 3 as
/// hex and takes 0 when they are not).
fn hex_byte(text: &[u8]) -> u8 {
    let digits = text.get(3..text.len().min(5)).unwrap_or(&[]);
    let mut v = 0u32;
    for &d in digits {
        match (d as char).to_digit(16) {
            Some(x) => v = v * 16 + x,
            None => break,
        }
    }
    v as u8
}

/// A byte-level BPE token's bytes: each code point through GPT-2's map reversed; one outside
/// the map prints as llama.cpp prints it (`[UNK_BYTE_0x..]`).
fn bpe_decode(text: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len());
    for c in lossy_chars(text) {
        match bpe::char_to_byte(c) {
            Some(b) => out.push(b),
            None => {
                out.extend_from_slice(b"[UNK_BYTE_0x");
                let mut buf = [0u8; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    out.extend_from_slice(format!("{b:02x}").as_bytes());
                }
                out.extend_from_slice(text);
                out.push(b']');
            }
        }
    }
    out
}

/// Code points of possibly invalid UTF-8, one U+FFFD per byte that does not start a valid
/// character (llama.cpp's `unicode_cpts_from_utf8`).
fn lossy_chars(mut s: &[u8]) -> Vec<char> {
    let mut out = Vec::with_capacity(s.len());
    while !s.is_empty() {
        match std::str::from_utf8(s) {
            Ok(v) => {
                out.extend(v.chars());
                break;
            }
            Err(e) => {
                let (good, rest) = s.split_at(e.valid_up_to());
                out.extend(std::str::from_utf8(good).expect("valid prefix").chars());
                out.push('\u{fffd}');
                s = &rest[1..];
            }
        }
    }
    out
}

/// llama.cpp's `clean_spaces` passes over detokenised text.
fn clean_spaces(text: &mut Vec<u8>) {
    // " ?", " !", " .", " ,": drop the space.
    let mut out: Vec<u8> = Vec::with_capacity(text.len());
    for (i, &x) in text.iter().enumerate() {
        if i > 0 && text[i - 1] == b' ' && matches!(x, b'?' | b'!' | b'.' | b',') {
            out.pop();
        }
        out.push(x);
    }
    // " ' ": drop both spaces. llama.cpp overwrites the skipped space with NUL in place, so
    // the character after it never sees a space before it.
    let mut t = std::mem::take(&mut out);
    let mut i = 0;
    while i < t.len() {
        let x = t[i];
        if i > 0 && x == b'\'' && i + 1 < t.len() && t[i - 1] == b' ' && t[i + 1] == b' ' {
            out.pop();
            out.push(x);
            t[i + 1] = 0;
            i += 2;
            continue;
        }
        out.push(x);
        i += 1;
    }
    // " 's", " 'm", " 're", " 've": drop the space.
    let t = std::mem::take(&mut out);
    for (i, &x) in t.iter().enumerate() {
        if i > 0 && t[i - 1] == b' ' && x == b'\'' && i + 1 < t.len() {
            let x1 = t[i + 1];
            let x2 = t.get(i + 2).copied();
            let drop = matches!(x1, b's' | b'm')
                || (x2.is_some() && matches!((x1, x2), (b'r', Some(b'e')) | (b'v', Some(b'e'))));
            if drop {
                out.pop();
            }
        }
        out.push(x);
    }
    *text = out;
}
