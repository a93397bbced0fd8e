//! How far a quantised model strays from its f32 original, measured on the original's own
//! greedy continuation: both models are fed the same tokens (the f32 model's argmax, from
//! BOS), and at every position their next-token distributions are compared.

use thiserror::Error;

use crate::decode::generate::BOS;
use crate::decode::sampler::argmax;
use crate::runtime::session::{Session, StepError};

/// The comparison of two models over one greedy run.
#[derive(Debug, Clone, PartialEq)]
pub struct Comparison {
    /// Positions compared.
    pub positions: usize,
    /// Positions before the first one where the argmaxes differ (`positions` if none): the
    /// length over which the candidate's own greedy run equals the reference's.
    pub agreement: usize,
    /// Positions (of all, also after the first divergence) where the argmaxes agree.
    pub argmax_matches: usize,
    /// Mean over positions of KL(p_reference ‖ p_candidate), in nats.
    pub mean_kl: f64,
    /// The largest KL seen, and its position.
    pub max_kl: (f64, usize),
}

/// Why a comparison stopped.
#[derive(Debug, Error)]
pub enum EvalError {
    /// A step was refused.
    #[error(transparent)]
    Step(#[from] StepError),
    /// A model produced NaN or infinite logits.
    #[error("the {which} model produced non-finite logits at position {pos}")]
    NonFinite {
        /// "reference" or "candidate".
        which: &'static str,
        /// The position.
        pos: usize,
    },
}

/// Runs `steps` positions of `reference`'s greedy continuation of BOS through both sessions
/// (from their current position, normally 0) and compares the distributions. The reference
/// decodes token by token (its own argmax is the next input); the candidate is fed the same
/// tokens teacher-forced, in batched chunks of its session's batch, as many at a time as the
/// reference has produced.
pub fn compare(
    reference: &mut Session,
    candidate: &mut Session,
    steps: usize,
) -> Result<Comparison, EvalError> {
    let vocab = reference.model().config().vocab_size;
    let chunk = candidate.batch().max(1);
    let mut out = Comparison {
        positions: steps,
        agreement: steps,
        argmax_matches: 0,
        mean_kl: 0.0,
        max_kl: (0.0, 0),
    };
    let mut kl_sum = 0.0;
    let mut token = BOS;
    let mut fed = Vec::with_capacity(chunk);
    let mut ref_logits = Vec::with_capacity(chunk * vocab);
    let mut pos = 0;
    while pos < steps {
        // The reference's next chunk of greedy positions.
        fed.clear();
        ref_logits.clear();
        for p in pos..(pos + chunk).min(steps) {
            let l = reference.step(token)?;
            if !l.iter().all(|v| v.is_finite()) {
                return Err(EvalError::NonFinite {
                    which: "reference",
                    pos: p,
                });
            }
            fed.push(token);
            ref_logits.extend_from_slice(l);
            token = argmax(l);
        }
        // The candidate, teacher-forced over the same chunk.
        let mut bad = None;
        candidate.forced(&fed, |i, q| {
            let p = &ref_logits[i * vocab..(i + 1) * vocab];
            let at = pos + i;
            if !q.iter().all(|v| v.is_finite()) {
                bad.get_or_insert(at);
                return;
            }
            let kl = kl_divergence(p, q);
            kl_sum += kl;
            if kl > out.max_kl.0 {
                out.max_kl = (kl, at);
            }
            if argmax(p) == argmax(q) {
                out.argmax_matches += 1;
            } else if out.agreement == steps {
                out.agreement = at;
            }
        })?;
        if let Some(pos) = bad {
            return Err(EvalError::NonFinite {
                which: "candidate",
                pos,
            });
        }
        pos += fed.len();
    }
    out.mean_kl = if steps > 0 {
        kl_sum / steps as f64
    } else {
        0.0
    };
    Ok(out)
}

/// KL(softmax(p) ‖ softmax(q)) in nats, computed in f64 from the logits (log-softmax, so no
/// probability underflows to a log of zero).
pub fn kl_divergence(p_logits: &[f32], q_logits: &[f32]) -> f64 {
    let lp = log_softmax(p_logits);
    let lq = log_softmax(q_logits);
    lp.iter()
        .zip(&lq)
        .map(|(&a, &b)| a.exp() * (a - b))
        .sum::<f64>()
        .max(0.0)
}

fn log_softmax(logits: &[f32]) -> Vec<f64> {
    let max = logits
        .iter()
        .fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
    let lse = max
        + logits
            .iter()
            .map(|&v| (v as f64 - max).exp())
            .sum::<f64>()
            .ln();
    logits.iter().map(|&v| v as f64 - lse).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kl_of_known_distributions() {
        assert_eq!(kl_divergence(&[1.0, 2.0, 3.0], &[1.0, 2.0, 3.0]), 0.0);
        // Shifting every logit leaves the distribution unchanged.
        assert!(kl_divergence(&[1.0, 2.0, 3.0], &[11.0, 12.0, 13.0]) < 1e-12);
        // p = (1/2, 1/2), q = (e/(1+e), 1/(1+e)) — by hand.
        let e = std::f64::consts::E;
        let (q0, q1) = (e / (1.0 + e), 1.0 / (1.0 + e));
        let want = 0.5 * (0.5 / q0).ln() + 0.5 * (0.5 / q1).ln();
        assert!((kl_divergence(&[0.0, 0.0], &[1.0, 0.0]) - want).abs() < 1e-12);
    }
}
