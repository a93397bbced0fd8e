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

use std::fs::File;
use std::io::{BufWriter, Write};
use std::ops::Range;
use std::path::Path;

use model_config::{CheckpointFormat, CheckpointLayout, ModelConfig, WeightFormat};
use thiserror::Error;

use crate::aligned::{AlignedBytes, AlignedVec};
use crate::kernels::GenericKernels;
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

/// What a GEMV (one row) or a batched product (several rows) multiplies its matrix by: the f32
/// rows, and for quantised models their quantised copy (made once per input, shared by every
/// matrix that reads it).
#[derive(Debug, Clone, Copy)]
pub struct GemvInput<'a> {
    /// The input rows in f32, one after another.
    pub x: &'a [f32],
    /// How many rows `x` holds.
    pub rows: usize,
    /// The input quantised with the model's group size (Q8_0 models only).
    pub q8: Option<Q8Ref<'a>>,
    /// `q8` in the tiled block order, when the model has tiled matrices and the input is a
    /// whole number of blocks (see [`InputQuantizer::tile_inputs`]).
    pub tiled: Option<TiledInput<'a>>,
}

/// A quantised input in the tiled layout's block order (`model_config::tiled`); its scales
/// are the untiled input's.
#[derive(Debug, Clone, Copy)]
pub struct TiledInput<'a> {
    /// The int8 values, each 64-value block permuted as the tiled weights.
    pub q: &'a [i8],
    /// `-offset · Σ` of each four values (`model_config::tiled::input_correction`).
    pub corr: &'a [i32],
}

/// The buffer every GEMV input of a Q8_0 model is quantised into, allocated once
/// (64-byte aligned, long enough for the longest input). Does nothing for f32 models.
#[derive(Debug)]
pub struct InputQuantizer {
    group: Option<usize>,
    /// The quantiser's instruction set, picked once (every one gives the same bits).
    kernels: GenericKernels,
    q: AlignedBytes,
    scales: AlignedVec,
    /// Whether inputs are also put in tiled order, and whether they need Q4 corrections.
    tiled: bool,
    q4: bool,
    positions: [u8; model_config::tiled::BLOCK],
    tiled_q: AlignedBytes,
    corr: Vec<i32>,
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
            kernels: GenericKernels::detect(),
            q: AlignedBytes::zeros(q_len),
            scales: AlignedVec::zeros(s_len),
            tiled: false,
            positions: [0; model_config::tiled::BLOCK],
            q4: matches!(format, WeightFormat::Q4_0 { .. }),
            tiled_q: AlignedBytes::zeros(0),
            corr: Vec::new(),
        }
    }

    /// Also provide every input in the tiled block order (for models whose matrices were
    /// tiled), with the Q4_0 lane corrections for Q4_0 models. Allocates once, here.
    pub fn tile_inputs(&mut self) {
        let Some(group) = self.group else { return };
        if !model_config::tiled::tiled_group(group) {
            return;
        }
        self.tiled = true;
        self.positions = model_config::tiled::block_positions(group);
        self.tiled_q = AlignedBytes::zeros(self.q.len());
        self.corr = vec![0; self.q.len() / 4];
    }

    /// `x`, `rows` rows one after another, as a GEMV or batched input: for Q8_0 and Q4_0,
    /// quantised (activation rounding) into the buffer. A group never straddles two rows (it
    /// divides the row length), so quantising the rows together is quantising each alone.
    /// Allocates nothing.
    #[inline]
    pub fn input<'a>(&'a mut self, x: &'a [f32], rows: usize) -> GemvInput<'a> {
        let Some(group) = self.group else {
            return GemvInput {
                x,
                rows,
                q8: None,
                tiled: None,
            };
        };
        let q = &mut self.q.as_i8_mut()[..x.len()];
        let scales = &mut self.scales[..x.len() / group];
        self.kernels.quantize_activations(x, group, q, scales);
        let row = x.len() / rows.max(1);
        let tiled = (self.tiled && row.is_multiple_of(model_config::tiled::BLOCK)).then(|| {
            let tq = &mut self.tiled_q.as_i8_mut()[..x.len()];
            model_config::tiled::tile_input_with(q, &self.positions, tq);
            let offset = if self.q4 {
                model_config::tiled::Q4_OFFSET
            } else {
                model_config::tiled::Q8_OFFSET
            };
            let corr = &mut self.corr[..x.len() / 4];
            model_config::tiled::input_correction(tq, offset, corr);
            TiledInput { q: tq, corr }
        });
        GemvInput {
            x,
            rows,
            q8: Some(Q8Ref { q, scales, group }),
            tiled,
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

/// The Q4_0 group size `quantize --format q4_0` uses: `requested` when it divides both
/// `dim` and `hidden_dim` (and the file's scales land 4-byte aligned), else the largest power
/// of two below it that does (returned with `true`). Refused when `requested` is odd or 0.
pub fn choose_q4_group(
    cfg: &ModelConfig,
    requested: usize,
) -> Result<(usize, bool), QuantizeError> {
    if requested < 2 || !requested.is_multiple_of(2) {
        return Err(QuantizeError::BadQ4Group(requested));
    }
    let fits = |g: usize| {
        let c = ModelConfig {
            weight_format: WeightFormat::Q4_0 { group_size: g },
            ..cfg.clone()
        };
        c.validate().is_ok() && q4_scales_aligned(&c)
    };
    if fits(requested) {
        return Ok((requested, false));
    }
    let mut g = 1usize << (usize::BITS - 1 - requested.leading_zeros());
    while g >= 2 {
        if fits(g) {
            return Ok((g, true));
        }
        g /= 2;
    }
    Err(QuantizeError::NoQ4Group {
        dim: cfg.dim,
        hidden: cfg.hidden_dim,
    })
}

/// True when every Q4_0 matrix's scales start 4-byte aligned (the loader reads them in place).
fn q4_scales_aligned(cfg: &ModelConfig) -> bool {
    CheckpointLayout::for_config(cfg, CheckpointFormat::V3)
        .quantized()
        .iter()
        .all(|(_, _, s)| s.scales().offset.is_multiple_of(4))
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
    write_quantized(model, WeightFormat::Q8_0 { group_size: group }, path)
}

/// Writes `model` (f32, v0 or v1) as a baremetal v3 (Q4_0) checkpoint with `group` to `path`.
/// `group` must be even and divide `dim` and `hidden_dim` (see [`choose_q4_group`]).
pub fn write_q4_checkpoint(
    model: &Model,
    group: usize,
    path: &Path,
) -> Result<QuantizeReport, QuantizeError> {
    write_quantized(model, WeightFormat::Q4_0 { group_size: group }, path)
}

/// The shared writer: header, f32 norms, then each matrix's values and scales in file order.
fn write_quantized(
    model: &Model,
    weight_format: WeightFormat,
    path: &Path,
) -> Result<QuantizeReport, QuantizeError> {
    if matches!(model.format(), CheckpointFormat::V2 | CheckpointFormat::V3) {
        return Err(QuantizeError::AlreadyQuantized(
            model.path().display().to_string(),
        ));
    }
    let (group, format, q4) = match weight_format {
        WeightFormat::Q4_0 { group_size } => (group_size, CheckpointFormat::V3, true),
        WeightFormat::Q8_0 { group_size } => (group_size, CheckpointFormat::V2, false),
        WeightFormat::F32 => unreachable!("write_quantized is only called with a quantised format"),
    };
    let cfg = ModelConfig {
        weight_format,
        ..model.config().clone()
    };
    cfg.validate().map_err(|_| {
        if q4 {
            QuantizeError::BadQ4Group(group)
        } else {
            QuantizeError::BadGroup(group)
        }
    })?;
    let layout = CheckpointLayout::for_config(&cfg, format);
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
    let (mut q, mut s, mut packed) = (Vec::new(), Vec::new(), Vec::new());
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
        if q4 {
            packed.resize(src.len() / 2, 0u8);
            quantize_q4_weights(src, group, &mut packed, &mut s);
            // The error report reads the values back from the packed bytes.
            for (i, v) in q.iter_mut().enumerate() {
                *v = q4_value(&packed, i);
            }
        } else {
            quantize_weights(src, group, &mut q, &mut s);
        }
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
        if q4 {
            out.write_all(&packed).map_err(io)?;
        } else {
            // SAFETY: i8 and u8 have the same size and every bit pattern is valid for both.
            let bytes = unsafe { std::slice::from_raw_parts(q.as_ptr().cast::<u8>(), q.len()) };
            out.write_all(bytes).map_err(io)?;
        }
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
    fn q4_pack_unpack_and_round_trip_error_bound() {
        let mut rng = crate::rng::Rng::new(0x4b17);
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
        assert_eq!(choose_q4_group(&s260k, 32).unwrap(), (4, true));
        let s15m = preset("stories15m").unwrap();
        assert_eq!(choose_q4_group(&s15m, 32).unwrap(), (32, false));
        let s110m = preset("stories110m").unwrap();
        assert_eq!(choose_q4_group(&s110m, 32).unwrap(), (32, false));
        assert!(matches!(
            choose_q4_group(&s110m, 3),
            Err(QuantizeError::BadQ4Group(3))
        ));
        assert!(matches!(
            choose_q4_group(&s110m, 0),
            Err(QuantizeError::BadQ4Group(0))
        ));
    }

    #[test]
    fn input_quantizer_is_a_no_op_for_f32() {
        let mut f = InputQuantizer::new(WeightFormat::F32, 100);
        let x = [1.0f32; 8];
        assert!(f.input(&x, 1).q8.is_none());
        let mut q = InputQuantizer::new(WeightFormat::Q8_0 { group_size: 4 }, 16);
        let x = [254.0, -100.0, 50.0, 0.0, 3.0, 3.0, 3.0, -3.0];
        let got = q.input(&x, 1).q8.unwrap();
        assert_eq!(got.q, [127, -50, 25, 0, 127, 127, 127, -127]);
        assert_eq!(got.scales, [2.0, 3.0 / 127.0]);
        assert_eq!(got.q.as_ptr() as usize % 64, 0);
    }
}
