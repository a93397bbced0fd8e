//! `baremetal bench`: tokens/s, per-token latency distribution, and achieved weight-streaming
//! bandwidth against the machine's measured read bandwidth (the roofline), in one process.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use engine::backend::compiled_config;
use engine::bandwidth::{self, percentiles};
use engine::sampler::argmax;
use engine::Session;
use model_config::{CheckpointFormat, CheckpointLayout, ModelConfig};

/// Arguments of `bench`.
#[derive(Args)]
pub struct BenchArgs {
    /// Checkpoint to run (default: a synthesised model of the compiled shape, cached).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Tokens to time (greedy, from BOS; clamped to the context).
    #[arg(long, default_value_t = 256)]
    tokens: usize,
    /// Untimed tokens first (caches, page faults, branch predictors); the sequence then restarts.
    #[arg(long, default_value_t = 16)]
    warmup: usize,
    /// Write `token_index,latency_us` per timed token.
    #[arg(long)]
    csv: Option<PathBuf>,
    /// Draw per-token latency and its histogram as an SVG.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Print one JSON object instead of the report.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    run: super::RunOpts,
}

/// Where synthesised benchmark models are cached: `target/baremetal-cache` beside the binary.
fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("BAREMETAL_CACHE") {
        return dir.into();
    }
    let exe = std::env::current_exe().ok();
    let bin_dir = exe.as_deref().and_then(Path::parent);
    match bin_dir {
        // target/<profile>/baremetal → target/baremetal-cache
        Some(d) if d.parent().is_some_and(|t| t.ends_with("target")) => {
            d.parent().unwrap().join("baremetal-cache")
        }
        Some(d) => d.join("baremetal-cache"),
        None => PathBuf::from("baremetal-cache"),
    }
}

/// A synthesised v1 model of shape `cfg`, written once and reused while it stays intact.
fn cached_synth(cfg: &ModelConfig) -> anyhow::Result<PathBuf> {
    let dir = cache_dir();
    let path = dir.join(format!("synth-{}-v1-seed0.bin", cfg.name));
    let expected = CheckpointLayout::for_config(cfg, CheckpointFormat::V1).file_bytes;
    if std::fs::metadata(&path).is_ok_and(|m| m.len() as usize == expected) {
        return Ok(path);
    }
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("creating cache directory {}", dir.display()))?;
    eprintln!(
        "synthesising a {} model ({} MB) into {} ...",
        cfg.name,
        expected / 1_000_000,
        path.display()
    );
    let tmp = path.with_extension("partial");
    engine::synth::write_checkpoint(cfg, CheckpointFormat::V1, 0, &tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("renaming {}", tmp.display()))?;
    Ok(path)
}

/// Bytes of the last-level cache, from sysfs; 32 MiB when unknown.
fn last_level_cache_bytes() -> usize {
    let base = Path::new("/sys/devices/system/cpu/cpu0/cache");
    let mut best = 0;
    for i in 0..8 {
        if let Ok(s) = std::fs::read_to_string(base.join(format!("index{i}/size"))) {
            let s = s.trim();
            let (num, mult) = match s.strip_suffix('K') {
                Some(n) => (n, 1 << 10),
                None => match s.strip_suffix('M') {
                    Some(n) => (n, 1 << 20),
                    None => (s, 1),
                },
            };
            best = best.max(num.parse::<usize>().unwrap_or(0) * mult);
        }
    }
    if best == 0 {
        32 << 20
    } else {
        best
    }
}

/// Runs `bench`.
pub fn run(a: BenchArgs) -> anyhow::Result<()> {
    if a.tokens == 0 {
        anyhow::bail!("--tokens must be at least 1");
    }
    let path = match &a.model {
        Some(p) => {
            super::existing(p, "checkpoint")?;
            p.clone()
        }
        None => cached_synth(&compiled_config())?,
    };
    let (model, backend) = a.run.load(&path)?;
    let cfg = model.config().clone();
    let isa = backend.isa();
    let specialised = backend.is_specialised();
    let describe = backend.describe();
    let threads = backend.threads();
    let tokens = a.tokens.min(cfg.seq_len);
    if tokens < a.tokens {
        eprintln!(
            "note: --tokens {} exceeds the context of {}; timing {tokens}",
            a.tokens, cfg.seq_len
        );
    }

    // The roofline: DRAM read bandwidth, measured with the same ISA as the kernels.
    let probe_bytes = (8 * last_level_cache_bytes()).clamp(256 << 20, 1 << 30);
    let bw = bandwidth::measure(probe_bytes, 8, isa, threads);

    let kv_cache = a.run.kv_cache;
    let mut session = Session::with_kv_cache(&model, backend, kv_cache);
    let mut token = engine::generate::BOS;
    for _ in 0..a.warmup.min(cfg.seq_len) {
        token = argmax(session.step(token)?);
    }
    session.reset();
    token = engine::generate::BOS;

    let progress = !a.json && std::io::stderr().is_terminal();
    let mut lat_ms = Vec::with_capacity(tokens);
    let start = Instant::now();
    for i in 0..tokens {
        let t = Instant::now();
        token = argmax(session.step(token)?);
        lat_ms.push(t.elapsed().as_secs_f64() * 1e3);
        if progress && (i % 8 == 7 || i + 1 == tokens) {
            eprint!("\r  {:>5}/{tokens} tokens", i + 1);
            let _ = std::io::stderr().flush();
        }
    }
    let wall = start.elapsed().as_secs_f64();
    if progress {
        eprintln!();
    }
    std::hint::black_box(token);

    let p = percentiles(&lat_ms);
    let tps = tokens as f64 / wall;
    let bytes_per_token = cfg.weight_bytes_per_token();
    let achieved = bytes_per_token as f64 * tps / 1e9;
    let roofline = achieved / bw.best_gbs;
    let ttft = lat_ms[0];
    let format = model.format().to_string();

    if let Some(csv) = &a.csv {
        let mut text = String::from("token_index,latency_us\n");
        for (i, ms) in lat_ms.iter().enumerate() {
            text.push_str(&format!("{i},{:.1}\n", ms * 1e3));
        }
        std::fs::write(csv, text).with_context(|| format!("writing {}", csv.display()))?;
    }
    if let Some(svg) = &a.plot {
        let title = format!("{} per-token latency, {describe}, {tps:.1} tok/s", cfg.name);
        super::plot::latency_svg(svg, &lat_ms, &title)
            .with_context(|| format!("drawing {}", svg.display()))?;
    }

    if a.json {
        let j = serde_json::json!({
            "model": path.display().to_string(),
            "config": cfg.name,
            "tokens": tokens,
            "tokens_per_second": tps,
            "ttft_ms": ttft,
            "p50_ms": p.p50,
            "p90_ms": p.p90,
            "p99_ms": p.p99,
            "max_ms": p.max,
            "p99_over_p50": p.p99 / p.p50,
            "weight_bytes_per_token": bytes_per_token,
            "achieved_gbs": achieved,
            "measured_gbs": bw.best_gbs,
            "roofline_fraction": roofline,
            "threads": threads,
            "format": format,
            "weight_format": cfg.weight_format.to_string(),
            "kv_cache": kv_cache.name(),
            "placement": model.placement_summary(),
            "isa": isa.name(),
            "specialised": specialised,
        });
        println!("{j}");
        return Ok(());
    }
    println!("model      {} ({})", path.display(), cfg.shape_summary());
    println!(
        "format     {format}, weights {}, KV cache {kv_cache}; {}",
        cfg.weight_format,
        model.placement_summary()
    );
    println!("kernels    {describe}");
    println!(
        "tokens     {tokens} timed after {} warm-up, greedy from BOS",
        a.warmup
    );
    println!("speed      {tps:.1} tok/s; first token {ttft:.2} ms");
    println!(
        "latency    p50 {:.2} ms  p90 {:.2} ms  p99 {:.2} ms  max {:.2} ms  (p99/p50 {:.2})",
        p.p50,
        p.p90,
        p.p99,
        p.max,
        p.p99 / p.p50
    );
    println!(
        "bandwidth  {:.1} MB of weights per token → {achieved:.1} GB/s achieved; machine reads {:.1} GB/s ({} MiB probe, {} threads × {} streams, best of {})",
        bytes_per_token as f64 / 1e6,
        bw.best_gbs,
        bw.bytes >> 20,
        bw.threads,
        4,
        bw.passes
    );
    println!(
        "roofline   {:.0}% of measured read bandwidth",
        roofline * 100.0
    );
    Ok(())
}
