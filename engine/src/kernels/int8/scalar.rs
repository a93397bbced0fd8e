//! Portable int8 GEMV, in llama2.c `runq.c`'s order: per group an exact i32 dot product,
//! then `val += (i32 as f32) * w_scale * x_scale`, groups summed left to right.

use super::Weights;

/// See [`super::MatmulFn`] for the contract (lengths are not re-checked here); safe, and a
/// safe `fn` coerces to the table's `unsafe fn` pointer.
pub fn matmul<F: Weights>(
    out: &mut [f32],
    wq: &[F::Unit],
    ws: &[f32],
    xq: &[i8],
    xs: &[f32],
    cols: usize,
    group: usize,
) {
    let per_row = cols / group;
    let (row_units, group_units) = (cols / F::PER_UNIT, group / F::PER_UNIT);
    for (r, o) in out.iter_mut().enumerate() {
        let row = &wq[r * row_units..(r + 1) * row_units];
        let row_scales = &ws[r * per_row..(r + 1) * per_row];
        let mut val = 0.0f32;
        for (g, (w, x)) in row
            .chunks_exact(group_units)
            .zip(xq.chunks_exact(group))
            .enumerate()
        {
            val += F::dot(w, x) as f32 * row_scales[g] * xs[g];
        }
        *o = val;
    }
}
