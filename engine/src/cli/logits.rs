//! `baremetal logits`: teacher-forced next-token logits, one position per input id, for
//! comparing with another engine (llama.cpp's are in ../shared/gguf/reference).

use std::path::PathBuf;

use clap::Args;
use engine::decode::sampler::argmax;
use engine::Session;

/// Arguments of `logits`.
#[derive(Args)]
pub struct LogitsArgs {
    /// The model (llama2.c checkpoint or GGUF).
    #[arg(long)]
    model: PathBuf,
    /// The input ids, space- or comma-separated, fed one per position from position 0.
    #[arg(long)]
    ids: String,
    /// How many of the largest logits to print per position.
    #[arg(long, default_value_t = 5)]
    top: usize,
    /// Print `{"positions": [{"input", "argmax", "top": [[id, logit], …]}, …]}`.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    run: super::RunOpts,
}

/// Runs `logits`.
pub fn run(a: LogitsArgs) -> anyhow::Result<()> {
    let ids = a
        .ids
        .split(|c: char| c.is_whitespace() || c == ',')
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<u32>().map_err(|_| {
                anyhow::anyhow!("--ids: {s:?} is not a token id (a non-negative integer)")
            })
        })
        .collect::<anyhow::Result<Vec<u32>>>()?;
    if ids.is_empty() {
        anyhow::bail!("--ids holds no token ids");
    }
    super::existing(&a.model, "model")?;
    let (model, backend) = a.run.load(&a.model)?;
    for n in model.notices() {
        eprintln!("note: {n}");
    }
    let cfg = model.config();
    if let Some(&bad) = ids.iter().find(|&&t| t as usize >= cfg.vocab_size) {
        anyhow::bail!(
            "--ids: token {bad} is outside the vocabulary of {} tokens of {}",
            cfg.vocab_size,
            a.model.display()
        );
    }
    if ids.len() > cfg.seq_len {
        anyhow::bail!(
            "--ids holds {} ids but the context of {} is {} positions",
            ids.len(),
            a.model.display(),
            cfg.seq_len
        );
    }
    let mut options = a.run.session_options();
    // Room for every id, whatever --ctx says.
    options.positions = Some(options.positions.unwrap_or(0).max(ids.len()));
    options.logit_rows = options.batch;
    let mut session = Session::with_options(&model, backend, options);
    let top = a.top.min(cfg.vocab_size);
    let mut positions = Vec::with_capacity(ids.len());
    session.forced(&ids, |i, logits| {
        let mut order: Vec<u32> = (0..logits.len() as u32).collect();
        let k = top.max(1);
        order.select_nth_unstable_by(k - 1, |&x, &y| {
            logits[y as usize]
                .total_cmp(&logits[x as usize])
                .then(x.cmp(&y))
        });
        order.truncate(k);
        order.sort_by(|&x, &y| {
            logits[y as usize]
                .total_cmp(&logits[x as usize])
                .then(x.cmp(&y))
        });
        let best: Vec<(u32, f32)> = order
            .iter()
            .take(top)
            .map(|&t| (t, logits[t as usize]))
            .collect();
        positions.push((ids[i], argmax(logits), best));
    })?;
    if a.json {
        let list: Vec<serde_json::Value> = positions
            .iter()
            .map(|(input, arg, best)| {
                serde_json::json!({
                    "input": input,
                    "argmax": arg,
                    "top": best.iter().map(|&(t, l)| serde_json::json!([t, l])).collect::<Vec<_>>(),
                })
            })
            .collect();
        println!("{}", serde_json::json!({ "positions": list }));
    } else {
        for (pos, (input, arg, best)) in positions.iter().enumerate() {
            let shown: Vec<String> = best.iter().map(|(t, l)| format!("{t}:{l:.4}")).collect();
            println!(
                "{pos:>5} input {input:>6} argmax {arg:>6}  {}",
                shown.join(" ")
            );
        }
    }
    Ok(())
}
