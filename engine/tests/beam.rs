//! Beam search against a deliberately plain one written here, independently of
//! `engine::decode::beam`: every hypothesis is re-run from scratch, token by token, in its own session,
//! and the Hugging Face rules are spelled out step by step. Same ids, same scores.

mod common;

use common::*;
use engine::decode::beam::{beam_search, session_options, BeamOptions, BeamStats};
use engine::runtime::session::SessionOptions;
use engine::{Backend, Model, Realign, Session};
use model_config::{preset, CheckpointFormat};

/// A finished or running hypothesis of the plain search: tokens, Σ log p, normalised score.
#[derive(Debug, Clone)]
struct Plain {
    tokens: Vec<u32>,
    log_prob: f64,
    score: f64,
    finished: bool,
}

/// Next-token log-probabilities after `prompt + tokens`, computed from scratch.
fn log_probs(model: &Model, prompt: &[u32], tokens: &[u32]) -> Vec<f64> {
    let mut s = Session::new(model, Backend::generic(None).unwrap());
    let mut logits = Vec::new();
    for &t in prompt.iter().chain(tokens) {
        logits = s.step(t).unwrap().to_vec();
    }
    let max = logits.iter().cloned().fold(f32::MIN, f32::max) as f64;
    let z: f64 = logits
        .iter()
        .map(|&l| (l as f64 - max).exp())
        .sum::<f64>()
        .ln()
        + max;
    logits.iter().map(|&l| l as f64 - z).collect()
}

/// Hugging Face's beam search (num_beams, early_stopping=False), plainly.
fn plain_beam(
    model: &Model,
    prompt: &[u32],
    beams: usize,
    lp: f64,
    max_new: usize,
    eos: &[u32],
) -> Vec<Plain> {
    let norm = |log_prob: f64, len: usize| log_prob / (len as f64).powf(lp);
    let mut running: Vec<(Vec<u32>, f64)> = vec![(Vec::new(), 0.0)];
    let mut done: Vec<Plain> = Vec::new();
    let mut finished_search = false;
    for step in 0..max_new {
        let generated = step + 1;
        // Every candidate of every running hypothesis, best first.
        let mut cands: Vec<(f64, usize, u32)> = Vec::new();
        for (i, (tokens, base)) in running.iter().enumerate() {
            for (t, l) in log_probs(model, prompt, tokens).into_iter().enumerate() {
                cands.push((base + l, i, t as u32));
            }
        }
        cands.sort_by(|a, b| {
            b.0.partial_cmp(&a.0)
                .unwrap()
                .then(a.1.cmp(&b.1))
                .then(a.2.cmp(&b.2))
        });
        cands.truncate(beams * 2.max(1 + eos.len()));
        let mut next = Vec::new();
        for (rank, &(score, parent, token)) in cands.iter().enumerate() {
            if eos.contains(&token) {
                if rank < beams {
                    let h = Plain {
                        tokens: running[parent].0.clone(),
                        log_prob: score,
                        score: norm(score, generated),
                        finished: true,
                    };
                    // Keep the best `beams` finished hypotheses (the earlier of equals stays).
                    done.push(h);
                    if done.len() > beams {
                        let mut worst = 0;
                        for (j, d) in done.iter().enumerate() {
                            if d.score <= done[worst].score {
                                worst = j;
                            }
                        }
                        done.remove(worst);
                    }
                }
            } else {
                let mut tokens = running[parent].0.clone();
                tokens.push(token);
                next.push((tokens, score));
            }
            if next.len() == beams {
                break;
            }
        }
        running = next;
        let worst = done.iter().map(|d| d.score).fold(f64::INFINITY, f64::min);
        if done.len() >= beams && worst >= norm(cands[0].0, generated) {
            finished_search = true;
            break;
        }
    }
    if !finished_search {
        for (tokens, log_prob) in running {
            let score = norm(log_prob, tokens.len());
            let worst = done.iter().map(|d| d.score).fold(f64::INFINITY, f64::min);
            if done.len() < beams || score > worst {
                done.push(Plain {
                    tokens,
                    log_prob,
                    score,
                    finished: false,
                });
                if done.len() > beams {
                    let mut w = 0;
                    for (j, d) in done.iter().enumerate() {
                        if d.score <= done[w].score {
                            w = j;
                        }
                    }
                    done.remove(w);
                }
            }
        }
    }
    done.sort_by(|a, b| b.score.partial_cmp(&a.score).unwrap());
    done
}

/// Runs both searches and compares them; returns (whether a hypothesis finished with an end
/// token, whether the search stopped before `max_new` steps), so tests can show they cover both.
fn compare(
    model: &Model,
    prompt: &[u32],
    beams: usize,
    lp: f32,
    max_new: usize,
    eos: &[u32],
) -> (bool, bool) {
    let want = plain_beam(model, prompt, beams, lp as f64, max_new, eos);
    let mut coverage = (false, false);
    for threads in [1, 2] {
        let options = BeamOptions {
            beams,
            length_penalty: lp,
            max_new,
            eos: eos.to_vec(),
        };
        let sizing = session_options(
            SessionOptions::default(),
            model.config().seq_len,
            beams,
            prompt.len(),
            max_new,
        );
        let backend = Backend::generic(None).unwrap().with_threads(threads);
        let mut session = Session::with_options(model, backend, sizing);
        let mut stats = BeamStats::default();
        let got = beam_search(&mut session, prompt, &options, &mut stats).unwrap();
        let what = format!("{beams} beams, lp {lp}, eos {eos:?}, {threads} threads");
        assert_eq!(got.len(), want.len(), "{what}");
        for (g, w) in got.iter().zip(&want) {
            assert_eq!(g.tokens, w.tokens, "{what}");
            assert_eq!(g.finished, w.finished, "{what}");
            assert!(
                (g.log_prob - w.log_prob).abs() <= 1e-4 * w.log_prob.abs().max(1.0),
                "{what}: {} vs {}",
                g.log_prob,
                w.log_prob
            );
            assert!(
                (g.score - w.score).abs() <= 1e-4 * w.score.abs().max(1.0),
                "{what}"
            );
        }
        assert_eq!(
            session.pos(),
            prompt.len(),
            "the session keeps the prompt only"
        );
        coverage = (got.iter().any(|h| h.finished), stats.steps.len() < max_new);
    }
    coverage
}

#[test]
fn beam_search_matches_a_plain_one_on_stories260k() {
    let Some(path) = stories260k() else { return };
    let model = Model::open(&path, Realign::Never).unwrap();
    // BOS ends generation as in run.c; 431 and 303 are tokens its greedy and beam runs repeat,
    // as end tokens so hypotheses finish early and the stopping rule is exercised.
    compare(&model, &[1], 4, 1.0, 12, &[1]);
    assert!(compare(&model, &[1, 306, 461], 3, 0.7, 10, &[431, 303]).0);
    assert!(compare(&model, &[1], 2, 1.3, 8, &[303]).0);
    // With no length penalty, finished hypotheses of frequent tokens end the search at once.
    assert_eq!(
        compare(&model, &[1], 2, 0.0, 30, &[461, 466, 390]),
        (true, true)
    );
}

#[test]
fn beam_search_matches_a_plain_one_on_a_grouped_query_model() {
    let dir = temp_dir("beam-gqa");
    let mut cfg = preset("stories260k").unwrap();
    (
        cfg.dim,
        cfg.hidden_dim,
        cfg.n_layers,
        cfg.n_heads,
        cfg.n_kv_heads,
        cfg.vocab_size,
        cfg.seq_len,
    ) = (48, 100, 2, 6, 2, 61, 40);
    cfg.validate().unwrap();
    let path = dir.join("gqa.bin");
    engine::format::synth::write_checkpoint(&cfg, CheckpointFormat::V1, 7, &path).unwrap();
    let model = Model::open(&path, Realign::Never).unwrap();
    compare(&model, &[1, 5, 9], 4, 1.0, 20, &[2]);
    compare(&model, &[3], 5, 0.5, 30, &[7, 8]);
    // End tokens from the model's own most likely continuation, so hypotheses do finish.
    let mut path = vec![3u32];
    for _ in 0..4 {
        let lp = log_probs(&model, &[], &path);
        let best = (0..lp.len())
            .max_by(|&a, &b| lp[a].partial_cmp(&lp[b]).unwrap())
            .unwrap();
        path.push(best as u32);
    }
    assert!(compare(&model, &[3], 3, 0.0, 25, &path[2..]).0);
    std::fs::remove_dir_all(dir).ok();
}
