//! AVX2+FMA kernels: four rows per pass share each loaded x vector; the column tail (< 8)
//! is summed in scalar.

use core::arch::x86_64::*;

const W: usize = 8;

#[target_feature(enable = "avx2,fma")]
unsafe fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    _mm_cvtss_f32(s)
}

fn tail_dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// # Safety
/// AVX2 and FMA must be available; `w.len() == out.len() * x.len()`.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn matmul(out: &mut [f32], w: &[f32], x: &[f32]) {
    let n = x.len();
    let full = n / W * W;
    let xp = x.as_ptr();
    let mut r = 0;
    while r + 4 <= out.len() {
        let p = w.as_ptr().add(r * n);
        let (p0, p1, p2, p3) = (p, p.add(n), p.add(2 * n), p.add(3 * n));
        let mut a0 = _mm256_setzero_ps();
        let mut a1 = _mm256_setzero_ps();
        let mut a2 = _mm256_setzero_ps();
        let mut a3 = _mm256_setzero_ps();
        let mut j = 0;
        while j < full {
            let xv = _mm256_loadu_ps(xp.add(j));
            a0 = _mm256_fmadd_ps(_mm256_loadu_ps(p0.add(j)), xv, a0);
            a1 = _mm256_fmadd_ps(_mm256_loadu_ps(p1.add(j)), xv, a1);
            a2 = _mm256_fmadd_ps(_mm256_loadu_ps(p2.add(j)), xv, a2);
            a3 = _mm256_fmadd_ps(_mm256_loadu_ps(p3.add(j)), xv, a3);
            j += W;
        }
        let xt = &x[full..];
        for (i, a) in [a0, a1, a2, a3].into_iter().enumerate() {
            let row = &w[(r + i) * n..(r + i + 1) * n];
            out[r + i] = hsum(a) + tail_dot(&row[full..], xt);
        }
        r += 4;
    }
    while r < out.len() {
        out[r] = dot(&w[r * n..(r + 1) * n], x);
        r += 1;
    }
}

#[target_feature(enable = "avx2,fma")]
unsafe fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len();
    let full = n / W * W;
    let (ap, bp) = (a.as_ptr(), b.as_ptr());
    let mut acc0 = _mm256_setzero_ps();
    let mut acc1 = _mm256_setzero_ps();
    let mut j = 0;
    while j + 2 * W <= full {
        acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(ap.add(j)), _mm256_loadu_ps(bp.add(j)), acc0);
        acc1 = _mm256_fmadd_ps(
            _mm256_loadu_ps(ap.add(j + W)),
            _mm256_loadu_ps(bp.add(j + W)),
            acc1,
        );
        j += 2 * W;
    }
    if j < full {
        acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(ap.add(j)), _mm256_loadu_ps(bp.add(j)), acc0);
    }
    hsum(_mm256_add_ps(acc0, acc1)) + tail_dot(&a[full..], &b[full..])
}

/// # Safety
/// AVX2 and FMA must be available.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn sum_squares(x: &[f32]) -> f32 {
    dot(x, x)
}
