//! AVX2 + FMA: 8 lanes, `vmaskmovps` for the tail.

use proc_macro2::{Ident, TokenStream};
use quote::quote;

use super::Simd;
use crate::emit::At;

/// The AVX2+FMA emitter.
pub(crate) struct Avx2;

impl Simd for Avx2 {
    const MODULE: &'static str = "avx2";
    const ARCH: &'static str = "x86_64";
    const FEATURES: &'static str = "avx2,fma";
    const GEMM_ROWS: usize = 4;
    const GEMM_TOKENS: usize = 2;
    const LANES: usize = 8;
    const REQUIREMENT: &'static str = "AVX2 and FMA";
    const DOC: &'static str = "AVX2+FMA kernels: 8 lanes, masked loads for a row's last columns.";

    fn runtime_check() -> TokenStream {
        quote!(
            std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
        )
    }

    fn import() -> TokenStream {
        quote!(
            use core::arch::x86_64::*;
        )
    }

    fn helpers() -> TokenStream {
        let docs = crate::emit::doc(
            "The sum of the 8 lanes: fold 256 → 128 → 64 → 32 bits, as compilers do for AVX.",
        );
        quote! {
            #docs
            #[target_feature(enable = "avx2,fma")]
            #[inline]
            unsafe fn hsum(v: __m256) -> f32 {
                let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
                let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
                let s = _mm_add_ss(s, _mm_movehdup_ps(s));
                _mm_cvtss_f32(s)
            }
        }
    }

    fn tail_setup(rem: usize) -> TokenStream {
        let lanes = (0..Self::LANES).map(|i| if i < rem { quote!(-1) } else { quote!(0) });
        let note = crate::emit::comment(&format!(
            "The last {rem} columns: lanes with a zero mask are neither read nor written."
        ));
        quote! {
            #note
            let tail_mask = _mm256_setr_epi32(#(#lanes),*);
        }
    }

    fn load(p: &At) -> TokenStream {
        quote!(_mm256_loadu_ps(#p))
    }

    fn load_tail(p: &At, _rem: usize) -> TokenStream {
        quote!(_mm256_maskload_ps(#p, tail_mask))
    }

    fn mul(a: &TokenStream, b: &TokenStream) -> TokenStream {
        quote!(_mm256_mul_ps(#a, #b))
    }

    fn fma(acc: &Ident, a: &TokenStream, b: &TokenStream) -> TokenStream {
        quote!(_mm256_fmadd_ps(#a, #b, #acc))
    }

    fn add(a: &TokenStream, b: &TokenStream) -> TokenStream {
        quote!(_mm256_add_ps(#a, #b))
    }

    fn splat(s: &TokenStream) -> TokenStream {
        quote!(_mm256_set1_ps(#s))
    }

    fn reduce(v: &TokenStream) -> TokenStream {
        quote!(hsum(#v))
    }

    fn store(p: &At, v: &TokenStream) -> TokenStream {
        quote!(_mm256_storeu_ps(#p, #v);)
    }

    fn store_tail(p: &At, v: &TokenStream, _rem: usize) -> TokenStream {
        quote!(_mm256_maskstore_ps(#p, tail_mask, #v);)
    }
}
