//! AVX-512 VNNI: `vpdpbusd` sums four u8 × i8 products into each i32 lane, one 64-value block
//! per instruction.

use proc_macro2::TokenStream;
use quote::quote;

use super::Int8Emitter;
use crate::emit::{comment, ident};

/// The AVX-512 VNNI emitter.
pub(crate) struct Avx512Vnni;

const FEATURES: &str = "avx512f,avx512bw,avx512vnni";

impl Int8Emitter for Avx512Vnni {
    const MODULE: &'static str = "int8_avx512vnni";
    const VARIANT: &'static str = "Avx512Vnni";
    const ARCH: Option<&'static str> = Some("x86_64");
    const FEATURES: Option<&'static str> = Some(FEATURES);
    const REQUIREMENT: &'static str = "AVX-512F, AVX-512BW and AVX-512 VNNI";
    const DOC: &'static str = "AVX-512 VNNI int8 kernels: `vpdpbusd` on 64-value blocks, the \
        unsigned operand being the offset weights (Q8_0 bytes `q + 128`, Q4_0 nibbles `q + 8`) \
        and each lane starting from the input's correction.";

    const PREFETCHES: bool = true;
    const BATCH_TOKENS: usize = 4;
    const LANES: usize = 16;

    fn import() -> TokenStream {
        quote!(
            use core::arch::x86_64::*;
        )
    }

    fn acc_type() -> TokenStream {
        quote!(__m512)
    }

    fn zero() -> TokenStream {
        quote!(_mm512_setzero_ps())
    }

    fn hsum() -> TokenStream {
        quote!(_mm512_reduce_add_ps(acc))
    }

    fn broadcast(n: usize) -> (TokenStream, TokenStream) {
        let body = match n {
            1 => quote!(_mm512_set1_ps(*p)),
            2 => quote!(_mm512_castpd_ps(_mm512_set1_pd(
                p.cast::<f64>().read_unaligned()
            ))),
            4 => quote!(_mm512_broadcast_f32x4(_mm_loadu_ps(p))),
            _ => unreachable!("tiled groups give periods 1, 2 or 4"),
        };
        (quote!(__m512), body)
    }

    fn prefetch() -> TokenStream {
        quote!(_mm_prefetch::<_MM_HINT_T0>(p.cast::<i8>().wrapping_add(PREFETCH_BYTES));)
    }

    fn helpers(q8_period: Option<usize>, q4_period: Option<usize>) -> TokenStream {
        let q8 = q8_period.map(|n| {
            let bn = ident(&format!("broadcast{n}"));
            let offset = comment(
                "The weights are q + 128 (unsigned, as `vpdpbusd` wants one side): starting \
                 each lane at -128·Σx leaves Σ q·x.",
            );
            quote! {
                #[doc = " A block of the input and its lane corrections `-128 · Σ x`."]
                #[target_feature(enable = #FEATURES)]
                #[inline]
                unsafe fn x_block(p: *const i8, corr: *const i32) -> (__m512i, __m512i) {
                    (_mm512_loadu_si512(p.cast()), _mm512_loadu_si512(corr.cast()))
                }

                #[doc = " `acc + Σ q·x · w_scale · x_scale` per lane for one 64-value block of a row."]
                #[target_feature(enable = #FEATURES)]
                #[inline]
                unsafe fn q8_step(
                    acc: __m512,
                    x: (__m512i, __m512i),
                    x_scales: __m512,
                    w: *const i8,
                    w_scales: *const f32,
                ) -> __m512 {
                    #offset
                    let dot = _mm512_dpbusd_epi32(x.1, _mm512_loadu_si512(w.cast()), x.0);
                    let scales = _mm512_mul_ps(x_scales, #bn(w_scales));
                    _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), scales, acc)
                }
            }
        });
        let q4 = q4_period.map(|n| {
            let bn = ident(&format!("broadcast{n}"));
            let n_lit = crate::emit::lit(n);
            let offset = comment("The nibbles are q + 8: starting each lane at -8·Σx leaves Σ q·x.");
            quote! {
                #[doc = " A block of the input and its lane corrections `-8 · Σ x`."]
                #[target_feature(enable = #FEATURES)]
                #[inline]
                unsafe fn x4_block(p: *const i8, corr: *const i32) -> (__m512i, __m512i) {
                    (_mm512_loadu_si512(p.cast()), _mm512_loadu_si512(corr.cast()))
                }

                #[doc = " One row's 64 bytes: the low nibbles are one block, the high nibbles the next."]
                #[target_feature(enable = #FEATURES)]
                #[inline]
                unsafe fn q4_step(
                    acc: __m512,
                    x_low: (__m512i, __m512i),
                    x_high: (__m512i, __m512i),
                    x_scales_low: __m512,
                    x_scales_high: __m512,
                    w: *const u8,
                    w_scales: *const f32,
                ) -> __m512 {
                    let bytes = _mm512_loadu_si512(w.cast());
                    let nibble = _mm512_set1_epi8(0x0F);
                    let low = _mm512_and_si512(bytes, nibble);
                    let high = _mm512_and_si512(_mm512_srli_epi16::<4>(bytes), nibble);
                    #offset
                    let dot_low = _mm512_dpbusd_epi32(x_low.1, low, x_low.0);
                    let dot_high = _mm512_dpbusd_epi32(x_high.1, high, x_high.0);
                    let scales_low = _mm512_mul_ps(x_scales_low, #bn(w_scales));
                    let scales_high = _mm512_mul_ps(x_scales_high, #bn(w_scales.add(#n_lit)));
                    let acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot_low), scales_low, acc);
                    _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot_high), scales_high, acc)
                }
            }
        });
        quote! {
            #q8
            #q4
        }
    }
}
