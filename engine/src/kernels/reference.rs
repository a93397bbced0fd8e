//! Plain f64 reference implementations: slow, obvious, and the yardstick for every kernel.

/// Returns `(W·x, Σ|w·x|)` per row in f64; `W` has `w.len() / x.len()` rows.
pub fn matmul(w: &[f32], x: &[f32]) -> (Vec<f64>, Vec<f64>) {
    w.chunks_exact(x.len())
        .map(|row| {
            row.iter().zip(x).fold((0.0, 0.0), |(s, m), (&a, &b)| {
                let p = a as f64 * b as f64;
                (s + p, m + p.abs())
            })
        })
        .unzip()
}

/// llama2.c RMSNorm in f64.
pub fn rmsnorm(x: &[f32], weight: &[f32], eps: f64) -> Vec<f64> {
    let ss = x.iter().map(|&v| v as f64 * v as f64).sum::<f64>() / x.len() as f64;
    let scale = 1.0 / (ss + eps).sqrt();
    x.iter()
        .zip(weight)
        .map(|(&v, &w)| w as f64 * scale * v as f64)
        .collect()
}
