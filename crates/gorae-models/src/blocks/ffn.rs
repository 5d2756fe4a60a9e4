//! The gated feed-forward block's elementwise part: `silu(gate) * up`.

/// `gate[i] = silu(gate[i]) * up[i]`, in place in `gate` (SIMD where the CPU has it).
pub fn swiglu(gate: &mut [f32], up: &[f32]) {
    gorae_kernels::act::swiglu(gate, up);
}
