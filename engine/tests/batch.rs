//! Batch invariance: a token's logits do not depend on what else is in its forward pass. A
//! prompt fed in chunks of any size, or sequences mixed in one batch, give bit for bit the
//! logits of feeding every token alone, on the generic and the specialised kernels, for f32,
//! Q8_0 and Q4_0 weights, on one thread and on three.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use engine::base::rng::Rng;
use engine::format::quant::{choose_group, QuantFormat};
use engine::format::writer::{write_q4_checkpoint, write_q8_checkpoint};
use engine::runtime::backend::compiled_config;
use engine::runtime::forward::Row;
use engine::runtime::session::SessionOptions;
use engine::{Backend, Model, Realign, Session};
use model_config::CheckpointFormat;

/// f32, Q8_0 and Q4_0 files of a random model of the compiled shape (so the specialised
/// kernels, and the tiled int8 ones where the shape has them, are exercised in every build).
fn models(dir: &Path) -> Vec<PathBuf> {
    let cfg = compiled_config();
    let f32_path = dir.join("f32.bin");
    engine::format::synth::write_checkpoint(&cfg, CheckpointFormat::V1, 11, &f32_path).unwrap();
    let f32_model = Model::open(&f32_path, Realign::Never).unwrap();
    let q8 = dir.join("q8.bin");
    let (g8, _) = choose_group(&cfg, QuantFormat::Q8_0, 64).unwrap();
    write_q8_checkpoint(&f32_model, g8, &q8).unwrap();
    let q4 = dir.join("q4.bin");
    let (g4, _) = choose_group(&cfg, QuantFormat::Q4_0, 32).unwrap();
    write_q4_checkpoint(&f32_model, g4, &q4).unwrap();
    vec![f32_path, q8, q4]
}

/// The backends to compare: generic and (the model has the compiled shape) specialised, on
/// the best instruction set, with `threads` threads.
fn backends(model: &Model, threads: usize) -> Vec<Backend> {
    let specialised = Backend::specialised(model.config(), model.path(), None)
        .unwrap()
        .unwrap();
    vec![
        Backend::generic(None).unwrap().with_threads(threads),
        specialised.with_threads(threads),
    ]
}

fn fresh(b: &Backend, model: &Model) -> Backend {
    let again = if b.is_specialised() || b.describe().starts_with("specialised") {
        Backend::specialised(model.config(), model.path(), None)
            .unwrap()
            .unwrap()
    } else {
        Backend::generic(None).unwrap()
    };
    again.with_threads(b.threads())
}

/// The logits after every token of `tokens`, fed one at a time.
fn one_by_one(model: &Model, backend: Backend, tokens: &[u32]) -> Vec<Vec<f32>> {
    let mut s = Session::new(model, backend);
    tokens
        .iter()
        .map(|&t| s.step(t).unwrap().to_vec())
        .collect()
}

fn same_bits(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

fn random_tokens(rng: &mut Rng, n: usize, vocab: usize) -> Vec<u32> {
    (0..n).map(|_| rng.below(vocab) as u32).collect()
}

#[test]
fn a_prompt_in_chunks_of_any_size_gives_the_logits_of_token_by_token() {
    let dir = temp_dir("batch-prefill");
    let mut rng = Rng::new(0xba7c);
    for path in models(&dir) {
        let model = Model::open(&path, Realign::Never).unwrap();
        let vocab = model.config().vocab_size;
        for threads in [1, 3] {
            for backend in backends(&model, threads) {
                let what = format!("{} {}", path.display(), backend.describe());
                for len in [1, 2, 7, 13, 33] {
                    let prompt = random_tokens(&mut rng, len, vocab);
                    let after: Vec<u32> = random_tokens(&mut rng, 3, vocab);
                    let all: Vec<u32> = prompt.iter().chain(&after).copied().collect();
                    let want = one_by_one(&model, fresh(&backend, &model), &all);
                    for chunk in [1, 2, 3, 5, 8, 64] {
                        let options = SessionOptions {
                            batch: chunk,
                            ..SessionOptions::default()
                        };
                        let mut s = Session::with_options(&model, fresh(&backend, &model), options);
                        let got = s.prefill(&prompt).unwrap().to_vec();
                        assert!(
                            same_bits(&got, &want[len - 1]),
                            "{what}: prompt of {len} in chunks of {chunk}"
                        );
                        // The cache holds exactly what token-by-token feeding wrote.
                        for (i, &t) in after.iter().enumerate() {
                            let got = s.step(t).unwrap();
                            assert!(
                                same_bits(got, &want[len + i]),
                                "{what}: step {i} after a prompt of {len} in chunks of {chunk}"
                            );
                        }
                    }
                }
            }
        }
    }
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn sequences_mixed_in_one_batch_give_their_logits_alone() {
    let dir = temp_dir("batch-mixed");
    let mut rng = Rng::new(0x5e95);
    for path in models(&dir) {
        let model = Model::open(&path, Realign::Never).unwrap();
        let vocab = model.config().vocab_size;
        for backend in backends(&model, 2) {
            let what = format!("{} {}", path.display(), backend.describe());
            let streams: Vec<Vec<u32>> = [9, 4, 12]
                .iter()
                .map(|&n| random_tokens(&mut rng, n, vocab))
                .collect();
            let want: Vec<Vec<Vec<f32>>> = streams
                .iter()
                .map(|s| one_by_one(&model, fresh(&backend, &model), s))
                .collect();
            let options = SessionOptions {
                batch: 9,
                logit_rows: 9,
                sequences: 3,
                ..SessionOptions::default()
            };
            let mut s = Session::with_options(&model, fresh(&backend, &model), options);
            let seqs = [
                s.sequence(),
                s.kv_mut().create().unwrap(),
                s.kv_mut().create().unwrap(),
            ];
            // Each pass takes the next 1–3 tokens of every stream that has any left.
            let mut next = [0usize; 3];
            let mut take = 1;
            while next.iter().zip(&streams).any(|(&n, s)| n < s.len()) {
                let mut rows = Vec::new();
                for (k, seq) in seqs.iter().enumerate() {
                    let n = take.min(streams[k].len() - next[k]);
                    if n == 0 {
                        continue;
                    }
                    s.kv_mut().append(*seq, n).unwrap();
                    for (p, &token) in streams[k].iter().enumerate().skip(next[k]).take(n) {
                        rows.push((
                            k,
                            Row {
                                seq: *seq,
                                token,
                                pos: p,
                                logits: true,
                            },
                        ));
                    }
                    next[k] += n;
                }
                let plain: Vec<Row> = rows.iter().map(|r| r.1).collect();
                let logits = s.forward_rows(&plain).unwrap().to_vec();
                for (i, (k, row)) in rows.iter().enumerate() {
                    assert!(
                        same_bits(&logits[i * vocab..(i + 1) * vocab], &want[*k][row.pos]),
                        "{what}: stream {k} position {} in a batch of {}",
                        row.pos,
                        rows.len()
                    );
                }
                take = take % 3 + 1;
            }
        }
    }
    std::fs::remove_dir_all(dir).ok();
}

/// Within 1e-5 of the largest |logit|: a forked sequence's positions lie in two runs of the
/// cache (the shared prefix, and its own copy of the last shared block), and the attention sums
/// the values of each run separately, so the last bits may differ from one run alone.
fn close(got: &[f32], want: &[f32], what: &str) {
    let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let worst = got
        .iter()
        .zip(want)
        .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(
        worst <= 1e-5 * scale,
        "{what}: off by {worst} (largest |logit| {scale})"
    );
}

/// A fork shares its parent's positions (nothing copied but the partly filled last block, when
/// both write after it) and continues as the same tokens run alone would.
#[test]
fn a_forked_sequence_continues_as_if_it_had_run_alone() {
    let dir = temp_dir("batch-fork");
    let mut rng = Rng::new(0xf02c);
    let path = models(&dir).remove(0);
    let model = Model::open(&path, Realign::Never).unwrap();
    let vocab = model.config().vocab_size;
    let backend = Backend::generic(None).unwrap();
    // A prefix of 21 tokens (one full block and a shared partial one), then two continuations.
    let prefix = random_tokens(&mut rng, 21, vocab);
    let tails = [
        random_tokens(&mut rng, 5, vocab),
        random_tokens(&mut rng, 5, vocab),
    ];
    let options = SessionOptions {
        batch: 4,
        logit_rows: 2,
        sequences: 2,
        ..SessionOptions::default()
    };
    let mut s = Session::with_options(&model, fresh(&backend, &model), options);
    s.prefill(&prefix).unwrap();
    let a = s.sequence();
    let b = s.kv_mut().fork(a).unwrap();
    let want: Vec<Vec<Vec<f32>>> = tails
        .iter()
        .map(|t| {
            let all: Vec<u32> = prefix.iter().chain(t).copied().collect();
            one_by_one(&model, fresh(&backend, &model), &all)
        })
        .collect();
    for (i, (&t0, &t1)) in tails[0].iter().zip(&tails[1]).enumerate() {
        let pos = prefix.len() + i;
        s.kv_mut().append(a, 1).unwrap();
        s.kv_mut().append(b, 1).unwrap();
        let rows = [
            Row {
                seq: a,
                token: t0,
                pos,
                logits: true,
            },
            Row {
                seq: b,
                token: t1,
                pos,
                logits: true,
            },
        ];
        let logits = s.forward_rows(&rows).unwrap();
        for k in 0..2 {
            close(
                &logits[k * vocab..(k + 1) * vocab],
                &want[k][pos],
                &format!("continuation {k} at position {pos}"),
            );
        }
    }
    std::fs::remove_dir_all(dir).ok();
}
