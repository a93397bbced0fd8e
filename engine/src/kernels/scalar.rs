//! Portable kernels: eight independent partial sums so the compiler can vectorise and
//! the FMA/add latency is hidden even without explicit SIMD.

const LANES: usize = 8;

fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    let (ac, at) = a.as_chunks::<LANES>();
    let (bc, bt) = b.as_chunks::<LANES>();
    for (x, y) in ac.iter().zip(bc) {
        for l in 0..LANES {
            acc[l] += x[l] * y[l];
        }
    }
    let tail: f32 = at.iter().zip(bt).map(|(x, y)| x * y).sum();
    acc.iter().sum::<f32>() + tail
}

pub fn matmul(out: &mut [f32], w: &[f32], x: &[f32]) {
    for (o, row) in out.iter_mut().zip(w.chunks_exact(x.len())) {
        *o = dot(row, x);
    }
}

pub fn sum_squares(x: &[f32]) -> f32 {
    dot(x, x)
}

pub fn weighted_sum(out: &mut [f32], weights: &[f32], rows: &[f32]) {
    out.fill(0.0);
    for (&w, row) in weights.iter().zip(rows.chunks_exact(out.len().max(1))) {
        for (o, &v) in out.iter_mut().zip(row) {
            *o += w * v;
        }
    }
}

/// Keeps `f32::exp`: this is the fallback for CPUs without SIMD, not a hot path.
pub fn softmax(x: &mut [f32], scale: f32) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for v in x.iter_mut() {
        *v = ((*v - max) * scale).exp();
        sum += *v;
    }
    x.iter_mut().for_each(|v| *v /= sum);
}
