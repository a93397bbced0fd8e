use std::path::Path;

use crate::{ConfigError, ModelConfig};

/// The presets shipped in `model-config/presets/`, as `(name, toml text)`.
pub const PRESETS: &[(&str, &str)] = &[
    ("stories260k", include_str!("../presets/stories260k.toml")),
    ("stories15m", include_str!("../presets/stories15m.toml")),
    ("stories42m", include_str!("../presets/stories42m.toml")),
    ("stories110m", include_str!("../presets/stories110m.toml")),
];

/// Names of all presets, comma-separated, for messages.
pub fn preset_names() -> String {
    PRESETS
        .iter()
        .map(|(n, _)| *n)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The preset called `name` (case-insensitive), if there is one.
pub fn preset(name: &str) -> Option<ModelConfig> {
    let lower = name.to_ascii_lowercase();
    PRESETS
        .iter()
        .find(|(n, _)| *n == lower)
        .map(|(_, text)| ModelConfig::from_toml_str(text).expect("presets are valid"))
}

/// Resolves a `MODEL_CONFIG`-style value: an existing file path, else a preset name.
pub fn resolve(spec: &str) -> Result<ModelConfig, ConfigError> {
    resolve_with_origin(spec).map(|(cfg, _)| cfg)
}

/// Like [`resolve`], also returning the file that was read (`None` for a preset).
pub fn resolve_with_origin(
    spec: &str,
) -> Result<(ModelConfig, Option<std::path::PathBuf>), ConfigError> {
    let path = Path::new(spec);
    if path.is_file() {
        return ModelConfig::from_path(path).map(|c| (c, Some(path.to_path_buf())));
    }
    if let Some(cfg) = preset(spec) {
        return Ok((cfg, None));
    }
    if spec.ends_with(".toml") || spec.contains('/') {
        // Looks like a path: report the I/O problem rather than "unknown preset".
        return ModelConfig::from_path(path).map(|c| (c, Some(path.to_path_buf())));
    }
    Err(ConfigError::UnknownPreset(spec.to_string(), preset_names()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_have_published_shapes() {
        let shape = |n: &str| {
            let c = preset(n).unwrap();
            assert_eq!(c.name, n);
            (
                c.dim,
                c.hidden_dim,
                c.n_layers,
                c.n_heads,
                c.n_kv_heads,
                c.vocab_size,
                c.seq_len,
            )
        };
        assert_eq!(shape("stories15m"), (288, 768, 6, 6, 6, 32000, 256));
        assert_eq!(shape("stories42m"), (512, 1376, 8, 8, 8, 32000, 1024));
        assert_eq!(shape("stories110m"), (768, 2048, 12, 12, 12, 32000, 1024));
        assert_eq!(shape("stories260k"), (64, 172, 5, 8, 4, 512, 512));
    }

    #[test]
    fn resolve_preset_and_errors() {
        assert_eq!(resolve("STORIES15M").unwrap().dim, 288);
        let e = resolve("nope").unwrap_err().to_string();
        assert!(e.contains("stories110m"), "{e}");
        let e = resolve("missing/dir/x.toml").unwrap_err().to_string();
        assert!(e.contains("missing/dir/x.toml"), "{e}");
    }
}
