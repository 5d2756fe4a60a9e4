//! The gated feed-forward block's elementwise part, `silu(gate) ⊙ up`.

use gorae_kernels::act::Act;

/// The down projection's input `silu(gate) ⊙ up` (both `[n_tokens, n_ff]`), made row by row
/// inside the projection's quantization instead of being written out whole first.
pub fn hidden<'a>(gate: &'a [f32], up: &'a [f32]) -> Act<'a> {
    Act::SwiGlu { gate, up }
}
