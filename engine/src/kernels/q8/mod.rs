//! Runtime-shape int8 GEMV for Q8_0 weights: `out[r] = Σ_groups f32(Σ w_q·x_q) · w_scale · x_scale`,
//! the activations having been quantised once per GEMV input (see [`crate::format::quant`]).
//!
//! The kernels are the shared int8 ones ([`super::int8`]) reading one int8 per weight; this
//! module supplies the loads ([`Q8`]) and the entry point ([`Q8Kernels`]). `reference` is the
//! f64 yardstick every kernel is tested against.

pub mod reference;

#[cfg(target_arch = "x86_64")]
use core::arch::x86_64::*;

pub use super::int8::Q8Isa;
use super::int8::{Kernels, Weights};
use crate::format::quant::Q8Ref;

/// The Q8_0 weight format: one int8 per weight, in [-127, 127].
#[derive(Debug, Clone, Copy)]
pub struct Q8;

impl Weights for Q8 {
    type Unit = i8;
    const PER_UNIT: usize = 1;
    const NAME: &'static str = "Q8Kernels";
    const TILE: usize = 8;
    const VNNI_SCALE_DOT_FIRST: bool = true;

    fn dot(w: &[i8], x: &[i8]) -> i32 {
        w.iter().zip(x).map(|(&a, &b)| a as i32 * b as i32).sum()
    }

    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn load_avx2(p: *const i8) -> __m256i {
        _mm256_loadu_si256(p.cast())
    }

    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw")]
    unsafe fn load_avx512(p: *const i8) -> __m512i {
        _mm512_loadu_si512(p.cast())
    }

    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw")]
    unsafe fn load_avx512_masked(p: *const i8, n: usize) -> __m512i {
        _mm512_maskz_loadu_epi8(super::int8::avx512_vnni::byte_mask(n), p)
    }

    #[cfg(target_arch = "aarch64")]
    #[inline]
    #[target_feature(enable = "neon")]
    unsafe fn load_neon(p: *const i8) -> core::arch::aarch64::int8x16_t {
        core::arch::aarch64::vld1q_s8(p)
    }
}

/// The Q8_0 GEMV of one instruction set, chosen once.
pub type Q8Kernels = Kernels<Q8>;

impl Q8Kernels {
    /// `out = W · x` for a Q8_0 matrix of `out.len()` rows of `x.q.len()` columns.
    ///
    /// # Panics
    /// When the lengths or group sizes disagree (checked once per call, not per row).
    pub fn matmul(&self, out: &mut [f32], w: Q8Ref, x: Q8Ref) {
        self.run(out, w.q, w.scales, w.group, x)
    }
}
