//! llama2.c checkpoint headers: which format, which shape, and where every tensor lies.
//!
//! * v0 (legacy): 7 × i32 `dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len`
//!   (negative `vocab_size` = separate classifier), tensors from byte 28, RoPE tables included.
//! * v1: 256-byte header (magic `ak42`, version 1, the same 7 × i32, a shared-classifier byte),
//!   tensors in a different order, no RoPE tables.
//! * v2 (Q8_0, llama2.c `export.py version2_export`): the v1 header with version 2 and an i32
//!   group size at byte 37 (unaligned). Then the f32 norms (rms_att, rms_ffn, rms_final), then
//!   for each quantised matrix — token_embedding, wq (each layer), wk, wv, wo, w1, w2, w3 (each
//!   layer), wcls if not shared — its int8 values immediately followed by its f32 scales
//!   (one per group of `group_size` consecutive values).
//! * v3 (Q4_0, baremetal's own, see docs/FORMATS.md): the v2 header with version 3, the same
//!   order, but each matrix's values are 4-bit (`q + 8`, two per byte, element `2i` in the low
//!   nibble), `len / 2` bytes, immediately followed by its f32 scales.

use std::fmt;

use thiserror::Error;

use crate::{ConfigError, ModelConfig, WeightFormat};

/// `"ak42"` read as a little-endian u32: the magic of llama2.c's versioned exports.
pub const MAGIC: u32 = 0x616b_3432;
/// Bytes before the first tensor in a v0 file.
pub const V0_HEADER_BYTES: usize = 7 * 4;
/// Bytes before the first tensor in a v1/v2 file.
pub const V1_HEADER_BYTES: usize = 256;
/// Byte offset of the shared-classifier flag in a v1/v2 header.
const SHARED_FLAG_AT: usize = 9 * 4;
/// Byte offset of the i32 group size in a v2 header (right after the flag byte: unaligned).
const GROUP_SIZE_AT: usize = SHARED_FLAG_AT + 1;

/// The on-disk layout family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckpointFormat {
    /// llama2.c legacy export (28-byte header, RoPE tables stored).
    V0,
    /// llama2.c `version1_export` (256-byte header, f32, different tensor order).
    V1,
    /// llama2.c `version2_export` (256-byte header, Q8_0 matrices, f32 norms).
    V2,
    /// baremetal's Q4_0 (v2's header and order with version 3, 4-bit matrices, f32 norms).
    V3,
}

impl fmt::Display for CheckpointFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CheckpointFormat::V0 => "llama2.c v0 (legacy, f32)",
            CheckpointFormat::V1 => "llama2.c v1 (f32)",
            CheckpointFormat::V2 => "llama2.c v2 (Q8_0)",
            CheckpointFormat::V3 => "baremetal v3 (Q4_0)",
        })
    }
}

/// Where one f32 tensor (all layers together, for per-layer tensors) lies in the file.
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

/// Where one Q8_0 or Q4_0 matrix (one layer of a per-layer tensor) lies: `len` values of
/// `bits` bits from `offset`, immediately followed by `len / group` f32 scales.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuantSpan {
    /// Byte offset of the first value.
    pub offset: usize,
    /// Number of weights.
    pub len: usize,
    /// Weights per scale.
    pub group: usize,
    /// Bits per weight: 8 (Q8_0, one int8 per byte) or 4 (Q4_0, two per byte).
    pub bits: usize,
}

impl QuantSpan {
    /// Bytes the values occupy (`len` for Q8_0, `len / 2` for Q4_0).
    pub fn value_bytes(&self) -> usize {
        self.len * self.bits / 8
    }

    /// The f32 scales, right after the values.
    pub fn scales(&self) -> TensorSpan {
        TensorSpan {
            offset: self.offset + self.value_bytes(),
            len: self.len / self.group,
        }
    }

    /// One past the last byte (of the scales).
    pub fn end(&self) -> usize {
        self.scales().end()
    }
}

/// Where a weight matrix lies: f32 (every layer in one span) or Q8_0/Q4_0 (one span per
/// layer; exactly one for the token embedding and the classifier).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MatrixSpan {
    /// f32 values, all layers back to back.
    F32(TensorSpan),
    /// int8 values and scales, per layer.
    Q8(Vec<QuantSpan>),
    /// Packed 4-bit values and scales, per layer.
    Q4(Vec<QuantSpan>),
}

impl MatrixSpan {
    /// Byte offsets where weight values start (one for f32; each layer's values for
    /// Q8_0/Q4_0).
    pub fn value_offsets(&self) -> Vec<usize> {
        match self {
            MatrixSpan::F32(s) => vec![s.offset],
            MatrixSpan::Q8(v) | MatrixSpan::Q4(v) => v.iter().map(|q| q.offset).collect(),
        }
    }
}

/// A parsed header: the model's shape and the position of every tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckpointLayout {
    /// The file's format.
    pub format: CheckpointFormat,
    /// The model's shape as the header states it (`weight_format` says f32 or Q8_0 + group).
    pub config: ModelConfig,
    /// Bytes before the first tensor.
    pub header_bytes: usize,
    /// The exact file size the header implies.
    pub file_bytes: usize,
    /// `(vocab, dim)`.
    pub token_embedding: MatrixSpan,
    /// `(layers, dim)`.
    pub rms_att: TensorSpan,
    /// `(layers, dim, dim)`.
    pub wq: MatrixSpan,
    /// `(layers, kv_dim, dim)`.
    pub wk: MatrixSpan,
    /// `(layers, kv_dim, dim)`.
    pub wv: MatrixSpan,
    /// `(layers, dim, dim)`.
    pub wo: MatrixSpan,
    /// `(layers, dim)`.
    pub rms_ffn: TensorSpan,
    /// `(layers, hidden, dim)`.
    pub w1: MatrixSpan,
    /// `(layers, dim, hidden)`.
    pub w2: MatrixSpan,
    /// `(layers, hidden, dim)`.
    pub w3: MatrixSpan,
    /// `(dim)`.
    pub rms_final: TensorSpan,
    /// `(vocab, dim)`; `None` when the classifier is the token embedding.
    pub wcls: Option<MatrixSpan>,
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
    #[error("checkpoint version {0} is not supported (this build reads v0 and v1 f32 files, v2 Q8_0 files and v3 Q4_0 files)")]
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
    /// A v2 file whose f32 scales do not start on a 4-byte boundary (possible only when the
    /// group size is not a multiple of 4); they are read in place, so this is refused.
    #[error(
        "the f32 scales of `{tensor}` start at byte {offset}, which is not 4-byte aligned (group size {group}); \
         re-quantise with a group size that is a multiple of 4"
    )]
    MisalignedScales {
        /// The tensor.
        tensor: &'static str,
        /// Where its scales start.
        offset: usize,
        /// The group size.
        group: usize,
    },
}

fn read_i32(bytes: &[u8], index: usize) -> i32 {
    i32::from_le_bytes(bytes[index * 4..index * 4 + 4].try_into().unwrap())
}

/// Lays tensors out one after another from a starting offset.
struct Cursor(usize);

impl Cursor {
    fn take(&mut self, len: usize) -> TensorSpan {
        let span = TensorSpan {
            offset: self.0,
            len,
        };
        self.0 += len * 4;
        span
    }

    fn take_quant(&mut self, len: usize, group: usize, bits: usize) -> QuantSpan {
        let span = QuantSpan {
            offset: self.0,
            len,
            group,
            bits,
        };
        self.0 = span.end();
        span
    }

    /// An f32 matrix of `layers × len` values, or `layers` Q8_0/Q4_0 spans of `len` values.
    fn matrix(&mut self, layers: usize, len: usize, quant: Option<(usize, usize)>) -> MatrixSpan {
        match quant {
            None => MatrixSpan::F32(self.take(layers * len)),
            Some((g, 8)) => {
                MatrixSpan::Q8((0..layers).map(|_| self.take_quant(len, g, 8)).collect())
            }
            Some((g, bits)) => {
                MatrixSpan::Q4((0..layers).map(|_| self.take_quant(len, g, bits)).collect())
            }
        }
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
            let format = match read_i32(bytes, 1) {
                1 => CheckpointFormat::V1,
                2 => CheckpointFormat::V2,
                3 => CheckpointFormat::V3,
                version => return Err(HeaderError::UnsupportedVersion(version)),
            };
            (format, 2, Some(bytes[SHARED_FLAG_AT] != 0))
        } else {
            (CheckpointFormat::V0, 0, None)
        };
        let names = [
            "dim",
            "hidden_dim",
            "n_layers",
            "n_heads",
            "n_kv_heads",
            "vocab_size",
            "seq_len",
        ];
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
        let weight_format = if matches!(format, CheckpointFormat::V2 | CheckpointFormat::V3) {
            let group =
                i32::from_le_bytes(bytes[GROUP_SIZE_AT..GROUP_SIZE_AT + 4].try_into().unwrap());
            if group <= 0 {
                return Err(HeaderError::NonPositive {
                    field: "group_size",
                    value: group,
                });
            }
            let group_size = group as usize;
            if format == CheckpointFormat::V2 {
                WeightFormat::Q8_0 { group_size }
            } else {
                WeightFormat::Q4_0 { group_size }
            }
        } else {
            WeightFormat::F32
        };
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
            rope_freq_scale: 1.0,
            rope_freq_factors: None,
            weight_format,
        };
        // For v2/v3 this also refuses a group size that does not divide every row length
        // (and, for v3, an odd one).
        config.validate()?;
        let layout = Self::for_config(&config, format);
        if layout.file_bytes != file_len {
            return Err(HeaderError::SizeMismatch {
                expected: layout.file_bytes,
                actual: file_len,
                shape: format!(
                    "{}, weights {}",
                    config.shape_summary(),
                    config.weight_format
                ),
                kind: if file_len < layout.file_bytes {
                    "truncated"
                } else {
                    "longer than expected"
                },
            });
        }
        for (tensor, _, span) in layout.quantized() {
            let scales = span.scales();
            if !scales.offset.is_multiple_of(4) {
                return Err(HeaderError::MisalignedScales {
                    tensor,
                    offset: scales.offset,
                    group: span.group,
                });
            }
        }
        Ok(layout)
    }

    /// The layout a file of `format` holding a model of shape `config` has.
    /// `config` must be valid (bounds keep every size far from overflow). v0 and v1 are f32
    /// whatever `config.weight_format` says (the layout's config says f32).
    ///
    /// # Panics
    /// For v2/v3 with an f32 `config`: the group size would be unknown.
    pub fn for_config(config: &ModelConfig, format: CheckpointFormat) -> Self {
        let (d, h, l, v) = (
            config.dim,
            config.hidden_dim,
            config.n_layers,
            config.vocab_size,
        );
        let kv = config.kv_dim();
        let mut config = config.clone();
        let group = match format {
            CheckpointFormat::V0 | CheckpointFormat::V1 => {
                config.weight_format = WeightFormat::F32;
                None
            }
            CheckpointFormat::V2 | CheckpointFormat::V3 => {
                let group_size = config
                    .weight_format
                    .group_size()
                    .expect("a v2/v3 layout needs a quantised config (the group size)");
                // The file's version decides the value width, whatever the config said.
                let (weight_format, bits) = if format == CheckpointFormat::V2 {
                    (WeightFormat::Q8_0 { group_size }, 8)
                } else {
                    (WeightFormat::Q4_0 { group_size }, 4)
                };
                config.weight_format = weight_format;
                Some((group_size, bits))
            }
        };
        let header_bytes = match format {
            CheckpointFormat::V0 => V0_HEADER_BYTES,
            CheckpointFormat::V1 | CheckpointFormat::V2 | CheckpointFormat::V3 => V1_HEADER_BYTES,
        };
        let mut c = Cursor(header_bytes);
        let layout = match format {
            CheckpointFormat::V0 => {
                let token_embedding = c.matrix(1, v * d, None);
                let rms_att = c.take(l * d);
                let wq = c.matrix(l, d * d, None);
                let wk = c.matrix(l, kv * d, None);
                let wv = c.matrix(l, kv * d, None);
                let wo = c.matrix(l, d * d, None);
                let rms_ffn = c.take(l * d);
                let w1 = c.matrix(l, h * d, None);
                let w2 = c.matrix(l, d * h, None);
                let w3 = c.matrix(l, h * d, None);
                let rms_final = c.take(d);
                let half = config.seq_len * config.head_dim() / 2;
                let freq_cis = Some((c.take(half), c.take(half)));
                let wcls = (!config.shared_classifier).then(|| c.matrix(1, v * d, None));
                Self {
                    format,
                    config,
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
            CheckpointFormat::V1 | CheckpointFormat::V2 | CheckpointFormat::V3 => {
                let rms_att = c.take(l * d);
                let rms_ffn = c.take(l * d);
                let rms_final = c.take(d);
                let token_embedding = c.matrix(1, v * d, group);
                let wq = c.matrix(l, d * d, group);
                let wk = c.matrix(l, kv * d, group);
                let wv = c.matrix(l, kv * d, group);
                let wo = c.matrix(l, d * d, group);
                let w1 = c.matrix(l, h * d, group);
                let w2 = c.matrix(l, d * h, group);
                let w3 = c.matrix(l, h * d, group);
                let wcls = (!config.shared_classifier).then(|| c.matrix(1, v * d, group));
                Self {
                    format,
                    config,
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
                fields
                    .iter()
                    .for_each(|f| out.extend_from_slice(&f.to_le_bytes()));
            }
            CheckpointFormat::V1 | CheckpointFormat::V2 | CheckpointFormat::V3 => {
                let version: i32 = match self.format {
                    CheckpointFormat::V1 => 1,
                    CheckpointFormat::V2 => 2,
                    _ => 3,
                };
                out.extend_from_slice(&MAGIC.to_le_bytes());
                out.extend_from_slice(&version.to_le_bytes());
                fields
                    .iter()
                    .for_each(|f| out.extend_from_slice(&f.to_le_bytes()));
                out.push(c.shared_classifier as u8);
                if let Some(group) = c.weight_format.group_size() {
                    out.extend_from_slice(&(group as i32).to_le_bytes());
                }
                out.resize(V1_HEADER_BYTES, 0);
            }
        }
        out
    }

    /// Every matrix with its name, in file order (the classifier only when stored).
    pub fn matrices(&self) -> Vec<(&'static str, &MatrixSpan)> {
        let mut v = vec![
            ("token_embedding", &self.token_embedding),
            ("wq", &self.wq),
            ("wk", &self.wk),
            ("wv", &self.wv),
            ("wo", &self.wo),
            ("w1", &self.w1),
            ("w2", &self.w2),
            ("w3", &self.w3),
        ];
        if let Some(w) = &self.wcls {
            v.push(("wcls", w));
        }
        v
    }

    /// Every f32 tensor with its name, in file order: all tensors of a v0/v1 file, the norms
    /// of a v2/v3 file (its matrices are in [`CheckpointLayout::quantized`]).
    pub fn tensors(&self) -> Vec<(&'static str, TensorSpan)> {
        let mut v = vec![
            ("rms_att", self.rms_att),
            ("rms_ffn", self.rms_ffn),
            ("rms_final", self.rms_final),
        ];
        for (name, m) in self.matrices() {
            if let MatrixSpan::F32(s) = m {
                v.push((name, *s));
            }
        }
        if let Some((re, im)) = self.freq_cis {
            v.push(("freq_cis_real", re));
            v.push(("freq_cis_imag", im));
        }
        v.sort_by_key(|(_, s)| s.offset);
        v
    }

    /// Every Q8_0 or Q4_0 matrix as `(name, layer, span)`, in file order (empty for v0/v1).
    pub fn quantized(&self) -> Vec<(&'static str, usize, QuantSpan)> {
        let mut v = Vec::new();
        for (name, m) in self.matrices() {
            if let MatrixSpan::Q8(spans) | MatrixSpan::Q4(spans) = m {
                v.extend(spans.iter().enumerate().map(|(l, s)| (name, l, *s)));
            }
        }
        v.sort_by_key(|(_, _, s)| s.offset);
        v
    }
}

/// Turns a file stem into a valid config name.
fn sanitize_name(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
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

    fn tiny_q8(group_size: usize) -> ModelConfig {
        ModelConfig {
            weight_format: WeightFormat::Q8_0 { group_size },
            ..tiny()
        }
    }

    fn tiny_q4(group_size: usize) -> ModelConfig {
        ModelConfig {
            weight_format: WeightFormat::Q4_0 { group_size },
            ..tiny()
        }
    }

    /// `(config, format)` pairs covering every format, shared and separate classifiers.
    fn all_layouts() -> Vec<CheckpointLayout> {
        let mut out = Vec::new();
        for shared in [true, false] {
            for (cfg, format) in [
                (tiny(), CheckpointFormat::V0),
                (tiny(), CheckpointFormat::V1),
                (tiny_q8(4), CheckpointFormat::V2),
                (tiny_q4(4), CheckpointFormat::V3),
            ] {
                let cfg = ModelConfig {
                    shared_classifier: shared,
                    ..cfg
                };
                out.push(CheckpointLayout::for_config(&cfg, format));
            }
        }
        out
    }

    #[test]
    fn header_round_trips_for_every_format() {
        for layout in all_layouts() {
            let parsed =
                CheckpointLayout::parse(&layout.header(), layout.file_bytes, "stories260k")
                    .unwrap();
            assert_eq!(parsed, layout);
        }
    }

    #[test]
    fn tensors_tile_the_file_exactly() {
        for layout in all_layouts() {
            let format = layout.format;
            let mut pieces: Vec<(String, usize, usize)> = layout
                .tensors()
                .iter()
                .map(|(n, s)| (n.to_string(), s.offset, s.end()))
                .collect();
            for (n, l, q) in layout.quantized() {
                pieces.push((
                    format!("{n}[{l}] values"),
                    q.offset,
                    q.offset + q.value_bytes(),
                ));
                pieces.push((format!("{n}[{l}] scales"), q.scales().offset, q.end()));
            }
            pieces.sort_by_key(|p| p.1);
            let mut at = layout.header_bytes;
            for (name, start, end) in pieces {
                assert_eq!(start, at, "{name} in {format}");
                at = end;
            }
            assert_eq!(at, layout.file_bytes, "{format}");
        }
    }

    #[test]
    fn v2_header_matches_llama2c_export() {
        // Written field by field as export.py's version2_export packs it.
        let cfg = ModelConfig {
            shared_classifier: false,
            ..tiny_q8(4)
        };
        let layout = CheckpointLayout::for_config(&cfg, CheckpointFormat::V2);
        let mut want = Vec::new();
        want.extend_from_slice(&0x616b3432u32.to_le_bytes());
        want.extend_from_slice(&2i32.to_le_bytes());
        for f in [64i32, 172, 5, 8, 4, 512, 512] {
            want.extend_from_slice(&f.to_le_bytes());
        }
        want.push(0); // not shared
        want.extend_from_slice(&4i32.to_le_bytes()); // group size at byte 37
        want.resize(256, 0);
        assert_eq!(layout.header(), want);
        // Order and sizes: norms, then embedding, then wq of every layer, ..., then wcls.
        assert_eq!(layout.rms_att.offset, 256);
        let MatrixSpan::Q8(emb) = &layout.token_embedding else {
            panic!("v2 embedding is Q8")
        };
        assert_eq!(emb[0].offset, 256 + (2 * 5 + 1) * 64 * 4);
        assert_eq!(emb[0].end() - emb[0].offset, 512 * 64 + 512 * 64 / 4 * 4);
        let MatrixSpan::Q8(wq) = &layout.wq else {
            panic!()
        };
        assert_eq!(
            (wq.len(), wq[0].offset, wq[1].offset),
            (5, emb[0].end(), wq[0].end())
        );
        let q = layout.quantized();
        assert_eq!(q.len(), 1 + 7 * 5 + 1);
        assert_eq!(
            (q[0].0, q[1].0, q[6].0, q[q.len() - 1].0),
            ("token_embedding", "wq", "wk", "wcls")
        );
    }

    #[test]
    fn v2_bad_group_sizes_are_refused() {
        let layout = CheckpointLayout::for_config(&tiny_q8(4), CheckpointFormat::V2);
        for (group, needles) in [
            (0i32, vec!["group_size", "positive"]),
            (-64, vec!["group_size", "-64"]),
            (64, vec!["`w2` rows have 172 columns", "group size 64"]),
            (3, vec!["64 columns", "group size 3"]),
        ] {
            let mut h = layout.header();
            h[37..41].copy_from_slice(&group.to_le_bytes());
            let err = CheckpointLayout::parse(&h, layout.file_bytes, "x").unwrap_err();
            let msg = err.to_string();
            assert!(
                needles.iter().all(|n| msg.contains(n)),
                "group {group}: {msg}"
            );
        }
        // Group 2 divides every row, but 2-weight groups leave scales 2 bytes off the grid.
        let odd = ModelConfig {
            dim: 66,
            n_heads: 1,
            n_kv_heads: 1,
            vocab_size: 511, // 511 * 66 int8 values = 2 (mod 4) bytes
            ..tiny_q8(2)
        };
        let layout = CheckpointLayout::for_config(&odd, CheckpointFormat::V2);
        let err = CheckpointLayout::parse(&layout.header(), layout.file_bytes, "x").unwrap_err();
        assert!(
            matches!(
                err,
                HeaderError::MisalignedScales {
                    tensor: "token_embedding",
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("multiple of 4"), "{err}");
    }

    #[test]
    fn v3_header_sizes_and_refusals() {
        let cfg = ModelConfig {
            shared_classifier: false,
            ..tiny_q4(4)
        };
        let layout = CheckpointLayout::for_config(&cfg, CheckpointFormat::V3);
        let hdr = layout.header();
        assert_eq!(&hdr[4..8], &3i32.to_le_bytes());
        assert_eq!(&hdr[37..41], &4i32.to_le_bytes());
        assert!(hdr[41..].iter().all(|&b| b == 0));
        assert_eq!(layout.format.to_string(), "baremetal v3 (Q4_0)");
        let MatrixSpan::Q4(emb) = &layout.token_embedding else {
            panic!("v3 embedding is Q4")
        };
        // Half a byte per weight, then one f32 per group of 4.
        assert_eq!(emb[0].offset, 256 + (2 * 5 + 1) * 64 * 4);
        assert_eq!(
            emb[0].end() - emb[0].offset,
            512 * 64 / 2 + 512 * 64 / 4 * 4
        );
        let norms = (2 * 5 + 1) * 64 * 4;
        let per_layer = |n: usize| n / 2 + n / 4 * 4;
        let (d, h, kv, v) = (64, 172, 32, 512);
        let want = 256
            + norms
            + 2 * per_layer(v * d)
            + 5 * (2 * per_layer(d * d) + 2 * per_layer(kv * d) + 3 * per_layer(h * d));
        assert_eq!(layout.file_bytes, want);
        let parsed = CheckpointLayout::parse(&hdr, layout.file_bytes, "x").unwrap();
        assert_eq!(
            parsed.config.weight_format,
            WeightFormat::Q4_0 { group_size: 4 }
        );
        for (len, kind) in [
            (layout.file_bytes - 1, "truncated"),
            (layout.file_bytes + 4, "longer than expected"),
        ] {
            let msg = CheckpointLayout::parse(&hdr, len, "x")
                .unwrap_err()
                .to_string();
            assert!(
                msg.contains(kind) && msg.contains("q4_0 (group 4)"),
                "{msg}"
            );
        }
        for (group, needle) in [
            (
                64i32,
                "`w2` rows have 172 columns, not a multiple of the Q4_0 group size 64",
            ),
            (3, "odd"),
            (0, "group_size"),
        ] {
            let mut bad = hdr.clone();
            bad[37..41].copy_from_slice(&group.to_le_bytes());
            let msg = CheckpointLayout::parse(&bad, layout.file_bytes, "x")
                .unwrap_err()
                .to_string();
            assert!(msg.contains(needle), "group {group}: {msg}");
        }
    }

    #[test]
    fn v2_size_is_checked_exactly() {
        let layout = CheckpointLayout::for_config(&tiny_q8(4), CheckpointFormat::V2);
        for (len, kind) in [
            (layout.file_bytes - 1, "truncated"),
            (layout.file_bytes + 4, "longer than expected"),
        ] {
            let msg = CheckpointLayout::parse(&layout.header(), len, "x")
                .unwrap_err()
                .to_string();
            assert!(
                msg.contains(kind) && msg.contains("q8_0 (group 4)"),
                "{msg}"
            );
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
        let err =
            CheckpointLayout::parse(&layout.header(), layout.file_bytes - 4, "x").unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains(&layout.file_bytes.to_string()) && msg.contains("truncated"),
            "{msg}"
        );
    }

    #[test]
    fn bad_fields_are_refused() {
        let layout = CheckpointLayout::for_config(&tiny(), CheckpointFormat::V0);
        let mut h = layout.header();
        h[8..12].copy_from_slice(&0i32.to_le_bytes());
        assert!(matches!(
            CheckpointLayout::parse(&h, layout.file_bytes, "x"),
            Err(HeaderError::NonPositive {
                field: "n_layers",
                ..
            })
        ));
        let mut h = layout.header();
        h[12..16].copy_from_slice(&7i32.to_le_bytes()); // 64 % 7 != 0
        assert!(matches!(
            CheckpointLayout::parse(&h, layout.file_bytes, "x"),
            Err(HeaderError::Invalid(
                ConfigError::DimNotDivisibleByHeads { .. }
            ))
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
        assert!(CheckpointLayout::parse(&h, layout.file_bytes, "x")
            .unwrap_err()
            .to_string()
            .contains("v2"));
        assert!(matches!(
            CheckpointLayout::parse(&h, layout.file_bytes, "x"),
            Err(HeaderError::UnsupportedVersion(7))
        ));
    }
}
