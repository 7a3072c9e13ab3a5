//! Token sampling: greedy, temperature, top-k, top-p, min-p and the repetition, frequency
//! and presence penalties, with a seeded generator so a run is reproducible.
//!
//! The chain is applied in llama.cpp's default order: penalties, top-k, top-p, min-p,
//! temperature, then a draw. The three penalties look at the same window as llama.cpp's
//! penalties sampler: the last `repeat_last_n` tokens of the history (prompt and output). Temperature 0 is greedy (the largest logit; ties go to the
//! lowest id).

/// Sampling parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplerConfig {
    /// Temperature; 0 means greedy.
    pub temperature: f32,
    /// Keep the `top_k` most likely tokens (0 = all).
    pub top_k: usize,
    /// Keep the smallest set whose probability reaches `top_p` (1 = all).
    pub top_p: f32,
    /// Drop tokens less likely than `min_p` times the most likely one (0 = none).
    pub min_p: f32,
    /// Divide positive (multiply negative) logits of recently seen tokens by this (1 = off).
    pub repeat_penalty: f32,
    /// How many recent tokens the penalties look at (repetition, frequency, presence).
    pub repeat_last_n: usize,
    /// Subtracted from the logit of a token once per occurrence in the window (OpenAI's
    /// `frequency_penalty`; 0 = off).
    pub frequency_penalty: f32,
    /// Subtracted from the logit of a token that occurs in the window at all (OpenAI's
    /// `presence_penalty`; 0 = off).
    pub presence_penalty: f32,
    /// Seed of the generator.
    pub seed: u64,
}

impl Default for SamplerConfig {
    fn default() -> Self {
        SamplerConfig {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            frequency_penalty: 0.0,
            presence_penalty: 0.0,
            seed: 0x5EED,
        }
    }
}

/// Errors in sampler parameters.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SamplerError {
    /// A parameter out of its range.
    #[error("invalid sampling parameter {name} = {value}: {expected}")]
    Invalid {
        /// The parameter (as the CLI flag names it).
        name: &'static str,
        /// Its value.
        value: String,
        /// The valid range.
        expected: &'static str,
    },
    /// No logits to sample from.
    #[error("cannot sample from an empty logit vector")]
    Empty,
}

impl SamplerConfig {
    /// Greedy decoding.
    pub fn greedy() -> Self {
        SamplerConfig {
            temperature: 0.0,
            ..Self::default()
        }
    }

    /// Checks every parameter's range.
    pub fn validate(&self) -> Result<(), SamplerError> {
        let bad = |name, value: f32, expected| SamplerError::Invalid {
            name,
            value: value.to_string(),
            expected,
        };
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return Err(bad("--temp", self.temperature, "a finite number >= 0"));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(bad("--top-p", self.top_p, "in (0, 1]"));
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return Err(bad("--min-p", self.min_p, "in [0, 1]"));
        }
        if !(self.repeat_penalty > 0.0 && self.repeat_penalty.is_finite()) {
            return Err(bad(
                "--repeat-penalty",
                self.repeat_penalty,
                "a finite number > 0",
            ));
        }
        for (name, v) in [
            ("--frequency-penalty", self.frequency_penalty),
            ("--presence-penalty", self.presence_penalty),
        ] {
            if !v.is_finite() {
                return Err(bad(name, v, "a finite number (OpenAI takes -2..2)"));
            }
        }
        Ok(())
    }

    fn penalizes(&self) -> bool {
        self.repeat_last_n > 0
            && (self.repeat_penalty != 1.0
                || self.frequency_penalty != 0.0
                || self.presence_penalty != 0.0)
    }
}

/// A seeded sampler.
#[derive(Debug, Clone)]
pub struct Sampler {
    cfg: SamplerConfig,
    rng: SplitMix64,
    scratch: Vec<(u32, f32)>,
    probs: Vec<f64>,
}

impl Sampler {
    /// A sampler; parameters are validated.
    pub fn new(cfg: SamplerConfig) -> Result<Self, SamplerError> {
        cfg.validate()?;
        Ok(Sampler {
            rng: SplitMix64(cfg.seed),
            cfg,
            scratch: Vec::new(),
            probs: Vec::new(),
        })
    }

    /// The parameters.
    pub fn config(&self) -> &SamplerConfig {
        &self.cfg
    }

    /// Picks the next token from `logits`, given the tokens seen so far (for the penalty).
    pub fn sample(&mut self, logits: &[f32], history: &[u32]) -> Result<u32, SamplerError> {
        if let Some(greedy) = self.filter(logits, history)? {
            return Ok(greedy);
        }
        let r = self.rng.next_f64();
        Ok(draw_sorted(&self.scratch, &self.probs, r))
    }

    /// The distribution [`sample`](Self::sample) draws from: `(token, probability)` pairs,
    /// most likely first, probabilities summing to 1 (one token with probability 1 when
    /// greedy). Draws nothing from the generator.
    pub fn distribution(
        &mut self,
        logits: &[f32],
        history: &[u32],
    ) -> Result<Vec<(u32, f64)>, SamplerError> {
        if let Some(greedy) = self.filter(logits, history)? {
            return Ok(vec![(greedy, 1.0)]);
        }
        Ok(self
            .scratch
            .iter()
            .zip(&self.probs)
            .map(|(&(t, _), &p)| (t, p))
            .collect())
    }

    /// A uniform draw in `[0, 1)` from the sampler's seeded generator (speculative
    /// sampling's acceptance test uses the same stream, so a seed still fixes the run).
    pub fn uniform(&mut self) -> f64 {
        self.rng.next_f64()
    }

    /// Applies the chain to `logits`: the greedy token (`Some`) at temperature 0, else
    /// `None` with the kept candidates in `scratch` and their probabilities in `probs`.
    fn filter(&mut self, logits: &[f32], history: &[u32]) -> Result<Option<u32>, SamplerError> {
        if logits.is_empty() {
            return Err(SamplerError::Empty);
        }
        let c = &self.cfg;
        let cands = &mut self.scratch;
        cands.clear();
        cands.extend(logits.iter().enumerate().map(|(i, &l)| (i as u32, l)));
        if c.penalizes() {
            let start = history.len().saturating_sub(c.repeat_last_n);
            let mut seen: Vec<u32> = history[start..].to_vec();
            seen.sort_unstable();
            for run in seen.chunk_by(|a, b| a == b) {
                if let Some(e) = cands.get_mut(run[0] as usize) {
                    e.1 = penalize(e.1, run.len(), c);
                }
            }
        }
        if c.temperature == 0.0 {
            let best =
                cands.iter().fold(
                    (0u32, f32::NEG_INFINITY),
                    |b, &(i, l)| if l > b.1 { (i, l) } else { b },
                );
            return Ok(Some(best.0));
        }
        // Masked tokens (`-inf`, e.g. from an output constraint) can never be drawn, not even
        // by the rounding fallback below.
        if cands.iter().any(|e| e.1 == f32::NEG_INFINITY)
            && cands.iter().any(|e| e.1 != f32::NEG_INFINITY)
        {
            cands.retain(|e| e.1 != f32::NEG_INFINITY);
        }
        // Sort descending by logit (ties: lower id first) so every filter is a prefix cut.
        // With top-k, only the k best are sorted (the order is total, so the result is the
        // same as sorting everything and cutting).
        let order = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        if c.top_k > 0 && c.top_k < cands.len() {
            cands.select_nth_unstable_by(c.top_k - 1, order);
            cands.truncate(c.top_k);
        }
        cands.sort_by(order);
        // Probabilities at temperature 1 for top-p / min-p (as llama.cpp's chain does).
        let probs = softmax_sorted(cands, 1.0);
        let mut keep = cands.len();
        if c.top_p < 1.0 {
            let mut cum = 0.0;
            for (i, p) in probs.iter().enumerate() {
                cum += p;
                if cum >= c.top_p as f64 {
                    keep = keep.min(i + 1);
                    break;
                }
            }
        }
        if c.min_p > 0.0 {
            let floor = probs[0] * c.min_p as f64;
            let n = probs.iter().take_while(|&&p| p >= floor).count().max(1);
            keep = keep.min(n);
        }
        cands.truncate(keep.max(1));
        self.probs = softmax_sorted(cands, c.temperature);
        Ok(None)
    }
}

/// The token `r` (uniform in `[0, 1)`) falls on, walking `probs` in order (the last one if
/// rounding leaves `r` past the sum).
fn draw_sorted(cands: &[(u32, f32)], probs: &[f64], r: f64) -> u32 {
    let mut cum = 0.0;
    for (i, p) in probs.iter().enumerate() {
        cum += p;
        if r < cum {
            return cands[i].0;
        }
    }
    cands[cands.len() - 1].0
}

/// Draws from a distribution of `(token, weight)` pairs (weights need not sum to 1; at
/// least one must be positive) with `r` uniform in `[0, 1)`.
pub fn draw(dist: &[(u32, f64)], r: f64) -> Option<u32> {
    let total: f64 = dist.iter().map(|e| e.1.max(0.0)).sum();
    if total <= 0.0 || !total.is_finite() {
        return None;
    }
    let target = r * total;
    let mut cum = 0.0;
    let mut last = None;
    for &(t, w) in dist {
        if w <= 0.0 {
            continue;
        }
        cum += w;
        last = Some(t);
        if target < cum {
            return Some(t);
        }
    }
    last
}

/// A logit of a token seen `count` (> 0) times in the window: the repetition penalty
/// divides a positive logit (multiplies a negative one), then `count * frequency + presence`
/// is subtracted (llama.cpp's penalties sampler, OpenAI's formula).
fn penalize(logit: f32, count: usize, c: &SamplerConfig) -> f32 {
    let l = if logit > 0.0 {
        logit / c.repeat_penalty
    } else {
        logit * c.repeat_penalty
    };
    l - count as f32 * c.frequency_penalty - c.presence_penalty
}

/// Softmax of `logits / temp` over candidates sorted descending.
fn softmax_sorted(cands: &[(u32, f32)], temp: f32) -> Vec<f64> {
    let max = cands[0].1 as f64 / temp as f64;
    let mut p: Vec<f64> = cands
        .iter()
        .map(|&(_, l)| (l as f64 / temp as f64 - max).exp())
        .collect();
    let sum: f64 = p.iter().sum();
    for v in &mut p {
        *v /= sum;
    }
    p
}

/// SplitMix64: small, fast and stable across versions (a seed always gives the same run).
#[derive(Debug, Clone)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logits() -> Vec<f32> {
        vec![1.0, 3.0, 2.0, 3.0, -1.0, 0.5]
    }

    #[test]
    fn greedy_takes_the_first_maximum() {
        let mut s = Sampler::new(SamplerConfig::greedy()).unwrap();
        assert_eq!(s.sample(&logits(), &[]).unwrap(), 1);
    }

    #[test]
    fn repetition_penalty_moves_greedy_choice() {
        let mut s = Sampler::new(SamplerConfig {
            repeat_penalty: 2.0,
            ..SamplerConfig::greedy()
        })
        .unwrap();
        assert_eq!(s.sample(&logits(), &[1]).unwrap(), 3);
        assert_eq!(s.sample(&logits(), &[1, 3]).unwrap(), 2);
    }

    #[test]
    fn frequency_and_presence_penalties_follow_openai() {
        // logit -= count * frequency + (count > 0) * presence, over the last n tokens.
        let cfg = SamplerConfig {
            frequency_penalty: 0.5,
            presence_penalty: 0.25,
            repeat_last_n: 4,
            ..SamplerConfig::greedy()
        };
        assert_eq!(penalize(3.0, 1, &cfg), 3.0 - 0.5 - 0.25);
        assert_eq!(penalize(3.0, 3, &cfg), 3.0 - 1.5 - 0.25);
        assert_eq!(penalize(-1.0, 2, &cfg), -1.0 - 1.0 - 0.25);
        // With the repetition penalty too: divide/multiply first, then subtract.
        let both = SamplerConfig {
            repeat_penalty: 2.0,
            ..cfg.clone()
        };
        assert_eq!(penalize(3.0, 2, &both), 1.5 - 1.0 - 0.25);
        assert_eq!(penalize(-1.0, 1, &both), -2.0 - 0.5 - 0.25);

        // Through the sampler: logits [1, 3, 2, 3, -1, 0.5]. Token 1 seen twice: 3 - 1.25 =
        // 1.75 < 2, so greedy moves to token 3 (first maximum after 1).
        let mut s = Sampler::new(cfg.clone()).unwrap();
        assert_eq!(s.sample(&logits(), &[1, 1]).unwrap(), 3);
        // Tokens 1 and 3 once each: 3 - 0.75 = 2.25 > 2, still the first of them.
        assert_eq!(s.sample(&logits(), &[3, 1]).unwrap(), 1);
        // 1 twice and 3 once: 1.75 vs 2.25.
        assert_eq!(s.sample(&logits(), &[1, 3, 1]).unwrap(), 3);
        // 3 twice, 1 twice: both 1.75 < 2, token 2 wins.
        assert_eq!(s.sample(&logits(), &[1, 3, 1, 3]).unwrap(), 2);
        // Only the last 4 tokens count: the leading 3s fell out of the window.
        assert_eq!(s.sample(&logits(), &[3, 3, 3, 1, 1, 0, 0]).unwrap(), 3);
        // Presence alone: one occurrence or many costs the same.
        let mut p = Sampler::new(SamplerConfig {
            presence_penalty: 1.5,
            ..SamplerConfig::greedy()
        })
        .unwrap();
        assert_eq!(p.sample(&logits(), &[1]).unwrap(), 3);
        assert_eq!(p.sample(&logits(), &[1, 3, 3, 3]).unwrap(), 2);
        // A negative penalty favours what was seen.
        let mut n = Sampler::new(SamplerConfig {
            frequency_penalty: -2.0,
            ..SamplerConfig::greedy()
        })
        .unwrap();
        assert_eq!(n.sample(&logits(), &[5, 5]).unwrap(), 5);
        assert!(Sampler::new(SamplerConfig {
            presence_penalty: f32::NAN,
            ..SamplerConfig::greedy()
        })
        .unwrap_err()
        .to_string()
        .contains("--presence-penalty"));
    }

    #[test]
    fn top_k_one_is_greedy_and_seed_reproduces() {
        let cfg = SamplerConfig {
            temperature: 1.0,
            top_k: 1,
            ..SamplerConfig::default()
        };
        let mut s = Sampler::new(cfg).unwrap();
        for _ in 0..20 {
            assert_eq!(s.sample(&logits(), &[]).unwrap(), 1);
        }
        let cfg = SamplerConfig {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            seed: 42,
            ..SamplerConfig::default()
        };
        let run = |cfg: &SamplerConfig| {
            let mut s = Sampler::new(cfg.clone()).unwrap();
            (0..50)
                .map(|_| s.sample(&logits(), &[]).unwrap())
                .collect::<Vec<_>>()
        };
        let a = run(&cfg);
        assert_eq!(a, run(&cfg));
        // All tokens are reachable at temperature 1 with no filters; the low one is rare.
        assert!(a.iter().any(|&t| t != 1 && t != 3));
    }

    #[test]
    fn top_p_and_min_p_cut_the_tail() {
        let l = vec![10.0, 9.0, 0.0, -5.0];
        for cfg in [
            SamplerConfig {
                temperature: 1.0,
                top_k: 0,
                top_p: 0.9,
                min_p: 0.0,
                ..Default::default()
            },
            SamplerConfig {
                temperature: 1.0,
                top_k: 0,
                top_p: 1.0,
                min_p: 0.1,
                ..Default::default()
            },
        ] {
            let mut s = Sampler::new(cfg).unwrap();
            for _ in 0..200 {
                let t = s.sample(&l, &[]).unwrap();
                assert!(t == 0 || t == 1, "{t}");
            }
        }
    }

    #[test]
    fn masked_tokens_are_never_drawn() {
        let mut l = vec![f32::NEG_INFINITY; 1000];
        l[7] = -3.0;
        l[900] = -3.5;
        let mut s = Sampler::new(SamplerConfig {
            temperature: 1.5,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            ..Default::default()
        })
        .unwrap();
        let mut seen = [false; 2];
        for _ in 0..500 {
            match s.sample(&l, &[]).unwrap() {
                7 => seen[0] = true,
                900 => seen[1] = true,
                t => panic!("masked token {t} drawn"),
            }
        }
        assert_eq!(seen, [true, true]);
        let mut g = Sampler::new(SamplerConfig::greedy()).unwrap();
        assert_eq!(g.sample(&l, &[]).unwrap(), 7);
    }

    #[test]
    fn invalid_parameters_are_named() {
        let e = Sampler::new(SamplerConfig {
            top_p: 0.0,
            ..Default::default()
        })
        .unwrap_err();
        assert!(e.to_string().contains("--top-p"));
        let e = Sampler::new(SamplerConfig {
            temperature: -1.0,
            ..Default::default()
        })
        .unwrap_err();
        assert!(e.to_string().contains("--temp"));
        let mut s = Sampler::new(SamplerConfig::greedy()).unwrap();
        assert_eq!(s.sample(&[], &[]), Err(SamplerError::Empty));
    }
}
