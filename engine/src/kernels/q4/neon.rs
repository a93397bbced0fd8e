//! NEON Q4_0 GEMV: the int8 NEON kernel with the weights unpacked in registers.
//!
//! Unpacking: 8 packed bytes → low nibbles (`& 0x0F`) and high nibbles (`>> 4`), interleaved
//! back into natural order with `zip1`/`zip2` (element `2i` low, `2i + 1` high), combined
//! into 16 bytes and `- 8` → int8 in [-8, 7]. Then four-byte dot products per i32 lane, by
//! `sdot` (`asm!` under `dotprod`, as in the int8 kernel) or by widening multiplies.
//!
//! One kernel body per primitive, with the int8 kernel's two loops: **packed** for groups 4,
//! 8 and 16 (lane `j` belongs to group `4j / group`, row tails in scalar) and **per group** for
//! any other even group (full 16-weight chunks in i32, remainder in scalar).

use core::arch::aarch64::*;

/// Weights per chunk (16 int8 lanes; 8 packed bytes).
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

/// The 16 weights whose 8 packed bytes start at `p`, as int8 in natural order.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn load_w(p: *const u8) -> int8x16_t {
    let b = vld1_u8(p);
    let lo = vand_u8(b, vdup_n_u8(0x0F));
    let hi = vshr_n_u8::<4>(b);
    let n = vcombine_u8(vzip1_u8(lo, hi), vzip2_u8(lo, hi));
    vsubq_s8(vreinterpretq_s8_u8(n), vdupq_n_s8(8))
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

macro_rules! kernel {
    ($name:ident, $features:literal, $dot:ident) => {
        /// # Safety
        /// The CPU must support the enabled features; lengths as in [`super::Q4MatmulFn`].
        #[target_feature(enable = $features)]
        pub unsafe fn $name(
            out: &mut [f32],
            wq: &[u8],
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
                let w = wq.as_ptr().add(r * cols / 2);
                let s = ws.as_ptr().add(r * per_row);
                *o = if packed {
                    let full = cols / W * W;
                    let mut acc = vdupq_n_f32(0.0);
                    let mut at = 0;
                    while at < full {
                        let d = $dot(vdupq_n_s32(0), load_w(w.add(at / 2)), vld1q_s8(xp.add(at)));
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
                        tail += dot_scalar(w.add(at / 2), xp.add(at), group) as f32
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
                                d = $dot(
                                    d,
                                    load_w(w.add((base + at) / 2)),
                                    vld1q_s8(xp.add(base + at)),
                                );
                                at += W;
                            }
                            acc = vfmaq_n_f32(acc, vcvtq_f32_s32(d), scale);
                        }
                        if full < group {
                            tail += dot_scalar(
                                w.add((base + full) / 2),
                                xp.add(base + full),
                                group - full,
                            ) as f32
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
