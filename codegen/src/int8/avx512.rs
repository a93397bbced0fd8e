//! AVX-512 VNNI: `vpdpbusd` sums four u8 × i8 products into each i32 lane, one 64-value block
//! per instruction.

use proc_macro2::TokenStream;
use quote::quote;

use super::{affine, Int8Emitter};
use crate::emit::{comment, ident, lit};
use model_config::tiled::{BLOCK, TILE_ROWS, TOKEN_TILE};

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

    fn batch_tile(q4: bool, cols: usize, period: usize) -> Option<TokenStream> {
        Some(batch_tile(q4, cols, period))
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

/// The AVX-512 register tile of 4 rows × 4 tokens. Per block it forms the 16 (row, token)
/// products of weight scales and input scales with `period` vector multiplies (the rows' scales
/// permuted into place, the tokens' read from the token-tile table) instead of one multiply per
/// (row, token), then each (row, token) takes `vpdpbusd`, a conversion and an FMA whose scale is
/// a broadcast load: one multiply of the same two floats, so the same bits as the GEMV's.
fn batch_tile(q4: bool, cols: usize, p: usize) -> TokenStream {
    assert_eq!((TILE_ROWS, TOKEN_TILE), (4, 4), "the tile below is 4 × 4");
    let blocks_per_chunk = if q4 { 2 } else { 1 };
    let per_row = blocks_per_chunk * p; // scales of one row per chunk
    let chunks = lit(cols / (blocks_per_chunk * BLOCK));
    let bn = ident(&format!("broadcast{p}"));
    // The rows' scales of one chunk (4 · per_row floats) as one or two vectors.
    let ws_floats = 4 * per_row;
    let load_ws = match ws_floats {
        4 => quote!(_mm512_castps128_ps512(_mm_loadu_ps(s))),
        8 => quote!(_mm512_castps256_ps512(_mm256_loadu_ps(s))),
        16 => quote!(_mm512_loadu_ps(s)),
        32 => quote!(_mm512_loadu_ps(s)),
        _ => unreachable!("periods 1, 2, 4 with one or two blocks"),
    };
    let load_ws_hi = (ws_floats == 32).then(|| quote!(let ws_hi = _mm512_loadu_ps(s.add(16));));
    // The tokens' scales of one block: 4p floats, repeated over the lanes.
    let xs_pattern = match p {
        1 => quote!(_mm512_broadcast_f32x4(_mm_loadu_ps(xt))),
        2 => quote!(_mm512_castpd_ps(_mm512_broadcast_f64x4(_mm256_loadu_pd(
            xt.cast::<f64>()
        )))),
        _ => quote!(_mm512_loadu_ps(xt)),
    };
    let (w_at, s_at) = (affine(TILE_ROWS * BLOCK, 0), affine(TILE_ROWS * per_row, 0));
    let mut step = vec![
        quote!(let w = wp.add(#w_at);),
        quote!(let s = sp.add(#s_at);),
    ];
    step.push(quote!(let ws = #load_ws;));
    if let Some(hi) = &load_ws_hi {
        step.push(hi.clone());
    }
    // Products for every block of the chunk into `sb` (16p floats per block).
    for b in 0..blocks_per_chunk {
        let xt_at = affine(TOKEN_TILE * p * blocks_per_chunk, TOKEN_TILE * p * b);
        step.push(quote!(let xt = xtp.add(#xt_at);));
        step.push(quote!(let xs = #xs_pattern;));
        for v in 0..p {
            // Lane i of product vector v is (row r, token t, group g) with
            // 16v + i = (4r + t)p + g: the row's scale g of this block.
            let idx: Vec<proc_macro2::Literal> = (0..16)
                .map(|i| {
                    let id = 16 * v + i;
                    let (r, g) = (id / (4 * p), id % p);
                    proc_macro2::Literal::i32_unsuffixed((r * per_row + b * p + g) as i32)
                })
                .collect();
            let at = lit(b * 16 * p + 16 * v);
            let perm = if ws_floats == 32 {
                quote!(_mm512_permutex2var_ps(ws, _mm512_setr_epi32(#(#idx),*), ws_hi))
            } else {
                quote!(_mm512_permutexvar_ps(_mm512_setr_epi32(#(#idx),*), ws))
            };
            step.push(
                quote!(_mm512_storeu_ps(sb.as_mut_ptr().add(#at), _mm512_mul_ps(xs, #perm));),
            );
        }
    }
    // Without this LLVM forwards the stored products through registers and splats each lane
    // with shuffles (port 5), the very work the table is there to save; read back from memory,
    // every product is a broadcast folded into its FMA.
    step.push(quote!(let sbp = core::hint::black_box(sb.as_ptr());));
    // The rows' weights for the chunk (Q4: the two blocks' nibbles), kept for every token.
    for r in 0..4 {
        let (wr, off) = (ident(&format!("w{r}")), lit(r * BLOCK));
        // As in the GEMV: with few tokens the tile is as much a stream as a product.
        step.push(quote!(prefetch(w.add(#off));));
        if q4 {
            let (lo, hi) = (ident(&format!("lo{r}")), ident(&format!("hi{r}")));
            step.push(quote! {
                let #wr = _mm512_loadu_si512(w.add(#off).cast());
                let #lo = _mm512_and_si512(#wr, _mm512_set1_epi8(0x0F));
                let #hi = _mm512_and_si512(_mm512_srli_epi16::<4>(#wr), _mm512_set1_epi8(0x0F));
            });
        } else {
            step.push(quote!(let #wr = _mm512_loadu_si512(w.add(#off).cast());));
        }
    }
    for t in 0..4 {
        let x_off = |b: usize| {
            let at = affine(blocks_per_chunk * BLOCK, t * cols + b * BLOCK);
            quote!(xp.add(#at))
        };
        let c_off = |b: usize| {
            let at = affine(blocks_per_chunk * BLOCK / 4, (t * cols + b * BLOCK) / 4);
            quote!(cp.add(#at))
        };
        for b in 0..blocks_per_chunk {
            let (xv, cv) = (ident(&format!("x{t}_{b}")), ident(&format!("c{t}_{b}")));
            let (xo, co) = (x_off(b), c_off(b));
            step.push(quote! {
                let #xv = _mm512_loadu_si512(#xo.cast());
                let #cv = _mm512_loadu_si512(#co.cast());
            });
        }
        for r in 0..4 {
            let acc = ident(&format!("acc{r}_{t}"));
            for b in 0..blocks_per_chunk {
                let (xv, cv) = (ident(&format!("x{t}_{b}")), ident(&format!("c{t}_{b}")));
                let w = if q4 {
                    ident(&format!("{}{r}", if b == 0 { "lo" } else { "hi" }))
                } else {
                    ident(&format!("w{r}"))
                };
                let sat = lit(b * 16 * p + (r * 4 + t) * p);
                step.push(quote! {
                    let dot = _mm512_dpbusd_epi32(#cv, #w, #xv);
                    #acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), #bn(sbp.add(#sat)), #acc);
                });
            }
        }
    }
    let mut setup = Vec::new();
    let mut totals = Vec::new();
    for t in 0..4 {
        for r in 0..4 {
            let acc = ident(&format!("acc{r}_{t}"));
            setup.push(quote!(let mut #acc = _mm512_setzero_ps();));
            let index = super::batch_index(r, t);
            totals.push(quote!(*op.add(#index) = _mm512_reduce_add_ps(#acc);));
        }
    }
    let sb_len = lit(16 * p * blocks_per_chunk);
    let note = comment(
        "The scale products of the chunk's blocks for all 16 (row, token) pairs, read back by \
         broadcast loads.",
    );
    let unused = comment("The tokens' own scales: this tile reads them from the table instead.");
    quote! {
        #unused
        let _ = xsp;
        #note
        let mut sb = [0f32; #sb_len];
        #(#setup)*
        for k in 0..#chunks {
            #(#step)*
        }
        #(#totals)*
    }
}
