//! Portable Q4_0 GEMV, in the order of the int8 scalar kernel: per group an exact i32 dot
//! product of the unpacked 4-bit weights with the int8 input, then
//! `val += (i32 as f32) * w_scale * x_scale`, groups summed left to right.

/// See [`super::Q4MatmulFn`] for the contract (lengths are not re-checked here).
pub fn matmul(
    out: &mut [f32],
    wq: &[u8],
    ws: &[f32],
    xq: &[i8],
    xs: &[f32],
    cols: usize,
    group: usize,
) {
    let per_row = cols / group;
    for (r, o) in out.iter_mut().enumerate() {
        let row = &wq[r * cols / 2..(r + 1) * cols / 2];
        let row_scales = &ws[r * per_row..(r + 1) * per_row];
        let mut val = 0.0f32;
        for (g, (w, x)) in row
            .chunks_exact(group / 2)
            .zip(xq.chunks_exact(group))
            .enumerate()
        {
            let ival: i32 = w
                .iter()
                .zip(x.chunks_exact(2))
                .map(|(&b, x)| {
                    let lo = (b & 0x0F) as i32 - 8;
                    let hi = (b >> 4) as i32 - 8;
                    lo * x[0] as i32 + hi * x[1] as i32
                })
                .sum();
            val += ival as f32 * row_scales[g] * xs[g];
        }
        *o = val;
    }
}

/// `scalar` is safe; this is its `unsafe fn` form for the kernel table.
///
/// # Safety
/// None beyond [`super::Q4MatmulFn`]'s length contract (which safe indexing checks anyway).
pub unsafe fn matmul_entry(
    out: &mut [f32],
    wq: &[u8],
    ws: &[f32],
    xq: &[i8],
    xs: &[f32],
    cols: usize,
    group: usize,
) {
    matmul(out, wq, ws, xq, xs, cols, group)
}
