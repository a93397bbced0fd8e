//! NEON (aarch64): 4 lanes; a row's last 1–3 columns use 64-bit and single-lane loads.

use proc_macro2::{Ident, TokenStream};
use quote::quote;

use super::Simd;
use crate::emit::At;

/// The NEON emitter.
pub(crate) struct Neon;

impl Simd for Neon {
    const MODULE: &'static str = "neon";
    const ARCH: &'static str = "aarch64";
    const FEATURES: &'static str = "neon";
    const GEMM_ROWS: usize = 4;
    const GEMM_TOKENS: usize = 4;
    const LANES: usize = 4;
    const REQUIREMENT: &'static str = "NEON (every aarch64 Linux CPU does)";
    const DOC: &'static str =
        "NEON kernels: 4 lanes, 64-bit and single-lane loads for a row's last 1–3 columns.";

    fn runtime_check() -> TokenStream {
        quote!(std::arch::is_aarch64_feature_detected!("neon"))
    }

    fn import() -> TokenStream {
        quote!(
            use core::arch::aarch64::*;
        )
    }

    fn load(p: &At) -> TokenStream {
        quote!(vld1q_f32(#p))
    }

    /// Builds a zero-padded vector from exactly `rem` floats. Lane numbers go in the
    /// C-style argument position, which prettyplease prints on one line, unlike a turbofish.
    fn load_tail(p: &At, rem: usize) -> TokenStream {
        let low_pair = quote!(vcombine_f32(vld1_f32(#p), vdup_n_f32(0.0)));
        match rem {
            1 => quote!(vld1q_lane_f32(#p, vdupq_n_f32(0.0), 0)),
            2 => low_pair,
            3 => {
                let third = p.plus(2);
                quote!(vld1q_lane_f32(#third, #low_pair, 2))
            }
            _ => unreachable!("a NEON tail holds 1 to 3 floats"),
        }
    }

    fn mul(a: &TokenStream, b: &TokenStream) -> TokenStream {
        quote!(vmulq_f32(#a, #b))
    }

    fn fma(acc: &Ident, a: &TokenStream, b: &TokenStream) -> TokenStream {
        quote!(vfmaq_f32(#acc, #a, #b))
    }

    fn add(a: &TokenStream, b: &TokenStream) -> TokenStream {
        quote!(vaddq_f32(#a, #b))
    }

    fn splat(s: &TokenStream) -> TokenStream {
        quote!(vdupq_n_f32(#s))
    }

    fn reduce(v: &TokenStream) -> TokenStream {
        quote!(vaddvq_f32(#v))
    }

    fn store(p: &At, v: &TokenStream) -> TokenStream {
        quote!(vst1q_f32(#p, #v);)
    }

    /// Stores exactly `rem` lanes.
    fn store_tail(p: &At, v: &TokenStream, rem: usize) -> TokenStream {
        match rem {
            1 => quote!(vst1q_lane_f32(#p, #v, 0);),
            2 => quote!(vst1_f32(#p, vget_low_f32(#v));),
            3 => {
                let third = p.plus(2);
                quote! {
                    let tail = #v;
                    vst1_f32(#p, vget_low_f32(tail));
                    vst1q_lane_f32(#third, tail, 2);
                }
            }
            _ => unreachable!("a NEON tail holds 1 to 3 floats"),
        }
    }
}
