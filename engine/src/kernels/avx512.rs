//! AVX-512F kernels: four rows per pass share each loaded x vector (four weight streams in
//! flight), and the column tail is one masked load rather than a scalar loop.

use core::arch::x86_64::*;

const W: usize = 16;

#[target_feature(enable = "avx512f")]
unsafe fn tail_mask(n: usize) -> __mmask16 {
    ((1u32 << (n % W)) - 1) as __mmask16
}

/// # Safety
/// AVX-512F must be available; `w.len() == out.len() * x.len()`.
#[target_feature(enable = "avx512f")]
pub unsafe fn matmul(out: &mut [f32], w: &[f32], x: &[f32]) {
    let n = x.len();
    let full = n / W * W;
    let mask = tail_mask(n);
    let xp = x.as_ptr();
    let mut r = 0;
    while r + 4 <= out.len() {
        let p = w.as_ptr().add(r * n);
        let (p0, p1, p2, p3) = (p, p.add(n), p.add(2 * n), p.add(3 * n));
        let mut a0 = _mm512_setzero_ps();
        let mut a1 = _mm512_setzero_ps();
        let mut a2 = _mm512_setzero_ps();
        let mut a3 = _mm512_setzero_ps();
        let mut j = 0;
        while j < full {
            let xv = _mm512_loadu_ps(xp.add(j));
            a0 = _mm512_fmadd_ps(_mm512_loadu_ps(p0.add(j)), xv, a0);
            a1 = _mm512_fmadd_ps(_mm512_loadu_ps(p1.add(j)), xv, a1);
            a2 = _mm512_fmadd_ps(_mm512_loadu_ps(p2.add(j)), xv, a2);
            a3 = _mm512_fmadd_ps(_mm512_loadu_ps(p3.add(j)), xv, a3);
            j += W;
        }
        if full < n {
            let xv = _mm512_maskz_loadu_ps(mask, xp.add(full));
            a0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(mask, p0.add(full)), xv, a0);
            a1 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(mask, p1.add(full)), xv, a1);
            a2 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(mask, p2.add(full)), xv, a2);
            a3 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(mask, p3.add(full)), xv, a3);
        }
        out[r] = _mm512_reduce_add_ps(a0);
        out[r + 1] = _mm512_reduce_add_ps(a1);
        out[r + 2] = _mm512_reduce_add_ps(a2);
        out[r + 3] = _mm512_reduce_add_ps(a3);
        r += 4;
    }
    while r < out.len() {
        out[r] = dot(w.as_ptr().add(r * n), xp, n, mask);
        r += 1;
    }
}

#[target_feature(enable = "avx512f")]
unsafe fn dot(a: *const f32, b: *const f32, n: usize, mask: __mmask16) -> f32 {
    let full = n / W * W;
    let mut acc0 = _mm512_setzero_ps();
    let mut acc1 = _mm512_setzero_ps();
    let mut j = 0;
    while j + 2 * W <= full {
        acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(a.add(j)), _mm512_loadu_ps(b.add(j)), acc0);
        acc1 = _mm512_fmadd_ps(
            _mm512_loadu_ps(a.add(j + W)),
            _mm512_loadu_ps(b.add(j + W)),
            acc1,
        );
        j += 2 * W;
    }
    if j < full {
        acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(a.add(j)), _mm512_loadu_ps(b.add(j)), acc0);
    }
    if full < n {
        let av = _mm512_maskz_loadu_ps(mask, a.add(full));
        let bv = _mm512_maskz_loadu_ps(mask, b.add(full));
        acc1 = _mm512_fmadd_ps(av, bv, acc1);
    }
    _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1))
}

/// # Safety
/// AVX-512F must be available.
#[target_feature(enable = "avx512f")]
pub unsafe fn sum_squares(x: &[f32]) -> f32 {
    dot(x.as_ptr(), x.as_ptr(), x.len(), tail_mask(x.len()))
}
