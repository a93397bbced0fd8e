//! A GGUF file of architecture `llama` as a model: its [`ModelConfig`] from the metadata, and
//! each weight in a form the kernels run, found by name (`token_embd.weight`,
//! `blk.N.attn_q.weight`, …).
//!
//! * F32 tensors are read in place (GGUF aligns tensor data, so the mapping is zero-copy).
//! * F16 and BF16 are widened to f32 once at load (exact).
//! * Q8_0 and Q4_0 (blocks of 32 with an f16 scale) are rearranged once into baremetal's Q8_0 and
//!   Q4_0 (values apart from f32 scales, groups of 32; exact), which the generated kernels then
//!   tile as for llama2.c files.
//! * Q4_K and Q6_K are decoded and re-quantised to Q8_0 in groups of 32 (one-line notice; the
//!   re-quantisation error is well under the K-quants' own, docs/FORMATS.md).
//! * Any other type is refused, naming the tensor and its type.
//!
//! GGUF's llama Q and K rows are stored permuted for RoPE on adjacent pairs (the converter's
//! `permute`), the pairing llama2.c's `run.c` and [`crate::runtime::state::Rope`] use, so they are
//! used as they are: the stories260K GGUF files give llama2.c's greedy ids (tests).

use std::ops::Range;

use model_config::{ModelConfig, WeightFormat};
use thiserror::Error;

use super::ggml::{dequantize, GgmlType};
use super::gguf::{Gguf, GgufError, TensorInfo};
use super::quant::{quantize_weights, Q4Ref, Q8Ref};
use crate::base::aligned::{AlignedBytes, AlignedVec};

/// Values per block of GGUF's Q8_0 and Q4_0, and of what K-quants become.
pub const BLOCK: usize = 32;

/// Why a GGUF file cannot be run.
#[derive(Debug, Error)]
pub enum GgufModelError {
    /// The container is damaged.
    #[error(transparent)]
    File(#[from] GgufError),
    /// Not a llama model.
    #[error("its architecture is `{0}`; baremetal runs architecture `llama` only")]
    Architecture(String),
    /// A metadata key the model needs is missing.
    #[error("metadata key `{0}` is missing")]
    MissingKey(String),
    /// A metadata value is out of range or inconsistent.
    #[error("{0}")]
    Bad(String),
    /// A tensor the model needs is missing.
    #[error("tensor `{0}` is missing")]
    MissingTensor(String),
    /// A tensor's shape is not what the metadata says.
    #[error("tensor `{name}` has shape {found:?}, but the metadata's {what} needs {want:?} (ggml order, innermost first)")]
    TensorShape {
        /// The tensor.
        name: String,
        /// What it has.
        found: Vec<usize>,
        /// What it should have.
        want: Vec<usize>,
        /// Which metadata.
        what: &'static str,
    },
    /// A tensor type baremetal does not run.
    #[error("tensor `{name}` has type {ty}, which baremetal does not run (it runs F32, F16, BF16, Q8_0, Q4_0, Q4_K and Q6_K)")]
    Type {
        /// The tensor.
        name: String,
        /// Its type.
        ty: GgmlType,
    },
    /// The configuration derived from the metadata is invalid.
    #[error("the metadata describes an unusable model: {0}")]
    Config(#[from] model_config::ConfigError),
}

/// One weight as the kernels will read it.
pub enum Tensor {
    /// f32 values in the file, at this byte range.
    Mapped(Range<usize>),
    /// f32 values widened at load.
    F32(AlignedVec),
    /// Q8_0: int8 values and one f32 scale per [`BLOCK`].
    Q8 {
        /// Values.
        q: AlignedBytes,
        /// Scales.
        scales: AlignedVec,
    },
    /// Q4_0 in baremetal's order (element `2i` in the low nibble, stored as `q + 8`), one f32
    /// scale per [`BLOCK`].
    Q4 {
        /// Packed values.
        q: AlignedBytes,
        /// Scales.
        scales: AlignedVec,
    },
}

impl Tensor {
    /// The f32 values, for a mapped or widened tensor (`bytes` is the whole file).
    pub fn f32s<'a>(&'a self, bytes: &'a [u8]) -> Option<&'a [f32]> {
        match self {
            Tensor::Mapped(r) => {
                let b = &bytes[r.clone()];
                assert_eq!(b.as_ptr() as usize % 4, 0, "GGUF tensor data is aligned");
                // SAFETY: the range lies in the file (checked by the reader), is 4-byte aligned
                // (asserted) and any bits are a valid f32.
                Some(unsafe { std::slice::from_raw_parts(b.as_ptr().cast(), b.len() / 4) })
            }
            Tensor::F32(v) => Some(v),
            _ => None,
        }
    }

    /// As a Q8_0 matrix.
    pub fn q8(&self) -> Option<Q8Ref<'_>> {
        match self {
            Tensor::Q8 { q, scales } => Some(Q8Ref {
                q: q.as_i8(),
                scales,
                group: BLOCK,
            }),
            _ => None,
        }
    }

    /// As a Q4_0 matrix.
    pub fn q4(&self) -> Option<Q4Ref<'_>> {
        match self {
            Tensor::Q4 { q, scales } => Some(Q4Ref {
                q,
                scales,
                group: BLOCK,
            }),
            _ => None,
        }
    }

    /// Bytes a pass over it reads.
    pub fn bytes(&self) -> usize {
        match self {
            Tensor::Mapped(r) => r.len(),
            Tensor::F32(v) => 4 * v.len(),
            Tensor::Q8 { q, scales } | Tensor::Q4 { q, scales } => q.len() + 4 * scales.len(),
        }
    }
}

/// One layer's weights.
pub struct LayerTensors {
    /// `attn_norm`, `attn_q`, `attn_k`, `attn_v`, `attn_output`, `ffn_norm`, `ffn_gate`,
    /// `ffn_down`, `ffn_up`.
    pub rms_att: Tensor,
    /// Query projection.
    pub wq: Tensor,
    /// Key projection.
    pub wk: Tensor,
    /// Value projection.
    pub wv: Tensor,
    /// Output projection.
    pub wo: Tensor,
    /// FFN norm.
    pub rms_ffn: Tensor,
    /// Gate (w1).
    pub w1: Tensor,
    /// Down (w2).
    pub w2: Tensor,
    /// Up (w3).
    pub w3: Tensor,
}

/// A GGUF llama model's configuration and weights.
pub struct GgufModel {
    /// The configuration the metadata describes.
    pub config: ModelConfig,
    /// GGUF version.
    pub version: u32,
    /// Token embedding.
    pub token_embedding: Tensor,
    /// Final norm.
    pub rms_final: Tensor,
    /// `output.weight`, or `None` when tied to the embedding.
    pub output: Option<Tensor>,
    /// Per layer.
    pub layers: Vec<LayerTensors>,
    /// Every tensor's name and type as stored, in file order.
    pub types: Vec<(String, GgmlType)>,
    /// What was converted at load, for a notice.
    pub notices: Vec<String>,
}

fn get<T>(v: Result<Option<T>, GgufError>, key: &str) -> Result<T, GgufModelError> {
    v?.ok_or_else(|| GgufModelError::MissingKey(key.into()))
}

/// The model name for generated code: `general.name`'s letters, digits, `_` and `-`, others
/// as `-`; the file stem when that leaves nothing.
fn config_name(g: &Gguf, stem: &str) -> String {
    let raw = g.get_str("general.name").ok().flatten().unwrap_or(stem);
    let clean = |s: &str| -> String {
        s.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                    c
                } else {
                    '-'
                }
            })
            .collect::<String>()
            .trim_matches('-')
            .to_string()
    };
    let name = clean(raw);
    if name.is_empty() {
        let s = clean(stem);
        if s.is_empty() {
            "gguf-model".into()
        } else {
            s
        }
    } else {
        name
    }
}

/// The configuration of a llama GGUF (`stem`: the file's name, a fallback for the model name).
pub fn config(g: &Gguf, stem: &str) -> Result<ModelConfig, GgufModelError> {
    let arch = get(g.get_str("general.architecture"), "general.architecture")?;
    if arch != "llama" {
        return Err(GgufModelError::Architecture(arch.into()));
    }
    let key = |k: &str| format!("llama.{k}");
    let usize_of = |k: &str| get(g.get_usize(&key(k)), &key(k));
    let dim = usize_of("embedding_length")?;
    let n_layers = usize_of("block_count")?;
    let hidden_dim = usize_of("feed_forward_length")?;
    let n_heads = usize_of("attention.head_count")?;
    let n_kv_heads = g
        .get_usize(&key("attention.head_count_kv"))?
        .unwrap_or(n_heads);
    let seq_len = usize_of("context_length")?;
    let norm_eps = get(
        g.get_f32(&key("attention.layer_norm_rms_epsilon")),
        &key("attention.layer_norm_rms_epsilon"),
    )?;
    let rope_theta = g.get_f32(&key("rope.freq_base"))?.unwrap_or(10000.0);
    if n_heads == 0 || !dim.is_multiple_of(n_heads) {
        return Err(GgufModelError::Bad(format!(
            "llama.embedding_length {dim} is not a multiple of llama.attention.head_count {n_heads}"
        )));
    }
    let head_dim = dim / n_heads;
    for k in [
        "rope.dimension_count",
        "attention.key_length",
        "attention.value_length",
    ] {
        if let Some(v) = g.get_usize(&key(k))? {
            if v != head_dim {
                return Err(GgufModelError::Bad(format!(
                    "llama.{k} is {v}, but heads of embedding_length / head_count = {head_dim} \
                     values are all baremetal runs (partial or wider rotary heads are not supported)"
                )));
            }
        }
    }
    let rope_freq_scale = match g.get_str(&key("rope.scaling.type"))? {
        None | Some("none") => 1.0,
        Some("linear") => match g.get_f32(&key("rope.scaling.factor"))? {
            Some(f) if f.is_finite() && f > 0.0 => 1.0 / f,
            None => 1.0,
            Some(f) => {
                return Err(GgufModelError::Bad(format!(
                    "llama.rope.scaling.factor is {f}; it must be a positive number"
                )))
            }
        },
        Some(other) => {
            return Err(GgufModelError::Bad(format!(
            "llama.rope.scaling.type is `{other}`; baremetal runs linear scaling and Llama 3.1's \
                 rope_freqs only"
        )))
        }
    };
    let rope_freq_factors = match g.tensor("rope_freqs.weight") {
        None => None,
        Some(t) if t.ty == GgmlType::F32 && t.dims == [head_dim / 2] => Some(
            g.data(t)
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().expect("four bytes")))
                .collect(),
        ),
        Some(t) => {
            return Err(GgufModelError::TensorShape {
                name: t.name.into(),
                found: t.dims.clone(),
                want: vec![head_dim / 2],
                what: "head size (F32, one factor per rotated pair)",
            })
        }
    };
    let embd = g
        .tensor("token_embd.weight")
        .ok_or_else(|| GgufModelError::MissingTensor("token_embd.weight".into()))?;
    let embd_rows = embd.rows_cols().0;
    let vocab_size = match g.get_array("tokenizer.ggml.tokens")? {
        Some(tokens) if tokens.len() != embd_rows => {
            return Err(GgufModelError::Bad(format!(
                "the vocabulary has {} tokens (tokenizer.ggml.tokens) but token_embd.weight has {embd_rows} rows",
                tokens.len()
            )))
        }
        _ => embd_rows,
    };
    // The token embedding's rows are only looked up, unless it is also the classifier: then
    // a quantised embedding is a quantised matrix, which needs quantised inputs.
    let shared_classifier = g.tensor("output.weight").is_none();
    let quantised = g.tensors().iter().any(|t| {
        (t.name != "token_embd.weight" || shared_classifier)
            && !matches!(t.ty, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16)
    });
    let cfg = ModelConfig {
        name: config_name(g, stem),
        dim,
        hidden_dim,
        n_layers,
        n_heads,
        n_kv_heads,
        vocab_size,
        seq_len,
        shared_classifier,
        rope_theta,
        norm_eps,
        rope_freq_scale,
        rope_freq_factors,
        weight_format: if quantised {
            WeightFormat::Mixed { group_size: BLOCK }
        } else {
            WeightFormat::F32
        },
    };
    cfg.validate()?;
    Ok(cfg)
}

/// Converts tensor `t` into a form the kernels run; `matrix` says whether it is a matrix
/// (quantised types allowed) or a vector (f32-like only).
fn convert(
    g: &Gguf,
    t: &TensorInfo,
    notices: &mut Vec<String>,
    matrix: bool,
) -> Result<Tensor, GgufModelError> {
    let data = g.data(t);
    let n = t.elements();
    let refuse = || GgufModelError::Type {
        name: t.name.into(),
        ty: t.ty,
    };
    Ok(match t.ty {
        // Read in place when 4-byte aligned (the mapping starts on a page boundary). A
        // `general.alignment` of 1 or 2 is a power of two, which llama.cpp accepts, and may put
        // an F32 tensor off the grid: that one is copied.
        GgmlType::F32 if t.range.start.is_multiple_of(4) => Tensor::Mapped(t.range.clone()),
        GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => {
            let mut v = AlignedVec::zeros(n);
            dequantize(t.ty, data, &mut v);
            Tensor::F32(v)
        }
        _ if !matrix => return Err(refuse()),
        GgmlType::Q8_0 => {
            let (mut q, mut scales) = (AlignedBytes::zeros(n), AlignedVec::zeros(n / BLOCK));
            for ((b, q), s) in data
                .chunks_exact(34)
                .zip(q.chunks_exact_mut(BLOCK))
                .zip(scales.iter_mut())
            {
                *s = crate::base::fp16::to_f32(u16::from_le_bytes([b[0], b[1]]));
                q.copy_from_slice(&b[2..34]);
            }
            Tensor::Q8 { q, scales }
        }
        GgmlType::Q4_0 => {
            let (mut q, mut scales) = (AlignedBytes::zeros(n / 2), AlignedVec::zeros(n / BLOCK));
            for ((b, q), s) in data
                .chunks_exact(18)
                .zip(q.chunks_exact_mut(BLOCK / 2))
                .zip(scales.iter_mut())
            {
                *s = crate::base::fp16::to_f32(u16::from_le_bytes([b[0], b[1]]));
                // GGUF: element j is the low nibble of byte j, element j + 16 the high one;
                // baremetal: elements 2i and 2i + 1 share byte i. Both store q + 8.
                let nibble = |e: usize| {
                    if e < 16 {
                        b[2 + e] & 0x0F
                    } else {
                        b[2 + e - 16] >> 4
                    }
                };
                for (i, out) in q.iter_mut().enumerate() {
                    *out = nibble(2 * i) | (nibble(2 * i + 1) << 4);
                }
            }
            Tensor::Q4 { q, scales }
        }
        GgmlType::Q4_K | GgmlType::Q6_K => {
            let mut f = vec![0f32; n];
            dequantize(t.ty, data, &mut f);
            let (mut q, mut scales) = (AlignedBytes::zeros(n), AlignedVec::zeros(n / BLOCK));
            quantize_weights(&f, BLOCK, q.as_i8_mut(), &mut scales);
            let note = format!(
                "{} tensors are converted to Q8_0 (groups of {BLOCK}) at load: baremetal has no {0} kernels",
                t.ty.name()
            );
            if !notices.contains(&note) {
                notices.push(note);
            }
            Tensor::Q8 { q, scales }
        }
        _ => return Err(refuse()),
    })
}

/// Reads the weights of `g` for configuration `cfg` (from [`config`]), checking every shape.
pub fn load(g: &Gguf, cfg: ModelConfig) -> Result<GgufModel, GgufModelError> {
    let (d, h, kv) = (cfg.dim, cfg.hidden_dim, cfg.kv_dim());
    let mut notices = Vec::new();
    let mut take = |name: &str, want: &[usize], what: &'static str, matrix: bool| {
        let t = g
            .tensor(name)
            .ok_or_else(|| GgufModelError::MissingTensor(name.into()))?;
        if t.dims != want {
            return Err(GgufModelError::TensorShape {
                name: name.into(),
                found: t.dims.clone(),
                want: want.to_vec(),
                what,
            });
        }
        convert(g, t, &mut notices, matrix)
    };
    let vocab = cfg.vocab_size;
    let token_embedding = take(
        "token_embd.weight",
        &[d, vocab],
        "embedding_length × vocabulary",
        true,
    )?;
    let rms_final = take("output_norm.weight", &[d], "embedding_length", false)?;
    let output = if cfg.shared_classifier {
        None
    } else {
        Some(take(
            "output.weight",
            &[d, vocab],
            "embedding_length × vocabulary",
            true,
        )?)
    };
    let mut layers = Vec::with_capacity(cfg.n_layers);
    for l in 0..cfg.n_layers {
        let mut t = |part: &str, want: &[usize], what: &'static str, matrix: bool| {
            take(&format!("blk.{l}.{part}.weight"), want, what, matrix)
        };
        layers.push(LayerTensors {
            rms_att: t("attn_norm", &[d], "embedding_length", false)?,
            wq: t("attn_q", &[d, d], "embedding_length", true)?,
            wk: t("attn_k", &[d, kv], "head_count_kv", true)?,
            wv: t("attn_v", &[d, kv], "head_count_kv", true)?,
            wo: t("attn_output", &[d, d], "embedding_length", true)?,
            rms_ffn: t("ffn_norm", &[d], "embedding_length", false)?,
            w1: t("ffn_gate", &[d, h], "feed_forward_length", true)?,
            w2: t("ffn_down", &[h, d], "feed_forward_length", true)?,
            w3: t("ffn_up", &[d, h], "feed_forward_length", true)?,
        });
    }
    Ok(GgufModel {
        config: cfg,
        version: g.version,
        token_embedding,
        rms_final,
        output,
        layers,
        types: g
            .tensors()
            .iter()
            .map(|t| (t.name.to_string(), t.ty))
            .collect(),
        notices,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::gguf::tests::Writer;

    /// `general.alignment = 1` (a power of two, so accepted) put F32 tensors at odd offsets,
    /// and reading one in place panicked on its alignment assert (found while fuzzing; the
    /// fuzz seeds had no `general.alignment` for a mutation to change).
    #[test]
    fn f32_tensors_off_the_4_byte_grid_are_copied() {
        let values = [1.5f32, -2.0, 3.25];
        let data: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        // Key names of different lengths move the data section over every residue mod 4.
        let mut off_grid = 0;
        for pad in 0..4 {
            let mut w = Writer::new()
                .u32("general.alignment", 1)
                .str(&"k".repeat(1 + pad), "v")
                .tensor("t", &[3], 0, data.clone());
            w.alignment = 1;
            let bytes = w.bytes();
            let g = Gguf::parse(&bytes).unwrap();
            let t = g.tensor("t").unwrap();
            off_grid += usize::from(!t.range.start.is_multiple_of(4));
            let tensor = convert(&g, t, &mut Vec::new(), false).unwrap();
            assert_eq!(
                tensor.f32s(&bytes).unwrap(),
                values,
                "data at byte {}",
                t.range.start
            );
        }
        assert_eq!(off_grid, 3);
    }
}
