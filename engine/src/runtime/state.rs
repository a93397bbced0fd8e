//! Everything a decode step writes, allocated once (64-byte aligned) so that the hot path
//! never allocates, plus the RoPE tables computed once per model.

use model_config::ModelConfig;

use crate::base::aligned::AlignedVec;
use crate::runtime::quantizer::InputQuantizer;

pub use crate::runtime::kv::{KvCacheType, KvRows};

/// Activation buffers for a batch of up to `rows` token rows (each buffer row-major, one row
/// per token), allocated once. The KV cache lives apart ([`crate::runtime::kv::KvCache`]), shared by
/// every sequence a batch may mix.
#[derive(Debug)]
pub struct RunState {
    /// The most token rows one forward pass takes.
    pub rows: usize,
    /// Residual stream `(rows, dim)`.
    pub x: AlignedVec,
    /// Normalised input / attention output `(rows, dim)`.
    pub xb: AlignedVec,
    /// Projection output `(rows, dim)`.
    pub xb2: AlignedVec,
    /// FFN gate `(rows, hidden)`.
    pub hb: AlignedVec,
    /// FFN up `(rows, hidden)`.
    pub hb2: AlignedVec,
    /// Queries `(rows, dim)`.
    pub q: AlignedVec,
    /// Keys of the batch's positions `(rows, kv_dim)`, before they are stored in the cache.
    pub k: AlignedVec,
    /// Values `(rows, kv_dim)`.
    pub v: AlignedVec,
    /// Attention scores: one row of `seq_len` per attention share (thread).
    pub att: AlignedVec,
    /// One head's output per attention share, for sums over several cache runs.
    pub head_out: AlignedVec,
    /// Output logits `(logit_rows, vocab)`.
    pub logits: AlignedVec,
    /// The most rows whose logits one pass computes.
    pub logit_rows: usize,
    /// Q8_0/Q4_0 models: each GEMM input quantised once (int8 + scales, per row).
    pub xq: InputQuantizer,
}

impl RunState {
    /// Buffers for one token at a time of a model of shape `c`, attention on one thread.
    pub fn new(c: &ModelConfig) -> Self {
        Self::with_rows(c, 1, 1, 1)
    }

    /// Buffers for batches of up to `rows` tokens of which up to `logit_rows` want logits, the
    /// attention split into up to `shares` parts.
    pub fn with_rows(c: &ModelConfig, rows: usize, logit_rows: usize, shares: usize) -> Self {
        let (rows, logit_rows, shares) = (rows.max(1), logit_rows.max(1), shares.max(1));
        Self {
            rows,
            x: AlignedVec::zeros(rows * c.dim),
            xb: AlignedVec::zeros(rows * c.dim),
            xb2: AlignedVec::zeros(rows * c.dim),
            hb: AlignedVec::zeros(rows * c.hidden_dim),
            hb2: AlignedVec::zeros(rows * c.hidden_dim),
            q: AlignedVec::zeros(rows * c.dim),
            k: AlignedVec::zeros(rows * c.kv_dim()),
            v: AlignedVec::zeros(rows * c.kv_dim()),
            att: AlignedVec::zeros(shares * c.seq_len),
            head_out: AlignedVec::zeros(shares * c.head_dim()),
            logits: AlignedVec::zeros(logit_rows * c.vocab_size),
            logit_rows,
            xq: InputQuantizer::new(c.weight_format, rows * c.dim.max(c.hidden_dim)),
        }
    }
}

/// RoPE rotations for every position, `(seq_len, head_dim / 2)` cosines and sines.
///
/// Computed with the same f32 operations as llama2.c's `run.c` (`powf`, `cosf`, `sinf` of
/// `pos * freq`) so that results match it, but once per model instead of per token; GGUF
/// models' linear scaling and frequency factors (`ModelConfig::rope_freq_scale`,
/// `rope_freq_factors`) as llama.cpp applies them: `pos · scale · freq / factor`.
#[derive(Debug)]
pub struct Rope {
    half: usize,
    cos: Vec<f32>,
    sin: Vec<f32>,
}

impl Rope {
    /// Tables for `c.seq_len` positions.
    pub fn new(c: &ModelConfig) -> Self {
        Self::with_positions(c, c.seq_len)
    }

    /// Tables for positions `0..positions`: a session needs only as many as its KV cache
    /// holds, however long a context the model file claims.
    pub fn with_positions(c: &ModelConfig, positions: usize) -> Self {
        let (hs, half) = (c.head_dim(), c.head_dim() / 2);
        let mut cos = Vec::with_capacity(positions * half);
        let mut sin = Vec::with_capacity(positions * half);
        let factors = c.rope_freq_factors.as_deref();
        for pos in 0..positions {
            for j in 0..half {
                let freq = 1.0f32 / c.rope_theta.powf((2 * j) as f32 / hs as f32);
                // Linear scaling and Llama 3.1's per-frequency divisors; both exact no-ops
                // (× 1, ÷ 1) for llama2.c models, whose angles stay run.c's.
                let divisor = factors.map_or(1.0, |f| f[j]);
                let val = pos as f32 * freq * c.rope_freq_scale / divisor;
                cos.push(val.cos());
                sin.push(val.sin());
            }
        }
        Self { half, cos, sin }
    }

    /// Rotates each head of `v` (heads of `2 * half` values) for position `pos`.
    #[inline]
    pub fn rotate(&self, v: &mut [f32], pos: usize) {
        let cos = &self.cos[pos * self.half..(pos + 1) * self.half];
        let sin = &self.sin[pos * self.half..(pos + 1) * self.half];
        for head in v.chunks_exact_mut(2 * self.half) {
            for ((pair, &c), &s) in head.chunks_exact_mut(2).zip(cos).zip(sin) {
                let (v0, v1) = (pair[0], pair[1]);
                pair[0] = v0 * c - v1 * s;
                pair[1] = v0 * s + v1 * c;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The rotation of pair j at position p is by `p · scale · θ^(-2j/d) / factor_j`, computed
    /// here in f64 from the definition (llama.cpp's ggml_rope_cache_init).
    #[test]
    fn rope_applies_linear_scaling_and_frequency_factors() {
        let mut c = model_config::preset("stories260k").unwrap(); // head_dim 8: 4 pairs
        c.rope_theta = 500000.0;
        c.rope_freq_scale = 0.5;
        c.rope_freq_factors = Some(vec![1.0, 2.0, 4.0, 8.0]);
        let rope = Rope::new(&c);
        for pos in [0usize, 1, 7, 300] {
            let mut v: Vec<f32> = (0..8).map(|i| 1.0 + i as f32).collect();
            let orig = v.clone();
            rope.rotate(&mut v, pos);
            for j in 0..4 {
                let f = (500000f64).powf(-(2.0 * j as f64) / 8.0);
                let angle = pos as f64 * 0.5 * f / [1.0, 2.0, 4.0, 8.0][j];
                let (x0, x1) = (orig[2 * j] as f64, orig[2 * j + 1] as f64);
                let want = (
                    x0 * angle.cos() - x1 * angle.sin(),
                    x0 * angle.sin() + x1 * angle.cos(),
                );
                assert!(
                    (v[2 * j] as f64 - want.0).abs() < 1e-4,
                    "pos {pos} pair {j}"
                );
                assert!(
                    (v[2 * j + 1] as f64 - want.1).abs() < 1e-4,
                    "pos {pos} pair {j}"
                );
            }
        }
    }
}
