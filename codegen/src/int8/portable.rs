//! Portable int8 kernels: the same tiled walk in plain Rust, integer dot products per lane
//! then one multiply-add per group, as the SIMD paths do.

use proc_macro2::TokenStream;
use quote::quote;

use super::Int8Emitter;
use crate::emit::{ident, lit};

/// The portable emitter.
pub(crate) struct Portable;

impl Int8Emitter for Portable {
    const MODULE: &'static str = "int8_portable";
    const VARIANT: &'static str = "Portable";
    const ARCH: Option<&'static str> = None;
    const FEATURES: Option<&'static str> = None;
    const REQUIREMENT: &'static str = "nothing beyond the target's baseline";
    const DOC: &'static str = "Plain-Rust int8 kernels on the tiled layout: the fallback, and \
        the reference the SIMD kernels are compared with.";

    const PREFETCHES: bool = false;
    const BATCH_TOKENS: usize = 2;
    const LANES: usize = 1;

    fn import() -> TokenStream {
        quote!()
    }

    fn acc_type() -> TokenStream {
        quote!(f32)
    }

    fn zero() -> TokenStream {
        quote!(0.0)
    }

    fn hsum() -> TokenStream {
        quote!(acc)
    }

    fn broadcast(n: usize) -> (TokenStream, TokenStream) {
        let n = lit(n);
        (
            quote!([f32; #n]),
            quote!(unsafe { p.cast::<[f32; #n]>().read_unaligned() }),
        )
    }

    fn helpers(q8_period: Option<usize>, q4_period: Option<usize>) -> TokenStream {
        let q8 = q8_period.map(|n| {
            let bn = ident(&format!("broadcast{n}"));
            let n_lit = lit(n);
            quote! {
                #[doc = " One 64-value block of the input (the lane corrections are for `vpdpbusd`)."]
                #[inline]
                unsafe fn x_block(p: *const i8, _corr: *const i32) -> [i8; 64] {
                    unsafe { p.cast::<[i8; 64]>().read_unaligned() }
                }

                #[doc = " `acc + Σ_groups (Σ w·x) · w_scale · x_scale` for one block of a row; lane i"]
                #[doc = " (four values) belongs to group i % N."]
                #[inline]
                unsafe fn q8_step(
                    acc: f32,
                    x: [i8; 64],
                    x_scales: [f32; #n_lit],
                    w: *const i8,
                    w_scales: *const f32,
                ) -> f32 {
                    let (w, w_scales) = unsafe { (w.cast::<[i8; 64]>().read_unaligned(), #bn(w_scales)) };
                    let mut dots = [0i32; #n_lit];
                    for (lane, (wl, xl)) in w.chunks_exact(4).zip(x.chunks_exact(4)).enumerate() {
                        // The tiled bytes are q + 128: XOR 0x80 gives q back.
                        let dot: i32 = wl.iter().zip(xl).map(|(&a, &b)| (a ^ i8::MIN) as i32 * b as i32).sum();
                        dots[lane % dots.len()] += dot;
                    }
                    let mut acc = acc;
                    for ((&dot, &xs), &ws) in dots.iter().zip(&x_scales).zip(&w_scales) {
                        acc += dot as f32 * (xs * ws);
                    }
                    acc
                }
            }
        });
        let q4 = q4_period.map(|n| {
            let bn = ident(&format!("broadcast{n}"));
            let n_lit = lit(n);
            quote! {
                #[doc = " A block of the input and its lane corrections `-8 · Σ x`."]
                #[inline]
                unsafe fn x4_block(p: *const i8, corr: *const i32) -> ([i8; 64], [i32; 16]) {
                    unsafe {
                        (
                            p.cast::<[i8; 64]>().read_unaligned(),
                            corr.cast::<[i32; 16]>().read_unaligned(),
                        )
                    }
                }

                #[doc = " One row's 64 bytes: low nibbles are one block, high nibbles the next; the"]
                #[doc = " nibbles are q + 8, which the lane corrections take back out."]
                #[inline]
                unsafe fn q4_step(
                    acc: f32,
                    x_low: ([i8; 64], [i32; 16]),
                    x_high: ([i8; 64], [i32; 16]),
                    x_scales_low: [f32; #n_lit],
                    x_scales_high: [f32; #n_lit],
                    w: *const u8,
                    w_scales: *const f32,
                ) -> f32 {
                    let bytes = unsafe { w.cast::<[u8; 64]>().read_unaligned() };
                    let halves = [
                        (0, x_low, x_scales_low, unsafe { #bn(w_scales) }),
                        (4, x_high, x_scales_high, unsafe { #bn(w_scales.add(#n_lit)) }),
                    ];
                    let mut acc = acc;
                    for (shift, (x, corr), x_scales, w_scales) in halves {
                        let mut dots = [0i32; #n_lit];
                        for (lane, (bl, xl)) in bytes.chunks_exact(4).zip(x.chunks_exact(4)).enumerate() {
                            let dot: i32 = bl
                                .iter()
                                .zip(xl)
                                .map(|(&b, &v)| ((b >> shift) & 0x0F) as i32 * v as i32)
                                .sum();
                            dots[lane % dots.len()] += dot + corr[lane];
                        }
                        for ((&dot, &xs), &ws) in dots.iter().zip(&x_scales).zip(&w_scales) {
                            acc += dot as f32 * (xs * ws);
                        }
                    }
                    acc
                }
            }
        });
        quote! {
            #q8
            #q4
        }
    }
}
