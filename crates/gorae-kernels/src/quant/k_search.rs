//! Scale searches shared by the K-quant quantizers (ggml `ggml-quants.c`: `nearest_int`,
//! `make_qx_quants`, `make_q3_quants`, `make_qkx2_quants`).
//!
//! A naive quantizer takes the scale from the min/max and rounds. ggml instead tries a handful of
//! scales near that one, and for each solves the least-squares scale (and min) for the rounded
//! levels, keeping the candidate with the smallest weighted error. Doing the same keeps gorae's
//! round-trip error in line with files quantized by llama.cpp, which is what the budgets in the
//! tests assume. These follow ggml's algorithms step for step (the same candidate scales, the
//! same weights, the same tie rules) so results agree with `quantize_row_*_ref` up to float
//! contraction differences between compilers.

/// Round half to even, as ggml's `nearest_int` (its 1.5 * 2^23 trick rounds in the FPU's default
/// mode). NaN maps to 0 instead of garbage; ggml asserts |x| <= 2^22, we saturate.
#[inline(always)]
pub(crate) fn nearest_int(x: f32) -> i32 {
    x.round_ties_even() as i32
}

/// Below this the group is treated as all zero (ggml `GROUP_MAX_EPS`).
const GROUP_MAX_EPS: f32 = 1e-15;

/// Symmetric quantization of `x` to levels `-nmax..nmax` with a searched scale and weights
/// `x^2` (ggml `make_qx_quants` with `rmse_type = 1` and no importance weights, as Q6_K's
/// reference quantizer calls it). Writes `l + nmax` into `levels`; returns the scale.
pub(crate) fn make_qx_quants(nmax: i32, x: &[f32], levels: &mut [i8]) -> f32 {
    let max = super::q4::signed_absmax(x);
    if max.abs() < GROUP_MAX_EPS {
        levels.fill(0);
        return 0.0;
    }
    let level = |iscale: f32, v: f32| nearest_int(iscale * v).clamp(-nmax, nmax - 1);
    // Weighted sums of x*l and l*l for one candidate inverse scale.
    let sums = |iscale: f32| {
        let (mut sumlx, mut suml2) = (0.0f32, 0.0f32);
        for &v in x {
            let l = level(iscale, v) as f32;
            let w = v * v;
            sumlx += w * v * l;
            suml2 += w * l * l;
        }
        (sumlx, suml2)
    };
    let mut iscale = -(nmax as f32) / max;
    let (sumlx, suml2) = sums(iscale);
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    // Nudge the inverse scale by tenths of a level; `sumlx^2 / suml2` is the error reduction of
    // the least-squares scale, so larger is better.
    for is in -9..=9 {
        if is == 0 {
            continue;
        }
        let cand = -(nmax as f32 + 0.1 * is as f32) / max;
        let (sumlx, suml2) = sums(cand);
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            iscale = cand;
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    for (l, &v) in levels.iter_mut().zip(x) {
        *l = (level(iscale, v) + nmax) as i8;
    }
    scale
}

/// Symmetric quantization to `-nmax..nmax` refined by coordinate descent (ggml `make_q3_quants`
/// with `do_rmse = true`, as Q3_K's reference quantizer calls it): start from the max-based
/// scale, then for up to 5 passes move single levels where that raises `sumlx^2 / suml2`.
/// Writes `l + nmax` into `levels`; returns the scale.
pub(crate) fn make_q3_quants(nmax: i32, x: &[f32], levels: &mut [i8]) -> f32 {
    let max = super::q4::signed_absmax(x);
    if max.abs() < GROUP_MAX_EPS {
        levels.fill(0);
        return 0.0;
    }
    let iscale = -(nmax as f32) / max;
    let (mut sumlx, mut suml2) = (0.0f32, 0.0f32);
    for (l, &v) in levels.iter_mut().zip(x) {
        let q = nearest_int(iscale * v).clamp(-nmax, nmax - 1);
        *l = q as i8;
        let w = v * v;
        sumlx += w * v * q as f32;
        suml2 += w * q as f32 * q as f32;
    }
    for _ in 0..5 {
        let mut changed = false;
        for (l, &v) in levels.iter_mut().zip(x) {
            let w = v * v;
            let old = *l as i32;
            let mut slx = sumlx - w * v * old as f32;
            if slx > 0.0 {
                let mut sl2 = suml2 - w * old as f32 * old as f32;
                let new = nearest_int(v * sl2 / slx).clamp(-nmax, nmax - 1);
                if new != old {
                    slx += w * v * new as f32;
                    sl2 += w * new as f32 * new as f32;
                    if sl2 > 0.0 && slx * slx * suml2 > sumlx * sumlx * sl2 {
                        *l = new as i8;
                        sumlx = slx;
                        suml2 = sl2;
                        changed = true;
                    }
                }
            }
        }
        if !changed {
            break;
        }
    }
    for l in levels.iter_mut() {
        *l += nmax as i8;
    }
    if suml2 > 0.0 { sumlx / suml2 } else { 0.0 }
}

/// The search parameters of [`make_qkx2_quants`]: candidate inverse scales are
/// `(rmin + rdelta * is + nmax) / (max - min)` for `is` in `0..=nstep`.
pub(crate) struct Qkx2 {
    pub nmax: i32,
    pub rmin: f32,
    pub rdelta: f32,
    pub nstep: i32,
    /// Weighted absolute error (true) or weighted squared error (false).
    pub use_mad: bool,
}

/// Affine quantization `x ~ scale * l - min_out` with `l` in `0..=nmax` (ggml
/// `make_qkx2_quants`): for each candidate inverse scale, round, then solve the weighted
/// least-squares scale and offset for those levels (offset clamped so the min is <= 0, i.e. the
/// stored min is non-negative), keeping the candidate with the smallest weighted error.
/// Returns `(scale, min)` where the stored min is `min >= 0` and `x ~ scale * l - min`.
pub(crate) fn make_qkx2_quants(
    p: &Qkx2,
    x: &[f32],
    weights: &[f32],
    levels: &mut [u8],
) -> (f32, f32) {
    let n = x.len().min(weights.len()).min(levels.len());
    if n == 0 {
        return (0.0, 0.0);
    }
    let (x, weights) = (&x[..n], &weights[..n]);
    let mut min = x[0];
    let mut max = x[0];
    let mut sum_w = weights[0];
    let mut sum_x = sum_w * x[0];
    for i in 1..n {
        min = min.min(x[i]);
        max = max.max(x[i]);
        sum_w += weights[i];
        sum_x += weights[i] * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        levels.fill(0);
        return (0.0, -min);
    }
    let nmax = p.nmax;
    let err = |d: f32, w: f32| if p.use_mad { w * d.abs() } else { w * d * d };

    let mut iscale = nmax as f32 / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best_error = 0.0f32;
    for i in 0..n {
        let l = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
        levels[i] = l as u8;
        best_error += err(scale * l as f32 + min - x[i], weights[i]);
    }
    if p.nstep < 1 {
        return (scale, -min);
    }
    let mut aux = [0u8; 32];
    let aux = &mut aux[..n.min(32)];
    if aux.len() < n {
        // Sub-blocks are 16 or 32 wide; anything larger keeps the max-based scale.
        return (scale, -min);
    }
    for is in 0..=p.nstep {
        iscale = (p.rmin + p.rdelta * is as f32 + nmax as f32) / (max - min);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0.0f32, 0.0f32, 0.0f32);
        for i in 0..n {
            let l = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
            aux[i] = l as u8;
            let (w, lf) = (weights[i], l as f32);
            sum_l += w * lf;
            sum_l2 += w * lf * lf;
            sum_xl += w * lf * x[i];
        }
        let det = sum_w * sum_l2 - sum_l * sum_l;
        if det > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / det;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut cur_error = 0.0f32;
            for i in 0..n {
                cur_error += err(this_scale * aux[i] as f32 + this_min - x[i], weights[i]);
            }
            if cur_error < best_error {
                levels[..n].copy_from_slice(aux);
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_int_rounds_half_to_even() {
        assert_eq!(nearest_int(0.5), 0);
        assert_eq!(nearest_int(1.5), 2);
        assert_eq!(nearest_int(-2.5), -2);
        assert_eq!(nearest_int(2.4999), 2);
        assert_eq!(nearest_int(f32::NAN), 0);
    }
}
