//! The GEMV shapes a config needs, each with the weights that use it (for doc comments).

use model_config::ModelConfig;

/// One distinct matrix shape and the weight matrices of that shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Shape {
    /// Matrix rows (outputs).
    pub rows: usize,
    /// Matrix columns (the dot-product length).
    pub cols: usize,
    /// Names of the weights with this shape, e.g. `["wq", "wo"]`.
    pub roles: Vec<&'static str>,
}

impl Shape {
    /// `768x768`, the suffix of the per-shape function names.
    pub fn suffix(&self) -> String {
        format!("{}x{}", self.rows, self.cols)
    }

    /// `768×768 (wq, wo)`, for docs.
    pub fn describe(&self) -> String {
        format!("{}×{} ({})", self.rows, self.cols, self.roles.join(", "))
    }
}

/// The config's distinct GEMV shapes in `ModelConfig::gemv_shapes` order.
pub(crate) fn shapes(cfg: &ModelConfig) -> Vec<Shape> {
    let (d, kv, h, v) = (cfg.dim, cfg.kv_dim(), cfg.hidden_dim, cfg.vocab_size);
    let uses: [(&str, usize, usize); 8] = [
        ("wq", d, d),
        ("wk", kv, d),
        ("wv", kv, d),
        ("wo", d, d),
        ("w1", h, d),
        ("w2", d, h),
        ("w3", h, d),
        ("classifier", v, d),
    ];
    cfg.gemv_shapes()
        .into_iter()
        .map(|s| Shape {
            rows: s.rows,
            cols: s.cols,
            roles: uses
                .iter()
                .filter(|(_, r, c)| (*r, *c) == (s.rows, s.cols))
                .map(|(name, _, _)| *name)
                .collect(),
        })
        .collect()
}

/// The distinct column counts, ascending: SIMD emitters write one body per column count
/// because the row count only bounds the row loop.
pub(crate) fn distinct_cols(shapes: &[Shape]) -> Vec<usize> {
    let mut cols: Vec<usize> = shapes.iter().map(|s| s.cols).collect();
    cols.sort_unstable();
    cols.dedup();
    cols
}
