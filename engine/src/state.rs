//! Everything a decode step writes, allocated once (64-byte aligned) so that the hot path
//! never allocates, plus the RoPE tables computed once per model.

use model_config::ModelConfig;

use crate::aligned::{AlignedHalf, AlignedVec};
use crate::kernels::GenericKernels;
use crate::quant::InputQuantizer;

/// How the KV cache stores keys and values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KvCacheType {
    /// f32, as llama2.c: the reference tests compare logits with it at 1e-4.
    #[default]
    F32,
    /// IEEE binary16 (round to nearest even): half the attention's memory traffic, at a
    /// small logit difference (docs/PERFORMANCE.md).
    F16,
}

impl KvCacheType {
    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::F16 => "f16",
        }
    }
}

impl std::fmt::Display for KvCacheType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for KvCacheType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "f32" => Ok(Self::F32),
            "f16" => Ok(Self::F16),
            _ => Err("the KV cache type must be f32 or f16".into()),
        }
    }
}

/// Keys and values, `(layers, n_kv_heads, seq_len, head_dim)` each: each head's rows are
/// contiguous, so a head's attention scores are one small GEMV over them.
#[derive(Debug)]
pub enum KvCache {
    /// f32 rows.
    F32 {
        /// Keys.
        keys: AlignedVec,
        /// Values.
        values: AlignedVec,
    },
    /// Binary16 rows.
    F16 {
        /// Keys.
        keys: AlignedHalf,
        /// Values.
        values: AlignedHalf,
    },
}

/// A read-only run of cache rows (keys and values over the same positions).
#[derive(Debug, Clone, Copy)]
pub enum KvRows<'a> {
    /// f32 rows.
    F32 {
        /// Keys.
        keys: &'a [f32],
        /// Values.
        values: &'a [f32],
    },
    /// Binary16 rows.
    F16 {
        /// Keys.
        keys: &'a [u16],
        /// Values.
        values: &'a [u16],
    },
}

impl KvCache {
    /// A zeroed cache of `len` keys and `len` values.
    pub fn new(ty: KvCacheType, len: usize) -> Self {
        match ty {
            KvCacheType::F32 => Self::F32 {
                keys: AlignedVec::zeros(len),
                values: AlignedVec::zeros(len),
            },
            KvCacheType::F16 => Self::F16 {
                keys: AlignedHalf::zeros(len),
                values: AlignedHalf::zeros(len),
            },
        }
    }

    /// The element type.
    pub fn kind(&self) -> KvCacheType {
        match self {
            Self::F32 { .. } => KvCacheType::F32,
            Self::F16 { .. } => KvCacheType::F16,
        }
    }

    /// Stores key row `k` and value row `v` at element offset `at` (rounded to binary16 for
    /// an f16 cache).
    pub fn store(&mut self, kernels: &GenericKernels, at: usize, k: &[f32], v: &[f32]) {
        match self {
            Self::F32 { keys, values } => {
                keys[at..at + k.len()].copy_from_slice(k);
                values[at..at + v.len()].copy_from_slice(v);
            }
            Self::F16 { keys, values } => {
                kernels.f32_to_f16(&mut keys[at..at + k.len()], k);
                kernels.f32_to_f16(&mut values[at..at + v.len()], v);
            }
        }
    }

    /// Elements `range` of the keys and of the values.
    pub fn rows(&self, range: std::ops::Range<usize>) -> KvRows<'_> {
        match self {
            Self::F32 { keys, values } => KvRows::F32 {
                keys: &keys[range.clone()],
                values: &values[range],
            },
            Self::F16 { keys, values } => KvRows::F16 {
                keys: &keys[range.clone()],
                values: &values[range],
            },
        }
    }
}

impl<'a> KvRows<'a> {
    /// Elements `range` of these rows.
    pub fn slice(self, range: std::ops::Range<usize>) -> Self {
        match self {
            Self::F32 { keys, values } => Self::F32 {
                keys: &keys[range.clone()],
                values: &values[range],
            },
            Self::F16 { keys, values } => Self::F16 {
                keys: &keys[range.clone()],
                values: &values[range],
            },
        }
    }
}

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
    /// The KV cache, f32 or binary16.
    pub kv: KvCache,
    /// Q8_0 models: each GEMV input quantised once (int8 + scales, up to `max(dim, hidden)`).
    pub xq: InputQuantizer,
}

impl RunState {
    /// Buffers for a model of shape `c`, with an f32 KV cache.
    pub fn new(c: &ModelConfig) -> Self {
        Self::with_kv_cache(c, KvCacheType::F32)
    }

    /// Buffers for a model of shape `c`, with a KV cache of type `kv`.
    pub fn with_kv_cache(c: &ModelConfig, kv: KvCacheType) -> Self {
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
            kv: KvCache::new(kv, cache),
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
