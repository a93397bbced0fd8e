//! The llama2.c tokenizer.
