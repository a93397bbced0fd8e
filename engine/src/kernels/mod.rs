//! Generic (runtime-shape) kernels: the comparison baseline and the path for any model.
//!
//! One file per instruction set, each with the same two functions (`matmul`, `sum_squares`),
//! chosen once when [`GenericKernels`] is built. `reference` holds the plain f64 versions every
//! kernel is tested against. `q8` holds the int8 kernels for Q8_0 weights.

pub mod q4;
pub mod q8;
pub mod reference;
mod scalar;

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
#[cfg(target_arch = "aarch64")]
mod neon;

pub use generated::Isa;

/// Runtime-shape GEMV and RMSNorm for one instruction set, chosen once.
#[derive(Debug, Clone, Copy)]
pub struct GenericKernels {
    isa: Isa,
}

impl GenericKernels {
    /// The best instruction set this CPU supports.
    pub fn detect() -> Self {
        Self { isa: Isa::best() }
    }

    /// Kernels for `isa`, or `None` when this CPU cannot run it.
    pub fn for_isa(isa: Isa) -> Option<Self> {
        isa.is_supported().then_some(Self { isa })
    }

    /// The instruction set in use.
    pub fn isa(&self) -> Isa {
        self.isa
    }

    /// `out = W · x` where `W` is `out.len()` rows of `x.len()` columns, row-major.
    ///
    /// # Panics
    /// When `w.len() != out.len() * x.len()`.
    pub fn matmul(&self, out: &mut [f32], w: &[f32], x: &[f32]) {
        assert_eq!(
            w.len(),
            out.len() * x.len(),
            "matmul: weight length is not rows × cols"
        );
        match self.isa {
            // SAFETY: `for_isa`/`detect` only build this value after the CPU check, and the
            // length assertion above bounds every access the kernel makes.
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => unsafe { avx512::matmul(out, w, x) },
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => unsafe { avx2::matmul(out, w, x) },
            #[cfg(target_arch = "aarch64")]
            Isa::Neon => unsafe { neon::matmul(out, w, x) },
            _ => scalar::matmul(out, w, x),
        }
    }

    /// llama2.c RMSNorm: `out = weight * x / sqrt(mean(x²) + eps)`.
    ///
    /// # Panics
    /// When the three slices differ in length.
    pub fn rmsnorm(&self, out: &mut [f32], x: &[f32], weight: &[f32], eps: f32) {
        assert!(
            out.len() == x.len() && weight.len() == x.len(),
            "rmsnorm: length mismatch"
        );
        let ss = match self.isa {
            // SAFETY: as in `matmul`; the kernel reads exactly `x.len()` elements.
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => unsafe { avx512::sum_squares(x) },
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => unsafe { avx2::sum_squares(x) },
            #[cfg(target_arch = "aarch64")]
            Isa::Neon => unsafe { neon::sum_squares(x) },
            _ => scalar::sum_squares(x),
        };
        let scale = 1.0 / (ss / x.len() as f32 + eps).sqrt();
        for ((o, &xi), &wi) in out.iter_mut().zip(x).zip(weight) {
            *o = wi * (scale * xi);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    /// |got - want| must stay within a few f32 ulps of the magnitude summed: the kernels sum
    /// in a different order than the f64 reference, so the bound scales with Σ|w·x|.
    fn check_close(got: f32, want: f64, magnitude: f64, what: &str) {
        let tol = 1e-5 * magnitude + 1e-6;
        assert!(
            (got as f64 - want).abs() <= tol,
            "{what}: got {got}, want {want} (tolerance {tol})"
        );
    }

    fn supported() -> Vec<GenericKernels> {
        Isa::all()
            .iter()
            .filter_map(|&i| GenericKernels::for_isa(i))
            .collect()
    }

    #[test]
    fn every_supported_isa_is_reachable() {
        assert_eq!(GenericKernels::detect().isa(), Isa::best());
        for &isa in Isa::all() {
            assert_eq!(
                GenericKernels::for_isa(isa).is_some(),
                isa.is_supported(),
                "{isa}"
            );
        }
    }

    #[test]
    fn matmul_matches_f64_reference_over_many_sizes() {
        let mut rng = Rng::new(0x5eed);
        let cols_list = [
            1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 31, 32, 33, 47, 63, 64, 65, 100, 172, 288, 513,
        ];
        let rows_list = [1, 2, 3, 4, 5, 7, 9, 13];
        for k in supported() {
            for &cols in &cols_list {
                for &rows in &rows_list {
                    let w = rng.vec(rows * cols);
                    let x = rng.vec(cols);
                    let mut out = rng.vec(rows); // garbage in out must be overwritten
                    k.matmul(&mut out, &w, &x);
                    let (want, mag) = reference::matmul(&w, &x);
                    for r in 0..rows {
                        check_close(
                            out[r],
                            want[r],
                            mag[r],
                            &format!("{} {rows}x{cols} row {r}", k.isa()),
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn rmsnorm_matches_f64_reference() {
        let mut rng = Rng::new(42);
        for k in supported() {
            for n in [1, 3, 4, 7, 8, 15, 16, 17, 33, 64, 200, 288, 769] {
                let x = rng.vec(n);
                let w = rng.vec(n);
                let mut out = rng.vec(n);
                k.rmsnorm(&mut out, &x, &w, 1e-5);
                let want = reference::rmsnorm(&x, &w, 1e-5);
                for i in 0..n {
                    // Each output is one product of O(1) terms, so a relative bound suffices.
                    check_close(
                        out[i],
                        want[i],
                        want[i].abs() * 10.0,
                        &format!("{} rmsnorm n={n} i={i}", k.isa()),
                    );
                }
            }
        }
    }

    #[test]
    #[should_panic(expected = "rows × cols")]
    fn matmul_rejects_wrong_lengths() {
        GenericKernels::detect().matmul(&mut [0.0; 3], &[1.0; 10], &[1.0; 3]);
    }
}
