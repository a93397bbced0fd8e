//! NEON kernels: four rows per pass share each loaded x vector; the column tail (< 4) is
//! summed in scalar.

use core::arch::aarch64::*;

const W: usize = 4;

fn tail_dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// # Safety
/// NEON must be available (always on aarch64); `w.len() == out.len() * x.len()`.
#[target_feature(enable = "neon")]
pub unsafe fn matmul(out: &mut [f32], w: &[f32], x: &[f32]) {
    let n = x.len();
    let full = n / W * W;
    let xp = x.as_ptr();
    let mut r = 0;
    while r + 4 <= out.len() {
        let p = w.as_ptr().add(r * n);
        let (p0, p1, p2, p3) = (p, p.add(n), p.add(2 * n), p.add(3 * n));
        let mut a0 = vdupq_n_f32(0.0);
        let mut a1 = vdupq_n_f32(0.0);
        let mut a2 = vdupq_n_f32(0.0);
        let mut a3 = vdupq_n_f32(0.0);
        let mut j = 0;
        while j < full {
            let xv = vld1q_f32(xp.add(j));
            a0 = vfmaq_f32(a0, vld1q_f32(p0.add(j)), xv);
            a1 = vfmaq_f32(a1, vld1q_f32(p1.add(j)), xv);
            a2 = vfmaq_f32(a2, vld1q_f32(p2.add(j)), xv);
            a3 = vfmaq_f32(a3, vld1q_f32(p3.add(j)), xv);
            j += W;
        }
        let xt = &x[full..];
        for (i, a) in [a0, a1, a2, a3].into_iter().enumerate() {
            let row = &w[(r + i) * n..(r + i + 1) * n];
            out[r + i] = vaddvq_f32(a) + tail_dot(&row[full..], xt);
        }
        r += 4;
    }
    while r < out.len() {
        out[r] = dot(&w[r * n..(r + 1) * n], x);
        r += 1;
    }
}

#[target_feature(enable = "neon")]
unsafe fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len();
    let full = n / W * W;
    let (ap, bp) = (a.as_ptr(), b.as_ptr());
    let mut acc0 = vdupq_n_f32(0.0);
    let mut acc1 = vdupq_n_f32(0.0);
    let mut j = 0;
    while j + 2 * W <= full {
        acc0 = vfmaq_f32(acc0, vld1q_f32(ap.add(j)), vld1q_f32(bp.add(j)));
        acc1 = vfmaq_f32(acc1, vld1q_f32(ap.add(j + W)), vld1q_f32(bp.add(j + W)));
        j += 2 * W;
    }
    if j < full {
        acc0 = vfmaq_f32(acc0, vld1q_f32(ap.add(j)), vld1q_f32(bp.add(j)));
    }
    vaddvq_f32(vaddq_f32(acc0, acc1)) + tail_dot(&a[full..], &b[full..])
}

/// # Safety
/// NEON must be available.
#[target_feature(enable = "neon")]
pub unsafe fn sum_squares(x: &[f32]) -> f32 {
    dot(x, x)
}
