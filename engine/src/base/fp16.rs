//! IEEE binary16 ("half") conversions for the f16 KV cache, as raw `u16` bits: Rust's `f16`
//! type is unstable, and the cache only needs storing and widening.
//!
//! [`from_f32`] is the reference every SIMD store path (`vcvtps2ph`, `fcvtn`) must equal bit
//! for bit; [`to_f32`] is exact, as every half value is an f32.

/// `x` rounded to the nearest binary16, ties to even: overflow gives ±infinity, results
/// below the normal range are subnormal (or ±0), and a NaN stays a NaN with its top payload
/// bits and the quiet bit set (what x86 `vcvtps2ph` and AArch64 `fcvtn` produce).
pub fn from_f32(x: f32) -> u16 {
    let bits = x.to_bits();
    let sign = ((bits >> 16) & 0x8000) as u16;
    let abs = bits & 0x7FFF_FFFF;
    if abs > 0x7F80_0000 {
        return sign | 0x7E00 | ((abs >> 13) & 0x3FF) as u16;
    }
    let e = (abs >> 23) as i32 - 127;
    if e >= 16 {
        // |x| >= 2^16, infinity included: beyond the largest half (65504) at any rounding.
        return sign | 0x7C00;
    }
    if e >= -14 {
        // Normal: drop 13 mantissa bits; a carry out of the mantissa correctly bumps the
        // exponent, up to infinity for [65520, 65536).
        let h = (((e + 15) as u32) << 10) | ((abs >> 13) & 0x3FF);
        let rest = abs & 0x1FFF;
        let up = rest > 0x1000 || (rest == 0x1000 && h & 1 == 1);
        return sign | (h + up as u32) as u16;
    }
    if e < -25 {
        // Below 2^-25, half the smallest subnormal: rounds to zero (f32 subnormals included).
        return sign;
    }
    // Subnormal: the 24-bit significand in units of 2^-24 is `m >> shift`; rounding up from
    // the largest subnormal gives 0x400, the smallest normal, which is the right encoding.
    let m = (abs & 0x7F_FFFF) | 0x80_0000;
    let shift = (-(e + 1)) as u32; // 14..=24
    let h = m >> shift;
    let rest = m & ((1 << shift) - 1);
    let half = 1 << (shift - 1);
    let up = rest > half || (rest == half && h & 1 == 1);
    sign | (h + up as u32) as u16
}

/// The f32 value of half bits `h` (exact; NaN payloads are kept).
pub fn to_f32(h: u16) -> f32 {
    let sign = ((h & 0x8000) as u32) << 16;
    let exp = ((h >> 10) & 0x1F) as u32;
    let man = (h & 0x3FF) as u32;
    match exp {
        // Subnormals and zero: man · 2^-24, exact in f32.
        0 => f32::from_bits((man as f32 * f32::from_bits(0x3380_0000)).to_bits() | sign),
        0x1F => f32::from_bits(sign | 0x7F80_0000 | (man << 13)),
        _ => f32::from_bits(sign | ((exp + 112) << 23) | (man << 13)),
    }
}

/// Converts `x` into `out` with [`from_f32`] (the portable store path).
pub fn slice_from_f32(out: &mut [u16], x: &[f32]) {
    for (o, &v) in out.iter_mut().zip(x) {
        *o = from_f32(v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::base::rng::Rng;

    fn reference(x: f32) -> u16 {
        half::f16::from_f32(x).to_bits()
    }

    #[test]
    fn every_half_round_trips_exactly() {
        for h in 0..=u16::MAX {
            let f = to_f32(h);
            let want = half::f16::from_bits(h).to_f32();
            if f.is_nan() {
                // `half` sets the quiet bit when widening; we keep the payload as it is.
                assert_eq!(f.to_bits() | 0x0040_0000, want.to_bits(), "{h:#06x}");
            } else {
                assert_eq!(f.to_bits(), want.to_bits(), "to_f32({h:#06x})");
            }
            let back = from_f32(f);
            if f.is_nan() {
                // NaNs come back quiet with the same payload.
                assert_eq!(back, h | 0x0200, "{h:#06x}");
            } else {
                assert_eq!(back, h, "{h:#06x} -> {f} -> {back:#06x}");
            }
        }
    }

    #[test]
    fn random_and_edge_f32_match_the_half_crate() {
        let mut rng = Rng::new(0xf16);
        let check = |x: f32| {
            let got = from_f32(x);
            assert_eq!(got, reference(x), "{x:e} ({:#010x})", x.to_bits());
        };
        for _ in 0..1_000_000 {
            // Uniform bit patterns cover every exponent, NaNs and infinities included.
            check(f32::from_bits(rng.next_u64() as u32));
        }
        for _ in 0..200_000 {
            // Exact halfway points between two halves and their neighbours, normal and
            // subnormal: a half value plus half an ulp of it.
            let h = (rng.next_u64() as u16) & 0x7BFF;
            let lo = to_f32(h) as f64;
            let hi = to_f32(h + 1) as f64;
            let mid = ((lo + hi) / 2.0) as f32;
            let sign = if rng.below(2) == 0 { 1.0 } else { -1.0 };
            for v in [mid, mid.next_up(), mid.next_down()] {
                check(sign * v);
            }
        }
        for x in [
            0.0,
            -0.0,
            65504.0,
            65519.99,
            65520.0,
            65536.0,
            f32::MAX,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            -f32::NAN,
            f32::from_bits(0x7F80_0001),
            f32::from_bits(0xFFBF_FFFF),
            f32::MIN_POSITIVE,
            f32::from_bits(1),
            2f32.powi(-24),
            2f32.powi(-25),
            2f32.powi(-25).next_up(),
            2f32.powi(-14),
            2f32.powi(-14).next_down(),
            2f32.powi(-24) * 1.5,
            2f32.powi(-24) * 2.5,
        ] {
            check(x);
        }
    }
}
