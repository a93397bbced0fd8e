//! `baremetal eval`: the quality of a quantised checkpoint against its f32 original.

use std::path::PathBuf;

use clap::Args;
use engine::decode::eval::compare;
use engine::Session;

/// Arguments of `eval`.
#[derive(Args)]
pub struct EvalArgs {
    /// The reference checkpoint (llama2.c v0 or v1 f32, or a GGUF, e.g. the F16 file).
    #[arg(long)]
    model: PathBuf,
    /// The quantised checkpoint to compare (llama2.c v2 Q8_0, baremetal v3 Q4_0 or a GGUF, same shape;
    /// or the f32 checkpoint itself, with `--kv-cache f16`, to measure the cache alone).
    #[arg(long)]
    quantized: PathBuf,
    /// Positions to compare: the reference's greedy continuation of BOS, clamped to the context.
    #[arg(long, default_value_t = 256)]
    steps: usize,
    /// Print one JSON object instead of the report.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    run: super::RunOpts,
}

/// Runs `eval`.
pub fn run(a: EvalArgs) -> anyhow::Result<()> {
    super::existing(&a.model, "checkpoint")?;
    super::existing(&a.quantized, "checkpoint")?;
    if a.steps == 0 {
        anyhow::bail!("--steps must be at least 1");
    }
    let (reference, rb) = a.run.load(&a.model)?;
    let (candidate, cb) = a.run.load(&a.quantized)?;
    let (rc, cc) = (reference.config(), candidate.config());
    if !rc.same_shape(cc) {
        anyhow::bail!(
            "{} [{}] and {} [{}] are not the same model shape; compare a checkpoint with its own quantisation",
            a.model.display(),
            rc.shape_summary(),
            a.quantized.display(),
            cc.shape_summary()
        );
    }
    let steps = a.steps.min(rc.seq_len);
    if steps < a.steps {
        eprintln!(
            "note: --steps {} exceeds the context of {}; comparing {steps} positions",
            a.steps, rc.seq_len
        );
    }
    let mut rs = Session::new(&reference, rb);
    // The reference keeps llama2.c's f32 cache; `--kv-cache` is part of the candidate, so
    // `--quantized` may name the reference itself to measure the cache type alone.
    let options = a.run.session_options();
    let candidate_options = engine::runtime::session::SessionOptions {
        logit_rows: options.batch,
        ..options
    };
    let mut cs = Session::with_options(&candidate, cb, candidate_options);
    let (rk, ck) = (rs.backend().describe(), cs.backend().describe());
    let c = compare(&mut rs, &mut cs, steps)?;
    if a.json {
        let j = serde_json::json!({
            "reference": a.model.display().to_string(),
            "candidate": a.quantized.display().to_string(),
            "reference_weights": rc.weight_format.to_string(),
            "candidate_weights": cc.weight_format.to_string(),
            "candidate_kv_cache": a.run.kv_cache.name(),
            "positions": c.positions,
            "greedy_agreement": c.agreement,
            "argmax_matches": c.argmax_matches,
            "mean_kl_nats": c.mean_kl,
            "max_kl_nats": c.max_kl.0,
            "max_kl_position": c.max_kl.1,
        });
        println!("{j}");
        return Ok(());
    }
    let divergence = if c.agreement == c.positions {
        "none".to_string()
    } else {
        format!("position {}", c.agreement)
    };
    println!(
        "reference  {} ({}, {})",
        a.model.display(),
        reference.format(),
        rc.weight_format
    );
    println!(
        "candidate  {} ({}, {}, {} KV cache)",
        a.quantized.display(),
        candidate.format(),
        cc.weight_format,
        a.run.kv_cache
    );
    println!("kernels    reference: {rk}; candidate: {ck}");
    println!(
        "positions  {} (the reference's greedy continuation of BOS, fed to both)",
        c.positions
    );
    println!(
        "agreement  {} of {} greedy tokens identical (first divergence: {divergence})",
        c.agreement, c.positions
    );
    println!(
        "argmax     equal at {} of {} positions",
        c.argmax_matches, c.positions
    );
    println!(
        "KL         mean {:.3e} nats per position, KL(p_reference || p_candidate); max {:.3e} at position {}",
        c.mean_kl, c.max_kl.0, c.max_kl.1
    );
    Ok(())
}
