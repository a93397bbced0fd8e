//! Runtime-shape int8 GEMV for Q8_0 weights: `out[r] = Σ_groups f32(Σ w_q·x_q) · w_scale · x_scale`,
//! the activations having been quantised once per GEMV input (see [`crate::quant`]).
//!
//! One file per instruction set, each with the same kernel signature ([`Q8MatmulFn`]); the
//! kernel is chosen once, when [`Q8Kernels`] is built (at start-up, from CPU detection or a
//! forced [`Q8Isa`]), and called through a function pointer, where a kernel generated for one
//! shape can slot in later. `reference` is the f64 yardstick every kernel is tested against.

pub mod reference;
mod scalar;

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512_vnni;
#[cfg(target_arch = "aarch64")]
mod neon;

use std::fmt;

use crate::kernels::Isa;
use crate::quant::Q8Ref;

/// An int8 GEMV: `out.len()` rows of `cols` int8 weights `w_q` with `cols / group` scales per
/// row in `w_scales`, times the quantised input `x_q` (`cols` values) with its `x_scales`.
///
/// # Safety
/// The caller guarantees the kernel's instruction set is available and the lengths:
/// `group > 0`, `cols % group == 0`, `w_q.len() == out.len() * cols`,
/// `w_scales.len() == out.len() * cols / group`, `x_q.len() == cols`,
/// `x_scales.len() == cols / group`; and that no weight or input value is -128.
pub type Q8MatmulFn = unsafe fn(
    out: &mut [f32],
    w_q: &[i8],
    w_scales: &[f32],
    x_q: &[i8],
    x_scales: &[f32],
    cols: usize,
    group: usize,
);

/// The int8 code paths.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Q8Isa {
    /// Portable scalar code (runq.c's loop).
    Scalar,
    /// x86 AVX2: `vpmaddubsw` + `vpmaddwd`.
    Avx2,
    /// x86 AVX-512 VNNI: `vpdpbusd` (needs AVX-512F/BW and VNNI).
    Avx512Vnni,
    /// aarch64 NEON with the dot-product extension: `sdot`.
    NeonDotprod,
    /// aarch64 NEON without it: widening multiplies.
    Neon,
}

impl Q8Isa {
    /// Every path, supported here or not.
    pub fn all() -> &'static [Q8Isa] {
        &[
            Q8Isa::Scalar,
            Q8Isa::Avx2,
            Q8Isa::Avx512Vnni,
            Q8Isa::NeonDotprod,
            Q8Isa::Neon,
        ]
    }

    /// Short name for reports.
    pub fn name(self) -> &'static str {
        match self {
            Q8Isa::Scalar => "scalar",
            Q8Isa::Avx2 => "avx2",
            Q8Isa::Avx512Vnni => "avx512vnni",
            Q8Isa::NeonDotprod => "neon+dotprod",
            Q8Isa::Neon => "neon",
        }
    }

    /// True when this CPU runs the path.
    pub fn is_supported(self) -> bool {
        match self {
            Q8Isa::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Q8Isa::Avx2 => is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"),
            #[cfg(target_arch = "x86_64")]
            Q8Isa::Avx512Vnni => {
                is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512bw")
                    && is_x86_feature_detected!("avx512vnni")
            }
            #[cfg(target_arch = "aarch64")]
            Q8Isa::NeonDotprod => std::arch::is_aarch64_feature_detected!("dotprod"),
            #[cfg(target_arch = "aarch64")]
            Q8Isa::Neon => std::arch::is_aarch64_feature_detected!("neon"),
            #[allow(unreachable_patterns)]
            _ => false,
        }
    }

    /// The fastest supported path.
    pub fn best() -> Q8Isa {
        [
            Q8Isa::Avx512Vnni,
            Q8Isa::Avx2,
            Q8Isa::NeonDotprod,
            Q8Isa::Neon,
        ]
        .into_iter()
        .find(|i| i.is_supported())
        .unwrap_or(Q8Isa::Scalar)
    }

    /// The int8 path that goes with a forced f32 instruction set: portable → scalar, avx2 →
    /// avx2, avx512 → VNNI (or AVX2 when the CPU lacks VNNI), neon → the best NEON path.
    pub fn for_f32_isa(isa: Isa) -> Q8Isa {
        let candidates: &[Q8Isa] = match isa {
            Isa::Portable => &[],
            Isa::Avx2 => &[Q8Isa::Avx2],
            Isa::Avx512 => &[Q8Isa::Avx512Vnni, Q8Isa::Avx2],
            Isa::Neon => &[Q8Isa::NeonDotprod, Q8Isa::Neon],
        };
        candidates
            .iter()
            .copied()
            .find(|i| i.is_supported())
            .unwrap_or(Q8Isa::Scalar)
    }

    fn kernel(self) -> Q8MatmulFn {
        match self {
            #[cfg(target_arch = "x86_64")]
            Q8Isa::Avx2 => avx2::matmul,
            #[cfg(target_arch = "x86_64")]
            Q8Isa::Avx512Vnni => avx512_vnni::matmul,
            #[cfg(target_arch = "aarch64")]
            Q8Isa::NeonDotprod => neon::matmul_dotprod,
            #[cfg(target_arch = "aarch64")]
            Q8Isa::Neon => neon::matmul_widen,
            _ => scalar::matmul_entry,
        }
    }
}

impl fmt::Display for Q8Isa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The int8 GEMV of one instruction set, chosen once.
#[derive(Clone, Copy)]
pub struct Q8Kernels {
    isa: Q8Isa,
    kernel: Q8MatmulFn,
}

impl fmt::Debug for Q8Kernels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Q8Kernels({})", self.isa)
    }
}

impl Q8Kernels {
    /// The best path this CPU supports.
    pub fn detect() -> Self {
        Self::for_isa(Q8Isa::best()).expect("the best path is supported")
    }

    /// The kernels of `isa`, or `None` when this CPU cannot run it.
    pub fn for_isa(isa: Q8Isa) -> Option<Self> {
        isa.is_supported().then(|| Self {
            isa,
            kernel: isa.kernel(),
        })
    }

    /// The path in use.
    pub fn isa(&self) -> Q8Isa {
        self.isa
    }

    /// `out = W · x` for a Q8_0 matrix of `out.len()` rows of `x.q.len()` columns.
    ///
    /// # Panics
    /// When the lengths or group sizes disagree (checked once per call, not per row).
    pub fn matmul(&self, out: &mut [f32], w: Q8Ref, x: Q8Ref) {
        let (rows, cols, group) = (out.len(), x.q.len(), x.group);
        assert!(
            group > 0
                && w.group == group
                && cols.is_multiple_of(group)
                && w.q.len() == rows * cols
                && w.scales.len() == rows * (cols / group)
                && x.scales.len() == cols / group,
            "q8 matmul: shapes disagree (rows {rows}, cols {cols}, group {group}/{}, {} weights, {} scales, {} input scales)",
            w.group,
            w.q.len(),
            w.scales.len(),
            x.scales.len()
        );
        // SAFETY: `for_isa` only builds this value after the CPU check, the assertion above is
        // the length contract, and the quantisers never produce -128.
        unsafe { (self.kernel)(out, w.q, w.scales, x.q, x.scales, cols, group) }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;
    use crate::quant::{quantize_activations, quantize_weights};
    use crate::rng::Rng;

    fn supported() -> Vec<Q8Kernels> {
        Q8Isa::all()
            .iter()
            .filter_map(|&i| Q8Kernels::for_isa(i))
            .collect()
    }

    /// Fresh random Q8_0 data: f32 values of varied magnitude per group (some groups tiny,
    /// some large, a few all zero), quantised by the real quantisers.
    fn random_q8(rng: &mut Rng, n: usize, group: usize, weights: bool) -> (Vec<i8>, Vec<f32>) {
        let mut v = rng.vec(n);
        for g in v.chunks_mut(group) {
            let m = match rng.below(8) {
                0 => 0.0,
                1 => 1e-3,
                2 => 40.0,
                _ => 1.0,
            };
            g.iter_mut().for_each(|x| *x *= m);
        }
        let (mut q, mut s) = (vec![0i8; n], vec![0f32; n / group]);
        if weights {
            quantize_weights(&v, group, &mut q, &mut s);
        } else {
            quantize_activations(&v, group, &mut q, &mut s);
        }
        (q, s)
    }

    #[test]
    fn every_supported_path_is_reachable() {
        assert_eq!(Q8Kernels::detect().isa(), Q8Isa::best());
        for &isa in Q8Isa::all() {
            assert_eq!(
                Q8Kernels::for_isa(isa).is_some(),
                isa.is_supported(),
                "{isa}"
            );
        }
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx512vnni") && is_x86_feature_detected!("avx512bw") {
            assert_eq!(Q8Isa::best(), Q8Isa::Avx512Vnni);
            assert_eq!(Q8Isa::for_f32_isa(Isa::Avx512), Q8Isa::Avx512Vnni);
        }
        assert_eq!(Q8Isa::for_f32_isa(Isa::Portable), Q8Isa::Scalar);
    }

    /// Every kernel against the f64 product of the dequantised values, over row counts that
    /// exercise the 4-row tiles and the single-row remainder, and group sizes that exercise
    /// both loops of every SIMD kernel (packed: 4, 8, 16, 32, 64 where they divide the vector;
    /// per group: 1, 2, 3, 12, 20, 48, 64 on AVX2, 96, 128, 200) with row lengths of 1 to 40
    /// groups (full chunks, then masked or scalar tails).
    #[test]
    fn matmul_matches_f64_reference_of_dequantised_values() {
        let mut rng = Rng::new(0x08_5eed);
        let groups = [1, 2, 3, 4, 8, 12, 16, 20, 32, 48, 64, 96, 128, 200];
        // Up to 40 groups, so that even groups of 4 fill whole 64-byte chunks before the tail.
        let groups_per_row = [1, 2, 3, 5, 9, 17, 40];
        let rows_list = [1, 3, 4, 5, 9, 13];
        let mut exercised = HashSet::new();
        for k in supported() {
            for &group in &groups {
                for &gpr in &groups_per_row {
                    let cols = group * gpr;
                    for &rows in &rows_list {
                        let (wq, ws) = random_q8(&mut rng, rows * cols, group, true);
                        let (xq, xs) = random_q8(&mut rng, cols, group, false);
                        let w = Q8Ref {
                            q: &wq,
                            scales: &ws,
                            group,
                        };
                        let x = Q8Ref {
                            q: &xq,
                            scales: &xs,
                            group,
                        };
                        let mut out = rng.vec(rows); // garbage must be overwritten
                        k.matmul(&mut out, w, x);
                        let (want, mag) = reference::matmul(&wq, &ws, &xq, &xs, cols, group);
                        for r in 0..rows {
                            let tol = 1e-5 * mag[r] + 1e-30;
                            assert!(
                                (out[r] as f64 - want[r]).abs() <= tol,
                                "{} {rows}x{cols} group {group} row {r}: got {}, want {} (tolerance {tol})",
                                k.isa(),
                                out[r],
                                want[r]
                            );
                        }
                    }
                }
            }
            exercised.insert(k.isa());
        }
        let supported: HashSet<Q8Isa> = Q8Isa::all()
            .iter()
            .copied()
            .filter(|i| i.is_supported())
            .collect();
        assert_eq!(
            exercised, supported,
            "a supported int8 path was never exercised"
        );
        assert!(
            exercised.len() >= 2,
            "only the scalar path ran: {exercised:?}"
        );
    }

    /// Extreme values: ±127 everywhere (the largest i16 pair sums of the AVX2 path) and
    /// alternating signs, on every path.
    #[test]
    fn extreme_values_do_not_saturate() {
        for k in supported() {
            for group in [4, 32, 64] {
                let cols = group * 3;
                let wq: Vec<i8> = (0..2 * cols)
                    .map(|i| if i % 3 == 0 { -127 } else { 127 })
                    .collect();
                let xq: Vec<i8> = (0..cols)
                    .map(|i| if i % 2 == 0 { -127 } else { 127 })
                    .collect();
                let ws = vec![0.5f32; 2 * cols / group];
                let xs = vec![0.25f32; cols / group];
                let mut out = [0.0f32; 2];
                k.matmul(
                    &mut out,
                    Q8Ref {
                        q: &wq,
                        scales: &ws,
                        group,
                    },
                    Q8Ref {
                        q: &xq,
                        scales: &xs,
                        group,
                    },
                );
                let (want, _) = reference::matmul(&wq, &ws, &xq, &xs, cols, group);
                assert_eq!(
                    out.map(f64::from),
                    [want[0], want[1]],
                    "{} group {group}",
                    k.isa()
                );
            }
        }
    }

    #[test]
    #[should_panic(expected = "shapes disagree")]
    fn matmul_rejects_wrong_lengths() {
        let (q, s) = (vec![1i8; 8], vec![1.0f32; 2]);
        Q8Kernels::detect().matmul(
            &mut [0.0; 3],
            Q8Ref {
                q: &q,
                scales: &s,
                group: 4,
            },
            Q8Ref {
                q: &q,
                scales: &s,
                group: 4,
            },
        );
    }
}
