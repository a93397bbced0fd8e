//! Runtime-shape GEMV for Q4_0 weights: `out[r] = Σ_groups f32(Σ w_q·x_q) · w_scale · x_scale`,
//! the 4-bit weights unpacked to int8 in registers and the activations quantised to int8
//! once per GEMV input with the Q4 group size (see [`crate::quant`]).
//!
//! Organised as the int8 kernels ([`super::q8`]): one file per instruction set with one kernel
//! signature ([`Q4MatmulFn`]), chosen once when [`Q4Kernels`] is built and called through a
//! function pointer; `reference` is the f64 yardstick. The instruction sets are the int8 ones
//! ([`Q8Isa`]), so a backend forced onto one path runs both formats on it.

pub mod reference;
mod scalar;

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512_vnni;
#[cfg(target_arch = "aarch64")]
mod neon;

use std::fmt;

pub use super::q8::Q8Isa;
use crate::quant::{Q4Ref, Q8Ref};

/// A Q4_0 GEMV: `out.len()` rows of `cols` 4-bit weights packed two per byte in `w_q`
/// (`cols / 2` bytes per row) with `cols / group` scales per row in `w_scales`, times the
/// int8 input `x_q` (`cols` values) with its `x_scales`.
///
/// # Safety
/// The caller guarantees the kernel's instruction set is available and the lengths:
/// `group > 0` and even, `cols % group == 0`, `w_q.len() == out.len() * cols / 2`,
/// `w_scales.len() == out.len() * cols / group`, `x_q.len() == cols`,
/// `x_scales.len() == cols / group`; and that no input value is -128.
pub type Q4MatmulFn = unsafe fn(
    out: &mut [f32],
    w_q: &[u8],
    w_scales: &[f32],
    x_q: &[i8],
    x_scales: &[f32],
    cols: usize,
    group: usize,
);

fn kernel(isa: Q8Isa) -> Q4MatmulFn {
    match isa {
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

/// The Q4_0 GEMV of one instruction set, chosen once.
#[derive(Clone, Copy)]
pub struct Q4Kernels {
    isa: Q8Isa,
    kernel: Q4MatmulFn,
}

impl fmt::Debug for Q4Kernels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Q4Kernels({})", self.isa)
    }
}

impl Q4Kernels {
    /// The best path this CPU supports.
    pub fn detect() -> Self {
        Self::for_isa(Q8Isa::best()).expect("the best path is supported")
    }

    /// The kernels of `isa`, or `None` when this CPU cannot run it.
    pub fn for_isa(isa: Q8Isa) -> Option<Self> {
        isa.is_supported().then(|| Self {
            isa,
            kernel: kernel(isa),
        })
    }

    /// The path in use.
    pub fn isa(&self) -> Q8Isa {
        self.isa
    }

    /// `out = W · x` for a Q4_0 matrix of `out.len()` rows of `x.q.len()` columns.
    ///
    /// # Panics
    /// When the lengths or group sizes disagree (checked once per call, not per row).
    pub fn matmul(&self, out: &mut [f32], w: Q4Ref, x: Q8Ref) {
        let (rows, cols, group) = (out.len(), x.q.len(), x.group);
        assert!(
            group > 0
                && group.is_multiple_of(2)
                && w.group == group
                && cols.is_multiple_of(group)
                && w.q.len() * 2 == rows * cols
                && w.scales.len() == rows * (cols / group)
                && x.scales.len() == cols / group,
            "q4 matmul: shapes disagree (rows {rows}, cols {cols}, group {group}/{}, {} weight bytes, {} scales, {} input scales)",
            w.group,
            w.q.len(),
            w.scales.len(),
            x.scales.len()
        );
        // SAFETY: `for_isa` only builds this value after the CPU check, the assertion above is
        // the length contract, and the activation quantiser never produces -128.
        unsafe { (self.kernel)(out, w.q, w.scales, x.q, x.scales, cols, group) }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;
    use crate::quant::{quantize_activations, quantize_q4_weights};
    use crate::rng::Rng;

    fn supported() -> Vec<Q4Kernels> {
        Q8Isa::all()
            .iter()
            .filter_map(|&i| Q4Kernels::for_isa(i))
            .collect()
    }

    /// Fresh random values of varied magnitude per group (tiny, large, a few all zero).
    fn random(rng: &mut Rng, n: usize, group: usize) -> Vec<f32> {
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
        v
    }

    /// Every supported kernel against the f64 product of the dequantised values, over row
    /// counts that exercise the tiles and the single-row remainder, groups that take the
    /// packed loops (4 to 64) and the per-group loops (2, 6, 12, 48, 96, 128, 200), and row
    /// lengths of 1 to 40 groups (full chunks, then masked or scalar tails).
    #[test]
    fn matmul_matches_f64_reference_of_dequantised_values() {
        let mut rng = Rng::new(0x04_5eed);
        let groups = [2, 4, 6, 8, 12, 16, 32, 48, 64, 96, 128, 200];
        let groups_per_row = [1, 2, 3, 5, 9, 17, 40];
        let rows_list = [1, 3, 4, 5, 9, 13];
        let mut exercised = HashSet::new();
        for k in supported() {
            for &group in &groups {
                for &gpr in &groups_per_row {
                    let cols = group * gpr;
                    for &rows in &rows_list {
                        let wf = random(&mut rng, rows * cols, group);
                        let xf = random(&mut rng, cols, group);
                        let (mut wq, mut ws) =
                            (vec![0u8; rows * cols / 2], vec![0f32; rows * cols / group]);
                        quantize_q4_weights(&wf, group, &mut wq, &mut ws);
                        let (mut xq, mut xs) = (vec![0i8; cols], vec![0f32; cols / group]);
                        quantize_activations(&xf, group, &mut xq, &mut xs);
                        let mut out = rng.vec(rows); // garbage must be overwritten
                        k.matmul(
                            &mut out,
                            Q4Ref {
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
        assert_eq!(exercised, supported, "a supported path was never exercised");
        assert!(
            exercised.len() >= 2,
            "only the scalar path ran: {exercised:?}"
        );
    }

    /// Every nibble value (-8 included, which only hand-made files hold) against ±127 inputs:
    /// exact on every path.
    #[test]
    fn extreme_values_are_exact() {
        for k in supported() {
            for group in [4, 32, 64, 96] {
                let cols = group * 3;
                let wq: Vec<u8> = (0..cols).map(|i| (i * 37 % 256) as u8).collect();
                let xq: Vec<i8> = (0..cols)
                    .map(|i| if i % 3 == 0 { -127 } else { 127 })
                    .collect();
                let ws = vec![0.5f32; 2 * cols / group];
                let xs = vec![0.25f32; cols / group];
                let mut out = [0.0f32; 2];
                k.matmul(
                    &mut out,
                    Q4Ref {
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
        let (q, xq, s) = (vec![0x19u8; 8], vec![3i8; 8], vec![1.0f32; 2]);
        Q4Kernels::detect().matmul(
            &mut [0.0; 3],
            Q4Ref {
                q: &q,
                scales: &s,
                group: 4,
            },
            Q8Ref {
                q: &xq,
                scales: &s,
                group: 4,
            },
        );
    }
}
