//! Rotary position embedding: the frequency table (with linear, Llama 3 and YaRN scaling, computed
//! as transformers' `modeling_rope_utils.py` does) and its application in either pair layout.
//!
//! Layouts: `Normal` rotates adjacent pairs `(x[2i], x[2i+1])`, which is what llama.cpp's converter
//! produces for Llama by permuting the q/k rows; `Neox` rotates `(x[i], x[i + n_rot/2])`, the layout
//! of HF checkpoints and of Qwen GGUFs.

use crate::error::{Result, bad_config};
use gorae_kernels::rotary;
use serde_json::Value;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeLayout {
    Normal,
    Neox,
}

#[derive(Clone, Debug, PartialEq)]
pub enum RopeScaling {
    None,
    Linear {
        factor: f32,
    },
    Llama3 {
        factor: f32,
        low_freq_factor: f32,
        high_freq_factor: f32,
        original_ctx: usize,
    },
    Yarn {
        factor: f32,
        original_ctx: usize,
        beta_fast: f32,
        beta_slow: f32,
        /// Explicit `attention_factor`; otherwise 0.1·ln(factor)+1.
        attn_factor: Option<f32>,
    },
}

#[derive(Clone, Debug, PartialEq)]
pub struct RopeConfig {
    pub theta: f32,
    /// Rotated dimensions per head (the leading `n_rot` of each head).
    pub n_rot: usize,
    pub layout: RopeLayout,
    pub scaling: RopeScaling,
}

impl RopeScaling {
    pub fn from_hf(v: Option<&Value>, n_ctx_train: usize) -> Result<Self> {
        let Some(obj) = v.and_then(Value::as_object) else {
            return Ok(RopeScaling::None);
        };
        let ty = obj
            .get("rope_type")
            .or_else(|| obj.get("type"))
            .and_then(Value::as_str)
            .unwrap_or("default");
        let f = |k: &str, d: f64| obj.get(k).and_then(Value::as_f64).unwrap_or(d) as f32;
        let orig = obj
            .get("original_max_position_embeddings")
            .and_then(Value::as_u64)
            .map(|x| x as usize)
            .unwrap_or(n_ctx_train);
        Ok(match ty {
            "default" => RopeScaling::None,
            "linear" => RopeScaling::Linear {
                factor: f("factor", 1.0),
            },
            "llama3" => RopeScaling::Llama3 {
                factor: f("factor", 8.0),
                low_freq_factor: f("low_freq_factor", 1.0),
                high_freq_factor: f("high_freq_factor", 4.0),
                original_ctx: orig,
            },
            "yarn" => RopeScaling::Yarn {
                factor: f("factor", 1.0),
                original_ctx: orig,
                beta_fast: f("beta_fast", 32.0),
                beta_slow: f("beta_slow", 1.0),
                attn_factor: obj
                    .get("attention_factor")
                    .and_then(Value::as_f64)
                    .map(|x| x as f32),
            },
            other => {
                return Err(bad_config(
                    "rope_scaling.rope_type",
                    format!("unsupported `{other}`"),
                ));
            }
        })
    }
}

impl RopeConfig {
    pub fn validate(&self) -> Result<()> {
        if !(self.theta.is_finite() && self.theta > 1.0) {
            return Err(bad_config(
                "rope.freq_base",
                format!("{} is not > 1", self.theta),
            ));
        }
        let factor = match self.scaling {
            RopeScaling::None => 1.0,
            RopeScaling::Linear { factor } => factor,
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_ctx,
            } => {
                if high_freq_factor.partial_cmp(&low_freq_factor)
                    != Some(std::cmp::Ordering::Greater)
                    || original_ctx == 0
                {
                    return Err(bad_config(
                        "rope_scaling",
                        "llama3 needs high_freq_factor > low_freq_factor",
                    ));
                }
                factor
            }
            RopeScaling::Yarn {
                factor,
                original_ctx,
                ..
            } => {
                if original_ctx == 0 {
                    return Err(bad_config(
                        "rope_scaling.original_max_position_embeddings",
                        "is zero",
                    ));
                }
                factor
            }
        };
        if !(factor.is_finite() && factor > 0.0) {
            return Err(bad_config(
                "rope_scaling.factor",
                format!("{factor} is not positive"),
            ));
        }
        Ok(())
    }

    /// Inverse frequency of each rotation pair (`n_rot / 2` values) and the factor the cos/sin are
    /// multiplied by (YaRN's attention factor, 1 otherwise). `freq_factors` are llama.cpp's
    /// `rope_freqs` divisors (how GGUF stores Llama 3 scaling).
    pub fn inv_freq(&self, freq_factors: Option<&[f32]>) -> (Vec<f32>, f32) {
        let half = self.n_rot / 2;
        let dim = self.n_rot as f64;
        let base = self.theta as f64;
        let mut inv: Vec<f64> = (0..half)
            .map(|i| 1.0 / base.powf((2 * i) as f64 / dim))
            .collect();
        let mut mscale = 1.0f64;
        match self.scaling {
            RopeScaling::None => {}
            RopeScaling::Linear { factor } => inv.iter_mut().for_each(|f| *f /= factor as f64),
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_ctx,
            } => {
                let (factor, lo, hi) = (
                    factor as f64,
                    low_freq_factor as f64,
                    high_freq_factor as f64,
                );
                let old = original_ctx as f64;
                let low_wavelen = old / lo;
                let high_wavelen = old / hi;
                for f in inv.iter_mut() {
                    let wavelen = 2.0 * std::f64::consts::PI / *f;
                    if wavelen > low_wavelen {
                        *f /= factor;
                    } else if wavelen >= high_wavelen {
                        let smooth = (old / wavelen - lo) / (hi - lo);
                        *f = (1.0 - smooth) * *f / factor + smooth * *f;
                    }
                }
            }
            RopeScaling::Yarn {
                factor,
                original_ctx,
                beta_fast,
                beta_slow,
                attn_factor,
            } => {
                let factor = factor as f64;
                let orig = original_ctx as f64;
                let corr_dim = |rot: f64| {
                    dim * (orig / (rot * 2.0 * std::f64::consts::PI)).ln() / (2.0 * base.ln())
                };
                let low = corr_dim(beta_fast as f64).floor().max(0.0);
                let mut high = corr_dim(beta_slow as f64).ceil().min(dim - 1.0);
                if low == high {
                    high += 0.001;
                }
                for (i, f) in inv.iter_mut().enumerate() {
                    let ramp = ((i as f64 - low) / (high - low)).clamp(0.0, 1.0);
                    let extrapolation = 1.0 - ramp;
                    let interp = *f / factor;
                    *f = interp * (1.0 - extrapolation) + *f * extrapolation;
                }
                mscale = match attn_factor {
                    Some(a) => a as f64,
                    None if factor <= 1.0 => 1.0,
                    None => 0.1 * factor.ln() + 1.0,
                };
            }
        }
        if let Some(ff) = freq_factors {
            for (f, d) in inv.iter_mut().zip(ff) {
                *f /= *d as f64;
            }
        }
        (inv.into_iter().map(|f| f as f32).collect(), mscale as f32)
    }
}

/// Fills `cos`/`sin` (`[n_rot/2]` each) for position `pos`.
pub fn fill_cos_sin(inv_freq: &[f32], mscale: f32, pos: usize, cos: &mut [f32], sin: &mut [f32]) {
    for ((f, c), s) in inv_freq.iter().zip(cos.iter_mut()).zip(sin.iter_mut()) {
        let angle = pos as f32 * f;
        let (sa, ca) = angle.sin_cos();
        *c = ca * mscale;
        *s = sa * mscale;
    }
}

/// Fills `cos`/`sin` (`[n, n_rot/2]` each) for positions `pos0..pos0 + n`.
pub fn fill_cos_sin_rows(
    inv_freq: &[f32],
    mscale: f32,
    pos0: usize,
    n: usize,
    cos: &mut [f32],
    sin: &mut [f32],
) {
    let half = inv_freq.len();
    for t in 0..n {
        let r = t * half..(t + 1) * half;
        fill_cos_sin(inv_freq, mscale, pos0 + t, &mut cos[r.clone()], &mut sin[r]);
    }
}

/// Rotates the leading `2 * cos.len()` values of one head in place.
pub fn apply(head: &mut [f32], cos: &[f32], sin: &[f32], layout: RopeLayout) {
    match layout {
        RopeLayout::Normal => rotary::rotate_adjacent(head, cos, sin),
        RopeLayout::Neox => rotary::rotate_halves(head, cos, sin),
    }
}

/// Reorders the rows of a q or k projection `[n_head * head_dim, n_cols]` from HF's half-split
/// layout into adjacent pairs, as llama.cpp's converter does for Llama models: within each head,
/// row `i` of the first half goes to `2i` and row `i` of the second half to `2i + 1`.
pub fn permute_rows_to_normal(rows: &[f32], n_head: usize, n_cols: usize) -> Vec<f32> {
    let head_dim = rows.len() / n_cols / n_head.max(1);
    let half = head_dim / 2;
    let mut out = vec![0.0; rows.len()];
    for h in 0..n_head {
        for i in 0..half {
            for (dst, src) in [(2 * i, i), (2 * i + 1, i + half)] {
                let d = (h * head_dim + dst) * n_cols;
                let s = (h * head_dim + src) * n_cols;
                out[d..d + n_cols].copy_from_slice(&rows[s..s + n_cols]);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_agree_after_permutation() {
        // A head rotated in neox layout equals the permuted head rotated in normal layout.
        let n_rot = 8;
        let head: Vec<f32> = (0..n_rot).map(|i| i as f32 * 0.3 - 1.0).collect();
        let cfg = RopeConfig {
            theta: 10000.0,
            n_rot,
            layout: RopeLayout::Neox,
            scaling: RopeScaling::None,
        };
        let (inv, m) = cfg.inv_freq(None);
        let (mut c, mut s) = (vec![0.0; 4], vec![0.0; 4]);
        fill_cos_sin(&inv, m, 7, &mut c, &mut s);
        let mut neox = head.clone();
        apply(&mut neox, &c, &s, RopeLayout::Neox);
        let mut normal = permute_rows_to_normal(&head, 1, 1);
        apply(&mut normal, &c, &s, RopeLayout::Normal);
        assert_eq!(permute_rows_to_normal(&neox, 1, 1), normal);
    }

    #[test]
    fn llama3_scaling_keeps_high_frequencies() {
        let cfg = RopeConfig {
            theta: 500000.0,
            n_rot: 128,
            layout: RopeLayout::Neox,
            scaling: RopeScaling::Llama3 {
                factor: 8.0,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_ctx: 8192,
            },
        };
        let plain = RopeConfig {
            scaling: RopeScaling::None,
            ..cfg.clone()
        };
        let (a, _) = cfg.inv_freq(None);
        let (b, _) = plain.inv_freq(None);
        assert_eq!(a[0], b[0]);
        assert!((a[63] - b[63] / 8.0).abs() < 1e-12);
    }
}
