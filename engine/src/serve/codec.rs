//! What the server needs from a model's text side, behind two small traits so that other
//! tokenizers (GGUF's SentencePiece and byte-level BPE) and other chat templates (a model's own
//! Jinja template) plug in without touching the HTTP or scheduling code:
//!
//! - [`TextCodec`]: text → token ids, token id → bytes, which ids end a generation;
//! - [`ChatFormat`]: a conversation → the prompt text.
//!
//! [`Llama2Codec`] wraps llama2.c's `tokenizer.bin`; [`BuiltinChat`] holds the fallback
//! templates for models that carry none (llama2.c checkpoints).

use crate::text::tokenizer::{Tokenizer, BOS, EOS};

/// A model's tokenizer as the server uses it. Implementations are shared between the HTTP
/// handlers (encoding prompts, decoding streamed tokens) and so must be `Send + Sync`.
pub trait TextCodec: Send + Sync {
    /// Ids of the vocabulary; every id the model produces is below this.
    fn vocab_size(&self) -> usize;
    /// The tokens of a prompt, with the BOS the model expects. `special`: text spelling a
    /// special token (`<s>`, `</s>`, `<|im_end|>`, ...) becomes that token (rendered chat
    /// templates), otherwise it stays text (user input of a plain completion).
    fn encode(&self, text: &str, special: bool) -> Vec<u32>;
    /// The bytes token `id` prints as after token `prev` (the stream may split a UTF-8
    /// character over several tokens: join them with [`crate::text::tokenizer::Utf8Stream`]).
    fn piece(&self, prev: u32, id: u32) -> &[u8];
    /// Whether generating `id` ends the text (end of sequence, end of turn).
    fn is_end(&self, id: u32) -> bool;
    /// The longest piece of the vocabulary, in bytes: a text of `n` bytes is at least
    /// `n / max_piece_bytes` tokens, which rejects oversized prompts before encoding them.
    fn max_piece_bytes(&self) -> usize;
    /// The text of the BOS token, as chat templates write it.
    fn bos_text(&self) -> &str;
    /// The text of the EOS token, as chat templates write it.
    fn eos_text(&self) -> &str;
}

/// llama2.c's tokenizer: BOS is 1, EOS is 2, and a generated BOS or EOS ends the text
/// (`run.c` stops at BOS; the Llama 2 vocabulary's EOS means the same).
pub struct Llama2Codec {
    tokenizer: Tokenizer,
    max_piece: usize,
}

impl Llama2Codec {
    /// Wraps a tokenizer whose vocabulary is the model's.
    pub fn new(tokenizer: Tokenizer) -> Self {
        let max_piece = (0..tokenizer.vocab_size() as u32)
            .map(|id| tokenizer.piece(id).len())
            .max()
            .unwrap_or(1)
            .max(1);
        Self {
            tokenizer,
            max_piece,
        }
    }

    /// The wrapped tokenizer.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }
}

impl TextCodec for Llama2Codec {
    fn vocab_size(&self) -> usize {
        self.tokenizer.vocab_size()
    }

    fn encode(&self, text: &str, special: bool) -> Vec<u32> {
        if !special {
            return self.tokenizer.encode(text, true, false);
        }
        // `<s>` and `</s>` in a rendered template are the BOS and EOS tokens; the text between
        // them is encoded as text. A leading `<s>` is the BOS the encoder adds anyway (no
        // doubled BOS, as llama.cpp strips it).
        let mut out = vec![BOS];
        let mut rest = text.strip_prefix("<s>").unwrap_or(text);
        while !rest.is_empty() {
            let next = [("<s>", BOS), ("</s>", EOS)]
                .iter()
                .filter_map(|&(mark, id)| rest.find(mark).map(|at| (at, mark.len(), id)))
                .min();
            let (at, len, id) = next.unwrap_or((rest.len(), 0, 0));
            if at > 0 {
                out.extend(self.tokenizer.encode(&rest[..at], false, false));
            }
            if len > 0 {
                out.push(id);
            }
            rest = &rest[at + len..];
        }
        out
    }

    fn piece(&self, prev: u32, id: u32) -> &[u8] {
        if id == BOS || id == EOS {
            return b"";
        }
        self.tokenizer.decode_piece(prev, id)
    }

    fn is_end(&self, id: u32) -> bool {
        id == BOS || id == EOS
    }

    fn max_piece_bytes(&self) -> usize {
        self.max_piece
    }

    fn bos_text(&self) -> &str {
        "<s>"
    }

    fn eos_text(&self) -> &str {
        "</s>"
    }
}

/// One message of a conversation, as the chat endpoint received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatMessage {
    /// `system`, `user`, `assistant` (or `developer`, which templates see as `system`).
    pub role: String,
    /// The text of the message.
    pub content: String,
}

/// Why a conversation could not be turned into a prompt: the message is sent to the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ChatError(pub String);

/// A chat template: renders a conversation, ending with the opening of the assistant's turn.
pub trait ChatFormat: Send + Sync {
    /// The prompt text for `messages` with the generation prompt appended.
    fn render(&self, messages: &[ChatMessage], codec: &dyn TextCodec) -> Result<String, ChatError>;
    /// Text that ends the assistant's turn when the tokenizer has no single token for it
    /// (ChatML's `<|im_end|>` with the Llama 2 vocabulary): the server adds them to `stop`.
    fn end_markers(&self) -> &[&'static str];
    /// The template's name, for logs.
    fn name(&self) -> &str;
}

/// The fallback templates, written out in Rust (the same text as the Jinja sources of the same
/// names in Hugging Face model cards).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BuiltinChat {
    /// `<|im_start|>{role}\n{content}<|im_end|>\n` per message, then `<|im_start|>assistant\n`.
    ChatMl,
    /// Meta's Llama 2 chat format (`chat_completion` in meta-llama/llama `generation.py`):
    /// `<s>[INST] <<SYS>>\n{system}\n<</SYS>>\n\n{user} [/INST] {answer} </s>` ...
    Llama2,
}

impl BuiltinChat {
    /// Every built-in template's name.
    pub const NAMES: &'static [&'static str] = &["chatml", "llama2"];

    /// The built-in template called `name`.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "chatml" => Some(Self::ChatMl),
            "llama2" => Some(Self::Llama2),
            _ => None,
        }
    }
}

impl ChatFormat for BuiltinChat {
    fn render(&self, messages: &[ChatMessage], codec: &dyn TextCodec) -> Result<String, ChatError> {
        let mut out = String::new();
        match self {
            Self::ChatMl => {
                for m in messages {
                    out.push_str("<|im_start|>");
                    out.push_str(&m.role);
                    out.push('\n');
                    out.push_str(&m.content);
                    out.push_str("<|im_end|>\n");
                }
                out.push_str("<|im_start|>assistant\n");
            }
            Self::Llama2 => {
                let (system, turns) = match messages.split_first() {
                    Some((first, rest)) if first.role == "system" => {
                        (format!("<<SYS>>\n{}\n<</SYS>>\n\n", first.content), rest)
                    }
                    _ => (String::new(), messages),
                };
                for (i, m) in turns.iter().enumerate() {
                    let want_user = i % 2 == 0;
                    if (m.role == "user") != want_user || (!want_user && m.role != "assistant") {
                        return Err(ChatError(
                            "the llama2 chat template needs the messages to alternate user/assistant/user/... after an optional first system message".into(),
                        ));
                    }
                    if want_user {
                        let content = if i == 0 {
                            format!("{system}{}", m.content)
                        } else {
                            m.content.clone()
                        };
                        out.push_str(codec.bos_text());
                        out.push_str("[INST] ");
                        out.push_str(content.trim());
                        out.push_str(" [/INST]");
                    } else {
                        out.push(' ');
                        out.push_str(m.content.trim());
                        out.push(' ');
                        out.push_str(codec.eos_text());
                    }
                }
                if turns.len() % 2 == 0 {
                    return Err(ChatError(
                        "the llama2 chat template needs the last message to be the user's".into(),
                    ));
                }
            }
        }
        Ok(out)
    }

    fn end_markers(&self) -> &[&'static str] {
        match self {
            Self::ChatMl => &["<|im_end|>"],
            Self::Llama2 => &[],
        }
    }

    fn name(&self) -> &str {
        match self {
            Self::ChatMl => "chatml",
            Self::Llama2 => "llama2",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Chars;
    impl TextCodec for Chars {
        fn vocab_size(&self) -> usize {
            256
        }
        fn encode(&self, text: &str, _special: bool) -> Vec<u32> {
            text.bytes().map(u32::from).collect()
        }
        fn piece(&self, _prev: u32, _id: u32) -> &[u8] {
            b""
        }
        fn is_end(&self, _id: u32) -> bool {
            false
        }
        fn max_piece_bytes(&self) -> usize {
            1
        }
        fn bos_text(&self) -> &str {
            "<s>"
        }
        fn eos_text(&self) -> &str {
            "</s>"
        }
    }

    fn msgs(list: &[(&str, &str)]) -> Vec<ChatMessage> {
        list.iter()
            .map(|(r, c)| ChatMessage {
                role: r.to_string(),
                content: c.to_string(),
            })
            .collect()
    }

    #[test]
    fn chatml_renders_every_turn_and_opens_the_answer() {
        let m = msgs(&[("system", "Be brief."), ("user", "Hi!")]);
        let got = BuiltinChat::ChatMl.render(&m, &Chars).unwrap();
        assert_eq!(
            got,
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn llama2_puts_the_system_prompt_into_the_first_turn() {
        let m = msgs(&[
            ("system", "Be brief."),
            ("user", " Hi! "),
            ("assistant", "Hello."),
            ("user", " Bye "),
        ]);
        let got = BuiltinChat::Llama2.render(&m, &Chars).unwrap();
        // Meta's generation.py: f"{B_INST} {(prompt['content']).strip()} {E_INST} {(answer['content']).strip()} "
        // with BOS/EOS around each pair and the system prompt folded into the first user turn.
        assert_eq!(
            got,
            "<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\n Hi! [/INST] Hello. </s><s>[INST] Bye [/INST]"
        );
        let bad = msgs(&[("user", "a"), ("user", "b")]);
        assert!(BuiltinChat::Llama2.render(&bad, &Chars).is_err());
        let ends_with_answer = msgs(&[("user", "a"), ("assistant", "b")]);
        assert!(BuiltinChat::Llama2
            .render(&ends_with_answer, &Chars)
            .is_err());
    }
}
