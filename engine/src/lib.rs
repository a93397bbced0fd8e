//! The baremetal inference engine: loads checkpoints zero-copy and runs the forward pass on
//! the kernels generated for the compiled model shape, or on generic runtime-shape ones.
//!
//! The folders are layers, in data-flow order; each uses only the ones listed before it:
//!
//! ```text
//! base/      aligned buffers, fp16, rng                        (uses nothing)
//! format/    file → weights: formats, quantised types, writers  (base)
//! kernels/   runtime-shape kernels per ISA: f32, f16, int8      (format types, base)
//! runtime/   kernels → forward → logits: backend, KV cache,     (kernels, format, base)
//!            forward pass, session
//! text/      tokenizers (llama2.c, GGUF SPM/BPE), chat templates (format: GGUF vocab, base)
//! decode/    logits → tokens: sampler, generate, beam, eval      (runtime, format, base)
//! serve/     the OpenAI-compatible server: HTTP, continuous      (everything below)
//!            batching engine thread, tokenizer/template traits
//! cli/       the `baremetal` commands (in the binary)           (everything)
//! ```
//!
//! The generated kernels (crate `generated`) sit beside `kernels/`: `runtime::backend` picks
//! between them once per session.

pub mod base;
pub mod decode;
pub mod fixtures;
pub mod format;
pub mod kernels;
pub mod runtime;
pub mod serve;
pub mod text;

pub use format::{LoadError, MatRef, Model, Realign};
pub use runtime::backend::{Backend, Matrix};
pub use runtime::session::{Session, StepError};
