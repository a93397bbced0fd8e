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
    use crate::kernels::q8::reference as q8;
    q8::product(
        &dequantize(wq, ws, group),
        &q8::dequantize(xq, xs, group),
        cols,
    )
}

/// `q * scale` per value of packed nibbles (`q = nibble - 8`, element `2i` low), in f64.
pub fn dequantize(q: &[u8], scales: &[f32], group: usize) -> Vec<f64> {
    q.iter()
        .flat_map(|&b| [(b & 0x0F) as i32 - 8, (b >> 4) as i32 - 8])
        .enumerate()
        .map(|(i, v)| v as f64 * scales[i / group] as f64)
        .collect()
}
