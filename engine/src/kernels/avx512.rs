//! AVX-512F kernels: four rows per pass share each loaded x vector (four weight streams in
//! flight), and the column tail is one masked load rather than a scalar loop.

use super::Elem;
use core::arch::x86_64::*;

const W: usize = 16;

#[target_feature(enable = "avx512f")]
unsafe fn tail_mask(n: usize) -> __mmask16 {
    ((1u32 << (n % W)) - 1) as __mmask16
}

/// The vector loads of an [`Elem`], so each kernel below is one body for f32 and f16 rows.
trait Load: Elem {
    /// `W` values at `p`, as f32.
    unsafe fn load(p: *const Self) -> __m512;
    /// The first `k` (`1..=W`) values at `p`, zero-padded; `mask` holds lanes `0..k`.
    unsafe fn load_first(p: *const Self, k: usize, mask: __mmask16) -> __m512;
    /// A lone row's dot product with `x` (the rows after the four-row passes; `mask` is
    /// `tail_mask(n)`), each type in its own accumulation order, which its results are
    /// pinned to.
    unsafe fn dot_row(row: *const Self, x: *const f32, n: usize, mask: __mmask16) -> f32;
}

impl Load for f32 {
    #[inline(always)]
    unsafe fn load(p: *const f32) -> __m512 {
        _mm512_loadu_ps(p)
    }

    #[inline(always)]
    unsafe fn load_first(p: *const f32, _: usize, mask: __mmask16) -> __m512 {
        _mm512_maskz_loadu_ps(mask, p)
    }

    #[inline(always)]
    unsafe fn dot_row(row: *const f32, x: *const f32, n: usize, mask: __mmask16) -> f32 {
        dot(row, x, n, mask)
    }
}

impl Load for u16 {
    #[inline(always)]
    unsafe fn load(p: *const u16) -> __m512 {
        _mm512_cvtph_ps(_mm256_loadu_si256(p.cast()))
    }

    /// A short tail goes through a small copy: AVX-512F has no masked 16-bit load (that is
    /// AVX-512BW).
    #[inline(always)]
    unsafe fn load_first(p: *const u16, k: usize, _: __mmask16) -> __m512 {
        if k == W {
            return Self::load(p);
        }
        let mut t = [0u16; W];
        std::ptr::copy_nonoverlapping(p, t.as_mut_ptr(), k);
        Self::load(t.as_ptr())
    }

    #[inline(always)]
    unsafe fn dot_row(row: *const u16, x: *const f32, n: usize, mask: __mmask16) -> f32 {
        let full = n / W * W;
        let mut a = _mm512_setzero_ps();
        let mut j = 0;
        while j < full {
            a = _mm512_fmadd_ps(Self::load(row.add(j)), _mm512_loadu_ps(x.add(j)), a);
            j += W;
        }
        if full < n {
            let xv = _mm512_maskz_loadu_ps(mask, x.add(full));
            a = _mm512_fmadd_ps(Self::load_first(row.add(full), n - full, mask), xv, a);
        }
        _mm512_reduce_add_ps(a)
    }
}

/// # Safety
/// AVX-512F must be available; `w.len() == out.len() * x.len()`.
#[target_feature(enable = "avx512f")]
pub unsafe fn matmul(out: &mut [f32], w: &[f32], x: &[f32]) {
    matmul_of(out, w, x)
}

/// `matmul` over binary16 rows (the f16 key cache).
///
/// # Safety
/// AVX-512F must be available; `w.len() == out.len() * x.len()`.
#[target_feature(enable = "avx512f")]
pub unsafe fn matmul_f16(out: &mut [f32], w: &[u16], x: &[f32]) {
    matmul_of(out, w, x)
}

#[target_feature(enable = "avx512f")]
unsafe fn matmul_of<T: Load>(out: &mut [f32], w: &[T], x: &[f32]) {
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
            a0 = _mm512_fmadd_ps(T::load(p0.add(j)), xv, a0);
            a1 = _mm512_fmadd_ps(T::load(p1.add(j)), xv, a1);
            a2 = _mm512_fmadd_ps(T::load(p2.add(j)), xv, a2);
            a3 = _mm512_fmadd_ps(T::load(p3.add(j)), xv, a3);
            j += W;
        }
        if full < n {
            let k = n - full;
            let xv = _mm512_maskz_loadu_ps(mask, xp.add(full));
            a0 = _mm512_fmadd_ps(T::load_first(p0.add(full), k, mask), xv, a0);
            a1 = _mm512_fmadd_ps(T::load_first(p1.add(full), k, mask), xv, a1);
            a2 = _mm512_fmadd_ps(T::load_first(p2.add(full), k, mask), xv, a2);
            a3 = _mm512_fmadd_ps(T::load_first(p3.add(full), k, mask), xv, a3);
        }
        out[r] = _mm512_reduce_add_ps(a0);
        out[r + 1] = _mm512_reduce_add_ps(a1);
        out[r + 2] = _mm512_reduce_add_ps(a2);
        out[r + 3] = _mm512_reduce_add_ps(a3);
        r += 4;
    }
    while r < out.len() {
        out[r] = T::dot_row(w.as_ptr().add(r * n), xp, n, mask);
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

/// # Safety
/// AVX-512F must be available; `rows.len() == weights.len() * out.len()`.
#[target_feature(enable = "avx512f")]
pub unsafe fn weighted_sum(out: &mut [f32], weights: &[f32], rows: &[f32]) {
    weighted_sum_of(out, weights, rows)
}

/// `weighted_sum` over binary16 rows (the f16 value cache).
///
/// # Safety
/// AVX-512F must be available; `rows.len() == weights.len() * out.len()`.
#[target_feature(enable = "avx512f")]
pub unsafe fn weighted_sum_f16(out: &mut [f32], weights: &[f32], rows: &[u16]) {
    weighted_sum_of(out, weights, rows)
}

#[target_feature(enable = "avx512f")]
unsafe fn weighted_sum_of<T: Load>(out: &mut [f32], weights: &[f32], rows: &[T]) {
    let n = out.len();
    let mut c = 0;
    // Up to four output vectors stay in registers while every row streams past once; a
    // longer output takes several passes over the rows, each on its own columns.
    while c < n {
        let left = n - c;
        let vecs = left.div_ceil(W).min(4);
        let (k, last) = if left >= vecs * W {
            (W, !0)
        } else {
            (left % W, tail_mask(left))
        };
        let (o, p) = (out.as_mut_ptr().add(c), rows.as_ptr().add(c));
        match vecs {
            1 => weighted_block::<T, 1>(o, weights, p, n, k, last),
            2 => weighted_block::<T, 2>(o, weights, p, n, k, last),
            3 => weighted_block::<T, 3>(o, weights, p, n, k, last),
            _ => weighted_block::<T, 4>(o, weights, p, n, k, last),
        }
        c += vecs * W;
    }
}

/// `V` output vectors at `out` (the last holding `k` columns, masked by `last`) summed over all
/// rows; `rows` points at this block's columns of row 0 and rows are `stride` apart.
#[target_feature(enable = "avx512f")]
unsafe fn weighted_block<T: Load, const V: usize>(
    out: *mut f32,
    weights: &[f32],
    rows: *const T,
    stride: usize,
    k: usize,
    last: __mmask16,
) {
    let mask = |v: usize| if v + 1 == V { last } else { !0 };
    let load = |p: *const T, v: usize| {
        if v + 1 == V {
            T::load_first(p.add(v * W), k, last)
        } else {
            T::load(p.add(v * W))
        }
    };
    // Two accumulator sets (even and odd rows) so consecutive FMAs into one register are not
    // back to back: one set alone would be bound by FMA latency, not by the loads.
    let mut a = [_mm512_setzero_ps(); V];
    let mut b = [_mm512_setzero_ps(); V];
    let mut r = 0;
    while r + 2 <= weights.len() {
        let p0 = rows.add(r * stride);
        let p1 = p0.add(stride);
        let w0 = _mm512_set1_ps(*weights.get_unchecked(r));
        let w1 = _mm512_set1_ps(*weights.get_unchecked(r + 1));
        for v in 0..V {
            a[v] = _mm512_fmadd_ps(load(p0, v), w0, a[v]);
            b[v] = _mm512_fmadd_ps(load(p1, v), w1, b[v]);
        }
        r += 2;
    }
    if r < weights.len() {
        let p0 = rows.add(r * stride);
        let w0 = _mm512_set1_ps(*weights.get_unchecked(r));
        for (v, acc) in a.iter_mut().enumerate() {
            *acc = _mm512_fmadd_ps(load(p0, v), w0, *acc);
        }
    }
    for (v, (&x, &y)) in a.iter().zip(&b).enumerate() {
        _mm512_mask_storeu_ps(out.add(v * W), mask(v), _mm512_add_ps(x, y));
    }
}

/// `e^x` to a few ulp for `x <= 0`; 0 below -87 (where `e^x` would leave the normal range),
/// so a softmax never produces denormals or NaN from very negative scores.
#[target_feature(enable = "avx512f")]
unsafe fn exp(x: __m512) -> __m512 {
    use super::exp_poly::*;
    let xc = _mm512_max_ps(x, _mm512_set1_ps(MIN_X));
    let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
        _mm512_mul_ps(xc, _mm512_set1_ps(LOG2E)),
    );
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_HI), xc);
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_LO), r);
    let mut p = _mm512_set1_ps(P[0]);
    for &c in &P[1..] {
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
    }
    let y = _mm512_fmadd_ps(
        p,
        _mm512_mul_ps(r, r),
        _mm512_add_ps(r, _mm512_set1_ps(1.0)),
    );
    let two_n = _mm512_castsi512_ps(_mm512_slli_epi32::<23>(_mm512_add_epi32(
        _mm512_cvtps_epi32(n),
        _mm512_set1_epi32(127),
    )));
    let keep = _mm512_cmp_ps_mask::<_CMP_GE_OQ>(x, _mm512_set1_ps(MIN_X));
    _mm512_maskz_mov_ps(keep, _mm512_mul_ps(y, two_n))
}

/// # Safety
/// AVX-512F must be available.
#[target_feature(enable = "avx512f")]
pub unsafe fn softmax(x: &mut [f32], scale: f32) {
    let n = x.len();
    let full = n / W * W;
    let mask = tail_mask(n);
    let p = x.as_mut_ptr();
    let mut mx = _mm512_set1_ps(f32::NEG_INFINITY);
    let mut j = 0;
    while j < full {
        mx = _mm512_max_ps(mx, _mm512_loadu_ps(p.add(j)));
        j += W;
    }
    if full < n {
        mx = _mm512_max_ps(mx, _mm512_mask_loadu_ps(mx, mask, p.add(full)));
    }
    let max = _mm512_set1_ps(_mm512_reduce_max_ps(mx));
    let scale = _mm512_set1_ps(scale);
    let mut sum = _mm512_setzero_ps();
    j = 0;
    while j < full {
        let e = exp(_mm512_mul_ps(
            _mm512_sub_ps(_mm512_loadu_ps(p.add(j)), max),
            scale,
        ));
        _mm512_storeu_ps(p.add(j), e);
        sum = _mm512_add_ps(sum, e);
        j += W;
    }
    if full < n {
        let v = _mm512_maskz_loadu_ps(mask, p.add(full));
        let e = _mm512_maskz_mov_ps(mask, exp(_mm512_mul_ps(_mm512_sub_ps(v, max), scale)));
        _mm512_mask_storeu_ps(p.add(full), mask, e);
        sum = _mm512_add_ps(sum, e);
    }
    let inv = _mm512_set1_ps(1.0 / _mm512_reduce_add_ps(sum));
    j = 0;
    while j < full {
        _mm512_storeu_ps(p.add(j), _mm512_mul_ps(_mm512_loadu_ps(p.add(j)), inv));
        j += W;
    }
    if full < n {
        let v = _mm512_maskz_loadu_ps(mask, p.add(full));
        _mm512_mask_storeu_ps(p.add(full), mask, _mm512_mul_ps(v, inv));
    }
}

/// `clamp(round_half_away(x / scale), ±127)` per lane, with the reference's exact steps
/// (the f32 division, truncation, then a step away from zero when the exact remainder is at
/// least one half). `scale` must be finite and non-zero, so every quotient fits an i32.
#[target_feature(enable = "avx512f")]
unsafe fn quantize16(x: __m512, scale: __m512) -> __m512i {
    let v = _mm512_div_ps(x, scale);
    let t = _mm512_cvttps_epi32(v);
    let frac = _mm512_sub_ps(v, _mm512_cvtepi32_ps(t));
    let one = _mm512_set1_epi32(1);
    let up = _mm512_cmp_ps_mask::<_CMP_GE_OQ>(frac, _mm512_set1_ps(0.5));
    let down = _mm512_cmp_ps_mask::<_CMP_LE_OQ>(frac, _mm512_set1_ps(-0.5));
    let r = _mm512_mask_add_epi32(t, up, t, one);
    let r = _mm512_mask_sub_epi32(r, down, r, one);
    _mm512_max_epi32(
        _mm512_min_epi32(r, _mm512_set1_epi32(127)),
        _mm512_set1_epi32(-127),
    )
}

/// Activation quantisation, bit for bit the reference `quant::quantize_activations`; each
/// group's tail (`group % 16` values) is one masked load and store.
///
/// # Safety
/// AVX-512F must be available; `group > 0` divides `x.len()`, `q.len() == x.len()` and
/// `scales.len() == x.len() / group`.
#[target_feature(enable = "avx512f")]
pub unsafe fn quantize_activations(x: &[f32], group: usize, q: &mut [i8], scales: &mut [f32]) {
    let full = group / W * W;
    let mask = tail_mask(group);
    let abs = _mm512_set1_epi32(i32::MAX);
    for ((x, q), s) in x
        .chunks_exact(group)
        .zip(q.chunks_exact_mut(group))
        .zip(scales.iter_mut())
    {
        let (xp, qp) = (x.as_ptr(), q.as_mut_ptr());
        let mut m = _mm512_setzero_si512();
        let mut j = 0;
        while j < full {
            let bits = _mm512_castps_si512(_mm512_loadu_ps(xp.add(j)));
            m = _mm512_max_epi32(m, _mm512_and_si512(bits, abs));
            j += W;
        }
        if full < group {
            let bits = _mm512_castps_si512(_mm512_maskz_loadu_ps(mask, xp.add(full)));
            m = _mm512_max_epi32(m, _mm512_and_si512(bits, abs));
        }
        let (scale, finite) = super::scalar::group_scale(_mm512_reduce_max_epi32(m) as u32);
        *s = scale;
        if !finite {
            q.fill(0);
            continue;
        }
        let sv = _mm512_set1_ps(scale);
        let mut j = 0;
        while j < full {
            let r = quantize16(_mm512_loadu_ps(xp.add(j)), sv);
            _mm_storeu_si128(qp.add(j).cast(), _mm512_cvtepi32_epi8(r));
            j += W;
        }
        if full < group {
            let r = quantize16(_mm512_maskz_loadu_ps(mask, xp.add(full)), sv);
            _mm512_mask_cvtepi32_storeu_epi8(qp.add(full), mask, r);
        }
    }
}

/// `x` rounded to binary16 (nearest, ties to even), bit for bit `fp16::from_f32`.
///
/// # Safety
/// AVX-512F must be available; `out.len() == x.len()`.
#[target_feature(enable = "avx512f")]
pub unsafe fn f32_to_f16(out: &mut [u16], x: &[f32]) {
    let n = x.len();
    let full = n / W * W;
    let (xp, op) = (x.as_ptr(), out.as_mut_ptr());
    let mut j = 0;
    while j < full {
        let h = _mm512_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm512_loadu_ps(xp.add(j)));
        _mm256_storeu_si256(op.add(j).cast(), h);
        j += W;
    }
    if full < n {
        let v = _mm512_maskz_loadu_ps(tail_mask(n), xp.add(full));
        let mut t = [0u16; W];
        _mm256_storeu_si256(
            t.as_mut_ptr().cast(),
            _mm512_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(v),
        );
        out[full..].copy_from_slice(&t[..n - full]);
    }
}
