use std::fmt;
use std::path::Path;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Serialize, Serializer};
use thiserror::Error;

/// Upper bounds that keep derived sizes far from overflow and reject garbage headers.
const MAX_DIM: usize = 1 << 16;
const MAX_HIDDEN: usize = 1 << 18;
const MAX_LAYERS: usize = 1 << 10;
const MAX_HEADS: usize = 1 << 10;
const MAX_VOCAB: usize = 1 << 21;
const MAX_SEQ: usize = 1 << 20;

/// How the weights are stored.
///
/// In TOML: `weight_format = "f32"`, `weight_format = { q8_0 = { group_size = 64 } }` or
/// `weight_format = { q4_0 = { group_size = 32 } }` (the strings `"q8_0"` and `"q4_0"` are
/// accepted as shorthand for the default groups, 64 and 32).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WeightFormat {
    /// 32-bit floats, as in llama2.c v0/v1 checkpoints.
    #[default]
    F32,
    /// llama2.c Q8_0 (v2 checkpoints): every matrix (and the token embedding) as int8 values
    /// with one f32 scale per `group_size` consecutive values of a row; norms stay f32.
    Q8_0 {
        /// Weights per scale. Divides every row length (`dim` and `hidden_dim`).
        group_size: usize,
    },
    /// baremetal Q4_0 (v3 checkpoints, our own format): every matrix (and the token embedding)
    /// as 4-bit values, two per byte, with one f32 scale per `group_size` consecutive values
    /// of a row; norms stay f32.
    Q4_0 {
        /// Weights per scale. Even (two values per byte) and divides every row length.
        group_size: usize,
    },
    /// Each matrix in its own format, as GGUF files store them (`llama-quantize` leaves rows
    /// that do not divide the block in another type): Q8_0 and Q4_0 blocks of `group_size`,
    /// or f32. The int8 kernels are compiled for this group in both formats; no row length has
    /// to divide it (those matrices are simply not int8).
    Mixed {
        /// Values per block of the int8 and 4-bit matrices.
        group_size: usize,
    },
}

/// llama2.c's `export.py` default group size.
pub const DEFAULT_Q8_GROUP: usize = 64;

/// The default Q4_0 group size (as GGML's Q4_0 block): 4-bit values need finer scales.
pub const DEFAULT_Q4_GROUP: usize = 32;

impl WeightFormat {
    /// The Q8_0 or Q4_0 group size, or `None` for f32.
    pub fn group_size(self) -> Option<usize> {
        match self {
            WeightFormat::F32 => None,
            WeightFormat::Q8_0 { group_size }
            | WeightFormat::Q4_0 { group_size }
            | WeightFormat::Mixed { group_size } => Some(group_size),
        }
    }

    /// Bytes a matrix of `n` weights occupies (int8 values or packed nibbles, plus f32
    /// scales, for the quantised formats).
    pub fn matrix_bytes(self, n: usize) -> usize {
        match self {
            WeightFormat::F32 => 4 * n,
            WeightFormat::Q8_0 { group_size } => n + 4 * (n / group_size.max(1)),
            WeightFormat::Q4_0 { group_size } => n / 2 + 4 * (n / group_size.max(1)),
            // Per matrix in the file; as Q8_0 here (files know their own bytes exactly).
            WeightFormat::Mixed { group_size } => n + 4 * (n / group_size.max(1)),
        }
    }
}

impl fmt::Display for WeightFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WeightFormat::F32 => f.write_str("f32"),
            WeightFormat::Q8_0 { group_size } => write!(f, "q8_0 (group {group_size})"),
            WeightFormat::Q4_0 { group_size } => write!(f, "q4_0 (group {group_size})"),
            WeightFormat::Mixed { group_size } => {
                write!(f, "mixed (q8_0/q4_0 groups of {group_size}, f32)")
            }
        }
    }
}

/// The parameters of `{ q8_0 = { ... } }` and `{ q4_0 = { ... } }`.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Q8Params {
    group_size: usize,
}

impl Serialize for WeightFormat {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match *self {
            WeightFormat::F32 => s.serialize_str("f32"),
            WeightFormat::Q8_0 { group_size } => {
                let mut m = s.serialize_map(Some(1))?;
                m.serialize_entry("q8_0", &Q8Params { group_size })?;
                m.end()
            }
            WeightFormat::Q4_0 { group_size } => {
                let mut m = s.serialize_map(Some(1))?;
                m.serialize_entry("q4_0", &Q8Params { group_size })?;
                m.end()
            }
            WeightFormat::Mixed { group_size } => {
                let mut m = s.serialize_map(Some(1))?;
                m.serialize_entry("mixed", &Q8Params { group_size })?;
                m.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for WeightFormat {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        const EXPECTED: &str = "\"f32\", \"q8_0\", \"q4_0\", { q8_0 = { group_size = N } }, { q4_0 = { group_size = N } } or { mixed = { group_size = N } }";
        impl<'de> Visitor<'de> for V {
            type Value = WeightFormat;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(EXPECTED)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<WeightFormat, E> {
                match v {
                    "f32" => Ok(WeightFormat::F32),
                    "q8_0" => Ok(WeightFormat::Q8_0 {
                        group_size: DEFAULT_Q8_GROUP,
                    }),
                    "q4_0" => Ok(WeightFormat::Q4_0 {
                        group_size: DEFAULT_Q4_GROUP,
                    }),
                    _ => Err(E::invalid_value(de::Unexpected::Str(v), &EXPECTED)),
                }
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<WeightFormat, A::Error> {
                let Some(key) = map.next_key::<String>()? else {
                    return Err(de::Error::invalid_length(0, &EXPECTED));
                };
                if key != "q8_0" && key != "q4_0" && key != "mixed" {
                    return Err(de::Error::unknown_variant(&key, &["q8_0", "q4_0", "mixed"]));
                }
                let p: Q8Params = map.next_value()?;
                if let Some(extra) = map.next_key::<String>()? {
                    return Err(de::Error::custom(format!(
                        "unexpected second weight format `{extra}`"
                    )));
                }
                let group_size = p.group_size;
                Ok(match key.as_str() {
                    "q8_0" => WeightFormat::Q8_0 { group_size },
                    "q4_0" => WeightFormat::Q4_0 { group_size },
                    _ => WeightFormat::Mixed { group_size },
                })
            }
        }
        d.deserialize_any(V)
    }
}

/// TOML floats are f64: widening an f32 prints `1e-5` as `0.000009999999747378752`. The
/// shortest decimal that reads back as the same f32 keeps `inspect` output clean and exact.
fn shortest_f32<S: serde::Serializer>(v: &f32, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(v.to_string().parse().unwrap_or(*v as f64))
}

/// [`shortest_f32`] for each value of an optional list.
fn shortest_f32s<S: serde::Serializer>(v: &Option<Vec<f32>>, s: S) -> Result<S::Ok, S::Error> {
    let shortest: Option<Vec<f64>> = v.as_ref().map(|v| {
        v.iter()
            .map(|x| x.to_string().parse().unwrap_or(*x as f64))
            .collect()
    });
    shortest.serialize(s)
}

fn default_rope_theta() -> f32 {
    10000.0
}

fn default_norm_eps() -> f32 {
    1e-5
}

fn default_true() -> bool {
    true
}

fn default_one() -> f32 {
    1.0
}

fn is_one(v: &f32) -> bool {
    *v == 1.0
}

/// The shape (and the few numeric constants) of one Llama-2-architecture model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// A short identifier, used in generated code and messages.
    pub name: String,
    /// Model (residual stream) width.
    pub dim: usize,
    /// Feed-forward hidden width.
    pub hidden_dim: usize,
    /// Number of transformer layers.
    pub n_layers: usize,
    /// Number of query heads.
    pub n_heads: usize,
    /// Number of key/value heads (grouped-query attention when fewer than `n_heads`).
    pub n_kv_heads: usize,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Maximum context length.
    pub seq_len: usize,
    /// Whether the classifier shares the token-embedding matrix.
    #[serde(default = "default_true")]
    pub shared_classifier: bool,
    /// RoPE base frequency.
    #[serde(default = "default_rope_theta", serialize_with = "shortest_f32")]
    pub rope_theta: f32,
    /// RMSNorm epsilon.
    #[serde(default = "default_norm_eps", serialize_with = "shortest_f32")]
    pub norm_eps: f32,
    /// Linear RoPE scaling: positions are multiplied by this (GGUF `rope.scaling.factor`
    /// inverted; 1 for none).
    #[serde(
        default = "default_one",
        serialize_with = "shortest_f32",
        skip_serializing_if = "is_one"
    )]
    pub rope_freq_scale: f32,
    /// Per-frequency RoPE divisors, one per rotated pair (`head_dim / 2`): Llama 3.1's
    /// frequency scaling (GGUF `rope_freqs.weight`). Absent: none.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "shortest_f32s"
    )]
    pub rope_freq_factors: Option<Vec<f32>>,
    /// Weight storage format.
    #[serde(default)]
    pub weight_format: WeightFormat,
}

/// One rule a [`ModelConfig`] broke.
#[derive(Debug, Error, PartialEq)]
pub enum ConfigError {
    /// A size field is zero.
    #[error("`{field}` must be positive, got 0")]
    Zero {
        /// The field's name.
        field: &'static str,
    },
    /// A size field exceeds its sanity bound.
    #[error("`{field}` = {value} is larger than the supported maximum {max}")]
    TooLarge {
        /// The field's name.
        field: &'static str,
        /// The value found.
        value: usize,
        /// The bound.
        max: usize,
    },
    /// `dim` is not a multiple of `n_heads`.
    #[error("dim ({dim}) must be divisible by n_heads ({n_heads})")]
    DimNotDivisibleByHeads {
        /// Model width.
        dim: usize,
        /// Query heads.
        n_heads: usize,
    },
    /// RoPE rotates pairs, so the head dimension must be even.
    #[error("head_dim = dim / n_heads = {head_dim} must be even (RoPE rotates pairs)")]
    OddHeadDim {
        /// The odd head dimension.
        head_dim: usize,
    },
    /// Grouped-query attention needs whole groups.
    #[error("n_heads ({n_heads}) must be divisible by n_kv_heads ({n_kv_heads})")]
    HeadsNotDivisibleByKvHeads {
        /// Query heads.
        n_heads: usize,
        /// Key/value heads.
        n_kv_heads: usize,
    },
    /// A float parameter is not finite and positive.
    #[error("`{field}` must be a finite positive number, got {value}")]
    BadFloat {
        /// The field's name.
        field: &'static str,
        /// The value found.
        value: f32,
    },
    /// The name cannot be used as an identifier in generated code.
    #[error("`name` {0:?} must be non-empty and contain only ASCII letters, digits, '_' or '-'")]
    BadName(String),
    /// A Q8_0 group would straddle two rows of a matrix.
    #[error(
        "`{tensor}` rows have {cols} columns, not a multiple of the Q8_0 group size {group}: \
         a group would straddle two rows (quantise with a group size that divides both dim and hidden_dim)"
    )]
    GroupStraddlesRows {
        /// The tensor(s) whose rows have `cols` columns.
        tensor: &'static str,
        /// The row length.
        cols: usize,
        /// The group size.
        group: usize,
    },
    /// A Q4_0 group would straddle two rows of a matrix.
    #[error(
        "`{tensor}` rows have {cols} columns, not a multiple of the Q4_0 group size {group}: \
         a group would straddle two rows (quantise with a group size that divides both dim and hidden_dim)"
    )]
    Q4GroupStraddlesRows {
        /// The tensor(s) whose rows have `cols` columns.
        tensor: &'static str,
        /// The row length.
        cols: usize,
        /// The group size.
        group: usize,
    },
    /// The RoPE frequency factors do not match the head dimension.
    #[error("`rope_freq_factors` has {len} values; it needs one per rotated pair, head_dim / 2 = {pairs}")]
    RopeFactors {
        /// Values given.
        len: usize,
        /// Pairs per head.
        pairs: usize,
    },
    /// Q4_0 packs two values per byte, so a group must hold an even number of them.
    #[error("Q4_0 group size {0} is odd; it must be even (two 4-bit values per byte)")]
    OddQ4Group(usize),
    /// The TOML text did not parse or had unknown/missing keys.
    #[error("{0}")]
    Toml(String),
    /// The file could not be read.
    #[error("cannot read {path}: {kind}")]
    Io {
        /// The path tried.
        path: String,
        /// The OS error.
        kind: std::io::ErrorKind,
    },
    /// Neither a readable file nor a known preset.
    #[error("{0:?} is neither a readable TOML file nor a preset name (presets: {1})")]
    UnknownPreset(String, String),
}

/// A matrix-vector product shape: `rows` outputs, each a dot product of length `cols`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GemvShape {
    /// Output length (matrix rows).
    pub rows: usize,
    /// Input length (matrix columns, the dot-product length).
    pub cols: usize,
}

impl fmt::Display for GemvShape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}x{}", self.rows, self.cols)
    }
}

impl ModelConfig {
    /// Parses and validates a TOML document.
    pub fn from_toml_str(text: &str) -> Result<Self, ConfigError> {
        let cfg: ModelConfig =
            toml::from_str(text).map_err(|e| ConfigError::Toml(e.to_string()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Reads, parses and validates a TOML file.
    pub fn from_path(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Io {
            path: path.display().to_string(),
            kind: e.kind(),
        })?;
        Self::from_toml_str(&text)
    }

    /// Serialises to TOML that [`ModelConfig::from_toml_str`] reads back.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a ModelConfig always serialises")
    }

    /// Checks every rule, returning the first one broken.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.name.is_empty()
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(ConfigError::BadName(self.name.clone()));
        }
        let sizes = [
            ("dim", self.dim, MAX_DIM),
            ("hidden_dim", self.hidden_dim, MAX_HIDDEN),
            ("n_layers", self.n_layers, MAX_LAYERS),
            ("n_heads", self.n_heads, MAX_HEADS),
            ("n_kv_heads", self.n_kv_heads, MAX_HEADS),
            ("vocab_size", self.vocab_size, MAX_VOCAB),
            ("seq_len", self.seq_len, MAX_SEQ),
        ];
        for (field, value, max) in sizes {
            if value == 0 {
                return Err(ConfigError::Zero { field });
            }
            if value > max {
                return Err(ConfigError::TooLarge { field, value, max });
            }
        }
        if !self.dim.is_multiple_of(self.n_heads) {
            return Err(ConfigError::DimNotDivisibleByHeads {
                dim: self.dim,
                n_heads: self.n_heads,
            });
        }
        if !self.head_dim().is_multiple_of(2) {
            return Err(ConfigError::OddHeadDim {
                head_dim: self.head_dim(),
            });
        }
        if !self.n_heads.is_multiple_of(self.n_kv_heads) {
            return Err(ConfigError::HeadsNotDivisibleByKvHeads {
                n_heads: self.n_heads,
                n_kv_heads: self.n_kv_heads,
            });
        }
        if let WeightFormat::Q4_0 { group_size: group } = self.weight_format {
            if group == 0 {
                return Err(ConfigError::Zero {
                    field: "group_size",
                });
            }
            if !group.is_multiple_of(2) {
                return Err(ConfigError::OddQ4Group(group));
            }
            for (tensor, cols) in [
                ("wq/wk/wv/wo/w1/w3/token_embedding", self.dim),
                ("w2", self.hidden_dim),
            ] {
                if !cols.is_multiple_of(group) {
                    return Err(ConfigError::Q4GroupStraddlesRows {
                        tensor,
                        cols,
                        group,
                    });
                }
            }
        }
        if let WeightFormat::Q8_0 { group_size: group } = self.weight_format {
            if group == 0 {
                return Err(ConfigError::Zero {
                    field: "group_size",
                });
            }
            // Row lengths: dim for the embedding, wq, wk, wv, wo, w1, w3 and the classifier;
            // hidden_dim for w2.
            for (tensor, cols) in [
                ("wq/wk/wv/wo/w1/w3/token_embedding", self.dim),
                ("w2", self.hidden_dim),
            ] {
                if !cols.is_multiple_of(group) {
                    return Err(ConfigError::GroupStraddlesRows {
                        tensor,
                        cols,
                        group,
                    });
                }
            }
        }
        if let WeightFormat::Mixed { group_size } = self.weight_format {
            if group_size == 0 || !group_size.is_multiple_of(2) {
                return Err(ConfigError::OddQ4Group(group_size));
            }
        }
        if let Some(f) = &self.rope_freq_factors {
            if f.len() != self.head_dim() / 2 {
                return Err(ConfigError::RopeFactors {
                    len: f.len(),
                    pairs: self.head_dim() / 2,
                });
            }
            if let Some(&value) = f.iter().find(|v| !(v.is_finite() && **v > 0.0)) {
                return Err(ConfigError::BadFloat {
                    field: "rope_freq_factors",
                    value,
                });
            }
        }
        for (field, value) in [
            ("rope_theta", self.rope_theta),
            ("norm_eps", self.norm_eps),
            ("rope_freq_scale", self.rope_freq_scale),
        ] {
            if !(value.is_finite() && value > 0.0) {
                return Err(ConfigError::BadFloat { field, value });
            }
        }
        Ok(())
    }

    /// Width of one attention head.
    pub fn head_dim(&self) -> usize {
        self.dim / self.n_heads
    }

    /// Width of the key/value projections.
    pub fn kv_dim(&self) -> usize {
        self.head_dim() * self.n_kv_heads
    }

    /// Query heads per key/value head.
    pub fn kv_group(&self) -> usize {
        self.n_heads / self.n_kv_heads
    }

    /// The GEMV shapes the forward pass needs, deduplicated and sorted:
    /// q/o (dim×dim), k/v (kv_dim×dim), w1/w3 (hidden×dim), w2 (dim×hidden), classifier (vocab×dim).
    pub fn gemv_shapes(&self) -> Vec<GemvShape> {
        let mut shapes = vec![
            GemvShape {
                rows: self.dim,
                cols: self.dim,
            },
            GemvShape {
                rows: self.kv_dim(),
                cols: self.dim,
            },
            GemvShape {
                rows: self.hidden_dim,
                cols: self.dim,
            },
            GemvShape {
                rows: self.dim,
                cols: self.hidden_dim,
            },
            GemvShape {
                rows: self.vocab_size,
                cols: self.dim,
            },
        ];
        shapes.sort();
        shapes.dedup();
        shapes
    }

    /// Number of f32 weights one decode step reads (every matrix once, plus the norms and
    /// one embedding row). This is the numerator of the memory roofline.
    pub fn weight_floats_per_token(&self) -> usize {
        let (d, h, kv, l) = (self.dim, self.hidden_dim, self.kv_dim(), self.n_layers);
        let per_layer = 2 * d * d + 2 * kv * d + 3 * h * d + 2 * d;
        l * per_layer + d + self.vocab_size * d + d
    }

    /// Bytes of weights one decode step reads in this config's weight format: every matrix
    /// once (int8 values or packed nibbles and their scales for Q8_0/Q4_0), the f32 norms,
    /// one embedding row.
    /// Equals `4 * weight_floats_per_token()` for f32.
    pub fn weight_bytes_per_token(&self) -> usize {
        let (d, h, kv, l) = (self.dim, self.hidden_dim, self.kv_dim(), self.n_layers);
        let m = |n: usize| self.weight_format.matrix_bytes(n);
        let per_layer = 2 * m(d * d) + 2 * m(kv * d) + 3 * m(h * d) + 2 * d * 4;
        l * per_layer + d * 4 + m(d) + m(self.vocab_size * d)
    }

    /// Number of f32 parameters the checkpoint holds (excluding v0's RoPE tables).
    pub fn parameter_count(&self) -> usize {
        let (d, h, kv, l, v) = (
            self.dim,
            self.hidden_dim,
            self.kv_dim(),
            self.n_layers,
            self.vocab_size,
        );
        let per_layer = 2 * d * d + 2 * kv * d + 3 * h * d + 2 * d;
        let cls = if self.shared_classifier { 0 } else { v * d };
        v * d + l * per_layer + d + cls
    }

    /// True when two configs describe the same tensors (the name and format may differ).
    pub fn same_shape(&self, other: &ModelConfig) -> bool {
        self.dim == other.dim
            && self.hidden_dim == other.hidden_dim
            && self.n_layers == other.n_layers
            && self.n_heads == other.n_heads
            && self.n_kv_heads == other.n_kv_heads
            && self.vocab_size == other.vocab_size
            && self.seq_len == other.seq_len
            && self.shared_classifier == other.shared_classifier
    }

    /// One-line summary: `dim 288, hidden 768, 6 layers, 6 heads (6 kv), vocab 32000, seq 256, shared classifier`.
    pub fn shape_summary(&self) -> String {
        format!(
            "dim {}, hidden {}, {} layers, {} heads ({} kv), vocab {}, seq {}, {} classifier",
            self.dim,
            self.hidden_dim,
            self.n_layers,
            self.n_heads,
            self.n_kv_heads,
            self.vocab_size,
            self.seq_len,
            if self.shared_classifier {
                "shared"
            } else {
                "separate"
            }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> ModelConfig {
        ModelConfig::from_toml_str(include_str!("../presets/stories15m.toml")).unwrap()
    }

    #[test]
    fn defaults_fill_in() {
        let c = base();
        assert_eq!(c.rope_theta, 10000.0);
        assert_eq!(c.norm_eps, 1e-5);
        assert_eq!(c.weight_format, WeightFormat::F32);
        assert_eq!(c.head_dim(), 48);
        assert_eq!(c.kv_dim(), 288);
    }

    #[test]
    fn toml_round_trip() {
        let c = base();
        assert_eq!(ModelConfig::from_toml_str(&c.to_toml()).unwrap(), c);
    }

    #[test]
    fn unknown_key_rejected() {
        let text = format!(
            "{}\nflux_capacitor = 3\n",
            include_str!("../presets/stories15m.toml")
        );
        let err = ModelConfig::from_toml_str(&text).unwrap_err();
        assert!(err.to_string().contains("flux_capacitor"), "{err}");
    }

    #[test]
    fn missing_key_rejected() {
        let err = ModelConfig::from_toml_str("name = \"x\"\ndim = 8\n").unwrap_err();
        assert!(matches!(err, ConfigError::Toml(_)), "{err}");
    }

    #[test]
    fn each_rule_has_its_error() {
        let mut c = base();
        c.dim = 0;
        assert_eq!(c.validate(), Err(ConfigError::Zero { field: "dim" }));
        let mut c = base();
        c.dim = 290;
        assert!(matches!(
            c.validate(),
            Err(ConfigError::DimNotDivisibleByHeads { .. })
        ));
        let mut c = base();
        c.dim = 30;
        c.n_heads = 10;
        c.n_kv_heads = 10;
        assert_eq!(c.validate(), Err(ConfigError::OddHeadDim { head_dim: 3 }));
        let mut c = base();
        c.n_kv_heads = 4;
        assert!(matches!(
            c.validate(),
            Err(ConfigError::HeadsNotDivisibleByKvHeads { .. })
        ));
        let mut c = base();
        c.vocab_size = 1 << 30;
        assert!(matches!(
            c.validate(),
            Err(ConfigError::TooLarge {
                field: "vocab_size",
                ..
            })
        ));
        let mut c = base();
        c.norm_eps = f32::NAN;
        assert!(matches!(
            c.validate(),
            Err(ConfigError::BadFloat {
                field: "norm_eps",
                ..
            })
        ));
        let mut c = base();
        c.name = "has space".into();
        assert!(matches!(c.validate(), Err(ConfigError::BadName(_))));
    }

    fn q8(group_size: usize) -> ModelConfig {
        ModelConfig {
            weight_format: WeightFormat::Q8_0 { group_size },
            ..base()
        }
    }

    #[test]
    fn q8_toml_round_trip_and_shorthand() {
        for g in [4, 32, 96] {
            let c = q8(g);
            let text = c.to_toml();
            assert_eq!(ModelConfig::from_toml_str(&text).unwrap(), c, "{text}");
        }
        let base_text = include_str!("../presets/stories15m.toml");
        // The shorthand means llama2.c's default group of 64 (stories110m: dim 768, hidden 2048).
        let big = include_str!("../presets/stories110m.toml");
        let short =
            ModelConfig::from_toml_str(&format!("{big}\nweight_format = \"q8_0\"\n")).unwrap();
        assert_eq!(short.weight_format, WeightFormat::Q8_0 { group_size: 64 });
        assert_eq!(ModelConfig::from_toml_str(&short.to_toml()).unwrap(), short);
        let inline = format!("{base_text}\nweight_format = {{ q8_0 = {{ group_size = 32 }} }}\n");
        assert_eq!(ModelConfig::from_toml_str(&inline).unwrap(), q8(32));
        // f32 still serialises as the plain string the code generator's snapshots show.
        assert!(base().to_toml().contains("weight_format = \"f32\""));
        for bad in [
            "weight_format = \"q4\"",
            "weight_format = { q8_0 = { group_size = 32, bits = 8 } }",
            "weight_format = { q4_0 = { group_size = 32, bits = 4 } }",
            "weight_format = { q8_0 = { } }",
        ] {
            let err = ModelConfig::from_toml_str(&format!("{base_text}\n{bad}\n")).unwrap_err();
            assert!(matches!(err, ConfigError::Toml(_)), "{bad}: {err}");
        }
    }

    fn q4(group_size: usize) -> ModelConfig {
        ModelConfig {
            weight_format: WeightFormat::Q4_0 { group_size },
            ..base()
        }
    }

    #[test]
    fn q4_toml_round_trip_shorthand_and_group_rules() {
        for g in [2, 4, 32, 96] {
            let c = q4(g);
            let text = c.to_toml();
            assert_eq!(ModelConfig::from_toml_str(&text).unwrap(), c, "{text}");
        }
        let base_text = include_str!("../presets/stories15m.toml");
        let short = ModelConfig::from_toml_str(&format!("{base_text}\nweight_format = \"q4_0\"\n"))
            .unwrap();
        assert_eq!(short, q4(32));
        let inline = format!("{base_text}\nweight_format = {{ q4_0 = {{ group_size = 16 }} }}\n");
        assert_eq!(ModelConfig::from_toml_str(&inline).unwrap(), q4(16));
        assert_eq!(
            q4(0).validate(),
            Err(ConfigError::Zero {
                field: "group_size"
            })
        );
        // 3 divides 288 and 768 but cannot be packed two per byte.
        assert_eq!(q4(3).validate(), Err(ConfigError::OddQ4Group(3)));
        let err = q4(64).validate().unwrap_err();
        assert!(
            err.to_string().contains("288 columns") && err.to_string().contains("Q4_0"),
            "{err}"
        );
        assert_eq!(q4(32).weight_format.to_string(), "q4_0 (group 32)");
        // Half a byte per weight plus a 4-byte scale per group.
        assert_eq!(q4(32).weight_format.matrix_bytes(64), 32 + 8);
    }

    #[test]
    fn q8_group_must_divide_every_row() {
        assert_eq!(q8(32).validate(), Ok(()));
        assert_eq!(
            q8(0).validate(),
            Err(ConfigError::Zero {
                field: "group_size"
            })
        );
        // stories15m: dim 288, hidden 768. 64 does not divide 288.
        let err = q8(64).validate().unwrap_err();
        assert!(
            err.to_string().contains("288 columns") && err.to_string().contains("wq"),
            "{err}"
        );
        // stories260k: dim 64, hidden 172 = 4 * 43: the w2 rows are the problem (llama2.c's case).
        let mut c =
            ModelConfig::from_toml_str(include_str!("../presets/stories260k.toml")).unwrap();
        c.weight_format = WeightFormat::Q8_0 { group_size: 64 };
        let err = c.validate().unwrap_err();
        assert_eq!(
            err,
            ConfigError::GroupStraddlesRows {
                tensor: "w2",
                cols: 172,
                group: 64
            }
        );
        assert!(
            err.to_string()
                .contains("`w2` rows have 172 columns, not a multiple of the Q8_0 group size 64"),
            "{err}"
        );
        c.weight_format = WeightFormat::Q8_0 { group_size: 4 };
        assert_eq!(c.validate(), Ok(()));
    }

    #[test]
    fn weight_bytes_per_token_per_format() {
        let c = base();
        assert_eq!(c.weight_bytes_per_token(), 4 * c.weight_floats_per_token());
        let q = q8(32);
        // One byte per weight plus one 4-byte scale per 32 weights, for every matrix and the
        // embedding row; the f32 norms are unchanged.
        let (d, h, l, v) = (288, 768, 6, 32000);
        let matrices = l * (4 * d * d + 3 * h * d) + v * d + d;
        let norms = (2 * l + 1) * d * 4;
        assert_eq!(
            q.weight_bytes_per_token(),
            matrices + matrices / 32 * 4 + norms
        );
    }

    #[test]
    fn gemv_shapes_dedup() {
        let c = base();
        let s: Vec<String> = c.gemv_shapes().iter().map(|s| s.to_string()).collect();
        assert_eq!(s, ["288x288", "288x768", "768x288", "32000x288"]);
        let gqa = ModelConfig::from_toml_str(include_str!("../presets/stories260k.toml")).unwrap();
        let s: Vec<String> = gqa.gemv_shapes().iter().map(|s| s.to_string()).collect();
        assert_eq!(s, ["32x64", "64x64", "64x172", "172x64", "512x64"]);
    }

    #[test]
    fn parameter_count_of_stories15m() {
        // 15.19M parameters per the tinyllamas release notes; computed by hand:
        // 32000*288 + 6*(2*288*288 + 2*288*288 + 3*768*288 + 2*288) + 288 = 15_191_712
        assert_eq!(base().parameter_count(), 15_191_712);
    }

    #[test]
    fn mixed_format_and_rope_scaling_round_trip_and_are_checked() {
        let mut c = ModelConfig::from_toml_str(&base().to_toml()).unwrap();
        c.weight_format = WeightFormat::Mixed { group_size: 32 };
        c.rope_freq_scale = 0.25;
        c.rope_freq_factors = Some((0..c.head_dim() / 2).map(|i| 1.0 + i as f32).collect());
        let text = c.to_toml();
        assert!(text.contains("mixed"), "{text}");
        assert_eq!(ModelConfig::from_toml_str(&text).unwrap(), c);
        assert_eq!(c.weight_format.group_size(), Some(32));
        // A mixed file's rows need not divide the block: hidden 172 with blocks of 32 is fine.
        let mut odd = c.clone();
        odd.hidden_dim = 172;
        assert!(odd.validate().is_ok());
        // Defaults leave llama2.c configs exactly as they were.
        let plain = base().to_toml();
        assert!(!plain.contains("rope_freq"), "{plain}");
        let mut bad = c.clone();
        bad.rope_freq_factors = Some(vec![1.0; 3]);
        assert!(matches!(
            bad.validate(),
            Err(ConfigError::RopeFactors { len: 3, .. })
        ));
        bad.rope_freq_factors = Some(vec![0.0; c.head_dim() / 2]);
        assert!(matches!(
            bad.validate(),
            Err(ConfigError::BadFloat {
                field: "rope_freq_factors",
                ..
            })
        ));
        bad = c.clone();
        bad.rope_freq_scale = f32::NAN;
        assert!(matches!(
            bad.validate(),
            Err(ConfigError::BadFloat {
                field: "rope_freq_scale",
                ..
            })
        ));
        bad = c;
        bad.weight_format = WeightFormat::Mixed { group_size: 3 };
        assert!(bad.validate().is_err());
    }
}
