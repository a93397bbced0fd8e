//! The decode loop: feed the prompt, then sample and feed back, timing every step.

use std::time::{Duration, Instant};

use thiserror::Error;

use crate::decode::sampler::Sampler;
use crate::runtime::session::{Session, StepError};

/// llama2.c's BOS id; a generated BOS ends the text, as in `run.c`.
pub const BOS: u32 = 1;

/// Why generation stopped early with an error.
#[derive(Debug, Error)]
pub enum GenerateError {
    /// The prompt is empty (it must hold at least BOS).
    #[error("the prompt holds no tokens (it needs at least BOS)")]
    EmptyPrompt,
    /// The prompt does not fit the context.
    #[error("the prompt is {len} tokens but the model's context is {seq_len}; shorten the prompt")]
    PromptTooLong {
        /// Prompt tokens.
        len: usize,
        /// Context length.
        seq_len: usize,
    },
    /// A step was refused.
    #[error(transparent)]
    Step(#[from] StepError),
    /// The logits contained NaN or infinity: the weights are corrupt.
    #[error("the model produced non-finite logits at position {pos}; the checkpoint's weights are corrupt")]
    NonFinite {
        /// Position of the step.
        pos: usize,
    },
}

/// What one generated token looked like.
#[derive(Debug, Clone, Copy)]
pub struct TokenEvent {
    /// The token that was fed.
    pub prev: u32,
    /// The token sampled.
    pub token: u32,
    /// Wall time of the forward pass and sampling that produced it.
    pub latency: Duration,
}

/// Totals of one generation.
#[derive(Debug, Clone, Copy)]
pub struct GenerationStats {
    /// Prompt tokens fed (including BOS).
    pub prompt_tokens: usize,
    /// Tokens generated.
    pub generated: usize,
    /// Time from the start until the first generated token (prompt processing included).
    pub time_to_first_token: Duration,
    /// Total wall time.
    pub total: Duration,
    /// The stop id that ended the generation, if one did.
    pub stopped: Option<u32>,
}

impl GenerationStats {
    /// Generated tokens per second, counting from the first generated token (llama2.c's way),
    /// or over the whole run when only one token was generated.
    pub fn tokens_per_second(&self) -> f64 {
        let after_first = self
            .total
            .saturating_sub(self.time_to_first_token)
            .as_secs_f64();
        if self.generated > 1 && after_first > 0.0 {
            (self.generated - 1) as f64 / after_first
        } else {
            self.generated as f64 / self.total.as_secs_f64().max(1e-9)
        }
    }
}

/// How many tokens can be generated after `prompt_len` prompt tokens in a context of `seq_len`:
/// the last generated token is never fed, so `prompt_len + steps - 1 <= seq_len`.
pub fn max_steps(prompt_len: usize, seq_len: usize) -> usize {
    (seq_len + 1).saturating_sub(prompt_len)
}

/// Feeds `prompt` (starting at the session's current position), then generates up to `steps`
/// tokens, calling `on_token` for each. Stops early when the model generates one of `stop`
/// (not reported, not fed: `[BOS]` for llama2.c models as in `run.c`, the vocabulary's
/// end-of-generation ids for GGUF ones). `steps` must not exceed [`max_steps`]; the caller
/// clamps or refuses.
pub fn generate(
    session: &mut Session,
    prompt: &[u32],
    steps: usize,
    stop: &[u32],
    sampler: &mut Sampler,
    mut on_token: impl FnMut(TokenEvent),
) -> Result<GenerationStats, GenerateError> {
    let seq_len = session.model().config().seq_len;
    let (&last, feed) = prompt.split_last().ok_or(GenerateError::EmptyPrompt)?;
    if prompt.len() > seq_len {
        return Err(GenerateError::PromptTooLong {
            len: prompt.len(),
            seq_len,
        });
    }
    let start = Instant::now();
    let mut stats = GenerationStats {
        prompt_tokens: prompt.len(),
        generated: 0,
        time_to_first_token: Duration::ZERO,
        total: Duration::ZERO,
        stopped: None,
    };
    // The prompt goes through the batched path; its last row's logits give the first token.
    let mut t0 = Instant::now();
    let mut pos = session.pos() + feed.len();
    let mut logits = session.prefill(prompt)?;
    let mut token = last;
    while stats.generated < steps {
        if !logits.iter().all(|v| v.is_finite()) {
            return Err(GenerateError::NonFinite { pos });
        }
        let next = sampler.sample(logits);
        let latency = t0.elapsed();
        if stop.contains(&next) {
            stats.stopped = Some(next);
            break;
        }
        if stats.generated == 0 {
            stats.time_to_first_token = start.elapsed();
        }
        stats.generated += 1;
        on_token(TokenEvent {
            prev: token,
            token: next,
            latency,
        });
        token = next;
        if stats.generated == steps {
            break;
        }
        t0 = Instant::now();
        pos = session.pos();
        logits = session.step(token)?;
    }
    stats.total = start.elapsed();
    Ok(stats)
}
