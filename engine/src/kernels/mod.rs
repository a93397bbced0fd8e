//! Generic (runtime-shape) kernels: the comparison baseline and the path for any model.
//!
//! One file per instruction set, each with the same functions (`matmul`, `sum_squares`,
//! `weighted_sum`, `softmax`, `quantize_activations`, and the binary16 KV-cache ones
//! `matmul_f16`, `weighted_sum_f16`, `f32_to_f16`), chosen once when [`GenericKernels`] is
//! built. `reference` holds the plain f64 versions every kernel is tested against. `q8` holds the int8 kernels for Q8_0 weights.

pub mod int8;
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

/// A matrix element the f32 and binary16 (KV cache) kernels are written once over: `f32`, or
/// the bits of an f16 (`u16`), widened exactly to f32 before any arithmetic so both share
/// every rounding step after the load. Each ISA file extends it with its vector loads.
trait Elem: Copy {
    fn to_f32(self) -> f32;
}

impl Elem for f32 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }
}

impl Elem for u16 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        crate::base::fp16::to_f32(self)
    }
}

/// The plain sequential dot product of a column tail (shorter than a vector).
fn tail_dot<T: Elem>(a: &[T], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x.to_f32() * y).sum()
}

/// Cephes `expf`, shared by the SIMD softmax kernels: `e^x = 2^n · e^r` with `n = round(x/ln2)`,
/// `r = x - n·ln2` (ln2 split in two so `n·LN2_HI` is exact) and `e^r ≈ 1 + r + r²·P(r)` on
/// `|r| <= ln2/2`, about 1 ulp there.
mod exp_poly {
    pub(super) const LOG2E: f32 = std::f32::consts::LOG2_E;
    pub(super) const LN2_HI: f32 = 0.693_359_4;
    pub(super) const LN2_LO: f32 = -2.121_944_4e-4;
    /// `P(r)`, highest power first.
    pub(super) const P: [f32; 6] = [
        1.987_569_1e-4,
        1.398_199_9e-3,
        8.333_452e-3,
        4.166_579_6e-2,
        1.666_666_5e-1,
        0.5,
    ];
    /// Below this `e^x` (< 1.7e-38) is returned as 0: `2^n` stays a normal float for every
    /// kept input, so no denormals reach the softmax.
    pub(super) const MIN_X: f32 = -87.0;
}

/// Runtime-shape GEMV, RMSNorm and the attention helpers for one instruction set, chosen once.
#[derive(Debug, Clone, Copy)]
pub struct GenericKernels {
    isa: Isa,
    /// F16C (`vcvtph2ps`/`vcvtps2ph`), which the AVX2 binary16 kernels need on top of AVX2
    /// (always false, and unread, off x86_64).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    f16c: bool,
}

impl GenericKernels {
    /// The best instruction set this CPU supports.
    pub fn detect() -> Self {
        Self::with_isa(Isa::best())
    }

    fn with_isa(isa: Isa) -> Self {
        #[cfg(target_arch = "x86_64")]
        let f16c = std::arch::is_x86_feature_detected!("f16c");
        #[cfg(not(target_arch = "x86_64"))]
        let f16c = false;
        Self { isa, f16c }
    }

    /// Kernels for `isa`, or `None` when this CPU cannot run it.
    pub fn for_isa(isa: Isa) -> Option<Self> {
        isa.is_supported().then(|| Self::with_isa(isa))
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

    /// `out[c] = Σ_r weights[r] · rows[r · out.len() + c]`: the attention's weighted sum of
    /// value rows (`rows` row-major, one row of `out.len()` per weight).
    ///
    /// # Panics
    /// When `rows.len() != weights.len() * out.len()`.
    pub fn weighted_sum(&self, out: &mut [f32], weights: &[f32], rows: &[f32]) {
        assert_eq!(
            rows.len(),
            weights.len() * out.len(),
            "weighted_sum: rows length is not weights × out"
        );
        match self.isa {
            // SAFETY: as in `matmul`; the assertion bounds every row the kernel reads.
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => unsafe { avx512::weighted_sum(out, weights, rows) },
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => unsafe { avx2::weighted_sum(out, weights, rows) },
            #[cfg(target_arch = "aarch64")]
            Isa::Neon => unsafe { neon::weighted_sum(out, weights, rows) },
            _ => scalar::weighted_sum(out, weights, rows),
        }
    }

    /// [`Self::matmul`] over binary16 rows (the f16 key cache), each widened exactly to f32.
    ///
    /// # Panics
    /// When `w.len() != out.len() * x.len()`.
    pub fn matmul_f16(&self, out: &mut [f32], w: &[u16], x: &[f32]) {
        assert_eq!(
            w.len(),
            out.len() * x.len(),
            "matmul_f16: weight length is not rows × cols"
        );
        match self.isa {
            // SAFETY: as in `matmul`; the AVX2 kernel also needs F16C, checked at construction.
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => unsafe { avx512::matmul_f16(out, w, x) },
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 if self.f16c => unsafe { avx2::matmul_f16(out, w, x) },
            #[cfg(target_arch = "aarch64")]
            Isa::Neon => unsafe { neon::matmul_f16(out, w, x) },
            _ => scalar::matmul_f16(out, w, x),
        }
    }

    /// [`Self::weighted_sum`] over binary16 rows (the f16 value cache).
    ///
    /// # Panics
    /// When `rows.len() != weights.len() * out.len()`.
    pub fn weighted_sum_f16(&self, out: &mut [f32], weights: &[f32], rows: &[u16]) {
        assert_eq!(
            rows.len(),
            weights.len() * out.len(),
            "weighted_sum_f16: rows length is not weights × out"
        );
        match self.isa {
            // SAFETY: as in `matmul_f16`.
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => unsafe { avx512::weighted_sum_f16(out, weights, rows) },
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 if self.f16c => unsafe { avx2::weighted_sum_f16(out, weights, rows) },
            #[cfg(target_arch = "aarch64")]
            Isa::Neon => unsafe { neon::weighted_sum_f16(out, weights, rows) },
            _ => scalar::weighted_sum_f16(out, weights, rows),
        }
    }

    /// `out = x` rounded to binary16, bit for bit [`crate::base::fp16::from_f32`] on every path.
    ///
    /// # Panics
    /// When the lengths differ.
    pub fn f32_to_f16(&self, out: &mut [u16], x: &[f32]) {
        assert_eq!(out.len(), x.len(), "f32_to_f16: length mismatch");
        match self.isa {
            // SAFETY: as in `matmul_f16`; the kernels touch exactly `x` and `out`.
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => unsafe { avx512::f32_to_f16(out, x) },
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 if self.f16c => unsafe { avx2::f32_to_f16(out, x) },
            #[cfg(target_arch = "aarch64")]
            Isa::Neon => unsafe { neon::f32_to_f16(out, x) },
            _ => crate::base::fp16::slice_from_f32(out, x),
        }
    }

    /// Activation quantisation (`q` int8, one scale per `group` values), bit for bit
    /// [`crate::format::quant::quantize_activations`] on every instruction set, including its
    /// NaN and infinity handling; only a NaN scale's payload may differ when a group holds
    /// several different NaNs.
    ///
    /// # Panics
    /// When `group` is 0 or does not divide `x.len()`, or an output length is wrong.
    pub fn quantize_activations(&self, x: &[f32], group: usize, q: &mut [i8], scales: &mut [f32]) {
        assert!(
            group > 0 && x.len().is_multiple_of(group),
            "quantize: length {} is not a multiple of the group {group}",
            x.len()
        );
        assert!(
            q.len() == x.len() && scales.len() == x.len() / group,
            "quantize: output lengths"
        );
        match self.isa {
            // SAFETY: as in `matmul`; the assertions are the kernels' length contract.
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => unsafe { avx512::quantize_activations(x, group, q, scales) },
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => unsafe { avx2::quantize_activations(x, group, q, scales) },
            #[cfg(target_arch = "aarch64")]
            Isa::Neon => unsafe { neon::quantize_activations(x, group, q, scales) },
            _ => scalar::quantize_activations(x, group, q, scales),
        }
    }

    /// In-place softmax of `scale · x` (max-subtracted, as llama2.c); `scale` must be positive.
    ///
    /// The SIMD paths use a polynomial `exp` (a few ulp) that returns 0 for arguments below
    /// -87, where the true value is under 1.7e-38 of the largest term.
    pub fn softmax(&self, x: &mut [f32], scale: f32) {
        debug_assert!(
            scale > 0.0,
            "softmax: the max only commutes with a positive scale"
        );
        if x.is_empty() {
            return;
        }
        match self.isa {
            // SAFETY: as in `matmul`; the kernels touch exactly `x`.
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => unsafe { avx512::softmax(x, scale) },
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => unsafe { avx2::softmax(x, scale) },
            #[cfg(target_arch = "aarch64")]
            Isa::Neon => unsafe { neon::softmax(x, scale) },
            _ => scalar::softmax(x, scale),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::base::rng::Rng;

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
    fn weighted_sum_matches_f64_reference_over_many_sizes() {
        let mut rng = Rng::new(0xa77e);
        let rows_list = [
            1, 2, 3, 4, 5, 7, 8, 9, 16, 17, 31, 64, 65, 127, 200, 256, 257, 299, 300,
        ];
        for k in supported() {
            for cols in (1..=70).chain([96, 128, 129, 200]) {
                for &rows in &rows_list {
                    let w = rng.vec(rows);
                    let v = rng.vec(rows * cols);
                    let mut out = rng.vec(cols); // garbage in out must be overwritten
                    k.weighted_sum(&mut out, &w, &v);
                    let (want, mag) = reference::weighted_sum(&w, &v, cols);
                    for c in 0..cols {
                        check_close(
                            out[c],
                            want[c],
                            mag[c],
                            &format!("{} weighted_sum {rows}x{cols} col {c}", k.isa()),
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn weighted_sum_of_no_rows_is_zero() {
        for k in supported() {
            let mut out = [1.0; 5];
            k.weighted_sum(&mut out, &[], &[]);
            assert_eq!(out, [0.0; 5], "{}", k.isa());
        }
    }

    #[test]
    #[should_panic(expected = "weights × out")]
    fn weighted_sum_rejects_wrong_lengths() {
        GenericKernels::detect().weighted_sum(&mut [0.0; 3], &[1.0; 2], &[1.0; 7]);
    }

    #[test]
    fn softmax_matches_f64_reference() {
        let mut rng = Rng::new(0x50f7);
        // (spread, offset): plain scores, wide ones, scores in -1000..0 where most terms fall
        // below the exp cut-off, and large positive ones that only survive max subtraction.
        let inputs = [(1.0, 0.0), (10.0, 0.0), (500.0, -500.0), (5.0, 80.0)];
        let scales = [1.0, 1.0 / 48f32.sqrt(), 0.125];
        for k in supported() {
            for n in (1..=70).chain([127, 128, 255, 256, 257, 1000]) {
                for &(spread, offset) in &inputs {
                    for &scale in &scales {
                        let x: Vec<f32> = rng.vec(n).iter().map(|v| v * spread + offset).collect();
                        let mut got = x.clone();
                        k.softmax(&mut got, scale);
                        let want = reference::softmax(&x, scale as f64);
                        let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
                        let what =
                            format!("{} softmax n={n} spread={spread} scale={scale}", k.isa());
                        for i in 0..n {
                            // f32 rounds (x - max) and its product with the scale, each a
                            // relative 2^-24 of the argument, which e^arg turns into a relative
                            // error of the result; terms below e^-87 may be flushed to 0.
                            let arg = (x[i] as f64 - max) * scale as f64;
                            let tol = want[i] * (1e-5 + arg.abs() * 2f64.powi(-22)) + 2e-38;
                            assert!(
                                (got[i] as f64 - want[i]).abs() <= tol,
                                "{what} i={i}: got {}, want {} (tolerance {tol})",
                                got[i],
                                want[i]
                            );
                            assert!(
                                got[i] >= 0.0 && got[i].is_finite(),
                                "{what} i={i}: got {}",
                                got[i]
                            );
                        }
                        let sum: f64 = got.iter().map(|&v| v as f64).sum();
                        assert!((sum - 1.0).abs() <= 1e-5, "{what}: sums to {sum}");
                    }
                }
            }
        }
    }

    #[test]
    fn softmax_exp_is_within_a_few_ulp() {
        // softmax([0, a]) = [1, e^a] / (1 + e^a) with every f32 step exact except exp and the
        // normalisation (sum, reciprocal, product: about 1.5 ulp), so this isolates exp.
        let mut rng = Rng::new(0xe4);
        for k in supported() {
            let mut worst = 0.0f64;
            for i in 0..20_000 {
                let a = if i < 870 {
                    -(i as f32) / 10.0
                } else {
                    (rng.uniform() - 1.0) * 43.5
                };
                let mut x = [0.0, a];
                k.softmax(&mut x, 1.0);
                let e = (a as f64).exp();
                let want = [1.0 / (1.0 + e), e / (1.0 + e)];
                for j in 0..2 {
                    let ulps = (x[j] as f64 - want[j]).abs() / (want[j] * f32::EPSILON as f64);
                    worst = worst.max(ulps);
                }
            }
            // In units of f32::EPSILON relative to the value (about 1.5 measured).
            assert!(worst <= 4.0, "{}: {worst} ulp", k.isa());
        }
    }

    #[test]
    fn softmax_of_one_element_is_one_and_of_none_is_nothing() {
        for k in supported() {
            for v in [-1000.0, -3.5, 0.0, 42.0] {
                let mut x = [v];
                k.softmax(&mut x, 0.125);
                assert_eq!(x, [1.0], "{} softmax([{v}])", k.isa());
            }
            k.softmax(&mut [], 1.0);
        }
    }

    /// Every supported ISA's quantiser against the reference: scales equal bit for bit,
    /// values exactly (the scalar runq.c comparison in the engine tests depends on it).
    fn check_quantize(x: &[f32], group: usize, what: &str) {
        let n = x.len();
        let (mut want_q, mut want_s) = (vec![0i8; n], vec![0f32; n / group]);
        crate::format::quant::quantize_activations(x, group, &mut want_q, &mut want_s);
        for k in supported() {
            // Garbage in the outputs must be overwritten.
            let (mut q, mut s) = (vec![-99i8; n], vec![-1.5f32; n / group]);
            k.quantize_activations(x, group, &mut q, &mut s);
            for (g, (got, want)) in s.iter().zip(&want_s).enumerate() {
                assert_eq!(
                    got.to_bits(),
                    want.to_bits(),
                    "{} {what}: scale of group {g}: {got} vs {want}",
                    k.isa()
                );
            }
            for (i, (got, want)) in q.iter().zip(&want_q).enumerate() {
                assert_eq!(got, want, "{} {what}: value {i} ({})", k.isa(), x[i]);
            }
        }
    }

    /// A magnitude in 1e-3..1e3, log-uniform.
    fn magnitude(rng: &mut Rng) -> f32 {
        10f32.powf(rng.uniform() * 3.0)
    }

    const QUANT_GROUPS: [usize; 11] = [2, 4, 6, 8, 12, 16, 20, 32, 64, 96, 128];

    #[test]
    fn quantize_activations_matches_the_reference_bitwise() {
        let mut rng = Rng::new(0x9a17);
        for group in QUANT_GROUPS {
            let lens = (group..=320).step_by(group).chain([768, 2048]);
            for n in lens.filter(|n| n % group == 0) {
                let mut x = rng.vec(n);
                for g in x.chunks_mut(group) {
                    let m = magnitude(&mut rng);
                    g.iter_mut().for_each(|v| *v *= m);
                }
                check_quantize(&x, group, &format!("group {group} n={n}"));
            }
        }
    }

    #[test]
    fn quantize_activations_rounds_exact_halves_away_from_zero() {
        let mut rng = Rng::new(0x4a1f);
        for group in QUANT_GROUPS {
            for _ in 0..20 {
                let n = group * (1 + rng.below(12));
                let mut x = vec![0f32; n];
                for g in x.chunks_mut(group) {
                    // A scale with at most 16 significant bits, so that 127·s and (q + ½)·s
                    // are exact and x / (max / 127) lands exactly on q + ½.
                    let mantissa = (1 << 15) + rng.below(1 << 15);
                    let e = rng.below(21) as i32 - 33;
                    let s = mantissa as f32 * 2f32.powi(e);
                    for v in g.iter_mut() {
                        let q = rng.below(254) as f32 - 127.0; // -127..=126
                        *v = (q + 0.5) * s;
                        // Neighbours of the halves, too: they must not round like the half.
                        match rng.below(4) {
                            0 => *v = v.next_up(),
                            1 => *v = v.next_down(),
                            _ => {}
                        }
                    }
                    let at = rng.below(group);
                    g[at] = if rng.below(2) == 0 {
                        127.0 * s
                    } else {
                        -127.0 * s
                    };
                    let scale = 127.0 * s / 127.0;
                    assert_eq!(scale, s);
                }
                check_quantize(&x, group, &format!("halves, group {group} n={n}"));
            }
        }
    }

    #[test]
    fn quantize_activations_zero_tiny_and_non_finite_groups() {
        let mut rng = Rng::new(0x0dd);
        for group in QUANT_GROUPS {
            let mut x = rng.vec(group * 9);
            x.iter_mut().for_each(|v| *v *= 5.0);
            for (case, g) in x.chunks_mut(group).enumerate() {
                let last = g.len() - 1;
                match case {
                    0 => g.fill(0.0),
                    1 => {
                        g.fill(0.0);
                        g.iter_mut().step_by(2).for_each(|v| *v = -0.0);
                    }
                    2 => g[last / 2] = f32::NAN,
                    3 => g[last] = -f32::NAN,
                    4 => g[0] = f32::INFINITY,
                    5 => g[last] = f32::NEG_INFINITY,
                    // Denormal maxima: the scale underflows to 0, or is a denormal itself
                    // (then quotients reach about 190 and are clamped).
                    6 => g.fill(f32::from_bits(1)),
                    7 => g
                        .iter_mut()
                        .enumerate()
                        .for_each(|(i, v)| *v = f32::from_bits(i as u32 * 37 + 100)),
                    _ => {} // a plain random group
                }
            }
            check_quantize(&x, group, &format!("special groups, group {group}"));
        }
    }

    /// Several different NaNs in one group: the scale is NaN on every path (its payload is
    /// unspecified) and every value is 0, with no panic.
    #[test]
    fn quantize_activations_with_several_nans_gives_a_nan_scale_and_zeros() {
        for group in QUANT_GROUPS {
            let mut x = vec![1.0f32; group * 3];
            x[group] = f32::from_bits(0x7FC0_0001);
            x[2 * group - 1] = f32::from_bits(0xFFC0_0002);
            for k in supported() {
                let (mut q, mut s) = (vec![-99i8; x.len()], vec![0f32; 3]);
                k.quantize_activations(&x, group, &mut q, &mut s);
                assert!(s[1].is_nan(), "{} group {group}", k.isa());
                assert_eq!((s[0], s[2]), (1.0 / 127.0, 1.0 / 127.0));
                assert!(q[group..2 * group].iter().all(|&v| v == 0));
                assert!(q[..group].iter().chain(&q[2 * group..]).all(|&v| v == 127));
            }
        }
    }

    /// `supported()` plus AVX2 without F16C, which must take the scalar binary16 path.
    fn supported_f16() -> Vec<GenericKernels> {
        let mut all = supported();
        let no_f16c: Vec<_> = all
            .iter()
            .filter(|k| k.f16c)
            .map(|&k| GenericKernels { f16c: false, ..k })
            .collect();
        all.extend(no_f16c);
        all
    }

    /// Random values in ±4 rounded to binary16: the bits, and their exact f32 values.
    fn halves(rng: &mut Rng, n: usize) -> (Vec<u16>, Vec<f32>) {
        let bits: Vec<u16> = rng
            .vec(n)
            .iter()
            .map(|v| crate::base::fp16::from_f32(v * 4.0))
            .collect();
        let vals = bits.iter().map(|&h| crate::base::fp16::to_f32(h)).collect();
        (bits, vals)
    }

    #[test]
    fn matmul_f16_matches_f64_reference_over_many_sizes() {
        let mut rng = Rng::new(0xf16a);
        let rows_list = [1, 2, 3, 4, 5, 7, 8, 9, 13, 17, 64, 143, 256, 299, 300];
        for k in supported_f16() {
            for cols in (1..=70).chain([128]) {
                for &rows in &rows_list {
                    let (w, wf) = halves(&mut rng, rows * cols);
                    let x = rng.vec(cols);
                    let mut out = rng.vec(rows);
                    k.matmul_f16(&mut out, &w, &x);
                    let (want, mag) = reference::matmul(&wf, &x);
                    for r in 0..rows {
                        check_close(
                            out[r],
                            want[r],
                            mag[r],
                            &format!("{} f16 {rows}x{cols} row {r}", k.isa()),
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn weighted_sum_f16_matches_f64_reference_over_many_sizes() {
        let mut rng = Rng::new(0xf16b);
        let rows_list = [
            1, 2, 3, 4, 5, 7, 8, 9, 16, 17, 31, 64, 65, 127, 200, 256, 257, 299, 300,
        ];
        for k in supported_f16() {
            for cols in (1..=70).chain([128]) {
                for &rows in &rows_list {
                    let w = rng.vec(rows);
                    let (v, vf) = halves(&mut rng, rows * cols);
                    let mut out = rng.vec(cols);
                    k.weighted_sum_f16(&mut out, &w, &v);
                    let (want, mag) = reference::weighted_sum(&w, &vf, cols);
                    for c in 0..cols {
                        check_close(
                            out[c],
                            want[c],
                            mag[c],
                            &format!("{} weighted_sum_f16 {rows}x{cols} col {c}", k.isa()),
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn weighted_sum_f16_of_no_rows_is_zero() {
        for k in supported_f16() {
            let mut out = [1.0; 5];
            k.weighted_sum_f16(&mut out, &[], &[]);
            assert_eq!(out, [0.0; 5], "{}", k.isa());
        }
    }

    #[test]
    fn f32_to_f16_equals_the_scalar_converter_bitwise() {
        let mut rng = Rng::new(0xf16c);
        // Random bit patterns (every exponent, NaNs, infinities, subnormals) and exact
        // halfway points between neighbouring halves, in every length 0..=70 so each path's
        // tail is covered.
        let mut x: Vec<f32> = (0..200_000)
            .map(|i| {
                if i % 2 == 0 {
                    f32::from_bits(rng.next_u64() as u32)
                } else {
                    let h = (rng.next_u64() as u16) & 0x7BFF;
                    let mid = (crate::base::fp16::to_f32(h) as f64
                        + crate::base::fp16::to_f32(h + 1) as f64)
                        / 2.0;
                    mid as f32
                }
            })
            .collect();
        x.extend([
            65519.99,
            65520.0,
            f32::MAX,
            f32::NAN,
            -f32::NAN,
            f32::from_bits(0x7F80_0001),
            f32::from_bits(1),
            2f32.powi(-25),
        ]);
        let want: Vec<u16> = x.iter().map(|&v| crate::base::fp16::from_f32(v)).collect();
        for k in supported_f16() {
            let mut got = vec![0xAAAAu16; x.len()];
            k.f32_to_f16(&mut got, &x);
            for (i, (&g, &w)) in got.iter().zip(&want).enumerate() {
                assert_eq!(g, w, "{} f32_to_f16({:#010x})", k.isa(), x[i].to_bits());
            }
            for n in 0..=70 {
                let mut got = vec![0xAAAAu16; n];
                k.f32_to_f16(&mut got, &x[1000..1000 + n]);
                assert_eq!(got, want[1000..1000 + n], "{} n={n}", k.isa());
            }
        }
    }

    #[test]
    #[should_panic(expected = "rows × cols")]
    fn matmul_rejects_wrong_lengths() {
        GenericKernels::detect().matmul(&mut [0.0; 3], &[1.0; 10], &[1.0; 3]);
    }
}
