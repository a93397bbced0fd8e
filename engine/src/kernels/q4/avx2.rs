//! AVX2 Q4_0 GEMV: the int8 AVX2 kernel (`vpmaddubsw` + `vpmaddwd`) with the weights
//! unpacked in registers.
//!
//! Unpacking as in the VNNI kernel, at half the width: 16 packed bytes zero-extended to 16 u16
//! lanes (`vpmovzxbw`), `lane | lane << 4`, `& 0x0F0F`, `- 8`: 32 int8 weights in natural
//! order. Sign handling as in the int8 kernel (`|x|` unsigned, `vpsignb` gives the weight x's
//! sign); |x| ≤ 127 and |w| ≤ 8, so the i16 pair sums cannot saturate.
//!
//! Two loops by group size: **packed** (groups of 4, 8, 16, 32 tile a 32-weight chunk;
//! per-lane scales by one permute; a row tail shorter than 32 weights in scalar) and **per
//! group** (any other even group: full chunks in i32, a remainder in scalar). Rows go four,
//! then one at a time; the arithmetic per row does not depend on the tiling.

use core::arch::x86_64::*;

/// Weights per chunk (32 int8 lanes; 16 packed bytes).
const W: usize = 32;

/// # Safety
/// AVX2 and FMA must be available; lengths as in [`super::Q4MatmulFn`].
#[target_feature(enable = "avx2,fma")]
pub unsafe fn matmul(
    out: &mut [f32],
    wq: &[u8],
    ws: &[f32],
    xq: &[i8],
    xs: &[f32],
    cols: usize,
    group: usize,
) {
    let rows = out.len();
    let per_row = cols / group;
    let (o, w, s) = (out.as_mut_ptr(), wq.as_ptr(), ws.as_ptr());
    let (x, xsp) = (xq.as_ptr(), xs.as_ptr());
    let mut r = 0;
    while r < rows {
        let (o, w, s) = (o.add(r), w.add(r * cols / 2), s.add(r * per_row));
        let tile = if r + 4 <= rows { 4 } else { 1 };
        macro_rules! packed {
            ($g:literal) => {
                match tile {
                    4 => packed_rows::<$g, 4>(o, w, s, x, xsp, cols),
                    _ => packed_rows::<$g, 1>(o, w, s, x, xsp, cols),
                }
            };
        }
        match group {
            4 => packed!(4),
            8 => packed!(8),
            16 => packed!(16),
            32 => packed!(32),
            _ => match tile {
                4 => group_rows::<4>(o, w, s, x, xsp, cols, group),
                _ => group_rows::<1>(o, w, s, x, xsp, cols, group),
            },
        }
        r += tile;
    }
}

/// Prefetches the line at `w + offset` (the next tile's rows; see the int8 kernel).
#[inline(always)]
fn prefetch(w: *const u8, offset: usize) {
    // SAFETY: prefetching never faults and reads nothing architecturally.
    unsafe { _mm_prefetch::<_MM_HINT_T0>(w.wrapping_add(offset).cast()) }
}

/// The 32 weights whose 16 packed bytes start at `p`, as int8 in natural order.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn load_w(p: *const u8) -> __m256i {
    let z = _mm256_cvtepu8_epi16(_mm_loadu_si128(p.cast()));
    let z = _mm256_or_si256(z, _mm256_slli_epi16::<4>(z));
    let z = _mm256_and_si256(z, _mm256_set1_epi16(0x0F0F));
    _mm256_sub_epi8(z, _mm256_set1_epi8(8))
}

#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    _mm_cvtss_f32(s)
}

/// Four-weight dot products per i32 lane of one chunk: `Σ4 |x| · (w with x's sign)`.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot(xa: __m256i, x: __m256i, w: __m256i) -> __m256i {
    let w = _mm256_sign_epi8(w, x);
    _mm256_madd_epi16(_mm256_maddubs_epi16(xa, w), _mm256_set1_epi16(1))
}

/// Exact i32 dot product of `n` (even) weights from packed `w` with `x` (the scalar tails).
#[inline]
unsafe fn dot_scalar(w: *const u8, x: *const i8, n: usize) -> i32 {
    (0..n / 2)
        .map(|i| {
            let b = *w.add(i);
            ((b & 0x0F) as i32 - 8) * *x.add(2 * i) as i32
                + ((b >> 4) as i32 - 8) * *x.add(2 * i + 1) as i32
        })
        .sum()
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
unsafe fn packed_rows<const G: usize, const R: usize>(
    out: *mut f32,
    w: *const u8,
    ws: *const f32,
    xq: *const i8,
    xs: *const f32,
    cols: usize,
) {
    let per_row = cols / G;
    let stride = cols / 2;
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
        for (r, acc) in acc.iter_mut().enumerate() {
            if start % 128 == 0 {
                prefetch(w, (R + r) * stride + start / 2);
            }
            let d = dot(xa, x, load_w(w.add(r * stride + start / 2)));
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
            let d = dot_scalar(w.add(r * stride + at / 2), xq.add(at), G);
            tail += d as f32 * (*ws.add(r * per_row + g) * *xs.add(g));
            at += G;
        }
        *out.add(r) = hsum(*acc) + tail;
    }
}

/// `R` rows, any even group size.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn group_rows<const R: usize>(
    out: *mut f32,
    w: *const u8,
    ws: *const f32,
    xq: *const i8,
    xs: *const f32,
    cols: usize,
    group: usize,
) {
    let per_row = cols / group;
    let stride = cols / 2;
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
                for (r, d) in d.iter_mut().enumerate() {
                    if at % 128 == 0 {
                        prefetch(w, (R + r) * stride + (base + at) / 2);
                    }
                    let wv = load_w(w.add(r * stride + (base + at) / 2));
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
                let d = dot_scalar(
                    w.add(r * stride + (base + full) / 2),
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
