//! The server's engine thread (continuous batching) against llama2.c's reference output:
//! stories260K decoded greedily from BOS must give `reference/stories260K_greedy256.json`,
//! alone and with other requests sharing every forward pass, prompts fed in chunks between
//! decode steps.

mod common;

use std::sync::Arc;
use std::time::Duration;

use engine::decode::sampler::SamplerConfig;
use engine::runtime::kv::KvCacheType;
use engine::serve::codec::TextCodec;
use engine::serve::engine::{EngineConfig, EngineHandle, Event, Finish, Job};
use engine::serve::metrics::Metrics;
use engine::{Backend, Model, Realign};
use tokio::sync::mpsc;

/// stories260K's vocabulary has no tokenizer in the fixtures; the engine only asks which ids
/// end a text.
struct Ids {
    end: Option<u32>,
}

impl TextCodec for Ids {
    fn vocab_size(&self) -> usize {
        512
    }
    fn encode(&self, _text: &str, _special: bool) -> Vec<u32> {
        unreachable!("the engine never encodes")
    }
    fn piece(&self, _prev: u32, _id: u32) -> &[u8] {
        b""
    }
    fn is_end(&self, id: u32) -> bool {
        Some(id) == self.end
    }
    fn max_piece_bytes(&self) -> usize {
        1
    }
    fn bos_text(&self) -> &str {
        ""
    }
    fn eos_text(&self) -> &str {
        ""
    }
    fn adds_specials(&self) -> (bool, bool) {
        (false, false)
    }
}

fn engine(
    parallel: usize,
    batch: usize,
    end: Option<u32>,
    delay: Duration,
) -> Option<(EngineHandle, Arc<Metrics>)> {
    let path = common::stories260k()?;
    let model = Model::open(&path, Realign::IfMisaligned).unwrap();
    let metrics = Arc::new(Metrics::new(parallel));
    let config = EngineConfig {
        parallel,
        ctx_per_slot: 300,
        batch,
        kv_cache: KvCacheType::F32,
        debug_panic_token: None,
        debug_step_delay: delay,
    };
    let backend = Box::new(|| Backend::generic(None).unwrap().with_threads(2));
    let h = EngineHandle::start(
        model,
        backend,
        config,
        Arc::new(Ids { end }),
        metrics.clone(),
    )
    .unwrap();
    Some((h, metrics))
}

fn reference() -> Option<Vec<u32>> {
    let path = engine::fixtures::fixture("reference/stories260K_greedy256.json")?;
    let g: common::Greedy = common::read_json(&path);
    assert_eq!(g.bos, 1);
    Some(g.tokens)
}

fn job(
    prompt: Vec<u32>,
    max_tokens: usize,
    ignore_eos: bool,
) -> (Job, mpsc::UnboundedReceiver<Event>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let job = Job {
        prompt,
        max_tokens,
        sampler: SamplerConfig {
            temperature: 0.0,
            ..SamplerConfig::default()
        },
        logprobs: None,
        ignore_eos,
        events: tx,
    };
    (job, rx)
}

/// Reads a job's events to the end: its tokens and how it finished.
fn collect(rx: &mut mpsc::UnboundedReceiver<Event>) -> (Vec<u32>, Finish, usize) {
    let mut tokens = Vec::new();
    loop {
        match rx
            .blocking_recv()
            .expect("the engine ends every job with Done or Failed")
        {
            Event::Token { id, .. } => tokens.push(id),
            Event::Done {
                finish,
                completion_tokens,
                ..
            } => return (tokens, finish, completion_tokens),
            Event::Failed { message, .. } => panic!("job failed: {message}"),
        }
    }
}

#[test]
fn one_request_reproduces_llama2c() {
    let (Some(want), Some((h, _))) = (reference(), engine(1, 64, None, Duration::ZERO)) else {
        return;
    };
    let (j, mut rx) = job(vec![1], 256, false);
    h.submit(j).unwrap();
    let (tokens, finish, n) = collect(&mut rx);
    assert_eq!(tokens, want);
    assert_eq!((finish, n), (Finish::Length, 256));
    h.stop();
}

/// Five requests on four slots, submitted together: prompts of 1 to 150 reference tokens (fed
/// 16 at a time between the others' decode steps) must each continue exactly as the
/// reference does.
#[test]
fn requests_sharing_passes_each_reproduce_llama2c() {
    let (Some(want), Some((h, metrics))) = (reference(), engine(4, 16, None, Duration::ZERO))
    else {
        return;
    };
    let cuts = [0usize, 37, 150, 5, 90];
    let mut rxs = Vec::new();
    for &k in &cuts {
        let mut prompt = vec![1];
        prompt.extend(&want[..k]);
        let (j, rx) = job(prompt, 256 - k, false);
        h.submit(j).unwrap();
        rxs.push(rx);
    }
    for (rx, &k) in rxs.iter_mut().zip(&cuts) {
        let (tokens, finish, _) = collect(rx);
        assert_eq!(tokens, want[k..], "prompt of {k} reference tokens");
        assert_eq!(finish, Finish::Length);
    }
    let text = metrics.render();
    let get = |name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap()
    };
    let (rows, steps) = (
        get("baremetal_engine_rows_total"),
        get("baremetal_step_seconds_count"),
    );
    // Every prompt and generated token went through a pass (the last generated one is never fed).
    let fed: usize = cuts.iter().map(|&k| 1 + k + (256 - k) - 1).sum();
    assert_eq!(rows as usize, fed);
    assert!(
        rows > 3.0 * steps,
        "{rows} rows in {steps} steps: passes were not shared"
    );
    h.stop();
}

/// An end token stops the text there (not sent, not counted); with ignore_eos it is generated
/// like any other token.
#[test]
fn an_end_token_stops_unless_ignored() {
    let Some(want) = reference() else { return };
    // A token whose first appearance is well inside the reference run.
    let k = (20..want.len())
        .find(|&i| !want[..i].contains(&want[i]))
        .expect("a fresh token");
    let Some((h, _)) = engine(2, 64, Some(want[k]), Duration::ZERO) else {
        return;
    };
    let (j1, mut rx1) = job(vec![1], 256, false);
    let (j2, mut rx2) = job(vec![1], 256, true);
    h.submit(j1).unwrap();
    h.submit(j2).unwrap();
    let (tokens, finish, n) = collect(&mut rx1);
    assert_eq!(tokens, want[..k]);
    assert_eq!((finish, n), (Finish::Stop, k));
    let (tokens, finish, _) = collect(&mut rx2);
    assert_eq!(tokens, want);
    assert_eq!(finish, Finish::Length);
    h.stop();
}

/// A dropped receiver frees the slot: a request waiting for the only slot then runs.
#[test]
fn a_dropped_receiver_frees_the_slot() {
    let (Some(want), Some((h, metrics))) =
        (reference(), engine(1, 64, None, Duration::from_millis(5)))
    else {
        return;
    };
    let (j1, mut rx1) = job(vec![1], 256, false);
    let (j2, mut rx2) = job(vec![1], 10, false);
    h.submit(j1).unwrap();
    h.submit(j2).unwrap();
    for _ in 0..3 {
        assert!(matches!(rx1.blocking_recv(), Some(Event::Token { .. })));
    }
    drop(rx1);
    let (tokens, _, _) = collect(&mut rx2);
    assert_eq!(tokens, want[..10]);
    // The first job stopped soon after it was dropped, far short of its 256 tokens.
    let generated = metrics
        .render()
        .lines()
        .find_map(|l| {
            l.strip_prefix("baremetal_completion_tokens_total ")?
                .parse::<u64>()
                .ok()
        })
        .unwrap();
    // 5 ms per step: 256 tokens would take over a second; it is noticed within a step or two.
    assert!(generated < 10 + 30, "{generated} tokens generated");
    h.stop();
}

/// Stopping the engine fails what is in flight with a final event.
#[test]
fn stop_and_cancel_end_jobs_with_a_failure_event() {
    // 5 ms per step: the jobs are still running when they are cancelled.
    let Some((h, _)) = engine(1, 64, None, Duration::from_millis(5)) else {
        return;
    };
    let (j1, mut rx1) = job(vec![1], 256, false);
    let (j2, mut rx2) = job(vec![1], 256, false);
    h.submit(j1).unwrap();
    h.submit(j2).unwrap();
    assert!(matches!(rx1.blocking_recv(), Some(Event::Token { .. })));
    h.cancel_all("going away");
    let last = std::iter::from_fn(|| rx1.blocking_recv()).last();
    assert!(
        matches!(last, Some(Event::Failed { status: 503, ref message }) if message == "going away")
    );
    assert!(matches!(
        rx2.blocking_recv(),
        Some(Event::Failed { status: 503, .. })
    ));
    let (j3, mut rx3) = job(vec![1], 256, false);
    h.submit(j3).unwrap();
    h.stop();
    let last = std::iter::from_fn(|| rx3.blocking_recv()).last();
    assert!(
        matches!(last, Some(Event::Failed { status: 503, .. })),
        "{last:?}"
    );
    assert!(h.submit(job(vec![1], 1, false).0).is_err());
}
