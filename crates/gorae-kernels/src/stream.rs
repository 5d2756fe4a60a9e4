//! The read loop of `gorae bench --membw`: a STREAM-like pass over a large buffer whose only work
//! is a wrapping sum, so its rate is the memory system's, not the adder's. The SIMD variants keep
//! four vector accumulators (a scalar or SSE2 loop tops out near 16 bytes per cycle, below what
//! two cores can pull from DRAM on current servers).

use crate::isa::{Isa, detected_isa};

/// The wrapping sum of `data` (the result only keeps the loads alive; every variant returns the
/// same value).
pub fn read_sum(data: &[u64]) -> u64 {
    read_sum_with(detected_isa(), data)
}

/// [`read_sum`] on an explicit ISA; one this CPU cannot run falls back to the scalar loop.
pub fn read_sum_with(isa: Isa, data: &[u64]) -> u64 {
    #[cfg(target_arch = "x86_64")]
    {
        if isa == Isa::Avx512 && isa.is_available() {
            // SAFETY: AVX-512F was just confirmed available.
            return unsafe { x86::read_sum_avx512(data) };
        }
        if matches!(isa, Isa::Avx2 | Isa::Avx512) && Isa::Avx2.is_available() {
            // SAFETY: AVX2 was just confirmed available.
            return unsafe { x86::read_sum_avx2(data) };
        }
    }
    let _ = isa;
    let mut acc = [0u64; 4];
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        for k in 0..4 {
            acc[k] = acc[k].wrapping_add(c[k]);
        }
    }
    let tail = chunks
        .remainder()
        .iter()
        .fold(0u64, |a, &b| a.wrapping_add(b));
    acc.iter().fold(tail, |a, &b| a.wrapping_add(b))
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    fn fold(lanes: &[u64], tail: &[u64]) -> u64 {
        lanes
            .iter()
            .chain(tail)
            .fold(0u64, |a, &b| a.wrapping_add(b))
    }

    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn read_sum_avx512(data: &[u64]) -> u64 {
        let mut acc = [_mm512_setzero_si512(); 4];
        let mut chunks = data.chunks_exact(32);
        for c in &mut chunks {
            for (k, a) in acc.iter_mut().enumerate() {
                // SAFETY: `c` holds 32 u64, so `c[8k..8k + 8]` is 64 readable bytes.
                let v = unsafe { _mm512_loadu_si512(c[8 * k..].as_ptr().cast()) };
                *a = _mm512_add_epi64(*a, v);
            }
        }
        let s = _mm512_add_epi64(
            _mm512_add_epi64(acc[0], acc[1]),
            _mm512_add_epi64(acc[2], acc[3]),
        );
        let mut lanes = [0u64; 8];
        // SAFETY: `lanes` is 64 writable bytes.
        unsafe { _mm512_storeu_si512(lanes.as_mut_ptr().cast(), s) };
        fold(&lanes, chunks.remainder())
    }

    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn read_sum_avx2(data: &[u64]) -> u64 {
        let mut acc = [_mm256_setzero_si256(); 4];
        let mut chunks = data.chunks_exact(16);
        for c in &mut chunks {
            for (k, a) in acc.iter_mut().enumerate() {
                // SAFETY: `c` holds 16 u64, so `c[4k..4k + 4]` is 32 readable bytes.
                let v = unsafe { _mm256_loadu_si256(c[4 * k..].as_ptr().cast()) };
                *a = _mm256_add_epi64(*a, v);
            }
        }
        let s = _mm256_add_epi64(
            _mm256_add_epi64(acc[0], acc[1]),
            _mm256_add_epi64(acc[2], acc[3]),
        );
        let mut lanes = [0u64; 4];
        // SAFETY: `lanes` is 32 writable bytes.
        unsafe { _mm256_storeu_si256(lanes.as_mut_ptr().cast(), s) };
        fold(&lanes, chunks.remainder())
    }
}

/// Asks for every cache line of `data` in L2: a hint (nothing is read architecturally), for
/// data a thread is about to read in several strided passes, so the lines arrive in one
/// sequential sweep instead of one strided stream per pass.
pub fn prefetch_slice_l2<T>(data: &[T]) {
    let (start, len) = (data.as_ptr() as usize, std::mem::size_of_val(data));
    for addr in (start..start + len).step_by(64) {
        prefetch_l2(addr);
    }
}

/// Asks for `cols` of each of the first `n_rows` rows of `data` (rows `stride` elements apart)
/// in L2: a hint, for a strided read (one head's columns of a cache) whose lines the hardware
/// would otherwise fetch a few at a time as the read reaches them.
pub fn prefetch_rows_l2<T>(data: &[T], stride: usize, cols: std::ops::Range<usize>, n_rows: usize) {
    let size = std::mem::size_of::<T>();
    let base = data.as_ptr() as usize;
    for r in 0..n_rows {
        let (lo, hi) = (
            (r * stride + cols.start) * size,
            (r * stride + cols.end) * size,
        );
        for addr in ((base + lo) & !63..base + hi).step_by(64) {
            prefetch_l2(addr);
        }
    }
}

/// Asks for the cache line holding `addr` to be brought into L2 (nothing on other targets).
/// Left to the compiler to inline: forced with `#[inline(always)]`, SmolLM2 Q4_1 decode of 8
/// sequences at depth 200 ran slower (alternated, means of three: 1072 against 1196 t/s).
pub(crate) fn prefetch_l2(addr: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_MM_HINT_T1, _mm_prefetch};
        // SAFETY: SSE is part of the x86_64 baseline, and a prefetch is only a hint: it never
        // faults, whatever the address.
        unsafe { _mm_prefetch::<_MM_HINT_T1>(addr as *const i8) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = addr;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_variant_sums_the_same() {
        for n in [0, 1, 5, 31, 32, 33, 1000] {
            let data: Vec<u64> = (0..n as u64)
                .map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15))
                .collect();
            let want = data.iter().fold(0u64, |a, &b| a.wrapping_add(b));
            for isa in crate::available_isas() {
                assert_eq!(read_sum_with(isa, &data), want, "{isa} n {n}");
            }
        }
    }
}
