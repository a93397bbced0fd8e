//! Portable Rust: fixed-size arrays whose trip counts are compile-time constants, so the
//! compiler unrolls and vectorises for whatever baseline the target has.

use proc_macro2::{Literal, TokenStream};
use quote::quote;

use crate::emit::{comment, doc, ident, lit};
use crate::shapes::Shape;

/// Independent partial sums in the portable dot product: a multiple of every common vector
/// width, so baseline SSE2 gets four 4-lane chains and NEON-less targets still unroll.
const LANES: usize = 16;

/// The `portable` submodule.
pub(crate) fn module(shapes: &[Shape], dim: usize, eps: f32) -> TokenStream {
    let lanes = lit(LANES);
    let wrappers = shapes.iter().map(|shape| {
        let name = ident(&format!("gemv_{}", shape.suffix()));
        let c = lit(shape.cols);
        let docs = doc(&format!(
            "`out = W · x` for a block of rows of the {} matrix.\n\n\
             `w` may hold any number of rows (threads split the matrix by rows).\n\n\
             # Panics\n\nIf `w` and `out` have different lengths.",
            shape.describe()
        ));
        quote! {
            #docs
            pub fn #name(w: &[[f32; #c]], x: &[f32; #c], out: &mut [f32]) {
                gemv(w, x, out)
            }
        }
    });
    let gemm_wrappers = shapes.iter().map(|shape| {
        let name = ident(&format!("gemm_{}", shape.suffix()));
        let c = lit(shape.cols);
        let docs = doc(&format!(
            "`out[t · ld + r] = W[r] · x[t]` for a block of rows of the {} matrix and every \
             token row of `x`; bit for bit what `gemv_{}` gives for each token alone.\n\n\
             # Safety\n\n`out.add(t * ld + r)` must be valid for writes, and not accessed by \
             anyone else during the call, for every `t < x.len()` and `r < w.len()`.",
            shape.describe(),
            shape.suffix()
        ));
        let call = comment("SAFETY: the caller's contract is gemm's.");
        quote! {
            #docs
            pub unsafe fn #name(w: &[[f32; #c]], x: &[[f32; #c]], out: *mut f32, ld: usize) {
                #call
                unsafe { gemm(w, x, out, ld) }
            }
        }
    });
    let d = lit(dim);
    let n = Literal::f32_unsuffixed(dim as f32);
    let eps_lit = Literal::f32_unsuffixed(eps);
    let norm_name = ident(&format!("rmsnorm_{dim}"));
    let norm_doc = doc(&format!(
        "`out = weight · x / sqrt(mean(x²) + {eps_lit})` over {dim} values, as llama2.c computes it."
    ));
    let module_doc = doc(
        "Plain-Rust kernels for any target: the reference the SIMD kernels must agree with \
         and the fallback when no SIMD path is available.",
    );
    let order = comment("Same operation order as llama2.c: ss / n + eps, then 1 / sqrt.");
    let gemv_doc = doc(
        "`out = W · x` for any number of rows of `C` columns; `C` is a constant after \
         monomorphisation, so every loop has a fixed trip count.",
    );
    let gemm_doc = doc(
        "The batched product: each row against every token while the row is in cache, by \
         the same `dot` as `gemv`, so a token's result does not depend on its batch.",
    );
    let gemm_safety = comment("SAFETY: the caller guarantees every `t * ld + r` is writable.");
    let dot_doc = doc(&format!(
        "`Σ aᵢ·bᵢ` in {LANES} independent partial sums, which the compiler keeps in vector \
         registers."
    ));
    quote! {
        #module_doc
        pub mod portable {
            #(#wrappers)*
            #(#gemm_wrappers)*

            #norm_doc
            pub fn #norm_name(out: &mut [f32; #d], x: &[f32; #d], weight: &[f32; #d]) {
                let ss = dot(x, x);
                #order
                let scale = 1.0 / (ss / #n + #eps_lit).sqrt();
                for ((o, &xi), &wi) in out.iter_mut().zip(x).zip(weight) {
                    *o = wi * (scale * xi);
                }
            }

            #gemv_doc
            fn gemv<const C: usize>(w: &[[f32; C]], x: &[f32; C], out: &mut [f32]) {
                assert_eq!(
                    w.len(),
                    out.len(),
                    "gemv: the weight block and the output must have the same number of rows"
                );
                for (row, o) in w.iter().zip(out.iter_mut()) {
                    *o = dot(row, x);
                }
            }

            #gemm_doc
            unsafe fn gemm<const C: usize>(w: &[[f32; C]], x: &[[f32; C]], out: *mut f32, ld: usize) {
                for (r, row) in w.iter().enumerate() {
                    for (t, x) in x.iter().enumerate() {
                        #gemm_safety
                        unsafe { *out.add(t * ld + r) = dot(row, x) };
                    }
                }
            }

            #dot_doc
            #[inline(always)]
            fn dot<const N: usize>(a: &[f32; N], b: &[f32; N]) -> f32 {
                let (a_full, a_tail) = a.as_chunks::<#lanes>();
                let (b_full, b_tail) = b.as_chunks::<#lanes>();
                let mut acc = [0.0f32; #lanes];
                for (ca, cb) in a_full.iter().zip(b_full) {
                    for ((s, &p), &q) in acc.iter_mut().zip(ca).zip(cb) {
                        *s += p * q;
                    }
                }
                let mut tail = 0.0f32;
                for (&p, &q) in a_tail.iter().zip(b_tail) {
                    tail += p * q;
                }
                acc.iter().sum::<f32>() + tail
            }
        }
    }
}
