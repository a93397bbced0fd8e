//! NEON int8 GEMV. Two ways to get four-weight dot products per i32 lane of a 16-weight chunk:
//! * `sdot` (Armv8.2 dot product), signed × signed, so no sign trick. `vdotq_s32` is not
//!   stable in the toolchains here, hence `asm!` under `#[target_feature(enable = "dotprod")]`,
//!   used only when the CPU reports `dotprod`;
//! * a widening-multiply fallback: `smull`/`smull2` (i8×i8 → i16, exact), two pairwise
//!   widening adds (→ i32) and one pairwise add, which leaves lane `j` with weights `4j..4j+4`
//!   exactly as `sdot` does.
//!
//! Both share one kernel body (a macro instantiated per primitive, so that the `sdot`
//! template is only ever assembled inside a `dotprod` function) with the two loops of the x86
//! kernels: **packed** for groups 4, 8 and 16 (lane `j` belongs to group `4j / group`, row
//! tails shorter than 16 weights in scalar), **per group** for any other group (full chunks
//! in i32, remainder in scalar).

use core::arch::aarch64::*;

use super::{dot_tail, Weights};

/// Weights per chunk (16 int8 lanes).
const W: usize = 16;

/// `acc + Σ4 a·b` per i32 lane with the `sdot` instruction.
#[inline]
#[target_feature(enable = "neon,dotprod")]
unsafe fn dot_sdot(acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
    let mut acc = acc;
    core::arch::asm!(
        "sdot {acc:v}.4s, {a:v}.16b, {b:v}.16b",
        acc = inout(vreg) acc,
        a = in(vreg) a,
        b = in(vreg) b,
        options(pure, nomem, nostack, preserves_flags)
    );
    acc
}

/// `acc + Σ4 a·b` per i32 lane by widening multiplies (no dot-product extension).
#[inline]
#[target_feature(enable = "neon")]
unsafe fn dot_widen(acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
    let lo = vpaddlq_s16(vmull_s8(vget_low_s8(a), vget_low_s8(b)));
    let hi = vpaddlq_s16(vmull_high_s8(a, b));
    vaddq_s32(acc, vpaddq_s32(lo, hi))
}

/// Per-lane scales of one chunk for a packed group (4, 8 or 16): lane `j` gets the scale
/// product of group `4j / group`.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn lane_scales(ws: *const f32, xs: *const f32, group: usize) -> float32x4_t {
    match group {
        4 => vmulq_f32(vld1q_f32(ws), vld1q_f32(xs)),
        8 => {
            let s = vmul_f32(vld1_f32(ws), vld1_f32(xs));
            vcombine_f32(vdup_lane_f32::<0>(s), vdup_lane_f32::<1>(s))
        }
        _ => vdupq_n_f32(*ws * *xs),
    }
}

/// The 16 weights from weight `at` of the row at `w`.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn load<F: Weights>(w: *const F::Unit, at: usize) -> int8x16_t {
    F::load_neon(w.add(at / F::PER_UNIT))
}

macro_rules! kernel {
    ($name:ident, $features:literal, $dot:ident) => {
        /// # Safety
        /// The CPU must support the enabled features; lengths as in [`super::MatmulFn`].
        #[target_feature(enable = $features)]
        pub unsafe fn $name<F: Weights>(
            out: &mut [f32],
            wq: &[F::Unit],
            ws: &[f32],
            xq: &[i8],
            xs: &[f32],
            cols: usize,
            group: usize,
        ) {
            let packed = W.is_multiple_of(group) && group.is_multiple_of(4);
            let per_row = cols / group;
            let (xp, xsp) = (xq.as_ptr(), xs.as_ptr());
            for (r, o) in out.iter_mut().enumerate() {
                let w = wq.as_ptr().add(r * cols / F::PER_UNIT);
                let s = ws.as_ptr().add(r * per_row);
                *o = if packed {
                    let full = cols / W * W;
                    let mut acc = vdupq_n_f32(0.0);
                    let mut at = 0;
                    while at < full {
                        let d = $dot(vdupq_n_s32(0), load::<F>(w, at), vld1q_s8(xp.add(at)));
                        let g = at / group;
                        acc = vfmaq_f32(
                            acc,
                            vcvtq_f32_s32(d),
                            lane_scales(s.add(g), xsp.add(g), group),
                        );
                        at += W;
                    }
                    let mut tail = 0.0f32;
                    while at < cols {
                        let g = at / group;
                        tail += dot_tail::<F>(w, at, xp.add(at), group) as f32
                            * (*s.add(g) * *xsp.add(g));
                        at += group;
                    }
                    vaddvq_f32(acc) + tail
                } else {
                    let full = group / W * W;
                    let mut acc = vdupq_n_f32(0.0);
                    let mut tail = 0.0f32;
                    for g in 0..per_row {
                        let base = g * group;
                        let scale = *s.add(g) * *xsp.add(g);
                        if full > 0 {
                            let mut d = vdupq_n_s32(0);
                            let mut at = 0;
                            while at < full {
                                d = $dot(d, load::<F>(w, base + at), vld1q_s8(xp.add(base + at)));
                                at += W;
                            }
                            acc = vfmaq_n_f32(acc, vcvtq_f32_s32(d), scale);
                        }
                        if full < group {
                            tail += dot_tail::<F>(w, base + full, xp.add(base + full), group - full)
                                as f32
                                * scale;
                        }
                    }
                    vaddvq_f32(acc) + tail
                };
            }
        }
    };
}

kernel!(matmul_dotprod, "neon,dotprod", dot_sdot);
kernel!(matmul_widen, "neon", dot_widen);
