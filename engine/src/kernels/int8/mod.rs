//! Runtime-shape int8 GEMV, shared by the Q8_0 ([`super::q8`]) and Q4_0 ([`super::q4`])
//! formats: `out[r] = Σ_groups f32(Σ w_q·x_q) · w_scale · x_scale`, the activations having
//! been quantised to int8 once per GEMV input (see [`crate::format::quant`]).
//!
//! The two formats differ only in how a chunk of weights reaches a register (Q8_0 loads it,
//! Q4_0 unpacks nibbles to int8 in natural order) and in the scalar dot of a tail, so each
//! instruction set has one kernel body (`avx512_vnni`, `avx2`, `neon`, the portable
//! `scalar`) generic over a [`Weights`] format, which supplies those loads. The kernel is
//! chosen once, when [`Kernels`] is built (at start-up, from CPU detection or a forced
//! [`Q8Isa`]), and called through a function pointer.

/// The x86 kernels' row loop: rows in tiles of [`Weights::TILE`], then 4, then 1 (every tile
/// does the same arithmetic per row), each tile to `packed_rows::<F, G, R>` when the group
/// size is one of the listed packed sizes `G`, else to `group_rows::<F, R>`. A macro, since
/// the callees are generic over constants chosen here.
#[cfg(target_arch = "x86_64")]
macro_rules! tiled_rows {
    ($F:ty, $out:ident, $wq:ident, $ws:ident, $xq:ident, $xs:ident, $cols:ident, $group:ident, [$($g:literal),*]) => {{
        let rows = $out.len();
        let per_row = $cols / $group;
        let (o, w, s) = ($out.as_mut_ptr(), $wq.as_ptr(), $ws.as_ptr());
        let (x, xsp) = ($xq.as_ptr(), $xs.as_ptr());
        let mut r = 0;
        while r < rows {
            let (o, w, s) = (o.add(r), w.add(r * $cols / <$F>::PER_UNIT), s.add(r * per_row));
            let tile = [<$F>::TILE, 4, 1]
                .into_iter()
                .find(|&t| r + t <= rows)
                .unwrap_or(1);
            match $group {
                $($g => by_tile!(tile, packed_rows[$F, $g,](o, w, s, x, xsp, $cols)),)*
                _ => by_tile!(tile, group_rows[$F,](o, w, s, x, xsp, $cols, $group)),
            }
            r += tile;
        }
    }};
}

/// `$f::<generics…, tile>(args)` for a tile of 8, 4 or 1 rows.
#[cfg(target_arch = "x86_64")]
macro_rules! by_tile {
    ($tile:ident, $f:ident[$($gen:tt)*]$args:tt) => {
        match $tile {
            8 => $f::<$($gen)* 8> $args,
            4 => $f::<$($gen)* 4> $args,
            _ => $f::<$($gen)* 1> $args,
        }
    };
}

#[cfg(target_arch = "x86_64")]
pub mod avx2;
#[cfg(target_arch = "x86_64")]
pub mod avx512_vnni;
#[cfg(target_arch = "aarch64")]
pub mod neon;
mod scalar;

use std::fmt;
use std::marker::PhantomData;

use crate::format::quant::Q8Ref;
use crate::kernels::Isa;

/// An int8 GEMV over weights stored as `U`: `out.len()` rows of `cols` weights
/// (`cols / F::PER_UNIT` units per row) with `cols / group` scales per row in `w_scales`,
/// times the quantised input `x_q` (`cols` values) with its `x_scales`.
///
/// # Safety
/// The caller guarantees the kernel's instruction set is available and the lengths:
/// `group > 0`, `group % F::PER_UNIT == 0`, `cols % group == 0`,
/// `w_q.len() * F::PER_UNIT == out.len() * cols`, `w_scales.len() == out.len() * cols / group`,
/// `x_q.len() == cols`, `x_scales.len() == cols / group`; and that no input value (nor Q8_0
/// weight) is -128.
pub type MatmulFn<U> = unsafe fn(
    out: &mut [f32],
    w_q: &[U],
    w_scales: &[f32],
    x_q: &[i8],
    x_scales: &[f32],
    cols: usize,
    group: usize,
);

/// A weight format the int8 kernels read: how a row is stored and how a chunk of it becomes
/// int8 lanes in natural order on each instruction set.
pub trait Weights: Copy + 'static {
    /// The storage unit of a row.
    type Unit: Copy;
    /// Weights per storage unit.
    const PER_UNIT: usize;
    /// Name for messages, e.g. `"Q8Kernels"`.
    const NAME: &'static str;
    /// The largest row tile (8 or 4) of the x86 kernels: each input chunk is loaded once for
    /// that many weight streams.
    const TILE: usize;
    /// Whether the AVX-512 kernel, for 64-value groups, multiplies the dot by the input scale
    /// and then takes the weight scale as an FMA operand broadcast straight from memory
    /// (Q8_0, measured faster), rather than multiplying the two scales first (Q4_0). The two
    /// round differently; each format keeps its order so that results do not change.
    const VNNI_SCALE_DOT_FIRST: bool = false;

    /// Exact i32 dot product of the weights in `w` with `x` (`x.len()` values,
    /// `w.len() * PER_UNIT == x.len()`).
    fn dot(w: &[Self::Unit], x: &[i8]) -> i32;

    /// The 32 weights starting at `p`, as int8.
    ///
    /// # Safety
    /// AVX2 must be available and the units readable.
    #[cfg(target_arch = "x86_64")]
    unsafe fn load_avx2(p: *const Self::Unit) -> core::arch::x86_64::__m256i;

    /// The 64 weights starting at `p`, as int8.
    ///
    /// # Safety
    /// AVX-512F/BW must be available and the units readable.
    #[cfg(target_arch = "x86_64")]
    unsafe fn load_avx512(p: *const Self::Unit) -> core::arch::x86_64::__m512i;

    /// The first `n` (< 64, a multiple of `PER_UNIT`) weights starting at `p`, the other
    /// lanes anything (the matching input lanes are zero); reads only those `n` weights.
    ///
    /// # Safety
    /// AVX-512F/BW must be available and the units readable.
    #[cfg(target_arch = "x86_64")]
    unsafe fn load_avx512_masked(p: *const Self::Unit, n: usize) -> core::arch::x86_64::__m512i;

    /// The 16 weights starting at `p`, as int8.
    ///
    /// # Safety
    /// The units must be readable.
    #[cfg(target_arch = "aarch64")]
    unsafe fn load_neon(p: *const Self::Unit) -> core::arch::aarch64::int8x16_t;
}

/// [`Weights::dot`] of the `n` weights from weight `at` of the row at `w` with the `n`
/// input values at `x`: the scalar tails of the SIMD kernels.
///
/// # Safety
/// The weights and inputs must be readable; `at` and `n` multiples of `PER_UNIT`.
#[inline]
unsafe fn dot_tail<F: Weights>(w: *const F::Unit, at: usize, x: *const i8, n: usize) -> i32 {
    F::dot(
        std::slice::from_raw_parts(w.add(at / F::PER_UNIT), n / F::PER_UNIT),
        std::slice::from_raw_parts(x, n),
    )
}

/// Asks for the line at `w + offset` units, the x86 kernels' way to stream the next tile's rows
/// while this tile computes. Rows are short (a few hundred bytes to a few KiB), too short for
/// the hardware prefetchers to ramp up on eight interleaved streams: this made the VNNI kernel
/// 1.2–1.5× and the AVX2 one about 1.7× faster from DRAM. A prefetch past the
/// end of the matrix is harmless (no fault), hence `wrapping_add`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn prefetch<T>(w: *const T, offset: usize) {
    // SAFETY: prefetching never faults and reads nothing architecturally.
    unsafe {
        core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(
            w.wrapping_add(offset).cast(),
        )
    }
}

/// The int8 code paths, shared by both formats (a backend forced onto one path runs Q8_0 and
/// Q4_0 on it).
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

    fn kernel<F: Weights>(self) -> MatmulFn<F::Unit> {
        match self {
            #[cfg(target_arch = "x86_64")]
            Q8Isa::Avx2 => avx2::matmul::<F>,
            #[cfg(target_arch = "x86_64")]
            Q8Isa::Avx512Vnni => avx512_vnni::matmul::<F>,
            #[cfg(target_arch = "aarch64")]
            Q8Isa::NeonDotprod => neon::matmul_dotprod::<F>,
            #[cfg(target_arch = "aarch64")]
            Q8Isa::Neon => neon::matmul_widen::<F>,
            _ => scalar::matmul::<F>,
        }
    }
}

impl fmt::Display for Q8Isa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The int8 GEMV of one instruction set for weight format `F`, chosen once.
pub struct Kernels<F: Weights> {
    isa: Q8Isa,
    kernel: MatmulFn<F::Unit>,
    format: PhantomData<F>,
}

// By hand: a derive would demand `F: Clone`, which the marker types need not be.
impl<F: Weights> Clone for Kernels<F> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<F: Weights> Copy for Kernels<F> {}

impl<F: Weights> fmt::Debug for Kernels<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}({})", F::NAME, self.isa)
    }
}

impl<F: Weights> Kernels<F> {
    /// The best path this CPU supports.
    pub fn detect() -> Self {
        Self::for_isa(Q8Isa::best()).expect("the best path is supported")
    }

    /// The kernels of `isa`, or `None` when this CPU cannot run it.
    pub fn for_isa(isa: Q8Isa) -> Option<Self> {
        isa.is_supported().then(|| Self {
            isa,
            kernel: isa.kernel::<F>(),
            format: PhantomData,
        })
    }

    /// The path in use.
    pub fn isa(&self) -> Q8Isa {
        self.isa
    }

    /// `out = W · x` for a matrix of `out.len()` rows of `x.q.len()` columns, stored as
    /// `w_q` with `w_scales` per `w_group` weights.
    ///
    /// # Panics
    /// When the lengths or group sizes disagree (checked once per call, not per row).
    pub(crate) fn run(
        &self,
        out: &mut [f32],
        w_q: &[F::Unit],
        w_scales: &[f32],
        w_group: usize,
        x: Q8Ref,
    ) {
        let (rows, cols, group) = (out.len(), x.q.len(), x.group);
        assert!(
            group > 0
                && group.is_multiple_of(F::PER_UNIT)
                && w_group == group
                && cols.is_multiple_of(group)
                && w_q.len() * F::PER_UNIT == rows * cols
                && w_scales.len() == rows * (cols / group)
                && x.scales.len() == cols / group,
            "{} matmul: shapes disagree (rows {rows}, cols {cols}, group {group}/{w_group}, {} weight bytes, {} scales, {} input scales)",
            F::NAME,
            w_q.len(),
            w_scales.len(),
            x.scales.len()
        );
        // SAFETY: `for_isa` only builds this value after the CPU check, the assertion above is
        // the length contract, and the quantisers never produce -128.
        unsafe { (self.kernel)(out, w_q, w_scales, x.q, x.scales, cols, group) }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;
    use crate::base::rng::Rng;
    use crate::format::quant::{quantize_activations, quantize_q4_weights, quantize_weights};
    use crate::kernels::q4::{self, Q4};
    use crate::kernels::q8::{self, Q8};

    /// A weight quantiser: `(w, group, q, scales)`.
    type Quantizer<U> = fn(&[f32], usize, &mut [U], &mut [f32]);

    /// An f64 reference product: `(W·x, Σ|w·x|)` per row from `(wq, ws, xq, xs, cols, group)`.
    type Reference<U> = fn(&[U], &[f32], &[i8], &[f32], usize, usize) -> (Vec<f64>, Vec<f64>);

    /// What the shared tests need of a format beyond the kernels: its weight quantiser
    /// the units it writes per weight, and its f64 reference.
    trait Format: Weights {
        const QUANTIZE: Quantizer<Self::Unit>;
        const REFERENCE: Reference<Self::Unit>;

        fn quantize(w: &[f32], group: usize) -> (Vec<Self::Unit>, Vec<f32>)
        where
            Self::Unit: Default,
        {
            let mut q = vec![Self::Unit::default(); w.len() / Self::PER_UNIT];
            let mut s = vec![0f32; w.len() / group];
            Self::QUANTIZE(w, group, &mut q, &mut s);
            (q, s)
        }
    }

    impl Format for Q8 {
        const QUANTIZE: Quantizer<i8> = quantize_weights;
        const REFERENCE: Reference<i8> = q8::reference::matmul;
    }

    impl Format for Q4 {
        const QUANTIZE: Quantizer<u8> = quantize_q4_weights;
        const REFERENCE: Reference<u8> = q4::reference::matmul;
    }

    fn supported<F: Weights>() -> Vec<Kernels<F>> {
        Q8Isa::all()
            .iter()
            .filter_map(|&i| Kernels::for_isa(i))
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

    fn quantize_input(x: &[f32], group: usize) -> (Vec<i8>, Vec<f32>) {
        let (mut q, mut s) = (vec![0i8; x.len()], vec![0f32; x.len() / group]);
        quantize_activations(x, group, &mut q, &mut s);
        (q, s)
    }

    /// Every supported kernel of `F` against the f64 product of the dequantised values, over
    /// row counts that exercise every tile and the single-row remainder, the given group
    /// sizes (chosen to take both loops of every SIMD kernel: packed 4 to 64 where they divide
    /// the vector, per group otherwise) and row lengths of 1 to 40 groups (so that even groups
    /// of 4 fill whole 64-value chunks before the masked or scalar tails).
    fn matches_f64_reference<F: Format<Unit: Default>>(seed: u64, groups: &[usize]) {
        let mut rng = Rng::new(seed);
        let groups_per_row = [1, 2, 3, 5, 9, 17, 40];
        let rows_list = [1, 3, 4, 5, 9, 13];
        let mut exercised = HashSet::new();
        for k in supported::<F>() {
            for &group in groups {
                for &gpr in &groups_per_row {
                    let cols = group * gpr;
                    for &rows in &rows_list {
                        let (wq, ws) = F::quantize(&random(&mut rng, rows * cols, group), group);
                        let (xq, xs) = quantize_input(&random(&mut rng, cols, group), group);
                        let x = Q8Ref {
                            q: &xq,
                            scales: &xs,
                            group,
                        };
                        let mut out = rng.vec(rows); // garbage must be overwritten
                        k.run(&mut out, &wq, &ws, group, x);
                        let (want, mag) = F::REFERENCE(&wq, &ws, &xq, &xs, cols, group);
                        for r in 0..rows {
                            let tol = 1e-5 * mag[r] + 1e-30;
                            assert!(
                                (out[r] as f64 - want[r]).abs() <= tol,
                                "{k:?} {rows}x{cols} group {group} row {r}: got {}, want {} (tolerance {tol})",
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

    #[test]
    fn q8_matches_f64_reference_of_dequantised_values() {
        let groups = [1, 2, 3, 4, 8, 12, 16, 20, 32, 48, 64, 96, 128, 200];
        matches_f64_reference::<Q8>(0x08_5eed, &groups);
    }

    #[test]
    fn q4_matches_f64_reference_of_dequantised_values() {
        let groups = [2, 4, 6, 8, 12, 16, 32, 48, 64, 96, 128, 200];
        matches_f64_reference::<Q4>(0x04_5eed, &groups);
    }

    /// Two rows of `weights(cols)` against ±127 inputs: exact on every path (no saturation).
    fn extremes_are_exact<F: Format>(groups: &[usize], weights: fn(usize) -> Vec<F::Unit>) {
        for k in supported::<F>() {
            for &group in groups {
                let cols = group * 3;
                let wq = weights(cols);
                let xq: Vec<i8> = (0..cols)
                    .map(|i| if i % 3 == 0 { -127 } else { 127 })
                    .collect();
                let ws = vec![0.5f32; 2 * cols / group];
                let xs = vec![0.25f32; cols / group];
                let mut out = [0.0f32; 2];
                let x = Q8Ref {
                    q: &xq,
                    scales: &xs,
                    group,
                };
                k.run(&mut out, &wq, &ws, group, x);
                let (want, _) = F::REFERENCE(&wq, &ws, &xq, &xs, cols, group);
                assert_eq!(
                    out.map(f64::from),
                    [want[0], want[1]],
                    "{k:?} group {group}"
                );
            }
        }
    }

    /// ±127 weights (the largest i16 pair sums of the AVX2 path) in alternating signs.
    #[test]
    fn q8_extreme_values_do_not_saturate() {
        extremes_are_exact::<Q8>(&[4, 32, 64], |cols| {
            (0..2 * cols)
                .map(|i| if i % 2 == 0 { -127 } else { 127 })
                .collect()
        });
    }

    /// Every nibble value (-8 included, which only hand-made files hold).
    #[test]
    fn q4_extreme_values_are_exact() {
        extremes_are_exact::<Q4>(&[4, 32, 64, 96], |cols| {
            (0..cols).map(|i| (i * 37 % 256) as u8).collect()
        });
    }

    /// Eight weights against an input of 8 values, but three rows asked for.
    fn wrong_lengths<F: Weights>(wq: &[F::Unit]) {
        let (xq, s) = ([3i8; 8], [1.0f32; 2]);
        let x = Q8Ref {
            q: &xq,
            scales: &s,
            group: 4,
        };
        Kernels::<F>::detect().run(&mut [0.0; 3], wq, &s, 4, x);
    }

    #[test]
    #[should_panic(expected = "Q8Kernels matmul: shapes disagree")]
    fn q8_matmul_rejects_wrong_lengths() {
        wrong_lengths::<Q8>(&[1; 8]);
    }

    #[test]
    #[should_panic(expected = "Q4Kernels matmul: shapes disagree")]
    fn q4_matmul_rejects_wrong_lengths() {
        wrong_lengths::<Q4>(&[0x19; 4]);
    }

    #[test]
    fn every_supported_path_is_reachable() {
        assert_eq!(Kernels::<Q8>::detect().isa(), Q8Isa::best());
        for &isa in Q8Isa::all() {
            assert_eq!(
                Kernels::<Q8>::for_isa(isa).is_some(),
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
}
