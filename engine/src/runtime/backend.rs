//! Which kernels the forward pass runs on: the ones generated for the compiled shape (f32, and
//! int8 for tiled Q8_0 / Q4_0 matrices), or the generic runtime-shape ones, plus runtime-shape
//! int8 and 4-bit kernels for the quantised matrices the generated ones do not take. Chosen
//! once when a session starts.

use std::ops::Range;
use std::path::Path;

use generated::{Gemv, RmsNorm};
use model_config::{ModelConfig, WeightFormat, PRESETS};

use crate::format::error::LoadError;
use crate::format::model::MatRef;
use crate::format::quant::{Q4Ref, Q8Ref};
use crate::kernels::q4::Q4Kernels;
use crate::kernels::q8::Q8Kernels;
use crate::kernels::{GenericKernels, Isa};
use crate::runtime::pool::{share, Pool, SyncPtr};
use crate::runtime::quantizer::{GemvInput, TiledInput};

/// The matrix a GEMV multiplies by; the specialised backend maps each to its compiled shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Matrix {
    /// Query projection (dim × dim).
    Q,
    /// Key projection (kv_dim × dim).
    K,
    /// Value projection (kv_dim × dim).
    V,
    /// Attention output projection (dim × dim).
    O,
    /// FFN gate (hidden × dim).
    W1,
    /// FFN down (dim × hidden).
    W2,
    /// FFN up (hidden × dim).
    W3,
    /// Classifier (vocab × dim).
    Classifier,
}

/// The kernel family a backend runs.
#[derive(Debug)]
pub enum Kernels {
    /// Runtime-shape kernels: any model.
    Generic(GenericKernels),
    /// Kernels generated for the compiled shape; only built for a model of exactly that shape.
    Specialised(generated::Kernels),
}

/// The kernels a session runs on, and the threads it splits each GEMV across.
#[derive(Debug)]
pub struct Backend {
    kernels: Kernels,
    /// Runtime-shape int8 GEMV for Q8_0 matrices without a generated kernel.
    q8: Q8Kernels,
    /// Generated int8 kernels for the tiled Q8_0 / Q4_0 matrices: the specialised backend's,
    /// on the instruction set of `q8`, unless tiling is off (`--zero-copy`) or none were
    /// generated for that instruction set.
    int8: Option<generated::Int8Kernels>,
    /// GEMV for Q4_0 matrices (runtime-shape), on the same instruction set as `q8`.
    q4: Q4Kernels,
    /// The weights this backend runs, for reports (set by [`Backend::for_weights`]).
    weights: WeightFormat,
    /// Runtime-shape f32 kernels on the same ISA, for attention (its shapes change per token).
    attention: GenericKernels,
    pool: Pool,
}

/// The generated int8 kernels for the best int8 path this CPU has, if any were generated for it
/// (benchmarks and tests; sessions choose theirs in [`Backend::specialised`]).
pub fn generated_int8_kernels() -> Option<generated::Int8Kernels> {
    let compiled = compiled_config();
    Backend::specialised(&compiled, Path::new("compiled"), None)
        .ok()
        .flatten()
        .and_then(|b| b.int8())
}

pub use crate::format::compiled_config;

/// Rows per kernel tile: thread shares start on tile boundaries, so every row is computed by
/// the same code path whatever the thread count, and results are identical.
const ROW_TILE: usize = 4;

/// Below this many rows a GEMV is not worth waking other threads for.
const MIN_PARALLEL_ROWS: usize = 64;

impl Backend {
    /// Generic kernels on the best ISA (or `isa` if given and supported), single-threaded.
    /// The int8 kernels follow: the best this CPU has, or the closest to a forced `isa`.
    pub fn generic(isa: Option<Isa>) -> Option<Self> {
        let k = match isa {
            Some(isa) => GenericKernels::for_isa(isa)?,
            None => GenericKernels::detect(),
        };
        Some(Self::new(Kernels::Generic(k), isa))
    }

    /// Specialised kernels, refused unless `model` has exactly the compiled shape.
    /// `Ok(None)` when `isa` is given and this CPU cannot run it.
    pub fn specialised(
        model: &ModelConfig,
        path: &Path,
        isa: Option<Isa>,
    ) -> Result<Option<Self>, LoadError> {
        let compiled = compiled_config();
        // The generated RMSNorm kernels bake the epsilon in, so it must match too.
        let eps_differs = model.norm_eps != compiled.norm_eps;
        if !model.same_shape(&compiled) || eps_differs {
            let describe = |c: &ModelConfig| {
                if eps_differs {
                    format!("{}, rms_norm_eps {}", c.shape_summary(), c.norm_eps)
                } else {
                    c.shape_summary()
                }
            };
            return Err(LoadError::ShapeMismatch {
                path: path.to_path_buf(),
                file_shape: describe(model),
                compiled_name: compiled.name.clone(),
                compiled_shape: describe(&compiled),
                rebuild: rebuild_command(model, path),
            });
        }
        let k = match isa {
            Some(isa) => generated::Kernels::for_isa(isa),
            None => Some(generated::Kernels::detect()),
        };
        Ok(k.map(|k| Self::new(Kernels::Specialised(k), isa).for_weights(model.weight_format)))
    }

    fn new(kernels: Kernels, isa: Option<Isa>) -> Self {
        let q8 = match isa {
            Some(isa) => Q8Kernels::for_isa(crate::kernels::q8::Q8Isa::for_f32_isa(isa)),
            None => None,
        };
        let q8 = q8.unwrap_or_else(Q8Kernels::detect);
        let q4 = Q4Kernels::for_isa(q8.isa()).expect("the int8 path's CPU check passed");
        let attention = match &kernels {
            Kernels::Generic(k) => *k,
            Kernels::Specialised(k) => {
                GenericKernels::for_isa(k.isa()).unwrap_or_else(GenericKernels::detect)
            }
        };
        let mut backend = Self {
            kernels,
            attention,
            q8,
            q4,
            int8: None,
            weights: WeightFormat::F32,
            pool: Pool::new(1),
        };
        backend.int8 = backend.generated_int8();
        backend
    }

    /// The generated int8 kernels matching the runtime int8 path's instruction set, for a
    /// specialised backend.
    fn generated_int8(&self) -> Option<generated::Int8Kernels> {
        use crate::kernels::q8::Q8Isa;
        use generated::Int8Isa;
        if !matches!(self.kernels, Kernels::Specialised(_)) {
            return None;
        }
        let isa = match self.q8.isa() {
            Q8Isa::Scalar => Int8Isa::Portable,
            Q8Isa::Avx2 => Int8Isa::Avx2,
            Q8Isa::Avx512Vnni => Int8Isa::Avx512Vnni,
            Q8Isa::NeonDotprod => Int8Isa::NeonDotprod,
            Q8Isa::Neon => return None,
        };
        generated::Int8Kernels::for_isa(isa)
    }

    /// The same backend with its int8 kernels forced to `q8` (tests, comparisons); the
    /// generated int8 kernels follow.
    pub fn with_q8(mut self, q8: Q8Kernels) -> Self {
        self.q8 = q8;
        if self.int8.is_some() {
            self.int8 = self.generated_int8();
        }
        self
    }

    /// The same backend without the generated int8 kernels: Q8_0 and Q4_0 matrices are read
    /// in place by the runtime-shape kernels (`--zero-copy`: no tiled copy is made).
    pub fn without_tiling(mut self) -> Self {
        self.int8 = None;
        self
    }

    /// True when int8 matrices should be tiled for the generated kernels
    /// ([`crate::Model::tiled_weights`]).
    pub fn tiles_int8(&self) -> bool {
        self.int8.is_some()
    }

    /// The generated int8 kernels in use, if any.
    pub fn int8(&self) -> Option<generated::Int8Kernels> {
        self.int8
    }

    /// Records which weights this backend runs (f32 or Q8_0), for [`Backend::describe`] and
    /// [`Backend::is_specialised`]. [`crate::Session::new`] sets it from the model.
    pub fn for_weights(mut self, weights: WeightFormat) -> Self {
        self.weights = weights;
        self
    }

    /// The runtime-shape f32 kernels attention runs on (same ISA as the matrices).
    pub fn attention_kernels(&self) -> &GenericKernels {
        &self.attention
    }

    /// The same backend with its Q4_0 kernels forced to `q4` (tests, comparisons).
    pub fn with_q4(mut self, q4: Q4Kernels) -> Self {
        self.q4 = q4;
        self
    }

    /// The int8 kernels Q8_0 matrices run on.
    pub fn q8(&self) -> Q8Kernels {
        self.q8
    }

    /// The kernels Q4_0 matrices run on.
    pub fn q4(&self) -> Q4Kernels {
        self.q4
    }

    /// The same kernels, with work split across `threads` threads (a persistent pool).
    pub fn with_threads(mut self, threads: usize) -> Self {
        self.pool = Pool::new(threads.max(1));
        self
    }

    /// Threads each GEMV and the attention are split across.
    pub fn threads(&self) -> usize {
        self.pool.threads()
    }

    /// The instruction set in use.
    pub fn isa(&self) -> Isa {
        match &self.kernels {
            Kernels::Generic(k) => k.isa(),
            Kernels::Specialised(k) => k.isa(),
        }
    }

    /// True when the matrix products run on generated kernels: the specialised f32 kernels
    /// with f32 weights, or generated int8 kernels for a Q8_0 / Q4_0 model whose group size
    /// they were compiled for (for the shapes in `generated::Q8_SHAPES` / `Q4_SHAPES`; any
    /// other matrix runs on the runtime-shape kernels).
    pub fn is_specialised(&self) -> bool {
        let tiled = |group: usize, compiled: usize, shapes: &[(usize, usize)]| {
            self.int8.is_some() && group == compiled && !shapes.is_empty()
        };
        matches!(self.kernels, Kernels::Specialised(_))
            && match self.weights {
                WeightFormat::F32 => true,
                WeightFormat::Q8_0 { group_size } => {
                    tiled(group_size, generated::Q8_GROUP, generated::Q8_SHAPES)
                }
                WeightFormat::Q4_0 { group_size } => {
                    tiled(group_size, generated::Q4_GROUP, generated::Q4_SHAPES)
                }
                WeightFormat::Mixed { group_size } => {
                    tiled(group_size, generated::Q8_GROUP, generated::Q8_SHAPES)
                        || tiled(group_size, generated::Q4_GROUP, generated::Q4_SHAPES)
                }
            }
    }

    /// `"specialised avx512f, 2 threads"`; for Q8_0 weights e.g.
    /// `"specialised int8 avx512vnni (tiled), q8_0 group 64 (rmsnorm: specialised avx512f), 2 threads"`.
    pub fn describe(&self) -> String {
        let t = self.threads();
        let threads = format!("{t} thread{}", if t == 1 { "" } else { "s" });
        let f32_kind = if matches!(self.kernels, Kernels::Specialised(_)) {
            "specialised"
        } else {
            "generic"
        };
        let (format, group, runtime) = match self.weights {
            WeightFormat::F32 => return format!("{f32_kind} {}, {threads}", self.isa().name()),
            WeightFormat::Q8_0 { group_size } => ("q8_0", group_size, self.q8.isa().name()),
            WeightFormat::Q4_0 { group_size } => ("q4_0", group_size, self.q4.isa().name()),
            WeightFormat::Mixed { group_size } => ("mixed", group_size, self.q8.isa().name()),
        };
        let matrices = match (self.is_specialised(), self.int8) {
            (true, Some(k)) => format!("specialised int8 {} (tiled)", k.isa().name()),
            _ => format!("generic int8 {runtime}"),
        };
        format!(
            "{matrices}, {format} group {group} (rmsnorm: {f32_kind} {}), {threads}",
            self.isa().name()
        )
    }

    /// Runs `f(share, part)` on contiguous parts of `0..n`, one per thread (`share` is the
    /// part's index, below [`Backend::threads`], for per-share scratch), and waits for all.
    pub fn parallel(&self, n: usize, f: &(dyn Fn(usize, Range<usize>) + Sync)) {
        let shares = self.pool.threads();
        if shares == 1 {
            return f(0, 0..n);
        }
        self.pool.run(&|i| f(i, share(n, shares, i, 1)));
    }

    /// `out[t · rows + r] = W[r] · x[t]` for every row `t` of `x` (`x.rows` rows; `out` is
    /// `x.rows` rows of the matrix's `rows` outputs): one pass over the weights for the whole
    /// batch, rows split across the threads on [`ROW_TILE`] boundaries as for one token. A
    /// token's outputs are bit for bit what [`Backend::matvec`] gives it alone, on every path.
    pub fn matmul(&self, m: Matrix, out: &mut [f32], w: MatRef, x: GemvInput) {
        let n = x.rows;
        if n == 1 {
            return self.matvec(m, out, w, x);
        }
        let (cols, rows) = (x.x.len() / n, out.len() / n);
        assert!(
            x.x.len() == n * cols && out.len() == n * rows,
            "matmul: inputs or outputs are not whole rows"
        );
        let q8 = || x.q8.expect("a quantised matrix needs a quantised input");
        let token = |t: usize| {
            let q = q8();
            let per = cols / q.group;
            Q8Ref {
                q: &q.q[t * cols..(t + 1) * cols],
                scales: &q.scales[t * per..(t + 1) * per],
                group: q.group,
            }
        };
        let ld = rows;
        let out = SyncPtr(out.as_mut_ptr());
        // SAFETY (every arm): shares are disjoint row ranges, so `t * ld + r` for a share's
        // rows `r` and every token `t` is written by that share alone, inside `out`.
        match w {
            MatRef::F32(w) => self.for_row_shares(rows, &|r| unsafe {
                let w = &w[r.start * cols..r.end * cols];
                self.gemm_rows(m, w, x.x, cols, out.get().add(r.start), ld)
            }),
            MatRef::Q8(w) => self.for_row_shares(rows, &|r| {
                for_blocks_and_tokens(r, n, &|b, t| unsafe {
                    let o =
                        std::slice::from_raw_parts_mut(out.get().add(t * ld + b.start), b.len());
                    self.q8.matmul(o, w.rows(b, cols), token(t))
                })
            }),
            MatRef::Q4(w) => self.for_row_shares(rows, &|r| {
                for_blocks_and_tokens(r, n, &|b, t| unsafe {
                    let o =
                        std::slice::from_raw_parts_mut(out.get().add(t * ld + b.start), b.len());
                    self.q4.matmul(o, w.rows(b, cols), token(t))
                })
            }),
            MatRef::Q8Tiled(w) => {
                let kernel = self
                    .int8
                    .and_then(|k| k.q8(rows, cols, w.group))
                    .expect(TILED_KERNEL);
                let xt = x.tiled.expect(TILED_INPUT);
                let inputs = generated::TiledInputs {
                    q: xt.q,
                    scales: q8().scales,
                    scales_tt: xt.scales_tt,
                    corr: xt.corr_q8,
                };
                self.for_row_shares(rows, &|r| unsafe {
                    let w = w.rows(r.clone(), cols);
                    kernel.run_batch(w.q, w.scales, inputs, out.get().add(r.start), ld)
                })
            }
            MatRef::Q4Tiled(w) => {
                let kernel = self
                    .int8
                    .and_then(|k| k.q4(rows, cols, w.group))
                    .expect(TILED_KERNEL);
                let xt = x.tiled.expect(TILED_INPUT);
                let inputs = generated::TiledInputs {
                    q: xt.q,
                    scales: q8().scales,
                    scales_tt: xt.scales_tt,
                    corr: xt.corr_q4,
                };
                self.for_row_shares(rows, &|r| unsafe {
                    let w = w.rows(r.clone(), cols);
                    kernel.run_batch(w.q, w.scales, inputs, out.get().add(r.start), ld)
                })
            }
        }
    }

    /// Calls `f(rows)` for each thread's share of `0..rows` (on [`ROW_TILE`] boundaries), or
    /// once with all rows when one thread does all or the matrix is small.
    fn for_row_shares(&self, rows: usize, f: &(dyn Fn(Range<usize>) + Sync)) {
        let shares = self.pool.threads();
        if shares == 1 || rows < MIN_PARALLEL_ROWS {
            return f(0..rows);
        }
        self.pool.run(&|i| f(share(rows, shares, i, ROW_TILE)));
    }

    /// The f32 batched product of rows `w` (`cols` columns each) and every row of `x`, written
    /// at `out[t * ld + r]`.
    ///
    /// # Safety
    /// `out` must be valid for those writes and not written by anyone else meanwhile.
    unsafe fn gemm_rows(
        &self,
        m: Matrix,
        w: &[f32],
        x: &[f32],
        cols: usize,
        out: *mut f32,
        ld: usize,
    ) {
        match &self.kernels {
            Kernels::Generic(k) => {
                for_blocks_and_tokens(0..w.len() / cols, x.len() / cols, &|b, t| {
                    // SAFETY: the caller's contract covers every token's rows of this block.
                    let o = unsafe {
                        std::slice::from_raw_parts_mut(out.add(t * ld + b.start), b.len())
                    };
                    k.matmul(
                        o,
                        &w[b.start * cols..b.end * cols],
                        &x[t * cols..(t + 1) * cols],
                    )
                })
            }
            Kernels::Specialised(k) => {
                use generated::{DIM, HIDDEN_DIM, KV_DIM, VOCAB_SIZE};
                // SAFETY: the caller's contract.
                unsafe {
                    match m {
                        Matrix::Q | Matrix::O => typed_gemm::<DIM, DIM>(k, w, x, out, ld),
                        Matrix::K | Matrix::V => typed_gemm::<KV_DIM, DIM>(k, w, x, out, ld),
                        Matrix::W1 | Matrix::W3 => typed_gemm::<HIDDEN_DIM, DIM>(k, w, x, out, ld),
                        Matrix::W2 => typed_gemm::<DIM, HIDDEN_DIM>(k, w, x, out, ld),
                        Matrix::Classifier => typed_gemm::<VOCAB_SIZE, DIM>(k, w, x, out, ld),
                    }
                }
            }
        }
    }

    /// `out = W · x`, `W` being `out.len()` rows of `x.len()` columns.
    pub fn gemv(&self, m: Matrix, out: &mut [f32], w: &[f32], x: &[f32]) {
        let cols = x.len();
        assert_eq!(
            w.len(),
            out.len() * cols,
            "gemv: weight length is not rows × cols"
        );
        self.for_row_blocks(out, &|r, out| {
            self.gemv_rows(m, out, &w[r.start * cols..r.end * cols], x)
        });
    }

    /// Splits `out`'s rows across the threads in contiguous blocks that start on [`ROW_TILE`]
    /// boundaries and calls `f(rows, block)` for each, so every row is computed by the same
    /// kernel code whatever the thread count. One call with all rows on one thread, or for a
    /// matrix too small to be worth waking the others.
    fn for_row_blocks(&self, out: &mut [f32], f: &(dyn Fn(Range<usize>, &mut [f32]) + Sync)) {
        let rows = out.len();
        let shares = self.pool.threads();
        if shares == 1 || rows < MIN_PARALLEL_ROWS {
            return f(0..rows, out);
        }
        let out = SyncPtr(out.as_mut_ptr());
        self.pool.run(&|i| {
            let r = share(rows, shares, i, ROW_TILE);
            // SAFETY: shares are disjoint ranges of `0..rows`, and `out` outlives the job.
            let block = unsafe { std::slice::from_raw_parts_mut(out.get().add(r.start), r.len()) };
            f(r, block);
        });
    }

    /// `out = W · x` for a matrix as stored: f32 weights take `x.x`, Q8_0 and Q4_0 weights
    /// the quantised `x.q8` (which a quantised model's inputs always carry).
    #[inline]
    pub fn matvec(&self, m: Matrix, out: &mut [f32], w: MatRef, x: GemvInput) {
        match w {
            MatRef::F32(w) => self.gemv(m, out, w, x.x),
            MatRef::Q8(w) => self.gemv_q8(
                m,
                out,
                w,
                x.q8.expect("a Q8_0 matrix needs a quantised input"),
            ),
            MatRef::Q4(w) => self.gemv_q4(
                m,
                out,
                w,
                x.q8.expect("a Q4_0 matrix needs a quantised input"),
            ),
            MatRef::Q8Tiled(w) => self.gemv_q8_tiled(
                out,
                w,
                x.q8.expect("a Q8_0 matrix needs a quantised input"),
                x.tiled.expect(TILED_INPUT),
            ),
            MatRef::Q4Tiled(w) => self.gemv_q4_tiled(
                out,
                w,
                x.q8.expect("a Q4_0 matrix needs a quantised input"),
                x.tiled.expect(TILED_INPUT),
            ),
        }
    }

    /// `out = W · x` for a tiled Q8_0 matrix on its generated kernel, rows split across the
    /// threads on tile boundaries.
    fn gemv_q8_tiled(&self, out: &mut [f32], w: Q8Ref, x: Q8Ref, xt: TiledInput) {
        let cols = x.q.len();
        let kernel = self
            .int8
            .and_then(|k| k.q8(out.len(), cols, w.group))
            .expect(TILED_KERNEL);
        self.for_row_blocks(out, &|r, out| {
            let w = w.rows(r, cols);
            kernel.run(w.q, w.scales, xt.q, x.scales, xt.corr_q8, out)
        });
    }

    /// `out = W · x` for a tiled Q4_0 matrix on its generated kernel.
    fn gemv_q4_tiled(&self, out: &mut [f32], w: Q4Ref, x: Q8Ref, xt: TiledInput) {
        let cols = x.q.len();
        let kernel = self
            .int8
            .and_then(|k| k.q4(out.len(), cols, w.group))
            .expect(TILED_KERNEL);
        self.for_row_blocks(out, &|r, out| {
            let w = w.rows(r, cols);
            kernel.run(w.q, w.scales, xt.q, x.scales, xt.corr_q4, out)
        });
    }

    /// `out = W · x` for a Q8_0 matrix and a quantised input, rows split across the threads in
    /// tiles of [`ROW_TILE`] as for f32, so the result is the same for every thread count.
    /// `m` is where kernels generated per shape will be chosen; today every Q8_0 matrix runs
    /// on the runtime-shape int8 kernels.
    pub fn gemv_q8(&self, _m: Matrix, out: &mut [f32], w: Q8Ref, x: Q8Ref) {
        let cols = x.q.len();
        assert_eq!(
            w.q.len(),
            out.len() * cols,
            "gemv_q8: weight length is not rows × cols"
        );
        self.for_row_blocks(out, &|r, out| self.q8.matmul(out, w.rows(r, cols), x));
    }

    /// `out = W · x` for a Q4_0 matrix and an int8 input, rows split across the threads in
    /// tiles of [`ROW_TILE`] as for f32 and Q8_0, so the result is the same for every thread
    /// count.
    pub fn gemv_q4(&self, _m: Matrix, out: &mut [f32], w: Q4Ref, x: Q8Ref) {
        let cols = x.q.len();
        assert_eq!(
            w.q.len() * 2,
            out.len() * cols,
            "gemv_q4: weight length is not rows × cols"
        );
        self.for_row_blocks(out, &|r, out| self.q4.matmul(out, w.rows(r, cols), x));
    }

    /// One thread's block of rows: `out.len()` rows of `W`, starting wherever `w` starts.
    #[inline]
    fn gemv_rows(&self, m: Matrix, out: &mut [f32], w: &[f32], x: &[f32]) {
        match &self.kernels {
            Kernels::Generic(k) => k.matmul(out, w, x),
            Kernels::Specialised(k) => {
                use generated::{DIM, HIDDEN_DIM, KV_DIM, VOCAB_SIZE};
                match m {
                    Matrix::Q | Matrix::O => typed::<DIM, DIM>(k, out, w, x),
                    Matrix::K | Matrix::V => typed::<KV_DIM, DIM>(k, out, w, x),
                    Matrix::W1 | Matrix::W3 => typed::<HIDDEN_DIM, DIM>(k, out, w, x),
                    Matrix::W2 => typed::<DIM, HIDDEN_DIM>(k, out, w, x),
                    Matrix::Classifier => typed::<VOCAB_SIZE, DIM>(k, out, w, x),
                }
            }
        }
    }

    /// RMSNorm of `x` into `out`.
    #[inline]
    pub fn rmsnorm(&self, out: &mut [f32], x: &[f32], weight: &[f32], eps: f32) {
        match &self.kernels {
            Kernels::Generic(k) => k.rmsnorm(out, x, weight, eps),
            Kernels::Specialised(k) => {
                let out: &mut [f32; generated::DIM] = out.try_into().expect(SHAPE_INVARIANT);
                let x: &[f32; generated::DIM] = x.try_into().expect(SHAPE_INVARIANT);
                let weight: &[f32; generated::DIM] = weight.try_into().expect(SHAPE_INVARIANT);
                k.rmsnorm(out, x, weight);
            }
        }
    }
}

const SHAPE_INVARIANT: &str = "specialised backend used with a model of another shape";
const TILED_INPUT: &str = "a tiled matrix needs a tiled input (InputQuantizer::tile_inputs)";
const TILED_KERNEL: &str = "matrices are tiled only for shapes with a generated kernel";

// Thread shares start on ROW_TILE boundaries; the tiled layout needs them on its tiles.
const _: () = assert!(ROW_TILE == model_config::tiled::TILE_ROWS);

/// Views the slices as rows of the compiled shape and calls the kernel for `R × C`. The
/// `Gemv<R, C>` bound is where a missing or wrong shape becomes a compile error; the length
/// checks cannot fail because `Backend::specialised` refused other shapes.
#[inline]
fn typed<const R: usize, const C: usize>(
    k: &impl Gemv<R, C>,
    out: &mut [f32],
    w: &[f32],
    x: &[f32],
) {
    let x: &[f32; C] = x.try_into().expect(SHAPE_INVARIANT);
    let (rows, rest) = w.as_chunks::<C>();
    assert!(
        rest.is_empty() && rows.len() == out.len() && out.len() <= R,
        "{SHAPE_INVARIANT}"
    );
    match (
        <&[[f32; C]; R]>::try_from(rows),
        <&mut [f32; R]>::try_from(&mut *out),
    ) {
        (Ok(w), Ok(out)) => k.gemv(w, x, out),
        _ => k.gemv_rows(rows, x, out),
    }
}

/// The batched product through the `Gemm` of shape `R × C`.
///
/// # Safety
/// As [`generated::Gemv::gemm_rows`].
#[inline]
unsafe fn typed_gemm<const R: usize, const C: usize>(
    k: &impl Gemv<R, C>,
    w: &[f32],
    x: &[f32],
    out: *mut f32,
    ld: usize,
) {
    let (w, rest) = w.as_chunks::<C>();
    let (x, rest_x) = x.as_chunks::<C>();
    assert!(
        rest.is_empty() && rest_x.is_empty() && w.len() <= R,
        "{SHAPE_INVARIANT}"
    );
    // SAFETY: the caller's contract.
    unsafe { k.gemm_rows(w, x, out, ld) }
}

/// Rows per block in the runtime-shape batched products: a block's weights stay in cache while
/// every token passes over them.
const BATCH_BLOCK_ROWS: usize = 16;

/// Calls `f(block, token)` for blocks of [`BATCH_BLOCK_ROWS`] rows of `rows` (outside) and every
/// token (inside): the runtime-shape kernels' batched product, which reads each weight from
/// memory once and computes every output exactly as the single-token kernel does.
fn for_blocks_and_tokens(rows: Range<usize>, tokens: usize, f: &dyn Fn(Range<usize>, usize)) {
    let mut start = rows.start;
    while start < rows.end {
        let end = (start + BATCH_BLOCK_ROWS).min(rows.end);
        for t in 0..tokens {
            f(start..end, t);
        }
        start = end;
    }
}

/// The command that builds a binary specialised for `model`: a preset when one matches,
/// else a config written by `baremetal inspect`.
pub fn rebuild_command(model: &ModelConfig, path: &Path) -> String {
    for (name, text) in PRESETS {
        if ModelConfig::from_toml_str(text).is_ok_and(|p| p.same_shape(model)) {
            return format!("MODEL_CONFIG={name} cargo build --release");
        }
    }
    format!(
        "baremetal inspect {} > model.toml && MODEL_CONFIG=$PWD/model.toml cargo build --release",
        path.display()
    )
}
