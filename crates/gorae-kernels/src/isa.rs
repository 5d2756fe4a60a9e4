//! Which instruction set the kernels run on, chosen once per process at run time.
//!
//! gorae ships one portable binary (never `target-cpu=native`), so the SIMD kernels are compiled
//! with `#[target_feature]` and picked here by CPU feature detection. `is_x86_feature_detected!`
//! also checks that the OS saves the wider registers (XCR0), which a bare CPUID test would miss.
//!
//! `GORAE_ISA=scalar|avx2|avx512|amx` forces a choice (tests, benchmarks, bug hunts). A value the
//! CPU cannot run, or one this build has no kernels for, falls back to the best available ISA
//! with a warning on stderr: forcing must never end in SIGILL.

use std::sync::OnceLock;

/// An instruction-set level with its own kernel variants. Ordered from least to most capable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Isa {
    /// The portable reference kernels of [`crate::quant::reference`].
    Scalar,
    /// x86-64 AVX2 + FMA + F16C (Haswell and later, Zen).
    Avx2,
    /// x86-64 AVX-512 F/BW/VL with VNNI (`vpdpbusd`), on top of everything `Avx2` needs
    /// (Ice Lake, Sapphire Rapids, Zen 4).
    Avx512,
    /// aarch64 NEON (Advanced SIMD, baseline on every aarch64 CPU).
    Neon,
}

impl Isa {
    /// The name `GORAE_ISA` accepts for it.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
            Isa::Neon => "neon",
        }
    }

    /// Whether this CPU (and OS) can run the variant. Cheap but not free: call it once, not in a
    /// hot loop (the `is_*_feature_detected!` macros cache in an atomic).
    pub fn is_available(self) -> bool {
        match self {
            Isa::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => {
                is_x86_feature_detected!("avx2")
                    && is_x86_feature_detected!("fma")
                    && is_x86_feature_detected!("f16c")
            }
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => {
                Isa::Avx2.is_available()
                    && is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512bw")
                    && is_x86_feature_detected!("avx512vl")
                    && is_x86_feature_detected!("avx512vnni")
            }
            #[cfg(target_arch = "aarch64")]
            Isa::Neon => std::arch::is_aarch64_feature_detected!("neon"),
            #[allow(unreachable_patterns)] // every arm above may be compiled in
            _ => false,
        }
    }
}

impl std::fmt::Display for Isa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Every ISA this machine can run, `Scalar` first, best last.
pub fn available_isas() -> Vec<Isa> {
    [Isa::Scalar, Isa::Avx2, Isa::Avx512, Isa::Neon]
        .into_iter()
        .filter(|isa| isa.is_available())
        .collect()
}

/// The ISA [`crate::matmul::matmul`] and friends use: the best available, or `GORAE_ISA`'s choice.
/// Decided on first call and fixed for the life of the process.
pub fn detected_isa() -> Isa {
    static ISA: OnceLock<Isa> = OnceLock::new();
    *ISA.get_or_init(|| {
        let best = available_isas().last().copied().unwrap_or(Isa::Scalar);
        match std::env::var("GORAE_ISA") {
            Ok(v) => {
                let (isa, warning) = resolve_override(&v, best);
                if let Some(w) = warning {
                    eprintln!("gorae: {w}");
                }
                isa
            }
            Err(_) => best,
        }
    })
}

/// What `GORAE_ISA=value` selects on a machine whose best ISA is `best`, with the warning to
/// print when the request cannot be honoured as given. Separate from the env lookup so it can be
/// tested without touching the process environment.
pub fn resolve_override(value: &str, best: Isa) -> (Isa, Option<String>) {
    let wanted = match value.trim().to_ascii_lowercase().as_str() {
        "scalar" => Isa::Scalar,
        "avx2" => Isa::Avx2,
        "avx512" => Isa::Avx512,
        "neon" => Isa::Neon,
        // No AMX kernels yet: the best vector ISA is the closest thing.
        "amx" => {
            return (
                best,
                Some(format!(
                    "GORAE_ISA=amx: this build has no AMX kernels; using {best}"
                )),
            );
        }
        other => {
            return (
                best,
                Some(format!(
                    "GORAE_ISA={other:?} is not one of scalar|avx2|avx512|amx|neon; using {best}"
                )),
            );
        }
    };
    if wanted.is_available() {
        (wanted, None)
    } else {
        (
            best,
            Some(format!(
                "GORAE_ISA={wanted}: this CPU cannot run it; using {best}"
            )),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_resolve_without_sigill() {
        assert_eq!(resolve_override("scalar", Isa::Avx2), (Isa::Scalar, None));
        assert_eq!(resolve_override(" SCALAR ", Isa::Avx2).0, Isa::Scalar);
        let (isa, w) = resolve_override("bogus", Isa::Avx2);
        assert_eq!(isa, Isa::Avx2);
        assert!(w.is_some());
        let (isa, w) = resolve_override("amx", Isa::Scalar);
        assert_eq!(isa, Isa::Scalar);
        assert!(w.is_some());
        for isa in [Isa::Avx2, Isa::Avx512, Isa::Neon] {
            let (got, w) = resolve_override(isa.name(), Isa::Scalar);
            assert_eq!(got == isa, isa.is_available());
            assert_eq!(w.is_none(), isa.is_available());
        }
    }

    #[test]
    fn scalar_is_always_available_and_first() {
        let all = available_isas();
        assert_eq!(all.first(), Some(&Isa::Scalar));
        assert!(all.contains(&detected_isa()));
    }
}
