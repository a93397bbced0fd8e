//! Running a model: the kernels chosen once ([`backend`]), the worker threads ([`pool`]), the
//! activation buffers and RoPE tables ([`state`]), the paged KV cache ([`kv`]), the inputs
//! quantised once per pass ([`quantizer`]), the forward pass over a batch of token rows
//! ([`forward`]) and the [`session`] that ties them together; plus the bandwidth and compute
//! probes the benchmarks are judged against. Depends on [`crate::kernels`], [`crate::format`]
//! and [`crate::base`].

pub mod backend;
pub mod bandwidth;
pub mod compute;
pub mod forward;
pub mod kv;
pub mod pool;
pub mod quantizer;
pub mod session;
pub mod state;
