//! Token sampling: greedy (temperature 0), temperature, top-k and nucleus (top-p), with
//! llama2.c's xorshift* generator so a seed gives the same draws as `run.c` with that seed.
//!
//! [`Sampler::sample`] performs no heap allocation: its work buffer is created in
//! [`Sampler::new`].

/// Why a [`SamplerConfig`] is unusable.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SamplerError {
    /// Temperature is NaN, infinite or negative.
    #[error("temperature must be a finite number >= 0 (0 means greedy), got {0}")]
    BadTemperature(f32),
    /// top-p is NaN or outside [0, 1].
    #[error("top-p must be between 0 and 1 (0 or 1 turns it off), got {0}")]
    BadTopP(f32),
}

/// How to pick the next token.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplerConfig {
    /// Logits are divided by this before the softmax; 0 means always take the argmax.
    pub temperature: f32,
    /// Nucleus sampling: sample from the smallest set of most probable tokens whose
    /// probability exceeds `top_p`. 0 or 1 turns it off.
    pub top_p: f32,
    /// Keep only the `top_k` most probable tokens; 0 turns it off.
    pub top_k: usize,
    /// Random seed; 0 is allowed and maps to a fixed non-zero state.
    pub seed: u64,
}

impl Default for SamplerConfig {
    /// llama2.c's defaults: temperature 1, top-p 0.9, no top-k, seed 0.
    fn default() -> Self {
        Self {
            temperature: 1.0,
            top_p: 0.9,
            top_k: 0,
            seed: 0,
        }
    }
}

impl SamplerConfig {
    /// Checks that temperature is finite and >= 0 and top-p lies in [0, 1].
    pub fn validate(&self) -> Result<(), SamplerError> {
        if !self.temperature.is_finite() || self.temperature < 0.0 {
            return Err(SamplerError::BadTemperature(self.temperature));
        }
        if !(0.0..=1.0).contains(&self.top_p) {
            return Err(SamplerError::BadTopP(self.top_p));
        }
        Ok(())
    }
}

/// An xorshift* generator, bit-for-bit llama2.c's `random_u32` / `random_f32`.
#[derive(Debug, Clone)]
pub struct Rng {
    state: u64,
}

impl Rng {
    /// Any odd 64-bit constant would do; xorshift needs a non-zero state or it stays at 0.
    const ZERO_SEED_STATE: u64 = 0x9E37_79B9_7F4A_7C15;

    /// A generator seeded like llama2.c (`seed` is the state); seed 0 uses a fixed
    /// non-zero state instead.
    pub fn new(seed: u64) -> Self {
        let state = if seed == 0 {
            Self::ZERO_SEED_STATE
        } else {
            seed
        };
        Self { state }
    }

    /// The next 32 random bits.
    pub fn next_u32(&mut self) -> u32 {
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        (self.state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 32) as u32
    }

    /// A uniform float in [0, 1) with 24 random bits.
    pub fn next_f32(&mut self) -> f32 {
        (self.next_u32() >> 8) as f32 / 16_777_216.0
    }
}

/// Index of the largest value, the first one among equals (as llama2.c). NaNs are skipped;
/// an empty or all-NaN slice gives 0.
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0usize;
    let mut best_v = f32::NAN;
    for (i, &v) in logits.iter().enumerate() {
        if v > best_v || (best_v.is_nan() && !v.is_nan()) {
            best = i;
            best_v = v;
        }
    }
    best as u32
}

/// In-place softmax; the maximum is subtracted first so large logits cannot overflow.
pub fn softmax(x: &mut [f32]) {
    if x.is_empty() {
        return;
    }
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0f32;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    let inv = 1.0 / sum;
    for v in x.iter_mut() {
        *v *= inv;
    }
}

/// Picks token ids from logits according to a [`SamplerConfig`].
#[derive(Debug, Clone)]
pub struct Sampler {
    config: SamplerConfig,
    rng: Rng,
    /// (probability, token id) work space for top-k / top-p, one slot per vocabulary entry.
    candidates: Vec<(f32, u32)>,
}

/// Most probable first; equal probabilities by lower id so results never depend on the
/// unstable sort's internal order.
fn by_prob_desc(a: &(f32, u32), b: &(f32, u32)) -> std::cmp::Ordering {
    b.0.total_cmp(&a.0).then(a.1.cmp(&b.1))
}

impl Sampler {
    /// A sampler for logits of `vocab_size` entries. An invalid config is not rejected here
    /// (call [`SamplerConfig::validate`] or [`Sampler::try_new`]); it degrades safely: a
    /// temperature that is not > 0 is greedy and a top-p outside (0, 1) is off.
    pub fn new(vocab_size: usize, config: SamplerConfig) -> Self {
        Self {
            config,
            rng: Rng::new(config.seed),
            candidates: vec![(0.0, 0); vocab_size],
        }
    }

    /// [`Sampler::new`] after [`SamplerConfig::validate`].
    pub fn try_new(vocab_size: usize, config: SamplerConfig) -> Result<Self, SamplerError> {
        config.validate()?;
        Ok(Self::new(vocab_size, config))
    }

    /// The configuration this sampler was created with.
    pub fn config(&self) -> &SamplerConfig {
        &self.config
    }

    /// Picks the next token. `logits` is overwritten (scaled, then turned into
    /// probabilities) when the temperature is > 0. Only the first `vocab_size` entries are
    /// considered. Does not allocate.
    pub fn sample(&mut self, logits: &mut [f32]) -> u32 {
        let n = logits.len().min(self.candidates.len());
        let logits = &mut logits[..n];
        let temperature = self.config.temperature;
        // Written so that a NaN temperature is greedy too.
        let positive = temperature > 0.0;
        if n <= 1 || !positive {
            return argmax(logits);
        }
        // Dividing by a positive temperature keeps the argmax, the fallback if the
        // distribution turns out not to be finite (e.g. +inf or NaN logits).
        let best = argmax(logits);
        let inv_t = 1.0 / temperature;
        for v in logits.iter_mut() {
            *v *= inv_t;
        }
        softmax(logits);
        if !logits[best as usize].is_finite() {
            return best;
        }
        // One draw per token, like run.c, so a seed reproduces run.c's choices.
        let coin = self.rng.next_f32();
        let top_p = self.config.top_p;
        let use_top_p = top_p > 0.0 && top_p < 1.0;
        let top_k = self.config.top_k;
        if top_k > 0 && top_k < n {
            self.sample_top_k(logits, top_k, use_top_p.then_some(top_p), coin)
        } else if use_top_p {
            self.sample_top_p(logits, top_p, coin)
        } else {
            sample_multinomial(logits, coin)
        }
    }

    /// Keeps the `k` most probable tokens, then optionally the nucleus among them
    /// (renormalised to the kept mass).
    fn sample_top_k(&mut self, probs: &[f32], k: usize, top_p: Option<f32>, coin: f32) -> u32 {
        let buf = &mut self.candidates[..probs.len()];
        for (i, (slot, &p)) in buf.iter_mut().zip(probs).enumerate() {
            *slot = (p, i as u32);
        }
        buf.select_nth_unstable_by(k - 1, by_prob_desc);
        let kept = &mut buf[..k];
        kept.sort_unstable_by(by_prob_desc);
        let mass: f32 = kept.iter().map(|c| c.0).sum();
        let last = match top_p {
            Some(p) => nucleus_end(kept, p * mass),
            None => k - 1,
        };
        pick(&kept[..=last], coin)
    }

    /// llama2.c's `sample_topp`: tokens below `(1 - top_p) / (n - 1)` cannot be in the
    /// nucleus, so they are dropped before sorting, which makes the sort small.
    fn sample_top_p(&mut self, probs: &[f32], top_p: f32, coin: f32) -> u32 {
        let cutoff = (1.0 - top_p) / (probs.len() - 1) as f32;
        let mut n0 = 0;
        for (i, &p) in probs.iter().enumerate() {
            if p >= cutoff {
                self.candidates[n0] = (p, i as u32);
                n0 += 1;
            }
        }
        // Possible when top_p < 1/n: then no token clears the cutoff (run.c would read out
        // of bounds); the most probable token is the nucleus.
        if n0 == 0 {
            return argmax(probs);
        }
        let kept = &mut self.candidates[..n0];
        kept.sort_unstable_by(by_prob_desc);
        let last = nucleus_end(kept, top_p);
        pick(&kept[..=last], coin)
    }
}

/// Index of the first sorted candidate at which the cumulative probability exceeds
/// `threshold`, or the last one if it never does.
fn nucleus_end(sorted: &[(f32, u32)], threshold: f32) -> usize {
    let mut cumulative = 0.0f32;
    for (i, c) in sorted.iter().enumerate() {
        cumulative += c.0;
        if cumulative > threshold {
            return i;
        }
    }
    sorted.len() - 1
}

/// Inverse-CDF pick from unnormalised candidates: `coin` is scaled by their total mass.
fn pick(candidates: &[(f32, u32)], coin: f32) -> u32 {
    let mass: f32 = candidates.iter().map(|c| c.0).sum();
    let r = coin * mass;
    let mut cdf = 0.0f32;
    for c in candidates {
        cdf += c.0;
        if r < cdf {
            return c.1;
        }
    }
    // Rounding can leave r >= the final cdf.
    candidates[candidates.len() - 1].1
}

/// llama2.c's `sample_mult`: inverse CDF over the full distribution.
fn sample_multinomial(probs: &[f32], coin: f32) -> u32 {
    let mut cdf = 0.0f32;
    for (i, &p) in probs.iter().enumerate() {
        cdf += p;
        if coin < cdf {
            return i as u32;
        }
    }
    (probs.len() - 1) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(temperature: f32, top_p: f32, top_k: usize, seed: u64) -> SamplerConfig {
        SamplerConfig {
            temperature,
            top_p,
            top_k,
            seed,
        }
    }

    /// Random-looking logits without a RNG crate: a small LCG.
    fn logits(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 8.0 - 4.0
            })
            .collect()
    }

    #[test]
    fn rng_matches_llama2c_xorshift_star() {
        // Reference values computed by hand-translating run.c's random_u32 into
        // u64 arithmetic (see the steps below), for state 42.
        let mut state: u64 = 42;
        let mut expected = Vec::new();
        for _ in 0..4 {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            expected.push((state.wrapping_mul(0x2545F4914F6CDD1D) >> 32) as u32);
        }
        let mut rng = Rng::new(42);
        let got: Vec<u32> = (0..4).map(|_| rng.next_u32()).collect();
        assert_eq!(got, expected);
        let mut rng = Rng::new(0);
        let draws: Vec<u32> = (0..8).map(|_| rng.next_u32()).collect();
        assert!(
            draws.iter().any(|&d| d != 0),
            "seed 0 must not get stuck at 0"
        );
        let mut rng = Rng::new(7);
        for _ in 0..10_000 {
            let f = rng.next_f32();
            assert!((0.0..1.0).contains(&f));
        }
    }

    #[test]
    fn argmax_takes_first_of_ties() {
        assert_eq!(argmax(&[1.0, 3.0, 3.0, 2.0]), 1);
        assert_eq!(argmax(&[5.0, 5.0]), 0);
        assert_eq!(argmax(&[-1.0, -1.0, -0.5, -0.5]), 2);
        assert_eq!(argmax(&[f32::NAN, 1.0, 2.0, 2.0]), 2);
        assert_eq!(argmax(&[]), 0);
    }

    #[test]
    fn softmax_sums_to_one_and_survives_large_logits() {
        let mut x = [1000.0f32, 1001.0, 999.0];
        softmax(&mut x);
        let sum: f32 = x.iter().sum();
        assert!((sum - 1.0).abs() < 1e-6);
        assert!(x[1] > x[0] && x[0] > x[2]);
        let mut empty: [f32; 0] = [];
        softmax(&mut empty);
    }

    #[test]
    fn temperature_zero_is_argmax() {
        for seed in 0..20 {
            let l = logits(100, seed);
            let want = argmax(&l);
            let mut s = Sampler::new(100, config(0.0, 0.9, 0, seed));
            for _ in 0..5 {
                assert_eq!(s.sample(&mut l.clone()), want);
            }
        }
    }

    #[test]
    fn same_seed_same_sequence_different_seeds_diverge() {
        let l = logits(1000, 3);
        let run = |seed: u64, top_p: f32, top_k: usize| -> Vec<u32> {
            let mut s = Sampler::new(1000, config(1.0, top_p, top_k, seed));
            (0..200).map(|_| s.sample(&mut l.clone())).collect()
        };
        for (top_p, top_k) in [(1.0, 0), (0.9, 0), (1.0, 50), (0.8, 40)] {
            assert_eq!(run(11, top_p, top_k), run(11, top_p, top_k));
            assert_eq!(run(0, top_p, top_k), run(0, top_p, top_k));
            assert_ne!(run(11, top_p, top_k), run(12, top_p, top_k));
            assert_ne!(run(0, top_p, top_k), run(1, top_p, top_k));
        }
    }

    #[test]
    fn top_k_one_is_argmax() {
        for seed in 0..20 {
            let l = logits(500, seed + 100);
            let want = argmax(&l);
            let mut s = Sampler::new(500, config(1.5, 0.0, 1, seed));
            for _ in 0..20 {
                assert_eq!(s.sample(&mut l.clone()), want);
            }
        }
    }

    #[test]
    fn tiny_top_p_is_argmax() {
        for seed in 0..20 {
            let l = logits(500, seed + 200);
            let want = argmax(&l);
            for top_p in [1e-6f32, 1e-3] {
                let mut s = Sampler::new(500, config(1.0, top_p, 0, seed));
                for _ in 0..20 {
                    assert_eq!(s.sample(&mut l.clone()), want);
                }
                let mut s = Sampler::new(500, config(1.0, top_p, 10, seed));
                for _ in 0..20 {
                    assert_eq!(s.sample(&mut l.clone()), want);
                }
            }
        }
    }

    #[test]
    fn top_k_and_top_p_only_return_allowed_tokens() {
        // Probabilities ∝ exp(logit): with logits ln(8), ln(4), ln(2), ln(1), ln(1) the
        // distribution is 8/16, 4/16, 2/16, 1/16, 1/16.
        let base: Vec<f32> = [8.0f32, 4.0, 2.0, 1.0, 1.0]
            .iter()
            .map(|p| p.ln())
            .collect();
        let mut s = Sampler::new(5, config(1.0, 0.0, 2, 5));
        for _ in 0..2000 {
            assert!(s.sample(&mut base.clone()) < 2);
        }
        // Nucleus 0.7: 0.5 is not > 0.7, 0.75 is, so tokens 0 and 1.
        let mut s = Sampler::new(5, config(1.0, 0.7, 0, 5));
        let mut seen = [0usize; 5];
        for _ in 0..2000 {
            seen[s.sample(&mut base.clone()) as usize] += 1;
        }
        assert_eq!(seen[2..], [0, 0, 0]);
        assert!(seen[0] > 0 && seen[1] > 0);
        // top-k 3 then top-p 0.9 of the kept mass 14/16: cumulative 8/14, 12/14 ≤ 0.9,
        // 14/14 > 0.9, so all three stay.
        let mut s = Sampler::new(5, config(1.0, 0.9, 3, 5));
        let mut seen = [0usize; 5];
        for _ in 0..3000 {
            seen[s.sample(&mut base.clone()) as usize] += 1;
        }
        assert_eq!(seen[3..], [0, 0]);
        assert!(seen[..3].iter().all(|&c| c > 0));
    }

    /// Draws `draws` samples and checks each token's frequency is within 4.5 standard
    /// deviations of `expected` (binomial), computed independently in f64.
    fn check_frequencies(cfg: SamplerConfig, logits: &[f32], expected: &[f64], draws: usize) {
        let mut s = Sampler::new(logits.len(), cfg);
        let mut counts = vec![0usize; logits.len()];
        for _ in 0..draws {
            counts[s.sample(&mut logits.to_vec()) as usize] += 1;
        }
        for (i, (&c, &p)) in counts.iter().zip(expected).enumerate() {
            let n = draws as f64;
            let sigma = (n * p * (1.0 - p)).sqrt();
            let diff = (c as f64 - n * p).abs();
            assert!(
                diff <= 4.5 * sigma + 1e-9,
                "token {i}: {c} draws, expected {:.1} ± {sigma:.1} ({cfg:?})",
                n * p
            );
        }
    }

    fn softmax_f64(logits: &[f32], temperature: f64) -> Vec<f64> {
        let scaled: Vec<f64> = logits.iter().map(|&l| l as f64 / temperature).collect();
        let max = scaled.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let e: Vec<f64> = scaled.iter().map(|x| (x - max).exp()).collect();
        let sum: f64 = e.iter().sum();
        e.iter().map(|x| x / sum).collect()
    }

    #[test]
    fn empirical_frequencies_match_distribution() {
        let logits = [0.5f32, -1.0, 2.0, 1.2];
        for (temperature, seed) in [(1.0f32, 1u64), (0.7, 2), (1.8, 0)] {
            let expected = softmax_f64(&logits, temperature as f64);
            check_frequencies(
                config(temperature, 1.0, 0, seed),
                &logits,
                &expected,
                20_000,
            );
        }
    }

    #[test]
    fn empirical_frequencies_with_top_k_and_top_p() {
        let logits = [0.5f32, -1.0, 2.0, 1.2];
        let p = softmax_f64(&logits, 1.0);
        // Order by probability: 2, 3, 0, 1. top-k 2 keeps tokens 2 and 3, renormalised.
        let kept = p[2] + p[3];
        let expected = [0.0, 0.0, p[2] / kept, p[3] / kept];
        check_frequencies(config(1.0, 0.0, 2, 9), &logits, &expected, 20_000);
        // top-p 0.8: p[2] ≈ 0.59 ≤ 0.8 and p[2] + p[3] ≈ 0.86 > 0.8, so the same nucleus.
        assert!(p[2] <= 0.8 && p[2] + p[3] > 0.8);
        check_frequencies(config(1.0, 0.8, 0, 9), &logits, &expected, 20_000);
    }

    #[test]
    fn validate_rejects_bad_values() {
        assert!(config(0.0, 0.0, 0, 0).validate().is_ok());
        assert!(config(1.0, 1.0, 40, 0).validate().is_ok());
        assert_eq!(
            config(-0.5, 0.9, 0, 0).validate(),
            Err(SamplerError::BadTemperature(-0.5))
        );
        assert!(config(f32::NAN, 0.9, 0, 0).validate().is_err());
        assert!(config(f32::INFINITY, 0.9, 0, 0).validate().is_err());
        assert_eq!(
            config(1.0, 1.5, 0, 0).validate(),
            Err(SamplerError::BadTopP(1.5))
        );
        assert!(config(1.0, f32::NAN, 0, 0).validate().is_err());
        assert!(config(1.0, -0.1, 0, 0).validate().is_err());
        let msg = config(1.0, 2.0, 0, 0).validate().unwrap_err().to_string();
        assert!(msg.contains("top-p"), "{msg}");
        assert!(Sampler::try_new(10, config(-1.0, 0.9, 0, 0)).is_err());
    }

    #[test]
    fn odd_inputs_do_not_panic() {
        let mut s = Sampler::new(4, config(1.0, 0.9, 2, 1));
        assert_eq!(s.sample(&mut []), 0);
        assert_eq!(s.sample(&mut [3.0]), 0);
        assert_eq!(s.sample(&mut [0.0, f32::INFINITY, 1.0, 2.0]), 1);
        let _ = s.sample(&mut [f32::NAN; 4]);
        // Longer than the vocabulary: the extra entries are ignored.
        assert!(s.sample(&mut [0.0, 0.0, 0.0, 0.0, 100.0, 100.0]) < 4);
        let mut s = Sampler::new(4, config(f32::NAN, f32::NAN, 0, 1));
        assert_eq!(s.sample(&mut [0.0, 1.0, 3.0, 2.0]), 2);
    }
}
