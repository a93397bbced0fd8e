//! Turns a [`ModelConfig`] into the Rust source of dimension-specialised kernels.
//!
//! [`generate`] returns one formatted module (to be `include!`d) holding the model's shape
//! constants, GEMV and RMSNorm kernels for every instruction set (portable, AVX2+FMA,
//! AVX-512F, NEON), a `Kernels` table chosen once at start-up, and the `Gemv` / `RmsNorm`
//! traits the engine calls. In the SIMD kernels the dot-product dimension is fully unrolled
//! with literal offsets; rows stay a loop so the code stays small.
//!
//! Each emitter lives in `isa/`; `module.rs` writes everything that is not a kernel.

mod emit;
mod int8;
mod isa;
mod module;
mod shapes;

use model_config::ModelConfig;

/// The complete, formatted generated module for `cfg`, ready to be written to a file and
/// `include!`d. It refers to the hand-written `crate::Isa` enum of the including crate.
pub fn generate(cfg: &ModelConfig) -> String {
    emit::render(&module::header(cfg), module::module(cfg))
}

#[cfg(test)]
mod tests;
