//! Text: tokenizers and chat templates.

pub mod chat_template;
