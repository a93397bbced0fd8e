//! The shape of a Llama-2-architecture model and everything derived from it.
//!
//! [`ModelConfig`] is what a `MODEL_CONFIG` TOML file holds; [`checkpoint`] reads the same
//! information (plus the position of every tensor) from a llama2.c checkpoint header.
//! This crate knows nothing about kernels.

pub mod checkpoint;
mod config;
mod presets;
pub mod tiled;

pub use checkpoint::{
    CheckpointFormat, CheckpointLayout, HeaderError, MatrixSpan, QuantSpan, TensorSpan,
};
pub use config::{
    ConfigError, GemvShape, ModelConfig, WeightFormat, DEFAULT_Q4_GROUP, DEFAULT_Q8_GROUP,
};
pub use presets::{preset, preset_names, resolve, resolve_with_origin, PRESETS};
