//! Command-line parsing and the one place errors become a message and an exit code.

mod bench;
mod chat;
mod eval;
mod generate;
mod inspect;
mod logits;
mod plot;
mod quantize;
mod serve;
mod synth;
mod template;
mod tokenize;

use std::path::Path;
use std::process::ExitCode;

use clap::error::ErrorKind;
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use engine::kernels::Isa;
use engine::runtime::backend::{compiled_config, Backend};
use engine::runtime::state::KvCacheType;
use engine::{Model, Realign};

/// A Llama-2 inference engine specialised at build time for one model shape.
#[derive(Parser)]
#[command(name = "baremetal")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate text (or token ids) from a llama2.c checkpoint.
    Generate(generate::GenerateArgs),
    /// Chat interactively in the model's own chat template (GGUF), keeping the KV cache
    /// across turns.
    Chat(chat::ChatArgs),
    /// Print a checkpoint's shape as a MODEL_CONFIG TOML file, with its format and size.
    Inspect(inspect::InspectArgs),
    /// Measure tokens/s, per-token latency and the memory roofline fraction.
    Bench(bench::BenchArgs),
    /// Write a checkpoint of a given shape with seeded random weights (not a real model).
    Synth(synth::SynthArgs),
    /// Convert an f32 checkpoint (v0/v1) to llama2.c v2 Q8_0 (int8 weights, f32 group scales)
    /// or baremetal v3 Q4_0 (4-bit weights, f32 group scales).
    Quantize(quantize::QuantizeArgs),
    /// Compare a quantised checkpoint with its f32 original: greedy agreement and mean KL.
    Eval(eval::EvalArgs),
    /// Render a chat template with a JSON context and print the prompt exactly.
    Template(template::TemplateArgs),
    /// Turn text into token ids with a model's tokenizer (GGUF or llama2.c).
    Tokenize(tokenize::TokenizeArgs),
    /// Teacher-forced next-token logits for a list of ids (top-k per position, or JSON).
    Logits(logits::LogitsArgs),
    /// Serve the model over HTTP with an OpenAI-compatible API (completions, chat, streaming),
    /// decoding up to --parallel requests together (continuous batching).
    Serve(serve::ServeArgs),
}

/// Options shared by every command that runs a model.
#[derive(Args, Clone)]
pub struct RunOpts {
    /// Run on the generic runtime-shape kernels (any model; the comparison baseline).
    #[arg(long)]
    pub generic: bool,
    /// Force an instruction set: portable, avx2, avx512 or neon (default: the best available).
    #[arg(long)]
    pub isa: Option<Isa>,
    /// Map the checkpoint in place even when its tensors are not 64-byte aligned on disk (v0).
    /// By default such a file is copied once into aligned memory: measured ~9 % faster
    /// decoding for stories110M (docs/PERFORMANCE.md). Aligned files (v1, v2) are always
    /// mapped in place. Also keeps Q8_0/Q4_0 matrices as stored, on the runtime-shape int8
    /// kernels, instead of tiling a copy for the generated ones.
    #[arg(long)]
    pub zero_copy: bool,
    /// Threads to split each GEMV and the attention heads across (default: all cores).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub threads: Option<u16>,
    /// KV cache element type: f32 (as llama2.c) or f16 (half the attention's memory traffic;
    /// on stories260K logits within 0.06 of f32, mean KL 8e-6 nats; docs/PERFORMANCE.md).
    /// `eval` applies it to the candidate only.
    #[arg(long, value_name = "f32|f16", default_value = "f32")]
    pub kv_cache: KvCacheType,
    /// Prompt tokens per forward pass: each weight is read once per chunk of this many tokens
    /// (default 64, chosen by measurement; docs/PERFORMANCE.md). 1 feeds the prompt token by
    /// token. The logits do not depend on it.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=4096))]
    pub batch: Option<u16>,
    /// Positions of the KV cache: the longest text (prompt + generated) a run holds. Default:
    /// the model's context length, at most 4096 (llama.cpp's default); never more than the
    /// model's context length.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub ctx: Option<u32>,
}

impl RunOpts {
    /// The session sizing these options ask for.
    pub fn session_options(&self) -> engine::runtime::session::SessionOptions {
        let mut o = engine::runtime::session::SessionOptions {
            kv_cache: self.kv_cache,
            ..Default::default()
        };
        if let Some(b) = self.batch {
            o.batch = b.into();
        }
        o.positions = self.ctx.map(|c| c as usize);
        o
    }

    /// The positions a run of `cfg` gets (see `--ctx`).
    pub fn context(&self, cfg: &model_config::ModelConfig) -> usize {
        let wanted = self
            .ctx
            .map_or(engine::runtime::session::DEFAULT_CONTEXT, |c| c as usize);
        wanted.min(cfg.seq_len)
    }

    /// Opens the model and picks its kernels.
    pub fn load(&self, path: &std::path::Path) -> anyhow::Result<(Model, Backend)> {
        let realign = if self.zero_copy {
            Realign::Never
        } else {
            Realign::IfMisaligned
        };
        let model = Model::open(path, realign)?;
        let backend = self.backend(model.config(), path)?;
        Ok((model, backend))
    }

    /// The kernels these options ask for, for a model of shape `config` read from `path`.
    pub fn backend(
        &self,
        config: &model_config::ModelConfig,
        path: &std::path::Path,
    ) -> anyhow::Result<Backend> {
        let backend = if self.generic {
            Backend::generic(self.isa)
        } else {
            Backend::specialised(config, path, self.isa)?
        };
        let backend = backend.ok_or_else(|| {
            anyhow::anyhow!(
                "this CPU cannot run the {} instruction set; choose one of: {}",
                self.isa.map_or("requested", |i| i.name()),
                Isa::all()
                    .iter()
                    .filter(|i| i.is_supported())
                    .map(|i| i.name())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })?;
        let threads = self.threads.map_or_else(
            || std::thread::available_parallelism().map_or(1, |n| n.get()),
            usize::from,
        );
        let backend = if self.zero_copy {
            backend.without_tiling()
        } else {
            backend
        };
        Ok(backend
            .with_threads(threads)
            .for_weights(config.weight_format))
    }
}

/// The tokenizer for `model`: `--tokenizer FILE` when given (llama2.c's `tokenizer.bin`, or a
/// GGUF file whose vocabulary to use), else a GGUF model's own; `None` when there is neither.
pub fn tokenizer_for(
    model: &Model,
    path: Option<&Path>,
) -> anyhow::Result<Option<engine::text::ModelTokenizer>> {
    use engine::text::ModelTokenizer;
    let vocab = model.config().vocab_size;
    let tok = match path {
        Some(path) => {
            existing(path, "tokenizer")?;
            let file = std::fs::File::open(path)
                .map_err(|e| anyhow::anyhow!("cannot open tokenizer {}: {e}", path.display()))?;
            // SAFETY: read-only map of a file we do not modify; as for checkpoints.
            let map = unsafe { memmap2::Mmap::map(&file) }
                .map_err(|e| anyhow::anyhow!("cannot map tokenizer {}: {e}", path.display()))?;
            if map.starts_with(b"GGUF") {
                ModelTokenizer::gguf(&map)
                    .map_err(|e| anyhow::anyhow!("tokenizer {}: {e}", path.display()))?
            } else {
                let t = ModelTokenizer::llama2c(path, vocab)?;
                if let ModelTokenizer::Llama2c(inner) = &t {
                    if inner.unread_bytes() > 0 {
                        anyhow::bail!(
                            "tokenizer {} holds more tokens than the model's vocabulary of {vocab} ({}); use the tokenizer that belongs to this model",
                            path.display(),
                            model.path().display()
                        );
                    }
                }
                t
            }
        }
        None => {
            if !matches!(model.format(), engine::format::FileFormat::Gguf(_)) {
                return Ok(None);
            }
            let g = engine::format::gguf::Gguf::parse(model.file_bytes())?;
            if g.get("tokenizer.ggml.model").is_none() {
                return Ok(None);
            }
            ModelTokenizer::gguf(model.file_bytes())
                .map_err(|e| anyhow::anyhow!("{}: {e}", model.path().display()))?
        }
    };
    if matches!(tok, ModelTokenizer::Gguf(_)) && tok.vocab_size() != vocab {
        anyhow::bail!(
            "the tokenizer has {} tokens but the model {} has a vocabulary of {vocab}; use the model's own tokenizer",
            tok.vocab_size(),
            model.path().display()
        );
    }
    Ok(Some(tok))
}

/// The long `--version` text: the compiled shape and the ISA chosen at start-up.
fn long_version() -> String {
    let c = compiled_config();
    format!(
        "{}\ncompiled for: {} [{}]\nkernels: {} (best this CPU supports; --isa overrides)",
        env!("CARGO_PKG_VERSION"),
        c.name,
        c.shape_summary(),
        Isa::best().name()
    )
}

/// Parses arguments, runs the command, and turns any error into one line on stderr.
pub fn main() -> ExitCode {
    let version: &'static str = Box::leak(long_version().into_boxed_str());
    let matches = match Cli::command()
        .version(env!("CARGO_PKG_VERSION"))
        .long_version(version)
        .try_get_matches()
    {
        Ok(m) => m,
        // A bad flag value is bad input like any other: one line and exit 1, not clap's
        // usage hint and exit 2. Help, version and other usage errors stay clap's.
        Err(e)
            if matches!(
                e.kind(),
                ErrorKind::InvalidValue | ErrorKind::ValueValidation
            ) =>
        {
            let text = e.to_string();
            eprintln!("{}", text.lines().next().unwrap_or("error: invalid value"));
            return ExitCode::FAILURE;
        }
        Err(e) => e.exit(),
    };
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    let result = match cli.command {
        Command::Generate(a) => generate::run(a),
        Command::Inspect(a) => inspect::run(a),
        Command::Bench(a) => bench::run(a),
        Command::Synth(a) => synth::run(a),
        Command::Quantize(a) => quantize::run(a),
        Command::Eval(a) => eval::run(a),
        Command::Template(a) => template::run(a),
        Command::Logits(a) => logits::run(a),
        Command::Serve(a) => serve::run(a),
        Command::Tokenize(a) => tokenize::run(a),
        Command::Chat(a) => chat::run(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", chain(&e));
            ExitCode::FAILURE
        }
    }
}

/// One sentence from an error and its causes, without repeating what a cause already says.
fn chain(e: &anyhow::Error) -> String {
    let mut msg = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !msg.contains(&c) {
            msg = format!("{msg}: {c}");
        }
    }
    msg
}

/// A path argument that must exist, checked up front for a clear message.
pub fn existing(path: &Path, what: &str) -> anyhow::Result<()> {
    if !path.exists() {
        anyhow::bail!("{what} {} does not exist", path.display());
    }
    Ok(())
}
