//! AVX2+FMA kernels: four rows per pass share each loaded x vector; the column tail (< 8)
//! is summed in scalar.

use super::{tail_dot, Elem};
use core::arch::x86_64::*;

const W: usize = 8;

/// The sum of the 8 lanes (also used by the int8 kernels).
#[inline]
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    _mm_cvtss_f32(s)
}

/// The vector loads of an [`Elem`], so each kernel below is one body for f32 and f16 rows.
/// The `u16` methods need F16C (`vcvtph2ps`), which is not part of the AVX2 ISA level and which
/// the caller checks separately, so the f32 entry points must not enable it: the shared bodies
/// carry no target features of their own but are `#[inline(always)]` into entry points that
/// enable exactly what their element type needs.
trait Load: Elem {
    /// `W` values at `p`, as f32.
    unsafe fn load(p: *const Self) -> __m256;
    /// The `k < W` values at `p`, zero-padded; `mask` is `lane_mask(k)`.
    unsafe fn load_tail(p: *const Self, k: usize, mask: __m256i) -> __m256;
    /// A matmul row's result from `acc`, its vector sum over the columns before `row_tail`,
    /// with the tail added; `xtv` is the tail of x zero-padded to a vector. f32 sums the tail
    /// in scalar and f16 as one more vector, each the order its results are pinned to.
    unsafe fn finish(acc: __m256, row_tail: &[Self], x_tail: &[f32], xtv: __m256) -> f32;
    /// A lone row's dot product with `x` (the rows after the four-row passes), each type in
    /// its own accumulation order, as for `finish`.
    unsafe fn dot_row(row: &[Self], x: &[f32], xtv: __m256) -> f32;
}

impl Load for f32 {
    #[inline(always)]
    unsafe fn load(p: *const f32) -> __m256 {
        _mm256_loadu_ps(p)
    }

    #[inline(always)]
    unsafe fn load_tail(p: *const f32, _: usize, mask: __m256i) -> __m256 {
        _mm256_maskload_ps(p, mask)
    }

    #[inline(always)]
    unsafe fn finish(acc: __m256, row_tail: &[f32], x_tail: &[f32], _: __m256) -> f32 {
        hsum(acc) + tail_dot(row_tail, x_tail)
    }

    #[inline(always)]
    unsafe fn dot_row(row: &[f32], x: &[f32], _: __m256) -> f32 {
        dot(row, x)
    }
}

impl Load for u16 {
    #[inline(always)]
    unsafe fn load(p: *const u16) -> __m256 {
        _mm256_cvtph_ps(_mm_loadu_si128(p.cast()))
    }

    /// Through a small copy, as AVX2 has no masked 16-bit load.
    #[inline(always)]
    unsafe fn load_tail(p: *const u16, k: usize, _: __m256i) -> __m256 {
        let mut t = [0u16; W];
        std::ptr::copy_nonoverlapping(p, t.as_mut_ptr(), k);
        Self::load(t.as_ptr())
    }

    #[inline(always)]
    unsafe fn finish(acc: __m256, row_tail: &[u16], _: &[f32], xtv: __m256) -> f32 {
        let k = row_tail.len();
        if k == 0 {
            return hsum(acc);
        }
        let t = Self::load_tail(row_tail.as_ptr(), k, _mm256_setzero_si256());
        hsum(_mm256_fmadd_ps(t, xtv, acc))
    }

    #[inline(always)]
    unsafe fn dot_row(row: &[u16], x: &[f32], xtv: __m256) -> f32 {
        let full = x.len() / W * W;
        let mut a = _mm256_setzero_ps();
        let mut j = 0;
        while j < full {
            a = _mm256_fmadd_ps(
                Self::load(row.as_ptr().add(j)),
                _mm256_loadu_ps(x.as_ptr().add(j)),
                a,
            );
            j += W;
        }
        Self::finish(a, &row[full..], &x[full..], xtv)
    }
}

/// # Safety
/// AVX2 and FMA must be available; `w.len() == out.len() * x.len()`.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn matmul(out: &mut [f32], w: &[f32], x: &[f32]) {
    matmul_of(out, w, x)
}

/// `matmul` over binary16 rows (the f16 key cache).
///
/// # Safety
/// AVX2, FMA and F16C must be available; `w.len() == out.len() * x.len()`.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn matmul_f16(out: &mut [f32], w: &[u16], x: &[f32]) {
    matmul_of(out, w, x)
}

#[inline(always)]
unsafe fn matmul_of<T: Load>(out: &mut [f32], w: &[T], x: &[f32]) {
    let n = x.len();
    let full = n / W * W;
    let mut xt = [0f32; W];
    xt[..n - full].copy_from_slice(&x[full..]);
    let (xp, xtv) = (x.as_ptr(), _mm256_loadu_ps(xt.as_ptr()));
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
            a0 = _mm256_fmadd_ps(T::load(p0.add(j)), xv, a0);
            a1 = _mm256_fmadd_ps(T::load(p1.add(j)), xv, a1);
            a2 = _mm256_fmadd_ps(T::load(p2.add(j)), xv, a2);
            a3 = _mm256_fmadd_ps(T::load(p3.add(j)), xv, a3);
            j += W;
        }
        let xt = &x[full..];
        for (i, a) in [a0, a1, a2, a3].into_iter().enumerate() {
            let row = &w[(r + i) * n..(r + i + 1) * n];
            out[r + i] = T::finish(a, &row[full..], xt, xtv);
        }
        r += 4;
    }
    while r < out.len() {
        out[r] = T::dot_row(&w[r * n..(r + 1) * n], x, xtv);
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

/// Lanes `0..k` set (sign bit), for `_mm256_maskload_ps`/`_mm256_maskstore_ps`.
#[target_feature(enable = "avx2,fma")]
unsafe fn lane_mask(k: usize) -> __m256i {
    _mm256_cmpgt_epi32(
        _mm256_set1_epi32(k as i32),
        _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
    )
}

/// # Safety
/// AVX2 and FMA must be available; `rows.len() == weights.len() * out.len()`.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn weighted_sum(out: &mut [f32], weights: &[f32], rows: &[f32]) {
    weighted_sum_of(out, weights, rows)
}

/// `weighted_sum` over binary16 rows (the f16 value cache).
///
/// # Safety
/// AVX2, FMA and F16C must be available; `rows.len() == weights.len() * out.len()`.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn weighted_sum_f16(out: &mut [f32], weights: &[f32], rows: &[u16]) {
    weighted_sum_of(out, weights, rows)
}

#[inline(always)]
unsafe fn weighted_sum_of<T: Load>(out: &mut [f32], weights: &[f32], rows: &[T]) {
    let n = out.len();
    let mut c = 0;
    // Up to four output vectors stay in registers while every row streams past once; a
    // longer output takes several passes over the rows, each on its own columns.
    while c < n {
        let left = n - c;
        let vecs = left.div_ceil(W).min(4);
        let (o, p) = (out.as_mut_ptr().add(c), rows.as_ptr().add(c));
        if left >= vecs * W {
            match vecs {
                1 => weighted_block::<T, 1, false>(o, weights, p, n, left),
                2 => weighted_block::<T, 2, false>(o, weights, p, n, left),
                3 => weighted_block::<T, 3, false>(o, weights, p, n, left),
                _ => weighted_block::<T, 4, false>(o, weights, p, n, left),
            }
        } else {
            match vecs {
                1 => weighted_block::<T, 1, true>(o, weights, p, n, left),
                2 => weighted_block::<T, 2, true>(o, weights, p, n, left),
                3 => weighted_block::<T, 3, true>(o, weights, p, n, left),
                _ => weighted_block::<T, 4, true>(o, weights, p, n, left),
            }
        }
        c += vecs * W;
    }
}

/// `V` output vectors at `out` summed over all rows; with `TAIL` the last vector holds only
/// `left % W` columns and is loaded and stored masked. `rows` points at this block's columns
/// of row 0 and rows are `stride` apart.
#[inline(always)]
unsafe fn weighted_block<T: Load, const V: usize, const TAIL: bool>(
    out: *mut f32,
    weights: &[f32],
    rows: *const T,
    stride: usize,
    left: usize,
) {
    let mask = lane_mask(left % W);
    let load = |p: *const T, v: usize| {
        if TAIL && v + 1 == V {
            T::load_tail(p.add(v * W), left % W, mask)
        } else {
            T::load(p.add(v * W))
        }
    };
    // Two accumulator sets (even and odd rows) so consecutive FMAs into one register are not
    // back to back: one set alone would be bound by FMA latency, not by the loads.
    let mut a = [_mm256_setzero_ps(); V];
    let mut b = [_mm256_setzero_ps(); V];
    let mut r = 0;
    while r + 2 <= weights.len() {
        let p0 = rows.add(r * stride);
        let p1 = p0.add(stride);
        let w0 = _mm256_set1_ps(*weights.get_unchecked(r));
        let w1 = _mm256_set1_ps(*weights.get_unchecked(r + 1));
        for v in 0..V {
            a[v] = _mm256_fmadd_ps(load(p0, v), w0, a[v]);
            b[v] = _mm256_fmadd_ps(load(p1, v), w1, b[v]);
        }
        r += 2;
    }
    if r < weights.len() {
        let p0 = rows.add(r * stride);
        let w0 = _mm256_set1_ps(*weights.get_unchecked(r));
        for (v, acc) in a.iter_mut().enumerate() {
            *acc = _mm256_fmadd_ps(load(p0, v), w0, *acc);
        }
    }
    for (v, (&x, &y)) in a.iter().zip(&b).enumerate() {
        let s = _mm256_add_ps(x, y);
        if TAIL && v + 1 == V {
            _mm256_maskstore_ps(out.add(v * W), mask, s);
        } else {
            _mm256_storeu_ps(out.add(v * W), s);
        }
    }
}

/// `e^x` to a few ulp for `x <= 0`; 0 below -87 (where `e^x` would leave the normal range),
/// so a softmax never produces denormals or NaN from very negative scores.
#[target_feature(enable = "avx2,fma")]
unsafe fn exp(x: __m256) -> __m256 {
    use super::exp_poly::*;
    let xc = _mm256_max_ps(x, _mm256_set1_ps(MIN_X));
    let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(
        xc,
        _mm256_set1_ps(LOG2E),
    ));
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_HI), xc);
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_LO), r);
    let mut p = _mm256_set1_ps(P[0]);
    for &c in &P[1..] {
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
    }
    let y = _mm256_fmadd_ps(
        p,
        _mm256_mul_ps(r, r),
        _mm256_add_ps(r, _mm256_set1_ps(1.0)),
    );
    let two_n = _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(
        _mm256_cvtps_epi32(n),
        _mm256_set1_epi32(127),
    )));
    let keep = _mm256_cmp_ps::<_CMP_GE_OQ>(x, _mm256_set1_ps(MIN_X));
    _mm256_and_ps(keep, _mm256_mul_ps(y, two_n))
}

#[target_feature(enable = "avx2,fma")]
unsafe fn hmax(v: __m256) -> f32 {
    let s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_max_ss(s, _mm_shuffle_ps(s, s, 1));
    _mm_cvtss_f32(s)
}

/// # Safety
/// AVX2 and FMA must be available.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn softmax(x: &mut [f32], scale: f32) {
    let n = x.len();
    let full = n / W * W;
    let p = x.as_mut_ptr();
    // The tail (< 8) goes through a padded copy: -inf padding is neutral for the max and
    // becomes exactly 0 in the exponential, so it adds nothing to the sum.
    let mut tail = [f32::NEG_INFINITY; W];
    tail[..n - full].copy_from_slice(&x[full..]);
    let tp = tail.as_mut_ptr();
    let mut mx = _mm256_loadu_ps(tp);
    let mut j = 0;
    while j < full {
        mx = _mm256_max_ps(mx, _mm256_loadu_ps(p.add(j)));
        j += W;
    }
    let max = _mm256_set1_ps(hmax(mx));
    let scale = _mm256_set1_ps(scale);
    let mut sum = _mm256_setzero_ps();
    for q in (0..full).step_by(W).map(|j| p.add(j)).chain([tp]) {
        let e = exp(_mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(q), max), scale));
        _mm256_storeu_ps(q, e);
        sum = _mm256_add_ps(sum, e);
    }
    let inv = 1.0 / hsum(sum);
    let vinv = _mm256_set1_ps(inv);
    j = 0;
    while j < full {
        _mm256_storeu_ps(p.add(j), _mm256_mul_ps(_mm256_loadu_ps(p.add(j)), vinv));
        j += W;
    }
    for (v, &t) in x[full..].iter_mut().zip(&tail) {
        *v = t * inv;
    }
}

/// `clamp(round_half_away(x / scale), ±127)` per lane, with the reference's exact steps
/// (the f32 division, truncation, then a step away from zero when the exact remainder is at
/// least one half; a true compare is -1, so subtracting it adds one). `scale` must be finite
/// and non-zero, so every quotient fits an i32.
#[target_feature(enable = "avx2,fma")]
unsafe fn quantize8(x: __m256, scale: __m256) -> __m256i {
    let v = _mm256_div_ps(x, scale);
    let t = _mm256_cvttps_epi32(v);
    let frac = _mm256_sub_ps(v, _mm256_cvtepi32_ps(t));
    let up = _mm256_cmp_ps::<_CMP_GE_OQ>(frac, _mm256_set1_ps(0.5));
    let down = _mm256_cmp_ps::<_CMP_LE_OQ>(frac, _mm256_set1_ps(-0.5));
    let r = _mm256_sub_epi32(t, _mm256_castps_si256(up));
    let r = _mm256_add_epi32(r, _mm256_castps_si256(down));
    _mm256_max_epi32(
        _mm256_min_epi32(r, _mm256_set1_epi32(127)),
        _mm256_set1_epi32(-127),
    )
}

/// Activation quantisation, bit for bit the reference `quant::quantize_activations`; each
/// group goes 8 values at a time, its last `group % 8` in scalar.
///
/// # Safety
/// AVX2 and FMA must be available; `group > 0` divides `x.len()`, `q.len() == x.len()` and
/// `scales.len() == x.len() / group`.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn quantize_activations(x: &[f32], group: usize, q: &mut [i8], scales: &mut [f32]) {
    let full = group / W * W;
    let abs = _mm256_set1_epi32(i32::MAX);
    for ((x, q), s) in x
        .chunks_exact(group)
        .zip(q.chunks_exact_mut(group))
        .zip(scales.iter_mut())
    {
        let (xp, qp) = (x.as_ptr(), q.as_mut_ptr());
        let mut m = _mm256_setzero_si256();
        let mut j = 0;
        while j < full {
            let bits = _mm256_castps_si256(_mm256_loadu_ps(xp.add(j)));
            m = _mm256_max_epi32(m, _mm256_and_si256(bits, abs));
            j += W;
        }
        let m = _mm_max_epi32(_mm256_castsi256_si128(m), _mm256_extracti128_si256::<1>(m));
        let m = _mm_max_epi32(m, _mm_shuffle_epi32::<0b01_00_11_10>(m));
        let m = _mm_max_epi32(m, _mm_shuffle_epi32::<0b10_11_00_01>(m));
        let m = (_mm_cvtsi128_si32(m) as u32).max(super::scalar::max_abs_bits(&x[full..]));
        let (scale, finite) = super::scalar::group_scale(m);
        *s = scale;
        if !finite {
            q.fill(0);
            continue;
        }
        let sv = _mm256_set1_ps(scale);
        let mut j = 0;
        while j < full {
            let r = quantize8(_mm256_loadu_ps(xp.add(j)), sv);
            let r16 = _mm_packs_epi32(_mm256_castsi256_si128(r), _mm256_extracti128_si256::<1>(r));
            _mm_storel_epi64(qp.add(j).cast(), _mm_packs_epi16(r16, r16));
            j += W;
        }
        for (q, &v) in q[full..].iter_mut().zip(&x[full..]) {
            *q = super::scalar::quantize_value(v, scale);
        }
    }
}

/// `x` rounded to binary16 (nearest, ties to even), bit for bit `fp16::from_f32`.
///
/// # Safety
/// AVX2, FMA and F16C must be available; `out.len() == x.len()`.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn f32_to_f16(out: &mut [u16], x: &[f32]) {
    let n = x.len();
    let full = n / W * W;
    let (xp, op) = (x.as_ptr(), out.as_mut_ptr());
    let mut j = 0;
    while j < full {
        let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm256_loadu_ps(xp.add(j)));
        _mm_storeu_si128(op.add(j).cast(), h);
        j += W;
    }
    if full < n {
        let mut t = [0f32; W];
        t[..n - full].copy_from_slice(&x[full..]);
        let mut h = [0u16; W];
        let v = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm256_loadu_ps(t.as_ptr()));
        _mm_storeu_si128(h.as_mut_ptr().cast(), v);
        out[full..].copy_from_slice(&h[..n - full]);
    }
}
