//! Errors of loading and running, each one sentence: what, which file, what to do.

use std::path::PathBuf;

use model_config::HeaderError;
use thiserror::Error;

/// Why a checkpoint could not be used.
#[derive(Debug, Error)]
pub enum LoadError {
    /// The file could not be opened or mapped.
    #[error("cannot read checkpoint {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The header is malformed or disagrees with the file size.
    #[error("{path} is not a usable llama2.c checkpoint: {source}")]
    Header {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        source: HeaderError,
    },
    /// A GGUF file that cannot be run.
    #[error("{path} is not a usable GGUF model: {source}")]
    Gguf {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        source: crate::format::gguf_model::GgufModelError,
    },
    /// The file's shape differs from the shape this binary was compiled for.
    #[error(
        "{path} holds a model of shape [{file_shape}], but this binary was compiled for `{compiled_name}` [{compiled_shape}]; \
         rebuild for this model with `{rebuild}`, or pass --generic to run it on the runtime-shape kernels"
    )]
    ShapeMismatch {
        /// The file.
        path: PathBuf,
        /// The file's shape.
        file_shape: String,
        /// The compiled model's name.
        compiled_name: String,
        /// The compiled shape.
        compiled_shape: String,
        /// The exact command to rebuild.
        rebuild: String,
    },
}
