//! `baremetal serve`: the OpenAI-compatible server (engine/src/serve) on a TCP port.

use std::net::{IpAddr, SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use engine::serve::codec::{ChatFormat, JinjaChat, ModelCodec, TextCodec};
use engine::serve::engine::EngineConfig;
use engine::serve::{serve, ServeOptions};
use engine::text::chat_template::BUILTIN_TEMPLATES;

/// Arguments of `serve`.
#[derive(Args)]
pub struct ServeArgs {
    /// The checkpoint: a GGUF model, a llama2.c file (v0/v1 f32, v2 Q8_0) or a baremetal v3 Q4_0.
    #[arg(long)]
    model: PathBuf,
    /// The tokenizer, if not the GGUF model's own: llama2.c's tokenizer.bin, or a GGUF vocabulary.
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Address to listen on. The default accepts local connections only; 0.0.0.0 exposes the
    /// server to the network (then set --api-key).
    #[arg(long, default_value = "127.0.0.1")]
    host: IpAddr,
    /// TCP port (0: any free port; the address is printed at start-up).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Requests decoded together (slots): each engine step is one forward pass over all of them.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=256))]
    parallel: u16,
    /// Positions (prompt + generated tokens) per slot. Default: --ctx, else the model's context
    /// at most 4096; never more than the model's context.
    #[arg(long)]
    ctx_per_slot: Option<usize>,
    /// Requests that may wait for a free slot; more get 503 at once.
    #[arg(long, default_value_t = 32)]
    queue: usize,
    /// Require `Authorization: Bearer KEY` on every endpoint but /health.
    #[arg(long)]
    api_key: Option<String>,
    /// Chat template for /v1/chat/completions: a Jinja file, or a built-in name (chatml, llama2,
    /// llama3, zephyr). Default: the GGUF model's own `tokenizer.chat_template`; chatml for
    /// models that carry none (llama2.c checkpoints).
    #[arg(long, value_name = "NAME|FILE")]
    chat_template: Option<String>,
    /// The model's name in requests and /v1/models (default: the checkpoint's file name).
    #[arg(long)]
    alias: Option<String>,
    /// Largest request body accepted, in bytes.
    #[arg(long, default_value_t = 1 << 20)]
    max_body: usize,
    /// On SIGTERM / Ctrl-C, seconds that requests in flight may run on before they are cancelled.
    #[arg(long, default_value_t = 30.0)]
    shutdown_timeout: f64,
    /// Fault injection for tests: a prompt holding this token id makes an engine step panic.
    #[arg(long, hide = true)]
    debug_panic_token: Option<u32>,
    /// Fault injection for tests: sleep this many milliseconds after every engine step.
    #[arg(long, hide = true, default_value_t = 0)]
    debug_step_delay_ms: u64,
    #[command(flatten)]
    run: super::RunOpts,
}

/// Runs `serve` until SIGTERM or Ctrl-C.
pub fn run(a: ServeArgs) -> anyhow::Result<()> {
    let chat: Arc<dyn ChatFormat> = Arc::new(chat_template(&a)?);
    if !(a.shutdown_timeout.is_finite() && (0.0..=86_400.0).contains(&a.shutdown_timeout)) {
        anyhow::bail!("--shutdown-timeout must be a number of seconds between 0 and 86400");
    }
    if a.max_body == 0 {
        anyhow::bail!("--max-body must be at least 1 byte");
    }
    super::existing(&a.model, "checkpoint")?;
    let (model, backend) = a.run.load(&a.model)?;
    let cfg = model.config().clone();
    let Some(tokenizer) = super::tokenizer_for(&model, a.tokenizer.as_deref())? else {
        anyhow::bail!(
            "{} carries no tokenizer: serving text needs --tokenizer (llama2.c's tokenizer.bin or a GGUF vocabulary of the model)",
            a.model.display()
        );
    };
    let codec: Arc<dyn TextCodec> = Arc::new(ModelCodec::new(tokenizer));
    let ctx = a.ctx_per_slot.unwrap_or_else(|| a.run.context(&cfg));
    if ctx == 0 || ctx > cfg.seq_len {
        anyhow::bail!(
            "--ctx-per-slot {ctx} is outside 1..={}, the model's context ({})",
            cfg.seq_len,
            a.model.display()
        );
    }
    let batch = a.run.session_options().batch;
    let parallel = usize::from(a.parallel);
    let model_id = a.alias.clone().unwrap_or_else(|| {
        a.model
            .file_name()
            .map_or_else(|| "model".into(), |n| n.to_string_lossy().into_owned())
    });
    let options = ServeOptions {
        engine: EngineConfig {
            parallel,
            ctx_per_slot: ctx,
            batch,
            kv_cache: a.run.kv_cache,
            debug_panic_token: a.debug_panic_token,
            debug_step_delay: Duration::from_millis(a.debug_step_delay_ms),
        },
        queue: a.queue,
        model_id: model_id.clone(),
        api_key: a.api_key.clone(),
        body_limit: a.max_body,
        shutdown_grace: Duration::from_secs_f64(a.shutdown_timeout),
    };
    let addr = SocketAddr::new(a.host, a.port);
    let listener = TcpListener::bind(addr).with_context(|| {
        format!("cannot listen on {addr} (is another server using the port? choose another with --port)")
    })?;
    let local = listener
        .local_addr()
        .context("reading the listening address")?;
    let describe = backend.describe();
    // The first backend is the one just loaded (its kernels were checked); a restart after a
    // panic builds a fresh one the same way.
    let mut first = Some(backend);
    let (run_opts, path, model_cfg) = (a.run.clone(), a.model.clone(), cfg.clone());
    let factory = Box::new(move || {
        first.take().unwrap_or_else(|| {
            run_opts
                .backend(&model_cfg, &path)
                .expect("the same options built a backend at start-up")
        })
    });
    eprintln!(
        "baremetal serve: listening on http://{local} (model {model_id}, {parallel} slots x {ctx} positions, prompt chunks of {batch}, queue {}, chat template {}; {describe})",
        a.queue,
        chat.name()
    );
    serve(
        listener,
        model,
        factory,
        codec,
        chat,
        options,
        shutdown_signal(),
    )?;
    eprintln!("baremetal serve: stopped");
    Ok(())
}

/// The chat template `--chat-template` names, else the GGUF model's own, else chatml.
fn chat_template(a: &ServeArgs) -> anyhow::Result<JinjaChat> {
    match &a.chat_template {
        Some(t) if std::path::Path::new(t).is_file() => {
            let source = std::fs::read_to_string(t)
                .with_context(|| format!("reading chat template file {t} (it must be UTF-8 text)"))?;
            JinjaChat::new(&source, t.as_str())
                .with_context(|| format!("chat template file {t}"))
        }
        Some(name) => JinjaChat::builtin(name).map_err(|_| {
            anyhow::anyhow!(
                "--chat-template {name} is neither a file nor a built-in template; the built-in ones are {}",
                BUILTIN_TEMPLATES
                    .iter()
                    .map(|(n, _)| *n)
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        }),
        None => {
            let is_gguf = std::fs::File::open(&a.model)
                .and_then(|mut f| {
                    let mut magic = [0u8; 4];
                    std::io::Read::read_exact(&mut f, &mut magic).map(|()| magic == *b"GGUF")
                })
                .unwrap_or(false);
            if is_gguf {
                if let Ok(source) = super::template::template_source_from_model(&a.model) {
                    return JinjaChat::new(&source, "the model's own").with_context(|| {
                        format!(
                            "the chat template of {} (choose another with --chat-template)",
                            a.model.display()
                        )
                    });
                }
            }
            Ok(JinjaChat::builtin("chatml")?)
        }
    }
}

/// Completes on Ctrl-C (SIGINT) or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
