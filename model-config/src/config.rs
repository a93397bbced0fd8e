use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Upper bounds that keep derived sizes far from overflow and reject garbage headers.
const MAX_DIM: usize = 1 << 16;
const MAX_HIDDEN: usize = 1 << 18;
const MAX_LAYERS: usize = 1 << 10;
const MAX_HEADS: usize = 1 << 10;
const MAX_VOCAB: usize = 1 << 21;
const MAX_SEQ: usize = 1 << 20;

/// How the weights are stored. Only f32 exists today; quantised formats join this enum.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum WeightFormat {
    /// 32-bit floats, as in llama2.c v0/v1 checkpoints.
    #[default]
    F32,
}

impl fmt::Display for WeightFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WeightFormat::F32 => f.write_str("f32"),
        }
    }
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
    #[serde(default = "default_rope_theta")]
    pub rope_theta: f32,
    /// RMSNorm epsilon.
    #[serde(default = "default_norm_eps")]
    pub norm_eps: f32,
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
        let cfg: ModelConfig = toml::from_str(text).map_err(|e| ConfigError::Toml(e.to_string()))?;
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
        for (field, value) in [("rope_theta", self.rope_theta), ("norm_eps", self.norm_eps)] {
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
            GemvShape { rows: self.dim, cols: self.dim },
            GemvShape { rows: self.kv_dim(), cols: self.dim },
            GemvShape { rows: self.hidden_dim, cols: self.dim },
            GemvShape { rows: self.dim, cols: self.hidden_dim },
            GemvShape { rows: self.vocab_size, cols: self.dim },
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
            if self.shared_classifier { "shared" } else { "separate" }
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
        let text = format!("{}\nflux_capacitor = 3\n", include_str!("../presets/stories15m.toml"));
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
        assert!(matches!(c.validate(), Err(ConfigError::DimNotDivisibleByHeads { .. })));
        let mut c = base();
        c.dim = 30;
        c.n_heads = 10;
        c.n_kv_heads = 10;
        assert_eq!(c.validate(), Err(ConfigError::OddHeadDim { head_dim: 3 }));
        let mut c = base();
        c.n_kv_heads = 4;
        assert!(matches!(c.validate(), Err(ConfigError::HeadsNotDivisibleByKvHeads { .. })));
        let mut c = base();
        c.vocab_size = 1 << 30;
        assert!(matches!(c.validate(), Err(ConfigError::TooLarge { field: "vocab_size", .. })));
        let mut c = base();
        c.norm_eps = f32::NAN;
        assert!(matches!(c.validate(), Err(ConfigError::BadFloat { field: "norm_eps", .. })));
        let mut c = base();
        c.name = "has space".into();
        assert!(matches!(c.validate(), Err(ConfigError::BadName(_))));
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
}
