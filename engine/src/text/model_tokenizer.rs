//! One tokenizer type for the front ends: llama2.c's `tokenizer.bin` or a GGUF model's own
//! vocabulary, with what generation and chat need from either (prompt ids with the BOS the
//! model expects, printable pieces, the ids that end a generation, BOS/EOS texts for chat
//! templates).

use std::path::Path;

use super::gguf_tokenizer::{GgufTokenizer, GgufTokenizerError};
use super::tokenizer::{Tokenizer, TokenizerError, BOS, EOS};
use crate::format::gguf::Gguf;

/// A model's tokenizer.
#[derive(Debug)]
pub enum ModelTokenizer {
    /// llama2.c's `tokenizer.bin` (BOS 1, EOS 2; a generated BOS ends the text, as in `run.c`).
    Llama2c(Tokenizer),
    /// A GGUF file's `tokenizer.ggml.*` vocabulary.
    Gguf(GgufTokenizer),
}

impl ModelTokenizer {
    /// llama2.c's tokenizer file, sized to the model's vocabulary.
    pub fn llama2c(path: &Path, vocab_size: usize) -> Result<Self, TokenizerError> {
        Tokenizer::from_file(path, vocab_size).map(Self::Llama2c)
    }

    /// The tokenizer in a GGUF file's metadata (the model file itself, or a vocab-only file).
    pub fn gguf(bytes: &[u8]) -> Result<Self, GgufTokenizerError> {
        let g = Gguf::parse(bytes)?;
        GgufTokenizer::from_gguf(&g).map(Self::Gguf)
    }

    /// Number of ids.
    pub fn vocab_size(&self) -> usize {
        match self {
            Self::Llama2c(t) => t.vocab_size(),
            Self::Gguf(t) => t.vocab_size(),
        }
    }

    /// The ids of a prompt, with the BOS (and EOS) the model's vocabulary adds. `special`: text
    /// spelling a special token (`<s>`, `<|eot_id|>`) becomes that token, as a rendered chat
    /// template needs; otherwise it stays text.
    pub fn encode(&self, text: &str, special: bool) -> Vec<u32> {
        match self {
            Self::Llama2c(t) if !special => t.encode(text, true, false),
            Self::Llama2c(t) => encode_llama2c_special(t, text),
            Self::Gguf(t) => t.encode(text, true, special),
        }
    }

    /// The ids of `text` with nothing added (a later chat turn, a continuation).
    pub fn encode_plain(&self, text: &str, special: bool) -> Vec<u32> {
        match self {
            Self::Llama2c(t) if !special => t.encode(text, false, false),
            Self::Llama2c(t) => {
                let ids = encode_llama2c_special(t, text);
                if text.starts_with("<s>") {
                    ids
                } else {
                    ids[1..].to_vec()
                }
            }
            Self::Gguf(t) => t.encode(text, false, special),
        }
    }

    /// The bytes token `id` adds to generated text after `prev` (control tokens print nothing;
    /// join the bytes with [`super::tokenizer::Utf8Stream`]).
    pub fn decode_piece(&self, prev: u32, id: u32) -> &[u8] {
        match self {
            Self::Llama2c(t) => t.decode_piece(prev, id),
            Self::Gguf(t) => t.decode_piece(prev, id),
        }
    }

    /// The token's bytes with special tokens shown as their text (`tokenize --json`).
    pub fn piece(&self, id: u32) -> Vec<u8> {
        match self {
            Self::Llama2c(t) => t.piece(id).to_vec(),
            Self::Gguf(t) => t.piece(id, true).to_vec(),
        }
    }

    /// The ids that end a generation: BOS for llama2.c files (`run.c`), the vocabulary's
    /// end-of-generation set (EOS, end of turn, ...) for GGUF ones.
    pub fn stop_ids(&self) -> Vec<u32> {
        match self {
            Self::Llama2c(_) => vec![BOS],
            Self::Gguf(t) => t.eog_ids().collect(),
        }
    }

    /// The BOS token's id.
    pub fn bos(&self) -> Option<u32> {
        match self {
            Self::Llama2c(_) => Some(BOS),
            Self::Gguf(t) => t.bos(),
        }
    }

    /// The BOS token's text, as chat templates write it.
    pub fn bos_text(&self) -> String {
        self.token_text(self.bos(), "<s>")
    }

    /// The EOS token's text, as chat templates write it.
    pub fn eos_text(&self) -> String {
        let eos = match self {
            Self::Llama2c(_) => Some(EOS),
            Self::Gguf(t) => t.eos(),
        };
        self.token_text(eos, "</s>")
    }

    fn token_text(&self, id: Option<u32>, llama2c: &str) -> String {
        match (self, id) {
            (Self::Llama2c(_), _) => llama2c.to_string(),
            (Self::Gguf(t), Some(id)) => t
                .text(id)
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default(),
            (Self::Gguf(_), None) => String::new(),
        }
    }
}

/// llama2.c's tokenizer has no special tokens of its own: `<s>` and `</s>` in a rendered
/// template are BOS and EOS, the text between them is encoded as text. The result starts with
/// BOS, and a template's own leading `<s>` is that BOS (not a second one).
fn encode_llama2c_special(t: &Tokenizer, text: &str) -> Vec<u32> {
    let mut out = vec![BOS];
    let mut rest = text.strip_prefix("<s>").unwrap_or(text);
    while !rest.is_empty() {
        let next = [("<s>", BOS), ("</s>", EOS)]
            .iter()
            .filter_map(|&(mark, id)| rest.find(mark).map(|at| (at, mark.len(), id)))
            .min();
        let (at, len, id) = next.unwrap_or((rest.len(), 0, 0));
        if at > 0 {
            out.extend(t.encode(&rest[..at], false, false));
        }
        if len > 0 {
            out.push(id);
        }
        rest = &rest[at + len..];
    }
    out
}
