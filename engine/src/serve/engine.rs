//! The engine thread: continuous batching over the server's slots.
//!
//! It owns the model's [`Session`] (which borrows the model, so both live on this thread) and
//! talks to the HTTP handlers over channels: a handler submits a [`Job`] and reads the job's
//! [`Event`]s. Each step is ONE [`Session::forward_rows`] over
//! - one row per generating slot (its last sampled token), then
//! - prompt rows of the slots still prefilling, in the order they were admitted, at most
//!   `batch` of them per step,
//!
//! as llama.cpp's server builds its batches (`update_slots`): a long prompt is fed in chunks
//! between decode steps and never stalls the others for more than one chunk. Every slot has its
//! own KV sequence, in its own region of the cache, so a row's logits do not depend on what
//! else is in the pass and a greedy request gives the same text alone or among others.
//!
//! A job whose event receiver is gone (the client disconnected, or a stop string ended it)
//! frees its slot before the next step. A panic during a step fails the requests in flight,
//! and the engine starts again on a fresh session and backend, keeping the queue.

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc::UnboundedSender;

use crate::decode::sampler::{Sampler, SamplerConfig};
use crate::format::Model;
use crate::runtime::backend::Backend;
use crate::runtime::forward::Row;
use crate::runtime::kv::{KvCacheType, SeqId, BLOCK};
use crate::runtime::session::{Session, SessionOptions};
use crate::serve::codec::TextCodec;
use crate::serve::metrics::Metrics;

/// How the engine is sized.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineConfig {
    /// Slots: requests decoded together.
    pub parallel: usize,
    /// Positions per slot (prompt and generated tokens).
    pub ctx_per_slot: usize,
    /// The most prompt tokens fed in one step.
    pub batch: usize,
    /// The KV cache's element type.
    pub kv_cache: KvCacheType,
    /// Fault injection for tests: a prompt holding this token id makes the step that admits
    /// it panic.
    pub debug_panic_token: Option<u32>,
    /// Slows every step down by this long (tests: keeps requests in flight long enough to
    /// disconnect, fill the queue or shut down in the middle of one).
    pub debug_step_delay: Duration,
}

impl EngineConfig {
    /// The session sizing for this configuration: a decode row per slot plus a prompt chunk
    /// per pass; one KV sequence per slot, each in a region of whole blocks.
    pub fn session_options(&self) -> SessionOptions {
        SessionOptions {
            kv_cache: self.kv_cache,
            batch: self.parallel + self.batch,
            logit_rows: self.parallel,
            sequences: self.parallel,
            positions: Some(self.parallel * self.ctx_per_slot.div_ceil(BLOCK) * BLOCK),
        }
    }
}

/// One request for the engine.
#[derive(Debug)]
pub struct Job {
    /// The prompt's tokens (with BOS); at least one, at most the slot's context.
    pub prompt: Vec<u32>,
    /// The most tokens to generate (at least 1).
    pub max_tokens: usize,
    /// How to pick tokens.
    pub sampler: SamplerConfig,
    /// Report each token's log-probability and this many most likely alternatives.
    pub logprobs: Option<usize>,
    /// Do not end at end tokens (they are generated, sent and fed like any other).
    pub ignore_eos: bool,
    /// Where the job's events go; when the receiver is dropped the job is cancelled.
    pub events: UnboundedSender<Event>,
}

/// Why a generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// The model ended its text (an end token), or a stop string was met.
    Stop,
    /// `max_tokens` or the slot's context was reached.
    Length,
}

impl Finish {
    /// OpenAI's `finish_reason`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stop => "stop",
            Self::Length => "length",
        }
    }
}

/// What the engine tells a handler about its job.
#[derive(Debug)]
pub enum Event {
    /// A generated token.
    Token {
        /// Its id.
        id: u32,
        /// Its log-probability under the model (natural log), when asked for.
        logprob: Option<f32>,
        /// The most likely tokens at this step with their log-probabilities, when asked for.
        top: Vec<(u32, f32)>,
    },
    /// The generation ended.
    Done {
        /// Why.
        finish: Finish,
        /// Tokens of the prompt.
        prompt_tokens: usize,
        /// Tokens generated (end tokens are not counted or sent).
        completion_tokens: usize,
    },
    /// The job could not be completed (the server is shutting down, or an internal error).
    Failed {
        /// HTTP status that describes it (503 shutting down, 500 internal).
        status: u16,
        /// What happened.
        message: String,
    },
}

enum Command {
    Submit(Job),
    CancelAll(String),
    Stop,
}

/// Builds a fresh backend for the engine (at start and after a panic).
pub type BackendFactory = Box<dyn FnMut() -> Backend + Send>;

/// The handlers' side of the engine thread.
pub struct EngineHandle {
    tx: std::sync::Mutex<std_mpsc::Sender<Command>>,
    thread: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// The engine thread is gone (it only stops when told to).
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the engine thread has stopped")]
pub struct EngineGone;

impl EngineHandle {
    /// Starts the engine thread on `model`. Returns once its first session is allocated.
    pub fn start(
        model: Model,
        mut backend: BackendFactory,
        config: EngineConfig,
        codec: Arc<dyn TextCodec>,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<Self> {
        let (tx, rx) = std_mpsc::channel();
        let (ready_tx, ready_rx) = std_mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("engine".into())
            .spawn(move || {
                run(
                    &model,
                    &mut backend,
                    config,
                    &codec,
                    &metrics,
                    &rx,
                    ready_tx,
                );
            })?;
        // The thread reports once its buffers exist; an Err means it died first.
        ready_rx.recv().map_err(|_| {
            std::io::Error::other("the engine thread stopped while allocating its session")
        })?;
        Ok(Self {
            tx: std::sync::Mutex::new(tx),
            thread: std::sync::Mutex::new(Some(thread)),
        })
    }

    fn send(&self, c: Command) -> Result<(), EngineGone> {
        let tx = self.tx.lock().unwrap_or_else(|p| p.into_inner());
        tx.send(c).map_err(|_| EngineGone)
    }

    /// Queues a job.
    pub fn submit(&self, job: Job) -> Result<(), EngineGone> {
        self.send(Command::Submit(job))
    }

    /// Ends every job in flight or queued with a [`Event::Failed`] of status 503.
    pub fn cancel_all(&self, message: &str) {
        let _ = self.send(Command::CancelAll(message.to_string()));
    }

    /// Stops the thread (jobs still in flight are failed) and waits for it.
    pub fn stop(&self) {
        let _ = self.send(Command::Stop);
        let thread = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(t) = thread {
            let _ = t.join();
        }
    }
}

/// A request in a slot.
struct Active {
    job: Job,
    seq: SeqId,
    sampler: Sampler,
    /// Prompt tokens fed so far.
    fed: usize,
    /// The token to feed next once the prompt is in (the last one generated).
    next: u32,
    generated: usize,
    /// Admission order: prompts are fed first come, first served.
    admitted: u64,
    /// Set during a step when the job ended without a result (client gone, bad logits).
    dropped: bool,
    /// Set during a step when the model generated an end token.
    ended: bool,
}

struct Scheduler<'m, 'a> {
    session: Session<'m>,
    config: EngineConfig,
    codec: &'a dyn TextCodec,
    metrics: &'a Metrics,
    slots: Vec<Option<Active>>,
    waiting: VecDeque<Job>,
    rows: Vec<Row>,
    /// Slot of each logits row of the pass, in order.
    owners: Vec<usize>,
    /// Slots still prefilling, in admission order (rebuilt each step; reserved).
    prefilling: Vec<usize>,
    /// Copy of a logits row for log-probabilities (sampling overwrites the logits).
    scratch: Vec<f32>,
    admitted: u64,
}

/// Wait this long for work while idle before checking the channel again.
const IDLE_POLL: Duration = Duration::from_millis(200);

fn run(
    model: &Model,
    backend: &mut BackendFactory,
    config: EngineConfig,
    codec: &Arc<dyn TextCodec>,
    metrics: &Metrics,
    rx: &std_mpsc::Receiver<Command>,
    ready: std_mpsc::Sender<()>,
) {
    let mut waiting = VecDeque::new();
    let mut ready = Some(ready);
    loop {
        let session = Session::with_options(model, backend(), config.session_options());
        let mut s = Scheduler::new(session, config, codec.as_ref(), metrics, waiting);
        if let Some(r) = ready.take() {
            let _ = r.send(());
        }
        match catch_unwind(AssertUnwindSafe(|| s.run(rx))) {
            Ok(()) => return,
            Err(panic) => {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".into());
                metrics.engine_restarts.fetch_add(1, Relaxed);
                let active = s.fail_active(500, &format!("internal error in the engine ({what}); the request was dropped and the engine restarted, retry it"));
                eprintln!("engine: a step panicked ({what}); failed the {active} request(s) in flight and restarted on a fresh session");
                waiting = std::mem::take(&mut s.waiting);
            }
        }
    }
}

impl<'m, 'a> Scheduler<'m, 'a> {
    fn new(
        session: Session<'m>,
        config: EngineConfig,
        codec: &'a dyn TextCodec,
        metrics: &'a Metrics,
        waiting: VecDeque<Job>,
    ) -> Self {
        let vocab = session.model().config().vocab_size;
        let mut session = session;
        // The session's own sequence is not used: free it so every slot has a sequence.
        let own = session.sequence();
        session.kv_mut().free(own);
        Self {
            session,
            config,
            codec,
            metrics,
            slots: (0..config.parallel).map(|_| None).collect(),
            waiting,
            rows: Vec::with_capacity(config.parallel + config.batch),
            owners: Vec::with_capacity(config.parallel),
            prefilling: Vec::with_capacity(config.parallel),
            scratch: vec![0.0; vocab],
            admitted: 0,
        }
    }

    fn busy(&self) -> bool {
        !self.waiting.is_empty() || self.slots.iter().any(Option::is_some)
    }

    /// Handles one command; false means stop.
    fn command(&mut self, c: Command) -> bool {
        match c {
            Command::Submit(job) => self.waiting.push_back(job),
            Command::CancelAll(message) => {
                self.fail_active(503, &message);
                for job in self.waiting.drain(..) {
                    let _ = job.events.send(Event::Failed {
                        status: 503,
                        message: message.clone(),
                    });
                }
            }
            Command::Stop => {
                self.fail_active(503, "the server is shutting down");
                for job in self.waiting.drain(..) {
                    let _ = job.events.send(Event::Failed {
                        status: 503,
                        message: "the server is shutting down".into(),
                    });
                }
                return false;
            }
        }
        true
    }

    fn run(&mut self, rx: &std_mpsc::Receiver<Command>) {
        loop {
            // Block while there is nothing to do; otherwise take what has arrived and step.
            if !self.busy() {
                match rx.recv_timeout(IDLE_POLL) {
                    Ok(c) => {
                        if !self.command(c) {
                            return;
                        }
                    }
                    Err(std_mpsc::RecvTimeoutError::Timeout) => {}
                    Err(std_mpsc::RecvTimeoutError::Disconnected) => return,
                }
            }
            loop {
                match rx.try_recv() {
                    Ok(c) => {
                        if !self.command(c) {
                            return;
                        }
                    }
                    Err(std_mpsc::TryRecvError::Empty) => break,
                    Err(std_mpsc::TryRecvError::Disconnected) => return,
                }
            }
            self.step();
        }
    }

    fn release(&mut self, slot: usize) {
        if let Some(a) = self.slots[slot].take() {
            self.session.kv_mut().free(a.seq);
        }
    }

    /// Fails every job in a slot; returns how many.
    fn fail_active(&mut self, status: u16, message: &str) -> usize {
        let mut n = 0;
        for i in 0..self.slots.len() {
            if let Some(a) = &self.slots[i] {
                let _ = a.job.events.send(Event::Failed {
                    status,
                    message: message.to_string(),
                });
                n += 1;
                self.release(i);
            }
        }
        self.gauges();
        n
    }

    fn gauges(&self) {
        let active = self.slots.iter().filter(|s| s.is_some()).count();
        self.metrics.active_slots.store(active as u64, Relaxed);
        self.metrics
            .queue_depth
            .store(self.waiting.len() as u64, Relaxed);
    }

    fn finish(&mut self, slot: usize, finish: Finish) {
        if let Some(a) = &self.slots[slot] {
            let _ = a.job.events.send(Event::Done {
                finish,
                prompt_tokens: a.job.prompt.len(),
                completion_tokens: a.generated,
            });
        }
        self.release(slot);
    }

    /// One scheduling step: drop cancelled jobs, admit waiting ones, run one forward pass.
    fn step(&mut self) {
        self.waiting.retain(|j| !j.events.is_closed());
        for i in 0..self.slots.len() {
            if self.slots[i]
                .as_ref()
                .is_some_and(|a| a.job.events.is_closed())
            {
                self.release(i);
            }
        }
        for i in 0..self.slots.len() {
            if self.slots[i].is_some() {
                continue;
            }
            let Some(job) = self.waiting.pop_front() else {
                break;
            };
            if let Some(t) = self.config.debug_panic_token {
                assert!(
                    !job.prompt.contains(&t),
                    "debug fault injection: the prompt holds token {t}"
                );
            }
            let seq = match self.session.kv_mut().create() {
                Ok(seq) => seq,
                Err(e) => {
                    let _ = job.events.send(Event::Failed {
                        status: 500,
                        message: format!("no KV sequence for a free slot: {e}"),
                    });
                    continue;
                }
            };
            self.metrics
                .prompt_tokens
                .fetch_add(job.prompt.len() as u64, Relaxed);
            let sampler = Sampler::new(self.scratch.len(), job.sampler);
            self.admitted += 1;
            self.slots[i] = Some(Active {
                job,
                seq,
                sampler,
                fed: 0,
                next: 0,
                generated: 0,
                admitted: self.admitted,
                dropped: false,
                ended: false,
            });
        }
        self.gauges();
        if self.slots.iter().all(Option::is_none) {
            return;
        }
        let start = Instant::now();

        // Decode rows: one per slot whose prompt is in.
        self.rows.clear();
        self.owners.clear();
        self.prefilling.clear();
        for i in 0..self.slots.len() {
            let Some(a) = &self.slots[i] else { continue };
            if a.fed < a.job.prompt.len() {
                self.prefilling.push(i);
                continue;
            }
            let (seq, token) = (a.seq, a.next);
            let pos = self.session.kv().len(seq);
            if let Err(e) = self.session.kv_mut().append(seq, 1) {
                self.fail(i, &format!("the KV cache refused a position: {e}"));
                continue;
            }
            self.rows.push(Row {
                seq,
                token,
                pos,
                logits: true,
            });
            self.owners.push(i);
        }
        // Prompt rows, first admitted first, up to `batch` per step.
        let slots = &self.slots;
        self.prefilling
            .sort_unstable_by_key(|&i| slots[i].as_ref().map_or(0, |a| a.admitted));
        let mut budget = self.config.batch;
        for k in 0..self.prefilling.len() {
            if budget == 0 {
                break;
            }
            let i = self.prefilling[k];
            let Some(a) = &mut self.slots[i] else {
                continue;
            };
            let n = budget.min(a.job.prompt.len() - a.fed);
            if let Err(e) = self.session.kv_mut().append(a.seq, n) {
                let msg = format!("the KV cache refused the prompt: {e}");
                self.fail(i, &msg);
                continue;
            }
            let last = a.job.prompt.len() - 1;
            for p in a.fed..a.fed + n {
                self.rows.push(Row {
                    seq: a.seq,
                    token: a.job.prompt[p],
                    pos: p,
                    logits: p == last,
                });
            }
            if a.fed + n == a.job.prompt.len() {
                self.owners.push(i);
            }
            a.fed += n;
            budget -= n;
        }
        if self.rows.is_empty() {
            return;
        }

        let vocab = self.scratch.len();
        let logits = match self.session.forward_rows(&self.rows) {
            Ok(l) => l,
            Err(e) => {
                // Every row was checked when it was built; this is a bug. Fail the pass's jobs.
                let msg = format!("the forward pass refused the batch: {e}");
                let mut involved: Vec<usize> = self.owners.clone();
                involved.extend(self.prefilling.iter().copied());
                for i in involved {
                    self.fail(i, &msg);
                }
                return;
            }
        };
        let mut generated = 0u64;
        for (k, &i) in self.owners.iter().enumerate() {
            let row = &mut logits[k * vocab..(k + 1) * vocab];
            let Some(a) = &mut self.slots[i] else {
                continue;
            };
            let (logprob_top, wants) = match a.job.logprobs {
                Some(n) => {
                    self.scratch.copy_from_slice(row);
                    (n, true)
                }
                None => (0, false),
            };
            let finite = row.iter().all(|v| v.is_finite());
            let id = a.sampler.sample(row);
            let event = if !finite {
                None
            } else if wants {
                let (logprob, top) = log_probs(&self.scratch, id, logprob_top);
                Some((Some(logprob), top))
            } else {
                Some((None, Vec::new()))
            };
            let Some((logprob, top)) = event else {
                let _ = a.job.events.send(Event::Failed {
                    status: 500,
                    message: "the model produced non-finite logits; its weights are corrupt".into(),
                });
                // Released after the loop (the logits borrow the session).
                a.dropped = true;
                continue;
            };
            if !a.job.ignore_eos && self.codec.is_end(id) {
                a.ended = true;
                continue;
            }
            a.generated += 1;
            a.next = id;
            generated += 1;
            if a.job
                .events
                .send(Event::Token { id, logprob, top })
                .is_err()
            {
                a.dropped = true;
            }
        }
        // Counted before any job is told it is done, so a client that has its answer sees it
        // in /metrics.
        self.metrics.completion_tokens.fetch_add(generated, Relaxed);
        self.metrics.step(start.elapsed(), self.rows.len());
        // Second pass (the logits borrow ended): finish, fail or keep each owner.
        let ctx = self.config.ctx_per_slot;
        for k in 0..self.owners.len() {
            let i = self.owners[k];
            let Some(a) = &self.slots[i] else { continue };
            let len = self.session.kv().len(a.seq);
            if a.dropped {
                // Cancelled (receiver gone) or failed above.
                self.release(i);
            } else if a.ended {
                self.finish(i, Finish::Stop);
            } else if a.generated >= a.job.max_tokens || len >= ctx {
                self.finish(i, Finish::Length);
            }
        }
        self.gauges();
        if !self.config.debug_step_delay.is_zero() {
            std::thread::sleep(self.config.debug_step_delay);
        }
    }

    fn fail(&mut self, slot: usize, message: &str) {
        if let Some(a) = &self.slots[slot] {
            let _ = a.job.events.send(Event::Failed {
                status: 500,
                message: message.to_string(),
            });
        }
        self.release(slot);
    }
}

/// The log-probability of `id` under `logits` (log-softmax) and the `n` most likely tokens
/// with theirs, most likely first (lower id first among equals).
pub fn log_probs(logits: &[f32], id: u32, n: usize) -> (f32, Vec<(u32, f32)>) {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|&v| f64::from(v - max).exp()).sum();
    let lse = f64::from(max) + sum.ln();
    let lp = |v: f32| (f64::from(v) - lse) as f32;
    let mut top: Vec<(u32, f32)> = Vec::with_capacity(n);
    if n > 0 {
        for (i, &v) in logits.iter().enumerate() {
            if top.len() == n && v <= top[n - 1].1 {
                continue;
            }
            let at = top.partition_point(|&(_, t)| t >= v);
            if top.len() == n {
                top.pop();
            }
            top.insert(at, (i as u32, v));
        }
        for t in &mut top {
            t.1 = lp(t.1);
        }
    }
    (lp(logits[id as usize]), top)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_probs_match_a_plain_f64_log_softmax() {
        let mut rng = crate::decode::sampler::Rng::new(11);
        for len in [1usize, 2, 7, 100, 513] {
            let logits: Vec<f32> = (0..len).map(|_| rng.next_f32() * 20.0 - 10.0).collect();
            let z: f64 = logits.iter().map(|&v| f64::from(v).exp()).sum();
            let want = |i: usize| (f64::from(logits[i]) - z.ln()) as f32;
            for id in [0, len / 2, len - 1] {
                let n = 5.min(len);
                let (lp, top) = log_probs(&logits, id as u32, n);
                assert!((lp - want(id)).abs() < 1e-5, "{lp} vs {}", want(id));
                let mut order: Vec<usize> = (0..len).collect();
                order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
                let ids: Vec<u32> = top.iter().map(|t| t.0).collect();
                let want_ids: Vec<u32> = order[..n].iter().map(|&i| i as u32).collect();
                assert_eq!(ids, want_ids);
                for (t, &i) in top.iter().zip(&order) {
                    assert!((t.1 - want(i)).abs() < 1e-5);
                }
            }
        }
    }
}
