//! Text in and out: tokenizers (llama2.c's `tokenizer.bin`). Depends on nothing above
//! [`crate::base`].

pub mod tokenizer;
