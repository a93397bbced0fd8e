//! Checkpoint formats and their layouts: opening a file (llama2.c v0/v1/v2, baremetal v3),
//! the Q8_0/Q4_0 group types with their scalar quantisation rules, the tiled int8 copy made at
//! load, and the writers behind `quantize` and `synth`. Depends on [`crate::base`] only.

pub mod error;
pub mod ggml;
pub mod gguf;
pub mod gguf_model;
pub mod gguf_writer;
pub mod model;
pub mod quant;
pub mod synth;
pub mod writer;

pub use error::LoadError;
pub use model::{FileFormat, MatRef, Model, Realign, Weights};

/// The shape this binary was compiled for (`MODEL_CONFIG` at build time).
pub fn compiled_config() -> model_config::ModelConfig {
    model_config::ModelConfig::from_toml_str(generated::CONFIG_TOML)
        .expect("the generated config is valid")
}
