//! `baremetal inspect`: a checkpoint's shape as TOML, plus how this binary would run it.

use std::path::PathBuf;

use clap::Args;
use engine::runtime::backend::{compiled_config, rebuild_command};
use engine::{Model, Realign};
use model_config::WeightFormat;

/// Arguments of `inspect`.
#[derive(Args)]
pub struct InspectArgs {
    /// The checkpoint (llama2.c v0 or v1 f32, v2 Q8_0, or baremetal v3 Q4_0).
    model: PathBuf,
}

/// Prints the config as a MODEL_CONFIG file; everything else goes in TOML comments.
pub fn run(a: InspectArgs) -> anyhow::Result<()> {
    super::existing(&a.model, "checkpoint")?;
    let model = Model::open(&a.model, Realign::Never)?;
    let cfg = model.config();
    let compiled = compiled_config();
    let params = cfg.parameter_count();
    let file_bytes = std::fs::metadata(&a.model).map_or(0, |m| m.len());
    println!("# {}", a.model.display());
    println!(
        "# format: {}; {file_bytes} bytes; {:.2}M parameters",
        model.format(),
        params as f64 / 1e6
    );
    println!(
        "# classifier: {}",
        if cfg.shared_classifier {
            "tied to the token embedding"
        } else {
            "stored separately (untied)"
        }
    );
    match model.layout() {
        Some(layout) => describe_llama2c(&model, layout),
        None => describe_gguf(&model)?,
    }
    println!(
        "# weight bytes read per token: {}",
        model.weight_bytes_per_token()
    );
    if cfg.same_shape(&compiled) && cfg.weight_format.group_size().is_some() {
        println!(
            "# this binary: compiled for this shape ({}); runs its norms and f32 matrices on specialised kernels and its {} matrices on generated int8 kernels where their group is the compiled one",
            compiled.name,
            match cfg.weight_format {
                WeightFormat::Q4_0 { .. } => "Q4_0",
                WeightFormat::Mixed { .. } => "Q8_0/Q4_0",
                _ => "Q8_0",
            }
        );
    } else if cfg.same_shape(&compiled) {
        println!(
            "# this binary: compiled for this shape ({}); runs it on specialised kernels",
            compiled.name
        );
    } else {
        println!(
            "# this binary: compiled for {} [{}]; runs this model only with --generic; to specialise: {}",
            compiled.name,
            compiled.shape_summary(),
            rebuild_command(cfg, &a.model)
        );
    }
    print!("{}", cfg.to_toml());
    Ok(())
}

fn describe_llama2c(model: &Model, layout: &model_config::CheckpointLayout) {
    let cfg = model.config();
    if layout.header_bytes.is_multiple_of(64) {
        println!("# weights: {}", model.placement_summary());
    } else {
        println!(
            "# weights: {}-byte aligned on disk; generate and bench copy them once into 64-byte aligned memory (--zero-copy maps them in place)",
            model.weight_alignment()
        );
    }
    let (kind, what) = match cfg.weight_format {
        WeightFormat::Q4_0 { group_size } => (
            "nibbles+scales",
            format!(
                "Q4_0, 4-bit (two per byte) with one f32 scale per {group_size} weights of a row"
            ),
        ),
        WeightFormat::Q8_0 { group_size } => (
            "int8+scales",
            format!("Q8_0, int8 with one f32 scale per {group_size} weights of a row"),
        ),
        _ => return,
    };
    println!("# weights: {what} (token embedding and every matrix; norms f32)");
    println!(
        "# quantized tensors: {} {kind} spans (7 per-layer matrices × {} layers + embedding{})",
        layout.quantized().len(),
        cfg.n_layers,
        if cfg.shared_classifier {
            ""
        } else {
            " + classifier"
        }
    );
}

fn describe_gguf(model: &Model) -> anyhow::Result<()> {
    let g = engine::format::gguf::Gguf::parse(model.file_bytes())?;
    let mut counts: Vec<(String, usize)> = Vec::new();
    for (_, ty) in model.gguf_tensor_types().unwrap_or_default() {
        match counts.iter_mut().find(|(n, _)| n == ty.name()) {
            Some((_, c)) => *c += 1,
            None => counts.push((ty.name().to_string(), 1)),
        }
    }
    let counts: Vec<String> = counts.iter().map(|(n, c)| format!("{c} {n}")).collect();
    println!("# tensors: {}", counts.join(", "));
    println!("# weights: {}", model.placement_summary());
    for n in model.notices() {
        println!("# note: {n}");
    }
    let s = |k: &str| g.get_str(k).ok().flatten();
    let tokenizer = match (s("tokenizer.ggml.model"), s("tokenizer.ggml.pre")) {
        (None, _) => "none".to_string(),
        (Some("gpt2"), pre) => format!(
            "gpt2 (byte-level BPE, pre-tokenizer {})",
            pre.unwrap_or("default")
        ),
        (Some("llama"), _) => "llama (SentencePiece)".to_string(),
        (Some(other), _) => other.to_string(),
    };
    let tokens = g
        .get_array("tokenizer.ggml.tokens")
        .ok()
        .flatten()
        .map_or(0, |a| a.len());
    let template = if s("tokenizer.chat_template").is_some() {
        "yes"
    } else {
        "none"
    };
    println!("# tokenizer: {tokenizer}, {tokens} tokens; chat template: {template}");
    Ok(())
}
