//! Portable kernels: eight independent partial sums so the compiler can vectorise and
//! the FMA/add latency is hidden even without explicit SIMD.

use super::{tail_dot, Elem};

const LANES: usize = 8;

fn dot<T: Elem>(a: &[T], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    let (ac, at) = a.as_chunks::<LANES>();
    let (bc, bt) = b.as_chunks::<LANES>();
    for (x, y) in ac.iter().zip(bc) {
        for l in 0..LANES {
            acc[l] += x[l].to_f32() * y[l];
        }
    }
    acc.iter().sum::<f32>() + tail_dot(at, bt)
}

pub fn matmul(out: &mut [f32], w: &[f32], x: &[f32]) {
    matmul_of(out, w, x)
}

/// `matmul` over binary16 rows (the f16 key cache), widened exactly before each product.
pub fn matmul_f16(out: &mut [f32], w: &[u16], x: &[f32]) {
    matmul_of(out, w, x)
}

fn matmul_of<T: Elem>(out: &mut [f32], w: &[T], x: &[f32]) {
    for (o, row) in out.iter_mut().zip(w.chunks_exact(x.len())) {
        *o = dot(row, x);
    }
}

pub fn sum_squares(x: &[f32]) -> f32 {
    dot(x, x)
}

pub fn weighted_sum(out: &mut [f32], weights: &[f32], rows: &[f32]) {
    weighted_sum_of(out, weights, rows)
}

/// `weighted_sum` over binary16 rows (the f16 value cache).
pub fn weighted_sum_f16(out: &mut [f32], weights: &[f32], rows: &[u16]) {
    weighted_sum_of(out, weights, rows)
}

fn weighted_sum_of<T: Elem>(out: &mut [f32], weights: &[f32], rows: &[T]) {
    out.fill(0.0);
    for (&w, row) in weights.iter().zip(rows.chunks_exact(out.len().max(1))) {
        for (o, &v) in out.iter_mut().zip(row) {
            *o += w * v.to_f32();
        }
    }
}
/// Keeps `f32::exp`: this is the fallback for CPUs without SIMD, not a hot path.
pub fn softmax(x: &mut [f32], scale: f32) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for v in x.iter_mut() {
        *v = ((*v - max) * scale).exp();
        sum += *v;
    }
    x.iter_mut().for_each(|v| *v /= sum);
}

/// The activation quantiser for CPUs without SIMD: the reference itself.
pub fn quantize_activations(x: &[f32], group: usize, q: &mut [i8], scales: &mut [f32]) {
    crate::format::quant::quantize_activations(x, group, q, scales)
}

/// The bits of `max |x|` (0 for an empty slice). For non-negative floats the integer order of
/// the bit patterns is the float order, and NaNs sort above infinity, so the SIMD paths fold
/// the maximum with integer max instead of the reference's NaN-aware float compare chain.
pub(super) fn max_abs_bits(x: &[f32]) -> u32 {
    x.iter()
        .map(|v| v.to_bits() & 0x7FFF_FFFF)
        .max()
        .unwrap_or(0)
}

/// One activation value: `clamp(round_half_away(v / scale), ±127)`, as the reference.
#[inline]
pub(super) fn quantize_value(v: f32, scale: f32) -> i8 {
    crate::format::quant::round_half_away(v / scale)
        .clamp(-crate::format::quant::Q_MAX, crate::format::quant::Q_MAX) as i8
}

/// The scale of a group whose `max |x|` has bits `max_bits`, and whether its values need
/// quantising: a zero scale (all zeros, or a max that underflows) and a NaN or infinite one
/// (corrupt input) both leave every q at 0 in the reference, since `v / scale` is then
/// ±∞, ±0 or NaN and `round_half_away` maps NaN to 0.
#[inline]
pub(super) fn group_scale(max_bits: u32) -> (f32, bool) {
    let scale = f32::from_bits(max_bits) / crate::format::quant::Q_MAX;
    (scale, scale != 0.0 && scale.is_finite())
}
