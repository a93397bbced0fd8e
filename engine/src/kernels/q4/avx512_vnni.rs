//! AVX-512 VNNI Q4_0 GEMV: the int8 VNNI kernel with the weights unpacked in registers.
//!
//! Unpacking: 32 packed bytes (64 weights) are zero-extended to 32 u16 lanes (`vpmovzxbw`),
//! so lane `i` holds byte `i` = `0x00HL` (H the high nibble, element `2i + 1`; L the low,
//! element `2i`). `lane | lane << 4` = `0x0H?L`, and `& 0x0F0F` leaves bytes `L, H`: the 64
//! weights as bytes in their natural order, then `- 8` gives int8 in [-8, 7]. Natural order
//! means everything downstream is the int8 kernel unchanged: the activations are the same
//! int8 groups, and a group still maps to the same i32 lanes.
//!
//! Sign handling as in the int8 kernel: `|x|` is `vpdpbusd`'s unsigned operand and the weight
//! takes x's sign (-(-8) = 8 fits in int8).
//!
//! Two loops by group size, as the int8 kernel: **packed** (groups of 4 to 64 tile a
//! 64-weight chunk; per-lane scales by one permute) and **per group** (any other even group;
//! i32 per group, a masked remainder). Rows go four at a time (each x chunk split once for
//! four weight streams, the next tile prefetched), then one; every tile does the same
//! arithmetic per row, so results do not depend on the tiling or the thread split.

use core::arch::x86_64::*;

/// Weights per chunk (64 int8 lanes; 32 packed bytes).
const W: usize = 64;

/// # Safety
/// AVX-512F/BW and AVX-512VNNI must be available; lengths as in [`super::Q4MatmulFn`].
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
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
            64 => packed!(64),
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

/// 32 packed bytes → 64 int8 weights in natural order (see the module notes).
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn unpack(b: __m256i) -> __m512i {
    let z = _mm512_cvtepu8_epi16(b);
    let z = _mm512_or_si512(z, _mm512_slli_epi16::<4>(z));
    let z = _mm512_and_si512(z, _mm512_set1_epi16(0x0F0F));
    _mm512_sub_epi8(z, _mm512_set1_epi8(8))
}

/// The 64 weights whose 32 packed bytes start at `p`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn load_w(p: *const u8) -> __m512i {
    unpack(_mm256_loadu_si256(p.cast()))
}

/// The first `2 * n` weights at `p` (`n` ≤ 32 bytes read); the rest unpack from zero bytes
/// to -8, harmless because the matching input lanes are masked to 0.
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn load_w_masked(p: *const u8, n: usize) -> __m512i {
    // A 512-bit masked load (AVX-512BW; the 256-bit form would need AVX-512VL) of at most 32
    // bytes, of which the low half is kept.
    let bytes = _mm512_maskz_loadu_epi8(byte_mask(n.min(32)), p.cast());
    unpack(_mm512_castsi512_si256(bytes))
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
fn byte_mask(n: usize) -> __mmask64 {
    if n >= W {
        !0
    } else {
        (1u64 << n) - 1
    }
}

/// The `W / G` floats at `p` in the low lanes (exactly that many are read).
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

/// `R` rows from `w` (row stride `cols / 2` bytes, scale stride `cols / G`), group `G`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
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
        for (r, acc) in acc.iter_mut().enumerate() {
            prefetch(w, (R + r) * stride + start / 2);
            let d = dot(zero, xa, xneg, load_w(w.add(r * stride + start / 2)));
            let s = _mm512_mul_ps(load_group_scales::<G>(ws.add(r * per_row + g0)), x_scales);
            let s = if G == W {
                s
            } else {
                _mm512_permutexvar_ps(lane_group, s)
            };
            *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d), s, *acc);
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
        for (r, acc) in acc.iter_mut().enumerate() {
            let d = dot(
                zero,
                xa,
                xneg,
                load_w_masked(w.add(r * stride + full / 2), len / 2),
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

/// `R` rows, any even group size: each group's chunks summed in i32, then scaled.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
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
    let rest = group - full;
    let mut acc = [_mm512_setzero_ps(); R];
    for g in 0..per_row {
        let base = g * group;
        let mut d = [_mm512_setzero_si512(); R];
        let mut at = 0;
        while at < full {
            let (xa, xneg) = split_x(_mm512_loadu_si512(xq.add(base + at).cast()));
            for (r, d) in d.iter_mut().enumerate() {
                prefetch(w, (R + r) * stride + (base + at) / 2);
                *d = dot(*d, xa, xneg, load_w(w.add(r * stride + (base + at) / 2)));
            }
            at += W;
        }
        if rest > 0 {
            let (xa, xneg) = split_x(_mm512_maskz_loadu_epi8(
                byte_mask(rest),
                xq.add(base + full),
            ));
            for (r, d) in d.iter_mut().enumerate() {
                *d = dot(
                    *d,
                    xa,
                    xneg,
                    load_w_masked(w.add(r * stride + (base + full) / 2), rest / 2),
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
