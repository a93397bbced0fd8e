//! The kernels `codegen` emits for the model shape this crate is built with.
//!
//! `build.rs` reads the `MODEL_CONFIG` environment variable — a TOML file (absolute, or
//! relative to the workspace root or to this crate) or a preset name such as `stories110m`
//! — and writes the generated module, which is included here at the crate root. **When
//! `MODEL_CONFIG` is unset the default is `stories260k`.** So `generated::DIM`,
//! `generated::Kernels`, `generated::Gemv` and the rest describe exactly one model:
//!
//! ```
//! use generated::{Gemv, Kernels, DIM};
//!
//! let kernels = Kernels::detect(); // picks the best instruction set once
//! let w = vec![[0.5f32; DIM]; DIM];
//! let w: &[[f32; DIM]; DIM] = w.as_slice().try_into().unwrap();
//! let x = [1.0f32; DIM];
//! let mut out = [0.0f32; DIM];
//! kernels.gemv(w, &x, &mut out);
//! assert_eq!(out[0], 0.5 * DIM as f32);
//! ```
//!
//! [`Isa`] is hand-written here because it does not depend on the model; the generated code
//! refers to it as `crate::Isa`.

use std::fmt;
use std::str::FromStr;

/// An instruction set the generated kernels exist for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Isa {
    /// Plain Rust; runs everywhere.
    Portable,
    /// x86_64 AVX2 with FMA.
    Avx2,
    /// x86_64 AVX-512 Foundation.
    Avx512,
    /// aarch64 Advanced SIMD.
    Neon,
}

impl Isa {
    /// Every instruction set, in declaration order.
    pub fn all() -> &'static [Isa] {
        &[Isa::Portable, Isa::Avx2, Isa::Avx512, Isa::Neon]
    }

    /// The name used in reports: "portable", "avx2+fma", "avx512f" or "neon".
    pub fn name(self) -> &'static str {
        match self {
            Isa::Portable => "portable",
            Isa::Avx2 => "avx2+fma",
            Isa::Avx512 => "avx512f",
            Isa::Neon => "neon",
        }
    }

    /// Whether the running CPU (and the target this was compiled for) can run it.
    pub fn is_supported(self) -> bool {
        match self {
            Isa::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => {
                std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
            }
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => std::arch::is_x86_feature_detected!("avx512f"),
            #[cfg(target_arch = "aarch64")]
            Isa::Neon => std::arch::is_aarch64_feature_detected!("neon"),
            _ => false,
        }
    }

    /// The fastest supported instruction set: AVX-512F, then AVX2+FMA on x86_64; NEON on
    /// aarch64; portable otherwise.
    pub fn best() -> Isa {
        [Isa::Avx512, Isa::Avx2, Isa::Neon]
            .into_iter()
            .find(|isa| isa.is_supported())
            .unwrap_or(Isa::Portable)
    }
}

impl fmt::Display for Isa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The string given to [`Isa::from_str`] names no instruction set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseIsaError(String);

impl fmt::Display for ParseIsaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unknown instruction set {:?} (expected portable, avx2, avx512 or neon)",
            self.0
        )
    }
}

impl std::error::Error for ParseIsaError {}

impl FromStr for Isa {
    type Err = ParseIsaError;

    /// Accepts "portable", "avx2", "avx512", "neon" (any case) and the [`Isa::name`] forms.
    fn from_str(s: &str) -> Result<Isa, ParseIsaError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "portable" => Ok(Isa::Portable),
            "avx2" | "avx2+fma" => Ok(Isa::Avx2),
            "avx512" | "avx512f" => Ok(Isa::Avx512),
            "neon" => Ok(Isa::Neon),
            _ => Err(ParseIsaError(s.to_string())),
        }
    }
}

/// A generated batched f32 kernel for `C` columns: `(w, x, out, ld)` writes
/// `out[t * ld + r] = w[r] · x[t]` (see `Gemv::gemm_rows`).
pub type GemmFn<const C: usize> = unsafe fn(&[[f32; C]], &[[f32; C]], *mut f32, usize);

/// An instruction set the generated int8 (Q8_0 / Q4_0) kernels exist for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Int8Isa {
    /// Plain Rust; runs everywhere.
    Portable,
    /// x86_64 AVX2 (`vpmaddubsw` + `vpmaddwd`).
    Avx2,
    /// x86_64 AVX-512F/BW with VNNI (`vpdpbusd`).
    Avx512Vnni,
    /// aarch64 NEON with the dot-product extension (`sdot`).
    NeonDotprod,
}

impl Int8Isa {
    /// Every int8 instruction set, in declaration order.
    pub fn all() -> &'static [Int8Isa] {
        &[
            Int8Isa::Portable,
            Int8Isa::Avx2,
            Int8Isa::Avx512Vnni,
            Int8Isa::NeonDotprod,
        ]
    }

    /// The name used in reports.
    pub fn name(self) -> &'static str {
        match self {
            Int8Isa::Portable => "portable",
            Int8Isa::Avx2 => "avx2",
            Int8Isa::Avx512Vnni => "avx512vnni",
            Int8Isa::NeonDotprod => "neon+dotprod",
        }
    }

    /// Whether the running CPU can run it.
    pub fn is_supported(self) -> bool {
        match self {
            Int8Isa::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Int8Isa::Avx2 => {
                std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
            }
            #[cfg(target_arch = "x86_64")]
            Int8Isa::Avx512Vnni => {
                std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512bw")
                    && std::arch::is_x86_feature_detected!("avx512vnni")
            }
            #[cfg(target_arch = "aarch64")]
            Int8Isa::NeonDotprod => std::arch::is_aarch64_feature_detected!("dotprod"),
            #[allow(unreachable_patterns)]
            _ => false,
        }
    }
}

impl fmt::Display for Int8Isa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A generated int8 GEMV over tiled weights of unit `W` (`i8` for Q8_0, `u8` for Q4_0):
/// `(w, w_scales, x, x_scales, x_corrections, out)`, all tiled (`model_config::tiled`).
pub type Int8GemvFn<W> = unsafe fn(&[W], &[f32], &[i8], &[f32], &[i32], &mut [f32]);

/// The batched form of [`Int8GemvFn`]: `(w, w_scales, inputs, out, ld)` with the tokens' tiled
/// inputs one after another, writing `out[t * ld + r]`.
pub type Int8BatchFn<W> = unsafe fn(&[W], &[f32], TiledInputs, *mut f32, usize);

/// Tiled int8 inputs as the batched kernels take them: each token's tiled values, scales and
/// lane corrections, one token after another.
#[derive(Debug, Clone, Copy)]
pub struct TiledInputs<'a> {
    /// The int8 values in the tiled block order.
    pub q: &'a [i8],
    /// One scale per group.
    pub scales: &'a [f32],
    /// The same scales by tiles of tokens (`model_config::tiled::token_tile_scales`), for the
    /// instruction sets whose register tiles read them so.
    pub scales_tt: &'a [f32],
    /// `-offset · Σ` of every four values (`model_config::tiled::input_correction`).
    pub corr: &'a [i32],
}

/// The generated int8 kernels of one matrix shape (single-token and batched) that this CPU is
/// known to run, from [`Int8Kernels::q8`] or [`Int8Kernels::q4`].
pub struct Int8Gemv<W: 'static> {
    gemv: Int8GemvFn<W>,
    batch: Int8BatchFn<W>,
}

/// The Q8_0 kernels of a shape.
pub type Q8Gemv = Int8Gemv<i8>;
/// The Q4_0 kernels of a shape.
pub type Q4Gemv = Int8Gemv<u8>;

impl<W> Clone for Int8Gemv<W> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<W> Copy for Int8Gemv<W> {}

impl<W> Int8Gemv<W> {
    /// # Safety
    /// The CPU must run both functions' instruction set.
    #[allow(dead_code)] // a model with no tiled shape never builds one
    unsafe fn new(gemv: Int8GemvFn<W>, batch: Int8BatchFn<W>) -> Self {
        Self { gemv, batch }
    }

    /// `out = W · x` for a block of rows starting on a tile boundary: `w` and `w_scales` are
    /// that block of the tiled matrix, `x` and `x_scales` the tiled input, `corr` its lane
    /// corrections (`model_config::tiled::input_correction` with `Q8_OFFSET` or `Q4_OFFSET`).
    ///
    /// # Panics
    /// If a length does not match the kernel's shape.
    #[inline]
    pub fn run(
        &self,
        w: &[W],
        w_scales: &[f32],
        x: &[i8],
        x_scales: &[f32],
        corr: &[i32],
        out: &mut [f32],
    ) {
        // SAFETY: `new`'s contract; the kernel checks every length.
        unsafe { (self.gemv)(w, w_scales, x, x_scales, corr, out) }
    }

    /// The batched product: `out[t * ld + r] = W[r] · x[t]` for every token `t` of `x` (the
    /// tokens' tiled inputs, scales and corrections one after another), bit for bit what
    /// [`Int8Gemv::run`] gives each token alone.
    ///
    /// # Safety
    /// `out.add(t * ld + r)` must be valid for writes, and not accessed by anyone else during
    /// the call, for every token `t` and every row `r` of the block.
    ///
    /// # Panics
    /// If a length is not whole rows or tokens of the kernel's shape.
    #[inline]
    pub unsafe fn run_batch(
        &self,
        w: &[W],
        w_scales: &[f32],
        x: TiledInputs,
        out: *mut f32,
        ld: usize,
    ) {
        // SAFETY: `new`'s contract for the CPU; the caller's for `out`.
        unsafe { (self.batch)(w, w_scales, x, out, ld) }
    }
}

impl<W> fmt::Debug for Int8Gemv<W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Int8Gemv<{}>", std::any::type_name::<W>())
    }
}

include!(concat!(env!("OUT_DIR"), "/model.rs"));

/// The fixed test models `build.rs` generates next to `model.rs`, so every kernel path is
/// compiled and tested whatever `MODEL_CONFIG` says.
#[cfg(test)]
#[allow(dead_code)] // each model exports the whole interface; the tests use part of it
mod test_models {
    include!(concat!(env!("OUT_DIR"), "/test_models/mod.rs"));
}

#[cfg(test)]
mod tests;
