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

/// Returns `(Σ_r w[r]·rows[r][c], Σ_r |w[r]·rows[r][c]|)` per column `c` in f64; `rows` has
/// `w.len()` rows of `cols` values.
pub fn weighted_sum(w: &[f32], rows: &[f32], cols: usize) -> (Vec<f64>, Vec<f64>) {
    (0..cols)
        .map(|c| {
            w.iter().enumerate().fold((0.0, 0.0), |(s, m), (r, &a)| {
                let p = a as f64 * rows[r * cols + c] as f64;
                (s + p, m + p.abs())
            })
        })
        .unzip()
}

/// Softmax of `scale · x` in f64.
pub fn softmax(x: &[f32], scale: f64) -> Vec<f64> {
    let max = x
        .iter()
        .map(|&v| v as f64)
        .fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = x
        .iter()
        .map(|&v| ((v as f64 - max) * scale).exp())
        .collect();
    let sum: f64 = e.iter().sum();
    e.iter().map(|v| v / sum).collect()
}
