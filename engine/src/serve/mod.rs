//! `baremetal serve`: an OpenAI-compatible HTTP server with continuous batching.
//!
//! A front end like `cli/`: it may use every layer below. The parts:
//! - [`engine`]: the engine thread, which owns the model's session and runs one batched
//!   forward pass per step over every active request (continuous batching);
//! - [`http`]: the routes (`/v1/completions`, `/v1/chat/completions`, `/v1/models`, `/health`,
//!   `/metrics`) on axum + tokio, streaming as server-sent events;
//! - [`api`]: request parsing and the OpenAI response shapes;
//! - [`codec`]: the tokenizer and chat template behind small traits;
//! - [`stop`], [`metrics`]: stop strings over streamed text, Prometheus counters.
//!
//! The server keeps no state beyond the requests in flight, so replicas behind a load balancer
//! scale it out (README, "Serve it").

pub mod api;
pub mod codec;
pub mod engine;
pub mod http;
pub mod metrics;
pub mod stop;

use std::future::Future;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use crate::format::Model;
use crate::serve::codec::{ChatFormat, TextCodec};
use crate::serve::engine::{BackendFactory, EngineConfig, EngineHandle};
use crate::serve::http::AppState;
use crate::serve::metrics::Metrics;

/// How the server runs.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Engine sizing: slots, context per slot, prompt chunk, KV cache type.
    pub engine: EngineConfig,
    /// Requests that may wait for a slot; beyond them, 503 at once.
    pub queue: usize,
    /// The model's name in requests and `/v1/models`.
    pub model_id: String,
    /// Required `Authorization: Bearer` key (every endpoint but `/health`).
    pub api_key: Option<String>,
    /// Largest request body accepted, in bytes.
    pub body_limit: usize,
    /// On shutdown, how long requests in flight may run on before they are cancelled.
    pub shutdown_grace: Duration,
}

/// Why the server could not run.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The async runtime, the engine thread or the listener could not be set up.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// Serves `model` on `listener` until `shutdown` completes, then stops accepting connections,
/// lets requests in flight finish for up to `shutdown_grace` (then ends them with a final
/// error event), stops the engine thread and returns.
pub fn serve(
    listener: std::net::TcpListener,
    model: Model,
    backend: BackendFactory,
    codec: Arc<dyn TextCodec>,
    chat: Arc<dyn ChatFormat>,
    options: ServeOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let io = |what| move |source| ServeError::Io { what, source };
    let metrics = Arc::new(Metrics::new(options.engine.parallel));
    let engine = EngineHandle::start(
        model,
        backend,
        options.engine,
        codec.clone(),
        metrics.clone(),
    )
    .map_err(io("starting the engine thread"))?;
    let state = Arc::new(AppState::new(
        engine,
        codec,
        chat,
        options.model_id.clone(),
        options.engine.ctx_per_slot,
        options.engine.parallel,
        options.queue,
        metrics,
        options.api_key.clone(),
    ));
    // The handlers are light (the engine has its own thread and its pool): two workers suffice.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("serve-io")
        .enable_all()
        .build()
        .map_err(io("starting the async runtime"))?;
    listener
        .set_nonblocking(true)
        .map_err(io("configuring the listener"))?;
    let grace = options.shutdown_grace;
    let result = runtime.block_on(async {
        let listener =
            tokio::net::TcpListener::from_std(listener).map_err(io("registering the listener"))?;
        let app = http::router(state.clone(), options.body_limit);
        let (stopped_tx, stopped_rx) = tokio::sync::watch::channel(false);
        let st = state.clone();
        let signal = async move {
            shutdown.await;
            st.shutting_down.store(true, Relaxed);
            let _ = stopped_tx.send(true);
        };
        let server = axum::serve(listener, app).with_graceful_shutdown(signal);
        let st = state.clone();
        let deadline = async move {
            let mut rx = stopped_rx;
            while !*rx.borrow() {
                if rx.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
            eprintln!(
                "baremetal serve: shutting down; no new connections, requests in flight may finish within {:.0} s",
                grace.as_secs_f64()
            );
            tokio::time::sleep(grace).await;
            st.engine
                .cancel_all("the server is shutting down; the request was cancelled");
            // Cancelled streams end with their final event at once; a client that does not
            // read its response must not keep the process alive.
            tokio::time::sleep(Duration::from_secs(5)).await;
        };
        tokio::select! {
            r = server => r.map_err(io("serving")),
            () = deadline => Ok(()),
        }
    });
    state.engine.stop();
    runtime.shutdown_timeout(Duration::from_secs(1));
    result
}
