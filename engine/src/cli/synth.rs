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
    /// GGUF (architecture llama), the same weights as v1 with the same seed.
    Gguf,
}

/// GGUF matrix types `synth --format gguf` writes.
#[derive(Clone, Copy, ValueEnum)]
pub enum GgufTypeArg {
    /// 32-bit floats.
    F32,
    /// Q8_0 blocks of 32 (as llama-quantize writes them).
    #[value(name = "q8_0")]
    Q8_0,
    /// Q4_0 blocks of 32 (as llama-quantize --pure writes them).
    #[value(name = "q4_0")]
    Q4_0,
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
    /// With `--format gguf`: the matrices' type.
    #[arg(long, value_enum, default_value = "f32")]
    gguf_type: GgufTypeArg,
    /// With `--format gguf`: copy the tokenizer (every `tokenizer.*` key) from this GGUF, e.g.
    /// ../shared/gguf/vocab/ggml-vocab-llama-spm.gguf for the 32000-token Llama 2 vocabulary.
    #[arg(long)]
    vocab_from: Option<PathBuf>,
}

/// Runs `synth`.
pub fn run(a: SynthArgs) -> anyhow::Result<()> {
    let cfg = model_config::resolve(&a.config).with_context(|| format!("config {:?}", a.config))?;
    let format = match a.format {
        FormatArg::V0 => CheckpointFormat::V0,
        FormatArg::V1 => CheckpointFormat::V1,
        FormatArg::Gguf => return write_gguf(&a, &cfg),
    };
    if a.vocab_from.is_some() {
        anyhow::bail!("--vocab-from is for --format gguf");
    }
    engine::format::synth::write_checkpoint(&cfg, format, a.seed, &a.out)
        .with_context(|| format!("writing {}", a.out.display()))?;
    eprintln!(
        "wrote {} ({}, random weights with seed {}: for benchmarks, not a real model)",
        a.out.display(),
        cfg.shape_summary(),
        a.seed
    );
    Ok(())
}

/// `--format gguf`: the v1 weights of the same seed, written through a temporary v1 file.
fn write_gguf(a: &SynthArgs, cfg: &model_config::ModelConfig) -> anyhow::Result<()> {
    use engine::format::gguf_writer::{write_gguf, GgufWeights};
    let vocab_bytes = match &a.vocab_from {
        Some(p) => {
            super::existing(p, "vocabulary GGUF")?;
            Some(std::fs::read(p).with_context(|| format!("reading {}", p.display()))?)
        }
        None => None,
    };
    let vocab = match &vocab_bytes {
        Some(b) => {
            let g = engine::format::gguf::Gguf::parse(b).with_context(|| {
                format!(
                    "{} is not a usable GGUF file",
                    a.vocab_from.as_ref().unwrap().display()
                )
            })?;
            let n = g.get_array("tokenizer.ggml.tokens")?.map_or(0, |t| t.len());
            if n != cfg.vocab_size {
                anyhow::bail!(
                    "{} has {n} tokens but the config's vocabulary is {}; pick a vocabulary of that size",
                    a.vocab_from.as_ref().unwrap().display(),
                    cfg.vocab_size
                );
            }
            Some(g)
        }
        None => None,
    };
    let tmp = a.out.with_extension("v1.partial");
    engine::format::synth::write_checkpoint(cfg, CheckpointFormat::V1, a.seed, &tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    let weights = match a.gguf_type {
        GgufTypeArg::F32 => GgufWeights::F32,
        GgufTypeArg::Q8_0 => GgufWeights::Q8_0,
        GgufTypeArg::Q4_0 => GgufWeights::Q4_0,
    };
    let result = engine::Model::open(&tmp, engine::Realign::Never)
        .map_err(anyhow::Error::from)
        .and_then(|m| {
            write_gguf(&m, cfg, weights, vocab.as_ref(), &a.out)
                .with_context(|| format!("writing {}", a.out.display()))
        });
    let _ = std::fs::remove_file(&tmp);
    result?;
    eprintln!(
        "wrote {} (GGUF, {}, random weights with seed {}: for benchmarks, not a real model)",
        a.out.display(),
        cfg.shape_summary(),
        a.seed
    );
    Ok(())
}
