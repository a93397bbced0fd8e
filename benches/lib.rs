//! Criterion benchmarks live in `benches/kernels.rs`; this crate has no library code.
