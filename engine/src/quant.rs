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

use std::fs::File;
use std::io::{BufWriter, Write};
use std::ops::Range;
use std::path::Path;

use model_config::{CheckpointFormat, CheckpointLayout, ModelConfig, WeightFormat};
use thiserror::Error;

use crate::aligned::{AlignedBytes, AlignedVec};
use crate::model::Model;

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

/// What a GEMV multiplies its matrix by: the f32 vector, and for Q8_0 models its
/// quantised copy (made once per input, shared by every matrix that reads it).
#[derive(Debug, Clone, Copy)]
pub struct GemvInput<'a> {
    /// The input in f32.
    pub x: &'a [f32],
    /// The input quantised with the model's group size (Q8_0 models only).
    pub q8: Option<Q8Ref<'a>>,
}

/// The buffer every GEMV input of a Q8_0 model is quantised into, allocated once
/// (64-byte aligned, long enough for the longest input). Does nothing for f32 models.
#[derive(Debug)]
pub struct InputQuantizer {
    group: Option<usize>,
    q: AlignedBytes,
    scales: AlignedVec,
}

impl InputQuantizer {
    /// Buffers for inputs of up to `max_len` values in `format`.
    pub fn new(format: WeightFormat, max_len: usize) -> Self {
        let group = format.group_size();
        let (q_len, s_len) = match group {
            Some(g) => (max_len, max_len / g),
            None => (0, 0),
        };
        Self {
            group,
            q: AlignedBytes::zeros(q_len),
            scales: AlignedVec::zeros(s_len),
        }
    }

    /// `x` as a GEMV input: for Q8_0, quantised (activation rounding) into the buffer.
    /// Allocates nothing.
    #[inline]
    pub fn input<'a>(&'a mut self, x: &'a [f32]) -> GemvInput<'a> {
        let Some(group) = self.group else {
            return GemvInput { x, q8: None };
        };
        let q = &mut self.q.as_i8_mut()[..x.len()];
        let scales = &mut self.scales[..x.len() / group];
        quantize_activations(x, group, q, scales);
        GemvInput {
            x,
            q8: Some(Q8Ref { q, scales, group }),
        }
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
    /// The input is already quantised.
    #[error("{0} is already a Q8_0 (v2) checkpoint; quantize reads f32 (v0 or v1) checkpoints")]
    AlreadyQuantized(String),
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

/// The group size `quantize` uses: `requested` when it divides both `dim` and `hidden_dim`,
/// else the largest power of two below it that does (returned with `true`: it backed off).
/// Refused when `requested` is not a multiple of 4 or nothing of at least 4 fits.
pub fn choose_group(cfg: &ModelConfig, requested: usize) -> Result<(usize, bool), QuantizeError> {
    if requested < 4 || !requested.is_multiple_of(4) {
        return Err(QuantizeError::BadGroup(requested));
    }
    let fits = |g: usize| cfg.dim.is_multiple_of(g) && cfg.hidden_dim.is_multiple_of(g);
    if fits(requested) {
        return Ok((requested, false));
    }
    let mut g = 1usize << (usize::BITS - 1 - requested.leading_zeros());
    while g >= 4 {
        if fits(g) {
            return Ok((g, true));
        }
        g /= 2;
    }
    Err(QuantizeError::NoGroup {
        dim: cfg.dim,
        hidden: cfg.hidden_dim,
    })
}

/// Largest `|w - q * scale|` seen while quantising, per tensor (as export.py reports it).
#[derive(Debug, Clone, Default)]
pub struct QuantizeReport {
    /// `(tensor, max abs error)` in file order.
    pub max_error: Vec<(&'static str, f32)>,
}

/// Writes `model` (f32, v0 or v1) as a llama2.c v2 (Q8_0) checkpoint with `group` to `path`.
/// `group` must divide `dim` and `hidden_dim` (see [`choose_group`]).
pub fn write_q8_checkpoint(
    model: &Model,
    group: usize,
    path: &Path,
) -> Result<QuantizeReport, QuantizeError> {
    if model.format() == CheckpointFormat::V2 {
        return Err(QuantizeError::AlreadyQuantized(
            model.path().display().to_string(),
        ));
    }
    let cfg = ModelConfig {
        weight_format: WeightFormat::Q8_0 { group_size: group },
        ..model.config().clone()
    };
    cfg.validate().map_err(|_| QuantizeError::BadGroup(group))?;
    let layout = CheckpointLayout::for_config(&cfg, CheckpointFormat::V2);
    let io = |source| QuantizeError::Io {
        path: path.display().to_string(),
        source,
    };
    let mut out = BufWriter::with_capacity(1 << 20, File::create(path).map_err(io)?);
    out.write_all(&layout.header()).map_err(io)?;
    let mut at = layout.header_bytes;
    for (name, span) in layout.tensors() {
        debug_assert_eq!(span.offset, at);
        let src = model.f32_tensor(name, None).expect("the norms are f32");
        write_f32(&mut out, src).map_err(io)?;
        at += src.len() * 4;
    }
    let mut report = QuantizeReport::default();
    let (mut q, mut s) = (Vec::new(), Vec::new());
    for (name, layer, span) in layout.quantized() {
        debug_assert_eq!(span.offset, at);
        let src = model
            .f32_tensor(name, Some(layer))
            .expect("an f32 model has f32 matrices");
        if let Some(i) = src.iter().position(|v| !v.is_finite()) {
            return Err(QuantizeError::NonFinite {
                tensor: name,
                index: layer * src.len() + i,
            });
        }
        q.resize(src.len(), 0i8);
        s.resize(src.len() / group, 0f32);
        quantize_weights(src, group, &mut q, &mut s);
        let err = src
            .chunks_exact(group)
            .zip(q.chunks_exact(group).zip(&s))
            .flat_map(|(x, (q, &s))| {
                x.iter()
                    .zip(q)
                    .map(move |(&x, &q)| (x - q as f32 * s).abs())
            })
            .fold(0.0f32, f32::max);
        match report.max_error.last_mut() {
            Some((n, e)) if *n == name => *e = e.max(err),
            _ => report.max_error.push((name, err)),
        }
        // SAFETY: i8 and u8 have the same size and every bit pattern is valid for both.
        let bytes = unsafe { std::slice::from_raw_parts(q.as_ptr().cast::<u8>(), q.len()) };
        out.write_all(bytes).map_err(io)?;
        write_f32(&mut out, &s).map_err(io)?;
        at = span.end();
    }
    debug_assert_eq!(at, layout.file_bytes);
    out.flush().map_err(io)?;
    Ok(report)
}

fn write_f32(out: &mut impl Write, v: &[f32]) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(v.len().min(1 << 18) * 4);
    for chunk in v.chunks(1 << 18) {
        buf.clear();
        chunk
            .iter()
            .for_each(|x| buf.extend_from_slice(&x.to_le_bytes()));
        out.write_all(&buf)?;
    }
    Ok(())
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
        let mut rng = crate::rng::Rng::new(9);
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
        assert_eq!(choose_group(&s260k, 64).unwrap(), (4, true));
        let s15m = preset("stories15m").unwrap(); // dim 288, hidden 768
        assert_eq!(choose_group(&s15m, 64).unwrap(), (32, true));
        assert_eq!(choose_group(&s15m, 96).unwrap(), (96, false));
        let s110m = preset("stories110m").unwrap(); // dim 768, hidden 2048
        assert_eq!(choose_group(&s110m, 64).unwrap(), (64, false));
        assert_eq!(choose_group(&s110m, 100).unwrap(), (64, true));
        assert!(matches!(
            choose_group(&s110m, 2),
            Err(QuantizeError::BadGroup(2))
        ));
        assert!(matches!(
            choose_group(&s110m, 6),
            Err(QuantizeError::BadGroup(6))
        ));
        let mut odd = s260k.clone();
        (odd.dim, odd.hidden_dim) = (36, 98);
        assert!(matches!(
            choose_group(&odd, 64),
            Err(QuantizeError::NoGroup {
                dim: 36,
                hidden: 98
            })
        ));
    }

    #[test]
    fn input_quantizer_is_a_no_op_for_f32() {
        let mut f = InputQuantizer::new(WeightFormat::F32, 100);
        let x = [1.0f32; 8];
        assert!(f.input(&x).q8.is_none());
        let mut q = InputQuantizer::new(WeightFormat::Q8_0 { group_size: 4 }, 16);
        let x = [254.0, -100.0, 50.0, 0.0, 3.0, 3.0, 3.0, -3.0];
        let got = q.input(&x).q8.unwrap();
        assert_eq!(got.q, [127, -50, 25, 0, 127, 127, 127, -127]);
        assert_eq!(got.scales, [2.0, 3.0 / 127.0]);
        assert_eq!(got.q.as_ptr() as usize % 64, 0);
    }
}
