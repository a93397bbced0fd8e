//! The f64 yardstick for the Q4_0 kernels: dequantise both sides (`q * scale`, exact in f64)
//! and multiply.

/// Returns `(W·x, Σ|w·x|)` per row in f64, `W` being the dequantised Q4_0 matrix
/// (`2 * wq.len() / cols` rows of packed nibbles) and `x` the dequantised int8 input.
pub fn matmul(
    wq: &[u8],
    ws: &[f32],
    xq: &[i8],
    xs: &[f32],
    cols: usize,
    group: usize,
) -> (Vec<f64>, Vec<f64>) {
    let x: Vec<f64> = xq
        .iter()
        .enumerate()
        .map(|(i, &v)| v as f64 * xs[i / group] as f64)
        .collect();
    let w = dequantize(wq, ws, group);
    w.chunks_exact(cols)
        .map(|row| {
            row.iter().zip(&x).fold((0.0, 0.0), |(s, m), (&a, &b)| {
                let p = a * b;
                (s + p, m + p.abs())
            })
        })
        .unzip()
}

/// `q * scale` per value of packed nibbles (`q = nibble - 8`, element `2i` low), in f64.
pub fn dequantize(q: &[u8], scales: &[f32], group: usize) -> Vec<f64> {
    q.iter()
        .flat_map(|&b| [(b & 0x0F) as i32 - 8, (b >> 4) as i32 - 8])
        .enumerate()
        .map(|(i, v)| v as f64 * scales[i / group] as f64)
        .collect()
}
