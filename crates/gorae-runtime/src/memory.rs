//! Whether KV caches fit in memory before they are allocated: caches are allocated and written
//! whole up front, so a context the machine cannot hold must fail with its figures, not get the
//! process killed for memory at start-up.

/// Bytes of memory the system can still give (Linux's `MemAvailable`), when it says.
pub fn available_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// Checks that `n_seqs` KV caches of `n_ctx` positions at `bytes_per_token` fit in what the
/// system has available (no check where it does not say).
pub fn kv_caches_fit(bytes_per_token: usize, n_ctx: usize, n_seqs: usize) -> Result<(), String> {
    fits_in(bytes_per_token, n_ctx, n_seqs, available_memory())
}

fn fits_in(
    bytes_per_token: usize,
    n_ctx: usize,
    n_seqs: usize,
    available: Option<u64>,
) -> Result<(), String> {
    let need = (bytes_per_token as u128)
        .saturating_mul(n_ctx as u128)
        .saturating_mul(n_seqs as u128);
    let gib = |b: u128| b as f64 / (1u64 << 30) as f64;
    match available {
        Some(avail) if need > u128::from(avail) => Err(format!(
            "the KV cache of {n_seqs} sequence(s) of {n_ctx} positions needs {:.1} GiB, and \
             {:.1} GiB of memory is available: use a smaller context (or fewer parallel slots)",
            gib(need),
            gib(u128::from(avail))
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_kv_cache_larger_than_memory_is_refused_with_its_size() {
        // 46080 B/token (SmolLM2) x 4096 positions x 16 slots = 2.8 GiB.
        let err = fits_in(46_080, 4096, 16, Some(1 << 30)).unwrap_err();
        assert!(err.contains("2.8 GiB") && err.contains("1.0 GiB"), "{err}");
        assert!(fits_in(46_080, 4096, 16, Some(4 << 30)).is_ok());
        // Memory unknown: no check. Sizes far past u64 do not overflow.
        assert!(fits_in(46_080, 4096, 16, None).is_ok());
        assert!(fits_in(usize::MAX, usize::MAX, 256, Some(u64::MAX)).is_err());
    }
}
