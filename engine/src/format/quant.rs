//! Q8_0 quantisation (llama2.c's v2 format): int8 values with one f32 scale per group of
//! `group` consecutive values of a row, `value ≈ q * scale`, `scale = max|group| / 127`.
//!
//! Rounding, one rule per side, each as llama2.c does it:
//! * **weights** ([`quantize_weights`], used by `baremetal quantize`): `q = round(w / scale)`
//!   with ties to even, as `torch.round` in llama2.c's `export.py`, so our v2 files hold the
//!   same bytes export.py would write for the same f32 weights;
//! * **activations** ([`quantize_activations`], once per GEMV input at run time):
//!   `q = round(x / scale)` with ties away from zero, as C's `round()` in llama2.c's `runq.c`.
//!
//! Both divide by the f32 scale (not multiply by its inverse) and clamp to [-127, 127], so -128
//! never occurs (the int8 kernels rely on that). A group whose values are all zero gets scale 0
//! and q 0 (llama2.c would divide 0 by 0 there).
//!
//! Group size policy for `quantize` ([`choose_group`]): a group must not straddle two rows, so
//! it has to divide every row length (`dim` and `hidden_dim`). We keep the v2 format exactly
//! (no ragged last groups: llama2.c's reader could not follow them) and pick a group that
//! divides every row instead.
//!
//! Q4_0 (baremetal's v3 format, docs/FORMATS.md): 4-bit weights `q` in [-8, 7] stored as
//! `q + 8`, two per byte (element `2i` in the low nibble), with `scale = max|group| / 7` and
//! `q = round_ties_even(w / scale)` clamped to [-8, 7] ([`quantize_q4_weights`]). The
//! activations a Q4_0 matrix multiplies are quantised to int8 exactly as for Q8_0, with the
//! Q4 group size.

use std::ops::Range;

use model_config::{CheckpointFormat, CheckpointLayout, ModelConfig, WeightFormat};
use thiserror::Error;

/// The largest magnitude a quantised value takes.
pub const Q_MAX: f32 = 127.0;

/// A Q8_0 matrix (`q.len() / cols` rows) or vector: int8 values and one scale per `group`.
#[derive(Debug, Clone, Copy)]
pub struct Q8Ref<'a> {
    /// The int8 values, row-major.
    pub q: &'a [i8],
    /// One scale per `group` consecutive values.
    pub scales: &'a [f32],
    /// Values per scale.
    pub group: usize,
}

impl<'a> Q8Ref<'a> {
    /// Rows `rows` of a matrix whose rows have `cols` values (`cols` a multiple of `group`).
    #[inline]
    pub fn rows(&self, rows: Range<usize>, cols: usize) -> Q8Ref<'a> {
        let per_row = cols / self.group;
        Q8Ref {
            q: &self.q[rows.start * cols..rows.end * cols],
            scales: &self.scales[rows.start * per_row..rows.end * per_row],
            group: self.group,
        }
    }

    /// Writes `q * scale` for values `range` into `out` (llama2.c's `dequantize`).
    /// `range` must start on a group boundary.
    #[inline]
    pub fn dequantize_into(&self, range: Range<usize>, out: &mut [f32]) {
        debug_assert_eq!(range.start % self.group, 0);
        let g0 = range.start / self.group;
        let q = &self.q[range];
        for ((o, chunk), &s) in out
            .chunks_mut(self.group)
            .zip(q.chunks(self.group))
            .zip(&self.scales[g0..])
        {
            for (o, &v) in o.iter_mut().zip(chunk) {
                *o = v as f32 * s;
            }
        }
    }
}

/// The largest magnitude a Q4_0 scale maps to (`scale = max|w| / 7`): symmetric, so +7
/// and -7 are both reachable and -8 only by clamping (it never occurs for finite inputs).
pub const Q4_MAX: f32 = 7.0;

/// A Q4_0 matrix (`2 * q.len() / cols` rows): packed nibbles (`q + 8`, element `2i` in the
/// low nibble of byte `i`) and one f32 scale per `group` values.
#[derive(Debug, Clone, Copy)]
pub struct Q4Ref<'a> {
    /// The packed values, row-major, two per byte.
    pub q: &'a [u8],
    /// One scale per `group` consecutive values.
    pub scales: &'a [f32],
    /// Values per scale (even).
    pub group: usize,
}

/// The signed 4-bit value of element `i` of packed nibbles `q`.
#[inline]
pub fn q4_value(q: &[u8], i: usize) -> i8 {
    let b = q[i / 2];
    let n = if i.is_multiple_of(2) {
        b & 0x0F
    } else {
        b >> 4
    };
    n as i8 - 8
}

impl<'a> Q4Ref<'a> {
    /// Rows `rows` of a matrix whose rows have `cols` values (`cols` a multiple of `group`,
    /// hence even).
    #[inline]
    pub fn rows(&self, rows: Range<usize>, cols: usize) -> Q4Ref<'a> {
        let per_row = cols / self.group;
        Q4Ref {
            q: &self.q[rows.start * cols / 2..rows.end * cols / 2],
            scales: &self.scales[rows.start * per_row..rows.end * per_row],
            group: self.group,
        }
    }

    /// Writes `q * scale` for values `range` into `out`. `range` must start on a group
    /// boundary (so on a byte boundary: groups are even).
    #[inline]
    pub fn dequantize_into(&self, range: Range<usize>, out: &mut [f32]) {
        debug_assert_eq!(range.start % self.group, 0);
        let g0 = range.start / self.group;
        let bytes = &self.q[range.start / 2..range.end / 2];
        for ((o, chunk), &s) in out
            .chunks_mut(self.group)
            .zip(bytes.chunks(self.group / 2))
            .zip(&self.scales[g0..])
        {
            for (o, &b) in o.chunks_exact_mut(2).zip(chunk) {
                o[0] = ((b & 0x0F) as i8 - 8) as f32 * s;
                o[1] = ((b >> 4) as i8 - 8) as f32 * s;
            }
        }
    }
}

/// Q4_0 weight quantisation: per group `scale = max|w| / 7`, `q = round_ties_even(w / scale)`
/// clamped to [-8, 7] (scale 0 → q 0), packed as `q + 8` two per byte into `q`
/// (`x.len() / 2` bytes). `x.len()` must be a multiple of `group`, `group` even.
pub fn quantize_q4_weights(x: &[f32], group: usize, q: &mut [u8], scales: &mut [f32]) {
    assert!(
        group > 0 && group.is_multiple_of(2) && x.len().is_multiple_of(group),
        "quantize_q4: length {} is not a multiple of the even group {group}",
        x.len()
    );
    assert!(
        q.len() == x.len() / 2 && scales.len() == x.len() / group,
        "quantize_q4: output lengths"
    );
    for ((x, q), s) in x
        .chunks_exact(group)
        .zip(q.chunks_exact_mut(group / 2))
        .zip(scales.iter_mut())
    {
        let wmax = x.iter().fold(0.0f32, |m, v| {
            let a = v.abs();
            if a > m || a.is_nan() {
                a
            } else {
                m
            }
        });
        let scale = wmax / Q4_MAX;
        *s = scale;
        let nibble = |v: f32| -> u8 {
            if scale == 0.0 {
                8
            } else {
                ((v / scale).round_ties_even().clamp(-8.0, 7.0) as i8 + 8) as u8
            }
        };
        for (b, pair) in q.iter_mut().zip(x.chunks_exact(2)) {
            *b = nibble(pair[0]) | (nibble(pair[1]) << 4);
        }
    }
}

/// Quantises one group: `scale = max|x| / 127`, `q = clamp(round(x / scale))` with `round`
/// the side's rounding rule; an all-zero group gets scale 0. A NaN or infinite value makes
/// the scale NaN or infinite, so corrupt inputs reach the logits instead of turning into zeros.
#[inline]
fn quantize_group(x: &[f32], q: &mut [i8], round: impl Fn(f32) -> f32) -> f32 {
    let wmax = x.iter().fold(0.0f32, |m, v| {
        let a = v.abs();
        if a > m || a.is_nan() {
            a
        } else {
            m
        }
    });
    let scale = wmax / Q_MAX;
    if scale == 0.0 {
        q.fill(0);
        return 0.0;
    }
    for (q, &v) in q.iter_mut().zip(x) {
        *q = round(v / scale).clamp(-Q_MAX, Q_MAX) as i8;
    }
    scale
}

/// C's `round()` (halves away from zero) for |v| < 2^23, without the libm call `f32::round`
/// compiles to on baseline x86-64: truncate, then step away from zero when the exact
/// remainder `v - trunc(v)` is at least one half. NaN gives 0 (the cast saturates).
#[inline]
pub fn round_half_away(v: f32) -> f32 {
    let t = v as i32;
    let frac = v - t as f32;
    let r = if frac >= 0.5 {
        t + 1
    } else if frac <= -0.5 {
        t - 1
    } else {
        t
    };
    r as f32
}

/// Weight quantisation (ties to even, as `torch.round` in export.py). `x.len()` must be a
/// multiple of `group`; `q` as long as `x`, `scales` `x.len() / group` long.
pub fn quantize_weights(x: &[f32], group: usize, q: &mut [i8], scales: &mut [f32]) {
    quantize_with(x, group, q, scales, f32::round_ties_even)
}

/// Activation quantisation (ties away from zero, as `round()` in runq.c). Same shapes as
/// [`quantize_weights`].
pub fn quantize_activations(x: &[f32], group: usize, q: &mut [i8], scales: &mut [f32]) {
    quantize_with(x, group, q, scales, round_half_away)
}

fn quantize_with(
    x: &[f32],
    group: usize,
    q: &mut [i8],
    scales: &mut [f32],
    round: impl Fn(f32) -> f32 + Copy,
) {
    assert!(
        group > 0 && x.len().is_multiple_of(group),
        "quantize: length {} is not a multiple of the group {group}",
        x.len()
    );
    assert!(
        q.len() == x.len() && scales.len() == x.len() / group,
        "quantize: output lengths"
    );
    for ((x, q), s) in x
        .chunks_exact(group)
        .zip(q.chunks_exact_mut(group))
        .zip(scales.iter_mut())
    {
        *s = quantize_group(x, q, round);
    }
}

/// Why a checkpoint could not be quantised.
#[derive(Debug, Error)]
pub enum QuantizeError {
    /// No group size of at least 4 divides every row.
    #[error(
        "no group size of 4 or more divides every row length (dim {dim}, hidden_dim {hidden}); \
         Q8_0 groups must not straddle rows, so this model cannot be quantised to Q8_0"
    )]
    NoGroup {
        /// Model width.
        dim: usize,
        /// FFN width.
        hidden: usize,
    },
    /// The requested group size is unusable.
    #[error("--group {0} is not usable: the group size must be a multiple of 4 (int8 kernels work on 4-byte lanes, and it keeps the f32 scales 4-byte aligned)")]
    BadGroup(usize),
    /// The requested Q4_0 group size is unusable.
    #[error("--group {0} is not usable for q4_0: the group size must be even and at least 2 (two 4-bit values per byte)")]
    BadQ4Group(usize),
    /// No Q4_0 group size of at least 2 divides every row (and keeps the scales aligned).
    #[error(
        "no group size of 2 or more divides every row length (dim {dim}, hidden_dim {hidden}) \
         and keeps the f32 scales 4-byte aligned; this model cannot be quantised to Q4_0"
    )]
    NoQ4Group {
        /// Model width.
        dim: usize,
        /// FFN width.
        hidden: usize,
    },
    /// The input is already quantised.
    #[error("{0} is already a quantised (v2 Q8_0 or v3 Q4_0) checkpoint; quantize reads f32 (v0 or v1) checkpoints")]
    AlreadyQuantized(String),
    /// The input is a GGUF file.
    #[error("{0} is a GGUF file; quantize reads llama2.c f32 (v0 or v1) checkpoints (quantise GGUF files with llama.cpp's llama-quantize)")]
    Gguf(String),
    /// A weight is NaN or infinite.
    #[error(
        "tensor `{tensor}` holds a non-finite weight at index {index}; the checkpoint is corrupt"
    )]
    NonFinite {
        /// The tensor.
        tensor: &'static str,
        /// The flat index (within all layers).
        index: usize,
    },
    /// Writing failed.
    #[error("cannot write {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Which quantised format a group size is chosen for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuantFormat {
    /// Int8 weights (llama2.c v2): groups of a multiple of 4 (4-byte int8 lanes, 4-byte
    /// aligned f32 scales).
    Q8_0,
    /// 4-bit weights (baremetal v3): even groups (two values per byte) whose f32 scales land
    /// 4-byte aligned in the file.
    Q4_0,
}

/// The group size `quantize` uses for `format`: `requested` when it divides both `dim` and
/// `hidden_dim` (and, for Q4_0, keeps the file's scales 4-byte aligned), else the largest power
/// of two below it that does (returned with `true`: it backed off). Refused when `requested`
/// is not a valid group for the format, or nothing valid fits.
pub fn choose_group(
    cfg: &ModelConfig,
    format: QuantFormat,
    requested: usize,
) -> Result<(usize, bool), QuantizeError> {
    let (smallest, bad, none) = match format {
        QuantFormat::Q8_0 => (
            4,
            QuantizeError::BadGroup(requested),
            QuantizeError::NoGroup {
                dim: cfg.dim,
                hidden: cfg.hidden_dim,
            },
        ),
        QuantFormat::Q4_0 => (
            2,
            QuantizeError::BadQ4Group(requested),
            QuantizeError::NoQ4Group {
                dim: cfg.dim,
                hidden: cfg.hidden_dim,
            },
        ),
    };
    if requested < smallest || !requested.is_multiple_of(smallest) {
        return Err(bad);
    }
    let fits = |g: usize| match format {
        QuantFormat::Q8_0 => cfg.dim.is_multiple_of(g) && cfg.hidden_dim.is_multiple_of(g),
        QuantFormat::Q4_0 => {
            let c = ModelConfig {
                weight_format: WeightFormat::Q4_0 { group_size: g },
                ..cfg.clone()
            };
            c.validate().is_ok() && q4_scales_aligned(&c)
        }
    };
    if fits(requested) {
        return Ok((requested, false));
    }
    let mut g = 1usize << (usize::BITS - 1 - requested.leading_zeros());
    while g >= smallest {
        if fits(g) {
            return Ok((g, true));
        }
        g /= 2;
    }
    Err(none)
}

/// True when every Q4_0 matrix's scales start 4-byte aligned (the loader reads them in place).
fn q4_scales_aligned(cfg: &ModelConfig) -> bool {
    CheckpointLayout::for_config(cfg, CheckpointFormat::V3)
        .quantized()
        .iter()
        .all(|(_, _, s)| s.scales().offset.is_multiple_of(4))
}

#[cfg(test)]
mod tests {
    use super::*;
    use model_config::preset;

    #[test]
    fn rounding_rules_per_side() {
        // max 127 → scale 1, so x / scale is x itself: the ties show the rule.
        let x = [127.0, 2.5, -2.5, 3.5, -0.5, 0.5, 1.4999, -127.0];
        let (mut qw, mut qa, mut s) = ([0i8; 8], [0i8; 8], [0f32; 1]);
        quantize_weights(&x, 8, &mut qw, &mut s);
        assert_eq!(s[0], 1.0);
        assert_eq!(qw, [127, 2, -2, 4, 0, 0, 1, -127]);
        quantize_activations(&x, 8, &mut qa, &mut s);
        assert_eq!(qa, [127, 3, -3, 4, -1, 1, 1, -127]);
        // An all-zero group: scale 0, values 0 (no NaN).
        quantize_activations(&[0.0; 8], 8, &mut qa, &mut s);
        assert_eq!((qa, s[0]), ([0; 8], 0.0));
    }

    #[test]
    fn round_half_away_is_c_round() {
        let mut rng = crate::base::rng::Rng::new(9);
        let ties = (-300..=300).map(|i| i as f32 * 0.5);
        let near = (-300..=300).flat_map(|i| {
            let h = i as f32 * 0.5;
            [h.next_up(), h.next_down()]
        });
        let random = (0..100_000).map(|_| rng.uniform() * 140.0);
        for v in ties
            .chain(near)
            .chain(random)
            .chain([0.0, -0.0, 127.0, -127.0, 1e-30, -1e-30])
        {
            assert_eq!(round_half_away(v), v.round(), "{v}");
        }
        assert_eq!(round_half_away(f32::NAN), 0.0);
    }

    #[test]
    fn non_finite_inputs_poison_the_scale() {
        let (mut q, mut s) = ([0i8; 4], [0f32; 1]);
        quantize_activations(&[1.0, f32::NAN, 2.0, 3.0], 4, &mut q, &mut s);
        assert!(s[0].is_nan());
        quantize_activations(&[1.0, f32::INFINITY, 2.0, 3.0], 4, &mut q, &mut s);
        assert!(s[0].is_infinite());
    }

    #[test]
    fn group_choice_backs_off_to_a_divisor_of_every_row() {
        let s260k = preset("stories260k").unwrap(); // dim 64, hidden 172 = 4 * 43
        assert_eq!(
            choose_group(&s260k, QuantFormat::Q8_0, 64).unwrap(),
            (4, true)
        );
        let s15m = preset("stories15m").unwrap(); // dim 288, hidden 768
        assert_eq!(
            choose_group(&s15m, QuantFormat::Q8_0, 64).unwrap(),
            (32, true)
        );
        assert_eq!(
            choose_group(&s15m, QuantFormat::Q8_0, 96).unwrap(),
            (96, false)
        );
        let s110m = preset("stories110m").unwrap(); // dim 768, hidden 2048
        assert_eq!(
            choose_group(&s110m, QuantFormat::Q8_0, 64).unwrap(),
            (64, false)
        );
        assert_eq!(
            choose_group(&s110m, QuantFormat::Q8_0, 100).unwrap(),
            (64, true)
        );
        assert!(matches!(
            choose_group(&s110m, QuantFormat::Q8_0, 2),
            Err(QuantizeError::BadGroup(2))
        ));
        assert!(matches!(
            choose_group(&s110m, QuantFormat::Q8_0, 6),
            Err(QuantizeError::BadGroup(6))
        ));
        let mut odd = s260k.clone();
        (odd.dim, odd.hidden_dim) = (36, 98);
        assert!(matches!(
            choose_group(&odd, QuantFormat::Q8_0, 64),
            Err(QuantizeError::NoGroup {
                dim: 36,
                hidden: 98
            })
        ));
    }

    #[test]
    fn q4_pack_unpack_and_round_trip_error_bound() {
        let mut rng = crate::base::rng::Rng::new(0x4b17);
        for group in [2, 4, 32, 96] {
            let n = group * 7;
            let mut x = rng.vec(n);
            // Varied magnitudes per group; exact ties at ±0.5·scale in the first group.
            for (i, g) in x.chunks_mut(group).enumerate() {
                let m = [1.0, 1e-3, 40.0, 0.25][i % 4];
                g.iter_mut().for_each(|v| *v *= m);
            }
            let (mut q, mut s) = (vec![0u8; n / 2], vec![0f32; n / group]);
            quantize_q4_weights(&x, group, &mut q, &mut s);
            let mut deq = vec![0f32; n];
            Q4Ref {
                q: &q,
                scales: &s,
                group,
            }
            .dequantize_into(0..n, &mut deq);
            for i in 0..n {
                let g = i / group;
                let amax = x[g * group..(g + 1) * group]
                    .iter()
                    .fold(0.0f32, |m, v| m.max(v.abs()));
                assert_eq!(s[g], amax / 7.0);
                let v = q4_value(&q, i);
                assert!((-8..=7).contains(&v));
                // The nibble layout: element 2i low, 2i+1 high, stored as q + 8.
                let nib = if i.is_multiple_of(2) {
                    q[i / 2] & 15
                } else {
                    q[i / 2] >> 4
                };
                assert_eq!(nib as i8 - 8, v);
                assert_eq!(deq[i], v as f32 * s[g]);
                let err = (x[i] as f64 - deq[i] as f64).abs();
                assert!(
                    err <= s[g] as f64 / 2.0 * (1.0 + 1e-6),
                    "{i}: {err} vs {}",
                    s[g]
                );
            }
        }
        // Ties go to even; scale 0 gives q 0 (nibble 8).
        let x = [7.0, 2.5, -2.5, 3.5, -0.5, 0.5, -7.0, 1.5];
        let (mut q, mut s) = ([0u8; 4], [0f32; 1]);
        quantize_q4_weights(&x, 8, &mut q, &mut s);
        assert_eq!(s[0], 1.0);
        let vals: Vec<i8> = (0..8).map(|i| q4_value(&q, i)).collect();
        assert_eq!(vals, [7, 2, -2, 4, 0, 0, -7, 2]);
        quantize_q4_weights(&[0.0; 8], 8, &mut q, &mut s);
        assert_eq!((q, s[0]), ([0x88; 4], 0.0));
    }

    #[test]
    fn q4_group_choice() {
        let s260k = preset("stories260k").unwrap();
        assert_eq!(
            choose_group(&s260k, QuantFormat::Q4_0, 32).unwrap(),
            (4, true)
        );
        let s15m = preset("stories15m").unwrap();
        assert_eq!(
            choose_group(&s15m, QuantFormat::Q4_0, 32).unwrap(),
            (32, false)
        );
        let s110m = preset("stories110m").unwrap();
        assert_eq!(
            choose_group(&s110m, QuantFormat::Q4_0, 32).unwrap(),
            (32, false)
        );
        assert!(matches!(
            choose_group(&s110m, QuantFormat::Q4_0, 3),
            Err(QuantizeError::BadQ4Group(3))
        ));
        assert!(matches!(
            choose_group(&s110m, QuantFormat::Q4_0, 0),
            Err(QuantizeError::BadQ4Group(0))
        ));
    }
}
