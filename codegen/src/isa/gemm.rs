//! The batched f32 kernels (`gemm_*`): a matrix times a block of token rows, so each weight is
//! read once for every token of the block (prompt prefill, beam search, a server's concurrent
//! sequences).
//!
//! **Batch invariance.** Every output `(row, token)` is computed by exactly the operations the
//! GEMV (`gemv_*`) uses for that row and that token's input: one vector accumulator, the first
//! chunk a multiply, each later chunk one fused multiply-add in column order, the masked tail
//! chunk last, then the ISA's horizontal sum. Only which outputs share a load differs, so a
//! token's result is bit for bit the same whatever else is in its batch and however the rows are
//! split across threads (tests check this).
//!
//! **Tiles.** Register tiles of `R` rows × `T` tokens (per ISA: [`Simd::GEMM_ROWS`],
//! [`Simd::GEMM_TOKENS`]): every chunk of a tile loads `R + T` vectors for `R · T` FMAs. A row
//! tile's weights stay in L1 while the token tiles pass over them (the inputs stream from L2).
//! On AVX-512 (Xeon, one thread, 64 tokens, stories110M shapes) 4 × 4 measured 46–66 GMAC/s;
//! 5 × 4, 4 × 5, 4 × 6, 6 × 4, 6 × 3, 3 × 6 and 8 × 2 were slower (LLVM spills the larger ones). Tokens past the last full token
//! tile run as one-token tiles and rows past the last row tile as one-row tiles: the same
//! operations per output, fewer per load. The chunk loop has a fixed trip count; unrolling it
//! fully (as the GEMV does) would cost kilobytes of code per tile for no gain in a loop that is
//! bound by FMA throughput rather than by the memory stream.

use proc_macro2::{Ident, TokenStream};
use quote::quote;

use super::{chunks, load, Chunk, Simd};
use crate::emit::{comment, doc, ident, lit, At};
use crate::shapes::Shape;

/// The name of the shared batched body for `cols` columns.
fn body_name(cols: usize) -> Ident {
    ident(&format!("gemm_x{cols}"))
}

/// The name of the `rows` × `tokens` tile function for `cols` columns.
fn tile_name(cols: usize, rows: usize, tokens: usize) -> Ident {
    ident(&format!("tile{rows}x{tokens}_x{cols}"))
}

/// One register tile: `rows` weight rows at `w` (row stride `cols`) times `tokens` inputs at
/// `x` (stride `cols`), outputs at `out[t * ld + r]`. A loop over the full chunks between the
/// first (a multiply) and the masked tail chunk (if any).
fn tile<S: Simd>(cols: usize, rows: usize, tokens: usize) -> TokenStream {
    let name = tile_name(cols, rows, tokens);
    let features = S::FEATURES;
    let all = chunks(cols, S::LANES);
    let (first, rest) = all.split_first().expect("at least one column");
    let (middle, tail): (&[Chunk], Option<Chunk>) = match rest.split_last() {
        Some((last, middle)) if last.len < S::LANES => (middle, Some(*last)),
        _ => (rest, None),
    };
    let acc = |r: usize, t: usize| ident(&format!("acc{r}_{t}"));
    let w_at = |base: &Ident, r: usize| At::new(base, r * cols);
    let x_at = |base: &Ident, t: usize| At::new(base, t * cols);
    let (wp, xp) = (ident("wp"), ident("xp"));

    // One chunk at `wk`/`xk`: load each row once and each input once, then every product.
    let reassigned = all.len() > 1;
    let step = |wk: &Ident, xk: &Ident, chunk: Chunk, is_first: bool| -> TokenStream {
        let mut body = Vec::new();
        let ws: Vec<Ident> = (0..rows).map(|r| ident(&format!("w{r}"))).collect();
        for (r, w) in ws.iter().enumerate() {
            let l = load::<S>(&w_at(wk, r), chunk);
            body.push(quote!(let #w = #l;));
        }
        for t in 0..tokens {
            let x = ident(&format!("x{t}"));
            let l = load::<S>(&x_at(xk, t), chunk);
            body.push(quote!(let #x = #l;));
            for (r, w) in ws.iter().enumerate() {
                let a = acc(r, t);
                body.push(if is_first {
                    let p = S::mul(&quote!(#w), &quote!(#x));
                    if reassigned {
                        quote!(let mut #a = #p;)
                    } else {
                        quote!(let #a = #p;)
                    }
                } else {
                    let s = S::fma(&a, &quote!(#w), &quote!(#x));
                    quote!(#a = #s;)
                });
            }
        }
        quote!(#(#body)*)
    };

    let first_step = step(&wp, &xp, *first, true);
    let (wk, xk) = (ident("wk"), ident("xk"));
    let middle_loop = match middle {
        [] => quote!(),
        [m, ..] => {
            let full = Chunk {
                offset: 0,
                len: S::LANES,
            };
            let body = step(&wk, &xk, full, false);
            let (start, end) = (
                lit(m.offset / S::LANES),
                lit(m.offset / S::LANES + middle.len()),
            );
            let lanes = lit(S::LANES);
            quote! {
                for k in #start..#end {
                    let wk = wp.add(k * #lanes);
                    let xk = xp.add(k * #lanes);
                    #body
                }
            }
        }
    };
    let tail_step = tail.map(|c| {
        let offset = lit(c.offset);
        let body = step(&wk, &xk, Chunk { offset: 0, ..c }, false);
        quote! {
            let wk = wp.add(#offset);
            let xk = xp.add(#offset);
            #body
        }
    });
    let setup = match tail {
        Some(c) => S::tail_setup(c.len),
        None if first.len < S::LANES => S::tail_setup(first.len),
        None => quote!(),
    };
    let mut stores = Vec::new();
    for t in 0..tokens {
        for r in 0..rows {
            let a = acc(r, t);
            let total = S::reduce(&quote!(#a));
            let row = match t {
                0 => None,
                1 => Some(quote!(ld)),
                t => {
                    let t = lit(t);
                    Some(quote!(#t * ld))
                }
            };
            let r = lit(r);
            let index = match row {
                None => quote!(#r),
                Some(row) if r.to_string() == "0" => row,
                Some(row) => quote!(#row + #r),
            };
            stores.push(quote!(*op.add(#index) = #total;));
        }
    }
    let docs = doc(&format!(
        "{rows} row{} × {tokens} token{} of {cols} columns: outputs `op[t · ld + r]`.",
        if rows == 1 { "" } else { "s" },
        if tokens == 1 { "" } else { "s" }
    ));
    let safety = doc(
        "# Safety\n\nThe rows and inputs must be readable for all their columns, the outputs \
         writable, and the CPU must have the module's features.",
    );
    // A one-token tile writes one output row and has no use for its stride.
    let ld = if tokens == 1 {
        quote!()
    } else {
        quote!(, ld: usize)
    };
    quote! {
        #docs
        #safety
        #[target_feature(enable = #features)]
        #[inline]
        unsafe fn #name(wp: *const f32, xp: *const f32, op: *mut f32 #ld) {
            #setup
            #first_step
            #middle_loop
            #tail_step
            #(#stores)*
        }
    }
}

/// The shared body for every shape with `cols` columns: row tiles outside, token tiles inside.
pub(crate) fn body<S: Simd>(cols: usize) -> TokenStream {
    let name = body_name(cols);
    let c = lit(cols);
    let features = S::FEATURES;
    let (rows_t, tokens_t) = (S::GEMM_ROWS, S::GEMM_TOKENS);
    let full = tile_name(cols, rows_t, tokens_t);
    let one_token = tile_name(cols, rows_t, 1);
    let single = tile_name(cols, 1, 1);
    let (rt, tt) = (lit(rows_t), lit(tokens_t));
    let docs = doc(&format!(
        "`out[t · ld + r] = Σ w[r][c] · x[t][c]` for a block of rows of {cols} columns and any \
         number of tokens: the one batched body every {cols}-column shape shares."
    ));
    let order = comment(&format!(
        "Row tiles outside, so a tile's {rows_t} rows stay in L1 while every token passes \
         over them; the weights are read from memory once per call."
    ));
    let safety = comment(
        "SAFETY: `w` and `x` are whole rows (slices of arrays), every tile reads rows below \
         w.len() and tokens below x.len(), and the caller guarantees the outputs and the CPU \
         features.",
    );
    quote! {
        #docs
        #[target_feature(enable = #features)]
        unsafe fn #name(w: &[[f32; #c]], x: &[[f32; #c]], out: *mut f32, ld: usize) {
            let (rows, tokens) = (w.len(), x.len());
            let wp = w.as_ptr().cast::<f32>();
            let xp = x.as_ptr().cast::<f32>();
            let (row_tiles, token_tiles) = (rows / #rt, tokens / #tt);
            #safety
            unsafe {
                #order
                for i in 0..row_tiles {
                    let r = i * #rt;
                    for j in 0..token_tiles {
                        let t = j * #tt;
                        #full(wp.add(r * #c), xp.add(t * #c), out.add(t * ld + r), ld);
                    }
                    for t in token_tiles * #tt..tokens {
                        #one_token(wp.add(r * #c), xp.add(t * #c), out.add(t * ld + r));
                    }
                }
                for r in row_tiles * #rt..rows {
                    for t in 0..tokens {
                        #single(wp.add(r * #c), xp.add(t * #c), out.add(t * ld + r));
                    }
                }
            }
        }
    }
}

/// The tile functions the body for `cols` columns calls.
pub(crate) fn tiles<S: Simd>(cols: usize) -> TokenStream {
    let full = tile::<S>(cols, S::GEMM_ROWS, S::GEMM_TOKENS);
    let one_token = tile::<S>(cols, S::GEMM_ROWS, 1);
    let single = tile::<S>(cols, 1, 1);
    quote! {
        #full
        #one_token
        #single
    }
}

/// The public per-shape batched entry point, a tail call into the shared body.
pub(crate) fn wrapper<S: Simd>(shape: &Shape) -> TokenStream {
    let name = ident(&format!("gemm_{}", shape.suffix()));
    let body = body_name(shape.cols);
    let c = lit(shape.cols);
    let features = S::FEATURES;
    let call = comment("SAFETY: this function's contract is the body's.");
    let docs = doc(&format!(
        "`out[t · ld + r] = W[r] · x[t]` for a block of rows of the {} matrix and every token \
         row `t` of `x`; bit for bit what `gemv_{}` gives for each token alone.\n\n\
         # Safety\n\n`out.add(t * ld + r)` must be valid for writes, and not accessed by anyone \
         else during the call, for every `t < x.len()` and `r < w.len()`. The CPU must support \
         {}: [`Kernels`](super::Kernels) checks this once at start-up.",
        shape.describe(),
        shape.suffix(),
        S::REQUIREMENT
    ));
    quote! {
        #docs
        #[target_feature(enable = #features)]
        pub unsafe fn #name(w: &[[f32; #c]], x: &[[f32; #c]], out: *mut f32, ld: usize) {
            #call
            unsafe { #body(w, x, out, ld) }
        }
    }
}
