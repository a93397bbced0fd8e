//! What the server needs from a model's text side, behind two small traits so that other
//! tokenizers (GGUF's SentencePiece and byte-level BPE) and other chat templates (a model's own
//! Jinja template) plug in without touching the HTTP or scheduling code:
//!
//! - [`TextCodec`]: text → token ids, token id → bytes, which ids end a generation;
//! - [`ChatFormat`]: a conversation → the prompt text.
//!
//! [`ModelCodec`] wraps the model's tokenizer (llama2.c's `tokenizer.bin` or a GGUF vocabulary); [`JinjaChat`] renders a model's Jinja
//! template, or a built-in one for models that carry none (llama2.c checkpoints).

use crate::text::chat_template::{
    builtin_source_or_err, strip_added_specials, ChatTemplate, Message, TemplateError,
};
use crate::text::ModelTokenizer;

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
    /// Whether [`TextCodec::encode`] adds BOS and EOS itself: a rendered template's own
    /// leading BOS / trailing EOS text is then removed (llama.cpp's rule against doubling).
    fn adds_specials(&self) -> (bool, bool);
}

/// A model's own tokenizer ([`ModelTokenizer`]: llama2.c's `tokenizer.bin` or a GGUF
/// vocabulary) as the server uses it. Generation ends on the vocabulary's end-of-generation
/// ids (EOS, end of turn, ...; BOS and EOS for llama2.c files: `run.c` stops at BOS, and
/// chat templates end an answer with EOS).
pub struct ModelCodec {
    tokenizer: ModelTokenizer,
    stop: Vec<u32>,
    max_piece: usize,
    bos_text: String,
    eos_text: String,
}

impl ModelCodec {
    /// Wraps a tokenizer whose vocabulary is the model's.
    pub fn new(tokenizer: ModelTokenizer) -> Self {
        let max_piece = (0..tokenizer.vocab_size() as u32)
            .map(|id| tokenizer.piece(id).len())
            .max()
            .unwrap_or(1)
            .max(1);
        let mut stop = tokenizer.stop_ids();
        if let ModelTokenizer::Llama2c(_) = &tokenizer {
            // A chat template writes `</s>` after each answer: a model that learned it stops there.
            stop.push(crate::text::tokenizer::EOS);
        }
        Self {
            stop,
            bos_text: tokenizer.bos_text(),
            eos_text: tokenizer.eos_text(),
            tokenizer,
            max_piece,
        }
    }

    /// The wrapped tokenizer.
    pub fn tokenizer(&self) -> &ModelTokenizer {
        &self.tokenizer
    }
}

impl TextCodec for ModelCodec {
    fn vocab_size(&self) -> usize {
        self.tokenizer.vocab_size()
    }

    fn encode(&self, text: &str, special: bool) -> Vec<u32> {
        self.tokenizer.encode(text, special)
    }

    fn piece(&self, prev: u32, id: u32) -> &[u8] {
        if self.is_end(id) {
            return b"";
        }
        self.tokenizer.decode_piece(prev, id)
    }

    fn is_end(&self, id: u32) -> bool {
        self.stop.contains(&id)
    }

    fn max_piece_bytes(&self) -> usize {
        self.max_piece
    }

    fn bos_text(&self) -> &str {
        &self.bos_text
    }

    fn eos_text(&self) -> &str {
        &self.eos_text
    }

    fn adds_specials(&self) -> (bool, bool) {
        match &self.tokenizer {
            ModelTokenizer::Llama2c(_) => (true, false),
            ModelTokenizer::Gguf(t) => (t.add_bos(), t.add_eos()),
        }
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

/// A Jinja chat template ([`ChatTemplate`]: the model's own, a file, or a built-in one),
/// rendered as `apply_chat_template(messages, add_generation_prompt=True)` renders it.
pub struct JinjaChat {
    template: ChatTemplate,
    name: String,
    end_markers: Vec<&'static str>,
}

/// End-of-turn texts of common templates. Those a template's source writes out become stop
/// strings: with a vocabulary that has no single token for them (ChatML's `<|im_end|>` under
/// the Llama 2 tokenizer) the model can only spell them.
const END_MARKERS: &[&str] = &[
    "<|im_end|>",
    "<|eot_id|>",
    "<|end|>",
    "<|endoftext|>",
    "<end_of_turn>",
];

impl JinjaChat {
    /// Compiles `source`; `name` is what logs and `/v1/models` call it.
    pub fn new(source: &str, name: impl Into<String>) -> Result<Self, TemplateError> {
        Ok(Self {
            template: ChatTemplate::new(source)?,
            name: name.into(),
            end_markers: END_MARKERS
                .iter()
                .copied()
                .filter(|m| source.contains(m))
                .collect(),
        })
    }

    /// The built-in template `name` (chatml, llama2, llama3, zephyr).
    pub fn builtin(name: &str) -> Result<Self, TemplateError> {
        Self::new(builtin_source_or_err(name)?, name)
    }
}

impl ChatFormat for JinjaChat {
    fn render(&self, messages: &[ChatMessage], codec: &dyn TextCodec) -> Result<String, ChatError> {
        let messages: Vec<Message> = messages
            .iter()
            .map(|m| Message::new(m.role.clone(), m.content.clone()))
            .collect();
        let (add_bos, add_eos) = codec.adds_specials();
        let (bos, eos) = (codec.bos_text(), codec.eos_text());
        self.template
            .render_conversation(&messages, true, bos, eos, None)
            .map(|text| strip_added_specials(&text, bos, eos, add_bos, add_eos).to_string())
            .map_err(|e| match e {
                TemplateError::Raised(msg) => {
                    ChatError(format!("the chat template refused these messages: {msg}"))
                }
                e => ChatError(e.to_string()),
            })
    }

    fn end_markers(&self) -> &[&'static str] {
        &self.end_markers
    }

    fn name(&self) -> &str {
        &self.name
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
        fn adds_specials(&self) -> (bool, bool) {
            (false, false)
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
        let chat = JinjaChat::builtin("chatml").unwrap();
        assert_eq!(
            chat.render(&m, &Chars).unwrap(),
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n"
        );
        assert_eq!(chat.end_markers(), ["<|im_end|>"]);
    }

    #[test]
    fn llama2_folds_the_system_prompt_into_the_first_turn() {
        // Meta's generation.py: f"{B_INST} {(prompt['content']).strip()} {E_INST} {(answer['content']).strip()} "
        // with BOS/EOS around each pair and the system prompt folded into the first user turn.
        let m = msgs(&[
            ("system", "Be brief."),
            ("user", "Hi! "),
            ("assistant", "Hello."),
            ("user", " Bye "),
        ]);
        let chat = JinjaChat::builtin("llama2").unwrap();
        assert_eq!(
            chat.render(&m, &Chars).unwrap(),
            "<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi! [/INST] Hello. </s><s>[INST] Bye [/INST]"
        );
        assert!(chat.end_markers().is_empty());
        let bad = msgs(&[("user", "a"), ("user", "b")]);
        let e = chat.render(&bad, &Chars).unwrap_err();
        assert!(e.0.contains("alternate"), "{e}");
    }

    #[test]
    fn llama2_codec_reads_bos_and_eos_texts_as_tokens() {
        use crate::text::tokenizer::{Tokenizer, BOS, EOS};
        let Some(path) = crate::fixtures::fixture("models/tokenizer.bin") else {
            return;
        };
        let t = Tokenizer::from_file(&path, 32000).unwrap();
        let plain = |s: &str| t.encode(s, false, false);
        let c = ModelCodec::new(ModelTokenizer::Llama2c(t.clone()));
        let mut want = vec![BOS];
        want.extend(plain("[INST] Hi [/INST] Yo "));
        want.push(EOS);
        want.push(BOS);
        want.extend(plain("[INST] More"));
        assert_eq!(
            c.encode("<s>[INST] Hi [/INST] Yo </s><s>[INST] More", true),
            want
        );
        // Without special parsing the marks are text, and BOS is added once.
        assert_eq!(c.encode("<s>x", false), t.encode("<s>x", true, false));
        assert!(c.is_end(BOS) && c.is_end(EOS) && !c.is_end(3));
        assert!(c.max_piece_bytes() >= 4);
        assert_eq!((c.bos_text(), c.eos_text()), ("<s>", "</s>"));
    }

    #[test]
    fn gguf_codec_ends_on_the_vocabularys_end_of_generation_ids() {
        let Some(path) = crate::fixtures::fixture("gguf/vocab/ggml-vocab-llama-bpe.gguf") else {
            return;
        };
        let bytes = std::fs::read(path).unwrap();
        let c = ModelCodec::new(ModelTokenizer::gguf(&bytes).unwrap());
        assert_eq!(c.bos_text(), "<|begin_of_text|>");
        // <|eot_id|> (128009) ends a chat turn; <|end_of_text|> (128001) the text.
        assert!(c.is_end(128009) && c.is_end(128001) && !c.is_end(128000));
        assert!(c.piece(0, 128009).is_empty());
        let ids = c.encode("<|start_header_id|>user<|end_header_id|>", true);
        assert_eq!(ids, [128000, 128006, 882, 128007]);
        let ids = c.encode("<|eot_id|>", false);
        assert!(
            ids.len() > 2,
            "without special parsing the text is text: {ids:?}"
        );
    }
}
