//! Portable int8 GEMV, in llama2.c `runq.c`'s order: per group an exact i32 dot product,
//! then `val += (i32 as f32) * w_scale * x_scale`, groups summed left to right.

/// See [`super::Q8MatmulFn`] for the contract (lengths are not re-checked here).
pub fn matmul(
    out: &mut [f32],
    wq: &[i8],
    ws: &[f32],
    xq: &[i8],
    xs: &[f32],
    cols: usize,
    group: usize,
) {
    let per_row = cols / group;
    for (r, o) in out.iter_mut().enumerate() {
        let row = &wq[r * cols..(r + 1) * cols];
        let row_scales = &ws[r * per_row..(r + 1) * per_row];
        let mut val = 0.0f32;
        for (g, (w, x)) in row
            .chunks_exact(group)
            .zip(xq.chunks_exact(group))
            .enumerate()
        {
            let ival: i32 = w.iter().zip(x).map(|(&a, &b)| a as i32 * b as i32).sum();
            val += ival as f32 * row_scales[g] * xs[g];
        }
        *o = val;
    }
}

/// `scalar` is safe; this is its `unsafe fn` form for the kernel table.
///
/// # Safety
/// None beyond [`super::Q8MatmulFn`]'s length contract (which safe indexing checks anyway).
pub unsafe fn matmul_entry(
    out: &mut [f32],
    wq: &[i8],
    ws: &[f32],
    xq: &[i8],
    xs: &[f32],
    cols: usize,
    group: usize,
) {
    matmul(out, wq, ws, xq, xs, cols, group)
}
