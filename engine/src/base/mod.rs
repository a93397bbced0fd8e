//! The bottom layer: aligned buffers, binary16 conversion and a small seedable generator,
//! used by every layer above and using none of them.

pub mod aligned;
pub mod fp16;
pub mod rng;
