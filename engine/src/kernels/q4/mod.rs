//! Runtime-shape GEMV for Q4_0 weights: `out[r] = Σ_groups f32(Σ w_q·x_q) · w_scale · x_scale`,
//! the 4-bit weights unpacked to int8 in registers and the activations quantised to int8
//! once per GEMV input with the Q4 group size (see [`crate::format::quant`]).
//!
//! The kernels are the shared int8 ones ([`super::int8`]); this module supplies the unpacking
//! loads ([`Q4`]) and the entry point ([`Q4Kernels`]). Unpacking yields the weights as int8
//! in their natural order, so everything downstream is the int8 kernel unchanged: the
//! activations are the same int8 groups, and a group maps to the same i32 lanes. The
//! instruction sets are the int8 ones ([`Q8Isa`]), so a backend forced onto one path runs both
//! formats on it. `reference` is the f64 yardstick.
//!
//! * **AVX-512 / AVX2**: 32 (16) packed bytes are zero-extended to u16 lanes (`vpmovzxbw`), so
//!   lane `i` holds byte `i` = `0x00HL` (H the high nibble, element `2i + 1`; L the low,
//!   element `2i`). `lane | lane << 4` = `0x0H?L`, and `& 0x0F0F` leaves bytes `L, H`; `- 8`
//!   gives int8 in [-8, 7] (and -(-8) = 8 still fits when a weight takes x's sign).
//! * **NEON**: 8 packed bytes → low nibbles (`& 0x0F`) and high nibbles (`>> 4`), interleaved
//!   back into natural order with `zip1`/`zip2`, combined into 16 bytes and `- 8`.

pub mod reference;

#[cfg(target_arch = "x86_64")]
use core::arch::x86_64::*;

pub use super::int8::Q8Isa;
use super::int8::{Kernels, Weights};
use crate::format::quant::{Q4Ref, Q8Ref};

/// The Q4_0 weight format: two 4-bit weights per byte (element `2i` in the low nibble), each
/// `nibble - 8`.
#[derive(Debug, Clone, Copy)]
pub struct Q4;

impl Weights for Q4 {
    type Unit = u8;
    const PER_UNIT: usize = 2;
    const NAME: &'static str = "Q4Kernels";
    // Four-row tiles: the unpacking takes registers the int8 kernels spend on more rows.
    const TILE: usize = 4;

    fn dot(w: &[u8], x: &[i8]) -> i32 {
        w.iter()
            .zip(x.chunks_exact(2))
            .map(|(&b, x)| {
                let lo = (b & 0x0F) as i32 - 8;
                let hi = (b >> 4) as i32 - 8;
                lo * x[0] as i32 + hi * x[1] as i32
            })
            .sum()
    }

    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn load_avx2(p: *const u8) -> __m256i {
        let z = _mm256_cvtepu8_epi16(_mm_loadu_si128(p.cast()));
        let z = _mm256_or_si256(z, _mm256_slli_epi16::<4>(z));
        let z = _mm256_and_si256(z, _mm256_set1_epi16(0x0F0F));
        _mm256_sub_epi8(z, _mm256_set1_epi8(8))
    }

    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw")]
    unsafe fn load_avx512(p: *const u8) -> __m512i {
        unpack_avx512(_mm256_loadu_si256(p.cast()))
    }

    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw")]
    unsafe fn load_avx512_masked(p: *const u8, n: usize) -> __m512i {
        // A 512-bit masked load (AVX-512BW; the 256-bit form would need AVX-512VL) of the
        // `n / 2` bytes, of which the low half is kept. The zero bytes beyond unpack to -8,
        // harmless against the zeroed input lanes.
        let mask = super::int8::avx512_vnni::byte_mask(n / 2);
        unpack_avx512(_mm512_castsi512_si256(_mm512_maskz_loadu_epi8(
            mask,
            p.cast(),
        )))
    }

    #[cfg(target_arch = "aarch64")]
    #[inline]
    #[target_feature(enable = "neon")]
    unsafe fn load_neon(p: *const u8) -> core::arch::aarch64::int8x16_t {
        use core::arch::aarch64::*;
        let b = vld1_u8(p);
        let lo = vand_u8(b, vdup_n_u8(0x0F));
        let hi = vshr_n_u8::<4>(b);
        let n = vcombine_u8(vzip1_u8(lo, hi), vzip2_u8(lo, hi));
        vsubq_s8(vreinterpretq_s8_u8(n), vdupq_n_s8(8))
    }
}

/// 32 packed bytes → 64 int8 weights in natural order.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn unpack_avx512(b: __m256i) -> __m512i {
    let z = _mm512_cvtepu8_epi16(b);
    let z = _mm512_or_si512(z, _mm512_slli_epi16::<4>(z));
    let z = _mm512_and_si512(z, _mm512_set1_epi16(0x0F0F));
    _mm512_sub_epi8(z, _mm512_set1_epi8(8))
}

/// The Q4_0 GEMV of one instruction set, chosen once.
pub type Q4Kernels = Kernels<Q4>;

impl Q4Kernels {
    /// `out = W · x` for a Q4_0 matrix of `out.len()` rows of `x.q.len()` columns.
    ///
    /// # Panics
    /// When the lengths or group sizes disagree (checked once per call, not per row).
    pub fn matmul(&self, out: &mut [f32], w: Q4Ref, x: Q8Ref) {
        self.run(out, w.q, w.scales, w.group, x)
    }
}
