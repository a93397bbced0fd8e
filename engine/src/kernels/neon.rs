//! NEON kernels: four rows per pass share each loaded x vector; the column tail (< 4) is
//! summed in scalar.

use super::{tail_dot, Elem};
use core::arch::aarch64::*;

const W: usize = 4;

/// The vector loads of an [`Elem`], so each kernel below is one body for f32 and f16 rows.
trait Load: Elem {
    /// `W` values at `p`, as f32.
    unsafe fn load(p: *const Self) -> float32x4_t;
    /// A lone row's dot product with `x` (the rows after the four-row passes), each type in
    /// its own accumulation order, which its results are pinned to.
    unsafe fn dot_row(row: &[Self], x: &[f32]) -> f32;
}

impl Load for f32 {
    #[inline(always)]
    unsafe fn load(p: *const f32) -> float32x4_t {
        vld1q_f32(p)
    }

    #[inline(always)]
    unsafe fn dot_row(row: &[f32], x: &[f32]) -> f32 {
        dot(row, x)
    }
}

impl Load for u16 {
    #[inline(always)]
    unsafe fn load(p: *const u16) -> float32x4_t {
        load_half(p)
    }

    #[inline(always)]
    unsafe fn dot_row(row: &[u16], x: &[f32]) -> f32 {
        let full = x.len() / W * W;
        let mut a = vdupq_n_f32(0.0);
        let mut j = 0;
        while j < full {
            a = vfmaq_f32(
                a,
                load_half(row.as_ptr().add(j)),
                vld1q_f32(x.as_ptr().add(j)),
            );
            j += W;
        }
        vaddvq_f32(a) + tail_dot(&row[full..], &x[full..])
    }
}

/// 4 binary16 values at `p`, widened (exactly) to f32 with `fcvtl`: the f16 NEON intrinsics
/// are unstable in Rust, the instruction itself is base AArch64.
#[inline(always)]
unsafe fn load_half(p: *const u16) -> float32x4_t {
    let h = vld1_u16(p);
    let o: float32x4_t;
    core::arch::asm!(
        "fcvtl {o:v}.4s, {h:v}.4h",
        o = lateout(vreg) o,
        h = in(vreg) h,
        options(pure, nomem, nostack, preserves_flags)
    );
    o
}

/// # Safety
/// NEON must be available (always on aarch64); `w.len() == out.len() * x.len()`.
#[target_feature(enable = "neon")]
pub unsafe fn matmul(out: &mut [f32], w: &[f32], x: &[f32]) {
    matmul_of(out, w, x)
}

/// `matmul` over binary16 rows (the f16 key cache).
///
/// # Safety
/// NEON must be available; `w.len() == out.len() * x.len()`.
#[target_feature(enable = "neon")]
pub unsafe fn matmul_f16(out: &mut [f32], w: &[u16], x: &[f32]) {
    matmul_of(out, w, x)
}

#[target_feature(enable = "neon")]
unsafe fn matmul_of<T: Load>(out: &mut [f32], w: &[T], x: &[f32]) {
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
            a0 = vfmaq_f32(a0, T::load(p0.add(j)), xv);
            a1 = vfmaq_f32(a1, T::load(p1.add(j)), xv);
            a2 = vfmaq_f32(a2, T::load(p2.add(j)), xv);
            a3 = vfmaq_f32(a3, T::load(p3.add(j)), xv);
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
        out[r] = T::dot_row(&w[r * n..(r + 1) * n], x);
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

/// # Safety
/// NEON must be available; `rows.len() == weights.len() * out.len()`.
#[target_feature(enable = "neon")]
pub unsafe fn weighted_sum(out: &mut [f32], weights: &[f32], rows: &[f32]) {
    weighted_sum_of(out, weights, rows)
}

/// `weighted_sum` over binary16 rows (the f16 value cache).
///
/// # Safety
/// NEON must be available; `rows.len() == weights.len() * out.len()`.
#[target_feature(enable = "neon")]
pub unsafe fn weighted_sum_f16(out: &mut [f32], weights: &[f32], rows: &[u16]) {
    weighted_sum_of(out, weights, rows)
}

#[target_feature(enable = "neon")]
unsafe fn weighted_sum_of<T: Load>(out: &mut [f32], weights: &[f32], rows: &[T]) {
    let n = out.len();
    let full = n / W * W;
    let mut c = 0;
    // Up to four output vectors stay in registers while every row streams past once; a
    // longer output takes several passes over the rows, each on its own columns.
    while c < full {
        let vecs = ((full - c) / W).min(4);
        let (o, p) = (out.as_mut_ptr().add(c), rows.as_ptr().add(c));
        match vecs {
            1 => weighted_block::<T, 1>(o, weights, p, n),
            2 => weighted_block::<T, 2>(o, weights, p, n),
            3 => weighted_block::<T, 3>(o, weights, p, n),
            _ => weighted_block::<T, 4>(o, weights, p, n),
        }
        c += vecs * W;
    }
    for (c, o) in out.iter_mut().enumerate().skip(full) {
        *o = weights
            .iter()
            .zip(rows.iter().skip(c).step_by(n))
            .map(|(w, v)| w * v.to_f32())
            .sum();
    }
}

/// `V` output vectors at `out` summed over all rows; `rows` points at this block's columns of
/// row 0 and rows are `stride` apart.
#[target_feature(enable = "neon")]
unsafe fn weighted_block<T: Load, const V: usize>(
    out: *mut f32,
    weights: &[f32],
    rows: *const T,
    stride: usize,
) {
    // Two accumulator sets (even and odd rows) so consecutive FMAs into one register are not
    // back to back: one set alone would be bound by FMA latency, not by the loads.
    let mut a = [vdupq_n_f32(0.0); V];
    let mut b = [vdupq_n_f32(0.0); V];
    let mut r = 0;
    while r + 2 <= weights.len() {
        let p0 = rows.add(r * stride);
        let p1 = p0.add(stride);
        let w0 = vdupq_n_f32(*weights.get_unchecked(r));
        let w1 = vdupq_n_f32(*weights.get_unchecked(r + 1));
        for v in 0..V {
            a[v] = vfmaq_f32(a[v], T::load(p0.add(v * W)), w0);
            b[v] = vfmaq_f32(b[v], T::load(p1.add(v * W)), w1);
        }
        r += 2;
    }
    if r < weights.len() {
        let p0 = rows.add(r * stride);
        let w0 = vdupq_n_f32(*weights.get_unchecked(r));
        for (v, acc) in a.iter_mut().enumerate() {
            *acc = vfmaq_f32(*acc, T::load(p0.add(v * W)), w0);
        }
    }
    for (v, (&x, &y)) in a.iter().zip(&b).enumerate() {
        vst1q_f32(out.add(v * W), vaddq_f32(x, y));
    }
}

/// `e^x` to a few ulp for `x <= 0`; 0 below -87 (where `e^x` would leave the normal range),
/// so a softmax never produces denormals or NaN from very negative scores.
#[target_feature(enable = "neon")]
unsafe fn exp(x: float32x4_t) -> float32x4_t {
    use super::exp_poly::*;
    let xc = vmaxq_f32(x, vdupq_n_f32(MIN_X));
    let n = vrndnq_f32(vmulq_f32(xc, vdupq_n_f32(LOG2E)));
    let r = vfmsq_f32(xc, n, vdupq_n_f32(LN2_HI));
    let r = vfmsq_f32(r, n, vdupq_n_f32(LN2_LO));
    let mut p = vdupq_n_f32(P[0]);
    for &c in &P[1..] {
        p = vfmaq_f32(vdupq_n_f32(c), p, r);
    }
    let y = vfmaq_f32(vaddq_f32(r, vdupq_n_f32(1.0)), p, vmulq_f32(r, r));
    let two_n = vreinterpretq_f32_s32(vshlq_n_s32::<23>(vaddq_s32(
        vcvtq_s32_f32(n),
        vdupq_n_s32(127),
    )));
    let keep = vcgeq_f32(x, vdupq_n_f32(MIN_X));
    vreinterpretq_f32_u32(vandq_u32(keep, vreinterpretq_u32_f32(vmulq_f32(y, two_n))))
}

/// # Safety
/// NEON must be available.
#[target_feature(enable = "neon")]
pub unsafe fn softmax(x: &mut [f32], scale: f32) {
    let n = x.len();
    let full = n / W * W;
    let p = x.as_mut_ptr();
    // The tail (< 4) goes through a padded copy: -inf padding is neutral for the max and
    // becomes exactly 0 in the exponential, so it adds nothing to the sum.
    let mut tail = [f32::NEG_INFINITY; W];
    tail[..n - full].copy_from_slice(&x[full..]);
    let tp = tail.as_mut_ptr();
    let mut mx = vld1q_f32(tp);
    let mut j = 0;
    while j < full {
        mx = vmaxq_f32(mx, vld1q_f32(p.add(j)));
        j += W;
    }
    let max = vdupq_n_f32(vmaxvq_f32(mx));
    let scale = vdupq_n_f32(scale);
    let mut sum = vdupq_n_f32(0.0);
    for q in (0..full).step_by(W).map(|j| p.add(j)).chain([tp]) {
        let e = exp(vmulq_f32(vsubq_f32(vld1q_f32(q), max), scale));
        vst1q_f32(q, e);
        sum = vaddq_f32(sum, e);
    }
    let inv = 1.0 / vaddvq_f32(sum);
    let vinv = vdupq_n_f32(inv);
    j = 0;
    while j < full {
        vst1q_f32(p.add(j), vmulq_f32(vld1q_f32(p.add(j)), vinv));
        j += W;
    }
    for (v, &t) in x[full..].iter_mut().zip(&tail) {
        *v = t * inv;
    }
}

/// `clamp(round_half_away(x / scale), ±127)` per lane, with the reference's exact steps
/// (the f32 division, truncation, then a step away from zero when the exact remainder is at
/// least one half; a true compare is all ones, -1 as i32, so subtracting it adds one).
/// `scale` must be finite and non-zero, so every quotient fits an i32.
#[target_feature(enable = "neon")]
unsafe fn quantize4(x: float32x4_t, scale: float32x4_t) -> int32x4_t {
    let v = vdivq_f32(x, scale);
    let t = vcvtq_s32_f32(v);
    let frac = vsubq_f32(v, vcvtq_f32_s32(t));
    let up = vreinterpretq_s32_u32(vcgeq_f32(frac, vdupq_n_f32(0.5)));
    let down = vreinterpretq_s32_u32(vcleq_f32(frac, vdupq_n_f32(-0.5)));
    let r = vaddq_s32(vsubq_s32(t, up), down);
    vmaxq_s32(vminq_s32(r, vdupq_n_s32(127)), vdupq_n_s32(-127))
}

/// Activation quantisation, bit for bit the reference `quant::quantize_activations`; each
/// group goes 8 values at a time, then 4, its last `group % 4` in scalar.
///
/// # Safety
/// NEON must be available (always on aarch64); `group > 0` divides `x.len()`,
/// `q.len() == x.len()` and `scales.len() == x.len() / group`.
#[target_feature(enable = "neon")]
pub unsafe fn quantize_activations(x: &[f32], group: usize, q: &mut [i8], scales: &mut [f32]) {
    let full = group / W * W;
    let abs = vdupq_n_u32(0x7FFF_FFFF);
    for ((x, q), s) in x
        .chunks_exact(group)
        .zip(q.chunks_exact_mut(group))
        .zip(scales.iter_mut())
    {
        let (xp, qp) = (x.as_ptr(), q.as_mut_ptr());
        let mut m = vdupq_n_u32(0);
        let mut j = 0;
        while j < full {
            let bits = vreinterpretq_u32_f32(vld1q_f32(xp.add(j)));
            m = vmaxq_u32(m, vandq_u32(bits, abs));
            j += W;
        }
        let m = vmaxvq_u32(m).max(super::scalar::max_abs_bits(&x[full..]));
        let (scale, finite) = super::scalar::group_scale(m);
        *s = scale;
        if !finite {
            q.fill(0);
            continue;
        }
        let sv = vdupq_n_f32(scale);
        let mut j = 0;
        while j + 2 * W <= full {
            let lo = vqmovn_s32(quantize4(vld1q_f32(xp.add(j)), sv));
            let hi = vqmovn_s32(quantize4(vld1q_f32(xp.add(j + W)), sv));
            vst1_s8(qp.add(j), vqmovn_s16(vcombine_s16(lo, hi)));
            j += 2 * W;
        }
        if j < full {
            let r = vqmovn_s32(quantize4(vld1q_f32(xp.add(j)), sv));
            let r8 = vreinterpret_u32_s8(vqmovn_s16(vcombine_s16(r, r)));
            vst1_lane_u32::<0>(qp.add(j).cast(), r8);
        }
        for (q, &v) in q[full..].iter_mut().zip(&x[full..]) {
            *q = super::scalar::quantize_value(v, scale);
        }
    }
}

/// `x` rounded to binary16 (nearest, ties to even, the FPCR default), bit for bit
/// `fp16::from_f32`; `fcvtn` through `asm!` for the reason given at `load_half`.
///
/// # Safety
/// NEON must be available; `out.len() == x.len()`.
#[target_feature(enable = "neon")]
pub unsafe fn f32_to_f16(out: &mut [u16], x: &[f32]) {
    let n = x.len();
    let full = n / W * W;
    let mut j = 0;
    while j < full {
        let v = vld1q_f32(x.as_ptr().add(j));
        let h: uint16x4_t;
        core::arch::asm!(
            "fcvtn {h:v}.4h, {v:v}.4s",
            h = lateout(vreg) h,
            v = in(vreg) v,
            options(pure, nomem, nostack, preserves_flags)
        );
        vst1_u16(out.as_mut_ptr().add(j), h);
        j += W;
    }
    crate::base::fp16::slice_from_f32(&mut out[full..], &x[full..]);
}
