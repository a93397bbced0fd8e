//! `baremetal bench`: tokens/s, per-token latency distribution, and achieved weight-streaming
//! bandwidth against the machine's measured read bandwidth (the roofline), in one process.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use engine::decode::beam::{self, BeamOptions, BeamStats};
use engine::decode::sampler::argmax;
use engine::runtime::backend::compiled_config;
use engine::runtime::bandwidth::{self, percentiles};
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
    /// Write `phase,index,latency_us` rows: each timed prompt run (`prompt`), decode token
    /// (`decode`) and beam step (`beam`).
    #[arg(long)]
    csv: Option<PathBuf>,
    /// Draw per-token latency and its histogram as an SVG.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Print one JSON object instead of the report.
    #[arg(long)]
    json: bool,
    /// Prompt processing: tokens of a prompt run through the batched path (pp, as llama-bench's
    /// pp128), timed from an empty cache; the median of 3 runs after one untimed. 0 skips it.
    #[arg(long, default_value_t = 128)]
    prompt_tokens: usize,
    /// Also time beam search with this many hypotheses and report a beam step's cost relative
    /// to a greedy step at the same positions.
    #[arg(long, value_parser = clap::value_parser!(u16).range(2..=64))]
    beam: Option<u16>,
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
    engine::format::synth::write_checkpoint(cfg, CheckpointFormat::V1, 0, &tmp)
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

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    match s.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => s[n / 2],
        n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    }
}

/// Multiply-adds per token of a prompt of `n` tokens: every matrix but the classifier (computed
/// once, for the last token), plus the attention's scores and weighted sums (on average over
/// `(n + 1) / 2` positions).
fn prompt_macs_per_token(c: &ModelConfig, n: usize) -> f64 {
    let (d, h, kv) = (c.dim as f64, c.hidden_dim as f64, c.kv_dim() as f64);
    let matrices = 2.0 * d * d + 2.0 * kv * d + 3.0 * d * h;
    let attention = 2.0 * d * (n as f64 + 1.0) / 2.0;
    c.n_layers as f64 * (matrices + attention) + c.vocab_size as f64 * d / n.max(1) as f64
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
    let ctx = a.run.context(&cfg);
    let tokens = a.tokens.min(ctx);
    if tokens < a.tokens {
        eprintln!(
            "note: --tokens {} exceeds the context of {ctx}; timing {tokens}",
            a.tokens
        );
    }

    // The roofline: DRAM read bandwidth, measured with the same ISA as the kernels.
    let probe_bytes = (8 * last_level_cache_bytes()).clamp(256 << 20, 1 << 30);
    let bw = bandwidth::measure(probe_bytes, 8, isa, threads);

    let kv_cache = a.run.kv_cache;
    let options = a.run.session_options();
    let beams = a.beam.map_or(0, usize::from);
    let beam_steps = if beams > 0 { tokens.min(64) } else { 0 };
    let mut session = Session::with_options(
        &model,
        backend,
        beam::session_options(options, ctx, beams, 1, beam_steps),
    );

    // Prompt processing: a prompt of fixed pseudo-random tokens, like llama-bench's.
    let prompt_tokens = a.prompt_tokens.min(ctx);
    let prompt: Vec<u32> = {
        let mut rng = engine::base::rng::Rng::new(0x9e37);
        (0..prompt_tokens)
            .map(|_| rng.below(cfg.vocab_size) as u32)
            .collect()
    };
    let mut pp_ms = Vec::new();
    let mut ttft_ms = Vec::new();
    for run in 0..if prompt.is_empty() { 0 } else { 4 } {
        session.reset();
        let t = Instant::now();
        let first = argmax(session.prefill(&prompt)?);
        let ms = t.elapsed().as_secs_f64() * 1e3;
        std::hint::black_box(first);
        if run > 0 {
            pp_ms.push(ms);
            ttft_ms.push(ms);
        }
    }
    session.reset();

    let mut token = engine::decode::generate::BOS;
    for _ in 0..a.warmup.min(ctx) {
        token = argmax(session.step(token)?);
    }
    session.reset();
    token = engine::decode::generate::BOS;

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
    session.reset();

    // Beam search from BOS: every step one batched forward over all hypotheses (no end token,
    // so all steps run), against the greedy steps at the same positions.
    let mut beam_ms = Vec::new();
    let beam_result = if beams > 0 {
        let options = BeamOptions {
            beams,
            length_penalty: 1.0,
            max_new: beam_steps,
            eos: Vec::new(),
        };
        let mut stats = BeamStats::default();
        beam::beam_search(
            &mut session,
            &[engine::decode::generate::BOS],
            &options,
            &mut stats,
        )?;
        session.reset();
        beam_ms = stats.steps.iter().map(|d| d.as_secs_f64() * 1e3).collect();
        let beam_p50 = median(&beam_ms);
        let greedy_p50 = median(&lat_ms[..beam_ms.len().min(lat_ms.len())]);
        Some((beam_p50, greedy_p50, beam_ms.len()))
    } else {
        None
    };
    let compute = engine::runtime::compute::measure(isa, threads);

    let p = percentiles(&lat_ms);
    let tps = tokens as f64 / wall;
    let bytes_per_token = cfg.weight_bytes_per_token();
    let achieved = bytes_per_token as f64 * tps / 1e9;
    let roofline = achieved / bw.best_gbs;
    let format = model.format().to_string();
    let pp = (!pp_ms.is_empty()).then(|| {
        let ms = median(&pp_ms);
        let tps = prompt.len() as f64 / (ms / 1e3);
        let flops = 2.0 * prompt_macs_per_token(&cfg, prompt.len()) * tps;
        (tps, median(&ttft_ms), flops / 1e9)
    });
    // The compute roofline of the weights' arithmetic: int8 dot products for Q8_0 / Q4_0.
    let peak = match cfg.weight_format {
        model_config::WeightFormat::F32 => compute.f32_gflops,
        _ => compute.int8_gops.or(compute.f32_gflops),
    };

    if let Some(csv) = &a.csv {
        // One row per timed prompt run, decode token and beam step.
        let mut text = String::from("phase,index,latency_us\n");
        for (i, ms) in pp_ms.iter().enumerate() {
            text.push_str(&format!("prompt,{i},{:.1}\n", ms * 1e3));
        }
        for (i, ms) in lat_ms.iter().enumerate() {
            text.push_str(&format!("decode,{i},{:.1}\n", ms * 1e3));
        }
        for (i, ms) in beam_ms.iter().enumerate() {
            text.push_str(&format!("beam,{i},{:.1}\n", ms * 1e3));
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
            "prompt_tokens": prompt.len(),
            "prompt_tokens_per_second": pp.map(|p| p.0),
            "ttft_ms": pp.map(|p| p.1),
            "prompt_gops": pp.map(|p| p.2),
            "compute_peak_gops": peak,
            "compute_fraction": pp.zip(peak).map(|(p, k)| p.2 / k),
            "batch": session.batch(),
            "beam": beams,
            "beam_step_ms": beam_result.map(|b| b.0),
            "greedy_step_ms": beam_result.map(|b| b.1),
            "beam_step_ratio": beam_result.map(|b| b.0 / b.1),
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
    if let Some((pps, ttft, gops)) = pp {
        let of_peak = match peak {
            Some(k) => format!("{:.0}% of the measured {k:.0} GOP/s peak", 100.0 * gops / k),
            None => "no peak measured for this instruction set".into(),
        };
        println!(
            "prompt     pp{} {pps:.1} tok/s in chunks of {}; time to first token {ttft:.1} ms; {gops:.1} GOP/s, {of_peak}",
            prompt.len(),
            session.batch()
        );
    }
    println!("decode     tg{tokens} {tps:.1} tok/s");
    if let Some((b, g, n)) = beam_result {
        println!(
            "beam       {beams} hypotheses: a step takes {b:.2} ms against {g:.2} ms for a greedy step ({:.2}×; medians of {n} steps)",
            b / g
        );
    }
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
