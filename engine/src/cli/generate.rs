//! `baremetal generate`: stream text (or ids) to stdout, speed to stderr.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use engine::decode::beam::{self, BeamOptions, BeamStats};
use engine::decode::generate::{generate, max_steps, BOS};
use engine::decode::sampler::{Sampler, SamplerConfig};
use engine::text::tokenizer::Utf8Stream;
use engine::text::ModelTokenizer;
use engine::Session;

/// Arguments of `generate`.
#[derive(Args)]
pub struct GenerateArgs {
    /// The model: a GGUF file, or a llama2.c checkpoint (v0/v1 f32, v2 Q8_0, baremetal v3 Q4_0).
    #[arg(long)]
    model: PathBuf,
    /// The tokenizer: llama2.c's tokenizer.bin for llama2.c checkpoints (needed for text;
    /// optional with --ids). A GGUF model uses its own unless this names another GGUF.
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// The prompt text.
    #[arg(long, default_value = "")]
    prompt: String,
    /// Text in the prompt spelling a special token (`<|eot_id|>`, `<s>`) becomes that token, as
    /// in a rendered chat template (llama.cpp's --special parsing); by default it is text.
    #[arg(long)]
    parse_special: bool,
    /// Tokens to generate. Clamped, with a notice, to what fits the model's context.
    #[arg(long, default_value_t = 256, allow_negative_numbers = true)]
    steps: usize,
    /// Sampling temperature; 0 is greedy (argmax).
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    temperature: f32,
    /// Nucleus sampling: keep the smallest set of tokens whose probability exceeds this (1 = off).
    #[arg(long, default_value_t = 0.9, allow_negative_numbers = true)]
    top_p: f32,
    /// Keep only the k most probable tokens (0 = off).
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    /// Random seed (default: from the clock; printed so the run can be repeated).
    #[arg(long, allow_negative_numbers = true)]
    seed: Option<u64>,
    /// Print the generated token ids (space-separated, BOS excluded) instead of text.
    #[arg(long)]
    ids: bool,
    /// Beam search with this many hypotheses instead of sampling (Hugging Face's num_beams):
    /// each step is one batched forward over all of them. Prints the best hypothesis.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=256))]
    beam: Option<u16>,
    /// Beam search: a hypothesis scores Σ log p / length^A (A > 0 favours longer ones).
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    length_penalty: f32,
    /// Beam search: print every kept hypothesis with its score as one JSON object.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    run: super::RunOpts,
}

/// Runs `generate`.
pub fn run(a: GenerateArgs) -> anyhow::Result<()> {
    // Flags first: a bad flag is reported before any file is read.
    let seed = a.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
    });
    let sampler_cfg = SamplerConfig {
        temperature: a.temperature,
        top_p: a.top_p,
        top_k: a.top_k,
        seed,
    };
    sampler_cfg.validate()?;
    super::existing(&a.model, "checkpoint")?;
    let (model, backend) = a.run.load(&a.model)?;
    let cfg = model.config().clone();
    let tokenizer = super::tokenizer_for(&model, a.tokenizer.as_deref())?;
    if tokenizer.is_none() && !a.ids {
        anyhow::bail!(
            "printing text needs --tokenizer tokenizer.bin (or pass --ids for token ids)"
        );
    }
    let prompt = match &tokenizer {
        Some(t) => t.encode(&a.prompt, a.parse_special),
        None if a.prompt.is_empty() => vec![BOS],
        None => anyhow::bail!("--prompt needs --tokenizer to turn the text into tokens"),
    };
    if prompt.is_empty() {
        anyhow::bail!(
            "the prompt is empty and this model's vocabulary adds no BOS; give a --prompt"
        );
    }
    let stop = tokenizer.as_ref().map_or(vec![BOS], |t| t.stop_ids());
    let ctx = a.run.context(&cfg);
    if prompt.len() > ctx {
        anyhow::bail!(
            "the prompt is {} tokens but the context ({}) holds {ctx}; shorten the prompt{}",
            prompt.len(),
            a.model.display(),
            if ctx < cfg.seq_len {
                " or raise --ctx"
            } else {
                ""
            }
        );
    }
    let limit = max_steps(prompt.len(), ctx);
    let steps = if a.steps > limit {
        eprintln!("note: --steps {} does not fit the context of {ctx} positions after a {}-token prompt; generating {limit}", a.steps, prompt.len());
        limit
    } else {
        a.steps
    };
    if let Some(beams) = a.beam {
        return run_beam(
            &a,
            &model,
            backend,
            &prompt,
            steps,
            beams.into(),
            tokenizer.as_ref(),
        );
    }
    if a.json {
        anyhow::bail!("--json is for beam search (--beam B); sampling streams text or --ids");
    }
    let mut sampler = Sampler::new(cfg.vocab_size, sampler_cfg);

    let describe = backend.describe();
    let mut session = Session::with_options(&model, backend, a.run.session_options());
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut text = String::new();
    let mut utf8 = Utf8Stream::default();
    let mut first = true;
    let mut write_err = None;
    if let (Some(t), false) = (&tokenizer, a.ids) {
        // Echo the prompt as llama2.c does, so the output reads as one text.
        for w in prompt.windows(2) {
            utf8.push(t.decode_piece(w[0], w[1]), &mut text);
        }
    }
    let stats = generate(&mut session, &prompt, steps, &stop, &mut sampler, |ev| {
        let r = match (&tokenizer, a.ids) {
            (Some(t), false) => {
                utf8.push(t.decode_piece(ev.prev, ev.token), &mut text);
                let r = out.write_all(text.as_bytes()).and_then(|_| out.flush());
                text.clear();
                r
            }
            _ => {
                let sep = if first { "" } else { " " };
                first = false;
                write!(out, "{sep}{}", ev.token)
            }
        };
        if let Err(e) = r {
            write_err.get_or_insert(e);
        }
    })?;
    if tokenizer.is_some() && !a.ids {
        utf8.finish(&mut text);
        out.write_all(text.as_bytes())?;
    }
    writeln!(out)?;
    if let Some(e) = write_err {
        return Err(e).context("writing to stdout");
    }
    eprintln!(
        "{} tokens at {:.1} tok/s ({} prompt tokens, first token after {:.1} ms; {describe}; seed {seed})",
        stats.generated,
        stats.tokens_per_second(),
        stats.prompt_tokens,
        stats.time_to_first_token.as_secs_f64() * 1e3,
    );
    Ok(())
}

/// `generate --beam B`: the best hypothesis as text or ids, or every hypothesis as JSON.
fn run_beam(
    a: &GenerateArgs,
    model: &engine::Model,
    backend: engine::Backend,
    prompt: &[u32],
    steps: usize,
    beams: usize,
    tokenizer: Option<&ModelTokenizer>,
) -> anyhow::Result<()> {
    if !a.length_penalty.is_finite() {
        anyhow::bail!("--length-penalty must be a finite number");
    }
    let options = BeamOptions {
        beams,
        length_penalty: a.length_penalty,
        max_new: steps,
        // llama2.c's run.c ends generation when the model emits BOS; GGUF vocabularies name
        // their end-of-generation tokens.
        eos: tokenizer.map_or(vec![BOS], ModelTokenizer::stop_ids),
    };
    let describe = backend.describe();
    let sizing = beam::session_options(
        a.run.session_options(),
        model.config().seq_len,
        beams,
        prompt.len(),
        steps,
    );
    let mut session = Session::with_options(model, backend, sizing);
    let mut stats = BeamStats::default();
    let hyps = beam::beam_search(&mut session, prompt, &options, &mut stats)?;
    let text_of = |ids: &[u32]| -> Option<String> {
        let t = tokenizer?;
        let mut text = String::new();
        let mut utf8 = Utf8Stream::default();
        let all: Vec<u32> = prompt.iter().chain(ids).copied().collect();
        for w in all.windows(2) {
            utf8.push(t.decode_piece(w[0], w[1]), &mut text);
        }
        utf8.finish(&mut text);
        Some(text)
    };
    if a.json {
        let list: Vec<serde_json::Value> = hyps
            .iter()
            .map(|h| {
                serde_json::json!({
                    "ids": h.tokens,
                    "text": text_of(&h.tokens),
                    "score": h.score,
                    "log_prob": h.log_prob,
                    "finished": h.finished,
                })
            })
            .collect();
        let j = serde_json::json!({
            "beams": beams,
            "length_penalty": a.length_penalty,
            "prompt_ids": prompt,
            "hypotheses": list,
        });
        println!("{j}");
    } else if let Some(best) = hyps.first() {
        match (text_of(&best.tokens), a.ids) {
            (Some(text), false) => println!("{text}"),
            _ => println!(
                "{}",
                best.tokens
                    .iter()
                    .map(u32::to_string)
                    .collect::<Vec<_>>()
                    .join(" ")
            ),
        }
    }
    let steps_ms: f64 = stats.steps.iter().map(|d| d.as_secs_f64() * 1e3).sum();
    eprintln!(
        "beam search: {beams} hypotheses, {} steps in {steps_ms:.1} ms ({:.2} ms per step), prompt of {} tokens in {:.1} ms; {describe}",
        stats.steps.len(),
        steps_ms / stats.steps.len().max(1) as f64,
        prompt.len(),
        stats.prompt.as_secs_f64() * 1e3
    );
    Ok(())
}
