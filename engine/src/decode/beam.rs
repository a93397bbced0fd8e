//! Beam search as Hugging Face transformers' `num_beams` decoding does it (`BeamSearchScorer`
//! with `early_stopping=False`), without the model: [`BeamSearch::step`] takes each running
//! hypothesis's logits and says which hypotheses continue with which token; the caller runs the
//! model (one batched forward per step) and forks the KV cache accordingly.
//!
//! Per step, every running hypothesis's log-softmax is added to its cumulative log-probability
//! and the best `max(2, 1 + |eos|) · beams` candidates over all of them are taken in rank order
//! (score descending; ties to the lower hypothesis, then the lower token id, so the search is
//! deterministic). A candidate whose token ends generation joins the finished hypotheses if its
//! rank is below `beams` (otherwise it is dropped); the others continue, until `beams` are
//! running. A finished hypothesis scores `Σ log p / generated^length_penalty`, `generated`
//! counting its tokens after the prompt including the end token; the best `beams` are kept.
//! The search is done when `beams` hypotheses have finished and the worst of them scores at
//! least the best candidate of the step divided by the same length penalty, or when the
//! length limit is reached; then the running hypotheses are scored too (without an end token)
//! and the best hypothesis overall is the answer.

use std::time::{Duration, Instant};

use crate::decode::generate::GenerateError;
use crate::runtime::forward::Row;
use crate::runtime::kv::KvError;
use crate::runtime::session::{Session, SessionOptions, StepError};

/// One hypothesis: the generated tokens (after the prompt) and their summed log-probability.
#[derive(Debug, Clone, PartialEq)]
pub struct Hypothesis {
    /// Generated token ids, without the end token.
    pub tokens: Vec<u32>,
    /// Whether generation of this hypothesis ended with an end token.
    pub finished: bool,
    /// `Σ log p` of its tokens (including the end token's, when finished).
    pub log_prob: f64,
    /// `log_prob / generated^length_penalty`: what hypotheses are ranked by.
    pub score: f64,
}

/// What continues after a step: running hypothesis `i` of the next step is `parent`'s
/// continuation with `token`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Continuation {
    /// Index of the running hypothesis (of the step just taken) it extends.
    pub parent: usize,
    /// The token it appends.
    pub token: u32,
}

/// Beam search state for one prompt.
#[derive(Debug, Clone)]
pub struct BeamSearch {
    beams: usize,
    length_penalty: f64,
    eos: Vec<u32>,
    /// Running hypotheses (one before the first step: the prompt).
    running: Vec<(Vec<u32>, f64)>,
    /// The best finished hypotheses, at most `beams`.
    finished: Vec<Hypothesis>,
    done: bool,
    /// Candidate scratch, reused every step.
    candidates: Vec<(f64, usize, u32)>,
}

/// `log Σ exp(logits)` in f64 (max-subtracted): `logit - this` is the log-probability.
fn log_sum_exp(logits: &[f32]) -> f64 {
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
    let sum: f64 = logits.iter().map(|&v| (v as f64 - max).exp()).sum();
    sum.ln() + max
}

impl BeamSearch {
    /// A search keeping `beams` hypotheses (≥ 1), with `length_penalty` (Hugging Face's
    /// default is 1.0) and the tokens that end a hypothesis.
    pub fn new(beams: usize, length_penalty: f32, eos: &[u32]) -> Self {
        Self {
            beams: beams.max(1),
            length_penalty: length_penalty as f64,
            eos: eos.to_vec(),
            running: vec![(Vec::new(), 0.0)],
            finished: Vec::new(),
            done: false,
            candidates: Vec::new(),
        }
    }

    /// How many hypotheses are running (the logits [`Self::step`] wants, in this order).
    pub fn running(&self) -> usize {
        self.running.len()
    }

    /// The running hypotheses' tokens so far.
    pub fn running_tokens(&self, i: usize) -> &[u32] {
        &self.running[i].0
    }

    /// True when no step can improve the result.
    pub fn is_done(&self) -> bool {
        self.done
    }

    fn normalised(&self, log_prob: f64, generated: usize) -> f64 {
        log_prob / (generated as f64).powf(self.length_penalty)
    }

    /// Keeps `h` if it is among the best `beams` finished hypotheses.
    fn add_finished(&mut self, h: Hypothesis) {
        if self.finished.len() < self.beams || h.score > self.worst_finished() {
            self.finished.push(h);
            if self.finished.len() > self.beams {
                // Drop the worst; the earliest of equal scores stays, as in transformers.
                let worst = (0..self.finished.len())
                    .rev()
                    .min_by(|&a, &b| self.finished[a].score.total_cmp(&self.finished[b].score))
                    .expect("non-empty");
                self.finished.remove(worst);
            }
        }
    }

    fn worst_finished(&self) -> f64 {
        self.finished
            .iter()
            .map(|h| h.score)
            .fold(f64::INFINITY, f64::min)
    }

    /// One step: `logits[i]` are running hypothesis `i`'s next-token logits. Returns what runs
    /// next (empty when the search is done).
    ///
    /// # Panics
    /// If `logits.len()` is not [`Self::running`], or the search is already done.
    pub fn step(&mut self, logits: &[&[f32]]) -> Vec<Continuation> {
        assert!(!self.done, "beam search: step after the search was done");
        assert_eq!(
            logits.len(),
            self.running.len(),
            "one logits row per hypothesis"
        );
        let generated = self.running[0].0.len() + 1;
        let keep = self.beams * 2usize.max(1 + self.eos.len());
        let by_rank = |a: &(f64, usize, u32), b: &(f64, usize, u32)| {
            b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2))
        };
        // The overall best `keep` are among each hypothesis's own best `keep` (log-softmax keeps
        // a row's order), so only those are scored: a pass for the row's log-sum-exp and a
        // running top-`keep` of its logits, instead of sorting every token of every row.
        self.candidates.clear();
        for (i, row) in logits.iter().enumerate() {
            let log_sum = log_sum_exp(row);
            let base = self.running[i].1;
            let start = self.candidates.len();
            for (t, &v) in row.iter().enumerate() {
                let c = (base + (v as f64 - log_sum), i, t as u32);
                let mine = &mut self.candidates[start..];
                if mine.len() == keep && by_rank(&c, &mine[keep - 1]).is_ge() {
                    continue;
                }
                let at = start + mine.partition_point(|x| by_rank(x, &c).is_lt());
                if self.candidates.len() - start == keep {
                    self.candidates.pop();
                }
                self.candidates.insert(at, c);
            }
        }
        self.candidates.sort_unstable_by(by_rank);
        self.candidates.truncate(keep);
        let candidates = std::mem::take(&mut self.candidates);
        let mut next = Vec::with_capacity(self.beams);
        let mut next_running = Vec::with_capacity(self.beams);
        for (rank, &(score, parent, token)) in candidates.iter().enumerate() {
            if self.eos.contains(&token) {
                if rank < self.beams {
                    let h = Hypothesis {
                        tokens: self.running[parent].0.clone(),
                        finished: true,
                        log_prob: score,
                        score: self.normalised(score, generated),
                    };
                    self.add_finished(h);
                }
            } else {
                let mut tokens = self.running[parent].0.clone();
                tokens.push(token);
                next_running.push((tokens, score));
                next.push(Continuation { parent, token });
            }
            if next.len() == self.beams {
                break;
            }
        }
        let best = candidates.first().map_or(f64::NEG_INFINITY, |c| c.0);
        self.candidates = candidates;
        self.running = next_running;
        if self.finished.len() >= self.beams
            && self.worst_finished() >= self.normalised(best, generated)
        {
            self.done = true;
        }
        if self.done || self.running.is_empty() {
            self.done = true;
            return Vec::new();
        }
        next
    }

    /// Ends the search (at the length limit, or when done): the running hypotheses are scored
    /// as they stand, and every kept hypothesis is returned best first.
    pub fn finish(mut self) -> Vec<Hypothesis> {
        if !self.done {
            let running = std::mem::take(&mut self.running);
            for (tokens, log_prob) in running {
                if tokens.is_empty() {
                    continue;
                }
                let score = self.normalised(log_prob, tokens.len());
                self.add_finished(Hypothesis {
                    tokens,
                    finished: false,
                    log_prob,
                    score,
                });
            }
        }
        let mut all = self.finished;
        all.sort_by(|a, b| b.score.total_cmp(&a.score));
        all
    }
}

/// What [`beam_search`] is asked for.
#[derive(Debug, Clone)]
pub struct BeamOptions {
    /// Hypotheses kept (`num_beams`).
    pub beams: usize,
    /// `score = Σ log p / generated^length_penalty`.
    pub length_penalty: f32,
    /// The most tokens generated per hypothesis.
    pub max_new: usize,
    /// Tokens that end a hypothesis.
    pub eos: Vec<u32>,
}

/// The session options a beam search of `beams` over a prompt of `prompt` tokens and
/// `max_new` new ones needs, on a model with context `seq_len`: a batch of at least `beams` rows
/// with logits for each, and cache room for twice as many sequences (forks exist before their
/// childless parents are freed) over the shared prompt plus every hypothesis's own positions
/// (and at least one whole context, for the session's own sequence).
pub fn session_options(
    base: SessionOptions,
    seq_len: usize,
    beams: usize,
    prompt: usize,
    max_new: usize,
) -> SessionOptions {
    let beams = beams.max(1);
    let needed = prompt + 2 * beams * (max_new + 2 * crate::runtime::kv::BLOCK);
    SessionOptions {
        batch: base.batch.max(beams),
        logit_rows: base.logit_rows.max(beams),
        sequences: base.sequences.max(2 * beams),
        positions: Some(
            needed.max(
                base.positions
                    .unwrap_or(seq_len.min(crate::runtime::session::DEFAULT_CONTEXT)),
            ),
        ),
        ..base
    }
}

/// Timings of a [`beam_search`].
#[derive(Debug, Clone, Default)]
pub struct BeamStats {
    /// The prompt's forward pass (to the first logits).
    pub prompt: Duration,
    /// Each step: the search's choice, the cache forks and one batched forward over every
    /// running hypothesis.
    pub steps: Vec<Duration>,
}

/// Beam search from `prompt` on the session's own sequence (which it leaves holding the prompt
/// only): the prompt is run once; every step is one batched forward over all running
/// hypotheses, whose KV caches are forks sharing the prompt and their common prefixes. Returns
/// every kept hypothesis, best first.
pub fn beam_search(
    session: &mut Session,
    prompt: &[u32],
    options: &BeamOptions,
    stats: &mut BeamStats,
) -> Result<Vec<Hypothesis>, GenerateError> {
    if prompt.is_empty() {
        return Err(GenerateError::EmptyPrompt);
    }
    let cfg = session.model().config();
    let (seq_len, vocab) = (cfg.seq_len, cfg.vocab_size);
    let start_pos = session.pos();
    if start_pos + prompt.len() > seq_len {
        return Err(GenerateError::PromptTooLong {
            len: prompt.len(),
            seq_len,
        });
    }
    let max_new = options.max_new.min(seq_len + 1 - start_pos - prompt.len());
    let mut search = BeamSearch::new(options.beams, options.length_penalty, &options.eos);
    let t = Instant::now();
    let root = session.sequence();
    let first = session.prefill(prompt)?.to_vec();
    stats.prompt = t.elapsed();
    if !first.iter().all(|v| v.is_finite()) {
        return Err(GenerateError::NonFinite {
            pos: start_pos + prompt.len() - 1,
        });
    }
    // The root keeps the prompt for the caller; the hypotheses run on forks of it.
    let mut seqs = vec![session.kv_mut().fork(root).map_err(kv_error)?];
    let mut logits = first;
    let mut rows = Vec::with_capacity(options.beams);
    let mut next_seqs = Vec::with_capacity(options.beams);
    for step in 0..max_new {
        let t = Instant::now();
        let refs: Vec<&[f32]> = logits.chunks_exact(vocab).collect();
        let continuations = search.step(&refs);
        if continuations.is_empty() || step + 1 == max_new {
            stats.steps.push(t.elapsed());
            break;
        }
        // The first child of a hypothesis takes over its sequence; others fork it; a
        // hypothesis without children is freed (after the forks, which may share its blocks).
        let kv = session.kv_mut();
        let mut taken = vec![false; seqs.len()];
        next_seqs.clear();
        for c in &continuations {
            let seq = if taken[c.parent] {
                kv.fork(seqs[c.parent]).map_err(kv_error)?
            } else {
                taken[c.parent] = true;
                seqs[c.parent]
            };
            next_seqs.push(seq);
        }
        for (i, &seq) in seqs.iter().enumerate() {
            if !taken[i] {
                kv.free(seq);
            }
        }
        let pos = start_pos + prompt.len() + step;
        rows.clear();
        for (c, &seq) in continuations.iter().zip(&next_seqs) {
            kv.append(seq, 1).map_err(kv_error)?;
            rows.push(Row {
                seq,
                token: c.token,
                pos,
                logits: true,
            });
        }
        std::mem::swap(&mut seqs, &mut next_seqs);
        let out = session.forward_rows(&rows)?;
        if !out.iter().all(|v| v.is_finite()) {
            return Err(GenerateError::NonFinite { pos });
        }
        logits.clear();
        logits.extend_from_slice(out);
        stats.steps.push(t.elapsed());
    }
    for seq in seqs {
        session.kv_mut().free(seq);
    }
    Ok(search.finish())
}

fn kv_error(e: KvError) -> GenerateError {
    GenerateError::Step(StepError::Cache(e))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Logits whose softmax is exactly `probs` (up to rounding).
    fn logits(probs: &[f64]) -> Vec<f32> {
        probs.iter().map(|p| p.ln() as f32).collect()
    }

    #[test]
    fn keeps_the_most_likely_sequence_not_the_greedy_one() {
        // Greedy takes token 1 (0.5) then at best 0.4; beam search finds 0 (0.4) then 0.9.
        let mut beam = BeamSearch::new(2, 1.0, &[]);
        let step1 = beam.step(&[&logits(&[0.4, 0.5, 0.1])]);
        assert_eq!(
            step1,
            [
                Continuation {
                    parent: 0,
                    token: 1
                },
                Continuation {
                    parent: 0,
                    token: 0
                }
            ]
        );
        let after_1 = logits(&[0.4, 0.3, 0.3]);
        let after_0 = logits(&[0.05, 0.05, 0.9]);
        let step2 = beam.step(&[&after_1, &after_0]);
        assert_eq!(
            step2[0],
            Continuation {
                parent: 1,
                token: 2
            }
        );
        let best = &beam.finish()[0];
        assert_eq!(best.tokens, [0, 2]);
        assert!((best.log_prob - (0.4f64 * 0.9).ln()).abs() < 1e-6);
        assert!((best.score - best.log_prob / 2.0).abs() < 1e-12);
        assert!(!best.finished);
    }

    #[test]
    fn an_end_token_finishes_a_hypothesis_and_ends_the_search_when_nothing_can_beat_it() {
        // Token 2 ends generation. Step 1: EOS is rank 0, so the empty hypothesis finishes
        // (one generated token, the EOS: score ln 0.7); tokens 0 and 1 run on.
        let mut beam = BeamSearch::new(2, 1.0, &[2]);
        let next = beam.step(&[&logits(&[0.2, 0.1, 0.7])]);
        assert_eq!(
            next,
            [
                Continuation {
                    parent: 0,
                    token: 0
                },
                Continuation {
                    parent: 0,
                    token: 1
                }
            ]
        );
        // Step 2: both end with 0.98. Both EOS candidates rank below 2 and finish; the worst of
        // the three finished is dropped, and the worst kept, (ln 0.2 + ln 0.98) / 2, equals the
        // best candidate over the same length: done.
        let l = logits(&[0.01, 0.01, 0.98]);
        assert!(beam.step(&[&l, &l]).is_empty());
        assert!(beam.is_done());
        let all = beam.finish();
        assert_eq!(all.len(), 2);
        assert!(all.iter().all(|h| h.finished));
        assert_eq!(
            (all[0].tokens.as_slice(), all[1].tokens.as_slice()),
            (&[][..], &[0][..])
        );
        assert!((all[0].score - 0.7f64.ln()).abs() < 1e-6);
        assert!((all[1].score - (0.2f64.ln() + 0.98f64.ln()) / 2.0).abs() < 1e-6);
    }

    #[test]
    fn a_low_ranked_end_token_is_dropped() {
        // EOS at rank 2 of 4 candidates with 2 beams: not a finished hypothesis.
        let mut beam = BeamSearch::new(2, 1.0, &[2]);
        let next = beam.step(&[&logits(&[0.5, 0.3, 0.15, 0.05])]);
        assert_eq!(next.len(), 2);
        assert!(beam.clone().finish().iter().all(|h| !h.finished));
    }
}
