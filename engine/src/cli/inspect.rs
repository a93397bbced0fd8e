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
    let layout = model.layout();
    let compiled = compiled_config();
    let params = cfg.parameter_count();
    println!("# {}", a.model.display());
    println!(
        "# format: {}; {} bytes; {:.2}M parameters",
        model.format(),
        layout.file_bytes,
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
    if layout.header_bytes % 64 == 0 {
        println!("# weights: {}", model.placement_summary());
    } else {
        println!(
            "# weights: {}-byte aligned on disk; generate and bench copy them once into 64-byte aligned memory (--zero-copy maps them in place)",
            model.weight_alignment()
        );
    }
    if let WeightFormat::Q4_0 { group_size: group } = cfg.weight_format {
        println!(
            "# weights: Q4_0, 4-bit (two per byte) with one f32 scale per {group} weights of a row (token embedding and every matrix; norms f32)"
        );
        println!(
            "# quantized tensors: {} nibbles+scales spans ({} per-layer matrices × {} layers + embedding{})",
            layout.quantized().len(),
            7,
            cfg.n_layers,
            if cfg.shared_classifier { "" } else { " + classifier" }
        );
    } else if let Some(group) = cfg.weight_format.group_size() {
        println!(
            "# weights: Q8_0, int8 with one f32 scale per {group} weights of a row (token embedding and every matrix; norms f32)"
        );
        println!(
            "# quantized tensors: {} int8+scales spans ({} per-layer matrices × {} layers + embedding{})",
            layout.quantized().len(),
            7,
            cfg.n_layers,
            if cfg.shared_classifier { "" } else { " + classifier" }
        );
    }
    println!(
        "# weight bytes read per token: {}",
        cfg.weight_bytes_per_token()
    );
    if cfg.same_shape(&compiled) && cfg.weight_format.group_size().is_some() {
        println!(
            "# this binary: compiled for this shape ({}); runs its norms on specialised kernels and its {} matrices on the runtime-shape quantised kernels",
            compiled.name,
            if matches!(cfg.weight_format, WeightFormat::Q4_0 { .. }) { "Q4_0" } else { "Q8_0" }
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
