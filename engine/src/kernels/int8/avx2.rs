//! AVX2 int8 GEMV: `vpmaddubsw` (u8×i8 pairs → i16) then `vpmaddwd` with ones (i16 pairs →
//! i32), so each i32 lane again covers four consecutive weights.
//!
//! Sign handling as in the VNNI kernel: `|x|` is the unsigned operand and the weight takes
//! x's sign (`vpsignb w, x`), computed once per 32-byte chunk of x per row. No i16 saturation:
//! |x|, |w| ≤ 127, so a pair sums to at most 2·127² = 32258 < 32767 (Q8_0 weights must not be
//! -128; Q4_0 weights lie in [-8, 7]).
//!
//! Two loops by group size, as in the VNNI kernel:
//! * **packed** (groups of 4, 8, 16 or 32, a const parameter): lane `j` covers group
//!   `4j / group` of its chunk; the chunk's scale products come from one load of exactly that
//!   many floats, spread over the lanes with one permute (a broadcast for 32). The row tail
//!   shorter than 32 weights (whole groups) is summed in scalar.
//! * **per group** (any other group size, e.g. 64): each group's full 32-weight chunks
//!   accumulate in i32 and are scaled once; a remainder shorter than 32 weights is summed in
//!   scalar.
//!
//! Rows go [`Weights::TILE`], then four, then one at a time, with the next tile prefetched
//! once per 64-byte line of weights, as in the VNNI kernel; results do not depend on the
//! tiling.

use core::arch::x86_64::*;

use crate::kernels::avx2::hsum;

use super::{dot_tail, prefetch, Weights};

/// Weights per chunk (32 int8 lanes).
const W: usize = 32;

/// # Safety
/// AVX2 and FMA must be available; lengths as in [`super::MatmulFn`].
#[target_feature(enable = "avx2,fma")]
pub unsafe fn matmul<F: Weights>(
    out: &mut [f32],
    wq: &[F::Unit],
    ws: &[f32],
    xq: &[i8],
    xs: &[f32],
    cols: usize,
    group: usize,
) {
    tiled_rows!(F, out, wq, ws, xq, xs, cols, group, [4, 8, 16, 32])
}

/// Whether the chunk at weight `at` of a row starts a 64-byte line of `F`'s weights (relative
/// to the row), where one prefetch serves the whole line.
#[inline(always)]
fn starts_line<F: Weights>(at: usize) -> bool {
    (at / F::PER_UNIT * size_of::<F::Unit>()).is_multiple_of(64)
}

/// Four-weight dot products per i32 lane of one chunk: `Σ4 |x| · (w with x's sign)`.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot(xa: __m256i, x: __m256i, w: __m256i) -> __m256i {
    let w = _mm256_sign_epi8(w, x);
    _mm256_madd_epi16(_mm256_maddubs_epi16(xa, w), _mm256_set1_epi16(1))
}

/// The `W / G` floats at `p` in the low lanes (exactly that many are read).
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn load_group_scales<const G: usize>(p: *const f32) -> __m256 {
    match G {
        4 => _mm256_loadu_ps(p),
        8 => _mm256_castps128_ps256(_mm_loadu_ps(p)),
        16 => _mm256_castps128_ps256(_mm_castsi128_ps(_mm_loadl_epi64(p.cast()))),
        _ => _mm256_set1_ps(*p),
    }
}

/// `R` rows, group size `G` (4 to 32).
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn packed_rows<F: Weights, const G: usize, const R: usize>(
    out: *mut f32,
    w: *const F::Unit,
    ws: *const f32,
    xq: *const i8,
    xs: *const f32,
    cols: usize,
) {
    let per_row = cols / G;
    let stride = cols / F::PER_UNIT;
    // Lane j covers weights 4j..4j+4: group 4j / G = j >> log2(G / 4).
    let iota = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    let lane_group = _mm256_srlv_epi32(iota, _mm256_set1_epi32(G.trailing_zeros() as i32 - 2));
    let full = cols / W * W;
    let mut acc = [_mm256_setzero_ps(); R];
    let mut start = 0;
    while start < full {
        let x = _mm256_loadu_si256(xq.add(start).cast());
        let xa = _mm256_abs_epi8(x);
        let g0 = start / G;
        let x_scales = load_group_scales::<G>(xs.add(g0));
        let at = start / F::PER_UNIT;
        for (r, acc) in acc.iter_mut().enumerate() {
            if starts_line::<F>(start) {
                prefetch(w, (R + r) * stride + at);
            }
            let d = dot(xa, x, F::load_avx2(w.add(r * stride + at)));
            let scales = if G == W {
                _mm256_set1_ps(*ws.add(r * per_row + g0) * *xs.add(g0))
            } else {
                let s = _mm256_mul_ps(load_group_scales::<G>(ws.add(r * per_row + g0)), x_scales);
                _mm256_permutevar8x32_ps(s, lane_group)
            };
            *acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(d), scales, *acc);
        }
        start += W;
    }
    for (r, acc) in acc.iter().enumerate() {
        let mut tail = 0.0f32;
        let mut at = full;
        while at < cols {
            let g = at / G;
            let d = dot_tail::<F>(w.add(r * stride), at, xq.add(at), G);
            tail += d as f32 * (*ws.add(r * per_row + g) * *xs.add(g));
            at += G;
        }
        *out.add(r) = hsum(*acc) + tail;
    }
}

/// `R` rows, any group size (a multiple of `PER_UNIT`).
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn group_rows<F: Weights, const R: usize>(
    out: *mut f32,
    w: *const F::Unit,
    ws: *const f32,
    xq: *const i8,
    xs: *const f32,
    cols: usize,
    group: usize,
) {
    let per_row = cols / group;
    let stride = cols / F::PER_UNIT;
    let full = group / W * W;
    let mut acc = [_mm256_setzero_ps(); R];
    let mut tail = [0.0f32; R];
    for g in 0..per_row {
        let base = g * group;
        let x_scale = *xs.add(g);
        if full > 0 {
            let mut d = [_mm256_setzero_si256(); R];
            let mut at = 0;
            while at < full {
                let x = _mm256_loadu_si256(xq.add(base + at).cast());
                let xa = _mm256_abs_epi8(x);
                let unit = (base + at) / F::PER_UNIT;
                for (r, d) in d.iter_mut().enumerate() {
                    if starts_line::<F>(at) {
                        prefetch(w, (R + r) * stride + unit);
                    }
                    let wv = F::load_avx2(w.add(r * stride + unit));
                    *d = _mm256_add_epi32(*d, dot(xa, x, wv));
                }
                at += W;
            }
            for (r, acc) in acc.iter_mut().enumerate() {
                let scale = _mm256_set1_ps(*ws.add(r * per_row + g) * x_scale);
                *acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(d[r]), scale, *acc);
            }
        }
        if full < group {
            for (r, tail) in tail.iter_mut().enumerate() {
                let d = dot_tail::<F>(
                    w.add(r * stride),
                    base + full,
                    xq.add(base + full),
                    group - full,
                );
                *tail += d as f32 * (*ws.add(r * per_row + g) * x_scale);
            }
        }
    }
    for (r, acc) in acc.iter().enumerate() {
        *out.add(r) = hsum(*acc) + tail[r];
    }
}
