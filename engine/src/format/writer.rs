//! The checkpoint writers behind `baremetal quantize`: an f32 model (llama2.c v0 or v1) as
//! llama2.c's v2 (Q8_0) or baremetal's v3 (Q4_0), with the rounding rules of [`super::quant`].

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use model_config::{CheckpointFormat, CheckpointLayout, ModelConfig, WeightFormat};

use super::model::{FileFormat, Model};
use super::quant::{q4_value, quantize_q4_weights, quantize_weights, QuantizeError};

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
    match model.format() {
        FileFormat::Llama2c(CheckpointFormat::V0 | CheckpointFormat::V1) => {}
        FileFormat::Llama2c(_) => {
            return Err(QuantizeError::AlreadyQuantized(
                model.path().display().to_string(),
            ))
        }
        FileFormat::Gguf(_) => return Err(QuantizeError::Gguf(model.path().display().to_string())),
    }
    let (group, format, q4) = match weight_format {
        WeightFormat::Q4_0 { group_size } => (group_size, CheckpointFormat::V3, true),
        WeightFormat::Q8_0 { group_size } => (group_size, CheckpointFormat::V2, false),
        WeightFormat::F32 | WeightFormat::Mixed { .. } => {
            unreachable!("write_quantized is only called with Q8_0 or Q4_0")
        }
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
