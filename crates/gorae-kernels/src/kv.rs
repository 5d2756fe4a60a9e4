//! Key/value cache rows stored as f32 or f16. An f16 cache holds half the bytes (llama.cpp's
//! default cache type is f16); its rows are turned back into f32 a block at a time, right
//! before the f32 attention kernels read them. That widening costs more than the halved reads
//! save on this machine, where attention at depth is not bandwidth-bound (SmolLM2 Q4_1 at
//! depth 2048, alternated: 126-143 t/s against 146-162 with f32), so f32 stays the default and f16 is for
//! fitting longer contexts. f16 → f32 is exact, so attention over an f16 cache gives bit for bit what the same
//! kernels give over an f32 cache holding the f16-rounded keys and values.

use crate::isa::{Isa, detected_isa};
pub use half::f16;

/// The element type of a key/value cache.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KvType {
    #[default]
    F32,
    F16,
}

impl KvType {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            KvType::F32 => 4,
            KvType::F16 => 2,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            KvType::F32 => "f32",
            KvType::F16 => "f16",
        }
    }

    pub fn parse(s: &str) -> Option<KvType> {
        match s.to_ascii_lowercase().as_str() {
            "f32" => Some(KvType::F32),
            "f16" => Some(KvType::F16),
            _ => None,
        }
    }
}

/// Rows of a cache (or of the f32 keys a pass has just made), in either element type.
#[derive(Clone, Copy, Debug)]
pub enum KvRows<'a> {
    F32(&'a [f32]),
    F16(&'a [f16]),
}

impl<'a> KvRows<'a> {
    pub const EMPTY: KvRows<'static> = KvRows::F32(&[]);

    /// Elements held.
    pub fn len(&self) -> usize {
        match self {
            KvRows::F32(s) => s.len(),
            KvRows::F16(s) => s.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Elements `r` (panics out of bounds, as slicing does).
    pub fn slice(self, r: std::ops::Range<usize>) -> KvRows<'a> {
        match self {
            KvRows::F32(s) => KvRows::F32(&s[r]),
            KvRows::F16(s) => KvRows::F16(&s[r]),
        }
    }

    /// Elements from `start` on.
    pub fn from(self, start: usize) -> KvRows<'a> {
        self.slice(start..self.len())
    }

    /// The first `width` elements of `n` rows `stride` apart, from row `r0`, as f32: the
    /// rows themselves (with their stride) when they are f32, else converted into `buf`
    /// (`[n, width]`, stride `width`).
    pub fn block_f32<'b>(
        self,
        r0: usize,
        n: usize,
        stride: usize,
        width: usize,
        buf: &'b mut Vec<f32>,
    ) -> (&'b [f32], usize)
    where
        'a: 'b,
    {
        match self {
            KvRows::F32(s) => (&s[r0 * stride..], stride),
            KvRows::F16(s) => {
                if buf.len() < n * width {
                    buf.resize(n * width, 0.0);
                }
                let src = &s[r0 * stride..];
                rows_to_f32(src, stride, n, width, &mut buf[..n * width]);
                (&buf[..n * width], width)
            }
        }
    }
}

/// `dst[i * width + j] = src[i * stride + j]` as f32, for `i < n`, `j < width` (exact).
///
/// Panics if `src` is shorter than `(n - 1) * stride + width` or `dst` than `n * width`.
pub fn rows_to_f32(src: &[f16], stride: usize, n: usize, width: usize, dst: &mut [f32]) {
    rows_to_f32_with(detected_isa(), src, stride, n, width, dst)
}

/// [`rows_to_f32`] on an explicit ISA; one this CPU cannot run falls back to the reference.
pub fn rows_to_f32_with(
    isa: Isa,
    src: &[f16],
    stride: usize,
    n: usize,
    width: usize,
    dst: &mut [f32],
) {
    if n == 0 || width == 0 {
        return;
    }
    assert!(
        src.len() >= (n - 1) * stride + width && dst.len() >= n * width,
        "rows_to_f32: operands too short"
    );
    for i in 0..n {
        let (s, d) = (
            &src[i * stride..i * stride + width],
            &mut dst[i * width..(i + 1) * width],
        );
        #[cfg(target_arch = "x86_64")]
        if matches!(isa, Isa::Avx2 | Isa::Avx512) && Isa::Avx2.is_available() {
            // SAFETY: AVX2 and F16C were just confirmed available; `s` and `d` have one length.
            unsafe { x86::to_f32(s, d) };
            continue;
        }
        let _ = isa;
        for (o, x) in d.iter_mut().zip(s) {
            *o = x.to_f32();
        }
    }
}

/// `dst[j] = src[j]` rounded to f16 (to nearest, ties to even; overflow gives ±inf).
///
/// Panics if the lengths differ.
pub fn f32_to_f16(src: &[f32], dst: &mut [f16]) {
    f32_to_f16_with(detected_isa(), src, dst)
}

/// [`f32_to_f16`] on an explicit ISA; one this CPU cannot run falls back to the reference.
pub fn f32_to_f16_with(isa: Isa, src: &[f32], dst: &mut [f16]) {
    assert_eq!(src.len(), dst.len(), "f32_to_f16: lengths differ");
    #[cfg(target_arch = "x86_64")]
    if matches!(isa, Isa::Avx2 | Isa::Avx512) && Isa::Avx2.is_available() {
        // SAFETY: AVX2 and F16C were just confirmed available; the lengths are equal.
        unsafe { x86::to_f16(src, dst) };
        return;
    }
    let _ = isa;
    for (o, x) in dst.iter_mut().zip(src) {
        *o = f16::from_f32(*x);
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::f16;
    use std::arch::x86_64::*;

    /// F16C's conversions, 8 lanes at a time (the 16-lane AVX-512 forms gain nothing on rows
    /// of one head, 64-128 elements).
    #[target_feature(enable = "avx2,f16c")]
    pub(super) unsafe fn to_f32(src: &[f16], dst: &mut [f32]) {
        let n = src.len().min(dst.len());
        let mut j = 0;
        while j + 8 <= n {
            // SAFETY: `j + 8 <= n` elements of both slices; unaligned loads and stores.
            unsafe {
                let h = _mm_loadu_si128(src.as_ptr().add(j).cast());
                _mm256_storeu_ps(dst.as_mut_ptr().add(j), _mm256_cvtph_ps(h));
            }
            j += 8;
        }
        for k in j..n {
            dst[k] = src[k].to_f32();
        }
    }

    #[target_feature(enable = "avx2,f16c")]
    pub(super) unsafe fn to_f16(src: &[f32], dst: &mut [f16]) {
        let n = src.len().min(dst.len());
        let mut j = 0;
        while j + 8 <= n {
            // SAFETY: `j + 8 <= n` elements of both slices; unaligned loads and stores.
            unsafe {
                let v = _mm256_loadu_ps(src.as_ptr().add(j));
                let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(v);
                _mm_storeu_si128(dst.as_mut_ptr().add(j).cast(), h);
            }
            j += 8;
        }
        for k in j..n {
            dst[k] = f16::from_f32(src[k]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::isa::available_isas;

    /// Every f16 bit pattern, specials included, converts the same on every ISA; and f32 →
    /// f16 rounds the same as the reference on values around every f16 (ties, subnormals,
    /// overflow, NaN kept NaN).
    #[test]
    fn every_isa_converts_like_the_reference() {
        let all: Vec<f16> = (0..=u16::MAX).map(f16::from_bits).collect();
        let mut want = vec![0.0f32; all.len()];
        rows_to_f32_with(Isa::Scalar, &all, all.len(), 1, all.len(), &mut want);
        let mut probes = Vec::new();
        for h in &all {
            let x = h.to_f32();
            probes.extend([x, f32::from_bits(x.to_bits().wrapping_add(1)), x * 1.000_5]);
        }
        probes.extend([1e6, -1e6, 65520.0, 65519.0, 1e-8, -0.0, f32::INFINITY]);
        let mut want16 = vec![f16::ZERO; probes.len()];
        f32_to_f16_with(Isa::Scalar, &probes, &mut want16);
        for isa in available_isas() {
            let mut got = vec![0.0f32; all.len()];
            // Rows of 13 (a tail past the vector width) at a stride of 13.
            for (s, d) in all.chunks(13 * 97).zip(got.chunks_mut(13 * 97)) {
                let n = s.len() / 13;
                rows_to_f32_with(isa, s, 13, n, 13, &mut d[..n * 13]);
                rows_to_f32_with(
                    Isa::Scalar,
                    &s[n * 13..],
                    1,
                    1,
                    s.len() - n * 13,
                    &mut d[n * 13..],
                );
            }
            for (i, (a, b)) in want.iter().zip(&got).enumerate() {
                assert!(
                    a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan()),
                    "{isa} {i:#x}"
                );
            }
            let mut got16 = vec![f16::ZERO; probes.len()];
            f32_to_f16_with(isa, &probes, &mut got16);
            for (k, (a, b)) in want16.iter().zip(&got16).enumerate() {
                assert!(
                    a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan()),
                    "{isa} {}: {a} vs {b}",
                    probes[k]
                );
            }
        }
    }

    #[test]
    fn blocks_of_either_type_read_the_same_values() {
        let vals: Vec<f32> = (0..5 * 24).map(|i| (i as f32 - 50.0) / 8.0).collect();
        let halves: Vec<f16> = vals.iter().map(|&x| f16::from_f32(x)).collect();
        let (mut b1, mut b2) = (Vec::new(), Vec::new());
        let (a, sa) = KvRows::F32(&vals).block_f32(1, 3, 24, 16, &mut b1);
        let (b, sb) = KvRows::F16(&halves).block_f32(1, 3, 24, 16, &mut b2);
        assert_eq!((sa, sb), (24, 16));
        for i in 0..3 {
            assert_eq!(&a[i * sa..i * sa + 16], &b[i * sb..i * sb + 16]);
        }
        assert_eq!(KvRows::F16(&halves).slice(24..48).len(), 24);
        assert_eq!(KvType::parse("F16"), Some(KvType::F16));
        assert_eq!(KvType::parse("q8_0"), None);
    }
}
