//! The rotation of rotary position embedding, over one head: each pair `(a, b)` of values turns
//! by its angle, `(a cos - b sin, a sin + b cos)`. Pairs are adjacent values (`2i`, `2i + 1`:
//! GGUF Llama's layout after its converter's row permutation, and DeepSeek's) or the two halves
//! of the rotated part (`i`, `i + half`: NeoX's). Every variant does the reference's operations
//! per value (two products, rounded, then one sum; never fused), so all give the same bits.

use crate::isa::{Isa, detected_isa};

/// Rotates the adjacent pairs `(x[2i], x[2i + 1])` for `i < cos.len()` by the angles whose
/// cosines and sines are `cos[i]`, `sin[i]`.
///
/// Panics if `x` holds fewer than `2 * cos.len()` values or `sin` is shorter than `cos`.
pub fn rotate_adjacent(x: &mut [f32], cos: &[f32], sin: &[f32]) {
    rotate_adjacent_with(detected_isa(), x, cos, sin)
}

/// [`rotate_adjacent`] on an explicit ISA; one this CPU cannot run falls back to the reference.
pub fn rotate_adjacent_with(isa: Isa, x: &mut [f32], cos: &[f32], sin: &[f32]) {
    let half = cos.len();
    let (x, sin) = (&mut x[..2 * half], &sin[..half]);
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512 && Isa::Avx512.is_available() {
        // SAFETY: AVX-512F was just confirmed available; the lengths were sliced above.
        unsafe { x86_512::rotate_adjacent(x, cos, sin) };
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if matches!(isa, Isa::Avx2 | Isa::Avx512) && Isa::Avx2.is_available() {
        // SAFETY: AVX2 was just confirmed available; the lengths were sliced above.
        unsafe { x86::rotate_adjacent(x, cos, sin) };
        return;
    }
    let _ = isa;
    adjacent_ref(x, cos, sin, 0);
}

/// Rotates the pairs `(x[i], x[i + half])` for `i < half = cos.len()`.
///
/// Panics if `x` holds fewer than `2 * cos.len()` values or `sin` is shorter than `cos`.
pub fn rotate_halves(x: &mut [f32], cos: &[f32], sin: &[f32]) {
    rotate_halves_with(detected_isa(), x, cos, sin)
}

/// [`rotate_halves`] on an explicit ISA; one this CPU cannot run falls back to the reference.
pub fn rotate_halves_with(isa: Isa, x: &mut [f32], cos: &[f32], sin: &[f32]) {
    let half = cos.len();
    let (lo, hi) = x[..2 * half].split_at_mut(half);
    let sin = &sin[..half];
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512 && Isa::Avx512.is_available() {
        // SAFETY: AVX-512F was just confirmed available; all four slices have `half` values.
        unsafe { x86_512::rotate_halves(lo, hi, cos, sin) };
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if matches!(isa, Isa::Avx2 | Isa::Avx512) && Isa::Avx2.is_available() {
        // SAFETY: AVX2 was just confirmed available; all four slices have `half` values.
        unsafe { x86::rotate_halves(lo, hi, cos, sin) };
        return;
    }
    let _ = isa;
    halves_ref(lo, hi, cos, sin, 0);
}

/// The reference for adjacent pairs `from..`, also the SIMD variants' tail.
fn adjacent_ref(x: &mut [f32], cos: &[f32], sin: &[f32], from: usize) {
    for (i, (c, s)) in cos.iter().zip(sin).enumerate().skip(from) {
        let (a, b) = (x[2 * i], x[2 * i + 1]);
        x[2 * i] = a * c - b * s;
        x[2 * i + 1] = a * s + b * c;
    }
}

/// The reference for half pairs `from..`, also the SIMD variants' tail.
fn halves_ref(lo: &mut [f32], hi: &mut [f32], cos: &[f32], sin: &[f32], from: usize) {
    for (((a, b), c), s) in lo
        .iter_mut()
        .zip(hi.iter_mut())
        .zip(cos)
        .zip(sin)
        .skip(from)
    {
        let (x0, x1) = (*a, *b);
        *a = x0 * c - x1 * s;
        *b = x0 * s + x1 * c;
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// [`super::rotate_adjacent`], 4 pairs per 8-lane vector: each lane's cosine and sine
    /// duplicated to both lanes of its pair, the pair's values swapped into a second vector;
    /// even lanes take `x c - x' s`, odd lanes `x c + x' s` (= `a s + b c`, the same sum).
    ///
    /// SAFETY contract: the CPU has AVX2; `x` holds `2 * cos.len()` values, `sin` `cos.len()`.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn rotate_adjacent(x: &mut [f32], cos: &[f32], sin: &[f32]) {
        let half = cos.len();
        let dup = _mm256_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3);
        let mut i = 0;
        while i + 4 <= half {
            // SAFETY: pairs `i..i + 4` lie within `x`, `cos` and `sin` (the contract), and the
            // 128-bit loads read 4 values from `i`.
            unsafe {
                let p = x.as_mut_ptr().add(2 * i);
                let v = _mm256_loadu_ps(p);
                let c = _mm256_permutevar8x32_ps(
                    _mm256_castps128_ps256(_mm_loadu_ps(cos.as_ptr().add(i))),
                    dup,
                );
                let s = _mm256_permutevar8x32_ps(
                    _mm256_castps128_ps256(_mm_loadu_ps(sin.as_ptr().add(i))),
                    dup,
                );
                let swapped = _mm256_permute_ps::<0b1011_0001>(v);
                let p1 = _mm256_mul_ps(v, c);
                let p2 = _mm256_mul_ps(swapped, s);
                let r =
                    _mm256_blend_ps::<0b1010_1010>(_mm256_sub_ps(p1, p2), _mm256_add_ps(p1, p2));
                _mm256_storeu_ps(p, r);
            }
            i += 4;
        }
        super::adjacent_ref(x, cos, sin, i);
    }

    /// [`super::rotate_halves`], 8 pairs at a time.
    ///
    /// SAFETY contract: the CPU has AVX2; the four slices have one length.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn rotate_halves(lo: &mut [f32], hi: &mut [f32], cos: &[f32], sin: &[f32]) {
        let half = cos.len();
        let mut i = 0;
        while i + 8 <= half {
            // SAFETY: values `i..i + 8` lie within all four slices (the contract).
            unsafe {
                let (pa, pb) = (lo.as_mut_ptr().add(i), hi.as_mut_ptr().add(i));
                let (a, b) = (_mm256_loadu_ps(pa), _mm256_loadu_ps(pb));
                let c = _mm256_loadu_ps(cos.as_ptr().add(i));
                let s = _mm256_loadu_ps(sin.as_ptr().add(i));
                _mm256_storeu_ps(pa, _mm256_sub_ps(_mm256_mul_ps(a, c), _mm256_mul_ps(b, s)));
                _mm256_storeu_ps(pb, _mm256_add_ps(_mm256_mul_ps(a, s), _mm256_mul_ps(b, c)));
            }
            i += 8;
        }
        super::halves_ref(lo, hi, cos, sin, i);
    }
}

#[cfg(target_arch = "x86_64")]
mod x86_512 {
    use std::arch::x86_64::*;

    /// [`super::rotate_adjacent`], 8 pairs per 16-lane vector (as the AVX2 variant).
    ///
    /// SAFETY contract: the CPU has AVX-512F; `x` holds `2 * cos.len()` values, `sin`
    /// `cos.len()`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn rotate_adjacent(x: &mut [f32], cos: &[f32], sin: &[f32]) {
        let half = cos.len();
        let dup = _mm512_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7);
        let mut i = 0;
        while i + 8 <= half {
            // SAFETY: pairs `i..i + 8` lie within `x`, `cos` and `sin` (the contract), and the
            // 256-bit loads read 8 values from `i`.
            unsafe {
                let p = x.as_mut_ptr().add(2 * i);
                let v = _mm512_loadu_ps(p);
                let c = _mm512_permutexvar_ps(
                    dup,
                    _mm512_castps256_ps512(_mm256_loadu_ps(cos.as_ptr().add(i))),
                );
                let s = _mm512_permutexvar_ps(
                    dup,
                    _mm512_castps256_ps512(_mm256_loadu_ps(sin.as_ptr().add(i))),
                );
                let swapped = _mm512_permute_ps::<0b1011_0001>(v);
                let p1 = _mm512_mul_ps(v, c);
                let p2 = _mm512_mul_ps(swapped, s);
                let r = _mm512_mask_add_ps(_mm512_sub_ps(p1, p2), 0xAAAA, p1, p2);
                _mm512_storeu_ps(p, r);
            }
            i += 8;
        }
        super::adjacent_ref(x, cos, sin, i);
    }

    /// [`super::rotate_halves`], 16 pairs at a time.
    ///
    /// SAFETY contract: the CPU has AVX-512F; the four slices have one length.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn rotate_halves(lo: &mut [f32], hi: &mut [f32], cos: &[f32], sin: &[f32]) {
        let half = cos.len();
        let mut i = 0;
        while i + 16 <= half {
            // SAFETY: values `i..i + 16` lie within all four slices (the contract).
            unsafe {
                let (pa, pb) = (lo.as_mut_ptr().add(i), hi.as_mut_ptr().add(i));
                let (a, b) = (_mm512_loadu_ps(pa), _mm512_loadu_ps(pb));
                let c = _mm512_loadu_ps(cos.as_ptr().add(i));
                let s = _mm512_loadu_ps(sin.as_ptr().add(i));
                _mm512_storeu_ps(pa, _mm512_sub_ps(_mm512_mul_ps(a, c), _mm512_mul_ps(b, s)));
                _mm512_storeu_ps(pb, _mm512_add_ps(_mm512_mul_ps(a, s), _mm512_mul_ps(b, c)));
            }
            i += 16;
        }
        super::halves_ref(lo, hi, cos, sin, i);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::isa::available_isas;

    /// Deterministic values in [-1, 1) with varied exponents.
    fn values(n: usize, seed: u32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                (s as f32 / u32::MAX as f32) * 2.0 - 1.0
            })
            .collect()
    }

    /// Every ISA gives the reference's bits, on whole vectors, tails and a head that is longer
    /// than the rotated part (its rest untouched), from an unaligned start.
    #[test]
    fn every_isa_rotates_as_the_reference() {
        for half in [1usize, 3, 4, 7, 8, 9, 15, 16, 17, 32, 33, 40] {
            let angles = values(half, half as u32);
            let cos: Vec<f32> = angles.iter().map(|a| (a * 3.0).cos()).collect();
            let sin: Vec<f32> = angles.iter().map(|a| (a * 3.0).sin()).collect();
            // One value before (unaligned start) and three after the rotated part.
            let head = values(2 * half + 4, 7 + half as u32);
            for isa in available_isas() {
                for adjacent in [true, false] {
                    let (mut want, mut got) = (head.clone(), head.clone());
                    let (w, g) = (&mut want[1..], &mut got[1..]);
                    if adjacent {
                        rotate_adjacent_with(Isa::Scalar, w, &cos, &sin);
                        rotate_adjacent_with(isa, g, &cos, &sin);
                    } else {
                        rotate_halves_with(Isa::Scalar, w, &cos, &sin);
                        rotate_halves_with(isa, g, &cos, &sin);
                    }
                    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                    assert_eq!(
                        bits(&got),
                        bits(&want),
                        "{isa:?} half {half} adjacent {adjacent}"
                    );
                    assert_eq!(
                        got[2 * half + 1..],
                        head[2 * half + 1..],
                        "past the rotated part"
                    );
                }
            }
        }
    }

    /// The reference turns a pair by its angle: (1, 0) by 90° is (0, 1).
    #[test]
    fn a_quarter_turn_maps_the_first_axis_to_the_second() {
        let (c, s) = ([0.0f32], [1.0f32]);
        let mut x = [1.0f32, 0.0];
        rotate_adjacent_with(Isa::Scalar, &mut x, &c, &s);
        assert_eq!(x, [0.0, 1.0]);
        let mut y = [1.0f32, 0.0];
        rotate_halves_with(Isa::Scalar, &mut y, &c, &s);
        assert_eq!(y, [0.0, 1.0]);
    }
}
