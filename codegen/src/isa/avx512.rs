//! AVX-512F: 16 lanes, masked loads and stores for the tail.

use proc_macro2::{Ident, Literal, TokenStream};
use quote::quote;

use super::Simd;
use crate::emit::At;

/// The AVX-512F emitter.
pub(crate) struct Avx512;

impl Simd for Avx512 {
    const MODULE: &'static str = "avx512";
    const ARCH: &'static str = "x86_64";
    const FEATURES: &'static str = "avx512f";
    const GEMM_ROWS: usize = 4;
    const GEMM_TOKENS: usize = 4;
    const LANES: usize = 16;
    const REQUIREMENT: &'static str = "AVX-512F";
    const DOC: &'static str = "AVX-512F kernels: 16 lanes, masked loads for a row's last columns.";

    fn runtime_check() -> TokenStream {
        quote!(std::arch::is_x86_feature_detected!("avx512f"))
    }

    fn import() -> TokenStream {
        quote!(
            use core::arch::x86_64::*;
        )
    }

    fn tail_setup(rem: usize) -> TokenStream {
        // Written in binary, one bit per lane, so a reader sees which lanes are live.
        let bits = format!("{:016b}", (1u32 << rem) - 1);
        let grouped: Vec<&str> = (0..4).map(|g| &bits[g * 4..g * 4 + 4]).collect();
        let mask: Literal = format!("0b{}", grouped.join("_"))
            .parse()
            .expect("a binary literal");
        let note = crate::emit::comment(&format!(
            "The last {rem} columns: lanes past them are neither read nor written."
        ));
        quote! {
            #note
            let tail_mask: __mmask16 = #mask;
        }
    }

    fn load(p: &At) -> TokenStream {
        quote!(_mm512_loadu_ps(#p))
    }

    fn load_tail(p: &At, _rem: usize) -> TokenStream {
        quote!(_mm512_maskz_loadu_ps(tail_mask, #p))
    }

    fn mul(a: &TokenStream, b: &TokenStream) -> TokenStream {
        quote!(_mm512_mul_ps(#a, #b))
    }

    fn fma(acc: &Ident, a: &TokenStream, b: &TokenStream) -> TokenStream {
        quote!(_mm512_fmadd_ps(#a, #b, #acc))
    }

    fn add(a: &TokenStream, b: &TokenStream) -> TokenStream {
        quote!(_mm512_add_ps(#a, #b))
    }

    fn splat(s: &TokenStream) -> TokenStream {
        quote!(_mm512_set1_ps(#s))
    }

    fn reduce(v: &TokenStream) -> TokenStream {
        quote!(_mm512_reduce_add_ps(#v))
    }

    fn store(p: &At, v: &TokenStream) -> TokenStream {
        quote!(_mm512_storeu_ps(#p, #v);)
    }

    fn store_tail(p: &At, v: &TokenStream, _rem: usize) -> TokenStream {
        quote!(_mm512_mask_storeu_ps(#p, tail_mask, #v);)
    }
}
