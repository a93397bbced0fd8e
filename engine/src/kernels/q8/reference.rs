//! The f64 yardstick for the int8 kernels: dequantise (`q * scale`, exact in f64) and multiply.

/// Returns `(W·x, Σ|w·x|)` per row in f64, `W` and `x` being the dequantised values of a
/// Q8_0 matrix (`wq.len() / cols` rows) and vector.
pub fn matmul(
    wq: &[i8],
    ws: &[f32],
    xq: &[i8],
    xs: &[f32],
    cols: usize,
    group: usize,
) -> (Vec<f64>, Vec<f64>) {
    product(&dequantize(wq, ws, group), &dequantize(xq, xs, group), cols)
}

/// `(W·x, Σ|w·x|)` per row of the row-major `w` (rows of `cols`) in f64.
pub fn product(w: &[f64], x: &[f64], cols: usize) -> (Vec<f64>, Vec<f64>) {
    w.chunks_exact(cols)
        .map(|row| {
            row.iter().zip(x).fold((0.0, 0.0), |(s, m), (&a, &b)| {
                let p = a * b;
                (s + p, m + p.abs())
            })
        })
        .unzip()
}

/// `q * scale` per value, in f64.
pub fn dequantize(q: &[i8], scales: &[f32], group: usize) -> Vec<f64> {
    q.iter()
        .enumerate()
        .map(|(i, &v)| v as f64 * scales[i / group] as f64)
        .collect()
}
