//! AVX2: `vpmaddubsw` (u8 × i8 pairs into i16) then `vpmaddwd` with ones (i16 pairs into
//! i32) gives the four-byte lane sums that VNNI's `vpdpbusd` gives in one instruction; a
//! 64-value block is two 32-byte vectors.

use proc_macro2::TokenStream;
use quote::quote;

use super::Int8Emitter;
use crate::emit::{comment, ident, lit};

/// The AVX2 emitter.
pub(crate) struct Avx2;

const FEATURES: &str = "avx2,fma";

impl Int8Emitter for Avx2 {
    const MODULE: &'static str = "int8_avx2";
    const VARIANT: &'static str = "Avx2";
    const ARCH: Option<&'static str> = Some("x86_64");
    const FEATURES: Option<&'static str> = Some(FEATURES);
    const REQUIREMENT: &'static str = "AVX2 and FMA";
    const DOC: &'static str = "AVX2 int8 kernels: `vpmaddubsw` + `vpmaddwd` on two 32-byte \
        halves per 64-value block, the weights given the input's sign so that the unsigned \
        operand is `|x|` (Q8_0), or the unsigned nibbles directly (Q4_0).";

    const PREFETCHES: bool = true;
    const BATCH_TOKENS: usize = 2;
    const LANES: usize = 8;

    fn import() -> TokenStream {
        quote!(
            use core::arch::x86_64::*;
        )
    }

    fn acc_type() -> TokenStream {
        quote!(__m256)
    }

    fn zero() -> TokenStream {
        quote!(_mm256_setzero_ps())
    }

    fn hsum() -> TokenStream {
        quote! {
            let s = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
            let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
            let s = _mm_add_ss(s, _mm_movehdup_ps(s));
            _mm_cvtss_f32(s)
        }
    }

    fn broadcast(n: usize) -> (TokenStream, TokenStream) {
        // The scales are only 4-byte aligned, so no `&f64` or `&__m128` may be formed for
        // `_mm256_broadcast_sd` / `_mm256_broadcast_ps`; LLVM still emits the broadcasts.
        let body = match n {
            1 => quote!(_mm256_set1_ps(*p)),
            2 => quote!(_mm256_castpd_ps(_mm256_set1_pd(
                p.cast::<f64>().read_unaligned()
            ))),
            4 => quote! {
                let v = _mm_loadu_ps(p);
                _mm256_set_m128(v, v)
            },
            _ => unreachable!("tiled groups give periods 1, 2 or 4"),
        };
        (quote!(__m256), body)
    }

    fn prefetch() -> TokenStream {
        quote!(_mm_prefetch::<_MM_HINT_T0>(p.cast::<i8>().wrapping_add(PREFETCH_BYTES));)
    }

    fn helpers(q8_period: Option<usize>, q4_period: Option<usize>) -> TokenStream {
        let q8 = q8_period.map(|n| {
            let bn = ident(&format!("broadcast{n}"));
            let sign = comment(
                "`vpmaddubsw` wants one unsigned operand: |x|, with x's sign moved onto w. A \
                 pair of products reaches 2 · 127 · 127, so each half goes to i32 on its own.",
            );
            let halves = comment(
                "Lane i of the second half is block lane 8 + i: the same group, since the \
                 period divides 8.",
            );
            let unoffset = comment("The tiled bytes are q + 128: XOR 0x80 gives q back.");
            quote! {
                #[doc = " A block of the input as `vpmaddubsw` takes it: `|x|` (≤ 127, so valid as u8)"]
                #[doc = " and x itself for its sign, each as two halves. The lane corrections are for"]
                #[doc = " `vpdpbusd`; here the weights are turned back into q instead."]
                #[target_feature(enable = #FEATURES)]
                #[inline]
                unsafe fn x_block(p: *const i8, _corr: *const i32) -> ([__m256i; 2], [__m256i; 2]) {
                    let x = [
                        _mm256_loadu_si256(p.cast()),
                        _mm256_loadu_si256(p.add(32).cast()),
                    ];
                    ([_mm256_abs_epi8(x[0]), _mm256_abs_epi8(x[1])], x)
                }

                #[doc = " `acc + Σ w·x · w_scale · x_scale` per lane for one 64-value block of a row."]
                #[target_feature(enable = #FEATURES)]
                #[inline]
                unsafe fn q8_step(
                    acc: __m256,
                    x: ([__m256i; 2], [__m256i; 2]),
                    x_scales: __m256,
                    w: *const i8,
                    w_scales: *const f32,
                ) -> __m256 {
                    #sign
                    let (x_abs, x_sign) = x;
                    let ones = _mm256_set1_epi16(1);
                    #unoffset
                    let flip = _mm256_set1_epi8(i8::MIN);
                    let w_low = _mm256_xor_si256(_mm256_loadu_si256(w.cast()), flip);
                    let w_high = _mm256_xor_si256(_mm256_loadu_si256(w.add(32).cast()), flip);
                    let w_low = _mm256_sign_epi8(w_low, x_sign[0]);
                    let w_high = _mm256_sign_epi8(w_high, x_sign[1]);
                    let dot_low = _mm256_madd_epi16(_mm256_maddubs_epi16(x_abs[0], w_low), ones);
                    let dot_high = _mm256_madd_epi16(_mm256_maddubs_epi16(x_abs[1], w_high), ones);
                    #halves
                    let dot = _mm256_add_epi32(dot_low, dot_high);
                    let scales = _mm256_mul_ps(x_scales, #bn(w_scales));
                    _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), scales, acc)
                }
            }
        });
        let q4 = q4_period.map(|n| {
            let bn = ident(&format!("broadcast{n}"));
            let n_lit = lit(n);
            let halves = comment(
                "Lane i of the second half is block lane 8 + i, of the same group (the period \
                 divides 8): the halves' corrections can be summed once per block.",
            );
            let offset =
                comment("The nibbles are q + 8: starting each lane at -8·Σx leaves Σ q·x.");
            let narrow = comment(
                "A nibble pair's products reach 2 · 15 · 128, so the two halves still fit in \
                 i16: one `vpmaddwd` per block.",
            );
            quote! {
                #[doc = " A block of the input as two halves, and its lane corrections `-8 · Σ x` folded"]
                #[doc = " onto eight lanes."]
                #[target_feature(enable = #FEATURES)]
                #[inline]
                unsafe fn x4_block(p: *const i8, corr: *const i32) -> ([__m256i; 2], __m256i) {
                    let x = [
                        _mm256_loadu_si256(p.cast()),
                        _mm256_loadu_si256(p.add(32).cast()),
                    ];
                    #halves
                    let corr = _mm256_add_epi32(
                        _mm256_loadu_si256(corr.cast()),
                        _mm256_loadu_si256(corr.add(8).cast()),
                    );
                    (x, corr)
                }

                #[doc = " `Σ nibbles·x` per lane of one block, plus the block's corrections."]
                #[target_feature(enable = #FEATURES)]
                #[inline]
                unsafe fn q4_dot(nibbles: [__m256i; 2], x: ([__m256i; 2], __m256i)) -> __m256i {
                    #narrow
                    let pairs = _mm256_add_epi16(
                        _mm256_maddubs_epi16(nibbles[0], x.0[0]),
                        _mm256_maddubs_epi16(nibbles[1], x.0[1]),
                    );
                    #offset
                    _mm256_add_epi32(_mm256_madd_epi16(pairs, _mm256_set1_epi16(1)), x.1)
                }

                #[doc = " One row's 64 bytes: the low nibbles are one block, the high nibbles the next."]
                #[target_feature(enable = #FEATURES)]
                #[inline]
                unsafe fn q4_step(
                    acc: __m256,
                    x_low: ([__m256i; 2], __m256i),
                    x_high: ([__m256i; 2], __m256i),
                    x_scales_low: __m256,
                    x_scales_high: __m256,
                    w: *const u8,
                    w_scales: *const f32,
                ) -> __m256 {
                    let bytes = [
                        _mm256_loadu_si256(w.cast()),
                        _mm256_loadu_si256(w.add(32).cast()),
                    ];
                    let nibble = _mm256_set1_epi8(0x0F);
                    let low = [
                        _mm256_and_si256(bytes[0], nibble),
                        _mm256_and_si256(bytes[1], nibble),
                    ];
                    let high = [
                        _mm256_and_si256(_mm256_srli_epi16::<4>(bytes[0]), nibble),
                        _mm256_and_si256(_mm256_srli_epi16::<4>(bytes[1]), nibble),
                    ];
                    let dot_low = q4_dot(low, x_low);
                    let dot_high = q4_dot(high, x_high);
                    let scales_low = _mm256_mul_ps(x_scales_low, #bn(w_scales));
                    let scales_high = _mm256_mul_ps(x_scales_high, #bn(w_scales.add(#n_lit)));
                    let acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot_low), scales_low, acc);
                    _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot_high), scales_high, acc)
                }
            }
        });
        quote! {
            #q8
            #q4
        }
    }
}
