//! AVX-512 VNNI int8 GEMV: `vpdpbusd` sums four u8×i8 products into each i32 lane.
//!
//! Sign handling: `vpdpbusd` wants one operand unsigned. The activations supply it: `|x|` as
//! u8 (|x| ≤ 127), and the weight takes x's sign (`w` negated where `x < 0`, one masked
//! subtract), so `|x| · sign(x)·w = x·w`. Both are computed once per 64-byte chunk of x and
//! shared by the rows of a tile, leaving one extra instruction per row and chunk (the
//! alternative, x + 128 and a per-group correction `128·Σw`, costs a second `vpdpbusd`).
//! Weights must lie in [-127, 127] after loading (llama2.c's Q8_0 quantiser and ours never
//! write -128; Q4_0 weights lie in [-8, 7]).
//!
//! Two loops by group size:
//! * **packed** (groups of 4, 8, 16, 32 or 64, a const parameter): each 64-weight chunk holds
//!   whole groups; i32 lane `i` covers weights `4i..4i+4`, so belongs to group `4i / group`.
//!   The chunk's scale products (`w_scale * x_scale`) come from one load of exactly that many
//!   floats, spread over the lanes with one permute (a broadcast for 64), and
//!   `acc += f32(dot) * scale` per lane. A row tail shorter than 64 weights is one masked chunk.
//! * **per group** (any other group size): each group's chunks accumulate in i32 (a remainder
//!   shorter than 64 weights masked), then `acc += f32(dot) * scale` with the scale broadcast.
//!
//! Full chunks use plain loads: masked loads, even with an all-ones mask, and masked scale
//! loads made the kernel 2× slower on the AMD EPYC (Zen 4 class) it was measured on.
//!
//! Rows go [`Weights::TILE`] at a time (each x chunk loaded once for that many weight streams,
//! and the next tile prefetched), then four, then one; every tile size does the same
//! arithmetic per row, so results do not depend on the tiling (nor on how rows are split
//! across threads).

use core::arch::x86_64::*;

use super::{prefetch, Weights};

/// Weights per chunk (64 int8 lanes).
const W: usize = 64;

/// # Safety
/// AVX-512F, AVX-512BW and AVX-512VNNI must be available; lengths as in
/// [`super::MatmulFn`].
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
pub unsafe fn matmul<F: Weights>(
    out: &mut [f32],
    wq: &[F::Unit],
    ws: &[f32],
    xq: &[i8],
    xs: &[f32],
    cols: usize,
    group: usize,
) {
    tiled_rows!(F, out, wq, ws, xq, xs, cols, group, [4, 8, 16, 32, 64])
}

/// `|x|` (as u8) and the mask of negative lanes.
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn split_x(x: __m512i) -> (__m512i, __mmask64) {
    (_mm512_abs_epi8(x), _mm512_movepi8_mask(x))
}

/// `acc + Σ4 |x| · (w with x's sign)` per i32 lane.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn dot(acc: __m512i, xa: __m512i, xneg: __mmask64, w: __m512i) -> __m512i {
    let w = _mm512_mask_sub_epi8(w, xneg, _mm512_setzero_si512(), w);
    _mm512_dpbusd_epi32(acc, xa, w)
}

/// Mask of the first `n` bytes (`n <= 64`).
#[inline]
pub fn byte_mask(n: usize) -> __mmask64 {
    if n >= 64 {
        !0
    } else {
        (1u64 << n) - 1
    }
}

/// The `W / G` floats at `p` in the low lanes (exactly that many are read; the other lanes
/// are zero or ignored by the permute that follows).
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn load_group_scales<const G: usize>(p: *const f32) -> __m512 {
    match G {
        4 => _mm512_loadu_ps(p),
        8 => _mm512_zextps256_ps512(_mm256_loadu_ps(p)),
        16 => _mm512_zextps128_ps512(_mm_loadu_ps(p)),
        32 => _mm512_zextps128_ps512(_mm_castsi128_ps(_mm_loadl_epi64(p.cast()))),
        _ => _mm512_set1_ps(*p),
    }
}

/// `R` rows from `w` (row stride `cols` weights, scale stride `cols / G`), group size `G`
/// (4 to 64).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
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
    // Lane i covers weights 4i..4i+4, i.e. group 4i / G = i >> log2(G / 4).
    let iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    let lane_group = _mm512_srlv_epi32(iota, _mm512_set1_epi32(G.trailing_zeros() as i32 - 2));
    let zero = _mm512_setzero_si512();
    let mut acc = [_mm512_setzero_ps(); R];
    let full = cols / W * W;
    let mut start = 0;
    while start < full {
        let (xa, xneg) = split_x(_mm512_loadu_si512(xq.add(start).cast()));
        let g0 = start / G;
        let x_scales = load_group_scales::<G>(xs.add(g0));
        let at = start / F::PER_UNIT;
        for (r, acc) in acc.iter_mut().enumerate() {
            prefetch(w, (R + r) * stride + at);
            let d = dot(zero, xa, xneg, F::load_avx512(w.add(r * stride + at)));
            *acc = if G == W && F::VNNI_SCALE_DOT_FIRST {
                let t = _mm512_mul_ps(_mm512_cvtepi32_ps(d), x_scales);
                _mm512_fmadd_ps(t, _mm512_set1_ps(*ws.add(r * per_row + g0)), *acc)
            } else {
                let s = _mm512_mul_ps(load_group_scales::<G>(ws.add(r * per_row + g0)), x_scales);
                let s = if G == W {
                    s
                } else {
                    _mm512_permutexvar_ps(lane_group, s)
                };
                _mm512_fmadd_ps(_mm512_cvtepi32_ps(d), s, *acc)
            };
        }
        start += W;
    }
    if full < cols {
        // The row tail: whole groups, fewer than 64 weights; masked loads, once per row.
        let len = cols - full;
        let groups = ((1u32 << (len / G)) - 1) as __mmask16;
        let g0 = full / G;
        let (xa, xneg) = split_x(_mm512_maskz_loadu_epi8(byte_mask(len), xq.add(full)));
        let x_scales = _mm512_maskz_loadu_ps(groups, xs.add(g0));
        let at = full / F::PER_UNIT;
        for (r, acc) in acc.iter_mut().enumerate() {
            let d = dot(
                zero,
                xa,
                xneg,
                F::load_avx512_masked(w.add(r * stride + at), len),
            );
            let s = _mm512_mul_ps(
                _mm512_maskz_loadu_ps(groups, ws.add(r * per_row + g0)),
                x_scales,
            );
            *acc = _mm512_fmadd_ps(
                _mm512_cvtepi32_ps(d),
                _mm512_permutexvar_ps(lane_group, s),
                *acc,
            );
        }
    }
    for (r, acc) in acc.iter().enumerate() {
        *out.add(r) = _mm512_reduce_add_ps(*acc);
    }
}

/// `R` rows, any group size (a multiple of `PER_UNIT`): each group's chunks summed in i32,
/// then scaled.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
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
    let rest = group - full;
    let mut acc = [_mm512_setzero_ps(); R];
    for g in 0..per_row {
        let base = g * group;
        let mut d = [_mm512_setzero_si512(); R];
        let mut at = 0;
        while at < full {
            let (xa, xneg) = split_x(_mm512_loadu_si512(xq.add(base + at).cast()));
            let unit = (base + at) / F::PER_UNIT;
            for (r, d) in d.iter_mut().enumerate() {
                prefetch(w, (R + r) * stride + unit);
                *d = dot(*d, xa, xneg, F::load_avx512(w.add(r * stride + unit)));
            }
            at += W;
        }
        if rest > 0 {
            let (xa, xneg) = split_x(_mm512_maskz_loadu_epi8(
                byte_mask(rest),
                xq.add(base + full),
            ));
            let unit = (base + full) / F::PER_UNIT;
            for (r, d) in d.iter_mut().enumerate() {
                *d = dot(
                    *d,
                    xa,
                    xneg,
                    F::load_avx512_masked(w.add(r * stride + unit), rest),
                );
            }
        }
        let x_scale = *xs.add(g);
        for (r, acc) in acc.iter_mut().enumerate() {
            let scale = _mm512_set1_ps(*ws.add(r * per_row + g) * x_scale);
            *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d[r]), scale, *acc);
        }
    }
    for (r, acc) in acc.iter().enumerate() {
        *out.add(r) = _mm512_reduce_add_ps(*acc);
    }
}
