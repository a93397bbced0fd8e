//! Turning logits into tokens: sampling, the generate loop, beam search, and the comparison of
//! a quantised model with its original. Depends on [`crate::runtime`] and below.

pub mod beam;
pub mod eval;
pub mod generate;
pub mod sampler;
