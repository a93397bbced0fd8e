//! `baremetal template`: renders a chat template with a JSON context and prints the prompt exactly
//! as the model would see it (no newline added), for checking a template against transformers'
//! `apply_chat_template`.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use chrono::{NaiveDate, NaiveDateTime};
use clap::{ArgGroup, Args};
use engine::text::chat_template::{ChatTemplate, TemplateError};

/// Arguments of `template`.
#[derive(Args)]
#[command(group(ArgGroup::new("source").required(true).args(["model", "template", "builtin"])))]
pub struct TemplateArgs {
    /// A GGUF model whose `tokenizer.chat_template` to render.
    #[arg(long)]
    model: Option<PathBuf>,
    /// A Jinja template file (a `tokenizer.chat_template` saved as text).
    #[arg(long)]
    template: Option<PathBuf>,
    /// A built-in template: chatml, llama2, llama3 or zephyr.
    #[arg(long)]
    builtin: Option<String>,
    /// JSON object of the template's variables: messages, add_generation_prompt, bos_token,
    /// eos_token, tools, ... (passed as they are).
    #[arg(long)]
    context: PathBuf,
    /// The time `strftime_now` reports: YYYY-MM-DD, or YYYY-MM-DDTHH:MM:SS (default: now, local).
    #[arg(long, value_parser = parse_now)]
    now: Option<NaiveDateTime>,
}

fn parse_now(s: &str) -> Result<NaiveDateTime, String> {
    let t = s.trim();
    NaiveDateTime::parse_from_str(t, "%Y-%m-%dT%H:%M:%S")
        .or_else(|_| NaiveDateTime::parse_from_str(t, "%Y-%m-%d %H:%M:%S"))
        .or_else(|_| {
            NaiveDate::parse_from_str(t, "%Y-%m-%d").map(|d| d.and_time(Default::default()))
        })
        .map_err(|_| format!("{s:?} is not a date: use YYYY-MM-DD or YYYY-MM-DDTHH:MM:SS"))
}

/// The chat template stored in a GGUF model (`tokenizer.chat_template`), read from the
/// header alone (the tensors are not touched).
pub fn template_source_from_model(path: &Path) -> anyhow::Result<String> {
    super::existing(path, "model")?;
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    // SAFETY: read-only private mapping; like every mmap reader we rely on nobody truncating
    // the file meanwhile.
    let map = unsafe { memmap2::Mmap::map(&file) }
        .with_context(|| format!("mapping {}", path.display()))?;
    if !map.starts_with(b"GGUF") {
        anyhow::bail!(
            "{} is not a GGUF file, so it carries no chat template; pass one with --template or --builtin",
            path.display()
        );
    }
    let g = engine::format::gguf::Gguf::parse(&map)
        .with_context(|| format!("{} is not a usable GGUF file", path.display()))?;
    match g.get_str("tokenizer.chat_template") {
        Ok(Some(t)) => Ok(t.to_string()),
        Ok(None) => anyhow::bail!(
            "{} has no tokenizer.chat_template; pass one with --template FILE or --builtin NAME",
            path.display()
        ),
        Err(e) => Err(anyhow::anyhow!("{}: {e}", path.display())),
    }
}

/// Renders and prints the prompt, byte for byte.
pub fn run(a: TemplateArgs) -> anyhow::Result<()> {
    let template = if let Some(model) = &a.model {
        let source = template_source_from_model(model)?;
        ChatTemplate::new(&source).with_context(|| format!("in {}", model.display()))?
    } else if let Some(path) = &a.template {
        super::existing(path, "template file")?;
        let source = std::fs::read_to_string(path).with_context(|| {
            format!(
                "reading template file {} (it must be UTF-8 text)",
                path.display()
            )
        })?;
        ChatTemplate::new(&source).with_context(|| format!("template file {}", path.display()))?
    } else {
        ChatTemplate::builtin(a.builtin.as_deref().unwrap_or_default())?
    };

    super::existing(&a.context, "context file")?;
    let text = std::fs::read_to_string(&a.context).with_context(|| {
        format!(
            "reading context file {} (it must be UTF-8 JSON)",
            a.context.display()
        )
    })?;
    let context: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("context file {} is not valid JSON", a.context.display()))?;

    let prompt = template.render_at(&context, a.now).map_err(|e| match e {
        TemplateError::Raised(msg) => anyhow::anyhow!("the template refused this context: {msg}"),
        TemplateError::Context(_) => {
            anyhow::anyhow!("context file {}: {e}", a.context.display())
        }
        e => anyhow::Error::new(e),
    })?;
    let mut out = std::io::stdout().lock();
    out.write_all(prompt.as_bytes())
        .and_then(|()| out.flush())
        .context("writing the prompt to stdout")?;
    Ok(())
}
