//! Picking the next token from logits: repetition penalty, then greedy or temperature / top-k /
//! top-p sampling (transformers' order), with a small seeded RNG so results are reproducible.

use crate::error::{Error, Result};
use crate::generation::GenerationConfig;

/// Picks tokens for one sequence; owns its RNG stream.
#[derive(Debug, Clone)]
pub struct Sampler {
    config: GenerationConfig,
    rng: SplitMix64,
}

impl Sampler {
    /// A sampler for `config` whose RNG starts from `config.seed` (plus `stream`, so that rows of
    /// a batch draw independent numbers).
    pub fn new(config: &GenerationConfig, stream: u64) -> Self {
        Sampler {
            config: config.clone(),
            rng: SplitMix64(config.seed ^ stream.wrapping_mul(0xA076_1D64_78BD_642F)),
        }
    }

    /// Picks the next id from `logits` (one row, modified in place) given the ids seen so far
    /// (prompt and generated), which the repetition penalty looks at. NaN logits never win; a
    /// row without a single finite logit (NaN weights or a NaN state) is an error.
    pub fn sample(&mut self, logits: &mut [f32], seen: &[u32]) -> Result<u32> {
        apply_repetition_penalty(logits, seen, self.config.repetition_penalty);
        let Some(max) = logits
            .iter()
            .copied()
            .filter(|l| l.is_finite())
            .reduce(f32::max)
        else {
            return Err(Error::NonFiniteLogits { len: logits.len() });
        };
        if !self.config.do_sample {
            return Ok(argmax(logits));
        }
        if let Some(i) = logits.iter().position(|&l| l == f32::INFINITY) {
            return Ok(i as u32);
        }
        let t = self.config.temperature;
        // Relative to the largest before dividing: with a tiny temperature the rest go to -inf
        // and the largest stays 0, where `l / t` would give inf - inf.
        let mut candidates: Vec<(u32, f32)> = (0u32..)
            .zip(logits.iter().map(|&l| (l - max) / t))
            .filter(|(_, l)| !l.is_nan())
            .collect();
        candidates.sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        if let Some(k) = self.config.top_k {
            candidates.truncate(k.max(1));
        }
        // The first candidate is the largest, at 0: the total is at least 1.
        let mut probs: Vec<f64> = candidates
            .iter()
            .map(|&(_, l)| f64::from(l).exp())
            .collect();
        let total: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= total);
        if let Some(top_p) = self.config.top_p {
            // Keep tokens while the mass before them is below p (always at least one).
            let mut mass = 0.0;
            let keep = probs
                .iter()
                .take_while(|&&p| {
                    let before = mass;
                    mass += p;
                    before < f64::from(top_p)
                })
                .count();
            probs.truncate(keep.max(1));
        }
        let total: f64 = probs.iter().sum();
        let mut u = self.rng.next_f64() * total;
        for (i, p) in probs.iter().enumerate() {
            if u < *p {
                return Ok(candidates[i].0);
            }
            u -= p;
        }
        Ok(candidates[probs.len() - 1].0)
    }
}

/// Index of the largest logit (the first on ties, like `torch.argmax`), NaN aside; 0 if all are
/// NaN.
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best: Option<(usize, f32)> = None;
    for (i, &l) in logits.iter().enumerate() {
        if !l.is_nan() && best.is_none_or(|(_, b)| l > b) {
            best = Some((i, l));
        }
    }
    best.map_or(0, |(i, _)| i as u32)
}

/// transformers' `RepetitionPenaltyLogitsProcessor`: each id seen once or more is penalised once.
pub fn apply_repetition_penalty(logits: &mut [f32], seen: &[u32], penalty: f32) {
    if penalty == 1.0 {
        return;
    }
    let mut done = vec![false; logits.len()];
    for &id in seen {
        let i = id as usize;
        if i < logits.len() && !done[i] {
            done[i] = true;
            let l = logits[i];
            logits[i] = if l < 0.0 { l * penalty } else { l / penalty };
        }
    }
}

/// SplitMix64: tiny, fast, and its sequence is fixed by its definition, so a seed reproduces
/// the same tokens on every platform and every version of this library.
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

    /// Uniform in [0, 1) with 53 random bits.
    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_the_first_maximum() {
        let mut s = Sampler::new(&GenerationConfig::default(), 0);
        assert_eq!(s.sample(&mut [0.0, 3.0, 3.0, -1.0], &[]).unwrap(), 1);
    }

    #[test]
    fn repetition_penalty_follows_transformers() {
        let mut logits = [2.0, -2.0, 1.0];
        apply_repetition_penalty(&mut logits, &[0, 1, 0], 2.0);
        assert_eq!(logits, [1.0, -4.0, 1.0]);
    }

    #[test]
    fn top_k_one_is_greedy_and_seeds_reproduce() {
        let config = GenerationConfig::default()
            .with_temperature(1.0)
            .with_top_k(1);
        let mut s = Sampler::new(&config, 0);
        for _ in 0..20 {
            assert_eq!(s.sample(&mut [0.0, 0.5, 0.4], &[]).unwrap(), 1);
        }
        let config = GenerationConfig::default()
            .with_temperature(1.0)
            .with_seed(7);
        let draw = |stream| {
            let mut s = Sampler::new(&config, stream);
            (0..32)
                .map(|_| s.sample(&mut [0.0; 8], &[]).unwrap())
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(0), draw(0));
        assert_ne!(draw(0), draw(1));
        assert!(draw(0).iter().any(|&t| t != draw(0)[0]));
    }

    #[test]
    fn top_p_keeps_the_nucleus_only() {
        // Probabilities ~ [0.64, 0.24, 0.09, 0.03]: p = 0.7 keeps the first two.
        let config = GenerationConfig::default()
            .with_temperature(1.0)
            .with_top_p(0.7);
        let mut s = Sampler::new(&config, 3);
        let logits = [3.0f32, 2.0, 1.0, 0.0];
        let mut seen = [false; 4];
        for _ in 0..400 {
            seen[s.sample(&mut logits.clone(), &[]).unwrap() as usize] = true;
        }
        assert_eq!(seen, [true, true, false, false]);
    }

    #[test]
    fn non_finite_logits_never_panic() {
        let greedy = GenerationConfig::default();
        let sampled = GenerationConfig::default()
            .with_temperature(1.0)
            .with_top_p(0.9);
        let tiny = GenerationConfig::default().with_temperature(1e-30);
        for config in [&greedy, &sampled, &tiny] {
            let mut s = Sampler::new(config, 0);
            for row in [
                vec![f32::NAN; 5],
                vec![f32::NEG_INFINITY; 3],
                vec![f32::NAN, f32::INFINITY],
                vec![],
            ] {
                match s.sample(&mut row.clone(), &[1]) {
                    Err(Error::NonFiniteLogits { len }) => assert_eq!(len, row.len()),
                    other => panic!("{row:?}: {other:?}"),
                }
            }
            // NaN is never drawn; a tiny temperature is greedy.
            let mut row = [f32::NAN, 1.0, 3.0, f32::NAN, 2.0];
            let id = s.sample(&mut row, &[]).unwrap();
            assert!(
                id == 2 || (id == 4 && std::ptr::eq(config, &sampled)),
                "{id}"
            );
        }
    }
}
