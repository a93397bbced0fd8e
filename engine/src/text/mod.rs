//! Text in and out: tokenizers (llama2.c's `tokenizer.bin`, and a GGUF model's own SentencePiece
//! or byte-level BPE vocabulary) and chat templates (Jinja, rendered as Hugging Face's jinja2
//! set-up renders them). Depends on [`crate::base`] and, to read a GGUF's vocabulary,
//! [`crate::format`].

mod bpe;
pub mod chat_template;
pub mod gguf_tokenizer;
mod model_tokenizer;
pub mod pretokenize;
mod spm;
pub mod tokenizer;
pub mod unicode;

pub use model_tokenizer::ModelTokenizer;
