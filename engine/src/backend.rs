//! Which kernels the forward pass runs on: the ones generated for the compiled shape, or the
//! generic runtime-shape ones. Chosen once when a session starts.

use std::path::Path;

use generated::{Gemv, RmsNorm};
use model_config::{ModelConfig, PRESETS};

use crate::error::LoadError;
use crate::kernels::{GenericKernels, Isa};

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

/// The kernels a session runs on.
#[derive(Debug)]
pub enum Backend {
    /// Runtime-shape kernels: any model.
    Generic(GenericKernels),
    /// Kernels generated for the compiled shape; only built for a model of exactly that shape.
    Specialised(generated::Kernels),
}

/// The shape this binary was compiled for (`MODEL_CONFIG` at build time).
pub fn compiled_config() -> ModelConfig {
    ModelConfig::from_toml_str(generated::CONFIG_TOML).expect("the generated config is valid")
}

impl Backend {
    /// Generic kernels on the best ISA (or `isa` if given and supported).
    pub fn generic(isa: Option<Isa>) -> Option<Self> {
        let k = match isa {
            Some(isa) => GenericKernels::for_isa(isa)?,
            None => GenericKernels::detect(),
        };
        Some(Backend::Generic(k))
    }

    /// Specialised kernels, refused unless `model` has exactly the compiled shape.
    /// `Ok(None)` when `isa` is given and this CPU cannot run it.
    pub fn specialised(model: &ModelConfig, path: &Path, isa: Option<Isa>) -> Result<Option<Self>, LoadError> {
        let compiled = compiled_config();
        if !model.same_shape(&compiled) {
            return Err(LoadError::ShapeMismatch {
                path: path.to_path_buf(),
                file_shape: model.shape_summary(),
                compiled_name: compiled.name.clone(),
                compiled_shape: compiled.shape_summary(),
                rebuild: rebuild_command(model, path),
            });
        }
        Ok(match isa {
            Some(isa) => generated::Kernels::for_isa(isa).map(Backend::Specialised),
            None => Some(Backend::Specialised(generated::Kernels::detect())),
        })
    }

    /// The instruction set in use.
    pub fn isa(&self) -> Isa {
        match self {
            Backend::Generic(k) => k.isa(),
            Backend::Specialised(k) => k.isa(),
        }
    }

    /// True for the generated kernels.
    pub fn is_specialised(&self) -> bool {
        matches!(self, Backend::Specialised(_))
    }

    /// `"specialised avx512f"` / `"generic avx2+fma"`.
    pub fn describe(&self) -> String {
        let kind = if self.is_specialised() { "specialised" } else { "generic" };
        format!("{kind} {}", self.isa().name())
    }

    /// `out = W · x`, `W` being `out.len()` rows of `x.len()` columns.
    #[inline]
    pub fn gemv(&self, m: Matrix, out: &mut [f32], w: &[f32], x: &[f32]) {
        match self {
            Backend::Generic(k) => k.matmul(out, w, x),
            Backend::Specialised(k) => {
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
        match self {
            Backend::Generic(k) => k.rmsnorm(out, x, weight, eps),
            Backend::Specialised(k) => {
                let out: &mut [f32; generated::DIM] = out.try_into().expect(SHAPE_INVARIANT);
                let x: &[f32; generated::DIM] = x.try_into().expect(SHAPE_INVARIANT);
                let weight: &[f32; generated::DIM] = weight.try_into().expect(SHAPE_INVARIANT);
                k.rmsnorm(out, x, weight);
            }
        }
    }
}

const SHAPE_INVARIANT: &str = "specialised backend used with a model of another shape";

/// Views the slices as the compiled shape's arrays and calls the kernel for `R × C`. The
/// `Gemv<R, C>` bound is where a missing or wrong shape becomes a compile error; the length
/// checks cannot fail because `Backend::specialised` refused other shapes.
#[inline]
fn typed<const R: usize, const C: usize>(k: &impl Gemv<R, C>, out: &mut [f32], w: &[f32], x: &[f32]) {
    let out: &mut [f32; R] = out.try_into().expect(SHAPE_INVARIANT);
    let x: &[f32; C] = x.try_into().expect(SHAPE_INVARIANT);
    let (rows, rest) = w.as_chunks::<C>();
    assert!(rest.is_empty(), "{SHAPE_INVARIANT}");
    let w: &[[f32; C]; R] = rows.try_into().expect(SHAPE_INVARIANT);
    k.gemv(w, x, out);
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
