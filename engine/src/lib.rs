//! The baremetal inference engine: loads llama2.c checkpoints zero-copy and runs the forward
//! pass on the kernels generated for the compiled model shape, or on generic runtime-shape ones.

pub mod fixtures;
pub mod sampler;
pub mod tokenizer;
