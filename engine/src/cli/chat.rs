//! `baremetal chat`: an interactive conversation in the model's own chat template.
//!
//! Each turn renders the whole conversation with the template, tokenizes it, and runs only
//! what the KV cache does not already hold: the longest common prefix with the tokens fed so
//! far stays, the rest (normally just the new turn) is fed in batched chunks. The reply
//! streams as it is generated and ends at an end-of-generation token; tokens/s per turn go
//! to stderr.

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use engine::decode::generate::{generate, max_steps};
use engine::decode::sampler::{Sampler, SamplerConfig};
use engine::text::chat_template::{strip_added_specials, ChatTemplate, Message};
use engine::text::tokenizer::Utf8Stream;
use engine::text::ModelTokenizer;
use engine::Session;

/// Arguments of `chat`.
#[derive(Args)]
pub struct ChatArgs {
    /// The model: a GGUF file (its tokenizer and chat template are used), or a llama2.c
    /// checkpoint with --tokenizer and --chat-template.
    #[arg(long)]
    model: PathBuf,
    /// llama2.c's tokenizer.bin (for llama2.c checkpoints).
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// A system message to start the conversation with.
    #[arg(long)]
    system: Option<String>,
    /// The chat template when the model carries none, or to override its own: a built-in name
    /// (chatml, llama2, llama3, zephyr) or a Jinja file.
    #[arg(long, value_name = "NAME|FILE")]
    chat_template: Option<String>,
    /// Most tokens per reply (default: until an end-of-generation token or the context ends).
    #[arg(long)]
    max_tokens: Option<usize>,
    /// Sampling temperature; 0 is greedy. Defaults are llama.cpp's.
    #[arg(long, default_value_t = 0.8, allow_negative_numbers = true)]
    temperature: f32,
    /// Nucleus sampling threshold (1 = off).
    #[arg(long, default_value_t = 0.95, allow_negative_numbers = true)]
    top_p: f32,
    /// Keep only the k most probable tokens (0 = off).
    #[arg(long, default_value_t = 40)]
    top_k: usize,
    /// Random seed (default: from the clock).
    #[arg(long, allow_negative_numbers = true)]
    seed: Option<u64>,
    #[command(flatten)]
    run: super::RunOpts,
}

/// Runs `chat`.
pub fn run(a: ChatArgs) -> anyhow::Result<()> {
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
    super::existing(&a.model, "model")?;
    let template = load_template(&a.model, a.chat_template.as_deref())?;
    let (model, backend) = a.run.load(&a.model)?;
    for n in model.notices() {
        eprintln!("note: {n}");
    }
    let cfg = model.config().clone();
    let tok = super::tokenizer_for(&model, a.tokenizer.as_deref())?.ok_or_else(|| {
        anyhow::anyhow!(
            "{} carries no tokenizer; give --tokenizer tokenizer.bin",
            a.model.display()
        )
    })?;
    let ctx = a.run.context(&cfg);
    let describe = backend.describe();
    let mut session = Session::with_options(&model, backend, a.run.session_options());
    let mut sampler = Sampler::new(cfg.vocab_size, sampler_cfg);
    let stop = tok.stop_ids();
    let (bos_text, eos_text) = (tok.bos_text(), tok.eos_text());
    let (add_bos, add_eos) = adds_specials(&tok);

    let mut messages = Vec::new();
    if let Some(s) = &a.system {
        messages.push(Message::new("system", s.as_str()));
    }
    // Exactly the tokens whose keys and values the cache holds, in order.
    let mut cached: Vec<u32> = Vec::new();
    let interactive = std::io::stdin().is_terminal();
    eprintln!(
        "chat with {} ({describe}; context {ctx}; seed {seed}). Type a message; /reset starts over, /exit or end of input quits.",
        a.model.display()
    );
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    let mut turn = 0;
    loop {
        if interactive {
            eprint!("> ");
            std::io::stderr().flush().ok();
        }
        let Some(line) = lines.next() else { break };
        let line = line.context("reading stdin")?;
        let input = line.trim_end_matches(['\r', '\n']);
        match input.trim() {
            "" => continue,
            "/exit" | "/quit" => break,
            "/reset" => {
                messages.truncate(usize::from(a.system.is_some()));
                cached.clear();
                session.reset();
                eprintln!("(conversation cleared)");
                continue;
            }
            _ => {}
        }
        messages.push(Message::new("user", input));
        let rendered = template
            .render_conversation(&messages, true, &bos_text, &eos_text, None)
            .map_err(|e| anyhow::anyhow!("the chat template failed: {e}"))?;
        let text = strip_added_specials(&rendered, &bos_text, &eos_text, add_bos, add_eos);
        let ids = tok.encode(text, true);
        if ids.len() >= ctx {
            messages.pop();
            eprintln!(
                "the conversation is {} tokens, more than the context of {ctx} holds; /reset to start over{}",
                ids.len(),
                if ctx < cfg.seq_len { " (or raise --ctx)" } else { "" }
            );
            continue;
        }
        // Keep what the cache already holds of this text; feed at least one token so the
        // last position's logits are fresh.
        let keep = common_prefix(&cached, &ids).min(ids.len() - 1);
        session.truncate(keep);
        cached.truncate(keep);
        let new = &ids[keep..];
        let room = max_steps(ids.len(), ctx);
        let steps = a.max_tokens.map_or(room, |m| m.min(room));
        let mut out = std::io::stdout().lock();
        let mut utf8 = Utf8Stream::default();
        let mut piece = String::new();
        let mut reply_ids = Vec::new();
        let mut reply = String::new();
        let stats = generate(&mut session, new, steps, &stop, &mut sampler, |ev| {
            utf8.push(tok.decode_piece(ev.prev, ev.token), &mut piece);
            let _ = out.write_all(piece.as_bytes()).and_then(|()| out.flush());
            reply.push_str(&piece);
            piece.clear();
            reply_ids.push(ev.token);
        })?;
        utf8.finish(&mut piece);
        reply.push_str(&piece);
        out.write_all(piece.as_bytes())?;
        writeln!(out)?;
        drop(out);
        // The cache holds the prompt and every generated token but the last (never fed).
        cached.extend_from_slice(new);
        cached.extend_from_slice(&reply_ids[..reply_ids.len().saturating_sub(1)]);
        debug_assert_eq!(cached.len(), session.pos());
        messages.push(Message::new("assistant", reply));
        turn += 1;
        let ended = if stats.stopped.is_some() {
            "end of turn"
        } else if stats.generated == steps {
            "token limit"
        } else {
            "stopped"
        };
        eprintln!(
            "[turn {turn}: {} prompt tokens fed ({keep} reused from the cache), {} generated at {:.1} tok/s, first after {:.0} ms; {ended}; context {}/{ctx}]",
            new.len(),
            stats.generated,
            stats.tokens_per_second(),
            stats.time_to_first_token.as_secs_f64() * 1e3,
            session.pos(),
        );
        if stats.stopped.is_none() && session.pos() + 1 >= ctx {
            eprintln!("(the context is full: /reset to start over)");
        }
    }
    Ok(())
}

/// The template: `--chat-template` (a built-in name or a file) when given, else the model's
/// own `tokenizer.chat_template`.
fn load_template(model: &Path, flag: Option<&str>) -> anyhow::Result<ChatTemplate> {
    if let Some(name) = flag {
        let path = Path::new(name);
        if path.is_file() {
            let source = std::fs::read_to_string(path)
                .with_context(|| format!("reading chat template {}", path.display()))?;
            return ChatTemplate::new(&source)
                .with_context(|| format!("chat template {}", path.display()));
        }
        return ChatTemplate::builtin(name)
            .map_err(|e| anyhow::anyhow!("--chat-template {name}: not a file, and {e}"));
    }
    let file =
        std::fs::File::open(model).with_context(|| format!("opening {}", model.display()))?;
    // SAFETY: read-only map of a file we do not modify.
    let map = unsafe { memmap2::Mmap::map(&file) }
        .with_context(|| format!("mapping {}", model.display()))?;
    let hint = "give --chat-template NAME|FILE (built-ins: chatml, llama2, llama3, zephyr)";
    if !map.starts_with(b"GGUF") {
        anyhow::bail!(
            "{} is a llama2.c checkpoint, which carries no chat template: {hint}",
            model.display()
        );
    }
    let g = engine::format::gguf::Gguf::parse(&map)
        .with_context(|| format!("{} is not a usable GGUF file", model.display()))?;
    let source = g
        .get_str("tokenizer.chat_template")
        .with_context(|| model.display().to_string())?
        .ok_or_else(|| {
            anyhow::anyhow!("{} has no tokenizer.chat_template: {hint}", model.display())
        })?;
    ChatTemplate::new(source).with_context(|| format!("the chat template of {}", model.display()))
}

/// Whether the tokenizer adds BOS / EOS itself (then the template's own are dropped, as
/// llama.cpp does).
fn adds_specials(tok: &ModelTokenizer) -> (bool, bool) {
    match tok {
        ModelTokenizer::Llama2c(_) => (true, false),
        ModelTokenizer::Gguf(t) => (t.add_bos(), t.add_eos()),
    }
}

fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}
