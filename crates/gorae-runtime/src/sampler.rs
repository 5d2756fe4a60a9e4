//! Token sampling with llama.cpp's default chain order: penalties → top-k → top-p → min-p →
//! temperature → draw. Temperature ≤ 0 is greedy (penalties still apply, as in llama.cpp).
//! A seeded ChaCha RNG makes runs reproducible across machines; buffers are reused, so sampling a
//! token allocates nothing once warmed up.

use rand::Rng;
use rand::SeedableRng;
use rand::rngs::StdRng;

#[derive(Clone, Debug, PartialEq)]
pub struct SamplerConfig {
    pub temperature: f32,
    /// 0 disables.
    pub top_k: usize,
    /// 1.0 disables.
    pub top_p: f32,
    /// 0.0 disables.
    pub min_p: f32,
    /// 1.0 disables. Divides positive logits / multiplies negative ones of recent tokens.
    pub repeat_penalty: f32,
    /// How many recent tokens the penalties look at (0 disables all penalties).
    pub repeat_last_n: usize,
    pub presence_penalty: f32,
    pub frequency_penalty: f32,
    pub seed: u64,
}

impl Default for SamplerConfig {
    /// llama.cpp's `common_params_sampling` defaults.
    fn default() -> Self {
        SamplerConfig {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            seed: 0xdead_beef,
        }
    }
}

impl SamplerConfig {
    pub fn greedy() -> Self {
        SamplerConfig {
            temperature: 0.0,
            ..Default::default()
        }
    }

    /// Rejects values that would make sampling meaningless (NaN, negative, out of range).
    pub fn validate(&self) -> Result<(), String> {
        let finite = |name: &str, v: f32| {
            if v.is_finite() {
                Ok(())
            } else {
                Err(format!("{name} must be a finite number"))
            }
        };
        finite("temperature", self.temperature)?;
        finite("top_p", self.top_p)?;
        finite("min_p", self.min_p)?;
        finite("repeat_penalty", self.repeat_penalty)?;
        finite("presence_penalty", self.presence_penalty)?;
        finite("frequency_penalty", self.frequency_penalty)?;
        if self.temperature < 0.0 {
            return Err("temperature must be >= 0".into());
        }
        if !(0.0..=1.0).contains(&self.top_p) || self.top_p == 0.0 {
            return Err("top_p must be in (0, 1]".into());
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return Err("min_p must be in [0, 1]".into());
        }
        if self.repeat_penalty <= 0.0 {
            return Err("repeat_penalty must be > 0".into());
        }
        Ok(())
    }
}

pub struct Sampler {
    cfg: SamplerConfig,
    rng: StdRng,
    cand: Vec<(f32, u32)>,
    /// The candidates' unnormalized probabilities, contiguous for the vectorized exp.
    weights: Vec<f32>,
    /// [`draw`]'s per-block sums of `weights`.
    block_sums: Vec<f64>,
    counts: Vec<u32>,
}

impl Sampler {
    pub fn new(cfg: SamplerConfig) -> Self {
        let rng = StdRng::seed_from_u64(cfg.seed);
        Sampler {
            cfg,
            rng,
            cand: Vec::new(),
            weights: Vec::new(),
            block_sums: Vec::new(),
            counts: Vec::new(),
        }
    }

    pub fn config(&self) -> &SamplerConfig {
        &self.cfg
    }

    /// Picks the next token from `logits` (`[n_vocab]`, modified in place by the penalties) given
    /// the tokens so far (`history`, prompt included).
    pub fn sample(&mut self, logits: &mut [f32], history: &[u32]) -> u32 {
        self.apply_penalties(logits, history);
        if self.cfg.temperature <= 0.0 {
            return argmax(logits);
        }
        let whole_vocab = (self.cfg.top_k == 0 || self.cfg.top_k >= logits.len())
            && self.cfg.top_p >= 1.0
            && self.cfg.min_p <= 0.0;
        if whole_vocab && let Some(id) = self.sample_whole_vocab(logits) {
            return id;
        }
        self.sample_candidates(logits)
    }

    /// The general draw: candidates cut by top-k, top-p and min-p, then weighted by temperature.
    fn sample_candidates(&mut self, logits: &[f32]) -> u32 {
        // A NaN logit stays a candidate at -inf (weight 0, never drawn), so without cuts the
        // candidates are every id in order, the very weights the whole-vocabulary draw walks.
        self.cand.clear();
        self.cand.extend(
            logits
                .iter()
                .enumerate()
                .map(|(i, &l)| (if l.is_nan() { f32::NEG_INFINITY } else { l }, i as u32)),
        );
        if self.cand.is_empty() {
            return 0;
        }
        let by_logit_desc =
            |a: &(f32, u32), b: &(f32, u32)| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1));
        let k = self.cfg.top_k;
        if k > 0 && k < self.cand.len() {
            self.cand.select_nth_unstable_by(k - 1, by_logit_desc);
            self.cand.truncate(k);
        }
        // No full sort: OpenAI's default (no top_k) leaves the whole vocabulary, and sorting
        // 50-150k candidates per token would cost more than a batched decode step. Only top-p
        // needs order, and only of the prefix that holds its mass.
        let max = self
            .cand
            .iter()
            .map(|c| c.0)
            .fold(f32::NEG_INFINITY, f32::max);
        // Softmax at temperature 1 for top-p / min-p (llama.cpp filters before temperature).
        if self.cfg.top_p < 1.0 {
            let probs_sum: f64 = self.cand.iter().map(|c| ((c.0 - max) as f64).exp()).sum();
            let target = self.cfg.top_p as f64 * probs_sum;
            let mut m = 64;
            loop {
                let all = m >= self.cand.len();
                if all {
                    self.cand.sort_unstable_by(by_logit_desc);
                } else {
                    // The m largest first (unordered), then in order.
                    self.cand.select_nth_unstable_by(m - 1, by_logit_desc);
                    self.cand[..m].sort_unstable_by(by_logit_desc);
                }
                let head = if all { self.cand.len() } else { m };
                let mut cum = 0.0f64;
                let cut = self.cand[..head].iter().position(|c| {
                    cum += ((c.0 - max) as f64).exp();
                    cum >= target
                });
                match cut {
                    Some(i) => {
                        self.cand.truncate(i + 1);
                        break;
                    }
                    None if all => break,
                    None => m *= 8,
                }
            }
        }
        if self.cfg.min_p > 0.0 {
            // p_i / p_max = exp(l_i - l_max) ≥ min_p
            let threshold = max + self.cfg.min_p.ln();
            self.cand.retain(|c| c.0 >= threshold);
        }
        if self.cand.is_empty() {
            return 0;
        }
        // Weights exp((l - max) / t), vectorized: a whole vocabulary per token otherwise costs
        // more than a batched decode step's share of the forward pass.
        let t = self.cfg.temperature;
        self.weights.clear();
        self.weights
            .extend(self.cand.iter().map(|c| (c.0 - max) / t));
        gorae_kernels::attn::exp_nonpositive(&mut self.weights);
        let u = self.rng.random::<f64>();
        match draw(&self.weights, u, &mut self.block_sums) {
            Some(i) => self.cand[i].1,
            // Every weight 0: every logit was -inf or NaN.
            None => 0,
        }
    }

    /// The draw over every id (no top-k, top-p or min-p: OpenAI's defaults) straight from the
    /// logits, without building the candidate list: the same weights, sum and walk as the
    /// general path (a NaN logit gets weight 0, which the walk steps over, where the general
    /// path leaves it out), so the same token for the same random draw. `None` when no logit is
    /// finite, which the general path handles.
    fn sample_whole_vocab(&mut self, logits: &[f32]) -> Option<u32> {
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        if !max.is_finite() {
            return None;
        }
        let t = self.cfg.temperature;
        self.weights.clear();
        self.weights.extend(logits.iter().map(|&l| {
            if l.is_nan() {
                f32::NEG_INFINITY
            } else {
                (l - max) / t
            }
        }));
        gorae_kernels::attn::exp_nonpositive(&mut self.weights);
        let u = self.rng.random::<f64>();
        draw(&self.weights, u, &mut self.block_sums).map(|i| i as u32)
    }

    fn apply_penalties(&mut self, logits: &mut [f32], history: &[u32]) {
        let c = &self.cfg;
        let active =
            c.repeat_penalty != 1.0 || c.presence_penalty != 0.0 || c.frequency_penalty != 0.0;
        if !active || c.repeat_last_n == 0 {
            return;
        }
        if self.counts.len() < logits.len() {
            self.counts.resize(logits.len(), 0);
        }
        let recent = &history[history.len().saturating_sub(c.repeat_last_n)..];
        for &id in recent {
            if let Some(n) = self.counts.get_mut(id as usize) {
                *n += 1;
            }
        }
        for &id in recent {
            let i = id as usize;
            let Some(&n) = self.counts.get(i) else {
                continue;
            };
            if n == 0 {
                continue; // already applied for an earlier occurrence
            }
            if let Some(l) = logits.get_mut(i) {
                if *l > 0.0 {
                    *l /= c.repeat_penalty;
                } else {
                    *l *= c.repeat_penalty;
                }
                *l -= n as f32 * c.frequency_penalty + c.presence_penalty;
            }
            self.counts[i] = 0;
        }
    }
}

/// Index of the largest logit; the first one on ties (as llama.cpp's greedy sampler).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0usize;
    let mut best_v = f32::NEG_INFINITY;
    for (i, &v) in logits.iter().enumerate() {
        if v > best_v {
            best = i;
            best_v = v;
        }
    }
    best as u32
}

/// Weights per block of [`draw`]'s walk.
const DRAW_BLOCK: usize = 256;

/// Sum of `w` in f64 over 8 interleaved partial sums (a fixed order, so the same weights give
/// the same bits; 8 chains instead of one keep the adds from waiting on each other).
fn block_sum(w: &[f32]) -> f64 {
    let mut acc = [0.0f64; 8];
    let mut chunks = w.chunks_exact(8);
    for c in &mut chunks {
        for (a, &x) in acc.iter_mut().zip(c) {
            *a += x as f64;
        }
    }
    for (a, &x) in acc.iter_mut().zip(chunks.remainder()) {
        *a += x as f64;
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]))
}

/// The index a draw `u ∈ [0, 1)` picks from unnormalized `weights` (each ≥ 0): the first whose
/// running sum passes `u · total`. The walk goes block by block, stepping over whole blocks by
/// their sums and into one only where the target falls, so a vocabulary costs a few vector
/// passes instead of two dependent f64 chains as long as it. A weight of 0 is never picked.
/// `None` when every weight is 0. `sums` holds the block sums, each computed once.
fn draw(weights: &[f32], u: f64, sums: &mut Vec<f64>) -> Option<usize> {
    sums.clear();
    sums.extend(weights.chunks(DRAW_BLOCK).map(block_sum));
    let total: f64 = sums.iter().sum();
    if total <= 0.0 {
        return None;
    }
    let mut r = u * total;
    for (b, (blk, &s)) in weights.chunks(DRAW_BLOCK).zip(sums.iter()).enumerate() {
        if r > s {
            r -= s;
            continue;
        }
        for (i, &w) in blk.iter().enumerate() {
            r -= w as f64;
            if r <= 0.0 && w > 0.0 {
                return Some(b * DRAW_BLOCK + i);
            }
        }
    }
    // Rounding left a sliver past the end: the last weight that can be drawn.
    weights.iter().rposition(|&w| w > 0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logits() -> Vec<f32> {
        vec![1.0, 3.0, 2.0, 0.5, 2.9, -1.0]
    }

    #[test]
    fn greedy_takes_the_max() {
        let mut s = Sampler::new(SamplerConfig::greedy());
        assert_eq!(s.sample(&mut logits(), &[]), 1);
    }

    #[test]
    fn same_seed_same_tokens_different_seed_differs() {
        let cfg = SamplerConfig {
            temperature: 1.5,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            ..Default::default()
        };
        let run = |seed| {
            let mut s = Sampler::new(SamplerConfig {
                seed,
                ..cfg.clone()
            });
            (0..64)
                .map(|_| s.sample(&mut logits(), &[]))
                .collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
    }

    /// The blocked walk picks what one running sum over every weight picks (weights in quarters,
    /// so every sum is exact and any order of adding gives the same), zeros never, and `None`
    /// for all zeros.
    #[test]
    fn blocked_draw_equals_the_plain_walk() {
        let w: Vec<f32> = (0..3001).map(|i| ((i * 37 % 11) as f32) * 0.25).collect();
        let plain = |u: f64| {
            let mut r = u * w.iter().map(|&x| x as f64).sum::<f64>();
            w.iter().enumerate().find_map(|(i, &x)| {
                r -= x as f64;
                (r <= 0.0 && x > 0.0).then_some(i)
            })
        };
        for k in 0..2000 {
            let u = k as f64 / 2000.0;
            let got = draw(&w, u, &mut Vec::new());
            assert_eq!(got, plain(u), "u {u}");
            assert!(got.is_some_and(|i| w[i] > 0.0));
        }
        let sums = &mut Vec::new();
        assert_eq!(draw(&[0.0; 300], 0.5, sums), None);
        assert_eq!(draw(&[0.0, 2.0, 0.0, 6.0], 0.0, sums), Some(1));
        assert_eq!(draw(&[0.0, 2.0, 0.0, 6.0], 0.26, sums), Some(3));
    }

    /// The whole-vocabulary draw picks what the general path picks for the same seed, with NaN
    /// and -inf logits present (neither may be drawn).
    #[test]
    fn whole_vocab_draw_equals_the_general_path() {
        let mut l: Vec<f32> = (0..3000).map(|i| ((i * 37 % 101) as f32) / 17.0).collect();
        l[5] = f32::NAN;
        l[2999] = f32::NEG_INFINITY;
        let cfg = |top_k| SamplerConfig {
            temperature: 0.8,
            top_k,
            top_p: 1.0,
            min_p: 0.0,
            seed: 42,
            ..Default::default()
        };
        let (mut fast, mut general) = (Sampler::new(cfg(0)), Sampler::new(cfg(0)));
        for step in 0..500 {
            let a = fast.sample(&mut l.clone(), &[]);
            let b = general.sample_candidates(&l);
            assert_eq!(a, b, "step {step}");
            assert!(a != 5 && a != 2999);
        }
    }

    #[test]
    fn top_k_one_is_greedy_and_top_k_limits_choices() {
        let mut s = Sampler::new(SamplerConfig {
            temperature: 5.0,
            top_k: 1,
            ..Default::default()
        });
        for _ in 0..50 {
            assert_eq!(s.sample(&mut logits(), &[]), 1);
        }
        let mut s = Sampler::new(SamplerConfig {
            temperature: 5.0,
            top_k: 2,
            top_p: 1.0,
            min_p: 0.0,
            ..Default::default()
        });
        for _ in 0..200 {
            let t = s.sample(&mut logits(), &[]);
            assert!(t == 1 || t == 4, "{t}");
        }
    }

    #[test]
    fn top_p_and_min_p_cut_the_tail() {
        // p(1) ≈ 0.41, p(4) ≈ 0.37: top_p 0.5 keeps exactly those two.
        let mut s = Sampler::new(SamplerConfig {
            temperature: 1.0,
            top_k: 0,
            top_p: 0.5,
            min_p: 0.0,
            ..Default::default()
        });
        for _ in 0..200 {
            let t = s.sample(&mut logits(), &[]);
            assert!(t == 1 || t == 4, "{t}");
        }
        // min_p 0.5: keep tokens with p ≥ 0.5 p_max: logits ≥ 3 - ln 2 ≈ 2.31 → ids 1, 4.
        let mut s = Sampler::new(SamplerConfig {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.5,
            ..Default::default()
        });
        for _ in 0..200 {
            let t = s.sample(&mut logits(), &[]);
            assert!(t == 1 || t == 4, "{t}");
        }
    }

    #[test]
    fn penalties_change_the_greedy_choice() {
        let mut s = Sampler::new(SamplerConfig {
            repeat_penalty: 1.1,
            ..SamplerConfig::greedy()
        });
        // 3.0 / 1.1 = 2.727 < 2.9
        assert_eq!(s.sample(&mut logits(), &[1]), 4);
        let mut s = Sampler::new(SamplerConfig {
            presence_penalty: 0.5,
            ..SamplerConfig::greedy()
        });
        assert_eq!(s.sample(&mut logits(), &[1]), 4);
        let mut s = Sampler::new(SamplerConfig {
            frequency_penalty: 0.05,
            ..SamplerConfig::greedy()
        });
        assert_eq!(s.sample(&mut logits(), &[1]), 1); // 3.0 - 0.05 = 2.95 > 2.9
        let mut s = Sampler::new(SamplerConfig {
            frequency_penalty: 0.05,
            ..SamplerConfig::greedy()
        });
        assert_eq!(s.sample(&mut logits(), &[1, 1, 1]), 4); // 3.0 - 0.15 < 2.9
        // Negative logits get multiplied (pushed further down).
        let mut l = logits();
        let mut s = Sampler::new(SamplerConfig {
            repeat_penalty: 2.0,
            ..SamplerConfig::greedy()
        });
        s.sample(&mut l, &[5]);
        assert_eq!(l[5], -2.0);
    }

    #[test]
    fn validate_rejects_nonsense() {
        assert!(
            SamplerConfig {
                temperature: f32::NAN,
                ..Default::default()
            }
            .validate()
            .is_err()
        );
        assert!(
            SamplerConfig {
                top_p: 0.0,
                ..Default::default()
            }
            .validate()
            .is_err()
        );
        assert!(
            SamplerConfig {
                min_p: 2.0,
                ..Default::default()
            }
            .validate()
            .is_err()
        );
        assert!(SamplerConfig::default().validate().is_ok());
    }
}
