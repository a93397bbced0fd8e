//! Synthesised checkpoints: a file of exactly a given shape with seeded random weights.
//! Not a real model; used for benchmarks on machines without downloads, and for tests.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use model_config::{CheckpointFormat, CheckpointLayout, ModelConfig};

use crate::base::rng::Rng;

/// Writes a `format` checkpoint of shape `cfg` to `path`, deterministic per `seed`.
///
/// Matrices are uniform in ±1/√fan_in, so every projection keeps activations O(1); norm
/// weights are near 1; embeddings are uniform in ±1. Logits then vary across the vocabulary
/// and stay finite. RoPE tables in v0 files are written as llama2.c's exporter does.
///
/// Only f32 formats (v0, v1) are written; quantise the result for v2/v3 (`crate::format::quant`).
pub fn write_checkpoint(
    cfg: &ModelConfig,
    format: CheckpointFormat,
    seed: u64,
    path: &Path,
) -> std::io::Result<()> {
    if matches!(format, CheckpointFormat::V2 | CheckpointFormat::V3) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "synth writes f32 checkpoints (v0, v1); quantise one with `baremetal quantize` for v2/v3",
        ));
    }
    let layout = CheckpointLayout::for_config(cfg, format);
    let mut out = BufWriter::with_capacity(1 << 20, File::create(path)?);
    out.write_all(&layout.header())?;
    let mut rng = Rng::new(seed);
    let (d, h) = (cfg.dim as f32, cfg.hidden_dim as f32);
    let freq = layout.freq_cis.map(|(re, im)| (re.offset, im.offset));
    for (name, span) in layout.tensors() {
        let mut buf = Vec::with_capacity(span.len.min(1 << 20) * 4);
        let mut remaining = span.len;
        let mut index = 0usize;
        while remaining > 0 {
            let n = remaining.min(1 << 20);
            buf.clear();
            for _ in 0..n {
                let v = match name {
                    "rms_att" | "rms_ffn" | "rms_final" => 1.0 + 0.1 * rng.uniform(),
                    "token_embedding" => rng.uniform(),
                    "w2" => rng.uniform() / h.sqrt(),
                    "freq_cis_real" | "freq_cis_imag" => {
                        let half = cfg.head_dim() / 2;
                        let (pos, j) = (index / half, index % half);
                        let f = 1.0 / cfg.rope_theta.powf((2 * j) as f32 / cfg.head_dim() as f32);
                        let angle = pos as f32 * f;
                        if Some(span.offset) == freq.map(|f| f.0) {
                            angle.cos()
                        } else {
                            angle.sin()
                        }
                    }
                    _ => rng.uniform() / d.sqrt(),
                };
                buf.extend_from_slice(&v.to_le_bytes());
                index += 1;
            }
            out.write_all(&buf)?;
            remaining -= n;
        }
    }
    out.flush()
}
