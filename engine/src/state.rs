//! Everything a decode step writes, allocated once (64-byte aligned) so that the hot path
//! never allocates, plus the RoPE tables computed once per model.

use model_config::ModelConfig;

use crate::aligned::AlignedVec;
use crate::quant::InputQuantizer;

/// Activation buffers and the KV cache for one sequence.
#[derive(Debug)]
pub struct RunState {
    /// Residual stream `(dim)`.
    pub x: AlignedVec,
    /// Normalised input / attention output `(dim)`.
    pub xb: AlignedVec,
    /// Projection output `(dim)`.
    pub xb2: AlignedVec,
    /// FFN gate `(hidden)`.
    pub hb: AlignedVec,
    /// FFN up `(hidden)`.
    pub hb2: AlignedVec,
    /// Queries `(dim)`.
    pub q: AlignedVec,
    /// Attention scores `(n_heads, seq_len)`.
    pub att: AlignedVec,
    /// Output logits `(vocab)`.
    pub logits: AlignedVec,
    /// This position's keys `(kv_dim)`, before they are stored per head in the cache.
    pub k: AlignedVec,
    /// This position's values `(kv_dim)`.
    pub v: AlignedVec,
    /// Keys `(layers, n_kv_heads, seq_len, head_dim)`: each head's keys are contiguous, so a
    /// head's attention scores are one small GEMV over them.
    pub key_cache: AlignedVec,
    /// Values `(layers, n_kv_heads, seq_len, head_dim)`.
    pub value_cache: AlignedVec,
    /// Q8_0 models: each GEMV input quantised once (int8 + scales, up to `max(dim, hidden)`).
    pub xq: InputQuantizer,
}

impl RunState {
    /// Buffers for a model of shape `c`.
    pub fn new(c: &ModelConfig) -> Self {
        let cache = c.n_layers * c.seq_len * c.kv_dim();
        Self {
            x: AlignedVec::zeros(c.dim),
            xb: AlignedVec::zeros(c.dim),
            xb2: AlignedVec::zeros(c.dim),
            hb: AlignedVec::zeros(c.hidden_dim),
            hb2: AlignedVec::zeros(c.hidden_dim),
            q: AlignedVec::zeros(c.dim),
            att: AlignedVec::zeros(c.n_heads * c.seq_len),
            logits: AlignedVec::zeros(c.vocab_size),
            k: AlignedVec::zeros(c.kv_dim()),
            v: AlignedVec::zeros(c.kv_dim()),
            key_cache: AlignedVec::zeros(cache),
            value_cache: AlignedVec::zeros(cache),
            xq: InputQuantizer::new(c.weight_format, c.dim.max(c.hidden_dim)),
        }
    }
}

/// RoPE rotations for every position, `(seq_len, head_dim / 2)` cosines and sines.
///
/// Computed with the same f32 operations as llama2.c's `run.c` (`powf`, `cosf`, `sinf` of
/// `pos * freq`) so that results match it, but once per model instead of per token.
#[derive(Debug)]
pub struct Rope {
    half: usize,
    cos: Vec<f32>,
    sin: Vec<f32>,
}

impl Rope {
    /// Tables for `c.seq_len` positions.
    pub fn new(c: &ModelConfig) -> Self {
        let (hs, half) = (c.head_dim(), c.head_dim() / 2);
        let mut cos = Vec::with_capacity(c.seq_len * half);
        let mut sin = Vec::with_capacity(c.seq_len * half);
        for pos in 0..c.seq_len {
            for j in 0..half {
                let freq = 1.0f32 / c.rope_theta.powf((2 * j) as f32 / hs as f32);
                let val = pos as f32 * freq;
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
