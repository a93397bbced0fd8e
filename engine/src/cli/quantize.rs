//! `baremetal quantize`: an f32 checkpoint (llama2.c v0 or v1) to llama2.c v2 (Q8_0) or
//! baremetal v3 (Q4_0).

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, ValueEnum};
use engine::format::quant::{self, choose_group};
use engine::format::writer::{write_q4_checkpoint, write_q8_checkpoint};
use engine::format::FileFormat;
use engine::{Model, Realign};
use model_config::{CheckpointFormat, DEFAULT_Q4_GROUP, DEFAULT_Q8_GROUP};

/// Quantised formats `quantize` writes.
#[derive(Clone, Copy, ValueEnum)]
pub enum QuantFormat {
    /// llama2.c v2: int8 weights with one f32 scale per group (norms stay f32).
    #[value(name = "q8_0")]
    Q8_0,
    /// baremetal v3: 4-bit weights, two per byte, with one f32 scale per group (norms stay
    /// f32; see docs/FORMATS.md).
    #[value(name = "q4_0")]
    Q4_0,
}

/// Arguments of `quantize`.
#[derive(Args)]
pub struct QuantizeArgs {
    /// The f32 checkpoint to read (llama2.c v0 or v1).
    input: PathBuf,
    /// Where to write the quantised checkpoint.
    output: PathBuf,
    /// The quantised format.
    #[arg(long, value_enum)]
    format: QuantFormat,
    /// Weights per scale: a multiple of 4 for q8_0 (default 64), even for q4_0 (default 32).
    /// Groups must not straddle rows: when this does not divide both dim and hidden_dim, the
    /// largest power of two below it that does is used.
    #[arg(long)]
    group: Option<usize>,
}

/// Runs `quantize`.
pub fn run(a: QuantizeArgs) -> anyhow::Result<()> {
    super::existing(&a.input, "checkpoint")?;
    let model = Model::open(&a.input, Realign::Never)?;
    match model.format() {
        FileFormat::Llama2c(CheckpointFormat::V0 | CheckpointFormat::V1) => {}
        FileFormat::Llama2c(_) => anyhow::bail!(
            "{} is already a quantised ({}) checkpoint; quantize reads f32 (v0 or v1) checkpoints",
            a.input.display(),
            model.format()
        ),
        FileFormat::Gguf(_) => anyhow::bail!(
            "{} is a GGUF file; quantize reads llama2.c f32 (v0 or v1) checkpoints (quantise GGUF files with llama.cpp's llama-quantize)",
            a.input.display()
        ),
    }
    if a.output.canonicalize().ok() == a.input.canonicalize().ok() {
        anyhow::bail!(
            "the output {} is the input; choose another path",
            a.output.display()
        );
    }
    let cfg = model.config();
    let (requested, format) = match a.format {
        QuantFormat::Q8_0 => (
            a.group.unwrap_or(DEFAULT_Q8_GROUP),
            quant::QuantFormat::Q8_0,
        ),
        QuantFormat::Q4_0 => (
            a.group.unwrap_or(DEFAULT_Q4_GROUP),
            quant::QuantFormat::Q4_0,
        ),
    };
    let chosen = choose_group(cfg, format, requested);
    let (group, backed_off) =
        chosen.with_context(|| format!("quantizing {}", a.input.display()))?;
    if backed_off {
        eprintln!(
            "note: group size {} does not divide every row (dim {}, hidden_dim {}); using {group}, \
             the largest power of two below it that does ({:.1} extra bits of scale per weight)",
            requested,
            cfg.dim,
            cfg.hidden_dim,
            32.0 / group as f64
        );
    }
    let mut tmp = a.output.clone().into_os_string();
    tmp.push(".partial");
    let tmp = PathBuf::from(tmp);
    let report = match a.format {
        QuantFormat::Q8_0 => write_q8_checkpoint(&model, group, &tmp)?,
        QuantFormat::Q4_0 => write_q4_checkpoint(&model, group, &tmp)?,
    };
    std::fs::rename(&tmp, &a.output)
        .with_context(|| format!("renaming {} to {}", tmp.display(), a.output.display()))?;
    // Read it back through the loader: the header, the size and the group checks.
    let written = Model::open(&a.output, Realign::Never)?;
    let worst = report
        .max_error
        .iter()
        .fold(("", 0.0f32), |w, &(n, e)| if e > w.1 { (n, e) } else { w });
    eprintln!(
        "wrote {} ({}, group {group}): {} → {} bytes; largest |w - dequantised w| {:.3e} (in {})",
        a.output.display(),
        written.format(),
        model.layout().map_or(0, |l| l.file_bytes),
        written.layout().map_or(0, |l| l.file_bytes),
        worst.1,
        worst.0
    );
    Ok(())
}
