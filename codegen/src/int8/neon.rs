//! NEON with the dot-product extension: `sdot` sums four i8 × i8 products into each i32 lane;
//! a 64-value block is four 16-byte vectors. Signed × signed, so Q8_0 needs no sign trick and
//! Q4_0's nibbles (0..=15) go in as they are.

use proc_macro2::TokenStream;
use quote::quote;

use super::Int8Emitter;
use crate::emit::{comment, ident, lit};

/// The NEON dot-product emitter.
pub(crate) struct NeonDotprod;

const FEATURES: &str = "neon,dotprod";

impl Int8Emitter for NeonDotprod {
    const MODULE: &'static str = "int8_neon_dotprod";
    const VARIANT: &'static str = "NeonDotprod";
    const ARCH: Option<&'static str> = Some("aarch64");
    const FEATURES: Option<&'static str> = Some(FEATURES);
    const REQUIREMENT: &'static str = "NEON and the dot-product extension (FEAT_DotProd)";
    const DOC: &'static str = "NEON dot-product int8 kernels: `sdot` on four 16-byte vectors \
        per 64-value block, signed input times the signed weights (Q8_0) or the unsigned \
        nibbles (Q4_0).";

    // No software prefetch: there is no aarch64 machine here to tune a distance on (qemu's
    // timings mean nothing), and the stream is sequential, which the hardware prefetchers of
    // the cores with dotprod follow; a guessed distance could only cost.
    const PREFETCHES: bool = false;
    const BATCH_TOKENS: usize = 4;
    const LANES: usize = 4;

    fn import() -> TokenStream {
        quote!(
            use core::arch::aarch64::*;
        )
    }

    fn acc_type() -> TokenStream {
        quote!(float32x4_t)
    }

    fn zero() -> TokenStream {
        quote!(vdupq_n_f32(0.0))
    }

    fn hsum() -> TokenStream {
        quote!(vaddvq_f32(acc))
    }

    fn broadcast(n: usize) -> (TokenStream, TokenStream) {
        let body = match n {
            1 => quote!(vdupq_n_f32(*p)),
            2 => quote! {
                let v = vld1_f32(p);
                vcombine_f32(v, v)
            },
            4 => quote!(vld1q_f32(p)),
            _ => unreachable!("tiled groups give periods 1, 2 or 4"),
        };
        (quote!(float32x4_t), body)
    }

    fn helpers(q8_period: Option<usize>, q4_period: Option<usize>) -> TokenStream {
        let stable = comment("`vdotq_s32` is not stable in the toolchains here.");
        let common = quote! {
            #[doc = " `acc + Σ a·b` over each i32 lane's four bytes."]
            #[target_feature(enable = #FEATURES)]
            #[inline]
            unsafe fn sdot(acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
                let mut acc = acc;
                #stable
                core::arch::asm!(
                    "sdot {acc:v}.4s, {a:v}.16b, {b:v}.16b",
                    acc = inout(vreg) acc,
                    a = in(vreg) a,
                    b = in(vreg) b,
                    options(pure, nomem, nostack, preserves_flags)
                );
                acc
            }

            #[doc = " `acc + Σ a·b` per lane over a whole block: lane i of vector v is block lane"]
            #[doc = " 4v + i, of the same group, since the period divides 4."]
            #[target_feature(enable = #FEATURES)]
            #[inline]
            unsafe fn block_dot(acc: int32x4_t, a: int8x16x4_t, b: int8x16x4_t) -> int32x4_t {
                let acc = sdot(acc, a.0, b.0);
                let acc = sdot(acc, a.1, b.1);
                let acc = sdot(acc, a.2, b.2);
                sdot(acc, a.3, b.3)
            }
        };
        let q8 = q8_period.map(|n| {
            let bn = ident(&format!("broadcast{n}"));
            let unoffset = crate::emit::comment(
                "The tiled bytes are q + 128: XOR 0x80 gives q back for the signed `sdot`.",
            );
            quote! {
                #[doc = " One 64-value block of the input (the lane corrections are for `vpdpbusd`)."]
                #[target_feature(enable = #FEATURES)]
                #[inline]
                unsafe fn x_block(p: *const i8, _corr: *const i32) -> int8x16x4_t {
                    vld1q_s8_x4(p)
                }

                #[doc = " `acc + Σ w·x · w_scale · x_scale` per lane for one 64-value block of a row."]
                #[target_feature(enable = #FEATURES)]
                #[inline]
                unsafe fn q8_step(
                    acc: float32x4_t,
                    x: int8x16x4_t,
                    x_scales: float32x4_t,
                    w: *const i8,
                    w_scales: *const f32,
                ) -> float32x4_t {
                    #unoffset
                    let w = vld1q_s8_x4(w);
                    let flip = vdupq_n_s8(i8::MIN);
                    let w = int8x16x4_t(
                        veorq_s8(w.0, flip),
                        veorq_s8(w.1, flip),
                        veorq_s8(w.2, flip),
                        veorq_s8(w.3, flip),
                    );
                    let dot = block_dot(vdupq_n_s32(0), w, x);
                    let scales = vmulq_f32(x_scales, #bn(w_scales));
                    vfmaq_f32(acc, vcvtq_f32_s32(dot), scales)
                }
            }
        });
        let q4 = q4_period.map(|n| {
            let bn = ident(&format!("broadcast{n}"));
            let n_lit = lit(n);
            let fold = comment(
                "Every vector's lane i is of the same group, so the block's corrections fold \
                 onto four lanes once.",
            );
            let offset =
                comment("The nibbles are q + 8: starting each lane at -8·Σx leaves Σ q·x.");
            quote! {
                #[doc = " A block of the input and its lane corrections `-8 · Σ x`, folded onto four"]
                #[doc = " lanes."]
                #[target_feature(enable = #FEATURES)]
                #[inline]
                unsafe fn x4_block(p: *const i8, corr: *const i32) -> (int8x16x4_t, int32x4_t) {
                    let c = vld1q_s32_x4(corr);
                    #fold
                    let corr = vaddq_s32(vaddq_s32(c.0, c.1), vaddq_s32(c.2, c.3));
                    (vld1q_s8_x4(p), corr)
                }

                #[doc = " One row's 64 bytes: the low nibbles are one block, the high nibbles the next."]
                #[target_feature(enable = #FEATURES)]
                #[inline]
                unsafe fn q4_step(
                    acc: float32x4_t,
                    x_low: (int8x16x4_t, int32x4_t),
                    x_high: (int8x16x4_t, int32x4_t),
                    x_scales_low: float32x4_t,
                    x_scales_high: float32x4_t,
                    w: *const u8,
                    w_scales: *const f32,
                ) -> float32x4_t {
                    let b = vld1q_u8_x4(w);
                    let nibble = vdupq_n_u8(0x0F);
                    let low = int8x16x4_t(
                        vreinterpretq_s8_u8(vandq_u8(b.0, nibble)),
                        vreinterpretq_s8_u8(vandq_u8(b.1, nibble)),
                        vreinterpretq_s8_u8(vandq_u8(b.2, nibble)),
                        vreinterpretq_s8_u8(vandq_u8(b.3, nibble)),
                    );
                    let high = int8x16x4_t(
                        vreinterpretq_s8_u8(vshrq_n_u8::<4>(b.0)),
                        vreinterpretq_s8_u8(vshrq_n_u8::<4>(b.1)),
                        vreinterpretq_s8_u8(vshrq_n_u8::<4>(b.2)),
                        vreinterpretq_s8_u8(vshrq_n_u8::<4>(b.3)),
                    );
                    #offset
                    let dot_low = block_dot(x_low.1, low, x_low.0);
                    let dot_high = block_dot(x_high.1, high, x_high.0);
                    let scales_low = vmulq_f32(x_scales_low, #bn(w_scales));
                    let scales_high = vmulq_f32(x_scales_high, #bn(w_scales.add(#n_lit)));
                    let acc = vfmaq_f32(acc, vcvtq_f32_s32(dot_low), scales_low);
                    vfmaq_f32(acc, vcvtq_f32_s32(dot_high), scales_high)
                }
            }
        });
        quote! {
            #common
            #q8
            #q4
        }
    }
}
