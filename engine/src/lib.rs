//! The baremetal inference engine: loads llama2.c checkpoints zero-copy and runs the forward
//! pass on the kernels generated for the compiled model shape, or on generic runtime-shape ones.
//!
//! Data flow: [`model::Model`] maps a checkpoint and checks its header; [`backend::Backend`]
//! picks the kernels once; [`session::Session`] owns the run state and calls
//! [`forward::forward`] per token; [`sampler`] and [`tokenizer`] turn logits into text.

pub mod aligned;
pub mod backend;
pub mod bandwidth;
pub mod error;
pub mod eval;
pub mod fixtures;
pub mod forward;
pub mod fp16;
pub mod generate;
pub mod kernels;
pub mod model;
pub mod pool;
pub mod quant;
pub mod rng;
pub mod sampler;
pub mod session;
pub mod state;
pub mod synth;
pub mod text;
pub mod tokenizer;

pub use backend::{Backend, Matrix};
pub use error::LoadError;
pub use model::{MatRef, Model, Realign};
pub use session::{Session, StepError};
