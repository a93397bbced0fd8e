//! `baremetal synth`: a checkpoint of a given shape with seeded random weights (not a real model).

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, ValueEnum};
use model_config::CheckpointFormat;

/// On-disk layout to write.
#[derive(Clone, Copy, ValueEnum)]
pub enum FormatArg {
    /// llama2.c legacy (28-byte header; tensors 4-byte aligned when mapped).
    V0,
    /// llama2.c v1 (256-byte header; tensors stay 64-byte aligned when sizes allow).
    V1,
}

impl From<FormatArg> for CheckpointFormat {
    fn from(f: FormatArg) -> Self {
        match f {
            FormatArg::V0 => CheckpointFormat::V0,
            FormatArg::V1 => CheckpointFormat::V1,
        }
    }
}

/// Arguments of `synth`.
#[derive(Args)]
pub struct SynthArgs {
    /// A preset name (stories260k, stories15m, stories42m, stories110m) or a config TOML file.
    #[arg(long)]
    config: String,
    /// Where to write the checkpoint.
    #[arg(long)]
    out: PathBuf,
    /// Seed for the weights (same seed, same file).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Checkpoint format.
    #[arg(long, value_enum, default_value = "v1")]
    format: FormatArg,
}

/// Runs `synth`.
pub fn run(a: SynthArgs) -> anyhow::Result<()> {
    let cfg = model_config::resolve(&a.config).with_context(|| format!("config {:?}", a.config))?;
    engine::format::synth::write_checkpoint(&cfg, a.format.into(), a.seed, &a.out)
        .with_context(|| format!("writing {}", a.out.display()))?;
    eprintln!(
        "wrote {} ({}, random weights with seed {}: for benchmarks, not a real model)",
        a.out.display(),
        cfg.shape_summary(),
        a.seed
    );
    Ok(())
}
