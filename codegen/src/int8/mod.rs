//! Int8 GEMV kernels for Q8_0 and Q4_0 weights in the tiled layout (`model_config::tiled`):
//! one submodule per instruction set, each a set of per-shape entry points over one body per
//! column count. The bodies are written here, once, as calls to a small vocabulary of helper
//! functions (`x_block`, `q8_block`, …) with literal offsets; each instruction set supplies
//! those helpers ([`Int8Emitter::helpers`]).
//!
//! A tile's rows are computed together: every block of the input is prepared once per tile
//! (for VNNI: `|x|` and its sign mask) and its per-lane scales broadcast once, then each row
//! takes one step per block. The tile's bytes are contiguous in the tiled layout, so the
//! kernel reads each matrix front to back as one stream, with a software prefetch
//! [`PREFETCH_BYTES`] ahead.

pub(crate) mod avx2;
pub(crate) mod avx512;
pub(crate) mod neon;
pub(crate) mod portable;

use model_config::tiled::{int8_groups, q4_tiles, q8_tiles, BLOCK, TILE_ROWS};
use model_config::ModelConfig;
use proc_macro2::{Ident, TokenStream};
use quote::quote;

use crate::emit::{comment, doc, ident, lit};
use crate::shapes::{distinct_cols, shapes, Shape};

/// How far ahead of the bytes a row step reads the kernels ask for the stream. Tuned on the
/// stories110M Q8_0 GEMVs at one thread (AMD EPYC Zen 5): 37.8 GB/s at 1 KiB ahead, 39.1 at
/// 2 KiB, 41.3 at 3 KiB, 42.2 at 4 KiB and 42.3 at 6 KiB, against a 42.5 GB/s sequential read.
pub(crate) const PREFETCH_BYTES: usize = 4096;

/// Which int8 kernels a model gets: the group sizes and the shapes that are tiled.
pub(crate) struct Int8Plan {
    /// Q8_0 group the kernels are compiled for.
    pub q8_group: usize,
    /// Q4_0 group.
    pub q4_group: usize,
    /// Shapes with a Q8_0 kernel.
    pub q8: Vec<Shape>,
    /// Shapes with a Q4_0 kernel.
    pub q4: Vec<Shape>,
}

impl Int8Plan {
    /// The plan for `cfg`: every GEMV shape whose rows are whole chunks at the config's group.
    pub(crate) fn new(cfg: &ModelConfig) -> Self {
        let (q8_group, q4_group) = int8_groups(cfg);
        let all = shapes(cfg);
        Self {
            q8_group,
            q4_group,
            q8: all
                .iter()
                .filter(|s| q8_tiles(s.cols, q8_group))
                .cloned()
                .collect(),
            q4: all
                .iter()
                .filter(|s| q4_tiles(s.cols, q4_group))
                .cloned()
                .collect(),
        }
    }

    /// Groups per 64-value block for Q8_0 (the lane pattern's period).
    pub(crate) fn q8_period(&self) -> usize {
        BLOCK / self.q8_group.max(1)
    }

    /// The same for Q4_0.
    pub(crate) fn q4_period(&self) -> usize {
        BLOCK / self.q4_group.max(1)
    }
}

/// An instruction set's int8 vocabulary. [`common_helpers`] writes, from the pieces given
/// here, `zero() -> Acc`, `hsum(Acc) -> f32`, `prefetch(p)` (SIMD) and `broadcastN(*const f32)`
/// (N floats repeated over the lanes, for each period N used). [`Int8Emitter::helpers`] adds
/// the format-specific ones:
///
/// * `x_block(*const i8, *const i32) -> X`: one 64-value block of the tiled input and its
///   `-128 · Σ x` lane corrections, prepared once per tile (Q8_0);
/// * `x4_block(*const i8, *const i32) -> X4`: the same for Q4_0, with the block's
///   `-8 · Σ x` lane corrections;
/// * `q8_block(acc, X, S, w: *const i8, w_scales: *const f32) -> Acc`: one row's block;
/// * `q4_chunk(acc, X4, X4, S, S, w: *const u8, w_scales: *const f32) -> Acc`: one row's
///   64 bytes (two blocks);
pub(crate) trait Int8Emitter {
    /// Submodule name.
    const MODULE: &'static str;
    /// The `crate::Int8Isa` variant.
    const VARIANT: &'static str;
    /// `target_arch`, if the module is architecture-specific.
    const ARCH: Option<&'static str>;
    /// `#[target_feature(enable = ...)]`, if any.
    const FEATURES: Option<&'static str>;
    /// What the CPU must support, for `# Safety` sections.
    const REQUIREMENT: &'static str;
    /// The submodule's doc comment.
    const DOC: &'static str;
    /// Whether the helpers call `prefetch` (software prefetch `PREFETCH_BYTES` ahead).
    const PREFETCHES: bool;
    /// Partial sums in a row's accumulator (for its doc).
    const LANES: usize;
    /// Tokens per register tile of the batched kernels (rows: a layout tile).
    const BATCH_TOKENS: usize;
    /// A register tile of [`TILE_ROWS`] rows × [`Self::BATCH_TOKENS`] tokens written for this
    /// instruction set, which reads the tile's input scales from the token-tile table
    /// (`model_config::tiled::token_tile_scales`, pointer `xtp`) instead of every token's own;
    /// `None` for the generic body of per-(row, token) steps. Either way each output's
    /// operations must be the GEMV's.
    fn batch_tile(q4: bool, cols: usize, period: usize) -> Option<TokenStream> {
        let _ = (q4, cols, period);
        None
    }
    /// `use` lines.
    fn import() -> TokenStream;
    /// The accumulator type.
    fn acc_type() -> TokenStream;
    /// An expression: a zeroed accumulator.
    fn zero() -> TokenStream;
    /// Statements ending in an expression: the f32 total of `acc`.
    fn hsum() -> TokenStream;
    /// The type and body of `broadcastN(p)`: `n` scales at `p`, as the kernels multiply them.
    fn broadcast(n: usize) -> (TokenStream, TokenStream);
    /// A statement asking for the line `PREFETCH_BYTES` past `p` (when [`Self::PREFETCHES`]).
    fn prefetch() -> TokenStream {
        quote!()
    }
    /// The format-specific helpers, for the given periods (`None` when no shape uses the
    /// format).
    fn helpers(q8_period: Option<usize>, q4_period: Option<usize>) -> TokenStream;
}

/// The helpers every instruction set shares the shape of: accumulator, total, prefetch and the
/// scale broadcasts for the periods in use.
fn common_helpers<E: Int8Emitter>(periods: &[usize]) -> TokenStream {
    let feats = features::<E>();
    let (acc, zero, hsum) = (E::acc_type(), E::zero(), E::hsum());
    let acc_doc = doc(&format!("A row's accumulator: {} partial sums.", E::LANES));
    let broadcasts = periods.iter().map(|&n| {
        let name = ident(&format!("broadcast{n}"));
        let (ty, body) = E::broadcast(n);
        let docs = doc(&if n == 1 {
            "The scale at `p`, for every lane.".to_string()
        } else {
            format!("The {n} scales at `p`: lane i takes scale i % {n}.")
        });
        quote! {
            #docs
            #feats
            #[inline]
            unsafe fn #name(p: *const f32) -> #ty {
                #body
            }
        }
    });
    let prefetch = if E::PREFETCHES {
        let body = E::prefetch();
        quote! {
            #[doc = " Asks for the stream `PREFETCH_BYTES` ahead of `p`; never faults, even past the end."]
            #feats
            #[inline]
            unsafe fn prefetch<T>(p: *const T) {
                #body
            }
        }
    } else {
        quote!()
    };
    quote! {
        #acc_doc
        #feats
        #[inline]
        unsafe fn zero() -> #acc {
            #zero
        }

        #[doc = " The row's total."]
        #feats
        #[inline]
        unsafe fn hsum(acc: #acc) -> f32 {
            #hsum
        }

        #prefetch
        #(#broadcasts)*
    }
}

/// `#[target_feature(...)]` for the emitter, or nothing.
pub(crate) fn features<E: Int8Emitter>() -> TokenStream {
    match E::FEATURES {
        Some(f) => quote!(#[target_feature(enable = #f)]),
        None => quote!(),
    }
}

/// `#[cfg(target_arch = ...)]` for the emitter, or nothing.
pub(crate) fn arch_cfg(arch: Option<&str>) -> TokenStream {
    match arch {
        Some(a) => quote!(#[cfg(target_arch = #a)]),
        None => quote!(),
    }
}

/// `p` or `p.add(offset)`.
fn at(p: &Ident, offset: usize) -> TokenStream {
    if offset == 0 {
        quote!(#p)
    } else {
        let o = lit(offset);
        quote!(#p.add(#o))
    }
}

/// The statements computing `rows` rows (a tile, or one row) of `cols` columns for `tokens`
/// inputs: a loop over the row's chunks with a fixed trip count, in which each chunk's input
/// blocks are prepared once per token and every (row, token) takes one step at a literal
/// offset; then the totals, stored at `out(row, token)`. Token `t`'s input, scales and
/// corrections start `t` rows past `xp`, `xsp` and `cp`.
///
/// The chunk loop is deliberately not unrolled in the source: fully unrolled, LLVM schedules
/// the tile's loads and prefetches out of stream order, and the Q8_0 stories110M GEMVs
/// streamed at 35.5 GB/s against 39.0 with the loop (42.5 GB/s sequential read, one thread).
///
/// Each output's operations are the same whatever `rows` and `tokens` are (one accumulator,
/// one step per block in column order, then `hsum`), so the batched kernels give every token
/// the GEMV's bits.
fn rows_body(
    q4: bool,
    cols: usize,
    period: usize,
    (rows, tokens): (usize, usize),
    prefetch: bool,
    out: &dyn Fn(usize, usize) -> TokenStream,
) -> TokenStream {
    let (wp, sp, xp, xsp, cp, w, s) = (
        ident("wp"),
        ident("sp"),
        ident("xp"),
        ident("xsp"),
        ident("cp"),
        ident("w"),
        ident("s"),
    );
    // One token keeps the GEMV's names (`acc0`, `x0`); a batch numbers the tokens too.
    let named = |base: &str, i: usize, t: usize| {
        if tokens == 1 {
            ident(&format!("{base}{i}"))
        } else {
            ident(&format!("{base}{i}_{t}"))
        }
    };
    let mut setup = Vec::new();
    for r in 0..rows {
        for t in 0..tokens {
            let a = named("acc", r, t);
            setup.push(quote!(let mut #a = zero();));
        }
    }
    let broadcast = ident(&format!("broadcast{period}"));
    let blocks_per_chunk = if q4 { 2 } else { 1 };
    let scales_per_chunk = blocks_per_chunk * period;
    let chunks = lit(cols / (blocks_per_chunk * BLOCK));
    // Per chunk k: the input advances by its values, the corrections by a quarter of that,
    // the scales by the chunk's groups, the tile by one 64-byte step per row.
    let stride = |n: usize, plus: usize| {
        let k = if n == 1 {
            quote!(k)
        } else {
            let n = lit(n);
            quote!(#n * k)
        };
        if plus == 0 {
            k
        } else {
            let plus = lit(plus);
            quote!(#k + #plus)
        }
    };
    let w_at = stride(rows * BLOCK, 0);
    let s_at = stride(rows * scales_per_chunk, 0);
    let mut step = vec![
        quote!(let #w = #wp.add(#w_at);),
        quote!(let #s = #sp.add(#s_at);),
    ];
    if prefetch {
        for r in 0..rows {
            let w_r = at(&w, r * BLOCK);
            step.push(quote!(prefetch(#w_r);));
        }
    }
    for t in 0..tokens {
        let mut prepared = Vec::new();
        for b in 0..blocks_per_chunk {
            let (x, xs) = (named("x", b, t), named("xs", b, t));
            let xat = stride(blocks_per_chunk * BLOCK, b * BLOCK + t * cols);
            let cat = stride(blocks_per_chunk * BLOCK / 4, (b * BLOCK + t * cols) / 4);
            let sat = stride(scales_per_chunk, b * period + t * (cols / BLOCK) * period);
            let prepare = if q4 {
                quote!(x4_block)
            } else {
                quote!(x_block)
            };
            step.push(quote!(let #x = #prepare(#xp.add(#xat), #cp.add(#cat));));
            step.push(quote!(let #xs = #broadcast(#xsp.add(#sat));));
            prepared.push((x, xs));
        }
        for r in 0..rows {
            let a = named("acc", r, t);
            let (w_r, s_r) = (at(&w, r * BLOCK), at(&s, r * scales_per_chunk));
            step.push(if q4 {
                let ((x0, xs0), (x1, xs1)) = (&prepared[0], &prepared[1]);
                quote!(#a = q4_step(#a, #x0, #x1, #xs0, #xs1, #w_r, #s_r);)
            } else {
                let (x, xs) = &prepared[0];
                quote!(#a = q8_step(#a, #x, #xs, #w_r, #s_r);)
            });
        }
    }
    let mut totals = Vec::new();
    for t in 0..tokens {
        for r in 0..rows {
            let a = named("acc", r, t);
            let index = out(r, t);
            totals.push(quote!(*op.add(#index) = hsum(#a);));
        }
    }
    quote! {
        #(#setup)*
        for k in 0..#chunks {
            #(#step)*
        }
        #(#totals)*
    }
}

/// `n · k + plus` over the chunk index `k`, written as a person would (`k`, `8 * k`,
/// `k + 2`, `8 * k + 64`).
pub(crate) fn affine(n: usize, plus: usize) -> TokenStream {
    let k = if n == 1 {
        quote!(k)
    } else {
        let n = lit(n);
        quote!(#n * k)
    };
    if plus == 0 {
        k
    } else {
        let plus = lit(plus);
        quote!(#k + #plus)
    }
}

/// `first` or `first + r`.
fn plus(first: &TokenStream, r: usize) -> TokenStream {
    if r == 0 {
        first.clone()
    } else {
        let r = lit(r);
        quote!(#first + #r)
    }
}

/// `t · ld + r`, written as a person would (`r`, `ld`, `ld + r`, `2 * ld + r`).
fn batch_index(r: usize, t: usize) -> TokenStream {
    let row = match t {
        0 => {
            let r = lit(r);
            return quote!(#r);
        }
        1 => quote!(ld),
        t => {
            let t = lit(t);
            quote!(#t * ld)
        }
    };
    plus(&row, r)
}

fn body_name(q4: bool, cols: usize) -> Ident {
    ident(&format!("{}_x{cols}", if q4 { "q4" } else { "q8" }))
}

/// The shared body for every `cols`-column shape of one format.
fn body<E: Int8Emitter>(q4: bool, cols: usize, group: usize) -> TokenStream {
    let name = body_name(q4, cols);
    let period = BLOCK / group;
    let c = lit(cols);
    let bytes_per_row = if q4 { cols / 2 } else { cols };
    let scales = lit(cols / group);
    let tile_bytes = lit(TILE_ROWS * bytes_per_row);
    let tile_scales = lit(TILE_ROWS * cols / group);
    let row_bytes = lit(bytes_per_row);
    let tile_rows = lit(TILE_ROWS);
    let feats = features::<E>();
    let (first_tile, first_row) = (quote!(t * #tile_rows), quote!(r));
    let tile = rows_body(q4, cols, period, (TILE_ROWS, 1), E::PREFETCHES, &|r, _| {
        plus(&first_tile, r)
    });
    let single = rows_body(q4, cols, period, (1, 1), E::PREFETCHES, &|r, _| {
        plus(&first_row, r)
    });
    // The input's lane corrections: one i32 per four values.
    let n = lit(cols / 4);
    let (corr_param, corr_ptr) = (quote!(corr: &[i32; #n],), quote!(let cp = corr.as_ptr();));
    let (wt, format) = if q4 {
        (quote!(u8), "Q4_0")
    } else {
        (quote!(i8), "Q8_0")
    };
    let docs = doc(&format!(
        "{format} `out = W · x` for any number of rows of {cols} columns, tiled, groups of \
         {group}: the one body every {cols}-column shape shares."
    ));
    let rest = comment("Rows past the last full tile are stored one by one (tiles of one row).");
    let safety = comment(&format!(
        "SAFETY: the lengths are checked above: each tile is {} bytes and {} scales, each \
         single row {bytes_per_row} bytes and {} scales, and the chunk loop's offsets (fixed \
         strides times k, below the chunk count) stay inside them. The caller guarantees the \
         CPU features.",
        TILE_ROWS * bytes_per_row,
        TILE_ROWS * cols / group,
        cols / group
    ));
    let len_msg = format!("{format} kernel: weights or scales are not out.len() rows");
    quote! {
        #docs
        #feats
        unsafe fn #name(
            w: &[#wt],
            ws: &[f32],
            x: &[i8; #c],
            xs: &[f32; #scales],
            #corr_param
            out: &mut [f32],
        ) {
            let rows = out.len();
            assert!(w.len() == rows * #row_bytes && ws.len() == rows * #scales, #len_msg);
            let tiles = rows / #tile_rows;
            let xp = x.as_ptr();
            let xsp = xs.as_ptr();
            #corr_ptr
            let op = out.as_mut_ptr();
            #safety
            unsafe {
                for t in 0..tiles {
                    let wp = w.as_ptr().add(t * #tile_bytes);
                    let sp = ws.as_ptr().add(t * #tile_scales);
                    #tile
                }
                #rest
                for r in tiles * #tile_rows..rows {
                    let wp = w.as_ptr().add(r * #row_bytes);
                    let sp = ws.as_ptr().add(r * #scales);
                    #single
                }
            }
        }
    }
}

fn batch_body_name(q4: bool, cols: usize) -> Ident {
    ident(&format!("{}_batch_x{cols}", if q4 { "q4" } else { "q8" }))
}

fn batch_tile_name(q4: bool, cols: usize, rows: usize, tokens: usize) -> Ident {
    ident(&format!(
        "{}_tile{rows}x{tokens}_x{cols}",
        if q4 { "q4" } else { "q8" }
    ))
}

/// One register tile of the batched kernel: `rows` rows (a layout tile, or one row) times
/// `tokens` inputs, outputs at `op[t · ld + r]`.
fn batch_tile<E: Int8Emitter>(
    q4: bool,
    cols: usize,
    group: usize,
    rows: usize,
    tokens: usize,
    prefetch: bool,
) -> TokenStream {
    let name = batch_tile_name(q4, cols, rows, tokens);
    let feats = features::<E>();
    let custom = (rows == TILE_ROWS && tokens == E::BATCH_TOKENS)
        .then(|| E::batch_tile(q4, cols, BLOCK / group))
        .flatten();
    let custom_args = custom.is_some();
    let scales_table = if custom.is_some() {
        quote!(xtp: *const f32,)
    } else {
        quote!()
    };
    let body = custom.unwrap_or_else(|| {
        rows_body(
            q4,
            cols,
            BLOCK / group,
            (rows, tokens),
            prefetch,
            &batch_index,
        )
    });
    let wt = if q4 { quote!(u8) } else { quote!(i8) };
    let docs = doc(&format!(
        "{rows} row{} × {tokens} token{} of {cols} columns: outputs `op[t · ld + r]`.",
        if rows == 1 { "" } else { "s" },
        if tokens == 1 { "" } else { "s" }
    ));
    let safety = doc(
        "# Safety\n\nThe tile's weights and scales, the tokens' tiled inputs, scales and \
         corrections must be readable, the outputs writable, and the CPU must have the \
         module's features.",
    );
    // A one-token tile writes one output row and has no use for its stride.
    let ld = if tokens == 1 {
        quote!()
    } else {
        quote!(, ld: usize)
    };
    let many = if custom_args {
        quote!(#[allow(clippy::too_many_arguments)])
    } else {
        quote!()
    };
    quote! {
        #docs
        #safety
        #feats
        #many
        #[inline]
        unsafe fn #name(
            wp: *const #wt,
            sp: *const f32,
            xp: *const i8,
            xsp: *const f32,
            #scales_table
            cp: *const i32,
            op: *mut f32
            #ld
        ) {
            #body
        }
    }
}

/// The shared batched body for every `cols`-column shape of one format: layout tiles of rows
/// outside, register tiles of tokens inside (full tiles, then a pair), leftover tokens and rows
/// one at a time.
fn batch_body<E: Int8Emitter>(q4: bool, cols: usize, group: usize) -> TokenStream {
    let name = batch_body_name(q4, cols);
    let feats = features::<E>();
    let tokens_t = E::BATCH_TOKENS;
    let full = batch_tile_name(q4, cols, TILE_ROWS, tokens_t);
    let one_token = batch_tile_name(q4, cols, TILE_ROWS, 1);
    let single = batch_tile_name(q4, cols, 1, 1);
    let bytes_per_row = if q4 { cols / 2 } else { cols };
    let (c, rb, sc, cq) = (
        lit(cols),
        lit(bytes_per_row),
        lit(cols / group),
        lit(cols / 4),
    );
    let (tile_bytes, tile_scales) = (
        lit(TILE_ROWS * bytes_per_row),
        lit(TILE_ROWS * cols / group),
    );
    let (tr, tt) = (lit(TILE_ROWS), lit(tokens_t));
    let (wt, format) = if q4 {
        (quote!(u8), "Q4_0")
    } else {
        (quote!(i8), "Q8_0")
    };
    let docs = doc(&format!(
        "{format} `out[t · ld + r] = W[r] · x[t]` for any number of rows of {cols} columns \
         (tiled, groups of {group}) and any number of tokens: the one batched body every \
         {cols}-column shape shares."
    ));
    let len_msg = format!("{format} batched kernel: lengths are not whole rows and tokens");
    // Instruction sets with their own full tile read the token-tile scale table.
    let table = E::batch_tile(q4, cols, BLOCK / group).is_some();
    let (table_check, table_arg) = if table {
        (
            quote!(&& x.scales_tt.len() >= token_tiles * #tt * #sc),
            quote!(x.scales_tt.as_ptr().add(t * #sc),),
        )
    } else {
        (quote!(), quote!())
    };
    let order = comment(
        "Layout tiles outside, so a tile's rows stay in L1 while every token passes over \
         them; the weights are read from memory once per call.",
    );
    // Tokens past the last full tile: a pair together where the full tile is wider than two
    // (a few decoding streams share each weight load), then one at a time.
    let ones = quote! {
        for t in t..tokens {
            #one_token(wp, sp, xp.add(t * #c), xsp.add(t * #sc), cp.add(t * #cq), out.add(t * ld + r));
        }
    };
    let leftover = if tokens_t > 2 {
        let pair = batch_tile_name(q4, cols, TILE_ROWS, 2);
        quote! {
            let mut t = token_tiles * #tt;
            if tokens - t >= 2 {
                #pair(wp, sp, xp.add(t * #c), xsp.add(t * #sc), cp.add(t * #cq), out.add(t * ld + r), ld);
                t += 2;
            }
            #ones
        }
    } else {
        quote! {
            let t = token_tiles * #tt;
            #ones
        }
    };
    let safety = comment(
        "SAFETY: the lengths are checked above, every tile reads rows below `rows` and tokens \
         below `tokens`, and the caller guarantees the outputs and the CPU features.",
    );
    quote! {
        #docs
        #feats
        unsafe fn #name(
            w: &[#wt],
            ws: &[f32],
            x: crate::TiledInputs,
            out: *mut f32,
            ld: usize,
        ) {
            let (rows, tokens) = (w.len() / #rb, x.q.len() / #c);
            let token_tiles = tokens / #tt;
            assert!(
                w.len() == rows * #rb
                    && ws.len() == rows * #sc
                    && x.q.len() == tokens * #c
                    && x.scales.len() == tokens * #sc
                    && x.corr.len() == tokens * #cq
                    #table_check,
                #len_msg
            );
            let tiles = rows / #tr;
            let (xp, xsp, cp) = (x.q.as_ptr(), x.scales.as_ptr(), x.corr.as_ptr());
            #safety
            unsafe {
                #order
                for i in 0..tiles {
                    let r = i * #tr;
                    let wp = w.as_ptr().add(i * #tile_bytes);
                    let sp = ws.as_ptr().add(i * #tile_scales);
                    for j in 0..token_tiles {
                        let t = j * #tt;
                        #full(wp, sp, xp.add(t * #c), xsp.add(t * #sc), #table_arg cp.add(t * #cq), out.add(t * ld + r), ld);
                    }
                    #leftover
                }
                for r in tiles * #tr..rows {
                    let wp = w.as_ptr().add(r * #rb);
                    let sp = ws.as_ptr().add(r * #sc);
                    for t in 0..tokens {
                        #single(wp, sp, xp.add(t * #c), xsp.add(t * #sc), cp.add(t * #cq), out.add(t * ld + r));
                    }
                }
            }
        }
    }
}

/// The batched body for `cols` columns and the tiles it calls.
fn batch_items<E: Int8Emitter>(q4: bool, cols: usize, group: usize) -> TokenStream {
    let body = batch_body::<E>(q4, cols, group);
    let full = batch_tile::<E>(q4, cols, group, TILE_ROWS, E::BATCH_TOKENS, false);
    // With fewer tokens than a full tile (two or three decoding streams), the pair tile is
    // the first to touch the weights, so it prefetches them as the GEMV does.
    let pair = (E::BATCH_TOKENS > 2)
        .then(|| batch_tile::<E>(q4, cols, group, TILE_ROWS, 2, E::PREFETCHES));
    let one_token = batch_tile::<E>(q4, cols, group, TILE_ROWS, 1, false);
    let single = batch_tile::<E>(q4, cols, group, 1, 1, false);
    quote!(#body #full #pair #one_token #single)
}

/// The public name of a shape's batched kernel.
pub(crate) fn batch_kernel_name(q4: bool, shape: &Shape) -> Ident {
    ident(&format!(
        "{}_batch_{}",
        if q4 { "q4" } else { "q8" },
        shape.suffix()
    ))
}

/// The per-shape batched entry point.
fn batch_wrapper<E: Int8Emitter>(q4: bool, shape: &Shape, group: usize) -> TokenStream {
    let name = batch_kernel_name(q4, shape);
    let body = batch_body_name(q4, shape.cols);
    let feats = features::<E>();
    let (format, wt) = if q4 {
        ("Q4_0", quote!(u8))
    } else {
        ("Q8_0", quote!(i8))
    };
    let docs = doc(&format!(
        "{format} `out[t · ld + r] = W[r] · x[t]` for a block of rows of the {} matrix \
         (tiled, groups of {group}; the block starts on a tile boundary) and every token of \
         `x` (each token's tiled input, scales and corrections one after another); bit for bit \
         what the GEMV gives each token alone.\n\n# Safety\n\n`out.add(t * ld + r)` must be \
         valid for writes, and not accessed by anyone else during the call, for every token \
         `t` and row `r` of the block. The CPU must support {}: \
         [`Int8Kernels`](super::Int8Kernels) checks this once.\n\n# Panics\n\nIf a \
         length is not whole rows or tokens of the shape.",
        shape.describe(),
        E::REQUIREMENT
    ));
    let call = comment("SAFETY: this function's contract is the body's.");
    quote! {
        #docs
        #feats
        pub unsafe fn #name(
            w: &[#wt],
            ws: &[f32],
            x: crate::TiledInputs,
            out: *mut f32,
            ld: usize,
        ) {
            #call
            unsafe { #body(w, ws, x, out, ld) }
        }
    }
}

/// The `# Safety` paragraph of every public int8 kernel.
fn safety_doc<E: Int8Emitter>() -> String {
    format!(
        "# Safety\n\nThe CPU must support {}. [`Int8Kernels`](super::Int8Kernels) checks this \
         once; call through it unless you have checked yourself.",
        E::REQUIREMENT
    )
}

/// The public name of a shape's kernel.
pub(crate) fn kernel_name(q4: bool, shape: &Shape) -> Ident {
    ident(&format!(
        "{}_{}",
        if q4 { "q4" } else { "q8" },
        shape.suffix()
    ))
}

/// The per-shape entry point: slices in (the table's function type), arrays into the body.
fn wrapper<E: Int8Emitter>(q4: bool, shape: &Shape, group: usize) -> TokenStream {
    let name = kernel_name(q4, shape);
    let body = body_name(q4, shape.cols);
    let feats = features::<E>();
    let (format, wt) = if q4 {
        ("Q4_0", quote!(u8))
    } else {
        ("Q8_0", quote!(i8))
    };
    let docs = doc(&format!(
        "{format} `out = W · x` for a block of rows of the {} matrix (tiled, groups of \
         {group}); the block starts on a tile boundary.\n\n{}\n\n# Panics\n\nIf a length \
         does not match the shape.",
        shape.describe(),
        safety_doc::<E>()
    ));
    let wrong = "input length does not match the kernel's shape";
    let (corr_param, corr_arg) = (
        quote!(corr: &[i32],),
        quote!(corr.try_into().expect(#wrong),),
    );
    let call_safety = comment("SAFETY: this function's contract is the body's.");
    quote! {
        #docs
        #feats
        pub unsafe fn #name(
            w: &[#wt],
            ws: &[f32],
            x: &[i8],
            xs: &[f32],
            #corr_param
            out: &mut [f32],
        ) {
            #call_safety
            unsafe {
                #body(
                    w,
                    ws,
                    x.try_into().expect(#wrong),
                    xs.try_into().expect(#wrong),
                    #corr_arg
                    out,
                )
            }
        }
    }
}

/// One instruction set's int8 submodule.
pub(crate) fn module<E: Int8Emitter>(plan: &Int8Plan) -> TokenStream {
    if plan.q8.is_empty() && plan.q4.is_empty() {
        return quote!();
    }
    let name = ident(E::MODULE);
    let cfg = arch_cfg(E::ARCH);
    let docs = doc(E::DOC);
    let import = E::import();
    let q8_wrappers = plan
        .q8
        .iter()
        .map(|s| wrapper::<E>(false, s, plan.q8_group));
    let q4_wrappers = plan.q4.iter().map(|s| wrapper::<E>(true, s, plan.q4_group));
    let q8_bodies = distinct_cols(&plan.q8)
        .into_iter()
        .map(|c| body::<E>(false, c, plan.q8_group));
    let q4_bodies = distinct_cols(&plan.q4)
        .into_iter()
        .map(|c| body::<E>(true, c, plan.q4_group));
    let batch_wrappers = plan
        .q8
        .iter()
        .map(|s| batch_wrapper::<E>(false, s, plan.q8_group))
        .chain(
            plan.q4
                .iter()
                .map(|s| batch_wrapper::<E>(true, s, plan.q4_group)),
        );
    let batch_bodies = distinct_cols(&plan.q8)
        .into_iter()
        .map(|c| batch_items::<E>(false, c, plan.q8_group))
        .chain(
            distinct_cols(&plan.q4)
                .into_iter()
                .map(|c| batch_items::<E>(true, c, plan.q4_group)),
        );
    let (q8_period, q4_period) = (
        (!plan.q8.is_empty()).then(|| plan.q8_period()),
        (!plan.q4.is_empty()).then(|| plan.q4_period()),
    );
    let mut periods: Vec<usize> = q8_period.into_iter().chain(q4_period).collect();
    periods.sort_unstable();
    periods.dedup();
    let common = common_helpers::<E>(&periods);
    let helpers = E::helpers(q8_period, q4_period);
    let pf = lit(PREFETCH_BYTES);
    let pf_doc = doc(&format!(
        "How far ahead of each row step the stream is requested ({PREFETCH_BYTES} bytes), \
         tuned on the stories110M shapes."
    ));
    let prefetch = if E::PREFETCHES {
        quote!(#pf_doc const PREFETCH_BYTES: usize = #pf;)
    } else {
        quote!()
    };
    quote! {
        #docs
        #cfg
        pub mod #name {
            #import
            #prefetch

            #(#q8_wrappers)*
            #(#q4_wrappers)*
            #(#batch_wrappers)*
            #(#q8_bodies)*
            #(#q4_bodies)*
            #(#batch_bodies)*
            #common
            #helpers
        }
    }
}

/// Every int8 emitter: its module, `Int8Isa` variant and architecture, best first.
pub(crate) struct Emitted {
    pub module: Ident,
    pub variant: Ident,
    pub arch: Option<&'static str>,
}

fn emitted<E: Int8Emitter>() -> Emitted {
    Emitted {
        module: ident(E::MODULE),
        variant: ident(E::VARIANT),
        arch: E::ARCH,
    }
}

/// The int8 submodules and the `Int8Kernels` table.
pub(crate) fn items(cfg: &ModelConfig) -> TokenStream {
    let plan = Int8Plan::new(cfg);
    let modules = [
        module::<portable::Portable>(&plan),
        module::<avx512::Avx512Vnni>(&plan),
        module::<avx2::Avx2>(&plan),
        module::<neon::NeonDotprod>(&plan),
    ];
    let isas = [
        emitted::<avx512::Avx512Vnni>(),
        emitted::<avx2::Avx2>(),
        emitted::<neon::NeonDotprod>(),
        emitted::<portable::Portable>(),
    ];
    let table = table(&plan, &isas);
    quote! {
        #(#modules)*
        #table
    }
}

fn table(plan: &Int8Plan, isas: &[Emitted]) -> TokenStream {
    let (q8g, q4g) = (lit(plan.q8_group), lit(plan.q4_group));
    let shape_list = |shapes: &[Shape]| {
        let s = shapes.iter().map(|s| {
            let (r, c) = (lit(s.rows), lit(s.cols));
            quote!((#r, #c))
        });
        quote!(&[#(#s),*])
    };
    let (q8_shapes, q4_shapes) = (shape_list(&plan.q8), shape_list(&plan.q4));
    let arms = |q4: bool, shapes: &[Shape]| -> Vec<TokenStream> {
        isas.iter()
            .flat_map(|isa| {
                shapes.iter().map(move |s| {
                    let cfg = arch_cfg(isa.arch);
                    let (variant, module) = (&isa.variant, &isa.module);
                    let (r, c) = (lit(s.rows), lit(s.cols));
                    let (f, b) = (kernel_name(q4, s), batch_kernel_name(q4, s));
                    quote!(#cfg (crate::Int8Isa::#variant, #r, #c) => (#module::#f, #module::#b),)
                })
            })
            .collect()
    };
    let safety = comment(
        "SAFETY: an Int8Kernels value exists only after for_isa checked the CPU, and the\n\
         pointer comes from that instruction set's module.",
    );
    // A format without kernels answers None without naming its arguments' values.
    let lookup = |q4: bool, shapes: &[Shape]| {
        let (unit, gemv) = if q4 {
            (quote!(u8), quote!(crate::Q4Gemv))
        } else {
            (quote!(i8), quote!(crate::Q8Gemv))
        };
        let arms = arms(q4, shapes);
        let group = if q4 {
            quote!(Q4_GROUP)
        } else {
            quote!(Q8_GROUP)
        };
        if arms.is_empty() {
            return quote! {
                let _ = (self, rows, cols, group);
                None
            };
        }
        quote! {
            if group != #group {
                return None;
            }
            let (f, b): (crate::Int8GemvFn<#unit>, crate::Int8BatchFn<#unit>) = match (self.isa, rows, cols) {
                #(#arms)*
                _ => return None,
            };
            #safety
            Some(unsafe { #gemv::new(f, b) })
        }
    };
    let (q8_lookup, q4_lookup) = (lookup(false, &plan.q8), lookup(true, &plan.q4));
    let constructors = isas.iter().map(|isa| {
        let cfg = arch_cfg(isa.arch);
        let variant = &isa.variant;
        quote!(#cfg crate::Int8Isa::#variant => isa.is_supported(),)
    });
    let struct_doc = doc(
        "The int8 kernels of one instruction set for the tiled Q8_0 and Q4_0 layout \
         (`model_config::tiled`): a shape has a kernel when its rows are whole chunks at the \
         compiled group size ([`Q8_SHAPES`], [`Q4_SHAPES`]). Other matrices, and files with \
         another group size, run on the engine's runtime-shape kernels.",
    );
    quote! {
        #[doc = " The Q8_0 group size the int8 kernels are compiled for."]
        pub const Q8_GROUP: usize = #q8g;
        #[doc = " The Q4_0 group size the 4-bit kernels are compiled for."]
        pub const Q4_GROUP: usize = #q4g;
        #[doc = " Shapes (rows, cols) with a tiled Q8_0 kernel."]
        pub const Q8_SHAPES: &[(usize, usize)] = #q8_shapes;
        #[doc = " Shapes (rows, cols) with a tiled Q4_0 kernel."]
        pub const Q4_SHAPES: &[(usize, usize)] = #q4_shapes;

        #struct_doc
        #[derive(Debug, Clone, Copy)]
        pub struct Int8Kernels {
            isa: crate::Int8Isa,
        }

        impl Int8Kernels {
            #[doc = " The kernels of `isa`, or `None` if none were generated for it or this CPU cannot run them."]
            pub fn for_isa(isa: crate::Int8Isa) -> Option<Int8Kernels> {
                let available = match isa {
                    #(#constructors)*
                    #[allow(unreachable_patterns)]
                    _ => false,
                };
                available.then_some(Int8Kernels { isa })
            }

            #[doc = " The instruction set."]
            pub fn isa(&self) -> crate::Int8Isa {
                self.isa
            }

            #[doc = " The Q8_0 kernel for a `rows`×`cols` matrix with groups of `group`, if generated."]
            pub fn q8(&self, rows: usize, cols: usize, group: usize) -> Option<crate::Q8Gemv> {
                #q8_lookup
            }

            #[doc = " The Q4_0 kernel for a `rows`×`cols` matrix with groups of `group`, if generated."]
            pub fn q4(&self, rows: usize, cols: usize, group: usize) -> Option<crate::Q4Gemv> {
                #q4_lookup
            }
        }
    }
}
