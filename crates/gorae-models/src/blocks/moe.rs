//! DeepSeekMoE routing (deepseek-spec §5), in f32 from the f32 hidden state: scores by softmax or
//! sigmoid, optional group limiting with -inf masking, selection on bias-corrected scores while
//! the weights come from the uncorrected ones, then optional renormalization and the routed
//! scaling factor, in that order.

use crate::families::deepseek_config::{MoeConfig, Scoring, TopkMethod};

/// Reusable buffers for one token's routing.
pub struct RouteScratch {
    scores: Vec<f32>, // [n_expert]
    select: Vec<f32>, // [n_expert]
    groups: Vec<f32>, // [n_group]
    order: Vec<u32>,  // [max(n_expert, n_group)]
}

impl RouteScratch {
    pub fn new(cfg: &MoeConfig) -> Self {
        RouteScratch {
            scores: vec![0.0; cfg.n_expert],
            select: vec![0.0; cfg.n_expert],
            groups: vec![0.0; cfg.n_group.max(1)],
            order: vec![0; cfg.n_expert.max(cfg.n_group)],
        }
    }
}

/// Indices of the `k` largest values of `v` into `order[..k]`, largest first, lower index first
/// on ties. No allocation: a partial selection sort over `order`, fine for k ≤ a few dozen.
fn top_k(v: &[f32], k: usize, order: &mut [u32]) {
    let n = v.len();
    for (i, o) in order[..n].iter_mut().enumerate() {
        *o = i as u32;
    }
    for slot in 0..k.min(n) {
        let mut best = slot;
        for j in slot + 1..n {
            let (a, b) = (v[order[j] as usize], v[order[best] as usize]);
            if a > b || (a == b && order[j] < order[best]) {
                best = j;
            }
        }
        order.swap(slot, best);
    }
}

/// Routes one token: `logits` `[n_expert]` (router output, f32), `bias` the
/// `e_score_correction_bias`; writes the chosen experts and their weights (`[n_expert_used]` each).
pub fn route(
    cfg: &MoeConfig,
    renormalize: bool,
    logits: &[f32],
    bias: Option<&[f32]>,
    s: &mut RouteScratch,
    ids: &mut [u32],
    weights: &mut [f32],
) {
    let n = cfg.n_expert;
    let k = cfg.n_expert_used;
    match cfg.scoring {
        Scoring::Softmax => {
            let max = logits.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
            let mut sum = 0.0f32;
            for (o, &l) in s.scores.iter_mut().zip(logits) {
                *o = (l - max).exp();
                sum += *o;
            }
            s.scores.iter_mut().for_each(|v| *v /= sum);
        }
        Scoring::Sigmoid => {
            for (o, &l) in s.scores.iter_mut().zip(logits) {
                *o = 1.0 / (1.0 + (-l).exp());
            }
        }
    }
    s.select.copy_from_slice(&s.scores);
    if let (TopkMethod::NoauxTc, Some(b)) = (cfg.topk_method, bias) {
        for (v, &bv) in s.select.iter_mut().zip(b) {
            *v += bv;
        }
    }
    if cfg.topk_method != TopkMethod::Greedy && cfg.n_group > 1 {
        let per = n / cfg.n_group;
        for g in 0..cfg.n_group {
            let grp = &s.select[g * per..(g + 1) * per];
            s.groups[g] = match cfg.topk_method {
                // V3: sum of the two best (bias-corrected) scores of the group.
                TopkMethod::NoauxTc => {
                    let (mut a, mut b) = (f32::NEG_INFINITY, f32::NEG_INFINITY);
                    for &v in grp {
                        if v > a {
                            b = a;
                            a = v;
                        } else if v > b {
                            b = v;
                        }
                    }
                    if per >= 2 { a + b } else { a }
                }
                // V2: the group's best score.
                _ => grp.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)),
            };
        }
        top_k(&s.groups, cfg.topk_group, &mut s.order);
        let kept = &s.order[..cfg.topk_group];
        for g in 0..cfg.n_group {
            if !kept.contains(&(g as u32)) {
                s.select[g * per..(g + 1) * per].fill(f32::NEG_INFINITY);
            }
        }
    }
    top_k(&s.select, k, &mut s.order);
    let mut sum = 0.0f32;
    for j in 0..k {
        let e = s.order[j];
        ids[j] = e;
        weights[j] = s.scores[e as usize];
        sum += weights[j];
    }
    if renormalize && k > 1 {
        let denom = sum + 1e-20;
        weights[..k].iter_mut().for_each(|w| *w /= denom);
    }
    weights[..k]
        .iter_mut()
        .for_each(|w| *w *= cfg.routed_scaling);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(method: TopkMethod, scoring: Scoring) -> MoeConfig {
        MoeConfig {
            n_expert: 8,
            n_expert_used: 2,
            n_expert_shared: 1,
            n_ff_exp: 4,
            n_group: 4,
            topk_group: 2,
            topk_method: method,
            scoring,
            norm_topk_prob: true,
            routed_scaling: 2.0,
            n_layer_dense_lead: 0,
            layer_freq: 1,
        }
    }

    #[test]
    fn group_limiting_masks_whole_groups() {
        // Groups: {0,1} {2,3} {4,5} {6,7}. Best single expert is 7 but its group's top-2 sum
        // loses to groups {0,1} and {2,3} under noaux_tc.
        let logits = [2.0, 1.9, 1.8, 1.7, -5.0, -5.0, 3.0, -9.0];
        let c = cfg(TopkMethod::NoauxTc, Scoring::Sigmoid);
        let mut s = RouteScratch::new(&c);
        let (mut ids, mut w) = ([0u32; 2], [0f32; 2]);
        route(&c, true, &logits, Some(&[0.0; 8]), &mut s, &mut ids, &mut w);
        assert_eq!(ids, [0, 1]);
        assert!(
            (w[0] + w[1] - 2.0).abs() < 1e-6,
            "renormalized then scaled: {w:?}"
        );
        // group_limited_greedy scores a group by its best: {6,7} (3.0) and {0,1} (2.0) win.
        let c = cfg(TopkMethod::GroupLimitedGreedy, Scoring::Softmax);
        route(&c, false, &logits, None, &mut s, &mut ids, &mut w);
        assert_eq!(ids, [6, 0]);
    }

    #[test]
    fn bias_selects_but_does_not_weight() {
        let logits = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7];
        let mut bias = [0.0f32; 8];
        bias[0] = 10.0;
        let c = MoeConfig {
            n_group: 1,
            topk_group: 1,
            ..cfg(TopkMethod::NoauxTc, Scoring::Sigmoid)
        };
        let mut s = RouteScratch::new(&c);
        let (mut ids, mut w) = ([0u32; 2], [0f32; 2]);
        route(&c, false, &logits, Some(&bias), &mut s, &mut ids, &mut w);
        assert_eq!(ids, [0, 7]);
        assert!(
            (w[0] - 2.0 * 0.5).abs() < 1e-6,
            "weight from the unbiased sigmoid: {w:?}"
        );
    }
}
