//! One emitter per instruction set. The three SIMD emitters share the kernel layout in
//! [`simd_module`] and differ only in the [`Simd`] vocabulary they supply; the portable
//! emitter writes plain Rust.

pub(crate) mod avx2;
pub(crate) mod avx512;
pub(crate) mod gemm;
pub(crate) mod neon;
pub(crate) mod portable;

use proc_macro2::{Ident, TokenStream};
use quote::quote;

use crate::emit::{comment, doc, ident, lit, At};
use crate::shapes::{distinct_cols, Shape};

/// Rows per tile in the SIMD GEMV: every loaded chunk of `x` feeds this many rows, and their
/// accumulators are 8 independent FMA chains, enough to cover FMA latency × throughput.
const TILE_ROWS: usize = 8;
/// Accumulators per row. One, so that a row's sum is formed in exactly the order the batched
/// kernels (`gemm.rs`) form it for each token: decode and prefill give the same bits.
const ACCS_PER_ROW: usize = 1;
/// Partial sums in the RMSNorm sum of squares.
const NORM_ACCS: usize = 4;

/// An instruction set the generated module has a submodule for, in the order
/// `Kernels::detect` prefers them (best first; portable always works).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IsaKind {
    /// x86_64 AVX-512F.
    Avx512,
    /// x86_64 AVX2 + FMA.
    Avx2,
    /// aarch64 NEON.
    Neon,
    /// Plain Rust.
    Portable,
}

impl IsaKind {
    /// Every ISA, best first.
    pub(crate) const PREFERENCE: [IsaKind; 4] = [
        IsaKind::Avx512,
        IsaKind::Avx2,
        IsaKind::Neon,
        IsaKind::Portable,
    ];

    /// The submodule's name.
    pub(crate) fn module(self) -> Ident {
        ident(match self {
            IsaKind::Avx512 => avx512::Avx512::MODULE,
            IsaKind::Avx2 => avx2::Avx2::MODULE,
            IsaKind::Neon => neon::Neon::MODULE,
            IsaKind::Portable => "portable",
        })
    }

    /// The matching `crate::Isa` variant.
    pub(crate) fn variant(self) -> Ident {
        ident(match self {
            IsaKind::Avx512 => "Avx512",
            IsaKind::Avx2 => "Avx2",
            IsaKind::Neon => "Neon",
            IsaKind::Portable => "Portable",
        })
    }

    /// `#[cfg(target_arch = ...)]` for the submodule and everything naming it.
    pub(crate) fn cfg(self) -> TokenStream {
        match self {
            IsaKind::Avx512 => avx512::Avx512::cfg(),
            IsaKind::Avx2 => avx2::Avx2::cfg(),
            IsaKind::Neon => neon::Neon::cfg(),
            IsaKind::Portable => quote!(),
        }
    }

    /// An expression that is true when this CPU can run the submodule.
    pub(crate) fn runtime_check(self) -> TokenStream {
        match self {
            IsaKind::Avx512 => avx512::Avx512::runtime_check(),
            IsaKind::Avx2 => avx2::Avx2::runtime_check(),
            IsaKind::Neon => neon::Neon::runtime_check(),
            IsaKind::Portable => quote!(true),
        }
    }

    /// The whole submodule for these shapes.
    pub(crate) fn emit(self, shapes: &[Shape], dim: usize, eps: f32) -> TokenStream {
        match self {
            IsaKind::Avx512 => simd_module::<avx512::Avx512>(shapes, dim, eps),
            IsaKind::Avx2 => simd_module::<avx2::Avx2>(shapes, dim, eps),
            IsaKind::Neon => simd_module::<neon::Neon>(shapes, dim, eps),
            IsaKind::Portable => portable::module(shapes, dim, eps),
        }
    }
}

/// The vocabulary one SIMD instruction set brings. Every method returns tokens; pointers are
/// [`At`] values so each load and store carries a literal offset.
pub(crate) trait Simd {
    /// Submodule name.
    const MODULE: &'static str;
    /// `target_arch` the submodule is compiled for.
    const ARCH: &'static str;
    /// The `#[target_feature(enable = ...)]` string.
    const FEATURES: &'static str;
    /// f32 lanes per vector.
    const LANES: usize;
    /// What the CPU must support, for `# Safety` sections.
    const REQUIREMENT: &'static str;
    /// Rows per register tile of the batched kernels.
    const GEMM_ROWS: usize;
    /// Tokens per register tile of the batched kernels.
    const GEMM_TOKENS: usize;
    /// The submodule's doc comment.
    const DOC: &'static str;

    /// `#[cfg(target_arch = ...)]`.
    fn cfg() -> TokenStream {
        let arch = Self::ARCH;
        quote!(#[cfg(target_arch = #arch)])
    }
    /// True when the running CPU has the features.
    fn runtime_check() -> TokenStream;
    /// `use core::arch::...::*;`
    fn import() -> TokenStream;
    /// Private helper items the kernels call (e.g. a horizontal sum).
    fn helpers() -> TokenStream {
        quote!()
    }
    /// Statements at the top of a kernel whose length leaves `rem` (< LANES, > 0) floats
    /// after the last full vector, e.g. building a lane mask.
    fn tail_setup(rem: usize) -> TokenStream {
        let _ = rem;
        quote!()
    }
    /// A full-vector load.
    fn load(p: &At) -> TokenStream;
    /// A load of the last `rem` floats, zero-filled above them, reading nothing past them.
    fn load_tail(p: &At, rem: usize) -> TokenStream;
    /// `a * b`.
    fn mul(a: &TokenStream, b: &TokenStream) -> TokenStream;
    /// `acc + a * b`, fused.
    fn fma(acc: &Ident, a: &TokenStream, b: &TokenStream) -> TokenStream;
    /// `a + b`.
    fn add(a: &TokenStream, b: &TokenStream) -> TokenStream;
    /// Every lane set to the f32 `s`.
    fn splat(s: &TokenStream) -> TokenStream;
    /// The sum of the lanes, as f32.
    fn reduce(v: &TokenStream) -> TokenStream;
    /// A full-vector store statement.
    fn store(p: &At, v: &TokenStream) -> TokenStream;
    /// Statements storing the low `rem` lanes and nothing past them.
    fn store_tail(p: &At, v: &TokenStream, rem: usize) -> TokenStream;
}

/// One vector's worth of a row: `len` floats from `offset` (`len < LANES` only for the tail).
#[derive(Clone, Copy)]
pub(crate) struct Chunk {
    pub(crate) offset: usize,
    pub(crate) len: usize,
}

pub(crate) fn chunks(n: usize, lanes: usize) -> Vec<Chunk> {
    (0..n)
        .step_by(lanes)
        .map(|offset| Chunk {
            offset,
            len: lanes.min(n - offset),
        })
        .collect()
}

pub(crate) fn load<S: Simd>(p: &At, chunk: Chunk) -> TokenStream {
    if chunk.len == S::LANES {
        S::load(p)
    } else {
        S::load_tail(p, chunk.len)
    }
}

fn store<S: Simd>(p: &At, v: &TokenStream, chunk: Chunk) -> TokenStream {
    if chunk.len == S::LANES {
        S::store(p, v)
    } else {
        S::store_tail(p, v, chunk.len)
    }
}

/// `(a + b) + (c + d)`: a balanced sum of accumulators.
fn tree_sum<S: Simd>(terms: &[TokenStream]) -> TokenStream {
    match terms {
        [] => unreachable!("every kernel has at least one accumulator"),
        [one] => one.clone(),
        _ => {
            let (left, right) = terms.split_at(terms.len().div_ceil(2));
            S::add(&tree_sum::<S>(left), &tree_sum::<S>(right))
        }
    }
}

/// The body of one row block (`rows` rows starting at the loop's `r`): row pointers, the
/// fully unrolled dot products and the stores. Accumulator `accI_J` belongs to row I; chunk
/// K goes to accumulator K mod ACCS_PER_ROW, and its first use is a multiply so no zeroing
/// is needed.
fn row_block<S: Simd>(cols: usize, rows: usize) -> TokenStream {
    let c = lit(cols);
    let chunks = chunks(cols, S::LANES);
    let n_acc = chunks.len().min(ACCS_PER_ROW);
    let row_ptr: Vec<Ident> = (0..rows).map(|i| ident(&format!("w{i}"))).collect();
    let acc = |row: usize, j: usize| ident(&format!("acc{row}_{j}"));
    let xp = ident("xp");

    let mut body = Vec::new();
    let w0 = &row_ptr[0];
    body.push(quote!(let #w0 = wp.add(r * #c);));
    for (i, w) in row_ptr.iter().enumerate().skip(1) {
        let off = lit(i * cols);
        body.push(quote!(let #w = #w0.add(#off);));
    }
    for (k, &chunk) in chunks.iter().enumerate() {
        let x = ident(&format!("x{}", chunk.offset));
        let x_load = load::<S>(&At::new(&xp, chunk.offset), chunk);
        body.push(quote!(let #x = #x_load;));
        let x = quote!(#x);
        for (i, w) in row_ptr.iter().enumerate() {
            let a = acc(i, k % n_acc);
            let w_load = load::<S>(&At::new(w, chunk.offset), chunk);
            if k < n_acc {
                let reassigned = chunks.len() > k + n_acc;
                let product = S::mul(&w_load, &x);
                body.push(if reassigned {
                    quote!(let mut #a = #product;)
                } else {
                    quote!(let #a = #product;)
                });
            } else {
                let sum = S::fma(&a, &w_load, &x);
                body.push(quote!(#a = #sum;));
            }
        }
    }
    for i in 0..rows {
        let accs: Vec<TokenStream> = (0..n_acc)
            .map(|j| {
                let a = acc(i, j);
                quote!(#a)
            })
            .collect();
        let total = S::reduce(&tree_sum::<S>(&accs));
        let index = if i == 0 {
            quote!(r)
        } else {
            let i = lit(i);
            quote!(r + #i)
        };
        body.push(quote!(*op.add(#index) = #total;));
    }
    quote!(#(#body)*)
}

/// The name of the shared body for every shape with `cols` columns.
fn body_name(cols: usize) -> Ident {
    ident(&format!("gemv_x{cols}"))
}

/// The shared GEMV body for `cols` columns: a loop over 4-row tiles, then a loop over the
/// remaining rows; no loop over columns.
fn gemv_body<S: Simd>(cols: usize) -> TokenStream {
    let name = body_name(cols);
    let c = lit(cols);
    let features = S::FEATURES;
    let rem = cols % S::LANES;
    let setup = if rem == 0 {
        quote!()
    } else {
        S::tail_setup(rem)
    };
    let tile = row_block::<S>(cols, TILE_ROWS);
    // Without this LLVM hoists every chunk of x out of the tile loop (into stack slots) and
    // then schedules the unrolled body row by row, so the tile's rows are no longer read as
    // interleaved streams. Measured on the stories110M shapes (AVX-512, one thread): 36-37 GB/s
    // without, 42-44 GB/s with, against a 45-46 GB/s read probe.
    let x_opaque = quote!(let xp = core::hint::black_box(xp););
    let single = row_block::<S>(cols, 1);
    let tile_rows = lit(TILE_ROWS);
    let docs = doc(&format!(
        "`out = W · x` for any number of rows of {cols} columns: the one body every \
         {cols}-column shape shares, since the row count only bounds the row loop."
    ));
    let tile_comment = comment(&format!(
        "Tiles of {TILE_ROWS} rows share each load of x; {ACCS_PER_ROW} accumulators per row \
         keep {} FMA chains in flight.",
        TILE_ROWS * ACCS_PER_ROW
    ));
    let rest_comment =
        comment("The last rows of a block whose length is not a multiple of the tile.");
    let safety = comment(&format!(
        "SAFETY: every row is exactly {cols} floats and every offset below is a literal under \
         {cols}; `r` stays below rows = w.len() = out.len(); tail chunks touch only in-bounds \
         lanes. The caller guarantees the CPU features."
    ));
    quote! {
        #docs
        #[target_feature(enable = #features)]
        unsafe fn #name(w: &[[f32; #c]], x: &[f32; #c], out: &mut [f32]) {
            assert_eq!(
                w.len(),
                out.len(),
                "gemv: the weight block and the output must have the same number of rows"
            );
            let rows = out.len();
            let tiles = rows / #tile_rows;
            let wp = w.as_ptr().cast::<f32>();
            let xp = x.as_ptr();
            let op = out.as_mut_ptr();
            #safety
            unsafe {
                #setup
                #tile_comment
                for t in 0..tiles {
                    let r = t * #tile_rows;
                    #x_opaque
                    #tile
                }
                #rest_comment
                for r in tiles * #tile_rows..rows {
                    #single
                }
            }
        }
    }
}

/// The `# Safety` paragraph of every public SIMD kernel.
fn safety_doc<S: Simd>() -> String {
    format!(
        "# Safety\n\nThe CPU must support {}. [`Kernels`](super::Kernels) checks this once at \
         start-up; call through it unless you have checked yourself.",
        S::REQUIREMENT
    )
}

/// The public per-shape entry point, a tail call into the shared body.
fn gemv_wrapper<S: Simd>(shape: &Shape) -> TokenStream {
    let name = ident(&format!("gemv_{}", shape.suffix()));
    let body = body_name(shape.cols);
    let c = lit(shape.cols);
    let features = S::FEATURES;
    let wrapper_safety = comment("SAFETY: this function's contract is the body's.");
    let docs = doc(&format!(
        "`out = W · x` for a block of rows of the {} matrix.\n\n\
         `w` may hold any number of rows (threads split the matrix by rows).\n\n{}\n\n\
         # Panics\n\nIf `w` and `out` have different lengths.",
        shape.describe(),
        safety_doc::<S>()
    ));
    quote! {
        #docs
        #[target_feature(enable = #features)]
        pub unsafe fn #name(w: &[[f32; #c]], x: &[f32; #c], out: &mut [f32]) {
            #wrapper_safety
            unsafe { #body(w, x, out) }
        }
    }
}

/// RMSNorm as llama2.c computes it, fully unrolled over `dim`.
fn rmsnorm<S: Simd>(dim: usize, eps: f32) -> TokenStream {
    let name = ident(&format!("rmsnorm_{dim}"));
    let d = lit(dim);
    let features = S::FEATURES;
    let chunks = chunks(dim, S::LANES);
    let n_acc = chunks.len().min(NORM_ACCS);
    let (xp, wp, op) = (ident("xp"), ident("wp"), ident("op"));
    let rem = dim % S::LANES;
    let setup = if rem == 0 {
        quote!()
    } else {
        S::tail_setup(rem)
    };
    let ss = |j: usize| ident(&format!("ss{j}"));

    let mut squares = Vec::new();
    for (k, &chunk) in chunks.iter().enumerate() {
        let x = ident(&format!("x{}", chunk.offset));
        let x_load = load::<S>(&At::new(&xp, chunk.offset), chunk);
        squares.push(quote!(let #x = #x_load;));
        let x = quote!(#x);
        let a = ss(k % n_acc);
        if k < n_acc {
            let product = S::mul(&x, &x);
            squares.push(if chunks.len() > k + n_acc {
                quote!(let mut #a = #product;)
            } else {
                quote!(let #a = #product;)
            });
        } else {
            let sum = S::fma(&a, &x, &x);
            squares.push(quote!(#a = #sum;));
        }
    }
    let partials: Vec<TokenStream> = (0..n_acc)
        .map(|j| {
            let a = ss(j);
            quote!(#a)
        })
        .collect();
    let total = S::reduce(&tree_sum::<S>(&partials));

    let scale_v = quote!(scale_v);
    let mut scaled = Vec::new();
    for &chunk in &chunks {
        let w = load::<S>(&At::new(&wp, chunk.offset), chunk);
        let x = load::<S>(&At::new(&xp, chunk.offset), chunk);
        let value = S::mul(&w, &S::mul(&scale_v, &x));
        scaled.push(store::<S>(&At::new(&op, chunk.offset), &value, chunk));
    }
    let splat = S::splat(&quote!(scale));
    let norm_safety = comment(&format!(
        "SAFETY: every offset below is a literal under {dim}, the length of all three arrays; \
         the caller guarantees the CPU features."
    ));
    let n = proc_macro2::Literal::f32_unsuffixed(dim as f32);
    let eps = proc_macro2::Literal::f32_unsuffixed(eps);
    let docs = doc(&format!(
        "`out = weight · x / sqrt(mean(x²) + {eps})` over {dim} values, as llama2.c computes it.\n\n{}",
        safety_doc::<S>()
    ));
    let sum_comment = comment(&format!(
        "Sum of squares in {n_acc} independent partial sums."
    ));
    let order_comment = comment("Same operation order as llama2.c: ss / n + eps, then 1 / sqrt.");
    quote! {
        #docs
        #[target_feature(enable = #features)]
        pub unsafe fn #name(out: &mut [f32; #d], x: &[f32; #d], weight: &[f32; #d]) {
            let xp = x.as_ptr();
            let wp = weight.as_ptr();
            let op = out.as_mut_ptr();
            #norm_safety
            unsafe {
                #setup
                #sum_comment
                #(#squares)*
                let ss = #total;
                #order_comment
                let scale = 1.0 / (ss / #n + #eps).sqrt();
                let scale_v = #splat;
                #(#scaled)*
            }
        }
    }
}

/// A whole SIMD submodule: imports, helpers, per-shape entry points, shared bodies, RMSNorm.
fn simd_module<S: Simd>(shapes: &[Shape], dim: usize, eps: f32) -> TokenStream {
    let name = ident(S::MODULE);
    let cfg = S::cfg();
    let docs = doc(S::DOC);
    let import = S::import();
    let helpers = S::helpers();
    let wrappers = shapes.iter().map(gemv_wrapper::<S>);
    let gemm_wrappers = shapes.iter().map(gemm::wrapper::<S>);
    let bodies = distinct_cols(shapes).into_iter().map(gemv_body::<S>);
    let gemm_bodies = distinct_cols(shapes).into_iter().map(|c| {
        let body = gemm::body::<S>(c);
        let tiles = gemm::tiles::<S>(c);
        quote!(#body #tiles)
    });
    let norm = rmsnorm::<S>(dim, eps);
    quote! {
        #docs
        #cfg
        pub mod #name {
            #import
            #(#wrappers)*
            #(#gemm_wrappers)*
            #(#bodies)*
            #(#gemm_bodies)*
            #norm
            #helpers
        }
    }
}
