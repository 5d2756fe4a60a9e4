//! The gated feed-forward block's elementwise part: `silu(gate) * up`.

/// `gate[i] = silu(gate[i]) * up[i]`, in place in `gate`.
pub fn swiglu(gate: &mut [f32], up: &[f32]) {
    for (g, u) in gate.iter_mut().zip(up) {
        *g = *g / (1.0 + (-*g).exp()) * u;
    }
}
