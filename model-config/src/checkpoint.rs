//! llama2.c checkpoint headers: which format, which shape, and where every tensor lies.
//!
//! * v0 (legacy): 7 × i32 `dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len`
//!   (negative `vocab_size` = separate classifier), tensors from byte 28, RoPE tables included.
//! * v1: 256-byte header (magic `ak42`, version 1, the same 7 × i32, a shared-classifier byte),
//!   tensors in a different order, no RoPE tables.

use std::fmt;

use thiserror::Error;

use crate::{ConfigError, ModelConfig, WeightFormat};

/// `"ak42"` read as a little-endian u32: the magic of llama2.c's versioned exports.
pub const MAGIC: u32 = 0x616b_3432;
/// Bytes before the first tensor in a v0 file.
pub const V0_HEADER_BYTES: usize = 7 * 4;
/// Bytes before the first tensor in a v1/v2 file.
pub const V1_HEADER_BYTES: usize = 256;

/// The on-disk layout family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckpointFormat {
    /// llama2.c legacy export (28-byte header, RoPE tables stored).
    V0,
    /// llama2.c `version1_export` (256-byte header, f32, different tensor order).
    V1,
}

impl fmt::Display for CheckpointFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CheckpointFormat::V0 => "llama2.c v0 (legacy, f32)",
            CheckpointFormat::V1 => "llama2.c v1 (f32)",
        })
    }
}

/// Where one tensor (all layers together, for per-layer tensors) lies in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TensorSpan {
    /// Byte offset from the start of the file.
    pub offset: usize,
    /// Number of f32 elements.
    pub len: usize,
}

impl TensorSpan {
    /// One past the last byte.
    pub fn end(&self) -> usize {
        self.offset + self.len * 4
    }
}

/// A parsed header: the model's shape and the position of every tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckpointLayout {
    /// The file's format.
    pub format: CheckpointFormat,
    /// The model's shape as the header states it.
    pub config: ModelConfig,
    /// Bytes before the first tensor.
    pub header_bytes: usize,
    /// The exact file size the header implies.
    pub file_bytes: usize,
    /// `(vocab, dim)`.
    pub token_embedding: TensorSpan,
    /// `(layers, dim)`.
    pub rms_att: TensorSpan,
    /// `(layers, dim, dim)`.
    pub wq: TensorSpan,
    /// `(layers, kv_dim, dim)`.
    pub wk: TensorSpan,
    /// `(layers, kv_dim, dim)`.
    pub wv: TensorSpan,
    /// `(layers, dim, dim)`.
    pub wo: TensorSpan,
    /// `(layers, dim)`.
    pub rms_ffn: TensorSpan,
    /// `(layers, hidden, dim)`.
    pub w1: TensorSpan,
    /// `(layers, dim, hidden)`.
    pub w2: TensorSpan,
    /// `(layers, hidden, dim)`.
    pub w3: TensorSpan,
    /// `(dim)`.
    pub rms_final: TensorSpan,
    /// `(vocab, dim)`; `None` when the classifier is the token embedding.
    pub wcls: Option<TensorSpan>,
    /// v0 only: stored RoPE tables `(seq_len, head_dim/2)` each, real then imaginary.
    pub freq_cis: Option<(TensorSpan, TensorSpan)>,
}

/// Why a checkpoint header was refused.
#[derive(Debug, Error)]
pub enum HeaderError {
    /// Fewer bytes than any header needs.
    #[error("file is {actual} bytes, too short for a llama2.c header ({needed} bytes); it is truncated or not a checkpoint")]
    TooShort {
        /// Bytes needed.
        needed: usize,
        /// Bytes present.
        actual: usize,
    },
    /// A header field is zero or negative.
    #[error("header field `{field}` is {value}; it must be positive (corrupt or not a llama2.c checkpoint)")]
    NonPositive {
        /// The field's name.
        field: &'static str,
        /// The raw value.
        value: i32,
    },
    /// A versioned header with a version this build does not read.
    #[error("checkpoint version {0} is not supported (this build reads v0 and v1 f32 files)")]
    UnsupportedVersion(i32),
    /// The shape breaks a model rule.
    #[error("header describes an impossible model: {0}")]
    Invalid(#[from] ConfigError),
    /// The file size does not equal what the header implies.
    #[error("file is {actual} bytes but its header ({shape}) implies exactly {expected} bytes; the file is {kind}")]
    SizeMismatch {
        /// Bytes the header implies.
        expected: usize,
        /// Bytes present.
        actual: usize,
        /// The shape, for the message.
        shape: String,
        /// "truncated" or "longer than expected".
        kind: &'static str,
    },
}

fn read_i32(bytes: &[u8], index: usize) -> i32 {
    i32::from_le_bytes(bytes[index * 4..index * 4 + 4].try_into().unwrap())
}

/// Lays tensors out one after another from a starting offset.
struct Cursor(usize);

impl Cursor {
    fn take(&mut self, len: usize) -> TensorSpan {
        let span = TensorSpan { offset: self.0, len };
        self.0 += len * 4;
        span
    }
}

impl CheckpointLayout {
    /// Parses the header at the start of `bytes` (at least the first 256 bytes of the file,
    /// or the whole file if shorter) and checks it against the file's total length.
    /// `name` becomes the config's name.
    pub fn parse(bytes: &[u8], file_len: usize, name: &str) -> Result<Self, HeaderError> {
        if bytes.len() < V0_HEADER_BYTES {
            return Err(HeaderError::TooShort {
                needed: V0_HEADER_BYTES,
                actual: bytes.len(),
            });
        }
        let magic = u32::from_le_bytes(bytes[0..4].try_into().unwrap());
        let (format, fields_at, shared_flag) = if magic == MAGIC {
            if bytes.len() < V1_HEADER_BYTES {
                return Err(HeaderError::TooShort {
                    needed: V1_HEADER_BYTES,
                    actual: bytes.len(),
                });
            }
            let version = read_i32(bytes, 1);
            if version != 1 {
                return Err(HeaderError::UnsupportedVersion(version));
            }
            (CheckpointFormat::V1, 2, Some(bytes[9 * 4] != 0))
        } else {
            (CheckpointFormat::V0, 0, None)
        };
        let names = ["dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "seq_len"];
        let mut raw = [0i32; 7];
        for (i, slot) in raw.iter_mut().enumerate() {
            *slot = read_i32(bytes, fields_at + i);
        }
        // v0 signals a separate classifier with a negative vocab size.
        let shared = match shared_flag {
            Some(flag) => flag,
            None => raw[5] > 0,
        };
        if format == CheckpointFormat::V0 {
            raw[5] = raw[5].checked_abs().unwrap_or(0);
        }
        let mut vals = [0usize; 7];
        for i in 0..7 {
            if raw[i] <= 0 {
                return Err(HeaderError::NonPositive {
                    field: names[i],
                    value: raw[i],
                });
            }
            vals[i] = raw[i] as usize;
        }
        let config = ModelConfig {
            name: sanitize_name(name),
            dim: vals[0],
            hidden_dim: vals[1],
            n_layers: vals[2],
            n_heads: vals[3],
            n_kv_heads: vals[4],
            vocab_size: vals[5],
            seq_len: vals[6],
            shared_classifier: shared,
            rope_theta: 10000.0,
            norm_eps: 1e-5,
            weight_format: WeightFormat::F32,
        };
        config.validate()?;
        let layout = Self::for_config(&config, format);
        if layout.file_bytes != file_len {
            return Err(HeaderError::SizeMismatch {
                expected: layout.file_bytes,
                actual: file_len,
                shape: config.shape_summary(),
                kind: if file_len < layout.file_bytes {
                    "truncated"
                } else {
                    "longer than expected"
                },
            });
        }
        Ok(layout)
    }

    /// The layout a file of `format` holding a model of shape `config` has.
    /// `config` must be valid (bounds keep every size far from overflow).
    pub fn for_config(config: &ModelConfig, format: CheckpointFormat) -> Self {
        let (d, h, l, v) = (config.dim, config.hidden_dim, config.n_layers, config.vocab_size);
        let kv = config.kv_dim();
        let header_bytes = match format {
            CheckpointFormat::V0 => V0_HEADER_BYTES,
            CheckpointFormat::V1 => V1_HEADER_BYTES,
        };
        let mut c = Cursor(header_bytes);
        let layout = match format {
            CheckpointFormat::V0 => {
                let token_embedding = c.take(v * d);
                let rms_att = c.take(l * d);
                let wq = c.take(l * d * d);
                let wk = c.take(l * kv * d);
                let wv = c.take(l * kv * d);
                let wo = c.take(l * d * d);
                let rms_ffn = c.take(l * d);
                let w1 = c.take(l * h * d);
                let w2 = c.take(l * d * h);
                let w3 = c.take(l * h * d);
                let rms_final = c.take(d);
                let half = config.seq_len * config.head_dim() / 2;
                let freq_cis = Some((c.take(half), c.take(half)));
                let wcls = (!config.shared_classifier).then(|| c.take(v * d));
                Self {
                    format,
                    config: config.clone(),
                    header_bytes,
                    file_bytes: 0,
                    token_embedding,
                    rms_att,
                    wq,
                    wk,
                    wv,
                    wo,
                    rms_ffn,
                    w1,
                    w2,
                    w3,
                    rms_final,
                    wcls,
                    freq_cis,
                }
            }
            CheckpointFormat::V1 => {
                let rms_att = c.take(l * d);
                let rms_ffn = c.take(l * d);
                let rms_final = c.take(d);
                let token_embedding = c.take(v * d);
                let wq = c.take(l * d * d);
                let wk = c.take(l * kv * d);
                let wv = c.take(l * kv * d);
                let wo = c.take(l * d * d);
                let w1 = c.take(l * h * d);
                let w2 = c.take(l * d * h);
                let w3 = c.take(l * h * d);
                let wcls = (!config.shared_classifier).then(|| c.take(v * d));
                Self {
                    format,
                    config: config.clone(),
                    header_bytes,
                    file_bytes: 0,
                    token_embedding,
                    rms_att,
                    wq,
                    wk,
                    wv,
                    wo,
                    rms_ffn,
                    w1,
                    w2,
                    w3,
                    rms_final,
                    wcls,
                    freq_cis: None,
                }
            }
        };
        Self {
            file_bytes: c.0,
            ..layout
        }
    }

    /// The header bytes a file of this layout starts with.
    pub fn header(&self) -> Vec<u8> {
        let c = &self.config;
        let mut fields = [
            c.dim as i32,
            c.hidden_dim as i32,
            c.n_layers as i32,
            c.n_heads as i32,
            c.n_kv_heads as i32,
            c.vocab_size as i32,
            c.seq_len as i32,
        ];
        let mut out = Vec::with_capacity(self.header_bytes);
        match self.format {
            CheckpointFormat::V0 => {
                if !c.shared_classifier {
                    fields[5] = -fields[5];
                }
                fields.iter().for_each(|f| out.extend_from_slice(&f.to_le_bytes()));
            }
            CheckpointFormat::V1 => {
                out.extend_from_slice(&MAGIC.to_le_bytes());
                out.extend_from_slice(&1i32.to_le_bytes());
                fields.iter().for_each(|f| out.extend_from_slice(&f.to_le_bytes()));
                out.push(c.shared_classifier as u8);
                out.resize(V1_HEADER_BYTES, 0);
            }
        }
        out
    }

    /// Every tensor with its name, in file order.
    pub fn tensors(&self) -> Vec<(&'static str, TensorSpan)> {
        let mut v = vec![
            ("token_embedding", self.token_embedding),
            ("rms_att", self.rms_att),
            ("wq", self.wq),
            ("wk", self.wk),
            ("wv", self.wv),
            ("wo", self.wo),
            ("rms_ffn", self.rms_ffn),
            ("w1", self.w1),
            ("w2", self.w2),
            ("w3", self.w3),
            ("rms_final", self.rms_final),
        ];
        if let Some((re, im)) = self.freq_cis {
            v.push(("freq_cis_real", re));
            v.push(("freq_cis_imag", im));
        }
        if let Some(w) = self.wcls {
            v.push(("wcls", w));
        }
        v.sort_by_key(|(_, s)| s.offset);
        v
    }
}

/// Turns a file stem into a valid config name.
fn sanitize_name(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == '-' { c } else { '_' })
        .collect();
    if s.is_empty() {
        "model".into()
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::preset;

    fn tiny() -> ModelConfig {
        preset("stories260k").unwrap()
    }

    #[test]
    fn header_round_trips_for_both_formats() {
        for format in [CheckpointFormat::V0, CheckpointFormat::V1] {
            for shared in [true, false] {
                let mut cfg = tiny();
                cfg.shared_classifier = shared;
                let layout = CheckpointLayout::for_config(&cfg, format);
                let parsed = CheckpointLayout::parse(&layout.header(), layout.file_bytes, "stories260k").unwrap();
                assert_eq!(parsed, layout);
            }
        }
    }

    #[test]
    fn tensors_tile_the_file_exactly() {
        for format in [CheckpointFormat::V0, CheckpointFormat::V1] {
            let mut cfg = tiny();
            cfg.shared_classifier = false;
            let layout = CheckpointLayout::for_config(&cfg, format);
            let mut at = layout.header_bytes;
            for (name, span) in layout.tensors() {
                assert_eq!(span.offset, at, "{name} in {format}");
                at = span.end();
            }
            assert_eq!(at, layout.file_bytes);
        }
    }

    #[test]
    fn v0_size_of_stories260k_matches_the_real_file() {
        // ../shared/models/stories260K.bin is 1_056_540 bytes; this is the independent check.
        let layout = CheckpointLayout::for_config(&tiny(), CheckpointFormat::V0);
        assert_eq!(layout.file_bytes, 1_056_540);
    }

    #[test]
    fn size_mismatch_names_both_sizes() {
        let layout = CheckpointLayout::for_config(&tiny(), CheckpointFormat::V0);
        let err = CheckpointLayout::parse(&layout.header(), layout.file_bytes - 4, "x").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains(&layout.file_bytes.to_string()) && msg.contains("truncated"), "{msg}");
    }

    #[test]
    fn bad_fields_are_refused() {
        let layout = CheckpointLayout::for_config(&tiny(), CheckpointFormat::V0);
        let mut h = layout.header();
        h[8..12].copy_from_slice(&0i32.to_le_bytes());
        assert!(matches!(
            CheckpointLayout::parse(&h, layout.file_bytes, "x"),
            Err(HeaderError::NonPositive { field: "n_layers", .. })
        ));
        let mut h = layout.header();
        h[12..16].copy_from_slice(&7i32.to_le_bytes()); // 64 % 7 != 0
        assert!(matches!(
            CheckpointLayout::parse(&h, layout.file_bytes, "x"),
            Err(HeaderError::Invalid(ConfigError::DimNotDivisibleByHeads { .. }))
        ));
        let mut h = layout.header();
        h[0..4].copy_from_slice(&(-5i32).to_le_bytes());
        assert!(matches!(
            CheckpointLayout::parse(&h, layout.file_bytes, "x"),
            Err(HeaderError::NonPositive { field: "dim", .. })
        ));
        assert!(matches!(
            CheckpointLayout::parse(&h[..10], 10, "x"),
            Err(HeaderError::TooShort { .. })
        ));
    }

    #[test]
    fn unknown_version_refused() {
        let layout = CheckpointLayout::for_config(&tiny(), CheckpointFormat::V1);
        let mut h = layout.header();
        h[4..8].copy_from_slice(&7i32.to_le_bytes());
        assert!(matches!(
            CheckpointLayout::parse(&h, layout.file_bytes, "x"),
            Err(HeaderError::UnsupportedVersion(7))
        ));
    }
}
