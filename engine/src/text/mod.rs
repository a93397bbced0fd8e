//! Text in and out: tokenizers (llama2.c's `tokenizer.bin`) and chat templates (Jinja, rendered
//! as Hugging Face's jinja2 set-up renders them). Depends on nothing above [`crate::base`].

pub mod chat_template;
pub mod tokenizer;
